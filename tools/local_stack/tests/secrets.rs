//! Secrets: provider keys in URL paths and queries, `user:password@` credentials, through the
//! whole system (the real Lambda binaries, nginx, the config agent). The keyed "provider" is
//! a JSON-RPC server inside the test that answers only at its exact keyed paths and only with
//! the right basic credentials, so the proxy working proves the keys reach nginx.
//!
//! Afterwards every function log file, every transition and error the stack observed, every
//! PutMetricData call, the config pointer, and every admin answer (successes without their
//! `url` fields, and refusals of URLs that contain a key) are searched for each secret: none
//! may contain one. The rendered config must (it is what makes the keys work).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use common::*;
use devstack::testkit::wait_until;
use devstack::testkit::{node_result, rpc_answer, serve, Server};
use jsonrpc_proxy::aws::config_bucket::ConfigBucket;
use local_stack::stack::LocalStack;
use serde_json::{json, Value};

const KEY_LEADER: &str = "k3yLeaderQx7Z9v2WmSecret";
const KEY_A: &str = "k3yNodeA8Hf2LpR4tSecret";
const KEY_QUERY: &str = "k3yQuery5Nd9XcV1bSecret";
const KEY_DOWN: &str = "k3yDown2Jk6WqP0zSecret";
const KEY_REDIRECT: &str = "k3yRedirect7Tg3YhSecret";
const KEY_SLOW: &str = "k3ySlow4Mn8BvC6xSecret";
const KEY_REFUSED_PORT: &str = "k3yClosedPort9Ls1Secret";
const KEY_REFUSED_URL: &str = "k3yRefusedUrl3Dp5Secret";
const USER: &str = "rpcuser";
const PASSWORD: &str = "pA55w0rdZr8Kq2Secret";

/// Standard base64 (the `Authorization: Basic` value), without a dependency.
fn base64(input: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = input.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What the keyed provider saw.
#[derive(Default)]
struct Seen {
    /// Answered JSON-RPC requests per route.
    served: BTreeMap<&'static str, usize>,
    /// Requests refused for missing or wrong credentials, or at an unknown path.
    refused: Vec<String>,
}

/// The keyed provider: one port, one route per backend.
struct Provider {
    server: Server,
    state: Arc<ProviderState>,
}

struct ProviderState {
    seen: Mutex<Seen>,
    down: AtomicBool,
    started: Instant,
    port: AtomicU16,
}

impl Provider {
    async fn start() -> Self {
        let state = Arc::new(ProviderState {
            seen: Mutex::default(),
            down: AtomicBool::new(false),
            started: Instant::now(),
            port: AtomicU16::new(0),
        });
        let router = Router::new().fallback(answer).with_state(state.clone());
        let server = serve(router).await;
        state.port.store(server.port(), Ordering::SeqCst);
        Self { server, state }
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    fn base(&self) -> String {
        self.server.url("")
    }

    fn served(&self, route: &str) -> usize {
        lock(&self.state.seen)
            .served
            .get(route)
            .copied()
            .unwrap_or(0)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The route a request is for, when its path and credentials are right.
fn route(target: &str, authorization: Option<&str>) -> Option<&'static str> {
    let basic = format!("Basic {}", base64(&format!("{USER}:{PASSWORD}")));
    let routes: [(&'static str, String, Option<&str>); 7] = [
        ("leader", format!("/v3/{KEY_LEADER}"), None),
        ("a", format!("/v3/{KEY_A}"), None),
        ("b", "/rpc".to_owned(), Some(basic.as_str())),
        ("query", format!("/rpc?apikey={KEY_QUERY}"), None),
        ("down", format!("/v3/{KEY_DOWN}"), None),
        ("redirect", format!("/v3/{KEY_REDIRECT}"), None),
        ("slow", format!("/v3/{KEY_SLOW}"), None),
    ];
    let found = routes
        .iter()
        .find(|(_, path, auth)| target == path && (auth.is_none() || *auth == authorization))
        .map(|(name, _, _)| *name);
    found
}

async fn answer(
    State(state): State<Arc<ProviderState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = uri.path_and_query().map_or("", |target| target.as_str());
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let height = 1000 + state.started.elapsed().as_secs();
    let json = [(header::CONTENT_TYPE, "application/json")];
    match route(target, authorization) {
        Some("slow") => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (StatusCode::GATEWAY_TIMEOUT, json, "{}".to_owned()).into_response()
        }
        Some("redirect") => {
            let port = state.port.load(Ordering::SeqCst);
            let location = format!("http://127.0.0.1:{port}/v3/{KEY_REDIRECT}/moved");
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
        Some("down") if state.down.load(Ordering::SeqCst) => {
            (StatusCode::SERVICE_UNAVAILABLE, json, "{}".to_owned()).into_response()
        }
        Some(name) => {
            *lock(&state.seen).served.entry(name).or_insert(0) += 1;
            let marker: u64 = match name {
                "leader" => 1000,
                "a" => 1001,
                "b" => 1002,
                "query" => 1003,
                _ => 1004,
            };
            let text = rpc_answer(&body, |method| match method {
                "eth_getBalance" => Some(json!(format!("{marker:#x}"))),
                other => node_result(other, height),
            });
            (StatusCode::OK, json, text).into_response()
        }
        None => {
            lock(&state.seen)
                .refused
                .push(format!("{target} auth={}", authorization.is_some()));
            (StatusCode::UNAUTHORIZED, json, "{}".to_owned()).into_response()
        }
    }
}

/// Every secret, in each form it could leak in.
fn secrets() -> Vec<String> {
    let mut all: Vec<String> = [
        KEY_LEADER,
        KEY_A,
        KEY_QUERY,
        KEY_DOWN,
        KEY_REDIRECT,
        KEY_SLOW,
        KEY_REFUSED_PORT,
        KEY_REFUSED_URL,
        PASSWORD,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    all.push(base64(&format!("{USER}:{PASSWORD}")));
    all
}

/// The secrets `text` contains.
fn leaked(text: &str) -> Vec<String> {
    secrets()
        .into_iter()
        .filter(|secret| text.contains(secret.as_str()))
        .collect()
}

/// `value` without its `url` fields (the one place a secret belongs).
fn without_urls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "url")
                .map(|(k, v)| (k.clone(), without_urls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_urls).collect()),
        other => other.clone(),
    }
}

/// An admin answer with its body parsed (the body is a JSON string).
fn parsed_answer(answer: &Value) -> Value {
    let body = answer
        .get("body")
        .and_then(Value::as_str)
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
        .unwrap_or(Value::Null);
    json!({"statusCode": answer.get("statusCode"), "body": body})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaves_the_url_fields_and_the_rendered_config() {
    let provider = Provider::start().await;
    let base = provider.base();
    let closed_port = devstack::free_port().expect("a free port");
    let leader = format!("{base}/v3/{KEY_LEADER}");
    let node_a = format!("{base}/v3/{KEY_A}");
    let node_b = format!("http://{USER}:{PASSWORD}@127.0.0.1:{}/rpc", provider.port());
    let node_query = format!("{base}/rpc?apikey={KEY_QUERY}");
    let node_down = format!("{base}/v3/{KEY_DOWN}");
    let redirect = format!("{base}/v3/{KEY_REDIRECT}");
    let slow = format!("{base}/v3/{KEY_SLOW}");
    let refused = format!("http://127.0.0.1:{closed_port}/v3/{KEY_REFUSED_PORT}");

    let work_dir = tempfile::tempdir().expect("temporary work dir");
    let mut options = options(work_dir.path());
    options.leader = Some(leader.clone());
    options.nodes = vec![
        node_a.clone(),
        node_b.clone(),
        node_query.clone(),
        node_down.clone(),
    ];
    let stack = LocalStack::start(options)
        .await
        .expect("the local stack starts");
    let proxy = stack.proxy_url();
    let mut answers: Vec<(String, Value)> = Vec::new();
    for url in [&redirect, &slow, &refused] {
        let body = json!({"url": url, "is_leader": false}).to_string();
        let answer = stack
            .invoke("add_backend", &json!({ "body": body }))
            .await
            .expect("add_backend");
        assert_eq!(answer["statusCode"], 201, "{answer}");
        answers.push(("add_backend (201)".into(), answer));
    }

    // All four keyed nodes are routed, the keyed leader as backup.
    wait_until(
        "four keyed nodes and the leader are routed",
        Duration::from_secs(40),
        || async { routed(&stack).len() == 5 },
    )
    .await;

    // Requests through the proxy reach the provider with the keys and the credentials.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut answered = BTreeMap::new();
    for _ in 0..40 {
        let who = who_answers(&client, &proxy)
            .await
            .expect("a request through the proxy");
        *answered.entry(who).or_insert(0) += 1;
    }
    assert_eq!(
        answered.keys().copied().collect::<Vec<_>>(),
        vec![1001, 1002, 1003, 1004],
        "the four keyed nodes answer through the proxy: {answered:?}"
    );
    for route in ["leader", "a", "b", "query", "down"] {
        assert!(provider.served(route) > 0, "{route} was never reached");
    }

    // A keyed node fails (a transition with a reason), then is removed. Requests meanwhile
    // make nginx log the failing upstream (its public server retries them elsewhere).
    provider.state.down.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        let who = who_answers(&client, &proxy).await;
        assert!(who.is_ok(), "retried on another node: {who:?}");
    }
    wait_until(
        "the failed keyed node leaves the config",
        Duration::from_secs(20),
        || async { routed(&stack).len() == 4 },
    )
    .await;
    let removed = stack
        .invoke(
            "remove_backend",
            &json!({"body": json!({"url": node_down}).to_string()}),
        )
        .await
        .expect("remove_backend");
    assert_eq!(removed["statusCode"], 200, "{removed}");
    answers.push(("remove_backend (200)".into(), removed));

    // The hostile keyed backends have reasons.
    let reasons_seen = Arc::new(AtomicUsize::new(0));
    wait_until(
        "the redirecting, slow and refusing keyed backends have reasons",
        Duration::from_secs(20),
        || {
            let reasons_seen = reasons_seen.clone();
            let stack = &stack;
            let (redirect, slow, refused) = (&redirect, &slow, &refused);
            async move {
                let Ok(backends) = stack.list_backends().await else {
                    return false;
                };
                let with_reason = backends
                    .iter()
                    .filter(|b| [redirect, slow, refused].contains(&&b.url))
                    .filter(|b| b.health_reason.is_some())
                    .count();
                reasons_seen.store(with_reason, Ordering::SeqCst);
                with_reason == 3
            }
        },
    )
    .await;

    // Refusals of URLs and bodies that carry secrets.
    let refusals = [
        (
            "add_backend",
            json!({"url": format!("{base}/v3/{KEY_REFUSED_URL};proxy_pass http://evil;"), "is_leader": false}).to_string(),
        ),
        (
            "add_backend",
            json!({"url": format!("{base}/v3/{KEY_REFUSED_URL} x"), "is_leader": false}).to_string(),
        ),
        (
            "add_backend",
            json!({"url": format!("{base}/v3/{KEY_REFUSED_URL}\n"), "is_leader": false}).to_string(),
        ),
        (
            "add_backend",
            json!({"url": format!("{base}/v3/{KEY_REFUSED_URL}%zz"), "is_leader": false}).to_string(),
        ),
        (
            "add_backend",
            json!({"url": format!("ftp://{USER}:{PASSWORD}@127.0.0.1/{KEY_REFUSED_URL}"), "is_leader": false}).to_string(),
        ),
        (
            "add_backend",
            json!({"url": format!("http://:{PASSWORD}@127.0.0.1/{KEY_REFUSED_URL}"), "is_leader": false}).to_string(),
        ),
        (
            "add_backend",
            json!({"url": format!("http://[::1/{KEY_REFUSED_URL}"), "is_leader": false}).to_string(),
        ),
        (
            "add_backend",
            json!({"url": format!("{base}/v3/{KEY_REFUSED_URL}{}", "a".repeat(3000)), "is_leader": false}).to_string(),
        ),
        (
            "add_backend",
            json!({"url": format!("{base}/v3/{KEY_REFUSED_URL}"), "is_leader": "yes"}).to_string(),
        ),
        (
            "add_backend",
            json!({"url": [format!("{base}/v3/{KEY_REFUSED_URL}")], "is_leader": false}).to_string(),
        ),
        (
            "add_backend",
            format!(r#"{{"url": "{base}/v3/{KEY_REFUSED_URL}", "is_leader": fal"#),
        ),
        (
            "add_backend",
            json!({"url": format!("{base}/v3/{KEY_REFUSED_URL}"), "is_leader": true}).to_string(),
        ),
        (
            "remove_backend",
            json!({"url": format!("{base}/v3/{KEY_REFUSED_URL}")}).to_string(),
        ),
        (
            "remove_backend",
            json!({"url": node_a, "password": PASSWORD}).to_string(),
        ),
    ];
    let mut statuses = BTreeMap::new();
    for (function, body) in &refusals {
        let answer = stack
            .invoke(function, &json!({ "body": body }))
            .await
            .expect("the function answers");
        let status = answer["statusCode"].as_u64().unwrap_or(0);
        assert!((400..500).contains(&status), "{function} {body}: {answer}");
        *statuses.entry(status).or_insert(0) += 1;
        answers.push((format!("{function} ({status})"), answer));
    }
    eprintln!("[secrets] refusals by status: {statuses:?}");

    // list_backends: the secrets are in the url fields only.
    let listed = stack
        .invoke("list_backends", &json!({}))
        .await
        .expect("list_backends");
    let listed_text = parsed_answer(&listed).to_string();
    for secret in [KEY_LEADER, KEY_A, KEY_QUERY, KEY_SLOW, PASSWORD] {
        assert!(
            listed_text.contains(secret),
            "positive control: list_backends shows the URL with {secret}"
        );
    }
    answers.push(("list_backends (200)".into(), listed));

    // The rendered config carries what the nodes need; the pointer does not.
    let s3 = aws_sdk_s3::Client::new(&devstack::sdk_config(&stack.moto_endpoint()).await);
    let bucket = ConfigBucket::new(s3, &stack.deployed.bucket);
    let pointer = bucket
        .read_pointer()
        .await
        .expect("pointer")
        .expect("a config was rendered");
    let config = String::from_utf8(
        bucket
            .get(&pointer.key)
            .await
            .expect("config")
            .expect("the pointed config exists"),
    )
    .expect("UTF-8");
    for secret in [
        KEY_LEADER.to_owned(),
        KEY_A.to_owned(),
        KEY_QUERY.to_owned(),
        base64(&format!("{USER}:{PASSWORD}")),
    ] {
        assert!(
            config.contains(&secret),
            "the config must carry {secret} to reach the node"
        );
    }
    assert!(
        leaked(&config).len() >= 4,
        "positive control: the search finds secrets where they are"
    );
    let pointer_text = serde_json::to_string(&pointer).expect("pointer JSON");

    let (_, _, transitions, rounds) = stack.snapshot();
    let errors = lock(&stack.observed).errors.clone();
    let metric_calls = stack.recorder().recorded().expect("recorded metrics");
    let log_dir = work_dir.path().join("functions");
    // nginx's prefix (and its log) goes with the stack.
    let nginx_log = stack.nginx_error_log();
    stack.shutdown().await;

    // Search everything.
    let mut findings = Vec::new();
    let mut searched = BTreeMap::new();
    let mut check = |what: String, text: &str| {
        *searched
            .entry(what.split(' ').next().unwrap_or("").to_owned())
            .or_insert(0) += 1;
        let found = leaked(text);
        if !found.is_empty() {
            findings.push(format!("{what}: {found:?}"));
        }
    };
    let mut log_lines = 0;
    let mut log_text = String::new();
    for entry in std::fs::read_dir(&log_dir).expect("function logs") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("log file");
        log_lines += text.lines().count();
        for (number, line) in text.lines().enumerate() {
            check(format!("log {}:{}", path.display(), number + 1), line);
        }
        log_text.push_str(&text);
    }
    for transition in &transitions {
        check(format!("transition {}", transition.at), &transition.text);
    }
    for error in &errors {
        check("error".into(), error);
    }
    let mut dimensions = 0;
    for call in &metric_calls {
        for datum in call["metric_data"].as_array().into_iter().flatten() {
            for dimension in datum["Dimensions"].as_array().into_iter().flatten() {
                dimensions += 1;
                check("metric dimension".into(), &dimension.to_string());
            }
        }
        check("metric call".into(), &call.to_string());
    }
    for (what, answer) in &answers {
        check(
            format!("answer {what}"),
            &without_urls(&parsed_answer(answer)).to_string(),
        );
    }
    check("pointer latest.json".into(), &pointer_text);
    for (number, line) in nginx_log.lines().enumerate() {
        check(format!("nginx error log:{}", number + 1), line);
    }

    // The search looked at real material.
    assert!(log_text.contains("backend stored"), "the logs were written");
    assert!(
        log_text.contains("[redacted:"),
        "the logs name backends by their redacted labels"
    );
    assert!(
        transitions
            .iter()
            .any(|t| t.text.contains("healthy → unhealthy")),
        "a transition with a reason was observed: {transitions:?}"
    );
    assert!(dimensions > 0, "metrics were recorded");
    // The gated public server logs failed upstream attempts through the gate (by socket).
    assert!(
        nginx_log.contains("jsonrpc_gate: client") && nginx_log.contains(" answered 5"),
        "nginx logged the failing keyed upstream: {nginx_log}"
    );
    assert!(
        metric_calls
            .iter()
            .any(|c| c.to_string().contains("[redacted:")),
        "keyed nodes have metrics under their redacted labels"
    );
    let refused_requests = lock(&provider.state.seen).refused.clone();
    assert!(
        refused_requests.is_empty(),
        "every request to the provider carried the right path and credentials: {refused_requests:?}"
    );
    eprintln!(
        "[secrets] searched: {log_lines} log lines, {} transitions, {} errors, {} metric calls ({dimensions} dimensions), {} admin answers, the pointer; {rounds} rounds; {} secrets",
        transitions.len(),
        errors.len(),
        metric_calls.len(),
        answers.len(),
        secrets().len()
    );
    eprintln!("[secrets] searched by kind: {searched:?}");
    assert!(
        findings.is_empty(),
        "secrets leaked:\n{}",
        findings.join("\n")
    );
}
