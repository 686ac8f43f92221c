//! A fault-injecting HTTP proxy for the AWS stand-ins.
//!
//! [`FaultProxy`] listens on 127.0.0.1 and forwards every HTTP/1.1 request to an upstream
//! (moto, the CloudWatch recorder) unless a [`FaultRule`] matches it; then it answers with the
//! [`Fault`] instead, in the shape the request's AWS protocol uses (JSON `__type` for DynamoDB
//! and ECS, `x-amzn-ErrorType` for Lambda, an XML `<Error>` for S3), so the SDK classifies it
//! as the real service's error would be classified (throttling and 5xx are retried by the
//! SDK's standard retry mode; a dropped connection is a transient I/O error).
//!
//! Point an SDK client at [`FaultProxy::endpoint`] (the standard endpoint configuration);
//! switch behaviour at run time with [`FaultProxy::inject`] and [`FaultProxy::clear`]; read
//! what happened with [`FaultProxy::requests`]. Rules can match an operation (e.g.
//! `DynamoDB_20120810.UpdateItem`, `S3.PutObject`, `UpdateService`, `Lambda.Invoke`), a path
//! or a body substring, and can fail only the Nth matching request, the first N, or all of them.
//!
//! Every connection is served by its own thread with bounded read timeouts; every upstream
//! request uses a fresh connection (`Connection: close`). The proxy stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::http::{dechunk, invalid};
use crate::Error;

/// Largest request or response body relayed, in bytes.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Largest request or response head, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long an idle client connection is kept open.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the upstream may take to answer one request.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Most requests remembered by [`FaultProxy::requests`].
const MAX_LOGGED: usize = 100_000;

/// What the proxy does to a request a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answers 500 without forwarding: `InternalServerError` (DynamoDB), `ServerException`
    /// (ECS), `ServiceException` (Lambda), `InternalError` (S3).
    InternalError,
    /// Answers the service's throttling error without forwarding: 400
    /// `ProvisionedThroughputExceededException` (DynamoDB), 400 `ThrottlingException` (ECS and
    /// other JSON services), 429 `TooManyRequestsException` (Lambda), 503 `SlowDown` (S3).
    Throttle,
    /// Closes the connection without forwarding or answering (the endpoint went away).
    Drop,
    /// Forwards the request (the upstream acts on it), then closes the connection without
    /// relaying the answer: the caller cannot know whether it took effect.
    LoseResponse,
    /// Waits this long, then forwards normally.
    Delay(Duration),
}

/// When a request gets a fault. Rules are checked in the order they were injected; the first
/// one whose matchers accept the request counts it, and applies its fault if the count falls
/// in its window (after `skip`, at most `times`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    fault: Fault,
    operation: Option<String>,
    path_contains: Option<String>,
    body_contains: Option<String>,
    skip: usize,
    times: Option<usize>,
}

impl FaultRule {
    /// A rule applying `fault` to every request (narrow it with the other methods).
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            operation: None,
            path_contains: None,
            body_contains: None,
            skip: 0,
            times: None,
        }
    }

    /// Only requests whose operation name (see [`SeenRequest::operation`]) contains `name`.
    pub fn operation(mut self, name: &str) -> Self {
        self.operation = Some(name.to_owned());
        self
    }

    /// Only requests whose path (with the query) contains `text`.
    pub fn path_contains(mut self, text: &str) -> Self {
        self.path_contains = Some(text.to_owned());
        self
    }

    /// Only requests whose body contains `text`.
    pub fn body_contains(mut self, text: &str) -> Self {
        self.body_contains = Some(text.to_owned());
        self
    }

    /// Lets the first `n` matching requests through.
    pub fn skip(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    /// Faults at most `n` matching requests (after the skipped ones); then lets them through.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    /// Faults only the `n`th matching request (1-based).
    pub fn nth(self, n: usize) -> Self {
        self.skip(n.saturating_sub(1)).times(1)
    }

    fn matches(&self, request: &Request) -> bool {
        self.operation
            .as_deref()
            .is_none_or(|op| request.operation.contains(op))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|text| request.path.contains(text))
            && self
                .body_contains
                .as_deref()
                .is_none_or(|text| contains(&request.body, text.as_bytes()))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A request the proxy received, and the fault it got (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// `GET`, `PUT`, …
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The operation: the `X-Amz-Target` header (`DynamoDB_20120810.UpdateItem`,
    /// `AmazonEC2ContainerServiceV20141113.UpdateService`), `Lambda.Invoke`, `S3.PutObject`
    /// (from `x-id`, else from the method and path), or `<service>.<operation>` for RPC v2.
    pub operation: String,
    /// The fault applied, `None` when it was forwarded untouched.
    pub fault: Option<Fault>,
}

struct ActiveRule {
    rule: FaultRule,
    matched: usize,
}

struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Vec<ActiveRule>>,
    seen: Mutex<Vec<SeenRequest>>,
    stopping: AtomicBool,
    serialized: AtomicBool,
    one_at_a_time: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Picks the fault for a request and logs it.
    fn decide(&self, request: &Request) -> Option<Fault> {
        let fault = {
            let mut rules = lock(&self.rules);
            rules
                .iter_mut()
                .find(|active| active.rule.matches(request))
                .and_then(|active| {
                    active.matched += 1;
                    let position = active.matched;
                    let rule = &active.rule;
                    let in_window = position > rule.skip
                        && rule.times.is_none_or(|times| position <= rule.skip + times);
                    in_window.then(|| rule.fault.clone())
                })
        };
        let mut seen = lock(&self.seen);
        if seen.len() < MAX_LOGGED {
            seen.push(SeenRequest {
                method: request.method.clone(),
                path: request.path.clone(),
                operation: request.operation.clone(),
                fault: fault.clone(),
            });
        }
        fault
    }
}

/// A running fault-injecting proxy on 127.0.0.1; stops when dropped.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`, as [`crate::Moto::endpoint`]
    /// gives it), passing everything through until a rule is injected.
    pub fn start(upstream: &str) -> Result<Self, Error> {
        let address = upstream
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .and_then(|rest| rest.parse::<SocketAddr>().ok())
            .ok_or_else(|| {
                Error::io(
                    format!("parsing the upstream {upstream:?}"),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "expected http://IP:PORT",
                    ),
                )
            })?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| Error::io("binding the fault proxy on 127.0.0.1", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("reading the fault proxy's address", e))?
            .port();
        let shared = Arc::new(Shared {
            upstream: address,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            serialized: AtomicBool::new(false),
            one_at_a_time: Mutex::new(()),
        });
        let accepting = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if accepting.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let connection = accepting.clone();
                    let _ = std::thread::Builder::new()
                        .name("fault-proxy-conn".into())
                        .spawn(move || serve(stream, &connection));
                }
            })
            .map_err(|e| Error::io("starting the fault proxy's thread", e))?;
        Ok(Self {
            port,
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give the SDK.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Adds a rule (after the existing ones).
    pub fn inject(&self, rule: FaultRule) {
        lock(&self.shared.rules).push(ActiveRule { rule, matched: 0 });
    }

    /// Forwards one request at a time when `on` (clients still overlap: they queue here).
    ///
    /// moto evaluates a conditional write's condition and applies the write without a lock, so
    /// two concurrent `UpdateItem`s on one item can both pass their conditions; DynamoDB never
    /// lets that happen. Serializing the requests gives moto the per-request atomicity of the
    /// real service, for tests of overlapping writers.
    pub fn set_serialized(&self, on: bool) {
        self.shared.serialized.store(on, Ordering::SeqCst);
    }

    /// Removes every rule: everything passes through again.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Every request received so far (at most 100 000), in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).clone()
    }

    /// Forgets the requests received so far.
    pub fn forget_requests(&self) {
        lock(&self.shared.seen).clear();
    }

    /// Requests whose operation contains `operation` (attempts, counting the SDK's retries).
    pub fn attempts(&self, operation: &str) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|r| r.operation.contains(operation))
            .count()
    }

    /// Requests that got a fault.
    pub fn faults_injected(&self) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|r| r.fault.is_some())
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
    /// The body as received (still chunk-framed when the request is chunked).
    body: Vec<u8>,
    operation: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// Reads a CRLF-terminated line (without the terminator); `None` at a clean end of stream.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(*budget as u64)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    *budget = budget.saturating_sub(read);
    if !line.ends_with(b"\n") {
        return Err(invalid("line too long or truncated"));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("line is not UTF-8"))
}

/// Reads a request head and body; `None` when the client closed the connection. Answers
/// `Expect: 100-continue` itself.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> std::io::Result<Option<Request>> {
    let mut budget = MAX_HEAD_BYTES;
    let request_line = loop {
        match read_line(reader, &mut budget)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("malformed request line"));
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, &mut budget)?.ok_or_else(|| invalid("truncated head"))?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("malformed header"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        version: version.to_owned(),
        headers,
        body: Vec::new(),
        operation: String::new(),
    };
    if request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    if request.is_chunked() {
        request.body = read_chunked_raw(reader)?;
    } else if let Some(length) = request.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid("malformed content-length"))?;
        if length > MAX_BODY_BYTES {
            return Err(invalid("request body too large"));
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        request.body = body;
    }
    request.operation = operation_of(&request);
    Ok(Some(request))
}

/// Reads a chunked body, keeping its framing (it is forwarded as received).
fn read_chunked_raw(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut budget = MAX_BODY_BYTES;
    loop {
        let line = read_line(reader, &mut budget)?.ok_or_else(|| invalid("truncated chunk"))?;
        raw.extend_from_slice(line.as_bytes());
        raw.extend_from_slice(b"\r\n");
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| invalid("malformed chunk size"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let trailer =
                    read_line(reader, &mut budget)?.ok_or_else(|| invalid("truncated trailer"))?;
                raw.extend_from_slice(trailer.as_bytes());
                raw.extend_from_slice(b"\r\n");
                if trailer.is_empty() {
                    return Ok(raw);
                }
            }
        }
        if size > budget {
            return Err(invalid("request body too large"));
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        budget -= size + 2;
        raw.extend_from_slice(&chunk);
    }
}

/// The operation a request performs (see [`SeenRequest::operation`]).
fn operation_of(request: &Request) -> String {
    if let Some(target) = request.header("x-amz-target") {
        return target.to_owned();
    }
    let (path, query) = request
        .path
        .split_once('?')
        .unwrap_or((request.path.as_str(), ""));
    if path.starts_with("/2015-03-31/functions/") {
        return if path.ends_with("/invocations") {
            "Lambda.Invoke".to_owned()
        } else {
            format!("Lambda {} {path}", request.method)
        };
    }
    if let Some(rest) = path.strip_prefix("/service/") {
        if let Some((service, operation)) = rest.split_once("/operation/") {
            return format!("{service}.{operation}");
        }
    }
    if let Some(id) = query.split('&').find_map(|pair| pair.strip_prefix("x-id=")) {
        return format!("S3.{id}");
    }
    // Path-style S3: /bucket[/key].
    let has_key = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, key)| !key.is_empty());
    let operation = match (request.method.as_str(), has_key) {
        ("HEAD", true) => "HeadObject",
        ("GET", true) => "GetObject",
        ("PUT", true) => "PutObject",
        ("DELETE", true) => "DeleteObject",
        ("GET", false) if query.contains("list-type=2") => "ListObjectsV2",
        ("GET", false) => "ListObjects",
        ("PUT", false) => "CreateBucket",
        ("HEAD", false) => "HeadBucket",
        ("DELETE", false) => "DeleteBucket",
        _ => return format!("{} {path}", request.method),
    };
    format!("S3.{operation}")
}

/// The AWS protocol family of a request, for shaping errors.
enum Protocol {
    /// awsJson1_0 (DynamoDB).
    DynamoDb,
    /// awsJson1_1 (ECS and other `X-Amz-Target` services).
    Json,
    /// restJson1 (Lambda).
    Lambda,
    /// RPC v2 CBOR (CloudWatch).
    Cbor,
    /// restXml (S3).
    S3,
}

fn protocol_of(request: &Request) -> Protocol {
    match request.header("x-amz-target") {
        Some(target) if target.starts_with("DynamoDB_") => Protocol::DynamoDb,
        Some(_) => Protocol::Json,
        None if request.path.starts_with("/2015-03-31/") => Protocol::Lambda,
        None if request.header("smithy-protocol").is_some() => Protocol::Cbor,
        None => Protocol::S3,
    }
}

/// The error answer for `fault` in the request's protocol: status line, headers, body.
fn error_answer(request: &Request, throttle: bool) -> Vec<u8> {
    let message = "fault injected by devstack::FaultProxy";
    let (status, content_type, extra_header, body) = match (protocol_of(request), throttle) {
        (Protocol::DynamoDb, false) => (
            "500 Internal Server Error",
            "application/x-amz-json-1.0",
            None,
            format!(r#"{{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"{message}"}}"#),
        ),
        (Protocol::DynamoDb, true) => (
            "400 Bad Request",
            "application/x-amz-json-1.0",
            None,
            format!(r#"{{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"{message}"}}"#),
        ),
        (Protocol::Json, false) => (
            "500 Internal Server Error",
            "application/x-amz-json-1.1",
            None,
            format!(r#"{{"__type":"ServerException","message":"{message}"}}"#),
        ),
        (Protocol::Json, true) => (
            "400 Bad Request",
            "application/x-amz-json-1.1",
            None,
            format!(r#"{{"__type":"ThrottlingException","message":"{message}"}}"#),
        ),
        (Protocol::Lambda, false) => (
            "500 Internal Server Error",
            "application/json",
            Some("x-amzn-ErrorType: ServiceException"),
            format!(r#"{{"Type":"Service","message":"{message}"}}"#),
        ),
        (Protocol::Lambda, true) => (
            "429 Too Many Requests",
            "application/json",
            Some("x-amzn-ErrorType: TooManyRequestsException"),
            format!(r#"{{"Type":"User","Reason":"ReservedFunctionConcurrentInvocationLimitExceeded","message":"{message}"}}"#),
        ),
        (Protocol::Cbor, false) => ("500 Internal Server Error", "application/cbor", None, String::new()),
        (Protocol::Cbor, true) => ("503 Service Unavailable", "application/cbor", None, String::new()),
        (Protocol::S3, false) => (
            "500 Internal Server Error",
            "application/xml",
            None,
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code><Message>{message}</Message><RequestId>FAULT</RequestId></Error>"),
        ),
        (Protocol::S3, true) => (
            "503 Slow Down",
            "application/xml",
            None,
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>{message}</Message><RequestId>FAULT</RequestId></Error>"),
        ),
    };
    // A HEAD answer has no body.
    let body = if request.method == "HEAD" {
        String::new()
    } else {
        body
    };
    let mut answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nx-amzn-RequestId: FAULT\r\n",
        body.len()
    );
    if let Some(header) = extra_header {
        answer.push_str(header);
        answer.push_str("\r\n");
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    answer.into_bytes()
}

/// Serves one client connection until it closes, idles out or gets a fault that drops it.
fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(CLIENT_IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(Some(request)) = read_request(&mut reader, &mut writer) else {
            break;
        };
        let answer = match shared.decide(&request) {
            None => forward(&request, shared),
            Some(Fault::InternalError) => Ok(error_answer(&request, false)),
            Some(Fault::Throttle) => Ok(error_answer(&request, true)),
            Some(Fault::Drop) => break,
            Some(Fault::LoseResponse) => {
                let _ = forward(&request, shared);
                break;
            }
            Some(Fault::Delay(delay)) => {
                std::thread::sleep(delay);
                forward(&request, shared)
            }
        };
        let Ok(answer) = answer else { break };
        if writer
            .write_all(&answer)
            .and_then(|()| writer.flush())
            .is_err()
        {
            break;
        }
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if close || request.version == "HTTP/1.0" {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Sends `request` to the upstream on a fresh connection and returns the answer re-framed
/// with a `Content-Length` (so the client connection can stay open).
fn forward(request: &Request, shared: &Shared) -> std::io::Result<Vec<u8>> {
    let _turn = shared
        .serialized
        .load(Ordering::SeqCst)
        .then(|| lock(&shared.one_at_a_time));
    let upstream = shared.upstream;
    let mut connection = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    connection.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    connection.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
    let mut head = format!(
        "{} {} {}\r\n",
        request.method, request.path, request.version
    );
    for (name, value) in &request.headers {
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "expect"
        ) {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    connection.write_all(head.as_bytes())?;
    connection.write_all(&request.body)?;
    connection.flush()?;

    let mut reader = BufReader::new(connection);
    loop {
        let mut budget = MAX_HEAD_BYTES;
        let status_line =
            read_line(&mut reader, &mut budget)?.ok_or_else(|| invalid("upstream closed"))?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("upstream answer has no status"))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut reader, &mut budget)?
                .ok_or_else(|| invalid("truncated upstream head"))?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        if (100..200).contains(&status) {
            continue; // interim answer
        }
        let header = |wanted: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(wanted))
                .map(|(_, v)| v.clone())
        };
        let bodyless = request.method == "HEAD" || status == 204 || status == 304;
        let body = if bodyless {
            Vec::new()
        } else if header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            dechunk(&read_chunked_raw(&mut reader)?)?
        } else if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok())
        {
            if length > MAX_BODY_BYTES {
                return Err(invalid("upstream answer too large"));
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            body
        } else {
            let mut body = Vec::new();
            reader
                .by_ref()
                .take(MAX_BODY_BYTES as u64)
                .read_to_end(&mut body)?;
            body
        };
        let mut answer = format!("{status_line}\r\n");
        for (name, value) in &headers {
            let lower = name.to_ascii_lowercase();
            let framing = matches!(lower.as_str(), "transfer-encoding" | "content-length");
            if matches!(lower.as_str(), "connection" | "keep-alive") || (framing && !bodyless) {
                continue;
            }
            answer.push_str(&format!("{name}: {value}\r\n"));
        }
        if !bodyless {
            answer.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        answer.push_str("\r\n");
        let mut answer = answer.into_bytes();
        answer.extend_from_slice(&body);
        return Ok(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut request = Request {
            method: method.into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
            operation: String::new(),
        };
        request.operation = operation_of(&request);
        request
    }

    #[test]
    fn names_operations() {
        let dynamo = request(
            "POST",
            "/",
            &[("X-Amz-Target", "DynamoDB_20120810.UpdateItem")],
            "{}",
        );
        assert_eq!(dynamo.operation, "DynamoDB_20120810.UpdateItem");
        assert_eq!(
            request("PUT", "/bucket/a_nginx.conf?x-id=PutObject", &[], "").operation,
            "S3.PutObject"
        );
        assert_eq!(
            request("PUT", "/bucket/latest.json", &[], "").operation,
            "S3.PutObject"
        );
        assert_eq!(
            request("HEAD", "/bucket/k", &[], "").operation,
            "S3.HeadObject"
        );
        assert_eq!(
            request("GET", "/bucket?list-type=2", &[], "").operation,
            "S3.ListObjectsV2"
        );
        assert_eq!(
            request("POST", "/2015-03-31/functions/f/invocations", &[], "").operation,
            "Lambda.Invoke"
        );
        assert_eq!(
            request(
                "POST",
                "/service/GraniteServiceVersion20100801/operation/PutMetricData",
                &[("smithy-protocol", "rpc-v2-cbor")],
                ""
            )
            .operation,
            "GraniteServiceVersion20100801.PutMetricData"
        );
    }

    #[test]
    fn rules_fault_their_window_only() {
        let shared = Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], 9)),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            serialized: AtomicBool::new(false),
            one_at_a_time: Mutex::new(()),
        };
        let update = request(
            "POST",
            "/",
            &[("X-Amz-Target", "DynamoDB_20120810.UpdateItem")],
            r#"{"Key":{"url":{"S":"http://a"}}}"#,
        );
        let scan = request(
            "POST",
            "/",
            &[("X-Amz-Target", "DynamoDB_20120810.Scan")],
            "{}",
        );
        lock(&shared.rules).push(ActiveRule {
            rule: FaultRule::new(Fault::Throttle)
                .operation("UpdateItem")
                .body_contains("http://a")
                .nth(2),
            matched: 0,
        });
        let faults: Vec<Option<Fault>> = (0..3).map(|_| shared.decide(&update)).collect();
        assert_eq!(faults, vec![None, Some(Fault::Throttle), None]);
        assert_eq!(shared.decide(&scan), None);
        assert_eq!(lock(&shared.seen).len(), 4);
    }

    #[test]
    fn error_answers_have_the_protocols_shape() {
        let dynamo = request(
            "POST",
            "/",
            &[("X-Amz-Target", "DynamoDB_20120810.Scan")],
            "{}",
        );
        let text = String::from_utf8(error_answer(&dynamo, true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 "));
        assert!(text.contains("#ProvisionedThroughputExceededException"));
        let head = request("HEAD", "/bucket/key", &[], "");
        let text = String::from_utf8(error_answer(&head, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 500 "));
        assert!(text.ends_with("\r\n\r\n"), "no body for HEAD: {text}");
        let s3 = request("PUT", "/bucket/key", &[], "x");
        assert!(String::from_utf8(error_answer(&s3, true))
            .unwrap()
            .contains("<Code>SlowDown</Code>"));
    }

    #[test]
    fn passes_through_and_faults_over_real_sockets() {
        // A tiny upstream answering every request with its path, chunked.
        let upstream = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let upstream_port = upstream.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in upstream.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap().to_owned();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{path}\r\n0\r\n\r\n",
                    path.len()
                );
            }
        });
        let proxy = FaultProxy::start(&format!("http://127.0.0.1:{upstream_port}")).unwrap();
        let get = |path: &str| {
            crate::http::request(proxy.port(), "GET", path, &[], b"", Duration::from_secs(5))
        };
        let answer = get("/bucket/one").unwrap();
        assert_eq!((answer.status, answer.text()), (200, "/bucket/one".into()));
        proxy.inject(FaultRule::new(Fault::InternalError).path_contains("two"));
        assert_eq!(get("/bucket/two").unwrap().status, 500);
        proxy.inject(FaultRule::new(Fault::Drop).path_contains("three"));
        assert!(get("/bucket/three").is_err());
        proxy.clear();
        assert_eq!(get("/bucket/four").unwrap().text(), "/bucket/four");
        assert_eq!(proxy.faults_injected(), 2);
        assert_eq!(proxy.attempts("S3.GetObject"), 4);
    }
}
