//! `ecs_updater`: rolls the nginx service onto a newly rendered configuration, from the S3
//! event of its creation; and the function's settings. Rationale: docs/architecture.md,
//! "ECS updater".

use aws_lambda_events::s3::S3Event;
use aws_sdk_ecs::error::DisplayErrorContext;
use aws_sdk_ecs::types::{KeyValuePair, TaskDefinition, TaskDefinitionStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use std::time::Duration;

use aws_lambda_events::eventbridge::EventBridgeEvent;

use crate::aws::config_bucket::{
    parse_s3_path, BucketError, ConfigBucket, ConfigPointer, NOTIFIED_KEY_SUFFIX,
};
use crate::settings::{Env, SettingsError};

/// The environment variable the nginx container reads its configuration location from.
pub const CONFIG_PATH_VARIABLE: &str = "S3_CONFIG_PATH";
/// Longest S3 key.
pub const MAX_KEY_BYTES: usize = 1024;

/// The event is not an S3 notification this function can use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum S3EventError {
    /// Not an S3 event notification.
    #[error("event is not an S3 notification: {0}")]
    Shape(String),
    /// A key does not decode to a usable S3 key.
    #[error("record {index}: object key is invalid: {problem}")]
    Key {
        /// The record's position in the event, from 0.
        index: usize,
        /// What is wrong.
        problem: String,
    },
}

/// One configuration object named by an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigObject {
    /// The bucket the record names.
    pub bucket: String,
    /// The object's key, decoded.
    pub key: String,
    /// The record's `eventTime` (RFC 3339).
    pub event_time: String,
}

impl ConfigObject {
    /// `s3://bucket/key`.
    pub fn s3_path(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// Decodes an S3 event key: `+` is a space, then percent-escapes are UTF-8 bytes.
pub fn decode_s3_key(raw: &str) -> Result<String, String> {
    let spaced = raw.replace('+', " ");
    let key = percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map_err(|_| "percent-escapes do not decode to UTF-8".to_owned())?
        .into_owned();
    if key.is_empty() {
        return Err("key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("key is longer than {MAX_KEY_BYTES} bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err("key contains a control character".into());
    }
    Ok(key)
}

/// The configuration objects an S3 event names, in record order; records for other keys or
/// other event types are left out.
pub fn config_objects(event: &Value) -> Result<Vec<ConfigObject>, S3EventError> {
    let event = S3Event::deserialize(event).map_err(|e| S3EventError::Shape(e.to_string()))?;
    let mut objects = Vec::new();
    for (index, record) in event.records.into_iter().enumerate() {
        let event_name = record.event_name.as_deref().unwrap_or("");
        if !event_name.starts_with("ObjectCreated") {
            tracing::info!(
                index,
                event_name,
                "ignoring a record that is not ObjectCreated"
            );
            continue;
        }
        let bucket = record
            .s3
            .bucket
            .name
            .filter(|b| valid_bucket_name(b))
            .ok_or_else(|| {
                S3EventError::Shape(format!("record {index} has no valid s3.bucket.name"))
            })?;
        let raw_key =
            record.s3.object.key.ok_or_else(|| {
                S3EventError::Shape(format!("record {index} has no s3.object.key"))
            })?;
        let key =
            decode_s3_key(&raw_key).map_err(|problem| S3EventError::Key { index, problem })?;
        if !key.ends_with(NOTIFIED_KEY_SUFFIX) {
            tracing::info!(index, key, "ignoring a key that is not a .conf");
            continue;
        }
        objects.push(ConfigObject {
            bucket,
            key,
            event_time: record.event_time.to_rfc3339(),
        });
    }
    Ok(objects)
}

/// Whether `event` is EventBridge's scheduled event.
pub fn is_scheduled(event: &Value) -> bool {
    EventBridgeEvent::<Value>::deserialize(event)
        .is_ok_and(|scheduled| scheduled.detail_type == "Scheduled Event")
}

fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// An ECS or S3 call failed.
#[derive(Debug, Error)]
pub enum EcsUpdateError {
    /// The event is unusable (not retried: it would fail the same way).
    #[error(transparent)]
    Event(#[from] S3EventError),
    /// An ECS call failed.
    #[error("ECS {operation} failed: {message}")]
    Ecs {
        /// The ECS operation (`UpdateService`, `RegisterTaskDefinition`, …).
        operation: &'static str,
        /// The SDK's error.
        message: String,
    },
    /// An S3 call failed.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// ECS returned something unusable.
    #[error("{0}")]
    Unexpected(String),
}

fn ecs_error<E, R>(
    operation: &'static str,
    error: &aws_sdk_ecs::error::SdkError<E, R>,
) -> EcsUpdateError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    EcsUpdateError::Ecs {
        operation,
        message: DisplayErrorContext(error).to_string(),
    }
}

/// What the updater did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateSummary {
    /// `deployed` (the service moved to the newest config), `duplicate` (it already ran
    /// it), `missing` (the pointer names an object that does not exist) or `no_config` (the
    /// event names no configuration, or nothing was rendered yet).
    pub outcome: &'static str,
    /// The newest configuration: the one the pointer names.
    pub config: Option<String>,
    /// The revision the service runs now.
    pub task_definition: Option<String>,
    /// ARNs of the older task definition revisions this run deregistered.
    pub deregistered: Vec<String>,
}

/// Settings of `ecs_updater`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsUpdaterSettings {
    /// `TASK_DEFINITION_FAMILY`.
    pub family: String,
    /// `CLUSTER_ARN`.
    pub cluster: String,
    /// `ECS_SERVICE`: service name or ARN.
    pub service: String,
    /// `NGINX_CONFIG_BUCKET_NAME`: where the pointer is.
    pub bucket: String,
}

impl EcsUpdaterSettings {
    /// Reads `TASK_DEFINITION_FAMILY`, `CLUSTER_ARN`, `ECS_SERVICE` and
    /// `NGINX_CONFIG_BUCKET_NAME`.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        Ok(Self {
            family: env.required("TASK_DEFINITION_FAMILY")?,
            cluster: env.required("CLUSTER_ARN")?,
            service: env.required("ECS_SERVICE")?,
            bucket: env.required("NGINX_CONFIG_BUCKET_NAME")?,
        })
    }
}

/// Longest wait for the pointer to name the render whose configuration woke the updater
/// (the renderer writes the configuration, then the pointer).
pub const PUBLISH_WAIT: Duration = Duration::from_secs(10);
const PUBLISH_POLL: Duration = Duration::from_millis(200);
/// Passes of read-the-pointer-then-move-the-service before one gives up (Lambda retries).
const RECONCILE_PASSES: usize = 4;

/// The updater; build once per process.
#[derive(Debug, Clone)]
pub struct EcsUpdater {
    /// Updates the service; registers and deregisters task definitions.
    pub ecs: aws_sdk_ecs::Client,
    /// The S3 client, for the pointer and the configurations.
    pub s3: aws_sdk_s3::Client,
    /// The task definition family it registers revisions in.
    pub family: String,
    /// The cluster's ARN.
    pub cluster: String,
    /// The service's name or ARN.
    pub service: String,
    /// The config bucket, holder of the pointer.
    pub bucket: String,
}

impl EcsUpdater {
    /// An updater for `settings` over its AWS clients.
    pub fn new(
        ecs: aws_sdk_ecs::Client,
        s3: aws_sdk_s3::Client,
        settings: &EcsUpdaterSettings,
    ) -> Self {
        Self {
            ecs,
            s3,
            family: settings.family.clone(),
            cluster: settings.cluster.clone(),
            service: settings.service.clone(),
            bucket: settings.bucket.clone(),
        }
    }

    fn config_bucket(&self) -> ConfigBucket {
        ConfigBucket::new(self.s3.clone(), &self.bucket)
    }

    /// Handles one event: an S3 notification of new configurations, or EventBridge's
    /// scheduled event. Either way the service ends on the configuration the pointer names
    /// ([`EcsUpdater::reconcile`]); a notification only says when to look.
    pub async fn handle_event(&self, event: &Value) -> Result<UpdateSummary, EcsUpdateError> {
        // Boxed: the reconciliation's future is deep enough to overflow rustc's layout query
        // depth in the binary's release build.
        if is_scheduled(event) {
            return Box::pin(self.reconcile(None)).await;
        }
        let objects = config_objects(event)?;
        let mut ours = Vec::new();
        for object in objects {
            if object.bucket == self.bucket {
                ours.push(object);
            } else {
                tracing::warn!(config = %object.s3_path(), "ignoring a config outside the config bucket");
            }
        }
        let Some(object) = ours.last() else {
            return Ok(UpdateSummary {
                outcome: "no_config",
                config: None,
                task_definition: None,
                deregistered: Vec::new(),
            });
        };
        Box::pin(self.reconcile(Some(object))).await
    }

    /// Moves the service to the configuration the pointer names, unless it runs it already.
    /// Woken by `object`'s creation, it first waits (at most [`PUBLISH_WAIT`]) until the
    /// pointer names that render or a later one. After moving the service it reads the
    /// pointer and the service again, and moves again when either changed meanwhile (ECS has
    /// no compare-and-set), so concurrent updaters end on the newest configuration.
    /// Rationale: docs/architecture.md, "ECS updater".
    pub async fn reconcile(
        &self,
        object: Option<&ConfigObject>,
    ) -> Result<UpdateSummary, EcsUpdateError> {
        let bucket = self.config_bucket();
        let mut pointer = self.pointer_after(&bucket, object).await?;
        let mut moved: Option<String> = None;
        let mut deregistered = Vec::new();
        for _ in 0..RECONCILE_PASSES {
            let Some(newest) = pointer.take() else {
                tracing::warn!(bucket = %self.bucket, "nothing rendered yet (no pointer); the service stays as it is");
                return Ok(UpdateSummary {
                    outcome: "no_config",
                    config: None,
                    task_definition: None,
                    deregistered,
                });
            };
            let path = format!("s3://{}/{}", self.bucket, newest.key);
            let summary = |outcome, task_definition: Option<String>, deregistered| UpdateSummary {
                outcome,
                config: Some(path.clone()),
                task_definition,
                deregistered,
            };
            let running_arn = self.running_task_definition().await?;
            let running = self.describe_task_definition(&running_arn).await?;
            let running_path = config_path_of(&running);
            if running_path.as_deref() == Some(path.as_str()) {
                if moved.is_none() {
                    tracing::info!(config = %path, "service already runs the newest config");
                }
                let outcome = if moved.is_some() {
                    "deployed"
                } else {
                    "duplicate"
                };
                return Ok(summary(outcome, Some(running_arn), deregistered));
            }
            if bucket.head(&newest.key).await?.is_none() {
                tracing::error!(config = %path, "the pointer names a config that does not exist; the service stays as it is");
                return Ok(summary("missing", Some(running_arn), deregistered));
            }
            let running_sequence = match running_path.as_deref().and_then(parse_s3_path) {
                Some((running_bucket, key)) if running_bucket == self.bucket => {
                    bucket.head(&key).await?.and_then(|info| info.sequence)
                }
                _ => None,
            };
            if running_sequence.is_some_and(|running| running > newest.sequence) {
                // This pointer was read before the service moved past it: read it again.
                let fresh = bucket.read_pointer().await?;
                if fresh.as_ref().is_some_and(|f| f.key != newest.key) {
                    pointer = fresh;
                    continue;
                }
                tracing::error!(config = %path, sequence = newest.sequence, ?running_sequence,
                    "the pointer names an older render than the service runs (was the bucket reset?); following the pointer");
            }

            let template = self.describe_task_definition(&self.family).await?;
            let new_arn = self.register_revision(&template, &path).await?;
            self.update_service(&new_arn).await?;
            tracing::info!(config = %path, sequence = newest.sequence, task_definition = %new_arn, previous = %running_arn, "service updated");
            let revisions = self.active_revisions().await?;
            let keep = [new_arn.as_str(), running_arn.as_str()];
            let since = revision_of_arn(&running_arn).unwrap_or(0);
            deregistered.extend(self.deregister_older(&revisions, since, &keep).await?);
            moved = Some(new_arn);
            pointer = bucket.read_pointer().await?;
        }
        Err(EcsUpdateError::Unexpected(format!(
            "the pointer or the service kept changing over {RECONCILE_PASSES} passes"
        )))
    }

    /// The pointer, once it names the render of `object` or a later one (bounded by
    /// [`PUBLISH_WAIT`]); at once when nothing woke the updater or `object` has no sequence.
    async fn pointer_after(
        &self,
        bucket: &ConfigBucket,
        object: Option<&ConfigObject>,
    ) -> Result<Option<ConfigPointer>, EcsUpdateError> {
        let mut pointer = bucket.read_pointer().await?;
        let Some(object) = object else {
            return Ok(pointer);
        };
        if pointer.as_ref().is_some_and(|p| p.key == object.key) {
            return Ok(pointer);
        }
        let Some(sequence) = bucket.head(&object.key).await?.and_then(|i| i.sequence) else {
            return Ok(pointer);
        };
        let started = tokio::time::Instant::now();
        while pointer.as_ref().map_or(0, |p| p.sequence) < sequence {
            if started.elapsed() >= PUBLISH_WAIT {
                tracing::warn!(config = %object.s3_path(), sequence, "the pointer does not name this render yet (its renderer failed or another published first); following the pointer as it is");
                break;
            }
            tokio::time::sleep(PUBLISH_POLL).await;
            pointer = bucket.read_pointer().await?;
        }
        Ok(pointer)
    }

    async fn update_service(&self, task_definition: &str) -> Result<(), EcsUpdateError> {
        self.ecs
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .task_definition(task_definition)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| ecs_error("UpdateService", &e))
    }

    async fn running_task_definition(&self) -> Result<String, EcsUpdateError> {
        let output = self
            .ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .map_err(|e| ecs_error("DescribeServices", &e))?;
        output
            .services()
            .first()
            .and_then(|s| s.task_definition())
            .map(str::to_owned)
            .ok_or_else(|| {
                EcsUpdateError::Unexpected(format!(
                    "service {:?} not found in the cluster",
                    self.service
                ))
            })
    }

    async fn describe_task_definition(&self, name: &str) -> Result<TaskDefinition, EcsUpdateError> {
        self.ecs
            .describe_task_definition()
            .task_definition(name)
            .send()
            .await
            .map_err(|e| ecs_error("DescribeTaskDefinition", &e))?
            .task_definition
            .ok_or_else(|| {
                EcsUpdateError::Unexpected(format!("task definition {name:?} not returned"))
            })
    }

    async fn register_revision(
        &self,
        template: &TaskDefinition,
        config_path: &str,
    ) -> Result<String, EcsUpdateError> {
        let mut containers = template.container_definitions().to_vec();
        let Some(first) = containers.first_mut() else {
            return Err(EcsUpdateError::Unexpected(format!(
                "task definition family {:?} has no container",
                self.family
            )));
        };
        let mut environment: Vec<KeyValuePair> = first
            .environment()
            .iter()
            .filter(|kv| kv.name() != Some(CONFIG_PATH_VARIABLE))
            .cloned()
            .collect();
        environment.push(
            KeyValuePair::builder()
                .name(CONFIG_PATH_VARIABLE)
                .value(config_path)
                .build(),
        );
        first.environment = Some(environment);

        let output = self
            .ecs
            .register_task_definition()
            .family(template.family().unwrap_or(&self.family))
            .set_task_role_arn(template.task_role_arn().map(str::to_owned))
            .set_execution_role_arn(template.execution_role_arn().map(str::to_owned))
            .set_network_mode(template.network_mode().cloned())
            .set_container_definitions(Some(containers))
            .set_volumes(Some(template.volumes().to_vec()))
            .set_placement_constraints(Some(template.placement_constraints().to_vec()))
            .set_requires_compatibilities(Some(template.requires_compatibilities().to_vec()))
            .set_cpu(template.cpu().map(str::to_owned))
            .set_memory(template.memory().map(str::to_owned))
            .set_pid_mode(template.pid_mode().cloned())
            .set_ipc_mode(template.ipc_mode().cloned())
            .set_runtime_platform(template.runtime_platform().cloned())
            .set_ephemeral_storage(template.ephemeral_storage().cloned())
            .send()
            .await
            .map_err(|e| ecs_error("RegisterTaskDefinition", &e))?;
        output
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned)
            .ok_or_else(|| {
                EcsUpdateError::Unexpected("RegisterTaskDefinition returned no ARN".into())
            })
    }

    /// Every active revision of the family.
    async fn active_revisions(&self) -> Result<Vec<String>, EcsUpdateError> {
        let mut arns = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .ecs
                .list_task_definitions()
                .family_prefix(&self.family)
                .status(TaskDefinitionStatus::Active)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| ecs_error("ListTaskDefinitions", &e))?;
            arns.extend(page.task_definition_arns().iter().cloned());
            match page.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(arns)
    }

    /// Deregisters the family's `revisions` numbered below `below`, except `keep` and the
    /// template's own (registered by CloudFormation, without [`CONFIG_PATH_VARIABLE`]: the
    /// next stack update starts from it); returns their ARNs. Revisions registered since (by
    /// this or a concurrent update) stay.
    async fn deregister_older(
        &self,
        revisions: &[String],
        below: u32,
        keep: &[&str],
    ) -> Result<Vec<String>, EcsUpdateError> {
        let mut deregistered = Vec::new();
        for arn in revisions {
            let older = family_of_arn(arn) == Some(self.family.as_str())
                && revision_of_arn(arn).is_some_and(|r| r < below);
            if !older || keep.contains(&arn.as_str()) {
                continue;
            }
            if config_path_of(&self.describe_task_definition(arn).await?).is_none() {
                continue;
            }
            self.ecs
                .deregister_task_definition()
                .task_definition(arn)
                .send()
                .await
                .map_err(|e| ecs_error("DeregisterTaskDefinition", &e))?;
            deregistered.push(arn.clone());
        }
        if !deregistered.is_empty() {
            tracing::info!(
                count = deregistered.len(),
                "old task definition revisions deregistered"
            );
        }
        Ok(deregistered)
    }
}

/// The family of a task definition ARN (`…:task-definition/family:revision`).
pub fn family_of_arn(arn: &str) -> Option<&str> {
    let (_, tail) = arn.rsplit_once("task-definition/")?;
    let (family, revision) = tail.rsplit_once(':')?;
    revision.parse::<u32>().ok().map(|_| family)
}

/// The revision number of a task definition ARN (`…:task-definition/family:revision`).
pub fn revision_of_arn(arn: &str) -> Option<u32> {
    let (_, tail) = arn.rsplit_once("task-definition/")?;
    let (_, revision) = tail.rsplit_once(':')?;
    revision.parse().ok()
}

/// The `S3_CONFIG_PATH` of a task definition's first container.
pub fn config_path_of(definition: &TaskDefinition) -> Option<String> {
    definition
        .container_definitions()
        .first()?
        .environment()
        .iter()
        .find(|kv| kv.name() == Some(CONFIG_PATH_VARIABLE))
        .and_then(|kv| kv.value())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record as S3 delivers it (the fields Lambda always sends).
    fn record(name: &str, bucket: &str, key: &str) -> Value {
        json!({
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "eu-west-1",
            "eventName": name,
            "eventTime": "2026-11-24T03:00:00.000Z",
            "userIdentity": {"principalId": "AWS:EXAMPLE"},
            "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {"x-amz-request-id": "EXAMPLE"},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "config-written",
                "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                "object": {"key": key, "size": 42, "sequencer": "0A"}
            }
        })
    }

    fn shape_problem(event: &Value) -> String {
        match config_objects(event) {
            Err(S3EventError::Shape(problem)) => problem,
            other => panic!("expected a shape error, got {other:?}"),
        }
    }

    #[test]
    fn decodes_keys() {
        assert_eq!(decode_s3_key("abc_nginx.conf").unwrap(), "abc_nginx.conf");
        assert_eq!(decode_s3_key("a+b%2Bc%3D.conf").unwrap(), "a b+c=.conf");
        assert_eq!(decode_s3_key("caf%C3%A9.conf").unwrap(), "café.conf");
        assert!(decode_s3_key("%FF.conf").is_err());
        assert!(decode_s3_key("").is_err());
        assert!(decode_s3_key("a%0A.conf").is_err());
        assert!(decode_s3_key(&"a".repeat(1100)).is_err());
    }

    #[test]
    fn picks_conf_objects_only() {
        let event = json!({"Records": [
            record("ObjectCreated:Put", "cfg-bucket", "one_nginx.conf"),
            record("ObjectCreated:Put", "cfg-bucket", "latest.json"),
            record("ObjectRemoved:Delete", "cfg-bucket", "gone_nginx.conf"),
            record("ObjectCreated:Put", "cfg-bucket", "two+words_nginx.conf"),
        ]});
        let objects = config_objects(&event).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].key, "two words_nginx.conf");
        assert_eq!(objects[1].s3_path(), "s3://cfg-bucket/two words_nginx.conf");
    }

    #[test]
    fn refuses_malformed_events() {
        assert!(config_objects(&json!({})).is_err());
        assert!(config_objects(&json!({"Records": "x"})).is_err());
        assert!(config_objects(&json!([1])).is_err());
        assert!(config_objects(&json!({"Records": [{"eventName": "ObjectCreated:Put"}]})).is_err());
        assert!(config_objects(
            &json!({"Records": [record("ObjectCreated:Put", "Bad_Bucket", "a.conf")]})
        )
        .is_err());
        assert!(matches!(
            config_objects(
                &json!({"Records": [record("ObjectCreated:Put", "bucket", "%FF.conf")]})
            ),
            Err(S3EventError::Key { index: 0, .. })
        ));
        assert_eq!(config_objects(&json!({"Records": []})).unwrap(), vec![]);
    }

    #[test]
    fn decodes_url_encoded_keys_of_events() {
        let event = json!({"Records": [
            record("ObjectCreated:Put", "cfg-bucket", "dir%2Fcaf%C3%A9+au+lait_nginx.conf"),
        ]});
        let objects = config_objects(&event).unwrap();
        assert_eq!(
            objects,
            vec![ConfigObject {
                bucket: "cfg-bucket".into(),
                key: "dir/café au lait_nginx.conf".into(),
                event_time: "2026-11-24T03:00:00+00:00".into(),
            }]
        );
        let event = json!({"Records": [record("ObjectCreated:Put", "cfg-bucket", "a+b.conf%0A")]});
        assert_eq!(
            config_objects(&event),
            Err(S3EventError::Key {
                index: 0,
                problem: "key contains a control character".into()
            })
        );
    }

    #[test]
    fn non_conf_keys_and_other_event_types_give_no_config() {
        let event = json!({"Records": [
            record("ObjectCreated:Put", "cfg-bucket", "latest.json"),
            record("ObjectCreated:Copy", "cfg-bucket", "x_nginx.conf.bak"),
            record("ObjectRemoved:Delete", "cfg-bucket", "x_nginx.conf"),
            record("s3:TestEvent", "cfg-bucket", "y_nginx.conf"),
        ]});
        assert_eq!(config_objects(&event).unwrap(), vec![]);
        let event =
            json!({"Records": [record("ObjectCreated:CompleteMultipartUpload", "b-1", "z.conf")]});
        assert_eq!(
            config_objects(&event).unwrap()[0].s3_path(),
            "s3://b-1/z.conf"
        );
    }

    #[test]
    fn shape_errors_say_what_is_missing() {
        let problem = shape_problem(&json!({}));
        assert!(problem.contains("missing field `Records`"), "{problem}");
        let problem = shape_problem(&json!("text"));
        assert!(problem.contains("expected struct S3Event"), "{problem}");
        let mut no_key = record("ObjectCreated:Put", "cfg-bucket", "a.conf");
        no_key["s3"]["object"] = json!({"size": 1});
        assert_eq!(
            shape_problem(&json!({"Records": [no_key]})),
            "record 0 has no s3.object.key"
        );
        let mut no_bucket = record("ObjectCreated:Put", "cfg-bucket", "a.conf");
        no_bucket["s3"]["bucket"] = json!({});
        assert_eq!(
            shape_problem(&json!({"Records": [no_bucket]})),
            "record 0 has no valid s3.bucket.name"
        );
        let mut no_time = record("ObjectCreated:Put", "cfg-bucket", "a.conf");
        no_time.as_object_mut().unwrap().remove("eventTime");
        let problem = shape_problem(&json!({"Records": [no_time]}));
        assert!(problem.contains("eventTime"), "{problem}");
        assert!(config_objects(&json!({"Records": 1}))
            .unwrap_err()
            .to_string()
            .starts_with("event is not an S3 notification: invalid type: integer `1`"),);
    }

    #[test]
    fn scheduled_events_are_told_from_s3_events() {
        let scheduled = json!({
            "version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-24T03:00:00Z", "region": "eu-west-1",
            "resources": ["arn:aws:events:eu-west-1:123456789012:rule/r"], "detail": {}
        });
        assert!(is_scheduled(&scheduled));
        let mut other = scheduled.clone();
        other["detail-type"] = json!("Object Created");
        assert!(!is_scheduled(&other));
        assert!(!is_scheduled(
            &json!({"Records": [record("ObjectCreated:Put", "b-1", "a.conf")]})
        ));
        assert!(!is_scheduled(&json!({})));
    }

    #[test]
    fn arns_and_paths() {
        assert_eq!(
            family_of_arn("arn:aws:ecs:eu-west-1:123:task-definition/proxy-dev:7"),
            Some("proxy-dev")
        );
        assert_eq!(
            family_of_arn("arn:aws:ecs:eu-west-1:123:task-definition/proxy-dev-x:1"),
            Some("proxy-dev-x")
        );
        assert_eq!(
            family_of_arn("arn:aws:ecs:eu-west-1:123:task-definition/proxy"),
            None
        );
        assert_eq!(
            revision_of_arn("arn:aws:ecs:eu-west-1:123:task-definition/proxy-dev:12"),
            Some(12)
        );
        assert_eq!(
            revision_of_arn("arn:aws:ecs:eu-west-1:123:task-definition/proxy"),
            None
        );
    }
}
