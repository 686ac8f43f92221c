//! The peer of part 2: blutgang (a caching JSON-RPC load balancer from crates.io), installed by
//! `scripts/bench.sh` at a pinned version and run against the same nodes as our nginx.
//!
//! Its configuration is the example configuration of its release with the bench's address,
//! cache path and nodes; why each value is what it is: `docs/benchmarks.md`, part 2.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys;

/// The blutgang binary: `$BLUTGANG_BIN`, else where `scripts/bench.sh` installs it
/// (`$CARGO_TARGET_DIR/tools/bin/blutgang`).
pub fn binary() -> PathBuf {
    std::env::var_os("BLUTGANG_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| sys::target_dir().join("tools/bin/blutgang"))
}

/// `blutgang X.Y.Z` from what `blutgang --version` prints (`blutgang Blutgang 0.3.6 Garreg
/// Mach`), or why it could not be asked.
pub fn version(bin: &Path) -> Result<String, String> {
    let output = Command::new(bin).arg("--version").output().map_err(|e| {
        format!(
            "{} cannot run ({e}); scripts/bench.sh installs it",
            bin.display()
        )
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next().unwrap_or("").trim();
    if output.status.success() && !line.is_empty() {
        Ok(version_in(line))
    } else {
        Err(format!(
            "{} --version failed ({}): {}",
            bin.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// `blutgang X.Y.Z` when `line` holds a version number, else `line`.
fn version_in(line: &str) -> String {
    line.split_whitespace()
        .find(|word| {
            word.split('.').count() >= 2
                && word
                    .split('.')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map_or_else(|| line.to_owned(), |number| format!("blutgang {number}"))
}

/// Its `config.toml` for `port`, a cache under `dir` and `nodes` (JSON-RPC URLs).
pub fn config(port: u16, dir: &Path, nodes: &[String]) -> String {
    let mut out = format!(
        "[blutgang]
do_clear = false
address = \"127.0.0.1:{port}\"
ma_length = 100
sort_on_startup = true
health_check = true
header_check = true
ttl = 30
max_retries = 32
expected_block_time = 13000
health_check_ttl = 400
supress_rpc_check = false

[admin]
enabled = false
address = \"127.0.0.1:5715\"
readonly = true
jwt = false
key = \"\"

[sled]
db_path = \"{cache}\"
mode = \"HighThroughput\"
cache_capacity = 1000000000
compression = false
print_profile = false
flush_every_ms = 240
",
        cache = dir.join("cache").display()
    );
    for (index, url) in nodes.iter().enumerate() {
        out.push_str(&format!(
            "
[node{index}]
url = \"{url}\"
max_consecutive = 150
max_per_second = 0
"
        ));
    }
    out
}

/// A blutgang started by the bench in a directory of its own (config, cache, log); killed
/// on drop.
pub struct Blutgang {
    child: Child,
    dir: tempfile::TempDir,
}

impl Blutgang {
    /// Starts `bin` balancing over `nodes` on `port`; waits until the port accepts connections
    /// (it first measures each node's latency).
    pub fn start(bin: &Path, port: u16, nodes: &[String]) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("bench-blutgang-")
            .tempdir()
            .map_err(|e| format!("creating blutgang's directory: {e}"))?;
        let conf = dir.path().join("config.toml");
        std::fs::write(&conf, config(port, dir.path(), nodes))
            .map_err(|e| format!("writing {}: {e}", conf.display()))?;
        let log = std::fs::File::create(dir.path().join("blutgang.log"))
            .map_err(|e| format!("creating blutgang's log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("creating blutgang's log: {e}"))?;
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(bin)
                .arg("--config")
                .arg(&conf)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", bin.display()))?
        };
        let mut blutgang = Self { child, dir };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(blutgang);
            }
            if let Ok(Some(status)) = blutgang.child.try_wait() {
                return Err(format!(
                    "blutgang exited ({status}): {}",
                    blutgang.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "blutgang did not listen on {port} within 30 s: {}",
            blutgang.log_tail()
        ))
    }

    /// CPU seconds used so far by the process (all its threads).
    pub fn cpu_seconds(&self) -> f64 {
        sys::group_cpu_seconds(self.child.id())
    }

    /// The last lines of its output, for error messages.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("blutgang.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    }
}

impl Drop for Blutgang {
    fn drop(&mut self) {
        sys::kill_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_number_it_prints() {
        assert_eq!(
            version_in("blutgang Blutgang 0.3.6 Garreg Mach"),
            "blutgang 0.3.6"
        );
        assert_eq!(version_in("something else"), "something else");
    }

    #[test]
    fn the_config_lists_every_node_without_a_rate_limit() {
        let nodes = [
            "http://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2".to_owned(),
        ];
        let text = config(3000, Path::new("/tmp/x"), &nodes);
        assert!(text.contains("address = \"127.0.0.1:3000\""));
        assert!(text.contains("db_path = \"/tmp/x/cache\""));
        assert!(text.contains("[node0]\nurl = \"http://127.0.0.1:1\""));
        assert!(text.contains("[node1]\nurl = \"http://127.0.0.1:2\""));
        assert_eq!(text.matches("max_per_second = 0").count(), 2);
        // Table names blutgang reserves for itself are not used for nodes.
        for reserved in ["[blutgang]", "[admin]", "[sled]"] {
            assert_eq!(text.matches(reserved).count(), 1, "{reserved}");
        }
    }
}
