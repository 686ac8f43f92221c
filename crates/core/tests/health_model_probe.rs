//! The probe over real HTTP, against tiny in-test servers: the batch, the fallback for nodes
//! that refuse batches, and how failures are classified for the hysteresis.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::Router;
use devstack::testkit::{serve, Server};
use jsonrpc_proxy::health::judgement::{Severity, UnhealthyReason};
use jsonrpc_proxy::health::probe::{
    ProbeFailure, ProbeSettings, Prober, BLOCK_NUMBER_REQUEST, PROBE_BATCH_REQUEST,
};
use jsonrpc_proxy::model::backend_url::BackendUrl;
use tokio::sync::mpsc;

/// How a fake node answers one request body: `(status, body)`.
type Answer = fn(&str) -> (u16, String);

/// Serves `answer` on a loopback port; every request body received is sent to the channel.
async fn fake_node(answer: Answer) -> (BackendUrl, mpsc::UnboundedReceiver<String>) {
    let (seen, received) = mpsc::unbounded_channel();
    let router = Router::new().fallback(move |body: String| {
        let _ = seen.send(body.clone());
        let (status, reply) = answer(&body);
        let status = StatusCode::from_u16(status).expect("status");
        async move { (status, [(header::CONTENT_TYPE, "application/json")], reply) }
    });
    let url = BackendUrl::parse(&serve(router).await.url("/")).expect("url");
    (url, received)
}

fn prober() -> Prober {
    Prober::new(ProbeSettings {
        timeout: Duration::from_secs(2),
        ..ProbeSettings::default()
    })
    .expect("prober")
}

fn bodies(received: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut all = Vec::new();
    while let Ok(body) = received.try_recv() {
        all.push(body);
    }
    all
}

#[tokio::test]
async fn a_batch_capable_node_answers_height_chain_and_sync_state_in_one_request() {
    let (url, mut received) = fake_node(|_| {
        (
            200,
            r#"[{"jsonrpc":"2.0","id":3,"result":false},{"jsonrpc":"2.0","id":1,"result":"0x2a"},{"jsonrpc":"2.0","id":2,"result":"0x5"}]"#.into(),
        )
    })
    .await;
    let outcome = prober().probe(&url).await;
    assert_eq!(outcome.result, Ok(42));
    assert_eq!(outcome.chain_id, Some(5));
    assert_eq!(outcome.syncing, Some(false));
    assert_eq!(bodies(&mut received), [PROBE_BATCH_REQUEST]);
}

#[tokio::test]
async fn a_syncing_node_says_so() {
    let (url, _received) = fake_node(|_| {
        (
            200,
            r#"[{"id":1,"result":"0x10"},{"id":2,"result":"0x1"},{"id":3,"result":{"currentBlock":"0x10","highestBlock":"0x99"}}]"#.into(),
        )
    })
    .await;
    let outcome = prober().probe(&url).await;
    assert_eq!(outcome.result, Ok(16));
    assert_eq!(outcome.syncing, Some(true));
}

#[tokio::test]
async fn a_node_refusing_batches_with_200_gets_the_single_request() {
    let (url, mut received) = fake_node(|body| {
        if body.starts_with('[') {
            (200, r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch not supported"}}"#.into())
        } else {
            (200, r#"{"jsonrpc":"2.0","id":1,"result":"0x10"}"#.into())
        }
    })
    .await;
    let outcome = prober().probe(&url).await;
    assert_eq!(outcome.result, Ok(16));
    assert_eq!(
        (outcome.chain_id, outcome.syncing),
        (None, None),
        "unknown, not a failure"
    );
    assert_eq!(
        bodies(&mut received),
        [PROBE_BATCH_REQUEST, BLOCK_NUMBER_REQUEST]
    );
}

#[tokio::test]
async fn a_node_refusing_batches_with_400_gets_the_single_request() {
    let (url, mut received) = fake_node(|body| {
        if body.starts_with('[') {
            (
                400,
                r#"{"error":{"code":-32600,"message":"invalid request"}}"#.into(),
            )
        } else {
            (200, r#"{"result":"0xff"}"#.into())
        }
    })
    .await;
    let outcome = prober().probe(&url).await;
    assert_eq!(outcome.result, Ok(255));
    assert_eq!(bodies(&mut received).len(), 2);
}

#[tokio::test]
async fn the_fallbacks_own_failures_count() {
    let (url, _received) = fake_node(|body| {
        if body.starts_with('[') {
            (
                200,
                r#"{"error":{"code":-32600,"message":"no batches"}}"#.into(),
            )
        } else {
            (503, "{}".into())
        }
    })
    .await;
    let outcome = prober().probe(&url).await;
    assert_eq!(outcome.result, Err(ProbeFailure::HttpStatus(503)));
    assert_eq!(
        UnhealthyReason::Probe(outcome.result.unwrap_err()).severity(),
        Severity::Hard
    );
}

#[tokio::test]
async fn server_errors_and_garbage_are_not_retried_as_single_requests() {
    let (url, mut received) = fake_node(|_| (502, "bad gateway".into())).await;
    assert_eq!(
        prober().probe(&url).await.result,
        Err(ProbeFailure::HttpStatus(502))
    );
    assert_eq!(bodies(&mut received).len(), 1);

    let (url, mut received) = fake_node(|_| (200, "<html>".into())).await;
    let result = prober().probe(&url).await.result;
    assert_eq!(result, Err(ProbeFailure::InvalidJson));
    assert_eq!(
        UnhealthyReason::Probe(result.unwrap_err()).severity(),
        Severity::Soft
    );
    assert_eq!(bodies(&mut received).len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_hard_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let url = BackendUrl::parse(&format!("http://127.0.0.1:{port}")).expect("url");
    let result = prober().probe(&url).await.result;
    assert!(
        matches!(result, Err(ProbeFailure::Connect(_))),
        "{result:?}"
    );
    assert_eq!(
        UnhealthyReason::Probe(result.unwrap_err()).severity(),
        Severity::Hard
    );
}

// The fake node sleeps in a blocking call: give the probe its own worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_covers_the_fallback_too() {
    let (url, _received) = fake_node(|body| {
        if body.starts_with('[') {
            (
                200,
                r#"{"error":{"code":-32600,"message":"no batches"}}"#.into(),
            )
        } else {
            std::thread::sleep(Duration::from_millis(1500));
            (200, r#"{"result":"0x1"}"#.into())
        }
    })
    .await;
    let prober = Prober::new(ProbeSettings {
        timeout: Duration::from_millis(500),
        ..ProbeSettings::default()
    })
    .expect("prober");
    let outcome = prober.probe(&url).await;
    // Without a deadline over the fallback, the answer "0x1" would arrive after 1.5 s. (No
    // bound on the elapsed time: timings are for benchmarks, not tests.)
    assert_eq!(outcome.result, Err(ProbeFailure::Timeout(500)));
}

/// Serves the probe batch on `count` loopback ports with HTTP/1.1 keep-alive (a connection
/// stays open until the client closes it).
async fn keep_alive_nodes(count: usize) -> Vec<Server> {
    let reply = r#"[{"jsonrpc":"2.0","id":1,"result":"0x2a"},{"jsonrpc":"2.0","id":2,"result":"0x1"},{"jsonrpc":"2.0","id":3,"result":false}]"#;
    let mut nodes = Vec::new();
    for _ in 0..count {
        let router = Router::new()
            .fallback(move || async move { ([(header::CONTENT_TYPE, "application/json")], reply) });
        nodes.push(serve(router).await);
    }
    nodes
}

/// A round probes every node once and rounds are far apart, so the prober must not keep an
/// idle connection to each node: with Lambda's 1 024 open files, a large fleet's idle
/// connections left no descriptor for the table writes after the probes.
#[tokio::test]
async fn the_prober_keeps_no_idle_connection_to_the_nodes_after_a_round() {
    let nodes = keep_alive_nodes(20).await;
    let urls: Vec<BackendUrl> = nodes
        .iter()
        .map(|node| BackendUrl::parse(&node.url("/")).expect("url"))
        .collect();
    let open = || nodes.iter().map(Server::open_connections).sum::<usize>();
    let prober = prober();
    let outcomes = prober.probe_all(&urls).await;
    assert!(outcomes.iter().all(|o| o.result == Ok(42)), "{outcomes:?}");
    // The prober (and its client) is still alive, as in a warm Lambda between rounds. The
    // nodes see the client's closes shortly after the answers; allow generous time for that.
    let mut still_open = open();
    for _ in 0..100 {
        if still_open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        still_open = open();
    }
    assert_eq!(
        still_open, 0,
        "connections the prober left open to the nodes after the round"
    );
    drop(prober);
}
