//! `slack_notifier` Lambda: posts the alarm transitions SNS delivers to the Slack webhook
//! `SLACK_WEBHOOK_URL` (docs/architecture.md, "Alarm notifications").

use jsonrpc_proxy::lambda_runtime::{run, service_fn, Error, LambdaEvent};
use jsonrpc_proxy::settings::Env;
use jsonrpc_proxy::telemetry::init_tracing;
use serde_json::{json, Value};
use slack_notifier::{notify, SlackSettings};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let SlackSettings { webhook, channel } = SlackSettings::from_env(&Env::process())?;
    tracing::info!(host = %webhook.host(), "Slack webhook configured");
    run(service_fn(|event: LambdaEvent<Value>| {
        let (webhook, channel) = (&webhook, channel.as_deref());
        async move {
            let posted = notify(webhook, channel, &event.payload).await?;
            Ok::<_, Error>(json!({ "posted": posted }))
        }
    }))
    .await
}
