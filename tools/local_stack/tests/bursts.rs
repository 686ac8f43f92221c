//! Bursts of concurrent admin calls against the local stack, as operators make them: four
//! `add_client` at once, several times. Every burst must end, within seconds, on the newest
//! configuration (the one the renderer's pointer names) with every new key answering through
//! the public port on new connections.

mod common;

use std::time::{Duration, Instant};

use common::*;
use devstack::testkit::wait_until;
use local_stack::stack::LocalStack;
use serde_json::json;

const BURSTS: usize = 4;
const CALLS: usize = 4;
/// Longest a burst may take to be served, from its last answer.
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_add_client_end_on_the_newest_configuration_with_every_key_answering() {
    let work_dir = tempfile::tempdir().expect("temporary work dir");
    let stack = LocalStack::start(options(work_dir.path()))
        .await
        .expect("the local stack starts");
    let urls: Vec<String> = stack.nodes.iter().map(|n| n.anvil.url()).collect();
    wait_until_fully_routed(&stack, &urls[0], &urls[1], &urls[2]).await;

    let mut keys = Vec::new();
    let mut settled = Vec::new();
    for burst in 0..BURSTS {
        let calls = (0..CALLS).map(|call| {
            let stack = &stack;
            async move { stack.add_client(&format!("burst-{burst}-{call}")).await }
        });
        for key in futures::future::join_all(calls).await {
            keys.push(key.expect("add_client answers a key"));
        }
        let started = Instant::now();
        wait_until(
            &format!("burst {burst}: the stack runs the newest config and every key answers"),
            SETTLE,
            || async {
                let newest = stack.newest_config().await.ok().flatten();
                let applied = stack.snapshot().1.map(|a| a.s3_path);
                if newest.is_none() || applied != newest {
                    return false;
                }
                for key in &keys {
                    // A client per call: a new connection, as a new caller makes.
                    let client = reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .build()
                        .expect("client");
                    let url = format!("{}/v3/{key}", stack.proxy_url());
                    match rpc(&client, &url, "eth_blockNumber", json!([])).await {
                        Ok((200, body)) if body["result"].is_string() => {}
                        _ => return false,
                    }
                }
                true
            },
        )
        .await;
        settled.push(started.elapsed());
    }
    eprintln!("[figures] bursts of {CALLS} add_client: served after {settled:?}");
    stack.shutdown().await;
}
