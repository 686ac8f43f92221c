//! Real servers for the agent's tests: `moto_server` (S3, DynamoDB), nginx under a temporary
//! prefix, and tiny JSON-RPC nodes. Everything listens on 127.0.0.1 and is stopped on drop.

#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::Credentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Region of every test client.
pub const REGION: &str = "us-east-1";

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Waits until `condition` holds, at most `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `condition` holds, at most `timeout` (async).
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A running `moto_server`.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    _log_dir: tempfile::TempDir,
}

impl Moto {
    /// Starts `moto_server` (or `$MOTO_SERVER_BIN`) and waits until it answers.
    pub fn start() -> Self {
        let bin = std::env::var("MOTO_SERVER_BIN").unwrap_or_else(|_| "moto_server".into());
        let log_dir = tempfile::tempdir().expect("temp dir");
        let log = fs::File::create(log_dir.path().join("moto.log")).expect("log file");
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (run scripts/install-deps.sh): {e}"));
        let mut moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _log_dir: log_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !listening(port) {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited: {status}");
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// An SDK configuration for this server.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .load()
            .await
    }

    /// The standard AWS environment that points a process at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary nginx prefix: main configuration, the managed `conf.d/default.conf`, a socket
/// directory and a default 404 configuration on a free port.
pub struct NginxPrefix {
    dir: tempfile::TempDir,
    /// The port the configurations listen on.
    pub port: u16,
}

impl NginxPrefix {
    /// Creates the prefix; nothing runs yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // nginx workers run as `nobody` under root: they must reach the sockets.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let port = free_port();
        let root = dir.path();
        for sub in ["conf.d", "logs", "tmp", "sockets"] {
            fs::create_dir_all(root.join(sub)).expect("mkdir");
            fs::set_permissions(root.join(sub), fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let main = format!(
            "worker_processes 1;\n\
             error_log {root}/logs/error.log info;\n\
             pid {root}/logs/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {root}/tmp/client;\n\
               proxy_temp_path {root}/tmp/proxy;\n\
               fastcgi_temp_path {root}/tmp/fastcgi;\n\
               uwsgi_temp_path {root}/tmp/uwsgi;\n\
               scgi_temp_path {root}/tmp/scgi;\n\
               include {root}/conf.d/*.conf;\n\
             }}\n",
            root = root.display()
        );
        fs::write(root.join("nginx.conf"), main).expect("main conf");
        fs::write(root.join("default.conf"), Self::default_config(port)).expect("default conf");
        Self { dir, port }
    }

    /// The default 404 configuration on `port` (docker/default.conf with another port).
    pub fn default_config(port: u16) -> String {
        config_agent::settings::BUILTIN_DEFAULT_CONFIG.replace(
            "listen 80 default_server;",
            &format!("listen {port} default_server;"),
        )
    }

    /// The prefix directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The managed file.
    pub fn config_path(&self) -> PathBuf {
        self.root().join("conf.d/default.conf")
    }

    /// The socket directory (created by the agent in the tests that need it).
    pub fn socket_dir(&self) -> PathBuf {
        self.root().join("sockets/jsonrpc-proxy")
    }

    /// The nginx binary (`$NGINX_BIN` or /usr/sbin/nginx).
    pub fn nginx_bin() -> String {
        std::env::var("NGINX_BIN").unwrap_or_else(|_| "/usr/sbin/nginx".into())
    }

    /// The agent's flags for this prefix.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--config-path".into(),
            self.config_path().display().to_string(),
            "--default-config".into(),
            self.root().join("default.conf").display().to_string(),
            "--socket-dir".into(),
            self.socket_dir().display().to_string(),
            "--nginx-bin".into(),
            Self::nginx_bin(),
            "--nginx-conf".into(),
            self.root().join("nginx.conf").display().to_string(),
            "--nginx-prefix".into(),
            self.root().display().to_string(),
        ]
    }

    /// Starts nginx as a daemon on the current configuration (for `apply`).
    pub fn start_daemon(&self) -> NginxDaemon<'_> {
        let status = Command::new(Self::nginx_bin())
            .arg("-p")
            .arg(self.root())
            .arg("-c")
            .arg(self.root().join("nginx.conf"))
            .status()
            .expect("run nginx");
        assert!(
            status.success(),
            "nginx did not start: {}",
            self.error_log()
        );
        wait_until("nginx listening", Duration::from_secs(10), || {
            listening(self.port)
        });
        NginxDaemon { prefix: self }
    }

    /// nginx's error log.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.root().join("logs/error.log")).unwrap_or_default()
    }

    /// The managed file's content.
    pub fn installed(&self) -> String {
        fs::read_to_string(self.config_path()).unwrap_or_default()
    }
}

/// A daemonized nginx, stopped on drop.
pub struct NginxDaemon<'a> {
    prefix: &'a NginxPrefix,
}

impl Drop for NginxDaemon<'_> {
    fn drop(&mut self) {
        let _ = Command::new(NginxPrefix::nginx_bin())
            .arg("-p")
            .arg(self.prefix.root())
            .arg("-c")
            .arg(self.prefix.root().join("nginx.conf"))
            .args(["-s", "stop"])
            .status();
        let port = self.prefix.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while listening(port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A JSON-RPC node stand-in answering every request with `{"result": <block>}`; stops when the
/// test's runtime ends.
pub async fn fake_node(block: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Read the head and the (small) body announced by Content-Length.
                loop {
                    let Ok(read) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if request.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{block}"}}"#);
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

/// POSTs `eth_blockNumber` to the proxy; returns the status and the body.
pub async fn call(port: u16) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .ok()?;
    let response = client
        .post(format!("http://127.0.0.1:{port}/"))
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","method":"eth_blockNumber","params":[],"id":1}"#)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// GETs `path` from the proxy; returns the status.
pub async fn get_status(port: u16, path: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .ok()?;
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// The agent binary built by cargo for these tests.
pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_config_agent")
}
