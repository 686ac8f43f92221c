//! Every rendered variant passes `nginx -t` (nginx 1.22), and a real nginx running the
//! rendered configuration answers `/healthz`, proxies plain JSON-RPC and passes WebSocket
//! upgrades to a real anvil node, both as a direct member of the public upstreams and
//! through an internal server; a plain node and a keyed one share one upstream, and a POST
//! that meets a killed direct member is retried on the other.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devstack::testkit::websocket::{read_frame, text, websocket};
use devstack::{free_port, Anvil, AnvilOptions, Nginx};
use jsonrpc_proxy::model::backend::Backend;
use jsonrpc_proxy::render::nginx::render;
use jsonrpc_proxy::render::options::RenderOptions;
use jsonrpc_proxy::render::routing::RoutingPlan;

fn backend(url: &str, is_leader: bool) -> Backend {
    Backend {
        url: url.into(),
        is_leader,
        is_healthy: true,
        ..Backend::default()
    }
}

/// Every plan shape, with hosts nginx can resolve offline (it resolves upstream hosts at load).
fn plans() -> Vec<(&'static str, RoutingPlan)> {
    let leader = backend("https://127.0.0.1:8443/v3/0123456789abcdef", true);
    vec![
        ("404", RoutingPlan::default()),
        (
            "leader only",
            RoutingPlan::from_backends(std::slice::from_ref(&leader)),
        ),
        (
            "one node, leader as backup",
            RoutingPlan::from_backends(&[leader.clone(), backend("http://127.0.0.2:8545", false)]),
        ),
        (
            "one node, no leader",
            RoutingPlan::from_backends(&[backend("http://localhost:8545/rpc?key=k", false)]),
        ),
        (
            "plain nodes and a plain leader: direct members only, no internal server",
            RoutingPlan::from_backends(&[
                backend("http://127.0.0.1:8545", false),
                backend("http://localhost", false),
                backend("http://[::1]:8546/", false),
                backend("http://127.0.0.9:8545/", true),
            ]),
        ),
        (
            "several nodes: https, basic auth, query, ipv6, leader as backup",
            RoutingPlan::from_backends(&[
                leader,
                backend("http://127.0.0.2:8545", false),
                backend("https://user:pa%3Ass@127.0.0.3:8443/rpc?key=k1", false),
                backend("http://[::1]:8545/", false),
                backend("https://localhost/", false),
            ]),
        ),
    ]
}

/// A fresh directory for the unix sockets (`nginx -t` binds them).
fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("jrp")
        .tempdir()
        .expect("socket dir")
}

/// The defaults (but for the port and the socket directory: `nginx -t` binds both) and a
/// custom set; each with its own socket directory and a free port.
fn option_sets() -> Vec<(&'static str, RenderOptions, tempfile::TempDir)> {
    let (defaults_dir, custom_dir) = (socket_dir(), socket_dir());
    vec![
        (
            "defaults",
            RenderOptions {
                listen_port: free_port().expect("port"),
                socket_dir: defaults_dir.path().display().to_string(),
                ..RenderOptions::default()
            },
            defaults_dir,
        ),
        (
            "custom",
            RenderOptions {
                listen_port: free_port().expect("port"),
                socket_dir: custom_dir.path().display().to_string(),
                connect_timeout_secs: 1,
                read_timeout_secs: 5,
                retry_tries: 1,
                retry_timeout_secs: 1,
                max_fails: 3,
                fail_timeout_secs: 30,
                keepalive: 1,
                websocket_timeout_secs: 86_400,
                ..RenderOptions::default()
            },
            custom_dir,
        ),
    ]
}

#[test]
fn every_rendered_variant_passes_nginx_t() {
    for (plan_name, plan) in plans() {
        for (options_name, options, _dir) in option_sets() {
            options.validate().expect("valid options");
            let text = render(&plan, &options);
            if let Err(complaint) = Nginx::check_config(&text) {
                panic!("{plan_name} / {options_name}: nginx -t refused:\n{complaint}\n{text}");
            }
        }
    }
}

#[test]
fn plain_backends_are_direct_members_and_the_others_internal() {
    let (_, options, _dir) = option_sets().swap_remove(0);
    let plans = plans();
    let (_, several) = plans.last().expect("a plan");
    let text = render(several, &options);
    // The two plain nodes are listed at their addresses, the https and keyed ones at sockets.
    assert!(text.contains("    server 127.0.0.2:8545 max_fails=1 fail_timeout=10s;\n"));
    assert!(text.contains("    server [::1]:8545 max_fails=1 fail_timeout=10s;\n"));
    assert_eq!(text.matches("    listen unix:").count(), 2 * 3, "{text}");
    let (_, plain_only) = &plans[4];
    let text = render(plain_only, &options);
    assert!(!text.contains("unix:"), "{text}");
    assert!(text.contains("    server 127.0.0.9:8545 backup;\n"));
    assert!(text.contains("    server localhost:80 max_fails=1 fail_timeout=10s;\n"));
}

#[test]
fn the_map_is_defined_once_per_fragment() {
    // Included once, the fragment defines its map once, under a name of its own; nginx -t
    // would refuse a duplicate variable.
    let (_, plan) = plans().pop().expect("a plan");
    let (_, options, _dir) = option_sets().swap_remove(0);
    let text = render(&plan, &options);
    assert_eq!(text.matches("map $http_upgrade").count(), 1);
    let main_like =
        format!("map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n{text}");
    Nginx::check_config(&main_like)
        .expect("coexists with the usual $connection_upgrade of an including configuration");
}

/// A minimal HTTP/1.1 exchange on a fresh connection: the status code and the body.
fn http(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn get(port: u16, path: &str) -> (u16, String) {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"),
    )
}

fn post(port: u16, body: &str) -> (u16, String) {
    http(
        port,
        &format!(
            "POST / HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// A WebSocket upgrade through the proxy: handshake, JSON-RPC frames, an `eth_subscribe`
/// notification, then a plain request next to the open WebSocket.
fn websocket_round_trip(port: u16, anvil: &Anvil, chain_id: &str, nginx: &Nginx) {
    let (head, mut stream) = websocket(port, "/");
    let head = head.to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101"),
        "{head}\n{}",
        nginx.error_log_tail()
    );
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="));
    let answer = text(
        &mut stream,
        r#"{"jsonrpc":"2.0","id":7,"method":"eth_chainId","params":[]}"#,
    );
    assert!(
        answer["result"] == chain_id && answer["id"] == 7,
        "{answer}"
    );
    let subscribed = text(
        &mut stream,
        r#"{"jsonrpc":"2.0","id":8,"method":"eth_subscribe","params":["newHeads"]}"#,
    );
    assert!(
        subscribed["id"] == 8 && subscribed["result"].is_string(),
        "{subscribed}"
    );
    anvil.rpc("evm_mine", serde_json::json!([])).expect("mine");
    let (opcode, notification) = read_frame(&mut stream);
    assert_eq!(opcode, 1, "a text frame");
    assert!(notification.contains("eth_subscription"), "{notification}");

    // Plain requests still work next to the open WebSocket.
    assert_eq!(
        post(
            port,
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#
        )
        .0,
        200
    );
}

#[test]
fn a_real_nginx_serves_healthz_json_rpc_and_websockets() {
    let sockets = socket_dir();
    let port = free_port().expect("port");
    let options = RenderOptions {
        listen_port: port,
        socket_dir: sockets.path().display().to_string(),
        ..RenderOptions::default()
    };

    // Nothing healthy: /healthz says 503, everything else 404 (as the original).
    let mut nginx =
        Nginx::start(&render(&RoutingPlan::default(), &options), sockets.path()).expect("nginx");
    assert_eq!(get(port, "/healthz"), (503, "no healthy backend\n".into()));
    assert_eq!(get(port, "/").0, 404);
    assert_eq!(post(port, "{}").0, 404);

    // An anvil node behind the proxy as a direct member (its plain URL), then another one
    // (another chain, to tell them apart) through an internal server (with credentials,
    // which anvil ignores).
    let start = |chain_id| {
        Anvil::start(AnvilOptions {
            block_time: None,
            chain_id: Some(chain_id),
        })
        .expect("anvil")
    };
    let (direct_node, internal_node) = (start(31_337), start(1_337));
    let with_credentials = format!("http://ws:pw@127.0.0.1:{}/", internal_node.port());
    for (anvil, url, chain_id, direct) in [
        (&direct_node, direct_node.url(), "0x7a69", true),
        (&internal_node, with_credentials, "0x539", false),
    ] {
        let plan = RoutingPlan::from_backends(&[backend(&url, false)]);
        let text = render(&plan, &options);
        assert_eq!(
            text.contains(&format!(
                "    server 127.0.0.1:{} max_fails=1 fail_timeout=10s;\n",
                anvil.port()
            )),
            direct,
            "{text}"
        );
        assert_eq!(text.contains("listen unix:"), !direct, "{text}");
        nginx.reload(&text).expect("reload");
        // The old worker may still accept a connection or two after the reload (on a busy
        // machine): wait until the new configuration answers.
        let chain_id_call = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !post(port, chain_id_call).1.contains(chain_id)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(get(port, "/healthz"), (200, "ok\n".into()));
        let (status, body) = post(port, chain_id_call);
        assert_eq!(status, 200, "{body}\n{}", nginx.error_log_tail());
        assert!(body.contains(chain_id), "{body}");

        websocket_round_trip(port, anvil, chain_id, &nginx);
    }
}

/// A JSON-RPC stand-in on keep-alive HTTP/1.1 (closing when asked to) that answers `eth_blockNumber` with its height
/// at exactly its path (404 anywhere else) and records each request's target and `Host`.
/// Once told to hang up, it reads each request and closes the connection without an answer
/// (a node dying with the request in flight).
struct StandIn {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    hang_up: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

impl StandIn {
    fn start(path: &'static str, height: u64) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = listener.local_addr().expect("address").port();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let hang_up: Arc<AtomicBool> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let (recorded, hanging, accepted) = (seen.clone(), hang_up.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (recorded, hanging) = (recorded.clone(), hanging.clone());
                std::thread::spawn(move || {
                    let _ = serve_stand_in(stream, path, height, &recorded, &hanging);
                });
            }
        });
        Self {
            port,
            seen,
            hang_up,
            connections,
        }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn serve_stand_in(
    stream: TcpStream,
    path: &str,
    height: u64,
    seen: &Mutex<Vec<(String, String)>>,
    hang_up: &AtomicBool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let (mut length, mut host, mut close) = (0usize, String::new(), false);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "host" => host = value.trim().to_owned(),
                    "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length.min(1 << 16)];
        reader.read_exact(&mut body)?;
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((target.clone(), host));
        if hang_up.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (status, answer) = if target == path {
            let id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(serde_json::json!(1));
            let result = format!("{height:#x}");
            (
                "200 OK",
                serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string(),
            )
        } else {
            ("404 Not Found", "not found".to_owned())
        };
        let connection = if close { "close" } else { "keep-alive" };
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: {connection}\r\n\r\n{answer}",
            answer.len()
        )?;
        if close {
            return Ok(());
        }
    }
}

/// The height that answered an `eth_blockNumber` POST through the proxy.
fn height_via(port: u16) -> Result<u64, String> {
    let (status, body) = post(
        port,
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#,
    );
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    let value: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    value["result"]
        .as_str()
        .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| format!("no block number in {body}"))
}

fn tally(port: u16, requests: usize, nginx: &Nginx) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..requests {
        match height_via(port) {
            Ok(height) => *seen.entry(height).or_insert(0) += 1,
            Err(error) => panic!(
                "request {i} through nginx failed: {error}\n{}",
                nginx.error_log_tail()
            ),
        }
    }
    seen
}

#[test]
fn plain_and_keyed_backends_share_one_upstream_and_a_dead_direct_member_is_retried() {
    // A plain anvil node (height 10) and a plain stand-in (30): direct members. A keyed
    // stand-in (20) that answers only at its key: through its internal server.
    let mut anvil = Anvil::start(AnvilOptions::default()).expect("anvil");
    anvil.mine(10).expect("mine");
    let plain = StandIn::start("/", 30);
    let keyed = StandIn::start("/v3/k3yS3cret", 20);
    let keyed_url = format!("http://127.0.0.1:{}/v3/k3yS3cret", keyed.port);
    let plan = RoutingPlan::from_backends(&[
        backend(&anvil.url(), false),
        backend(&format!("http://127.0.0.1:{}", plain.port), false),
        backend(&keyed_url, false),
    ]);
    let sockets = socket_dir();
    let port = free_port().expect("port");
    let options = RenderOptions {
        listen_port: port,
        socket_dir: sockets.path().display().to_string(),
        ..RenderOptions::default()
    };
    let text = render(&plan, &options);
    for direct in [anvil.port(), plain.port] {
        assert!(
            text.contains(&format!(
                "    server 127.0.0.1:{direct} max_fails=1 fail_timeout=10s;\n"
            )),
            "{text}"
        );
    }
    assert_eq!(text.matches("    server unix:").count(), 2, "{text}");
    assert_eq!(text.matches("    listen unix:").count(), 2, "{text}");
    let nginx = Nginx::start(&text, sockets.path()).expect("nginx");

    // Every member answers through the proxy.
    let seen = tally(port, 30, &nginx);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![10, 20, 30],
        "{seen:?}\n{}",
        nginx.error_log_tail()
    );
    // The keyed backend got its key and its own Host; a direct member the public server's.
    let keyed_seen = keyed.seen();
    assert!(!keyed_seen.is_empty());
    for (target, host) in &keyed_seen {
        assert_eq!(target, "/v3/k3yS3cret");
        assert_eq!(host, &format!("127.0.0.1:{}", keyed.port));
    }
    let plain_seen = plain.seen();
    assert!(!plain_seen.is_empty());
    for (target, host) in &plain_seen {
        assert_eq!((target.as_str(), host.as_str()), ("/", "127.0.0.1"));
    }
    // The public upstream keeps its connections to a direct member alive (each client
    // request here comes on a fresh connection to nginx).
    assert!(
        plain.connections.load(Ordering::SeqCst) < plain_seen.len(),
        "{} connections for {} requests",
        plain.connections.load(Ordering::SeqCst),
        plain_seen.len()
    );

    // The anvil node dies: POSTs that nginx sends to it (connection refused) are retried on
    // the other members, so every request succeeds. nginx's error log names the dead member
    // by its address.
    anvil.stop();
    let needle = format!("\"http://127.0.0.1:{}/\"", anvil.port());
    let seen = tally(port, 12, &nginx);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![20, 30],
        "{seen:?}"
    );
    assert!(
        nginx.wait_for_error_log(&needle, Duration::from_secs(5)),
        "nginx tried the dead direct member (and retried the POST): {}",
        nginx.error_log_tail()
    );

    // The plain stand-in dies with each request in flight (it reads the POST and hangs up):
    // the POST was sent, so only `non_idempotent` lets nginx retry it; the keyed backend
    // answers every one.
    plain.hang_up.store(true, Ordering::SeqCst);
    let before = plain.seen().len();
    let seen = tally(port, 8, &nginx);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![20],
        "{seen:?}"
    );
    assert!(
        plain.seen().len() > before,
        "nginx sent a POST to the hanging member"
    );
    assert!(
        nginx.wait_for_error_log(
            &format!("\"http://127.0.0.1:{}/\"", plain.port),
            Duration::from_secs(5)
        ),
        "{}",
        nginx.error_log_tail()
    );

    let log = std::fs::read_to_string(nginx.error_log_path()).unwrap_or_default();
    assert!(
        !log.contains("k3yS3cret"),
        "no key in the error log:\n{log}"
    );
}
