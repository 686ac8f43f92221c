//! `health_checker`: the rounds of one invocation (scan, probe, judge, write, metrics, render
//! check) and the function's settings. Rationale: docs/architecture.md, "The health checker".

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, SystemTime};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use time::OffsetDateTime;

use crate::aws::clients_store::ClientStore;
use crate::aws::config_bucket::{BucketError, ConfigBucket, ConfigPointer};
use crate::aws::metrics::{round_metrics, MetricsError, MetricsPublisher};
use crate::aws::renderer_trigger::{RendererTrigger, TriggerError};
use crate::aws::store::{BackendStore, CheckWrite, StoreError};
use crate::health::judgement::{
    assess, verdict_changes_row, ChainSource, HealthPolicy, LeaderStatus, Observation,
    RoundAssessment, UnhealthyReason, Verdict, DEFAULT_DIFF_TOLERANCE, DEFAULT_HEALTHY_AFTER,
    DEFAULT_UNHEALTHY_AFTER,
};
use crate::health::probe::{ProbeSettings, Prober, ProberBuildError};
use crate::model::backend::{epoch_millis, Backend};
use crate::render::gate::clients_fingerprint;
use crate::render::routing::RoutingPlan;
use crate::settings::{Env, SettingsError};

/// A round failed in a way Lambda should retry. Everything that could be done was done first.
#[derive(Debug, Error)]
pub enum HealthCheckError {
    /// The table could not be read: nothing was probed or written.
    #[error("cannot read the backends: {0}")]
    Scan(StoreError),
    /// Some verdicts could not be written (the others were).
    #[error("{failed} of {total} health writes failed; first: {first}")]
    Writes {
        /// Writes that failed.
        failed: usize,
        /// Writes attempted.
        total: usize,
        /// The first failure.
        first: StoreError,
    },
    /// Metrics could not be published.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The render could not be requested.
    #[error(transparent)]
    Trigger(#[from] TriggerError),
}

/// Default `ROUNDS_PER_INVOCATION`.
pub const DEFAULT_ROUNDS_PER_INVOCATION: u32 = 1;
/// Default `ROUND_INTERVAL_SECS`.
pub const DEFAULT_ROUND_INTERVAL_SECS: u64 = 15;
/// Default `ROW_REFRESH_SECS`.
pub const DEFAULT_ROW_REFRESH_SECS: u64 = 300;
/// Default `WRITE_CONCURRENCY`.
pub const DEFAULT_WRITE_CONCURRENCY: usize = 16;
/// Largest `ROUNDS_PER_INVOCATION` accepted.
pub const MAX_ROUNDS_PER_INVOCATION: u32 = 60;
/// Time kept free for a round on top of the probe timeout when deciding whether it still fits
/// before the invocation's deadline.
const ROUND_MARGIN: Duration = Duration::from_secs(5);

/// How many rounds one invocation runs, and how far apart they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundSchedule {
    /// Rounds per invocation (at least 1).
    pub rounds: u32,
    /// Time between the starts of consecutive rounds.
    pub interval: Duration,
}

impl Default for RoundSchedule {
    fn default() -> Self {
        Self {
            rounds: DEFAULT_ROUNDS_PER_INVOCATION,
            interval: Duration::from_secs(DEFAULT_ROUND_INTERVAL_SECS),
        }
    }
}

impl RoundSchedule {
    /// When round `index` (0-based) starts, counted from the invocation's start.
    pub fn offset(&self, index: u32) -> Duration {
        self.interval.saturating_mul(index)
    }
}

/// What started an invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// EventBridge's scheduled event.
    Scheduled(Box<EventBridgeEvent>),
    /// Any other event: someone invoked the function by hand.
    Manual,
}

impl Invocation {
    /// Reads an invocation's event.
    pub fn of(event: &Value) -> Self {
        match EventBridgeEvent::deserialize(event) {
            Ok(scheduled) if scheduled.detail_type == "Scheduled Event" => {
                Self::Scheduled(Box::new(scheduled))
            }
            _ => Self::Manual,
        }
    }
}

/// What a round did, returned as the function's result and logged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundSummary {
    /// This round's number within the invocation, from 1.
    pub round: u32,
    /// Rounds the invocation is scheduled to run.
    pub rounds: u32,
    /// Backends in the table this round.
    pub backends: usize,
    /// Backends healthy after the round.
    pub healthy: usize,
    /// Backends whose health changed.
    pub changed: usize,
    /// Healthy backends whose check failed this round (inside their hysteresis window).
    pub tolerating_failures: usize,
    /// The reference height the backends were judged against, if any.
    pub reference_block: Option<u64>,
    /// `leader`, `corroborated` or `none`.
    pub reference_source: &'static str,
    /// The height the answering backends corroborate, if any.
    pub corroborated_head: Option<u64>,
    /// `absent`, `unavailable`, `current`, `stalled` or `ahead`.
    pub leader: &'static str,
    /// The chain id the backends were held to.
    pub expected_chain_id: Option<u64>,
    /// Items whose health check was written.
    pub written: usize,
    /// Items skipped because they were removed meanwhile or a newer round wrote them.
    pub skipped: usize,
    /// Items not written because the check found nothing their row does not already say
    /// (see [`verdict_changes_row`]) and their last write is younger than `ROW_REFRESH_SECS`.
    pub unchanged: usize,
    /// `PutMetricData` calls made.
    pub metric_calls: usize,
    /// Whether a render was requested, and why.
    pub render_requested: Option<String>,
    /// Fingerprint of the routing plan the table now implies.
    pub plan_fingerprint: String,
    /// Fingerprint of the clients the clients table now holds
    /// ([`clients_fingerprint`]); `None` when the table could not be read this round (logged):
    /// then no render is requested for the clients.
    pub clients_fingerprint: Option<String>,
}

/// Settings of `health_checker`; defaults in docs/architecture.md, "Environment variables".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckerSettings {
    /// `DYNAMODB_TABLE`.
    pub table: String,
    /// `STACK_NAME`: the healthy-node metric's dimension.
    pub stack_name: String,
    /// `DIFF_TOLERANCE`.
    pub tolerance: u64,
    /// `CLOUDWATCH_NAMESPACE`.
    pub namespace: String,
    /// `NGINX_CONFIG_BUCKET_NAME`: where the last rendered plan is recorded.
    pub bucket: String,
    /// `CONFIG_RENDERER_FUNCTION`.
    pub renderer_function: String,
    /// `DYNAMODB_CLIENTS_TABLE`: read each round to compare its clients with the rendered ones.
    pub clients_table: String,
    /// `PROBE_TIMEOUT_MS`, `PROBE_CONCURRENCY`, `PROBE_MAX_BODY_BYTES`.
    pub probe: ProbeSettings,
    /// `WRITE_CONCURRENCY`: table writes in flight at once.
    pub write_concurrency: usize,
    /// `ROW_REFRESH_SECS`: see [`HealthChecker::row_refresh`].
    pub row_refresh: Duration,
    /// `UNHEALTHY_AFTER`: consecutive soft failures before a healthy backend is unhealthy.
    pub unhealthy_after: u32,
    /// `HEALTHY_AFTER`: consecutive passed checks before an unhealthy backend is healthy.
    pub healthy_after: u32,
    /// `EXPECTED_CHAIN_ID`: pins the chain every backend must be on.
    pub expected_chain_id: Option<u64>,
    /// `ROUNDS_PER_INVOCATION`: rounds per scheduled event.
    pub rounds_per_invocation: u32,
    /// `ROUND_INTERVAL_SECS`: time between the starts of consecutive rounds.
    pub round_interval: Duration,
}

impl HealthCheckerSettings {
    /// Reads the variables named on the fields; unset optional ones take their defaults.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        let probe = ProbeSettings::default();
        let timeout_ms = u64::try_from(probe.timeout.as_millis()).unwrap_or(u64::MAX);
        Ok(Self {
            table: env.required("DYNAMODB_TABLE")?,
            stack_name: env.required("STACK_NAME")?,
            tolerance: env.number("DIFF_TOLERANCE", DEFAULT_DIFF_TOLERANCE, 0)?,
            namespace: env.required("CLOUDWATCH_NAMESPACE")?,
            bucket: env.required("NGINX_CONFIG_BUCKET_NAME")?,
            renderer_function: env.required("CONFIG_RENDERER_FUNCTION")?,
            clients_table: env.required("DYNAMODB_CLIENTS_TABLE")?,
            probe: ProbeSettings {
                timeout: Duration::from_millis(env.number("PROBE_TIMEOUT_MS", timeout_ms, 1)?),
                concurrency: env.number("PROBE_CONCURRENCY", probe.concurrency, 1)?,
                max_body_bytes: env.number("PROBE_MAX_BODY_BYTES", probe.max_body_bytes, 256)?,
            },
            write_concurrency: env.number("WRITE_CONCURRENCY", DEFAULT_WRITE_CONCURRENCY, 1)?,
            row_refresh: Duration::from_secs(env.number(
                "ROW_REFRESH_SECS",
                DEFAULT_ROW_REFRESH_SECS,
                0,
            )?),
            unhealthy_after: env.number("UNHEALTHY_AFTER", DEFAULT_UNHEALTHY_AFTER, 1)?,
            healthy_after: env.number("HEALTHY_AFTER", DEFAULT_HEALTHY_AFTER, 1)?,
            expected_chain_id: env.optional_number("EXPECTED_CHAIN_ID", 1)?,
            rounds_per_invocation: env.bounded_number(
                "ROUNDS_PER_INVOCATION",
                DEFAULT_ROUNDS_PER_INVOCATION,
                1,
                MAX_ROUNDS_PER_INVOCATION,
            )?,
            round_interval: Duration::from_secs(env.number(
                "ROUND_INTERVAL_SECS",
                DEFAULT_ROUND_INTERVAL_SECS,
                1,
            )?),
        })
    }

    /// The judging rules these settings give.
    pub fn policy(&self) -> HealthPolicy {
        HealthPolicy {
            tolerance: self.tolerance,
            unhealthy_after: self.unhealthy_after,
            healthy_after: self.healthy_after,
            expected_chain_id: self.expected_chain_id,
        }
    }

    /// The rounds-per-invocation schedule these settings give.
    pub fn schedule(&self) -> RoundSchedule {
        RoundSchedule {
            rounds: self.rounds_per_invocation,
            interval: self.round_interval,
        }
    }
}

/// The AWS clients a [`HealthChecker`] uses, built by the binary from one configuration.
#[derive(Debug, Clone)]
pub struct HealthCheckerClients {
    /// The backends and clients tables.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// The config bucket (the last rendered plan).
    pub s3: aws_sdk_s3::Client,
    /// The round's metrics.
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// Invokes the config renderer.
    pub lambda: aws_sdk_lambda::Client,
}

/// Everything a round needs; build once per process.
#[derive(Debug, Clone)]
pub struct HealthChecker {
    /// The backends table: scanned, then written with the verdicts.
    pub store: BackendStore,
    /// The clients table (only read: the clients the gate should admit).
    pub clients: ClientStore,
    /// Probes the backends.
    pub prober: Prober,
    /// Publishes the round's metrics.
    pub metrics: MetricsPublisher,
    /// The config bucket (for the last rendered plan).
    pub bucket: ConfigBucket,
    /// Requests a render when the rendered configuration is missing or out of date.
    pub trigger: RendererTrigger,
    /// `DIFF_TOLERANCE`, `UNHEALTHY_AFTER`, `HEALTHY_AFTER`, `EXPECTED_CHAIN_ID`.
    pub policy: HealthPolicy,
    /// `ROUNDS_PER_INVOCATION`, `ROUND_INTERVAL_SECS`.
    pub schedule: RoundSchedule,
    /// `STACK_NAME`: the healthy-node and leader-stalled metrics' dimension.
    pub stack_name: String,
    /// Table writes in flight at once.
    pub write_concurrency: usize,
    /// `ROW_REFRESH_SECS`: how old a row's last write may get before a check with nothing new
    /// rewrites it anyway (zero: every row every round).
    pub row_refresh: Duration,
    /// Items per Scan page; `None` (what the function uses) takes DynamoDB's own pages. Tests
    /// set small pages to watch probing start with the first page (docs/architecture.md,
    /// "Overlapping scan and probe").
    pub scan_page_items: Option<i32>,
}

impl HealthChecker {
    /// A checker for `settings` over `clients`.
    pub fn new(
        clients: HealthCheckerClients,
        settings: &HealthCheckerSettings,
    ) -> Result<Self, ProberBuildError> {
        Ok(Self {
            store: BackendStore::new(clients.dynamodb.clone(), &settings.table),
            clients: ClientStore::new(clients.dynamodb, &settings.clients_table),
            prober: Prober::new(settings.probe)?,
            metrics: MetricsPublisher::new(clients.cloudwatch, &settings.namespace),
            bucket: ConfigBucket::new(clients.s3, &settings.bucket),
            trigger: RendererTrigger::new(clients.lambda, &settings.renderer_function),
            policy: settings.policy(),
            schedule: settings.schedule(),
            stack_name: settings.stack_name.clone(),
            write_concurrency: settings.write_concurrency,
            row_refresh: settings.row_refresh,
            scan_page_items: None,
        })
    }

    /// Handles one invocation's event: EventBridge's scheduled event, or anything else for a
    /// manual run (`sls invoke -f health_checker`); either way the scheduled rounds run.
    pub async fn handle_event(
        &self,
        event: &Value,
        deadline: Option<SystemTime>,
    ) -> Result<RoundSummary, HealthCheckError> {
        match Invocation::of(event) {
            Invocation::Scheduled(event) => tracing::info!(
                id = event.id.as_deref().unwrap_or(""),
                time = ?event.time,
                "scheduled invocation"
            ),
            Invocation::Manual => tracing::info!("manual invocation"),
        }
        self.run_invocation(deadline).await
    }

    /// Runs the scheduled rounds of one invocation; `deadline` is the invocation's (a round
    /// that would not finish before it is not started).
    ///
    /// Every round runs whatever the previous one returned (each heals what an earlier one
    /// left undone: writes, metrics, renders); the result is the last round's.
    pub async fn run_invocation(
        &self,
        deadline: Option<SystemTime>,
    ) -> Result<RoundSummary, HealthCheckError> {
        let rounds = self.schedule.rounds.max(1);
        let started = tokio::time::Instant::now();
        let round_budget = self.prober.settings().timeout + ROUND_MARGIN;
        let mut last = self.run_numbered_round(1, rounds).await;
        for index in 1..rounds {
            let start_at = started + self.schedule.offset(index);
            if let Some(deadline) = deadline {
                let wait = start_at.saturating_duration_since(tokio::time::Instant::now());
                let remaining = deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                if remaining < wait + round_budget {
                    tracing::warn!(
                        round = index + 1,
                        rounds,
                        remaining_ms = remaining.as_millis() as u64,
                        "not starting a round that would not finish before the invocation's \
                         deadline; raise the Lambda timeout above ROUNDS_PER_INVOCATION × \
                         ROUND_INTERVAL_SECS plus one round"
                    );
                    break;
                }
            }
            if let Err(error) = &last {
                tracing::error!(%error, round = index, "health check round failed; the next round continues");
            }
            tokio::time::sleep_until(start_at).await;
            last = self.run_numbered_round(index + 1, rounds).await;
        }
        last
    }

    /// Runs one round (round 1 of 1).
    pub async fn run_round(&self) -> Result<RoundSummary, HealthCheckError> {
        self.run_numbered_round(1, 1).await
    }

    /// Runs one round.
    ///
    /// Order: scan, probe, judge; then together: write back, publish metrics, read the pointer
    /// (the last rendered plan and clients) and the clients table; then request a render when
    /// the implied plan or the table's clients differ from the pointer's. A failing step does
    /// not stop the later ones; the first failure is returned at the end so Lambda retries.
    /// A clients table that cannot be read is not a failure: it is logged, and no render is
    /// requested for the clients.
    async fn run_numbered_round(
        &self,
        round_number: u32,
        rounds: u32,
    ) -> Result<RoundSummary, HealthCheckError> {
        let (backends, observations) = self
            .scan_and_probe()
            .await
            .map_err(HealthCheckError::Scan)?;
        let checked_at = OffsetDateTime::now_utc();

        let round = assess(&backends, &observations, &self.policy);
        log_round(&backends, &round, self.policy.tolerance);

        // The writes, the metrics and the two reads are independent: run them together.
        // The render request waits for the writes (the renderer reads the table).
        let points = round_metrics(&round, &self.stack_name);
        let plan = RoutingPlan::from_backends(&round.apply_to(&backends, checked_at));
        let fingerprint = plan.fingerprint();
        let (writes, metric_result, pointer, clients_fingerprint) = tokio::join!(
            self.write_verdicts(&backends, &round, checked_at),
            self.metrics.publish(&points, SystemTime::from(checked_at)),
            self.bucket.read_pointer(),
            self.read_clients_fingerprint(),
        );
        let render_reason = render_reason(pointer, &fingerprint, clients_fingerprint.as_deref());
        let trigger_result = match &render_reason {
            Some(reason) => self.trigger.request_render(reason).await,
            None => Ok(()),
        };

        let summary = RoundSummary {
            round: round_number,
            rounds,
            backends: backends.len(),
            healthy: round.healthy_count(),
            changed: round.verdicts.iter().filter(|v| v.health_changed).count(),
            tolerating_failures: round
                .verdicts
                .iter()
                .filter(|v| v.is_tolerating_failure())
                .count(),
            reference_block: round.reference_height,
            reference_source: round.reference_source.as_str(),
            corroborated_head: round.corroborated_head,
            leader: round.leader.as_str(),
            expected_chain_id: round.expected_chain.map(|c| c.chain_id),
            written: writes.written,
            skipped: writes.skipped,
            unchanged: writes.unchanged,
            metric_calls: *metric_result.as_ref().unwrap_or(&0),
            render_requested: render_reason,
            plan_fingerprint: fingerprint,
            clients_fingerprint,
        };
        tracing::info!(summary = %serde_json::to_string(&summary).unwrap_or_default(), "health check round done");

        if let Some(error) = writes.error {
            return Err(error);
        }
        metric_result?;
        trigger_result?;
        Ok(summary)
    }

    /// Reads the table and probes each backend as soon as its page arrives (at most
    /// `PROBE_CONCURRENCY` probes in flight), so reading the next pages overlaps with probing.
    /// Returns the backends sorted by URL and their observations in the same order. A failed
    /// page fails the whole scan: probes in flight are dropped and nothing is judged.
    async fn scan_and_probe(&self) -> Result<(Vec<Backend>, Vec<Observation>), StoreError> {
        let concurrency = self.prober.settings().concurrency.max(1);
        let pages = self.store.scan_pages(self.scan_page_items);
        futures::pin_mut!(pages);
        let mut waiting: VecDeque<Backend> = VecDeque::new();
        let mut in_flight = FuturesUnordered::new();
        let mut scanned = false;
        let mut pairs = Vec::new();
        loop {
            while in_flight.len() < concurrency {
                match waiting.pop_front() {
                    Some(backend) => in_flight.push(async move {
                        let observation = self.observe(&backend).await;
                        (backend, observation)
                    }),
                    None => break,
                }
            }
            if scanned && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                page = pages.next(), if !scanned => match page {
                    Some(page) => waiting.extend(page?),
                    None => scanned = true,
                },
                Some(pair) = in_flight.next(), if !in_flight.is_empty() => pairs.push(pair),
            }
        }
        pairs.sort_by(|a, b| a.0.url.cmp(&b.0.url));
        Ok(pairs.into_iter().unzip())
    }

    /// Probes one backend, or says why it cannot be probed.
    async fn observe(&self, backend: &Backend) -> Observation {
        match backend.parsed_url() {
            Ok(url) => Ok(self.prober.probe(&url).await),
            Err(error) => Err(UnhealthyReason::InvalidUrl(error.to_string())),
        }
    }

    /// Probes every backend with a valid URL (at most `PROBE_CONCURRENCY` at once) and judges
    /// them all.
    pub async fn probe_and_assess(&self, backends: &[Backend]) -> RoundAssessment {
        let concurrency = self.prober.settings().concurrency;
        let probes = (0..backends.len()).map(|i| self.observe(&backends[i]));
        let observations = run_bounded(probes, concurrency).await;
        assess(backends, &observations, &self.policy)
    }

    /// Writes back every verdict with something new for its row, or whose row's last write
    /// is older than [`HealthChecker::row_refresh`], `write_concurrency` at a time.
    async fn write_verdicts(
        &self,
        backends: &[Backend],
        round: &RoundAssessment,
        checked_at: OffsetDateTime,
    ) -> WriteOutcome {
        let checked_ms = epoch_millis(checked_at);
        let refresh_ms = u64::try_from(self.row_refresh.as_millis()).unwrap_or(u64::MAX);
        let due: Vec<&Verdict> = backends
            .iter()
            .zip(&round.verdicts)
            .filter(|(previous, verdict)| {
                let last_write_age = previous
                    .last_checked_ms
                    .map(|at| checked_ms.saturating_sub(at));
                verdict_changes_row(previous, verdict, &self.policy)
                    || last_write_age.is_none_or(|age| age >= refresh_ms)
            })
            .map(|(_, verdict)| verdict)
            .collect();
        let unchanged = round.verdicts.len() - due.len();
        // Indices, not `&Verdict`s, go through the closure: see `run_bounded`.
        let writes = (0..due.len()).map(|i| self.store.record_check(due[i], checked_at));
        let results = run_bounded(writes, self.write_concurrency).await;
        let written = results
            .iter()
            .filter(|r| matches!(r, Ok(CheckWrite::Written)))
            .count();
        let skipped = results
            .iter()
            .filter(|r| matches!(r, Ok(CheckWrite::Skipped)))
            .count();
        let total = results.len();
        let mut failures = results.into_iter().filter_map(Result::err);
        let error = failures.next().map(|first| HealthCheckError::Writes {
            failed: 1 + failures.count(),
            total,
            first,
        });
        if let Some(error) = &error {
            tracing::error!(%error, "health writes failed");
        }
        WriteOutcome {
            written,
            skipped,
            unchanged,
            error,
        }
    }

    /// The fingerprint of the clients the clients table holds, or `None` (logged) when it
    /// cannot be read.
    async fn read_clients_fingerprint(&self) -> Option<String> {
        match self.clients.all().await {
            Ok(records) => Some(clients_fingerprint(&records)),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot read the clients table; no render is requested for the clients this round"
                );
                None
            }
        }
    }
}

/// Why a render is needed, or `None` when the pointer (`read`) records the routing plan
/// (`plan_fingerprint`) and, when they could be read, the clients (`clients_fingerprint`) of
/// now.
fn render_reason(
    read: Result<Option<ConfigPointer>, BucketError>,
    plan_fingerprint: &str,
    clients_fingerprint: Option<&str>,
) -> Option<String> {
    match read {
        Ok(Some(pointer)) if pointer.plan_fingerprint != plan_fingerprint => {
            Some("routing plan changed".into())
        }
        Ok(Some(pointer)) => match clients_fingerprint {
            Some(clients) if pointer.clients_fingerprint.as_deref() != Some(clients) => {
                Some("clients changed".into())
            }
            _ => None,
        },
        Ok(None) => Some("no config rendered yet".into()),
        Err(error @ BucketError::Invalid { .. }) => {
            Some(format!("config pointer unusable: {error}"))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the config pointer; requesting a render to be safe");
            Some("config pointer unreadable".into())
        }
    }
}

/// Runs `tasks` at most `limit` (at least 1) at a time; their outputs in the tasks' order.
///
/// Futures are created only as slots free up (a round's thousands of writes are never all
/// alive at once). Callers map indices, not borrowed items: a closure taking `&T` held across
/// an await keeps the round's future from being `Send` (`tokio::spawn` of a round fails with
/// "implementation of `FnOnce` is not general enough").
async fn run_bounded<F: Future>(
    tasks: impl IntoIterator<Item = F>,
    limit: usize,
) -> Vec<F::Output> {
    let mut tasks = tasks.into_iter().enumerate();
    let mut in_flight = FuturesUnordered::new();
    let mut outputs = Vec::new();
    loop {
        while in_flight.len() < limit.max(1) {
            match tasks.next() {
                Some((index, task)) => in_flight.push(async move { (index, task.await) }),
                None => break,
            }
        }
        match in_flight.next().await {
            Some(output) => outputs.push(output),
            None => break,
        }
    }
    outputs.sort_by_key(|(index, _)| *index);
    outputs.into_iter().map(|(_, output)| output).collect()
}

/// What [`HealthChecker::write_verdicts`] did.
struct WriteOutcome {
    written: usize,
    skipped: usize,
    unchanged: usize,
    error: Option<HealthCheckError>,
}

fn log_round(backends: &[Backend], round: &RoundAssessment, tolerance: u64) {
    match round.leader {
        LeaderStatus::Stalled { height, behind } => tracing::warn!(
            leader_block = height,
            behind,
            corroborated_head = ?round.corroborated_head,
            tolerance,
            "leader stalled: it trails the corroborated head; following the head instead"
        ),
        LeaderStatus::Ahead { height, ahead } => tracing::warn!(
            leader_block = height,
            ahead,
            corroborated_head = ?round.corroborated_head,
            tolerance,
            "leader claims a height the other backends do not corroborate; not following it"
        ),
        _ => {}
    }
    if let Some(expected) = round.expected_chain {
        if expected.source == (ChainSource::Majority { tied: true }) {
            tracing::warn!(
                expected_chain_id = expected.chain_id,
                "no majority chain id among the nodes and no leader chain id: expecting the \
                 smallest of the tied ids (set EXPECTED_CHAIN_ID to pin it)"
            );
        }
    }
    for (backend, verdict) in backends.iter().zip(&round.verdicts) {
        let reason = verdict.health_reason.as_deref().unwrap_or("healthy");
        if verdict.health_changed {
            tracing::warn!(
                backend = %backend.label(),
                healthy = verdict.is_healthy,
                block = ?verdict.observed_block,
                chain_id = ?verdict.chain_id,
                lag = ?verdict.lag,
                reason,
                "backend health changed"
            );
        } else if verdict.failure.is_some() {
            tracing::info!(
                backend = %backend.label(),
                healthy = verdict.is_healthy,
                block = ?verdict.observed_block,
                chain_id = ?verdict.chain_id,
                consecutive_failures = verdict.consecutive_failures,
                reason,
                "backend check failed"
            );
        } else {
            tracing::debug!(
                backend = %backend.label(),
                healthy = verdict.is_healthy,
                block = ?verdict.observed_block,
                reason,
                "backend checked"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::vars as env;
    use serde_json::json;

    /// Every variable the health checker requires, with a value each.
    const REQUIRED: [(&str, &str); 6] = [
        ("DYNAMODB_TABLE", "t"),
        ("STACK_NAME", "s"),
        ("CLOUDWATCH_NAMESPACE", "ns"),
        ("NGINX_CONFIG_BUCKET_NAME", "b"),
        ("CONFIG_RENDERER_FUNCTION", "f"),
        ("DYNAMODB_CLIENTS_TABLE", "c"),
    ];

    fn settings_with(vars: &[(&str, &str)]) -> Result<HealthCheckerSettings, SettingsError> {
        let vars = env(vars);
        let settings = HealthCheckerSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned()));
        settings
    }

    #[test]
    fn health_check_settings_with_defaults() {
        let settings = settings_with(&REQUIRED).unwrap();
        assert_eq!(settings.clients_table, "c");
        assert_eq!(settings.tolerance, 10);
        assert_eq!(settings.probe.timeout, Duration::from_secs(2));
        assert_eq!(settings.probe.concurrency, 512);
        assert_eq!(settings.policy(), HealthPolicy::default());
        assert_eq!((settings.unhealthy_after, settings.healthy_after), (2, 2));
        assert_eq!(settings.expected_chain_id, None);
        assert_eq!(settings.schedule(), RoundSchedule::default());
        assert_eq!(settings.schedule().rounds, 1);
        assert_eq!(settings.schedule().interval, Duration::from_secs(15));
    }

    #[test]
    fn health_model_and_schedule_variables() {
        let read = |extra: &[(&str, &str)]| {
            let mut pairs = REQUIRED.to_vec();
            pairs.extend_from_slice(extra);
            settings_with(&pairs)
        };
        let settings = read(&[
            ("DIFF_TOLERANCE", "3"),
            ("UNHEALTHY_AFTER", "1"),
            ("HEALTHY_AFTER", "4"),
            ("EXPECTED_CHAIN_ID", "137"),
            ("ROUNDS_PER_INVOCATION", "4"),
            ("ROUND_INTERVAL_SECS", "14"),
            ("ROW_REFRESH_SECS", "0"),
        ])
        .unwrap();
        assert_eq!(settings.row_refresh, Duration::ZERO);
        assert_eq!(
            read(&[]).unwrap().row_refresh,
            Duration::from_secs(DEFAULT_ROW_REFRESH_SECS)
        );
        assert_eq!(
            settings.policy(),
            HealthPolicy {
                tolerance: 3,
                unhealthy_after: 1,
                healthy_after: 4,
                expected_chain_id: Some(137),
            }
        );
        assert_eq!(
            settings.schedule(),
            RoundSchedule {
                rounds: 4,
                interval: Duration::from_secs(14)
            }
        );
        for (name, value) in [
            ("UNHEALTHY_AFTER", "0"),
            ("HEALTHY_AFTER", "0"),
            ("EXPECTED_CHAIN_ID", "0"),
            ("EXPECTED_CHAIN_ID", "mainnet"),
            ("ROUNDS_PER_INVOCATION", "0"),
            ("ROUNDS_PER_INVOCATION", "61"),
            ("ROUND_INTERVAL_SECS", "0"),
            ("ROW_REFRESH_SECS", "-1"),
        ] {
            let err = read(&[(name, value)]).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let err = settings_with(&[("DYNAMODB_TABLE", "t"), ("STACK_NAME", "  ")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable STACK_NAME is not set"
        );

        let err = settings_with(&[
            ("DYNAMODB_TABLE", "t"),
            ("STACK_NAME", "s"),
            ("DIFF_TOLERANCE", "-1"),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable DIFF_TOLERANCE=\"-1\" is invalid"),
            "{err}"
        );
    }

    #[test]
    fn scheduled_and_manual_invocations() {
        let scheduled = json!({
            "version": "0",
            "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": "2026-11-24T03:00:00Z",
            "region": "eu-west-1",
            "resources": ["arn:aws:events:eu-west-1:123456789012:rule/jsonrpc-proxy-dev-schedule"],
            "detail": {}
        });
        match Invocation::of(&scheduled) {
            Invocation::Scheduled(event) => {
                assert_eq!(
                    event.id.as_deref(),
                    Some("53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa")
                );
                assert_eq!(event.source, "aws.events");
            }
            Invocation::Manual => panic!("a scheduled event read as manual"),
        }
        let mut other_type = scheduled.clone();
        other_type["detail-type"] = json!("EC2 Instance State-change Notification");
        for event in [
            json!({}),
            json!(null),
            json!("x"),
            json!({"detail-type": 1}),
            other_type,
        ] {
            assert_eq!(Invocation::of(&event), Invocation::Manual, "{event}");
        }
    }

    #[test]
    fn every_required_variable_is_required() {
        for (missing, _) in REQUIRED {
            let vars: Vec<_> = REQUIRED
                .into_iter()
                .filter(|(k, _)| *k != missing)
                .collect();
            assert_eq!(
                settings_with(&vars).unwrap_err(),
                SettingsError::Missing(missing),
                "{missing}"
            );
        }
    }

    #[test]
    fn a_render_is_requested_when_the_plan_or_the_clients_differ_from_the_pointer() {
        let pointer = |clients: Option<&str>| {
            Ok(Some(ConfigPointer {
                key: "a_nginx.conf".into(),
                sha256: "ab".into(),
                plan_fingerprint: "plan".into(),
                clients_fingerprint: clients.map(str::to_owned),
                rendered_at: "2026-11-24T03:00:00Z".into(),
                sequence: 1,
                backends: Vec::new(),
            }))
        };
        let reason = |read, plan, clients| render_reason(read, plan, clients);
        assert_eq!(reason(pointer(Some("c")), "plan", Some("c")), None);
        assert_eq!(
            reason(pointer(Some("c")), "plan", Some("c2")).as_deref(),
            Some("clients changed")
        );
        assert_eq!(
            reason(pointer(None), "plan", Some("c")).as_deref(),
            Some("clients changed"),
            "a pointer from before the clients' fingerprint"
        );
        assert_eq!(
            reason(pointer(Some("c")), "plan2", Some("c2")).as_deref(),
            Some("routing plan changed")
        );
        // The clients table could not be read: only the plan counts.
        assert_eq!(reason(pointer(Some("c")), "plan", None), None);
        assert_eq!(reason(pointer(None), "plan", None), None);
        assert_eq!(
            reason(pointer(Some("c")), "plan2", None).as_deref(),
            Some("routing plan changed")
        );
        assert_eq!(
            reason(Ok(None), "plan", None).as_deref(),
            Some("no config rendered yet")
        );
        let unreadable = Err(BucketError::Sdk {
            operation: "GetObject",
            key: "latest.json".into(),
            message: "timeout".into(),
        });
        assert_eq!(
            reason(unreadable, "plan", Some("c")).as_deref(),
            Some("config pointer unreadable")
        );
    }
}
