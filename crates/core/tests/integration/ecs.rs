//! The ECS updater against moto's S3 and ECS, with real S3 event JSON.

use std::time::Duration;

use aws_sdk_ecs::types::TaskDefinitionStatus;
use jsonrpc_proxy::functions::ecs_updater::{config_path_of, EcsUpdater};
use serde_json::{json, Value};

use devstack::testkit::{moto, publish, unique, TestStack};

/// An S3 notification as Lambda delivers it; `raw_key` is URL-encoded as S3 does.
fn s3_event(bucket: &str, raw_key: &str, event_name: &str) -> Value {
    json!({
        "Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": "2026-11-24T03:25:21.123Z",
            "eventName": event_name,
            "userIdentity": {"principalId": "AWS:EXAMPLE"},
            "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {"x-amz-request-id": "EXAMPLE", "x-amz-id-2": "EXAMPLE"},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "nginx-config-created",
                "bucket": {
                    "name": bucket,
                    "ownerIdentity": {"principalId": "EXAMPLE"},
                    "arn": format!("arn:aws:s3:::{bucket}")
                },
                "object": {"key": raw_key, "size": 42, "eTag": "0123456789abcdef", "sequencer": "0A1B2C3D4E5F678901"}
            }
        }]
    })
}

/// Publishes a config and its pointer, as the renderer does.
async fn put(stack: &TestStack, key: &str, text: &str) {
    publish(&stack.bucket(), key, text).await;
}

fn updater_for(stack: &TestStack, ecs: &devstack::EcsService) -> EcsUpdater {
    EcsUpdater {
        ecs: stack.aws.ecs.clone(),
        s3: stack.aws.s3.clone(),
        family: ecs.family.clone(),
        cluster: ecs.cluster_arn.clone(),
        service: ecs.service_name.clone(),
        bucket: stack.bucket_name.clone(),
    }
}

async fn active_revisions(stack: &TestStack, family: &str) -> Vec<String> {
    let listed = stack
        .aws
        .ecs
        .list_task_definitions()
        .family_prefix(family)
        .status(TaskDefinitionStatus::Active)
        .send()
        .await
        .expect("ListTaskDefinitions");
    let mut arns: Vec<String> = listed.task_definition_arns().to_vec();
    arns.sort_by_key(|arn| revision(arn));
    arns
}

fn revision(arn: &str) -> u32 {
    arn.rsplit(':')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

async fn running(stack: &TestStack, updater: &EcsUpdater) -> (String, Option<String>) {
    let services = stack
        .aws
        .ecs
        .describe_services()
        .cluster(&updater.cluster)
        .services(&updater.service)
        .send()
        .await
        .expect("DescribeServices");
    let arn = services.services()[0]
        .task_definition()
        .expect("service has a task definition")
        .to_owned();
    let definition = stack
        .aws
        .ecs
        .describe_task_definition()
        .task_definition(&arn)
        .send()
        .await
        .expect("DescribeTaskDefinition")
        .task_definition
        .expect("task definition in the answer");
    (arn, config_path_of(&definition))
}

#[tokio::test]
async fn configs_roll_out_once_in_order_and_only_if_they_exist() {
    let stack = TestStack::new("ecs").await;
    let family = unique("ecs-family");
    let ecs = moto()
        .create_ecs_service(&unique("ecs-cluster"), &family, &unique("ecs-service"))
        .await
        .unwrap();
    let updater = updater_for(&stack, &ecs);
    let bucket = stack.bucket_name.clone();

    // A key with a space arrives URL-encoded ('+').
    let first_key = "req 1_nginx.conf";
    put(&stack, first_key, "# first\n").await;
    let event = s3_event(&bucket, "req+1_nginx.conf", "ObjectCreated:Put");
    let summary = updater.handle_event(&event).await.unwrap();
    assert_eq!(summary.outcome, "deployed", "{summary:?}");
    let first_path = format!("s3://{bucket}/{first_key}");
    assert_eq!(summary.config.as_deref(), Some(first_path.as_str()));
    let rev2 = summary.task_definition.clone().unwrap();
    assert_eq!(revision(&rev2), 2);
    let (arn, path) = running(&stack, &updater).await;
    assert_eq!(arn, rev2);
    assert_eq!(path.as_deref(), Some(first_path.as_str()));
    // The new revision keeps the template's registrable fields.
    let definition = stack
        .aws
        .ecs
        .describe_task_definition()
        .task_definition(&rev2)
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap();
    let container = &definition.container_definitions()[0];
    assert_eq!(container.name(), Some("nginx"));
    assert_eq!(container.memory(), Some(64));
    assert_eq!(
        definition.network_mode(),
        Some(&aws_sdk_ecs::types::NetworkMode::Bridge)
    );
    assert_eq!(container.environment().len(), 1);
    // Revision 1 is the one the service ran before: kept.
    assert!(summary.deregistered.is_empty(), "{summary:?}");
    assert_eq!(active_revisions(&stack, &family).await.len(), 2);

    // The same event again (S3 delivers at least once): nothing new.
    let again = updater.handle_event(&event).await.unwrap();
    assert_eq!(again.outcome, "duplicate");
    assert_eq!(active_revisions(&stack, &family).await.len(), 2);

    // A newer config: revision 3. Revision 2 (previous) and 3 are kept, and so is revision 1,
    // the template's own: CloudFormation's next update starts from it.
    put(&stack, "req-2_nginx.conf", "# second\n").await;
    let summary = updater
        .handle_event(&s3_event(&bucket, "req-2_nginx.conf", "ObjectCreated:Put"))
        .await
        .unwrap();
    assert_eq!(summary.outcome, "deployed");
    let rev3 = summary.task_definition.clone().unwrap();
    assert_eq!(revision(&rev3), 3);
    assert!(summary.deregistered.is_empty(), "{summary:?}");
    assert_eq!(
        active_revisions(&stack, &family).await,
        vec![ecs.task_definition_arn.clone(), rev2.clone(), rev3.clone()]
    );

    // An older config's event delivered late (rendered before req-3, its event arrives
    // after): the service stays on the newest.
    put(&stack, "old_nginx.conf", "# old\n").await;
    put(&stack, "req-3_nginx.conf", "# third\n").await;
    let summary = updater
        .handle_event(&s3_event(&bucket, "req-3_nginx.conf", "ObjectCreated:Put"))
        .await
        .unwrap();
    assert_eq!(summary.outcome, "deployed");
    let rev4 = summary.task_definition.clone().unwrap();
    assert_eq!(summary.deregistered, vec![rev2.clone()]);
    let stale = updater
        .handle_event(&s3_event(&bucket, "old_nginx.conf", "ObjectCreated:Put"))
        .await
        .unwrap();
    assert_eq!(stale.outcome, "duplicate", "{stale:?}");
    let (arn, path) = running(&stack, &updater).await;
    assert_eq!(arn, rev4);
    assert_eq!(path, Some(format!("s3://{bucket}/req-3_nginx.conf")));

    // An event for an object that is gone: missing, nothing changes.
    put(&stack, "gone_nginx.conf", "# gone\n").await;
    stack
        .aws
        .s3
        .delete_object()
        .bucket(&bucket)
        .key("gone_nginx.conf")
        .send()
        .await
        .unwrap();
    let missing = updater
        .handle_event(&s3_event(&bucket, "gone_nginx.conf", "ObjectCreated:Put"))
        .await
        .unwrap();
    assert_eq!(missing.outcome, "missing");

    // Keys that are not configs, and records that are not creations, are ignored.
    let ignored = updater
        .handle_event(&s3_event(&bucket, "latest.json", "ObjectCreated:Put"))
        .await
        .unwrap();
    assert_eq!(ignored.outcome, "no_config");
    let removed = updater
        .handle_event(&s3_event(
            &bucket,
            "req-3_nginx.conf",
            "ObjectRemoved:Delete",
        ))
        .await
        .unwrap();
    assert_eq!(removed.outcome, "no_config");

    assert_eq!(
        active_revisions(&stack, &family).await,
        vec![ecs.task_definition_arn.clone(), rev3, rev4.clone()]
    );
    assert_eq!(running(&stack, &updater).await.0, rev4);
}

/// Two renders of one second, their events handled in either order, one after the other and
/// at once: the service ends on the newer, the one the pointer names.
#[tokio::test]
async fn two_renders_of_one_second_end_on_the_newer_in_either_order() {
    let stack = TestStack::new("ecs-tie").await;
    let ecs = moto()
        .create_ecs_service(
            &unique("tie-cluster"),
            &unique("tie-family"),
            &unique("tie-service"),
        )
        .await
        .unwrap();
    let updater = updater_for(&stack, &ecs);
    let bucket = stack.bucket_name.clone();
    let newest = |key: &str| Some(format!("s3://{bucket}/{key}"));
    for round in 0..4 {
        // Keys in the order that puts the newer one first when listed (S3 keys carry no order).
        let (older, newer) = (
            format!("z{round}_nginx.conf"),
            format!("a{round}_nginx.conf"),
        );
        put(&stack, &older, &format!("# {older}\n")).await;
        put(&stack, &newer, &format!("# {newer}\n")).await;
        let (old_event, new_event) = (
            s3_event(&bucket, &older, "ObjectCreated:Put"),
            s3_event(&bucket, &newer, "ObjectCreated:Put"),
        );
        match round {
            0 => {
                updater.handle_event(&new_event).await.unwrap();
                let old = updater.handle_event(&old_event).await.unwrap();
                assert_eq!(old.outcome, "duplicate", "{old:?}");
            }
            1 => {
                let old = updater.handle_event(&old_event).await.unwrap();
                assert_eq!(
                    old.config,
                    newest(&newer),
                    "an older event applies the newest"
                );
                updater.handle_event(&new_event).await.unwrap();
            }
            _ => {
                let (a, b) = if round == 2 {
                    tokio::join!(
                        updater.handle_event(&old_event),
                        updater.handle_event(&new_event)
                    )
                } else {
                    let (b, a) = tokio::join!(
                        updater.handle_event(&new_event),
                        updater.handle_event(&old_event)
                    );
                    (a, b)
                };
                a.unwrap();
                b.unwrap();
            }
        }
        assert_eq!(
            running(&stack, &updater).await.1,
            newest(&newer),
            "round {round}"
        );
    }
}

/// The renderer writes the config, then the pointer: an event handled in between waits for
/// the pointer instead of leaving the service where it is.
#[tokio::test]
async fn an_event_ahead_of_its_pointer_waits_for_it() {
    let stack = TestStack::new("ecs-ahead").await;
    let ecs = moto()
        .create_ecs_service(
            &unique("ahead-cluster"),
            &unique("ahead-family"),
            &unique("ahead-service"),
        )
        .await
        .unwrap();
    let updater = updater_for(&stack, &ecs);
    let bucket = stack.bucket();
    put(&stack, "first_nginx.conf", "# first\n").await;
    updater
        .handle_event(&s3_event(
            &stack.bucket_name,
            "first_nginx.conf",
            "ObjectCreated:Put",
        ))
        .await
        .unwrap();

    let pointer = bucket.read_pointer().await.unwrap().unwrap();
    let text = "# second\n";
    bucket
        .put_config("second_nginx.conf", text, pointer.sequence + 1)
        .await
        .unwrap();
    let event = s3_event(&stack.bucket_name, "second_nginx.conf", "ObjectCreated:Put");
    let handled = tokio::spawn({
        let updater = updater.clone();
        async move { updater.handle_event(&event).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!handled.is_finished(), "the updater waits for the pointer");
    bucket
        .put_pointer(&jsonrpc_proxy::aws::config_bucket::ConfigPointer {
            key: "second_nginx.conf".into(),
            sequence: pointer.sequence + 1,
            ..pointer
        })
        .await
        .unwrap();
    let summary = handled.await.unwrap().unwrap();
    assert_eq!(summary.outcome, "deployed", "{summary:?}");
    assert_eq!(
        running(&stack, &updater).await.1,
        Some(format!("s3://{}/second_nginx.conf", stack.bucket_name))
    );
}

/// Every notification lost: the scheduled event moves the service to the pointer's config,
/// and moves it back when something else put it on an older one.
#[tokio::test]
async fn the_schedule_heals_the_service_without_any_notification() {
    let stack = TestStack::new("ecs-heal").await;
    let ecs = moto()
        .create_ecs_service(
            &unique("heal-cluster"),
            &unique("heal-family"),
            &unique("heal-service"),
        )
        .await
        .unwrap();
    let updater = updater_for(&stack, &ecs);
    let scheduled = json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-11-24T03:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/schedule"], "detail": {}
    });
    let nothing = updater.handle_event(&scheduled).await.unwrap();
    assert_eq!(
        nothing.outcome, "no_config",
        "nothing rendered yet: {nothing:?}"
    );

    put(&stack, "one_nginx.conf", "# one\n").await;
    let healed = updater.handle_event(&scheduled).await.unwrap();
    assert_eq!(healed.outcome, "deployed", "{healed:?}");
    let older = healed.task_definition.clone().unwrap();
    put(&stack, "two_nginx.conf", "# two\n").await;
    assert_eq!(
        updater.handle_event(&scheduled).await.unwrap().outcome,
        "deployed"
    );
    // Someone moves the service back to the older revision.
    stack
        .aws
        .ecs
        .update_service()
        .cluster(&updater.cluster)
        .service(&updater.service)
        .task_definition(&older)
        .send()
        .await
        .unwrap();
    let healed = updater.handle_event(&scheduled).await.unwrap();
    assert_eq!(healed.outcome, "deployed", "{healed:?}");
    assert_eq!(
        running(&stack, &updater).await.1,
        Some(format!("s3://{}/two_nginx.conf", stack.bucket_name))
    );
    assert_eq!(
        updater.handle_event(&scheduled).await.unwrap().outcome,
        "duplicate"
    );
    assert!(
        active_revisions(&stack, &ecs.family)
            .await
            .contains(&ecs.task_definition_arn),
        "the template's revision stays active"
    );
}
