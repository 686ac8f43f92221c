//! The adversarial suite: failing dependencies (a fault-injecting proxy in front of moto and
//! the CloudWatch recorder) and concurrency (churn during rounds, overlapping rounds,
//! concurrent ECS updates). Hostile input is covered by `tests/integration` (hostile nodes,
//! malformed events) and `tests/property_url_and_render.rs`; secrets by
//! `tools/local_stack/tests/secrets.rs`. Lines starting `[figures]` feed docs/reliability.md.

mod concurrency;
mod faults;
mod tls;

use devstack::testkit::{CheckerBuilder, TestStack};

/// A health checker through the stack's fault proxies that writes every row every round: these
/// scenarios exercise the write path under faults.
fn checker(stack: &TestStack) -> CheckerBuilder {
    stack.checker().row_refresh(std::time::Duration::ZERO)
}

/// One line of the suite's figures, printed for docs/reliability.md.
fn figure(what: &str, value: impl std::fmt::Display) {
    eprintln!("[figures] {what}: {value}");
}
