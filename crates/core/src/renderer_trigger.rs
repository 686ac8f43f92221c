//! Asking the config renderer to run: an asynchronous Lambda `Invoke` (InvocationType `Event`).
//! Rationale: docs/architecture.md, "Level-triggered renders".

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use thiserror::Error;

use crate::config_renderer::RenderRequest;

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
