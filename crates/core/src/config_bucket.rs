//! The S3 adapter: rendered configurations and the pointer to the newest one ([`POINTER_KEY`]).
//! Rationale: docs/architecture.md, "Level-triggered renders".

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Key of the pointer object. It does not end in [`NOTIFIED_KEY_SUFFIX`], so it never
/// triggers the updater.
pub const POINTER_KEY: &str = "latest.json";
/// The end of every rendered configuration's key, `<request id>_nginx.conf`.
pub const CONFIG_KEY_SUFFIX: &str = "_nginx.conf";
/// The bucket notification's key filter (`infra/storage.yml`), which the ECS updater applies
/// to the records it is given as well.
pub const NOTIFIED_KEY_SUFFIX: &str = ".conf";

/// Largest pointer or config object read back, in bytes.
pub const MAX_OBJECT_BYTES: usize = 8 * 1024 * 1024;

/// What the renderer last published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPointer {
    /// Key of the configuration object.
    pub key: String,
    /// SHA-256 of the configuration text, hex.
    pub sha256: String,
    /// Fingerprint of the routing plan it renders.
    pub plan_fingerprint: String,
    /// Fingerprint of the clients its gate admits ([`crate::gate::clients_fingerprint`]).
    /// `None` in a pointer written before the renderer recorded it: never equal to the
    /// table's, so the next health-check round requests a render that records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients_fingerprint: Option<String>,
    /// When it was rendered, ISO-8601 UTC.
    pub rendered_at: String,
    /// Redacted labels of the routed backends.
    pub backends: Vec<String>,
}

/// An S3 call failed.
#[derive(Debug, Error)]
pub enum BucketError {
    /// The SDK call failed.
    #[error("S3 {operation} of {key:?} failed: {message}")]
    Sdk {
        operation: &'static str,
        key: String,
        /// The SDK's error.
        message: String,
    },
    /// An object is not what it should be.
    #[error("S3 object {key:?} is unusable: {problem}")]
    Invalid {
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// Facts about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Last-modified time, seconds since the epoch.
    pub last_modified_secs: Option<i64>,
    pub size: Option<i64>,
}

/// One bucket (`NGINX_CONFIG_BUCKET_NAME`).
#[derive(Debug, Clone)]
pub struct ConfigBucket {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl ConfigBucket {
    /// An adapter for `bucket`.
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.bucket
    }

    /// Stores a configuration.
    pub async fn put_config(&self, key: &str, text: &str) -> Result<(), BucketError> {
        self.put(key, text.as_bytes().to_vec(), "text/plain; charset=utf-8")
            .await
    }

    /// Stores the pointer.
    pub async fn put_pointer(&self, pointer: &ConfigPointer) -> Result<(), BucketError> {
        let body = serde_json::to_vec_pretty(pointer).map_err(|e| BucketError::Invalid {
            key: POINTER_KEY.into(),
            problem: e.to_string(),
        })?;
        self.put(POINTER_KEY, body, "application/json").await
    }

    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), BucketError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| BucketError::Sdk {
                operation: "PutObject",
                key: key.into(),
                message: DisplayErrorContext(&e).to_string(),
            })
    }

    /// Reads the pointer; `None` when nothing was rendered yet.
    pub async fn read_pointer(&self) -> Result<Option<ConfigPointer>, BucketError> {
        let Some(bytes) = self.get(POINTER_KEY).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BucketError::Invalid {
                key: POINTER_KEY.into(),
                problem: e.to_string(),
            })
    }

    /// Reads an object (at most [`MAX_OBJECT_BYTES`]); `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BucketError> {
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) => {
                if error.as_service_error().is_some_and(|e| e.is_no_such_key()) {
                    return Ok(None);
                }
                return Err(BucketError::Sdk {
                    operation: "GetObject",
                    key: key.into(),
                    message: DisplayErrorContext(&error).to_string(),
                });
            }
        };
        if output
            .content_length()
            .is_some_and(|len| len > MAX_OBJECT_BYTES as i64)
        {
            return Err(BucketError::Invalid {
                key: key.into(),
                problem: format!("larger than {MAX_OBJECT_BYTES} bytes"),
            });
        }
        let bytes = output.body.collect().await.map_err(|e| BucketError::Sdk {
            operation: "GetObject",
            key: key.into(),
            message: e.to_string(),
        })?;
        Ok(Some(bytes.to_vec()))
    }

    /// Looks an object up without reading it; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, BucketError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(ObjectInfo {
                last_modified_secs: output.last_modified().map(|t| t.secs()),
                size: output.content_length(),
            })),
            Err(error) => {
                if error.as_service_error().is_some_and(|e| e.is_not_found()) {
                    Ok(None)
                } else {
                    Err(BucketError::Sdk {
                        operation: "HeadObject",
                        key: key.into(),
                        message: DisplayErrorContext(&error).to_string(),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_without_a_clients_fingerprint_still_reads() {
        let old = r#"{"key": "a_nginx.conf", "sha256": "ab", "plan_fingerprint": "f",
            "rendered_at": "2026-11-24T03:00:00Z", "backends": []}"#;
        let pointer: ConfigPointer = serde_json::from_str(old).expect("an old pointer");
        assert_eq!(pointer.clients_fingerprint, None);
        let new = ConfigPointer {
            clients_fingerprint: Some("c".into()),
            ..pointer
        };
        let text = serde_json::to_string(&new).expect("json");
        assert!(text.contains(r#""clients_fingerprint":"c""#), "{text}");
        assert_eq!(
            serde_json::from_str::<ConfigPointer>(&text).expect("read"),
            new
        );
    }
}
