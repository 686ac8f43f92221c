//! The notifier against a local HTTP server standing in for Slack's incoming webhook, fed an
//! SNS-wrapped CloudWatch alarm event in the shape AWS delivers it.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::Router;
use devstack::testkit::serve;
use serde_json::Value;
use slack_notifier::{notify, NotifyError, PostError, SlackWebhook};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const EVENT: &str = include_str!("fixtures/cloudwatch_alarm_sns_event.json");

/// One request the fake Slack received.
#[derive(Debug)]
struct Received {
    request_line: String,
    content_type: Option<String>,
    body: Value,
}

/// Starts a stand-in for the webhook on 127.0.0.1 that answers every request with `status`
/// and `answer`; returns its URL and the requests it receives.
async fn fake_slack(
    status: u16,
    answer: &'static str,
) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let router = Router::new().fallback(move |request: Request| {
        let sender = sender.clone();
        async move {
            let request_line = format!(
                "{} {} {:?}",
                request.method(),
                request.uri(),
                request.version()
            );
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .expect("body");
            let _ = sender.send(Received {
                request_line,
                content_type,
                body: serde_json::from_slice(&body).expect("JSON body"),
            });
            let status = StatusCode::from_u16(status).expect("status");
            (status, [(header::CONTENT_TYPE, "text/plain")], answer)
        }
    });
    let server = serve(router).await;
    (server.url("/services/T000/B000/SECRETTOKEN"), receiver)
}

#[tokio::test]
async fn posts_a_readable_alarm_message() {
    let (url, mut received) = fake_slack(200, "ok").await;
    let webhook = SlackWebhook::new(&url, Duration::from_secs(5)).expect("webhook");
    let event: Value = serde_json::from_str(EVENT).expect("fixture");

    let posted = notify(&webhook, Some("#eth-ops"), &event)
        .await
        .expect("posted");
    assert_eq!(posted, 1);

    let request = received.recv().await.expect("a request");
    assert_eq!(
        request.request_line,
        "POST /services/T000/B000/SECRETTOKEN HTTP/1.1"
    );
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        request.body["text"],
        ":rotating_light: *ALARM*: jsonrpc-proxy-dev healthy ETH nodes (was OK)"
    );
    assert_eq!(request.body["channel"], "#eth-ops");
    let attachment = &request.body["attachments"][0];
    assert_eq!(attachment["color"], "#d62728");
    let text = attachment["text"].as_str().expect("attachment text");
    for expected in [
        "Fewer than 2 backends of jsonrpc-proxy-dev are healthy",
        "*Reason:* Threshold Crossed: 3 out of the last 3 datapoints",
        "*Metric:* Number of healthy ETH nodes (Stack name=jsonrpc-proxy-dev) in jsonrpc-proxy-dev",
        "*Threshold:* minimum &lt; 2 for 3 period(s) of 60 s; missing data: breaching",
        "*Time:* 2026-11-24T03:05:12.345+0000, EU (Ireland)",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from {text}");
    }
}

#[tokio::test]
async fn a_slack_error_is_an_error_without_the_webhook_url() {
    let (url, mut received) = fake_slack(500, "rollup_error").await;
    let webhook = SlackWebhook::new(&url, Duration::from_secs(5)).expect("webhook");
    let event: Value = serde_json::from_str(EVENT).expect("fixture");

    let error = notify(&webhook, None, &event).await.expect_err("must fail");
    assert!(
        matches!(&error, NotifyError::Post(PostError::Status { status: 500, answer }) if answer == "rollup_error"),
        "{error:?}"
    );
    assert!(received.recv().await.is_some());
    assert!(!error.to_string().contains("SECRETTOKEN"), "{error}");
}

#[tokio::test]
async fn an_unreachable_or_slow_webhook_is_an_error_without_the_url() {
    // Nothing listens on a port that was just released.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let webhook = SlackWebhook::new(
        &format!("http://127.0.0.1:{port}/services/SECRETTOKEN"),
        Duration::from_secs(5),
    )
    .expect("webhook");
    let event: Value = serde_json::from_str(EVENT).expect("fixture");
    let error = notify(&webhook, None, &event).await.expect_err("must fail");
    assert!(
        matches!(error, NotifyError::Post(PostError::Transport(_))),
        "{error:?}"
    );
    assert!(!error.to_string().contains("SECRETTOKEN"), "{error}");

    // A server that accepts but never answers: the timeout turns it into an error.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = silent.local_addr().expect("address");
    let holder = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let webhook = SlackWebhook::new(
        &format!("http://{address}/services/SECRETTOKEN"),
        Duration::from_millis(300),
    )
    .expect("webhook");
    let error = notify(&webhook, None, &event)
        .await
        .expect_err("must time out");
    assert!(error.to_string().contains("timed out"), "{error}");
    assert!(!error.to_string().contains("SECRETTOKEN"), "{error}");
    holder.abort();
}

#[tokio::test]
async fn a_non_sns_event_is_an_error_and_posts_nothing() {
    let (url, mut received) = fake_slack(200, "ok").await;
    let webhook = SlackWebhook::new(&url, Duration::from_secs(5)).expect("webhook");
    let error = notify(&webhook, None, &serde_json::json!({"detail": {}}))
        .await
        .expect_err("must fail");
    assert!(matches!(error, NotifyError::Event(_)));
    assert!(received.try_recv().is_err());
}
