//! Health evaluation: [`assess`], a pure function from what the probes found (and what the
//! table remembers) to each backend's verdict. Rationale: docs/architecture.md, "Health model".

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::health::probe::{ProbeFailure, ProbeOutcome};
use crate::model::backend::{epoch_millis, iso8601, Backend};

/// Default `DIFF_TOLERANCE`: blocks a node may trail the reference and stay healthy.
pub const DEFAULT_DIFF_TOLERANCE: u64 = 10;
/// Default `UNHEALTHY_AFTER`: consecutive soft failures that make a healthy backend unhealthy.
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 2;
/// Default `HEALTHY_AFTER`: consecutive passed checks that make an unhealthy backend healthy.
pub const DEFAULT_HEALTHY_AFTER: u32 = 2;

/// The rules a round judges by (from `DIFF_TOLERANCE`, `UNHEALTHY_AFTER`, `HEALTHY_AFTER`,
/// `EXPECTED_CHAIN_ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Blocks a node may trail the reference (and lead the corroborated head) and pass.
    pub tolerance: u64,
    /// Consecutive soft failures after which a healthy backend becomes unhealthy (at least 1).
    pub unhealthy_after: u32,
    /// Consecutive passed checks after which an unhealthy backend becomes healthy (at least 1).
    pub healthy_after: u32,
    /// The chain every backend must be on; `None` follows the leader or the majority.
    pub expected_chain_id: Option<u64>,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            tolerance: DEFAULT_DIFF_TOLERANCE,
            unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
            healthy_after: DEFAULT_HEALTHY_AFTER,
            expected_chain_id: None,
        }
    }
}

impl HealthPolicy {
    /// Every verdict takes effect at once (no hysteresis): `UNHEALTHY_AFTER` and
    /// `HEALTHY_AFTER` of 1.
    pub fn immediate(tolerance: u64) -> Self {
        Self {
            tolerance,
            unhealthy_after: 1,
            healthy_after: 1,
            expected_chain_id: None,
        }
    }
}

/// Where the reference height came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceSource {
    /// The leader answered and is current.
    Leader,
    /// No current leader: the corroborated head.
    Corroborated,
    /// Nobody usable answered.
    None,
}

impl ReferenceSource {
    /// `leader`, `corroborated` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Corroborated => "corroborated",
            Self::None => "none",
        }
    }
}

/// How the expected chain id was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainSource {
    /// `EXPECTED_CHAIN_ID`.
    Pinned,
    /// The leader's `eth_chainId`.
    Leader,
    /// The most common chain id among the answering nodes.
    Majority {
        /// Several ids were equally common; the smallest was taken.
        tied: bool,
    },
}

/// The chain every backend is held to this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedChain {
    /// The chain id.
    pub chain_id: u64,
    /// Where it came from.
    pub source: ChainSource,
}

/// What the round made of the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderStatus {
    /// There is no leader in the table.
    Absent,
    /// The leader gave no usable height (no answer, wrong chain or syncing).
    Unavailable,
    /// The leader is current: its height is the reference.
    Current {
        /// The leader's block number.
        height: u64,
    },
    /// The leader trails the corroborated head by more than the tolerance: not followed.
    Stalled {
        /// The leader's block number.
        height: u64,
        /// Blocks behind the corroborated head.
        behind: u64,
    },
    /// The leader claims a height more than the tolerance above the corroborated head.
    Ahead {
        /// The leader's block number.
        height: u64,
        /// Blocks ahead of the corroborated head.
        ahead: u64,
    },
}

impl LeaderStatus {
    /// `absent`, `unavailable`, `current`, `stalled` or `ahead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Unavailable => "unavailable",
            Self::Current { .. } => "current",
            Self::Stalled { .. } => "stalled",
            Self::Ahead { .. } => "ahead",
        }
    }
}

/// How a failed check counts against a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Unhealthy at once.
    Hard,
    /// Unhealthy after `UNHEALTHY_AFTER` consecutive failures.
    Soft,
}

/// Why a check failed. The `Display` form is what is stored and shown; it never holds a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnhealthyReason {
    /// Its stored URL no longer passes validation (a legacy item); it is never probed.
    InvalidUrl(String),
    /// The probe got no block number.
    Probe(ProbeFailure),
    /// Its `eth_chainId` is not the expected chain.
    WrongChain {
        /// The chain id it answered.
        chain_id: u64,
        /// The chain id the round holds backends to.
        expected: u64,
    },
    /// `eth_syncing` says it is syncing.
    Syncing,
    /// It claims a height far above what the others corroborate.
    ImplausiblyAhead {
        /// The block number it answered.
        block: u64,
        /// Blocks above the corroborated head.
        ahead: u64,
        /// The corroborated head.
        head: u64,
    },
    /// It answered but trails the reference by more than the tolerance.
    Lagging {
        /// Blocks behind the reference.
        lag: u64,
        /// The reference block number.
        reference: u64,
        /// The lag allowed (`DIFF_TOLERANCE`).
        tolerance: u64,
    },
}

impl UnhealthyReason {
    /// Hard failures take effect at once, soft ones after `UNHEALTHY_AFTER` in a row.
    pub fn severity(&self) -> Severity {
        match self {
            Self::InvalidUrl(_) | Self::WrongChain { .. } | Self::Syncing => Severity::Hard,
            Self::Probe(
                ProbeFailure::Connect(_) | ProbeFailure::Request(_) | ProbeFailure::HttpStatus(_),
            ) => Severity::Hard,
            Self::Probe(
                ProbeFailure::Timeout(_)
                | ProbeFailure::BodyTooLarge(_)
                | ProbeFailure::InvalidJson
                | ProbeFailure::RpcError { .. }
                | ProbeFailure::InvalidResult(_),
            )
            | Self::ImplausiblyAhead { .. }
            | Self::Lagging { .. } => Severity::Soft,
        }
    }
}

impl std::fmt::Display for UnhealthyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidUrl(why) => write!(f, "invalid url: {why}"),
            Self::Probe(failure) => write!(f, "{failure}"),
            Self::WrongChain { chain_id, expected } => {
                write!(f, "wrong chain: {chain_id}, expected {expected}")
            }
            Self::Syncing => write!(f, "syncing"),
            Self::ImplausiblyAhead { block, ahead, head } => write!(
                f,
                "claims block {block}, {ahead} ahead of corroborated head {head}"
            ),
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

/// A backend's health after a check, with the counters to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    /// Whether it is healthy now.
    pub is_healthy: bool,
    /// Consecutive failed checks, this one included (0 after a pass).
    pub consecutive_failures: u32,
    /// Consecutive passed checks, this one included (0 after a failure).
    pub consecutive_passes: u32,
    /// What `health_reason` shows: why it is unhealthy, that it is recovering, or the failure
    /// it is tolerating; `None` when healthy and the check passed.
    pub health_reason: Option<String>,
}

/// Applies the hysteresis rules to one backend's check (`failure` is `None` for a pass).
pub fn next_health(
    previous: &Backend,
    failure: Option<&UnhealthyReason>,
    policy: &HealthPolicy,
) -> HealthState {
    let unhealthy_after = policy.unhealthy_after.max(1);
    let healthy_after = policy.healthy_after.max(1);
    let never_checked = previous.never_checked();
    match failure {
        None => {
            let passes = previous.consecutive_passes.saturating_add(1);
            let is_healthy = previous.is_healthy || never_checked || passes >= healthy_after;
            let health_reason = (!is_healthy).then(|| match &previous.last_failure {
                Some(last) => format!(
                    "recovering: {passes} of {healthy_after} passing checks (last failure: {last})"
                ),
                None => format!("recovering: {passes} of {healthy_after} passing checks"),
            });
            HealthState {
                is_healthy,
                consecutive_failures: 0,
                consecutive_passes: passes,
                health_reason,
            }
        }
        Some(reason) => {
            let failures = previous.consecutive_failures.saturating_add(1);
            let is_healthy = previous.is_healthy
                && reason.severity() == Severity::Soft
                && failures < unhealthy_after;
            let health_reason = if is_healthy {
                format!("{reason} ({failures} of {unhealthy_after} failures before unhealthy)")
            } else {
                reason.to_string()
            };
            HealthState {
                is_healthy,
                consecutive_failures: failures,
                consecutive_passes: 0,
                health_reason: Some(health_reason),
            }
        }
    }
}

/// What a round found for one backend. `Default` is an empty verdict (for tests that write
/// verdicts directly).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// The backend's URL (the table key).
    pub url: String,
    /// Whether it is the leader.
    pub is_leader: bool,
    /// Whether it is healthy after this round.
    pub is_healthy: bool,
    /// Whether health changed from what the table held.
    pub health_changed: bool,
    /// The block number this round observed, if any.
    pub observed_block: Option<u64>,
    /// The block number to store: the observed one, else the previous one.
    pub stored_block: Option<u64>,
    /// The chain id this round observed, if any.
    pub chain_id: Option<u64>,
    /// The sync state this round observed, if any.
    pub syncing: Option<bool>,
    /// Blocks behind the reference, when both are known (and it is on the expected chain).
    pub lag: Option<u64>,
    /// Signed difference `reference - observed`, for the block-difference metric.
    pub difference: Option<i64>,
    /// Probe duration in milliseconds (`None` for backends that were not probed).
    pub response_time_ms: Option<f64>,
    /// Why this check failed, `None` when it passed (hysteresis may keep a failing backend
    /// healthy for a while).
    pub failure: Option<UnhealthyReason>,
    /// Consecutive failed checks, this one included.
    pub consecutive_failures: u32,
    /// Consecutive passed checks, this one included.
    pub consecutive_passes: u32,
    /// The `health_reason` to store (see [`HealthState::health_reason`]).
    pub health_reason: Option<String>,
}

impl Verdict {
    /// The failure to store as `last_failure`, when this check failed.
    pub fn last_failure(&self) -> Option<String> {
        self.failure.as_ref().map(ToString::to_string)
    }

    /// Healthy although this check failed (inside the hysteresis window).
    pub fn is_tolerating_failure(&self) -> bool {
        self.is_healthy && self.failure.is_some()
    }
}

/// The verdicts of one round and the reference they were measured against.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundAssessment {
    /// The reference height, if anybody usable answered.
    pub reference_height: Option<u64>,
    /// Where the reference came from.
    pub reference_source: ReferenceSource,
    /// The corroborated head (see [`corroborated_head`]).
    pub corroborated_head: Option<u64>,
    /// The chain every backend was held to, when known.
    pub expected_chain: Option<ExpectedChain>,
    /// What the round made of the leader.
    pub leader: LeaderStatus,
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

    /// Whether the leader answered but is not followed because it trails the head.
    pub fn leader_stalled(&self) -> bool {
        matches!(self.leader, LeaderStatus::Stalled { .. })
    }

    /// The backends as they will be stored after this round, checked at `checked_at` (for
    /// routing decisions and for the next round's hysteresis).
    pub fn apply_to(&self, backends: &[Backend], checked_at: OffsetDateTime) -> Vec<Backend> {
        backends
            .iter()
            .zip(&self.verdicts)
            .map(|(backend, verdict)| Backend {
                is_healthy: verdict.is_healthy,
                block_number: verdict.stored_block,
                chain_id: verdict.chain_id.or(backend.chain_id),
                lag_blocks: verdict.lag,
                response_time_ms: verdict.response_time_ms,
                health_reason: verdict.health_reason.clone(),
                last_failure: verdict
                    .last_failure()
                    .or_else(|| backend.last_failure.clone()),
                consecutive_failures: verdict.consecutive_failures,
                consecutive_passes: verdict.consecutive_passes,
                last_checked: Some(iso8601(checked_at)),
                last_checked_ms: Some(epoch_millis(checked_at)),
                ..backend.clone()
            })
            .collect()
    }
}

/// Whether `verdict` records anything its stored row (`previous`, as the round read it) does
/// not already say, so that the row must be written this round. Timing alone is not news, nor
/// is a counter that cannot change a judgement (docs/architecture.md, "News-only row writes").
pub fn verdict_changes_row(previous: &Backend, verdict: &Verdict, policy: &HealthPolicy) -> bool {
    let never_checked = previous.never_checked();
    let counter_news = if previous.is_healthy {
        let limit = policy.unhealthy_after.max(1);
        verdict.consecutive_failures.min(limit) != previous.consecutive_failures.min(limit)
    } else {
        let limit = policy.healthy_after.max(1);
        verdict.consecutive_passes.min(limit) != previous.consecutive_passes.min(limit)
    };
    never_checked
        || counter_news
        || verdict.is_healthy != previous.is_healthy
        || verdict.health_reason != previous.health_reason
        || verdict
            .last_failure()
            .or_else(|| previous.last_failure.clone())
            != previous.last_failure
        || verdict.stored_block != previous.block_number
        || verdict.chain_id.or(previous.chain_id) != previous.chain_id
        || verdict.lag != previous.lag_blocks
}

/// A probe's outcome for one backend, or the reason it was not probed.
pub type Observation = Result<ProbeOutcome, UnhealthyReason>;

/// The corroborated head of a set of candidate heights (`(height, is_leader)`): the highest
/// height `h` among them such that the candidates at `h - tolerance` or above are more than
/// half of all candidates, or exactly half when a leader is among those supporters or no
/// candidate is a leader. The lowest height always qualifies, so the result is `None` only for
/// an empty set. Why: docs/architecture.md, "Health model".
pub fn corroborated_head(candidates: &[(u64, bool)], tolerance: u64) -> Option<u64> {
    let total = candidates.len();
    let leader_present = candidates.iter().any(|(_, is_leader)| *is_leader);
    let mut heights: Vec<u64> = candidates.iter().map(|(height, _)| *height).collect();
    heights.sort_unstable();
    heights.dedup();
    heights.into_iter().rev().find(|&height| {
        let supporters = candidates
            .iter()
            .filter(|(other, _)| other.saturating_add(tolerance) >= height);
        let (support, leader_supports) =
            supporters.fold((0usize, false), |(n, l), (_, is)| (n + 1, l || *is));
        2 * support > total || (2 * support == total && (leader_supports || !leader_present))
    })
}

/// The most common value, ties to the smallest; `None` for no values. The flag says whether
/// there was a tie.
fn majority(values: impl Iterator<Item = u64>) -> Option<(u64, bool)> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for value in values {
        *counts.entry(value).or_default() += 1;
    }
    let best = counts.values().copied().max()?;
    let mut winners = counts.iter().filter(|(_, count)| **count == best);
    let (value, _) = winners.next()?;
    Some((*value, winners.next().is_some()))
}

/// What one observation tells, flattened.
struct Seen<'a> {
    backend: &'a Backend,
    observation: &'a Observation,
    block: Option<u64>,
    chain_id: Option<u64>,
    syncing: Option<bool>,
}

/// Judges every backend. `observations[i]` belongs to `backends[i]`.
///
/// Backends and observations of unequal length are judged pairwise up to the shorter one;
/// callers build both from one list.
pub fn assess(
    backends: &[Backend],
    observations: &[Observation],
    policy: &HealthPolicy,
) -> RoundAssessment {
    let tolerance = policy.tolerance;
    let seen: Vec<Seen<'_>> = backends
        .iter()
        .zip(observations)
        .map(|(backend, observation)| {
            let outcome = observation.as_ref().ok();
            Seen {
                backend,
                observation,
                block: outcome.and_then(|o| o.result.as_ref().ok().copied()),
                chain_id: outcome.and_then(|o| o.chain_id),
                syncing: outcome.and_then(|o| o.syncing),
            }
        })
        .collect();

    let expected_chain = expected_chain(&seen, policy);
    let wrong_chain = |s: &Seen<'_>| match (s.chain_id, expected_chain) {
        (Some(chain_id), Some(expected)) => chain_id != expected.chain_id,
        _ => false,
    };
    let is_candidate =
        |s: &Seen<'_>| s.block.is_some() && !wrong_chain(s) && s.syncing != Some(true);

    let candidates: Vec<(u64, bool)> = seen
        .iter()
        .filter(|s| is_candidate(s))
        .filter_map(|s| s.block.map(|b| (b, s.backend.is_leader)))
        .collect();
    let head = corroborated_head(&candidates, tolerance);

    let leader = leader_status(backends, &candidates, head, tolerance);
    let (reference_height, reference_source) = match (leader, head) {
        (LeaderStatus::Current { height }, _) => (Some(height), ReferenceSource::Leader),
        (_, Some(head)) => (Some(head), ReferenceSource::Corroborated),
        (_, None) => (None, ReferenceSource::None),
    };

    let verdicts = seen
        .iter()
        .map(|s| {
            let on_wrong_chain = wrong_chain(s);
            let (lag, difference) = match (reference_height, s.block, on_wrong_chain) {
                (Some(reference), Some(block), false) => (
                    Some(reference.saturating_sub(block)),
                    Some(signed_difference(reference, block)),
                ),
                _ => (None, None),
            };
            let failure = check(
                s,
                on_wrong_chain,
                expected_chain,
                head,
                reference_height,
                lag,
                tolerance,
            );
            let state = next_health(s.backend, failure.as_ref(), policy);
            Verdict {
                url: s.backend.url.clone(),
                is_leader: s.backend.is_leader,
                is_healthy: state.is_healthy,
                health_changed: state.is_healthy != s.backend.is_healthy,
                observed_block: s.block,
                stored_block: s.block.or(s.backend.block_number),
                chain_id: s.chain_id,
                syncing: s.syncing,
                lag,
                difference,
                response_time_ms: s.observation.as_ref().ok().map(ProbeOutcome::elapsed_ms),
                failure,
                consecutive_failures: state.consecutive_failures,
                consecutive_passes: state.consecutive_passes,
                health_reason: state.health_reason,
            }
        })
        .collect();

    RoundAssessment {
        reference_height,
        reference_source,
        corroborated_head: head,
        expected_chain,
        leader,
        verdicts,
    }
}

fn expected_chain(seen: &[Seen<'_>], policy: &HealthPolicy) -> Option<ExpectedChain> {
    if let Some(chain_id) = policy.expected_chain_id {
        return Some(ExpectedChain {
            chain_id,
            source: ChainSource::Pinned,
        });
    }
    let answered = || seen.iter().filter(|s| s.block.is_some());
    let leader_chain = majority(
        answered()
            .filter(|s| s.backend.is_leader)
            .filter_map(|s| s.chain_id),
    );
    if let Some((chain_id, _)) = leader_chain {
        return Some(ExpectedChain {
            chain_id,
            source: ChainSource::Leader,
        });
    }
    majority(answered().filter_map(|s| s.chain_id)).map(|(chain_id, tied)| ExpectedChain {
        chain_id,
        source: ChainSource::Majority { tied },
    })
}

fn leader_status(
    backends: &[Backend],
    candidates: &[(u64, bool)],
    head: Option<u64>,
    tolerance: u64,
) -> LeaderStatus {
    if !backends.iter().any(|b| b.is_leader) {
        return LeaderStatus::Absent;
    }
    let leader_heights = || {
        candidates
            .iter()
            .filter(|(_, is_leader)| *is_leader)
            .map(|(height, _)| *height)
    };
    let Some(head) = head else {
        return LeaderStatus::Unavailable;
    };
    match leader_heights()
        .filter(|height| *height <= head.saturating_add(tolerance))
        .max()
    {
        Some(height) if head.saturating_sub(height) <= tolerance => {
            LeaderStatus::Current { height }
        }
        Some(height) => LeaderStatus::Stalled {
            height,
            behind: head - height,
        },
        None => match leader_heights().min() {
            Some(height) => LeaderStatus::Ahead {
                height,
                ahead: height - head,
            },
            None => LeaderStatus::Unavailable,
        },
    }
}

fn check(
    seen: &Seen<'_>,
    on_wrong_chain: bool,
    expected_chain: Option<ExpectedChain>,
    head: Option<u64>,
    reference: Option<u64>,
    lag: Option<u64>,
    tolerance: u64,
) -> Option<UnhealthyReason> {
    let outcome = match seen.observation {
        Err(reason) => return Some(reason.clone()),
        Ok(outcome) => outcome,
    };
    if let (true, Some(chain_id), Some(expected)) = (on_wrong_chain, seen.chain_id, expected_chain)
    {
        return Some(UnhealthyReason::WrongChain {
            chain_id,
            expected: expected.chain_id,
        });
    }
    let block = match &outcome.result {
        Err(failure) => return Some(UnhealthyReason::Probe(failure.clone())),
        Ok(block) => *block,
    };
    if seen.syncing == Some(true) {
        return Some(UnhealthyReason::Syncing);
    }
    if let Some(head) = head {
        if block > head.saturating_add(tolerance) {
            return Some(UnhealthyReason::ImplausiblyAhead {
                block,
                ahead: block - head,
                head,
            });
        }
    }
    match (lag, reference) {
        (Some(lag), Some(reference)) if lag > tolerance => Some(UnhealthyReason::Lagging {
            lag,
            reference,
            tolerance,
        }),
        _ => None,
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
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-24 03:00:00 UTC);

    /// A backend's state before the round.
    #[derive(Clone, Copy)]
    enum Was {
        /// Never checked (no history).
        Fresh,
        /// Checked, healthy.
        Healthy,
        /// Checked, unhealthy.
        Unhealthy,
    }

    fn backend(url: &str, is_leader: bool, was: Was) -> Backend {
        let checked = !matches!(was, Was::Fresh);
        Backend {
            url: url.into(),
            is_leader,
            is_healthy: matches!(was, Was::Healthy),
            when_added: "2026-01-01T00:00:00.000000Z".into(),
            last_checked: checked.then(|| "2026-11-24T02:59:00.000000Z".into()),
            last_checked_ms: checked.then_some(1_795_000_000_000),
            ..Backend::default()
        }
    }

    fn leader(was: Was) -> Backend {
        backend("https://leader.example/v3/KEY", true, was)
    }

    fn node(n: u8, was: Was) -> Backend {
        backend(&format!("http://10.0.0.{n}:8545"), false, was)
    }

    /// Answered `block` on chain 1, not syncing.
    fn at(block: u64) -> Observation {
        on_chain(block, 1)
    }

    fn on_chain(block: u64, chain: u64) -> Observation {
        Ok(ProbeOutcome::new(Ok(block), Duration::from_millis(5))
            .with_chain_id(chain)
            .with_syncing(false))
    }

    /// Answered the single request only (a provider that refuses batches).
    fn block_only(block: u64) -> Observation {
        Ok(ProbeOutcome::new(Ok(block), Duration::from_millis(5)))
    }

    fn syncing(block: u64) -> Observation {
        Ok(ProbeOutcome::new(Ok(block), Duration::from_millis(5))
            .with_chain_id(1)
            .with_syncing(true))
    }

    fn failed(failure: ProbeFailure) -> Observation {
        Ok(ProbeOutcome::new(Err(failure), Duration::from_millis(2000)))
    }

    fn timeout() -> Observation {
        failed(ProbeFailure::Timeout(2000))
    }

    fn refused() -> Observation {
        failed(ProbeFailure::Connect(
            "Connection refused (os error 111)".into(),
        ))
    }

    fn policy() -> HealthPolicy {
        HealthPolicy::default()
    }

    fn reason(verdict: &Verdict) -> Option<&str> {
        verdict.health_reason.as_deref()
    }

    fn healthy(round: &RoundAssessment) -> Vec<bool> {
        round.verdicts.iter().map(|v| v.is_healthy).collect()
    }

    #[test]
    fn corroborated_head_rules() {
        let l = true;
        let n = false;
        type Case<'a> = (&'a str, &'a [(u64, bool)], u64, Option<u64>);
        let cases: &[Case<'_>] = &[
            ("nobody", &[], 10, None),
            (
                "one honest node is its own head",
                &[(100, n)],
                10,
                Some(100),
            ),
            ("one leader alone", &[(100, l)], 10, Some(100)),
            (
                "a liar far above two others is outvoted",
                &[(100, n), (101, n), (10_000, n)],
                10,
                Some(101),
            ),
            (
                "a liar above a leader and a node is outvoted",
                &[(100, l), (100, n), (10_000, n)],
                10,
                Some(100),
            ),
            (
                "close heights corroborate the highest",
                &[(100, n), (105, n)],
                10,
                Some(105),
            ),
            (
                "two far apart, no leader: the higher (stall more likely)",
                &[(100, n), (200, n)],
                10,
                Some(200),
            ),
            (
                "two far apart, the leader low: the leader breaks the tie",
                &[(100, l), (200, n)],
                10,
                Some(100),
            ),
            (
                "two far apart, the leader high: the leader breaks the tie",
                &[(200, l), (100, n)],
                10,
                Some(200),
            ),
            (
                "a stalled leader is outvoted by two nodes",
                &[(100, l), (150, n), (151, n)],
                10,
                Some(151),
            ),
            (
                "half and half, no leader: the higher half",
                &[(100, n), (100, n), (130, n), (130, n)],
                10,
                Some(130),
            ),
            (
                "half and half, the leader low: the leader's half",
                &[(100, l), (100, n), (130, n), (130, n)],
                10,
                Some(100),
            ),
            (
                "exactly the tolerance above corroborates",
                &[(100, n), (100, n), (110, n)],
                10,
                Some(110),
            ),
            (
                "one more is alone",
                &[(100, n), (100, n), (111, n)],
                10,
                Some(100),
            ),
            ("zero tolerance", &[(5, n), (5, n), (6, n)], 0, Some(5)),
            (
                "majority of five",
                &[(90, n), (100, n), (100, n), (101, n), (500, n)],
                10,
                Some(101),
            ),
        ];
        for (name, candidates, tolerance, expected) in cases {
            assert_eq!(
                corroborated_head(candidates, *tolerance),
                *expected,
                "{name}"
            );
        }
    }

    #[test]
    fn leader_sets_the_reference_with_the_tolerance_boundary() {
        let backends = [
            leader(Was::Healthy),
            node(1, Was::Unhealthy),
            node(2, Was::Healthy),
        ];
        let round = assess(
            &backends,
            &[at(100), at(90), at(89)],
            &HealthPolicy::immediate(10),
        );
        assert_eq!(round.reference_height, Some(100));
        assert_eq!(round.reference_source, ReferenceSource::Leader);
        assert_eq!(round.leader, LeaderStatus::Current { height: 100 });
        assert_eq!(
            healthy(&round),
            [true, true, false],
            "10 behind passes, 11 fails"
        );
        assert_eq!(
            reason(&round.verdicts[2]),
            Some("lagging 11 blocks behind reference 100 (tolerance 10)")
        );
        assert_eq!(round.verdicts[1].difference, Some(10));
        assert_eq!(round.healthy_count(), 2);
    }

    #[test]
    fn wrong_chain_is_never_healthy_whatever_its_height() {
        let cases: &[(&str, Observation)] = &[
            ("at the head", on_chain(100, 5)),
            ("far above", on_chain(1_000_000, 5)),
            ("behind", on_chain(50, 5)),
        ];
        for (name, observation) in cases {
            let backends = [
                leader(Was::Healthy),
                node(1, Was::Healthy),
                node(2, Was::Healthy),
            ];
            let round = assess(
                &backends,
                &[at(100), at(100), observation.clone()],
                &policy(),
            );
            let verdict = &round.verdicts[2];
            assert!(!verdict.is_healthy, "{name}");
            assert!(verdict.health_changed, "hard: at once ({name})");
            assert_eq!(
                reason(verdict),
                Some("wrong chain: 5, expected 1"),
                "{name}"
            );
            assert_eq!(verdict.lag, None, "{name}");
            assert_eq!(verdict.difference, None, "{name}");
            assert_eq!(verdict.chain_id, Some(5));
            assert_eq!(
                round.corroborated_head,
                Some(100),
                "its height is not used ({name})"
            );
            assert_eq!(round.reference_height, Some(100), "{name}");
            assert_eq!(healthy(&round)[..2], [true, true], "{name}");
        }
    }

    #[test]
    fn the_expected_chain_is_the_leaders_then_the_majoritys_then_pinned() {
        // The leader's chain wins over a majority of nodes.
        let backends = [
            leader(Was::Healthy),
            node(1, Was::Healthy),
            node(2, Was::Healthy),
        ];
        let round = assess(
            &backends,
            &[on_chain(100, 1), on_chain(100, 5), on_chain(100, 5)],
            &policy(),
        );
        assert_eq!(
            round.expected_chain,
            Some(ExpectedChain {
                chain_id: 1,
                source: ChainSource::Leader
            })
        );
        assert_eq!(healthy(&round), [true, false, false]);

        // No leader answer: the majority; the minority is on the wrong chain.
        let round = assess(
            &backends,
            &[timeout(), on_chain(100, 5), on_chain(100, 5)],
            &policy(),
        );
        assert_eq!(
            round.expected_chain,
            Some(ExpectedChain {
                chain_id: 5,
                source: ChainSource::Majority { tied: false }
            })
        );
        let nodes = [
            node(1, Was::Healthy),
            node(2, Was::Healthy),
            node(3, Was::Healthy),
        ];
        let round = assess(
            &nodes,
            &[on_chain(100, 1), on_chain(100, 1), on_chain(90, 5)],
            &policy(),
        );
        assert_eq!(round.expected_chain.map(|c| c.chain_id), Some(1));
        assert_eq!(
            reason(&round.verdicts[2]),
            Some("wrong chain: 5, expected 1")
        );

        // A tie goes to the smallest id and is flagged (the checker logs it).
        let pair = [node(1, Was::Healthy), node(2, Was::Healthy)];
        let round = assess(&pair, &[on_chain(100, 137), on_chain(100, 10)], &policy());
        assert_eq!(
            round.expected_chain,
            Some(ExpectedChain {
                chain_id: 10,
                source: ChainSource::Majority { tied: true }
            })
        );
        assert_eq!(healthy(&round), [false, true]);

        // EXPECTED_CHAIN_ID pins it, even against the leader.
        let pinned = HealthPolicy {
            expected_chain_id: Some(5),
            ..policy()
        };
        let round = assess(
            &backends,
            &[on_chain(100, 1), on_chain(100, 5), on_chain(100, 5)],
            &pinned,
        );
        assert_eq!(
            round.expected_chain,
            Some(ExpectedChain {
                chain_id: 5,
                source: ChainSource::Pinned
            })
        );
        assert_eq!(healthy(&round), [false, true, true]);
        assert_eq!(
            reason(&round.verdicts[0]),
            Some("wrong chain: 1, expected 5")
        );
        assert_eq!(round.leader, LeaderStatus::Unavailable);
        assert_eq!(round.reference_source, ReferenceSource::Corroborated);
    }

    #[test]
    fn an_unknown_chain_or_sync_state_is_not_a_failure() {
        let backends = [
            leader(Was::Healthy),
            node(1, Was::Healthy),
            node(2, Was::Healthy),
        ];
        let round = assess(
            &backends,
            &[block_only(100), at(100), block_only(99)],
            &policy(),
        );
        assert_eq!(healthy(&round), [true, true, true]);
        assert_eq!(round.expected_chain.map(|c| c.chain_id), Some(1));
        assert_eq!(round.verdicts[0].chain_id, None);
        assert!(round.verdicts.iter().all(|v| v.failure.is_none()));
    }

    #[test]
    fn a_syncing_node_is_unhealthy_at_once_and_does_not_set_the_head() {
        let backends = [
            node(1, Was::Healthy),
            node(2, Was::Healthy),
            node(3, Was::Healthy),
        ];
        let round = assess(&backends, &[at(100), at(100), syncing(500)], &policy());
        assert_eq!(healthy(&round), [true, true, false]);
        assert_eq!(reason(&round.verdicts[2]), Some("syncing"));
        assert_eq!(round.corroborated_head, Some(100));
        let round = assess(&backends, &[at(100), at(100), syncing(40)], &policy());
        assert_eq!(reason(&round.verdicts[2]), Some("syncing"));
        assert_eq!(round.verdicts[2].lag, Some(60), "the lag is still shown");
    }

    #[test]
    fn hard_and_soft_failures() {
        use ProbeFailure as F;
        let cases: &[(&str, UnhealthyReason, Severity)] = &[
            (
                "invalid url",
                UnhealthyReason::InvalidUrl("bad".into()),
                Severity::Hard,
            ),
            (
                "refused",
                UnhealthyReason::Probe(F::Connect("refused".into())),
                Severity::Hard,
            ),
            (
                "reset",
                UnhealthyReason::Probe(F::Request("reset".into())),
                Severity::Hard,
            ),
            (
                "status",
                UnhealthyReason::Probe(F::HttpStatus(503)),
                Severity::Hard,
            ),
            (
                "wrong chain",
                UnhealthyReason::WrongChain {
                    chain_id: 5,
                    expected: 1,
                },
                Severity::Hard,
            ),
            ("syncing", UnhealthyReason::Syncing, Severity::Hard),
            (
                "timeout",
                UnhealthyReason::Probe(F::Timeout(2000)),
                Severity::Soft,
            ),
            (
                "too large",
                UnhealthyReason::Probe(F::BodyTooLarge(65536)),
                Severity::Soft,
            ),
            (
                "not json",
                UnhealthyReason::Probe(F::InvalidJson),
                Severity::Soft,
            ),
            (
                "rpc error",
                UnhealthyReason::Probe(F::RpcError {
                    code: -32000,
                    message: "x".into(),
                }),
                Severity::Soft,
            ),
            (
                "bad result",
                UnhealthyReason::Probe(F::InvalidResult("x".into())),
                Severity::Soft,
            ),
            (
                "lagging",
                UnhealthyReason::Lagging {
                    lag: 11,
                    reference: 100,
                    tolerance: 10,
                },
                Severity::Soft,
            ),
            (
                "ahead",
                UnhealthyReason::ImplausiblyAhead {
                    block: 900,
                    ahead: 800,
                    head: 100,
                },
                Severity::Soft,
            ),
        ];
        for (name, failure, severity) in cases {
            assert_eq!(failure.severity(), *severity, "{name}");
            // A healthy backend with no earlier failure: hard leaves at once, soft stays.
            let state = next_health(&node(1, Was::Healthy), Some(failure), &policy());
            assert_eq!(state.is_healthy, *severity == Severity::Soft, "{name}");
            assert_eq!(state.consecutive_failures, 1, "{name}");
            assert_eq!(state.consecutive_passes, 0, "{name}");
        }
    }

    #[test]
    fn soft_failures_need_unhealthy_after_in_a_row() {
        let backends = [
            node(1, Was::Healthy),
            node(2, Was::Healthy),
            node(3, Was::Healthy),
        ];
        let first = assess(&backends, &[at(100), at(100), timeout()], &policy());
        let verdict = &first.verdicts[2];
        assert!(verdict.is_healthy && !verdict.health_changed);
        assert!(verdict.is_tolerating_failure());
        assert_eq!(verdict.consecutive_failures, 1);
        assert_eq!(
            reason(verdict),
            Some("timeout after 2000 ms (1 of 2 failures before unhealthy)")
        );
        assert_eq!(
            verdict.last_failure().as_deref(),
            Some("timeout after 2000 ms")
        );

        let after_first = first.apply_to(&backends, T0);
        let second = assess(&after_first, &[at(101), at(101), timeout()], &policy());
        let verdict = &second.verdicts[2];
        assert!(!verdict.is_healthy && verdict.health_changed);
        assert_eq!(verdict.consecutive_failures, 2);
        assert_eq!(reason(verdict), Some("timeout after 2000 ms"));

        // A pass in between resets the count.
        let recovered = assess(&after_first, &[at(101), at(101), at(101)], &policy());
        assert_eq!(recovered.verdicts[2].consecutive_failures, 0);
        assert!(recovered.verdicts[2].is_healthy);
        assert_eq!(reason(&recovered.verdicts[2]), None);
        let again = assess(
            &recovered.apply_to(&after_first, T0),
            &[at(102), at(102), timeout()],
            &policy(),
        );
        assert!(again.verdicts[2].is_healthy, "1 of 2 again");

        // A one-block reorg or a short lag does not flap the config either.
        let lagging = assess(&backends, &[at(120), at(120), at(105)], &policy());
        assert!(lagging.verdicts[2].is_healthy);
        assert_eq!(
            reason(&lagging.verdicts[2]),
            Some("lagging 15 blocks behind reference 120 (tolerance 10) (1 of 2 failures before unhealthy)")
        );
    }

    #[test]
    fn hard_failures_take_effect_at_once() {
        let backends = [
            node(1, Was::Healthy),
            node(2, Was::Healthy),
            node(3, Was::Healthy),
        ];
        let round = assess(
            &backends,
            &[at(100), failed(ProbeFailure::HttpStatus(503)), refused()],
            &policy(),
        );
        assert_eq!(healthy(&round), [true, false, false]);
        assert_eq!(reason(&round.verdicts[1]), Some("http status 503"));
        assert_eq!(
            reason(&round.verdicts[2]),
            Some("connection failed: Connection refused (os error 111)")
        );
    }

    #[test]
    fn recovery_needs_healthy_after_passes_in_a_row() {
        let mut sick = node(3, Was::Unhealthy);
        sick.last_failure = Some("connection failed: refused".into());
        sick.consecutive_failures = 4;
        let backends = [node(1, Was::Healthy), node(2, Was::Healthy), sick];
        let first = assess(&backends, &[at(100), at(100), at(100)], &policy());
        let verdict = &first.verdicts[2];
        assert!(!verdict.is_healthy && !verdict.health_changed);
        assert_eq!(
            (verdict.consecutive_failures, verdict.consecutive_passes),
            (0, 1)
        );
        assert_eq!(
            reason(verdict),
            Some("recovering: 1 of 2 passing checks (last failure: connection failed: refused)")
        );
        let after_first = first.apply_to(&backends, T0);
        assert_eq!(
            after_first[2].last_failure.as_deref(),
            Some("connection failed: refused")
        );

        let second = assess(&after_first, &[at(101), at(101), at(101)], &policy());
        let verdict = &second.verdicts[2];
        assert!(verdict.is_healthy && verdict.health_changed);
        assert_eq!(reason(verdict), None);
        assert_eq!(verdict.consecutive_passes, 2);

        // A failure while recovering starts over.
        let relapse = assess(&after_first, &[at(101), at(101), timeout()], &policy());
        assert!(!relapse.verdicts[2].is_healthy);
        assert_eq!(relapse.verdicts[2].consecutive_passes, 0);
        assert_eq!(reason(&relapse.verdicts[2]), Some("timeout after 2000 ms"));
    }

    #[test]
    fn a_never_checked_backend_is_healthy_on_its_first_pass() {
        let backends = [leader(Was::Fresh), node(1, Was::Fresh), node(2, Was::Fresh)];
        let round = assess(&backends, &[at(100), at(100), timeout()], &policy());
        assert_eq!(
            healthy(&round),
            [true, true, false],
            "a fresh deployment comes up in one round"
        );
        assert_eq!(reason(&round.verdicts[2]), Some("timeout after 2000 ms"));
        // Once checked, the normal rules apply.
        let next = assess(
            &round.apply_to(&backends, T0),
            &[at(101), at(101), at(101)],
            &policy(),
        );
        assert_eq!(healthy(&next), [true, true, false]);
        assert_eq!(
            reason(&next.verdicts[2]),
            Some("recovering: 1 of 2 passing checks (last failure: timeout after 2000 ms)")
        );
    }

    #[test]
    fn immediate_policy_judges_every_check_at_once() {
        let backends = [node(1, Was::Healthy), node(2, Was::Unhealthy)];
        let round = assess(
            &backends,
            &[timeout(), at(100)],
            &HealthPolicy::immediate(10),
        );
        assert_eq!(healthy(&round), [false, true]);
        assert_eq!(reason(&round.verdicts[0]), Some("timeout after 2000 ms"));
    }

    #[test]
    fn a_stalled_leader_is_reported_not_followed() {
        let backends = [
            leader(Was::Healthy),
            node(1, Was::Healthy),
            node(2, Was::Healthy),
            node(3, Was::Healthy),
        ];
        let round = assess(&backends, &[at(100), at(150), at(151), at(149)], &policy());
        assert_eq!(round.corroborated_head, Some(151));
        assert_eq!(
            round.leader,
            LeaderStatus::Stalled {
                height: 100,
                behind: 51
            }
        );
        assert!(round.leader_stalled());
        assert_eq!(round.reference_source, ReferenceSource::Corroborated);
        assert_eq!(round.reference_height, Some(151));
        assert_eq!(
            healthy(&round),
            [true, true, true, true],
            "the leader's lag is soft"
        );
        assert_eq!(
            reason(&round.verdicts[0]),
            Some("lagging 51 blocks behind reference 151 (tolerance 10) (1 of 2 failures before unhealthy)")
        );
        let next = assess(
            &round.apply_to(&backends, T0),
            &[at(100), at(152), at(152), at(150)],
            &policy(),
        );
        assert!(
            !next.verdicts[0].is_healthy,
            "the leader follows the same rules"
        );
        assert_eq!(healthy(&next)[1..], [true, true, true]);

        // At the boundary the leader is current.
        let round = assess(&backends, &[at(141), at(150), at(151), at(149)], &policy());
        assert_eq!(round.leader, LeaderStatus::Current { height: 141 });
        assert_eq!(round.reference_height, Some(141));
        assert!(!round.leader_stalled());
        let round = assess(&backends, &[at(140), at(150), at(151), at(149)], &policy());
        assert_eq!(
            round.leader,
            LeaderStatus::Stalled {
                height: 140,
                behind: 11
            }
        );
    }

    #[test]
    fn a_lying_node_is_suspect_and_cannot_poison_the_reference() {
        let backends = [
            leader(Was::Healthy),
            node(1, Was::Healthy),
            node(2, Was::Healthy),
        ];
        // A node claiming a height far above the leader and the other node.
        let round = assess(&backends, &[at(100), at(101), at(10_000)], &policy());
        assert_eq!(round.corroborated_head, Some(101));
        assert_eq!(round.reference_height, Some(100));
        assert_eq!(round.leader, LeaderStatus::Current { height: 100 });
        let verdict = &round.verdicts[2];
        assert_eq!(
            verdict.failure.as_ref().map(ToString::to_string).as_deref(),
            Some("claims block 10000, 9899 ahead of corroborated head 101")
        );
        assert!(verdict.is_healthy, "soft: once is tolerated");
        assert_eq!(verdict.lag, Some(0));
        assert_eq!(healthy(&round)[..2], [true, true]);

        // Without a leader, two honest nodes outvote it as well.
        let nodes = [
            node(1, Was::Healthy),
            node(2, Was::Healthy),
            node(3, Was::Healthy),
        ];
        let round = assess(
            &nodes,
            &[at(100), at(100), at(10_000)],
            &HealthPolicy::immediate(10),
        );
        assert_eq!(round.reference_height, Some(100));
        assert_eq!(round.reference_source, ReferenceSource::Corroborated);
        assert_eq!(healthy(&round), [true, true, false]);

        // A leader claiming an uncorroborated height is not followed either.
        let round = assess(
            &backends,
            &[at(10_000), at(100), at(101)],
            &HealthPolicy::immediate(10),
        );
        assert_eq!(
            round.leader,
            LeaderStatus::Ahead {
                height: 10_000,
                ahead: 9899
            }
        );
        assert_eq!(round.reference_height, Some(101));
        assert_eq!(healthy(&round), [false, true, true]);
        assert!(!round.leader_stalled());
    }

    #[test]
    fn a_two_backend_fleet_trusts_the_leader_in_a_tie() {
        let backends = [leader(Was::Healthy), node(1, Was::Healthy)];
        let strict = HealthPolicy::immediate(10);
        // The node far ahead of the leader: the leader breaks the tie.
        let round = assess(&backends, &[at(100), at(200)], &strict);
        assert_eq!(round.reference_height, Some(100));
        assert_eq!(healthy(&round), [true, false]);
        assert_eq!(
            reason(&round.verdicts[1]),
            Some("claims block 200, 100 ahead of corroborated head 100")
        );
        // The node far behind: lagging.
        let round = assess(&backends, &[at(200), at(100)], &strict);
        assert_eq!(healthy(&round), [true, false]);
        // Close together: both healthy, the node ahead has a negative difference.
        let round = assess(&backends, &[at(100), at(102)], &strict);
        assert_eq!(healthy(&round), [true, true]);
        assert_eq!(round.verdicts[1].lag, Some(0));
        assert_eq!(round.verdicts[1].difference, Some(-2));
        // The leader down: the node is its own head.
        let round = assess(&backends, &[timeout(), at(100)], &strict);
        assert_eq!(round.leader, LeaderStatus::Unavailable);
        assert_eq!(round.reference_source, ReferenceSource::Corroborated);
        assert_eq!(healthy(&round), [false, true]);
        // Two nodes and no leader, far apart: the higher one (a stall is likelier).
        let pair = [node(1, Was::Healthy), node(2, Was::Healthy)];
        let round = assess(&pair, &[at(100), at(200)], &strict);
        assert_eq!(round.leader, LeaderStatus::Absent);
        assert_eq!(round.reference_height, Some(200));
        assert_eq!(healthy(&round), [false, true]);
    }

    #[test]
    fn a_one_backend_fleet() {
        let round = assess(&[node(1, Was::Healthy)], &[at(7)], &policy());
        assert_eq!(round.reference_height, Some(7));
        assert_eq!(round.reference_source, ReferenceSource::Corroborated);
        assert_eq!(round.leader, LeaderStatus::Absent);
        assert!(round.verdicts[0].is_healthy);
        let round = assess(&[leader(Was::Fresh)], &[at(7)], &policy());
        assert_eq!(round.reference_source, ReferenceSource::Leader);
        assert!(round.verdicts[0].is_healthy);
    }

    #[test]
    fn without_a_leader_answer_the_corroborated_head_is_the_reference() {
        let backends = [
            leader(Was::Healthy),
            node(1, Was::Healthy),
            node(2, Was::Healthy),
            node(3, Was::Healthy),
        ];
        let mut with_block = backends.clone();
        with_block[0].block_number = Some(100);
        let round = assess(
            &with_block,
            &[timeout(), at(120), at(119), at(105)],
            &HealthPolicy::immediate(10),
        );
        assert_eq!(round.reference_height, Some(120));
        assert_eq!(round.reference_source, ReferenceSource::Corroborated);
        assert_eq!(round.leader, LeaderStatus::Unavailable);
        assert!(!round.leader_stalled(), "no answer is not a stall");
        assert_eq!(
            round.verdicts[0].stored_block,
            Some(100),
            "no answer keeps the old block"
        );
        assert_eq!(round.verdicts[0].response_time_ms, Some(2000.0));
        assert_eq!(
            healthy(&round),
            [false, true, true, false],
            "15 behind the head"
        );
    }

    #[test]
    fn nobody_answers() {
        let backends = [node(1, Was::Healthy)];
        let round = assess(&backends, &[timeout()], &HealthPolicy::immediate(10));
        assert_eq!(round.reference_source, ReferenceSource::None);
        assert_eq!(round.reference_height, None);
        assert_eq!(round.corroborated_head, None);
        assert_eq!(round.expected_chain, None);
        assert!(!round.verdicts[0].is_healthy);
        assert_eq!(round.verdicts[0].lag, None);
        assert_eq!(reason(&round.verdicts[0]), Some("timeout after 2000 ms"));
    }

    #[test]
    fn invalid_urls_are_unhealthy_at_once_without_a_probe() {
        let mut bad = node(1, Was::Healthy);
        bad.url = "http://a;b".into();
        bad.block_number = Some(5);
        let round = assess(
            &[bad],
            &[Err(UnhealthyReason::InvalidUrl("bad".into()))],
            &policy(),
        );
        assert!(!round.verdicts[0].is_healthy);
        assert_eq!(round.verdicts[0].response_time_ms, None);
        assert_eq!(round.verdicts[0].stored_block, Some(5));
        assert_eq!(reason(&round.verdicts[0]), Some("invalid url: bad"));
    }

    #[test]
    fn zero_tolerance_demands_the_reference_height() {
        let backends = [leader(Was::Fresh), node(1, Was::Fresh)];
        let round = assess(&backends, &[at(10), at(9)], &HealthPolicy::immediate(0));
        assert_eq!(healthy(&round), [true, false]);
    }

    #[test]
    fn verdicts_carry_what_the_table_needs() {
        let previous = node(1, Was::Healthy);
        let round = assess(
            std::slice::from_ref(&previous),
            &[on_chain(100, 1)],
            &policy(),
        );
        let verdict = &round.verdicts[0];
        assert_eq!(verdict.chain_id, Some(1));
        assert_eq!(verdict.syncing, Some(false));
        assert_eq!(verdict.last_failure(), None);
        let stored = round.apply_to(&[previous], T0);
        assert_eq!(stored[0].chain_id, Some(1));
        assert_eq!(
            stored[0].last_checked.as_deref(),
            Some("2026-11-24T03:00:00.000000Z")
        );
        assert_eq!(stored[0].consecutive_passes, 1);
    }

    /// Per round: `(is_healthy, health_reason)` of one backend.
    type History = Vec<(bool, Option<String>)>;

    /// Runs `observations` (one per round, for one node beside a leader at block 100) through
    /// rounds twice: storing every verdict, and storing only verdicts that
    /// [`verdict_changes_row`] says change the row. Returns both histories of
    /// `(is_healthy, health_reason)`.
    fn histories(observations: &[Observation], policy: &HealthPolicy) -> (History, History, usize) {
        let start = vec![leader(Was::Fresh), node(1, Was::Fresh)];
        let mut every = start.clone();
        let mut changed_only = start;
        let (mut every_history, mut changed_history, mut writes) = (vec![], vec![], 0);
        for (round, observation) in observations.iter().enumerate() {
            let at_time = T0 + time::Duration::minutes(round as i64);
            let seen = [at(100), observation.clone()];
            let all = assess(&every, &seen, policy);
            every_history.push((
                all.verdicts[1].is_healthy,
                all.verdicts[1].health_reason.clone(),
            ));
            every = all.apply_to(&every, at_time);

            let some = assess(&changed_only, &seen, policy);
            changed_history.push((
                some.verdicts[1].is_healthy,
                some.verdicts[1].health_reason.clone(),
            ));
            let applied = some.apply_to(&changed_only, at_time);
            for (index, verdict) in some.verdicts.iter().enumerate() {
                if verdict_changes_row(&changed_only[index], verdict, policy) {
                    changed_only[index] = applied[index].clone();
                    writes += usize::from(index == 1);
                }
            }
        }
        (every_history, changed_history, writes)
    }

    #[test]
    fn skipping_rows_with_nothing_new_never_changes_a_judgement() {
        // Every sequence of 6 rounds over: at the head, 20 blocks behind, a timeout (soft), a
        // refused connection (hard); with the default policy and a slower one.
        let kinds: [fn() -> Observation; 4] = [
            || at(100),
            || at(80),
            || failed(ProbeFailure::Timeout(2000)),
            refused,
        ];
        let policies = [
            policy(),
            HealthPolicy {
                unhealthy_after: 3,
                healthy_after: 4,
                ..policy()
            },
        ];
        let mut skipped_somewhere = false;
        for policy in &policies {
            for code in 0..4usize.pow(6) {
                let observations: Vec<Observation> = (0..6)
                    .map(|round| kinds[(code / 4usize.pow(round)) % 4]())
                    .collect();
                let (every, changed_only, writes) = histories(&observations, policy);
                assert_eq!(every, changed_only, "sequence {code} under {policy:?}");
                skipped_somewhere |= writes < observations.len();
            }
        }
        assert!(skipped_somewhere, "some rounds had nothing new to write");
    }

    #[test]
    fn a_steady_node_has_nothing_new_and_a_change_is_news() {
        let policy = policy();
        let (_, _, writes) = histories(&vec![at(100); 8], &policy);
        // The first check (healthy at once), then nothing new.
        assert_eq!(writes, 1);

        let mut rows = vec![leader(Was::Healthy), node(1, Was::Healthy)];
        rows[1].block_number = Some(100);
        rows[1].chain_id = Some(1);
        rows[1].lag_blocks = Some(0);
        rows[1].consecutive_passes = 7;
        let steady = assess(&rows, &[at(100), at(100)], &policy);
        assert!(!verdict_changes_row(&rows[1], &steady.verdicts[1], &policy));

        for (what, observation) in [
            ("a new block", at(101)),
            ("a lag", at(99)),
            ("another chain", on_chain(100, 5)),
            ("a tolerated failure", failed(ProbeFailure::Timeout(2000))),
            ("a hard failure", refused()),
        ] {
            let round = assess(&rows, &[at(101), observation], &policy);
            assert!(
                verdict_changes_row(&rows[1], &round.verdicts[1], &policy),
                "{what}"
            );
        }
        let never_checked = node(1, Was::Fresh);
        let first = assess(std::slice::from_ref(&never_checked), &[at(100)], &policy);
        assert!(verdict_changes_row(
            &never_checked,
            &first.verdicts[0],
            &policy
        ));
    }
}
