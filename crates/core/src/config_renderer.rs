//! `config_renderer`: scans the table, renders the plan, publishes it to S3; its event and
//! settings. Rationale: docs/architecture.md, "Level-triggered renders".

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;
use time::OffsetDateTime;

use crate::backend::iso8601;
use crate::config_bucket::{BucketError, ConfigBucket, ConfigPointer, CONFIG_KEY_SUFFIX};
use crate::nginx::{render, RenderOptions};
use crate::routing::RoutingPlan;
use crate::settings::{Env, SettingsError};
use crate::store::{BackendStore, StoreError};

/// A render failed; Lambda retries (the same request id gives the same key).
#[derive(Debug, Error)]
pub enum RenderError {
    /// The table could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bucket could not be written.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// The request id cannot form an object key.
    #[error("request id {0:?} cannot be used in an object key")]
    RequestId(String),
}

/// What a render did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderSummary {
    /// Whether a new configuration was written.
    pub written: bool,
    /// The key of the configuration in force.
    pub key: String,
    /// SHA-256 of its text.
    pub sha256: String,
    /// Fingerprint of its routing plan.
    pub plan_fingerprint: String,
    /// Redacted labels of the routed backends.
    pub backends: Vec<String>,
}

/// Settings of `config_renderer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRendererSettings {
    /// `DYNAMODB_TABLE`.
    pub table: String,
    /// `NGINX_CONFIG_BUCKET_NAME`.
    pub bucket: String,
    /// `NGINX_LISTEN_PORT`, `NGINX_SOCKET_DIR`, `NGINX_CA_BUNDLE` and the proxy's timeouts.
    pub render: RenderOptions,
}

impl ConfigRendererSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        let defaults = RenderOptions::default();
        let render = RenderOptions {
            listen_port: env.number("NGINX_LISTEN_PORT", defaults.listen_port, 1)?,
            socket_dir: env.string_or("NGINX_SOCKET_DIR", &defaults.socket_dir),
            ca_bundle: env.string_or("NGINX_CA_BUNDLE", &defaults.ca_bundle),
            connect_timeout_secs: env.number(
                "PROXY_CONNECT_TIMEOUT_SECS",
                defaults.connect_timeout_secs,
                1,
            )?,
            read_timeout_secs: env.number(
                "PROXY_READ_TIMEOUT_SECS",
                defaults.read_timeout_secs,
                1,
            )?,
            retry_tries: env.number("PROXY_RETRY_TRIES", defaults.retry_tries, 1)?,
            retry_timeout_secs: env.number(
                "PROXY_RETRY_TIMEOUT_SECS",
                defaults.retry_timeout_secs,
                1,
            )?,
            max_fails: env.number("PROXY_MAX_FAILS", defaults.max_fails, 1)?,
            fail_timeout_secs: env.number(
                "PROXY_FAIL_TIMEOUT_SECS",
                defaults.fail_timeout_secs,
                1,
            )?,
            keepalive: env.number("PROXY_KEEPALIVE", defaults.keepalive, 1)?,
            websocket_timeout_secs: env.number(
                "PROXY_WEBSOCKET_TIMEOUT_SECS",
                defaults.websocket_timeout_secs,
                1,
            )?,
        };
        render.validate().map_err(|e| SettingsError::Invalid {
            name: "NGINX_SOCKET_DIR/NGINX_CA_BUNDLE",
            value: format!("{} / {}", render.socket_dir, render.ca_bundle),
            problem: e.to_string(),
        })?;
        Ok(Self {
            table: env.required("DYNAMODB_TABLE")?,
            bucket: env.required("NGINX_CONFIG_BUCKET_NAME")?,
            render,
        })
    }
}

/// The event the config renderer receives: what [`RendererTrigger`](crate::renderer_trigger)
/// sends, or `{"force": true}` by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RenderRequest {
    /// Write the configuration even when it is unchanged.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Who asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why, for the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RenderRequest {
    /// Reads an invocation's event. Any event renders: one that is not a render request (an
    /// empty manual invocation, say) asks for an ordinary, unforced render.
    pub fn of(event: &Value) -> Self {
        match Self::deserialize(event) {
            Ok(request) => request,
            Err(error) => {
                if !event.is_null() {
                    tracing::warn!(%error, "not a render request; rendering without force");
                }
                Self::default()
            }
        }
    }
}

/// The renderer; build once per process.
#[derive(Debug, Clone)]
pub struct ConfigRenderer {
    pub store: BackendStore,
    pub bucket: ConfigBucket,
    /// Fixed rendering options.
    pub options: RenderOptions,
}

impl ConfigRenderer {
    /// A renderer for `settings` over its AWS clients.
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        settings: &ConfigRendererSettings,
    ) -> Self {
        Self {
            store: BackendStore::new(dynamodb, &settings.table),
            bucket: ConfigBucket::new(s3, &settings.bucket),
            options: settings.render.clone(),
        }
    }

    /// Handles one invocation's event (see [`RenderRequest`]); `request_id` names the config.
    pub async fn handle_event(
        &self,
        event: &Value,
        request_id: &str,
    ) -> Result<RenderSummary, RenderError> {
        let request = RenderRequest::of(event);
        if let Some(reason) = &request.reason {
            tracing::info!(reason, "render requested");
        }
        self.render_and_publish(request_id, request.force).await
    }

    /// Renders the plan the table implies and publishes it as `<request_id>_nginx.conf`,
    /// then updates the pointer. When the last published config has the same text, nothing is
    /// written (no needless redeploy) unless `force` is set.
    pub async fn render_and_publish(
        &self,
        request_id: &str,
        force: bool,
    ) -> Result<RenderSummary, RenderError> {
        if request_id.is_empty()
            || request_id.len() > 200
            || !request_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(RenderError::RequestId(request_id.to_owned()));
        }
        let backends = self.store.scan_all().await?;
        let plan = RoutingPlan::from_backends(&backends);
        let text = render(&plan, &self.options);
        let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
        let plan_fingerprint = plan.fingerprint();
        let labels = plan.labels();

        if !force {
            match self.bucket.read_pointer().await {
                Ok(Some(pointer))
                    if pointer.sha256 == sha256
                        && self.bucket.head(&pointer.key).await?.is_some() =>
                {
                    tracing::info!(key = %pointer.key, "config unchanged; nothing written");
                    return Ok(RenderSummary {
                        written: false,
                        key: pointer.key,
                        sha256,
                        plan_fingerprint,
                        backends: labels,
                    });
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot read the config pointer; rendering anyway")
                }
            }
        }

        let key = format!("{request_id}{CONFIG_KEY_SUFFIX}");
        self.bucket.put_config(&key, &text).await?;
        let pointer = ConfigPointer {
            key: key.clone(),
            sha256: sha256.clone(),
            plan_fingerprint: plan_fingerprint.clone(),
            rendered_at: iso8601(OffsetDateTime::now_utc()),
            backends: labels.clone(),
        };
        self.bucket.put_pointer(&pointer).await?;
        tracing::info!(%key, backends = ?labels, "config published");
        Ok(RenderSummary {
            written: true,
            key,
            sha256,
            plan_fingerprint,
            backends: labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::vars as env;
    use serde_json::json;

    #[test]
    fn renderer_settings_refuse_unsafe_paths() {
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("NGINX_SOCKET_DIR", "/tmp/x;y"),
        ]);
        assert!(ConfigRendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).is_err());
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("NGINX_LISTEN_PORT", "8080"),
        ]);
        let settings =
            ConfigRendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap();
        assert_eq!(settings.render.listen_port, 8080);
        assert_eq!(settings.render.websocket_timeout_secs, 3600);
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("PROXY_WEBSOCKET_TIMEOUT_SECS", "600"),
        ]);
        let settings =
            ConfigRendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap();
        assert_eq!(settings.render.websocket_timeout_secs, 600);
    }

    #[test]
    fn render_requests() {
        let sent = RenderRequest {
            source: Some("jsonrpc-proxy".into()),
            reason: Some("routing plan changed".into()),
            ..RenderRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            json!({"source": "jsonrpc-proxy", "reason": "routing plan changed"})
        );
        assert_eq!(
            RenderRequest::of(&serde_json::to_value(&sent).unwrap()),
            sent
        );
        assert!(RenderRequest::of(&json!({"force": true})).force);
        assert!(!RenderRequest::of(&json!({"force": false, "extra": 1})).force);
        for other in [json!({}), json!(null), json!([1]), json!({"force": "yes"})] {
            assert_eq!(
                RenderRequest::of(&other),
                RenderRequest::default(),
                "{other}"
            );
        }
    }
}
