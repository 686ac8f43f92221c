//! Bringing the whole system up: stand-ins, resources, nodes, functions, event sources.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use devstack::{Anvil, AnvilOptions, MetricsRecorder, Moto, Nginx};
use jsonrpc_proxy::backend::{iso8601, Backend};
use jsonrpc_proxy::config_bucket::{ConfigBucket, ConfigPointer};
use jsonrpc_proxy::ecs_update::{config_path_of, parse_s3_path};
use jsonrpc_proxy::nginx::{render, RenderOptions, RoutingPlan};
use jsonrpc_proxy::store::BackendStore;
use serde_json::{json, Value};
use thiserror::Error;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::lambda_emulator::{FunctionSpec, InvokeError, LambdaEmulator};

/// Names of the resources the stack creates (what `serverless.yml` creates on AWS).
pub const STACK_NAME: &str = "jsonrpc-proxy-local";
/// The config bucket.
pub const BUCKET: &str = "jsonrpc-proxy-local-config";
/// The ECS cluster.
pub const CLUSTER: &str = "jsonrpc-proxy-local";
/// The task definition family.
pub const FAMILY: &str = "jsonrpc-proxy-local-nginx";
/// The ECS service.
pub const SERVICE: &str = "jsonrpc-proxy-local-nginx";
/// CloudWatch namespace of the metrics.
pub const NAMESPACE: &str = "jsonrpc-proxy-local";

/// Every Lambda function of the system.
pub const FUNCTIONS: [&str; 6] = [
    "add_backend",
    "list_backends",
    "remove_backend",
    "health_checker",
    "config_renderer",
    "ecs_updater",
];

/// How to run the stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Loopback port of the JSON-RPC proxy.
    pub proxy_port: u16,
    /// Time between scheduled health checks.
    pub check_interval: Duration,
    /// `DIFF_TOLERANCE`.
    pub tolerance: u64,
    /// `PROBE_TIMEOUT_MS`.
    pub probe_timeout: Duration,
    /// The user's node URLs; empty means start local anvil nodes.
    pub nodes: Vec<String>,
    /// The user's leader URL.
    pub leader: Option<String>,
    /// How many anvil nodes to start besides the leader when no URLs are given.
    pub anvil_nodes: usize,
    /// Seconds between anvil blocks.
    pub block_time: u64,
    /// Directory holding the function binaries.
    pub bin_dir: PathBuf,
    /// The config agent binary.
    pub config_agent: PathBuf,
    /// Directory for logs and nginx's sockets.
    pub work_dir: PathBuf,
}

/// Starting or running the stack failed.
#[derive(Debug, Error)]
pub enum StackError {
    /// A stand-in could not be started.
    #[error(transparent)]
    Devstack(#[from] devstack::Error),
    /// A function invocation failed.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// A file or process operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A backend was refused.
    #[error("add_backend refused {url}: {answer}")]
    Refused {
        /// The redacted URL.
        url: String,
        /// The function's answer.
        answer: String,
    },
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// A change the stack observed, for the live view and the tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// When, ISO-8601 UTC.
    pub at: String,
    /// What happened.
    pub text: String,
}

/// The configuration nginx runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedConfig {
    /// `s3://bucket/key`.
    pub s3_path: String,
    /// Redacted labels of its backends (from the pointer, when it names this key).
    pub backends: Vec<String>,
    /// When it was applied.
    pub applied_at: String,
}

/// State shared by the background tasks.
#[derive(Debug, Default)]
pub struct Observed {
    /// Backends as last read from the table.
    pub backends: Vec<Backend>,
    /// The configuration in force.
    pub applied: Option<AppliedConfig>,
    /// Recent transitions, newest last.
    pub transitions: Vec<Transition>,
    /// Health-check rounds run.
    pub rounds: u64,
    /// Errors of the background tasks, newest last.
    pub errors: Vec<String>,
}

impl Observed {
    fn note(&mut self, text: String) {
        self.transitions.push(Transition {
            at: iso8601(OffsetDateTime::now_utc()),
            text,
        });
        let excess = self.transitions.len().saturating_sub(200);
        self.transitions.drain(..excess);
    }

    fn error(&mut self, text: String) {
        tracing::warn!("{text}");
        self.errors.push(text);
        let excess = self.errors.len().saturating_sub(50);
        self.errors.drain(..excess);
    }
}

/// A local node started by the stack.
#[derive(Debug)]
pub struct LocalNode {
    /// The node.
    pub anvil: Anvil,
    /// Whether it is registered as the leader.
    pub is_leader: bool,
}

/// The running system. Dropping it stops everything it started.
pub struct LocalStack {
    /// Options it runs with.
    pub options: StackOptions,
    /// Local anvil nodes (empty when the user gave URLs).
    pub nodes: Vec<LocalNode>,
    /// What the background tasks observe.
    pub observed: Arc<Mutex<Observed>>,
    emulator: Arc<LambdaEmulator>,
    nginx: Arc<Mutex<Nginx>>,
    moto: Moto,
    recorder: MetricsRecorder,
    sdk: SdkConfig,
    agent_env: Vec<(String, String)>,
    socket_dir: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LocalStack {
    /// Starts everything and registers the backends; returns when the proxy listens.
    pub async fn start(options: StackOptions) -> Result<Self, StackError> {
        std::fs::create_dir_all(&options.work_dir)
            .map_err(|e| StackError::Io(format!("creating {}", options.work_dir.display()), e))?;
        let socket_dir = short_socket_dir()?;

        let moto = tokio::task::block_in_place(Moto::start)?;
        let recorder = tokio::task::block_in_place(MetricsRecorder::start)?;
        moto.create_table(STACK_NAME).await?;
        moto.create_bucket(BUCKET).await?;
        let ecs = moto.create_ecs_service(CLUSTER, FAMILY, SERVICE).await?;
        let sdk = moto.sdk_config().await;

        let mut nodes = Vec::new();
        let (leader_url, node_urls) = if options.nodes.is_empty() && options.leader.is_none() {
            for index in 0..=options.anvil_nodes {
                let anvil = tokio::task::block_in_place(|| {
                    Anvil::start(AnvilOptions {
                        block_time: Some(options.block_time.max(1)),
                        chain_id: None,
                    })
                })?;
                nodes.push(LocalNode {
                    anvil,
                    is_leader: index == 0,
                });
            }
            let leader = nodes.first().map(|n| n.anvil.url());
            let others = nodes.iter().skip(1).map(|n| n.anvil.url()).collect();
            (leader, others)
        } else {
            (options.leader.clone(), options.nodes.clone())
        };

        let render_options = RenderOptions {
            listen_port: options.proxy_port,
            socket_dir: socket_dir.display().to_string(),
            ..RenderOptions::default()
        };
        let initial = render(&RoutingPlan::default(), &render_options);
        let nginx = tokio::task::block_in_place(|| Nginx::start(&initial, &socket_dir))?;

        let env = function_env(
            &moto.endpoint(),
            &recorder.endpoint(),
            &options,
            &render_options,
            &ecs,
        );
        let agent_env: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .cloned()
            .chain(
                std::env::var("NGINX_BIN")
                    .ok()
                    .map(|bin| ("NGINX_BIN".to_owned(), bin)),
            )
            .collect();
        let specs = FUNCTIONS
            .iter()
            .map(|name| FunctionSpec {
                name: (*name).to_owned(),
                binary: options.bin_dir.join(name),
                env: env.clone(),
                timeout: Duration::from_secs(30),
            })
            .collect();
        let emulator = Arc::new(
            LambdaEmulator::start(specs, &options.work_dir.join("functions"))
                .await
                .map_err(|e| StackError::Io("starting the Lambda emulator".into(), e))?,
        );

        let mut stack = Self {
            options,
            nodes,
            observed: Arc::new(Mutex::new(Observed::default())),
            emulator,
            nginx: Arc::new(Mutex::new(nginx)),
            moto,
            recorder,
            sdk,
            agent_env,
            socket_dir,
            tasks: Vec::new(),
        };
        if let Some(url) = leader_url {
            stack.add_backend(&url, true).await?;
        }
        for url in node_urls {
            stack.add_backend(&url, false).await?;
        }
        stack.spawn_background_tasks();
        Ok(stack)
    }

    /// The proxy's URL.
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.options.proxy_port)
    }

    /// nginx's error log as it stands (empty when it cannot be read).
    pub fn nginx_error_log(&self) -> String {
        let path = lock(&self.nginx).error_log_path();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The moto endpoint.
    pub fn moto_endpoint(&self) -> String {
        self.moto.endpoint()
    }

    /// The CloudWatch recorder.
    pub fn recorder(&self) -> &MetricsRecorder {
        &self.recorder
    }

    /// The Lambda emulator.
    pub fn emulator(&self) -> &LambdaEmulator {
        &self.emulator
    }

    /// Registers a backend through the `add_backend` function, with the event `sls invoke` sends.
    pub async fn add_backend(&self, url: &str, is_leader: bool) -> Result<Value, StackError> {
        let body = json!({ "url": url, "is_leader": is_leader }).to_string();
        let answer = self
            .emulator
            .invoke("add_backend", &json!({ "body": body }))
            .await?;
        check_admin_answer(url, answer)
    }

    /// Removes a backend through the `remove_backend` function.
    pub async fn remove_backend(&self, url: &str) -> Result<Value, StackError> {
        let body = json!({ "url": url }).to_string();
        let answer = self
            .emulator
            .invoke("remove_backend", &json!({ "body": body }))
            .await?;
        check_admin_answer(url, answer)
    }

    /// Lists the backends through the `list_backends` function.
    pub async fn list_backends(&self) -> Result<Vec<Backend>, StackError> {
        let answer = self.emulator.invoke("list_backends", &json!({})).await?;
        let body = answer.get("body").and_then(Value::as_str).unwrap_or("[]");
        serde_json::from_str(body)
            .map_err(|e| StackError::Other(format!("list_backends answered {answer}: {e}")))
    }

    /// Runs one health check now (as the schedule would).
    pub async fn check_now(&self) -> Result<Value, StackError> {
        Ok(self
            .emulator
            .invoke("health_checker", &scheduled_event())
            .await?)
    }

    /// A snapshot of what the stack observed.
    pub fn snapshot(&self) -> (Vec<Backend>, Option<AppliedConfig>, Vec<Transition>, u64) {
        let observed = lock(&self.observed);
        (
            observed.backends.clone(),
            observed.applied.clone(),
            observed.transitions.clone(),
            observed.rounds,
        )
    }

    fn spawn_background_tasks(&mut self) {
        let interval = self.options.check_interval;
        let emulator = self.emulator.clone();
        let observed = self.observed.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let result = emulator.invoke("health_checker", &scheduled_event()).await;
                let mut observed = lock(&observed);
                observed.rounds += 1;
                if let Err(error) = result {
                    observed.error(format!("health_checker: {error}"));
                }
            }
        }));

        self.tasks.push(tokio::spawn(watch_bucket(
            aws_sdk_s3::Client::new(&self.sdk),
            self.emulator.clone(),
            self.observed.clone(),
        )));
        self.tasks.push(tokio::spawn(play_ecs_service(
            aws_sdk_ecs::Client::new(&self.sdk),
            aws_sdk_s3::Client::new(&self.sdk),
            self.nginx.clone(),
            AgentCommand {
                binary: self.options.config_agent.clone(),
                env: self.agent_env.clone(),
                socket_dir: self.socket_dir.clone(),
            },
            self.options.proxy_port,
            self.observed.clone(),
        )));
        self.tasks.push(tokio::spawn(watch_table(
            BackendStore::new(aws_sdk_dynamodb::Client::new(&self.sdk), STACK_NAME),
            self.observed.clone(),
        )));
    }

    /// Stops every task, function, node and server, and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        // Dropping the rest kills the function processes, nginx, the nodes and moto.
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

fn check_admin_answer(url: &str, answer: Value) -> Result<Value, StackError> {
    let status = answer
        .get("statusCode")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if (200..300).contains(&status) {
        Ok(answer)
    } else {
        let label = jsonrpc_proxy::backend_url::BackendUrl::parse(url)
            .map(|u| u.redacted())
            .unwrap_or_else(|_| jsonrpc_proxy::backend_url::redact_unvalidated(url));
        Err(StackError::Refused {
            url: label,
            answer: answer
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        })
    }
}

/// The event EventBridge delivers for a schedule.
pub fn scheduled_event() -> Value {
    json!({
        "version": "0",
        "id": format!("{:x}", OffsetDateTime::now_utc().unix_timestamp_nanos()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": iso8601(OffsetDateTime::now_utc()),
        "region": devstack::TEST_REGION,
        "resources": [format!("arn:aws:events:{}:123456789012:rule/{STACK_NAME}-health-check", devstack::TEST_REGION)],
        "detail": {}
    })
}

/// The event S3 delivers for a new object, with the key URL-encoded as S3 encodes it.
pub fn s3_created_event(bucket: &str, key: &str, size: i64) -> Value {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'*');
    let encoded = percent_encoding::utf8_percent_encode(key, KEEP)
        .to_string()
        .replace("%20", "+");
    json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": devstack::TEST_REGION,
        "eventTime": OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "local"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "config-written",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "local"}, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {"key": encoded, "size": size, "sequencer": "0"}
        }
    }]})
}

fn function_env(
    moto: &str,
    recorder: &str,
    options: &StackOptions,
    render: &RenderOptions,
    ecs: &devstack::EcsService,
) -> Vec<(String, String)> {
    let pairs: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", moto.to_owned()),
        ("AWS_ENDPOINT_URL_CLOUDWATCH", recorder.to_owned()),
        ("AWS_REGION", devstack::TEST_REGION.to_owned()),
        ("AWS_DEFAULT_REGION", devstack::TEST_REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("DYNAMODB_TABLE", STACK_NAME.to_owned()),
        ("STACK_NAME", STACK_NAME.to_owned()),
        ("DIFF_TOLERANCE", options.tolerance.to_string()),
        ("CLOUDWATCH_NAMESPACE", NAMESPACE.to_owned()),
        ("NGINX_CONFIG_BUCKET_NAME", BUCKET.to_owned()),
        ("CONFIG_RENDERER_FUNCTION", "config_renderer".to_owned()),
        ("TASK_DEFINITION_FAMILY", ecs.family.clone()),
        ("CLUSTER_ARN", ecs.cluster_arn.clone()),
        ("ECS_SERVICE", ecs.service_name.clone()),
        (
            "PROBE_TIMEOUT_MS",
            options.probe_timeout.as_millis().to_string(),
        ),
        ("NGINX_LISTEN_PORT", render.listen_port.to_string()),
        ("NGINX_SOCKET_DIR", render.socket_dir.clone()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A short directory for nginx's unix sockets (their paths must stay under 108 bytes).
fn short_socket_dir() -> Result<PathBuf, StackError> {
    static STACKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(format!("/tmp/jrp-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| StackError::Io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

/// Plays S3's event notification: every new `.conf` object becomes an `ObjectCreated` event
/// for `ecs_updater`.
async fn watch_bucket(
    s3: aws_sdk_s3::Client,
    emulator: Arc<LambdaEmulator>,
    observed: Arc<Mutex<Observed>>,
) {
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    loop {
        match s3.list_objects_v2().bucket(BUCKET).send().await {
            Ok(page) => {
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    if seen.insert(key.to_owned(), ()).is_some() {
                        continue;
                    }
                    if !key.ends_with(".conf") {
                        continue;
                    }
                    let event = s3_created_event(BUCKET, key, object.size().unwrap_or(0));
                    if let Err(error) = emulator.invoke_async("ecs_updater", &event) {
                        lock(&observed).error(format!("ecs_updater: {error}"));
                    }
                }
            }
            Err(error) => lock(&observed).error(format!(
                "S3 ListObjectsV2: {}",
                aws_sdk_s3::error::DisplayErrorContext(&error)
            )),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Plays the ECS service: when the service moves to a new task definition, the config agent
/// applies its `S3_CONFIG_PATH` to the local nginx.
async fn play_ecs_service(
    ecs: aws_sdk_ecs::Client,
    s3: aws_sdk_s3::Client,
    nginx: Arc<Mutex<Nginx>>,
    agent: AgentCommand,
    proxy_port: u16,
    observed: Arc<Mutex<Observed>>,
) {
    let mut running: Option<String> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let service = match ecs
            .describe_services()
            .cluster(CLUSTER)
            .services(SERVICE)
            .send()
            .await
        {
            Ok(output) => output
                .services()
                .first()
                .and_then(|s| s.task_definition())
                .map(str::to_owned),
            Err(error) => {
                lock(&observed).error(format!(
                    "ECS DescribeServices: {}",
                    aws_sdk_ecs::error::DisplayErrorContext(&error)
                ));
                continue;
            }
        };
        let Some(arn) = service else { continue };
        if running.as_deref() == Some(arn.as_str()) {
            continue;
        }
        let definition = match ecs
            .describe_task_definition()
            .task_definition(&arn)
            .send()
            .await
        {
            Ok(output) => output.task_definition,
            Err(error) => {
                lock(&observed).error(format!(
                    "ECS DescribeTaskDefinition: {}",
                    aws_sdk_ecs::error::DisplayErrorContext(&error)
                ));
                continue;
            }
        };
        running = Some(arn.clone());
        let Some(path) = definition.as_ref().and_then(config_path_of) else {
            continue; // the first revision has no config: nginx keeps its 404 server
        };
        let (prefix, conf, fragment) = {
            let nginx = lock(&nginx);
            (
                nginx.prefix().to_owned(),
                nginx.prefix().join("conf/nginx.conf"),
                nginx.prefix().join("conf/fragment.conf"),
            )
        };
        match agent.apply(&path, &prefix, &conf, &fragment).await {
            Ok(()) => {
                // nginx reloads gracefully: old workers may answer for a moment. The config is
                // in force once responses carry its plan header.
                if let Err(error) = wait_until_serving(proxy_port, &fragment).await {
                    lock(&observed).error(error);
                }
                let backends = pointer_labels(&s3, &path).await;
                let mut observed = lock(&observed);
                observed.note(format!(
                    "nginx now runs {} ({})",
                    path.rsplit('/').next().unwrap_or(&path),
                    if backends.is_empty() {
                        "404 server".to_owned()
                    } else {
                        backends.join(", ")
                    }
                ));
                observed.applied = Some(AppliedConfig {
                    s3_path: path,
                    backends,
                    applied_at: iso8601(OffsetDateTime::now_utc()),
                });
            }
            Err(error) => lock(&observed).error(format!("config agent refused {path}: {error}")),
        }
    }
}

/// How the stack runs the config agent: its binary, the AWS environment it needs and where
/// the backends' sockets go.
#[derive(Debug, Clone)]
struct AgentCommand {
    binary: PathBuf,
    env: Vec<(String, String)>,
    socket_dir: PathBuf,
}

impl AgentCommand {
    /// `config_agent apply`: fetch, `nginx -t`, install and reload; the previous config stays
    /// when the new one is refused.
    async fn apply(
        &self,
        s3_path: &str,
        prefix: &Path,
        conf: &Path,
        fragment: &Path,
    ) -> Result<(), String> {
        let output = tokio::process::Command::new(&self.binary)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("apply")
            .arg("--socket-dir")
            .arg(&self.socket_dir)
            .arg("--s3-path")
            .arg(s3_path)
            .arg("--config-path")
            .arg(fragment)
            .arg("--nginx-conf")
            .arg(conf)
            .arg("--nginx-prefix")
            .arg(prefix)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            Err(text.lines().last().unwrap_or("failed").to_owned())
        }
    }
}

/// Waits (at most 10 s) until the proxy's responses carry the plan header of the installed
/// configuration.
async fn wait_until_serving(proxy_port: u16, fragment: &Path) -> Result<(), String> {
    let text = tokio::fs::read_to_string(fragment)
        .await
        .map_err(|e| format!("cannot read {}: {e}", fragment.display()))?;
    let fingerprint = text
        .lines()
        .find_map(|line| line.strip_prefix("# Routing plan "))
        .map(str::trim)
        .ok_or_else(|| format!("{} names no routing plan", fragment.display()))?;
    let expected = jsonrpc_proxy::nginx::plan_id(fingerprint).to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://127.0.0.1:{proxy_port}/healthz");
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(response) = client.get(&url).send().await {
            let served = response
                .headers()
                .get(jsonrpc_proxy::nginx::PLAN_HEADER)
                .and_then(|v| v.to_str().ok());
            if served == Some(expected.as_str()) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "nginx did not serve plan {expected} within 10 s of the reload"
    ))
}

async fn pointer_labels(s3: &aws_sdk_s3::Client, path: &str) -> Vec<String> {
    let Some((bucket, key)) = parse_s3_path(path) else {
        return Vec::new();
    };
    match ConfigBucket::new(s3.clone(), bucket).read_pointer().await {
        Ok(Some(ConfigPointer {
            key: pointed,
            backends,
            ..
        })) if pointed == key => backends,
        _ => Vec::new(),
    }
}

/// Reads the table for the live view and notes every health transition.
async fn watch_table(store: BackendStore, observed: Arc<Mutex<Observed>>) {
    let mut previous: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        match store.scan_all().await {
            Ok(backends) => {
                let mut observed = lock(&observed);
                for backend in &backends {
                    match previous.get(&backend.url) {
                        Some(&was) if was != backend.is_healthy => observed.note(format!(
                            "{} {} → {}{}",
                            backend.label(),
                            if was { "healthy" } else { "unhealthy" },
                            if backend.is_healthy {
                                "healthy"
                            } else {
                                "unhealthy"
                            },
                            backend
                                .health_reason
                                .as_ref()
                                .map(|r| format!(" ({r})"))
                                .unwrap_or_default()
                        )),
                        None => observed.note(format!(
                            "{} registered ({})",
                            backend.label(),
                            if backend.is_leader { "leader" } else { "node" }
                        )),
                        _ => {}
                    }
                }
                for url in previous.keys() {
                    if !backends.iter().any(|b| &b.url == url) {
                        let label = jsonrpc_proxy::backend_url::BackendUrl::parse(url)
                            .map(|u| u.redacted())
                            .unwrap_or_default();
                        observed.note(format!("{label} removed"));
                    }
                }
                previous = backends
                    .iter()
                    .map(|b| (b.url.clone(), b.is_healthy))
                    .collect();
                observed.backends = backends;
            }
            Err(error) => lock(&observed).error(format!("table scan: {error}")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
