//! The renderer against moto's bucket and a real nginx: every case passes `nginx -t`, and a
//! rendered proxy (plain nodes as direct members, the leader through its internal server)
//! really balances, retries and falls back to the leader.

use std::collections::BTreeMap;
use std::time::Duration;

use devstack::{free_port, Anvil, AnvilOptions, Nginx};
use jsonrpc_proxy::aws::config_bucket::POINTER_KEY;
use jsonrpc_proxy::functions::config_renderer::ConfigRenderer;
use jsonrpc_proxy::render::gate::LuaConfig;
use jsonrpc_proxy::render::routing::RoutingPlan;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use devstack::testkit::TestStack;

/// A short socket directory (unix socket paths are limited to 108 bytes).
fn socket_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("jrp")
        .tempdir()
        .expect("socket dir")
}

fn renderer(stack: &TestStack, listen_port: u16, socket_dir: &TempDir) -> ConfigRenderer {
    stack.renderer(listen_port, socket_dir.path().to_str().expect("utf-8 path"))
}

/// The members of the public upstream, as the gate's balancer reaches them (the rendered
/// policy's `members`), written as server lines: `server <address>[ backup];`.
fn public_upstream_servers(text: &str) -> Vec<String> {
    let json: String = text
        .split("[==[")
        .skip(1)
        .filter_map(|piece| piece.split("]==]").next())
        .collect();
    if json.is_empty() {
        return Vec::new();
    }
    let config: LuaConfig = serde_json::from_str(&json).expect("the rendered policy");
    config
        .members
        .iter()
        .map(|m| {
            let backup = if m.backup { " backup" } else { "" };
            format!("server {}{backup};", m.address)
        })
        .collect()
}

/// Renders under `request_id`, checks what was published, returns the config text.
async fn render_case(stack: &TestStack, renderer: &ConfigRenderer, request_id: &str) -> String {
    let summary = renderer
        .render_and_publish(request_id, false)
        .await
        .expect("render and publish");
    assert!(summary.written, "{request_id}: {summary:?}");
    let key = format!("{request_id}_nginx.conf");
    assert_eq!(summary.key, key);
    let text = String::from_utf8(
        stack
            .bucket()
            .get(&key)
            .await
            .expect("S3 GetObject of the config")
            .expect("config object"),
    )
    .expect("config is UTF-8");
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(text.as_bytes())));

    let pointer = stack
        .bucket()
        .read_pointer()
        .await
        .expect("S3 GetObject of the pointer")
        .expect("pointer");
    assert_eq!(pointer.key, key);
    assert_eq!(pointer.sha256, summary.sha256);
    let plan = RoutingPlan::from_backends(&stack.store().scan_all().await.expect("scan backends"));
    assert_eq!(pointer.plan_fingerprint, plan.fingerprint());
    assert_eq!(pointer.backends, plan.labels());

    if let Err(complaint) = Nginx::check_config(&text) {
        panic!("{request_id}: nginx -t refused the rendered config:\n{complaint}\n{text}");
    }
    text
}

#[tokio::test]
async fn each_case_is_published_and_passes_nginx_t() {
    let stack = TestStack::new("render").await;
    let sockets = socket_dir();
    let port = free_port().unwrap();
    let renderer = renderer(&stack, port, &sockets);

    // Nothing healthy (empty table): the 404 server.
    let text = render_case(&stack, &renderer, "case-404").await;
    assert!(text.contains("return 404;"));
    assert!(text.contains(&format!("listen {port} default_server;")));
    assert!(public_upstream_servers(&text).is_empty());
    assert!(!text.contains("proxy_pass"));

    // Unchanged: nothing written, the existing key reported.
    let again = renderer
        .render_and_publish("case-404-again", false)
        .await
        .unwrap();
    assert!(!again.written);
    assert_eq!(again.key, "case-404_nginx.conf");
    assert!(stack
        .bucket()
        .head("case-404-again_nginx.conf")
        .await
        .unwrap()
        .is_none());
    // Forced: written under the new key.
    let forced = renderer
        .render_and_publish("case-404-forced", true)
        .await
        .unwrap();
    assert!(forced.written);
    assert!(stack
        .bucket()
        .head("case-404-forced_nginx.conf")
        .await
        .unwrap()
        .is_some());

    // Only the leader healthy: everything goes to its full URL (https, path with a key).
    let leader = "https://10.0.0.1:8443/v3/SECRETKEY";
    stack.add(leader, true).await;
    stack.add("http://10.0.0.2:8545", false).await;
    stack.set_healthy(leader, true).await;
    let text = render_case(&stack, &renderer, "case-leader").await;
    assert!(text.contains("server 10.0.0.1:8443;"), "{text}");
    assert!(text.contains("/v3/SECRETKEY;"), "{text}");
    assert!(text.contains("proxy_ssl_verify on;"));
    let servers = public_upstream_servers(&text);
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert!(!servers[0].contains("backup"));
    assert!(!text.contains("10.0.0.2"));
    let pointer = stack.bucket().get(POINTER_KEY).await.unwrap().unwrap();
    let pointer = String::from_utf8(pointer).unwrap();
    assert!(!pointer.contains("SECRETKEY"), "{pointer}");
    let comments: String = text
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect();
    assert!(!comments.contains("SECRETKEY"), "{comments}");

    // One healthy node: it alone takes the traffic, the healthy leader stands by.
    stack.set_healthy(leader, false).await;
    stack.set_healthy("http://10.0.0.2:8545", true).await;
    let text = render_case(&stack, &renderer, "case-one-node").await;
    assert!(!text.contains("10.0.0.1"));
    let servers = public_upstream_servers(&text);
    // A plain http node is a direct member: no internal server, no socket.
    assert_eq!(servers, ["server 10.0.0.2:8545;"], "{text}");
    assert!(
        text.lines()
            .filter(|line| line.contains("unix:"))
            .all(|line| line.contains("/gate-")),
        "only the gate's own sockets: {text}"
    );

    // Several nodes (one https, one with credentials) and the leader as backup.
    stack.set_healthy(leader, true).await;
    for url in [
        "https://10.0.0.3:8443/rpc",
        "http://user:pa55@10.0.0.4:8545/",
    ] {
        stack.add(url, false).await;
        stack.set_healthy(url, true).await;
    }
    let text = render_case(&stack, &renderer, "case-several").await;
    let servers = public_upstream_servers(&text);
    assert_eq!(servers.len(), 4, "{servers:?}");
    assert_eq!(
        servers.iter().filter(|s| s.ends_with(" backup;")).count(),
        1
    );
    // The plain node directly; https, credentials and the keyed leader through sockets.
    assert!(servers.contains(&"server 10.0.0.2:8545;".to_owned()));
    assert_eq!(
        servers
            .iter()
            .filter(|s| s.starts_with("server unix:"))
            .count(),
        3
    );
    assert!(text.contains("proxy_set_header Authorization \"Basic dXNlcjpwYTU1\";"));
    assert!(text
        .contains("proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;"));

    let keys = stack.object_keys().await;
    assert_eq!(
        keys,
        vec![
            "case-404-forced_nginx.conf",
            "case-404_nginx.conf",
            "case-leader_nginx.conf",
            "case-one-node_nginx.conf",
            "case-several_nginx.conf",
            "latest.json",
        ]
    );
}

/// Asks the proxy for the pending block; returns the height of the node that answered (its
/// pending block's number less one: `latest` and `eth_blockNumber` name the served head,
/// whichever node answers). The nodes are told apart by height: they share one chain, as the
/// health checker requires.
async fn height_via(client: &reqwest::Client, port: u16) -> Result<u64, String> {
    let response = client
        .post(format!("http://127.0.0.1:{port}/"))
        .header("Content-Type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["pending",false]}"#)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("status {status}: {body}"));
    }
    let value: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    value["result"]["number"]
        .as_str()
        .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
        .and_then(|pending| pending.checked_sub(1))
        .ok_or_else(|| format!("no block number in {body}"))
}

async fn tally(client: &reqwest::Client, port: u16, requests: usize) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..requests {
        match height_via(client, port).await {
            Ok(height) => *seen.entry(height).or_insert(0) += 1,
            Err(error) => panic!("request {i} through nginx failed: {error}"),
        }
    }
    seen
}

#[tokio::test]
async fn rendered_nginx_balances_retries_and_falls_back_to_the_leader() {
    let stack = TestStack::new("proxy").await;
    let start = |height| {
        let node = Anvil::start(AnvilOptions::default()).expect("start anvil");
        node.mine(height).expect("mine");
        node
    };
    let mut node_a = start(10);
    let mut node_b = start(11);
    let leader = start(12);
    // The leader is reached with credentials (sent as basic auth by the checker and nginx).
    let leader_url = format!("http://ops:pw@127.0.0.1:{}/", leader.port());
    stack.add(&leader_url, true).await;
    stack.add(&node_a.url(), false).await;
    stack.add(&node_b.url(), false).await;

    // The health checker makes them healthy, then the renderer renders.
    let summary = stack
        .checker()
        .probe_timeout(Duration::from_secs(2))
        .build()
        .run_round()
        .await
        .unwrap();
    assert_eq!(summary.healthy, 3, "{summary:?}");
    let sockets = socket_dir();
    let port = free_port().unwrap();
    let renderer = renderer(&stack, port, &sockets);
    let text = render_case(&stack, &renderer, "proxy-1").await;
    // The plain nodes are direct members; the leader (credentials) stands by through its
    // internal server: both kinds in one upstream.
    assert_eq!(
        public_upstream_servers(&text)
            .iter()
            .map(|s| s
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .starts_with("unix:"))
            .collect::<Vec<_>>(),
        [false, false, true],
        "{text}"
    );
    let nginx = Nginx::start(&text, sockets.path()).unwrap();
    assert_eq!(nginx.listen_ports(), vec![port]);

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let seen = tally(&client, port, 20).await;
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![10, 11],
        "both nodes share the traffic, the leader stands by: {seen:?}\n{}",
        nginx.error_log_tail()
    );

    // A node dies: every request still succeeds, on the other node.
    node_a.stop();
    let seen = tally(&client, port, 10).await;
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![11],
        "{seen:?}"
    );

    // Both nodes die: the backup leader answers.
    node_b.stop();
    let seen = tally(&client, port, 5).await;
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![12],
        "{seen:?}"
    );
    drop(nginx);
}

/// Every object of the bucket, as text.
async fn bucket_text(stack: &TestStack) -> String {
    let mut all = String::new();
    for key in stack.object_keys().await {
        let body = stack
            .bucket()
            .get(&key)
            .await
            .expect("S3 GetObject")
            .unwrap_or_default();
        all.push_str(&String::from_utf8_lossy(&body));
    }
    all
}

#[tokio::test]
async fn a_client_change_is_published_with_its_key_digest_never_its_key() {
    use jsonrpc_proxy::aws::clients_store::item_from_client;
    use jsonrpc_proxy::functions::config_renderer::RenderError;
    use jsonrpc_proxy::render::gate::GatePolicy;
    use jsonrpc_proxy::{
        functions::clients::{add_client, remove_client},
        model::client::key_sha256,
    };
    use serde_json::json;

    use crate::admin::event;

    let stack = TestStack::new("render-clients").await;
    let sockets = socket_dir();
    let renderer = renderer(&stack, free_port().unwrap(), &sockets);
    stack.add("http://10.0.0.1:8545", false).await;
    stack.set_healthy("http://10.0.0.1:8545", true).await;

    // No client: the gate is in front, open to every caller (the kit's renderer sets
    // open_without_key).
    let open = render_case(&stack, &renderer, "clients-open").await;
    assert!(open.contains("access_by_lua_block"), "{open}");
    assert!(open.contains("\"clients\":[]"), "{open}");
    assert!(open.contains("\"open_without_key\":true"), "{open}");

    // A client added the way `sls invoke -f add_client` does. Its render request goes to a
    // function record that runs nothing, as if the render were lost: the next run publishes.
    let added = add_client(
        &stack.client_store(),
        &stack.trigger(),
        &event(&json!({"name": "wallet"})),
        time::OffsetDateTime::now_utc(),
    )
    .await;
    assert_eq!(added.status_code, 201, "{}", added.body);
    let key = added.body_json().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // An item written by hand that grants nothing: a digest that is not one.
    let mut damaged = stack.client_store().all().await.unwrap().remove(0);
    damaged.name = "damaged".into();
    damaged.key_sha256 = "not-a-digest".into();
    devstack::testkit::put_items(
        &stack.aws.dynamodb,
        &stack.clients_table,
        vec![item_from_client(&damaged)],
    )
    .await;

    let gated = render_case(&stack, &renderer, "clients-one").await;
    assert!(gated.contains(&key_sha256(&key)), "{gated}");
    assert!(
        gated.contains("\"calls_per_second\":100"),
        "the deployment's default for a client added without one: {gated}"
    );
    assert!(!gated.contains("damaged"), "{gated}");
    let published = bucket_text(&stack).await;
    assert!(!published.contains(&key), "a key reached the bucket");

    // A policy that fails validation is never written.
    let invalid = ConfigRenderer {
        gate: GatePolicy {
            deny_methods: vec!["debug_;".into()],
            ..renderer.gate.clone()
        },
        ..renderer.clone()
    };
    assert!(matches!(
        invalid.render_and_publish("clients-invalid", true).await,
        Err(RenderError::Gate(_))
    ));
    assert!(stack
        .bucket()
        .head("clients-invalid_nginx.conf")
        .await
        .unwrap()
        .is_none());
    let pointer = stack.bucket().read_pointer().await.unwrap().unwrap();
    assert_eq!(pointer.key, "clients-one_nginx.conf");

    // Removed: the next render drops its digest.
    let removed = remove_client(
        &stack.client_store(),
        &stack.trigger(),
        &event(&json!({"name": "wallet"})),
    )
    .await;
    assert_eq!(removed.status_code, 200, "{}", removed.body);
    let after = render_case(&stack, &renderer, "clients-removed").await;
    assert!(!after.contains(&key_sha256(&key)), "{after}");
    assert!(!bucket_text(&stack).await.contains(&key));

    // Closed (the deployment's default): the damaged item is counted, and opens nothing.
    let closed = ConfigRenderer {
        gate: GatePolicy {
            open_without_key: false,
            ..renderer.gate.clone()
        },
        ..renderer.clone()
    };
    let summary = closed
        .render_and_publish("clients-closed", true)
        .await
        .unwrap();
    assert!(summary.clients.is_empty(), "{summary:?}");
    assert_eq!(summary.clients_left_out, 1, "{summary:?}");
    assert!(!summary.open_without_key, "{summary:?}");
    assert!(bucket_text(&stack)
        .await
        .contains("\"open_without_key\":false"));
}
