//! Part 4: the Lambda functions' footprint.
//!
//! - Deployment zip sizes: `target/lambda/<function>/bootstrap.zip` as
//!   `cargo lambda build --release --arm64 --output-format zip` leaves them.
//! - Start-up and memory: each function's release binary (this machine's architecture), a
//!   fresh process per run on the local stack's Lambda emulator
//!   (`local_stack::lambda_emulator`). Timed: process start → its first
//!   `GET …/invocation/next` (init), then each invocation from the process taking it to its
//!   answer. Memory: the process's `VmHWM` after the first event and after the last of several.
//!   What the figures mean: docs/benchmarks.md, part 4.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use devstack::{MetricsRecorder, Moto};
use local_stack::lambda_emulator::{FunctionSpec, LambdaEmulator};
use local_stack::stack::{s3_created_event, scheduled_event};
use local_stack::webhook::SlackStandIn;
use serde::Serialize;
use serde_json::{json, Value};

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

/// What the functions need: moto with the table, bucket, ECS service and renderer record, the
/// recorder, and a few fake nodes.
struct Rig {
    moto: Moto,
    _recorder: MetricsRecorder,
    _fleet: StubFleet,
    _slack: SlackStandIn,
    s3: aws_sdk_s3::Client,
    env: Vec<(String, String)>,
    /// Where the functions' output goes: kept with `BENCH_KEEP_LOGS`, else removed at the end.
    logs: Logs,
}

/// The functions' log directory.
enum Logs {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Logs {
    fn path(&self) -> &Path {
        match self {
            Self::Kept(path) => path,
            Self::Temporary(dir) => dir.path(),
        }
    }
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
            ("RUST_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(function_env);
        Ok(Self {
            s3: aws_sdk_s3::Client::new(&sdk),
            moto,
            _recorder: recorder,
            _fleet: fleet,
            _slack: slack,
            env,
            logs: logs()?,
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

/// The functions' log directory: kept when `BENCH_KEEP_LOGS` is set.
fn logs() -> Result<Logs, String> {
    let mut dir = tempfile::Builder::new()
        .prefix("jsonrpc-proxy-bench-lambda-")
        .tempdir()
        .map_err(|e| format!("creating a log directory: {e}"))?;
    if std::env::var_os("BENCH_KEEP_LOGS").is_none() {
        return Ok(Logs::Temporary(dir));
    }
    dir.disable_cleanup(true);
    eprintln!("[bench] function logs kept in {}", dir.path().display());
    Ok(Logs::Kept(dir.path().to_path_buf()))
}

struct RunFigures {
    init_ms: f64,
    first_event_ms: f64,
    warm_event_ms: Vec<f64>,
    rss_first_kb: u64,
    rss_last_kb: u64,
    errors: Vec<String>,
}

/// One invocation: its duration in ms; an error document the function reported goes to
/// `errors`.
async fn invoke(
    emulator: &LambdaEmulator,
    function: &str,
    event: &Value,
    errors: &mut Vec<String>,
) -> Result<f64, String> {
    let timed = emulator
        .invoke_timed(function, event)
        .await
        .map_err(|e| format!("{function}: {e}"))?;
    if let Err(error) = timed.answer {
        errors.push(error.chars().take(300).collect());
    }
    Ok(timed.duration.as_secs_f64() * 1e3)
}

/// One fresh process of `function` on its own emulator (a cold start), `events` invocations.
async fn one_run(
    rig: &Rig,
    binary: &Path,
    function: &str,
    events: usize,
    counter: &mut usize,
) -> Result<RunFigures, String> {
    // The first event is ready before the process starts, so it waits in the queue for the
    // process's first request.
    *counter += 1;
    let first = rig.event(function, *counter).await?;
    let emulator = LambdaEmulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(rig.moto.endpoint()),
        rig.logs.path(),
    )
    .await
    .map_err(|e| format!("starting the Lambda emulator: {e}"))?;
    let result = async {
        emulator
            .add_functions(vec![FunctionSpec {
                name: function.to_owned(),
                binary: binary.to_owned(),
                env: rig.env.clone(),
                timeout: INVOKE_TIMEOUT,
                memory_mb: 128,
            }])
            .await
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let mut errors = Vec::new();
        let first_event_ms = invoke(&emulator, function, &first, &mut errors).await?;
        let sandbox = emulator.sandbox(function).unwrap_or_default();
        let pid = sandbox
            .pid
            .ok_or_else(|| format!("{function}: no process"))?;
        let rss_first_kb = sys::proc_status_kb(pid, "VmHWM").unwrap_or(0);
        let mut warm_event_ms = Vec::new();
        for _ in 1..events {
            *counter += 1;
            let event = rig.event(function, *counter).await?;
            warm_event_ms.push(invoke(&emulator, function, &event, &mut errors).await?);
        }
        let rss_last_kb = sys::proc_status_kb(pid, "VmHWM").unwrap_or(0);
        let sandbox = emulator.sandbox(function).unwrap_or_default();
        if sandbox.starts != 1 {
            return Err(format!(
                "{function}'s process ended during the run and was restarted"
            ));
        }
        Ok(RunFigures {
            init_ms: sandbox.init.unwrap_or_default().as_secs_f64() * 1e3,
            first_event_ms,
            warm_event_ms,
            rss_first_kb,
            rss_last_kb,
            errors,
        })
    }
    .await;
    emulator.shutdown().await;
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
