//! Helpers shared by the local-stack tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use devstack::testkit::wait_until;
use local_stack::stack::{LocalStack, StackOptions};
use serde_json::{json, Value};

/// An address whose balance tells which node answered (set per node with `anvil_setBalance`).
pub const MARKER: &str = "0x00000000000000000000000000000000000c0ffe";
pub const INTERVAL: Duration = Duration::from_secs(2);
pub const TOLERANCE: u64 = 3;

pub fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("target dir")
}

/// Builds the function binaries, the config agent and the local stack
/// (`scripts/build-test-binaries.sh`: only a link after `cargo test --workspace`).
pub fn ensure_binaries(dir: &std::path::Path) {
    // Always: `cargo test` itself does not rebuild another package's binaries, so a stale one
    // (older than the code under test) would run.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/build-test-binaries.sh");
    let mut command = std::process::Command::new("bash");
    command.arg(script);
    if dir.ends_with("release") {
        command.arg("--release");
    }
    let status = command
        .status()
        .expect("running scripts/build-test-binaries.sh");
    assert!(status.success(), "building the function binaries failed");
}

pub async fn rpc(
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
pub async fn who_answers(client: &reqwest::Client, url: &str) -> Result<u64, String> {
    let (status, body) = rpc(client, url, "eth_getBalance", json!([MARKER, "latest"])).await?;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    let hex = body["result"]
        .as_str()
        .ok_or_else(|| format!("no result in {body}"))?;
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
}

pub fn routed(stack: &LocalStack) -> Vec<String> {
    stack
        .snapshot()
        .1
        .map(|applied| applied.backends)
        .unwrap_or_default()
}

pub fn routes_to(stack: &LocalStack, node_url: &str, role: &str) -> bool {
    routed(stack)
        .iter()
        .any(|label| label == &format!("{node_url} ({role})"))
}

pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Options for a stack of three anvil nodes (leader + 2) checked every [`INTERVAL`].
pub fn options(work_dir: &std::path::Path) -> StackOptions {
    let bin_dir = target_dir();
    ensure_binaries(&bin_dir);
    let defaults = StackOptions::defaults(bin_dir, work_dir.to_owned());
    // The arm64 zips are built once (scripts/test.sh's `sls package -s dev`, or the first
    // stack here), not by every stack.
    let functions = devstack::functions().expect("the functions of serverless.yml");
    let built = functions.iter().all(|f| {
        defaults
            .artifacts_dir
            .join(f)
            .join("bootstrap.zip")
            .is_file()
    });
    StackOptions {
        proxy_port: devstack::free_port().expect("free port"),
        check_interval: INTERVAL,
        tolerance: TOLERANCE,
        probe_timeout: Duration::from_millis(1000),
        skip_zip_build: built,
        // The load tests send as fast as they can, from one address: past any default rate.
        calls_per_second: Some(100_000),
        ..defaults
    }
}

/// An address of this machine other than loopback (the source address of its default route),
/// if it has one.
pub fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // Connecting a UDP socket sends nothing: it only picks the route and its source address.
    socket.connect("192.0.2.1:9").ok()?;
    let address = socket.local_addr().ok()?.ip();
    (!address.is_loopback() && !address.is_unspecified()).then_some(address)
}

/// Gives each local node a distinct marker balance: leader 1000, then 1001, 1002, …
pub fn mark_nodes(stack: &LocalStack) {
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
}

/// Waits (at most 30 s) until both nodes are routed with the leader as backup.
pub async fn wait_until_fully_routed(stack: &LocalStack, leader: &str, node_a: &str, node_b: &str) {
    wait_until(
        "both nodes are routed with the leader as backup",
        Duration::from_secs(30),
        || async {
            routes_to(stack, node_a, "node")
                && routes_to(stack, node_b, "node")
                && routes_to(stack, leader, "backup")
        },
    )
    .await;
}

/// Waits (at most 60 s) until the demo client's key URL answers `eth_blockNumber`; returns it.
pub async fn key_url_answering(stack: &LocalStack, client: &reqwest::Client) -> String {
    let endpoint = stack.endpoint_url();
    assert!(endpoint.contains("/v3/"), "a key URL: the demo client");
    wait_until(
        "the demo client's key URL answers",
        Duration::from_secs(60),
        || async {
            matches!(rpc(client, &endpoint, "eth_blockNumber", json!([])).await,
                Ok((200, body)) if body["result"].is_string())
        },
    )
    .await;
    endpoint
}
