#!/usr/bin/env python3
"""A stand-in for the CloudWatch API that records PutMetricData calls.

aws-sdk-cloudwatch (Rust) speaks the Smithy RPC v2 CBOR protocol, which moto_server does not, so
tests and the local stack point AWS_ENDPOINT_URL_CLOUDWATCH here instead.

    python3 scripts/cloudwatch_recorder.py --port 4599 [--host 127.0.0.1]

- POST .../service/GraniteServiceVersion20100801/operation/PutMetricData with a CBOR body
  (optionally gzip-compressed: the SDK compresses large PutMetricData bodies) is recorded and
  answered 200 with an empty CBOR map, `smithy-protocol: rpc-v2-cbor`, `Content-Type:
  application/cbor`.
- Any other operation gets a CBOR error 400 (`__type` UnknownOperationException) naming it.
- GET /recorded answers the recorded calls as JSON: a list of
  {"operation", "namespace", "metric_data": [...], "received_at"}; datetimes become epoch
  seconds (float), bytes become base64 text.
- DELETE /recorded clears them. GET /health answers 200 "ok".
"""

import argparse
import base64
import datetime
import gzip
import json
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cbor2

MAX_BODY_BYTES = 64 * 1024 * 1024

_lock = threading.Lock()
_recorded = []


def to_json(value):
    """Turns decoded CBOR into JSON-serialisable values."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, cbor2.CBORTag):
        if value.tag == 1:
            return float(value.value)
        return {"tag": value.tag, "value": to_json(value.value)}
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if value is cbor2.undefined:
        return None
    return value


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cloudwatch-recorder/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def _send(self, status, body, content_type, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status, value):
        self._send(status, json.dumps(value).encode("utf-8"), "application/json")

    def _send_cbor(self, status, value):
        self._send(
            status,
            cbor2.dumps(value),
            "application/cbor",
            {"smithy-protocol": "rpc-v2-cbor"},
        )

    def _cbor_error(self, status, type_name, message):
        self._send_cbor(status, {"__type": type_name, "message": message})

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("body larger than %d bytes" % MAX_BODY_BYTES)
        body = self.rfile.read(length) if length else b""
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding not in ("", "identity"):
            raise ValueError("unsupported Content-Encoding %r" % encoding)
        return body

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/recorded":
            with _lock:
                calls = list(_recorded)
            self._send_json(200, calls)
        elif path == "/health":
            self._send(200, b"ok", "text/plain")
        else:
            self._send_json(404, {"error": "unknown path %s" % path})

    def do_DELETE(self):
        path = self.path.split("?", 1)[0]
        if path == "/recorded":
            with _lock:
                _recorded.clear()
            self._send_json(200, {"cleared": True})
        else:
            self._send_json(404, {"error": "unknown path %s" % path})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        sys.stderr.write(
            "request headers: smithy-protocol=%s content-type=%s content-encoding=%s accept=%s\n"
            % (
                self.headers.get("smithy-protocol"),
                self.headers.get("Content-Type"),
                self.headers.get("Content-Encoding"),
                self.headers.get("Accept"),
            )
        )
        try:
            body = self._read_body()
        except Exception as error:  # noqa: BLE001 - any unreadable body is the client's fault
            self._cbor_error(400, "SerializationException", "cannot read body: %s" % error)
            return
        if "/operation/" not in path:
            self._cbor_error(
                400,
                "UnknownOperationException",
                "expected POST /service/<service>/operation/<operation>, got %s" % path,
            )
            return
        operation = path.rsplit("/operation/", 1)[1]
        if operation != "PutMetricData":
            self._cbor_error(
                400,
                "UnknownOperationException",
                "the CloudWatch recorder only implements PutMetricData, not %s" % operation,
            )
            return
        try:
            request = cbor2.loads(body) if body else {}
        except Exception as error:  # noqa: BLE001
            self._cbor_error(400, "SerializationException", "body is not CBOR: %s" % error)
            return
        if not isinstance(request, dict):
            self._cbor_error(400, "SerializationException", "body is not a CBOR map")
            return
        namespace = request.get("Namespace")
        data = request.get("MetricData")
        if not isinstance(namespace, str) or not isinstance(data, list):
            self._cbor_error(
                400,
                "InvalidParameterValueException",
                "PutMetricData needs Namespace (string) and MetricData (list)",
            )
            return
        if len(data) > 1000:
            self._cbor_error(
                400,
                "InvalidParameterValueException",
                "The collection MetricData must not have a size greater than 1000.",
            )
            return
        call = {
            "operation": operation,
            "namespace": namespace,
            "metric_data": to_json(data),
            "received_at": time.time(),
        }
        with _lock:
            _recorded.append(call)
        self._send_cbor(200, {})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print("cloudwatch recorder listening on http://%s:%d" % (args.host, args.port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
