//! A scripted JSON-RPC "node" on 127.0.0.1, inside the test: the request path picks the
//! behaviour, so one server plays many backends (good ones and hostile ones).
//!
//! | path | answer |
//! |---|---|
//! | `/block/<n>/...` | 200 `application/json`, `result` = n in hex (batches answered as a node does) |
//! | `/text-plain/<n>` | the same as `text/plain` |
//! | `/hang` | reads the request, never answers |
//! | `/trickle` | headers and then one body byte every 200 ms |
//! | `/endless` | a chunked answer that never ends (ten spaces every 25 ms) |
//! | `/huge-length` | 100 MB announced by Content-Length and streamed |
//! | `/huge-chunked` | 100 MB chunked, no length |
//! | `/invalid-json` | 200 with an HTML body |
//! | `/non-hex`, `/negative`, `/huge-number`, `/number` | bad `result`s |
//! | `/rpc-error` | a JSON-RPC error object |
//! | `/redirect` | 302 to `/block/16` |
//! | `/status/<code>` | that status, JSON body |
//! | `/close` | closes the connection without answering |
//! | `/garbage` | answers something that is not HTTP |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes the hostile big answers send at most.
const HUGE: usize = 100 * 1024 * 1024;

/// A running scripted node; it stops with the test's runtime.
pub struct ScriptedNode {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl ScriptedNode {
    /// Starts the server on a free loopback port (needs a multi-thread runtime to answer
    /// while the test awaits other work).
    pub async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, counter).await;
                });
            }
        });
        Self { port, requests }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > 64 * 1024 {
            return Ok(None);
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = buffer[header_end..].to_vec();
    while body.len() < length.min(64 * 1024) {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    let path = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    Ok(Some((path, body)))
}

/// The answer of a well-behaved node at height `n`: one object for a single request, an
/// array (by id) for a batch (`eth_blockNumber`, `eth_chainId` 31337, `eth_syncing` false).
fn node_answer(request: &[u8], n: u64) -> String {
    let Ok(serde_json::Value::Array(calls)) = serde_json::from_slice(request) else {
        return result(&format!("\"{n:#x}\""));
    };
    let answers: Vec<serde_json::Value> = calls
        .iter()
        .map(|call| {
            let id = call.get("id").cloned().unwrap_or(serde_json::Value::Null);
            let value = match call.get("method").and_then(serde_json::Value::as_str) {
                Some("eth_blockNumber") => serde_json::json!(format!("{n:#x}")),
                Some("eth_chainId") => serde_json::json!("0x7a69"),
                Some("eth_syncing") => serde_json::json!(false),
                _ => {
                    return serde_json::json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32601, "message": "method not found"}})
                }
            };
            serde_json::json!({"jsonrpc": "2.0", "id": id, "result": value})
        })
        .collect();
    serde_json::Value::Array(answers).to_string()
}

fn answer(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn result(value: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":1,"result":{value}}}"#)
}

async fn serve(mut stream: TcpStream, counter: Arc<AtomicUsize>) -> std::io::Result<()> {
    let Some((path, request)) = read_request(&mut stream).await? else {
        return Ok(());
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let path = path.split('?').next().unwrap_or("/").to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let json = "application/json";
    let reply = match segments.as_slice() {
        ["block", n, ..] => answer("200 OK", json, &node_answer(&request, n.parse().unwrap_or(0))),
        ["text-plain", n, ..] => answer(
            "200 OK",
            "text/plain",
            &node_answer(&request, n.parse().unwrap_or(0)),
        ),
        ["hang", ..] => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return Ok(());
        }
        ["trickle", ..] => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n",
                )
                .await?;
            for _ in 0..150 {
                stream.write_all(b" ").await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            return Ok(());
        }
        ["endless", ..] => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )
                .await?;
            for _ in 0..1200 {
                stream.write_all(b"a\r\n          \r\n").await?;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            return Ok(());
        }
        ["huge-length", ..] => {
            stream
                .write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {HUGE}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await?;
            let block = vec![b' '; 64 * 1024];
            for _ in 0..HUGE / block.len() {
                stream.write_all(&block).await?;
            }
            return Ok(());
        }
        ["huge-chunked", ..] => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )
                .await?;
            let block = vec![b' '; 64 * 1024];
            let header = format!("{:x}\r\n", block.len());
            for _ in 0..HUGE / block.len() {
                stream.write_all(header.as_bytes()).await?;
                stream.write_all(&block).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
            return Ok(());
        }
        ["invalid-json", ..] => answer("200 OK", "text/html", "<html>not json</html>"),
        ["non-hex", ..] => answer("200 OK", json, &result("\"0xzz\"")),
        ["negative", ..] => answer("200 OK", json, &result("\"-0x5\"")),
        ["huge-number", ..] => answer("200 OK", json, &result("\"0xffffffffffffffffffffffff\"")),
        ["number", ..] => answer("200 OK", json, &result("16")),
        ["rpc-error", ..] => answer(
            "200 OK",
            json,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"header not found"}}"#,
        ),
        ["redirect", ..] => "HTTP/1.1 302 Found\r\nLocation: /block/16\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
        ["status", code, ..] => {
            let code: u16 = code.parse().unwrap_or(500);
            answer(&format!("{code} Whatever"), json, &result("\"0x10\""))
        }
        ["close", ..] => return Ok(()),
        ["garbage", ..] => "SSH-2.0-OpenSSH_9.2\r\n\r\n".to_owned(),
        _ => answer("404 Not Found", "text/plain", "unknown path"),
    };
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
