//! # devstack: local stand-ins for the AWS services and the Ethereum nodes
//!
//! Starts and supervises real local processes on loopback (`127.0.0.1`) for the integration
//! tests and the local stack:
//!
//! - [`Moto`]: moto's server (through `scripts/moto_server.py`), with helpers that create what
//!   `serverless.yml` creates (table, bucket, ECS cluster/task definition/service, the
//!   renderer's Lambda function record) and the shared infrastructure a deployment expects
//!   to find (VPC, subnets, security group, ECS cluster, load balancer listener);
//! - [`Anvil`]: an Ethereum node that can be mined, stopped and restarted on the same port;
//! - [`Nginx`]: `nginx -t` on a rendered configuration, and a real nginx running one;
//! - [`MetricsRecorder`]: `scripts/cloudwatch_recorder.py`, a CloudWatch stand-in that records
//!   `PutMetricData` calls (moto does not speak the SDK's RPC v2 CBOR protocol);
//! - [`FaultProxy`]: an HTTP proxy in front of moto or the recorder that injects AWS errors,
//!   drops, lost answers and delays;
//! - [`testkit`]: what every test crate shares: the binary's moto and recorder, unique names,
//!   a [`testkit::TestStack`] (optionally behind fault proxies), a
//!   [`testkit::CheckerBuilder`], item helpers, and a scripted JSON-RPC [`testkit::Node`].
//!
//! Every process writes stdout and stderr to a log file in a temporary directory, is waited
//! for with a bounded timeout (errors name the program, its log file and the log's tail), and
//! is killed with its whole process group when its handle is dropped. A small watchdog
//! (`sh`) kills the group as well if the owning process dies without dropping it (for
//! example a handle kept in a `static` in a test binary), so nothing is left running.
//!
//! Programs are found through an environment override (`ANVIL_BIN`, `NGINX_BIN`, `PYTHON_BIN`;
//! `MOTO_SERVER_SCRIPT` for the moto launcher), then the repository's tool directories
//! (`.tools/venv/bin`, `.tools/node/node_modules/.bin`; [`tool_path`] puts them in front of
//! `PATH` for other programs), then `PATH`. A missing program is an error that says to run
//! `scripts/install-deps.sh`. Other variables:
//! `DEVSTACK_REPO_ROOT` (where `.tools` and `scripts/` are; default: this checkout),
//! `CLOUDWATCH_RECORDER_SCRIPT` (the recorder script), `DEVSTACK_SERVERLESS_YML` (the
//! `serverless.yml` that [`functions`] reads), `DEVSTACK_KEEP_LOGS=1` (keep every
//! log directory; they are always kept when a start fails).
//!
//! Starting a process blocks the calling thread until it is ready (at most a few seconds);
//! the AWS helpers are `async` and use the AWS SDK.

mod anvil;
pub mod browser;
mod error;
mod fault;
mod http;
mod moto;
mod nginx;
mod process;
mod recorder;
pub mod testkit;

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

pub use anvil::{Anvil, AnvilOptions};
pub use error::Error;
pub use fault::{Fault, FaultProxy, FaultRule, SeenRequest};
pub use moto::{aws_env, sdk_config, EcsService, Moto, SharedInfrastructure, TEST_REGION};
pub use nginx::{lua_module_lines, nginx_binary, prepare_prefix, test_config, Nginx};
pub use recorder::MetricsRecorder;

/// A port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before (so concurrent tests in one binary never get the same port).
///
/// Another process may still take it before it is used; the starters retry with a fresh port
/// when their program reports that its address is in use.
pub fn free_port() -> Result<u16, Error> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    // Listeners stay bound until the loop ends, so the kernel offers a different port on every
    // attempt instead of the same recently freed one.
    let mut held = Vec::new();
    for _ in 0..100 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|source| Error::Io {
            context: "binding 127.0.0.1:0 to find a free port".into(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| Error::Io {
                context: "reading the address of a bound socket".into(),
                source,
            })?
            .port();
        held.push(listener);
        let mut seen = handed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Io {
        context: "finding a free port".into(),
        source: std::io::Error::other("no unused port after 100 attempts"),
    })
}

/// The repository root: `$DEVSTACK_REPO_ROOT` when set; else the checkout that holds the
/// package cargo runs (`$CARGO_MANIFEST_DIR` at run time) or the working directory; else the
/// one this crate was built from. Cargo reuses a build across checkouts of one target
/// directory without rebuilding it, so the path compiled in may name another checkout, or
/// one that is gone.
pub fn repo_root() -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    if let Some(root) = std::env::var_os("DEVSTACK_REPO_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    let checkout = |start: &Path| {
        start
            .ancestors()
            .find(|dir| dir.join("serverless.yml").is_file() && dir.join("tools/devstack").is_dir())
            .map(Path::to_path_buf)
    };
    let running = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let found = running
        .as_deref()
        .and_then(checkout)
        .or_else(|| std::env::current_dir().ok().as_deref().and_then(checkout));
    let root = found.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    root.canonicalize().unwrap_or(root)
}

/// The repository's Lua modules of the JSON-RPC gate (`docker/gate`), as an absolute path:
/// what the local stage and the tests give the renderer as `GATE_LUA_DIR`.
pub fn gate_lua_dir() -> String {
    repo_root().join("docker/gate").display().to_string()
}

/// `PATH` with the repository's tool directories in front (those that exist): the environment
/// for programs that start the tools themselves (`sls deploy` runs `cargo lambda`, which runs
/// zig), so that they find them without the scripts.
pub fn tool_path() -> std::ffi::OsString {
    let tools = process::TOOL_DIRS
        .iter()
        .map(|dir| repo_root().join(dir))
        .filter(|dir| dir.is_dir());
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(tools.chain(std::env::split_paths(&path))).unwrap_or(path)
}

/// The service's Lambda functions, in `serverless.yml`'s order: the keys under its top-level
/// `functions:`, the one list of them (`scripts/functions.sh` prints the same).
pub fn functions() -> Result<Vec<String>, Error> {
    let path = repo_script("serverless.yml", "DEVSTACK_SERVERLESS_YML");
    let text = std::fs::read_to_string(&path)
        .map_err(|source| Error::io(format!("reading {}", path.display()), source))?;
    Ok(function_keys(&text))
}

fn function_keys(serverless_yml: &str) -> Vec<String> {
    let mut inside = false;
    let mut keys = Vec::new();
    for line in serverless_yml.lines() {
        if line.starts_with(|c: char| c != ' ' && c != '#') {
            inside = line.trim_end() == "functions:";
        } else if let Some(key) = line
            .strip_prefix("  ")
            .and_then(|rest| rest.trim_end().strip_suffix(':'))
            .filter(|key| {
                !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
        {
            if inside {
                keys.push(key.to_owned());
            }
        }
    }
    keys
}

/// A script of the repository: `$<env_var>` when set, else the first existing candidate of
/// [`repo_file_candidates`] (the path under [`repo_root`] when none exists, for the error).
pub(crate) fn repo_script(relative: &str, env_var: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return std::path::PathBuf::from(path);
    }
    repo_file_candidates(relative)
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| repo_root().join(relative))
}

/// Where a repository file may be: under [`repo_root`], then under the current directory and
/// its ancestors (a build artifact shared between checkouts may carry another checkout's
/// root), without duplicates.
pub(crate) fn repo_file_candidates(relative: &str) -> Vec<std::path::PathBuf> {
    let mut candidates = vec![repo_root().join(relative)];
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let path = dir.join(relative);
            if !candidates.contains(&path) {
                candidates.push(path);
            }
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports: HashSet<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        assert_eq!(ports.len(), 20);
    }

    #[test]
    fn the_functions_are_the_keys_under_functions() {
        let yml = "service: x\nfunctions:\n  add_backend:\n    handler: bootstrap\n    environment:\n      \
                   A: b\n  list_backends:\n# comment\n  health_checker:\nresources:\n  Thing:\n";
        assert_eq!(
            function_keys(yml),
            ["add_backend", "list_backends", "health_checker"]
        );
        let listed = functions().unwrap();
        assert!(listed.contains(&"add_backend".to_owned()), "{listed:?}");
        assert!(listed.contains(&"slack_notifier".to_owned()), "{listed:?}");
    }

    #[test]
    fn repo_root_has_the_workspace_manifest() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("scripts/cloudwatch_recorder.py").is_file());
    }
}
