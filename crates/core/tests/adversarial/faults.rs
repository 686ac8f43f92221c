//! Failing dependencies: the AWS endpoint answers 5xx, throttles, drops connections or loses
//! answers in the middle of a health check, a render and an ECS update. Each function returns
//! an error (so Lambda retries), leaves no half-written state, and the next run heals
//! everything, a lost renderer invocation included.
//!
//! The SDK retries throttling, 5xx and I/O errors itself (standard mode, 3 attempts), so the
//! faults below are persistent unless a case is about a transient one; the attempts the SDK
//! made are counted at the proxy.

use std::time::Duration;

use aws_sdk_ecs::types::TaskDefinitionStatus;
use devstack::{Fault, FaultRule};
use jsonrpc_proxy::aws::config_bucket::POINTER_KEY;
use jsonrpc_proxy::functions::config_renderer::RenderError;
use jsonrpc_proxy::functions::ecs_updater::{config_path_of, EcsUpdater};
use jsonrpc_proxy::functions::health_checker::HealthCheckError;
use serde_json::{json, Value};

use devstack::testkit::{b, int, moto, unique, Answer, Node, TestStack};

use crate::{checker, figure};

const SCAN: &str = "DynamoDB_20120810.Scan";
const UPDATE_ITEM: &str = "DynamoDB_20120810.UpdateItem";

/// Snapshot of the fields a round writes, per URL.
async fn health_fields(env: &TestStack) -> Vec<(String, Option<bool>, Option<u64>, Option<u64>)> {
    env.items()
        .await
        .into_iter()
        .map(|(url, item)| {
            (
                url,
                b(&item, "is_healthy"),
                int(&item, "block_number"),
                int(&item, "last_checked_ms"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_faults_fail_the_round_leave_whole_items_and_heal() {
    let env = TestStack::with_faults("adv-hc").await;
    let node = Node::start().await;
    for name in ["leader", "a", "b", "c"] {
        node.set(name, Answer::Height(100));
    }
    let (leader, c_url) = (node.named("leader"), node.named("c"));
    env.add(&leader, true).await;
    for name in ["a", "b", "c"] {
        env.add(&node.named(name), false).await;
    }
    let checker = checker(&env).build();
    let renderer = env.renderer(8080, "/tmp/jrp-adversarial");
    let proxy = &env.moto_proxy();
    let mut faults = 0;

    // A clean start: all healthy, first render requested and done.
    let round = checker.run_round().await.expect("clean round");
    assert_eq!(round.healthy, 4);
    assert_eq!(
        round.render_requested.as_deref(),
        Some("no config rendered yet")
    );
    renderer
        .render_and_publish("hc-render-1", false)
        .await
        .expect("render");
    let round = checker.run_round().await.expect("clean round");
    assert_eq!(round.render_requested, None, "{round:?}");

    // 1. A transient throttle (2 of 3 attempts): the SDK's retries absorb it.
    proxy.forget_requests();
    proxy.inject(FaultRule::new(Fault::Throttle).operation(SCAN).times(2));
    let round = checker
        .run_round()
        .await
        .expect("the SDK retries a transient throttle");
    assert_eq!(round.healthy, 4);
    assert_eq!(
        proxy.attempts(SCAN),
        4,
        "2 throttled + 1 answered, then the clients table's Scan"
    );
    faults += proxy.faults_injected();
    figure(
        "transient Scan throttle: SDK attempts",
        proxy.attempts(SCAN) - 1,
    );
    proxy.clear();

    // Node c fails from now on.
    node.set("c", Answer::Status(503));

    // 2. Scan throttled persistently: error, nothing probed, written, published or triggered.
    let before = health_fields(&env).await;
    let metric_calls = env.metric_calls().len();
    proxy.forget_requests();
    proxy.inject(FaultRule::new(Fault::Throttle).operation(SCAN));
    let error = checker
        .run_round()
        .await
        .expect_err("a throttled scan fails the round");
    assert!(matches!(error, HealthCheckError::Scan(_)), "{error}");
    assert!(
        error.to_string().contains("ProvisionedThroughputExceeded"),
        "{error}"
    );
    let scan_attempts = proxy.attempts(SCAN);
    assert_eq!(scan_attempts, 3, "standard retry mode: 3 attempts");
    assert_eq!(proxy.attempts(UPDATE_ITEM), 0);
    assert_eq!(proxy.attempts("Lambda.Invoke"), 0);
    assert_eq!(health_fields(&env).await, before, "nothing written");
    assert_eq!(env.metric_calls().len(), metric_calls, "nothing published");
    faults += proxy.faults_injected();
    figure("persistent Scan throttle: SDK attempts", scan_attempts);
    proxy.clear();

    // 3. c's write fails (500, persistently); the others are written whole, c stays whole.
    proxy.forget_requests();
    proxy.inject(
        FaultRule::new(Fault::InternalError)
            .operation(UPDATE_ITEM)
            .body_contains(&c_url),
    );
    let c_before = env.items().await[&c_url].clone();
    let error = checker
        .run_round()
        .await
        .expect_err("a failed write fails the round");
    match &error {
        HealthCheckError::Writes { failed, total, .. } => assert_eq!((*failed, *total), (1, 4)),
        other => panic!("expected a write failure, got {other}"),
    }
    let writes_attempted = proxy
        .requests()
        .iter()
        .filter(|r| r.operation == UPDATE_ITEM && r.fault.is_some())
        .count();
    assert_eq!(writes_attempted, 3, "c's write was attempted 3 times");
    let items = env.items().await;
    assert_eq!(items[&c_url], c_before, "c's item is untouched");
    let stamps: Vec<u64> = items
        .iter()
        .filter(|(url, _)| **url != c_url)
        .map(|(_, item)| int(item, "last_checked_ms").unwrap())
        .collect();
    assert!(
        stamps
            .iter()
            .all(|s| *s == stamps[0] && Some(*s) > int(&c_before, "last_checked_ms")),
        "the other three carry this round's stamp: {stamps:?}"
    );
    // The plan the round computed (c unhealthy) differs from the pointer: a render was
    // requested, and the Lambda service accepted it, but no renderer ran (moto runs no code).
    assert_eq!(proxy.attempts("Lambda.Invoke"), 1);
    faults += proxy.faults_injected();
    figure("UpdateItem 500 on one item: SDK attempts", writes_attempted);
    proxy.clear();
    env.pointer_is_consistent("after a failed write").await;

    // 4. The renderer trigger fails (Lambda 500, persistently): the writes stand, the error
    // is returned.
    proxy.forget_requests();
    proxy.inject(FaultRule::new(Fault::InternalError).operation("Lambda.Invoke"));
    let error = checker
        .run_round()
        .await
        .expect_err("a failed trigger fails the round");
    assert!(matches!(error, HealthCheckError::Trigger(_)), "{error}");
    let invoke_attempts = proxy.attempts("Lambda.Invoke");
    assert_eq!(invoke_attempts, 3);
    assert_eq!(
        b(&env.items().await[&c_url], "is_healthy"),
        Some(false),
        "c's verdict is written now"
    );
    faults += proxy.faults_injected();
    figure("Lambda Invoke 500: SDK attempts", invoke_attempts);
    proxy.clear();

    // 5. Two renders were lost (one accepted and never run, one refused). The next round still
    // asks for one, because the table's plan differs from latest.json.
    let pointer = env
        .pointer_is_consistent("before healing")
        .await
        .expect("pointer");
    assert_ne!(pointer.plan_fingerprint, env.table_plan().await);
    let round = checker.run_round().await.expect("clean round");
    assert_eq!(
        round.render_requested.as_deref(),
        Some("routing plan changed"),
        "the lost render is requested again"
    );
    renderer
        .render_and_publish("hc-render-2", false)
        .await
        .expect("render");
    let pointer = env
        .pointer_is_consistent("after healing")
        .await
        .expect("pointer");
    assert_eq!(pointer.plan_fingerprint, env.table_plan().await);
    assert_eq!(pointer.backends.len(), 3, "a, b and the leader as backup");
    let round = checker.run_round().await.expect("clean round");
    assert_eq!(round.render_requested, None, "healed: {round:?}");

    // 6. The pointer cannot be read (connection dropped, persistently): a render is requested
    // to be safe; the round succeeds.
    proxy.forget_requests();
    proxy.inject(
        FaultRule::new(Fault::Drop)
            .operation("S3.GetObject")
            .path_contains(POINTER_KEY),
    );
    let round = checker
        .run_round()
        .await
        .expect("an unreadable pointer is not an error");
    assert_eq!(
        round.render_requested.as_deref(),
        Some("config pointer unreadable")
    );
    let get_attempts = proxy.attempts("S3.GetObject");
    assert_eq!(get_attempts, 3, "dropped connections are retried");
    faults += proxy.faults_injected();
    figure("GetObject dropped connection: SDK attempts", get_attempts);
    proxy.clear();

    // 7. Every UpdateItem takes effect but its answer is lost: the SDK's retry finds its own
    // write (the condition on last_checked_ms fails) and counts it skipped; every item holds
    // the round's verdict.
    proxy.forget_requests();
    node.set("c", Answer::Height(100));
    proxy.inject(
        FaultRule::new(Fault::LoseResponse)
            .operation(UPDATE_ITEM)
            .times(4),
    );
    let round = checker
        .run_round()
        .await
        .expect("lost answers of applied writes are not errors");
    assert_eq!(round.skipped, 4, "{round:?}");
    let items = env.items().await;
    let stamps: Vec<u64> = items
        .values()
        .map(|item| int(item, "last_checked_ms").unwrap())
        .collect();
    assert!(stamps.iter().all(|s| *s == stamps[0]), "{stamps:?}");
    assert_eq!(b(&items[&c_url], "is_healthy"), Some(true), "c is back");
    figure(
        "UpdateItem answers lost after the write: SDK attempts",
        proxy.attempts(UPDATE_ITEM),
    );
    faults += proxy.faults_injected();
    proxy.clear();

    // 8. The endpoint goes away entirely (every connection dropped): the round fails at the
    // scan; then it comes back and the next round succeeds.
    proxy.forget_requests();
    proxy.inject(FaultRule::new(Fault::Drop));
    let before = health_fields(&env).await;
    let error = checker
        .run_round()
        .await
        .expect_err("no endpoint, no round");
    assert!(matches!(error, HealthCheckError::Scan(_)), "{error}");
    assert_eq!(health_fields(&env).await, before);
    faults += proxy.faults_injected();
    proxy.clear();

    // 9. CloudWatch fails (500, persistently): the writes and the render check still happen,
    // the error is returned.
    let metrics = &env.metrics_proxy();
    metrics.forget_requests();
    metrics.inject(FaultRule::new(Fault::InternalError));
    proxy.forget_requests();
    let error = checker
        .run_round()
        .await
        .expect_err("failed metrics fail the round");
    assert!(matches!(error, HealthCheckError::Metrics(_)), "{error}");
    assert_eq!(proxy.attempts(UPDATE_ITEM), 4, "the writes happened");
    assert_eq!(metrics.attempts("PutMetricData"), 3);
    figure(
        "PutMetricData 500: SDK attempts",
        metrics.attempts("PutMetricData"),
    );
    faults += metrics.faults_injected();
    metrics.clear();

    // Healed: a clean round; the rendered plan is the table's.
    let round = checker.run_round().await.expect("clean round");
    assert_eq!(round.healthy, 4);
    if round.render_requested.is_some() {
        renderer
            .render_and_publish("hc-render-3", false)
            .await
            .expect("render");
    }
    let pointer = env.pointer_is_consistent("end").await.expect("pointer");
    assert_eq!(pointer.plan_fingerprint, env.table_plan().await);
    assert_eq!(
        checker.run_round().await.expect("clean").render_requested,
        None
    );
    figure("health check: faults injected", faults);
    let _ = leader;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_faults_never_leave_a_pointer_to_a_missing_or_different_config() {
    let env = TestStack::with_faults("adv-render").await;
    let urls = [
        "http://10.1.0.1:8545",
        "http://10.1.0.2:8545",
        "https://leader.example/v3/k",
    ];
    for url in urls {
        env.add(url, url.starts_with("https")).await;
        env.set_healthy(url, true).await;
    }
    let renderer = env.renderer(8080, "/tmp/jrp-adversarial");
    let proxy = &env.moto_proxy();
    let mut faults = 0;

    let first = renderer
        .render_and_publish("render-1", false)
        .await
        .expect("clean render");
    assert!(first.written);
    let p1 = env.pointer_is_consistent("clean").await.expect("pointer");

    // The table changes: b is out.
    env.set_healthy(urls[1], false).await;
    let keys_before = env.object_keys().await;

    // 1. Scan fails: nothing written.
    proxy.forget_requests();
    proxy.inject(FaultRule::new(Fault::InternalError).operation(SCAN));
    let error = renderer
        .render_and_publish("render-2", false)
        .await
        .expect_err("scan fails");
    assert!(matches!(error, RenderError::Store(_)), "{error}");
    // Three attempts for each table (backends and clients, read together).
    assert_eq!(proxy.attempts(SCAN), 6);
    assert_eq!(env.object_keys().await, keys_before);
    assert_eq!(
        env.pointer_is_consistent("scan failed").await,
        Some(p1.clone())
    );
    faults += proxy.faults_injected();
    proxy.clear();

    // 2. The config's PutObject fails: no config, the pointer is unchanged.
    proxy.forget_requests();
    proxy.inject(
        FaultRule::new(Fault::InternalError)
            .operation("S3.PutObject")
            .path_contains("_nginx.conf"),
    );
    let error = renderer
        .render_and_publish("render-3", false)
        .await
        .expect_err("config put fails");
    assert!(matches!(error, RenderError::Bucket(_)), "{error}");
    let put_attempts = proxy.attempts("S3.PutObject");
    assert_eq!(put_attempts, 3);
    assert!(!env
        .object_keys()
        .await
        .contains(&"render-3_nginx.conf".to_owned()));
    assert_eq!(
        env.pointer_is_consistent("config put failed").await,
        Some(p1.clone())
    );
    faults += proxy.faults_injected();
    figure("config PutObject 500: SDK attempts", put_attempts);
    proxy.clear();

    // 3. The pointer's PutObject is throttled (SlowDown): the config exists, the pointer
    // still names the previous one, which exists. Lambda's retry (same request id, so the
    // same key) completes it.
    proxy.forget_requests();
    proxy.inject(
        FaultRule::new(Fault::Throttle)
            .operation("S3.PutObject")
            .path_contains(POINTER_KEY),
    );
    let error = renderer
        .render_and_publish("render-4", false)
        .await
        .expect_err("pointer put fails");
    assert!(error.to_string().contains("SlowDown"), "{error}");
    assert_eq!(
        proxy.attempts("S3.PutObject"),
        4,
        "1 config + 3 pointer attempts"
    );
    assert!(env
        .object_keys()
        .await
        .contains(&"render-4_nginx.conf".to_owned()));
    assert_eq!(
        env.pointer_is_consistent("pointer put failed").await,
        Some(p1.clone())
    );
    faults += proxy.faults_injected();
    proxy.clear();
    let retried = renderer
        .render_and_publish("render-4", false)
        .await
        .expect("the retry completes");
    assert!(retried.written);
    assert_eq!(retried.key, "render-4_nginx.conf");
    let p4 = env.pointer_is_consistent("retried").await.expect("pointer");
    assert_eq!(p4.key, "render-4_nginx.conf");
    assert_eq!(p4.plan_fingerprint, env.table_plan().await);

    // 4. The table changes again and the config's PutObject takes effect but every answer is
    // lost: an error; the config exists, the pointer names the previous one. The retry heals.
    env.set_healthy(urls[1], true).await;
    proxy.forget_requests();
    proxy.inject(
        FaultRule::new(Fault::LoseResponse)
            .operation("S3.PutObject")
            .path_contains("_nginx.conf"),
    );
    renderer
        .render_and_publish("render-5", false)
        .await
        .expect_err("lost answers");
    assert_eq!(
        env.pointer_is_consistent("config answers lost").await,
        Some(p4.clone())
    );
    faults += proxy.faults_injected();
    proxy.clear();
    renderer
        .render_and_publish("render-5", false)
        .await
        .expect("the retry completes");
    let p5 = env.pointer_is_consistent("retried").await.expect("pointer");
    assert_eq!(p5.key, "render-5_nginx.conf");

    // 5. The pointer's first answer is lost (written, answer dropped once): the SDK retries
    // and the render succeeds.
    env.set_healthy(urls[0], false).await;
    proxy.forget_requests();
    proxy.inject(
        FaultRule::new(Fault::LoseResponse)
            .operation("S3.PutObject")
            .path_contains(POINTER_KEY)
            .nth(1),
    );
    renderer
        .render_and_publish("render-6", false)
        .await
        .expect("a transient loss is retried");
    faults += proxy.faults_injected();
    proxy.clear();
    let p6 = env
        .pointer_is_consistent("transient")
        .await
        .expect("pointer");
    assert_eq!(p6.key, "render-6_nginx.conf");

    // 6. Nothing changed, and the HEAD that confirms the pointed config fails: an error, and
    // nothing is written.
    let keys_before = env.object_keys().await;
    proxy.inject(FaultRule::new(Fault::Drop).operation("S3.HeadObject"));
    renderer
        .render_and_publish("render-7", false)
        .await
        .expect_err("head fails");
    faults += proxy.faults_injected();
    proxy.clear();
    assert_eq!(env.object_keys().await, keys_before);
    let unchanged = renderer
        .render_and_publish("render-7", false)
        .await
        .expect("clean");
    assert!(!unchanged.written, "same text, nothing written");
    assert_eq!(
        env.pointer_is_consistent("end")
            .await
            .expect("pointer")
            .plan_fingerprint,
        env.table_plan().await
    );
    figure("render: faults injected", faults);
}

/// An S3 notification for `key`.
fn s3_event(bucket: &str, key: &str) -> Value {
    json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-24T03:25:21.123Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": {"key": key, "size": 10}}
    }]})
}

/// The service's revision and config, and the family's active revisions.
pub async fn ecs_state(
    ecs: &aws_sdk_ecs::Client,
    updater: &EcsUpdater,
) -> (String, Option<String>, Vec<String>) {
    let services = ecs
        .describe_services()
        .cluster(&updater.cluster)
        .services(&updater.service)
        .send()
        .await
        .expect("describe services");
    let running = services.services()[0]
        .task_definition()
        .expect("task definition")
        .to_owned();
    let definition = ecs
        .describe_task_definition()
        .task_definition(&running)
        .send()
        .await
        .expect("describe task definition")
        .task_definition
        .expect("definition");
    let mut active = Vec::new();
    let mut token = None;
    for _ in 0..100 {
        let page = ecs
            .list_task_definitions()
            .family_prefix(&updater.family)
            .status(TaskDefinitionStatus::Active)
            .set_next_token(token.take())
            .send()
            .await
            .expect("list task definitions");
        active.extend(page.task_definition_arns().iter().cloned());
        match page.next_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_owned()),
            _ => break,
        }
    }
    (running, config_path_of(&definition), active)
}

/// The invariant: the revision the service runs is active.
pub async fn assert_running_is_active(
    ecs: &aws_sdk_ecs::Client,
    updater: &EcsUpdater,
    context: &str,
) {
    let (running, _, active) = ecs_state(ecs, updater).await;
    assert!(
        active.contains(&running),
        "{context}: the service runs {running}, which was deregistered (active: {active:?})"
    );
}

/// Publishes a config and its pointer, as the renderer does.
pub async fn put_config(env: &TestStack, key: &str) {
    devstack::testkit::publish(&env.bucket(), key, &format!("# {key}\n")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_update_faults_never_leave_the_service_on_a_deregistered_revision() {
    let env = TestStack::with_faults("adv-ecs").await;
    let family = unique("adv-family");
    let service = moto()
        .create_ecs_service(&unique("adv-cluster"), &family, &unique("adv-service"))
        .await
        .expect("ecs service");
    let updater = EcsUpdater {
        ecs: env.clients().ecs.clone(),
        s3: env.clients().s3.clone(),
        family: service.family.clone(),
        cluster: service.cluster_arn.clone(),
        service: service.service_name.clone(),
        bucket: env.bucket_name.clone(),
    };
    let ecs = env.aws.ecs.clone();
    let proxy = &env.moto_proxy();
    let bucket = env.bucket_name.clone();
    let path = |key: &str| format!("s3://{bucket}/{key}");
    let mut faults = 0;

    put_config(&env, "c1_nginx.conf").await;
    let deployed = updater
        .handle_event(&s3_event(&bucket, "c1_nginx.conf"))
        .await
        .expect("clean deploy");
    assert_eq!(deployed.outcome, "deployed");

    // (operation, fault) pairs hit in the middle of a deploy, each on a newer config.
    let cases = [
        ("UpdateService", Fault::InternalError),
        ("UpdateService", Fault::LoseResponse),
        ("DeregisterTaskDefinition", Fault::Throttle),
        ("RegisterTaskDefinition", Fault::Drop),
        ("ListTaskDefinitions", Fault::InternalError),
        ("S3.HeadObject", Fault::Throttle),
        ("DescribeServices", Fault::Drop),
    ];
    for (index, (operation, fault)) in cases.iter().enumerate() {
        let key = format!("c{}_nginx.conf", index + 2);
        put_config(&env, &key).await;
        let event = s3_event(&bucket, &key);
        let (running_before, config_before, _) = ecs_state(&ecs, &updater).await;

        proxy.forget_requests();
        proxy.inject(FaultRule::new(fault.clone()).operation(operation));
        let error = updater
            .handle_event(&event)
            .await
            .expect_err("a faulted deploy is an error, so Lambda retries");
        let attempts = proxy.attempts(operation);
        faults += proxy.faults_injected();
        proxy.clear();
        let context = format!("{operation} {fault:?}");
        assert_running_is_active(&ecs, &updater, &context).await;
        let (running, config, _) = ecs_state(&ecs, &updater).await;
        // The service is on the old config, or (when the update took effect before the fault)
        // on the new one; never anywhere else.
        assert!(
            config == config_before || config.as_deref() == Some(path(&key).as_str()),
            "{context}: the service runs {config:?}"
        );
        if !matches!(
            operation,
            &"UpdateService" | &"DeregisterTaskDefinition" | &"ListTaskDefinitions"
        ) {
            assert_eq!(running, running_before, "{context}: {error}");
        }
        figure(&format!("ECS deploy, {context}: SDK attempts"), attempts);

        // Lambda's retry of the same event heals.
        let retried = updater
            .handle_event(&event)
            .await
            .expect("the retry succeeds");
        assert!(
            matches!(retried.outcome, "deployed" | "duplicate"),
            "{context}: {retried:?}"
        );
        let (running, config, active) = ecs_state(&ecs, &updater).await;
        assert_eq!(config.as_deref(), Some(path(&key).as_str()), "{context}");
        assert!(active.contains(&running), "{context}");
    }
    figure("ECS update: faults injected", faults);
}

/// The round reads the table page by page (250 items here) and probes each page as it arrives:
/// while the second page is held back, the first page's backends are already being probed.
/// A scan that fails after its first page fails the round with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_starts_with_the_first_scan_page() {
    use futures::stream::StreamExt;
    let env = TestStack::with_faults("adv-pages").await;
    let node = Node::start().await;
    node.set("leader", Answer::Height(100));
    env.add(&node.named("leader"), true).await;
    let names: Vec<String> = (0..600).map(|i| format!("n{i}")).collect();
    for name in &names {
        node.set(name, Answer::Height(100));
    }
    futures::stream::iter(&names)
        .for_each_concurrent(8, |name| {
            let url = node.named(name);
            let env = &env;
            async move { env.add(&url, false).await }
        })
        .await;
    let proxy = &env.moto_proxy();
    proxy.forget_requests();
    let hold = Duration::from_secs(3);
    proxy.inject(FaultRule::new(Fault::Delay(hold)).operation(SCAN).nth(2));
    let checker = checker(&env).scan_page_items(250).build();
    let round = tokio::spawn(async move { checker.run_round().await });

    // The second page is requested and held back for 3 s…
    for _ in 0..400 {
        if proxy.attempts(SCAN) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.attempts(SCAN), 2, "the second page was requested");
    // …meanwhile the first page's 250 backends are probed (one batch request each).
    let mut probed = node.requests();
    for _ in 0..50 {
        if probed >= 250 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        probed = node.requests();
    }
    assert_eq!(
        proxy.attempts(SCAN),
        2,
        "still holding the second page back (the check above must finish within {hold:?})"
    );
    assert!(
        probed >= 250,
        "only {probed} probes during the held-back page"
    );
    let summary = round.await.expect("join").expect("round");
    assert_eq!((summary.backends, summary.healthy), (601, 601));
    assert_eq!(
        proxy.attempts(SCAN),
        4,
        "pages of 250, 250 and 101, then the clients table's Scan"
    );
    proxy.clear();

    // The third page fails for good: the round fails, nothing is written.
    let before = env.items().await;
    proxy.forget_requests();
    proxy.inject(FaultRule::new(Fault::InternalError).operation(SCAN).skip(2));
    let error = crate::checker(&env)
        .scan_page_items(250)
        .build()
        .run_round()
        .await
        .expect_err("a failed page fails the round");
    assert!(matches!(error, HealthCheckError::Scan(_)), "{error}");
    assert_eq!(proxy.attempts(UPDATE_ITEM), 0);
    assert_eq!(env.items().await, before, "nothing written");
    proxy.clear();
}
