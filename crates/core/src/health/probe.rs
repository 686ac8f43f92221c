//! Asking a node how it is: height, chain and sync state over HTTP, bounded in time and size.
//! Rationale: docs/architecture.md, "Probes".

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::Value;
use thiserror::Error;

use crate::json_kind;
use crate::model::backend_url::BackendUrl;

/// The single `eth_blockNumber` request (docs/compatibility.md: byte for byte the same).
pub const BLOCK_NUMBER_REQUEST: &str =
    r#"{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}"#;

/// The JSON-RPC batch every probe sends first: height (id 1), chain id (id 2), sync state (id 3).
pub const PROBE_BATCH_REQUEST: &str = concat!(
    r#"[{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1},"#,
    r#"{"jsonrpc":"2.0","method":"eth_chainId","params":[],"id":2},"#,
    r#"{"jsonrpc":"2.0","method":"eth_syncing","params":[],"id":3}]"#
);

/// Highest block number believed: 2^53 - 1, the largest integer every JSON reader keeps exact.
pub const MAX_PLAUSIBLE_BLOCK: u64 = (1 << 53) - 1;

/// Limits of one probing round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Total time one probe may take: connect, send, and read the whole answer.
    pub timeout: Duration,
    /// Most bytes of an answer read before the node is judged hostile.
    pub max_body_bytes: usize,
    /// Most probes in flight at once (Lambda allows 1 024 open files).
    pub concurrency: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            max_body_bytes: 64 * 1024,
            concurrency: 512,
        }
    }
}

/// Why a probe got no usable block number. The `Display` form is what is stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProbeFailure {
    /// No complete answer within the deadline.
    #[error("timeout after {0} ms")]
    Timeout(u64),
    /// The connection could not be made (refused, DNS, TLS).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The HTTP exchange failed after connecting.
    #[error("request failed: {0}")]
    Request(String),
    /// The node answered with a status other than 200 (a redirect included).
    #[error("http status {0}")]
    HttpStatus(u16),
    /// The answer was larger than the cap.
    #[error("answer larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The answer was not JSON.
    #[error("answer is not JSON")]
    InvalidJson,
    /// The node answered with a JSON-RPC error object.
    #[error("json-rpc error {code}: {message}")]
    RpcError {
        /// The error's code.
        code: i64,
        /// The error's message, shortened.
        message: String,
    },
    /// The answer's `result` is not a plausible hex block number.
    #[error("invalid result: {0}")]
    InvalidResult(String),
}

/// What one probe found out.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    /// The block number, or why there is none.
    pub result: Result<u64, ProbeFailure>,
    /// The node's `eth_chainId`, when it answered one.
    pub chain_id: Option<u64>,
    /// The node's `eth_syncing`: `Some(true)` for a sync-status object, `Some(false)` for
    /// `false`, `None` when unknown.
    pub syncing: Option<bool>,
    /// Wall time of the probe, from its start to its answer, failure or deadline.
    pub elapsed: Duration,
}

impl ProbeOutcome {
    /// An outcome with a block-number result only (chain and sync state unknown).
    pub fn new(result: Result<u64, ProbeFailure>, elapsed: Duration) -> Self {
        Self {
            result,
            chain_id: None,
            syncing: None,
            elapsed,
        }
    }

    /// The same outcome with a known chain id.
    pub fn with_chain_id(self, chain_id: u64) -> Self {
        Self {
            chain_id: Some(chain_id),
            ..self
        }
    }

    /// The same outcome with a known sync state.
    pub fn with_syncing(self, syncing: bool) -> Self {
        Self {
            syncing: Some(syncing),
            ..self
        }
    }

    /// The elapsed time in milliseconds, with microsecond precision.
    pub fn elapsed_ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1000.0
    }
}

/// Sends probes. Cheap to clone; build one per process and reuse it across invocations.
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
    settings: ProbeSettings,
}

/// The HTTP client could not be built (TLS roots unavailable).
#[derive(Debug, Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ProberBuildError(String);

impl Prober {
    /// Builds a prober with its own HTTP client: no redirects, no proxy, rustls, and no idle
    /// connections kept between probes.
    pub fn new(settings: ProbeSettings) -> Result<Self, ProberBuildError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            // No idle connections: a round probes each node once and rounds are seconds to a
            // minute apart, so a kept connection is never reused, yet an idle pool to every
            // node holds one descriptor and its buffers per backend: ~17 KB each, and with
            // Lambda's 1 024 open files a fleet of ~1 000 left no descriptor for the table
            // writes that follow (measured: docs/benchmarks.md). Descriptors in use stay
            // bounded by PROBE_CONCURRENCY.
            .pool_max_idle_per_host(0)
            .user_agent(concat!(
                "jsonrpc-proxy-health-checker/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| ProberBuildError(e.without_url().to_string()))?;
        Ok(Self { client, settings })
    }

    /// The settings this prober enforces.
    pub fn settings(&self) -> &ProbeSettings {
        &self.settings
    }

    /// Probes one node: the batch, then (if the node refuses batches) the single request, all
    /// within one deadline.
    pub async fn probe(&self, url: &BackendUrl) -> ProbeOutcome {
        let started = Instant::now();
        let status = match tokio::time::timeout(self.settings.timeout, self.exchange(url)).await {
            Ok(status) => status,
            Err(_) => NodeStatus::failed(ProbeFailure::Timeout(duration_ms(self.settings.timeout))),
        };
        ProbeOutcome {
            result: status.block,
            chain_id: status.chain_id,
            syncing: status.syncing,
            elapsed: started.elapsed(),
        }
    }

    /// Probes every node, at most `concurrency` at once; outcomes in the order of `urls`.
    pub async fn probe_all(&self, urls: &[BackendUrl]) -> Vec<ProbeOutcome> {
        let concurrency = self.settings.concurrency.max(1);
        let mut indexed: Vec<(usize, ProbeOutcome)> = stream::iter(urls.iter().enumerate())
            .map(|(index, url)| async move { (index, self.probe(url).await) })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        indexed.sort_by_key(|(index, _)| *index);
        indexed.into_iter().map(|(_, outcome)| outcome).collect()
    }

    async fn exchange(&self, url: &BackendUrl) -> NodeStatus {
        let response = match self.post(url, PROBE_BATCH_REQUEST).await {
            Ok(response) => response,
            Err(failure) => return NodeStatus::failed(failure),
        };
        let status = response.status();
        let batch = if status == reqwest::StatusCode::OK {
            match self.read_body(response).await {
                Ok(body) => parse_batch_answer(&body),
                Err(failure) => return NodeStatus::failed(failure),
            }
        } else if status.is_client_error() {
            // A refused batch may come as a JSON error object with a 4xx status.
            match self.read_body(response).await {
                Ok(body) if serde_json::from_slice::<Value>(&body).is_ok() => BatchAnswer::Refused,
                _ => return NodeStatus::failed(ProbeFailure::HttpStatus(status.as_u16())),
            }
        } else {
            return NodeStatus::failed(ProbeFailure::HttpStatus(status.as_u16()));
        };
        match batch {
            BatchAnswer::Answered(status) => status,
            BatchAnswer::Failed(failure) => NodeStatus::failed(failure),
            BatchAnswer::Refused => NodeStatus::block_only(self.single_block_number(url).await),
        }
    }

    /// The single `eth_blockNumber` request, for nodes that refuse batches.
    async fn single_block_number(&self, url: &BackendUrl) -> Result<u64, ProbeFailure> {
        let response = self.post(url, BLOCK_NUMBER_REQUEST).await?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(ProbeFailure::HttpStatus(status.as_u16()));
        }
        parse_block_number_answer(&self.read_body(response).await?)
    }

    /// POSTs one JSON-RPC body (with basic auth when the URL has credentials).
    async fn post(
        &self,
        url: &BackendUrl,
        body: &'static str,
    ) -> Result<reqwest::Response, ProbeFailure> {
        let mut request = self
            .client
            .post(url.request_url())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json, text/plain")
            .body(body);
        if let Some((user, password)) = url.credentials() {
            request = request.basic_auth(user, Some(password));
        }
        request
            .send()
            .await
            .map_err(|e| classify_error(e, self.settings.timeout))
    }

    /// Reads an answer's body, at most `max_body_bytes`.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, ProbeFailure> {
        let cap = self.settings.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > cap as u64)
        {
            return Err(ProbeFailure::BodyTooLarge(cap));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| classify_error(e, self.settings.timeout))?
        {
            if body.len() + chunk.len() > cap {
                return Err(ProbeFailure::BodyTooLarge(cap));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// What a node told about itself: the block number decides success; chain and sync state
/// are extra knowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The block number, or why there is none.
    pub block: Result<u64, ProbeFailure>,
    /// `eth_chainId`, when answered.
    pub chain_id: Option<u64>,
    /// `eth_syncing`: `true` for a sync-status object, `false` for `false`; `None` unknown.
    pub syncing: Option<bool>,
}

impl NodeStatus {
    /// A block-number result only: chain and sync state unknown.
    pub fn block_only(block: Result<u64, ProbeFailure>) -> Self {
        Self {
            block,
            chain_id: None,
            syncing: None,
        }
    }

    /// A failed probe: no block, nothing else known.
    pub fn failed(failure: ProbeFailure) -> Self {
        Self::block_only(Err(failure))
    }
}

/// How a node answered the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchAnswer {
    /// It answered the batch; the block number may still be a failure (an error for id 1).
    Answered(NodeStatus),
    /// It did not answer as a batch (JSON that is not an array, or an array without an answer
    /// for id 1): ask again with the single request.
    Refused,
    /// The answer is unusable (not JSON).
    Failed(ProbeFailure),
}

/// Reads the answer to [`PROBE_BATCH_REQUEST`], matching answers by id (a number or a numeric
/// string).
pub fn parse_batch_answer(body: &[u8]) -> BatchAnswer {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => return BatchAnswer::Failed(ProbeFailure::InvalidJson),
    };
    let Some(answers) = value.as_array() else {
        return BatchAnswer::Refused;
    };
    let answer_for = |wanted: u64| {
        answers
            .iter()
            .filter_map(Value::as_object)
            .find(|answer| match answer.get("id") {
                Some(Value::Number(id)) => id.as_u64() == Some(wanted),
                Some(Value::String(id)) => id.trim().parse::<u64>().ok() == Some(wanted),
                _ => false,
            })
    };
    let Some(block_answer) = answer_for(1) else {
        return BatchAnswer::Refused;
    };
    let block = parse_block_number_object(block_answer);
    let chain_id = answer_for(2)
        .filter(|answer| answer.get("error").is_none_or(Value::is_null))
        .and_then(|answer| answer.get("result"))
        .and_then(Value::as_str)
        .and_then(|hex| parse_hex_u64(hex, "chain id").ok());
    let syncing = answer_for(3)
        .filter(|answer| answer.get("error").is_none_or(Value::is_null))
        .and_then(|answer| match answer.get("result") {
            Some(Value::Bool(syncing)) => Some(*syncing),
            Some(Value::Object(_)) => Some(true),
            _ => None,
        });
    BatchAnswer::Answered(NodeStatus {
        block,
        chain_id,
        syncing,
    })
}

/// Reads a block number out of a JSON-RPC answer body (whatever its content type said).
pub fn parse_block_number_answer(body: &[u8]) -> Result<u64, ProbeFailure> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ProbeFailure::InvalidJson)?;
    let Some(object) = value.as_object() else {
        return Err(ProbeFailure::InvalidResult(
            "answer is not a JSON object".into(),
        ));
    };
    parse_block_number_object(object)
}

/// Reads a block number out of one JSON-RPC answer object (`result` or `error`).
fn parse_block_number_object(object: &serde_json::Map<String, Value>) -> Result<u64, ProbeFailure> {
    if let Some(error) = object.get("error").filter(|e| !e.is_null()) {
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Err(ProbeFailure::RpcError {
            code,
            message: shorten(message, 120),
        });
    }
    match object.get("result") {
        Some(Value::String(hex)) => parse_hex_quantity(hex),
        Some(other) => Err(ProbeFailure::InvalidResult(format!(
            "result is {}, not a hex string",
            json_kind(other)
        ))),
        None => Err(ProbeFailure::InvalidResult("answer has no result".into())),
    }
}

/// Parses a JSON-RPC hex quantity (`0x1b4`) into a plausible block number.
pub fn parse_hex_quantity(text: &str) -> Result<u64, ProbeFailure> {
    let number = parse_hex_u64(text, "block number")?;
    if number > MAX_PLAUSIBLE_BLOCK {
        return Err(ProbeFailure::InvalidResult(
            "block number is absurdly large".into(),
        ));
    }
    Ok(number)
}

/// Parses a JSON-RPC hex quantity (`0x1b4`) that fits in 64 bits; `what` names it in errors.
fn parse_hex_u64(text: &str, what: &str) -> Result<u64, ProbeFailure> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .ok_or_else(|| {
            ProbeFailure::InvalidResult(format!("{:?} is not 0x-prefixed", shorten(text, 40)))
        })?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ProbeFailure::InvalidResult(format!(
            "{:?} is not a hex number",
            shorten(text, 40)
        )));
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 16 {
        return Err(ProbeFailure::InvalidResult(format!(
            "{what} is absurdly large"
        )));
    }
    u64::from_str_radix(
        if significant.is_empty() {
            "0"
        } else {
            significant
        },
        16,
    )
    .map_err(|_| ProbeFailure::InvalidResult(format!("{what} is absurdly large")))
}

fn classify_error(error: reqwest::Error, timeout: Duration) -> ProbeFailure {
    // Never keep the URL: it may hold a key.
    let error = error.without_url();
    if error.is_timeout() {
        ProbeFailure::Timeout(duration_ms(timeout))
    } else if error.is_connect() {
        ProbeFailure::Connect(root_cause(&error))
    } else {
        ProbeFailure::Request(root_cause(&error))
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    shorten(&cause.to_string(), 160)
}

fn shorten(text: &str, max_chars: usize) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.chars().count() <= max_chars {
        cleaned
    } else {
        let mut cut: String = cleaned.chars().take(max_chars).collect();
        cut.push('…');
        cut
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_answers() {
        assert_eq!(
            parse_block_number_answer(br#"{"jsonrpc":"2.0","id":1,"result":"0x1b4"}"#),
            Ok(436)
        );
        assert_eq!(parse_block_number_answer(br#"{"result":"0x0"}"#), Ok(0));
        assert_eq!(
            parse_block_number_answer(br#"{"result":"0x000000000000000000ff"}"#),
            Ok(255)
        );
        assert_eq!(
            parse_block_number_answer(br#"{"result":"0X10","error":null}"#),
            Ok(16)
        );
    }

    #[test]
    fn refuses_bad_answers_with_reasons() {
        assert_eq!(
            parse_block_number_answer(b"<html>"),
            Err(ProbeFailure::InvalidJson)
        );
        assert_eq!(
            parse_block_number_answer(b""),
            Err(ProbeFailure::InvalidJson)
        );
        let cases: &[&[u8]] = &[
            br#"[{"result":"0x1"}]"#,
            br#"{"result":"1b4"}"#,
            br#"{"result":"0x"}"#,
            br#"{"result":"-0x1"}"#,
            br#"{"result":"0xzz"}"#,
            br#"{"result":436}"#,
            br#"{"result":null}"#,
            br#"{"id":1}"#,
            br#"{"result":"0x10000000000000000"}"#,
            br#"{"result":"0x20000000000000"}"#,
        ];
        for body in cases {
            let err = parse_block_number_answer(body).expect_err(&String::from_utf8_lossy(body));
            assert!(matches!(err, ProbeFailure::InvalidResult(_)), "{err:?}");
        }
        assert_eq!(
            parse_block_number_answer(br#"{"error":{"code":-32000,"message":"header not found"}}"#),
            Err(ProbeFailure::RpcError {
                code: -32000,
                message: "header not found".into()
            })
        );
    }

    #[test]
    fn largest_plausible_block_passes() {
        assert_eq!(
            parse_hex_quantity("0x1fffffffffffff"),
            Ok(MAX_PLAUSIBLE_BLOCK)
        );
    }

    #[test]
    fn failure_reasons_read_well() {
        assert_eq!(
            ProbeFailure::Timeout(2000).to_string(),
            "timeout after 2000 ms"
        );
        assert_eq!(ProbeFailure::HttpStatus(503).to_string(), "http status 503");
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten("abcdef", 3), "abc…");
    }

    fn answered(
        block: Result<u64, ProbeFailure>,
        chain_id: Option<u64>,
        syncing: Option<bool>,
    ) -> BatchAnswer {
        BatchAnswer::Answered(NodeStatus {
            block,
            chain_id,
            syncing,
        })
    }

    #[test]
    fn the_batch_request_asks_three_questions_with_ids() {
        let batch: Value = serde_json::from_str(PROBE_BATCH_REQUEST).unwrap();
        let asked: Vec<(&str, u64)> = batch
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["method"].as_str().unwrap(), r["id"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            asked,
            [
                ("eth_blockNumber", 1),
                ("eth_chainId", 2),
                ("eth_syncing", 3)
            ]
        );
        assert!(batch
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["jsonrpc"] == "2.0" && r["params"] == serde_json::json!([])));
    }

    #[test]
    fn batch_answers_are_matched_by_id() {
        let cases: &[(&str, &str, BatchAnswer)] = &[
            (
                "in order",
                r#"[{"jsonrpc":"2.0","id":1,"result":"0x64"},{"jsonrpc":"2.0","id":2,"result":"0x1"},{"jsonrpc":"2.0","id":3,"result":false}]"#,
                answered(Ok(100), Some(1), Some(false)),
            ),
            (
                "out of order, string ids",
                r#"[{"id":"3","result":false},{"id":"2","result":"0x89"},{"id":"1","result":"0x10"}]"#,
                answered(Ok(16), Some(137), Some(false)),
            ),
            (
                "syncing object",
                r#"[{"id":1,"result":"0x10"},{"id":2,"result":"0x1"},{"id":3,"result":{"startingBlock":"0x0","currentBlock":"0x10","highestBlock":"0x20"}}]"#,
                answered(Ok(16), Some(1), Some(true)),
            ),
            (
                "methods the provider lacks are unknown",
                r#"[{"id":1,"result":"0x10"},{"id":2,"error":{"code":-32601,"message":"no such method"}},{"id":3,"error":{"code":-32601,"message":"no such method"}}]"#,
                answered(Ok(16), None, None),
            ),
            (
                "missing sub-answers are unknown",
                r#"[{"id":1,"result":"0x10"}]"#,
                answered(Ok(16), None, None),
            ),
            (
                "garbled sub-answers are unknown",
                r#"[{"id":1,"result":"0x10"},{"id":2,"result":"one"},{"id":3,"result":"no"}]"#,
                answered(Ok(16), None, None),
            ),
            (
                "a block-number error is a failure",
                r#"[{"id":1,"error":{"code":-32000,"message":"header not found"}},{"id":2,"result":"0x1"},{"id":3,"result":false}]"#,
                answered(
                    Err(ProbeFailure::RpcError {
                        code: -32000,
                        message: "header not found".into(),
                    }),
                    Some(1),
                    Some(false),
                ),
            ),
            (
                "an implausible block number is a failure",
                r#"[{"id":1,"result":"0x20000000000000"},{"id":2,"result":"0x1"}]"#,
                answered(
                    Err(ProbeFailure::InvalidResult(
                        "block number is absurdly large".into(),
                    )),
                    Some(1),
                    None,
                ),
            ),
            (
                "a refusal object",
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch requests are not supported"}}"#,
                BatchAnswer::Refused,
            ),
            (
                "a single answer to a batch",
                r#"{"jsonrpc":"2.0","id":1,"result":"0x10"}"#,
                BatchAnswer::Refused,
            ),
            (
                "an array of one refusal",
                r#"[{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"no batches"}}]"#,
                BatchAnswer::Refused,
            ),
            ("an empty array", "[]", BatchAnswer::Refused),
            (
                "not JSON",
                "<html>",
                BatchAnswer::Failed(ProbeFailure::InvalidJson),
            ),
        ];
        for (name, body, expected) in cases {
            assert_eq!(&parse_batch_answer(body.as_bytes()), expected, "{name}");
        }
    }
}
