//! Usage per client of the JSON-RPC gate: the counters nginx serves at `GET /usage` on its
//! internal socket ([`crate::render::gate::USAGE_SOCKET`]), turned into per-interval deltas and
//! CloudWatch data points ([`UsageDeltas`], pure), and read over the socket ([`read_usage`]).
//! Rationale: docs/architecture.md, "Usage per client".

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::aws::metrics::{MetricPoint, MetricUnit, DIMENSION_STACK_NAME};

/// `Gate calls served`, per `Stack name` and `Client`: JSON-RPC calls the gate let through
/// (answered by a node, or by the data plane itself).
pub const METRIC_CALLS_SERVED: &str = "Gate calls served";
/// `Gate cache hits`, per `Stack name` and `Client`: calls of those served that the data plane
/// answered from its cache (docs/architecture.md, "One chain, as a client sees it").
pub const METRIC_CACHE_HITS: &str = "Gate cache hits";
/// `Gate calls refused`, per `Stack name`, `Client` and `Reason` (the gate's names: `key`,
/// `method`, `rate`, `batch_size`, `body_size`, `get_logs_range`, `parse`, `invalid`,
/// `duplicate`).
pub const METRIC_CALLS_REFUSED: &str = "Gate calls refused";
/// Dimension naming the caller: a client's name, `(open)` or `(unknown)`; never a key.
pub const DIMENSION_CLIENT: &str = "Client";
/// Dimension naming why calls were refused.
pub const DIMENSION_REASON: &str = "Reason";
/// Longest answer of the usage endpoint read (a few hundred bytes per client).
const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// What a counter counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Count {
    /// Calls served.
    Served,
    /// Calls served from the data plane's cache (also counted as served).
    Cached,
    /// Calls refused for this reason.
    Refused(String),
}

/// One counter of the gate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Counter {
    /// The client's name, `(open)` or `(unknown)`.
    pub client: String,
    /// What it counts.
    pub count: Count,
}

impl Counter {
    /// Calls served to `client`.
    pub fn served(client: &str) -> Self {
        Self {
            client: client.to_owned(),
            count: Count::Served,
        }
    }

    /// Calls of `client` served from the cache.
    pub fn cached(client: &str) -> Self {
        Self {
            client: client.to_owned(),
            count: Count::Cached,
        }
    }

    /// Calls of `client` refused for `reason`.
    pub fn refused(client: &str, reason: &str) -> Self {
        Self {
            client: client.to_owned(),
            count: Count::Refused(reason.to_owned()),
        }
    }
}

/// Every counter of one `/usage` answer, monotonic since nginx started.
pub type UsageSnapshot = BTreeMap<Counter, u64>;

/// The usage endpoint could not be read.
#[derive(Debug, Error)]
pub enum UsageError {
    /// No usage server listens (the configuration in force has no gate, or nginx is starting).
    #[error("no usage endpoint at {socket}: {message}")]
    Unavailable {
        /// The socket's path.
        socket: String,
        /// The I/O error.
        message: String,
    },
    /// The exchange failed or took too long.
    #[error("reading {socket} failed: {message}")]
    Io {
        /// The socket's path.
        socket: String,
        /// What went wrong.
        message: String,
    },
    /// The answer is not the usage document.
    #[error("unexpected usage answer: {0}")]
    Invalid(String),
}

/// Parses the body of `GET /usage`:
/// `{"clients":{"<name>":{"served":n,"cached":n,"refused":{"<reason>":n}}}}`.
pub fn parse_usage(body: &[u8]) -> Result<UsageSnapshot, UsageError> {
    let invalid = |what: &str| UsageError::Invalid(what.to_owned());
    let document: Value =
        serde_json::from_slice(body).map_err(|e| UsageError::Invalid(e.to_string()))?;
    let clients = document
        .get("clients")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("no \"clients\" object"))?;
    let count = |value: &Value, what: &str| {
        value
            .as_u64()
            .ok_or_else(|| UsageError::Invalid(format!("{what} is not a whole number")))
    };
    let mut snapshot = UsageSnapshot::new();
    for (name, entry) in clients {
        if name.is_empty() {
            return Err(invalid("a client without a name"));
        }
        if let Some(served) = entry.get("served") {
            snapshot.insert(Counter::served(name), count(served, "served")?);
        }
        if let Some(cached) = entry.get("cached") {
            snapshot.insert(Counter::cached(name), count(cached, "cached")?);
        }
        if let Some(refused) = entry.get("refused") {
            let refused = refused
                .as_object()
                .ok_or_else(|| invalid("\"refused\" is not an object"))?;
            for (reason, value) in refused {
                if reason.is_empty() {
                    return Err(invalid("a refusal without a reason"));
                }
                snapshot.insert(Counter::refused(name, reason), count(value, "refused")?);
            }
        }
    }
    Ok(snapshot)
}

/// Turns successive snapshots into counts not yet published. A counter that went down (nginx
/// restarted, the dictionary evicted it) counts again from zero; counts stay pending until
/// [`UsageDeltas::published`] is told they were sent, so a failed publication loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageDeltas {
    last: UsageSnapshot,
    pending: BTreeMap<Counter, u64>,
}

impl UsageDeltas {
    /// Adds what each counter gained since the previous snapshot (since zero for the first:
    /// the agent starts nginx, so its counters start with it).
    pub fn observe(&mut self, snapshot: UsageSnapshot) {
        for (counter, &value) in &snapshot {
            let previous = self.last.get(counter).copied().unwrap_or(0);
            let gained = if value >= previous {
                value - previous
            } else {
                value
            };
            if gained > 0 {
                *self.pending.entry(counter.clone()).or_default() += gained;
            }
        }
        self.last = snapshot;
    }

    /// The counts not yet published.
    pub fn pending(&self) -> &BTreeMap<Counter, u64> {
        &self.pending
    }

    /// The pending counts as data points for the stack `stack_name`, with their counters.
    pub fn points(&self, stack_name: &str) -> Vec<(Counter, MetricPoint)> {
        self.pending
            .iter()
            .map(|(counter, &count)| (counter.clone(), point(counter, count, stack_name)))
            .collect()
    }

    /// Forgets the pending counts of `counters`: they were published.
    pub fn published<'a>(&mut self, counters: impl IntoIterator<Item = &'a Counter>) {
        for counter in counters {
            self.pending.remove(counter);
        }
    }
}

fn point(counter: &Counter, count: u64, stack_name: &str) -> MetricPoint {
    let mut dimensions = vec![
        (DIMENSION_STACK_NAME, stack_name.to_owned()),
        (DIMENSION_CLIENT, counter.client.clone()),
    ];
    let name = match &counter.count {
        Count::Served => METRIC_CALLS_SERVED,
        Count::Cached => METRIC_CACHE_HITS,
        Count::Refused(reason) => {
            dimensions.push((DIMENSION_REASON, reason.clone()));
            METRIC_CALLS_REFUSED
        }
    };
    MetricPoint {
        name,
        dimensions,
        value: count as f64,
        unit: MetricUnit::Count,
    }
}

/// Reads `GET /usage` from the gate's usage server listening on `socket`, within `timeout`.
pub async fn read_usage(socket: &Path, timeout: Duration) -> Result<UsageSnapshot, UsageError> {
    let label = socket.display().to_string();
    let exchange = async {
        let mut stream =
            tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        UsageError::Unavailable {
                            socket: label.clone(),
                            message: e.to_string(),
                        }
                    }
                    _ => UsageError::Io {
                        socket: label.clone(),
                        message: e.to_string(),
                    },
                })?;
        let io = |e: std::io::Error| UsageError::Io {
            socket: label.clone(),
            message: e.to_string(),
        };
        // HTTP/1.0: nginx answers without chunking and closes.
        stream
            .write_all(b"GET /usage HTTP/1.0\r\nHost: usage\r\n\r\n")
            .await
            .map_err(io)?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UsageError::Io {
            socket: label.clone(),
            message: format!("no answer within {timeout:?}"),
        })??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| UsageError::Invalid("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(UsageError::Invalid(format!("HTTP status {status:?}")));
    }
    parse_usage(&raw[split + 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(body: &str) -> UsageSnapshot {
        parse_usage(body.as_bytes()).unwrap()
    }

    fn pending(deltas: &UsageDeltas) -> Vec<(String, Option<String>, u64)> {
        deltas
            .pending()
            .iter()
            .map(|(c, &n)| {
                let refused = match &c.count {
                    Count::Refused(reason) => Some(reason.clone()),
                    _ => None,
                };
                (c.client.clone(), refused, n)
            })
            .collect()
    }

    #[test]
    fn the_gate_document_is_read_counter_by_counter() {
        let usage = snapshot(
            r#"{"clients":{"(unknown)":{"served":0,"refused":{"key":15}},
                "app":{"served":7,"cached":3,"refused":{"method":2,"rate":1}}}}"#,
        );
        assert_eq!(usage.len(), 6);
        assert_eq!(usage[&Counter::served("app")], 7);
        assert_eq!(usage[&Counter::cached("app")], 3);
        assert_eq!(usage[&Counter::refused("app", "rate")], 1);
        assert_eq!(usage[&Counter::refused("(unknown)", "key")], 15);
        assert!(snapshot(r#"{"clients":{}}"#).is_empty());
    }

    #[test]
    fn a_malformed_document_is_refused() {
        for body in [
            "",
            "[]",
            r#"{"clients":[]}"#,
            r#"{"clients":{"a":{"served":-1,"refused":{}}}}"#,
            r#"{"clients":{"a":{"served":1.5,"refused":{}}}}"#,
            r#"{"clients":{"a":{"served":1,"refused":[]}}}"#,
            r#"{"clients":{"a":{"served":1,"refused":{"":1}}}}"#,
            r#"{"clients":{"":{"served":1,"refused":{}}}}"#,
        ] {
            assert!(
                matches!(parse_usage(body.as_bytes()), Err(UsageError::Invalid(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn deltas_follow_monotonic_counters_and_restart_from_zero() {
        let mut deltas = UsageDeltas::default();
        deltas.observe(snapshot(
            r#"{"clients":{"app":{"served":5,"refused":{"rate":0}}}}"#,
        ));
        assert_eq!(pending(&deltas), vec![("app".into(), None, 5)]);
        deltas.published([&Counter::served("app")]);
        assert!(deltas.pending().is_empty());

        deltas.observe(snapshot(
            r#"{"clients":{"app":{"served":8,"refused":{"rate":2}}}}"#,
        ));
        assert_eq!(
            pending(&deltas),
            vec![
                ("app".into(), None, 3),
                ("app".into(), Some("rate".into()), 2)
            ]
        );
        deltas.published(deltas.clone().pending().keys());

        // nginx restarted (or evicted the counter): it counts from zero, never negative.
        deltas.observe(snapshot(
            r#"{"clients":{"app":{"served":4,"refused":{"rate":2}}}}"#,
        ));
        assert_eq!(pending(&deltas), vec![("app".into(), None, 4)]);
        deltas.published(deltas.clone().pending().keys());

        // A counter that vanished and came back counts from zero too.
        deltas.observe(snapshot(r#"{"clients":{}}"#));
        assert!(deltas.pending().is_empty());
        deltas.observe(snapshot(r#"{"clients":{"app":{"served":6,"refused":{}}}}"#));
        assert_eq!(pending(&deltas), vec![("app".into(), None, 6)]);
    }

    #[test]
    fn unpublished_counts_add_up_until_published() {
        let mut deltas = UsageDeltas::default();
        deltas.observe(snapshot(
            r#"{"clients":{"app":{"served":5,"refused":{"method":1}}}}"#,
        ));
        // The publication failed: nothing is forgotten; the next minute adds to it.
        deltas.observe(snapshot(
            r#"{"clients":{"app":{"served":9,"refused":{"method":1}},"b":{"served":1,"refused":{}}}}"#,
        ));
        assert_eq!(
            pending(&deltas),
            vec![
                ("app".into(), None, 9),
                ("app".into(), Some("method".into()), 1),
                ("b".into(), None, 1)
            ]
        );
        // Only part of it was sent: the rest stays.
        deltas.published([&Counter::served("app")]);
        assert_eq!(pending(&deltas).len(), 2);
    }

    #[test]
    fn points_name_the_stack_the_client_and_the_reason() {
        let mut deltas = UsageDeltas::default();
        deltas.observe(snapshot(
            r#"{"clients":{"app":{"served":3,"refused":{"method":2}}}}"#,
        ));
        let points: Vec<MetricPoint> = deltas.points("stack").into_iter().map(|p| p.1).collect();
        assert_eq!(
            points,
            vec![
                MetricPoint {
                    name: METRIC_CALLS_SERVED,
                    dimensions: vec![
                        (DIMENSION_STACK_NAME, "stack".into()),
                        (DIMENSION_CLIENT, "app".into())
                    ],
                    value: 3.0,
                    unit: MetricUnit::Count,
                },
                MetricPoint {
                    name: METRIC_CALLS_REFUSED,
                    dimensions: vec![
                        (DIMENSION_STACK_NAME, "stack".into()),
                        (DIMENSION_CLIENT, "app".into()),
                        (DIMENSION_REASON, "method".into())
                    ],
                    value: 2.0,
                    unit: MetricUnit::Count,
                },
            ]
        );
    }
}
