//! The backend record: one item of the DynamoDB table, one Ethereum node behind the proxy.
//! Its attributes: docs/architecture.md, "Table schema".

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::model::backend_url::{BackendUrl, UrlError};

/// One backend as stored in the table (hash key `url`).
///
/// The first five fields are the table's compatible schema (docs/compatibility.md); the rest
/// record the last health check.
/// Serialised to JSON exactly as `list_backends` and `add_backend` show it: absent values (and
/// zero counters) are left out, numbers are JSON numbers.
///
/// `Default` is an empty, unhealthy, never-checked backend, so that literals can name only
/// what they need (`Backend { url, ..Default::default() }`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Backend {
    /// The node's URL, as given when it was added.
    pub url: String,
    /// Whether this backend is the leader: the reference height and the last resort.
    pub is_leader: bool,
    /// Whether the last health check found it healthy.
    pub is_healthy: bool,
    /// When it was added, ISO-8601 UTC.
    pub when_added: String,
    /// The last block number it reported (kept when a check gets no answer).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub block_number: Option<u64>,
    /// When it was last checked, ISO-8601 UTC.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_checked: Option<String>,
    /// How long its last `eth_blockNumber` took, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub response_time_ms: Option<f64>,
    /// How many blocks it was behind the reference height at the last check.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lag_blocks: Option<u64>,
    /// Why it is unhealthy (or recovering), or the failure a healthy backend is tolerating
    /// within its hysteresis window; absent when healthy and the last check passed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub health_reason: Option<String>,
    /// The most recent failed check's reason, kept after recovery for diagnosis.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_failure: Option<String>,
    /// The `eth_chainId` it last reported.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chain_id: Option<u64>,
    /// Consecutive failed checks up to the last one (0 after a pass).
    #[serde(skip_serializing_if = "is_zero", default)]
    pub consecutive_failures: u32,
    /// Consecutive passed checks up to the last one (0 after a failure).
    #[serde(skip_serializing_if = "is_zero", default)]
    pub consecutive_passes: u32,
    /// The last check's time in milliseconds since the epoch, used to order overlapping checks.
    #[serde(skip)]
    pub last_checked_ms: Option<u64>,
}

impl Backend {
    /// A freshly added backend: not healthy until the first check says so.
    pub fn new(url: &BackendUrl, is_leader: bool, when_added: OffsetDateTime) -> Self {
        Self {
            url: url.as_str().to_owned(),
            is_leader,
            is_healthy: false,
            when_added: iso8601(when_added),
            ..Self::default()
        }
    }

    /// Whether no health check has ever been recorded for it (a new row, or one from before
    /// any check: neither check time is stored).
    pub fn never_checked(&self) -> bool {
        self.last_checked_ms.is_none() && self.last_checked.is_none()
    }

    /// Validates the stored URL.
    pub fn parsed_url(&self) -> Result<BackendUrl, UrlError> {
        BackendUrl::parse(&self.url)
    }

    /// A label for logs: the redacted URL, or a redacted form of an invalid one.
    pub fn label(&self) -> String {
        match self.parsed_url() {
            Ok(url) => url.redacted(),
            Err(_) => crate::model::backend_url::redact_unvalidated(&self.url),
        }
    }
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Formats a time as ISO-8601 UTC with microseconds, e.g. `2026-11-24T03:25:21.123456Z`.
pub fn iso8601(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn epoch_millis(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn new_backend_is_unhealthy_and_dated() {
        let url = BackendUrl::parse("http://10.0.0.1:8545").unwrap();
        let backend = Backend::new(&url, true, datetime!(2026-11-24 03:25:21.123456 UTC));
        assert!(!backend.is_healthy);
        assert_eq!(backend.when_added, "2026-11-24T03:25:21.123456Z");
        let json = serde_json::to_value(&backend).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "url": "http://10.0.0.1:8545",
                "is_leader": true,
                "is_healthy": false,
                "when_added": "2026-11-24T03:25:21.123456Z"
            })
        );
    }

    #[test]
    fn iso8601_converts_to_utc() {
        let at = datetime!(2026-01-02 03:04:05 +02:00);
        assert_eq!(iso8601(at), "2026-01-02T01:04:05.000000Z");
        assert_eq!(epoch_millis(datetime!(1970-01-01 00:00:01.5 UTC)), 1500);
    }
}
