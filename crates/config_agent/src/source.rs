//! Fetching configurations and the renderer's pointer from S3.

use jsonrpc_proxy::aws::config_bucket::{BucketError, ConfigBucket, ConfigPointer};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::settings::S3Location;

/// A configuration fetched from S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedConfig {
    /// Where it came from.
    pub location: S3Location,
    /// Its bytes.
    pub text: Vec<u8>,
    /// Their SHA-256, hex.
    pub sha256: String,
}

/// Fetching failed.
#[derive(Debug, Error)]
pub enum FetchError {
    /// S3 failed (network, credentials, permissions...): may work on a later attempt.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// The object does not exist.
    #[error("{0} does not exist")]
    Missing(String),
    /// The pointer names an object whose content does not match its checksum.
    #[error("{location} does not match the pointer's sha256 (expected {expected}, got {actual})")]
    Checksum {
        /// The configuration.
        location: String,
        /// The pointer's checksum.
        expected: String,
        /// The content's.
        actual: String,
    },
}

impl FetchError {
    /// Whether trying again soon may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, FetchError::Bucket(BucketError::Sdk { .. }))
    }
}

/// Reads configurations and pointers with one S3 client.
#[derive(Debug, Clone)]
pub struct ConfigFetcher {
    client: aws_sdk_s3::Client,
}

impl ConfigFetcher {
    /// A fetcher using `client`.
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        Self { client }
    }

    fn bucket(&self, location: &S3Location) -> ConfigBucket {
        ConfigBucket::new(self.client.clone(), &location.bucket)
    }

    /// Fetches one configuration object.
    pub async fn fetch(&self, location: &S3Location) -> Result<FetchedConfig, FetchError> {
        let text = self
            .bucket(location)
            .get(&location.key)
            .await?
            .ok_or_else(|| FetchError::Missing(location.to_string()))?;
        let sha256 = hex::encode(Sha256::digest(&text));
        Ok(FetchedConfig {
            location: location.clone(),
            text,
            sha256,
        })
    }

    /// Reads the renderer's pointer; `None` when nothing was rendered yet.
    pub async fn pointer(
        &self,
        location: &S3Location,
    ) -> Result<Option<ConfigPointer>, FetchError> {
        if location.key == jsonrpc_proxy::aws::config_bucket::POINTER_KEY {
            return Ok(self.bucket(location).read_pointer().await?);
        }
        // A pointer under another key (the same JSON record).
        let Some(bytes) = self.bucket(location).get(&location.key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            FetchError::Bucket(BucketError::Invalid {
                key: location.key.clone(),
                problem: e.to_string(),
            })
        })
    }

    /// Fetches the configuration a pointer names, checking its checksum.
    pub async fn fetch_pointed(
        &self,
        pointer_location: &S3Location,
        pointer: &ConfigPointer,
    ) -> Result<FetchedConfig, FetchError> {
        let location = S3Location {
            bucket: pointer_location.bucket.clone(),
            key: pointer.key.clone(),
        };
        let fetched = self.fetch(&location).await?;
        if !fetched.sha256.eq_ignore_ascii_case(&pointer.sha256) {
            return Err(FetchError::Checksum {
                location: location.to_string(),
                expected: pointer.sha256.clone(),
                actual: fetched.sha256,
            });
        }
        Ok(fetched)
    }
}
