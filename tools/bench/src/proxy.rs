//! Part 2: proxy overhead and a peer. wrk against anvil straight, through our rendered nginx
//! (open, and gated: a client's key URL through the JSON-RPC gate), through nginx in the
//! original's style and through blutgang, interleaved round by round, for the workloads of
//! [`Workload::ALL`] (the head, a call every proxy forwards, calls that never change and may be
//! cached, a 10-call and a 100-call batch); then what a node's death costs clients of each,
//! before any control plane reacts.
//!
//! Every anvil is seeded alike ([`seed`]): one transfer, a block of [`FULL_BLOCK_TXS`]
//! transfers and [`SEED_BLOCKS`] more blocks, so that the gate's head poll finds a head, safe
//! and finalized blocks, and the cacheable workloads name blocks and a receipt at or below the
//! finalized block. For those workloads nginx alone, answering from its configuration
//! ([`ceiling_fragment`]), tells the most any cache inside nginx could serve here.
//!
//! nginx runs on [`devstack::prepare_prefix`]'s main configuration with `worker_processes auto`;
//! the rendered configuration (or the original's style) is included in `http { }`.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devstack::{Anvil, AnvilOptions};
use jsonrpc_proxy::model::backend_url::BackendUrl;
use jsonrpc_proxy::render::gate::{key_sha256, GateClient, GatePolicy, USAGE_SOCKET};
use jsonrpc_proxy::render::nginx::render_gated;
use jsonrpc_proxy::render::options::RenderOptions;
use jsonrpc_proxy::render::routing::{RouteTarget, RoutingPlan};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::blutgang::{self, Blutgang};
use crate::sys;

/// An address with a balance on every fresh anvil (its first dev account).
const ACCOUNT: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
/// The seed transfer's sender: anvil's second dev account (unlocked on every fresh anvil), so
/// that [`ACCOUNT`]'s balance and nonce stay those of a fresh chain.
const SEED_FROM: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
/// The seed transfer's recipient: anvil's third dev account.
const SEED_TO: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
/// The seed transfer's hash: every field of it is fixed and anvil signs it with the same dev
/// key, so every fresh anvil gives it this hash (checked by [`seed`]).
pub const SEED_TX: &str = "0xafcb3db4cc1f7965fff64debb6254620f3edb91568c479ba5032fbd81c12ad9b";
/// The block the seed transfer is mined in (anvil mines each transaction at once).
pub const SEED_BLOCK: u64 = 1;
/// The next block holds [`FULL_BLOCK_TXS`] transfers from [`SEED_FROM`] (nonces 1 on), as a
/// busy chain's blocks hold many.
pub const FULL_BLOCK: u64 = SEED_BLOCK + 1;
/// Transfers in [`FULL_BLOCK`].
pub const FULL_BLOCK_TXS: u64 = 100;
/// Blocks mined after it: anvil's `finalized` is its head minus 64 and `safe` its head minus
/// 32, so the head is 130, safe 98, finalized 66, and both blocks above are final.
pub const SEED_BLOCKS: u64 = 128;
/// The head of a seeded node.
pub const SEED_HEAD: u64 = FULL_BLOCK + SEED_BLOCKS;
/// The bench client's key (the gated row's URL is `/v3/<key>`).
const BENCH_KEY: &str = "bench-client-key-0123456789abcdefghijklmnop";
/// The bench client's rate limit: high enough never to refuse a call of the bench.
const BENCH_CALLS_PER_SECOND: u32 = 1_000_000_000;
/// The bench client's requests in flight: more than any part opens.
const BENCH_CONCURRENT_REQUESTS: u32 = 100_000;

/// What the clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// `eth_blockNumber`: changes with every block, so no proxy may cache it; the gate answers
    /// it itself with its served head.
    BlockNumber,
    /// `eth_chainId`: never changes, so a caching proxy may answer it itself.
    ChainId,
    /// `eth_getBalance` of [`ACCOUNT`] at `latest`: not cacheable, answered by a node through
    /// every proxy (the gate pins `latest` to its served head and forwards it).
    Balance,
    /// One POST holding 10 calls (a JSON-RPC batch), some cacheable, some not.
    Batch,
    /// One POST holding 100 calls (the gate's default batch limit): the 10 calls ten times.
    Batch100,
    /// `eth_getBlockByNumber` of [`SEED_BLOCK`] (at or below the finalized block), without
    /// transactions: an answer that cannot change.
    FinalizedBlock,
    /// `eth_getTransactionReceipt` of [`SEED_TX`], mined in [`SEED_BLOCK`]: an answer that
    /// cannot change.
    Receipt,
    /// `eth_getBlockByNumber` of [`FULL_BLOCK`] with its transactions' hashes: an answer that
    /// cannot change, and costs the node more than the others.
    FullBlock,
}

impl Workload {
    /// Every workload, in the order they are run and reported.
    pub const ALL: [Workload; 8] = [
        Self::BlockNumber,
        Self::ChainId,
        Self::Balance,
        Self::Batch,
        Self::Batch100,
        Self::FinalizedBlock,
        Self::Receipt,
        Self::FullBlock,
    ];

    /// The workloads whose answers never change: served from a cache where a proxy has one.
    pub const CACHEABLE: [Workload; 4] = [
        Self::ChainId,
        Self::FinalizedBlock,
        Self::Receipt,
        Self::FullBlock,
    ];

    /// How the report names it.
    pub fn title(self) -> &'static str {
        match self {
            Self::BlockNumber => "`eth_blockNumber` (the head: the gate answers it itself)",
            Self::ChainId => "`eth_chainId` (cacheable)",
            Self::Balance => "`eth_getBalance` at `latest` (not cacheable: every path forwards it)",
            Self::Batch => "a batch of 10 calls in one POST",
            Self::Batch100 => "a batch of 100 calls in one POST",
            Self::FinalizedBlock => {
                "`eth_getBlockByNumber` of a finalized block, without transactions (cacheable)"
            }
            Self::Receipt => "`eth_getTransactionReceipt` of a finalized transfer (cacheable)",
            Self::FullBlock => {
                "`eth_getBlockByNumber` of a finalized block of 100 transfers, their hashes (cacheable)"
            }
        }
    }

    /// Its name in one word or two, for the goals table.
    pub fn short(self) -> &'static str {
        match self {
            Self::BlockNumber => "eth_blockNumber",
            Self::ChainId => "eth_chainId",
            Self::Balance => "eth_getBalance",
            Self::Batch => "10-call batch",
            Self::Batch100 => "100-call batch",
            Self::FinalizedBlock => "finalized block",
            Self::Receipt => "receipt",
            Self::FullBlock => "block of 100 transfers",
        }
    }

    /// Whether the path of `role` is measured with this workload: every proxy for the first
    /// workloads; the forwarded call only where it tells the gate's cost (direct, ours,
    /// gated); the cacheable calls where a cache may answer them (the gate, the peer) beside
    /// the node, ours without the gate and nginx's ceiling, measured for them alone.
    pub fn measures(self, role: Role) -> bool {
        if role == Role::Ceiling {
            return Self::CACHEABLE.contains(&self);
        }
        match self {
            Self::BlockNumber | Self::ChainId | Self::Batch | Self::Batch100 => true,
            Self::Balance => matches!(role, Role::Direct | Role::Ours | Role::Gated),
            Self::FinalizedBlock | Self::Receipt | Self::FullBlock => role != Role::Original,
        }
    }

    /// The path nginx's ceiling answers it on (its configuration holds one answer per path).
    fn ceiling_path(self) -> String {
        self.short().replace(' ', "-")
    }

    /// Calls in one request.
    pub fn calls(self) -> u64 {
        match self {
            Self::Batch => 10,
            Self::Batch100 => 100,
            _ => 1,
        }
    }

    /// The request body.
    pub fn body(self) -> String {
        let call = |id: u64, method: &str, params: Value| json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        let batch_call = |id: u64| match id % 10 {
            1 => call(id, "eth_chainId", json!([])),
            2 => call(id, "net_version", json!([])),
            3 => call(id, "eth_blockNumber", json!([])),
            4 => call(id, "eth_gasPrice", json!([])),
            5 => call(id, "eth_getBalance", json!([ACCOUNT, "latest"])),
            6 => call(id, "eth_getTransactionCount", json!([ACCOUNT, "latest"])),
            7 => call(id, "eth_getCode", json!([ACCOUNT, "latest"])),
            8 => call(id, "eth_getBlockByNumber", json!(["0x0", false])),
            9 => call(id, "eth_getBalance", json!([ACCOUNT, "0x0"])),
            _ => call(id, "eth_getStorageAt", json!([ACCOUNT, "0x0", "0x0"])),
        };
        match self {
            Self::BlockNumber => call(1, "eth_blockNumber", json!([])).to_string(),
            Self::ChainId => call(1, "eth_chainId", json!([])).to_string(),
            Self::Balance => call(1, "eth_getBalance", json!([ACCOUNT, "latest"])).to_string(),
            Self::FinalizedBlock => call(
                1,
                "eth_getBlockByNumber",
                json!([format!("{SEED_BLOCK:#x}"), false]),
            )
            .to_string(),
            Self::Receipt => call(1, "eth_getTransactionReceipt", json!([SEED_TX])).to_string(),
            Self::FullBlock => call(
                1,
                "eth_getBlockByNumber",
                json!([format!("{FULL_BLOCK:#x}"), false]),
            )
            .to_string(),
            Self::Batch | Self::Batch100 => {
                Value::Array((1..=self.calls()).map(batch_call).collect()).to_string()
            }
        }
    }

    /// Whether `answer` is a right answer to [`Self::body`]: a result for every call, under
    /// its id; for the block and the receipt, the object asked for (never `null`).
    pub fn check(self, answer: &[u8]) -> Result<(), String> {
        let value: Value = serde_json::from_slice(answer).map_err(|_| {
            format!(
                "not JSON: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(80)])
            )
        })?;
        let one = |value: &Value, id: u64| -> Result<(), String> {
            if value.get("id") != Some(&json!(id)) {
                return Err(format!("id {:?} instead of {id}", value.get("id")));
            }
            match (value.get("result"), value.get("error")) {
                (Some(_), None) => Ok(()),
                (_, Some(error)) => Err(format!("error {error}")),
                (None, None) => Err("no result".into()),
            }
        };
        let field = |value: &Value, name: &str, expected: &str| -> Result<(), String> {
            let found = value.get("result").and_then(|r| r.get(name));
            if found.and_then(Value::as_str) == Some(expected) {
                Ok(())
            } else {
                Err(format!("result {name} {found:?} instead of {expected}"))
            }
        };
        match self {
            Self::BlockNumber | Self::ChainId | Self::Balance => one(&value, 1),
            Self::FinalizedBlock => {
                one(&value, 1).and_then(|()| field(&value, "number", &format!("{SEED_BLOCK:#x}")))
            }
            Self::Receipt => {
                one(&value, 1).and_then(|()| field(&value, "transactionHash", SEED_TX))
            }
            Self::FullBlock => {
                one(&value, 1)
                    .and_then(|()| field(&value, "number", &format!("{FULL_BLOCK:#x}")))?;
                let held = value["result"]["transactions"].as_array().map(Vec::len);
                if held == Some(FULL_BLOCK_TXS as usize) {
                    Ok(())
                } else {
                    Err(format!("{held:?} transactions instead of {FULL_BLOCK_TXS}"))
                }
            }
            Self::Batch | Self::Batch100 => {
                let calls = value
                    .as_array()
                    .ok_or_else(|| "a batch answered by something else than an array".to_owned())?;
                let expected = self.calls();
                if calls.len() as u64 != expected {
                    return Err(format!("{} answers to {expected} calls", calls.len()));
                }
                // A batch's answers may come in any order.
                let mut ids: Vec<u64> = calls
                    .iter()
                    .filter_map(|c| c.get("id").and_then(Value::as_u64))
                    .collect();
                ids.sort_unstable();
                if ids != (1..=expected).collect::<Vec<_>>() {
                    return Err(format!("answer ids {ids:?}"));
                }
                calls
                    .iter()
                    .try_for_each(|c| one(c, c.get("id").and_then(Value::as_u64).unwrap_or(0)))
            }
        }
    }
}

/// wrk's script: POST `body`, print a JSON summary line prefixed `BENCH `.
fn wrk_script(body: &str) -> String {
    format!(
        r#"wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"#
    )
}

/// What wrk reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrkResult {
    /// Requests completed.
    pub requests: u64,
    /// Run time, µs.
    pub duration_us: u64,
    /// Connect errors.
    pub connect: u64,
    /// Read errors.
    pub read: u64,
    /// Write errors.
    pub write: u64,
    /// Answers with a status other than 2xx/3xx.
    pub status: u64,
    /// Timeouts.
    pub timeout: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Slowest, µs.
    pub max_us: u64,
}

impl WrkResult {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        if self.duration_us == 0 {
            0.0
        } else {
            self.requests as f64 / (self.duration_us as f64 / 1e6)
        }
    }

    /// Every kind of error.
    pub fn errors(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

/// Parses wrk's output: the `BENCH {...}` line of [`wrk_script`].
pub fn parse_wrk(output: &str) -> Option<WrkResult> {
    output
        .lines()
        .find_map(|line| line.strip_prefix("BENCH "))
        .and_then(|json| serde_json::from_str(json).ok())
}

/// Who answers the clients in a compared row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Role {
    /// The node itself, no proxy.
    Direct,
    /// nginx with our rendered configuration.
    Ours,
    /// The same with one registered client, called through its key URL: the JSON-RPC gate.
    Gated,
    /// nginx in the original's style.
    Original,
    /// Another JSON-RPC proxy (blutgang).
    Peer,
    /// nginx alone answering each cacheable workload from its configuration, no Lua: the most
    /// any cache inside nginx could serve here.
    Ceiling,
}

/// One wrk run of a compared row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// wrk's figures.
    pub wrk: WrkResult,
    /// CPU time of the proxy's processes per request, µs; `None` without a proxy.
    pub cpu_us: Option<f64>,
    /// What the gate's access log says of the run; `None` without a gate, and for batches.
    pub gate_log: Option<GateLog>,
}

/// Requests the gate logged, and how many of them went on to a node (the rest it answered
/// itself: the served head, or its cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GateLog {
    /// Requests logged.
    pub requests: u64,
    /// Requests with an upstream address (`$upstream_addr` other than `-`).
    pub forwarded: u64,
}

impl GateLog {
    /// Counts the lines of the gate's access log (`jsonrpc_gate` format: the upstream address
    /// is the last field before the quoted user agent).
    pub fn count(lines: impl Iterator<Item = String>) -> Self {
        let mut log = Self::default();
        for line in lines {
            let Some((head, _agent)) = line.rsplit_once(" \"") else {
                continue;
            };
            log.requests += 1;
            if head
                .rsplit(' ')
                .next()
                .is_some_and(|upstream| upstream != "-")
            {
                log.forwarded += 1;
            }
        }
        log
    }

    fn add(self, other: Self) -> Self {
        Self {
            requests: self.requests + other.requests,
            forwarded: self.forwarded + other.forwarded,
        }
    }
}

/// One path of the interleaved comparison, over every round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparedRow {
    /// What was measured.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// One run per round, in order.
    pub runs: Vec<Run>,
    /// Spot check of the answers before the rounds: how many of [`SPOT_CHECKS`] were wrong,
    /// and the first wrong one.
    pub wrong_answers: u32,
    /// The first wrong answer, if any.
    pub wrong_answer: Option<String>,
    /// Why the row was not measured (the peer not installed, every answer wrong).
    pub not_run: Option<String>,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

impl ComparedRow {
    /// Median requests/s over the rounds.
    pub fn rps(&self) -> f64 {
        median(self.runs.iter().map(|r| r.wrk.rps()).collect())
    }

    /// Lowest and highest requests/s of the rounds.
    pub fn rps_range(&self) -> (f64, f64) {
        let rates = self.runs.iter().map(|r| r.wrk.rps());
        (
            rates.clone().fold(f64::INFINITY, f64::min),
            rates.fold(0.0, f64::max),
        )
    }

    /// Median p50 over the rounds, ms.
    pub fn p50_ms(&self) -> f64 {
        median(self.runs.iter().map(|r| r.wrk.p50_us as f64).collect()) / 1000.0
    }

    /// Median p99 over the rounds, ms.
    pub fn p99_ms(&self) -> f64 {
        median(self.runs.iter().map(|r| r.wrk.p99_us as f64).collect()) / 1000.0
    }

    /// Errors of every round.
    pub fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.wrk.errors()).sum()
    }

    /// Median CPU per request of the proxy, µs; `None` without a proxy.
    pub fn cpu_us(&self) -> Option<f64> {
        let cpu: Vec<f64> = self.runs.iter().filter_map(|r| r.cpu_us).collect();
        (!cpu.is_empty()).then(|| median(cpu))
    }

    /// What the gate logged over every round; `None` without a gate.
    pub fn gate_log(&self) -> Option<GateLog> {
        self.runs
            .iter()
            .filter_map(|r| r.gate_log)
            .reduce(GateLog::add)
    }

    /// Whether it was measured and answered right.
    pub fn valid(&self) -> bool {
        self.not_run.is_none() && !self.runs.is_empty() && self.wrong_answers == 0
    }
}

/// Requests sent through each path, with a check of each answer, before its rounds.
pub const SPOT_CHECKS: u32 = 5;

/// The interleaved comparison of one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// What the clients sent.
    pub workload: Workload,
    /// wrk connections.
    pub connections: u32,
    /// One row per path, in the order each round runs them.
    pub rows: Vec<ComparedRow>,
}

impl Comparison {
    /// The row of `role`.
    pub fn row(&self, role: Role) -> Option<&ComparedRow> {
        self.rows.iter().find(|r| r.role == role)
    }
}

/// One diagnostic configuration, measured once with `eth_blockNumber`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyRow {
    /// What was measured.
    pub name: String,
    /// nginx worker processes (0: auto).
    pub workers: u32,
    /// wrk's figures.
    pub wrk: WrkResult,
    /// nginx CPU time (all its processes) per request, µs.
    pub nginx_cpu_us: f64,
}

/// A node's death under load, through one configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeathRow {
    /// The configuration.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed (transport error, a status other than 200, or an answer without
    /// a result).
    pub errors: u64,
    /// Slowest request, ms.
    pub max_ms: f64,
    /// Seconds of load after the kill.
    pub after_kill_secs: f64,
    /// Why it was not run.
    pub not_run: Option<String>,
}

/// Everything part 2 measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyReport {
    /// One interleaved comparison per workload.
    pub comparisons: Vec<Comparison>,
    /// The same paths with one connection (no queueing: the latency each adds to a call),
    /// for [`UNLOADED_WORKLOADS`].
    pub unloaded: Vec<Comparison>,
    /// Diagnostic nginx variants, one run each, `eth_blockNumber`.
    pub diagnostics: Vec<ProxyRow>,
    /// Node death rows.
    pub deaths: Vec<DeathRow>,
    /// wrk connections.
    pub connections: u32,
    /// wrk seconds per run.
    pub seconds: u32,
    /// Rounds of the comparison.
    pub rounds: u32,
    /// nginx version.
    pub nginx_version: String,
    /// wrk version.
    pub wrk_version: String,
    /// The peer's version (`blutgang 0.3.6`), or why it is missing.
    pub peer_version: Result<String, String>,
    /// Load averages when part 2 started.
    pub load_before: Option<(f64, f64, f64)>,
    /// Load averages when it ended.
    pub load_after: Option<(f64, f64, f64)>,
}

impl ProxyReport {
    /// The comparison of `workload`.
    pub fn comparison(&self, workload: Workload) -> Option<&Comparison> {
        self.comparisons.iter().find(|c| c.workload == workload)
    }
}

/// The workloads also measured with one connection: the head, a single forwarded call (the
/// gate's latency) and the largest batch.
pub const UNLOADED_WORKLOADS: [Workload; 3] =
    [Workload::BlockNumber, Workload::Balance, Workload::Batch100];

/// How part 2 runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    /// wrk seconds per run.
    pub seconds: u32,
    /// Rounds of the interleaved comparison (each path runs once per round).
    pub rounds: u32,
    /// wrk connections.
    pub connections: u32,
    /// Seconds of client load in each node-death run.
    pub death_seconds: u32,
    /// Also run the diagnostic variants (keepalive in the original's style, one worker).
    pub diagnostics: bool,
}

/// An nginx started by the bench, with its own prefix; killed (with its workers) on drop.
pub struct BenchNginx {
    child: Child,
    prefix: tempfile::TempDir,
    socket_dir: PathBuf,
    /// The gate's access log, for a gated configuration.
    gate_log: Option<PathBuf>,
}

impl BenchNginx {
    /// Starts nginx with `fragment` in `http { }` and `workers` worker processes (0 = auto),
    /// waits until `port` accepts connections.
    pub fn start(
        fragment: &str,
        workers: u32,
        port: u16,
        socket_dir: &Path,
    ) -> Result<Self, String> {
        let prefix = tempfile::Builder::new()
            .prefix("bench-nginx-")
            .tempdir()
            .map_err(|e| format!("creating an nginx prefix: {e}"))?;
        let p = prefix.path().display().to_string();
        std::fs::create_dir_all(socket_dir)
            .map_err(|e| format!("creating {}: {e}", socket_dir.display()))?;
        set_mode(socket_dir, 0o755)?;
        let bin = devstack::nginx_binary().map_err(|e| e.to_string())?;
        // `@PREFIX@` in a fragment stands for the prefix directory (for log paths).
        let conf = devstack::prepare_prefix(
            &bin,
            prefix.path(),
            &fragment.replace("@PREFIX@", &p),
            workers,
        )
        .map_err(|e| e.to_string())?;
        devstack::test_config(&bin, prefix.path(), &conf)
            .map_err(|e| format!("nginx -t refused the configuration: {e}"))?;
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&bin)
                .arg("-p")
                .arg(prefix.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(prefix.path().join("logs/error.log"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("starting nginx: {e}"))?
        };
        let nginx = Self {
            child,
            prefix,
            socket_dir: socket_dir.to_owned(),
            gate_log: None,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(nginx);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "nginx did not listen on {port} within 15 s: {}",
            std::fs::read_to_string(nginx.prefix.path().join("logs/error.log")).unwrap_or_default()
        ))
    }
}

impl BenchNginx {
    /// CPU seconds used so far by nginx (master and workers).
    pub fn cpu_seconds(&self) -> f64 {
        sys::group_cpu_seconds(self.child.id())
    }

    /// The master's pid, which is also the process group of its workers.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The size of the gate's access log now; `None` without a gate.
    fn gate_log_offset(&self) -> Option<u64> {
        let path = self.gate_log.as_ref()?;
        Some(std::fs::metadata(path).map_or(0, |m| m.len()))
    }

    /// What the gate logged after `offset` (from [`Self::gate_log_offset`]).
    fn gate_log_since(&self, offset: u64) -> Option<GateLog> {
        use std::io::{BufRead, Seek};
        let path = self.gate_log.as_ref()?;
        let mut file = std::fs::File::open(path).ok()?;
        file.seek(std::io::SeekFrom::Start(offset)).ok()?;
        Some(GateLog::count(
            std::io::BufReader::new(file).lines().map_while(Result::ok),
        ))
    }

    /// The gate's `GET /heads` on its internal socket (HTTP/1.0: the body unchunked).
    fn heads(&self) -> Result<Value, String> {
        use std::io::{Read, Write};
        let socket = self.socket_dir.join(USAGE_SOCKET);
        let failed = |e: std::io::Error| format!("GET /heads on {}: {e}", socket.display());
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).map_err(failed)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(failed)?;
        stream
            .write_all(b"GET /heads HTTP/1.0\r\nHost: x\r\n\r\n")
            .map_err(failed)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(failed)?;
        let text = String::from_utf8_lossy(&raw);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        serde_json::from_str(body).map_err(|e| format!("GET /heads: {e}: {text:?}"))
    }

    /// Waits until the gate serves `head` (its head poll has heard every node), at most
    /// `timeout`: until then it would forward `eth_blockNumber` instead of answering it.
    fn wait_served(&self, head: u64, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let heads = self.heads();
            if let Ok(heads) = &heads {
                if heads.get("served").and_then(Value::as_u64) >= Some(head) {
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "the gate served no head of {head} within {} s: {}",
                    timeout.as_secs(),
                    heads.map_or_else(|e| e, |h| h.to_string())
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for BenchNginx {
    fn drop(&mut self) {
        sys::kill_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
        if let Ok(entries) = std::fs::read_dir(&self.socket_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.socket_dir);
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o} {}: {e}", path.display()))
}

fn version_of(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stderr).into_owned()
                + &String::from_utf8_lossy(&o.stdout);
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

/// Runs wrk against `url`, POSTing `body`.
pub fn run_wrk(url: &str, body: &str, seconds: u32, connections: u32) -> Result<WrkResult, String> {
    let mut script = tempfile::Builder::new()
        .prefix("bench-wrk-")
        .suffix(".lua")
        .tempfile()
        .map_err(|e| format!("creating the wrk script: {e}"))?;
    std::io::Write::write_all(&mut script, wrk_script(body).as_bytes())
        .map_err(|e| format!("writing the wrk script: {e}"))?;
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .min(connections as usize)
        .max(1);
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(script.path())
        .arg(url)
        .output()
        .map_err(|e| format!("running wrk (apt-get install -y wrk): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_wrk(&text).ok_or_else(|| {
        format!(
            "wrk gave no summary ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The rendered configuration (what is deployed) for `nodes` with `leader` as backup; with
/// `gate`, the JSON-RPC gate too.
pub fn ours_fragment(
    port: u16,
    socket_dir: &Path,
    nodes: &[String],
    leader: &str,
    gate: Option<&GatePolicy>,
) -> Result<String, String> {
    let target = |url: &str, is_leader| {
        BackendUrl::parse(url)
            .map(|url| RouteTarget { url, is_leader })
            .map_err(|e| format!("{url}: {e}"))
    };
    let plan = RoutingPlan {
        primaries: nodes
            .iter()
            .map(|u| target(u, false))
            .collect::<Result<_, _>>()?,
        backup: Some(target(leader, true)?),
    };
    let options = RenderOptions {
        listen_port: port,
        socket_dir: socket_dir.display().to_string(),
        ..RenderOptions::default()
    };
    options.validate().map_err(|e| e.to_string())?;
    if let Some(gate) = gate {
        gate.validate().map_err(|e| e.to_string())?;
    }
    Ok(render_gated(&plan, &options, gate))
}

/// The gate with the deployment's defaults and one client, the bench's ([`BENCH_KEY`]), whose
/// access log goes into `socket_dir`.
pub fn bench_gate(socket_dir: &Path) -> GatePolicy {
    GatePolicy {
        clients: vec![GateClient {
            name: "bench".into(),
            key_sha256: key_sha256(BENCH_KEY),
            calls_per_second: BENCH_CALLS_PER_SECOND,
            allow_methods: Vec::new(),
            concurrent_requests: BENCH_CONCURRENT_REQUESTS,
            allowed_origins: vec![],
        }],
        lua_dir: devstack::gate_lua_dir(),
        access_log: socket_dir.join("access.log").display().to_string(),
        ..GatePolicy::default()
    }
}

/// The path of the bench client's key URL.
pub fn bench_key_path() -> String {
    format!("/v3/{BENCH_KEY}")
}

/// A node's URL with an empty query: the same node, but no longer a plain `http://host:port`
/// URL, so the renderer reaches it through its internal server, as it does a provider's keyed
/// URL.
pub fn through_internal_server(url: &str) -> String {
    format!("{}/?", url.trim_end_matches('/'))
}

/// The original's load-balanced case: an `upstream` of `host:port`s, no keepalive, retries on
/// `error timeout` only (so never for POST).
pub fn original_fragment(port: u16, node_ports: &[u16], keepalive: bool) -> String {
    let mut out = String::from("upstream backend {\n");
    for p in node_ports {
        out.push_str(&format!("    server 127.0.0.1:{p};\n"));
    }
    if keepalive {
        out.push_str("    keepalive 32;\n");
    }
    out.push_str("}\n\n");
    out.push_str(&format!(
        "server {{
    listen {port} default_server;
    server_name _;
    location / {{
        proxy_pass http://backend;
        proxy_next_upstream error timeout;
{}    }}
}}
",
        if keepalive {
            "        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n"
        } else {
            ""
        }
    ));
    out
}

/// nginx answering each of `answers` ((workload, answer text)) on its
/// [`Workload::ceiling_path`] from its configuration (`return 200`), no Lua and no node: the
/// ceiling of a cache inside nginx. An answer longer than nginx takes in one configuration
/// token is put together from variables set in its location. An answer nginx would read as more than
/// text (a `'`, `\` or `$`) is refused.
pub fn ceiling_fragment(port: u16, answers: &[(Workload, String)]) -> Result<String, String> {
    // nginx reads a token of at most 4 KiB (NGX_CONF_BUFFER).
    const TOKEN_BYTES: usize = 4000;
    let mut out = format!("server {{\n    listen {port} default_server;\n    server_name _;\n");
    for (index, (workload, answer)) in answers.iter().enumerate() {
        if !answer.is_ascii() || answer.contains(['\'', '\\', '$']) {
            return Err(format!(
                "the {} answer holds a character nginx would not keep as text",
                workload.short()
            ));
        }
        let _ = writeln!(
            out,
            "    location = /{} {{\n        default_type application/json;",
            workload.ceiling_path()
        );
        if answer.len() <= TOKEN_BYTES {
            let _ = writeln!(out, "        return 200 '{answer}';");
        } else {
            let mut names = String::new();
            for (k, piece) in answer.as_bytes().chunks(TOKEN_BYTES).enumerate() {
                let piece = std::str::from_utf8(piece).map_err(|e| e.to_string())?;
                let _ = writeln!(out, "        set $ceiling_{index}_{k} '{piece}';");
                let _ = write!(names, "$ceiling_{index}_{k}");
            }
            let _ = writeln!(out, "        return 200 \"{names}\";");
        }
        out.push_str("    }\n");
    }
    out.push_str("}\n");
    Ok(out)
}

/// The rendered configuration with the public server's access log buffered (64 KiB, flushed
/// every second) instead of one write per request.
fn with_buffered_access_log(fragment: &str) -> String {
    fragment.replacen(
        "    server_name _;\n",
        "    server_name _;\n    access_log @PREFIX@/logs/access.log main buffer=64k flush=1s;\n",
        1,
    )
}

/// What answers the clients of one path.
enum Server {
    /// The node itself.
    Node,
    Nginx(BenchNginx),
    Blutgang(Blutgang),
}

impl Server {
    /// The size of the gate's access log now; `None` without a gate.
    fn gate_log_offset(&self) -> Option<u64> {
        match self {
            Self::Nginx(nginx) => nginx.gate_log_offset(),
            _ => None,
        }
    }

    /// What the gate logged after `offset`; `None` without a gate.
    fn gate_log_since(&self, offset: Option<u64>) -> Option<GateLog> {
        match self {
            Self::Nginx(nginx) => nginx.gate_log_since(offset?),
            _ => None,
        }
    }

    /// CPU seconds of the proxy so far; `None` without a proxy.
    fn cpu_seconds(&self) -> Option<f64> {
        match self {
            Self::Node => None,
            Self::Nginx(nginx) => Some(nginx.cpu_seconds()),
            Self::Blutgang(blutgang) => Some(blutgang.cpu_seconds()),
        }
    }
}

/// One path of the comparison, running (or why not).
struct Contender {
    name: String,
    role: Role,
    url: String,
    server: Result<Server, String>,
}

impl Contender {
    /// Where `workload` is sent: the contender's URL, or its workload's path on the ceiling.
    fn url(&self, workload: Workload) -> String {
        match self.role {
            Role::Ceiling => format!("{}{}", self.url, workload.ceiling_path()),
            _ => self.url.clone(),
        }
    }
}

/// The nodes and what part 2 knows of them.
struct Nodes {
    leader: Anvil,
    a: Anvil,
    b: Anvil,
    /// A fresh directory name for each nginx's sockets.
    socket_dirs: u32,
}

impl Nodes {
    fn urls(&self) -> Vec<String> {
        vec![self.a.url(), self.b.url()]
    }

    fn ports(&self) -> [u16; 2] {
        [self.a.port(), self.b.port()]
    }

    fn socket_dir(&mut self) -> PathBuf {
        self.socket_dirs += 1;
        PathBuf::from(format!(
            "/tmp/jrp-bench-{}-{}",
            std::process::id(),
            self.socket_dirs
        ))
    }

    /// nginx running our rendered configuration on `port`.
    fn ours(&mut self, port: u16, workers: u32, buffered_log: bool) -> Result<BenchNginx, String> {
        let dir = self.socket_dir();
        let mut fragment = ours_fragment(port, &dir, &self.urls(), &self.leader.url(), None)?;
        if buffered_log {
            fragment = with_buffered_access_log(&fragment);
        }
        BenchNginx::start(&fragment, workers, port, &dir)
    }

    /// Our rendered configuration with every node behind its internal server.
    fn ours_internal(&mut self, port: u16) -> Result<BenchNginx, String> {
        let dir = self.socket_dir();
        let nodes: Vec<String> = self
            .urls()
            .iter()
            .map(|u| through_internal_server(u))
            .collect();
        let leader = through_internal_server(&self.leader.url());
        let fragment = ours_fragment(port, &dir, &nodes, &leader, None)?;
        BenchNginx::start(&fragment, 0, port, &dir)
    }

    /// Our rendered configuration with the JSON-RPC gate and one client ([`bench_gate`]),
    /// once its head poll has heard the seeded nodes.
    fn gated(&mut self, port: u16) -> Result<BenchNginx, String> {
        let dir = self.socket_dir();
        let gate = bench_gate(&dir);
        let fragment = ours_fragment(port, &dir, &self.urls(), &self.leader.url(), Some(&gate))?;
        let mut nginx = BenchNginx::start(&fragment, 0, port, &dir)?;
        nginx.gate_log = Some(PathBuf::from(&gate.access_log));
        nginx.wait_served(SEED_HEAD, Duration::from_secs(15))?;
        Ok(nginx)
    }

    /// nginx answering every cacheable workload from its configuration on `port`, each with
    /// node A's answer.
    fn ceiling(&mut self, port: u16) -> Result<BenchNginx, String> {
        let answers = Workload::CACHEABLE
            .into_iter()
            .map(|workload| {
                let call: Value =
                    serde_json::from_str(&workload.body()).map_err(|e| e.to_string())?;
                let result = self
                    .a
                    .rpc(
                        call["method"].as_str().unwrap_or_default(),
                        call["params"].clone(),
                    )
                    .map_err(|e| format!("asking anvil for the ceiling's answers: {e}"))?;
                let answer = json!({"jsonrpc": "2.0", "id": call["id"], "result": result});
                Ok((workload, answer.to_string()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let dir = self.socket_dir();
        BenchNginx::start(&ceiling_fragment(port, &answers)?, 0, port, &dir)
    }

    /// nginx in the original's style on `port`.
    fn original(&mut self, port: u16, keepalive: bool) -> Result<BenchNginx, String> {
        let dir = self.socket_dir();
        BenchNginx::start(
            &original_fragment(port, &self.ports(), keepalive),
            0,
            port,
            &dir,
        )
    }
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn free_port() -> Result<u16, String> {
    devstack::free_port().map_err(|e| e.to_string())
}

/// Sends `workload` to `url` [`SPOT_CHECKS`] times; returns how many answers were wrong and
/// the first wrong one.
async fn spot_check(
    client: &reqwest::Client,
    url: &str,
    workload: Workload,
) -> (u32, Option<String>) {
    let body = workload.body();
    let mut wrong = 0;
    let mut first = None;
    for _ in 0..SPOT_CHECKS {
        let answer = match client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(bytes) if status == reqwest::StatusCode::OK => workload.check(&bytes),
                    Ok(bytes) => Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
                    )),
                    Err(error) => Err(format!("reading the answer: {error}")),
                }
            }
            Err(error) => Err(format!("{error}{}", source_chain(&error))),
        };
        if let Err(error) = answer {
            wrong += 1;
            first.get_or_insert(error);
        }
    }
    (wrong, first)
}

/// `: cause: cause…` of an error, reqwest's own message being vague.
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    out
}

/// The interleaved comparison of one workload: every path once per round, in order.
async fn compare(
    contenders: &[Contender],
    workload: Workload,
    connections: u32,
    options: &ProxyOptions,
) -> Result<Comparison, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let contenders: Vec<&Contender> = contenders
        .iter()
        .filter(|c| workload.measures(c.role))
        .collect();
    let mut rows = Vec::new();
    for contender in &contenders {
        let mut row = ComparedRow {
            name: contender.name.clone(),
            role: contender.role,
            runs: Vec::new(),
            wrong_answers: 0,
            wrong_answer: None,
            not_run: contender.server.as_ref().err().cloned(),
        };
        if row.not_run.is_none() {
            (row.wrong_answers, row.wrong_answer) =
                spot_check(&client, &contender.url(workload), workload).await;
            if row.wrong_answers == SPOT_CHECKS {
                row.not_run = Some(format!(
                    "every answer wrong: {}",
                    row.wrong_answer.clone().unwrap_or_default()
                ));
            }
        }
        rows.push(row);
    }
    let body = workload.body();
    for round in 1..=options.rounds {
        for (contender, row) in contenders.iter().zip(rows.iter_mut()) {
            let Ok(server) = &contender.server else {
                continue;
            };
            if row.not_run.is_some() {
                continue;
            }
            eprintln!(
                "[bench] proxy: {workload:?}, {connections} connection(s), round {round}/{}: {}",
                options.rounds, contender.name
            );
            let log_offset = server.gate_log_offset();
            let cpu_before = server.cpu_seconds();
            let url = contender.url(workload);
            let wrk = block(|| run_wrk(&url, &body, options.seconds, connections))?;
            let cpu_us = server
                .cpu_seconds()
                .zip(cpu_before)
                .map(|(after, before)| (after - before) * 1e6 / wrk.requests.max(1) as f64);
            // A batch the gate answers in part is forwarded from Lua, which its access log
            // does not show as an upstream: the log tells single calls only.
            let gate_log = server
                .gate_log_since(log_offset)
                .filter(|_| workload.calls() == 1);
            row.runs.push(Run {
                wrk,
                cpu_us,
                gate_log,
            });
        }
    }
    Ok(Comparison {
        workload,
        connections,
        rows,
    })
}

/// Runs part 2.
pub async fn run(options: &ProxyOptions) -> Result<ProxyReport, String> {
    let load_before = sys::load_average();
    let start_anvil = || {
        let node = block(|| Anvil::start(AnvilOptions::default())).map_err(|e| e.to_string())?;
        block(|| seed(&node))?;
        Ok::<_, String>(node)
    };
    let mut nodes = Nodes {
        leader: start_anvil()?,
        a: start_anvil()?,
        b: start_anvil()?,
        socket_dirs: 0,
    };
    let blutgang_bin = blutgang::binary();
    let peer_version = blutgang::version(&blutgang_bin);
    let peer_name = peer_version.clone().unwrap_or_else(|_| "blutgang".into());

    let proxy_url = |port: u16| format!("http://127.0.0.1:{port}/");
    let (ours_port, gated_port, original_port, peer_port, ceiling_port) = (
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    );
    let gated_url = |port: u16| format!("http://127.0.0.1:{port}{}", bench_key_path());
    let mut contenders = vec![
        Contender {
            name: "direct to anvil".into(),
            role: Role::Direct,
            url: nodes.a.url(),
            server: Ok(Server::Node),
        },
        Contender {
            name: "ours (rendered config)".into(),
            role: Role::Ours,
            url: proxy_url(ours_port),
            server: Ok(Server::Nginx(block(|| nodes.ours(ours_port, 0, false))?)),
        },
        Contender {
            name: "ours, gated (a client's key URL)".into(),
            role: Role::Gated,
            url: gated_url(gated_port),
            server: Ok(Server::Nginx(block(|| nodes.gated(gated_port))?)),
        },
        Contender {
            name: "original's style".into(),
            role: Role::Original,
            url: proxy_url(original_port),
            server: Ok(Server::Nginx(block(|| {
                nodes.original(original_port, false)
            })?)),
        },
    ];
    let peer = match &peer_version {
        Ok(_) => {
            block(|| Blutgang::start(&blutgang_bin, peer_port, &nodes.urls())).map(Server::Blutgang)
        }
        Err(error) => Err(error.clone()),
    };
    contenders.push(Contender {
        name: format!("peer: {peer_name}"),
        role: Role::Peer,
        url: proxy_url(peer_port),
        server: peer,
    });
    contenders.push(Contender {
        name: "nginx alone, the answer in its configuration (the ceiling)".into(),
        role: Role::Ceiling,
        url: proxy_url(ceiling_port),
        server: Ok(Server::Nginx(block(|| nodes.ceiling(ceiling_port))?)),
    });

    let mut comparisons = Vec::new();
    for workload in Workload::ALL {
        comparisons.push(compare(&contenders, workload, options.connections, options).await?);
    }
    let mut unloaded = Vec::new();
    for workload in UNLOADED_WORKLOADS {
        unloaded.push(compare(&contenders, workload, 1, options).await?);
    }
    drop(contenders);

    let mut diagnostics = Vec::new();
    if options.diagnostics {
        type Start = fn(&mut Nodes, u16) -> Result<BenchNginx, String>;
        let cases: [(&str, u32, Start); 4] = [
            (
                "diagnostic: original's style + upstream keepalive",
                0,
                |n, port| n.original(port, true),
            ),
            (
                "diagnostic: ours with every node through an internal server (URLs with an empty query)",
                0,
                |n, port| n.ours_internal(port),
            ),
            (
                "diagnostic: ours, access log buffered",
                0,
                |n, port| n.ours(port, 0, true),
            ),
            (
                "diagnostic: ours, worker_processes 1",
                1,
                |n, port| n.ours(port, 1, false),
            ),
        ];
        let body = Workload::BlockNumber.body();
        for (name, workers, start) in cases {
            eprintln!("[bench] proxy: {name}");
            let port = free_port()?;
            let nginx = block(|| start(&mut nodes, port))?;
            let cpu_before = nginx.cpu_seconds();
            let wrk = block(|| {
                run_wrk(
                    &proxy_url(port),
                    &body,
                    options.seconds,
                    options.connections,
                )
            })?;
            let cpu = nginx.cpu_seconds() - cpu_before;
            drop(nginx);
            diagnostics.push(ProxyRow {
                name: name.into(),
                workers,
                nginx_cpu_us: cpu * 1e6 / (wrk.requests.max(1) as f64),
                wrk,
            });
        }
    }

    let mut deaths = Vec::new();
    for role in [Role::Ours, Role::Gated, Role::Original, Role::Peer] {
        let port = free_port()?;
        let url = match role {
            Role::Gated => gated_url(port),
            _ => proxy_url(port),
        };
        let (name, server) = match role {
            Role::Ours => (
                "ours (rendered config)".to_owned(),
                block(|| nodes.ours(port, 0, false)).map(Server::Nginx),
            ),
            Role::Gated => (
                "ours, gated".to_owned(),
                block(|| nodes.gated(port)).map(Server::Nginx),
            ),
            Role::Original => (
                "original's style".to_owned(),
                block(|| nodes.original(port, false)).map(Server::Nginx),
            ),
            Role::Direct | Role::Peer | Role::Ceiling => (
                format!("peer: {peer_name}"),
                match &peer_version {
                    Ok(_) => block(|| Blutgang::start(&blutgang_bin, port, &nodes.urls()))
                        .map(Server::Blutgang),
                    Err(error) => Err(error.clone()),
                },
            ),
        };
        let server = match server {
            Ok(server) => server,
            Err(error) if role == Role::Peer => {
                deaths.push(DeathRow {
                    name,
                    role,
                    requests: 0,
                    errors: 0,
                    max_ms: 0.0,
                    after_kill_secs: 0.0,
                    not_run: Some(error),
                });
                continue;
            }
            Err(error) => return Err(error),
        };
        eprintln!("[bench] node death: {name}");
        let row = death_run(&name, role, &url, &mut nodes.a, options.death_seconds).await;
        drop(server);
        block(|| nodes.a.restart()).map_err(|e| e.to_string())?;
        block(|| seed(&nodes.a))?;
        deaths.push(row?);
    }
    Ok(ProxyReport {
        comparisons,
        unloaded,
        diagnostics,
        deaths,
        connections: options.connections,
        seconds: options.seconds,
        rounds: options.rounds,
        nginx_version: version_of(
            &devstack::nginx_binary()
                .map(|bin| bin.display().to_string())
                .unwrap_or_else(|_| "nginx".into()),
            "-v",
        )
        .trim_start_matches("nginx version: ")
        .to_owned(),
        wrk_version: version_of("wrk", "-v")
            .split(" [")
            .next()
            .unwrap_or("wrk")
            .to_owned(),
        peer_version,
        load_before,
        load_after: sys::load_average(),
    })
}

/// Seeds a fresh anvil as every node of part 2 is: the transfer [`SEED_TX`] (mined at once in
/// [`SEED_BLOCK`]), [`FULL_BLOCK_TXS`] transfers mined together in [`FULL_BLOCK`], then
/// [`SEED_BLOCKS`] empty blocks, so every node has the same head, safe and finalized blocks,
/// and the same transactions.
fn seed(node: &Anvil) -> Result<(), String> {
    let failed = |e: devstack::Error| format!("seeding anvil on {}: {e}", node.url());
    let transfer = |nonce: u64| {
        json!({
            "from": SEED_FROM,
            "to": SEED_TO,
            "value": "0x1",
            "gas": "0x5208",
            "maxFeePerGas": "0x77359400",
            "maxPriorityFeePerGas": "0x3b9aca00",
            "nonce": format!("{nonce:#x}"),
            "chainId": "0x7a69",
        })
    };
    let hash = node
        .rpc("eth_sendTransaction", json!([transfer(0)]))
        .map_err(failed)?;
    if hash.as_str() != Some(SEED_TX) {
        return Err(format!(
            "anvil on {} gave the seed transfer the hash {hash}, not {SEED_TX}",
            node.url()
        ));
    }
    node.rpc("evm_setAutomine", json!([false]))
        .map_err(failed)?;
    for nonce in 1..=FULL_BLOCK_TXS {
        node.rpc("eth_sendTransaction", json!([transfer(nonce)]))
            .map_err(failed)?;
    }
    node.mine(1).map_err(failed)?;
    node.rpc("evm_setAutomine", json!([true])).map_err(failed)?;
    let held = node
        .rpc(
            "eth_getBlockTransactionCountByNumber",
            json!([format!("{FULL_BLOCK:#x}")]),
        )
        .map_err(failed)?;
    if held != json!(format!("{FULL_BLOCK_TXS:#x}")) {
        return Err(format!(
            "anvil on {} mined {held} transfers in block {FULL_BLOCK}, not {FULL_BLOCK_TXS}",
            node.url()
        ));
    }
    node.mine(SEED_BLOCKS).map_err(failed)?;
    match node.block_number().map_err(failed)? {
        SEED_HEAD => Ok(()),
        other => Err(format!(
            "anvil on {} is at block {other} after seeding, not {SEED_HEAD}",
            node.url()
        )),
    }
}

/// Client load through `url` (4 connections, back to back, `eth_blockNumber`); node A is
/// killed after 1 s.
async fn death_run(
    name: &str,
    role: Role,
    url: &str,
    node: &mut Anvil,
    seconds: u32,
) -> Result<DeathRow, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let max_us = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds.max(2)));
    let body = Workload::BlockNumber.body();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
        let (requests, errors, max_us) = (requests.clone(), errors.clone(), max_us.clone());
        workers.push(tokio::spawn(async move {
            // Bounded by the deadline (and by a count, in case time stands still).
            for _ in 0..1_000_000 {
                if Instant::now() >= deadline {
                    break;
                }
                let started = Instant::now();
                let ok = match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.is_ok_and(|answer| {
                            status == reqwest::StatusCode::OK
                                && Workload::BlockNumber.check(&answer).is_ok()
                        })
                    }
                    Err(_) => false,
                };
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                max_us.fetch_max(us, Ordering::Relaxed);
                requests.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    block(|| node.stop());
    for worker in workers {
        let _ = worker.await;
    }
    Ok(DeathRow {
        name: name.to_owned(),
        role,
        requests: requests.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        max_ms: max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        after_kill_secs: killed.elapsed().as_secs_f64(),
        not_run: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wrk_summary() {
        let out = "Running 1s test\n  2 threads\nBENCH {\"requests\":100,\"duration_us\":1000000,\"connect\":0,\"read\":1,\"write\":0,\"status\":2,\"timeout\":0,\"p50_us\":300,\"p90_us\":500,\"p99_us\":900,\"max_us\":1200}\n";
        let r = parse_wrk(out).expect("summary");
        assert_eq!(r.requests, 100);
        assert_eq!(r.errors(), 3);
        assert_eq!(r.rps(), 100.0);
        assert_eq!(r.p99_us, 900);
        assert!(parse_wrk("no summary").is_none());
    }

    #[test]
    fn the_wrk_script_posts_the_body_verbatim() {
        for workload in Workload::ALL {
            let body = workload.body();
            let script = wrk_script(&body);
            assert!(script.contains(&format!("wrk.body = [==[{body}]==]\n")));
            assert!(!body.contains("]==]"));
        }
        assert!(wrk_script("{}").contains(r#"'BENCH {"requests":%d,"#));
    }

    #[test]
    fn answers_are_checked_call_by_call() {
        let block = Workload::BlockNumber;
        assert!(block
            .check(br#"{"jsonrpc":"2.0","id":1,"result":"0x0"}"#)
            .is_ok());
        assert!(block
            .check(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}"#)
            .is_err());
        assert!(block
            .check(br#"{"jsonrpc":"2.0","id":2,"result":"0x0"}"#)
            .is_err());
        assert!(block
            .check(b"{code:-32001, message:\"timed out\"}")
            .is_err());
        let batch = Workload::Batch;
        let answers: Vec<Value> = (1..=10)
            .rev()
            .map(|id| json!({"jsonrpc": "2.0", "id": id, "result": "0x1"}))
            .collect();
        assert!(batch
            .check(Value::Array(answers.clone()).to_string().as_bytes())
            .is_ok());
        assert!(batch
            .check(Value::Array(answers[1..].to_vec()).to_string().as_bytes())
            .is_err());
        let mut one_error = answers;
        one_error[3] = json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -1, "message": "x"}});
        assert!(batch
            .check(Value::Array(one_error).to_string().as_bytes())
            .is_err());
        assert!(batch
            .check(br#"{"jsonrpc":"2.0","id":1,"result":"0x0"}"#)
            .is_err());
        let calls: Value = serde_json::from_str(&batch.body()).expect("JSON");
        assert_eq!(calls.as_array().map(Vec::len), Some(10));
    }

    #[test]
    fn the_median_and_spread_of_rounds() {
        let run = |requests| Run {
            wrk: WrkResult {
                requests,
                duration_us: 1_000_000,
                p50_us: requests,
                ..WrkResult::default()
            },
            cpu_us: Some(requests as f64),
            gate_log: None,
        };
        let row = ComparedRow {
            name: "x".into(),
            role: Role::Ours,
            runs: vec![run(300), run(100), run(200)],
            wrong_answers: 0,
            wrong_answer: None,
            not_run: None,
        };
        assert_eq!(row.rps(), 200.0);
        assert_eq!(row.rps_range(), (100.0, 300.0));
        assert_eq!(row.p50_ms(), 0.2);
        assert_eq!(row.cpu_us(), Some(200.0));
        assert!(row.valid());
        assert_eq!(median(vec![1.0, 4.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn the_original_style_has_no_keepalive_and_no_post_retries() {
        let conf = original_fragment(8080, &[1, 2], false);
        assert!(conf.contains("server 127.0.0.1:1;"));
        assert!(conf.contains("proxy_next_upstream error timeout;"));
        assert!(!conf.contains("keepalive"));
        assert!(!conf.contains("non_idempotent"));
        assert!(original_fragment(8080, &[1], true).contains("keepalive 32;"));
        let buffered = with_buffered_access_log("server {\n    listen 1;\n    server_name _;\n}\n");
        assert!(buffered.contains("buffer=64k flush=1s;"));
    }

    #[test]
    fn ours_is_one_layer_for_plain_nodes_and_two_for_urls_with_a_query() {
        let nodes = [
            "http://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2".to_owned(),
        ];
        let dir = Path::new("/tmp/jrp-bench-test");
        let ours = ours_fragment(8080, dir, &nodes, "http://127.0.0.1:3", None).expect("rendered");
        assert!(ours.contains("server 127.0.0.1:1 max_fails=1 fail_timeout=10s;"));
        assert!(ours.contains("server 127.0.0.1:3 backup;"));
        assert!(ours.contains("non_idempotent"));
        assert!(!ours.contains("unix:"));
        let internal: Vec<String> = nodes.iter().map(|u| through_internal_server(u)).collect();
        assert_eq!(internal[0], "http://127.0.0.1:1/?");
        let two_layers = ours_fragment(
            8080,
            dir,
            &internal,
            &through_internal_server("http://127.0.0.1:3/"),
            None,
        )
        .expect("rendered");
        assert_eq!(two_layers.matches("    listen unix:").count(), 6);
        assert!(two_layers.contains("non_idempotent"));
        assert!(!two_layers.contains("direct member"));
        let gate = bench_gate(dir);
        let gated =
            ours_fragment(8080, dir, &nodes, "http://127.0.0.1:3", Some(&gate)).expect("rendered");
        assert!(gated.contains(&key_sha256(BENCH_KEY)));
        assert!(!gated.contains(BENCH_KEY));
        assert!(gated.contains("server 127.0.0.1:1 max_fails=1 fail_timeout=10s;"));
    }

    #[test]
    fn the_cacheable_calls_name_the_final_block_and_its_transfer() {
        let block: Value = serde_json::from_str(&Workload::FinalizedBlock.body()).expect("JSON");
        assert_eq!(block["params"], json!(["0x1", false]));
        // anvil's finalized block is its head minus 64.
        const { assert!(SEED_BLOCK + 64 <= SEED_HEAD) };
        let receipt: Value = serde_json::from_str(&Workload::Receipt.body()).expect("JSON");
        assert_eq!(receipt["params"], json!([SEED_TX]));
        let answer =
            |result: Value| json!({"jsonrpc": "2.0", "id": 1, "result": result}).to_string();
        let ok_block = answer(json!({"number": "0x1", "hash": "0xab"}));
        assert!(Workload::FinalizedBlock.check(ok_block.as_bytes()).is_ok());
        for wrong in [answer(Value::Null), answer(json!({"number": "0x2"}))] {
            assert!(Workload::FinalizedBlock.check(wrong.as_bytes()).is_err());
        }
        let ok_receipt = answer(json!({"transactionHash": SEED_TX, "blockNumber": "0x1"}));
        assert!(Workload::Receipt.check(ok_receipt.as_bytes()).is_ok());
        assert!(Workload::Receipt
            .check(answer(Value::Null).as_bytes())
            .is_err());
        const { assert!(FULL_BLOCK + 64 <= SEED_HEAD) };
        let full: Value = serde_json::from_str(&Workload::FullBlock.body()).expect("JSON");
        assert_eq!(full["params"], json!(["0x2", false]));
        let hashes = |n: usize| vec![json!("0xab"); n];
        let ok_full = answer(json!({"number": "0x2", "transactions": hashes(100)}));
        assert!(Workload::FullBlock.check(ok_full.as_bytes()).is_ok());
        for wrong in [
            answer(json!({"number": "0x2", "transactions": hashes(99)})),
            answer(json!({"number": "0x1", "transactions": hashes(100)})),
            answer(json!({"number": "0x2"})),
        ] {
            assert!(Workload::FullBlock.check(wrong.as_bytes()).is_err());
        }
    }

    #[test]
    fn the_ceiling_answers_each_cacheable_call_on_its_own_path() {
        let answers = vec![
            (
                Workload::ChainId,
                r#"{"jsonrpc":"2.0","id":1,"result":"0x7a69"}"#.to_owned(),
            ),
            (
                Workload::FullBlock,
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#.to_owned(),
            ),
        ];
        let conf = ceiling_fragment(8080, &answers).expect("rendered");
        assert!(conf.contains(
            "location = /eth_chainId {\n        default_type application/json;\n        \
             return 200 '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"0x7a69\"}';"
        ));
        assert!(conf.contains("location = /block-of-100-transfers {"));
        let long = format!(r#"{{"result":"{}"}}"#, "a".repeat(9000));
        let conf =
            ceiling_fragment(8080, &[(Workload::FullBlock, long.clone())]).expect("rendered");
        let pieces: Vec<&str> = conf
            .lines()
            .filter_map(|l| l.trim().strip_prefix("set $ceiling_0_"))
            .map(|l| &l[l.find('\'').expect("quoted") + 1..l.len() - 2])
            .collect();
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.len() <= 4000));
        assert_eq!(pieces.concat(), long);
        assert!(conf.contains(r#"return 200 "$ceiling_0_0$ceiling_0_1$ceiling_0_2";"#));
        for bad in ["it's", "a\\b", "$uri"] {
            assert!(ceiling_fragment(8080, &[(Workload::ChainId, bad.to_owned())]).is_err());
        }
        let ceiling = Contender {
            name: "ceiling".into(),
            role: Role::Ceiling,
            url: "http://127.0.0.1:1/".into(),
            server: Err("not started".into()),
        };
        assert_eq!(ceiling.url(Workload::Receipt), "http://127.0.0.1:1/receipt");
    }

    #[test]
    fn the_new_workloads_run_where_they_tell_something() {
        for workload in Workload::CACHEABLE {
            assert!(workload.measures(Role::Gated) && workload.measures(Role::Peer));
            assert!(workload.measures(Role::Direct));
        }
        assert!(!Workload::Balance.measures(Role::Peer));
        assert!(!Workload::Receipt.measures(Role::Original));
        for workload in Workload::ALL {
            assert_eq!(
                workload.measures(Role::Ceiling),
                Workload::CACHEABLE.contains(&workload)
            );
        }
        for role in [
            Role::Direct,
            Role::Ours,
            Role::Gated,
            Role::Original,
            Role::Peer,
        ] {
            assert!(Workload::BlockNumber.measures(role) && Workload::Batch100.measures(role));
        }
    }

    #[test]
    fn the_gate_log_tells_forwarded_requests_from_answered_ones() {
        let lines = [
            r#"127.0.0.1 bench [07/Dec/2026:06:06:31 +0000] POST 200 40 0.000 - "wrk""#,
            r#"127.0.0.1 bench [07/Dec/2026:06:06:31 +0000] POST 200 40 0.001 127.0.0.1:8545 "wrk""#,
            r#"127.0.0.1 bench [07/Dec/2026:06:06:31 +0000] POST 200 40 0.002 127.0.0.1:1, 127.0.0.1:2 "-""#,
            "a torn line",
        ];
        let log = GateLog::count(lines.iter().map(|l| (*l).to_owned()));
        assert_eq!(
            log,
            GateLog {
                requests: 3,
                forwarded: 2
            }
        );
        assert_eq!(log.add(log).requests, 6);
    }

    #[test]
    fn the_large_batch_is_the_small_one_ten_times() {
        let calls: Vec<Value> = serde_json::from_str(&Workload::Batch100.body()).expect("JSON");
        assert_eq!(calls.len(), 100);
        assert_eq!(calls[99]["id"], 100);
        assert_eq!(calls[10]["method"], calls[0]["method"]);
        let answers: Vec<Value> = (1..=100)
            .map(|id| json!({"jsonrpc": "2.0", "id": id, "result": "0x1"}))
            .collect();
        assert!(Workload::Batch100
            .check(Value::Array(answers.clone()).to_string().as_bytes())
            .is_ok());
        assert!(Workload::Batch
            .check(Value::Array(answers).to_string().as_bytes())
            .is_err());
    }
}
