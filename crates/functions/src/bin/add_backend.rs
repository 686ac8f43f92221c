//! `add_backend` Lambda: stores a backend. Invoke with
//! `sls invoke -f add_backend -d '{"body":"{\"url\":\"https://...\",\"is_leader\":true}"}'`
//! (docs/architecture.md, "Admin functions").

use jsonrpc_proxy::aws::store::BackendStore;
use jsonrpc_proxy::functions::admin::{add_backend, ApiResponse, TableSettings};
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
    run(service_fn(|event: LambdaEvent<Value>| {
        let store = &store;
        async move {
            let response: ApiResponse =
                add_backend(store, &event.payload, time::OffsetDateTime::now_utc()).await;
            Ok::<_, Error>(response)
        }
    }))
    .await
}
