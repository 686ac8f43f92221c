//! Concurrency: backends added and removed while health checks run, overlapping health checks
//! on one table, and ECS updates of two configs at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonrpc_proxy::functions::admin::{add_backend, remove_backend};
use jsonrpc_proxy::functions::ecs_updater::EcsUpdater;
use jsonrpc_proxy::model::backend::epoch_millis;
use serde_json::json;
use time::format_description::well_known::Iso8601;
use time::OffsetDateTime;

use crate::faults::{ecs_state, put_config};
use devstack::testkit::{b, int, moto, s, unique, Answer, Node, TestStack};

use crate::{checker, figure};

// States of a URL in the add/remove test.
const NONE: u8 = 0;
const ADDING: u8 = 1;
const ADDED: u8 = 2;
const REMOVING: u8 = 3;
const REMOVED: u8 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_added_and_removed_during_rounds_are_never_lost_or_recreated() {
    const URLS: usize = 45;
    let env = TestStack::with_faults("adv-churn").await;
    let node = Node::start().await;
    node.set("leader", Answer::Height(500));
    env.add(&node.named("leader"), true).await;
    let names: Vec<String> = (0..URLS).map(|i| format!("n{i}")).collect();
    for name in &names {
        node.set(name, Answer::Height(500));
    }
    let urls: Vec<String> = names.iter().map(|name| node.named(name)).collect();
    let states: Arc<Vec<AtomicU8>> = Arc::new((0..URLS).map(|_| AtomicU8::new(NONE)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(40);

    // Two health-check loops (overlapping rounds) until the churn is done. (Run in this task:
    // a round's future is not `Send`-general enough for `tokio::spawn`.)
    let checker_loop = |checker: jsonrpc_proxy::functions::health_checker::HealthChecker,
                        done: Arc<AtomicBool>| async move {
        let (mut rounds, mut skipped, mut written) = (0, 0, 0);
        while !done.load(Ordering::SeqCst) && Instant::now() < deadline && rounds < 60 {
            let summary = checker.run_round().await.expect("round");
            rounds += 1;
            skipped += summary.skipped;
            written += summary.written;
        }
        (rounds, skipped, written)
    };
    // Everything that writes goes through the proxy, one request at a time: moto does not
    // apply a conditional write atomically (DynamoDB does), see FaultProxy::set_serialized.
    env.moto_proxy().set_serialized(true);
    let first_loop = checker_loop(checker(&env).build(), done.clone());
    let second_loop = checker_loop(checker(&env).build(), done.clone());

    // A monitor: a URL removed before a scan started is absent from it; a URL added before a
    // scan started, and not being removed by its end, is present.
    let monitor = {
        let store = env.store();
        let states = states.clone();
        let urls = urls.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut scans = 0;
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline && scans < 400 {
                let before: Vec<u8> = states.iter().map(|s| s.load(Ordering::SeqCst)).collect();
                let present: BTreeSet<String> = store
                    .scan_all()
                    .await
                    .expect("scan")
                    .into_iter()
                    .map(|b| b.url)
                    .collect();
                let after: Vec<u8> = states.iter().map(|s| s.load(Ordering::SeqCst)).collect();
                for (i, url) in urls.iter().enumerate() {
                    if before[i] == REMOVED {
                        assert!(!present.contains(url), "removed {url} reappeared");
                    }
                    if before[i] == ADDED && after[i] == ADDED {
                        assert!(present.contains(url), "added {url} is missing");
                    }
                }
                scans += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            scans
        })
    };

    // The churn: add every URL through add_backend; remove every third one soon after.
    let store =
        jsonrpc_proxy::aws::store::BackendStore::new(env.clients().dynamodb.clone(), &env.table);
    let trigger = env.trigger();
    let churn = async {
        let (mut adds, mut removes) = (0, 0);
        for i in 0..URLS {
            states[i].store(ADDING, Ordering::SeqCst);
            let event = json!({"body": json!({"url": urls[i], "is_leader": false}).to_string()});
            let answer = add_backend(&store, &event, OffsetDateTime::now_utc()).await;
            assert_eq!(answer.status_code, 201, "{answer:?}");
            states[i].store(ADDED, Ordering::SeqCst);
            adds += 1;
            if i % 3 == 2 {
                let victim = i - 1;
                states[victim].store(REMOVING, Ordering::SeqCst);
                let event = json!({"body": json!({"url": urls[victim]}).to_string()});
                let answer = remove_backend(&store, &trigger, &event).await;
                assert_eq!(answer.status_code, 200, "{answer:?}");
                states[victim].store(REMOVED, Ordering::SeqCst);
                removes += 1;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // Let the rounds overlap the final state a little, then stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        done.store(true, Ordering::SeqCst);
        (adds, removes)
    };
    let (first, second, (adds, removes)) = tokio::join!(first_loop, second_loop, churn);
    let rounds = first.0 + second.0;
    let skipped = first.1 + second.1;
    let written = first.2 + second.2;
    let scans = monitor.await.expect("monitor");

    // One more round, then the table is exactly the added-and-not-removed URLs, each checked
    // and with the fields add_backend gave it.
    checker(&env)
        .clients(&env.aws)
        .build()
        .run_round()
        .await
        .expect("final round");
    let items = env.items().await;
    let expected: BTreeSet<String> = urls
        .iter()
        .enumerate()
        .filter(|(i, _)| states[*i].load(Ordering::SeqCst) == ADDED)
        .map(|(_, url)| url.clone())
        .chain(std::iter::once(node.named("leader")))
        .collect();
    let actual: BTreeSet<String> = items.keys().cloned().collect();
    assert_eq!(
        actual, expected,
        "the table holds exactly the added, unremoved backends"
    );
    for (url, item) in &items {
        assert_eq!(b(item, "is_healthy"), Some(true), "{url}");
        assert!(s(item, "when_added").is_some(), "{url} lost when_added");
        assert_eq!(
            b(item, "is_leader"),
            Some(*url == node.named("leader")),
            "{url}"
        );
        assert!(
            int(item, "last_checked_ms").is_some(),
            "{url} never checked"
        );
    }
    figure("churn: rounds", rounds);
    figure("churn: adds / removes", format!("{adds} / {removes}"));
    figure(
        "churn: writes / skipped (removed meanwhile or newer round)",
        format!("{written} / {skipped}"),
    );
    figure("churn: monitor scans", scans);
    assert!(rounds >= 4, "the rounds overlapped the churn: {rounds}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_rounds_leave_every_item_consistent_and_time_ordered() {
    const ITERATIONS: u64 = 12;
    let env = TestStack::with_faults("adv-overlap").await;
    let node = Node::start().await;
    let names = ["leader", "edge", "current", "near", "down"];
    for name in names {
        node.set(name, Answer::Height(1));
    }
    env.add(&node.named("leader"), true).await;
    for name in &names[1..] {
        env.add(&node.named(name), false).await;
    }
    // Both rounds go through the proxy, one request at a time: moto does not apply a
    // conditional write atomically (DynamoDB does), see FaultProxy::set_serialized.
    env.moto_proxy().set_serialized(true);
    let first = checker(&env).build();
    let second = checker(&env).build();

    // Watches last_checked_ms of every item: it never goes back.
    let done = Arc::new(AtomicBool::new(false));
    let regressions = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let store = env.store();
        let done = done.clone();
        let regressions = regressions.clone();
        tokio::spawn(async move {
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            let mut scans = 0;
            while !done.load(Ordering::SeqCst) && scans < 2000 {
                for backend in store.scan_all().await.expect("scan") {
                    let stamp = backend.last_checked_ms.unwrap_or(0);
                    let previous = last.insert(backend.url.clone(), stamp).unwrap_or(0);
                    if stamp < previous {
                        regressions.fetch_add(1, Ordering::SeqCst);
                        eprintln!(
                            "{}: last_checked_ms went back from {previous} to {stamp}",
                            backend.url
                        );
                    }
                }
                scans += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            scans
        })
    };

    let (mut whole_round_iterations, mut previous_stamp) = (0, 0);
    for iteration in 0..ITERATIONS {
        // The leader answers base, then base + 1, …: the two rounds see different references,
        // so "edge" (base - 10) is healthy in one round (lag 10) and lagging in the other (11).
        let base = 1000 + 100 * iteration;
        node.set("leader", Answer::Counting(base));
        node.set("edge", Answer::Height(base - 10));
        node.set("current", Answer::Height(base));
        node.set("near", Answer::Height(base - 5));
        node.set(
            "down",
            if iteration % 2 == 0 {
                Answer::Status(503)
            } else {
                Answer::Height(base)
            },
        );

        let (a, b_round) = tokio::join!(first.run_round(), second.run_round());
        a.expect("first round");
        b_round.expect("second round");

        let items = env.items().await;
        let leader = &items[&node.named("leader")];
        let stamp = int(leader, "last_checked_ms").expect("stamp");
        assert!(
            stamp > previous_stamp,
            "iteration {iteration}: stamps move forward"
        );
        previous_stamp = stamp;
        let mut references = BTreeSet::new();
        for (url, item) in &items {
            // Every item carries the newest round's stamp, and its ISO time agrees with it.
            assert_eq!(int(item, "last_checked_ms"), Some(stamp), "{url}: {item:?}");
            let iso = OffsetDateTime::parse(
                s(item, "last_checked").expect("last_checked"),
                &Iso8601::DEFAULT,
            )
            .expect("ISO time");
            assert_eq!(
                epoch_millis(iso),
                stamp,
                "{url}: last_checked and last_checked_ms disagree"
            );
            // Each item's fields agree with one round's verdict.
            let healthy = b(item, "is_healthy").expect("is_healthy");
            let reason = s(item, "health_reason");
            assert_eq!(
                healthy,
                reason.is_none(),
                "{url}: healthy iff no reason: {item:?}"
            );
            let (failures, passes) = (
                int(item, "consecutive_failures").unwrap_or(0),
                int(item, "consecutive_passes").unwrap_or(0),
            );
            assert!(
                if healthy {
                    failures == 0 && passes >= 1
                } else {
                    failures >= 1 && passes == 0
                },
                "{url}: counters disagree with the verdict: {item:?}"
            );
            let name = url.rsplit('/').next().unwrap_or_default();
            let block = int(item, "block_number");
            let lag = int(item, "lag_blocks");
            let reference = match (name, block, lag) {
                ("down", _, _) if iteration % 2 == 0 => {
                    assert_eq!(reason, Some("http status 503"), "{url}");
                    assert_eq!(lag, None, "{url}: no lag without an answer");
                    continue;
                }
                (_, Some(block), Some(lag)) => {
                    assert!(
                        healthy == (lag <= 10),
                        "{url}: lag {lag} but healthy {healthy}"
                    );
                    block + lag
                }
                _ => panic!("{url}: an answered check has a block and a lag: {item:?}"),
            };
            assert!(
                reference == base || reference == base + 1,
                "{url}: reference {reference} was seen by neither round (base {base})"
            );
            references.insert(reference);
        }
        // Whether all items came from one round (with equal stamps, each item is still whole,
        // but the two rounds' writes may interleave).
        if references.len() == 1 {
            whole_round_iterations += 1;
        }
    }
    done.store(true, Ordering::SeqCst);
    let scans = watcher.await.expect("watcher");
    assert_eq!(
        regressions.load(Ordering::SeqCst),
        0,
        "last_checked_ms never goes back"
    );
    figure("overlap: pairs of concurrent rounds", ITERATIONS);
    figure(
        "overlap: iterations whose items all came from one round",
        whole_round_iterations,
    );
    figure("overlap: watcher scans", scans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ecs_updates_end_on_the_newest_config_and_never_deregister_it() {
    const PAIRS: usize = 4;
    let env = TestStack::with_faults("adv-ecsrace").await;
    let family = unique("adv-race-family");
    let service = moto()
        .create_ecs_service(
            &unique("adv-race-cluster"),
            &family,
            &unique("adv-race-service"),
        )
        .await
        .expect("ecs service");
    let updater = EcsUpdater {
        ecs: env.aws.ecs.clone(),
        s3: env.aws.s3.clone(),
        family: service.family.clone(),
        cluster: service.cluster_arn.clone(),
        service: service.service_name.clone(),
        bucket: env.bucket_name.clone(),
    };
    let bucket = env.bucket_name.clone();
    let mut violations = Vec::new();
    for pair in 0..PAIRS {
        // Two renders of one second; their events are handled at the same time, the older
        // one first or second.
        let (older, newer) = (
            format!("p{pair}-old_nginx.conf"),
            format!("p{pair}-new_nginx.conf"),
        );
        put_config(&env, &older).await;
        put_config(&env, &newer).await;
        let object = |key: &str| jsonrpc_proxy::functions::ecs_updater::ConfigObject {
            bucket: bucket.clone(),
            key: key.to_owned(),
            event_time: String::new(),
        };
        let (old_object, new_object) = (object(&older), object(&newer));
        let (a, b_result) = if pair % 2 == 0 {
            tokio::join!(
                updater.reconcile(Some(&old_object)),
                updater.reconcile(Some(&new_object))
            )
        } else {
            let (b_result, a) = tokio::join!(
                updater.reconcile(Some(&new_object)),
                updater.reconcile(Some(&old_object))
            );
            (a, b_result)
        };
        let outcomes = (
            a.map(|s| s.outcome).unwrap_or("error"),
            b_result.map(|s| s.outcome).unwrap_or("error"),
        );
        let (running, config, active) = ecs_state(&env.aws.ecs, &updater).await;
        if !active.contains(&running) {
            violations.push(format!(
                "pair {pair} {outcomes:?}: the running revision {running} is deregistered"
            ));
        }
        if config.as_deref() != Some(format!("s3://{bucket}/{newer}").as_str()) {
            violations.push(format!(
                "pair {pair} {outcomes:?}: the service runs {config:?}, not the newest config"
            ));
        }
    }
    figure("concurrent ECS updates: pairs", PAIRS);
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Renders at once while the table changes, half of them forced (they always publish):
/// each publication replaces the pointer it read, so the published renders have distinct
/// sequences, the pointer holds the highest, and it renders the table as it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_renders_publish_in_one_order_and_end_on_the_last_change() {
    const RENDERS: usize = 8;
    let env = TestStack::new("adv-renders").await;
    let renderer = env.renderer(8080, "/tmp/jrp-adv-renders");
    let node = Node::start().await;
    let renders = (0..RENDERS).map(|i| {
        let (env, renderer, url) = (&env, &renderer, node.named(&format!("n{i}")));
        async move {
            env.add(&url, false).await;
            env.set_healthy(&url, true).await;
            renderer
                .render_and_publish(&format!("race-{i}"), i % 2 == 0)
                .await
        }
    });
    let summaries = futures::future::join_all(renders).await;
    let bucket = env.bucket();
    let mut sequences = BTreeSet::new();
    for summary in summaries {
        let summary = summary.expect("every render publishes or finds its text published");
        if !summary.written {
            continue;
        }
        let sequence = bucket
            .head(&summary.key)
            .await
            .expect("head")
            .and_then(|info| info.sequence)
            .expect("a published config carries its sequence");
        assert!(
            sequences.insert(sequence),
            "sequence {sequence} published twice"
        );
    }
    let pointer = env
        .pointer_is_consistent("after the race")
        .await
        .expect("pointer");
    assert_eq!(Some(&pointer.sequence), sequences.last(), "{sequences:?}");
    assert_eq!(
        pointer.plan_fingerprint,
        env.table_plan().await,
        "the last change is rendered"
    );
    assert!(
        sequences.len() >= RENDERS / 2,
        "every forced render publishes: {sequences:?}"
    );
    figure("concurrent renders: publications", sequences.len());
}
