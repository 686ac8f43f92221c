//! CloudWatch metrics of a health-check round, built purely and sent in batches within the
//! API's limits. Rationale: docs/architecture.md, "Metrics".

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_smithy_types::DateTime;
use thiserror::Error;

use crate::health::judgement::RoundAssessment;
use crate::model::backend_url::redact_unvalidated;
use crate::model::backend_url::BackendUrl;

/// `ETH node block number`, per `Node URL`.
pub const METRIC_BLOCK_NUMBER: &str = "ETH node block number";
/// `eth_getBlockNumber response time`, per `Node URL`, in milliseconds.
pub const METRIC_RESPONSE_TIME: &str = "eth_getBlockNumber response time";
/// `Number of healthy ETH nodes`, per `Stack name`.
pub const METRIC_HEALTHY_NODES: &str = "Number of healthy ETH nodes";
/// `ETH node block difference` (reference minus node), per `Node URL`, non-leaders only.
pub const METRIC_BLOCK_DIFFERENCE: &str = "ETH node block difference";
/// `Leader stalled`, per `Stack name`: 1 when the leader answered but trails the corroborated
/// head by more than the tolerance (it is reported, not followed), else 0.
pub const METRIC_LEADER_STALLED: &str = "Leader stalled";
/// Dimension naming a node: its redacted URL, never the URL itself.
pub const DIMENSION_NODE_URL: &str = "Node URL";
/// Dimension naming the stack.
pub const DIMENSION_STACK_NAME: &str = "Stack name";
/// Most data points `PutMetricData` accepts in one call.
pub const MAX_DATA_PER_CALL: usize = 1000;

/// One data point, independent of the SDK so that it can be built and tested purely.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    /// The metric's name (one of the `METRIC_` constants).
    pub name: &'static str,
    /// Dimension names and values.
    pub dimensions: Vec<(&'static str, String)>,
    /// The measured value, in `unit`.
    pub value: f64,
    /// The value's unit.
    pub unit: MetricUnit,
}

/// Units used by the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricUnit {
    /// No unit (block numbers and other plain numbers).
    None,
    /// A number of events.
    Count,
    /// A duration in milliseconds.
    Milliseconds,
    /// A duration in seconds.
    Seconds,
}

/// Builds the round's data points. Node dimensions are redacted labels. The block difference
/// is the reference height minus the node's (the leader's height when it is current, else the
/// corroborated head), non-leaders on the expected chain only.
pub fn round_metrics(round: &RoundAssessment, stack_name: &str) -> Vec<MetricPoint> {
    let mut points = Vec::with_capacity(round.verdicts.len() * 3 + 2);
    for verdict in &round.verdicts {
        let label = match BackendUrl::parse(&verdict.url) {
            Ok(url) => url.redacted(),
            Err(_) => redact_unvalidated(&verdict.url),
        };
        let node = |name, value, unit| MetricPoint {
            name,
            dimensions: vec![(DIMENSION_NODE_URL, label.clone())],
            value,
            unit,
        };
        if let Some(block) = verdict.observed_block {
            points.push(node(METRIC_BLOCK_NUMBER, block as f64, MetricUnit::None));
        }
        if let Some(ms) = verdict.response_time_ms {
            points.push(node(METRIC_RESPONSE_TIME, ms, MetricUnit::Milliseconds));
        }
        if let (false, Some(difference)) = (verdict.is_leader, verdict.difference) {
            points.push(node(
                METRIC_BLOCK_DIFFERENCE,
                difference as f64,
                MetricUnit::None,
            ));
        }
    }
    points.push(MetricPoint {
        name: METRIC_HEALTHY_NODES,
        dimensions: vec![(DIMENSION_STACK_NAME, stack_name.to_owned())],
        value: round.healthy_count() as f64,
        unit: MetricUnit::None,
    });
    points.push(MetricPoint {
        name: METRIC_LEADER_STALLED,
        dimensions: vec![(DIMENSION_STACK_NAME, stack_name.to_owned())],
        value: if round.leader_stalled() { 1.0 } else { 0.0 },
        unit: MetricUnit::None,
    });
    points
}

/// Publishing metrics failed.
#[derive(Debug, Error)]
#[error("PutMetricData failed for batch {batch} of {batches}: {message}")]
pub struct MetricsError {
    /// 1-based batch number.
    pub batch: usize,
    /// How many batches the points were split into.
    pub batches: usize,
    /// The SDK's error, displayed.
    pub message: String,
}

/// Sends data points to CloudWatch.
#[derive(Debug, Clone)]
pub struct MetricsPublisher {
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
}

impl MetricsPublisher {
    /// A publisher for one namespace (`CLOUDWATCH_NAMESPACE`).
    pub fn new(client: aws_sdk_cloudwatch::Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
        }
    }

    /// Sends every point, stamped `at`, in calls of at most [`MAX_DATA_PER_CALL`]; returns the
    /// number of calls made. Every batch is attempted; the first failure is returned.
    pub async fn publish(
        &self,
        points: &[MetricPoint],
        at: std::time::SystemTime,
    ) -> Result<usize, MetricsError> {
        let timestamp = DateTime::from(at);
        let batches: Vec<&[MetricPoint]> = points.chunks(MAX_DATA_PER_CALL).collect();
        let count = batches.len();
        let mut first_error = None;
        for (index, batch) in batches.iter().enumerate() {
            let data: Vec<MetricDatum> = batch.iter().map(|p| to_datum(p, timestamp)).collect();
            let result = self
                .client
                .put_metric_data()
                .namespace(&self.namespace)
                .set_metric_data(Some(data))
                .send()
                .await;
            if let Err(error) = result {
                let message = aws_sdk_cloudwatch::error::DisplayErrorContext(&error).to_string();
                tracing::error!(batch = index + 1, batches = count, error = %message, "PutMetricData failed");
                first_error.get_or_insert(MetricsError {
                    batch: index + 1,
                    batches: count,
                    message,
                });
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(count),
        }
    }
}

fn to_datum(point: &MetricPoint, timestamp: DateTime) -> MetricDatum {
    MetricDatum::builder()
        .metric_name(point.name)
        .set_dimensions(Some(
            point
                .dimensions
                .iter()
                .map(|(name, value)| Dimension::builder().name(*name).value(value).build())
                .collect(),
        ))
        .value(point.value)
        .unit(match point.unit {
            MetricUnit::None => StandardUnit::None,
            MetricUnit::Count => StandardUnit::Count,
            MetricUnit::Milliseconds => StandardUnit::Milliseconds,
            MetricUnit::Seconds => StandardUnit::Seconds,
        })
        .storage_resolution(60)
        .timestamp(timestamp)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::judgement::{assess, HealthPolicy, Observation};
    use crate::health::probe::{ProbeFailure, ProbeOutcome};
    use crate::model::backend::Backend;
    use std::time::Duration;

    fn backend(url: &str, is_leader: bool) -> Backend {
        Backend {
            url: url.into(),
            is_leader,
            ..Backend::default()
        }
    }

    #[test]
    fn the_original_metric_set_with_redacted_dimensions() {
        let backends = [
            backend("https://mainnet.infura.io/v3/SECRETKEY", true),
            backend("http://10.0.0.1:8545", false),
            backend("http://10.0.0.2:8545", false),
        ];
        let observations: Vec<Observation> = vec![
            Ok(ProbeOutcome::new(Ok(100), Duration::from_micros(12_500))),
            Ok(ProbeOutcome::new(Ok(97), Duration::from_millis(3))),
            Ok(ProbeOutcome::new(
                Err(ProbeFailure::Timeout(2000)),
                Duration::from_secs(2),
            )),
        ];
        let round = assess(&backends, &observations, &HealthPolicy::default());
        let points = round_metrics(&round, "jsonrpc-proxy-dev");

        let find = |name: &str, label: &str| {
            points
                .iter()
                .find(|p| p.name == name && p.dimensions[0].1 == label)
                .map(|p| (p.value, p.unit))
        };
        let leader = BackendUrl::parse("https://mainnet.infura.io/v3/SECRETKEY")
            .unwrap()
            .redacted();
        assert_eq!(
            find(METRIC_BLOCK_NUMBER, &leader),
            Some((100.0, MetricUnit::None))
        );
        assert_eq!(
            find(METRIC_RESPONSE_TIME, &leader),
            Some((12.5, MetricUnit::Milliseconds))
        );
        assert_eq!(
            find(METRIC_BLOCK_DIFFERENCE, &leader),
            None,
            "no difference for the leader"
        );
        assert_eq!(
            find(METRIC_BLOCK_DIFFERENCE, "http://10.0.0.1:8545"),
            Some((3.0, MetricUnit::None))
        );
        assert_eq!(
            find(METRIC_BLOCK_NUMBER, "http://10.0.0.2:8545"),
            None,
            "no block for a timeout"
        );
        assert_eq!(
            find(METRIC_RESPONSE_TIME, "http://10.0.0.2:8545"),
            Some((2000.0, MetricUnit::Milliseconds))
        );
        assert_eq!(
            find(METRIC_HEALTHY_NODES, "jsonrpc-proxy-dev"),
            Some((2.0, MetricUnit::None))
        );
        assert_eq!(
            find(METRIC_LEADER_STALLED, "jsonrpc-proxy-dev"),
            Some((0.0, MetricUnit::None))
        );
        assert_eq!(points.len(), 8);
        assert!(points
            .iter()
            .all(|p| !p.dimensions[0].1.contains("SECRETKEY")));
        assert!(points
            .iter()
            .all(|p| p.dimensions[0].0 == DIMENSION_NODE_URL
                || p.name == METRIC_HEALTHY_NODES
                || p.name == METRIC_LEADER_STALLED));
    }

    #[test]
    fn a_stalled_leader_is_reported_and_the_difference_follows_the_head() {
        let backends = [
            backend("https://leader.example/v3/KEY", true),
            backend("http://10.0.0.1:8545", false),
            backend("http://10.0.0.2:8545", false),
            backend("http://10.0.0.3:8545", false),
        ];
        let answered =
            |block| Ok(ProbeOutcome::new(Ok(block), Duration::from_millis(1)).with_chain_id(1));
        let observations: Vec<Observation> = vec![
            answered(100),
            answered(200),
            answered(199),
            Ok(ProbeOutcome::new(Ok(150), Duration::from_millis(1)).with_chain_id(5)),
        ];
        let round = assess(&backends, &observations, &HealthPolicy::default());
        let points = round_metrics(&round, "s");
        let value = |name: &str, label: &str| {
            points
                .iter()
                .find(|p| p.name == name && p.dimensions[0].1 == label)
                .map(|p| p.value)
        };
        assert_eq!(value(METRIC_LEADER_STALLED, "s"), Some(1.0));
        assert_eq!(
            value(METRIC_BLOCK_DIFFERENCE, "http://10.0.0.2:8545"),
            Some(1.0)
        );
        assert_eq!(
            value(METRIC_BLOCK_DIFFERENCE, "http://10.0.0.3:8545"),
            None,
            "no difference across chains"
        );
        assert_eq!(
            value(METRIC_BLOCK_NUMBER, "http://10.0.0.3:8545"),
            Some(150.0)
        );
    }
}
