//! `health_checker` Lambda: one health-check round per scheduled (EventBridge) event.

use jsonrpc_proxy::config_bucket::ConfigBucket;
use jsonrpc_proxy::health_check::HealthChecker;
use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::metrics::MetricsPublisher;
use jsonrpc_proxy::probe::Prober;
use jsonrpc_proxy::renderer_trigger::RendererTrigger;
use jsonrpc_proxy::settings::{Env, HealthCheckSettings};
use jsonrpc_proxy::store::BackendStore;
use jsonrpc_proxy::telemetry::{aws_config, init_tracing};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let settings = HealthCheckSettings::from_env(&Env::process())?;
    let config = aws_config().await;
    let checker = HealthChecker {
        store: BackendStore::new(aws_sdk_dynamodb::Client::new(&config), settings.table),
        prober: Prober::new(settings.probe)?,
        metrics: MetricsPublisher::new(
            aws_sdk_cloudwatch::Client::new(&config),
            settings.namespace,
        ),
        bucket: ConfigBucket::new(aws_sdk_s3::Client::new(&config), settings.bucket),
        trigger: RendererTrigger::new(
            aws_sdk_lambda::Client::new(&config),
            settings.renderer_function,
        ),
        tolerance: settings.tolerance,
        stack_name: settings.stack_name,
        write_concurrency: settings.write_concurrency,
    };
    run(service_fn(|_event: LambdaEvent<Value>| {
        let checker = &checker;
        async move { Ok::<_, Error>(serde_json::to_value(checker.run_round().await?)?) }
    }))
    .await
}
