//! Shared fixtures: one moto_server and one CloudWatch recorder per test binary (started on
//! first use, cleaned up by devstack's watchdog when the binary exits), and per-test AWS
//! clients and resource names so that tests running in parallel never see each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use devstack::{MetricsRecorder, Moto};
use jsonrpc_proxy::backend_url::BackendUrl;
use jsonrpc_proxy::config_bucket::ConfigBucket;
use jsonrpc_proxy::health::HealthPolicy;
use jsonrpc_proxy::health_checker::{HealthChecker, RoundSchedule, DEFAULT_ROW_REFRESH_SECS};
use jsonrpc_proxy::metrics::MetricsPublisher;
use jsonrpc_proxy::probe::{ProbeSettings, Prober};
use jsonrpc_proxy::renderer_trigger::RendererTrigger;
use jsonrpc_proxy::store::BackendStore;
use serde_json::Value;

/// The binary's moto_server.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| match Moto::start() {
        Ok(moto) => moto,
        Err(error) => panic!("cannot start moto_server: {error}"),
    })
}

/// The binary's CloudWatch recorder. Tests tell their calls apart by namespace.
pub fn recorder() -> &'static MetricsRecorder {
    static RECORDER: OnceLock<MetricsRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| match MetricsRecorder::start() {
        Ok(recorder) => recorder,
        Err(error) => panic!("cannot start the CloudWatch recorder: {error}"),
    })
}

/// A name no other test of this run uses: lowercase letters, digits and `-` (valid for
/// tables, buckets, ECS and Lambda).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// AWS clients for one test (clients are tied to the test's runtime, so never shared).
pub struct Aws {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
}

pub async fn aws() -> Aws {
    let config = moto().sdk_config().await;
    let cloudwatch_config = devstack::sdk_config(&recorder().endpoint()).await;
    Aws {
        dynamodb: aws_sdk_dynamodb::Client::new(&config),
        s3: aws_sdk_s3::Client::new(&config),
        ecs: aws_sdk_ecs::Client::new(&config),
        lambda: aws_sdk_lambda::Client::new(&config),
        cloudwatch: aws_sdk_cloudwatch::Client::new(&cloudwatch_config),
    }
}

/// What serverless.yml creates for the table, bucket and renderer, under unique names.
pub struct Stack {
    pub aws: Aws,
    pub table: String,
    pub bucket_name: String,
    pub namespace: String,
    pub stack_name: String,
    pub store: BackendStore,
    pub bucket: ConfigBucket,
    pub trigger: RendererTrigger,
}

pub async fn stack(prefix: &str) -> Stack {
    let moto = moto();
    let table = unique(&format!("{prefix}-table"));
    let bucket_name = unique(&format!("{prefix}-bucket"));
    let function = unique(&format!("{prefix}-renderer"));
    moto.create_table(&table).await.expect("create table");
    moto.create_bucket(&bucket_name)
        .await
        .expect("create bucket");
    moto.create_lambda_function(&function)
        .await
        .expect("create function");
    let aws = aws().await;
    let store = BackendStore::new(aws.dynamodb.clone(), &table);
    let bucket = ConfigBucket::new(aws.s3.clone(), &bucket_name);
    let trigger = RendererTrigger::new(aws.lambda.clone(), &function);
    Stack {
        namespace: unique(&format!("{prefix}-ns")),
        stack_name: unique(&format!("{prefix}-stack")),
        aws,
        table,
        bucket_name,
        store,
        bucket,
        trigger,
    }
}

impl Stack {
    /// A health checker over this stack with a probe timeout of `timeout`.
    pub fn checker(&self, timeout: Duration) -> HealthChecker {
        HealthChecker {
            store: self.store.clone(),
            prober: Prober::new(ProbeSettings {
                timeout,
                ..ProbeSettings::default()
            })
            .expect("prober"),
            metrics: MetricsPublisher::new(self.aws.cloudwatch.clone(), &self.namespace),
            bucket: self.bucket.clone(),
            trigger: self.trigger.clone(),
            // No hysteresis: every verdict takes effect in the round that finds it.
            policy: HealthPolicy::immediate(10),
            schedule: RoundSchedule::default(),
            stack_name: self.stack_name.clone(),
            write_concurrency: 16,
            row_refresh: Duration::from_secs(DEFAULT_ROW_REFRESH_SECS),
            scan_page_items: None,
        }
    }

    /// Every raw item of the table, by URL.
    pub async fn items(&self) -> HashMap<String, HashMap<String, AttributeValue>> {
        let mut items = HashMap::new();
        let mut start = None;
        for _ in 0..1000 {
            let page = self
                .aws
                .dynamodb
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .expect("scan");
            for item in page.items() {
                let Some(AttributeValue::S(url)) = item.get("url") else {
                    panic!("item without url: {item:?}");
                };
                items.insert(url.clone(), item.clone());
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return items,
            }
        }
        panic!("scan did not end");
    }

    /// Adds a backend through the store (as add_backend does).
    pub async fn add(&self, url: &str, is_leader: bool) {
        let url = BackendUrl::parse(url).expect("valid url");
        self.store
            .upsert(&url, is_leader, time::OffsetDateTime::now_utc())
            .await
            .expect("upsert");
    }

    /// Sets `is_healthy` of an item directly.
    pub async fn set_healthy(&self, url: &str, healthy: bool) {
        self.aws
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("url", AttributeValue::S(url.to_owned()))
            .update_expression("SET is_healthy = :h")
            .expression_attribute_values(":h", AttributeValue::Bool(healthy))
            .send()
            .await
            .expect("update item");
    }

    /// The PutMetricData calls of this stack's namespace.
    pub fn metric_calls(&self) -> Vec<Value> {
        recorder()
            .recorded()
            .expect("recorded calls")
            .into_iter()
            .filter(|call| call["namespace"] == self.namespace.as_str())
            .collect()
    }

    /// Keys of the objects in the bucket.
    pub async fn object_keys(&self) -> Vec<String> {
        let listed = self
            .aws
            .s3
            .list_objects_v2()
            .bucket(&self.bucket_name)
            .send()
            .await
            .expect("list objects");
        let mut keys: Vec<String> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        keys.sort();
        keys
    }
}

/// A string attribute of an item.
pub fn s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

/// A number attribute of an item.
pub fn n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<f64> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().ok(),
        _ => None,
    }
}

/// A boolean attribute of an item.
pub fn b(item: &HashMap<String, AttributeValue>, name: &str) -> Option<bool> {
    match item.get(name) {
        Some(AttributeValue::Bool(value)) => Some(*value),
        _ => None,
    }
}

/// The admin event `sls invoke -d '{"body": "..."}'` sends.
pub fn event(body: &Value) -> Value {
    serde_json::json!({ "body": body.to_string() })
}
