//! `remove_backend` Lambda: removes a backend and re-renders the config. Invoke with
//! `sls invoke -f remove_backend -d '{"body":"{\"url\":\"https://...\"}"}'`
//! (docs/architecture.md, "Admin functions").

use jsonrpc_proxy::aws::renderer_trigger::RendererTrigger;
use jsonrpc_proxy::aws::store::BackendStore;
use jsonrpc_proxy::functions::admin::{remove_backend, RemoveBackendSettings};
use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::settings::Env;
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let settings = RemoveBackendSettings::from_env(&Env::process())?;
    let config = aws_config().await;
    let store = BackendStore::new(aws_sdk_dynamodb::Client::new(&config), &settings.table);
    let trigger = RendererTrigger::new(
        aws_sdk_lambda::Client::new(&config),
        &settings.renderer_function,
    );
    run(service_fn(|event: LambdaEvent<Value>| {
        let (store, trigger) = (&store, &trigger);
        async move { Ok::<_, Error>(remove_backend(store, trigger, &event.payload).await) }
    }))
    .await
}
