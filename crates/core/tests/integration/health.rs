//! Health-check rounds against real anvil nodes, moto and the CloudWatch recorder.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use devstack::{Anvil, AnvilOptions};
use jsonrpc_proxy::aws::store::CheckWrite;
use jsonrpc_proxy::functions::config_renderer::ConfigRenderer;
use jsonrpc_proxy::health::judgement::{UnhealthyReason, Verdict};
use jsonrpc_proxy::health::probe::ProbeFailure;
use jsonrpc_proxy::model::backend_url::BackendUrl;
use serde_json::Value;
use time::OffsetDateTime;

use devstack::testkit::{b, n, put_items, s, Item, Node, TestStack};

fn anvil() -> Anvil {
    Anvil::start(AnvilOptions::default()).expect("start anvil")
}

/// The data points of some recorded calls, flattened.
fn points(calls: &[Value]) -> Vec<Value> {
    calls
        .iter()
        .flat_map(|c| c["metric_data"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The value of `metric` for dimension value `label`, if sent.
fn point<'a>(points: &'a [Value], metric: &str, label: &str) -> Option<&'a Value> {
    points
        .iter()
        .find(|p| p["MetricName"] == metric && p["Dimensions"][0]["Value"] == label)
}

fn renderer(stack: &TestStack) -> ConfigRenderer {
    stack.renderer(8080, "/tmp/jrp-health")
}

#[tokio::test]
async fn rounds_follow_lagging_dead_and_recovered_anvil_nodes() {
    let stack = TestStack::new("health").await;
    let mut leader = anvil();
    let mut a = anvil();
    let mut b_node = anvil();
    leader.mine(50).unwrap();
    a.mine(50).unwrap();
    b_node.mine(45).unwrap();
    // The leader's URL carries credentials: they must never reach a metric dimension.
    let leader_url = format!("http://ops:SECRETPASS@127.0.0.1:{}/", leader.port());
    let leader_label = BackendUrl::parse(&leader_url).unwrap().redacted();
    assert!(leader_label.contains("[redacted:"));
    let (a_url, b_url) = (a.url(), b_node.url());
    stack.add(&leader_url, true).await;
    stack.add(&a_url, false).await;
    stack.add(&b_url, false).await;
    let checker = stack
        .checker()
        .probe_timeout(Duration::from_millis(1500))
        .build();

    // Round 1: all healthy; nothing rendered yet, so a render is requested.
    let summary = checker.run_round().await.unwrap();
    assert_eq!(summary.backends, 3);
    assert_eq!(summary.healthy, 3);
    assert_eq!(summary.changed, 3);
    assert_eq!(summary.reference_block, Some(50));
    assert_eq!(summary.reference_source, "leader");
    assert_eq!((summary.written, summary.skipped), (3, 0));
    assert_eq!(summary.metric_calls, 1);
    assert_eq!(
        summary.render_requested.as_deref(),
        Some("no config rendered yet")
    );
    let items = stack.items().await;
    for (url, block, lag) in [
        (&leader_url, 50.0, 0.0),
        (&a_url, 50.0, 0.0),
        (&b_url, 45.0, 5.0),
    ] {
        let item = &items[url.as_str()];
        assert_eq!(b(item, "is_healthy"), Some(true), "{url}");
        assert_eq!(n(item, "block_number"), Some(block), "{url}");
        assert_eq!(n(item, "lag_blocks"), Some(lag), "{url}");
        assert!(n(item, "response_time_ms").is_some_and(|ms| ms > 0.0 && ms < 1500.0));
        assert!(s(item, "last_checked").is_some());
        assert!(!item.contains_key("health_reason"));
    }

    // Metrics: the original's names and dimensions, redacted, milliseconds.
    let calls = stack.metric_calls();
    assert_eq!(calls.len(), 1);
    let data = points(&calls);
    assert_eq!(
        data.len(),
        10,
        "2 for the leader, 3 per node, 1 count, 1 leader stalled: {data:?}"
    );
    let block = point(&data, "ETH node block number", &leader_label).expect("leader block");
    assert_eq!(block["Value"], 50.0);
    assert_eq!(block["Unit"], "None");
    assert_eq!(block["Dimensions"][0]["Name"], "Node URL");
    let time = point(&data, "eth_getBlockNumber response time", &leader_label).unwrap();
    assert_eq!(time["Unit"], "Milliseconds");
    assert!(point(&data, "ETH node block difference", &leader_label).is_none());
    assert_eq!(
        point(&data, "ETH node block difference", &b_url).expect("b difference")["Value"],
        5.0
    );
    let healthy = point(&data, "Number of healthy ETH nodes", &stack.stack_name).unwrap();
    assert_eq!(healthy["Dimensions"][0]["Name"], "Stack name");
    assert_eq!(healthy["Value"], 3.0);
    assert!(data.iter().all(|p| p["StorageResolution"] == 60));
    let text = serde_json::to_string(&calls).unwrap();
    assert!(
        !text.contains("SECRETPASS") && !text.contains("ops:"),
        "{text}"
    );

    // Rendered: the next round finds the plan unchanged and requests nothing.
    let rendered = renderer(&stack)
        .render_and_publish("req-1", false)
        .await
        .unwrap();
    assert!(rendered.written);
    let summary = checker.run_round().await.unwrap();
    assert_eq!(summary.changed, 0);
    assert_eq!(summary.render_requested, None);
    assert_eq!(summary.plan_fingerprint, rendered.plan_fingerprint);

    // b restarts at block 0: 50 behind, unhealthy; the plan changed.
    b_node.restart().unwrap();
    let summary = checker.run_round().await.unwrap();
    assert_eq!(summary.healthy, 2);
    assert_eq!(summary.changed, 1);
    assert_eq!(
        summary.render_requested.as_deref(),
        Some("routing plan changed")
    );
    let items = stack.items().await;
    let item = &items[b_url.as_str()];
    assert_eq!(b(item, "is_healthy"), Some(false));
    assert_eq!(
        s(item, "health_reason"),
        Some("lagging 50 blocks behind reference 50 (tolerance 10)")
    );
    assert_eq!(n(item, "block_number"), Some(0.0));
    assert_eq!(n(item, "lag_blocks"), Some(50.0));

    // b catches up: healthy again, the reason is gone, and the plan is the rendered one again
    // (level-triggered: no render needed).
    b_node.mine(45).unwrap();
    let summary = checker.run_round().await.unwrap();
    assert_eq!(summary.healthy, 3);
    assert_eq!(summary.render_requested, None);
    let items = stack.items().await;
    assert_eq!(b(&items[b_url.as_str()], "is_healthy"), Some(true));
    assert!(!items[b_url.as_str()].contains_key("health_reason"));

    // a dies: unhealthy with a connection reason, its last block number kept.
    a.stop();
    let summary = checker.run_round().await.unwrap();
    assert_eq!(summary.healthy, 2);
    assert_eq!(
        summary.render_requested.as_deref(),
        Some("routing plan changed")
    );
    let items = stack.items().await;
    let item = &items[a_url.as_str()];
    assert_eq!(b(item, "is_healthy"), Some(false));
    let reason = s(item, "health_reason").unwrap();
    assert!(
        reason.starts_with("connection failed") || reason.starts_with("timeout"),
        "{reason}"
    );
    assert_eq!(
        n(item, "block_number"),
        Some(50.0),
        "kept from the last answer"
    );
    assert!(!item.contains_key("lag_blocks"));
    let calls = stack.metric_calls();
    let last = points(&calls[calls.len() - 1..]);
    assert!(point(&last, "ETH node block number", &a_url).is_none());
    assert!(point(&last, "eth_getBlockNumber response time", &a_url).is_some());
    assert_eq!(
        point(&last, "Number of healthy ETH nodes", &stack.stack_name).unwrap()["Value"],
        2.0
    );

    // The leader dies too: the reference is the highest (corroborated) answer.
    leader.stop();
    let summary = checker.run_round().await.unwrap();
    assert_eq!(summary.reference_source, "corroborated");
    assert_eq!(summary.reference_block, Some(45));
    assert_eq!(summary.healthy, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_go_in_calls_of_at_most_1000_points() {
    let stack = TestStack::new("health-batch").await;
    let node = Node::start().await;
    let count = 400;
    let items = (0..count)
        .map(|i| {
            let url = if i == 0 {
                node.url("/block/100/leader")
            } else {
                node.url(&format!("/block/{}/n{i}", 95 + i % 10))
            };
            Item::from([
                ("url".to_owned(), AttributeValue::S(url)),
                ("is_leader".to_owned(), AttributeValue::Bool(i == 0)),
                ("is_healthy".to_owned(), AttributeValue::Bool(false)),
                (
                    "when_added".to_owned(),
                    AttributeValue::S("2026-01-01T00:00:00Z".into()),
                ),
            ])
        })
        .collect();
    put_items(&stack.aws.dynamodb, &stack.table, items).await;

    let summary = stack
        .checker()
        .probe_timeout(Duration::from_secs(2))
        .build()
        .run_round()
        .await
        .unwrap();
    assert_eq!(summary.backends, count);
    assert_eq!(summary.written, count);
    assert_eq!(summary.reference_block, Some(100));
    // 95..=104 against 100 with tolerance 10: all healthy.
    assert_eq!(summary.healthy, count);
    assert!(node.requests() >= count as u64, "every backend was probed");
    // 2 points for the leader, 3 per node, 1 count, 1 leader stalled = 1201 = 1000 + 201.
    assert_eq!(summary.metric_calls, 2);
    let calls = stack.metric_calls();
    let sizes: Vec<usize> = calls
        .iter()
        .map(|c| c["metric_data"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![1000, 201]);
    let all = points(&calls);
    let negative = all
        .iter()
        .filter(|p| {
            p["MetricName"] == "ETH node block difference" && p["Value"].as_f64() < Some(0.0)
        })
        .count();
    assert!(
        negative > 0,
        "nodes ahead of the leader have a negative difference"
    );
}

fn verdict(url: &str, healthy: bool, block: Option<u64>) -> Verdict {
    Verdict {
        url: url.to_owned(),
        is_leader: false,
        is_healthy: healthy,
        health_changed: true,
        observed_block: block,
        stored_block: block,
        lag: block.map(|_| 0),
        difference: block.map(|_| 0),
        response_time_ms: Some(1.0),
        failure: (!healthy).then_some(UnhealthyReason::Probe(ProbeFailure::Timeout(2000))),
        health_reason: (!healthy).then(|| "timeout after 2000 ms".to_owned()),
        ..Verdict::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_removed_during_a_round_is_not_recreated() {
    let stack = TestStack::new("health-removed").await;
    let node = Node::start().await;
    let (kept, removed) = (node.url("/block/7/kept"), node.url("/block/7/removed"));
    stack.add(&kept, false).await;
    stack.add(&removed, false).await;
    let checker = stack
        .checker()
        .probe_timeout(Duration::from_secs(2))
        .build();

    let backends = stack.store().scan_all().await.unwrap();
    let round = checker.probe_and_assess(&backends).await;
    assert_eq!(round.healthy_count(), 2);
    // Removed between probing and writing.
    assert!(stack.store().delete(&removed).await.unwrap().is_some());
    let now = OffsetDateTime::now_utc();
    let mut outcomes = HashMap::new();
    for verdict in &round.verdicts {
        let outcome = stack.store().record_check(verdict, now).await.unwrap();
        outcomes.insert(verdict.url.clone(), outcome);
    }
    assert_eq!(outcomes[&kept], CheckWrite::Written);
    assert_eq!(outcomes[&removed], CheckWrite::Skipped);
    let items = stack.items().await;
    assert_eq!(items.len(), 1);
    assert!(
        !items.contains_key(&removed),
        "the removed backend was recreated"
    );

    // A write for a URL that was never in the table creates nothing either.
    let ghost = verdict(&node.url("/block/7/ghost"), true, Some(7));
    assert_eq!(
        stack.store().record_check(&ghost, now).await.unwrap(),
        CheckWrite::Skipped
    );
    assert_eq!(stack.items().await.len(), 1);
}

#[tokio::test]
async fn an_older_round_never_overwrites_a_newer_one() {
    let stack = TestStack::new("health-order").await;
    let url = "http://10.0.0.77:8545";
    stack.add(url, false).await;
    let newer_at = OffsetDateTime::now_utc();
    let older_at = newer_at - Duration::from_secs(5);

    let newer = verdict(url, true, Some(300));
    assert_eq!(
        stack.store().record_check(&newer, newer_at).await.unwrap(),
        CheckWrite::Written
    );
    let older = verdict(url, false, Some(100));
    assert_eq!(
        stack.store().record_check(&older, older_at).await.unwrap(),
        CheckWrite::Skipped
    );
    // The same instant is not newer either.
    assert_eq!(
        stack.store().record_check(&older, newer_at).await.unwrap(),
        CheckWrite::Skipped
    );
    let items = stack.items().await;
    let item = &items[url];
    assert_eq!(b(item, "is_healthy"), Some(true));
    assert_eq!(n(item, "block_number"), Some(300.0));
    assert!(!item.contains_key("health_reason"));
    assert_eq!(
        n(item, "last_checked_ms"),
        Some(jsonrpc_proxy::model::backend::epoch_millis(newer_at) as f64)
    );

    // A later round does write, and removes what no longer applies.
    let later = verdict(url, false, None);
    assert_eq!(
        stack
            .store()
            .record_check(&later, newer_at + Duration::from_secs(1))
            .await
            .unwrap(),
        CheckWrite::Written
    );
    let items = stack.items().await;
    let item = &items[url];
    assert_eq!(b(item, "is_healthy"), Some(false));
    assert_eq!(
        n(item, "block_number"),
        Some(300.0),
        "kept without an answer"
    );
    assert_eq!(s(item, "health_reason"), Some("timeout after 2000 ms"));
    assert!(!item.contains_key("lag_blocks"));
}

/// A round writes only rows with something new (the original wrote every row every round),
/// and rewrites an unchanged row once its last write is `ROW_REFRESH_SECS` old.
#[tokio::test]
async fn rows_with_nothing_new_are_not_rewritten_until_their_refresh_is_due() {
    let stack = TestStack::new("unchanged").await;
    let (leader, a) = (anvil(), anvil());
    leader.mine(20).unwrap();
    a.mine(20).unwrap();
    stack.add(&leader.url(), true).await;
    stack.add(&a.url(), false).await;
    let checker = stack
        .checker()
        .probe_timeout(Duration::from_millis(1500))
        .build();

    let first = checker.run_round().await.unwrap();
    assert_eq!((first.written, first.unchanged), (2, 0), "{first:?}");
    let stamps = |items: &BTreeMap<String, Item>| {
        let mut stamps: Vec<f64> = items
            .values()
            .map(|item| n(item, "last_checked_ms").expect("stamp"))
            .collect();
        stamps.sort_by(f64::total_cmp);
        stamps
    };
    let after_first = stack.items().await;

    // Nothing moved: nothing is written, the rows keep the first round's check.
    let steady = checker.run_round().await.unwrap();
    assert_eq!((steady.written, steady.unchanged), (0, 2), "{steady:?}");
    assert_eq!(steady.healthy, 2);
    let after_steady = stack.items().await;
    assert_eq!(after_steady, after_first, "no item changed");
    // Metrics are still published every round.
    assert_eq!(steady.metric_calls, 1);

    // A new block is news for the node that has it (and for the leader's lag reference, not
    // for the leader's row): only a's row is written.
    a.mine(1).unwrap();
    let moved = checker.run_round().await.unwrap();
    assert_eq!((moved.written, moved.unchanged), (1, 1), "{moved:?}");
    let items = stack.items().await;
    assert_eq!(n(&items[&a.url()], "block_number"), Some(21.0));

    // A refresh period of zero rewrites every row every round, as the original did.
    let always = stack
        .checker()
        .probe_timeout(Duration::from_millis(1500))
        .row_refresh(Duration::ZERO)
        .build();
    let refreshed = always.run_round().await.unwrap();
    assert_eq!((refreshed.written, refreshed.unchanged), (2, 0));
    let after_refresh = stack.items().await;
    assert!(
        stamps(&after_refresh)
            .iter()
            .zip(stamps(&items))
            .all(|(new, old)| *new > old),
        "every row carries the new check: {after_refresh:?}"
    );
}
