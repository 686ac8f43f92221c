//! The endpoint as one chain, as a client sees it through the local stack: two healthy nodes
//! mining a block a second, one 5 blocks ahead of the other, behind the demo client's key URL.
//! The head it names never goes back and the block it names is always found, while both nodes
//! serve; ethers' block polling (`tests/ethers/blocks.cjs`) sees the same.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use local_stack::stack::{LocalStack, StackOptions};
use serde_json::{json, Value};

const ROUNDS: usize = 300;

fn number(value: &Value) -> Option<u64> {
    value
        .as_str()
        .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_never_goes_back_and_the_block_it_names_is_found() {
    let work_dir = tempfile::tempdir().expect("temporary work dir");
    let stack = LocalStack::start(StackOptions {
        demo_client: true,
        // Both nodes in sync although 5 blocks apart.
        tolerance: 10,
        ..options(work_dir.path())
    })
    .await
    .expect("the local stack starts");
    let (leader, a, b) = (&stack.nodes[0], &stack.nodes[1], &stack.nodes[2]);
    blocking(|| b.anvil.mine(5)).expect("node b goes 5 blocks ahead");
    wait_until_fully_routed(&stack, &leader.anvil.url(), &a.anvil.url(), &b.anvil.url()).await;
    let client = reqwest::Client::new();
    let endpoint = key_url_answering(&stack, &client).await;

    let (mut regressions, mut nulls, mut errors) = (0, 0, Vec::new());
    let mut last = 0;
    let mut answered: Vec<(u64, Value)> = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let head = match rpc(&client, &endpoint, "eth_blockNumber", json!([])).await {
            Ok((200, body)) if number(&body["result"]).is_some() => body["result"].clone(),
            other => {
                errors.push(format!("round {round}: eth_blockNumber: {other:?}"));
                continue;
            }
        };
        let height = number(&head).unwrap_or_default();
        if height < last {
            regressions += 1;
        }
        last = last.max(height);
        match rpc(
            &client,
            &endpoint,
            "eth_getBlockByNumber",
            json!([head, false]),
        )
        .await
        {
            Ok((200, body)) if body["result"].is_null() && body.get("error").is_none() => {
                nulls += 1;
            }
            Ok((200, body)) if body["result"]["number"] == head => {
                answered.push((height, body["result"]["hash"].clone()));
            }
            other => errors.push(format!("round {round}: eth_getBlockByNumber: {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Which node served each block: the two chains share no block hash.
    let mut served: BTreeMap<&str, usize> = BTreeMap::new();
    for (height, hash) in &answered {
        for (name, node) in [("a", a), ("b", b)] {
            let own = blocking(|| {
                node.anvil.rpc(
                    "eth_getBlockByNumber",
                    json!([format!("{height:#x}"), false]),
                )
            })
            .expect("the node's block");
            if own["hash"] == *hash {
                *served.entry(name).or_default() += 1;
            }
        }
    }
    eprintln!(
        "{ROUNDS} rounds: {regressions} regressions, {nulls} nulls, {} errors; served {served:?}",
        errors.len()
    );
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(
        (regressions, nulls),
        (0, 0),
        "the head went back, or its block was null"
    );
    for name in ["a", "b"] {
        assert!(
            served.get(name).copied().unwrap_or_default() >= ROUNDS / 5,
            "node {name} served too little: {served:?}"
        );
    }

    let node_modules = devstack::repo_root().join(".tools/node/node_modules");
    let run = tokio::process::Command::new("node")
        .arg(devstack::repo_root().join("tools/local_stack/tests/ethers/blocks.cjs"))
        .env("NODE_PATH", &node_modules)
        .env("ENDPOINT", &endpoint)
        .env("SECONDS", "15")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the ethers script ends within 60 s")
        .expect("node runs the ethers script");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    eprintln!("{printed}");
    assert!(
        output.status.success() && printed.contains("ethers blocks: all passed"),
        "the ethers block script failed:\n{printed}"
    );
    stack.shutdown().await;
}
