//! `health_checker`: one round of probing, judging, recording, reporting and re-rendering.

use std::time::SystemTime;

use futures::stream::{self, StreamExt};
use serde::Serialize;
use thiserror::Error;
use time::OffsetDateTime;

use crate::backend::Backend;
use crate::backend_url::BackendUrl;
use crate::config_bucket::{BucketError, ConfigBucket};
use crate::health::{assess, Observation, ReferenceSource, RoundAssessment, UnhealthyReason};
use crate::metrics::{round_metrics, MetricsError, MetricsPublisher};
use crate::nginx::RoutingPlan;
use crate::probe::Prober;
use crate::renderer_trigger::{RendererTrigger, TriggerError};
use crate::store::{BackendStore, CheckWrite, StoreError};

/// A round failed in a way Lambda should retry. Everything that could be done was done first.
#[derive(Debug, Error)]
pub enum HealthCheckError {
    /// The table could not be read: nothing was probed or written.
    #[error("cannot read the backends: {0}")]
    Scan(StoreError),
    /// Some verdicts could not be written (the others were).
    #[error("{failed} of {total} health writes failed; first: {first}")]
    Writes {
        /// Failed writes.
        failed: usize,
        /// Attempted writes.
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

/// What a round did, returned as the function's result and logged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundSummary {
    /// Backends in the table.
    pub backends: usize,
    /// Backends healthy after the round.
    pub healthy: usize,
    /// Backends whose health changed.
    pub changed: usize,
    /// The reference height.
    pub reference_block: Option<u64>,
    /// `leader`, `highest_answer` or `none`.
    pub reference_source: &'static str,
    /// Items written.
    pub written: usize,
    /// Items skipped because they were removed meanwhile or a newer round wrote them.
    pub skipped: usize,
    /// `PutMetricData` calls made.
    pub metric_calls: usize,
    /// Whether a render was requested, and why.
    pub render_requested: Option<String>,
    /// Fingerprint of the routing plan the table now implies.
    pub plan_fingerprint: String,
}

/// Everything a round needs; build once per process.
#[derive(Debug, Clone)]
pub struct HealthChecker {
    /// The table.
    pub store: BackendStore,
    /// The HTTP prober.
    pub prober: Prober,
    /// CloudWatch.
    pub metrics: MetricsPublisher,
    /// The config bucket (for the last rendered plan).
    pub bucket: ConfigBucket,
    /// The renderer.
    pub trigger: RendererTrigger,
    /// `DIFF_TOLERANCE`.
    pub tolerance: u64,
    /// `STACK_NAME`.
    pub stack_name: String,
    /// Table writes in flight at once.
    pub write_concurrency: usize,
}

impl HealthChecker {
    /// Runs one round.
    ///
    /// Order: scan, probe, judge, write back, publish metrics, compare the implied plan with
    /// the last rendered one and request a render when they differ. A failing step does not
    /// stop the later ones; the first failure is returned at the end so Lambda retries.
    pub async fn run_round(&self) -> Result<RoundSummary, HealthCheckError> {
        let backends = self
            .store
            .scan_all()
            .await
            .map_err(HealthCheckError::Scan)?;
        let checked_at = OffsetDateTime::now_utc();

        let round = self.probe_and_assess(&backends).await;
        log_round(&backends, &round);

        let (written, skipped, write_error) = self.write_verdicts(&round, checked_at).await;

        let points = round_metrics(&round, &self.stack_name);
        let metric_result = self
            .metrics
            .publish(&points, SystemTime::from(checked_at))
            .await;

        let plan = RoutingPlan::from_backends(&round.apply_to(&backends));
        let fingerprint = plan.fingerprint();
        let render_reason = self.render_reason(&fingerprint).await;
        let trigger_result = match &render_reason {
            Some(reason) => self.trigger.request_render(reason).await,
            None => Ok(()),
        };

        let summary = RoundSummary {
            backends: backends.len(),
            healthy: round.healthy_count(),
            changed: round.verdicts.iter().filter(|v| v.health_changed).count(),
            reference_block: round.reference_height,
            reference_source: match round.reference_source {
                ReferenceSource::Leader => "leader",
                ReferenceSource::HighestAnswer => "highest_answer",
                ReferenceSource::None => "none",
            },
            written,
            skipped,
            metric_calls: *metric_result.as_ref().unwrap_or(&0),
            render_requested: render_reason,
            plan_fingerprint: fingerprint,
        };
        tracing::info!(summary = %serde_json::to_string(&summary).unwrap_or_default(), "health check round done");

        if let Some(error) = write_error {
            return Err(error);
        }
        metric_result?;
        trigger_result?;
        Ok(summary)
    }

    /// Probes every backend with a valid URL and judges them all.
    pub async fn probe_and_assess(&self, backends: &[Backend]) -> RoundAssessment {
        let parsed: Vec<Result<BackendUrl, UnhealthyReason>> = backends
            .iter()
            .map(|b| {
                b.parsed_url()
                    .map_err(|e| UnhealthyReason::InvalidUrl(e.to_string()))
            })
            .collect();
        let valid: Vec<BackendUrl> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut outcomes = self.prober.probe_all(&valid).await.into_iter();
        let observations: Vec<Observation> = parsed
            .into_iter()
            .map(|p| match p {
                Ok(_) => outcomes
                    .next()
                    .ok_or_else(|| UnhealthyReason::InvalidUrl("probe missing".into())),
                Err(reason) => Err(reason),
            })
            .collect();
        assess(backends, &observations, self.tolerance)
    }

    async fn write_verdicts(
        &self,
        round: &RoundAssessment,
        checked_at: OffsetDateTime,
    ) -> (usize, usize, Option<HealthCheckError>) {
        let results: Vec<Result<CheckWrite, StoreError>> = stream::iter(&round.verdicts)
            .map(|verdict| self.store.record_check(verdict, checked_at))
            .buffer_unordered(self.write_concurrency.max(1))
            .collect()
            .await;
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
        (written, skipped, error)
    }

    /// Why a render is needed, or `None` when the last rendered plan is the current one.
    async fn render_reason(&self, fingerprint: &str) -> Option<String> {
        match self.bucket.read_pointer().await {
            Ok(Some(pointer)) if pointer.plan_fingerprint == fingerprint => None,
            Ok(Some(_)) => Some("routing plan changed".into()),
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
}

fn log_round(backends: &[Backend], round: &RoundAssessment) {
    for (backend, verdict) in backends.iter().zip(&round.verdicts) {
        let reason = verdict.reason.as_ref().map(ToString::to_string);
        if verdict.health_changed {
            tracing::warn!(
                backend = %backend.label(),
                healthy = verdict.is_healthy,
                block = ?verdict.observed_block,
                lag = ?verdict.lag,
                reason = reason.as_deref().unwrap_or("healthy"),
                "backend health changed"
            );
        } else {
            tracing::debug!(
                backend = %backend.label(),
                healthy = verdict.is_healthy,
                block = ?verdict.observed_block,
                reason = reason.as_deref().unwrap_or("healthy"),
                "backend checked"
            );
        }
    }
}
