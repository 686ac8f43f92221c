//! The test kit every test crate shares: the binary's moto and CloudWatch recorder, unique
//! names, a [`TestStack`] of what `serverless.yml` creates (optionally behind fault proxies),
//! a [`CheckerBuilder`], item helpers, a scripted JSON-RPC [`Node`] on axum, [`GatedNginx`] and
//! a raw [`websocket`] client.
//!
//! How tests use it: "Build and test" in `CONTRIBUTING.md`.

mod checker;
mod gated;
mod node;
mod stack;
pub mod websocket;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use jsonrpc_proxy::aws::config_bucket::{ConfigBucket, ConfigPointer};
use sha2::{Digest, Sha256};

use crate::{MetricsRecorder, Moto};

pub use checker::CheckerBuilder;
pub use gated::GatedNginx;
pub use node::{node_answer, node_result, rpc_answer, serve, Answer, Node, Server};
pub use stack::{Clients, TestStack};

/// A DynamoDB item as the SDK returns it.
pub type Item = HashMap<String, AttributeValue>;

/// The test binary's moto_server, started on first use (devstack's watchdog stops it when
/// the binary exits).
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| match Moto::start() {
        Ok(moto) => moto,
        Err(error) => panic!("cannot start moto_server: {error}"),
    })
}

/// The test binary's CloudWatch recorder, started on first use. Tests tell their calls apart
/// by namespace.
pub fn recorder() -> &'static MetricsRecorder {
    static RECORDER: OnceLock<MetricsRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| match MetricsRecorder::start() {
        Ok(recorder) => recorder,
        Err(error) => panic!("cannot start the CloudWatch recorder: {error}"),
    })
}

/// Publishes `text` under `key` as the renderer does: the configuration numbered one after
/// the pointer's render, then the pointer to it. Returns the pointer.
pub async fn publish(bucket: &ConfigBucket, key: &str, text: &str) -> ConfigPointer {
    let sequence = bucket
        .read_pointer()
        .await
        .expect("read pointer")
        .map_or(0, |p| p.sequence)
        + 1;
    bucket
        .put_config(key, text, sequence)
        .await
        .expect("put config");
    let pointer = ConfigPointer {
        key: key.into(),
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
        plan_fingerprint: "test".into(),
        clients_fingerprint: None,
        rendered_at: "2026-11-24T03:00:00Z".into(),
        sequence,
        backends: vec![],
    };
    bucket.put_pointer(&pointer).await.expect("put pointer");
    pointer
}

/// A name no other test of this run uses: `prefix`, the process id and a counter (lowercase
/// letters, digits and `-` keep it valid for tables, buckets, ECS and Lambda).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A string attribute of an item.
pub fn s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

/// A number attribute of an item, as written (`response_time_ms` has decimals).
pub fn n(item: &Item, name: &str) -> Option<f64> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().ok(),
        _ => None,
    }
}

/// A whole-number attribute of an item (blocks, counters, stamps); `None` for a fraction.
pub fn int(item: &Item, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().ok(),
        _ => None,
    }
}

/// A boolean attribute of an item.
pub fn b(item: &Item, name: &str) -> Option<bool> {
    match item.get(name) {
        Some(AttributeValue::Bool(value)) => Some(*value),
        _ => None,
    }
}

/// Waits until `condition` holds, polling every 100 ms, and prints how long that took;
/// panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "[wait] {what}: after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Writes `items` into `table` with BatchWriteItem, 25 at a time, until none is left over.
pub async fn put_items(dynamodb: &aws_sdk_dynamodb::Client, table: &str, items: Vec<Item>) {
    let requests: Vec<WriteRequest> = items
        .into_iter()
        .map(|item| {
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .expect("an item");
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    for chunk in requests.chunks(25) {
        let mut pending = chunk.to_vec();
        for _ in 0..10 {
            let output = dynamodb
                .batch_write_item()
                .request_items(table, pending)
                .send()
                .await
                .expect("BatchWriteItem");
            pending = output
                .unprocessed_items()
                .and_then(|u| u.get(table))
                .cloned()
                .unwrap_or_default();
            if pending.is_empty() {
                break;
            }
        }
        assert!(pending.is_empty(), "unprocessed writes");
    }
}

/// How many Scan pages `table` takes to read whole (at most 100).
pub async fn scan_pages(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> usize {
    let mut pages = 0;
    let mut start = None;
    loop {
        let page = dynamodb
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("Scan");
        pages += 1;
        match page.last_evaluated_key() {
            Some(key) if !key.is_empty() && pages < 100 => start = Some(key.clone()),
            _ => return pages,
        }
    }
}

/// Every raw item of `table` by its string hash key `key` (consistent scans, page by page).
pub async fn scan_items(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
) -> BTreeMap<String, Item> {
    let mut items = BTreeMap::new();
    let mut start = None;
    for _ in 0..1000 {
        let page = dynamodb
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("Scan");
        for item in page.items() {
            let Some(AttributeValue::S(name)) = item.get(key) else {
                panic!("item without {key}: {item:?}");
            };
            items.insert(name.clone(), item.clone());
        }
        match page.last_evaluated_key() {
            Some(last) if !last.is_empty() => start = Some(last.clone()),
            _ => return items,
        }
    }
    panic!("scan did not end");
}
