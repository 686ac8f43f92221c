//! A counting HTTP/1.1 proxy in front of moto (and one in front of the CloudWatch recorder):
//! every AWS request the round makes goes through one and is recorded with its arrival time and
//! operation (`DynamoDB UpdateItem` from the `X-Amz-Target` header, `CloudWatch PutMetricData`
//! and `Lambda Invoke` from the path, `S3 GET` for the rest).
//!
//! It forwards bytes unchanged. Requests are delimited by their `Content-Length`; a request
//! with a chunked body is forwarded as a raw stream for the rest of its connection and counted
//! in `unparsed` (the round sends none).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest request head line accepted.
const MAX_LINE: usize = 16 * 1024;

/// Calls counted by operation.
pub type Counts = BTreeMap<String, u64>;

/// One request seen: when it arrived (nanoseconds since the epoch) and its operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Arrival of its head, nanoseconds since the Unix epoch.
    pub at_ns: u128,
    /// The operation, e.g. `DynamoDB UpdateItem`.
    pub operation: String,
}

/// Counts calls by operation.
pub fn count(calls: &[Call]) -> Counts {
    let mut counts = Counts::new();
    for call in calls {
        *counts.entry(call.operation.clone()).or_insert(0) += 1;
    }
    counts
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A running proxy; stopped when dropped.
pub struct CountingProxy {
    port: u16,
    calls: Arc<Mutex<Vec<Call>>>,
    task: JoinHandle<()>,
}

fn lock(calls: &Mutex<Vec<Call>>) -> std::sync::MutexGuard<'_, Vec<Call>> {
    calls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let shared = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                tokio::spawn(forward(client, upstream, shared.clone()));
            }
        });
        Ok(Self { port, calls, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The calls seen so far, in arrival order; forgets them.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *lock(&self.calls))
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The operation a request head names.
pub fn classify(request_line: &str, headers: &[(String, String)]) -> String {
    if let Some((_, target)) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("x-amz-target"))
    {
        let operation = target.rsplit('.').next().unwrap_or(target);
        let service = if target.starts_with("DynamoDB") {
            "DynamoDB"
        } else {
            target.split('_').next().unwrap_or("?")
        };
        return format!("{service} {operation}");
    }
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("?");
    let path = parts.next().unwrap_or("");
    if path.starts_with("/2015-03-31/functions/") {
        "Lambda Invoke".to_owned()
    } else if let Some((_, operation)) = path.split_once("/operation/") {
        // Smithy RPC v2 CBOR (CloudWatch): /service/<service>/operation/<operation>
        format!(
            "CloudWatch {}",
            operation.split(['?', '/']).next().unwrap_or(operation)
        )
    } else {
        format!("S3 {method}")
    }
}

async fn forward(client: TcpStream, upstream: u16, calls: Arc<Mutex<Vec<Call>>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut reader = BufReader::new(client_read);
    // Bounded: at most this many requests per connection.
    for _ in 0..1_000_000 {
        let mut head = Vec::new();
        let mut lines: Vec<String> = Vec::new();
        loop {
            let mut line = Vec::new();
            match (&mut reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) | Err(_) => {
                    let _ = server_write.shutdown().await;
                    let _ = back.await;
                    return;
                }
                Ok(_) => {}
            }
            head.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            if text.is_empty() {
                break;
            }
            lines.push(text);
        }
        let request_line = lines.first().cloned().unwrap_or_default();
        let headers: Vec<(String, String)> = lines
            .iter()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        lock(&calls).push(Call {
            at_ns: now_ns(),
            operation: classify(&request_line, &headers),
        });
        if server_write.write_all(&head).await.is_err() {
            break;
        }
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        if chunked {
            lock(&calls).push(Call {
                at_ns: now_ns(),
                operation: "unparsed".to_owned(),
            });
            let _ = tokio::io::copy(&mut reader, &mut server_write).await;
            break;
        }
        let length: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if length > 0 {
            let copied = tokio::io::copy(&mut (&mut reader).take(length), &mut server_write).await;
            if !matches!(copied, Ok(n) if n == length) {
                break;
            }
        }
    }
    let _ = server_write.shutdown().await;
    let _ = back.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn classifies_operations() {
        assert_eq!(
            classify(
                "POST / HTTP/1.1",
                &headers(&[("X-Amz-Target", "DynamoDB_20120810.UpdateItem")])
            ),
            "DynamoDB UpdateItem"
        );
        assert_eq!(
            classify(
                "POST /2015-03-31/functions/config_renderer/invocations HTTP/1.1",
                &[]
            ),
            "Lambda Invoke"
        );
        assert_eq!(
            classify("GET /bucket/latest.json?x-id=GetObject HTTP/1.1", &[]),
            "S3 GET"
        );
        assert_eq!(
            classify(
                "POST /service/GraniteServiceVersion20100801/operation/PutMetricData HTTP/1.1",
                &[]
            ),
            "CloudWatch PutMetricData"
        );
        let calls = vec![
            Call {
                at_ns: 1,
                operation: "a".into(),
            },
            Call {
                at_ns: 2,
                operation: "a".into(),
            },
        ];
        assert_eq!(count(&calls).get("a"), Some(&2));
    }
}
