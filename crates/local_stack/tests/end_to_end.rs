//! The whole system on one machine, exercised through the proxy with real JSON-RPC requests:
//! moto, three anvil nodes, nginx, the real Lambda binaries on the emulated runtime, the config
//! agent. One sequential scenario (the stages build on each other).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use local_stack::stack::{LocalStack, StackOptions, FUNCTIONS};
use serde_json::{json, Value};

/// An address whose balance tells which node answered (set per node with `anvil_setBalance`).
const MARKER: &str = "0x00000000000000000000000000000000000c0ffe";
const INTERVAL: Duration = Duration::from_secs(2);
const TOLERANCE: u64 = 3;

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("target dir")
}

/// Builds the function binaries and the config agent (quick when up to date).
fn ensure_binaries(dir: &std::path::Path) {
    let missing = FUNCTIONS
        .iter()
        .chain(std::iter::once(&"config_agent"))
        .any(|name| !dir.join(name).is_file());
    let profile_release = dir.ends_with("release");
    if missing || std::env::var_os("LOCAL_STACK_REBUILD").is_some() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command.arg("build").arg("--quiet");
        if profile_release {
            command.arg("--release");
        }
        for name in FUNCTIONS.iter().chain(std::iter::once(&"config_agent")) {
            command.arg("-p").arg(name);
        }
        let status = command
            .status()
            .expect("running cargo build for the function binaries");
        assert!(status.success(), "building the function binaries failed");
    }
}

async fn rpc(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    params: Value,
) -> Result<(u16, Value), String> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| e.to_string())?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Which node answered: the marker balance it was given.
async fn who_answers(client: &reqwest::Client, url: &str) -> Result<u64, String> {
    let (status, body) = rpc(client, url, "eth_getBalance", json!([MARKER, "latest"])).await?;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    let hex = body["result"]
        .as_str()
        .ok_or_else(|| format!("no result in {body}"))?;
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < timeout {
        if condition().await {
            eprintln!(
                "[e2e] {what}: after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("[e2e] timed out after {timeout:?} waiting until {what}");
}

fn routed(stack: &LocalStack) -> Vec<String> {
    stack
        .snapshot()
        .1
        .map(|applied| applied.backends)
        .unwrap_or_default()
}

fn routes_to(stack: &LocalStack, node_url: &str, role: &str) -> bool {
    routed(stack)
        .iter()
        .any(|label| label == &format!("{node_url} ({role})"))
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_system_routes_around_failures() {
    let bin_dir = target_dir();
    ensure_binaries(&bin_dir);
    let work_dir = tempfile::tempdir().expect("temporary work dir");
    let options = StackOptions {
        proxy_port: devstack::free_port().expect("free port"),
        check_interval: INTERVAL,
        tolerance: TOLERANCE,
        probe_timeout: Duration::from_millis(1000),
        nodes: Vec::new(),
        leader: None,
        anvil_nodes: 2,
        block_time: 1,
        config_agent: bin_dir.join("config_agent"),
        bin_dir,
        work_dir: work_dir.path().to_owned(),
    };
    let mut stack = LocalStack::start(options)
        .await
        .expect("the local stack starts");
    let proxy = stack.proxy_url();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // Mark each node: leader 1000, node A 1001, node B 1002.
    let urls: Vec<String> = stack.nodes.iter().map(|n| n.anvil.url()).collect();
    for (index, node) in stack.nodes.iter().enumerate() {
        assert_eq!(node.is_leader, index == 0);
        blocking(|| {
            node.anvil.rpc(
                "anvil_setBalance",
                json!([MARKER, format!("{:#x}", 1000 + index)]),
            )
        })
        .expect("anvil_setBalance");
    }
    let (leader, node_a, node_b) = (urls[0].clone(), urls[1].clone(), urls[2].clone());

    // 1. Requests are answered by the healthy nodes, spread across them; the leader stands by.
    wait_for(
        "both nodes are routed with the leader as backup",
        Duration::from_secs(30),
        || async {
            routes_to(&stack, &node_a, "node")
                && routes_to(&stack, &node_b, "node")
                && routes_to(&stack, &leader, "backup")
        },
    )
    .await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let who = who_answers(&client, &proxy)
            .await
            .expect("a request through the proxy");
        *seen.entry(who).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![1001, 1002],
        "spread over both nodes, not the leader: {seen:?}"
    );

    // 2. A node that stops answering leaves the config; requests keep succeeding meanwhile.
    blocking(|| stack.nodes[1].anvil.stop());
    let stopped_at = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            who_answers(&client, &proxy).await,
            Ok(1002),
            "retried on the other node"
        );
    }
    wait_for(
        "the stopped node leaves the config",
        INTERVAL * 3 + Duration::from_secs(8),
        || async { !routes_to(&stack, &node_a, "node") },
    )
    .await;
    eprintln!(
        "[e2e] stop → out of config took {:.1} s",
        stopped_at.elapsed().as_secs_f64()
    );

    // ... and comes back when it recovers (restarted at block 0, then caught up).
    blocking(|| stack.nodes[1].anvil.restart()).expect("restart");
    let leader_height = blocking(|| stack.nodes[0].anvil.block_number()).expect("leader height");
    blocking(|| stack.nodes[1].anvil.mine(leader_height + 1)).expect("catch up");
    blocking(|| {
        stack.nodes[1]
            .anvil
            .rpc("evm_setIntervalMining", json!([1]))
    })
    .expect("interval mining");
    blocking(|| {
        stack.nodes[1]
            .anvil
            .rpc("anvil_setBalance", json!([MARKER, "0x3e9"]))
    })
    .expect("marker");
    wait_for(
        "the recovered node is routed again",
        INTERVAL * 4 + Duration::from_secs(8),
        || async { routes_to(&stack, &node_a, "node") },
    )
    .await;

    // 3. A node that falls more than DIFF_TOLERANCE blocks behind leaves, and comes back when it catches up.
    blocking(|| {
        stack.nodes[2]
            .anvil
            .rpc("evm_setIntervalMining", json!([0]))
    })
    .expect("pause mining");
    let paused_at = Instant::now();
    wait_for(
        "the lagging node leaves the config",
        Duration::from_secs(TOLERANCE) + INTERVAL * 4 + Duration::from_secs(10),
        || async { !routes_to(&stack, &node_b, "node") },
    )
    .await;
    eprintln!("[e2e] mining paused → out of config took {:.1} s (tolerance {TOLERANCE} blocks at 1 block/s)", paused_at.elapsed().as_secs_f64());
    let backends = stack.list_backends().await.expect("list_backends");
    let lagging = backends
        .iter()
        .find(|b| b.url == node_b)
        .expect("node B listed");
    assert!(
        lagging
            .health_reason
            .as_deref()
            .is_some_and(|r| r.contains("behind") || r.contains("lag")),
        "the reason names the lag: {lagging:?}"
    );
    let leader_height = blocking(|| stack.nodes[0].anvil.block_number()).expect("leader height");
    let node_height = blocking(|| stack.nodes[2].anvil.block_number()).expect("node height");
    blocking(|| {
        stack.nodes[2]
            .anvil
            .mine(leader_height.saturating_sub(node_height) + 1)
    })
    .expect("catch up");
    blocking(|| {
        stack.nodes[2]
            .anvil
            .rpc("evm_setIntervalMining", json!([1]))
    })
    .expect("resume mining");
    wait_for(
        "the caught-up node is routed again",
        INTERVAL * 4 + Duration::from_secs(8),
        || async { routes_to(&stack, &node_b, "node") },
    )
    .await;

    // 4. Every node down: traffic goes to the leader, at once (backup) and then by config.
    blocking(|| {
        stack.nodes[1].anvil.stop();
        stack.nodes[2].anvil.stop();
    });
    for _ in 0..10 {
        assert_eq!(
            who_answers(&client, &proxy).await,
            Ok(1000),
            "the backup leader answers at once"
        );
    }
    wait_for(
        "only the leader is routed",
        INTERVAL * 3 + Duration::from_secs(8),
        || async { routed(&stack) == vec![format!("{leader} (leader)")] },
    )
    .await;
    assert_eq!(who_answers(&client, &proxy).await, Ok(1000));

    // Everything down: the 404 server answers.
    blocking(|| stack.nodes[0].anvil.stop());
    wait_for(
        "nothing is routed",
        INTERVAL * 3 + Duration::from_secs(8),
        || async { routed(&stack).is_empty() && stack.snapshot().1.is_some() },
    )
    .await;
    let (status, _) = rpc(&client, &proxy, "eth_blockNumber", json!([]))
        .await
        .expect("the proxy answers");
    assert_eq!(status, 404);

    // 5. Removing a backend takes it out of the config.
    blocking(|| {
        stack.nodes[0].anvil.restart()?;
        stack.nodes[0]
            .anvil
            .rpc("anvil_setBalance", json!([MARKER, "0x3e8"]))?;
        stack.nodes[1].anvil.restart()?;
        stack.nodes[1]
            .anvil
            .rpc("anvil_setBalance", json!([MARKER, "0x3e9"]))
    })
    .expect("restart the leader and node A");
    wait_for(
        "node A and the leader are routed again",
        INTERVAL * 4 + Duration::from_secs(8),
        || async { routes_to(&stack, &node_a, "node") && routes_to(&stack, &leader, "backup") },
    )
    .await;
    let removed = stack.remove_backend(&node_a).await.expect("remove_backend");
    assert_eq!(removed["statusCode"], 200);
    wait_for(
        "the removed node leaves the config",
        Duration::from_secs(10),
        || async { !routes_to(&stack, &node_a, "node") },
    )
    .await;
    assert!(!stack
        .list_backends()
        .await
        .expect("list")
        .iter()
        .any(|b| b.url == node_a));
    assert_eq!(
        who_answers(&client, &proxy).await,
        Ok(1000),
        "only the leader is left"
    );

    stack.shutdown().await;
}
