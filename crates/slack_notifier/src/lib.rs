//! The `slack_notifier` function's body: CloudWatch alarm notifications delivered by SNS
//! ([`parse_sns_event`]) as Slack messages ([`slack_message`]) posted to an incoming webhook
//! ([`SlackWebhook`]). Rationale: docs/architecture.md, "Alarm notifications".

use std::fmt;
use std::time::Duration;

use aws_lambda_events::sns::SnsEvent;
use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;

/// How long one post to Slack may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest piece of a webhook's error answer quoted in an error message.
const MAX_QUOTED_ANSWER: usize = 200;

/// Longest SNS message quoted in a message about a notification that is not an alarm.
const MAX_QUOTED_MESSAGE: usize = 2000;

/// The SNS event is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    /// Not an SNS event as Lambda delivers it.
    #[error("event is not an SNS notification: {0}")]
    Shape(String),
}

/// A post to Slack failed.
#[derive(Debug, Error)]
pub enum PostError {
    /// No answer: connection refused, TLS failure, timeout... (the URL is left out).
    #[error("posting to the Slack webhook failed: {0}")]
    Transport(String),
    /// Slack answered with an error status.
    #[error("the Slack webhook answered {status}: {answer}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the answer's body (Slack explains errors there, e.g. `invalid_payload`).
        answer: String,
    },
}

/// The webhook setting is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WebhookError {
    /// `SLACK_WEBHOOK_URL` is not set.
    #[error("environment variable SLACK_WEBHOOK_URL is not set")]
    Missing,
    /// The value is not an https URL (plain http is accepted for loopback hosts only).
    #[error("SLACK_WEBHOOK_URL is not a usable webhook URL: {0}")]
    Invalid(&'static str),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// One CloudWatch alarm state change, as CloudWatch publishes it to SNS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlarmMessage {
    /// The alarm's name.
    pub alarm_name: String,
    /// The alarm's description (may be null).
    #[serde(default)]
    pub alarm_description: Option<String>,
    /// `ALARM`, `OK` or `INSUFFICIENT_DATA`.
    pub new_state_value: String,
    /// The state before the change.
    #[serde(default)]
    pub old_state_value: Option<String>,
    /// CloudWatch's explanation of the change.
    #[serde(default)]
    pub new_state_reason: Option<String>,
    /// When the state changed, e.g. `2026-11-24T03:00:00.000+0000`.
    #[serde(default)]
    pub state_change_time: Option<String>,
    /// Region name, e.g. `EU (Ireland)`.
    #[serde(default)]
    pub region: Option<String>,
    /// The alarm's ARN.
    #[serde(default)]
    pub alarm_arn: Option<String>,
    /// The metric and condition (absent for composite alarms).
    #[serde(default)]
    pub trigger: Option<AlarmTrigger>,
}

/// What an alarm watches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlarmTrigger {
    /// The metric (absent for metric-math alarms).
    #[serde(default)]
    pub metric_name: Option<String>,
    /// The metric's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// e.g. `MINIMUM`.
    #[serde(default)]
    pub statistic: Option<String>,
    /// The metric's dimensions.
    #[serde(default)]
    pub dimensions: Vec<TriggerDimension>,
    /// Seconds per evaluated period.
    #[serde(default)]
    pub period: Option<u64>,
    /// Periods evaluated for each decision.
    #[serde(default)]
    pub evaluation_periods: Option<u64>,
    /// e.g. `LessThanThreshold`.
    #[serde(default)]
    pub comparison_operator: Option<String>,
    /// The value the statistic is compared with.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// e.g. `- TreatMissingData: breaching`.
    #[serde(default)]
    pub treat_missing_data: Option<String>,
}

/// A metric dimension of an alarm trigger.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TriggerDimension {
    /// The dimension's name, e.g. `Stack name`.
    pub name: String,
    /// The dimension's value.
    pub value: String,
}

/// One SNS record's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// A CloudWatch alarm state change.
    Alarm(Box<AlarmMessage>),
    /// Anything else published to the topic (a test message, say): posted as it is.
    Other {
        /// The SNS subject, if any.
        subject: Option<String>,
        /// The message body.
        message: String,
    },
}

/// The notifications of an SNS event, in record order.
pub fn parse_sns_event(event: &Value) -> Result<Vec<Notification>, EventError> {
    let event = SnsEvent::deserialize(event).map_err(|e| EventError::Shape(e.to_string()))?;
    Ok(event
        .records
        .into_iter()
        .map(|record| {
            let subject = record.sns.subject.filter(|s| !s.is_empty());
            parse_message(subject, &record.sns.message)
        })
        .collect())
}

/// Reads one SNS message: an alarm when it is CloudWatch's JSON, otherwise plain text.
pub fn parse_message(subject: Option<String>, message: &str) -> Notification {
    match serde_json::from_str::<AlarmMessage>(message) {
        Ok(alarm) => Notification::Alarm(Box::new(alarm)),
        Err(_) => Notification::Other {
            subject,
            message: message.to_owned(),
        },
    }
}

/// Escapes the three characters Slack's mrkdwn treats as markup.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The emoji and colour of an alarm state.
pub fn state_style(state: &str) -> (&'static str, &'static str) {
    match state {
        "ALARM" => (":rotating_light:", "#d62728"),
        "OK" => (":white_check_mark:", "#2ca02c"),
        "INSUFFICIENT_DATA" => (":grey_question:", "#7f7f7f"),
        _ => (":bell:", "#1f77b4"),
    }
}

/// A comparison operator as a symbol (`LessThanThreshold` → `<`).
pub fn comparison_symbol(operator: &str) -> &str {
    match operator {
        "LessThanThreshold" => "<",
        "LessThanOrEqualToThreshold" => "<=",
        "GreaterThanThreshold" => ">",
        "GreaterThanOrEqualToThreshold" => ">=",
        "LessThanLowerOrGreaterThanUpperThreshold" => "outside the band",
        "LessThanLowerThreshold" => "below the band",
        "GreaterThanUpperThreshold" => "above the band",
        other => other,
    }
}

/// A number without a needless `.0`.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The Slack webhook payload for a notification. `channel` overrides the webhook's channel
/// (only legacy webhooks honour it).
pub fn slack_message(notification: &Notification, channel: Option<&str>) -> Value {
    let mut payload = match notification {
        Notification::Alarm(alarm) => alarm_message(alarm),
        Notification::Other { subject, message } => {
            let mut text = String::from(":bell: ");
            if let Some(subject) = subject {
                text.push_str(&format!("*{}*\n", escape(subject)));
            }
            text.push_str(&escape(&truncate(message, MAX_QUOTED_MESSAGE)));
            json!({ "text": text })
        }
    };
    if let (Some(channel), Some(object)) =
        (channel.filter(|c| !c.is_empty()), payload.as_object_mut())
    {
        object.insert("channel".into(), Value::String(channel.to_owned()));
    }
    payload
}

fn alarm_message(alarm: &AlarmMessage) -> Value {
    let state = alarm.new_state_value.as_str();
    let (emoji, color) = state_style(state);
    let mut headline = format!("{emoji} *{}*: {}", escape(state), escape(&alarm.alarm_name));
    if let Some(old) = alarm.old_state_value.as_deref().filter(|o| !o.is_empty()) {
        headline.push_str(&format!(" (was {})", escape(old)));
    }

    let mut lines = Vec::new();
    if let Some(description) = alarm
        .alarm_description
        .as_deref()
        .filter(|d| !d.trim().is_empty())
    {
        lines.push(escape(description.trim()));
    }
    if let Some(reason) = alarm.new_state_reason.as_deref() {
        lines.push(format!("*Reason:* {}", escape(reason)));
    }
    if let Some(trigger) = &alarm.trigger {
        if let Some(metric) = &trigger.metric_name {
            let mut text = format!("*Metric:* {}", escape(metric));
            if !trigger.dimensions.is_empty() {
                let dimensions: Vec<String> = trigger
                    .dimensions
                    .iter()
                    .map(|d| format!("{}={}", escape(&d.name), escape(&d.value)))
                    .collect();
                text.push_str(&format!(" ({})", dimensions.join(", ")));
            }
            if let Some(namespace) = &trigger.namespace {
                text.push_str(&format!(" in {}", escape(namespace)));
            }
            lines.push(text);
        }
        if let (Some(operator), Some(threshold)) = (&trigger.comparison_operator, trigger.threshold)
        {
            let mut text = format!(
                "*Threshold:* {} {} {}",
                trigger
                    .statistic
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| "value".into()),
                escape(comparison_symbol(operator)),
                number(threshold)
            );
            if let (Some(periods), Some(period)) = (trigger.evaluation_periods, trigger.period) {
                text.push_str(&format!(" for {periods} period(s) of {period} s"));
            }
            if let Some(missing) = trigger
                .treat_missing_data
                .as_deref()
                .map(|m| m.trim_start_matches("- TreatMissingData:").trim())
                .filter(|m| !m.is_empty())
            {
                text.push_str(&format!("; missing data: {}", escape(missing)));
            }
            lines.push(text);
        }
    }
    let mut when = Vec::new();
    if let Some(time) = &alarm.state_change_time {
        when.push(escape(time));
    }
    if let Some(region) = &alarm.region {
        when.push(escape(region));
    }
    if !when.is_empty() {
        lines.push(format!("*Time:* {}", when.join(", ")));
    }

    json!({
        "text": headline,
        "attachments": [{
            "color": color,
            "mrkdwn_in": ["text"],
            "text": lines.join("\n"),
        }]
    })
}

/// A Slack incoming webhook; its URL never appears in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct SlackWebhook {
    client: reqwest::Client,
    url: url::Url,
}

impl fmt::Debug for SlackWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackWebhook")
            .field("host", &self.url.host_str())
            .finish_non_exhaustive()
    }
}

/// The function's settings, read once at start.
#[derive(Debug, Clone)]
pub struct SlackSettings {
    /// Where alarm transitions are posted (`SLACK_WEBHOOK_URL`).
    pub webhook: SlackWebhook,
    /// The channel to post to instead of the webhook's own (`SLACK_CHANNEL`).
    pub channel: Option<String>,
}

impl SlackSettings {
    /// Reads `SLACK_WEBHOOK_URL` (required) and `SLACK_CHANNEL` (optional).
    pub fn from_env(env: &jsonrpc_proxy::settings::Env<'_>) -> Result<Self, WebhookError> {
        Ok(Self {
            webhook: SlackWebhook::new(
                &env.get("SLACK_WEBHOOK_URL").unwrap_or_default(),
                POST_TIMEOUT,
            )?,
            channel: env.get("SLACK_CHANNEL"),
        })
    }
}

impl SlackWebhook {
    /// A webhook client for `url`: https, or http to a loopback host (tests, local stacks).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, WebhookError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(WebhookError::Missing);
        }
        let parsed = url::Url::parse(url).map_err(|_| WebhookError::Invalid("not a URL"))?;
        let loopback = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(domain)) => domain == "localhost",
            None => return Err(WebhookError::Invalid("no host")),
        };
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => return Err(WebhookError::Invalid("must be an https URL")),
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookError::Client(e.without_url().to_string()))?;
        Ok(Self {
            client,
            url: parsed,
        })
    }

    /// The webhook's host, safe to log.
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("")
    }

    /// Posts a payload; anything but a 2xx answer is an error.
    pub async fn post(&self, payload: &Value) -> Result<(), PostError> {
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload.to_string())
            .send()
            .await
            .map_err(|e| PostError::Transport(describe(e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let answer = response.text().await.unwrap_or_default();
        Err(PostError::Status {
            status: status.as_u16(),
            answer: truncate(answer.trim(), MAX_QUOTED_ANSWER),
        })
    }
}

/// A transport error, without the URL (reqwest puts it in its messages).
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Posts every notification of an SNS event; returns how many were posted. Stops at the first
/// failure and returns it, so the invocation fails and SNS retries it.
pub async fn notify(
    webhook: &SlackWebhook,
    channel: Option<&str>,
    event: &Value,
) -> Result<usize, NotifyError> {
    let notifications = parse_sns_event(event)?;
    for notification in &notifications {
        match notification {
            Notification::Alarm(alarm) => tracing::info!(
                alarm = %alarm.alarm_name,
                state = %alarm.new_state_value,
                "posting alarm transition to Slack"
            ),
            Notification::Other { .. } => {
                tracing::info!("posting a non-alarm SNS message to Slack");
            }
        }
        webhook.post(&slack_message(notification, channel)).await?;
    }
    Ok(notifications.len())
}

/// An invocation failed.
#[derive(Debug, Error)]
pub enum NotifyError {
    /// The event is not an SNS event.
    #[error(transparent)]
    Event(#[from] EventError),
    /// Slack did not take a message.
    #[error(transparent)]
    Post(#[from] PostError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm_json(state: &str, old: &str) -> String {
        json!({
            "AlarmName": "jsonrpc-proxy-dev healthy ETH nodes",
            "AlarmDescription": "Fewer than 2 backends are healthy.",
            "AWSAccountId": "123456789012",
            "NewStateValue": state,
            "NewStateReason": "Threshold Crossed: 3 out of the last 3 datapoints [1.0 (24/11/26 03:02:00)] were less than the threshold (2.0).",
            "StateChangeTime": "2026-11-24T03:05:12.345+0000",
            "Region": "EU (Ireland)",
            "AlarmArn": "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:jsonrpc-proxy-dev healthy ETH nodes",
            "OldStateValue": old,
            "Trigger": {
                "MetricName": "Number of healthy ETH nodes",
                "Namespace": "jsonrpc-proxy-dev",
                "StatisticType": "Statistic",
                "Statistic": "MINIMUM",
                "Unit": null,
                "Dimensions": [{"value": "jsonrpc-proxy-dev", "name": "Stack name"}],
                "Period": 60,
                "EvaluationPeriods": 3,
                "ComparisonOperator": "LessThanThreshold",
                "Threshold": 2.0,
                "TreatMissingData": "- TreatMissingData:                    breaching",
                "EvaluateLowSampleCountPercentile": ""
            }
        })
        .to_string()
    }

    #[test]
    fn formats_an_alarm() {
        let notification = parse_message(None, &alarm_json("ALARM", "OK"));
        let payload = slack_message(&notification, None);
        assert_eq!(
            payload["text"],
            ":rotating_light: *ALARM*: jsonrpc-proxy-dev healthy ETH nodes (was OK)"
        );
        let body = payload["attachments"][0]["text"].as_str().unwrap();
        assert_eq!(
            body,
            "Fewer than 2 backends are healthy.\n\
             *Reason:* Threshold Crossed: 3 out of the last 3 datapoints [1.0 (24/11/26 03:02:00)] were less than the threshold (2.0).\n\
             *Metric:* Number of healthy ETH nodes (Stack name=jsonrpc-proxy-dev) in jsonrpc-proxy-dev\n\
             *Threshold:* minimum &lt; 2 for 3 period(s) of 60 s; missing data: breaching\n\
             *Time:* 2026-11-24T03:05:12.345+0000, EU (Ireland)"
        );
        assert_eq!(payload["attachments"][0]["color"], "#d62728");
        assert!(payload.get("channel").is_none());
    }

    #[test]
    fn ok_and_insufficient_data_have_their_own_style() {
        let ok = slack_message(&parse_message(None, &alarm_json("OK", "ALARM")), None);
        assert!(ok["text"]
            .as_str()
            .unwrap()
            .starts_with(":white_check_mark: *OK*:"));
        assert_eq!(ok["attachments"][0]["color"], "#2ca02c");
        let unknown = slack_message(
            &parse_message(None, &alarm_json("INSUFFICIENT_DATA", "")),
            Some("#ops"),
        );
        assert_eq!(
            unknown["text"],
            ":grey_question: *INSUFFICIENT_DATA*: jsonrpc-proxy-dev healthy ETH nodes"
        );
        assert_eq!(unknown["channel"], "#ops");
    }

    #[test]
    fn minimal_alarms_and_markup_are_safe() {
        let notification = parse_message(
            None,
            r#"{"AlarmName":"a <b> & c","AlarmDescription":null,"NewStateValue":"ALARM"}"#,
        );
        let payload = slack_message(&notification, Some(""));
        assert_eq!(
            payload["text"],
            ":rotating_light: *ALARM*: a &lt;b&gt; &amp; c"
        );
        assert_eq!(payload["attachments"][0]["text"], "");
        assert!(payload.get("channel").is_none());
    }

    #[test]
    fn other_messages_are_posted_as_text() {
        let notification = parse_message(Some("Hello".into()), "just <testing>");
        assert_eq!(
            notification,
            Notification::Other {
                subject: Some("Hello".into()),
                message: "just <testing>".into()
            }
        );
        assert_eq!(
            slack_message(&notification, None),
            json!({"text": ":bell: *Hello*\njust &lt;testing&gt;"})
        );
        let long = "é".repeat(3000);
        let payload = slack_message(&parse_message(None, &long), None);
        assert!(payload["text"].as_str().unwrap().len() < 2100);
    }

    /// A record as SNS delivers it to Lambda.
    fn sns_record(subject: &Value, message: &str) -> Value {
        let topic = "arn:aws:sns:eu-west-1:123456789012:jsonrpc-proxy-dev-alarms";
        json!({
            "EventSource": "aws:sns",
            "EventVersion": "1.0",
            "EventSubscriptionArn": format!("{topic}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55"),
            "Sns": {
                "Type": "Notification",
                "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
                "TopicArn": topic,
                "Subject": subject,
                "Message": message,
                "Timestamp": "2026-11-24T03:05:12.345Z",
                "SignatureVersion": "1",
                "Signature": "EXAMPLE",
                "SigningCertUrl": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-EXAMPLE.pem",
                "UnsubscribeUrl": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
                "MessageAttributes": {}
            }
        })
    }

    #[test]
    fn malformed_sns_events_say_what_is_wrong() {
        let problem = |event: Value| parse_sns_event(&event).unwrap_err().to_string();
        assert!(problem(json!({}))
            .starts_with("event is not an SNS notification: missing field `Records`"),);
        let mut no_message = sns_record(&json!("s"), "m");
        no_message["Sns"].as_object_mut().unwrap().remove("Message");
        assert!(problem(json!({"Records": [no_message]})).contains("missing field `Message`"));
        let mut not_text = sns_record(&json!("s"), "m");
        not_text["Sns"]["Message"] = json!({"AlarmName": "x"});
        assert!(problem(json!({"Records": [not_text]})).contains("invalid type: map"));
        assert_eq!(parse_sns_event(&json!({"Records": []})).unwrap(), vec![]);
        let empty_subject = parse_sns_event(&json!({"Records": [sns_record(&json!(""), "m")]}));
        assert_eq!(
            empty_subject.unwrap(),
            vec![Notification::Other {
                subject: None,
                message: "m".into()
            }]
        );
    }

    #[test]
    fn parses_sns_events() {
        let event = json!({"Records": [
            sns_record(&json!("ALARM: x"), &alarm_json("ALARM", "OK")),
            sns_record(&json!(null), "hi")
        ]});
        let parsed = parse_sns_event(&event).unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(
            matches!(&parsed[0], Notification::Alarm(a) if a.trigger.as_ref().unwrap().threshold == Some(2.0))
        );
        assert!(matches!(
            &parsed[1],
            Notification::Other { subject: None, .. }
        ));
        assert!(parse_sns_event(&json!({})).is_err());
        assert!(parse_sns_event(&json!({"Records": [{"Sns": {}}]})).is_err());
        assert!(parse_sns_event(&json!({"Records": [{}]})).is_err());
    }

    #[test]
    fn webhook_urls_are_checked_and_never_shown() {
        let secret = "https://hooks.slack.com/services/T000/B000/SECRET";
        let webhook = SlackWebhook::new(secret, POST_TIMEOUT).unwrap();
        assert_eq!(webhook.host(), "hooks.slack.com");
        assert!(!format!("{webhook:?}").contains("SECRET"));
        assert!(SlackWebhook::new("http://127.0.0.1:9/x", POST_TIMEOUT).is_ok());
        assert!(matches!(
            SlackWebhook::new("  ", POST_TIMEOUT),
            Err(WebhookError::Missing)
        ));
        assert!(matches!(
            SlackWebhook::new("http://hooks.slack.com/services/x", POST_TIMEOUT),
            Err(WebhookError::Invalid(_))
        ));
        assert!(matches!(
            SlackWebhook::new("not a url", POST_TIMEOUT),
            Err(WebhookError::Invalid(_))
        ));
    }

    #[test]
    fn numbers_and_operators() {
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(comparison_symbol("GreaterThanOrEqualToThreshold"), ">=");
        assert_eq!(comparison_symbol("Weird"), "Weird");
        assert_eq!(truncate("abcdef", 3), "abc…");
    }
}
