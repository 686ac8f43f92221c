//! `health_checker` Lambda: the health-check rounds of one scheduled event
//! (docs/architecture.md, "Health model" and "Sub-minute checking").

use jsonrpc_proxy::functions::health_checker::{
    HealthChecker, HealthCheckerClients, HealthCheckerSettings,
};
use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::settings::Env;
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let settings = HealthCheckerSettings::from_env(&Env::process())?;
    let config = aws_config().await;
    let clients = HealthCheckerClients {
        dynamodb: aws_sdk_dynamodb::Client::new(&config),
        s3: aws_sdk_s3::Client::new(&config),
        cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
        lambda: aws_sdk_lambda::Client::new(&config),
    };
    let checker = HealthChecker::new(clients, &settings)?;
    run(service_fn(|event: LambdaEvent<Value>| {
        let checker = &checker;
        let deadline = event.context.deadline();
        async move {
            let summary = checker.handle_event(&event.payload, Some(deadline)).await?;
            Ok::<_, Error>(serde_json::to_value(summary)?)
        }
    }))
    .await
}
