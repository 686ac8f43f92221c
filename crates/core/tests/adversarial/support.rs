//! Fixtures of the adversarial suite: one moto_server and one CloudWatch recorder per test
//! binary, a fault proxy in front of moto per test, SDK clients pointed straight at moto (to
//! set up and inspect) or through the proxy (what the code under test uses), and a JSON-RPC
//! node whose answers the test switches at run time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use devstack::{FaultProxy, MetricsRecorder, Moto};
use jsonrpc_proxy::backend::Backend;
use jsonrpc_proxy::backend_url::BackendUrl;
use jsonrpc_proxy::config_bucket::{ConfigBucket, ConfigPointer};
use jsonrpc_proxy::config_renderer::ConfigRenderer;
use jsonrpc_proxy::health::HealthPolicy;
use jsonrpc_proxy::health_checker::{HealthChecker, RoundSchedule};
use jsonrpc_proxy::metrics::MetricsPublisher;
use jsonrpc_proxy::nginx::RenderOptions;
use jsonrpc_proxy::probe::{ProbeSettings, Prober};
use jsonrpc_proxy::renderer_trigger::RendererTrigger;
use jsonrpc_proxy::routing::RoutingPlan;
use jsonrpc_proxy::store::BackendStore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The binary's moto_server.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| match Moto::start() {
        Ok(moto) => moto,
        Err(error) => panic!("cannot start moto_server: {error}"),
    })
}

/// The binary's CloudWatch recorder (tests tell their calls apart by namespace).
pub fn recorder() -> &'static MetricsRecorder {
    static RECORDER: OnceLock<MetricsRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| match MetricsRecorder::start() {
        Ok(recorder) => recorder,
        Err(error) => panic!("cannot start the CloudWatch recorder: {error}"),
    })
}

/// A name no other test of this run uses (valid for tables, buckets, ECS and Lambda).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// AWS clients built from one endpoint.
#[derive(Clone)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
}

impl Clients {
    /// Clients for `endpoint` (CloudWatch for `cloudwatch_endpoint`), with the SDK's default
    /// (standard, 3 attempts) retry configuration.
    pub async fn new(endpoint: &str, cloudwatch_endpoint: &str) -> Self {
        let config = devstack::sdk_config(endpoint).await;
        let cloudwatch = devstack::sdk_config(cloudwatch_endpoint).await;
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            s3: aws_sdk_s3::Client::new(&config),
            ecs: aws_sdk_ecs::Client::new(&config),
            lambda: aws_sdk_lambda::Client::new(&config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&cloudwatch),
        }
    }
}

/// What serverless.yml creates (table, bucket, renderer function), under unique names, with a
/// fault proxy in front of moto and another in front of the CloudWatch recorder.
pub struct Env {
    pub moto_proxy: FaultProxy,
    pub metrics_proxy: FaultProxy,
    /// Straight to moto: for setting up and inspecting.
    pub direct: Clients,
    /// Through the proxies: what the code under test uses.
    pub faulty: Clients,
    pub table: String,
    pub bucket_name: String,
    pub function: String,
    pub namespace: String,
    pub stack_name: String,
}

impl Env {
    pub async fn new(prefix: &str) -> Self {
        let moto = moto();
        let table = unique(&format!("{prefix}-table"));
        let bucket_name = unique(&format!("{prefix}-bucket"));
        let function = unique(&format!("{prefix}-renderer"));
        moto.create_table(&table).await.expect("create table");
        moto.create_bucket(&bucket_name)
            .await
            .expect("create bucket");
        // moto now and then answers the first CreateFunction of a fresh server without an
        // ARN; a second attempt works.
        let mut created = moto.create_lambda_function(&function).await;
        for _ in 0..3 {
            if created.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            created = moto.create_lambda_function(&function).await;
        }
        created.expect("create function");
        let moto_proxy = FaultProxy::start(&moto.endpoint()).expect("fault proxy for moto");
        let metrics_proxy =
            FaultProxy::start(&recorder().endpoint()).expect("fault proxy for the recorder");
        let direct = Clients::new(&moto.endpoint(), &recorder().endpoint()).await;
        let faulty = Clients::new(&moto_proxy.endpoint(), &metrics_proxy.endpoint()).await;
        Self {
            moto_proxy,
            metrics_proxy,
            direct,
            faulty,
            namespace: unique(&format!("{prefix}-ns")),
            stack_name: unique(&format!("{prefix}-stack")),
            table,
            bucket_name,
            function,
        }
    }

    /// The table, straight to moto.
    pub fn store(&self) -> BackendStore {
        BackendStore::new(self.direct.dynamodb.clone(), &self.table)
    }

    /// The bucket, straight to moto.
    pub fn bucket(&self) -> ConfigBucket {
        ConfigBucket::new(self.direct.s3.clone(), &self.bucket_name)
    }

    /// A health checker through the proxies (no hysteresis, tolerance 10, 1 s probes).
    pub fn checker(&self) -> HealthChecker {
        self.checker_with(&self.faulty)
    }

    /// A health checker using `clients`.
    pub fn checker_with(&self, clients: &Clients) -> HealthChecker {
        HealthChecker {
            store: BackendStore::new(clients.dynamodb.clone(), &self.table),
            prober: Prober::new(ProbeSettings {
                timeout: Duration::from_secs(1),
                ..ProbeSettings::default()
            })
            .expect("prober"),
            metrics: MetricsPublisher::new(clients.cloudwatch.clone(), &self.namespace),
            bucket: ConfigBucket::new(clients.s3.clone(), &self.bucket_name),
            trigger: RendererTrigger::new(clients.lambda.clone(), &self.function),
            policy: HealthPolicy::immediate(10),
            schedule: RoundSchedule::default(),
            stack_name: self.stack_name.clone(),
            write_concurrency: 16,
            // These scenarios exercise the write path under faults: every row every round.
            row_refresh: Duration::ZERO,
            scan_page_items: None,
        }
    }

    /// The renderer through the proxy.
    pub fn renderer(&self) -> ConfigRenderer {
        ConfigRenderer {
            store: BackendStore::new(self.faulty.dynamodb.clone(), &self.table),
            bucket: ConfigBucket::new(self.faulty.s3.clone(), &self.bucket_name),
            options: RenderOptions {
                listen_port: 8080,
                socket_dir: "/tmp/jrp-adversarial".into(),
                ..RenderOptions::default()
            },
        }
    }

    /// The renderer trigger through the proxy.
    pub fn trigger(&self) -> RendererTrigger {
        RendererTrigger::new(self.faulty.lambda.clone(), &self.function)
    }

    /// Adds a backend straight to the table.
    pub async fn add(&self, url: &str, is_leader: bool) {
        let url = BackendUrl::parse(url).expect("valid url");
        self.store()
            .upsert(&url, is_leader, time::OffsetDateTime::now_utc())
            .await
            .expect("upsert");
    }

    /// Sets `is_healthy` straight in the table.
    pub async fn set_healthy(&self, url: &str, healthy: bool) {
        self.direct
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

    /// Every raw item, by URL.
    pub async fn items(&self) -> BTreeMap<String, HashMap<String, AttributeValue>> {
        let mut items = BTreeMap::new();
        let mut start = None;
        for _ in 0..1000 {
            let page = self
                .direct
                .dynamodb
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
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

    /// The backends, decoded.
    pub async fn backends(&self) -> Vec<Backend> {
        self.store().scan_all().await.expect("scan")
    }

    /// Keys of the objects in the bucket.
    pub async fn object_keys(&self) -> Vec<String> {
        let listed = self
            .direct
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

    /// PutMetricData calls recorded for this test's namespace.
    pub fn metric_calls(&self) -> usize {
        recorder()
            .recorded()
            .expect("recorded calls")
            .iter()
            .filter(|call| call["namespace"] == self.namespace.as_str())
            .count()
    }

    /// The pointer invariant: when a pointer exists, it names a config that exists and whose
    /// text has the pointer's sha256. Returns the pointer.
    pub async fn pointer_is_consistent(&self, context: &str) -> Option<ConfigPointer> {
        let bucket = self.bucket();
        let pointer = bucket.read_pointer().await.expect("read pointer")?;
        let text = bucket
            .get(&pointer.key)
            .await
            .expect("get config")
            .unwrap_or_else(|| {
                panic!(
                    "{context}: the pointer names {}, which does not exist",
                    pointer.key
                )
            });
        assert_eq!(
            hex::encode(Sha256::digest(&text)),
            pointer.sha256,
            "{context}: the pointer's sha256 is not its config's"
        );
        Some(pointer)
    }

    /// The fingerprint of the plan the table implies now.
    pub async fn table_plan(&self) -> String {
        RoutingPlan::from_backends(&self.backends().await).fingerprint()
    }
}

/// A string attribute.
pub fn s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

/// A number attribute.
pub fn n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value
            .parse::<u64>()
            .ok()
            .or_else(|| value.parse::<f64>().ok().map(|f| f as u64)),
        _ => None,
    }
}

/// A boolean attribute.
pub fn b(item: &HashMap<String, AttributeValue>, name: &str) -> Option<bool> {
    match item.get(name) {
        Some(AttributeValue::Bool(value)) => Some(*value),
        _ => None,
    }
}

/// How a [`ControlledNode`] answers for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A node at this height.
    Height(u64),
    /// A node at `base` plus the number of requests this name got before.
    Counting(u64),
    /// This HTTP status, with a JSON body.
    Status(u16),
}

#[derive(Default)]
struct NodeState {
    answers: HashMap<String, Answer>,
    requests: HashMap<String, u64>,
}

/// A JSON-RPC server on 127.0.0.1 playing many nodes: `/n/<name>` answers as set with
/// [`ControlledNode::set`] (batches as a node answers them: block number, chain id 1, not
/// syncing); unknown names get 404.
pub struct ControlledNode {
    port: u16,
    state: Arc<Mutex<NodeState>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ControlledNode {
    /// Starts the server (it stops with the test's runtime).
    pub async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(NodeState::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = serve_node(stream, shared).await;
                });
            }
        });
        Self { port, state }
    }

    /// The URL of node `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/n/{name}", self.port)
    }

    /// Requests received so far, all names together (counts reset by [`Self::set`] excluded).
    pub fn total_requests(&self) -> u64 {
        lock(&self.state).requests.values().sum()
    }

    /// Sets how `name` answers, and resets its request count.
    pub fn set(&self, name: &str, answer: Answer) {
        let mut state = lock(&self.state);
        state.answers.insert(name.to_owned(), answer);
        state.requests.remove(name);
    }
}

async fn serve_node(mut stream: TcpStream, state: Arc<Mutex<NodeState>>) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > 64 * 1024 {
            return Ok(());
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
        .min(64 * 1024);
    let mut body = buffer[header_end..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    let path = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("/");
    let name = path.strip_prefix("/n/").unwrap_or("");
    let answer = {
        let mut state = lock(&state);
        let answer = state.answers.get(name).copied();
        let count = state.requests.entry(name.to_owned()).or_insert(0);
        let seen = *count;
        *count += 1;
        match answer {
            Some(Answer::Counting(base)) => Some(Answer::Height(base + seen)),
            other => other,
        }
    };
    let (status, text) = match answer {
        Some(Answer::Height(height)) => ("200 OK".to_owned(), node_answer(&body, height)),
        Some(Answer::Status(code)) => (
            format!("{code} Injected"),
            r#"{"error":"injected"}"#.to_owned(),
        ),
        Some(Answer::Counting(_)) | None => ("404 Not Found".to_owned(), "{}".to_owned()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// A node's answer at `height`: one object for a single call, an array for a batch.
pub fn node_answer(request: &[u8], height: u64) -> String {
    let single = |id: serde_json::Value, method: Option<&str>| {
        let value = match method {
            Some("eth_blockNumber") => serde_json::json!(format!("{height:#x}")),
            Some("eth_chainId") => serde_json::json!("0x1"),
            Some("eth_syncing") => serde_json::json!(false),
            _ => {
                return serde_json::json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32601, "message": "method not found"}})
            }
        };
        serde_json::json!({"jsonrpc": "2.0", "id": id, "result": value})
    };
    match serde_json::from_slice::<serde_json::Value>(request) {
        Ok(serde_json::Value::Array(calls)) => serde_json::Value::Array(
            calls
                .iter()
                .map(|c| {
                    single(
                        c.get("id").cloned().unwrap_or(serde_json::Value::Null),
                        c.get("method").and_then(serde_json::Value::as_str),
                    )
                })
                .collect(),
        )
        .to_string(),
        Ok(call) => single(
            call.get("id").cloned().unwrap_or(serde_json::json!(1)),
            call.get("method")
                .and_then(serde_json::Value::as_str)
                .or(Some("eth_blockNumber")),
        )
        .to_string(),
        Err(_) => single(serde_json::json!(1), Some("eth_blockNumber")).to_string(),
    }
}

/// One line of the suite's figures, printed for docs/reliability.md.
pub fn figure(what: &str, value: impl std::fmt::Display) {
    eprintln!("[figures] {what}: {value}");
}
