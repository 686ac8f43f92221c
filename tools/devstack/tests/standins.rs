//! The stand-ins against themselves: every process starts, answers, and is gone after drop.

use std::time::{Duration, Instant};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use devstack::{sdk_config, Anvil, AnvilOptions, MetricsRecorder, Moto, Nginx};

fn port_refuses(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn anvil_mines_stops_and_restarts_on_its_port() {
    let mut anvil = Anvil::start(AnvilOptions {
        block_time: None,
        chain_id: Some(4242),
    })
    .unwrap();
    assert!(anvil.url().starts_with("http://127.0.0.1:"));
    assert_eq!(anvil.chain_id().unwrap(), 4242);
    assert_eq!(anvil.block_number().unwrap(), 0);
    anvil.mine(25).unwrap();
    assert_eq!(anvil.block_number().unwrap(), 25);

    let port = anvil.port();
    anvil.stop();
    assert!(!anvil.is_running());
    assert!(port_refuses(port));
    assert!(anvil.block_number().is_err());

    anvil.restart().unwrap();
    assert_eq!(anvil.port(), port);
    assert_eq!(
        anvil.block_number().unwrap(),
        0,
        "a restarted node is a fresh chain"
    );
    drop(anvil);
    assert!(port_refuses(port));
}

#[test]
fn anvil_block_time_mines_by_itself() {
    let anvil = Anvil::start(AnvilOptions {
        block_time: Some(1),
        chain_id: None,
    })
    .unwrap();
    let started = Instant::now();
    while anvil.block_number().unwrap() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no blocks mined"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn moto_creates_what_serverless_creates() {
    let moto = Moto::start().unwrap();
    let port = moto.port();
    moto.create_table("devstack-table").await.unwrap();
    moto.create_bucket("devstack-bucket").await.unwrap();
    let ecs = moto
        .create_ecs_service("devstack-cluster", "devstack-family", "devstack-service")
        .await
        .unwrap();
    assert!(ecs.cluster_arn.contains("devstack-cluster"), "{ecs:?}");
    assert!(
        ecs.task_definition_arn.ends_with("devstack-family:1"),
        "{ecs:?}"
    );
    let arn = moto
        .create_lambda_function("devstack-renderer")
        .await
        .unwrap();
    assert!(arn.contains("devstack-renderer"));
    // A second function reuses the role.
    moto.create_lambda_function("devstack-other").await.unwrap();

    let config = moto.sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let table = dynamodb
        .describe_table()
        .table_name("devstack-table")
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    assert_eq!(table.key_schema()[0].attribute_name(), "url");
    let s3 = aws_sdk_s3::Client::new(&config);
    s3.head_bucket()
        .bucket("devstack-bucket")
        .send()
        .await
        .unwrap();
    let ecs_client = aws_sdk_ecs::Client::new(&config);
    let service = ecs_client
        .describe_services()
        .cluster(&ecs.cluster_arn)
        .services(&ecs.service_name)
        .send()
        .await
        .unwrap();
    assert_eq!(
        service.services()[0].task_definition(),
        Some(ecs.task_definition_arn.as_str())
    );
    let definition = ecs_client
        .describe_task_definition()
        .task_definition(&ecs.family)
        .send()
        .await
        .unwrap()
        .task_definition
        .unwrap();
    let container = &definition.container_definitions()[0];
    assert_eq!(container.name(), Some("nginx"));
    assert_eq!(container.memory(), Some(64));
    assert_eq!(
        definition.network_mode(),
        Some(&aws_sdk_ecs::types::NetworkMode::Bridge)
    );

    let lambda = aws_sdk_lambda::Client::new(&config);
    let invoked = lambda
        .invoke()
        .function_name("devstack-renderer")
        .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
        .payload(aws_sdk_lambda::primitives::Blob::new(
            r#"{"source":"test"}"#,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(invoked.status_code(), 202);
    moto.reset().unwrap();
    assert!(s3
        .head_bucket()
        .bucket("devstack-bucket")
        .send()
        .await
        .is_err());
    drop(moto);
    assert!(port_refuses(port));
}

#[tokio::test]
async fn recorder_records_sdk_put_metric_data() {
    let recorder = MetricsRecorder::start().unwrap();
    let client = aws_sdk_cloudwatch::Client::new(&sdk_config(&recorder.endpoint()).await);
    let datum = |i: usize| {
        MetricDatum::builder()
            .metric_name("ETH node block number")
            .dimensions(
                Dimension::builder()
                    .name("Node URL")
                    .value(format!("http://10.0.0.{i}:8545"))
                    .build(),
            )
            .value(i as f64)
            .unit(StandardUnit::Milliseconds)
            .storage_resolution(60)
            .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                1_800_000_000,
            ))
            .build()
    };
    client
        .put_metric_data()
        .namespace("devstack")
        .metric_data(datum(1))
        .send()
        .await
        .unwrap();
    // A large call: the SDK gzips PutMetricData bodies above 10 KiB.
    client
        .put_metric_data()
        .namespace("devstack")
        .set_metric_data(Some((0..1000).map(datum).collect()))
        .send()
        .await
        .unwrap();
    let calls = recorder.recorded().unwrap();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["namespace"], "devstack");
    let first = &calls[0]["metric_data"][0];
    assert_eq!(first["MetricName"], "ETH node block number");
    assert_eq!(first["Dimensions"][0]["Name"], "Node URL");
    assert_eq!(first["Dimensions"][0]["Value"], "http://10.0.0.1:8545");
    assert_eq!(first["Unit"], "Milliseconds");
    assert_eq!(first["Value"], 1.0);
    assert_eq!(first["StorageResolution"], 60);
    assert_eq!(first["Timestamp"], 1_800_000_000.0);
    assert_eq!(calls[1]["metric_data"].as_array().unwrap().len(), 1000);

    // More than 1000 points is refused, as CloudWatch does.
    let refused = client
        .put_metric_data()
        .namespace("devstack")
        .set_metric_data(Some((0..1001).map(datum).collect()))
        .send()
        .await;
    assert!(refused.is_err());

    recorder.clear().unwrap();
    assert!(recorder.recorded().unwrap().is_empty());
    let log = std::fs::read_to_string(recorder.log_path()).unwrap();
    eprintln!("{log}");
    assert!(
        log.contains("POST /service/GraniteServiceVersion20100801/operation/PutMetricData"),
        "{log}"
    );
}

#[test]
fn nginx_checks_runs_reloads_and_cleans_up() {
    let bad = Nginx::check_config("server { listen 1 ; bogus_directive on; }").unwrap_err();
    assert!(bad.contains("bogus_directive"), "{bad}");
    Nginx::check_config("server { listen 8080; location / { return 404; } }").unwrap();

    let port = devstack::free_port().unwrap();
    let socket_dir = tempfile::Builder::new().prefix("ds").tempdir().unwrap();
    let socket = socket_dir.path().join("backend-0.sock");
    let fragment = |status: u16| {
        format!(
            "upstream inner {{ server unix:{sock}; }}\n\
             server {{\n    listen {port} default_server;\n    location / {{ proxy_pass http://inner; }}\n}}\n\
             server {{\n    listen unix:{sock};\n    location / {{ return {status}; }}\n}}\n",
            sock = socket.display()
        )
    };
    let get = || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        use std::io::{Read, Write};
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let mut nginx = Nginx::start(&fragment(404), socket_dir.path()).unwrap();
    assert_eq!(nginx.listen_ports(), vec![port]);
    assert!(
        get().starts_with("HTTP/1.1 404"),
        "{}",
        nginx.error_log_tail()
    );

    let refused = nginx.reload("server { listen x; }").unwrap_err();
    assert!(refused.to_string().contains("refused"), "{refused}");
    assert!(get().starts_with("HTTP/1.1 404"));

    nginx.reload(&fragment(418)).unwrap();
    assert!(
        get().starts_with("HTTP/1.1 418"),
        "{}",
        nginx.error_log_tail()
    );

    let pid: i32 = std::fs::read_to_string(nginx.prefix().join("nginx.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(nginx);
    assert!(port_refuses(port));
    assert!(!pid_alive(pid));
    assert!(!socket.exists(), "the unix socket is removed");

    // A killed nginx leaves its socket behind; a new one in the same directory still starts.
    std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let nginx = Nginx::start(&fragment(404), socket_dir.path()).unwrap();
    assert!(get().starts_with("HTTP/1.1 404"));
    drop(nginx);
}

#[test]
fn the_watchdog_cleans_up_after_an_owner_that_dies_without_dropping() {
    const CHILD: &str = "DEVSTACK_TEST_WATCHDOG_CHILD";
    const NAME: &str = "the_watchdog_cleans_up_after_an_owner_that_dies_without_dropping";
    if std::env::var_os(CHILD).is_some() {
        // The owner: starts an anvil node and a (multi-process) nginx, then exits at once.
        let anvil = Anvil::start(AnvilOptions::default()).unwrap();
        let port = devstack::free_port().unwrap();
        let sockets = tempfile::tempdir().unwrap();
        let nginx = Nginx::start(
            &format!("server {{ listen {port}; location / {{ return 404; }} }}"),
            sockets.path(),
        )
        .unwrap();
        println!("PORTS {} {port}", anvil.port());
        println!(
            "DIRS {} {}",
            anvil.log_path().unwrap().parent().unwrap().display(),
            nginx.prefix().display()
        );
        std::mem::forget(anvil);
        std::mem::forget(nginx);
        std::process::exit(0);
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let ports: Vec<u16> = stdout
        .lines()
        .find_map(|l| l.split_once("PORTS ").map(|(_, ports)| ports))
        .unwrap_or_else(|| {
            panic!(
                "no ports from the child: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ports.len(), 2);
    let dirs: Vec<std::path::PathBuf> = stdout
        .lines()
        .find_map(|l| l.split_once("DIRS ").map(|(_, dirs)| dirs))
        .expect("no directories from the child")
        .split_whitespace()
        .map(std::path::PathBuf::from)
        .collect();
    assert_eq!(dirs.len(), 2);
    let started = Instant::now();
    while !ports.iter().all(|p| port_refuses(*p)) || dirs.iter().any(|d| d.exists()) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "processes or their directories outlived their owner: ports {ports:?}, dirs {dirs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
