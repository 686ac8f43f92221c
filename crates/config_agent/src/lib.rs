//! # config_agent
//!
//! The entrypoint of the nginx container (and a tool to drive any local nginx).
//!
//! At start (`config_agent run`), it fetches the configuration `S3_CONFIG_PATH` names (or, when
//! that is unset or unreadable, the one the renderer's `latest.json` pointer names), writes it
//! over the default server configuration, and checks it with `nginx -t`. An unreadable or
//! invalid configuration is logged with the reason and the default 404 configuration is
//! installed instead, so the container always starts: it never crash-loops on a bad render.
//! Then nginx runs in the foreground: the agent replaces itself with nginx, or, when a poll
//! interval is set (`CONFIG_POLL_SECONDS`, 30 s by default when there is a pointer), supervises
//! it, forwarding signals, and follows the pointer: a new configuration is validated with
//! `nginx -t` and loaded with a graceful reload, and counts as applied once nginx's workers of
//! the previous one have stopped accepting connections; an invalid one is refused and the
//! last good one stays.
//!
//! With `CLOUDWATCH_NAMESPACE` and `STACK_NAME` set, `run` also supervises nginx without
//! polling, to publish the gate's usage per client every minute ([`usage`]).
//!
//! `config_agent apply` fetches, validates, installs and reloads once, and waits the same way
//! (exit status 0/1).
//!
//! - [`settings`]: flags and environment;
//! - [`source`]: S3 (through the core library's [`jsonrpc_proxy::aws::config_bucket`]);
//! - [`install`]: atomic writes, `nginx -t`, restore on refusal;
//! - [`nginx`]: nginx commands, its pid file, and safe (URL-redacted) error output;
//! - [`workers`]: nginx's workers in `/proc`, to see a reload take over;
//! - [`status`]: whether the configuration in force is the newest (metrics);
//! - [`usage`]: the gate's usage per client, to CloudWatch;
//! - [`agent`]: the two modes.

pub mod agent;
pub mod install;
pub mod nginx;
pub mod settings;
pub mod source;
pub mod status;
pub mod usage;
pub mod workers;

pub use agent::{Agent, Applied, CheckOutcome};
pub use settings::{parse_args, Mode, S3Location};
