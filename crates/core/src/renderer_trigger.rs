//! Asking the config renderer to run: an asynchronous Lambda `Invoke` (InvocationType `Event`).

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use thiserror::Error;

/// The invocation could not be queued.
#[derive(Debug, Error)]
#[error("invoking the config renderer failed: {0}")]
pub struct TriggerError(pub String);

/// Invokes the config renderer function (`CONFIG_RENDERER_FUNCTION`) without waiting for it.
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
        let payload = serde_json::json!({ "source": "jsonrpc-proxy", "reason": reason });
        self.client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload.to_string()))
            .send()
            .await
            .map_err(|e| {
                TriggerError(aws_sdk_lambda::error::DisplayErrorContext(&e).to_string())
            })?;
        tracing::info!(function = %self.function, reason, "config render requested");
        Ok(())
    }
}
