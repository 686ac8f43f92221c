//! The agent binary against real servers: moto_server for S3 (and DynamoDB, so that the
//! configurations are the real renderer's), a real nginx under a temporary prefix, and
//! JSON-RPC node stand-ins. Every server is on 127.0.0.1 and stopped when a test ends.

mod support;

use std::fs;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use devstack::free_port;
use devstack::testkit::{moto, recorder, wait_until, Node, TestStack};
use support::{agent_bin, call, get_status, NginxPrefix};

/// Makes `urls` the healthy backends and runs the real renderer; returns the config key.
async fn render(
    stack: &TestStack,
    prefix: &NginxPrefix,
    urls: &[String],
    request_id: &str,
) -> String {
    let dynamodb = &stack.aws.dynamodb;
    for url in stack.items().await.into_keys() {
        dynamodb
            .delete_item()
            .table_name(&stack.table)
            .key("url", AttributeValue::S(url))
            .send()
            .await
            .expect("delete");
    }
    for url in urls {
        dynamodb
            .put_item()
            .table_name(&stack.table)
            .item("url", AttributeValue::S(url.clone()))
            .item("is_leader", AttributeValue::Bool(false))
            .item("is_healthy", AttributeValue::Bool(true))
            .item(
                "when_added",
                AttributeValue::S("2026-11-24T03:00:00Z".into()),
            )
            .send()
            .await
            .expect("put");
    }
    let socket_dir = prefix.socket_dir().display().to_string();
    let summary = stack
        .renderer(prefix.port, &socket_dir)
        .render_and_publish(request_id, true)
        .await
        .expect("render");
    summary.key
}

/// Publishes `text` under `key` with a pointer to it, as the renderer would.
async fn publish_raw(stack: &TestStack, key: &str, text: &str) {
    devstack::testkit::publish(&stack.bucket(), key, text).await;
}

/// The environment that points the agent at the stack's moto and recorder.
fn aws_env(stack: &TestStack) -> Vec<(String, String)> {
    devstack::aws_env(&moto().endpoint(), &recorder().endpoint())
        .into_iter()
        .chain([
            ("CLOUDWATCH_NAMESPACE".to_owned(), stack.namespace.clone()),
            ("STACK_NAME".to_owned(), stack.stack_name.clone()),
        ])
        .collect()
}

/// Runs `config_agent <args>` to completion (bounded) with the AWS environment `env`.
async fn agent(args: &[String], env: &[(String, String)]) -> (ExitStatus, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(agent_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("agent finished in time")
    .expect("agent ran");
    let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status, log)
}

/// A running `config_agent run`, stopped (and its nginx with it) when dropped.
struct RunningAgent<'a> {
    child: tokio::process::Child,
    prefix: &'a NginxPrefix,
}

impl<'a> RunningAgent<'a> {
    fn start(prefix: &'a NginxPrefix, args: &[String], env: &[(String, String)]) -> Self {
        let log = fs::File::create(prefix.root().join("logs/agent.log")).expect("agent log");
        let child = tokio::process::Command::new(agent_bin())
            .arg("run")
            .args(args)
            .args(prefix.agent_args())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the agent");
        Self { child, prefix }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("running") as libc::pid_t;
        // SAFETY: kill(2) with our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("agent exited in time")
            .expect("wait")
    }
}

impl Drop for RunningAgent<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = fs::read_to_string(self.prefix.root().join("logs/agent.log"));
            eprintln!("agent log:\n{}", log.unwrap_or_default());
            eprintln!("nginx error log:\n{}", self.prefix.error_log());
        }
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = self.child.id() {
                // SAFETY: kill(2) with our own child's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.start_kill();
        }
        // An nginx left behind by a failed test: stop it through its pid file.
        let _ = std::process::Command::new(NginxPrefix::nginx_bin())
            .arg("-p")
            .arg(self.prefix.root())
            .arg("-c")
            .arg(self.prefix.root().join("nginx.conf"))
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
    }
}

async fn answers(port: u16, status: u16, body_part: &str) -> bool {
    matches!(call(port).await, Some((s, body)) if s == status && body.contains(body_part))
}

/// A configuration whose server on `port` answers every request with 200 and `body`.
fn answering(port: u16, body: &str) -> String {
    format!("server {{ listen {port} default_server; location / {{ return 200 \"{body}\"; }} }}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_returns_once_every_new_connection_gets_the_new_config() {
    // nginx's old workers keep accepting new connections for a moment after a reload; an
    // applied configuration must already be the one every new connection gets.
    const ROUNDS: usize = 4;
    const REQUESTS: usize = 20;
    let stack = TestStack::new("agent").await;
    let prefix = NginxPrefix::with_workers(2);
    fs::write(prefix.config_path(), answering(prefix.port, "config-0")).expect("config");
    let _nginx = prefix.start_daemon();
    assert!(answers(prefix.port, 200, "config-0").await);
    for round in 1..=ROUNDS {
        let expected = format!("config-{round}");
        let key = format!("round-{round}_nginx.conf");
        publish_raw(&stack, &key, &answering(prefix.port, &expected)).await;
        let mut args = vec![
            "apply".to_owned(),
            "--s3-path".into(),
            format!("s3://{}/{key}", stack.bucket_name),
        ];
        args.extend(prefix.agent_args());
        let (status, log) = agent(&args, &aws_env(&stack)).await;
        assert!(status.success(), "apply failed: {log}");
        // A new connection per request, at once.
        for request in 1..=REQUESTS {
            let answer = call(prefix.port).await;
            assert!(
                matches!(&answer, Some((200, body)) if *body == expected),
                "round {round}, request {request} after apply returned: {answer:?}, \
                 expected {expected}\nagent: {log}\nnginx: {}",
                prefix.error_log()
            );
        }
        let took = log
            .lines()
            .find(|line| line.contains("configuration applied"))
            .unwrap_or_default();
        eprintln!("round {round}: {took}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_installs_valid_configs_and_keeps_the_last_good_one() {
    let stack = TestStack::new("agent").await;
    let prefix = NginxPrefix::new();
    fs::write(
        prefix.config_path(),
        NginxPrefix::default_config(prefix.port),
    )
    .expect("default");
    let _nginx = prefix.start_daemon();
    assert!(answers(prefix.port, 404, "").await);

    let node = Node::start().await;
    render(
        &stack,
        &prefix,
        &[node.url("/block/16/rpc?key=SECRET")],
        "first",
    )
    .await;
    let mut args = vec![
        "apply".to_owned(),
        "--pointer".into(),
        format!("s3://{}/latest.json", stack.bucket_name),
    ];
    args.extend(prefix.agent_args());
    let (status, log) = agent(&args, &aws_env(&stack)).await;
    assert!(status.success(), "apply failed: {log}");
    assert!(
        !log.contains("SECRET"),
        "a node URL leaked into the log: {log}"
    );
    assert!(prefix.socket_dir().is_dir(), "socket directory not created");
    // Applied means served: the old worker (default config: 404, /healthz 503) no longer
    // accepts.
    assert!(answers(prefix.port, 200, "0x10").await, "{log}");
    let good = prefix.installed();
    assert!(good.contains("upstream jsonrpc_backends"), "{good}");
    assert_eq!(get_status(prefix.port, "/healthz").await, Some(200));

    // An invalid configuration is refused, the good one stays installed and running.
    publish_raw(
        &stack,
        "broken_nginx.conf",
        &format!(
            "server {{ listen {}; no_such_directive on; }}\n",
            prefix.port
        ),
    )
    .await;
    let (status, log) = agent(&args, &aws_env(&stack)).await;
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("no_such_directive"),
        "nginx's reason is logged: {log}"
    );
    assert_eq!(prefix.installed(), good);
    let answer = call(prefix.port).await;
    assert!(
        matches!(&answer, Some((200, body)) if body.contains("0x10")),
        "the good configuration still serves: {answer:?}\nnginx: {}",
        prefix.error_log()
    );

    // A missing object is an error too, and changes nothing.
    let mut missing = vec![
        "apply".to_owned(),
        "--s3-path".into(),
        format!("s3://{}/gone_nginx.conf", stack.bucket_name),
    ];
    missing.extend(prefix.agent_args());
    let (status, log) = agent(&missing, &aws_env(&stack)).await;
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("does not exist"), "{log}");
    assert_eq!(prefix.installed(), good);

    // Usage errors exit with 2.
    let (status, _) = agent(&["apply".to_owned()], &aws_env(&stack)).await;
    assert_eq!(status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_fails_when_nginx_keeps_the_previous_config() {
    // `nginx -t` opens no sockets: a port taken by another process passes it, and the reload
    // fails in the master, which keeps its workers of the previous configuration.
    let stack = TestStack::new("agent").await;
    let prefix = NginxPrefix::with_workers(2);
    fs::write(prefix.config_path(), answering(prefix.port, "before")).expect("config");
    let _nginx = prefix.start_daemon();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let taken_port = taken.local_addr().expect("address").port();
    let conflicting = answering(prefix.port, "after")
        + &format!("server {{ listen 127.0.0.1:{taken_port}; return 204; }}\n");
    publish_raw(&stack, "conflict_nginx.conf", &conflicting).await;
    let mut args = vec![
        "apply".to_owned(),
        "--s3-path".into(),
        format!("s3://{}/conflict_nginx.conf", stack.bucket_name),
    ];
    args.extend(prefix.agent_args());
    let started = Instant::now();
    let (status, log) = agent(&args, &aws_env(&stack)).await;
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("not confirmed") && log.contains("still accept connections"),
        "{log}"
    );
    assert!(!log.contains("configuration applied"), "{log}");
    let waited = started.elapsed();
    assert!(
        waited >= config_agent::workers::RELOAD_CONFIRM_TIMEOUT,
        "gave up after {waited:?}"
    );
    assert!(answers(prefix.port, 200, "before").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_on_the_default_config_when_the_config_is_invalid_or_unreachable() {
    let stack = TestStack::new("agent").await;
    stack
        .aws
        .s3
        .put_object()
        .bucket(&stack.bucket_name)
        .key("bad_nginx.conf")
        .body(
            "server { listen 1; missing_semicolon }"
                .as_bytes()
                .to_vec()
                .into(),
        )
        .send()
        .await
        .expect("put");

    // Invalid configuration: nginx starts on the default 404 server.
    let prefix = NginxPrefix::new();
    fs::write(prefix.config_path(), "# left over from an earlier run\n").expect("write");
    let mut running = RunningAgent::start(
        &prefix,
        &[
            "--s3-path".into(),
            format!("s3://{}/bad_nginx.conf", stack.bucket_name),
        ],
        &aws_env(&stack),
    );
    wait_until(
        "nginx on the default config",
        Duration::from_secs(30),
        || answers(prefix.port, 404, ""),
    )
    .await;
    assert_eq!(prefix.installed(), NginxPrefix::default_config(prefix.port));
    // The target group's check: nginx is up, nothing is routed.
    assert_eq!(get_status(prefix.port, "/healthz").await, Some(503));
    // SIGQUIT (the image's stop signal) is nginx's graceful stop, forwarded by the agent.
    running.signal(libc::SIGQUIT);
    assert!(running.wait(Duration::from_secs(15)).await.success());
    drop(running);

    // S3 unreachable (nothing listens at the endpoint): the default again, after retries.
    let prefix = NginxPrefix::new();
    let mut env = aws_env(&stack);
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    env.push((
        "AWS_ENDPOINT_URL".to_owned(),
        format!("http://127.0.0.1:{}", free_port().expect("free port")),
    ));
    let mut running = RunningAgent::start(
        &prefix,
        &[
            "--s3-path".into(),
            format!("s3://{}/any_nginx.conf", stack.bucket_name),
        ],
        &env,
    );
    wait_until(
        "nginx on the default config",
        Duration::from_secs(60),
        || answers(prefix.port, 404, ""),
    )
    .await;
    assert_eq!(prefix.installed(), NginxPrefix::default_config(prefix.port));
    running.signal(libc::SIGTERM);
    running.wait(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follows_the_pointer_with_graceful_reloads() {
    let stack = TestStack::new("agent").await;
    let prefix = NginxPrefix::with_workers(2);
    let node = Node::start().await;
    let (node_a, node_b) = (node.url("/block/10"), node.url("/block/11"));
    render(&stack, &prefix, &[node_a], "render_a").await;

    // The agent reports whether the configuration in force is the newest render.
    let env = aws_env(&stack);
    let staleness = || -> Vec<f64> {
        stack
            .metric_calls()
            .iter()
            .flat_map(|call| call["metric_data"].as_array().cloned().unwrap_or_default())
            .filter(|point| point["MetricName"] == config_agent::status::METRIC_STALENESS)
            .filter_map(|point| point["Value"].as_f64())
            .collect()
    };

    // S3_CONFIG_PATH names a key that does not exist: the pointer's config is used instead.
    let mut running = RunningAgent::start(
        &prefix,
        &[
            "--s3-path".into(),
            format!("s3://{}/deleted_nginx.conf", stack.bucket_name),
            "--poll-seconds".into(),
            "1".into(),
        ],
        &env,
    );
    wait_until(
        "the proxy to answer from node A",
        Duration::from_secs(30),
        || answers(prefix.port, 200, "0xa"),
    )
    .await;

    // A new render is picked up and loaded without restarting nginx; once the agent says so,
    // every new connection gets it.
    render(&stack, &prefix, &[node_b], "render_b").await;
    let agent_log = || fs::read_to_string(prefix.root().join("logs/agent.log")).unwrap_or_default();
    wait_until(
        "the agent to report node B's configuration in force",
        Duration::from_secs(20),
        || async { agent_log().contains("nginx reloaded and serves it") },
    )
    .await;
    for _ in 0..10 {
        assert!(answers(prefix.port, 200, "0xb").await, "{}", agent_log());
    }
    let good = prefix.installed();

    wait_until(
        "a current config is reported as 0 s stale",
        Duration::from_secs(10),
        || async { staleness().contains(&0.0) },
    )
    .await;

    // An invalid render is refused; node B keeps serving.
    publish_raw(&stack, "broken_nginx.conf", "events {}\n").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(prefix.installed(), good);
    assert!(answers(prefix.port, 200, "0xb").await);
    assert!(matches!(running.child.try_wait(), Ok(None)), "agent exited");
    // ... and the agent reports that the newest render (dated 03:00 today) waits.
    wait_until(
        "the refused render is reported as waiting",
        Duration::from_secs(10),
        || async { staleness().iter().any(|seconds| *seconds > 60.0) },
    )
    .await;

    // SIGTERM is forwarded: nginx stops, then the agent exits with nginx's status.
    running.signal(libc::SIGTERM);
    let status = running.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
    assert!(call(prefix.port).await.is_none(), "nginx still answers");
}
