//! The shared library of the jsonrpc-proxy functions, in layers; each imports only the layers
//! above it in this list (docs/architecture.md, "Layers of the core crate"; `tests/layers.rs`
//! keeps it so):
//!
//! 1. [`settings`] (environment variables), [`telemetry`] (logging, the AWS configuration).
//! 2. [`model`]: the backend and client records, URLs, keys.
//! 3. [`health`]: probing a node, and judging the answers (pure).
//! 4. [`render`]: the routing plan, the gate's policy, nginx's configuration (pure).
//! 5. [`aws`]: DynamoDB, S3, CloudWatch and Lambda behind small adapters.
//! 6. [`functions`]: each function's body, settings and event.

pub mod aws;
pub mod functions;
pub mod health;
pub mod model;
pub mod render;
pub mod settings;
pub mod telemetry;

pub use lambda_runtime;

/// "a string", "an object", …: how error messages name the JSON type they got.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
