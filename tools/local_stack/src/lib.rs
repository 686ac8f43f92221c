//! The local stack: the whole jsonrpc-proxy system on one machine.
//!
//! - [`deploy`]: the `local` stage: its configuration, `sls deploy -s local`, and the deployed
//!   stack read back from the local AWS endpoint.
//! - [`lambda_emulator`]: runs the real Lambda binaries on the Lambda Runtime API and serves
//!   the Lambda `Invoke` API of the local AWS endpoint (everything else goes on to moto), so
//!   `sls invoke` and the functions' own invocations work exactly as on AWS.
//! - [`stack`]: starts moto, the CloudWatch recorder, anvil nodes, nginx, deploys the stage and
//!   runs its functions; plays what moto does not: EventBridge (the deployed schedule), S3
//!   notifications (the deployed bucket's), the ECS service (the config agent applies each new
//!   task definition's config to nginx), CloudWatch alarms and their SNS delivery ([`alarm`]).
//! - [`webhook`]: the Slack webhook stand-in.
//! - [`view`]: the terminal live view.

pub mod alarm;
pub mod deploy;
pub mod lambda_emulator;
pub mod stack;
pub mod view;
pub mod webhook;
