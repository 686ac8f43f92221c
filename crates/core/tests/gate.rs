//! The JSON-RPC gate on a real nginx (with the Lua module the image ships) in front of a real
//! anvil node: keys and open mode, the method policy, the limits, the usage endpoint and the
//! WebSocket relay, and attempts to get around each (unicode escapes, duplicate and case-folded
//! member names, chunked bodies, odd content types, mixed batches, fragmented WebSocket
//! messages, keys in odd places of the path): every refused request leaves the node untouched
//! (its block number does not move) and the key never reaches the node or a log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use devstack::testkit::websocket::{client_frame, read_frame, text, websocket, websocket_with};
use devstack::testkit::GatedNginx;
use devstack::{free_port, Anvil, AnvilOptions, FaultProxy, Nginx};
use jsonrpc_proxy::model::backend::Backend;
use jsonrpc_proxy::render::gate::{key_sha256, GateClient, GatePolicy, LuaConfig, LuaMember};
use jsonrpc_proxy::render::nginx::render_gated;
use jsonrpc_proxy::render::options::RenderOptions;
use jsonrpc_proxy::render::routing::RoutingPlan;
use serde_json::{json, Value};

const KEY: &str = "k3yOfTheApp_0123456789-abcdefXYZ";
const OTHER_KEY: &str = "an0therKey_9876543210-zyxwvuABC";

/// `app` may call `evm_mine` (denied to everyone else), `other` may not.
fn clients(cps: u32) -> Vec<GateClient> {
    vec![
        GateClient {
            name: "app".into(),
            key_sha256: key_sha256(KEY),
            calls_per_second: cps,
            allow_methods: vec!["evm_mine".into()],
            concurrent_requests: 64,
            allowed_origins: vec![],
        },
        GateClient {
            name: "other".into(),
            key_sha256: key_sha256(OTHER_KEY),
            calls_per_second: cps,
            allow_methods: vec![],
            concurrent_requests: 64,
            allowed_origins: vec![],
        },
    ]
}

/// [`GatedNginx`] with this test's ways of calling it.
struct Stack(GatedNginx);

impl std::ops::Deref for Stack {
    type Target = GatedNginx;
    fn deref(&self) -> &GatedNginx {
        &self.0
    }
}

impl std::ops::DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut GatedNginx {
        &mut self.0
    }
}

impl Stack {
    fn start(node_url: &str, policy: GatePolicy, workers: u32) -> Self {
        Self(GatedNginx::start(node_url, policy, workers))
    }

    fn post(&self, path: &str, body: &str) -> Answer {
        self.send(path, &[("Content-Type", "application/json")], body)
    }

    fn send(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        self.request("POST", path, headers, body)
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let chunked = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == &"chunked");
        let mut request = head.into_bytes();
        if chunked {
            request.extend_from_slice(b"\r\n");
            // Three chunks, split inside the method name.
            let bytes = body.as_bytes();
            let cuts = [0, bytes.len() / 3, 2 * bytes.len() / 3, bytes.len()];
            for pair in cuts.windows(2).filter(|p| p[1] > p[0]) {
                let chunk = &bytes[pair[0]..pair[1]];
                request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                request.extend_from_slice(chunk);
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"0\r\n\r\n");
        } else {
            request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            request.extend_from_slice(body.as_bytes());
        }
        exchange(self.port, &request)
    }

    fn usage(&self) -> Value {
        serde_json::from_str(&self.internal("/usage")).expect("usage JSON")
    }

    /// The body of a `GET` on the internal usage server.
    fn internal(&self, path: &str) -> String {
        self.0.internal(path).expect("internal server")
    }

    fn logs_text(&self) -> String {
        let access = std::fs::read_to_string(self.access_log()).unwrap_or_default();
        let error = std::fs::read_to_string(self.nginx.error_log_path()).unwrap_or_default();
        format!("{access}\n{error}")
    }
}

/// The gated configuration, with the repository's Lua modules and an access log in `logs`.
struct Answer {
    status: u16,
    /// The status line and header lines.
    head: String,
    body: String,
}

impl Answer {
    /// Every value of the header `name`.
    fn headers(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    /// The one value of the header `name` (panics on none or several).
    fn header(&self, name: &str) -> &str {
        match self.headers(name)[..] {
            [one] => one,
            ref other => panic!("{name}: {other:?} in\n{}", self.head),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn exchange(port: u16, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    parse_answer(&raw)
}

/// Status and body (de-chunked) of an HTTP/1.1 answer read to the end.
fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            out.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    Answer {
        status,
        head: head.to_owned(),
        body,
    }
}

fn call(id: u64, method: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": []}).to_string()
}

fn anvil() -> Anvil {
    Anvil::start(AnvilOptions::default()).expect("anvil")
}

/// Asserts the answer is the JSON-RPC error `code` (for a single call), and the node did not
/// move.
fn assert_refused(answer: &Answer, status: u16, code: i64, node: &Anvil, height: u64, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    assert_eq!(
        answer.json()["error"]["code"],
        code,
        "{what}: {}",
        answer.body
    );
    assert_eq!(node.block_number().expect("height"), height, "{what}");
}

#[test]
fn keys_open_mode_and_paths() {
    let node = anvil();
    // A recording proxy between nginx and the node: which paths reach the node.
    let recorder = FaultProxy::start(&node.url()).expect("recorder");
    let open = || GatePolicy {
        open_without_key: true,
        ..GatePolicy::default()
    };
    let mut stack = Stack::start(&recorder.endpoint(), open(), 1);

    // Open mode: every path, the policy still applies.
    let answer = stack.post("/", &call(1, "eth_chainId"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["result"], "0x7a69");
    let answer = stack.post("/anything", &call(2, "evm_mine"));
    assert_refused(&answer, 200, -32601, &node, 0, "evm_mine in open mode");

    // From the first client on: a key is needed, at exactly /v3/<key>.
    stack.reload(GatePolicy {
        clients: clients(1000),
        ..open()
    });
    let mined = stack.post(&format!("/v3/{KEY}"), &call(3, "evm_mine"));
    assert_eq!(mined.status, 200, "{}", mined.body);
    assert_eq!(
        node.block_number().expect("height"),
        1,
        "the allowed call ran"
    );
    let encoded: String = KEY.bytes().map(|b| format!("%{b:02X}")).collect();
    for path in [
        "/".to_owned(),
        "/v3/".to_owned(),
        "/v3/wrong".to_owned(),
        format!("/v3/{KEY}/"),
        format!("//v3/{KEY}"),
        format!("/v3//{KEY}"),
        format!("/v3/{KEY}?x=1"),
        format!("/v3/{KEY}#x"),
        format!("/v3/{encoded}"),
        format!("/v3/{KEY}/../{OTHER_KEY}"),
        format!("/v3/x/../{KEY}"),
        format!("/V3/{KEY}"),
        format!("/v3/{}", KEY.to_uppercase()),
        format!("/ws/v3/{KEY}"),
    ] {
        let answer = stack.post(&path, &call(4, "evm_mine"));
        assert_refused(&answer, 401, -32001, &node, 1, &path);
    }
    // nginx itself refuses a NUL in the path, before the gate.
    let answer = stack.post(&format!("/v3/{KEY}%00"), &call(4, "evm_mine"));
    assert_eq!(answer.status, 400);
    assert_eq!(node.block_number().expect("height"), 1);
    // The other client's key works, with its own policy.
    let answer = stack.post(&format!("/v3/{OTHER_KEY}"), &call(5, "evm_mine"));
    assert_refused(&answer, 200, -32601, &node, 1, "evm_mine for other");
    let answer = stack.post(&format!("/v3/{OTHER_KEY}"), &call(6, "eth_chainId"));
    assert_eq!(answer.json()["result"], "0x7a69");

    // A removed client's key is refused.
    stack.reload(GatePolicy {
        clients: clients(1000).split_off(1),
        ..open()
    });
    let answer = stack.post(&format!("/v3/{KEY}"), &call(7, "eth_blockNumber"));
    assert_refused(&answer, 401, -32001, &node, 1, "removed key");

    // The node saw "/" only; no log holds a key; the access log names the clients.
    let paths: Vec<String> = recorder.requests().into_iter().map(|r| r.path).collect();
    assert!(!paths.is_empty());
    assert!(paths.iter().all(|p| p == "/"), "{paths:?}");
    std::thread::sleep(Duration::from_millis(700)); // the gate's log timer
    let logs = stack.logs_text();
    for key in [KEY, OTHER_KEY, &encoded] {
        assert!(!logs.contains(key), "a key in the logs:\n{logs}");
    }
    let access = std::fs::read_to_string(stack.access_log()).expect("access log");
    for name in [" app ", " other ", " (unknown) ", " (open) "] {
        assert!(access.contains(name), "{name} in\n{access}");
    }

    // Usage: served and refused per client, by reason.
    let usage = stack.usage();
    assert_eq!(usage["clients"]["app"]["served"], 1, "{usage}");
    assert_eq!(usage["clients"]["other"]["served"], 1, "{usage}");
    assert_eq!(usage["clients"]["other"]["refused"]["method"], 1, "{usage}");
    assert_eq!(
        usage["clients"]["(unknown)"]["refused"]["key"], 15,
        "{usage}"
    );
    assert_eq!(
        usage["clients"]["(open)"]["refused"]["method"], 1,
        "{usage}"
    );
}

/// Without a client the gate refuses every caller at every path with the unknown key's 401,
/// unless the deployment sets `open_without_key`; turning it off again closes it.
#[test]
fn no_client_means_401_everywhere_unless_the_deployment_opens_the_gate() {
    let node = anvil();
    let mut stack = Stack::start(&node.url(), GatePolicy::default(), 1);
    let closed_paths = [
        "/".to_owned(),
        "/anything".to_owned(),
        "/v3/".to_owned(),
        "/v3/anything".to_owned(),
        format!("/v3/{KEY}"),
        format!("/ws/v3/{KEY}"),
        "/?x=1".to_owned(),
    ];
    let assert_closed = |stack: &Stack, what: &str| {
        for path in &closed_paths {
            let answer = stack.post(path, &call(1, "evm_mine"));
            assert_eq!(answer.status, 401, "{what} {path}: {}", answer.body);
            assert_eq!(
                answer.json(),
                json!({"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"missing or unknown API key"}}),
                "{what} {path}"
            );
        }
        // The WebSocket upgrade too.
        let (head, _) = websocket(stack.port, &format!("/ws/v3/{KEY}"));
        assert!(head.starts_with("HTTP/1.1 401"), "{what}: {head}");
    };
    assert_closed(&stack, "closed");
    assert_eq!(
        node.block_number().expect("height"),
        0,
        "nothing reached the node"
    );

    // The deployment's explicit choice: served at every path, as before.
    stack.reload(GatePolicy {
        open_without_key: true,
        ..GatePolicy::default()
    });
    for path in ["/", "/anything", "/v3/anything"] {
        let answer = stack.post(path, &call(2, "eth_chainId"));
        assert_eq!(answer.status, 200, "open {path}: {}", answer.body);
        assert_eq!(answer.json()["result"], "0x7a69", "open {path}");
    }

    // Closed again.
    stack.reload(GatePolicy::default());
    assert_closed(&stack, "closed again");

    let usage = stack.usage();
    assert_eq!(usage["clients"]["(open)"]["served"], 3, "{usage}");
    assert_eq!(
        usage["clients"]["(unknown)"]["refused"]["key"],
        2 * (closed_paths.len() + 1),
        "{usage}"
    );
}

/// `trace_` is denied by default (no range limit applies to it); a client whose allow list has
/// `trace_` may call it, since a client's allow list overrides the deployment's deny list.
/// The Rust-to-Lua contract: every value the renderer writes is the value the module holds.
#[test]
fn the_lua_module_holds_the_policy_the_renderer_wrote() {
    let node = anvil();
    let mut policy = GatePolicy {
        clients: clients(7),
        open_without_key: true,
        default_calls_per_second: 11,
        default_concurrent_requests: 13,
        deny_methods: vec!["Admin_".into(), "personal_".into(), "eth_sign".into()],
        max_body_bytes: 12_345,
        max_batch_calls: 17,
        max_get_logs_blocks: 19,
        head_poll_ms: 1234,
        head_tolerance_blocks: 23,
        cache_mib: 3,
        finality_depth: 29,
        ..GatePolicy::default()
    };
    policy.clients[0].allow_methods = vec!["EVM_mine".into(), "debug_".into()];
    policy.clients[0].allowed_origins =
        vec!["https://b.example".into(), "http://a.example:8080".into()];
    policy.clients[1].concurrent_requests = 3;
    policy.clients.reverse();
    let stack = Stack::start(&node.url(), policy.clone(), 2);
    let options = RenderOptions {
        socket_dir: stack.socket_dir().display().to_string(),
        ..RenderOptions::default()
    };
    let held: LuaConfig = serde_json::from_str(&stack.internal("/policy")).expect("policy JSON");
    let members = vec![LuaMember {
        address: format!("127.0.0.1:{}", node.port()),
        backup: false,
    }];
    let written = policy.lua_config(&options, members);
    assert_eq!(held, written.as_held());
    assert_eq!(held.clients[0].name, "app");
    assert_eq!(held.clients[0].allow_methods, ["evm_mine", "debug_"]);
}

#[test]
fn trace_is_denied_unless_a_client_is_allowed_it() {
    let node = anvil();
    let mut tracer = clients(1000);
    tracer.push(GateClient {
        name: "tracer".into(),
        key_sha256: key_sha256("tr4cerKey_0123456789-abcdefXYZ"),
        calls_per_second: 1000,
        allow_methods: vec!["trace_".into()],
        concurrent_requests: 64,
        allowed_origins: vec![],
    });
    let stack = Stack::start(
        &node.url(),
        GatePolicy {
            clients: tracer,
            ..GatePolicy::default()
        },
        1,
    );
    let trace_filter = json!({"jsonrpc": "2.0", "id": 7, "method": "trace_filter",
        "params": [{"fromBlock": "0x0", "toBlock": "0x0"}]})
    .to_string();
    for key in [KEY, OTHER_KEY] {
        let answer = stack.post(&format!("/v3/{key}"), &trace_filter);
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            answer.json(),
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"method not allowed: trace_filter"}})
        );
    }
    let answer = stack.post("/v3/tr4cerKey_0123456789-abcdefXYZ", &trace_filter);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.json()["result"].is_array(), "{}", answer.body);
    let usage = stack.usage();
    assert_eq!(usage["clients"]["tracer"]["served"], 1, "{usage}");
    assert_eq!(usage["clients"]["app"]["refused"]["method"], 1, "{usage}");
}

#[test]
fn the_method_the_gate_judges_is_the_method_the_node_runs() {
    let node = anvil();
    let stack = Stack::start(
        &node.url(),
        GatePolicy {
            clients: clients(1000),
            ..GatePolicy::default()
        },
        1,
    );
    let path = format!("/v3/{OTHER_KEY}");
    let refused: &[(&str, i64)] = &[
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"anvil\u005fmine","params":[]}"#,
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"\u0061nvil_mine","params":[]}"#,
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ANVIL_MINE","params":[]}"#,
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"evm_mine","params":[]}"#,
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","method":"anvil_mine"}"#,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"anvil_mine","method":"eth_blockNumber"}"#,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","Method":"anvil_mine"}"#,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","\u006dethod":"anvil_mine"}"#,
            -32600,
        ),
        (r#"{"jsonrpc":"2.0","id":1,"METHOD":"anvil_mine"}"#, -32600),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[{"a":1,"A":2}]}"#,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","paramſ":[]}"#,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":["anvil_mine"]}"#,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"anvil_mine\ud800"}"#,
            -32700,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}{"method":"anvil_mine"}"#,
            -32700,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber",}"#,
            -32700,
        ),
        (r#"{"jsonrpc":"2.0","id":1,"method":'anvil_mine'}"#, -32700),
        (
            "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"anvil_mine\"}",
            -32700,
        ),
        ("not json", -32700),
        ("", -32700),
        ("[]", -32600),
        // Ends and odd bytes the reader must stop at.
        (r#"{"jsonrpc":"2.0","id":1,"method":"anvil_mine"#, -32700),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"anvil_mine\u00"#,
            -32700,
        ),
        (r#"{"jsonrpc":"2.0","id":1,"method":"anvil_mine\"#, -32700),
        (r#"{"jsonrpc":"2.0","id":01,"method":"anvil_mine"}"#, -32700),
        (r#"{"jsonrpc":"2.0","id":1.,"method":"anvil_mine"}"#, -32700),
        (r#"{"jsonrpc":"2.0","id":-,"method":"anvil_mine"}"#, -32700),
        (
            r#"{"jsonrpc":"2.0","id":tru,"method":"anvil_mine"}"#,
            -32700,
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"anvil_mine\"}\u{0}",
            -32700,
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"anvil_mine\u{0}\"}",
            -32700,
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"anvil_mine\u{1f}\"}",
            -32700,
        ),
    ];
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"anvil_mine","params":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let refused: Vec<(&str, i64)> = refused
        .iter()
        .copied()
        .chain([(deep.as_str(), -32700)])
        .collect();
    for (body, code) in &refused {
        for headers in [
            &[("Content-Type", "application/json")][..],
            &[("Content-Type", "text/plain")],
            &[],
            &[
                ("Content-Type", "application/json"),
                ("Transfer-Encoding", "chunked"),
            ],
        ] {
            let answer = stack.send(&path, headers, body);
            assert_refused(
                &answer,
                200,
                *code,
                &node,
                0,
                &format!("{body} {headers:?}"),
            );
        }
    }
    // A denied call names itself and keeps its id.
    let answer = stack.post(
        &path,
        r#"{"jsonrpc":"2.0","id":"x-1","method":"anvil\u005fmine"}"#,
    );
    assert_eq!(
        answer.json(),
        json!({"jsonrpc":"2.0","id":"x-1","error":{"code":-32601,"message":"method not allowed: anvil_mine"}})
    );

    // A batch with a denied call is refused whole: -32601 for it, -32600 for the others.
    let batch = format!(
        "[{},{},{}]",
        call(1, "eth_blockNumber"),
        call(2, "evm_mine"),
        call(3, "eth_chainId")
    );
    let answer = stack.post(&path, &batch);
    assert_eq!(answer.status, 200);
    let codes: Vec<(Value, Value)> = answer
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|a| (a["id"].clone(), a["error"]["code"].clone()))
        .collect();
    assert_eq!(
        codes,
        [
            (json!(1), json!(-32600)),
            (json!(2), json!(-32601)),
            (json!(3), json!(-32600))
        ]
    );
    assert_eq!(node.block_number().expect("height"), 0);

    // Allowed requests pass whole: chunked (nginx forwards it with a length), any content
    // type the node takes, batches, escapes that decode to an allowed name.
    let answer = stack.send(
        &path,
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        &call(9, "eth_chainId"),
    );
    assert_eq!(answer.json()["result"], "0x7a69", "{}", answer.body);
    let answer = stack.post(
        &path,
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_\u0063hainId","params":[]}"#,
    );
    assert_eq!(answer.json()["result"], "0x7a69", "{}", answer.body);
    let answer = stack.post(
        &path,
        &format!(
            "[{},{}]",
            call(1, "eth_chainId"),
            call(2, "eth_blockNumber")
        ),
    );
    assert_eq!(answer.json()[1]["result"], "0x0", "{}", answer.body);
    // The client allowed evm_mine may call it, in a batch too.
    let answer = stack.post(
        &format!("/v3/{KEY}"),
        &format!("[{},{}]", call(1, "eth_chainId"), call(2, "evm_mine")),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(node.block_number().expect("height"), 1);
}

/// Waits until the start of the next wall-clock second (the rate window).
fn at_second_start() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    std::thread::sleep(
        Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))
            + Duration::from_millis(20),
    );
}

/// Runs `attempt` from the start of a wall-clock second until a run ends within that second
/// (at most 5 runs); every run's result, the last one's last.
fn within_one_second<T>(mut attempt: impl FnMut() -> T) -> Vec<T> {
    let second = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    };
    let mut runs = Vec::new();
    for _ in 0..5 {
        at_second_start();
        let started = second();
        runs.push(attempt());
        if second() == started {
            return runs;
        }
    }
    panic!("no run ended within the second it started in");
}

#[test]
fn limits_hold_across_workers() {
    let node = anvil();
    let mut stack = Stack::start(
        &node.url(),
        GatePolicy {
            clients: clients(10),
            max_body_bytes: 4096,
            max_batch_calls: 12,
            max_get_logs_blocks: 100,
            ..GatePolicy::default()
        },
        2,
    );
    let path = format!("/v3/{OTHER_KEY}");

    // Calls per second, counted per call across both workers: 10 single calls pass in one
    // second, the 11th is refused with 429; a batch of 11 is refused whole. (Each run starts at
    // a second's start and is repeated if it did not end within that second.)
    let mut rate_refused = 0;
    let runs = within_one_second(|| {
        let statuses: Vec<u16> = (0..14)
            .map(|i| stack.post(&path, &call(i, "eth_chainId")).status)
            .collect();
        (statuses, stack.post(&path, &call(99, "eth_chainId")))
    });
    for (statuses, last) in &runs {
        rate_refused +=
            statuses.iter().filter(|s| **s == 429).count() + usize::from(last.status == 429);
    }
    let (statuses, answer) = runs.last().expect("a run");
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(answer.status, 429);
    assert_eq!(
        answer.json(),
        json!({"jsonrpc":"2.0","id":99,"error":{"code":-32005,"message":"limit exceeded: 10 calls per second"}})
    );
    let batch = |n: u64| {
        format!(
            "[{}]",
            (0..n)
                .map(|i| call(i, "eth_chainId"))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    at_second_start();
    let answer = stack.post(&path, &batch(11));
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.json().as_array().map(Vec::len), Some(11));
    rate_refused += 11;
    let runs = within_one_second(|| {
        let batch = stack.post(&path, &batch(10)).status;
        (batch, stack.post(&path, &call(1, "eth_chainId")).status)
    });
    rate_refused += runs.iter().filter(|(_, single)| *single == 429).count();
    assert_eq!(
        runs.last(),
        Some(&(200, 429)),
        "a batch of 10 used the second"
    );

    // Calls per batch.
    stack.reload(GatePolicy {
        clients: clients(1000),
        max_body_bytes: 4096,
        max_batch_calls: 12,
        max_get_logs_blocks: 100,
        ..GatePolicy::default()
    });
    let answer = stack.post(&path, &batch(13));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["error"]["code"], -32005);
    assert!(
        answer.body.contains("12 calls per batch"),
        "{}",
        answer.body
    );
    assert_eq!(stack.post(&path, &batch(12)).status, 200);

    // Body size: 413 with a JSON-RPC error naming the limit, by length and chunked.
    let padding = " ".repeat(5000);
    let big = format!("{}{padding}", call(1, "eth_chainId"));
    for headers in [
        &[("Content-Type", "application/json")][..],
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
    ] {
        let answer = stack.send(&path, headers, &big);
        assert_eq!(answer.status, 413, "{headers:?}: {}", answer.body);
        assert_eq!(answer.json()["error"]["code"], -32005);
        assert!(
            answer.body.contains("request body 4096 bytes"),
            "{}",
            answer.body
        );
    }

    // eth_getLogs ranges whose ends are both numbers (or earliest).
    let logs = |from: Value, to: Value| {
        json!({"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{"fromBlock": from, "toBlock": to}]}).to_string()
    };
    for (from, to) in [
        (json!("0x0"), json!("0x64")),
        (json!("earliest"), json!("0x100")),
        (json!("0x10"), json!("0x00000000000000000000000000000200")),
        (json!("EARLIEST"), json!(1000)),
    ] {
        let answer = stack.post(&path, &logs(from.clone(), to.clone()));
        assert_eq!(
            answer.json()["error"]["code"],
            -32005,
            "{from} {to}: {}",
            answer.body
        );
        assert!(
            answer.body.contains("eth_getLogs block range 100 blocks"),
            "{}",
            answer.body
        );
    }
    let folded = r#"{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{"FROMBLOCK":"0x0","toblock":"0x1000"}]}"#;
    assert_eq!(stack.post(&path, folded).json()["error"]["code"], -32005);
    for (from, to) in [
        (json!("0x0"), json!("0x63")),
        (json!("earliest"), json!("latest")),
        (json!("0x0"), json!("pending")),
    ] {
        // Passed on: the node answers (whatever it thinks of a range beyond its head).
        let answer = stack.post(&path, &logs(from.clone(), to.clone()));
        assert_ne!(
            answer.json()["error"]["code"],
            -32005,
            "{from} {to}: {}",
            answer.body
        );
        assert_eq!(answer.json()["jsonrpc"], "2.0", "{}", answer.body);
    }

    let usage = stack.usage();
    let refused = &usage["clients"]["other"]["refused"];
    assert_eq!(refused["rate"], rate_refused, "{usage}");
    assert_eq!(refused["batch_size"], 13, "{usage}");
    assert_eq!(refused["body_size"], 2, "{usage}");
    assert_eq!(refused["get_logs_range"], 5, "{usage}");
}

#[test]
fn every_websocket_message_goes_through_the_gate() {
    let node = anvil();
    let stack = Stack::start(
        &node.url(),
        GatePolicy {
            clients: clients(1000),
            max_body_bytes: 4096,
            ..GatePolicy::default()
        },
        1,
    );
    // Keys as for HTTP.
    for path in [
        "/".to_owned(),
        "/v3/wrong".to_owned(),
        format!("/v3/{KEY}"),
        format!("/ws/v3/{KEY}/"),
    ] {
        let (head, _) = websocket(stack.port, &path);
        assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
    }
    let (head, mut ws) = websocket(stack.port, &format!("/ws/v3/{OTHER_KEY}"));
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "{head}\n{}",
        stack.nginx.error_log_tail()
    );
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );

    assert_eq!(text(&mut ws, &call(1, "eth_chainId"))["result"], "0x7a69");
    for (message, code) in [
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"anvil\u005fmine","params":[]}"#,
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"eth_chainId","method":"evm_mine"}"#,
            -32600,
        ),
        (r#"{"jsonrpc":"2.0","id":4,"method":"evm_mine"} x"#, -32700),
    ] {
        let answer = text(&mut ws, message);
        assert_eq!(answer["error"]["code"], code, "{message}: {answer}");
    }
    let batch = format!("[{},{}]", call(5, "eth_chainId"), call(6, "evm_mine"));
    let answer = text(&mut ws, &batch);
    assert_eq!(answer[0]["error"]["code"], -32600, "{answer}");
    assert_eq!(answer[1]["error"]["code"], -32601, "{answer}");
    // A message in fragments (a ping between them) is judged whole.
    let denied = call(7, "evm_mine");
    let (first, second) = denied.split_at(20);
    ws.write_all(&client_frame(1, false, first.as_bytes()))
        .expect("fragment");
    ws.write_all(&client_frame(9, true, b"ping")).expect("ping");
    ws.write_all(&client_frame(0, true, second.as_bytes()))
        .expect("fragment");
    // The node's pong and the gate's answer, in either order.
    let mut frames = [read_frame(&mut ws), read_frame(&mut ws)];
    frames.sort();
    assert_eq!(
        (frames[1].0, frames[1].1.as_str()),
        (10, "ping"),
        "the node's pong"
    );
    assert!(
        frames[0].1.contains("method not allowed: evm_mine"),
        "{frames:?}"
    );
    assert_eq!(
        node.block_number().expect("height"),
        0,
        "nothing reached the node"
    );

    // Subscriptions pass, their notifications come back.
    let subscribed = text(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":8,"method":"eth_subscribe","params":["newHeads"]}"#,
    );
    assert!(subscribed["result"].is_string(), "{subscribed}");
    node.mine(1).expect("mine");
    let (_, notification) = read_frame(&mut ws);
    assert!(notification.contains("eth_subscription"), "{notification}");

    // The allowed client may mine over its WebSocket.
    let (_, mut app) = websocket(stack.port, &format!("/ws/v3/{KEY}"));
    assert!(text(&mut app, &call(1, "evm_mine"))["result"].is_string());
    assert_eq!(node.block_number().expect("height"), 2);
    let (_, notification) = read_frame(&mut ws);
    assert!(
        notification.contains("\"number\":\"0x2\""),
        "{notification}"
    );

    // A message over the body limit closes the connection (1009).
    let big = format!("{}{}", call(9, "eth_chainId"), " ".repeat(5000));
    ws.write_all(&client_frame(1, true, big.as_bytes()))
        .expect("big");
    let (opcode, reason) = read_frame(&mut ws);
    assert_eq!(opcode, 8, "{reason}");
    assert!(reason.contains("too big"), "{reason}");

    let usage = stack.usage();
    assert_eq!(
        usage["clients"]["other"]["refused"]["method"],
        1 + 2 + 1,
        "{usage}"
    );
    assert_eq!(usage["clients"]["other"]["served"], 2, "{usage}");
}

#[test]
fn every_gated_variant_passes_nginx_t() {
    let sockets = tempfile::Builder::new()
        .prefix("jrpg")
        .tempdir()
        .expect("dir");
    let options = RenderOptions {
        listen_port: free_port().expect("port"),
        socket_dir: sockets.path().display().to_string(),
        ..RenderOptions::default()
    };
    let logs = tempfile::tempdir().expect("logs");
    for plan in [
        RoutingPlan::default(),
        RoutingPlan::from_backends(&[Backend {
            url: "https://127.0.0.1:8443/v3/0123456789abcdef".into(),
            is_leader: true,
            is_healthy: true,
            ..Backend::default()
        }]),
    ] {
        // Many clients with long allow lists: the policy is far longer than nginx's 4 KiB
        // configuration buffer.
        let many: Vec<GateClient> = (0..300)
            .map(|i| GateClient {
                name: format!("client-{i:03}"),
                key_sha256: key_sha256(&format!("key-{i}")),
                calls_per_second: 100,
                allow_methods: (0..40).map(|m| format!("namespace{m:02}_")).collect(),
                concurrent_requests: 64,
                allowed_origins: vec![format!("https://app-{i}.example")],
            })
            .collect();
        for (clients, open_without_key) in [
            (vec![], false),
            (vec![], true),
            (clients(7), false),
            (clients(7), true),
            (many, false),
        ] {
            let policy = GatePolicy {
                clients,
                open_without_key,
                lua_dir: devstack::gate_lua_dir(),
                access_log: logs.path().join("access.log").display().to_string(),
                ..GatePolicy::default()
            };
            let text = render_gated(&plan, &options, Some(&policy));
            if let Err(complaint) = Nginx::check_config(&text) {
                panic!("nginx -t refused:\n{complaint}\n{text}");
            }
        }
    }
}

/// The nginx the tests run is the one the image installs: `docker/nginx-packages` pins the
/// packages, the Dockerfile and `scripts/install-deps.sh` both install from it, and the
/// installed packages match it.
#[test]
fn the_tested_nginx_is_the_one_the_image_installs() {
    let root = devstack::repo_root();
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
    let dockerfile = read("docker/Dockerfile");
    assert!(dockerfile.contains("COPY docker/nginx-packages /tmp/nginx-packages"));
    assert!(dockerfile.contains("xargs -a /tmp/nginx-packages apt-get install"));
    assert!(dockerfile.contains("COPY docker/gate /usr/share/jsonrpc-proxy/lua"));
    assert_eq!(
        jsonrpc_proxy::render::gate::IMAGE_LUA_DIR,
        "/usr/share/jsonrpc-proxy/lua"
    );
    assert!(read("scripts/install-deps.sh").contains("\"$root/docker/nginx-packages\""));

    let pins = read("docker/nginx-packages");
    let mut nginx_version = None;
    for pin in pins.lines().filter(|l| !l.trim().is_empty()) {
        let (package, pattern) = pin.split_once('=').expect("package=version");
        let output = std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", package])
            .output()
            .expect("dpkg-query");
        let installed = String::from_utf8_lossy(&output.stdout).into_owned();
        let matches = match pattern.strip_suffix('*') {
            Some(prefix) => installed.starts_with(prefix),
            None => installed == pattern,
        };
        assert!(
            matches,
            "{package} {installed:?} is not {pattern} (run scripts/install-deps.sh)"
        );
        if package == "nginx" {
            nginx_version = installed.split('-').next().map(str::to_owned);
        }
    }
    let nginx_version = nginx_version.expect("nginx is pinned");
    let bin = std::env::var("NGINX_BIN").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    let output = std::process::Command::new(&bin)
        .arg("-V")
        .output()
        .expect("nginx -V");
    let about = String::from_utf8_lossy(&output.stderr);
    assert!(
        about.contains(&format!("nginx/{nginx_version}\n")),
        "{bin} is not nginx {nginx_version}: {about}"
    );
}

const DAPP_KEY: &str = "dappKey_0123456789-abcdefXYZ_012345";
const DAPP_ORIGIN: &str = "http://dapp.example:8080";

/// [`clients`], and `dapp` ([`DAPP_KEY`]) whose key only pages of `origin` may use.
fn with_dapp(origin: &str) -> GatePolicy {
    let mut policy_clients = clients(1000);
    policy_clients.push(GateClient {
        name: "dapp".into(),
        key_sha256: key_sha256(DAPP_KEY),
        calls_per_second: 1000,
        allow_methods: vec![],
        concurrent_requests: 64,
        allowed_origins: vec![origin.into()],
    });
    GatePolicy {
        clients: policy_clients,
        ..GatePolicy::default()
    }
}

/// A browser can use the endpoint: preflights of key paths are answered without a body being
/// judged, every answer (the node's, the gate's errors) carries the gate's CORS headers and
/// never the node's own, and a client with `allowed_origins` is served only to those origins.
#[test]
fn browsers_get_the_gates_cors_headers_on_every_answer() {
    let node = anvil();
    let stack = Stack::start(&node.url(), with_dapp(DAPP_ORIGIN), 2);
    let elsewhere = "http://elsewhere.example";
    let preflight = |path: &str, origin: &str| {
        stack.request(
            "OPTIONS",
            path,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            "",
        )
    };
    fn json_from(origin: &str) -> [(&str, &str); 2] {
        [("Content-Type", "application/json"), ("Origin", origin)]
    }

    // A key that takes any origin.
    for path in [format!("/v3/{KEY}"), "/v3/unknownKey".to_owned()] {
        let answer = preflight(&path, elsewhere);
        assert_eq!(answer.status, 204, "{path}: {}", answer.head);
        assert_eq!(answer.header("Access-Control-Allow-Origin"), "*", "{path}");
        assert!(answer
            .header("Access-Control-Allow-Methods")
            .contains("POST"));
        assert_eq!(
            answer.header("Access-Control-Allow-Headers"),
            "content-type"
        );
        assert!(answer.body.is_empty(), "{}", answer.body);
    }
    let served = stack.send(
        &format!("/v3/{KEY}"),
        &json_from(elsewhere),
        &call(1, "eth_chainId"),
    );
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.json()["result"], "0x7a69");
    // anvil sends its own `*`: one header, the gate's.
    assert_eq!(served.header("Access-Control-Allow-Origin"), "*");
    let unknown = stack.send(
        "/v3/unknownKey",
        &json_from(elsewhere),
        &call(2, "eth_chainId"),
    );
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.header("Access-Control-Allow-Origin"), "*");
    let denied = stack.send(
        &format!("/v3/{KEY}"),
        &json_from(elsewhere),
        &call(3, "eth_sign"),
    );
    assert_eq!(denied.json()["error"]["code"], -32601);
    assert_eq!(denied.header("Access-Control-Allow-Origin"), "*");

    // A key kept to one origin.
    let dapp = format!("/v3/{DAPP_KEY}");
    let answer = preflight(&dapp, DAPP_ORIGIN);
    assert_eq!(answer.status, 204, "{}", answer.head);
    assert_eq!(answer.header("Access-Control-Allow-Origin"), DAPP_ORIGIN);
    assert!(answer
        .header("Vary")
        .to_ascii_lowercase()
        .contains("origin"));
    let answer = stack.send(&dapp, &json_from(DAPP_ORIGIN), &call(4, "eth_chainId"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["result"], "0x7a69");
    assert_eq!(answer.header("Access-Control-Allow-Origin"), DAPP_ORIGIN);
    assert!(
        answer
            .header("Vary")
            .to_ascii_lowercase()
            .contains("origin"),
        "{}",
        answer.head
    );
    let height = node.block_number().expect("height");
    for (what, answer) in [
        ("preflight elsewhere", preflight(&dapp, elsewhere)),
        (
            "call elsewhere",
            stack.send(&dapp, &json_from(elsewhere), &call(5, "eth_blockNumber")),
        ),
        (
            "call without Origin",
            stack.post(&dapp, &call(6, "eth_blockNumber")),
        ),
    ] {
        assert_eq!(answer.status, 403, "{what}: {}", answer.head);
        assert_eq!(answer.json()["error"]["code"], -32002, "{what}");
        assert_eq!(answer.header("Access-Control-Allow-Origin"), "*", "{what}");
    }
    assert_eq!(node.block_number().expect("height"), height);
    let (head, _) = websocket_with(
        stack.port,
        &format!("/ws/v3/{DAPP_KEY}"),
        "Origin: http://elsewhere.example\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (head, mut socket) = websocket_with(
        stack.port,
        &format!("/ws/v3/{DAPP_KEY}"),
        &format!("Origin: {DAPP_ORIGIN}\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        text(&mut socket, &call(7, "eth_chainId"))["result"],
        "0x7a69"
    );

    let usage = stack.usage();
    assert_eq!(usage["clients"]["dapp"]["refused"]["origin"], 4, "{usage}");
    assert_eq!(usage["clients"]["dapp"]["served"], 2, "{usage}");
    assert_eq!(usage["clients"]["app"]["served"], 1, "{usage}");
}

/// A request of `body_len` bytes whose head and first `sent` body bytes are written, the rest
/// held back: a slow upload.
fn slow_upload(port: u16, path: &str, body_len: usize, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(&vec![b' '; sent]).expect("first bytes");
    stream
}

/// Retries `attempt` for up to 10 s until it gives `status`; the last answer.
fn until_status(status: u16, mut attempt: impl FnMut() -> Answer) -> Answer {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = attempt();
        if answer.status == status || std::time::Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
/// One key cannot hold the task: past its `concurrent_requests` in flight (slow uploads here,
/// across two workers), its next request gets 429 before any body is read, while other clients
/// are served; a place comes back when a request ends (finished, abandoned, or refused with
/// 413 while its body was read), and none is lost: afterwards exactly as many uploads fit as
/// before. A body larger than nginx's memory buffer (written to a file) is judged as any other.
#[test]
fn one_client_cannot_hold_more_than_its_requests_at_once() {
    let node = anvil();
    let mut policy_clients = clients(1000);
    policy_clients[0].concurrent_requests = 2;
    let stack = Stack::start(
        &node.url(),
        GatePolicy {
            clients: policy_clients,
            ..GatePolicy::default()
        },
        2,
    );
    let path = format!("/v3/{KEY}");
    let call_text = call(1, "eth_chainId");
    let body_len = 200 * 1024;
    // Holds both places: two uploads that got no answer (neither was refused) while a third
    // request is refused. A place still taken by an earlier request (nginx gives it back when
    // the request ends, after the client has closed) shows as an answered upload: retried.
    let hold_both = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut held = [
                slow_upload(stack.port, &path, body_len, 10),
                slow_upload(stack.port, &path, body_len, 10),
            ];
            std::thread::sleep(Duration::from_millis(300));
            let unanswered = held.iter_mut().all(|upload| {
                upload
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                let mut byte = [0u8; 1];
                matches!(upload.read(&mut byte), Err(ref e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
            });
            let refused = stack.post(&path, &call_text);
            if (refused.status == 429 && unanswered) || std::time::Instant::now() > deadline {
                return (refused, unanswered, held);
            }
            drop(held);
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let mut first = slow_upload(stack.port, &path, body_len, 1000);
    let mut second = slow_upload(stack.port, &path, body_len, 1000);
    // Both take their places before the first call below could take one of them.
    std::thread::sleep(Duration::from_millis(300));
    let refused = until_status(429, || stack.post(&path, &call_text));
    if refused.status != 429 {
        let mut seen = String::new();
        for upload in [&mut first, &mut second] {
            let _ = upload.set_read_timeout(Some(Duration::from_millis(300)));
            let mut buffer = [0u8; 512];
            let n = upload.read(&mut buffer);
            seen.push_str(&format!(
                "{n:?} {:?}\n",
                String::from_utf8_lossy(&buffer[..*n.as_ref().unwrap_or(&0)])
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
        panic!("not held: {seen}\n{}", stack.logs_text());
    }
    assert_eq!(refused.json()["error"]["code"], -32005);
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("2 requests at once"));
    assert_eq!(refused.header("Access-Control-Allow-Origin"), "*");
    let other = stack.post(&format!("/v3/{OTHER_KEY}"), &call_text);
    assert_eq!(
        other.status, 200,
        "another client is served: {}",
        other.body
    );

    // The first upload ends: a call padded to its length, read from nginx's temporary file.
    let rest = body_len - 1000;
    let mut tail = vec![b' '; rest - call_text.len()];
    tail.extend_from_slice(call_text.as_bytes());
    first.write_all(&tail).expect("rest of the body");
    let mut raw = Vec::new();
    first.read_to_end(&mut raw).expect("answer");
    drop(first);
    let finished = parse_answer(&raw);
    assert_eq!(finished.status, 200, "{}", finished.body);
    assert_eq!(finished.json()["result"], "0x7a69");
    // The second is abandoned.
    drop(second);
    let served = until_status(200, || stack.post(&path, &call_text));
    assert_eq!(served.status, 200, "{}", served.body);

    // Chunked bodies over the limit, refused (413) while they are read, through nginx's
    // error_page.
    let oversized = format!("{}{call_text}", " ".repeat(1 << 20));
    for _ in 0..3 {
        let answer = until_status(413, || {
            stack.send(
                &path,
                &[
                    ("Content-Type", "application/json"),
                    ("Transfer-Encoding", "chunked"),
                ],
                &oversized,
            )
        });
        assert_eq!(answer.status, 413, "{}", answer.body);
    }

    // Every place came back: both can be held again, and then no more.
    let (refused, unanswered, held) = hold_both();
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(unanswered, "an upload was answered: a place was lost");
    drop(held);
    let served = until_status(200, || stack.post(&path, &call_text));
    assert_eq!(served.status, 200, "{}", served.body);

    let usage = stack.usage();
    assert!(
        usage["clients"]["app"]["refused"]["concurrency"].as_u64() >= Some(2),
        "{usage}"
    );
}

/// A dapp's page in a real browser (headless Chromium) calls the endpoint with ethers' browser
/// build and shows the chain id; the same page from an origin the key does not allow cannot,
/// while a key that takes any origin works from there too.
#[test]
fn a_page_in_a_real_browser_reads_the_chain_from_an_allowed_origin_only() {
    use devstack::browser::{ethers_browser_build, page_dom, PageServer};
    let node = anvil();
    let page_port = free_port().expect("a port for the page");
    let allowed = format!("http://127.0.0.1:{page_port}");
    let stack = Stack::start(&node.url(), with_dapp(&allowed), 1);
    // The page calls the key named in its query, and writes what it got into its body.
    let page = format!(
        r#"<!doctype html><html><head><script src="/ethers.umd.min.js"></script></head>
<body>loading<script>
(async () => {{
  const key = new URLSearchParams(location.search).get("key");
  const provider = new ethers.JsonRpcProvider("http://127.0.0.1:{port}/v3/" + key, undefined,
    {{ staticNetwork: ethers.Network.from(31337) }});
  try {{
    const id = await provider.send("eth_chainId", []);
    document.body.textContent = "chain " + BigInt(id).toString();
  }} catch (e) {{
    document.body.textContent = "failed: " + (e.shortMessage || e.message);
  }}
  provider.destroy();
}})();
</script></body></html>"#,
        port = stack.port
    );
    let _pages = PageServer::start(
        page_port,
        vec![
            ("/".into(), "text/html".into(), page.into_bytes()),
            (
                "/ethers.umd.min.js".into(),
                "text/javascript".into(),
                ethers_browser_build().expect("ethers' browser build"),
            ),
        ],
    )
    .expect("page server");
    let body = |origin: &str, key: &str| {
        let dom = page_dom(&format!("{origin}/?key={key}"), Duration::from_secs(15))
            .expect("headless Chromium");
        let start = dom.find("<body>").map_or(0, |i| i + 6);
        let end = dom.rfind("</body>").unwrap_or(dom.len()).max(start);
        dom[start..end].trim().to_owned()
    };
    assert_eq!(
        body(&allowed, DAPP_KEY),
        "chain 31337",
        "the allowed origin"
    );
    let elsewhere = format!("http://localhost:{page_port}");
    let refused = body(&elsewhere, DAPP_KEY);
    assert!(refused.starts_with("failed:"), "another origin: {refused}");
    assert_eq!(body(&elsewhere, KEY), "chain 31337", "a key for any origin");
    let usage = stack.usage();
    assert_eq!(usage["clients"]["dapp"]["served"], 1, "{usage}");
    assert!(
        usage["clients"]["dapp"]["refused"]["origin"].as_u64() >= Some(1),
        "{usage}"
    );
}
