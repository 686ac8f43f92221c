//! Where and how a rendered configuration runs ([`RenderOptions`], fixed per deployment) and
//! the names of the backends' internal sockets. Rationale: docs/architecture.md, "The nginx
//! configuration".

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model::backend_url::BackendUrl;
use crate::render::routing::RouteTarget;

/// Where and how the rendered configuration runs; fixed per deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// Port the public server listens on (`NGINX_LISTEN_PORT`).
    pub listen_port: u16,
    /// Address the public server listens on (`NGINX_LISTEN_ADDRESS`); `None`: every
    /// interface, as the container on ECS must.
    pub listen_address: Option<IpAddr>,
    /// Directory for the unix sockets of the backends' internal servers (`NGINX_SOCKET_DIR`).
    pub socket_dir: String,
    /// CA bundle used to verify https backends (`NGINX_CA_BUNDLE`).
    pub ca_bundle: String,
    /// Seconds to wait for a backend connection.
    pub connect_timeout_secs: u32,
    /// Seconds to wait for a backend's answer.
    pub read_timeout_secs: u32,
    /// Most backends one request is tried on.
    pub retry_tries: u32,
    /// Longest time, in seconds, spent retrying one request.
    pub retry_timeout_secs: u32,
    /// Failures within `fail_timeout_secs` after which a backend is skipped for that long.
    pub max_fails: u32,
    /// See `max_fails`.
    pub fail_timeout_secs: u32,
    /// Idle keepalive connections kept per worker by each upstream (the public ones, to their
    /// members; each internal server's, to its backend).
    pub keepalive: u32,
    /// Seconds a WebSocket connection may stay silent (either way) before it is closed.
    pub websocket_timeout_secs: u32,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            listen_port: 80,
            listen_address: None,
            socket_dir: "/var/run/jsonrpc-proxy".into(),
            ca_bundle: "/etc/ssl/certs/ca-certificates.crt".into(),
            connect_timeout_secs: 2,
            read_timeout_secs: 30,
            retry_tries: 3,
            retry_timeout_secs: 10,
            max_fails: 1,
            fail_timeout_secs: 10,
            keepalive: 32,
            websocket_timeout_secs: 3600,
        }
    }
}

/// Render options that would not give a valid, safe configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderOptionsError {
    /// The socket directory is not an absolute path of plain characters, or is too long for
    /// unix socket paths.
    #[error("socket directory {0:?} must be an absolute path of letters, digits, '/', '-', '_' and '.', at most 80 bytes")]
    SocketDir(String),
    /// The CA bundle path is not an absolute path of plain characters.
    #[error(
        "CA bundle path {0:?} must be an absolute path of letters, digits, '/', '-', '_' and '.'"
    )]
    CaBundle(String),
    /// The listen port is 0.
    #[error("listen port must be between 1 and 65535")]
    ListenPort,
    /// A timeout or count is 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl RenderOptions {
    /// Checks that every value is safe to put into the configuration.
    pub fn validate(&self) -> Result<(), RenderOptionsError> {
        let plain_path = |p: &str| {
            p.starts_with('/')
                && !p.contains("..")
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
        };
        if !plain_path(&self.socket_dir) || self.socket_dir.len() > 80 {
            return Err(RenderOptionsError::SocketDir(self.socket_dir.clone()));
        }
        if !plain_path(&self.ca_bundle) {
            return Err(RenderOptionsError::CaBundle(self.ca_bundle.clone()));
        }
        if self.listen_port == 0 {
            return Err(RenderOptionsError::ListenPort);
        }
        for (name, value) in [
            ("connect timeout", self.connect_timeout_secs),
            ("read timeout", self.read_timeout_secs),
            ("retry tries", self.retry_tries),
            ("retry timeout", self.retry_timeout_secs),
            ("max fails", self.max_fails),
            ("fail timeout", self.fail_timeout_secs),
            ("keepalive", self.keepalive),
            ("websocket timeout", self.websocket_timeout_secs),
        ] {
            if value == 0 {
                return Err(RenderOptionsError::Zero(name));
            }
        }
        Ok(())
    }

    /// The public server's `listen` target: `port`, or `address:port` (`[v6]:port`).
    pub fn listen_target(&self) -> String {
        match self.listen_address {
            Some(address) => SocketAddr::new(address, self.listen_port).to_string(),
            None => self.listen_port.to_string(),
        }
    }

    /// The unix socket of a backend's internal JSON-RPC server (backends that are not direct
    /// members, see `nginx::direct_address`). Named after the backend's URL
    /// (a hash), not its position, so a backend keeps its socket across configurations: during
    /// a graceful reload, old workers still route to sockets the new workers serve.
    pub fn socket_path(&self, target: &RouteTarget) -> String {
        format!(
            "{}/b-{}.sock",
            self.socket_dir.trim_end_matches('/'),
            socket_id(&target.url)
        )
    }

    /// The unix socket of a backend's internal WebSocket server.
    pub fn websocket_socket_path(&self, target: &RouteTarget) -> String {
        format!(
            "{}/b-{}-ws.sock",
            self.socket_dir.trim_end_matches('/'),
            socket_id(&target.url)
        )
    }
}

/// Twelve hex digits of the URL's SHA-256: a stable, secret-free socket name.
fn socket_id(url: &BackendUrl) -> String {
    hex::encode(&Sha256::digest(url.as_str().as_bytes())[..6])
}
