//! The local stack: the whole jsonrpc-proxy system on one machine.
//!
//! - [`lambda_emulator`]: runs the real Lambda binaries on the Lambda Runtime API and serves
//!   the Lambda `Invoke` API, so the health checker's asynchronous renderer invocation works
//!   exactly as on AWS.
//! - [`stack`]: starts moto, the CloudWatch recorder, anvil nodes, nginx and the functions;
//!   plays EventBridge (the schedule), S3 notifications (to `ecs_updater`) and the ECS service
//!   (the config agent applies each new task definition's config to nginx).
//! - [`view`]: the terminal live view.

pub mod lambda_emulator;
pub mod stack;
pub mod view;
