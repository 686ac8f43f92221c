//! Is the configuration in force the newest one? A pure judgement, logged and published as a
//! metric so that a stuck agent is visible.

use jsonrpc_proxy::aws::config_bucket::ConfigPointer;
use jsonrpc_proxy::aws::metrics::{MetricPoint, MetricUnit, MetricsPublisher};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Metric: seconds the newest render has waited without being applied (0 when current).
pub const METRIC_STALENESS: &str = "Config agent staleness";
/// Metric: seconds since the configuration in force was rendered.
pub const METRIC_CONFIG_AGE: &str = "Applied config age";

/// The state of the configuration in force, against the renderer's pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigStatus {
    /// SHA-256 of the configuration in force.
    pub applied_sha256: String,
    /// Whether it is the one the pointer names (`None`: no pointer to compare with).
    pub current: Option<bool>,
    /// How long the newest render has waited, in seconds (0 when current).
    pub staleness_secs: Option<u64>,
    /// How long ago the configuration in force was rendered, in seconds (known when current).
    pub age_secs: Option<u64>,
}

impl ConfigStatus {
    /// Judges `applied_sha256` against the pointer, at `now`.
    pub fn evaluate(
        applied_sha256: &str,
        pointer: Option<&ConfigPointer>,
        now: OffsetDateTime,
    ) -> Self {
        let Some(pointer) = pointer else {
            return Self {
                applied_sha256: applied_sha256.to_owned(),
                current: None,
                staleness_secs: None,
                age_secs: None,
            };
        };
        let since_render = OffsetDateTime::parse(&pointer.rendered_at, &Rfc3339)
            .ok()
            .map(|rendered| u64::try_from((now - rendered).whole_seconds()).unwrap_or(0));
        let current = pointer.sha256.eq_ignore_ascii_case(applied_sha256);
        Self {
            applied_sha256: applied_sha256.to_owned(),
            current: Some(current),
            staleness_secs: if current { Some(0) } else { since_render },
            age_secs: if current { since_render } else { None },
        }
    }

    /// The data points to publish for the stack `stack_name`.
    pub fn metric_points(&self, stack_name: &str) -> Vec<MetricPoint> {
        let point = |name, value: u64| MetricPoint {
            name,
            dimensions: vec![(
                jsonrpc_proxy::aws::metrics::DIMENSION_STACK_NAME,
                stack_name.to_owned(),
            )],
            value: value as f64,
            unit: MetricUnit::Seconds,
        };
        let mut points = Vec::new();
        if let Some(staleness) = self.staleness_secs {
            points.push(point(METRIC_STALENESS, staleness));
        }
        if let Some(age) = self.age_secs {
            points.push(point(METRIC_CONFIG_AGE, age));
        }
        points
    }
}

/// Publishes the status metrics (`CLOUDWATCH_NAMESPACE`, dimension `Stack name` = `STACK_NAME`).
#[derive(Debug, Clone)]
pub struct StatusReporter {
    /// CloudWatch, in the stack's namespace.
    pub publisher: MetricsPublisher,
    /// `STACK_NAME`.
    pub stack_name: String,
}

impl StatusReporter {
    /// Sends the status; a failure is logged, never fatal (nginx keeps serving).
    pub async fn publish(&self, status: &ConfigStatus) {
        let points = status.metric_points(&self.stack_name);
        if points.is_empty() {
            return;
        }
        if let Err(error) = self
            .publisher
            .publish(&points, std::time::SystemTime::now())
            .await
        {
            tracing::warn!(%error, "cannot publish the config agent's metrics");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn pointer(sha256: &str, rendered_at: &str) -> ConfigPointer {
        ConfigPointer {
            key: "abc_nginx.conf".into(),
            sha256: sha256.into(),
            plan_fingerprint: "f".into(),
            clients_fingerprint: None,
            rendered_at: rendered_at.into(),
            sequence: 1,
            backends: vec![],
        }
    }

    #[test]
    fn a_current_config_has_an_age_and_no_staleness() {
        let now = datetime!(2026-11-24 05:00:30 UTC);
        let status = ConfigStatus::evaluate(
            "AB12",
            Some(&pointer("ab12", "2026-11-24T05:00:00.000000Z")),
            now,
        );
        assert_eq!(status.current, Some(true));
        assert_eq!(status.staleness_secs, Some(0));
        assert_eq!(status.age_secs, Some(30));
        let points = status.metric_points("stack");
        assert_eq!(points.len(), 2);
        assert!(points
            .iter()
            .all(|p| p.unit == MetricUnit::Seconds && p.dimensions[0].1 == "stack"));
    }

    #[test]
    fn a_stuck_agent_shows_how_long_the_newest_render_waits() {
        let now = datetime!(2026-11-24 05:10:00 UTC);
        let status = ConfigStatus::evaluate(
            "old",
            Some(&pointer("new", "2026-11-24T05:00:00.000000Z")),
            now,
        );
        assert_eq!(status.current, Some(false));
        assert_eq!(status.staleness_secs, Some(600));
        assert_eq!(status.age_secs, None);
        let points = status.metric_points("stack");
        assert_eq!(points.len(), 1);
        assert_eq!((points[0].name, points[0].value), (METRIC_STALENESS, 600.0));
    }

    #[test]
    fn without_a_pointer_or_a_readable_time_nothing_is_claimed() {
        let now = datetime!(2026-11-24 05:10:00 UTC);
        assert!(ConfigStatus::evaluate("x", None, now)
            .metric_points("s")
            .is_empty());
        let status = ConfigStatus::evaluate("old", Some(&pointer("new", "yesterday")), now);
        assert_eq!((status.current, status.staleness_secs), (Some(false), None));
    }
}
