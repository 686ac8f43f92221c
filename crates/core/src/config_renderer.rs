//! `config_renderer`: scan the table, render the plan, publish it to S3.

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use time::OffsetDateTime;

use crate::backend::iso8601;
use crate::config_bucket::{BucketError, ConfigBucket, ConfigPointer, CONFIG_KEY_SUFFIX};
use crate::nginx::{render, RenderOptions};
use crate::routing::RoutingPlan;
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

/// The renderer; build once per process.
#[derive(Debug, Clone)]
pub struct ConfigRenderer {
    /// The table.
    pub store: BackendStore,
    /// The bucket.
    pub bucket: ConfigBucket,
    /// Fixed rendering options.
    pub options: RenderOptions,
}

impl ConfigRenderer {
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
