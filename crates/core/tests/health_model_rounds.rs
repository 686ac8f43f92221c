//! The health model over several rounds.
//!
//! First purely (the verdicts of one round are applied to the backends the next round
//! judges, as the table would hold them): the routing plan does not flap on one slow answer,
//! follows hard failures at once, and comes back only after enough passes. Then for real: one
//! `health_checker` invocation of several rounds against moto, the CloudWatch recorder and
//! anvil nodes, with the hysteresis counters going through DynamoDB.

use std::time::{Duration, Instant, SystemTime};

use devstack::testkit::{b, n, s, Item, TestStack};
use devstack::{Anvil, AnvilOptions};
use jsonrpc_proxy::functions::health_checker::{HealthChecker, RoundSchedule};
use jsonrpc_proxy::health::judgement::{assess, HealthPolicy, Observation, RoundAssessment};
use jsonrpc_proxy::health::probe::{ProbeFailure, ProbeOutcome};
use jsonrpc_proxy::model::backend::Backend;
use jsonrpc_proxy::render::routing::RoutingPlan;
use time::OffsetDateTime;

// ---------------------------------------------------------------------------------------
// Pure scenarios
// ---------------------------------------------------------------------------------------

fn fleet() -> Vec<Backend> {
    [
        "https://leader.example/v3/KEY",
        "http://10.0.0.1:8545",
        "http://10.0.0.2:8545",
        "http://10.0.0.3:8545",
    ]
    .iter()
    .enumerate()
    .map(|(i, url)| Backend {
        url: (*url).into(),
        is_leader: i == 0,
        ..Backend::default()
    })
    .collect()
}

fn at(block: u64) -> Observation {
    Ok(ProbeOutcome::new(Ok(block), Duration::from_millis(3))
        .with_chain_id(1)
        .with_syncing(false))
}

fn failing(failure: ProbeFailure) -> Observation {
    Ok(ProbeOutcome::new(Err(failure), Duration::from_millis(2000)))
}

/// Runs rounds in sequence; returns every round and the backends after the last.
fn rounds(
    backends: Vec<Backend>,
    observations: &[Vec<Observation>],
    policy: &HealthPolicy,
) -> (Vec<RoundAssessment>, Vec<Backend>) {
    let mut backends = backends;
    let mut done = Vec::new();
    let mut at = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for observed in observations {
        let round = assess(&backends, observed, policy);
        at += Duration::from_secs(15);
        backends = round.apply_to(&backends, at);
        done.push(round);
    }
    (done, backends)
}

fn plan_of(round: &RoundAssessment, backends: &[Backend]) -> String {
    RoutingPlan::from_backends(&round.apply_to(backends, OffsetDateTime::UNIX_EPOCH)).fingerprint()
}

#[test]
fn one_slow_answer_does_not_change_the_routing_plan() {
    let policy = HealthPolicy::default();
    let timeout = || failing(ProbeFailure::Timeout(2000));
    let (done, after) = rounds(
        fleet(),
        &[
            vec![at(100), at(100), at(100), at(100)],
            vec![at(101), at(101), timeout(), at(101)],
            vec![at(102), at(102), at(102), at(102)],
            vec![at(103), at(103), at(93), at(103)], // 10 behind: still within tolerance
            vec![at(104), at(104), at(92), at(104)], // one round 12 behind (a reorg, a hiccup)
            vec![at(105), at(105), at(105), at(105)],
        ],
        &policy,
    );
    assert!(done.iter().all(|r| r.healthy_count() == 4));
    assert!(done.iter().skip(1).all(|r| !r.any_health_changed()));
    let plans: Vec<String> = done.iter().map(|r| plan_of(r, &fleet())).collect();
    assert!(
        plans.windows(2).all(|w| w[0] == w[1]),
        "the plan never changed"
    );
    assert_eq!(
        done[1].verdicts[2].health_reason.as_deref(),
        Some("timeout after 2000 ms (1 of 2 failures before unhealthy)")
    );
    assert_eq!(after[2].health_reason, None);
    assert_eq!(
        after[2].last_failure.as_deref(),
        Some("lagging 12 blocks behind reference 104 (tolerance 10)")
    );
}

#[test]
fn a_dead_node_leaves_at_once_and_comes_back_after_two_passes() {
    let policy = HealthPolicy::default();
    let refused = || {
        failing(ProbeFailure::Connect(
            "Connection refused (os error 111)".into(),
        ))
    };
    let (done, _) = rounds(
        fleet(),
        &[
            vec![at(100), at(100), at(100), at(100)],
            vec![at(101), refused(), at(101), at(101)],
            vec![at(102), refused(), at(102), at(102)],
            vec![at(103), at(103), at(103), at(103)],
            vec![at(104), at(104), at(104), at(104)],
        ],
        &policy,
    );
    let node: Vec<(bool, Option<&str>)> = done
        .iter()
        .map(|r| {
            (
                r.verdicts[1].is_healthy,
                r.verdicts[1].health_reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        node,
        [
            (true, None),
            (false, Some("connection failed: Connection refused (os error 111)")),
            (false, Some("connection failed: Connection refused (os error 111)")),
            (
                false,
                Some("recovering: 1 of 2 passing checks (last failure: connection failed: Connection refused (os error 111))")
            ),
            (true, None),
        ]
    );
}

#[test]
fn a_node_that_stays_slow_leaves_after_two_rounds() {
    let policy = HealthPolicy::default();
    let (done, after) = rounds(
        fleet(),
        &[
            vec![at(100), at(100), at(100), at(100)],
            vec![at(120), at(120), at(120), at(100)],
            vec![at(140), at(140), at(140), at(100)],
            vec![at(160), at(160), at(160), at(100)],
        ],
        &policy,
    );
    let healthy: Vec<bool> = done.iter().map(|r| r.verdicts[3].is_healthy).collect();
    assert_eq!(healthy, [true, true, false, false]);
    assert_eq!(after[3].consecutive_failures, 3);
    assert_eq!(after[3].lag_blocks, Some(60));
}

#[test]
fn a_leader_that_stalls_is_reported_every_round_and_leaves_like_a_node() {
    let policy = HealthPolicy::default();
    let (done, after) = rounds(
        fleet(),
        &[
            vec![at(100), at(100), at(100), at(100)],
            vec![at(100), at(130), at(130), at(129)],
            vec![at(100), at(160), at(160), at(161)],
        ],
        &policy,
    );
    let stalled: Vec<bool> = done.iter().map(RoundAssessment::leader_stalled).collect();
    assert_eq!(stalled, [false, true, true]);
    assert_eq!(done[2].reference_height, Some(161));
    assert!(!after[0].is_healthy);
    assert!(after[1..].iter().all(|b| b.is_healthy));
    // The plan: nodes only, no backup leader.
    let plan = RoutingPlan::from_backends(&after);
    assert_eq!(plan.primaries.len(), 3);
    assert!(plan.backup.is_none());
}

#[test]
fn a_node_on_another_chain_is_never_routed() {
    let policy = HealthPolicy::default();
    let other_chain = |block| {
        Ok(ProbeOutcome::new(Ok(block), Duration::from_millis(3))
            .with_chain_id(5)
            .with_syncing(false))
    };
    let (done, after) = rounds(
        fleet(),
        &[
            vec![at(100), at(100), at(100), other_chain(100)],
            vec![at(101), at(101), at(101), other_chain(9_999)],
            vec![at(102), at(102), at(102), other_chain(102)],
        ],
        &policy,
    );
    assert!(done.iter().all(|r| !r.verdicts[3].is_healthy));
    assert!(!after[3].is_healthy);
    assert_eq!(
        after[3].health_reason.as_deref(),
        Some("wrong chain: 5, expected 1")
    );
    assert_eq!(after[3].chain_id, Some(5));
    let plan = RoutingPlan::from_backends(&after);
    assert!(plan
        .targets()
        .all(|(t, _)| !t.url.as_str().contains("10.0.0.3")));
}

// ---------------------------------------------------------------------------------------
// One real invocation of several rounds
// ---------------------------------------------------------------------------------------

struct Real {
    stack: TestStack,
    checker: HealthChecker,
}

/// A checker with the function's health policy, 1.5 s probes and 4 writes in flight.
fn checker(stack: &TestStack, schedule: RoundSchedule) -> HealthChecker {
    stack
        .checker()
        .probe_timeout(Duration::from_millis(1500))
        .policy(HealthPolicy::default())
        .schedule(schedule)
        .write_concurrency(4)
        .build()
}

async fn real(schedule: RoundSchedule) -> Real {
    let stack = TestStack::new("health-model").await;
    let checker = checker(&stack, schedule);
    Real { stack, checker }
}

impl Real {
    /// The values of a stack-level metric, in the order sent.
    fn stack_metric(&self, name: &str) -> Vec<f64> {
        self.stack
            .metric_calls()
            .iter()
            .flat_map(|call| call["metric_data"].as_array().cloned().unwrap_or_default())
            .filter(|point| point["MetricName"] == name)
            .filter_map(|point| point["Value"].as_f64())
            .collect()
    }
}

fn healthy(item: &Item) -> bool {
    b(item, "is_healthy") == Some(true)
}

fn anvil(chain_id: Option<u64>) -> Anvil {
    tokio::task::block_in_place(|| {
        Anvil::start(AnvilOptions {
            block_time: None,
            chain_id,
        })
    })
    .expect("anvil")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invocation_runs_its_rounds_at_the_interval_with_hysteresis_through_the_table() {
    let real = real(RoundSchedule {
        rounds: 3,
        interval: Duration::from_secs(1),
    })
    .await;
    let leader = anvil(None);
    let (a, b) = (anvil(None), anvil(None));
    let other = anvil(Some(5));
    for node in [&leader, &a, &b, &other] {
        node.mine(100).expect("mine");
    }
    real.stack.add(&leader.url(), true).await;
    for node in [&a, &b, &other] {
        real.stack.add(&node.url(), false).await;
    }

    // A fresh deployment: healthy in the first round, the wrong chain never.
    let started = Instant::now();
    let summary = real
        .checker
        .run_invocation(Some(SystemTime::now() + Duration::from_secs(60)))
        .await
        .expect("invocation");
    let took = started.elapsed();
    assert_eq!((summary.round, summary.rounds), (3, 3));
    assert!(
        took >= Duration::from_secs(2),
        "rounds start 1 s apart: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(summary.healthy, 3);
    assert_eq!(summary.expected_chain_id, Some(31_337));
    assert_eq!(summary.leader, "current");
    let items = real.stack.items().await;
    let wrong = &items[&other.url()];
    assert!(!healthy(wrong));
    assert_eq!(
        s(wrong, "health_reason"),
        Some("wrong chain: 5, expected 31337")
    );
    assert_eq!(n(wrong, "chain_id"), Some(5.0));
    // After the first round nothing was new for any row (the counters change no judgement: a
    // healthy node's passes, an unhealthy node's failures), so the rows are the first
    // round's snapshot (ROW_REFRESH_SECS is 300).
    assert_eq!(n(wrong, "consecutive_failures"), Some(1.0));
    assert_eq!(n(&items[&a.url()], "consecutive_passes"), Some(1.0));
    assert_eq!((summary.written, summary.unchanged), (0, 4), "{summary:?}");
    assert_eq!(real.stack_metric("Leader stalled"), [0.0, 0.0, 0.0]);

    // The leader stalls while the nodes move on; b falls behind with it.
    a.mine(50).expect("mine");
    let one_round = checker(&real.stack, RoundSchedule::default());
    let summary = one_round.run_invocation(None).await.expect("round");
    assert_eq!((summary.round, summary.rounds), (1, 1));
    // Candidates: leader 100, a 150, b 100. The majority (leader and b) holds 100.
    assert_eq!(summary.corroborated_head, Some(100));
    assert_eq!(summary.leader, "current");
    let items = real.stack.items().await;
    let a_item = &items[&a.url()];
    assert!(healthy(a_item), "soft: one implausible answer is tolerated");
    assert_eq!(
        s(a_item, "health_reason"),
        Some("claims block 150, 50 ahead of corroborated head 100 (1 of 2 failures before unhealthy)")
    );
    assert_eq!(n(a_item, "consecutive_failures"), Some(1.0));

    // b catches up with a: now the leader is outvoted and stalled.
    b.mine(50).expect("mine");
    let summary = one_round.run_invocation(None).await.expect("round");
    assert_eq!(summary.corroborated_head, Some(150));
    assert_eq!(summary.leader, "stalled");
    assert_eq!(summary.reference_source, "corroborated");
    assert_eq!(summary.reference_block, Some(150));
    assert_eq!(real.stack_metric("Leader stalled").last(), Some(&1.0));
    let items = real.stack.items().await;
    let leader_item = &items[&leader.url()];
    assert!(healthy(leader_item), "the leader's lag is soft too");
    assert_eq!(
        s(leader_item, "health_reason"),
        Some("lagging 50 blocks behind reference 150 (tolerance 10) (1 of 2 failures before unhealthy)")
    );
    assert!(healthy(&items[&a.url()]));
    assert_eq!(s(&items[&a.url()], "health_reason"), None);
    assert_eq!(
        s(&items[&a.url()], "last_failure"),
        Some("claims block 150, 50 ahead of corroborated head 100")
    );

    // Still stalled: the leader leaves.
    let summary = one_round.run_invocation(None).await.expect("round");
    assert_eq!(summary.healthy, 2);
    let items = real.stack.items().await;
    assert!(!healthy(&items[&leader.url()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_that_would_not_finish_before_the_deadline_is_not_started() {
    let real = real(RoundSchedule {
        rounds: 4,
        interval: Duration::from_secs(2),
    })
    .await;
    let node = anvil(None);
    real.stack.add(&node.url(), false).await;
    // Room for the first round only: the next would start in 2 s and needs 1.5 s + 5 s.
    let started = Instant::now();
    let summary = real
        .checker
        .run_invocation(Some(SystemTime::now() + Duration::from_secs(6)))
        .await
        .expect("invocation");
    assert_eq!((summary.round, summary.rounds), (1, 4));
    // It returns instead of sleeping toward a round it cannot finish (the deadline is 6 s away).
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(real.stack_metric("Number of healthy ETH nodes"), [1.0]);
}
