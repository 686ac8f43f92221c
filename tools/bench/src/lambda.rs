//! Part 4: the Lambda functions' footprint.
//!
//! - Deployment zip sizes: `target/lambda/<function>/bootstrap.zip` as
//!   `cargo lambda build --release --arm64 --output-format zip` leaves them.
//! - Start-up and memory: each function's release binary (this machine's architecture) runs
//!   against a minimal Lambda Runtime API served here. Timed: process spawn → its first
//!   `GET …/invocation/next` (init), → its first response (first event). Memory: the process's
//!   `VmHWM` after the first event and after the last of several.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use devstack::{MetricsRecorder, Moto};
use local_stack::stack::{s3_created_event, scheduled_event};
use local_stack::webhook::SlackStandIn;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::count_proxy::now_ns;
use crate::stub::StubFleet;
use crate::sys;

/// What SNS delivers to slack_notifier for an alarm (the notifier's own test fixture).
const ALARM_SNS_EVENT: &str =
    include_str!("../../../crates/slack_notifier/tests/fixtures/cloudwatch_alarm_sns_event.json");

const TABLE: &str = "lambda-bench";
const CLIENTS_TABLE: &str = "lambda-bench-clients";
const BUCKET: &str = "lambda-bench-config";
const STACK: &str = "lambda-bench";
/// Longest one invocation may take.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How part 4 runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaOptions {
    /// Fresh processes per function (cold starts).
    pub runs: usize,
    /// Events per process.
    pub events: usize,
    /// Backends in the table the `health_checker` checks.
    pub backends: usize,
}

/// One function's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LambdaRow {
    /// The function.
    pub function: String,
    /// Size of its arm64 deployment zip, bytes (`None`: not built).
    pub zip_bytes: Option<u64>,
    /// Its release binary here, bytes.
    pub binary_bytes: Option<u64>,
    /// Median spawn → first `next` request, ms.
    pub init_ms: f64,
    /// Slowest of the runs, ms.
    pub init_max_ms: f64,
    /// Median first `next` → first response, ms.
    pub first_event_ms: f64,
    /// Median duration of the later (warm) events, ms.
    pub warm_event_ms: f64,
    /// Largest `VmHWM` after the first event, KiB.
    pub rss_first_kb: u64,
    /// Largest `VmHWM` after the last event, KiB.
    pub rss_last_kb: u64,
    /// Invocations that returned an error document.
    pub errors: u64,
    /// The first error seen.
    pub first_error: Option<String>,
}

/// Everything part 4 measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LambdaReport {
    /// One row per function.
    pub rows: Vec<LambdaRow>,
    /// Where the zips were read.
    pub zip_dir: String,
    /// Architecture the start-up was measured on.
    pub run_arch: String,
    /// Runs and events per run.
    pub runs: usize,
    /// Events per process.
    pub events: usize,
    /// Backends the health checker checked.
    pub backends: usize,
}

#[derive(Default)]
struct RuntimeState {
    queue: VecDeque<(String, Bytes)>,
    first_next_ns: Option<u128>,
    next_times: Vec<u128>,
    answers: Vec<(u128, bool, String)>,
}

struct Runtime {
    state: Mutex<RuntimeState>,
    queued: Notify,
    answered: Notify,
}

fn lock(runtime: &Runtime) -> std::sync::MutexGuard<'_, RuntimeState> {
    runtime
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn next(State(runtime): State<Arc<Runtime>>) -> Response {
    {
        let mut state = lock(&runtime);
        let now = now_ns();
        state.first_next_ns.get_or_insert(now);
        state.next_times.push(now);
    }
    // Bounded: the process is killed long before this gives up.
    for _ in 0..600 {
        let notified = runtime.queued.notified();
        if let Some((id, payload)) = lock(&runtime).queue.pop_front() {
            let mut response = (StatusCode::OK, payload).into_response();
            let deadline = (now_ns() / 1_000_000 + 30_000).to_string();
            let headers = response.headers_mut();
            for (name, value) in [
                ("lambda-runtime-aws-request-id", id),
                ("lambda-runtime-deadline-ms", deadline),
                (
                    "lambda-runtime-invoked-function-arn",
                    "arn:aws:lambda:us-east-1:123456789012:function:bench".to_owned(),
                ),
                (
                    "lambda-runtime-trace-id",
                    "Root=1-00000000-000000000000000000000000;Sampled=0".to_owned(),
                ),
                ("content-type", "application/json".to_owned()),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            return response;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

fn record(runtime: &Runtime, ok: bool, body: &Bytes) -> StatusCode {
    lock(runtime).answers.push((
        now_ns(),
        ok,
        String::from_utf8_lossy(body).chars().take(300).collect(),
    ));
    runtime.answered.notify_waiters();
    StatusCode::ACCEPTED
}

async fn response(
    State(runtime): State<Arc<Runtime>>,
    UrlPath(_id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    record(&runtime, true, &body)
}

async fn error(
    State(runtime): State<Arc<Runtime>>,
    UrlPath(_id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    record(&runtime, false, &body)
}

async fn init_error(State(runtime): State<Arc<Runtime>>, body: Bytes) -> StatusCode {
    record(&runtime, false, &body)
}

impl Runtime {
    async fn start() -> Result<(Arc<Self>, String, tokio::task::JoinHandle<()>), String> {
        let runtime = Arc::new(Self {
            state: Mutex::new(RuntimeState::default()),
            queued: Notify::new(),
            answered: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("binding the Runtime API: {e}"))?;
        let address = listener
            .local_addr()
            .map_err(|e| e.to_string())?
            .to_string();
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(runtime.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((runtime, address, task))
    }

    fn push(&self, id: String, payload: &Value) {
        lock(self)
            .queue
            .push_back((id, Bytes::from(payload.to_string())));
        self.queued.notify_waiters();
    }

    async fn wait_answers(&self, count: usize) -> bool {
        let deadline = tokio::time::Instant::now() + INVOKE_TIMEOUT;
        loop {
            let notified = self.answered.notified();
            if lock(self).answers.len() >= count {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return lock(self).answers.len() >= count;
            }
        }
    }
}

/// What the functions need: moto with the table, bucket, ECS service and renderer record, the
/// recorder, and a few fake nodes.
struct Rig {
    _moto: Moto,
    _recorder: MetricsRecorder,
    _fleet: StubFleet,
    _slack: SlackStandIn,
    s3: aws_sdk_s3::Client,
    env: Vec<(String, String)>,
    /// Where the functions' output goes (`BENCH_KEEP_LOGS`), else nowhere.
    log_dir: Option<PathBuf>,
}

impl Rig {
    async fn start(backends: usize) -> Result<Self, String> {
        let moto = tokio::task::block_in_place(Moto::start).map_err(|e| e.to_string())?;
        let recorder =
            tokio::task::block_in_place(MetricsRecorder::start).map_err(|e| e.to_string())?;
        moto.create_table(TABLE).await.map_err(|e| e.to_string())?;
        moto.create_bucket(BUCKET)
            .await
            .map_err(|e| e.to_string())?;
        moto.create_lambda_function("config_renderer")
            .await
            .map_err(|e| e.to_string())?;
        let ecs = moto
            .create_ecs_service(STACK, STACK, STACK)
            .await
            .map_err(|e| e.to_string())?;
        let fleet = StubFleet::start(backends.max(1))
            .await
            .map_err(|e| format!("starting fake nodes: {e}"))?;
        let slack = SlackStandIn::start()
            .await
            .map_err(|e| format!("starting the Slack stand-in: {e}"))?;
        let sdk = moto.sdk_config().await;
        create_clients_table(&aws_sdk_dynamodb::Client::new(&sdk)).await?;
        let store = jsonrpc_proxy::aws::store::BackendStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            TABLE,
        );
        let now = time::OffsetDateTime::now_utc();
        for n in 0..backends {
            let url = jsonrpc_proxy::model::backend_url::BackendUrl::parse(&fleet.url(n))
                .map_err(|e| e.to_string())?;
            store
                .upsert(&url, n == 0, now)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut env = devstack::aws_env(&moto.endpoint(), &recorder.endpoint());
        let function_env: Vec<(String, String)> = [
            ("DYNAMODB_TABLE", TABLE.to_owned()),
            ("DYNAMODB_CLIENTS_TABLE", CLIENTS_TABLE.to_owned()),
            ("STACK_NAME", STACK.to_owned()),
            ("CLOUDWATCH_NAMESPACE", STACK.to_owned()),
            ("NGINX_CONFIG_BUCKET_NAME", BUCKET.to_owned()),
            ("CONFIG_RENDERER_FUNCTION", "config_renderer".to_owned()),
            ("TASK_DEFINITION_FAMILY", ecs.family.clone()),
            ("CLUSTER_ARN", ecs.cluster_arn.clone()),
            ("ECS_SERVICE", ecs.service_name.clone()),
            ("NGINX_SOCKET_DIR", "/tmp/jrp-lambda-bench".to_owned()),
            ("SLACK_WEBHOOK_URL", slack.url()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(function_env);
        Ok(Self {
            s3: aws_sdk_s3::Client::new(&sdk),
            _moto: moto,
            _recorder: recorder,
            _fleet: fleet,
            _slack: slack,
            env,
            log_dir: keep_logs_dir()?,
        })
    }

    /// The event for invocation `index` of `function` (and what it needs in place first).
    async fn event(&self, function: &str, index: usize) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:9/bench/{index}");
        Ok(match function {
            "add_backend" => {
                json!({"body": json!({"url": url, "is_leader": false}).to_string()})
            }
            "remove_backend" => json!({"body": json!({"url": url}).to_string()}),
            "list_backends" => json!({}),
            "add_client" | "remove_client" => {
                json!({"body": json!({"name": format!("bench-{index}")}).to_string()})
            }
            "list_clients" => json!({}),
            "health_checker" => scheduled_event(&format!(
                "arn:aws:events:{}:123456789012:rule/{STACK}-schedule",
                devstack::TEST_REGION
            )),
            "config_renderer" => json!({"source": "jsonrpc-proxy", "reason": "bench"}),
            "ecs_updater" => {
                let key = format!("bench-{index:06}_nginx.conf");
                let text = "server { listen 80; location / { return 404; } }\n";
                let bucket =
                    jsonrpc_proxy::aws::config_bucket::ConfigBucket::new(self.s3.clone(), BUCKET);
                devstack::testkit::publish(&bucket, &key, text).await;
                s3_created_event(BUCKET, &key, text.len() as i64)
            }
            "slack_notifier" => serde_json::from_str(ALARM_SNS_EVENT)
                .map_err(|e| format!("the alarm SNS event fixture: {e}"))?,
            other => return Err(format!("no event for {other}")),
        })
    }
}

/// The clients table as serverless.yml creates it: hash key `name` (S), on-demand.
async fn create_clients_table(client: &aws_sdk_dynamodb::Client) -> Result<(), String> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let definition = AttributeDefinition::builder()
        .attribute_name("name")
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| e.to_string())?;
    let key = KeySchemaElement::builder()
        .attribute_name("name")
        .key_type(KeyType::Hash)
        .build()
        .map_err(|e| e.to_string())?;
    client
        .create_table()
        .table_name(CLIENTS_TABLE)
        .attribute_definitions(definition)
        .key_schema(key)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| {
            format!(
                "DynamoDB CreateTable: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            )
        })?;
    Ok(())
}

/// A kept directory for the functions' output when `BENCH_KEEP_LOGS` is set.
fn keep_logs_dir() -> Result<Option<PathBuf>, String> {
    if std::env::var_os("BENCH_KEEP_LOGS").is_none() {
        return Ok(None);
    }
    let mut dir = tempfile::Builder::new()
        .prefix("jsonrpc-proxy-bench-lambda-")
        .tempdir()
        .map_err(|e| format!("creating a log directory: {e}"))?;
    dir.disable_cleanup(true);
    eprintln!("[bench] function logs kept in {}", dir.path().display());
    Ok(Some(dir.path().to_path_buf()))
}

struct RunFigures {
    init_ms: f64,
    first_event_ms: f64,
    warm_event_ms: Vec<f64>,
    rss_first_kb: u64,
    rss_last_kb: u64,
    errors: Vec<String>,
}

async fn one_run(
    rig: &Rig,
    binary: &Path,
    function: &str,
    events: usize,
    counter: &mut usize,
) -> Result<RunFigures, String> {
    let (runtime, address, server) = Runtime::start().await?;
    *counter += 1;
    runtime.push(
        format!("req-{counter}"),
        &rig.event(function, *counter).await?,
    );
    let (stdout, stderr) = match &rig.log_dir {
        Some(dir) => {
            let path = dir.join(format!("{function}-{counter}.log"));
            let file = std::fs::File::create(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            let copy = file
                .try_clone()
                .map_err(|e| format!("duplicating a log handle: {e}"))?;
            (
                std::process::Stdio::from(file),
                std::process::Stdio::from(copy),
            )
        }
        None => (std::process::Stdio::null(), std::process::Stdio::null()),
    };
    let spawned_ns = now_ns();
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "HOME"))
        .envs(rig.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_LAMBDA_RUNTIME_API", &address)
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        )
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let pid = child.id().unwrap_or(0);
    let result = async {
        if !runtime.wait_answers(1).await {
            return Err(format!(
                "{function} gave no answer within {INVOKE_TIMEOUT:?}"
            ));
        }
        let rss_first_kb = sys::proc_status_kb(pid, "VmHWM").unwrap_or(0);
        for _ in 1..events {
            *counter += 1;
            runtime.push(
                format!("req-{counter}"),
                &rig.event(function, *counter).await?,
            );
        }
        if !runtime.wait_answers(events).await {
            return Err(format!("{function} did not answer {events} events"));
        }
        let rss_last_kb = sys::proc_status_kb(pid, "VmHWM").unwrap_or(0);
        let state = lock(&runtime);
        let first_next = state.first_next_ns.unwrap_or(spawned_ns);
        let ms = |a: u128, b: u128| b.saturating_sub(a) as f64 / 1e6;
        let answers = &state.answers;
        // Event i (i ≥ 1) starts when the process asks for it: the (i+1)th next request.
        let warm_event_ms = answers
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(i, (at, _, _))| state.next_times.get(i).map(|n| ms(*n, *at)))
            .collect();
        Ok(RunFigures {
            init_ms: ms(spawned_ns, first_next),
            first_event_ms: ms(first_next, answers[0].0),
            warm_event_ms,
            rss_first_kb,
            rss_last_kb,
            errors: answers
                .iter()
                .filter(|(_, ok, _)| !ok)
                .map(|(_, _, body)| body.clone())
                .collect(),
        })
    }
    .await;
    let _ = child.kill().await;
    server.abort();
    result
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// Runs part 4.
pub async fn run(options: &LambdaOptions) -> Result<LambdaReport, String> {
    let rig = Rig::start(options.backends).await?;
    let zip_dir = sys::target_dir().join("lambda");
    let bin_dir: PathBuf = sys::exe_dir();
    let mut rows = Vec::new();
    // serverless.yml's order: add_backend before remove_backend, which removes what it added
    // (and add_client before remove_client).
    for function in devstack::functions().map_err(|e| e.to_string())? {
        let function = function.as_str();
        eprintln!("[bench] lambda: {function}");
        // Per function, so that remove_backend removes exactly what add_backend added and the
        // health checker checks only the fake nodes.
        let mut counter = 0usize;
        let binary = bin_dir.join(function);
        let mut runs = Vec::new();
        for _ in 0..options.runs.max(1) {
            runs.push(one_run(&rig, &binary, function, options.events.max(1), &mut counter).await?);
        }
        let mut init: Vec<f64> = runs.iter().map(|r| r.init_ms).collect();
        let mut first: Vec<f64> = runs.iter().map(|r| r.first_event_ms).collect();
        let mut warm: Vec<f64> = runs.iter().flat_map(|r| r.warm_event_ms.clone()).collect();
        let errors: Vec<String> = runs.iter().flat_map(|r| r.errors.clone()).collect();
        rows.push(LambdaRow {
            function: function.to_owned(),
            zip_bytes: file_size(&zip_dir.join(function).join("bootstrap.zip")),
            binary_bytes: file_size(&binary),
            init_max_ms: init.iter().copied().fold(0.0, f64::max),
            init_ms: median(&mut init),
            first_event_ms: median(&mut first),
            warm_event_ms: median(&mut warm),
            rss_first_kb: runs.iter().map(|r| r.rss_first_kb).max().unwrap_or(0),
            rss_last_kb: runs.iter().map(|r| r.rss_last_kb).max().unwrap_or(0),
            errors: errors.len() as u64,
            first_error: errors.first().cloned(),
        });
    }
    // The stand-ins lived until every function ran.
    drop(rig);
    Ok(LambdaReport {
        rows,
        zip_dir: zip_dir.display().to_string(),
        run_arch: std::env::consts::ARCH.to_owned(),
        runs: options.runs,
        events: options.events,
        backends: options.backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 3.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
