//! Part 2: proxy overhead (wrk against anvil, straight and through nginx), and what a node's
//! death costs clients of each nginx configuration before any control plane reacts.
//!
//! nginx runs with a main configuration like the official `nginx:stable` image's (the one
//! `docker/Dockerfile` builds on): `worker_processes auto`, `worker_connections 1024`, the
//! `main` access log, `sendfile on`, `keepalive_timeout 65`; only paths differ. The rendered
//! configuration (or the original's style) is included in `http { }`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devstack::{Anvil, AnvilOptions};
use jsonrpc_proxy::backend_url::BackendUrl;
use jsonrpc_proxy::nginx::{render_with, Layering, RenderOptions};
use jsonrpc_proxy::routing::{RouteTarget, RoutingPlan};
use serde::{Deserialize, Serialize};

use crate::sys;

/// The request every benchmark sends.
pub const BLOCK_NUMBER: &str = r#"{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}"#;

/// wrk's script: POST [`BLOCK_NUMBER`], print a JSON summary line prefixed `BENCH `.
const WRK_SCRIPT: &str = r#"wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"#;

/// What wrk reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrkResult {
    /// Requests completed.
    pub requests: u64,
    /// Run time, µs.
    pub duration_us: u64,
    /// Connect errors.
    pub connect: u64,
    /// Read errors.
    pub read: u64,
    /// Write errors.
    pub write: u64,
    /// Answers with a status other than 2xx/3xx.
    pub status: u64,
    /// Timeouts.
    pub timeout: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Slowest, µs.
    pub max_us: u64,
}

impl WrkResult {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        if self.duration_us == 0 {
            0.0
        } else {
            self.requests as f64 / (self.duration_us as f64 / 1e6)
        }
    }

    /// Every kind of error.
    pub fn errors(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

/// Parses wrk's output: the `BENCH {...}` line of [`WRK_SCRIPT`].
pub fn parse_wrk(output: &str) -> Option<WrkResult> {
    output
        .lines()
        .find_map(|line| line.strip_prefix("BENCH "))
        .and_then(|json| serde_json::from_str(json).ok())
}

/// One measured configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyRow {
    /// What was measured.
    pub name: String,
    /// nginx worker processes (0: no nginx).
    pub workers: u32,
    /// wrk's figures.
    pub wrk: WrkResult,
    /// nginx CPU time (all its processes) per request, µs; 0 without nginx.
    pub nginx_cpu_us: f64,
}

/// A node's death under load, through one configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeathRow {
    /// The configuration.
    pub name: String,
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed (transport error or a status other than 200).
    pub errors: u64,
    /// Slowest request, ms.
    pub max_ms: f64,
    /// Seconds of load after the kill.
    pub after_kill_secs: f64,
}

/// Everything part 2 measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyReport {
    /// wrk rows; the first is the direct one.
    pub rows: Vec<ProxyRow>,
    /// Node death rows.
    pub deaths: Vec<DeathRow>,
    /// wrk connections.
    pub connections: u32,
    /// wrk seconds per row.
    pub seconds: u32,
    /// nginx version.
    pub nginx_version: String,
    /// wrk version.
    pub wrk_version: String,
}

/// How part 2 runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    /// wrk seconds per configuration.
    pub seconds: u32,
    /// wrk connections.
    pub connections: u32,
    /// Seconds of client load in each node-death run.
    pub death_seconds: u32,
    /// Also run the diagnostic variants (keepalive in the original's style, one worker).
    pub diagnostics: bool,
}

/// An nginx started by the bench, with its own prefix; killed (with its workers) on drop.
pub struct BenchNginx {
    child: Child,
    prefix: tempfile::TempDir,
    socket_dir: PathBuf,
}

impl BenchNginx {
    /// Starts nginx with `fragment` in `http { }` and `workers` worker processes (0 = auto),
    /// waits until `port` accepts connections.
    pub fn start(
        fragment: &str,
        workers: u32,
        port: u16,
        socket_dir: &Path,
    ) -> Result<Self, String> {
        let prefix = tempfile::Builder::new()
            .prefix("bench-nginx-")
            .tempdir()
            .map_err(|e| format!("creating an nginx prefix: {e}"))?;
        let p = prefix.path().display().to_string();
        for sub in ["conf", "logs", "temp"] {
            std::fs::create_dir_all(prefix.path().join(sub))
                .map_err(|e| format!("creating {p}/{sub}: {e}"))?;
        }
        std::fs::create_dir_all(socket_dir)
            .map_err(|e| format!("creating {}: {e}", socket_dir.display()))?;
        for dir in [prefix.path(), &prefix.path().join("temp"), socket_dir] {
            set_mode(dir, 0o755)?;
        }
        let workers = if workers == 0 {
            "auto".to_owned()
        } else {
            workers.to_string()
        };
        let main = format!(
            "# The official nginx image's main configuration, with the bench's paths.
worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/logs/error.log notice;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    log_format main '$remote_addr - $remote_user [$time_local] \"$request\" '
                    '$status $body_bytes_sent \"$http_referer\" '
                    '\"$http_user_agent\" \"$http_x_forwarded_for\"';
    access_log {p}/logs/access.log main;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {p}/temp/client_body;
    proxy_temp_path {p}/temp/proxy;
    fastcgi_temp_path {p}/temp/fastcgi;
    uwsgi_temp_path {p}/temp/uwsgi;
    scgi_temp_path {p}/temp/scgi;
    include {p}/conf/fragment.conf;
}}
"
        );
        let conf = prefix.path().join("conf/nginx.conf");
        std::fs::write(&conf, main).map_err(|e| format!("writing nginx.conf: {e}"))?;
        // `@PREFIX@` in a fragment stands for the prefix directory (for log paths).
        std::fs::write(
            prefix.path().join("conf/fragment.conf"),
            fragment.replace("@PREFIX@", &p),
        )
        .map_err(|e| format!("writing the fragment: {e}"))?;
        let bin = nginx_bin();
        let test = Command::new(&bin)
            .args(["-t", "-q", "-p"])
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.path().join("logs/error.log"))
            .output()
            .map_err(|e| format!("running {}: {e}", bin.display()))?;
        if !test.status.success() {
            return Err(format!(
                "nginx -t refused the configuration: {}",
                String::from_utf8_lossy(&test.stderr)
            ));
        }
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&bin)
                .arg("-p")
                .arg(prefix.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(prefix.path().join("logs/error.log"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("starting nginx: {e}"))?
        };
        let nginx = Self {
            child,
            prefix,
            socket_dir: socket_dir.to_owned(),
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(nginx);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "nginx did not listen on {port} within 15 s: {}",
            std::fs::read_to_string(nginx.prefix.path().join("logs/error.log")).unwrap_or_default()
        ))
    }
}

impl BenchNginx {
    /// CPU seconds used so far by nginx (master and workers).
    pub fn cpu_seconds(&self) -> f64 {
        sys::group_cpu_seconds(self.child.id())
    }
}

impl Drop for BenchNginx {
    fn drop(&mut self) {
        sys::kill_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
        if let Ok(entries) = std::fs::read_dir(&self.socket_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.socket_dir);
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o} {}: {e}", path.display()))
}

fn nginx_bin() -> PathBuf {
    std::env::var_os("NGINX_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

fn version_of(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stderr).into_owned()
                + &String::from_utf8_lossy(&o.stdout);
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

/// Runs wrk against `url`.
pub fn run_wrk(url: &str, seconds: u32, connections: u32) -> Result<WrkResult, String> {
    let mut script = tempfile::Builder::new()
        .prefix("bench-wrk-")
        .suffix(".lua")
        .tempfile()
        .map_err(|e| format!("creating the wrk script: {e}"))?;
    std::io::Write::write_all(&mut script, WRK_SCRIPT.as_bytes())
        .map_err(|e| format!("writing the wrk script: {e}"))?;
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .min(connections as usize)
        .max(1);
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(script.path())
        .arg(url)
        .output()
        .map_err(|e| format!("running wrk (apt-get install -y wrk): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_wrk(&text).ok_or_else(|| {
        format!(
            "wrk gave no summary ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The rendered configuration for two nodes with the leader as backup. With
/// [`Layering::DirectWherePossible`] (what is deployed) plain `http://host:port` nodes such as
/// anvil's are direct members of the public upstream; [`Layering::InternalForAll`] renders
/// every backend through its internal server, the two-layer configuration from before, for
/// comparison.
pub fn ours_fragment(
    port: u16,
    socket_dir: &Path,
    nodes: &[String],
    leader: &str,
    layering: Layering,
) -> Result<String, String> {
    let target = |url: &str, is_leader| {
        BackendUrl::parse(url)
            .map(|url| RouteTarget { url, is_leader })
            .map_err(|e| format!("{url}: {e}"))
    };
    let plan = RoutingPlan {
        primaries: nodes
            .iter()
            .map(|u| target(u, false))
            .collect::<Result<_, _>>()?,
        backup: Some(target(leader, true)?),
    };
    let options = RenderOptions {
        listen_port: port,
        socket_dir: socket_dir.display().to_string(),
        ..RenderOptions::default()
    };
    options.validate().map_err(|e| e.to_string())?;
    Ok(render_with(&plan, &options, layering))
}

/// The original's load-balanced case: an `upstream` of `host:port`s, no keepalive, retries on
/// `error timeout` only (so never for POST).
pub fn original_fragment(port: u16, node_ports: &[u16], keepalive: bool) -> String {
    let mut out = String::from("upstream backend {\n");
    for p in node_ports {
        out.push_str(&format!("    server 127.0.0.1:{p};\n"));
    }
    if keepalive {
        out.push_str("    keepalive 32;\n");
    }
    out.push_str("}\n\n");
    out.push_str(&format!(
        "server {{
    listen {port} default_server;
    server_name _;
    location / {{
        proxy_pass http://backend;
        proxy_next_upstream error timeout;
{}    }}
}}
",
        if keepalive {
            "        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n"
        } else {
            ""
        }
    ));
    out
}

/// The rendered configuration with the public server's access log buffered (64 KiB, flushed
/// every second) instead of one write per request.
fn with_buffered_access_log(fragment: &str) -> String {
    fragment.replacen(
        "    server_name _;\n",
        "    server_name _;\n    access_log @PREFIX@/logs/access.log main buffer=64k flush=1s;\n",
        1,
    )
}

struct Case {
    name: &'static str,
    fragment: String,
    workers: u32,
}

/// Runs part 2.
pub async fn run(options: &ProxyOptions) -> Result<ProxyReport, String> {
    let start_anvil = || {
        tokio::task::block_in_place(|| Anvil::start(AnvilOptions::default()))
            .map_err(|e| e.to_string())
    };
    let leader = start_anvil()?;
    let mut node_a = start_anvil()?;
    let node_b = start_anvil()?;
    let nodes = vec![node_a.url(), node_b.url()];
    let node_ports = [node_a.port(), node_b.port()];
    let socket_dir = PathBuf::from(format!("/tmp/jrp-bench-{}", std::process::id()));

    let port = devstack::free_port().map_err(|e| e.to_string())?;
    let mut cases = vec![
        Case {
            name: "ours (rendered config)",
            fragment: ours_fragment(
                port,
                &socket_dir,
                &nodes,
                &leader.url(),
                Layering::DirectWherePossible,
            )?,
            workers: 0,
        },
        Case {
            name: "original's style",
            fragment: original_fragment(port, &node_ports, false),
            workers: 0,
        },
    ];
    if options.diagnostics {
        let ours = ours_fragment(
            port,
            &socket_dir,
            &nodes,
            &leader.url(),
            Layering::DirectWherePossible,
        )?;
        cases.push(Case {
            name: "diagnostic: original's style + upstream keepalive",
            fragment: original_fragment(port, &node_ports, true),
            workers: 0,
        });
        cases.push(Case {
            name: "diagnostic: ours with every backend through the internal layer",
            fragment: ours_fragment(
                port,
                &socket_dir,
                &nodes,
                &leader.url(),
                Layering::InternalForAll,
            )?,
            workers: 0,
        });
        cases.push(Case {
            name: "diagnostic: ours, access log buffered",
            fragment: with_buffered_access_log(&ours),
            workers: 0,
        });
        cases.push(Case {
            name: "diagnostic: ours, worker_processes 1",
            fragment: ours,
            workers: 1,
        });
    }

    let mut rows = Vec::new();
    eprintln!("[bench] proxy: direct to anvil");
    let direct = tokio::task::block_in_place(|| {
        run_wrk(&node_a.url(), options.seconds, options.connections)
    })?;
    rows.push(ProxyRow {
        name: "direct to anvil".into(),
        workers: 0,
        wrk: direct,
        nginx_cpu_us: 0.0,
    });
    let proxy_url = format!("http://127.0.0.1:{port}/");
    for case in &cases {
        eprintln!("[bench] proxy: {}", case.name);
        let nginx = BenchNginx::start(&case.fragment, case.workers, port, &socket_dir)?;
        let cpu_before = nginx.cpu_seconds();
        let wrk = tokio::task::block_in_place(|| {
            run_wrk(&proxy_url, options.seconds, options.connections)
        })?;
        let cpu = nginx.cpu_seconds() - cpu_before;
        drop(nginx);
        rows.push(ProxyRow {
            name: case.name.into(),
            workers: case.workers,
            nginx_cpu_us: cpu * 1e6 / (wrk.requests.max(1) as f64),
            wrk,
        });
    }

    let mut deaths = Vec::new();
    for case in cases.iter().take(2) {
        eprintln!("[bench] node death: {}", case.name);
        let nginx = BenchNginx::start(&case.fragment, case.workers, port, &socket_dir)?;
        let row = death_run(case.name, &proxy_url, &mut node_a, options.death_seconds).await;
        drop(nginx);
        tokio::task::block_in_place(|| node_a.restart()).map_err(|e| e.to_string())?;
        deaths.push(row?);
    }
    Ok(ProxyReport {
        rows,
        deaths,
        connections: options.connections,
        seconds: options.seconds,
        nginx_version: version_of(&nginx_bin().display().to_string(), "-v")
            .trim_start_matches("nginx version: ")
            .to_owned(),
        wrk_version: version_of("wrk", "-v")
            .split(" [")
            .next()
            .unwrap_or("wrk")
            .to_owned(),
    })
}

/// Client load through `url` (4 connections, back to back); node A is killed after 1 s.
async fn death_run(
    name: &str,
    url: &str,
    node: &mut Anvil,
    seconds: u32,
) -> Result<DeathRow, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let max_us = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds.max(2)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url) = (client.clone(), url.to_owned());
        let (requests, errors, max_us) = (requests.clone(), errors.clone(), max_us.clone());
        workers.push(tokio::spawn(async move {
            // Bounded by the deadline (and by a count, in case time stands still).
            for _ in 0..1_000_000 {
                if Instant::now() >= deadline {
                    break;
                }
                let started = Instant::now();
                let ok = match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(BLOCK_NUMBER)
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.is_ok() && status == reqwest::StatusCode::OK
                    }
                    Err(_) => false,
                };
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                max_us.fetch_max(us, Ordering::Relaxed);
                requests.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    tokio::task::block_in_place(|| node.stop());
    for worker in workers {
        let _ = worker.await;
    }
    Ok(DeathRow {
        name: name.to_owned(),
        requests: requests.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        max_ms: max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        after_kill_secs: killed.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wrk_summary() {
        let out = "Running 1s test\n  2 threads\nBENCH {\"requests\":100,\"duration_us\":1000000,\"connect\":0,\"read\":1,\"write\":0,\"status\":2,\"timeout\":0,\"p50_us\":300,\"p90_us\":500,\"p99_us\":900,\"max_us\":1200}\n";
        let r = parse_wrk(out).expect("summary");
        assert_eq!(r.requests, 100);
        assert_eq!(r.errors(), 3);
        assert_eq!(r.rps(), 100.0);
        assert_eq!(r.p99_us, 900);
        assert!(parse_wrk("no summary").is_none());
    }

    #[test]
    fn the_original_style_has_no_keepalive_and_no_post_retries() {
        let conf = original_fragment(8080, &[1, 2], false);
        assert!(conf.contains("server 127.0.0.1:1;"));
        assert!(conf.contains("proxy_next_upstream error timeout;"));
        assert!(!conf.contains("keepalive"));
        assert!(!conf.contains("non_idempotent"));
        assert!(original_fragment(8080, &[1], true).contains("keepalive 32;"));
        let buffered = with_buffered_access_log("server {\n    listen 1;\n    server_name _;\n}\n");
        assert!(buffered.contains("buffer=64k flush=1s;"));
    }

    #[test]
    fn ours_is_one_layer_for_plain_nodes_unless_every_backend_is_forced_internal() {
        let nodes = [
            "http://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2".to_owned(),
        ];
        let dir = Path::new("/tmp/jrp-bench-test");
        let ours = ours_fragment(
            8080,
            dir,
            &nodes,
            "http://127.0.0.1:3",
            Layering::DirectWherePossible,
        )
        .expect("rendered");
        assert!(ours.contains("server 127.0.0.1:1 max_fails=1 fail_timeout=10s;"));
        assert!(ours.contains("server 127.0.0.1:3 backup;"));
        assert!(ours.contains("non_idempotent"));
        assert!(!ours.contains("unix:"));
        let two_layers = ours_fragment(
            8080,
            dir,
            &nodes,
            "http://127.0.0.1:3",
            Layering::InternalForAll,
        )
        .expect("rendered");
        assert_eq!(two_layers.matches("    listen unix:").count(), 6);
        assert!(two_layers.contains("non_idempotent"));
    }
}
