//! Asking the config renderer to run: an asynchronous Lambda `Invoke` (InvocationType `Event`).
//! Rationale: docs/architecture.md, "Level-triggered renders".

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use thiserror::Error;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The invocation could not be queued.
#[derive(Debug, Error)]
#[error("invoking the config renderer failed: {0}")]
pub struct TriggerError(pub String);

/// Invokes the config renderer function without waiting for it.
#[derive(Debug, Clone)]
pub struct RendererTrigger {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl RendererTrigger {
    /// A trigger for one function name or ARN.
    pub fn new(client: aws_sdk_lambda::Client, function: impl Into<String>) -> Self {
        Self {
            client,
            function: function.into(),
        }
    }

    /// Queues one render; `reason` is passed along in the event for the renderer's log.
    pub async fn request_render(&self, reason: &str) -> Result<(), TriggerError> {
        let payload = serde_json::to_string(&RenderRequest {
            source: Some("jsonrpc-proxy".into()),
            reason: Some(reason.to_owned()),
            ..RenderRequest::default()
        })
        .map_err(|e| TriggerError(e.to_string()))?;
        self.client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| {
                TriggerError(aws_sdk_lambda::error::DisplayErrorContext(&e).to_string())
            })?;
        tracing::info!(function = %self.function, reason, "config render requested");
        Ok(())
    }
}

/// The event the config renderer receives: what [`RendererTrigger`] sends, or `{"force": true}` by hand.
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
