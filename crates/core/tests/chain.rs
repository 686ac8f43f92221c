//! The endpoint as one chain, on a real nginx with the gate in front of two real anvil nodes
//! whose heads the tests set by mining: the served head (the lowest head of the nodes in sync,
//! never going back), `latest` pinned to it, calls routed to nodes that have the blocks they
//! name, a node below the served head left out until it catches up, batches the gate answers
//! in part, and the `eth_getLogs` range limit for tags.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use devstack::testkit::websocket::{read_frame, text, websocket};
use devstack::testkit::{GatedNginx, Node};
use devstack::{Anvil, AnvilOptions};
use jsonrpc_proxy::render::gate::GatePolicy;
use serde_json::{json, Value};

/// Open mode (no keys), quick polls, two workers.
fn start(nodes: &[&Anvil], policy: GatePolicy) -> GatedNginx {
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    GatedNginx::start_nodes(
        &urls,
        GatePolicy {
            open_without_key: true,
            default_calls_per_second: 100_000,
            head_poll_ms: 200,
            ..policy
        },
        2,
    )
}

/// One node at block `height` behind the gate, its served head there.
fn one_node_at(height: u64, policy: GatePolicy) -> (Anvil, GatedNginx) {
    let node = anvil();
    node.mine(height).expect("mine");
    let stack = start(&[&node], policy);
    wait_served(&stack, height);
    (node, stack)
}

fn anvil() -> Anvil {
    Anvil::start(AnvilOptions::default()).expect("anvil")
}

fn call(stack: &GatedNginx, method: &str, params: &Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (status, text) = stack.post("/", &body.to_string()).expect("answer");
    assert_eq!(status, 200, "{method}: {text}");
    serde_json::from_str(&text).expect("JSON answer")
}

fn result(stack: &GatedNginx, method: &str, params: &Value) -> Value {
    let answer = call(stack, method, params);
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

fn heads(stack: &GatedNginx) -> Value {
    serde_json::from_str(&stack.internal("/heads").expect("heads")).expect("heads JSON")
}

/// Waits (at most 10 s) until the served head is `block`.
fn wait_served(stack: &GatedNginx, block: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = heads(stack);
        if now["served"] == json!(block) {
            return;
        }
        assert!(Instant::now() < deadline, "served head not {block}: {now}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The head the data plane last heard from `node` (null: none fresh).
fn head_of(stack: &GatedNginx, node: &Anvil) -> Value {
    let address = format!("127.0.0.1:{}", node.port());
    heads(stack)["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["address"] == json!(address)))
        .map(|m| m["head"].clone())
        .unwrap_or_default()
}

fn hex(n: u64) -> String {
    format!("0x{n:x}")
}

/// How many requests the access log shows each node got, once the log stopped growing (nginx
/// writes a request's line after its answer).
fn served_by(stack: &GatedNginx, nodes: &[&Anvil]) -> Vec<usize> {
    let count = || {
        let log = std::fs::read_to_string(stack.access_log()).unwrap_or_default();
        nodes
            .iter()
            .map(|n| {
                let address = format!(" 127.0.0.1:{} ", n.port());
                log.lines().filter(|l| l.contains(&address)).count()
            })
            .collect::<Vec<_>>()
    };
    let mut last = count();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn the_served_head_is_the_lowest_in_sync_and_never_goes_back() {
    let (mut a, b) = (anvil(), anvil());
    a.mine(20).expect("mine");
    b.mine(15).expect("mine");
    let stack = start(&[&a, &b], GatePolicy::default());
    wait_served(&stack, 15);
    for _ in 0..10 {
        assert_eq!(
            result(&stack, "eth_blockNumber", &json!([])),
            json!(hex(15))
        );
        let block = result(&stack, "eth_getBlockByNumber", &json!(["latest", false]));
        assert_eq!(block["number"], json!(hex(15)), "latest is the served head");
    }
    // Both nodes still in sync: the lower one holds the head back.
    b.mine(15).expect("mine");
    wait_served(&stack, 20);
    // A node that stops answering no longer holds it back.
    a.stop();
    wait_served(&stack, 30);
    // The one node left rolls back: the head holds.
    b.rpc("anvil_rollback", json!([5])).expect("rollback");
    assert_eq!(b.block_number().expect("height"), 25);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        result(&stack, "eth_blockNumber", &json!([])),
        json!(hex(30))
    );
    assert_eq!(heads(&stack)["served"], json!(30));
}

#[test]
fn calls_are_pinned_to_the_served_head_and_routed_to_nodes_that_have_their_blocks() {
    let (a, b) = (anvil(), anvil());
    b.mine(15).expect("mine");
    a.mine(20).expect("mine");
    // Block 21 of the node ahead sends 1 wei to `to`; no other block of either chain does.
    let from = a.rpc("eth_accounts", json!([])).expect("accounts")[0].clone();
    let to = "0x00000000000000000000000000000000000f00d1";
    a.rpc(
        "eth_sendTransaction",
        json!([{"from": from, "to": to, "value": "0x1"}]),
    )
    .expect("transfer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.block_number().expect("height") != 21 {
        assert!(Instant::now() < deadline, "the transfer was not mined");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stack = start(
        &[&a, &b],
        GatePolicy {
            max_get_logs_blocks: 100,
            ..GatePolicy::default()
        },
    );
    wait_served(&stack, 15);

    for round in 0..20 {
        // At the served head the transfer has not happened, whichever node answers.
        for params in [json!([to]), json!([to, "latest"]), json!([to, null])] {
            assert_eq!(
                result(&stack, "eth_getBalance", &params),
                json!("0x0"),
                "round {round}: {params}"
            );
        }
        // A block the client names above the served head goes to the node that has it.
        assert_eq!(
            result(&stack, "eth_getBalance", &json!([to, hex(21)])),
            json!("0x1")
        );
        // The block eth_blockNumber names is found.
        let head = result(&stack, "eth_blockNumber", &json!([]));
        let block = result(&stack, "eth_getBlockByNumber", &json!([head, false]));
        assert_eq!(block["number"], head, "round {round}");
        // A log range up to `latest` ends at the served head.
        let logs = result(&stack, "eth_getLogs", &json!([{"fromBlock": "0x0"}]));
        assert_eq!(logs, json!([]), "no log at or below the served head");
    }
    let [at_a, at_b] = served_by(&stack, &[&a, &b])[..] else {
        unreachable!()
    };
    // 20 rounds of 6 pinned calls spread over both; the 20 of block 21 went to `a`.
    assert!(at_b >= 30 && at_a >= 50, "a {at_a}, b {at_b}");
}

#[test]
fn a_node_below_the_served_head_gets_nothing_until_it_catches_up() {
    let (a, mut b) = (anvil(), anvil());
    a.mine(20).expect("mine");
    b.mine(20).expect("mine");
    let stack = start(&[&a, &b], GatePolicy::default());
    wait_served(&stack, 20);
    // `b` comes back as a new chain at block 0: out of sync, and below the served head.
    b.restart().expect("restart");
    let deadline = Instant::now() + Duration::from_secs(10);
    while head_of(&stack, &b) != json!(0) {
        assert!(Instant::now() < deadline, "b's head: {}", heads(&stack));
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = served_by(&stack, &[&a, &b]);
    let latest =
        || result(&stack, "eth_getBlockByNumber", &json!(["latest", false]))["number"].clone();
    for _ in 0..20 {
        assert_eq!(latest(), json!(hex(20)));
        assert_eq!(
            result(&stack, "eth_blockNumber", &json!([])),
            json!(hex(20))
        );
    }
    let after = served_by(&stack, &[&a, &b]);
    assert_eq!(after[1], before[1], "b got calls below the served head");
    assert_eq!(after[0], before[0] + 20);
    // Caught up (and in sync): `b` is served again; the head stays 20, a's.
    b.mine(25).expect("mine");
    let deadline = Instant::now() + Duration::from_secs(10);
    while head_of(&stack, &b) != json!(25) {
        assert!(Instant::now() < deadline, "b's head: {}", heads(&stack));
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..20 {
        latest();
    }
    let last = served_by(&stack, &[&a, &b]);
    assert!(last[1] >= after[1] + 5, "b is served again: {last:?}");
    assert_eq!(heads(&stack)["served"], json!(20));
}

#[test]
fn a_batch_answered_in_part_keeps_its_order() {
    let (node, stack) = one_node_at(7, GatePolicy::default());
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
        {"jsonrpc": "2.0", "id": "head", "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "method": "eth_chainId"},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_getBlockByNumber", "params": ["latest", false]},
        {"jsonrpc": "2.0", "id": 4, "method": "eth_blockNumber", "params": []},
    ]);
    let (status, text) = stack.post("/", &batch.to_string()).expect("answer");
    assert_eq!(status, 200, "{text}");
    let answers: Value = serde_json::from_str(&text).expect("JSON");
    let ids: Vec<Value> = answers
        .as_array()
        .expect("array")
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1), json!("head"), json!(3), json!(4)], "{text}");
    assert_eq!(answers[0]["result"], "0x7a69");
    assert_eq!(answers[1]["result"], "0x7");
    assert_eq!(answers[2]["result"]["number"], "0x7");
    assert_eq!(answers[3]["result"], "0x7");
    // Only calls the gate answers: no node is asked.
    let before = served_by(&stack, &[&node])[0];
    let only_here = json!([
        {"jsonrpc": "2.0", "id": 9, "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "id": 8, "method": "eth_blockNumber"},
    ]);
    let (_, text) = stack.post("/", &only_here.to_string()).expect("answer");
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("JSON"),
        json!([{"jsonrpc":"2.0","id":9,"result":"0x7"},{"jsonrpc":"2.0","id":8,"result":"0x7"}])
    );
    assert_eq!(served_by(&stack, &[&node])[0], before);
}

/// A node may answer a batch in any order, laid out as it likes, or break off: the calls the
/// gate forwarded get their own answers, or a clear error each, and the gate's stand.
#[test]
fn a_batch_answered_in_part_takes_any_order_and_survives_a_cut_answer() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let node = runtime.block_on(Node::start());
    let batch = json!([
        {"jsonrpc": "2.0", "id": "chain", "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 1, "method": "eth_syncing"},
        {"jsonrpc": "2.0", "id": "two", "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "method": "eth_syncing"},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_syncing"},
    ])
    .to_string();

    let reversed = GatedNginx::start_nodes(
        &[&node.url("/reversed/9")],
        GatePolicy {
            open_without_key: true,
            head_poll_ms: 200,
            ..GatePolicy::default()
        },
        1,
    );
    wait_served(&reversed, 9);
    result(&reversed, "eth_chainId", &json!([]));
    let hits = cache_hits(&reversed);
    let (status, text) = reversed.post("/", &batch).expect("answer");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("JSON"),
        json!([
            {"jsonrpc": "2.0", "id": "chain", "result": "0x1"},
            {"jsonrpc": "2.0", "id": 1, "result": false},
            {"jsonrpc": "2.0", "id": "two", "result": "0x9"},
            {"jsonrpc": "2.0", "id": 3, "result": false},
        ]),
        "{text}"
    );
    assert_eq!(
        cache_hits(&reversed),
        hits + 1,
        "the chain id from the cache"
    );

    // The cut node's head is never heard (the poll is a batch too): eth_blockNumber goes on.
    let cut = GatedNginx::start_nodes(
        &[&node.url("/cut/9")],
        GatePolicy {
            open_without_key: true,
            ..GatePolicy::default()
        },
        1,
    );
    result(&cut, "eth_chainId", &json!([]));
    let hits = cache_hits(&cut);
    let (status, text) = cut.post("/", &batch).expect("answer");
    assert_eq!(status, 200, "{text}");
    let no_answer = |id: Value| {
        json!({"jsonrpc": "2.0", "id": id,
            "error": {"code": -32603, "message": "internal error: no answer from the node"}})
    };
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("JSON"),
        json!([
            {"jsonrpc": "2.0", "id": "chain", "result": "0x1"},
            no_answer(json!(1)),
            no_answer(json!("two")),
            no_answer(json!(3)),
        ]),
        "{text}"
    );
    assert_eq!(cache_hits(&cut), hits + 1, "the chain id from the cache");
}

#[test]
fn log_ranges_with_tags_are_judged_against_the_served_head() {
    let node = anvil();
    node.mine(20).expect("mine");
    let hash = node
        .rpc("eth_getBlockByNumber", json!(["0x3", false]))
        .expect("block")["hash"]
        .clone();
    let stack = start(
        &[&node],
        GatePolicy {
            max_get_logs_blocks: 10,
            ..GatePolicy::default()
        },
    );
    wait_served(&stack, 20);
    for filter in [
        json!({"fromBlock": "0x0"}),
        json!({"fromBlock": "earliest", "toBlock": "latest"}),
        json!({"fromBlock": "0x1", "toBlock": "pending"}),
        json!({"fromBlock": "finalized"}),
        json!({"fromBlock": "safe", "toBlock": "latest"}),
        json!({}),
    ] {
        for method in ["eth_getLogs", "eth_newFilter"] {
            let answer = call(&stack, method, &json!([filter]));
            if filter == json!({}) {
                assert!(answer.get("error").is_none(), "{method} {filter}: {answer}");
                continue;
            }
            assert_eq!(
                answer["error"]["code"],
                json!(-32005),
                "{method} {filter}: {answer}"
            );
        }
    }
    for filter in [
        json!({"fromBlock": "0xf"}),
        json!({"fromBlock": "latest"}),
        json!({"fromBlock": "0x12", "toBlock": "pending"}),
        json!({"blockHash": hash}),
    ] {
        let answer = call(&stack, "eth_getLogs", &json!([filter]));
        assert_eq!(answer["result"], json!([]), "{filter}: {answer}");
    }
    // A batch of calls whose missing ends are all pinned (each filter gets its ends at its
    // closing brace): the node reads every call, alone in the batch or beside a cached one.
    for cached in [false, true] {
        let mut batch: Vec<Value> = (0..12)
            .map(|id| {
                let filter = if id % 2 == 0 {
                    json!({})
                } else {
                    json!({"toBlock": "latest"})
                };
                json!({"jsonrpc": "2.0", "id": id, "method": "eth_getLogs", "params": [filter]})
            })
            .collect();
        if cached {
            batch.push(json!({"jsonrpc": "2.0", "id": 12, "method": "eth_chainId"}));
        }
        let (status, text) = stack
            .post("/", &Value::Array(batch).to_string())
            .expect("answer");
        assert_eq!(status, 200, "{text}");
        let answers: Value = serde_json::from_str(&text).expect("JSON");
        let answers = answers.as_array().expect("an array");
        assert_eq!(answers.len(), 12 + usize::from(cached), "{text}");
        for answer in &answers[..12] {
            assert_eq!(answer["result"], json!([]), "{text}");
        }
    }
}

#[test]
fn a_subscriber_never_gets_a_head_lower_than_one_it_was_sent() {
    let (node, stack) = one_node_at(15, GatePolicy::default());
    let (head, mut ws) = websocket(stack.port, "/ws/v3/any");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let subscribed = text(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#,
    );
    assert!(subscribed["result"].is_string(), "{subscribed}");
    let next_head = |ws: &mut std::net::TcpStream| {
        let (_, payload) = read_frame(ws);
        let value: Value = serde_json::from_str(&payload).expect("JSON");
        value["params"]["result"]["number"].clone()
    };
    node.mine(1).expect("mine");
    assert_eq!(next_head(&mut ws), json!(hex(16)));
    // A rollback: the node's next heads (15, then 16 again) are not lower than 16, sent.
    node.rpc("anvil_rollback", json!([2])).expect("rollback");
    node.mine(1).expect("mine");
    node.mine(1).expect("mine");
    node.mine(1).expect("mine");
    assert_eq!(next_head(&mut ws), json!(hex(16)), "15 was dropped");
    assert_eq!(next_head(&mut ws), json!(hex(17)));
}

/// Calls of the open caller the gate answered from its cache so far.
fn cache_hits(stack: &GatedNginx) -> u64 {
    let usage: Value =
        serde_json::from_str(&stack.internal("/usage").expect("usage")).expect("usage JSON");
    usage["clients"]["(open)"]["cached"].as_u64().unwrap_or(0)
}

/// `eth_getBlockByNumber(number)`'s hash, through the proxy (with id `id`) or from the node.
fn block_hash(stack: &GatedNginx, number: u64, id: u64) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "eth_getBlockByNumber",
        "params": [hex(number), false]});
    let (status, text) = stack.post("/", &body.to_string()).expect("answer");
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(answer["id"], json!(id), "{text}");
    answer["result"]["hash"].clone()
}

/// The status line and headers (lower-cased) of the answer to `eth_getBlockByNumber` of
/// `number`.
fn answer_head(stack: &GatedNginx, number: u64) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber",
        "params": [hex(number), false]})
    .to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", stack.port)).expect("connect");
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).to_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

fn own_hash(node: &Anvil, number: u64) -> Value {
    node.rpc("eth_getBlockByNumber", json!([hex(number), false]))
        .expect("block")["hash"]
        .clone()
}

#[test]
fn answers_that_cannot_change_are_kept_and_no_reorg_leaves_a_wrong_one() {
    let node = anvil();
    let from = node.rpc("eth_accounts", json!([])).expect("accounts")[0].clone();
    let send = || {
        node.rpc(
            "eth_sendTransaction",
            json!([{"from": from, "to": "0x00000000000000000000000000000000000f00d2", "value": "0x1"}]),
        )
        .expect("transfer")
    };
    let mined = |height: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.block_number().expect("height") != height {
            assert!(Instant::now() < deadline, "block {height} was not mined");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let early = send();
    mined(1);
    node.mine(98).expect("mine");
    let late = send();
    // anvil names block head - 64 finalized: 36 of 100.
    mined(100);
    let stack = start(&[&node], GatePolicy::default());
    wait_served(&stack, 100);

    // Kept: the chain id, a finalized block, the receipt of a transaction in one.
    let hits = cache_hits(&stack);
    for id in 1..=3 {
        assert_eq!(result(&stack, "eth_chainId", &json!([])), json!("0x7a69"));
        assert_eq!(block_hash(&stack, 16, id), own_hash(&node, 16));
        let receipt = result(&stack, "eth_getTransactionReceipt", &json!([early]));
        assert_eq!(receipt["blockNumber"], json!("0x1"));
    }
    assert_eq!(cache_hits(&stack), hits + 6, "the second and third of each");
    // An answer the gate gives says its length (one write; chunked, a long one took two).
    let head = answer_head(&stack, 16);
    assert!(head.contains("\r\ncontent-length: "), "{head}");
    assert!(!head.contains("chunked"), "{head}");
    // Not kept: a block above finality, the receipt of a transaction in one.
    let hits = cache_hits(&stack);
    for id in 1..=3 {
        assert_eq!(block_hash(&stack, 96, id), own_hash(&node, 96));
        let receipt = result(&stack, "eth_getTransactionReceipt", &json!([late]));
        assert_eq!(receipt["blockNumber"], json!("0x64"));
    }
    assert_eq!(cache_hits(&stack), hits);

    // A batch mixes kept and forwarded answers, in its order, each with its own id.
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "eth_getBlockByNumber", "params": ["0x10", false]},
        {"jsonrpc": "2.0", "id": "b", "method": "eth_getBlockByNumber", "params": ["0x61", false]},
        {"jsonrpc": "2.0", "id": "c", "method": "eth_chainId"},
    ]);
    let (_, text) = stack.post("/", &batch.to_string()).expect("answer");
    let answers: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(answers[0]["id"], "a");
    assert_eq!(answers[0]["result"]["hash"], own_hash(&node, 16));
    assert_eq!(answers[1]["id"], "b");
    assert_eq!(answers[1]["result"]["hash"], own_hash(&node, 97));
    assert_eq!(
        answers[2],
        json!({"jsonrpc": "2.0", "id": "c", "result": "0x7a69"})
    );

    // A reorg above finality: the new block 96 is served, the final block 16 kept.
    let before = own_hash(&node, 96);
    node.rpc("anvil_reorg", json!([10, []])).expect("reorg");
    assert_ne!(own_hash(&node, 96), before, "anvil replaced block 96");
    assert_eq!(block_hash(&stack, 96, 7), own_hash(&node, 96));
    let hits = cache_hits(&stack);
    assert_eq!(block_hash(&stack, 16, 8), own_hash(&node, 16));
    assert_eq!(cache_hits(&stack), hits + 1);

    // A reorg below finality (no final chain has one) replaces the finalized block: the cache
    // is emptied within a poll, and block 16 is the node's new one.
    let before = own_hash(&node, 16);
    node.rpc("anvil_reorg", json!([90, []])).expect("reorg");
    assert_ne!(own_hash(&node, 16), before, "anvil replaced block 16");
    let deadline = Instant::now() + Duration::from_secs(5);
    while block_hash(&stack, 16, 9) != own_hash(&node, 16) {
        assert!(
            Instant::now() < deadline,
            "the cache still names the old block 16"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
