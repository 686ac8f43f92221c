//! Hostile nodes: a round finishes within the probe timeout plus a margin, every hostile node
//! gets its own reason, and well-behaved nodes are judged as if the others were not there.

use std::time::{Duration, Instant};

use devstack::testkit::{b, n, s, Node, TestStack};

/// How a backend must come out of the round.
enum Expect {
    Healthy(f64),
    Reason(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_nodes_get_reasons_and_cost_only_their_own_slot() {
    let stack = TestStack::new("hostile").await;
    let node = Node::start().await;
    let refused_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let timeout = Duration::from_millis(1000);

    let mut cases: Vec<(String, bool, Expect)> = vec![
        (node.url("/block/16/leader"), true, Expect::Healthy(16.0)),
        (node.url("/text-plain/16"), false, Expect::Healthy(16.0)),
        (
            node.url("/trickle"),
            false,
            Expect::Reason("timeout after 1000 ms"),
        ),
        (
            node.url("/endless"),
            false,
            Expect::Reason("timeout after 1000 ms"),
        ),
        (
            node.url("/huge-length"),
            false,
            Expect::Reason("answer larger than 65536 bytes"),
        ),
        (
            node.url("/huge-chunked"),
            false,
            Expect::Reason("answer larger than 65536 bytes"),
        ),
        (
            node.url("/invalid-json"),
            false,
            Expect::Reason("answer is not JSON"),
        ),
        (
            node.url("/non-hex"),
            false,
            Expect::Reason("invalid result: "),
        ),
        (
            node.url("/negative"),
            false,
            Expect::Reason("invalid result: "),
        ),
        (
            node.url("/huge-number"),
            false,
            Expect::Reason("invalid result: block number is absurdly large"),
        ),
        (
            node.url("/number"),
            false,
            Expect::Reason("invalid result: result is a number, not a hex string"),
        ),
        (
            node.url("/rpc-error"),
            false,
            Expect::Reason("json-rpc error -32000: header not found"),
        ),
        (
            node.url("/redirect"),
            false,
            Expect::Reason("http status 302"),
        ),
        (
            node.url("/status/503"),
            false,
            Expect::Reason("http status 503"),
        ),
        (
            node.url("/status/201"),
            false,
            Expect::Reason("http status 201"),
        ),
        (node.url("/close"), false, Expect::Reason("request failed")),
        (
            node.url("/garbage"),
            false,
            Expect::Reason("request failed"),
        ),
        (
            format!("http://127.0.0.1:{refused_port}/"),
            false,
            Expect::Reason("connection failed"),
        ),
    ];
    for i in 0..20 {
        cases.push((
            node.url(&format!("/hang/{i}")),
            false,
            Expect::Reason("timeout after 1000 ms"),
        ));
    }
    for i in 0..5 {
        cases.push((
            node.url(&format!("/block/{}/good-{i}", 10 + i)),
            false,
            Expect::Healthy(f64::from(10 + i)),
        ));
    }
    for (url, is_leader, _) in &cases {
        stack.add(url, *is_leader).await;
    }

    let checker = stack.checker().probe_timeout(timeout).build();
    let started = Instant::now();
    let summary = checker.run_round().await.unwrap();
    let took = started.elapsed();
    // Bounded: without per-probe deadlines and the body cap, the endless, trickling and
    // hanging nodes would hold the round for minutes or forever. The margin covers the round's
    // moto writes on a loaded 2-core machine (not a speed claim: see docs/benchmarks.md).
    assert!(
        took < timeout + Duration::from_secs(8),
        "the round took {took:?}"
    );
    assert_eq!(summary.backends, cases.len());
    assert_eq!(summary.reference_block, Some(16));
    assert_eq!(summary.reference_source, "leader");
    assert_eq!(summary.written, cases.len());

    let items = stack.items().await;
    for (url, _, expect) in &cases {
        let item = &items[url.as_str()];
        let reason = s(item, "health_reason");
        match expect {
            Expect::Healthy(block) => {
                assert_eq!(b(item, "is_healthy"), Some(true), "{url}: {reason:?}");
                assert_eq!(n(item, "block_number"), Some(*block), "{url}");
                let ms = n(item, "response_time_ms").unwrap();
                assert!(
                    ms < 900.0,
                    "{url} took {ms} ms: slowed by the hostile nodes"
                );
            }
            Expect::Reason(prefix) => {
                assert_eq!(b(item, "is_healthy"), Some(false), "{url}");
                let reason = reason.unwrap_or_else(|| panic!("{url} has no reason"));
                assert!(
                    reason.starts_with(prefix),
                    "{url}: {reason:?}, expected {prefix:?}"
                );
                assert!(!item.contains_key("block_number"), "{url}");
                let ms = n(item, "response_time_ms").unwrap();
                assert!(ms <= 1000.0 + 500.0, "{url} took {ms} ms");
            }
        }
    }
    // Every stored reason is short and printable.
    for item in items.values() {
        if let Some(reason) = s(item, "health_reason") {
            assert!(reason.chars().count() <= 200, "{reason}");
            assert!(!reason.chars().any(char::is_control), "{reason:?}");
        }
    }
}
