//! `config_agent`: see the library documentation and `config_agent --help`.

use std::process::ExitCode;

use config_agent::settings::{MetricsTarget, USAGE};
use config_agent::status::StatusReporter;
use config_agent::usage::UsageReporter;
use config_agent::{parse_args, Agent, Mode};
use jsonrpc_proxy::aws::metrics::MetricsPublisher;
use jsonrpc_proxy::settings::Env;
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse_args(&args, &Env::process()) {
        Ok(mode) => mode,
        Err(error) => {
            eprintln!("config_agent: {error}");
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Mode::Apply { settings, reload } => {
            let agent = Agent::new(settings, aws_sdk_s3::Client::new(&aws_config().await));
            match agent.apply_once(reload).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "configuration not applied");
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Run {
            settings,
            poll,
            usage,
            metrics,
        } => {
            let config = aws_config().await;
            let mut agent = Agent::new(settings, aws_sdk_s3::Client::new(&config));
            if let Some(MetricsTarget {
                namespace,
                stack_name,
            }) = metrics
            {
                let publisher =
                    MetricsPublisher::new(aws_sdk_cloudwatch::Client::new(&config), namespace);
                if usage.is_some() {
                    agent.usage = Some(UsageReporter::new(
                        publisher.clone(),
                        stack_name.clone(),
                        &agent.settings.socket_dir,
                    ));
                }
                agent.reporter = Some(StatusReporter {
                    publisher,
                    stack_name,
                });
            }
            match (poll, &agent.usage) {
                (None, None) => {
                    let error = agent.run_exec().await;
                    tracing::error!(%error, "nginx not started");
                    ExitCode::FAILURE
                }
                _ => match agent.run_supervised(poll, usage).await {
                    Ok(status) => exit_code(status),
                    Err(error) => {
                        tracing::error!(%error, "nginx not started");
                        ExitCode::FAILURE
                    }
                },
            }
        }
    }
}

/// nginx's exit status as ours (128 + signal when it was killed by one).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}
