//! The data plane under load: a second process (a `curl` loop) sends JSON-RPC through the
//! proxy while nodes die; no request may fail. A node on another chain is never served.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use devstack::testkit::wait_until;
use devstack::{Anvil, AnvilOptions};
use local_stack::stack::LocalStack;

/// A bounded load from a second process: `curl` in a loop for `seconds`, one request at a time.
/// Prints `<ok> <failed> <first failure>` when done.
fn start_load(proxy: &str, seconds: u64) -> tokio::process::Child {
    let script = r#"
ok=0; failed=0; first=""
end=$(( $(date +%s) + $2 ))
while [ "$(date +%s)" -lt "$end" ]; do
  out=$(curl -s -m 5 -w ' %{http_code}' -X POST -H 'Content-Type: application/json' \
        --data '{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}' "$1")
  case "$out" in
    *'"result":"0x'*' 200') ok=$((ok+1)) ;;
    *) failed=$((failed+1)); [ -z "$first" ] && first="$out" ;;
  esac
done
echo "$ok $failed $first"
"#;
    tokio::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("load")
        .arg(proxy)
        .arg(seconds.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bash and curl run the load")
}

async fn load_result(load: tokio::process::Child) -> (u64, u64, String) {
    let output = load.wait_with_output().await.expect("the load finishes");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let mut parts = text.splitn(3, ' ');
    let ok = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let failed = parts
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    (ok, failed, parts.next().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_nodes_die_and_a_foreign_chain_is_never_served() {
    let work_dir = tempfile::tempdir().expect("temporary work dir");
    let mut stack = LocalStack::start(options(work_dir.path()))
        .await
        .expect("the local stack starts");
    mark_nodes(&stack);
    let proxy = stack.proxy_url();
    let urls: Vec<String> = stack.nodes.iter().map(|n| n.anvil.url()).collect();
    let (leader, node_a, node_b) = (urls[0].clone(), urls[1].clone(), urls[2].clone());

    // A node of another chain (id 5), registered like any node.
    let foreign = blocking(|| {
        Anvil::start(AnvilOptions {
            block_time: Some(1),
            chain_id: Some(5),
        })
    })
    .expect("a foreign-chain node");
    stack
        .add_backend(&foreign.url(), false)
        .await
        .expect("add the foreign node");

    wait_until_fully_routed(&stack, &leader, &node_a, &node_b).await;

    // Killing node A under load: passive detection and retry hide it; the config drops it.
    let load = start_load(&proxy, 8);
    tokio::time::sleep(Duration::from_secs(2)).await;
    blocking(|| stack.nodes[1].anvil.stop());
    let killed = Instant::now();
    wait_until(
        "node A leaves the config",
        INTERVAL * 3 + Duration::from_secs(8),
        || async { !routes_to(&stack, &node_a, "node") },
    )
    .await;
    let switch_a = killed.elapsed();
    let (ok, failed, first) = load_result(load).await;
    eprintln!("[data-plane] node killed under load: {ok} requests ok, {failed} failed; out of config after {:.1} s", switch_a.as_secs_f64());
    assert!(
        ok > 20,
        "the load ran: {ok} requests ok, {failed} failed; first failure: {first}"
    );
    assert_eq!(
        failed, 0,
        "no client request fails when a node dies; first failure: {first}"
    );

    // Every node dead under load: the leader (backup) takes traffic at once.
    let load = start_load(&proxy, 6);
    tokio::time::sleep(Duration::from_secs(1)).await;
    blocking(|| stack.nodes[2].anvil.stop());
    let killed = Instant::now();
    let (ok, failed, first) = load_result(load).await;
    eprintln!("[data-plane] last node killed under load: {ok} requests ok, {failed} failed");
    assert_eq!(
        failed, 0,
        "the leader takes over at once; first failure: {first}"
    );
    assert_eq!(
        who_answers(&reqwest::Client::new(), &proxy).await,
        Ok(1000),
        "the leader answers"
    );
    wait_until(
        "only the leader is routed",
        INTERVAL * 3 + Duration::from_secs(8),
        || async { routed(&stack) == vec![format!("{leader} (leader)")] },
    )
    .await;
    eprintln!(
        "[data-plane] all nodes dead → leader-only config after {:.1} s",
        killed.elapsed().as_secs_f64()
    );

    // The foreign-chain node answered every round, yet was never routed.
    let backends = stack.list_backends().await.expect("list_backends");
    let listed = backends
        .iter()
        .find(|b| b.url == foreign.url())
        .expect("foreign node listed");
    assert!(!listed.is_healthy);
    assert!(
        listed
            .health_reason
            .as_deref()
            .is_some_and(|r| r.contains("wrong chain")),
        "the reason names the chain: {listed:?}"
    );
    let transitions = stack.snapshot().2;
    let port = foreign.port().to_string();
    assert!(
        !transitions
            .iter()
            .any(|t| t.text.starts_with("nginx now runs") && t.text.contains(&port)),
        "no config ever routed the foreign node: {transitions:?}"
    );
    stack.shutdown().await;
}
