//! `config_renderer` Lambda: renders the nginx config from the table and puts it to S3 as
//! `<aws_request_id>_nginx.conf`. An event `{"force": true}` writes even an unchanged config.

use jsonrpc_proxy::config_bucket::ConfigBucket;
use jsonrpc_proxy::config_renderer::ConfigRenderer;
use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::settings::{Env, RendererSettings};
use jsonrpc_proxy::store::BackendStore;
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let settings = RendererSettings::from_env(&Env::process())?;
    let config = aws_config().await;
    let renderer = ConfigRenderer {
        store: BackendStore::new(aws_sdk_dynamodb::Client::new(&config), settings.table),
        bucket: ConfigBucket::new(aws_sdk_s3::Client::new(&config), settings.bucket),
        options: settings.render,
    };
    run(service_fn(|event: LambdaEvent<Value>| {
        let renderer = &renderer;
        async move {
            let force = event
                .payload
                .get("force")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if let Some(reason) = event.payload.get("reason").and_then(Value::as_str) {
                tracing::info!(reason, "render requested");
            }
            let summary = renderer
                .render_and_publish(&event.context.request_id, force)
                .await?;
            Ok::<_, Error>(serde_json::to_value(summary)?)
        }
    }))
    .await
}
