//! `config_renderer` Lambda: renders the nginx config from the table and puts it to S3 as
//! `<aws_request_id>_nginx.conf` (docs/architecture.md, "Level-triggered renders").

use jsonrpc_proxy::functions::config_renderer::{ConfigRenderer, ConfigRendererSettings};
use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::settings::Env;
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let settings = ConfigRendererSettings::from_env(&Env::process())?;
    let config = aws_config().await;
    let renderer = ConfigRenderer::new(
        aws_sdk_dynamodb::Client::new(&config),
        aws_sdk_s3::Client::new(&config),
        &settings,
    );
    run(service_fn(|event: LambdaEvent<Value>| {
        let renderer = &renderer;
        async move {
            let summary = renderer
                .handle_event(&event.payload, &event.context.request_id)
                .await?;
            Ok::<_, Error>(serde_json::to_value(summary)?)
        }
    }))
    .await
}
