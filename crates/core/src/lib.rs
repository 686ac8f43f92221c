//! The shared library of the jsonrpc-proxy Lambda functions (docs/architecture.md, "Crates").
//!
//! - Pure parts, tested without I/O: [`backend_url`], [`health`], [`routing`], [`nginx`],
//!   [`metrics`], [`usage`] (the gate's counters as deltas), [`clients`] (names, method lists,
//!   keys and their hashes), and the events and settings of each function.
//! - Adapters: [`store`] and [`clients_store`] (DynamoDB), [`config_bucket`] (S3), [`metrics::MetricsPublisher`]
//!   (CloudWatch), [`renderer_trigger`] (Lambda), [`ecs_updater::EcsUpdater`] (ECS), [`probe`]
//!   (the nodes, over HTTP), [`usage::read_usage`] (the gate's usage socket).
//! - Function bodies, each with its settings: [`admin`] (`add_backend`, `list_backends`,
//!   `remove_backend`), [`clients`] (`add_client`,
//!   `list_clients`, `remove_client`), [`health_checker`], [`config_renderer`], [`ecs_updater`].
//! - [`settings`] reads environment variables; [`telemetry`] sets up logging and AWS.

pub mod admin;
pub mod backend;
pub mod backend_url;
pub mod clients;
pub mod clients_store;
pub mod config_bucket;
pub mod config_renderer;
pub mod ecs_updater;
pub mod gate;
pub mod health;
pub mod health_checker;
pub mod metrics;
pub mod nginx;
pub mod probe;
pub mod renderer_trigger;
pub mod routing;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod usage;

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
