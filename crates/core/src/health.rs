//! Health evaluation: a pure function from what the probes found to each backend's verdict.
//!
//! The rule is the article's: the reference height is the leader's block number, or the
//! highest answer when the leader gave none; a backend is healthy when it answered and is at
//! most `DIFF_TOLERANCE` blocks behind the reference.

use crate::backend::Backend;
use crate::probe::{ProbeFailure, ProbeOutcome};

/// Default `DIFF_TOLERANCE`: blocks a node may trail the reference and stay healthy.
pub const DEFAULT_DIFF_TOLERANCE: u64 = 10;

/// Where the reference height came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceSource {
    /// The leader answered.
    Leader,
    /// The leader gave no answer (or there is none): the highest answer of all.
    HighestAnswer,
    /// Nobody answered.
    None,
}

/// Why a backend is unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnhealthyReason {
    /// Its stored URL no longer passes validation (a legacy item); it is never probed.
    InvalidUrl(String),
    /// The probe got no block number.
    Probe(ProbeFailure),
    /// It answered but trails the reference by more than the tolerance.
    Lagging {
        /// Blocks behind.
        lag: u64,
        /// The reference height.
        reference: u64,
        /// The tolerance in force.
        tolerance: u64,
    },
}

impl std::fmt::Display for UnhealthyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidUrl(why) => write!(f, "invalid url: {why}"),
            Self::Probe(failure) => write!(f, "{failure}"),
            Self::Lagging {
                lag,
                reference,
                tolerance,
            } => write!(
                f,
                "lagging {lag} blocks behind reference {reference} (tolerance {tolerance})"
            ),
        }
    }
}

/// What a round found for one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The backend's URL (the table key).
    pub url: String,
    /// Whether it is the leader.
    pub is_leader: bool,
    /// The new health.
    pub is_healthy: bool,
    /// Whether health changed from what the table held.
    pub health_changed: bool,
    /// The block number this round observed, if any.
    pub observed_block: Option<u64>,
    /// The block number to store: the observed one, else the previous one.
    pub stored_block: Option<u64>,
    /// Blocks behind the reference, when both are known.
    pub lag: Option<u64>,
    /// Signed difference `reference - observed`, for the block-difference metric.
    pub difference: Option<i64>,
    /// Probe duration in milliseconds (`None` for backends that were not probed).
    pub response_time_ms: Option<f64>,
    /// Why it is unhealthy, `None` when healthy.
    pub reason: Option<UnhealthyReason>,
}

/// The verdicts of one round and the reference they were measured against.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundAssessment {
    /// The reference height, if anybody answered.
    pub reference_height: Option<u64>,
    /// Where the reference came from.
    pub reference_source: ReferenceSource,
    /// One verdict per backend, in the order given.
    pub verdicts: Vec<Verdict>,
}

impl RoundAssessment {
    /// How many backends are healthy after this round.
    pub fn healthy_count(&self) -> usize {
        self.verdicts.iter().filter(|v| v.is_healthy).count()
    }

    /// Whether any backend's health changed this round.
    pub fn any_health_changed(&self) -> bool {
        self.verdicts.iter().any(|v| v.health_changed)
    }

    /// The backends as they will be stored after this round (for routing decisions).
    pub fn apply_to(&self, backends: &[Backend]) -> Vec<Backend> {
        backends
            .iter()
            .zip(&self.verdicts)
            .map(|(backend, verdict)| Backend {
                is_healthy: verdict.is_healthy,
                block_number: verdict.stored_block,
                ..backend.clone()
            })
            .collect()
    }
}

/// A probe's outcome for one backend, or the reason it was not probed.
pub type Observation = Result<ProbeOutcome, UnhealthyReason>;

/// Judges every backend. `observations[i]` belongs to `backends[i]`.
///
/// Backends and observations of unequal length are judged pairwise up to the shorter one;
/// callers build both from one list.
pub fn assess(
    backends: &[Backend],
    observations: &[Observation],
    tolerance: u64,
) -> RoundAssessment {
    let block_of = |obs: &Observation| {
        obs.as_ref()
            .ok()
            .and_then(|o| o.result.as_ref().ok().copied())
    };

    let leader_height = backends
        .iter()
        .zip(observations)
        .filter(|(backend, _)| backend.is_leader)
        .filter_map(|(_, obs)| block_of(obs))
        .max();
    let highest = observations.iter().filter_map(block_of).max();
    let (reference_height, reference_source) = match (leader_height, highest) {
        (Some(height), _) => (Some(height), ReferenceSource::Leader),
        (None, Some(height)) => (Some(height), ReferenceSource::HighestAnswer),
        (None, None) => (None, ReferenceSource::None),
    };

    let verdicts = backends
        .iter()
        .zip(observations)
        .map(|(backend, observation)| {
            let observed_block = block_of(observation);
            let lag = match (reference_height, observed_block) {
                (Some(reference), Some(block)) => Some(reference.saturating_sub(block)),
                _ => None,
            };
            let difference = match (reference_height, observed_block) {
                (Some(reference), Some(block)) => Some(signed_difference(reference, block)),
                _ => None,
            };
            let reason = match observation {
                Err(reason) => Some(reason.clone()),
                Ok(outcome) => match (&outcome.result, lag, reference_height) {
                    (Err(failure), _, _) => Some(UnhealthyReason::Probe(failure.clone())),
                    (Ok(_), Some(lag), Some(reference)) if lag > tolerance => {
                        Some(UnhealthyReason::Lagging {
                            lag,
                            reference,
                            tolerance,
                        })
                    }
                    (Ok(_), _, _) => None,
                },
            };
            let is_healthy = reason.is_none();
            Verdict {
                url: backend.url.clone(),
                is_leader: backend.is_leader,
                is_healthy,
                health_changed: is_healthy != backend.is_healthy,
                observed_block,
                stored_block: observed_block.or(backend.block_number),
                lag,
                difference,
                response_time_ms: observation.as_ref().ok().map(ProbeOutcome::elapsed_ms),
                reason,
            }
        })
        .collect();

    RoundAssessment {
        reference_height,
        reference_source,
        verdicts,
    }
}

fn signed_difference(reference: u64, block: u64) -> i64 {
    if reference >= block {
        i64::try_from(reference - block).unwrap_or(i64::MAX)
    } else {
        i64::try_from(block - reference).map_or(i64::MIN, |d| -d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn backend(url: &str, is_leader: bool, is_healthy: bool, block: Option<u64>) -> Backend {
        Backend {
            url: url.into(),
            is_leader,
            is_healthy,
            when_added: "2026-01-01T00:00:00.000000Z".into(),
            block_number: block,
            last_checked: None,
            response_time_ms: None,
            lag_blocks: None,
            health_reason: None,
            last_checked_ms: None,
        }
    }

    fn answered(block: u64) -> Observation {
        Ok(ProbeOutcome {
            result: Ok(block),
            elapsed: Duration::from_millis(5),
        })
    }

    fn timed_out() -> Observation {
        Ok(ProbeOutcome {
            result: Err(ProbeFailure::Timeout(2000)),
            elapsed: Duration::from_secs(2),
        })
    }

    #[test]
    fn leader_sets_the_reference() {
        let backends = [
            backend("http://leader", true, true, Some(90)),
            backend("http://a", false, false, None),
            backend("http://b", false, true, Some(80)),
        ];
        let round = assess(&backends, &[answered(100), answered(90), answered(89)], 10);
        assert_eq!(round.reference_height, Some(100));
        assert_eq!(round.reference_source, ReferenceSource::Leader);
        let healthy: Vec<bool> = round.verdicts.iter().map(|v| v.is_healthy).collect();
        assert_eq!(
            healthy,
            [true, true, false],
            "exactly 10 behind is healthy, 11 is not"
        );
        assert!(round.verdicts[1].health_changed);
        assert!(round.verdicts[2].health_changed);
        assert_eq!(
            round.verdicts[2]
                .reason
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("lagging 11 blocks behind reference 100 (tolerance 10)")
        );
        assert_eq!(round.verdicts[1].difference, Some(10));
        assert_eq!(round.healthy_count(), 2);
    }

    #[test]
    fn without_a_leader_answer_the_highest_answer_is_the_reference() {
        let backends = [
            backend("http://leader", true, true, Some(100)),
            backend("http://a", false, true, Some(100)),
            backend("http://b", false, true, Some(100)),
        ];
        let round = assess(&backends, &[timed_out(), answered(120), answered(105)], 10);
        assert_eq!(round.reference_height, Some(120));
        assert_eq!(round.reference_source, ReferenceSource::HighestAnswer);
        assert!(!round.verdicts[0].is_healthy);
        assert_eq!(
            round.verdicts[0].stored_block,
            Some(100),
            "no answer keeps the old block"
        );
        assert_eq!(round.verdicts[0].response_time_ms, Some(2000.0));
        assert!(round.verdicts[1].is_healthy);
        assert!(!round.verdicts[2].is_healthy, "15 behind the highest");
    }

    #[test]
    fn no_leader_at_all() {
        let backends = [
            backend("http://a", false, false, None),
            backend("http://b", false, false, None),
        ];
        let round = assess(&backends, &[answered(7), answered(7)], 10);
        assert_eq!(round.reference_source, ReferenceSource::HighestAnswer);
        assert!(round
            .verdicts
            .iter()
            .all(|v| v.is_healthy && v.health_changed));
    }

    #[test]
    fn nobody_answers() {
        let backends = [backend("http://a", false, true, Some(3))];
        let round = assess(&backends, &[timed_out()], 10);
        assert_eq!(round.reference_source, ReferenceSource::None);
        assert_eq!(round.reference_height, None);
        assert!(!round.verdicts[0].is_healthy);
        assert_eq!(round.verdicts[0].lag, None);
        assert_eq!(
            round.verdicts[0]
                .reason
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("timeout after 2000 ms")
        );
    }

    #[test]
    fn recovery_and_no_change() {
        let backends = [
            backend("http://a", false, false, Some(1)),
            backend("http://b", false, true, Some(1)),
        ];
        let round = assess(&backends, &[answered(50), answered(50)], 10);
        assert!(round.verdicts[0].health_changed);
        assert!(!round.verdicts[1].health_changed);
        let unchanged = assess(
            &round.apply_to(&backends),
            &[answered(51), answered(51)],
            10,
        );
        assert!(!unchanged.any_health_changed());
    }

    #[test]
    fn a_node_ahead_of_the_leader_is_healthy_with_negative_difference() {
        let backends = [
            backend("http://leader", true, true, None),
            backend("http://a", false, true, None),
        ];
        let round = assess(&backends, &[answered(100), answered(102)], 10);
        assert!(round.verdicts[1].is_healthy);
        assert_eq!(round.verdicts[1].lag, Some(0));
        assert_eq!(round.verdicts[1].difference, Some(-2));
    }

    #[test]
    fn invalid_urls_are_unhealthy_without_a_probe() {
        let backends = [backend("http://a;b", false, true, Some(5))];
        let round = assess(
            &backends,
            &[Err(UnhealthyReason::InvalidUrl("bad".into()))],
            10,
        );
        assert!(!round.verdicts[0].is_healthy);
        assert_eq!(round.verdicts[0].response_time_ms, None);
        assert_eq!(round.verdicts[0].stored_block, Some(5));
    }

    #[test]
    fn zero_tolerance_demands_the_reference_height() {
        let backends = [
            backend("http://l", true, false, None),
            backend("http://a", false, false, None),
        ];
        let round = assess(&backends, &[answered(10), answered(9)], 0);
        assert!(round.verdicts[0].is_healthy);
        assert!(!round.verdicts[1].is_healthy);
    }
}
