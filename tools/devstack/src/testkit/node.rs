//! [`Node`]: one scripted JSON-RPC server playing many nodes, good and hostile, on axum; raw
//! sockets only for the answers that are not HTTP. [`serve`] runs any other axum stand-in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Bytes the hostile big answers send.
const HUGE: usize = 100 * 1024 * 1024;
/// How long a hanging or trickling answer lasts at most.
const HANG: Duration = Duration::from_secs(30);

/// An axum server on 127.0.0.1 (a free port); it stops with the test's runtime.
pub struct Server {
    address: SocketAddr,
    open: Arc<AtomicUsize>,
}

/// Serves `router` on a free loopback port (needs a multi-thread runtime to answer while the
/// test awaits other work).
pub async fn serve(router: Router) -> Server {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let address = listener.local_addr().expect("local addr");
    let open = Arc::new(AtomicUsize::new(0));
    let counting = Counting {
        listener,
        open: open.clone(),
    };
    tokio::spawn(async move {
        let _ = axum::serve(counting, router).await;
    });
    Server { address, open }
}

impl Server {
    #[allow(missing_docs)]
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Connections open now (a client's keep-alive connections stay open until it closes them).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// A listener that counts the connections it accepted and that are still open.
struct Counting {
    listener: TcpListener,
    open: Arc<AtomicUsize>,
}

impl axum::serve::Listener for Counting {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Counted, SocketAddr) {
        let (stream, address) = axum::serve::Listener::accept(&mut self.listener).await;
        self.open.fetch_add(1, Ordering::SeqCst);
        let open = self.open.clone();
        (Counted { stream, open }, address)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection, uncounted when the server drops it.
struct Counted {
    stream: TcpStream,
    open: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How the node named by [`Node::set`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A node at this height.
    Height(u64),
    /// A node at `base` plus the number of requests this name got before.
    Counting(u64),
    /// This HTTP status, with a JSON body.
    Status(u16),
}

#[derive(Default)]
struct NodeState {
    answers: HashMap<String, Answer>,
    requests: HashMap<String, u64>,
}

type Shared = Arc<Mutex<NodeState>>;

fn lock(state: &Shared) -> MutexGuard<'_, NodeState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a request for `key` and returns how many it had before.
fn count(state: &Shared, key: &str) -> u64 {
    let mut state = lock(state);
    let count = state.requests.entry(key.to_owned()).or_insert(0);
    *count += 1;
    *count - 1
}

/// A JSON-RPC server on 127.0.0.1 whose request path picks the behaviour, so one server plays
/// many backends. Batches are answered as a node answers them ([`node_answer`]).
///
/// | path | answer |
/// |---|---|
/// | `/n/<name>` | as set with [`Node::set`]; 404 for a name never set |
/// | `/block/<n>/...` | 200 `application/json` at height n |
/// | `/text-plain/<n>` | the same as `text/plain` |
/// | `/reversed/<n>` | the same, a batch's answers in reverse order and pretty-printed |
/// | `/cut/<n>` | the same, a batch's answer cut in half (not JSON) |
/// | `/hang/...` | nothing for 30 s |
/// | `/endless` | a chunked answer that never ends (ten spaces every 25 ms) |
/// | `/huge-length` | 100 MB announced by Content-Length and streamed |
/// | `/huge-chunked` | 100 MB chunked, no length |
/// | `/invalid-json` | 200 with an HTML body |
/// | `/non-hex`, `/negative`, `/huge-number`, `/number` | bad `result`s |
/// | `/rpc-error` | a JSON-RPC error object |
/// | `/redirect` | 302 to `/block/16` |
/// | `/status/<code>` | that status, JSON body |
/// | `/trickle` | (raw) headers, then one body byte every 200 ms |
/// | `/close` | (raw) closes the connection without answering |
/// | `/garbage` | (raw) answers something that is not HTTP |
pub struct Node {
    http: Server,
    broken_port: u16,
    state: Shared,
}

impl Node {
    /// Starts the node; it stops with the test's runtime.
    pub async fn start() -> Self {
        let state = Shared::default();
        let router = Router::new().fallback(answer).with_state(state.clone());
        let http = serve(router).await;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let broken_port = listener.local_addr().expect("local addr").port();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = answer_broken(stream, shared).await;
                });
            }
        });
        Self {
            http,
            broken_port,
            state,
        }
    }

    /// `http://127.0.0.1:PORT{path}` (the raw listener's port for the paths that need it).
    pub fn url(&self, path: &str) -> String {
        let first = path.trim_start_matches('/').split(['/', '?']).next();
        match first {
            Some("trickle" | "close" | "garbage") => {
                format!("http://127.0.0.1:{}{path}", self.broken_port)
            }
            _ => self.http.url(path),
        }
    }

    /// The port of the HTTP server (the one [`Node::url`] names for well-formed answers).
    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// The URL of the node `name` ([`Node::set`]).
    pub fn named(&self, name: &str) -> String {
        self.url(&format!("/n/{name}"))
    }

    /// Sets how `name` answers, and resets its request count.
    pub fn set(&self, name: &str, answer: Answer) {
        let mut state = lock(&self.state);
        state.answers.insert(name.to_owned(), answer);
        state.requests.remove(name);
    }

    /// Requests received so far, all paths together (counts reset by [`Node::set`] excluded).
    pub fn requests(&self) -> u64 {
        lock(&self.state).requests.values().sum()
    }
}

fn reply(status: u16, content_type: &str, body: Body) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .unwrap_or_default()
}

fn json_reply(status: u16, text: String) -> Response {
    reply(status, "application/json", Body::from(text))
}

fn result(value: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":1,"result":{value}}}"#)
}

/// `count` blocks of `block`, one every `pause`.
fn paced(block: Bytes, count: usize, pause: Duration) -> Body {
    let stream = futures::stream::unfold(0, move |sent| {
        let block = block.clone();
        async move {
            if sent == count {
                return None;
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Some((Ok::<_, std::io::Error>(block), sent + 1))
        }
    });
    Body::from_stream(stream)
}

async fn answer(State(state): State<Shared>, uri: Uri, request: Bytes) -> Response {
    let path = uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let key = match segments.as_slice() {
        ["n", name, ..] => *name,
        _ => path,
    };
    let seen = count(&state, key);
    let height = |n: &str| n.parse::<u64>().unwrap_or(0);
    match segments.as_slice() {
        ["n", name, ..] => {
            let set = lock(&state).answers.get(*name).copied();
            match set {
                Some(Answer::Height(at)) => json_reply(200, node_answer(&request, at)),
                Some(Answer::Counting(base)) => json_reply(200, node_answer(&request, base + seen)),
                Some(Answer::Status(code)) => json_reply(code, r#"{"error":"injected"}"#.into()),
                None => json_reply(404, "{}".into()),
            }
        }
        ["block", n, ..] => json_reply(200, node_answer(&request, height(n))),
        ["reversed", n, ..] => json_reply(200, reversed(&node_answer(&request, height(n)))),
        ["cut", n, ..] => json_reply(200, cut(node_answer(&request, height(n)))),
        ["text-plain", n, ..] => reply(
            200,
            "text/plain",
            Body::from(node_answer(&request, height(n))),
        ),
        ["hang", ..] => {
            tokio::time::sleep(HANG).await;
            json_reply(504, "{}".into())
        }
        ["endless"] => reply(
            200,
            "application/json",
            paced(
                Bytes::from_static(b"          "),
                1200,
                Duration::from_millis(25),
            ),
        ),
        ["huge-length"] => {
            let block = Bytes::from(vec![b' '; 64 * 1024]);
            let mut response = reply(
                200,
                "application/json",
                paced(block, HUGE / (64 * 1024), Duration::ZERO),
            );
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HUGE.into());
            response
        }
        ["huge-chunked"] => reply(
            200,
            "application/json",
            paced(
                Bytes::from(vec![b' '; 64 * 1024]),
                HUGE / (64 * 1024),
                Duration::ZERO,
            ),
        ),
        ["invalid-json"] => reply(200, "text/html", Body::from("<html>not json</html>")),
        ["non-hex"] => json_reply(200, result("\"0xzz\"")),
        ["negative"] => json_reply(200, result("\"-0x5\"")),
        ["huge-number"] => json_reply(200, result("\"0xffffffffffffffffffffffff\"")),
        ["number"] => json_reply(200, result("16")),
        ["rpc-error"] => json_reply(
            200,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"header not found"}}"#
                .into(),
        ),
        ["redirect"] => {
            let mut response = reply(302, "text/plain", Body::empty());
            response
                .headers_mut()
                .insert(header::LOCATION, "/block/16".parse().expect("header value"));
            response
        }
        ["status", code, ..] => json_reply(code.parse().unwrap_or(500), result("\"0x10\"")),
        _ => reply(404, "text/plain", Body::from("unknown path")),
    }
}

/// The answers that are not HTTP: the request is read whole first, so that closing does not
/// reset it.
async fn answer_broken(mut stream: TcpStream, state: Shared) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 || buffer.len() > 64 * 1024 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = buffer.len() - head_end;
    while body < length.min(64 * 1024) {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        body += read;
    }
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    count(&state, &path);
    if path.starts_with("/trickle") {
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n")
            .await?;
        let pause = Duration::from_millis(200);
        for _ in 0..HANG.as_millis() / pause.as_millis() {
            stream.write_all(b" ").await?;
            tokio::time::sleep(pause).await;
        }
    } else if path.starts_with("/garbage") {
        stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await?;
    }
    stream.shutdown().await
}

/// A node's result for `method` at `height` (chain id 1, not syncing); `None` for a method a
/// node would not know.
pub fn node_result(method: &str, height: u64) -> Option<Value> {
    match method {
        "eth_blockNumber" => Some(json!(format!("{height:#x}"))),
        "eth_chainId" => Some(json!("0x1")),
        "eth_syncing" => Some(json!(false)),
        _ => None,
    }
}

/// The answer to a JSON-RPC request with the results of `result`: one object for a single
/// call, an array (by id) for a batch, "method not found" where `result` has none. A request
/// that is not JSON is answered as an `eth_blockNumber` with id 1.
pub fn rpc_answer(request: &[u8], result: impl Fn(&str) -> Option<Value>) -> String {
    let single = |id: Value, method: &str| match result(method) {
        Some(value) => json!({"jsonrpc": "2.0", "id": id, "result": value}),
        None => json!({"jsonrpc": "2.0", "id": id,
            "error": {"code": -32601, "message": "method not found"}}),
    };
    let method = |call: &Value| {
        call.get("method")
            .and_then(Value::as_str)
            .unwrap_or("eth_blockNumber")
            .to_owned()
    };
    match serde_json::from_slice::<Value>(request) {
        Ok(Value::Array(calls)) => Value::Array(
            calls
                .iter()
                .map(|c| single(c.get("id").cloned().unwrap_or(Value::Null), &method(c)))
                .collect(),
        )
        .to_string(),
        Ok(call) => single(call.get("id").cloned().unwrap_or(json!(1)), &method(&call)).to_string(),
        Err(_) => single(json!(1), "eth_blockNumber").to_string(),
    }
}

/// A batch's answer (`text`, an array) with its answers in reverse order, pretty-printed;
/// anything else as it is.
fn reversed(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(mut answers)) => {
            answers.reverse();
            serde_json::to_string_pretty(&Value::Array(answers)).unwrap_or_default()
        }
        _ => text.to_owned(),
    }
}

/// A batch's answer (`text`, an array) cut in half; anything else as it is.
fn cut(mut text: String) -> String {
    if text.starts_with('[') {
        let mut half = text.len() / 2;
        while !text.is_char_boundary(half) {
            half -= 1;
        }
        text.truncate(half);
    }
    text
}

/// A well-behaved node's answer at `height` ([`node_result`] through [`rpc_answer`]).
pub fn node_answer(request: &[u8], height: u64) -> String {
    rpc_answer(request, |method| node_result(method, height))
}
