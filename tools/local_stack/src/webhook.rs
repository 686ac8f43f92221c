//! A Slack incoming-webhook stand-in on loopback: records what `slack_notifier` posts and
//! answers `ok`, as Slack does.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The running stand-in; cloning shares it. The server stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct SlackStandIn {
    url: String,
    posts: Arc<Mutex<Vec<Value>>>,
    _server: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SlackStandIn {
    /// Listens on a free loopback port at `/services/local/webhook`.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/services/local/webhook", listener.local_addr()?);
        let posts = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/services/local/webhook", post(receive))
            .with_state(posts.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            posts,
            _server: Arc::new(AbortOnDrop(server)),
        })
    }

    /// The webhook URL (`slack_webhook_url`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every payload received, in order.
    pub fn posts(&self) -> Vec<Value> {
        self.posts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

async fn receive(
    State(posts): State<Arc<Mutex<Vec<Value>>>>,
    Json(payload): Json<Value>,
) -> &'static str {
    posts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(payload);
    "ok"
}
