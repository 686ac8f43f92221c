//! Every rendered variant passes `nginx -t` (nginx 1.22), and a real nginx running the
//! rendered configuration answers `/healthz`, proxies plain JSON-RPC and passes WebSocket
//! upgrades through both layers to a real anvil node.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use devstack::{free_port, Anvil, AnvilOptions, Nginx};
use jsonrpc_proxy::backend::Backend;
use jsonrpc_proxy::nginx::{render, RenderOptions, RoutingPlan};

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

/// A masked client text frame (payloads under 126 bytes).
fn text_frame(payload: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let bytes = payload.as_bytes();
    assert!(bytes.len() < 126);
    let mut frame = vec![0x81, 0x80 | bytes.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(bytes.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server text frame.
fn read_text_frame(stream: &mut TcpStream) -> String {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("frame head");
    assert_eq!(head[0] & 0x0f, 1, "a text frame");
    let length = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).expect("length");
            usize::from(u16::from_be_bytes(ext))
        }
        127 => panic!("unexpectedly long frame"),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).expect("payload");
    String::from_utf8(payload).expect("utf-8")
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

    // One anvil node behind the proxy.
    let anvil = Anvil::start(AnvilOptions {
        block_time: None,
        chain_id: Some(31_337),
    })
    .expect("anvil");
    let plan = RoutingPlan::from_backends(&[backend(&anvil.url(), false)]);
    nginx.reload(&render(&plan, &options)).expect("reload");
    assert_eq!(get(port, "/healthz"), (200, "ok\n".into()));
    let (status, body) = post(
        port,
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#,
    );
    assert_eq!(status, 200, "{body}\n{}", nginx.error_log_tail());
    assert!(body.contains("0x7a69"), "{body}");

    // A WebSocket upgrade passes through both layers: handshake, then JSON-RPC frames.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: proxy\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("handshake answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101"),
        "{head}\n{}",
        nginx.error_log_tail()
    );
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="));
    stream
        .write_all(&text_frame(
            r#"{"jsonrpc":"2.0","id":7,"method":"eth_chainId","params":[]}"#,
        ))
        .expect("frame");
    let answer = read_text_frame(&mut stream);
    assert!(
        answer.contains("0x7a69") && answer.contains("\"id\":7"),
        "{answer}"
    );
    stream
        .write_all(&text_frame(
            r#"{"jsonrpc":"2.0","id":8,"method":"eth_subscribe","params":["newHeads"]}"#,
        ))
        .expect("subscribe");
    let subscribed = read_text_frame(&mut stream);
    assert!(
        subscribed.contains("\"id\":8") && subscribed.contains("result"),
        "{subscribed}"
    );
    anvil.rpc("evm_mine", serde_json::json!([])).expect("mine");
    let notification = read_text_frame(&mut stream);
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
