//! `jsonrpc-proxy-local`: the whole jsonrpc-proxy system on this machine.
//!
//! Starts the local AWS endpoint (moto, with the Lambda emulator serving `Invoke`), deploys the
//! `local` stage with `sls deploy -s local`, starts a CloudWatch recorder, three anvil nodes (or
//! your own URLs), nginx and the deployed functions' host builds; drives them with the events
//! the deployed stack's sources would deliver; shows a live view. Ctrl-C stops everything it
//! started.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use local_stack::stack::{LocalStack, StackOptions};
use local_stack::view::{render_frame, Frame};

/// The options, also printed by `scripts/local-stack.sh --help` before anything is built.
const USAGE: &str = include_str!("usage.txt");

/// The options and whether to show the live view; `None` for `--help`.
fn parse_args() -> Result<Option<(StackOptions, bool)>, String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."));
    let mut options = StackOptions::defaults(
        exe_dir,
        PathBuf::from(format!(".local/run-{}", std::process::id())),
    );
    options.aws_port = 4566;
    options.config_path = options.repo_root.join("config.local.yml");
    options.demo_client = true;
    let mut agent_given = false;
    let mut view = std::io::stdout().is_terminal();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        let number = |name: &str, text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{name} expects a whole number, not {text:?}"))
        };
        match flag.as_str() {
            "--port" => {
                let port = number("--port", value("--port")?)?;
                options.proxy_port = u16::try_from(port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or("--port must be between 1 and 65535")?;
            }
            "--aws-port" => {
                let port = number("--aws-port", value("--aws-port")?)?;
                options.aws_port =
                    u16::try_from(port).map_err(|_| "--aws-port must be at most 65535")?;
            }
            "--listen" => {
                let address = value("--listen")?;
                options.listen_address = address.parse().map_err(|_| {
                    format!("--listen expects an IP address such as 127.0.0.1, not {address:?}")
                })?;
            }
            "--config" => options.config_path = PathBuf::from(value("--config")?),
            "--interval" => {
                options.check_interval =
                    Duration::from_secs(number("--interval", value("--interval")?)?.max(1));
            }
            "--tolerance" => options.tolerance = number("--tolerance", value("--tolerance")?)?,
            "--probe-timeout" => {
                options.probe_timeout = Duration::from_millis(
                    number("--probe-timeout", value("--probe-timeout")?)?.max(1),
                );
            }
            "--anvil-nodes" => {
                options.anvil_nodes =
                    usize::try_from(number("--anvil-nodes", value("--anvil-nodes")?)?.min(16))
                        .unwrap_or(2);
            }
            "--block-time" => {
                options.block_time = number("--block-time", value("--block-time")?)?.max(1);
            }
            "--leader" => options.leader = Some(value("--leader")?),
            "--node" => options.nodes.push(value("--node")?),
            "--bin-dir" => options.bin_dir = PathBuf::from(value("--bin-dir")?),
            "--agent" => {
                options.config_agent = PathBuf::from(value("--agent")?);
                agent_given = true;
            }
            "--work-dir" => options.work_dir = PathBuf::from(value("--work-dir")?),
            "--no-view" => view = false,
            "--no-register" => options.register = false,
            "--no-demo-client" => options.demo_client = false,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown option {other:?}\n\n{USAGE}")),
        }
    }
    if !agent_given {
        options.config_agent = options.bin_dir.join("config_agent");
    }
    if !options.config_agent.is_file() {
        return Err(format!(
            "config agent {} not found; pass --agent",
            options.config_agent.display()
        ));
    }
    Ok(Some((options, view)))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (options, view) = match parse_args() {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            print!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    // The live view owns the terminal; without it, log lines go to stdout.
    if !view {
        jsonrpc_proxy::telemetry::init_tracing();
    }

    eprintln!(
        "starting the local AWS endpoint, `sls deploy -s local`, nodes, nginx and the functions…"
    );
    let starting = std::time::Instant::now();
    let stack = tokio::select! {
        started = LocalStack::start(options.clone()) => match started {
            Ok(stack) => stack,
            Err(error) => {
                eprintln!("the local stack could not start: {error}");
                return std::process::ExitCode::FAILURE;
            }
        },
        () = shutdown_signal() => {
            eprintln!("interrupted while starting; stopped everything");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("started in {} s", starting.elapsed().as_secs());
    for node in &stack.nodes {
        let role = if node.is_leader { "leader" } else { "node" };
        println!("anvil {role}: {}", node.anvil.url());
    }
    println!("JSON-RPC proxy: {}", stack.proxy_url());
    if options.demo_client {
        println!(
            "demo client {:?}: {} (WebSocket: {})",
            local_stack::stack::DEMO_CLIENT,
            stack.endpoint_url(),
            stack.websocket_url()
        );
    }
    println!(
        "local AWS endpoint: {} (stack {}; try `npx sls invoke -f list_backends -s local`)",
        stack.aws_endpoint(),
        local_stack::deploy::STACK_NAME
    );
    println!(
        "try: curl -s -X POST -H 'Content-Type: application/json' --data '{{\"jsonrpc\":\"2.0\",\"method\":\"eth_blockNumber\",\"params\":[],\"id\":1}}' {}",
        stack.endpoint_url()
    );

    let log_dir = options.work_dir.display().to_string();
    let mut printed = 0usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown_signal() => break,
        }
        let (backends, applied, transitions, rounds) = stack.snapshot();
        if view {
            let errors = stack
                .observed
                .lock()
                .map(|o| o.errors.clone())
                .unwrap_or_default();
            let stats = stack.function_stats();
            let usage = local_stack::view::read_frame_usage(stack.socket_dir()).await;
            let functions = stats
                .iter()
                .map(|(name, stats)| (name.as_str(), stats.clone()))
                .collect();
            let frame = render_frame(&Frame {
                proxy_url: &stack.proxy_url(),
                interval_secs: options.check_interval.as_secs_f64(),
                tolerance: options.tolerance,
                log_dir: &log_dir,
                backends: &backends,
                applied: applied.as_ref(),
                functions,
                transitions: &transitions,
                errors: &errors,
                rounds,
                usage: usage.as_ref(),
            });
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "\x1b[H\x1b[2J{frame}");
            let _ = stdout.flush();
        } else {
            for transition in transitions.iter().skip(printed) {
                println!("{}  {}", transition.at, transition.text);
            }
            printed = transitions.len();
        }
    }
    eprintln!("\nstopping…");
    stack.shutdown().await;
    eprintln!("stopped: every process the local stack started has ended");
    std::process::ExitCode::SUCCESS
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
