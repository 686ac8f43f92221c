//! A fleet of fake Ethereum nodes on loopback for the fan-out benchmark.
//!
//! Backend `n` is `http://127.0.0.1:<port n mod P>/node/n`, so a fleet of up to `P` backends
//! has one host:port per backend (no connection is shared between two "nodes", as in a real
//! fleet). Every node answers `eth_blockNumber`, `eth_chainId` and `eth_syncing`, alone or as a
//! batch, after [`ANSWER_DELAY`], with HTTP/1.1 keep-alive (axum, answers from the test kit's
//! [`node_answer`]). When a hang modulus `k` is set, every backend with `n % k == k - 1` reads
//! the request and does not answer for [`HANG_LIMIT`]. Nodes can also be made to close every
//! connection after answering.
//!
//! 10 000 listening sockets and their 10 000 kept-alive connections need more descriptors than
//! one process may hold here (`RLIMIT_NOFILE` 20 000, hard), so the fan-out benchmark runs the
//! fleet in helper processes of at most [`PORTS_PER_PROCESS`] ports each ([`RemoteFleet`],
//! the hidden `__fleet` subcommand), driven over their stdin and stdout.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use devstack::testkit::node_answer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;

/// How long a node takes to answer.
pub const ANSWER_DELAY: Duration = Duration::from_millis(5);
/// How long a hanging node keeps a request without answering.
pub const HANG_LIMIT: Duration = Duration::from_secs(30);
/// The height every node reports (`0x112a880`).
pub const HEIGHT: u64 = 18_000_000;
/// Most ports one `__fleet` process serves (each may hold as many kept-alive connections).
pub const PORTS_PER_PROCESS: usize = 4000;

/// Counters of the fleet.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Requests answered.
    pub answered: AtomicU64,
    /// Requests held without an answer.
    pub hung: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Arrival of the first request since the last reset, ns since the epoch (0: none).
    pub first_request_ns: AtomicU64,
    /// Arrival of the last request since the last reset, ns since the epoch.
    pub last_request_ns: AtomicU64,
}

/// A snapshot of [`FleetStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Requests answered.
    pub answered: u64,
    /// Requests held without an answer.
    pub hung: u64,
    /// Connections accepted.
    pub connections: u64,
    /// First request arrival, ns since the epoch (0: none).
    pub first_request_ns: u64,
    /// Last request arrival, ns since the epoch.
    pub last_request_ns: u64,
}

impl StatsSnapshot {
    /// Two fleets' counters together.
    pub fn merge(self, other: Self) -> Self {
        let first = match (self.first_request_ns, other.first_request_ns) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        Self {
            answered: self.answered + other.answered,
            hung: self.hung + other.hung,
            connections: self.connections + other.connections,
            first_request_ns: first,
            last_request_ns: self.last_request_ns.max(other.last_request_ns),
        }
    }
}

impl FleetStats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            answered: self.answered.load(Ordering::Relaxed),
            hung: self.hung.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            first_request_ns: self.first_request_ns.load(Ordering::Relaxed),
            last_request_ns: self.last_request_ns.load(Ordering::Relaxed),
        }
    }

    /// Zeroes every counter.
    pub fn reset(&self) {
        for counter in [
            &self.answered,
            &self.hung,
            &self.connections,
            &self.first_request_ns,
            &self.last_request_ns,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    fn note_request(&self) {
        let now = u64::try_from(crate::count_proxy::now_ns()).unwrap_or(u64::MAX);
        let _ =
            self.first_request_ns
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_request_ns.fetch_max(now, Ordering::Relaxed);
    }
}

/// Running fake nodes; stopped when dropped.
pub struct StubFleet {
    ports: Vec<u16>,
    hang_every: Arc<AtomicUsize>,
    close_after_answer: Arc<AtomicBool>,
    stats: Arc<FleetStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl StubFleet {
    /// Binds `listeners` loopback ports (at least one) and serves them.
    pub async fn start(listeners: usize) -> std::io::Result<Self> {
        let hang_every = Arc::new(AtomicUsize::new(0));
        let close_after_answer = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FleetStats::default());
        let router = Router::new()
            .route("/node/{n}", axum::routing::post(answer))
            .with_state(Fleet {
                hang_every: hang_every.clone(),
                close_after_answer: close_after_answer.clone(),
                stats: stats.clone(),
            });
        let mut ports = Vec::with_capacity(listeners.max(1));
        let mut tasks = Vec::with_capacity(listeners.max(1));
        for _ in 0..listeners.max(1) {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            ports.push(listener.local_addr()?.port());
            let counted = stats.clone();
            let listener = listener.tap_io(move |stream| {
                counted.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
            });
            let router = router.clone();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            }));
        }
        Ok(Self {
            ports,
            hang_every,
            close_after_answer,
            stats,
            tasks,
        })
    }

    /// Backend `n`'s URL.
    pub fn url(&self, n: usize) -> String {
        format!(
            "http://127.0.0.1:{}/node/{n}",
            self.ports[n % self.ports.len()]
        )
    }

    /// Makes every backend with `n % k == k - 1` hang (`k = 0`: none hangs).
    pub fn set_hang_every(&self, k: usize) {
        self.hang_every.store(k, Ordering::Relaxed);
    }

    /// Makes every node close its connection after answering (`Connection: close`), so the
    /// client can keep no idle connection: what a prober without a connection pool sees.
    pub fn set_close_after_answer(&self, close: bool) {
        self.close_after_answer.store(close, Ordering::Relaxed);
    }

    /// Whether backend `n` hangs with modulus `k`.
    pub fn hangs(n: usize, k: usize) -> bool {
        k > 0 && n % k == k - 1
    }

    /// The counters.
    pub fn stats(&self) -> &FleetStats {
        &self.stats
    }
}

impl Drop for StubFleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The hidden `__fleet --listeners N` subcommand: serves N ports, prints `{"ports": [...]}`,
/// then obeys one command per stdin line (`hang K`, `close 0|1`, `reset`, `stats`), answering
/// each with one stdout line; exits at the end of stdin.
pub fn fleet_main(args: &[String]) -> std::process::ExitCode {
    let listeners = match args {
        [flag, n] if flag == "--listeners" => n.parse().unwrap_or(0),
        _ => 0,
    };
    if listeners == 0 {
        eprintln!("usage: jsonrpc-proxy-bench __fleet --listeners N");
        return std::process::ExitCode::from(2);
    }
    crate::sys::set_nofile(None);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("__fleet: cannot start tokio: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let fleet = match StubFleet::start(listeners).await {
            Ok(fleet) => fleet,
            Err(error) => {
                eprintln!("__fleet: cannot listen: {error}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let mut stdout = tokio::io::stdout();
        let hello = json!({ "ports": fleet.ports }).to_string() + "\n";
        if stdout.write_all(hello.as_bytes()).await.is_err() {
            return std::process::ExitCode::FAILURE;
        }
        let _ = stdout.flush().await;
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut words = line.split_whitespace();
            let reply = match (
                words.next(),
                words.next().and_then(|w| w.parse::<usize>().ok()),
            ) {
                (Some("hang"), Some(k)) => {
                    fleet.set_hang_every(k);
                    "ok".to_owned()
                }
                (Some("close"), Some(flag)) => {
                    fleet.set_close_after_answer(flag != 0);
                    "ok".to_owned()
                }
                (Some("reset"), _) => {
                    fleet.stats().reset();
                    "ok".to_owned()
                }
                (Some("stats"), _) => json!(fleet.stats().snapshot()).to_string(),
                _ => format!("error: unknown command {line:?}"),
            };
            if stdout.write_all((reply + "\n").as_bytes()).await.is_err() {
                break;
            }
            let _ = stdout.flush().await;
        }
        std::process::ExitCode::SUCCESS
    })
}

struct FleetProcess {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl FleetProcess {
    async fn command(&mut self, command: &str) -> Result<String, String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("fleet process: {e}"))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| format!("fleet process: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line()).await {
            Ok(Ok(Some(line))) if !line.starts_with("error") => Ok(line),
            Ok(Ok(Some(line))) => Err(format!("fleet process: {line}")),
            Ok(_) => Err("the fleet process exited".into()),
            Err(_) => Err(format!("the fleet process did not answer {command:?}")),
        }
    }
}

/// A fleet served by `__fleet` helper processes (killed when dropped); backend `n` is on port
/// `n mod P` of all their ports.
pub struct RemoteFleet {
    processes: Vec<FleetProcess>,
    ports: Vec<u16>,
}

impl RemoteFleet {
    /// Starts enough `__fleet` processes for `listeners` ports.
    pub async fn start(listeners: usize) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding the bench binary: {e}"))?;
        let mut processes = Vec::new();
        let mut ports = Vec::new();
        let mut left = listeners.max(1);
        while left > 0 {
            let share = left.min(PORTS_PER_PROCESS);
            left -= share;
            let mut child = tokio::process::Command::new(&exe)
                .arg("__fleet")
                .arg("--listeners")
                .arg(share.to_string())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting a fleet process: {e}"))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err("a fleet process has no stdin/stdout".into());
            };
            let mut stdout = BufReader::new(stdout).lines();
            let Ok(Ok(Some(hello))) =
                tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await
            else {
                return Err("a fleet process did not start".into());
            };
            let value: Value =
                serde_json::from_str(&hello).map_err(|e| format!("fleet hello {hello:?}: {e}"))?;
            ports.extend(
                value["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok())),
            );
            processes.push(FleetProcess {
                _child: child,
                stdin,
                stdout,
            });
        }
        if ports.is_empty() {
            return Err("the fleet processes listen on no port".into());
        }
        Ok(Self { processes, ports })
    }

    /// Backend `n`'s URL.
    pub fn url(&self, n: usize) -> String {
        format!(
            "http://127.0.0.1:{}/node/{n}",
            self.ports[n % self.ports.len()]
        )
    }

    async fn broadcast(&mut self, command: &str) -> Result<Vec<String>, String> {
        let mut replies = Vec::new();
        for process in &mut self.processes {
            replies.push(process.command(command).await?);
        }
        Ok(replies)
    }

    /// See [`StubFleet::set_hang_every`].
    pub async fn set_hang_every(&mut self, k: usize) -> Result<(), String> {
        self.broadcast(&format!("hang {k}")).await.map(|_| ())
    }

    /// See [`StubFleet::set_close_after_answer`].
    pub async fn set_close_after_answer(&mut self, close: bool) -> Result<(), String> {
        self.broadcast(&format!("close {}", u8::from(close)))
            .await
            .map(|_| ())
    }

    /// Zeroes the counters.
    pub async fn reset(&mut self) -> Result<(), String> {
        self.broadcast("reset").await.map(|_| ())
    }

    /// All processes' counters together.
    pub async fn stats(&mut self) -> Result<StatsSnapshot, String> {
        let mut total = StatsSnapshot::default();
        for reply in self.broadcast("stats").await? {
            let snapshot: StatsSnapshot =
                serde_json::from_str(&reply).map_err(|e| format!("fleet stats {reply:?}: {e}"))?;
            total = total.merge(snapshot);
        }
        Ok(total)
    }
}

#[derive(Clone)]
struct Fleet {
    hang_every: Arc<AtomicUsize>,
    close_after_answer: Arc<AtomicBool>,
    stats: Arc<FleetStats>,
}

async fn answer(State(fleet): State<Fleet>, Path(n): Path<usize>, body: Bytes) -> Response {
    fleet.stats.note_request();
    if StubFleet::hangs(n, fleet.hang_every.load(Ordering::Relaxed)) {
        fleet.stats.hung.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(HANG_LIMIT).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    tokio::time::sleep(ANSWER_DELAY).await;
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        node_answer(&body, HEIGHT),
    )
        .into_response();
    if fleet.close_after_answer.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    fleet.stats.answered.fetch_add(1, Ordering::Relaxed);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_merge() {
        let a = StatsSnapshot {
            answered: 1,
            hung: 0,
            connections: 1,
            first_request_ns: 0,
            last_request_ns: 0,
        };
        let b = StatsSnapshot {
            answered: 2,
            hung: 1,
            connections: 3,
            first_request_ns: 5,
            last_request_ns: 9,
        };
        let c = StatsSnapshot {
            first_request_ns: 3,
            last_request_ns: 4,
            ..a
        };
        let all = a.merge(b).merge(c);
        assert_eq!(all.answered, 4);
        assert_eq!(all.first_request_ns, 3);
        assert_eq!(all.last_request_ns, 9);
    }

    #[test]
    fn hanging_backends_are_every_kth() {
        let hanging: Vec<usize> = (0..30).filter(|n| StubFleet::hangs(*n, 10)).collect();
        assert_eq!(hanging, vec![9, 19, 29]);
        assert!(!(0..30).any(|n| StubFleet::hangs(n, 0)));
    }
}
