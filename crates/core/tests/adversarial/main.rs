//! The adversarial suite: failing dependencies (a fault-injecting proxy in front of moto and
//! the CloudWatch recorder) and concurrency (churn during rounds, overlapping rounds,
//! concurrent ECS updates). Hostile input is covered by `tests/integration` (hostile nodes,
//! malformed events) and `tests/property_url_and_render.rs`; secrets by
//! `crates/local_stack/tests/secrets.rs`. Lines starting `[figures]` feed docs/reliability.md.

mod concurrency;
mod faults;
mod support;
mod tls;
