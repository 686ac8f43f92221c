//! The gate fails closed. A local stack with the demo client (a closed stage:
//! `gate.open_without_key: false`) gets a damaged item straight in its clients table, then
//! loses its last good client through the deployed `remove_client`: once the renders settle,
//! the public port refuses `/` and the removed key's URL with 401, and a forced render and a
//! health-check round keep it so.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use devstack::testkit::{put_items, wait_until};
use local_stack::stack::{LocalStack, StackOptions, DEMO_CLIENT};
use serde_json::{json, Value};

/// What a caller on a new connection gets: the status, and the body as JSON (or text).
async fn answer(url: &str) -> Option<(u16, Value)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    rpc(&client, url, "eth_blockNumber", json!([])).await.ok()
}

fn refused_for_the_key(answer: &Option<(u16, Value)>) -> bool {
    matches!(answer, Some((401, body)) if body["error"]["code"] == -32001)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_item_and_no_client_left_mean_401_at_every_path() {
    let work_dir = tempfile::tempdir().expect("temporary work dir");
    let stack = LocalStack::start(StackOptions {
        demo_client: true,
        ..options(work_dir.path())
    })
    .await
    .expect("the local stack starts");
    let root = stack.proxy_url();
    let key_url = stack.endpoint_url();
    assert!(
        key_url.contains("/v3/"),
        "the demo client's key URL: {key_url}"
    );

    wait_until(
        "the demo key is served and / is refused",
        Duration::from_secs(60),
        || async {
            let keyed = answer(&key_url).await;
            matches!(&keyed, Some((200, body)) if body["result"].is_string())
                && refused_for_the_key(&answer(&root).await)
        },
    )
    .await;

    // An item written by hand: a name and nothing else (no key digest).
    let sdk = devstack::sdk_config(&stack.moto_endpoint()).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    put_items(
        &dynamodb,
        &stack.deployed.clients_table,
        vec![HashMap::from([(
            "name".to_owned(),
            AttributeValue::S("damaged".into()),
        )])],
    )
    .await;

    // The last good client goes, as `sls invoke -f remove_client` removes it.
    let removed = stack
        .invoke(
            "remove_client",
            &json!({ "body": json!({ "name": DEMO_CLIENT }).to_string() }),
        )
        .await
        .expect("remove_client");
    assert_eq!(removed["statusCode"], 200, "{removed}");

    // What the public port answers is printed whenever it changes (the wait's panic says
    // only that it timed out).
    let seen = std::sync::Mutex::new(String::new());
    let settled = || async {
        let newest = stack.newest_config().await.ok().flatten();
        let applied = stack.snapshot().1.map(|a| a.s3_path);
        let (at_root, at_key) = (answer(&root).await, answer(&key_url).await);
        let now =
            format!("applied {applied:?} of newest {newest:?}; / {at_root:?}; key {at_key:?}");
        let mut last = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != now {
            eprintln!("[observed] {now}");
            *last = now;
        }
        newest.is_some()
            && applied == newest
            && refused_for_the_key(&at_root)
            && refused_for_the_key(&at_key)
    };
    wait_until(
        "the stack runs the newest config, and / and the removed key get 401",
        Duration::from_secs(60),
        settled,
    )
    .await;

    // A forced render and a health-check round change nothing: still closed.
    let rendered = stack
        .invoke("config_renderer", &json!({ "force": true }))
        .await
        .expect("config_renderer");
    assert_eq!(rendered["clients"], json!([]), "{rendered}");
    assert_eq!(rendered["clients_left_out"], 1, "{rendered}");
    assert_eq!(rendered["open_without_key"], false, "{rendered}");
    stack.check_now().await.expect("a health-check round");
    wait_until(
        "after a forced render: the newest config in force, still 401",
        Duration::from_secs(60),
        settled,
    )
    .await;
    for url in [&root, &key_url, &format!("{root}/anything")] {
        let got = answer(url).await;
        assert!(
            matches!(&got, Some((401, body)) if *body == json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32001, "message": "missing or unknown API key"}})),
            "{url}: {got:?}"
        );
    }
    stack.shutdown().await;
}
