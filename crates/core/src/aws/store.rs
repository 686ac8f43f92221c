//! The DynamoDB adapter: the backends table (docs/architecture.md, "Table schema"). Why its
//! writes are conditional: "Conditional writes".

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use futures::stream::{self, Stream, StreamExt};
use thiserror::Error;
use time::OffsetDateTime;

use crate::health::judgement::Verdict;
use crate::model::backend::{epoch_millis, iso8601, Backend};
use crate::model::backend_url::BackendUrl;

/// A table operation failed.
#[derive(Debug, Error)]
#[error("DynamoDB {operation} failed: {message}")]
pub struct StoreError {
    /// The operation (`Scan`, `UpdateItem`, …).
    pub operation: &'static str,
    /// The SDK's error with its context (never an item's URL).
    pub message: String,
}

impl StoreError {
    pub(crate) fn from_sdk<E, R>(operation: &'static str, error: &SdkError<E, R>) -> Self
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        Self {
            operation,
            message: DisplayErrorContext(error).to_string(),
        }
    }
}

/// What happened to a health-check write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckWrite {
    /// The item was updated.
    Written,
    /// The item is gone (removed during the round) or a newer round already wrote it.
    Skipped,
}

/// The backends table (`DYNAMODB_TABLE`) in DynamoDB.
#[derive(Debug, Clone)]
pub struct BackendStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl BackendStore {
    /// An adapter for one table (`DYNAMODB_TABLE`).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Every backend, following Scan pages to the end, sorted by URL.
    pub async fn scan_all(&self) -> Result<Vec<Backend>, StoreError> {
        let mut backends = Vec::new();
        let pages = self.scan_pages(None);
        futures::pin_mut!(pages);
        while let Some(page) = pages.next().await {
            backends.extend(page?);
        }
        backends.sort_by(|a, b| a.url.cmp(&b.url));
        Ok(backends)
    }

    /// The table page by page (consistent reads), each page as soon as it arrives, so that a
    /// caller can start working on the first page while the next one is read. `page_items`
    /// caps the items per page (DynamoDB's own cap is 1 MB). Ends after the first error.
    pub fn scan_pages(
        &self,
        page_items: Option<i32>,
    ) -> impl Stream<Item = Result<Vec<Backend>, StoreError>> + '_ {
        // State: the next page's start key; `None` once the last page was read.
        let first: Option<Option<HashMap<String, AttributeValue>>> = Some(None);
        stream::try_unfold(first, move |state| async move {
            let Some(start_key) = state else {
                return Ok(None);
            };
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_limit(page_items)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|e| StoreError::from_sdk("Scan", &e))?;
            let mut backends = Vec::with_capacity(page.items().len());
            for item in page.items() {
                match backend_from_item(item) {
                    Some(backend) => backends.push(backend),
                    None => tracing::warn!("skipping a table item without a string url"),
                }
            }
            let next = match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => Some(Some(key.clone())),
                _ => None,
            };
            Ok(Some((backends, next)))
        })
    }

    /// Adds a backend, or updates `is_leader` of a known one keeping its history.
    /// Returns the stored item and whether it was created.
    pub async fn upsert(
        &self,
        url: &BackendUrl,
        is_leader: bool,
        now: OffsetDateTime,
    ) -> Result<(Backend, bool), StoreError> {
        let fresh = Backend::new(url, is_leader, now);
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("url", AttributeValue::S(fresh.url.clone()))
            .update_expression(
                "SET is_leader = :leader, when_added = if_not_exists(when_added, :now), \
                 is_healthy = if_not_exists(is_healthy, :unhealthy)",
            )
            .expression_attribute_values(":leader", AttributeValue::Bool(is_leader))
            .expression_attribute_values(":now", AttributeValue::S(fresh.when_added.clone()))
            .expression_attribute_values(":unhealthy", AttributeValue::Bool(false))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| StoreError::from_sdk("UpdateItem", &e))?;
        match output
            .attributes()
            .filter(|a| !a.is_empty())
            .and_then(backend_from_item)
        {
            Some(old) => Ok((Backend { is_leader, ..old }, false)),
            None => Ok((fresh, true)),
        }
    }

    /// Removes a backend; returns the removed item, `None` when there was none.
    pub async fn delete(&self, url: &str) -> Result<Option<Backend>, StoreError> {
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("url", AttributeValue::S(url.to_owned()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| StoreError::from_sdk("DeleteItem", &e))?;
        Ok(output
            .attributes()
            .filter(|a| !a.is_empty())
            .and_then(backend_from_item))
    }

    /// Writes a health-check verdict back, only if the backend still exists and no newer
    /// round has written it (so a removed backend is never recreated and overlapping rounds
    /// never move a backend back in time). Overlapping rounds may compute the hysteresis
    /// counters from the same earlier state; the newer write wins, so at worst a transition
    /// waits one more round.
    pub async fn record_check(
        &self,
        verdict: &Verdict,
        checked_at: OffsetDateTime,
    ) -> Result<CheckWrite, StoreError> {
        let checked_ms = epoch_millis(checked_at);
        let mut set = vec![
            "is_healthy = :healthy",
            "last_checked = :checked",
            "last_checked_ms = :checked_ms",
            "consecutive_failures = :failures",
            "consecutive_passes = :passes",
        ];
        let mut remove = Vec::new();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("url", AttributeValue::S(verdict.url.clone()))
            .condition_expression(
                "attribute_exists(#url) AND (attribute_not_exists(last_checked_ms) OR last_checked_ms < :checked_ms)",
            )
            .expression_attribute_names("#url", "url")
            .expression_attribute_values(":healthy", AttributeValue::Bool(verdict.is_healthy))
            .expression_attribute_values(":checked", AttributeValue::S(iso8601(checked_at)))
            .expression_attribute_values(":checked_ms", AttributeValue::N(checked_ms.to_string()))
            .expression_attribute_values(
                ":failures",
                AttributeValue::N(verdict.consecutive_failures.to_string()),
            )
            .expression_attribute_values(
                ":passes",
                AttributeValue::N(verdict.consecutive_passes.to_string()),
            );
        if let Some(block) = verdict.observed_block {
            set.push("block_number = :block");
            request =
                request.expression_attribute_values(":block", AttributeValue::N(block.to_string()));
        }
        if let Some(chain_id) = verdict.chain_id {
            set.push("chain_id = :chain");
            request = request
                .expression_attribute_values(":chain", AttributeValue::N(chain_id.to_string()));
        }
        match verdict.response_time_ms {
            Some(ms) => {
                set.push("response_time_ms = :rt");
                request = request
                    .expression_attribute_values(":rt", AttributeValue::N(format!("{ms:.3}")));
            }
            None => remove.push("response_time_ms"),
        }
        match verdict.lag {
            Some(lag) => {
                set.push("lag_blocks = :lag");
                request =
                    request.expression_attribute_values(":lag", AttributeValue::N(lag.to_string()));
            }
            None => remove.push("lag_blocks"),
        }
        match &verdict.health_reason {
            Some(reason) => {
                set.push("health_reason = :reason");
                request = request
                    .expression_attribute_values(":reason", AttributeValue::S(reason.clone()));
            }
            None => remove.push("health_reason"),
        }
        if let Some(failure) = verdict.last_failure() {
            set.push("last_failure = :failure");
            request = request.expression_attribute_values(":failure", AttributeValue::S(failure));
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(" REMOVE ");
            expression.push_str(&remove.join(", "));
        }
        match request.update_expression(expression).send().await {
            Ok(_) => Ok(CheckWrite::Written),
            Err(error) => {
                let conditional = error
                    .as_service_error()
                    .is_some_and(aws_sdk_dynamodb::operation::update_item::UpdateItemError::is_conditional_check_failed_exception);
                if conditional {
                    Ok(CheckWrite::Skipped)
                } else {
                    Err(StoreError::from_sdk("UpdateItem", &error))
                }
            }
        }
    }
}

/// Decodes a table item; `None` when it has no string `url`. Other attributes are read
/// leniently (a missing or mistyped flag counts as `false`), so legacy items still list.
pub fn backend_from_item(item: &HashMap<String, AttributeValue>) -> Option<Backend> {
    let string = |name: &str| match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    };
    let boolean = |name: &str| matches!(item.get(name), Some(AttributeValue::Bool(true)));
    let number = |name: &str| match item.get(name) {
        Some(AttributeValue::N(n)) => Some(n.clone()),
        _ => None,
    };
    let integer = |name: &str| {
        number(name).and_then(|n| {
            n.parse::<u64>().ok().or_else(|| {
                n.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        })
    };
    let counter = |name: &str| integer(name).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    Some(Backend {
        url: string("url")?,
        is_leader: boolean("is_leader"),
        is_healthy: boolean("is_healthy"),
        when_added: string("when_added").unwrap_or_default(),
        block_number: integer("block_number"),
        last_checked: string("last_checked"),
        response_time_ms: number("response_time_ms")
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|f| f.is_finite()),
        lag_blocks: integer("lag_blocks"),
        health_reason: string("health_reason"),
        last_checked_ms: integer("last_checked_ms"),
        last_failure: string("last_failure"),
        chain_id: integer("chain_id"),
        consecutive_failures: counter("consecutive_failures"),
        consecutive_passes: counter("consecutive_passes"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_original_and_new_items() {
        let mut item = HashMap::new();
        item.insert("url".to_owned(), AttributeValue::S("http://a:1".into()));
        item.insert("is_leader".to_owned(), AttributeValue::Bool(true));
        item.insert("is_healthy".to_owned(), AttributeValue::S("yes".into()));
        item.insert("block_number".to_owned(), AttributeValue::N("123".into()));
        item.insert(
            "response_time_ms".to_owned(),
            AttributeValue::N("1.250".into()),
        );
        item.insert("lag_blocks".to_owned(), AttributeValue::N("2.0".into()));
        let backend = backend_from_item(&item).unwrap();
        assert!(backend.is_leader);
        assert!(!backend.is_healthy, "a mistyped flag reads as false");
        assert_eq!(backend.block_number, Some(123));
        assert_eq!(backend.response_time_ms, Some(1.25));
        assert_eq!(backend.lag_blocks, Some(2));
        assert_eq!(backend.when_added, "");

        assert_eq!(backend.consecutive_failures, 0);
        assert_eq!(backend.last_failure, None);

        item.insert("chain_id".to_owned(), AttributeValue::N("137".into()));
        item.insert(
            "consecutive_failures".to_owned(),
            AttributeValue::N("1".into()),
        );
        item.insert(
            "consecutive_passes".to_owned(),
            AttributeValue::N("0".into()),
        );
        item.insert(
            "last_failure".to_owned(),
            AttributeValue::S("timeout after 2000 ms".into()),
        );
        item.insert(
            "health_reason".to_owned(),
            AttributeValue::S("timeout after 2000 ms (1 of 2 failures before unhealthy)".into()),
        );
        let backend = backend_from_item(&item).unwrap();
        assert_eq!(backend.chain_id, Some(137));
        assert_eq!(backend.consecutive_failures, 1);
        assert_eq!(
            backend.last_failure.as_deref(),
            Some("timeout after 2000 ms")
        );
        let shown = serde_json::to_value(&backend).unwrap();
        assert_eq!(shown["chain_id"], 137);
        assert_eq!(shown["consecutive_failures"], 1);
        assert!(
            shown.get("consecutive_passes").is_none(),
            "zero counters are left out"
        );
        assert_eq!(
            shown["health_reason"],
            "timeout after 2000 ms (1 of 2 failures before unhealthy)"
        );

        item.remove("url");
        assert!(backend_from_item(&item).is_none());
    }
}
