//! The agent's usage step against a real gated nginx in front of a real anvil node, publishing
//! to the CloudWatch recorder (through a fault proxy, to show that a failed publication loses
//! nothing): per-client calls served and refused, by reason, with the `Client` dimension
//! holding the name; the key is in no metric and no log line.

use config_agent::usage::UsageReporter;
use devstack::testkit::{GatedNginx, TestStack};
use devstack::{Anvil, AnvilOptions, Fault, FaultRule};
use jsonrpc_proxy::aws::metrics::MetricsPublisher;
use jsonrpc_proxy::functions::usage::{METRIC_CALLS_REFUSED, METRIC_CALLS_SERVED};
use jsonrpc_proxy::render::gate::{key_sha256, GateClient, GatePolicy};
use serde_json::{json, Value};

const KEY: &str = "usAgeKey_0123456789-abcdefXYZ42";

/// POSTs `body` to `path` on nginx; the HTTP status.
async fn post(port: u16, path: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .expect("nginx answers")
        .status()
        .as_u16()
}

fn call(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": []})
}

/// The data points of the recorded calls after the first `skip` calls: (metric, client,
/// reason, value).
fn points(stack: &TestStack, skip: usize) -> Vec<(String, String, String, f64)> {
    stack
        .metric_calls()
        .into_iter()
        .skip(skip)
        .flat_map(|call| call["metric_data"].as_array().cloned().unwrap_or_default())
        .map(|point| {
            let dimension = |name: &str| {
                point["Dimensions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|d| d["Name"] == name)
                    .and_then(|d| d["Value"].as_str())
                    .unwrap_or("")
                    .to_owned()
            };
            assert_eq!(dimension("Stack name"), stack.stack_name, "{point}");
            (
                point["MetricName"].as_str().unwrap_or("").to_owned(),
                dimension("Client"),
                dimension("Reason"),
                point["Value"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

fn served(client: &str, value: f64) -> (String, String, String, f64) {
    (
        METRIC_CALLS_SERVED.into(),
        client.into(),
        String::new(),
        value,
    )
}

fn refused(client: &str, reason: &str, value: f64) -> (String, String, String, f64) {
    (
        METRIC_CALLS_REFUSED.into(),
        client.into(),
        reason.into(),
        value,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_per_client_reaches_cloudwatch_as_deltas_without_the_key() {
    let stack = TestStack::with_faults("usage").await;
    let anvil = Anvil::start(AnvilOptions::default()).expect("anvil");
    let policy = GatePolicy {
        clients: vec![GateClient {
            name: "app".into(),
            key_sha256: key_sha256(KEY),
            calls_per_second: 1000,
            allow_methods: vec![],
            concurrent_requests: 64,
            allowed_origins: vec![],
        }],
        ..GatePolicy::default()
    };
    let gated = GatedNginx::start(&anvil.url(), policy, 1);
    let nginx = &gated.nginx;
    let port = gated.port;
    let keyed = format!("/v3/{KEY}");

    let mut reporter = UsageReporter::new(
        MetricsPublisher::new(stack.clients().cloudwatch.clone(), &stack.namespace),
        stack.stack_name.clone(),
        gated.socket_dir(),
    );

    // Minute 1: 3 plain calls and a batch of 2 served, 1 denied method, 1 wrong key.
    for _ in 0..3 {
        assert_eq!(post(port, &keyed, call("eth_blockNumber")).await, 200);
    }
    let batch = json!([call("eth_chainId"), call("eth_blockNumber")]);
    assert_eq!(post(port, &keyed, batch).await, 200);
    assert_eq!(post(port, &keyed, call("anvil_mine")).await, 200);
    let wrong = format!("/v3/{}", KEY.replace('u', "v"));
    assert_eq!(post(port, &wrong, call("eth_blockNumber")).await, 401);

    let step = reporter.step().await;
    assert!(step.read);
    assert_eq!((step.published, step.pending), (3, 0));
    let mut first = points(&stack, 0);
    first.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    assert_eq!(
        first,
        vec![
            refused("(unknown)", "key", 1.0),
            refused("app", "method", 1.0),
            served("app", 5.0),
        ]
    );
    let calls_so_far = stack.metric_calls().len();

    // Minute 2: 2 served; CloudWatch fails, so nothing is published and nothing is lost.
    for _ in 0..2 {
        assert_eq!(post(port, &keyed, call("eth_blockNumber")).await, 200);
    }
    stack
        .metrics_proxy()
        .inject(FaultRule::new(Fault::InternalError));
    let step = reporter.step().await;
    assert!(step.read);
    assert_eq!((step.published, step.pending), (0, 1));
    stack.metrics_proxy().clear();

    // Minute 3: 1 more served and 1 more denied; the failed minute's counts go with them.
    assert_eq!(post(port, &keyed, call("eth_blockNumber")).await, 200);
    assert_eq!(post(port, &keyed, call("debug_traceCall")).await, 200);
    let step = reporter.step().await;
    assert_eq!((step.published, step.pending), (2, 0));
    let mut third = points(&stack, calls_so_far);
    third.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    assert_eq!(
        third,
        vec![refused("app", "method", 1.0), served("app", 3.0)]
    );

    // Nothing new: nothing published.
    let step = reporter.step().await;
    assert_eq!((step.published, step.pending), (0, 0));

    // The key is in no metric and no log line.
    let recorded = serde_json::to_string(&stack.metric_calls()).expect("json");
    assert!(!recorded.contains(KEY));
    for log in [
        gated.access_log(),
        nginx.error_log_path(),
        nginx.access_log_path(),
    ] {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!text.contains(KEY), "{} holds the key", log.display());
    }
    assert!(std::fs::read_to_string(gated.access_log())
        .expect("access log")
        .contains("app"));
}
