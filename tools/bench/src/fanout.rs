//! Part 1: one health-check round against fleets of 1 to 10 000 fake nodes.
//!
//! The parent (the bench) runs moto, the CloudWatch recorder, a counting proxy in front of
//! each, and the [`StubFleet`]; it seeds a table and runs each round in a **child process**
//! (`jsonrpc-proxy-bench __round`) built exactly like the `health_checker` Lambda (settings
//! from the environment, AWS endpoints from `AWS_ENDPOINT_URL*`), so the child's peak RSS
//! (`VmHWM`) is the round's alone. Every round is timed by the child; where the time went is
//! read from the arrival times of the requests (first probe at the fleet, then the first of
//! the requests that follow the probes: `UpdateItem`, `PutMetricData`, the S3 pointer read,
//! which the round sends together, at the proxies).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use devstack::{MetricsRecorder, Moto};
use futures::stream::{self, StreamExt};
use jsonrpc_proxy::aws::store::BackendStore;
use jsonrpc_proxy::functions::health_checker::{
    HealthChecker, HealthCheckerClients, HealthCheckerSettings,
};
use jsonrpc_proxy::model::backend::iso8601;
use jsonrpc_proxy::settings::Env;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::count_proxy::{count, now_ns, Call, CountingProxy, Counts};
use crate::stub::{RemoteFleet, StubFleet};
use crate::sys;

/// Stack name, namespace, bucket and renderer function of the bench's rounds.
const STACK: &str = "jsonrpc-proxy-bench";
/// The config bucket (empty: every round requests a render, as on a fresh deployment).
const BUCKET: &str = "jsonrpc-proxy-bench-config";
/// The renderer function record in moto (Invoke answers 202 without running code).
const RENDERER: &str = "config_renderer";
/// The clients table (empty), which every round reads as the function's does.
const CLIENTS_TABLE: &str = "jsonrpc-proxy-bench-clients";
/// Longest a child round may take before it is killed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(900);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Fleet size.
    pub backends: usize,
    /// Every `k`th backend hangs (0: none).
    pub hang_every: usize,
    /// The child's `RLIMIT_NOFILE`; `None` raises it to the hard limit.
    pub nofile: Option<u64>,
    /// Whether to run a second (steady-state) round after the first.
    pub steady_round: bool,
    /// Whether the nodes close every connection after answering.
    pub close_after_answer: bool,
}

impl Scenario {
    /// What sets this scenario apart, for the report (empty for the plain ones).
    pub fn variant(&self) -> String {
        let mut parts = Vec::new();
        if self.close_after_answer {
            parts.push("nodes close connections".to_owned());
        }
        if let Some(limit) = self.nofile {
            parts.push(format!("RLIMIT_NOFILE {limit}"));
        }
        parts.join(", ")
    }

    /// Backends that hang.
    pub fn hanging(&self) -> usize {
        (0..self.backends)
            .filter(|n| StubFleet::hangs(*n, self.hang_every))
            .count()
    }
}

/// Where one round's time went, in milliseconds (from request arrival times).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Phases {
    /// Start → first probe at the fleet (settings, Scan, URL validation).
    pub scan_ms: f64,
    /// First probe → the first request that follows the probes (probing and judging).
    pub probe_ms: f64,
    /// That request → end: the table writes, the metrics and the pointer read (sent
    /// together), then the render request.
    pub record_ms: f64,
    /// First → last `UpdateItem` arrival (0 when at most one row was written).
    pub write_span_ms: f64,
    /// First → last probe arrival at the fleet.
    pub probe_arrivals_ms: f64,
}

/// One round, as measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoundRun {
    /// Wall time of `run_round`, measured by the child.
    pub wall_ms: f64,
    /// Peak RSS (`VmHWM`) of the child, KiB.
    pub peak_rss_kb: u64,
    /// RSS of the child just before the round (runtime and clients built), KiB.
    pub rss_before_kb: u64,
    /// The child's `RLIMIT_NOFILE`.
    pub nofile: u64,
    /// AWS calls by operation, counted at the proxies.
    pub calls: Counts,
    /// `PutMetricData` calls the recorder received.
    pub cloudwatch_calls: usize,
    /// Data points in them.
    pub cloudwatch_points: usize,
    /// Backends unhealthy in the table after the round.
    pub unhealthy: usize,
    /// Whether the unhealthy ones are exactly the hanging ones.
    pub unhealthy_exact: bool,
    /// Stored reasons of the unhealthy backends (digits replaced by `#`), counted.
    pub reasons: BTreeMap<String, usize>,
    /// Up to 20 backends (by number) unhealthy that should not be, or healthy that hang.
    pub unexpected: Vec<usize>,
    /// Where the time went.
    pub phases: Phases,
    /// The round's summary (as the Lambda returns it), or null.
    pub summary: Value,
    /// The round's error, if it failed.
    pub error: Option<String>,
}

impl RoundRun {
    /// DynamoDB calls of the round.
    pub fn dynamodb_calls(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(op, _)| op.starts_with("DynamoDB"))
            .map(|(_, n)| n)
            .sum()
    }

    /// DynamoDB calls of one operation.
    pub fn dynamodb(&self, operation: &str) -> u64 {
        self.calls
            .get(&format!("DynamoDB {operation}"))
            .copied()
            .unwrap_or(0)
    }
}

/// One scenario's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutRow {
    /// Fleet size.
    pub backends: usize,
    /// What sets the scenario apart (empty for the plain ones).
    pub variant: String,
    /// Hanging backends.
    pub hanging: usize,
    /// The first round on a fresh table (every backend new, every verdict written).
    pub cold: RoundRun,
    /// The next round.
    pub steady: Option<RoundRun>,
}

/// How fast the local DynamoDB (moto) serves the round's conditional `UpdateItem` (same
/// expressions, through the same counting proxy), whoever calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MotoCeiling {
    /// Calls per second, one at a time.
    pub serial_per_sec: f64,
    /// Calls per second, 16 in flight (the round's `WRITE_CONCURRENCY`).
    pub concurrent_per_sec: f64,
    /// Calls per run.
    pub calls: usize,
}

/// Everything part 1 measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FanoutReport {
    /// One row per scenario.
    pub rows: Vec<FanoutRow>,
    /// moto's own speed.
    pub moto: Option<MotoCeiling>,
    /// Loopback ports of the fake fleet.
    pub listeners: usize,
}

/// The child's report, written as JSON to the file named by `--result`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildReport {
    /// Round start, ns since the epoch.
    pub started_ns: u128,
    /// Round end, ns since the epoch.
    pub ended_ns: u128,
    /// Wall time of `run_round`.
    pub wall_ms: f64,
    /// RSS before the round.
    pub rss_before_kb: u64,
    /// Peak RSS at the end.
    pub vmhwm_kb: u64,
    /// `RLIMIT_NOFILE` in force.
    pub nofile: u64,
    /// The round's summary.
    pub summary: Value,
    /// The round's error.
    pub error: Option<String>,
}

/// The stand-ins the rounds run against.
pub struct FanoutRig {
    moto: Moto,
    recorder: MetricsRecorder,
    moto_proxy: CountingProxy,
    cloudwatch_proxy: CountingProxy,
    fleet: tokio::sync::Mutex<RemoteFleet>,
    work: tempfile::TempDir,
    dynamodb: aws_sdk_dynamodb::Client,
}

impl FanoutRig {
    /// Starts moto, the recorder, their counting proxies and a fleet of `listeners` ports.
    pub async fn start(listeners: usize) -> Result<Self, String> {
        let moto = tokio::task::block_in_place(Moto::start).map_err(|e| e.to_string())?;
        let recorder =
            tokio::task::block_in_place(MetricsRecorder::start).map_err(|e| e.to_string())?;
        moto.create_bucket(BUCKET)
            .await
            .map_err(|e| e.to_string())?;
        moto.create_lambda_function(RENDERER)
            .await
            .map_err(|e| e.to_string())?;
        moto.create_clients_table(CLIENTS_TABLE)
            .await
            .map_err(|e| e.to_string())?;
        let moto_proxy = CountingProxy::start(moto.port())
            .await
            .map_err(|e| format!("starting the moto proxy: {e}"))?;
        let cloudwatch_proxy = CountingProxy::start(recorder.port())
            .await
            .map_err(|e| format!("starting the CloudWatch proxy: {e}"))?;
        let fleet = tokio::sync::Mutex::new(
            RemoteFleet::start(listeners)
                .await
                .map_err(|e| format!("starting {listeners} fake nodes: {e}"))?,
        );
        let mut work = tempfile::Builder::new()
            .prefix("jsonrpc-proxy-bench-")
            .tempdir()
            .map_err(|e| format!("creating a work directory: {e}"))?;
        if std::env::var_os("BENCH_KEEP_LOGS").is_some() {
            work.disable_cleanup(true);
            eprintln!("[bench] round logs kept in {}", work.path().display());
        }
        let dynamodb = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
        Ok(Self {
            moto,
            recorder,
            moto_proxy,
            cloudwatch_proxy,
            fleet,
            work,
            dynamodb,
        })
    }

    /// Measures [`MotoCeiling`] with `calls` conditional updates per run on a scratch table.
    pub async fn moto_ceiling(&self, calls: usize) -> Result<MotoCeiling, String> {
        let table = "bench-moto-ceiling";
        self.moto
            .create_table(table)
            .await
            .map_err(|e| e.to_string())?;
        let result = async {
            self.seed(table, calls * 2).await?;
            let urls: Vec<String> = {
                let fleet = self.fleet.lock().await;
                (0..calls * 2).map(|n| fleet.url(n)).collect()
            };
            // The shape of the round's write (store::record_check), through the same proxy.
            let client = aws_sdk_dynamodb::Client::new(
                &devstack::sdk_config(&self.moto_proxy.endpoint()).await,
            );
            let update = |url: String| {
                let client = client.clone();
                async move {
                    client
                        .update_item()
                        .table_name(table)
                        .key("url", AttributeValue::S(url))
                        .condition_expression(
                            "attribute_exists(#url) AND (attribute_not_exists(last_checked_ms) \
                             OR last_checked_ms < :checked_ms)",
                        )
                        .expression_attribute_names("#url", "url")
                        .update_expression(
                            "SET is_healthy = :healthy, last_checked = :checked, \
                             last_checked_ms = :checked_ms, block_number = :block, \
                             response_time_ms = :rt, lag_blocks = :lag REMOVE health_reason",
                        )
                        .expression_attribute_values(":healthy", AttributeValue::Bool(true))
                        .expression_attribute_values(
                            ":checked",
                            AttributeValue::S(iso8601(OffsetDateTime::now_utc())),
                        )
                        .expression_attribute_values(
                            ":checked_ms",
                            AttributeValue::N(format!("{}", now_ns() / 1_000_000)),
                        )
                        .expression_attribute_values(":block", AttributeValue::N("18000000".into()))
                        .expression_attribute_values(":rt", AttributeValue::N("5.123".into()))
                        .expression_attribute_values(":lag", AttributeValue::N("0".into()))
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            format!(
                                "UpdateItem: {}",
                                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                            )
                        })
                }
            };
            let started = Instant::now();
            for url in &urls[..calls] {
                update(url.clone()).await?;
            }
            let serial = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let results: Vec<Result<(), String>> = stream::iter(urls[calls..].to_vec())
                .map(update)
                .buffer_unordered(16)
                .collect()
                .await;
            let concurrent = started.elapsed().as_secs_f64();
            results.into_iter().collect::<Result<(), String>>()?;
            Ok(MotoCeiling {
                serial_per_sec: calls as f64 / serial.max(1e-9),
                concurrent_per_sec: calls as f64 / concurrent.max(1e-9),
                calls,
            })
        }
        .await;
        let _ = self.dynamodb.delete_table().table_name(table).send().await;
        result
    }

    /// Runs one scenario: fresh table, seeded, then one or two rounds.
    pub async fn run(&self, scenario: &Scenario) -> Result<FanoutRow, String> {
        let table = format!(
            "bench-{}-{}-{}-{}",
            scenario.backends,
            scenario.hang_every,
            scenario.nofile.unwrap_or(0),
            u8::from(scenario.close_after_answer)
        );
        self.moto
            .create_table(&table)
            .await
            .map_err(|e| e.to_string())?;
        let result = self.run_on(scenario, &table).await;
        let _ = self.dynamodb.delete_table().table_name(&table).send().await;
        result
    }

    async fn run_on(&self, scenario: &Scenario, table: &str) -> Result<FanoutRow, String> {
        self.seed(table, scenario.backends).await?;
        {
            let mut fleet = self.fleet.lock().await;
            fleet.set_hang_every(scenario.hang_every).await?;
            fleet
                .set_close_after_answer(scenario.close_after_answer)
                .await?;
        }
        let cold = self.round(scenario, table, "cold").await?;
        let steady = if scenario.steady_round {
            Some(self.round(scenario, table, "steady").await?)
        } else {
            None
        };
        {
            let mut fleet = self.fleet.lock().await;
            fleet.set_hang_every(0).await?;
            fleet.set_close_after_answer(false).await?;
        }
        Ok(FanoutRow {
            backends: scenario.backends,
            variant: scenario.variant(),
            hanging: scenario.hanging(),
            cold,
            steady,
        })
    }

    /// Writes `backends` items as `add_backend` stores them; backend 0 is the leader.
    async fn seed(&self, table: &str, backends: usize) -> Result<(), String> {
        let when_added = iso8601(OffsetDateTime::now_utc());
        let urls: Vec<String> = {
            let fleet = self.fleet.lock().await;
            (0..backends).map(|n| fleet.url(n)).collect()
        };
        let batches: Vec<Vec<WriteRequest>> = (0..backends)
            .map(|n| {
                let item = [
                    ("url", AttributeValue::S(urls[n].clone())),
                    ("is_leader", AttributeValue::Bool(n == 0)),
                    ("is_healthy", AttributeValue::Bool(false)),
                    ("when_added", AttributeValue::S(when_added.clone())),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(|e| format!("building a PutRequest: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?
            .chunks(25)
            .map(<[WriteRequest]>::to_vec)
            .collect();
        let results: Vec<Result<(), String>> = stream::iter(batches)
            .map(|batch| async move {
                let mut pending = batch;
                for _ in 0..10 {
                    let output = self
                        .dynamodb
                        .batch_write_item()
                        .request_items(table, pending)
                        .send()
                        .await
                        .map_err(|e| {
                            format!(
                                "BatchWriteItem: {}",
                                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                            )
                        })?;
                    pending = output
                        .unprocessed_items()
                        .and_then(|m| m.get(table))
                        .cloned()
                        .unwrap_or_default();
                    if pending.is_empty() {
                        return Ok(());
                    }
                }
                Err("BatchWriteItem left items unprocessed".to_owned())
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn round(
        &self,
        scenario: &Scenario,
        table: &str,
        which: &str,
    ) -> Result<RoundRun, String> {
        self.moto_proxy.take();
        self.cloudwatch_proxy.take();
        self.recorder.clear().map_err(|e| e.to_string())?;
        self.fleet.lock().await.reset().await?;
        let result_path = self.work.path().join(format!("{table}-{which}.json"));
        let log_path = self.work.path().join(format!("{table}-{which}.log"));
        let report = self
            .spawn_child(table, scenario.nofile, &result_path, &log_path)
            .await?;
        // Requests arrive before the child writes its report; nothing is in flight now.
        let mut calls = self.moto_proxy.take();
        calls.extend(self.cloudwatch_proxy.take());
        calls.sort_by_key(|c| c.at_ns);
        let recorded = self.recorder.recorded().map_err(|e| e.to_string())?;
        let points = recorded
            .iter()
            .map(|c| {
                c.get("metric_data")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            })
            .sum();
        let stats = self.fleet.lock().await.stats().await?;
        let first_probe = u128::from(stats.first_request_ns);
        let last_probe = u128::from(stats.last_request_ns);
        let phases = phases(&report, &calls, first_probe, last_probe);

        let store = BackendStore::new(self.dynamodb.clone(), table);
        let backends = store.scan_all().await.map_err(|e| e.to_string())?;
        let unhealthy: BTreeSet<String> = backends
            .iter()
            .filter(|b| !b.is_healthy)
            .map(|b| b.url.clone())
            .collect();
        let hanging: BTreeSet<String> = {
            let fleet = self.fleet.lock().await;
            (0..scenario.backends)
                .filter(|n| StubFleet::hangs(*n, scenario.hang_every))
                .map(|n| fleet.url(n))
                .collect()
        };
        let mut reasons = BTreeMap::new();
        for backend in backends.iter().filter(|b| !b.is_healthy) {
            let reason = backend
                .health_reason
                .as_deref()
                .map(|r| r.replace(|c: char| c.is_ascii_digit(), "#"))
                .unwrap_or_else(|| "none stored".into());
            *reasons.entry(reason).or_insert(0) += 1;
        }
        let unexpected: Vec<usize> = unhealthy
            .symmetric_difference(&hanging)
            .filter_map(|url| url.rsplit('/').next().and_then(|n| n.parse().ok()))
            .take(20)
            .collect();
        Ok(RoundRun {
            wall_ms: report.wall_ms,
            peak_rss_kb: report.vmhwm_kb,
            rss_before_kb: report.rss_before_kb,
            nofile: report.nofile,
            calls: count(&calls),
            cloudwatch_calls: recorded.len(),
            cloudwatch_points: points,
            unhealthy: unhealthy.len(),
            unhealthy_exact: unhealthy == hanging,
            reasons,
            unexpected,
            phases,
            summary: report.summary,
            error: report.error,
        })
    }

    async fn spawn_child(
        &self,
        table: &str,
        nofile: Option<u64>,
        result_path: &Path,
        log_path: &Path,
    ) -> Result<ChildReport, String> {
        let log = std::fs::File::create(log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("duplicating a log handle: {e}"))?;
        let exe = std::env::current_exe().map_err(|e| format!("finding the bench binary: {e}"))?;
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("__round")
            .arg("--result")
            .arg(result_path)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| passed_through(k)))
            .envs([
                ("AWS_ENDPOINT_URL", self.moto_proxy.endpoint()),
                (
                    "AWS_ENDPOINT_URL_CLOUDWATCH",
                    self.cloudwatch_proxy.endpoint(),
                ),
                ("AWS_REGION", devstack::TEST_REGION.to_owned()),
                ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
                ("DYNAMODB_TABLE", table.to_owned()),
                ("STACK_NAME", STACK.to_owned()),
                ("CLOUDWATCH_NAMESPACE", STACK.to_owned()),
                ("NGINX_CONFIG_BUCKET_NAME", BUCKET.to_owned()),
                ("CONFIG_RENDERER_FUNCTION", RENDERER.to_owned()),
                ("DYNAMODB_CLIENTS_TABLE", CLIENTS_TABLE.to_owned()),
                ("RUST_LOG", "info".to_owned()),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        if let Some(limit) = nofile {
            command.arg("--nofile").arg(limit.to_string());
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting the round process: {e}"))?;
        let status = match tokio::time::timeout(CHILD_TIMEOUT, child.wait()).await {
            Ok(status) => status.map_err(|e| format!("waiting for the round process: {e}"))?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(format!(
                    "the round did not finish within {CHILD_TIMEOUT:?} (log {})",
                    log_path.display()
                ));
            }
        };
        let text = std::fs::read_to_string(result_path).map_err(|e| {
            format!(
                "the round process ({status}) left no report: {e}; log {}",
                log_path.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("unreadable round report: {e}"))
    }
}

/// Variables the round process inherits from the bench: the basics, and the health
/// checker's tuning knobs (`PROBE_*`, `WRITE_CONCURRENCY`, `DIFF_TOLERANCE`, `UNHEALTHY_AFTER`,
/// `HEALTHY_AFTER`) and `MALLOC_*`, so their effect can be measured.
fn passed_through(name: &str) -> bool {
    matches!(
        name,
        "PATH"
            | "HOME"
            | "WRITE_CONCURRENCY"
            | "DIFF_TOLERANCE"
            | "UNHEALTHY_AFTER"
            | "HEALTHY_AFTER"
    ) || name.starts_with("PROBE_")
        || name.starts_with("MALLOC_")
        || name.starts_with("BENCH_")
}

/// Splits a round into phases: the first probe, then the first request of the ones the
/// round sends after probing (writes, metrics, pointer read, render request).
pub fn phases(report: &ChildReport, calls: &[Call], first_probe: u128, last_probe: u128) -> Phases {
    const AFTER_PROBES: [&str; 4] = [
        "DynamoDB UpdateItem",
        "CloudWatch PutMetricData",
        "S3 GET",
        "Lambda Invoke",
    ];
    let start = report.started_ns;
    let end = report.ended_ns.max(start);
    let probes_began = if first_probe > 0 {
        first_probe.clamp(start, end)
    } else {
        start
    };
    let recording_began = calls
        .iter()
        .filter(|c| AFTER_PROBES.contains(&c.operation.as_str()))
        .map(|c| c.at_ns)
        .filter(|at| *at >= probes_began)
        .min()
        .unwrap_or(end)
        .clamp(probes_began, end);
    let writes: Vec<u128> = calls
        .iter()
        .filter(|c| c.operation == "DynamoDB UpdateItem")
        .map(|c| c.at_ns)
        .collect();
    let ms = |a: u128, b: u128| b.saturating_sub(a) as f64 / 1e6;
    Phases {
        scan_ms: ms(start, probes_began),
        probe_ms: ms(probes_began, recording_began),
        record_ms: ms(recording_began, end),
        write_span_ms: match (writes.iter().min(), writes.iter().max()) {
            (Some(first), Some(last)) => ms(*first, *last),
            _ => 0.0,
        },
        probe_arrivals_ms: if first_probe > 0 {
            ms(first_probe, last_probe)
        } else {
            0.0
        },
    }
}

/// The hidden `__round` subcommand: one health-check round, built like the `health_checker`
/// Lambda from the environment; writes a [`ChildReport`] to `--result`.
pub fn child_main(args: &[String]) -> ExitCode {
    let mut result: Option<PathBuf> = None;
    let mut nofile: Option<u64> = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--result" => result = iter.next().map(PathBuf::from),
            "--nofile" => nofile = iter.next().and_then(|v| v.parse().ok()),
            other => {
                eprintln!("__round: unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(result) = result else {
        eprintln!("__round: --result PATH is required");
        return ExitCode::from(2);
    };
    let limit = sys::set_nofile(nofile);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("__round: cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(child_round(limit));
    let text = serde_json::to_string(&report).unwrap_or_else(|_| "{}".into());
    match std::fs::write(&result, text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("__round: cannot write {}: {error}", result.display());
            ExitCode::FAILURE
        }
    }
}

async fn child_round(nofile: u64) -> ChildReport {
    jsonrpc_proxy::telemetry::init_tracing();
    let failed = |error: String| ChildReport {
        nofile,
        error: Some(error),
        ..ChildReport::default()
    };
    let settings = match HealthCheckerSettings::from_env(&Env::process()) {
        Ok(settings) => settings,
        Err(error) => return failed(error.to_string()),
    };
    let config = jsonrpc_proxy::telemetry::aws_config().await;
    let clients = HealthCheckerClients {
        dynamodb: aws_sdk_dynamodb::Client::new(&config),
        s3: aws_sdk_s3::Client::new(&config),
        cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
        lambda: aws_sdk_lambda::Client::new(&config),
    };
    let checker = match HealthChecker::new(clients, &settings) {
        Ok(checker) => checker,
        Err(error) => return failed(error.to_string()),
    };
    let rss_before_kb = sys::self_status_kb("VmRSS").unwrap_or(0);
    let started_ns = now_ns();
    let started = Instant::now();
    let outcome = checker.run_round().await;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let ended_ns = now_ns();
    let (summary, error) = match outcome {
        Ok(summary) => (serde_json::to_value(&summary).unwrap_or(Value::Null), None),
        Err(error) => (Value::Null, Some(error.to_string())),
    };
    ChildReport {
        started_ns,
        ended_ns,
        wall_ms,
        rss_before_kb,
        // VmHWM; getrusage's maxrss (the same figure) when no file can be opened.
        vmhwm_kb: sys::self_status_kb("VmHWM").unwrap_or_else(sys::self_max_rss_kb),
        nofile,
        summary,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(at_ns: u128, operation: &str) -> Call {
        Call {
            at_ns,
            operation: operation.into(),
        }
    }

    #[test]
    fn phases_follow_the_first_request_of_each_kind() {
        let report = ChildReport {
            started_ns: 0,
            ended_ns: 100_000_000,
            ..ChildReport::default()
        };
        let calls = vec![
            call(1_000_000, "DynamoDB Scan"),
            call(30_000_000, "DynamoDB UpdateItem"),
            call(31_000_000, "DynamoDB UpdateItem"),
            call(80_000_000, "CloudWatch PutMetricData"),
            call(90_000_000, "S3 GET"),
            call(95_000_000, "Lambda Invoke"),
        ];
        let p = phases(&report, &calls, 10_000_000, 20_000_000);
        assert_eq!(p.scan_ms, 10.0);
        assert_eq!(p.probe_ms, 20.0);
        assert_eq!(p.record_ms, 70.0);
        assert_eq!(p.write_span_ms, 1.0);
        assert_eq!(p.probe_arrivals_ms, 10.0);

        // The metrics may go out before the first write: recording starts with them.
        let calls = vec![
            call(25_000_000, "CloudWatch PutMetricData"),
            call(30_000_000, "DynamoDB UpdateItem"),
        ];
        let p = phases(&report, &calls, 10_000_000, 20_000_000);
        assert_eq!((p.probe_ms, p.record_ms), (15.0, 75.0));
    }

    #[test]
    fn missing_phases_last_zero() {
        let report = ChildReport {
            started_ns: 0,
            ended_ns: 50_000_000,
            ..ChildReport::default()
        };
        let p = phases(&report, &[call(40_000_000, "S3 GET")], 0, 0);
        assert_eq!(p.scan_ms, 0.0);
        assert_eq!(p.probe_ms, 40.0);
        assert_eq!(p.record_ms, 10.0);
        assert_eq!(p.write_span_ms, 0.0);
    }
}
