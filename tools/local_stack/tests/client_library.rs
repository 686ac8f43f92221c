//! The endpoint as an application sees it: ethers (npm, installed into `.tools/node` by
//! `scripts/install-deps.sh`) drives the local stack through the demo client's key URL. The
//! script, `tests/ethers/client.cjs`, says what it checks.

mod common;

use std::time::Duration;

use common::*;
use local_stack::stack::{LocalStack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ethers_calls_batches_and_subscribes_through_a_key_url() {
    let work_dir = tempfile::tempdir().expect("temporary work dir");
    let stack = LocalStack::start(StackOptions {
        demo_client: true,
        // Blocks come only when the script mines them, so a refused anvil_mine shows.
        block_time: 3600,
        ..options(work_dir.path())
    })
    .await
    .expect("the local stack starts");
    let client = reqwest::Client::new();
    let endpoint = key_url_answering(&stack, &client).await;

    let nodes: Vec<String> = stack.nodes.iter().map(|n| n.anvil.url()).collect();
    let script = devstack::repo_root().join("tools/local_stack/tests/ethers/client.cjs");
    let node_modules = devstack::repo_root().join(".tools/node/node_modules");
    assert!(
        node_modules.join("ethers").is_dir(),
        "ethers is not installed in {}: run scripts/install-deps.sh",
        node_modules.display()
    );
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &node_modules)
        .env("ENDPOINT", &endpoint)
        .env("WEBSOCKET", stack.websocket_url())
        .env("OPEN", stack.proxy_url())
        .env("NODES", nodes.join(","))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the ethers script ends within 90 s")
        .expect("node runs the ethers script");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    eprintln!("{printed}");
    assert!(
        output.status.success() && printed.contains("ethers client: all passed"),
        "the ethers script failed:\n{printed}\nnginx:\n{}",
        stack.nginx_error_log()
    );
    stack.shutdown().await;
}
