//! add_backend, list_backends and remove_backend against a real (moto) table.

use aws_sdk_dynamodb::types::AttributeValue;
use jsonrpc_proxy::functions::admin::{add_backend, list_backends, remove_backend};
use jsonrpc_proxy::model::backend_url::BackendUrl;
use serde_json::{json, Value};
use time::OffsetDateTime;

use devstack::testkit::{b, n, put_items, s, scan_pages, Item, TestStack};

/// The admin event `sls invoke -d '{"body": "..."}'` sends.
pub(crate) fn event(body: &Value) -> Value {
    json!({ "body": body.to_string() })
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[tokio::test]
async fn add_backend_creates_updates_and_refuses_a_second_leader() {
    let stack = TestStack::new("admin-add").await;
    let leader = "http://ops:SECRETPASS@10.0.0.1:8545/";
    let node = "http://10.0.0.2:8545";

    // New backend: 201 with the stored item.
    let response = add_backend(
        &stack.store(),
        &event(&json!({"url": node, "is_leader": false})),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 201, "{}", response.body);
    let body = response.body_json().unwrap();
    assert_eq!(body["url"], node);
    assert_eq!(body["is_leader"], false);
    assert_eq!(body["is_healthy"], false);
    let when_added = body["when_added"].as_str().unwrap().to_owned();
    assert!(
        when_added.ends_with('Z') && when_added.len() == 27,
        "{when_added}"
    );
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
    let items = stack.items().await;
    assert_eq!(items.len(), 1);
    assert_eq!(s(&items[node], "when_added"), Some(when_added.as_str()));
    assert_eq!(b(&items[node], "is_healthy"), Some(false));

    // History written by a health check...
    stack
        .aws
        .dynamodb
        .update_item()
        .table_name(&stack.table)
        .key("url", AttributeValue::S(node.into()))
        .update_expression("SET is_healthy = :t, block_number = :b, lag_blocks = :l")
        .expression_attribute_values(":t", AttributeValue::Bool(true))
        .expression_attribute_values(":b", AttributeValue::N("1234".into()))
        .expression_attribute_values(":l", AttributeValue::N("2".into()))
        .send()
        .await
        .unwrap();
    // ... survives a re-add, which answers 200 and updates is_leader.
    let response = add_backend(
        &stack.store(),
        &event(&json!({"url": node, "is_leader": true})),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 200, "{}", response.body);
    let body = response.body_json().unwrap();
    assert_eq!(body["is_leader"], true);
    assert_eq!(body["is_healthy"], true);
    assert_eq!(body["block_number"], 1234);
    assert_eq!(body["when_added"], when_added.as_str());
    let items = stack.items().await;
    assert_eq!(b(&items[node], "is_leader"), Some(true));
    assert_eq!(b(&items[node], "is_healthy"), Some(true));
    assert_eq!(n(&items[node], "block_number"), Some(1234.0));
    assert_eq!(s(&items[node], "when_added"), Some(when_added.as_str()));

    // Re-adding the leader as leader is not a conflict.
    let response = add_backend(
        &stack.store(),
        &event(&json!({"url": node, "is_leader": true})),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 200, "{}", response.body);

    // A second leader: 409 naming the existing one, redacted; nothing written.
    stack
        .store()
        .delete(node)
        .await
        .unwrap()
        .expect("node was stored");
    let response = add_backend(
        &stack.store(),
        &event(&json!({"url": leader, "is_leader": true})),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 201, "{}", response.body);
    let before = stack.items().await;
    let response = add_backend(
        &stack.store(),
        &event(&json!({"url": node, "is_leader": true})),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 409, "{}", response.body);
    let body = response.body_json().unwrap();
    assert_eq!(body["type"], "conflict_error");
    assert_eq!(body["errorClass"], "ConflictError");
    let message = body["error"].as_str().unwrap();
    let redacted = BackendUrl::parse(leader).unwrap().redacted();
    assert!(message.contains(&redacted), "{message}");
    assert!(redacted.contains("[redacted:"), "{redacted}");
    assert!(!message.contains("SECRETPASS"), "{message}");
    assert!(!message.contains("ops:"), "{message}");
    assert_eq!(stack.items().await, before, "nothing written on a conflict");

    // The same URL as a non-leader is fine.
    let response = add_backend(
        &stack.store(),
        &event(&json!({"url": node, "is_leader": false})),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 201, "{}", response.body);
}

#[tokio::test]
async fn add_backend_refuses_bad_requests_and_writes_nothing() {
    let stack = TestStack::new("admin-bad").await;
    let parse = add_backend(&stack.store(), &json!({"body": "{\"url\": "}), now()).await;
    assert_eq!(parse.status_code, 400);
    let body = parse.body_json().unwrap();
    assert_eq!(body["type"], "parse_error");
    assert_eq!(body["errorClass"], "JSONDecodeError");
    assert!(body["error"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(body.as_object().unwrap().len(), 3);

    let cases = [
        json!({}),
        json!({"body": null}),
        event(&json!({"url": "http://10.0.0.1:8545"})),
        event(&json!({"url": "http://10.0.0.1:8545", "is_leader": "true"})),
        event(&json!({"url": "http://10.0.0.1:8545", "is_leader": false, "x": 1})),
        event(&json!({"url": "http://10.0.0.1:8545/;}server{", "is_leader": false})),
        event(&json!({"url": "ftp://10.0.0.1", "is_leader": false})),
        event(&json!([1, 2])),
    ];
    for case in cases {
        let response = add_backend(&stack.store(), &case, now()).await;
        assert_eq!(response.status_code, 400, "{case}: {}", response.body);
        let body = response.body_json().unwrap();
        assert_eq!(body["type"], "validation_error", "{case}");
        assert_eq!(body["errorClass"], "ValidationError", "{case}");
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    assert!(stack.items().await.is_empty(), "nothing written on errors");
}

#[tokio::test]
async fn list_backends_is_sorted_and_complete_across_scan_pages() {
    let stack = TestStack::new("admin-list").await;
    // 1100 items of about 1.9 KB: about 2.2 MB, three 1 MB Scan pages.
    let count = 1100;
    let padding = "p".repeat(1900);
    let mut urls: Vec<String> = (0..count)
        .map(|i| format!("http://10.1.{}.{}:8545/{padding}/{i:04}", i / 250, i % 250))
        .collect();
    let mut items: Vec<Item> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let mut item = Item::from([
                ("url".to_owned(), AttributeValue::S(url.clone())),
                ("is_leader".to_owned(), AttributeValue::Bool(false)),
                ("is_healthy".to_owned(), AttributeValue::Bool(i % 2 == 0)),
                (
                    "when_added".to_owned(),
                    AttributeValue::S("2026-01-01T00:00:00.000000Z".into()),
                ),
            ]);
            if i % 3 == 0 {
                item.insert(
                    "block_number".into(),
                    AttributeValue::N(format!("{}", 1_000_000 + i)),
                );
                item.insert("lag_blocks".into(), AttributeValue::N("3".into()));
                item.insert("response_time_ms".into(), AttributeValue::N("1.500".into()));
            }
            item
        })
        .collect();
    // Write in a scrambled order.
    items.reverse();
    put_items(&stack.aws.dynamodb, &stack.table, items).await;

    // The table really needs several pages.
    let pages = scan_pages(&stack.aws.dynamodb, &stack.table).await;
    assert!(pages >= 3, "only {pages} Scan pages");

    let response = list_backends(&stack.store()).await;
    assert_eq!(response.status_code, 200);
    let listed: Vec<Value> = serde_json::from_str(&response.body).unwrap();
    assert_eq!(listed.len(), count);
    urls.sort();
    let listed_urls: Vec<&str> = listed.iter().map(|b| b["url"].as_str().unwrap()).collect();
    assert_eq!(listed_urls, urls, "complete and sorted by url");
    let with_block = listed
        .iter()
        .find(|b| b["url"].as_str().unwrap().ends_with("/0003"))
        .unwrap();
    assert!(
        with_block["block_number"].is_u64(),
        "{}",
        with_block["block_number"]
    );
    assert_eq!(with_block["block_number"], 1_000_003);
    assert!(with_block["lag_blocks"].is_u64());
    assert_eq!(with_block["response_time_ms"], 1.5);
    assert!(response.body.contains("\"block_number\":1000003,"));
    let without = listed
        .iter()
        .find(|b| b["url"].as_str().unwrap().ends_with("/0001"))
        .unwrap();
    assert!(without.get("block_number").is_none(), "{without}");
    assert!(without.get("health_reason").is_none());
}

#[tokio::test]
async fn remove_backend_answers_the_removed_item_or_404() {
    let stack = TestStack::new("admin-remove").await;
    let node = "http://10.0.0.9:8545";
    stack.add(node, false).await;
    stack.add("http://10.0.0.10:8545", false).await;

    let response = remove_backend(
        &stack.store(),
        &stack.trigger(),
        &event(&json!({"url": node})),
    )
    .await;
    assert_eq!(response.status_code, 200, "{}", response.body);
    let body = response.body_json().unwrap();
    assert_eq!(body["url"], node);
    assert_eq!(body["is_leader"], false);
    let items = stack.items().await;
    assert!(!items.contains_key(node));
    assert_eq!(items.len(), 1);

    let response = remove_backend(
        &stack.store(),
        &stack.trigger(),
        &event(&json!({"url": node})),
    )
    .await;
    assert_eq!(response.status_code, 404, "{}", response.body);
    let body = response.body_json().unwrap();
    assert_eq!(body["type"], "not_found");
    assert_eq!(body["errorClass"], "NotFoundError");

    let response = remove_backend(&stack.store(), &stack.trigger(), &json!({"body": "nope"})).await;
    assert_eq!(response.status_code, 400);
    assert_eq!(stack.items().await.len(), 1);
}
