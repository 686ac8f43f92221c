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
    /// Fingerprint of the clients its gate admits ([`crate::render::gate::clients_fingerprint`]).
    /// `None` in a pointer written before the renderer recorded it: never equal to the
    /// table's, so the next health-check round requests a render that records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients_fingerprint: Option<String>,
    /// When it was rendered, ISO-8601 UTC.
    pub rendered_at: String,
    /// The render's place in the order of publications: each pointer write is one more than
    /// the pointer it replaced (0 in a pointer written before the renderer kept it).
    #[serde(default)]
    pub sequence: u64,
    /// Redacted labels of the routed backends.
    pub backends: Vec<String>,
}

/// An S3 call failed.
#[derive(Debug, Error)]
pub enum BucketError {
    /// The SDK call failed.
    #[error("S3 {operation} of {key:?} failed: {message}")]
    Sdk {
        /// The S3 operation (`GetObject`, `PutObject`, …).
        operation: &'static str,
        /// The object's key.
        key: String,
        /// The SDK's error.
        message: String,
    },
    /// An object is not what it should be.
    #[error("S3 object {key:?} is unusable: {problem}")]
    Invalid {
        /// The object's key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// Facts about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its size in bytes (the response's `Content-Length`), if S3 reported it.
    pub size: Option<i64>,
    /// A configuration's [`ConfigPointer::sequence`], from its [`SEQUENCE_METADATA`].
    pub sequence: Option<u64>,
}

/// The user metadata (`x-amz-meta-…`) that carries a configuration's sequence.
pub const SEQUENCE_METADATA: &str = "sequence";

/// The pointer as read, with the version a conditional replacement must find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerVersion {
    /// The pointer's content.
    pub pointer: ConfigPointer,
    /// The object's ETag.
    pub etag: String,
}

/// Whether a conditional pointer write took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerWrite {
    /// The pointer was replaced (or created).
    Written,
    /// Another render replaced (or created) the pointer since it was read: nothing written.
    Superseded,
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

    /// Stores a configuration of the render numbered `sequence`.
    pub async fn put_config(
        &self,
        key: &str,
        text: &str,
        sequence: u64,
    ) -> Result<(), BucketError> {
        let request = self
            .client
            .put_object()
            .key(key)
            .content_type("text/plain; charset=utf-8")
            .metadata(SEQUENCE_METADATA, sequence.to_string())
            .body(ByteStream::from(text.as_bytes().to_vec()));
        self.put(key, request).await.map(|_| ())
    }

    /// Stores the pointer unconditionally.
    pub async fn put_pointer(&self, pointer: &ConfigPointer) -> Result<(), BucketError> {
        let request = self.pointer_request(pointer)?;
        self.put(POINTER_KEY, request).await.map(|_| ())
    }

    /// Stores the pointer only if it is still the version `read` (`None`: only if there is no
    /// pointer yet), as S3's conditional writes do it (`If-Match`, `If-None-Match: *`).
    pub async fn replace_pointer(
        &self,
        pointer: &ConfigPointer,
        read: Option<&str>,
    ) -> Result<PointerWrite, BucketError> {
        let request = self.pointer_request(pointer)?;
        let request = match read {
            Some(etag) => request.if_match(etag),
            None => request.if_none_match("*"),
        };
        self.put(POINTER_KEY, request).await
    }

    fn pointer_request(
        &self,
        pointer: &ConfigPointer,
    ) -> Result<aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder, BucketError>
    {
        let body = serde_json::to_vec_pretty(pointer).map_err(|e| BucketError::Invalid {
            key: POINTER_KEY.into(),
            problem: e.to_string(),
        })?;
        Ok(self
            .client
            .put_object()
            .content_type("application/json")
            .body(ByteStream::from(body)))
    }

    /// Sends a PutObject; a failed precondition (412, or 409 when S3 saw a concurrent
    /// conditional write) is [`PointerWrite::Superseded`].
    async fn put(
        &self,
        key: &str,
        request: aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    ) -> Result<PointerWrite, BucketError> {
        match request.bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(PointerWrite::Written),
            Err(error) => {
                let status = error.raw_response().map(|r| r.status().as_u16());
                if matches!(status, Some(409 | 412)) {
                    return Ok(PointerWrite::Superseded);
                }
                Err(BucketError::Sdk {
                    operation: "PutObject",
                    key: key.into(),
                    message: DisplayErrorContext(&error).to_string(),
                })
            }
        }
    }

    /// Reads the pointer; `None` when nothing was rendered yet.
    pub async fn read_pointer(&self) -> Result<Option<ConfigPointer>, BucketError> {
        Ok(self.read_pointer_version().await?.map(|read| read.pointer))
    }

    /// Reads the pointer with its version; `None` when nothing was rendered yet.
    pub async fn read_pointer_version(&self) -> Result<Option<PointerVersion>, BucketError> {
        let Some((bytes, etag)) = self.get_versioned(POINTER_KEY).await? else {
            return Ok(None);
        };
        let pointer = serde_json::from_slice(&bytes).map_err(|e| BucketError::Invalid {
            key: POINTER_KEY.into(),
            problem: e.to_string(),
        })?;
        Ok(Some(PointerVersion {
            pointer,
            etag: etag.unwrap_or_default(),
        }))
    }

    /// Reads an object (at most [`MAX_OBJECT_BYTES`]); `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BucketError> {
        Ok(self.get_versioned(key).await?.map(|(bytes, _)| bytes))
    }

    /// An object and its ETag.
    async fn get_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, BucketError> {
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
                if error
                    .as_service_error()
                    .is_some_and(aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key)
                {
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
        Ok(Some((bytes.to_vec(), output.e_tag)))
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
                size: output.content_length(),
                sequence: output
                    .metadata()
                    .and_then(|m| m.get(SEQUENCE_METADATA))
                    .and_then(|v| v.trim().parse().ok()),
            })),
            Err(error) => {
                if error
                    .as_service_error()
                    .is_some_and(aws_sdk_s3::operation::head_object::HeadObjectError::is_not_found)
                {
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

/// Parses `s3://bucket/key`.
pub fn parse_s3_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then(|| (bucket.to_owned(), key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_paths() {
        assert_eq!(
            parse_s3_path("s3://b/k/x.conf"),
            Some(("b".into(), "k/x.conf".into()))
        );
        assert_eq!(parse_s3_path("s3://b/"), None);
        assert_eq!(parse_s3_path("https://b/k"), None);
    }

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
