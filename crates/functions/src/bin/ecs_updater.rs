//! `ecs_updater` Lambda: on S3 `ObjectCreated` of a `.conf` key, rolls the nginx ECS service
//! onto the new config (docs/architecture.md, "ECS updater").

use jsonrpc_proxy::functions::ecs_updater::{EcsUpdateError, EcsUpdater, EcsUpdaterSettings};
use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::settings::Env;
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let settings = EcsUpdaterSettings::from_env(&Env::process())?;
    let config = aws_config().await;
    let updater = EcsUpdater::new(
        aws_sdk_ecs::Client::new(&config),
        aws_sdk_s3::Client::new(&config),
        &settings,
    );
    run(service_fn(|event: LambdaEvent<Value>| {
        let updater = &updater;
        async move {
            match updater.handle_event(&event.payload).await {
                Ok(summary) => Ok::<_, Error>(serde_json::to_value(summary)?),
                // A malformed event fails the same way on every retry: report it, do not retry.
                Err(EcsUpdateError::Event(error)) => {
                    tracing::error!(%error, "unusable S3 event");
                    Ok(json!({ "outcome": "invalid_event", "error": error.to_string() }))
                }
                Err(error) => Err(error.into()),
            }
        }
    }))
    .await
}
