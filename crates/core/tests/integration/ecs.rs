//! The ECS updater against moto's S3 and ECS, with real S3 event JSON.

use std::time::Duration;

use aws_sdk_ecs::types::TaskDefinitionStatus;
use aws_sdk_s3::primitives::ByteStream;
use jsonrpc_proxy::ecs_updater::{config_path_of, EcsUpdater};
use serde_json::{json, Value};

use devstack::testkit::{moto, unique, TestStack};

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

async fn put(stack: &TestStack, key: &str, text: &str) {
    stack
        .aws
        .s3
        .put_object()
        .bucket(&stack.bucket_name)
        .key(key)
        .body(ByteStream::from(text.as_bytes().to_vec()))
        .send()
        .await
        .unwrap();
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
        .unwrap();
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
        .unwrap();
    let arn = services.services()[0].task_definition().unwrap().to_owned();
    let definition = stack
        .aws
        .ecs
        .describe_task_definition()
        .task_definition(&arn)
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap();
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
    let updater = EcsUpdater {
        ecs: stack.aws.ecs.clone(),
        s3: stack.aws.s3.clone(),
        family: ecs.family.clone(),
        cluster: ecs.cluster_arn.clone(),
        service: ecs.service_name.clone(),
    };
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

    // A newer config: revision 3; revision 1 is deregistered, 2 (previous) and 3 kept.
    // (S3 LastModified has one-second resolution.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    put(&stack, "req-2_nginx.conf", "# second\n").await;
    let summary = updater
        .handle_event(&s3_event(&bucket, "req-2_nginx.conf", "ObjectCreated:Put"))
        .await
        .unwrap();
    assert_eq!(summary.outcome, "deployed");
    let rev3 = summary.task_definition.clone().unwrap();
    assert_eq!(revision(&rev3), 3);
    assert_eq!(summary.deregistered, vec![ecs.task_definition_arn.clone()]);
    assert_eq!(
        active_revisions(&stack, &family).await,
        vec![rev2.clone(), rev3.clone()]
    );

    // An older config delivered late (put before req-3, its event arrives after): stale.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    put(&stack, "old_nginx.conf", "# old\n").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
    assert_eq!(stale.outcome, "stale", "{stale:?}");
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
        vec![rev3, rev4.clone()]
    );
    assert_eq!(running(&stack, &updater).await.0, rev4);
}
