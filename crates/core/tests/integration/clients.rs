//! add_client, list_clients and remove_client against a real (moto) clients table and
//! renderer function record, with the functions' tracing output captured and searched for
//! the keys they issue; and the health checker's rounds putting in force a client change whose
//! render request was lost.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::types::AttributeValue;
use devstack::{Fault, FaultRule};
use jsonrpc_proxy::aws::clients_store::{item_from_client, ClientStore, PutOutcome};
use jsonrpc_proxy::aws::config_bucket::ConfigPointer;
use jsonrpc_proxy::aws::renderer_trigger::RendererTrigger;
use jsonrpc_proxy::functions::health_checker::{HealthChecker, RoundSummary};
use jsonrpc_proxy::{
    aws::renderer_trigger::RenderRequest,
    functions::config_renderer::{ConfigRenderer, RenderSummary},
};
use jsonrpc_proxy::{
    functions::clients::{add_client, list_clients, remove_client},
    model::client::{is_key_shaped, key_id, key_sha256, ClientRecord, KEY_ID_LEN},
};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::admin::event;
use devstack::testkit::{
    moto, put_items, recorder, scan_items, scan_pages, unique, Answer, Clients as AwsClients, Item,
    Node, TestStack,
};

/// What serverless.yml creates for the clients: the table (hash key `name`) and the renderer.
struct Clients {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    store: ClientStore,
    trigger: RendererTrigger,
}

async fn clients(prefix: &str) -> Clients {
    let table = unique(&format!("{prefix}-clients"));
    let function = unique(&format!("{prefix}-renderer"));
    moto()
        .create_lambda_function(&function)
        .await
        .expect("create function");
    moto()
        .create_clients_table(&table)
        .await
        .expect("create clients table");
    let aws = AwsClients::new(&moto().endpoint(), &recorder().endpoint()).await;
    Clients {
        store: ClientStore::new(aws.dynamodb.clone(), &table),
        trigger: RendererTrigger::new(aws.lambda.clone(), &function),
        dynamodb: aws.dynamodb,
        table,
    }
}

impl Clients {
    /// Every raw item, by name.
    async fn items(&self) -> BTreeMap<String, Item> {
        scan_items(&self.dynamodb, &self.table, "name").await
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Everything `tracing` emits on this thread, at every level, while the guard lives.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn start(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }

    /// Asserts that no line holds a key, at any level (the SDK's TRACE lines print request and
    /// response bodies), and that no line a deployment logs (INFO and above; `RUST_LOG=info`)
    /// holds a key's hash either.
    fn assert_no_secrets(&self, keys: &[&str]) {
        let text = self.text();
        assert!(!text.is_empty());
        for key in keys {
            assert!(!text.contains(key), "a key in the output: {text}");
            let hash = key_sha256(key);
            for line in text.lines() {
                let logged = [" INFO ", " WARN ", " ERROR "]
                    .iter()
                    .any(|level| line.contains(level));
                assert!(
                    !(logged && line.contains(&hash)),
                    "a key's hash logged: {line}"
                );
            }
        }
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn add_client_answers_the_key_once_and_stores_only_its_hash() {
    let clients = clients("cl-add").await;
    let log = Captured::default();
    let _guard = log.start();

    let response = add_client(
        &clients.store,
        &clients.trigger,
        &event(&json!({
            "name": "wallet",
            "calls_per_second": 25,
            "allow_methods": ["debug_", "eth_sign"],
            "concurrent_requests": 8,
            "allowed_origins": ["https://wallet.example"]
        })),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 201, "{}", response.body);
    let body = response.body_json().unwrap();
    let key = body["key"].as_str().unwrap().to_owned();
    assert!(is_key_shaped(&key), "{key}");
    let hash = key_sha256(&key);
    assert_eq!(body["name"], "wallet");
    assert_eq!(body["key_id"], &hash[..KEY_ID_LEN]);
    assert_eq!(body["calls_per_second"], 25);
    assert_eq!(body["allow_methods"], json!(["debug_", "eth_sign"]));
    assert_eq!(body["concurrent_requests"], 8);
    assert_eq!(body["allowed_origins"], json!(["https://wallet.example"]));
    let when_added = body["when_added"].as_str().unwrap().to_owned();
    assert!(
        when_added.ends_with('Z') && when_added.len() == 27,
        "{when_added}"
    );
    assert_eq!(body.as_object().unwrap().len(), 8, "{body}");

    // The item: the hash, never the key.
    let items = clients.items().await;
    assert_eq!(items.len(), 1);
    let item = &items["wallet"];
    assert_eq!(
        item.get("key_sha256"),
        Some(&AttributeValue::S(hash.clone()))
    );
    assert_eq!(
        item.get("calls_per_second"),
        Some(&AttributeValue::N("25".into()))
    );
    assert_eq!(
        item.get("concurrent_requests"),
        Some(&AttributeValue::N("8".into()))
    );
    assert_eq!(
        item.get("allowed_origins"),
        Some(&AttributeValue::L(vec![AttributeValue::S(
            "https://wallet.example".into()
        )]))
    );
    assert!(!format!("{item:?}").contains(&key), "{item:?}");

    // A default client: calls_per_second null (the deployment's default), nothing stored.
    let response = add_client(
        &clients.store,
        &clients.trigger,
        &event(&json!({"name": "explorer"})),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 201, "{}", response.body);
    let second = response.body_json().unwrap();
    assert_eq!(second["calls_per_second"], Value::Null);
    assert_eq!(second["allow_methods"], json!([]));
    let second_key = second["key"].as_str().unwrap().to_owned();
    assert_ne!(second_key, key);
    let items = clients.items().await;
    assert!(!items["explorer"].contains_key("calls_per_second"));
    assert!(!items["explorer"].contains_key("allow_methods"));
    assert!(!items["explorer"].contains_key("concurrent_requests"));
    assert!(!items["explorer"].contains_key("allowed_origins"));

    // A known name: 409, the stored client untouched, no key issued.
    let before = clients.items().await;
    let response = add_client(
        &clients.store,
        &clients.trigger,
        &event(&json!({"name": "wallet", "calls_per_second": 1})),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 409, "{}", response.body);
    let refused = response.body_json().unwrap();
    assert_eq!(refused["type"], "conflict_error");
    assert_eq!(refused["errorClass"], "ConflictError");
    assert!(refused["error"].as_str().unwrap().contains("wallet"));
    assert!(refused.get("key").is_none());
    assert_eq!(
        clients.items().await,
        before,
        "nothing written on a conflict"
    );

    // list_clients: sorted by name, no key, no hash.
    let response = list_clients(&clients.store).await;
    assert_eq!(response.status_code, 200, "{}", response.body);
    let listed: Vec<Value> = serde_json::from_str(&response.body).unwrap();
    let names: Vec<&str> = listed.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["explorer", "wallet"]);
    assert_eq!(
        listed[1],
        json!({
            "name": "wallet",
            "key_id": &hash[..KEY_ID_LEN],
            "calls_per_second": 25,
            "allow_methods": ["debug_", "eth_sign"],
            "concurrent_requests": 8,
            "allowed_origins": ["https://wallet.example"],
            "when_added": when_added,
        })
    );

    // Each add requested a render; no output holds a key or a hash.
    let output = log.text();
    assert_eq!(
        output.matches("config render requested").count(),
        2,
        "{output}"
    );
    assert!(output.contains("add_client"), "{output}");
    log.assert_no_secrets(&[&key, &second_key]);
    for secret in [&key, &second_key, &hash, &key_sha256(&second_key)] {
        assert!(!response.body.contains(secret.as_str()));
    }
    assert!(output.contains("client added"), "{output}");
}

#[tokio::test]
async fn add_client_refuses_bad_requests_and_writes_nothing() {
    let clients = clients("cl-bad").await;
    let log = Captured::default();
    let _guard = log.start();
    let parse = add_client(
        &clients.store,
        &clients.trigger,
        &json!({"body": "{\"name\": "}),
        now(),
    )
    .await;
    assert_eq!(parse.status_code, 400);
    assert_eq!(parse.body_json().unwrap()["type"], "parse_error");
    let cases = [
        json!({}),
        json!({"body": null}),
        event(&json!({})),
        event(&json!({"name": "a b"})),
        event(&json!({"name": "w", "calls_per_second": 0})),
        event(&json!({"name": "w", "calls_per_second": "5"})),
        event(&json!({"name": "w", "allow_methods": ["debug_*"]})),
        event(&json!({"name": "w", "allow_methods": "debug_"})),
        event(&json!({"name": "w", "key": "chosen-by-me"})),
        event(&json!(["w"])),
    ];
    for case in cases {
        let response = add_client(&clients.store, &clients.trigger, &case, now()).await;
        assert_eq!(response.status_code, 400, "{case}: {}", response.body);
        let body = response.body_json().unwrap();
        assert_eq!(body["type"], "validation_error", "{case}");
        assert_eq!(body["errorClass"], "ValidationError", "{case}");
        assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    }
    assert!(
        clients.items().await.is_empty(),
        "nothing written on errors"
    );
    assert!(
        !log.text().contains("config render requested"),
        "no render for a refused request"
    );
}

#[tokio::test]
async fn concurrent_adds_of_one_name_issue_one_key() {
    let clients = clients("cl-race").await;
    let body = event(&json!({"name": "contested"}));
    let answers = futures::future::join_all(
        (0..8).map(|_| add_client(&clients.store, &clients.trigger, &body, now())),
    )
    .await;
    let created: Vec<&_> = answers.iter().filter(|a| a.status_code == 201).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    assert_eq!(
        answers.iter().filter(|a| a.status_code == 409).count(),
        7,
        "{answers:?}"
    );
    let key = created[0].body_json().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let items = clients.items().await;
    assert_eq!(
        items["contested"].get("key_sha256"),
        Some(&AttributeValue::S(key_sha256(&key))),
        "the stored hash is the answered key's"
    );
}

fn record(name: &str, methods: usize) -> ClientRecord {
    let hash = key_sha256(name);
    ClientRecord {
        name: name.to_owned(),
        key_id: key_id(&hash),
        key_sha256: hash,
        calls_per_second: Some(10),
        allow_methods: (0..methods)
            .map(|i| format!("m{i:03}_{}", "x".repeat(58)))
            .collect(),
        concurrent_requests: None,
        allowed_origins: vec![],
        when_added: "2026-12-02T10:00:00.000000Z".into(),
    }
}

#[tokio::test]
async fn all_reads_every_page_sorted_and_skips_damaged_items() {
    let clients = clients("cl-all").await;
    // 150 items of about 15 KB: about 2.3 MB, three 1 MB Scan pages.
    let count = 150;
    let mut names: Vec<String> = (0..count)
        .map(|i| format!("c{:03}", (i * 37) % count))
        .collect();
    // Valid items with an attribute the clients do not use, 15 KB long.
    let padding = "p".repeat(15_000);
    let items = names
        .iter()
        .map(|name| {
            let mut item = item_from_client(&record(name, 2));
            item.insert("padding".into(), AttributeValue::S(padding.clone()));
            item
        })
        .collect();
    put_items(&clients.dynamodb, &clients.table, items).await;
    let pages = scan_pages(&clients.dynamodb, &clients.table).await;
    assert!(pages >= 3, "only {pages} Scan pages");

    // Damaged items (hand-written) never read as clients.
    let mut no_hash = item_from_client(&record("damaged-1", 0));
    no_hash.remove("key_sha256");
    let mut bad_method = item_from_client(&record("damaged-2", 0));
    bad_method.insert(
        "allow_methods".into(),
        AttributeValue::L(vec![AttributeValue::S("*".into())]),
    );
    for item in [no_hash, bad_method] {
        clients
            .dynamodb
            .put_item()
            .table_name(&clients.table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }

    let all = clients.store.all().await.unwrap();
    names.sort();
    let listed: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(listed, names, "complete, sorted, damaged items left out");
    assert_eq!(all[0], record(&names[0], 2));

    let response = list_clients(&clients.store).await;
    assert_eq!(response.status_code, 200);
    let shown: Vec<Value> = serde_json::from_str(&response.body).unwrap();
    assert_eq!(shown.len(), count);
    assert!(!response.body.contains(&key_sha256(&names[0])));
}

#[tokio::test]
async fn remove_client_answers_the_removed_client_or_404_and_rerenders() {
    let clients = clients("cl-remove").await;
    let added = add_client(
        &clients.store,
        &clients.trigger,
        &event(&json!({"name": "gone.soon", "allow_methods": ["trace_"]})),
        now(),
    )
    .await;
    assert_eq!(added.status_code, 201, "{}", added.body);
    let added = added.body_json().unwrap();
    let key = added["key"].as_str().unwrap().to_owned();
    assert_eq!(
        clients.store.put_new(&record("stays", 0)).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        clients.store.put_new(&record("stays", 3)).await.unwrap(),
        PutOutcome::NameTaken
    );

    let log = Captured::default();
    let guard = log.start();
    let response = remove_client(
        &clients.store,
        &clients.trigger,
        &event(&json!({"name": "gone.soon"})),
    )
    .await;
    assert_eq!(response.status_code, 200, "{}", response.body);
    let body = response.body_json().unwrap();
    assert_eq!(
        body,
        json!({
            "name": "gone.soon",
            "key_id": added["key_id"],
            "calls_per_second": null,
            "allow_methods": ["trace_"],
            "concurrent_requests": null,
            "allowed_origins": [],
            "when_added": added["when_added"],
        })
    );
    assert!(!response.body.contains(&key));
    let items = clients.items().await;
    assert!(!items.contains_key("gone.soon"));
    assert_eq!(items.len(), 1);

    let response = remove_client(
        &clients.store,
        &clients.trigger,
        &event(&json!({"name": "gone.soon"})),
    )
    .await;
    assert_eq!(response.status_code, 404, "{}", response.body);
    let body = response.body_json().unwrap();
    assert_eq!(body["type"], "not_found");
    assert_eq!(body["errorClass"], "NotFoundError");

    for bad in [
        json!({"body": "nope"}),
        event(&json!({"name": "stays", "x": 1})),
    ] {
        let response = remove_client(&clients.store, &clients.trigger, &bad).await;
        assert_eq!(response.status_code, 400, "{bad}");
    }
    assert_eq!(clients.items().await.len(), 1);
    drop(guard);
    let output = log.text();
    assert_eq!(
        output.matches("config render requested").count(),
        1,
        "one render, for the one removal: {output}"
    );
    assert!(output.contains("remove_client"), "{output}");
    log.assert_no_secrets(&[&key]);

    // An item that does not read as a client can still be removed.
    let mut damaged = item_from_client(&record("hand-made", 0));
    damaged.remove("key_sha256");
    clients
        .dynamodb
        .put_item()
        .table_name(&clients.table)
        .set_item(Some(damaged))
        .send()
        .await
        .unwrap();
    let response = remove_client(
        &clients.store,
        &clients.trigger,
        &event(&json!({"name": "hand-made"})),
    )
    .await;
    assert_eq!(response.status_code, 200, "{}", response.body);
    assert_eq!(response.body_json().unwrap(), json!({"name": "hand-made"}));
}

/// A renderer trigger whose requests are lost: its Lambda endpoint refuses connections (moto
/// queues an asynchronous invocation even for a function it does not have).
async fn lost_trigger() -> RendererTrigger {
    let nowhere = devstack::sdk_config("http://127.0.0.1:9").await;
    RendererTrigger::new(
        aws_sdk_lambda::Client::new(&nowhere),
        unique("lost-renderer"),
    )
}

#[tokio::test]
async fn a_failed_render_request_leaves_the_change_in_place() {
    let clients = clients("cl-norender").await;
    let missing = lost_trigger().await;
    let log = Captured::default();
    let _guard = log.start();
    let response = add_client(
        &clients.store,
        &missing,
        &event(&json!({"name": "kept"})),
        now(),
    )
    .await;
    assert_eq!(response.status_code, 201, "{}", response.body);
    let key = response.body_json().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(clients.items().await.contains_key("kept"));
    let response = remove_client(&clients.store, &missing, &event(&json!({"name": "kept"}))).await;
    assert_eq!(response.status_code, 200, "{}", response.body);
    assert!(clients.items().await.is_empty());
    let output = log.text();
    assert_eq!(
        output
            .matches("client change stored, but the re-render could not be requested")
            .count(),
        2,
        "{output}"
    );
    log.assert_no_secrets(&[&key]);
}

/// A healthy node in a stack's table, a health checker over the stack, and the stack's
/// renderer, after one round and the render it requested: the pointer records the plan and
/// the (no) clients of now.
async fn rendered_stack(stack: &TestStack, node: &Node) -> (HealthChecker, ConfigRenderer) {
    node.set("a", Answer::Height(100));
    stack.add(&node.named("a"), false).await;
    let checker = stack.checker().build();
    let renderer = stack.renderer(8080, "/tmp/jrp-clients-heal");
    let round = checker.run_round().await.expect("first round");
    assert_eq!(
        round.render_requested.as_deref(),
        Some("no config rendered yet")
    );
    let rendered = renderer
        .render_and_publish(&unique("first"), false)
        .await
        .expect("render");
    assert!(rendered.written);
    (checker, renderer)
}

/// The renderer run on a round's render request (moto records the invocation and runs no
/// code), as the function would run it.
async fn render_requested(renderer: &ConfigRenderer, round: &RoundSummary) -> RenderSummary {
    let request = RenderRequest {
        source: Some("jsonrpc-proxy".into()),
        reason: round.render_requested.clone(),
        ..RenderRequest::default()
    };
    let event = serde_json::to_value(&request).expect("event");
    renderer
        .handle_event(&event, &unique("requested"))
        .await
        .expect("render")
}

#[tokio::test]
async fn a_client_whose_render_request_was_lost_is_rendered_after_the_next_health_round() {
    let stack = TestStack::new("cl-heal").await;
    let node = Node::start().await;
    let (checker, renderer) = rendered_stack(&stack, &node).await;

    // Unchanged plan and clients: no render.
    let round = checker.run_round().await.expect("round");
    assert_eq!(round.render_requested, None, "{round:?}");
    let pointer = stack
        .pointer_is_consistent("rendered")
        .await
        .expect("pointer");
    assert!(round.clients_fingerprint.is_some());
    assert_eq!(pointer.clients_fingerprint, round.clients_fingerprint);

    // add_client stores the client; its render request is lost.
    let log = Captured::default();
    let guard = log.start();
    let added = add_client(
        &stack.client_store(),
        &lost_trigger().await,
        &event(&json!({"name": "late", "calls_per_second": 7, "allow_methods": ["debug_"]})),
        now(),
    )
    .await;
    assert_eq!(added.status_code, 201, "{}", added.body);
    let key = added.body_json().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(log
        .text()
        .contains("client change stored, but the re-render could not be requested"));
    assert_eq!(
        stack.bucket().read_pointer().await.unwrap(),
        Some(pointer.clone()),
        "nothing rendered"
    );

    // The next round finds the table's clients differ from the rendered ones.
    let round = checker.run_round().await.expect("round");
    assert_eq!(
        round.render_requested.as_deref(),
        Some("clients changed"),
        "{round:?}"
    );
    assert_eq!(round.plan_fingerprint, pointer.plan_fingerprint);
    assert_ne!(round.clients_fingerprint, pointer.clients_fingerprint);

    // The render it requested puts the client in force.
    let rendered = render_requested(&renderer, &round).await;
    assert!(rendered.written);
    assert_eq!(rendered.clients, vec!["late".to_owned()]);
    let pointer = stack
        .pointer_is_consistent("healed")
        .await
        .expect("pointer");
    assert_eq!(pointer.key, rendered.key);
    assert_eq!(pointer.clients_fingerprint, round.clients_fingerprint);
    let text =
        String::from_utf8(stack.bucket().get(&pointer.key).await.unwrap().unwrap()).expect("text");
    assert!(text.contains(&key_sha256(&key)), "{text}");
    assert!(text.contains("\"calls_per_second\":7"), "{text}");
    assert!(!text.contains(&key));

    // Healed: plan and clients are the rendered ones, no render.
    let round = checker.run_round().await.expect("round");
    assert_eq!(round.render_requested, None, "{round:?}");
    drop(guard);
    log.assert_no_secrets(&[&key]);
}

#[tokio::test]
async fn a_pointer_without_the_clients_fingerprint_is_completed_without_a_new_config() {
    let stack = TestStack::new("cl-old-pointer").await;
    let node = Node::start().await;
    let (checker, renderer) = rendered_stack(&stack, &node).await;
    put_items(
        &stack.aws.dynamodb,
        &stack.clients_table,
        vec![item_from_client(&record("wallet", 1))],
    )
    .await;
    renderer
        .render_and_publish(&unique("with-client"), false)
        .await
        .expect("render");
    // The pointer as a renderer from before the clients' fingerprint wrote it.
    let current = stack
        .pointer_is_consistent("rendered")
        .await
        .expect("pointer");
    let old = ConfigPointer {
        clients_fingerprint: None,
        ..current.clone()
    };
    stack.bucket().put_pointer(&old).await.expect("put pointer");
    let keys = stack.object_keys().await;

    let round = checker.run_round().await.expect("round");
    assert_eq!(round.render_requested.as_deref(), Some("clients changed"));
    // Same text: no new config (no redeploy), the pointer gets the fingerprint.
    let rendered = render_requested(&renderer, &round).await;
    assert!(!rendered.written);
    assert_eq!(stack.object_keys().await, keys);
    let pointer = stack
        .pointer_is_consistent("completed")
        .await
        .expect("pointer");
    assert_eq!(
        pointer, current,
        "the same config, rendered at the same time"
    );
    assert_eq!(pointer.clients_fingerprint, round.clients_fingerprint);
    let round = checker.run_round().await.expect("round");
    assert_eq!(round.render_requested, None, "{round:?}");
}

#[tokio::test]
async fn an_unreadable_clients_table_does_not_stop_the_health_round() {
    let stack = TestStack::with_faults("cl-unreadable").await;
    let node = Node::start().await;
    let (checker, _) = rendered_stack(&stack, &node).await;
    // A client whose render was lost, in a table the checker then cannot read.
    put_items(
        &stack.aws.dynamodb,
        &stack.clients_table,
        vec![item_from_client(&record("late", 0))],
    )
    .await;
    let proxy = stack.moto_proxy();
    proxy.inject(
        FaultRule::new(Fault::InternalError)
            .operation("DynamoDB_20120810.Scan")
            .body_contains(&stack.clients_table),
    );

    let log = Captured::default();
    let guard = log.start();
    let round = checker
        .run_round()
        .await
        .expect("the round goes on without the clients");
    drop(guard);
    assert_eq!((round.backends, round.healthy), (1, 1));
    assert_eq!(round.clients_fingerprint, None);
    assert_eq!(round.render_requested, None, "{round:?}");
    let output = log.text();
    assert!(
        output.contains("cannot read the clients table; no render is requested"),
        "{output}"
    );
    proxy.clear();

    let round = checker.run_round().await.expect("round");
    assert_eq!(round.render_requested.as_deref(), Some("clients changed"));
}
