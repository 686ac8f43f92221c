//! The agent's usage step: reads the gate's per-client counters from nginx's usage socket and
//! publishes what they gained to CloudWatch (the pure part is [`jsonrpc_proxy::functions::usage`]).
//! Rationale: docs/architecture.md, "Usage per client".

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use jsonrpc_proxy::aws::metrics::{MetricsPublisher, MAX_DATA_PER_CALL};
use jsonrpc_proxy::functions::usage::{read_usage, UsageDeltas, UsageError};

/// How long one read of the usage endpoint may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What one usage step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageStep {
    /// Whether the usage endpoint was read (false: no gate in force, or it failed).
    pub read: bool,
    /// Data points published.
    pub published: usize,
    /// Counters still waiting (their publication failed; tried again next step).
    pub pending: usize,
}

/// Publishes the gate's usage (`CLOUDWATCH_NAMESPACE`, dimensions `Stack name` = `STACK_NAME`,
/// `Client`, and `Reason` for refusals).
#[derive(Debug, Clone)]
pub struct UsageReporter {
    /// CloudWatch, in the stack's namespace.
    pub publisher: MetricsPublisher,
    /// `STACK_NAME`.
    pub stack_name: String,
    /// The usage server's socket ([`jsonrpc_proxy::render::gate::USAGE_SOCKET`] in the socket dir).
    pub socket: PathBuf,
    /// Counts read but not yet published.
    pub deltas: UsageDeltas,
}

impl UsageReporter {
    /// A reporter reading `socket_dir`'s usage socket.
    pub fn new(
        publisher: MetricsPublisher,
        stack_name: String,
        socket_dir: &std::path::Path,
    ) -> Self {
        Self {
            publisher,
            stack_name,
            socket: socket_dir.join(jsonrpc_proxy::render::gate::USAGE_SOCKET),
            deltas: UsageDeltas::default(),
        }
    }

    /// Reads the counters, adds what they gained to the pending counts and publishes those;
    /// what fails to publish stays pending for the next step. Failures are logged, never fatal.
    pub async fn step(&mut self) -> UsageStep {
        let read = match read_usage(&self.socket, READ_TIMEOUT).await {
            Ok(snapshot) => {
                self.deltas.observe(snapshot);
                true
            }
            Err(UsageError::Unavailable { .. }) => {
                tracing::debug!("no gate in force: no usage to read");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the gate's usage; trying again next time");
                false
            }
        };
        let points = self.deltas.points(&self.stack_name);
        let now = SystemTime::now();
        let mut published = 0;
        for batch in points.chunks(MAX_DATA_PER_CALL) {
            let data: Vec<_> = batch.iter().map(|(_, point)| point.clone()).collect();
            match self.publisher.publish(&data, now).await {
                Ok(_) => {
                    self.deltas
                        .published(batch.iter().map(|(counter, _)| counter));
                    published += data.len();
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot publish the gate's usage; kept for next time");
                }
            }
        }
        let pending = self.deltas.pending().len();
        if published > 0 || pending > 0 {
            tracing::info!(published, pending, "gate usage published");
        }
        UsageStep {
            read,
            published,
            pending,
        }
    }
}
