//! nginx under a temporary prefix for the agent's tests, and a client for it (moto, the
//! recorder and the nodes come from `devstack::testkit`).

#![allow(dead_code)]

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
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
        Self::with_workers(1)
    }

    /// [`NginxPrefix::new`] with `workers` worker processes.
    pub fn with_workers(workers: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // nginx workers run as `nobody` under root: they must reach the sockets.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let port = devstack::free_port().expect("free port");
        let root = dir.path();
        for sub in ["conf.d", "logs", "tmp", "sockets"] {
            fs::create_dir_all(root.join(sub)).expect("mkdir");
            fs::set_permissions(root.join(sub), fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        // The image's main configuration loads the Lua module the gate runs on.
        let modules = devstack::lua_module_lines(std::path::Path::new(&Self::nginx_bin()));
        let main = format!(
            "{modules}worker_processes {workers};\n\
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(self.port) {
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
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
