//! `anvil`: a local Ethereum node that can be mined, stopped and restarted on its port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{address_in_use, report_failure, Program, Supervised, WorkDir};
use crate::{free_port, http, Error};

const ANVIL: Program = Program {
    name: "anvil",
    env_var: "ANVIL_BIN",
    file_name: "anvil",
    fallbacks: &[],
};

/// How long anvil may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one JSON-RPC call may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How an [`Anvil`] node runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnvilOptions {
    /// `--block-time`: mine a block every so many seconds; `None` mines only on demand
    /// (transactions or [`Anvil::mine`]).
    pub block_time: Option<u64>,
    /// `--chain-id`; anvil's default is 31337.
    pub chain_id: Option<u64>,
}

/// A running `anvil --host 127.0.0.1 --port <port> --silent`, killed when dropped.
///
/// [`Anvil::stop`] kills it (its port refuses connections), [`Anvil::restart`] starts a fresh
/// chain at block 0 on the same port: a node that died and came back, or fell behind.
#[derive(Debug)]
pub struct Anvil {
    options: AnvilOptions,
    port: u16,
    bin: PathBuf,
    process: Option<Supervised>,
    starts: u32,
    dir: WorkDir,
}

impl Anvil {
    /// Starts a node on a free port and waits until it answers JSON-RPC (at most 30 s).
    /// Blocks the calling thread.
    pub fn start(options: AnvilOptions) -> Result<Self, Error> {
        let bin = native_binary(ANVIL.locate()?);
        let dir = WorkDir::new("anvil")?;
        let mut anvil = Self {
            options,
            port: 0,
            bin,
            process: None,
            starts: 0,
            dir,
        };
        let mut last_error = None;
        for _ in 0..3 {
            anvil.port = free_port()?;
            match anvil.launch() {
                Ok(()) => return Ok(anvil),
                Err(error) => {
                    let retry = matches!(error, Error::Exited { .. })
                        && anvil
                            .process
                            .as_ref()
                            .is_some_and(|p| address_in_use(p.log()));
                    anvil.process = None;
                    if !retry {
                        return Err(report_failure(&mut anvil.dir, error));
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(report_failure(
            &mut anvil.dir,
            last_error.unwrap_or_else(|| {
                Error::io("starting anvil", std::io::Error::other("no attempt made"))
            }),
        ))
    }

    fn launch(&mut self) -> Result<(), Error> {
        self.starts += 1;
        let log = self.dir.path().join(format!("anvil-{}.log", self.starts));
        let mut command = Command::new(&self.bin);
        command.args([
            "--host",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--silent",
        ]);
        if let Some(seconds) = self.options.block_time {
            command.args(["--block-time", &seconds.to_string()]);
        }
        if let Some(chain_id) = self.options.chain_id {
            command.args(["--chain-id", &chain_id.to_string()]);
        }
        let process = self
            .process
            .insert(Supervised::spawn("anvil", command, &log, &self.dir)?);
        let port = self.port;
        process.wait_ready(START_TIMEOUT, || {
            rpc_call(port, "eth_blockNumber", json!([]), Duration::from_secs(2)).is_ok()
        })
    }

    /// `http://127.0.0.1:PORT`, the node's JSON-RPC URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The options it runs with.
    pub fn options(&self) -> &AnvilOptions {
        &self.options
    }

    /// The current run's log file, `None` while stopped.
    pub fn log_path(&self) -> Option<&Path> {
        self.process.as_ref().map(Supervised::log)
    }

    /// Whether the node is running.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Kills the node; its port then refuses connections. Does nothing when stopped.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(None, Duration::ZERO);
        }
    }

    /// Stops the node (if running) and starts a fresh one, at block 0, on the same port.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        let mut last_error = None;
        // The port was just released; it may linger briefly.
        for _ in 0..5 {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(error) => {
                    let retry = matches!(error, Error::Exited { .. })
                        && self
                            .process
                            .as_ref()
                            .is_some_and(|p| address_in_use(p.log()));
                    self.process = None;
                    if !retry {
                        return Err(report_failure(&mut self.dir, error));
                    }
                    last_error = Some(error);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Err(report_failure(
            &mut self.dir,
            last_error.unwrap_or_else(|| {
                Error::io("restarting anvil", std::io::Error::other("no attempt made"))
            }),
        ))
    }

    /// Calls a JSON-RPC method and returns its `result`.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, Error> {
        rpc_call(self.port, method, params, RPC_TIMEOUT)
    }

    /// Mines `blocks` blocks at once (`anvil_mine`).
    pub fn mine(&self, blocks: u64) -> Result<(), Error> {
        self.rpc("anvil_mine", json!([format!("{blocks:#x}")]))
            .map(|_| ())
    }

    /// The node's block height (`eth_blockNumber`).
    pub fn block_number(&self) -> Result<u64, Error> {
        let result = self.rpc("eth_blockNumber", json!([]))?;
        parse_quantity("eth_blockNumber", &result)
    }

    /// The node's chain id (`eth_chainId`).
    pub fn chain_id(&self) -> Result<u64, Error> {
        let result = self.rpc("eth_chainId", json!([]))?;
        parse_quantity("eth_chainId", &result)
    }
}

/// The platform binary behind npm's `node_modules/.bin/anvil` shim, when it is there: it
/// starts in a third of the time and without a node process in between.
fn native_binary(located: PathBuf) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let Some(bin_dir) = located
        .parent()
        .filter(|d| d.ends_with("node_modules/.bin"))
    else {
        return located;
    };
    let Some(modules) = bin_dir.parent() else {
        return located;
    };
    let Ok(entries) = std::fs::read_dir(modules.join("@foundry-rs")) else {
        return located;
    };
    let mut natives: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("anvil-"))
        .map(|e| e.path().join("bin/anvil"))
        .filter(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect();
    natives.sort();
    // Only one platform package is installed; with several, the shim knows best.
    match natives.as_slice() {
        [native] => native.clone(),
        _ => located,
    }
}

fn parse_quantity(method: &str, value: &Value) -> Result<u64, Error> {
    value
        .as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| Error::Request {
            program: "anvil",
            request: method.to_owned(),
            message: format!("result {value} is not a hex quantity"),
        })
}

/// One JSON-RPC call to `127.0.0.1:port`.
fn rpc_call(port: u16, method: &str, params: Value, timeout: Duration) -> Result<Value, Error> {
    let failed = |message: String| Error::Request {
        program: "anvil",
        request: method.to_owned(),
        message,
    };
    let mut body = json!({"jsonrpc": "2.0", "id": 1, "method": method});
    body["params"] = params;
    let response = http::ok(
        "anvil",
        method,
        http::request(
            port,
            "POST",
            "/",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
            timeout,
        ),
    )?;
    let answer: Value = serde_json::from_slice(&response.body)
        .map_err(|e| failed(format!("answer is not JSON ({e}): {}", response.text())))?;
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        return Err(failed(format!("JSON-RPC error {error}")));
    }
    answer
        .get("result")
        .cloned()
        .ok_or_else(|| failed(format!("answer has no result: {answer}")))
}

impl Drop for Anvil {
    fn drop(&mut self) {
        self.stop();
    }
}
