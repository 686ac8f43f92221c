//! [`GatedNginx`]: real nginx, with the Lua module the image ships, in front of nodes and
//! gated by a policy, as the renderer writes it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonrpc_proxy::model::backend::Backend;
use jsonrpc_proxy::render::gate::{GatePolicy, USAGE_SOCKET};
use jsonrpc_proxy::render::nginx::render_gated;
use jsonrpc_proxy::render::options::RenderOptions;
use jsonrpc_proxy::render::routing::RoutingPlan;

use crate::free_port;
use crate::gate_lua_dir;
use crate::Nginx;

/// nginx in front of nodes behind the JSON-RPC gate; stopped when dropped.
pub struct GatedNginx {
    /// The running nginx.
    pub nginx: Nginx,
    /// The public port.
    pub port: u16,
    options: RenderOptions,
    plan: RoutingPlan,
    sockets: tempfile::TempDir,
    logs: tempfile::TempDir,
}

impl GatedNginx {
    /// Starts nginx with `workers` workers in front of `node_url`, gated by `policy` with this
    /// checkout's Lua modules, an access log of its own and 127.0.0.1 as a trusted proxy.
    pub fn start(node_url: &str, policy: GatePolicy, workers: u32) -> Self {
        Self::start_nodes(&[node_url], policy, workers)
    }

    /// Starts nginx as [`GatedNginx::start`] does, in front of every node of `node_urls`
    /// (healthy, none the leader).
    pub fn start_nodes(node_urls: &[&str], policy: GatePolicy, workers: u32) -> Self {
        let sockets = tempfile::Builder::new()
            .prefix("jrpg")
            .tempdir()
            .expect("sockets");
        let logs = tempfile::tempdir().expect("logs");
        let options = RenderOptions {
            listen_port: free_port().expect("port"),
            socket_dir: sockets.path().display().to_string(),
            ..RenderOptions::default()
        };
        let backends: Vec<Backend> = node_urls
            .iter()
            .map(|url| Backend {
                url: (*url).into(),
                is_healthy: true,
                ..Backend::default()
            })
            .collect();
        let plan = RoutingPlan::from_backends(&backends);
        let text = render(&plan, &options, logs.path(), policy);
        let nginx = Nginx::start_with_workers(&text, sockets.path(), workers).expect("nginx");
        Self {
            nginx,
            port: options.listen_port,
            options,
            plan,
            sockets,
            logs,
        }
    }

    /// Reloads nginx with the same nodes gated by `policy`.
    pub fn reload(&mut self, policy: GatePolicy) {
        let text = render(&self.plan, &self.options, self.logs.path(), policy);
        self.nginx.reload(&text).expect("reload");
    }

    /// The public server's access log.
    pub fn access_log(&self) -> PathBuf {
        self.logs.path().join("access.log")
    }

    /// The directory of the configuration's unix sockets (the usage endpoint's among them).
    pub fn socket_dir(&self) -> &Path {
        self.sockets.path()
    }

    /// The status and body of a JSON-RPC `body` POSTed to `path` of the public server.
    pub fn post(&self, path: &str, body: &str) -> Result<(u16, String), crate::Error> {
        let response = crate::http::request(
            self.port,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .map_err(|e| crate::Error::Request {
            program: "nginx",
            request: format!("POST {path}"),
            message: e.to_string(),
        })?;
        Ok((response.status, response.text()))
    }

    /// The body of a `GET` on the gate's internal server (`/usage`, `/policy`, `/heads`).
    pub fn internal(&self, path: &str) -> Result<String, crate::Error> {
        let failed = |message: String| crate::Error::Request {
            program: "nginx",
            request: format!("GET {path} on {USAGE_SOCKET}"),
            message,
        };
        let socket = self.socket_dir().join(USAGE_SOCKET);
        let mut stream =
            std::os::unix::net::UnixStream::connect(&socket).map_err(|e| failed(e.to_string()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| failed(e.to_string()))?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .map_err(|e| failed(e.to_string()))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(|e| failed(e.to_string()))?;
        let response = crate::http::ok("nginx", path, crate::http::parse_response(&raw))?;
        Ok(response.text())
    }
}

fn render(plan: &RoutingPlan, options: &RenderOptions, logs: &Path, policy: GatePolicy) -> String {
    let policy = GatePolicy {
        lua_dir: gate_lua_dir(),
        access_log: logs.join("access.log").display().to_string(),
        trusted_proxy_cidrs: vec!["127.0.0.1/32".into()],
        ..policy
    };
    policy.validate().expect("valid policy");
    render_gated(plan, options, Some(&policy))
}
