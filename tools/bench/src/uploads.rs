//! Part 5: the data plane's memory under slow uploads. Many connections each send a request
//! head and then trickle a large body, as a key holder (or a caller with a wrong key) can to
//! hold the task's memory; meanwhile another client calls once every 200 ms. Measures the
//! resident memory of nginx (master and workers, the rendered gated configuration, `worker_
//! processes auto` as in the image) idle and at its peak, what the uploads got, and whether the
//! other client was served. Rationale: docs/architecture.md, "The JSON-RPC gate".

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devstack::{Anvil, AnvilOptions};
use jsonrpc_proxy::render::gate::{key_sha256, GateClient, GatePolicy};
use serde::Serialize;

use crate::proxy::{bench_gate, bench_key_path, ours_fragment, BenchNginx};
use crate::sys;

/// The attacking client's key.
const ATTACKER_KEY: &str = "slow-uploads-key-0123456789abcdefghijklmn";

/// What part 5 runs.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Connections uploading at once.
    pub connections: usize,
    /// Bytes of each body.
    pub body_bytes: usize,
    /// Seconds each body takes to send.
    pub seconds: u64,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            connections: 200,
            body_bytes: 1 << 20,
            seconds: 10,
        }
    }
}

/// One attack.
#[derive(Debug, Clone, Serialize)]
pub struct UploadRow {
    /// Whose key the uploads use.
    pub caller: String,
    /// nginx's resident memory before the uploads, KiB.
    pub idle_kb: u64,
    /// Its highest resident memory while they ran, KiB.
    pub peak_kb: u64,
    /// Uploads answered 200, and with another status (401, 429…), and not answered.
    pub served: u64,
    /// Uploads refused, by status.
    pub refused: Vec<(u16, u64)>,
    /// Uploads that got no answer.
    pub unanswered: u64,
    /// The other client's calls during the attack: answered 200, and in all.
    pub probe_ok: u64,
    /// The other client's calls in all.
    pub probe_total: u64,
    /// The other client's slowest call, ms.
    pub probe_max_ms: f64,
}

/// Part 5's results.
#[derive(Debug, Clone, Serialize)]
pub struct UploadReport {
    /// Connections, body size, seconds per body.
    pub connections: usize,
    /// Bytes of each body.
    pub body_bytes: usize,
    /// Seconds each body takes to send.
    pub seconds: u64,
    /// nginx worker processes.
    pub workers: usize,
    /// The deployment's default `concurrent_requests`.
    pub default_concurrent_requests: u32,
    /// One row per attack.
    pub rows: Vec<UploadRow>,
}

/// The status of an HTTP answer read from `stream`, if one came.
fn answer_status(stream: &mut TcpStream) -> Option<u16> {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// One slow upload of a valid call padded to `options.body_bytes`; its answer's status.
fn slow_upload(port: u16, path: &str, options: &UploadOptions) -> Option<u16> {
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(options.seconds + 30)))
        .ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        options.body_bytes
    );
    stream.write_all(head.as_bytes()).ok()?;
    let steps = (options.seconds * 10).max(1) as usize;
    let padding = options.body_bytes.saturating_sub(call.len());
    let step = padding.div_ceil(steps).max(1);
    let mut sent = 0;
    while sent < padding {
        let n = step.min(padding - sent);
        if stream.write_all(&vec![b' '; n]).is_err() {
            // Refused before the body was read: the answer is already there.
            return answer_status(&mut stream);
        }
        sent += n;
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = stream.write_all(call);
    answer_status(&mut stream)
}

/// Runs the uploads at `path` against `port` while sampling nginx's memory and calling as the
/// bench client.
fn attack(
    caller: &str,
    nginx: &BenchNginx,
    port: u16,
    path: &str,
    options: &UploadOptions,
) -> UploadRow {
    let pgid = nginx.pid();
    let idle_kb = sys::group_rss_kb(pgid);
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(idle_kb));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(sys::group_rss_kb(pgid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let probes = Arc::new(Mutex::new(Vec::<(bool, f64)>::new()));
    let prober = {
        let (done, probes) = (done.clone(), probes.clone());
        let probe_path = bench_key_path();
        std::thread::spawn(move || {
            let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .and_then(|mut stream| {
                        stream
                            .set_read_timeout(Some(Duration::from_secs(10)))
                            .ok()?;
                        let request = format!(
                            "POST {probe_path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\
                             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        stream.write_all(request.as_bytes()).ok()?;
                        answer_status(&mut stream)
                    })
                    == Some(200);
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                if let Ok(mut list) = probes.lock() {
                    list.push((ok, ms));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let uploads: Vec<_> = (0..options.connections)
        .map(|_| {
            let (path, options) = (path.to_owned(), options.clone());
            std::thread::spawn(move || slow_upload(port, &path, &options))
        })
        .collect();
    let statuses: Vec<Option<u16>> = uploads
        .into_iter()
        .map(|upload| upload.join().unwrap_or(None))
        .collect();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let _ = prober.join();
    let mut refused = std::collections::BTreeMap::<u16, u64>::new();
    for status in statuses.iter().flatten().filter(|s| **s != 200) {
        *refused.entry(*status).or_default() += 1;
    }
    let probes = probes.lock().map(|p| p.clone()).unwrap_or_default();
    UploadRow {
        caller: caller.to_owned(),
        idle_kb,
        peak_kb: peak.load(Ordering::Relaxed),
        served: statuses.iter().filter(|s| **s == Some(200)).count() as u64,
        refused: refused.into_iter().collect(),
        unanswered: statuses.iter().filter(|s| s.is_none()).count() as u64,
        probe_ok: probes.iter().filter(|(ok, _)| *ok).count() as u64,
        probe_total: probes.len() as u64,
        probe_max_ms: probes.iter().map(|(_, ms)| *ms).fold(0.0, f64::max),
    }
}

/// Runs part 5: a wrong key, a valid key under the default `concurrent_requests`, and a valid
/// key allowed every connection (what the body buffer alone bounds), each on a fresh nginx.
pub fn run(options: &UploadOptions) -> Result<UploadReport, String> {
    let node = Anvil::start(AnvilOptions::default()).map_err(|e| format!("anvil: {e}"))?;
    let defaults = GatePolicy::default();
    let cases: [(&str, String, u32); 3] = [
        ("wrong key", "/v3/wrong-key-0123456789".to_owned(), 0),
        (
            "valid key, default concurrent_requests",
            format!("/v3/{ATTACKER_KEY}"),
            defaults.default_concurrent_requests,
        ),
        (
            "valid key, concurrent_requests above the uploads",
            format!("/v3/{ATTACKER_KEY}"),
            u32::try_from(options.connections * 2).unwrap_or(u32::MAX),
        ),
    ];
    let mut rows = Vec::new();
    for (index, (caller, path, concurrent)) in cases.iter().enumerate() {
        eprintln!("[bench] uploads: {caller}");
        let dir = std::path::PathBuf::from(format!(
            "/tmp/jrp-bench-uploads-{}-{index}",
            std::process::id()
        ));
        let mut gate = bench_gate(&dir);
        gate.clients.push(GateClient {
            name: "uploader".into(),
            key_sha256: key_sha256(ATTACKER_KEY),
            calls_per_second: defaults.default_calls_per_second,
            allow_methods: Vec::new(),
            concurrent_requests: (*concurrent).max(1),
            allowed_origins: Vec::new(),
        });
        let port = devstack::free_port().map_err(|e| e.to_string())?;
        let fragment = ours_fragment(port, &dir, &[node.url()], &node.url(), Some(&gate))?;
        let nginx = BenchNginx::start(&fragment, 0, port, &dir)?;
        // Let the workers settle before the idle figure.
        std::thread::sleep(Duration::from_millis(500));
        rows.push(attack(caller, &nginx, port, path, options));
    }
    Ok(UploadReport {
        connections: options.connections,
        body_bytes: options.body_bytes,
        seconds: options.seconds,
        workers: std::thread::available_parallelism().map_or(1, usize::from),
        default_concurrent_requests: defaults.default_concurrent_requests,
        rows,
    })
}
