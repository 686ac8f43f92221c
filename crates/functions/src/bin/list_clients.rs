//! `list_clients` Lambda: every client without its key, sorted by name. Invoke with
//! `sls invoke -f list_clients`.

use jsonrpc_proxy::aws::clients_store::ClientStore;
use jsonrpc_proxy::functions::clients::list_clients;
use jsonrpc_proxy::functions::clients::ClientsTableSettings;
use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::settings::Env;
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let settings = ClientsTableSettings::from_env(&Env::process())?;
    let config = aws_config().await;
    let store = ClientStore::new(aws_sdk_dynamodb::Client::new(&config), settings.table);
    run(service_fn(|_event: LambdaEvent<Value>| {
        let store = &store;
        async move { Ok::<_, Error>(list_clients(store).await) }
    }))
    .await
}
