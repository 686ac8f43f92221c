//! [`GatedNginx`]: real nginx, with the Lua module the image ships, in front of one node and
//! gated by a policy, as the renderer writes it.

use std::path::{Path, PathBuf};

use jsonrpc_proxy::model::backend::Backend;
use jsonrpc_proxy::render::gate::GatePolicy;
use jsonrpc_proxy::render::nginx::render_gated;
use jsonrpc_proxy::render::options::RenderOptions;
use jsonrpc_proxy::render::routing::RoutingPlan;

use crate::free_port;
use crate::gate_lua_dir;
use crate::Nginx;

/// nginx in front of one node behind the JSON-RPC gate; stopped when dropped.
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
        let plan = RoutingPlan::from_backends(&[Backend {
            url: node_url.into(),
            is_healthy: true,
            ..Backend::default()
        }]);
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

    /// Reloads nginx with the same node gated by `policy`.
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
