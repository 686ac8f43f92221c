//! `list_backends` Lambda: every backend, sorted by URL. Invoke with
//! `sls invoke -f list_backends` (docs/architecture.md, "Admin functions").

use jsonrpc_proxy::aws::store::BackendStore;
use jsonrpc_proxy::functions::admin::{list_backends, TableSettings};
use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::settings::Env;
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let settings = TableSettings::from_env(&Env::process())?;
    let config = aws_config().await;
    let store = BackendStore::new(aws_sdk_dynamodb::Client::new(&config), &settings.table);
    run(service_fn(|_event: LambdaEvent<Value>| {
        let store = &store;
        async move { Ok::<_, Error>(list_backends(store).await) }
    }))
    .await
}
