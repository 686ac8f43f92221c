//! `health_checker` Lambda: `ROUNDS_PER_INVOCATION` health-check rounds (default 1),
//! `ROUND_INTERVAL_SECS` apart, per scheduled (EventBridge) event.

use jsonrpc_proxy::health_checker::HealthChecker;
use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::settings::{Env, HealthCheckSettings};
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let settings = HealthCheckSettings::from_env(&Env::process())?;
    let config = aws_config().await;
    let checker = HealthChecker::from_settings(&settings, &config)?;
    run(service_fn(|event: LambdaEvent<Value>| {
        let checker = &checker;
        let deadline = event.context.deadline();
        async move {
            Ok::<_, Error>(serde_json::to_value(
                checker.run_invocation(Some(deadline)).await?,
            )?)
        }
    }))
    .await
}
