//! The adapters to AWS: the backends and clients tables ([`store`], [`clients_store`],
//! DynamoDB), the [`config_bucket`] (S3), [`metrics`] (CloudWatch) and the
//! [`renderer_trigger`] (Lambda). Imports the layers below, never a function.

pub mod clients_store;
pub mod config_bucket;
pub mod metrics;
pub mod renderer_trigger;
pub mod store;
