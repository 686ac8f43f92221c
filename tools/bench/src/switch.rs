//! Part 3: switch time through the local stack (moto, three anvil nodes, nginx, the real
//! Lambda binaries on the emulated runtime, the config agent), under a bounded client load.
//!
//! - **Node death**: node A is killed. Measured: when the table marks it unhealthy, when the
//!   configuration nginx runs no longer routes to it, client errors meanwhile, and how often
//!   nginx still tried it (its public server's error lines naming A: its `host:port` as a
//!   direct member of the upstream, its internal socket otherwise).
//! - **Lag**: node B stops mining. Measured from the moment it is more than `DIFF_TOLERANCE`
//!   blocks behind the leader until the table marks it and until nginx stops routing to it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonrpc_proxy::model::backend_url::BackendUrl;
use jsonrpc_proxy::render::nginx::direct_address;
use jsonrpc_proxy::render::options::RenderOptions;
use jsonrpc_proxy::render::routing::RouteTarget;
use local_stack::stack::{LocalStack, StackOptions};
use serde::Serialize;
use serde_json::{json, Value};

use crate::sys;

/// An address whose balance tells which node answered.
const MARKER: &str = "0x00000000000000000000000000000000000c0ffe";
/// Longest any one wait of the scenario may take.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// How part 3 runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchOptions {
    /// Seconds between scheduled health checks.
    pub interval_secs: u64,
    /// `DIFF_TOLERANCE`.
    pub tolerance: u64,
}

/// One switch, as measured (seconds from the event).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SwitchRow {
    /// What happened.
    pub event: String,
    /// Event → the table marks the node unhealthy.
    pub marked_secs: Option<f64>,
    /// Event → nginx runs a configuration without the node.
    pub out_of_config_secs: Option<f64>,
    /// Client requests from the event until 1 s after the node left the configuration.
    pub requests: u64,
    /// Of those, failed ones.
    pub errors: u64,
    /// Of those, answered by the affected node.
    pub answered_by_node: u64,
    /// Slowest of those, ms.
    pub max_ms: f64,
    /// nginx error-log lines naming the dead node (one per failed try), when found.
    pub attempts_on_node: Option<u64>,
}

/// Everything part 3 measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SwitchReport {
    /// The check interval used.
    pub interval_secs: u64,
    /// The tolerance used.
    pub tolerance: u64,
    /// Node death, then lag.
    pub rows: Vec<SwitchRow>,
    /// The dead node restarted and caught up: seconds until the table marks it healthy, and
    /// until nginx routes to it again.
    pub recovery: Option<(Option<f64>, Option<f64>)>,
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    ok: bool,
    who: Option<u64>,
    ms: f64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn routed(stack: &LocalStack) -> Vec<String> {
    stack
        .snapshot()
        .1
        .map(|applied| applied.backends)
        .unwrap_or_default()
}

fn routes_to(stack: &LocalStack, url: &str) -> bool {
    routed(stack)
        .iter()
        .any(|label| label.starts_with(&format!("{url} (")))
}

fn marked_unhealthy(stack: &LocalStack, url: &str) -> bool {
    stack
        .snapshot()
        .0
        .iter()
        .any(|b| b.url == url && !b.is_healthy)
}

/// Polls `condition` every 100 ms until it holds or [`WAIT_LIMIT`] passes.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<Instant, String> {
    let started = Instant::now();
    while started.elapsed() < WAIT_LIMIT {
        if condition() {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "timed out after {WAIT_LIMIT:?} waiting until {what}"
    ))
}

/// Which node answered `eth_getBalance(MARKER)`, or why it failed.
async fn who_answers(client: &reqwest::Client, url: &str) -> Result<u64, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [MARKER, "latest"]});
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let text = response.text().await.map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let hex = value["result"].as_str().ok_or("no result")?;
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
}

/// The error log of the nginx the stack started: the devstack prefix whose configuration
/// listens on the proxy port (the stack does not expose its nginx handle).
fn find_error_log(port: u16) -> Option<PathBuf> {
    let needle = format!("listen {port} ");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir("/tmp")
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("devstack-nginx-")
        })
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("conf/fragment.conf")).ok()?;
            text.contains(&needle).then(|| {
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (modified, e.path().join("logs/error.log"))
            })
        })
        .collect();
    found.sort();
    found.pop().map(|(_, path)| path)
}

/// How the public server's error lines name a failed backend: a direct member by its
/// address (`upstream: "http://127.0.0.1:8545/"`), any other by the file name of its
/// internal socket (`b-<hash>.sock`).
fn member_needle(url: &str) -> Option<String> {
    let url = BackendUrl::parse(url).ok()?;
    if let Some(address) = direct_address(&url) {
        return Some(format!("\"http://{address}/"));
    }
    let path = RenderOptions::default().socket_path(&RouteTarget {
        url,
        is_leader: false,
    });
    path.rsplit('/').next().map(str::to_owned)
}

/// Error-log lines naming `needle`.
fn log_lines_naming(log: &Path, needle: &str) -> u64 {
    std::fs::read_to_string(log)
        .map(|text| text.lines().filter(|l| l.contains(needle)).count() as u64)
        .unwrap_or(0)
}

fn window(samples: &[Sample], from: Instant, to: Instant, node: u64) -> (u64, u64, u64, f64) {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .collect();
    (
        inside.len() as u64,
        inside.iter().filter(|s| !s.ok).count() as u64,
        inside.iter().filter(|s| s.who == Some(node)).count() as u64,
        inside.iter().map(|s| s.ms).fold(0.0, f64::max),
    )
}

/// Runs part 3.
pub async fn run(options: &SwitchOptions) -> Result<SwitchReport, String> {
    let bin_dir = sys::exe_dir();
    let work = tempfile::Builder::new()
        .prefix("bench-switch-")
        .tempdir()
        .map_err(|e| format!("creating a work directory: {e}"))?;
    let stack_options = StackOptions {
        proxy_port: devstack::free_port().map_err(|e| e.to_string())?,
        check_interval: Duration::from_secs(options.interval_secs.max(1)),
        tolerance: options.tolerance,
        // The two clients share one address: the open gate's per-address limit must not be
        // what this part measures.
        calls_per_second: Some(100_000),
        ..StackOptions::defaults(bin_dir, work.path().to_owned())
    };
    let port = stack_options.proxy_port;
    let mut stack = LocalStack::start(stack_options)
        .await
        .map_err(|e| format!("starting the local stack: {e}"))?;
    let result = scenario(&mut stack, options, port).await;
    stack.shutdown().await;
    result
}

async fn scenario(
    stack: &mut LocalStack,
    options: &SwitchOptions,
    port: u16,
) -> Result<SwitchReport, String> {
    let urls: Vec<String> = stack.nodes.iter().map(|n| n.anvil.url()).collect();
    for (index, node) in stack.nodes.iter().enumerate() {
        tokio::task::block_in_place(|| {
            node.anvil.rpc(
                "anvil_setBalance",
                json!([MARKER, format!("{:#x}", 1000 + index)]),
            )
        })
        .map_err(|e| e.to_string())?;
    }
    let (node_a, node_b) = (urls[1].clone(), urls[2].clone());
    wait_until("both nodes are routed", || {
        routes_to(stack, &node_a) && routes_to(stack, &node_b) && routes_to(stack, &urls[0])
    })
    .await?;

    // A bounded client load: two clients, back to back with 20 ms pauses.
    let proxy = stack.proxy_url();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut load = Vec::new();
    for _ in 0..2 {
        let (client, proxy, samples, stop) =
            (client.clone(), proxy.clone(), samples.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + WAIT_LIMIT * 3;
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let started = Instant::now();
                let answer = who_answers(&client, &proxy).await;
                lock(&samples).push(Sample {
                    at: started,
                    ok: answer.is_ok(),
                    who: answer.ok(),
                    ms: started.elapsed().as_secs_f64() * 1000.0,
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let error_log = find_error_log(port);
    let needle = member_needle(&node_a).unwrap_or_else(|| node_a.clone());
    let before = error_log
        .as_deref()
        .map(|log| log_lines_naming(log, &needle))
        .unwrap_or(0);
    let killed = Instant::now();
    tokio::task::block_in_place(|| stack.nodes[1].anvil.stop());
    let marked = wait_until("the dead node is marked", || {
        marked_unhealthy(stack, &node_a)
    })
    .await;
    let out = wait_until("the dead node leaves the config", || {
        !routes_to(stack, &node_a)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let to = out.as_ref().map_or_else(|_| Instant::now(), |t| *t) + Duration::from_secs(1);
    let (requests, errors, answered, max_ms) = window(&lock(&samples), killed, to, 1001);
    let mut rows = vec![SwitchRow {
        event: "node killed".into(),
        marked_secs: marked.ok().map(|t| (t - killed).as_secs_f64()),
        out_of_config_secs: out.ok().map(|t| (t - killed).as_secs_f64()),
        requests,
        errors,
        answered_by_node: answered,
        max_ms,
        attempts_on_node: error_log
            .as_deref()
            .map(|log| log_lines_naming(log, &needle).saturating_sub(before)),
    }];

    // Node A comes back (a fresh chain, mined up to the leader), so that two nodes share the
    // traffic again before node B starts lagging.
    let recovery = {
        tokio::task::block_in_place(|| {
            let node = &mut stack.nodes[1].anvil;
            node.restart()?;
            node.rpc("evm_setIntervalMining", json!([0]))?;
            node.rpc("anvil_setBalance", json!([MARKER, "0x3e9"]))?;
            let height = stack.nodes[0].anvil.block_number()?;
            stack.nodes[1].anvil.mine(height + 1)?;
            stack.nodes[1]
                .anvil
                .rpc("evm_setIntervalMining", json!([1]))
                .map(|_| ())
        })
        .map_err(|e| e.to_string())?;
        let back = Instant::now();
        let healthy = wait_until("the restarted node is healthy", || {
            stack
                .snapshot()
                .0
                .iter()
                .any(|b| b.url == node_a && b.is_healthy)
        })
        .await;
        let routed = wait_until("the restarted node is routed", || routes_to(stack, &node_a)).await;
        (
            healthy.ok().map(|t| (t - back).as_secs_f64()),
            routed.ok().map(|t| (t - back).as_secs_f64()),
        )
    };

    // Lag: node B stops mining; measured from the moment it is more than the tolerance behind.
    tokio::task::block_in_place(|| {
        stack.nodes[2]
            .anvil
            .rpc("evm_setIntervalMining", json!([0]))
    })
    .map_err(|e| e.to_string())?;
    let tolerance = options.tolerance;
    let lagging = {
        let started = Instant::now();
        let mut at = None;
        while started.elapsed() < WAIT_LIMIT {
            let heights = tokio::task::block_in_place(|| {
                Ok::<_, devstack::Error>((
                    stack.nodes[0].anvil.block_number()?,
                    stack.nodes[2].anvil.block_number()?,
                ))
            });
            if let Ok((leader, node)) = heights {
                if leader > node + tolerance {
                    at = Some(Instant::now());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        at.ok_or("node B never fell behind")?
    };
    let marked = wait_until("the lagging node is marked", || {
        marked_unhealthy(stack, &node_b)
    })
    .await;
    let out = wait_until("the lagging node leaves the config", || {
        !routes_to(stack, &node_b)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    let to = out.as_ref().map_or_else(|_| Instant::now(), |t| *t) + Duration::from_secs(1);
    let (requests, errors, answered, max_ms) = window(&lock(&samples), lagging, to, 1002);
    rows.push(SwitchRow {
        event: format!("node {tolerance}+ blocks behind"),
        marked_secs: marked.ok().map(|t| (t - lagging).as_secs_f64()),
        out_of_config_secs: out.ok().map(|t| (t - lagging).as_secs_f64()),
        requests,
        errors,
        answered_by_node: answered,
        max_ms,
        attempts_on_node: None,
    });
    Ok(SwitchReport {
        interval_secs: options.interval_secs,
        tolerance,
        rows,
        recovery: Some(recovery),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_requests_errors_and_answers() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let samples = vec![
            Sample {
                at: at(0),
                ok: true,
                who: Some(1001),
                ms: 1.0,
            },
            Sample {
                at: at(10),
                ok: false,
                who: None,
                ms: 9.0,
            },
            Sample {
                at: at(20),
                ok: true,
                who: Some(1002),
                ms: 2.0,
            },
            Sample {
                at: at(99),
                ok: true,
                who: Some(1001),
                ms: 50.0,
            },
        ];
        assert_eq!(window(&samples, at(5), at(30), 1001), (2, 1, 0, 9.0));
        assert_eq!(window(&samples, at(0), at(100), 1001), (4, 1, 2, 50.0));
    }
}
