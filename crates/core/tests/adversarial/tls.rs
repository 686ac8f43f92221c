//! TLS failures (the one hostile answer `tests/integration/hostile.rs` does not try): an
//! untrusted (self-signed) certificate served by `openssl s_server`, https spoken to a plain
//! HTTP node, and a server that accepts the connection but never answers the handshake. Each is
//! unhealthy with a reason, the round keeps its bound, and a good node is unaffected.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use devstack::testkit::{b, n, s, Answer, Node, TestStack};

use crate::{checker, figure};

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server` with a fresh self-signed certificate for 127.0.0.1, on a free port.
fn self_signed_server(dir: &std::path::Path) -> (Killed, u16) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(made.success(), "openssl req failed");
    let port = devstack::free_port().expect("free port");
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    let server = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_unhealthy_with_a_reason_and_cost_only_their_slot() {
    let env = TestStack::with_faults("adv-tls").await;
    let node = Node::start().await;
    node.set("leader", Answer::Height(70));
    node.set("good", Answer::Height(70));
    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, tls_port) = tokio::task::block_in_place(|| self_signed_server(dir.path()));
    // Accepts connections and never says a word.
    let silent = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let silent_port = silent.local_addr().expect("address").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let plain_port = node.port();

    let hostile = [
        (
            format!("https://127.0.0.1:{tls_port}/"),
            "untrusted certificate",
        ),
        (
            format!("https://127.0.0.1:{plain_port}/n/good"),
            "https to a plain HTTP node",
        ),
        (
            format!("https://127.0.0.1:{silent_port}/"),
            "handshake never answered",
        ),
    ];
    env.add(&node.named("leader"), true).await;
    env.add(&node.named("good"), false).await;
    for (url, _) in &hostile {
        env.add(url, false).await;
    }

    let checker = checker(&env).clients(&env.aws).build();
    let started = Instant::now();
    let summary = checker.run_round().await.expect("round");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000 + 2500),
        "the round kept its bound: {took:?}"
    );
    assert_eq!(summary.healthy, 2, "{summary:?}");
    let items = env.items().await;
    let good = &items[&node.named("good")];
    assert_eq!(b(good, "is_healthy"), Some(true));
    assert!(n(good, "response_time_ms").unwrap_or(f64::MAX) < 900.0);
    for (url, what) in &hostile {
        let item = &items[url];
        assert_eq!(b(item, "is_healthy"), Some(false), "{what}");
        let reason = s(item, "health_reason").unwrap_or_default();
        assert!(
            ["connection failed: ", "request failed: ", "timeout after "]
                .iter()
                .any(|prefix| reason.starts_with(prefix)),
            "{what}: {reason:?}"
        );
        eprintln!("[tls] {what}: {reason}");
    }
    let certificate = s(&items[&hostile[0].0], "health_reason").unwrap_or_default();
    assert!(
        certificate.to_ascii_lowercase().contains("certificate"),
        "the reason names the certificate: {certificate:?}"
    );
    figure("TLS failures tried", hostile.len());
}
