//! The terminal live view: backends, the config in force, the gate's calls and refusals per
//! client, function counters, transitions.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use jsonrpc_proxy::functions::usage::{read_usage, Count, UsageSnapshot};
use jsonrpc_proxy::model::backend::Backend;
use jsonrpc_proxy::render::gate::USAGE_SOCKET;

use crate::lambda_emulator::FunctionStats;
use crate::stack::{AppliedConfig, Transition};

/// Everything one frame shows.
#[derive(Debug, Clone, Default)]
pub struct Frame<'a> {
    /// The proxy's URL.
    pub proxy_url: &'a str,
    /// Seconds between checks.
    pub interval_secs: f64,
    /// `DIFF_TOLERANCE`.
    pub tolerance: u64,
    /// Where the logs are.
    pub log_dir: &'a str,
    /// Backends as stored.
    pub backends: &'a [Backend],
    /// The config nginx runs.
    pub applied: Option<&'a AppliedConfig>,
    /// Function counters by name.
    pub functions: Vec<(&'a str, FunctionStats)>,
    /// Recent transitions, newest last.
    pub transitions: &'a [Transition],
    /// Recent background errors, newest last.
    pub errors: &'a [String],
    /// Rounds run.
    pub rounds: u64,
    /// The gate's counters since nginx started (`None`: no gate in force).
    pub usage: Option<&'a UsageSnapshot>,
}

/// The gate's counters, read from the local nginx's usage endpoint (the one the config agent
/// publishes from in a deployment: current to the frame, where CloudWatch lags a minute).
pub async fn read_frame_usage(socket_dir: &Path) -> Option<UsageSnapshot> {
    read_usage(&socket_dir.join(USAGE_SOCKET), Duration::from_secs(1))
        .await
        .ok()
}

/// Calls served (from the cache among them) and refused (by reason) per client.
fn render_usage(out: &mut String, usage: &UsageSnapshot) {
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>10}  REFUSED BY REASON",
        "CLIENT", "SERVED", "CACHED", "REFUSED"
    );
    let mut clients: Vec<&str> = usage.keys().map(|c| c.client.as_str()).collect();
    clients.dedup();
    for client in &clients {
        let (mut served, mut cached, mut refused) = (0, 0, 0);
        let mut reasons = Vec::new();
        for (counter, &count) in usage.iter().filter(|(c, _)| c.client == *client) {
            match &counter.count {
                Count::Served => served += count,
                Count::Cached => cached += count,
                Count::Refused(reason) if count > 0 => {
                    refused += count;
                    reasons.push(format!("{reason} {count}"));
                }
                Count::Refused(_) => {}
            }
        }
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>10}  {}",
            truncate(client, 24),
            served,
            cached,
            refused,
            reasons.join(", ")
        );
    }
    if clients.is_empty() {
        out.push_str("(no calls yet)\n");
    }
}

/// Renders a frame as plain text (no escape codes).
pub fn render_frame(frame: &Frame<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "jsonrpc-proxy local stack  ·  JSON-RPC at {}  ·  Ctrl-C stops everything",
        frame.proxy_url
    );
    let _ = writeln!(
        out,
        "health check every {:.0} s (round {})  ·  DIFF_TOLERANCE {}  ·  logs in {}",
        frame.interval_secs, frame.rounds, frame.tolerance, frame.log_dir
    );
    out.push('\n');
    let leader_block = frame
        .backends
        .iter()
        .find(|b| b.is_leader)
        .and_then(|b| b.block_number);
    let _ = writeln!(
        out,
        "{:<44} {:<7} {:<10} {:>8} {:>5} {:>9}  REASON",
        "BACKEND", "ROLE", "HEALTH", "BLOCK", "LAG", "LATENCY"
    );
    for backend in frame.backends {
        let lag = backend
            .lag_blocks
            .map(|l| l.to_string())
            .or_else(|| {
                leader_block
                    .zip(backend.block_number)
                    .map(|(l, b)| l.saturating_sub(b).to_string())
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<44} {:<7} {:<10} {:>8} {:>5} {:>9}  {}",
            truncate(&backend.label(), 44),
            if backend.is_leader { "leader" } else { "node" },
            if backend.is_healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            },
            backend
                .block_number
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            lag,
            backend
                .response_time_ms
                .map(|ms| format!("{ms:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            backend.health_reason.as_deref().unwrap_or("")
        );
    }
    if frame.backends.is_empty() {
        out.push_str("(no backends)\n");
    }
    out.push('\n');
    match frame.applied {
        Some(applied) => {
            let _ = writeln!(
                out,
                "config in force: {}  (applied {})",
                applied
                    .s3_path
                    .rsplit('/')
                    .next()
                    .unwrap_or(&applied.s3_path),
                applied.applied_at
            );
            if applied.backends.is_empty() {
                out.push_str("  routes to: nothing (404 server)\n");
            }
            for label in &applied.backends {
                let _ = writeln!(out, "  routes to: {label}");
            }
        }
        None => out.push_str("config in force: initial 404 server (no config rendered yet)\n"),
    }
    out.push('\n');
    match frame.usage {
        Some(usage) => render_usage(&mut out, usage),
        None => out.push_str("gate usage: not available (no gate in force)\n"),
    }
    out.push('\n');
    let counters: Vec<String> = frame
        .functions
        .iter()
        .map(|(name, stats)| format!("{name} {}✓ {}✗", stats.succeeded, stats.failed))
        .collect();
    let _ = writeln!(out, "functions: {}", counters.join("  "));
    out.push('\n');
    out.push_str("recent transitions:\n");
    for transition in frame
        .transitions
        .iter()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let _ = writeln!(
            out,
            "  {}  {}",
            time_of_day(&transition.at),
            transition.text
        );
    }
    if let Some(error) = frame.errors.last() {
        let _ = writeln!(out, "\nlast background error: {}", truncate(error, 200));
    }
    out
}

fn time_of_day(iso: &str) -> &str {
    iso.get(11..19).unwrap_or(iso)
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_shows_backends_config_and_transitions() {
        let backends = vec![Backend {
            url: "https://node.example/v3/SECRET".into(),
            is_leader: true,
            is_healthy: false,
            when_added: String::new(),
            block_number: Some(42),
            last_checked: None,
            response_time_ms: Some(1.25),
            lag_blocks: None,
            health_reason: Some("timeout after 2000 ms".into()),
            last_checked_ms: None,
            ..Backend::default()
        }];
        let applied = AppliedConfig {
            s3_path: "s3://b/abc_nginx.conf".into(),
            backends: vec!["http://127.0.0.1:1 (node)".into()],
            applied_at: "2026-11-24T03:00:00.000000Z".into(),
        };
        let usage = jsonrpc_proxy::functions::usage::parse_usage(
            br#"{"clients":{"(unknown)":{"served":0,"refused":{"key":2}},
                "demo":{"served":12,"cached":5,"refused":{"method":1,"rate":3}}}}"#,
        )
        .unwrap();
        let transitions = vec![Transition {
            at: "2026-11-24T03:00:01.000000Z".into(),
            text: "x healthy → unhealthy".into(),
        }];
        let text = render_frame(&Frame {
            proxy_url: "http://127.0.0.1:18545",
            interval_secs: 5.0,
            tolerance: 10,
            log_dir: "/tmp/x",
            backends: &backends,
            applied: Some(&applied),
            functions: vec![(
                "health_checker",
                FunctionStats {
                    succeeded: 3,
                    failed: 1,
                    last_error: None,
                },
            )],
            transitions: &transitions,
            errors: &[],
            rounds: 4,
            usage: Some(&usage),
        });
        assert!(text.contains("UNHEALTHY"));
        assert!(text.contains("timeout after 2000 ms"));
        assert!(text.contains("1.2 ms") || text.contains("1.3 ms"));
        assert!(!text.contains("SECRET"));
        assert!(text.contains("config in force: abc_nginx.conf"));
        assert!(text.contains("03:00:01  x healthy → unhealthy"));
        assert!(text.contains("health_checker 3✓ 1✗"));
        let demo = text.lines().find(|l| l.starts_with("demo")).unwrap();
        assert_eq!(
            demo.split_whitespace().collect::<Vec<_>>(),
            ["demo", "12", "5", "4", "method", "1,", "rate", "3"]
        );
        let unknown = text.lines().find(|l| l.starts_with("(unknown)")).unwrap();
        assert_eq!(
            unknown.split_whitespace().collect::<Vec<_>>(),
            ["(unknown)", "0", "0", "2", "key", "2"]
        );
        let without = render_frame(&Frame::default());
        assert!(without.contains("gate usage: not available"));
    }
}
