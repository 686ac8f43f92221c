//! `jsonrpc-proxy-bench`: what users pay for, side by side in one run.
//!
//! 1. **fanout**: one health-check round against 1 to 10 000 fake nodes (and 10 % hanging),
//!    in a child process: wall time, phases, peak RSS, DynamoDB and CloudWatch calls, verdicts.
//! 2. **proxy**: wrk straight to anvil, through the rendered nginx configuration, the
//!    original's style and a peer (blutgang), interleaved round by round, for the head, a
//!    forwarded call, calls that never change (cacheable) and batches; a node killed under
//!    load behind each of them.
//! 3. **switch**: node death and lag through the local stack, under client load.
//! 4. **lambda**: deployment zip sizes, start-up time and peak memory of each function.
//! 5. **uploads**: nginx's memory under slow uploads, and another client's calls meanwhile.
//!
//! Prints one Markdown report and, with `--out`, writes it between the markers of
//! `docs/benchmarks.md`, keeping there the results of the parts not run (`--only`).
//! `scripts/bench.sh` builds what is needed and runs everything.

mod blutgang;
mod count_proxy;
mod fanout;
mod lambda;
mod proxy;
mod report;
mod stub;
mod switch;
mod sys;
mod uploads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use report::Results;

const USAGE: &str = "usage: jsonrpc-proxy-bench [options]

  --only LIST          parts to run, comma-separated: fanout,proxy,switch,lambda,uploads
                       (default all); with --out, the others' results in PATH are kept
  --sizes LIST         fleet sizes of the fan-out rounds (default 1,100,1000,10000)
  --hang-sizes LIST    sizes also run with 10 % of the nodes hanging (default 100,1000,10000)
  --listeners N        loopback ports of the fake fleet (default: the largest size)
  --no-variants        skip the largest size's variants: RLIMIT_NOFILE 1024 (as in Lambda),
                       and nodes that close every connection (as with no client pool)
  --no-steady          only the first round of each fan-out scenario
  --proxy-seconds N    wrk seconds per run (default 5)
  --rounds N           interleaved rounds of the proxy comparison (default 3)
  --connections N      wrk connections (default 32)
  --death-seconds N    client load seconds in the node-death runs (default 6)
  --no-diagnostics     skip the diagnostic nginx variants
  --interval N         health-check interval of the switch run, seconds (default 5)
  --tolerance N        DIFF_TOLERANCE of the switch run (default 3)
  --lambda-runs N      fresh processes per function (default 5)
  --lambda-events N    events per process (default 10)
  --out PATH           write the report into PATH (between its bench markers)
  --json PATH          also write the raw results as JSON
  --command TEXT       the command line to cite in the report (default: this one)
";

struct Options {
    parts: Vec<String>,
    sizes: Vec<usize>,
    hang_sizes: Vec<usize>,
    listeners: Option<usize>,
    variants: bool,
    steady: bool,
    proxy: proxy::ProxyOptions,
    switch: switch::SwitchOptions,
    lambda: lambda::LambdaOptions,
    out: Option<PathBuf>,
    json: Option<PathBuf>,
    command: String,
}

fn list<T: std::str::FromStr>(flag: &str, text: &str) -> Result<Vec<T>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("{flag}: {s:?} is not a number"))
        })
        .collect()
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        parts: ["fanout", "proxy", "switch", "lambda", "uploads"]
            .map(String::from)
            .to_vec(),
        sizes: vec![1, 100, 1000, 10_000],
        hang_sizes: vec![100, 1000, 10_000],
        listeners: None,
        variants: true,
        steady: true,
        proxy: proxy::ProxyOptions {
            seconds: 5,
            rounds: 3,
            connections: 32,
            death_seconds: 6,
            diagnostics: true,
        },
        switch: switch::SwitchOptions {
            interval_secs: 5,
            tolerance: 3,
        },
        lambda: lambda::LambdaOptions {
            runs: 5,
            events: 10,
            backends: 10,
        },
        out: None,
        json: None,
        command: std::iter::once("jsonrpc-proxy-bench".to_owned())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let mut value = || {
            iter.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{flag}: {text:?} is not a number"))
        };
        match flag.as_str() {
            "--only" => {
                options.parts = value()?.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = options.parts.iter().find(|p| {
                    !["fanout", "proxy", "switch", "lambda", "uploads"].contains(&p.as_str())
                }) {
                    return Err(format!("--only: unknown part {bad:?}"));
                }
            }
            "--sizes" => options.sizes = list(flag, &value()?)?,
            "--hang-sizes" => options.hang_sizes = list(flag, &value()?)?,
            "--listeners" => options.listeners = Some(number(value()?)? as usize),
            "--no-variants" => options.variants = false,
            "--no-steady" => options.steady = false,
            "--proxy-seconds" => options.proxy.seconds = number(value()?)?.max(1) as u32,
            "--rounds" => options.proxy.rounds = number(value()?)?.max(1) as u32,
            "--connections" => options.proxy.connections = number(value()?)?.max(1) as u32,
            "--death-seconds" => options.proxy.death_seconds = number(value()?)?.max(2) as u32,
            "--no-diagnostics" => options.proxy.diagnostics = false,
            "--interval" => options.switch.interval_secs = number(value()?)?.max(1),
            "--tolerance" => options.switch.tolerance = number(value()?)?,
            "--lambda-runs" => options.lambda.runs = number(value()?)?.max(1) as usize,
            "--lambda-events" => options.lambda.events = number(value()?)?.max(1) as usize,
            "--out" => options.out = Some(PathBuf::from(value()?)),
            "--json" => options.json = Some(PathBuf::from(value()?)),
            "--command" => options.command = value()?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(options)
}

fn git_commit() -> String {
    let root = devstack::repo_root();
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = run(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit} + uncommitted changes")
    } else {
        commit
    }
}

fn scenarios(options: &Options) -> Vec<fanout::Scenario> {
    let plain = |backends, hang_every| fanout::Scenario {
        backends,
        hang_every,
        nofile: None,
        steady_round: options.steady,
        close_after_answer: false,
    };
    let mut scenarios: Vec<fanout::Scenario> =
        options.sizes.iter().map(|&size| plain(size, 0)).collect();
    scenarios.extend(options.hang_sizes.iter().map(|&size| plain(size, 10)));
    if options.variants {
        if let Some(&largest) = options.sizes.iter().max() {
            scenarios.push(fanout::Scenario {
                nofile: Some(1024),
                steady_round: false,
                ..plain(largest, 0)
            });
            scenarios.push(fanout::Scenario {
                close_after_answer: true,
                steady_round: false,
                ..plain(largest, 0)
            });
        }
    }
    scenarios
}

async fn run_fanout(options: &Options) -> Result<fanout::FanoutReport, String> {
    let scenarios = scenarios(options);
    let largest = scenarios.iter().map(|s| s.backends).max().unwrap_or(1);
    let listeners = options.listeners.unwrap_or(largest).max(1);
    let rig = fanout::FanoutRig::start(listeners).await?;
    eprintln!("[bench] fanout: moto's own UpdateItem rate");
    let moto = rig.moto_ceiling(300).await?;
    let mut rows = Vec::new();
    for scenario in &scenarios {
        eprintln!(
            "[bench] fanout: {} backends, {} hanging {}",
            scenario.backends,
            scenario.hanging(),
            scenario.variant()
        );
        let row = rig.run(scenario).await?;
        eprintln!(
            "[bench]   first round {:.0} ms, peak {} KiB, unhealthy {}",
            row.cold.wall_ms, row.cold.peak_rss_kb, row.cold.unhealthy
        );
        rows.push(row);
    }
    Ok(fanout::FanoutReport {
        rows,
        moto: Some(moto),
        listeners,
    })
}

async fn run_all(options: &Options) -> Results {
    let started = Instant::now();
    let mut results = Results {
        machine: sys::Machine::read(),
        load_before: sys::load_average(),
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        commit: git_commit(),
        command: options.command.clone(),
        probe_timeout_ms: jsonrpc_proxy::health::probe::ProbeSettings::default()
            .timeout
            .as_millis() as u64,
        ..Results::default()
    };
    let wants = |part: &str| options.parts.iter().any(|p| p == part);
    if wants("fanout") {
        results.fanout = Some(run_fanout(options).await);
    }
    if wants("proxy") {
        results.proxy = Some(proxy::run(&options.proxy).await);
    }
    if wants("switch") {
        eprintln!("[bench] switch: starting the local stack");
        results.switch = Some(switch::run(&options.switch).await);
    }
    if wants("lambda") {
        results.lambda = Some(lambda::run(&options.lambda).await);
    }
    if wants("uploads") {
        let options = uploads::UploadOptions::default();
        results.uploads = Some(
            tokio::task::spawn_blocking(move || uploads::run(&options))
                .await
                .unwrap_or_else(|e| Err(format!("the uploads part panicked: {e}"))),
        );
    }
    results.load_after = sys::load_average();
    results.took_secs = started.elapsed().as_secs_f64();
    results
}

/// Resolves on SIGINT or SIGTERM, naming it (never, when SIGTERM cannot be watched).
async fn stopped() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        Ok(()) = tokio::signal::ctrl_c() => "interrupted",
        Some(()) = terminate.recv() => "terminated",
        else => std::future::pending().await,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("__round") => return fanout::child_main(&args[1..]),
        Some("__fleet") => return stub::fleet_main(&args[1..]),
        _ => {}
    }
    let options = match parse_args(&args) {
        Ok(options) => options,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("jsonrpc-proxy-bench: {error}\n");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // 10 000 listening fake nodes and their connections need more than the usual 1 024 files.
    sys::set_nofile(None);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("jsonrpc-proxy-bench: cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Stopped by a signal, the run's future is dropped, and with it the servers it started
    // (nginx, anvil, the peer), which would otherwise outlive the bench.
    let results = runtime.block_on(async {
        tokio::select! {
            results = run_all(&options) => Some(results),
            signal = stopped() => {
                eprintln!("jsonrpc-proxy-bench: {signal}: stopping the servers it started");
                None
            }
        }
    });
    let Some(results) = results else {
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        return ExitCode::from(130);
    };
    // Read after the run: what the file holds now is what gets rewritten.
    let existing = options
        .out
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok());
    let markdown = results.markdown(existing.as_deref());
    println!("{markdown}");
    let mut failed = false;
    if let Some(path) = &options.out {
        let text = report::splice(existing.as_deref(), &markdown);
        if let Err(error) = std::fs::write(path, text) {
            eprintln!(
                "jsonrpc-proxy-bench: cannot write {}: {error}",
                path.display()
            );
            failed = true;
        }
    }
    if let Some(path) = &options.json {
        let text = serde_json::to_string_pretty(&results).unwrap_or_default();
        if let Err(error) = std::fs::write(path, text) {
            eprintln!(
                "jsonrpc-proxy-bench: cannot write {}: {error}",
                path.display()
            );
            failed = true;
        }
    }
    let part_failed = matches!(results.fanout, Some(Err(_)))
        || matches!(results.proxy, Some(Err(_)))
        || matches!(results.switch, Some(Err(_)))
        || matches!(results.lambda, Some(Err(_)))
        || matches!(results.uploads, Some(Err(_)));
    if failed || part_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
