//! Finding programs, and supervising one process: log file, readiness wait, process-group
//! kill on drop, and a watchdog that cleans up if the owner dies without dropping.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::Error;

/// The repository's tool directories, where `scripts/install-deps.sh` installs (the Python
/// tools' virtual environment, then npm's): searched before `PATH`, and put in front of it for
/// the programs the local stack runs ([`crate::tool_path`]). `scripts/env.sh` does the same for
/// the scripts.
pub(crate) const TOOL_DIRS: [&str; 2] = [".tools/venv/bin", ".tools/node/node_modules/.bin"];

/// How to find one program.
pub(crate) struct Program {
    /// Human name, used in messages.
    pub name: &'static str,
    /// Environment variable that overrides the path.
    pub env_var: &'static str,
    /// File name looked up in the repository's [`TOOL_DIRS`] and in `PATH`.
    pub file_name: &'static str,
    /// Further absolute paths to try after `PATH` (e.g. `/usr/sbin/nginx`).
    pub fallbacks: &'static [&'static str],
}

/// The Python that runs the stand-ins written in Python (moto, the CloudWatch recorder): the
/// tools' virtual environment's, where moto and cbor2 are installed.
pub(crate) const PYTHON: Program = Program {
    name: "python3",
    env_var: "PYTHON_BIN",
    file_name: "python3",
    fallbacks: &["/usr/bin/python3"],
};

impl Program {
    /// The program's path: the override, the repository's tools, `PATH`, the fallbacks.
    pub fn locate(&self) -> Result<PathBuf, Error> {
        self.locate_with(crate::repo_file_candidates)
    }

    /// [`Program::locate`], with the repository's files at `candidates(relative path)`.
    fn locate_with(&self, candidates: impl Fn(&str) -> Vec<PathBuf>) -> Result<PathBuf, Error> {
        let mut looked = Vec::new();
        if let Some(path) = std::env::var_os(self.env_var).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            if is_executable(&path) {
                return Ok(path);
            }
            looked.push(format!("${}={}", self.env_var, path.display()));
        } else {
            looked.push(format!("${} (unset)", self.env_var));
        }
        for dir in TOOL_DIRS {
            let candidates = candidates(&format!("{dir}/{}", self.file_name));
            if let Some(path) = candidates.iter().find(|p| is_executable(p)) {
                return Ok(path.clone());
            }
            if let Some(first) = candidates.first() {
                looked.push(first.display().to_string());
            }
        }
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let path = dir.join(self.file_name);
                if is_executable(&path) {
                    return Ok(path);
                }
            }
        }
        looked.push(format!("{} in PATH", self.file_name));
        for fallback in self.fallbacks {
            let path = PathBuf::from(fallback);
            if is_executable(&path) {
                return Ok(path);
            }
            looked.push((*fallback).to_owned());
        }
        Err(Error::NotFound {
            program: self.name,
            env_var: self.env_var,
            looked: looked.join(", "),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A file in a work directory that says: keep it (a start failed, or logs were asked for).
const KEEP_MARKER: &str = ".keep";

/// A temporary directory for logs (and nginx's prefix) that is kept, not deleted, when a
/// start fails or `DEVSTACK_KEEP_LOGS` is set, so its logs can be read.
#[derive(Debug)]
pub(crate) struct WorkDir {
    dir: TempDir,
}

impl WorkDir {
    /// A fresh directory under the system temporary directory, named after `program`.
    pub fn new(program: &str) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("devstack-{program}-"))
            .tempdir()
            .map_err(|e| Error::io(format!("creating a temporary directory for {program}"), e))?;
        let mut dir = Self { dir };
        if std::env::var_os("DEVSTACK_KEEP_LOGS").is_some_and(|v| !v.is_empty()) {
            dir.keep();
        }
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory after drop, and tells the watchdogs not to remove it either.
    pub fn keep(&mut self) {
        self.dir.disable_cleanup(true);
        let _ = File::create(self.dir.path().join(KEEP_MARKER));
    }
}

/// One running program, killed with its process group when dropped.
#[derive(Debug)]
pub(crate) struct Supervised {
    name: String,
    child: Option<Child>,
    watchdog: Option<Child>,
    log: PathBuf,
}

impl Supervised {
    /// Starts `command` in a new process group with stdout and stderr appended to `log`.
    /// Should the owner die without dropping the handle, the watchdog kills the group and
    /// removes `dir` (unless it is marked to be kept).
    pub fn spawn(
        name: &str,
        mut command: Command,
        log: &Path,
        dir: &WorkDir,
    ) -> Result<Self, Error> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening the log file {}", log.display()), e))?;
        let file_err = file
            .try_clone()
            .map_err(|e| Error::io("duplicating a log file handle", e))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file_err))
            .process_group(0);
        let program = PathBuf::from(command.get_program());
        let child = command.spawn().map_err(|source| Error::Spawn {
            program: name.to_owned(),
            path: program,
            source,
        })?;
        let watchdog = spawn_watchdog(child.id(), dir.path());
        tracing::debug!(program = name, pid = child.id(), log = %log.display(), "started");
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            watchdog,
            log: log.to_owned(),
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` when the process has exited.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            None => Some("not running".into()),
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(format!("unknown status: {e}")),
        }
    }

    /// Waits until `ready` returns true, the process exits, or `timeout` passes.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Err(Error::Exited {
                    program: self.name.clone(),
                    status,
                    log: self.log.clone(),
                    tail: log_tail(&self.log),
                });
            }
            if ready() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(Error::NotReady {
                    program: self.name.clone(),
                    waited: timeout,
                    log: self.log.clone(),
                    tail: log_tail(&self.log),
                });
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Sends `signal` to the process (not its group).
    pub fn signal(&self, signal: i32) -> bool {
        match self.pid().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) with a pid we own; no memory is involved.
            Some(pid) => unsafe { libc::kill(pid, signal) == 0 },
            None => false,
        }
    }

    /// Sends `signal` to the process, waits up to `grace` for it to exit, then kills the
    /// whole process group and reaps the process.
    pub fn stop(&mut self, signal: Option<i32>, grace: Duration) {
        if let Some(signal) = signal {
            if self.signal(signal) {
                let deadline = Instant::now() + grace;
                while let Some(child) = self.child.as_mut() {
                    if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            if let Ok(pgid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the process group we created; no memory is involved.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            // Grandchildren (anvil's real binary under its node wrapper, nginx's workers) die
            // asynchronously; their sockets close only when they are gone.
            if let Ok(pgid) = i32::try_from(child.id()) {
                wait_group_gone(pgid, Duration::from_secs(3));
            }
            tracing::debug!(program = %self.name, "stopped");
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(None, Duration::ZERO);
    }
}

/// Whether a live (not zombie) process is in process group `pgid`. Reads `/proc`; where
/// there is none, asks kill(2) (which also counts zombies).
fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // SAFETY: kill(2) with signal 0 only checks for existence.
        return unsafe { libc::kill(-pgid, 0) } == 0;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        group == Some(pgid) && state != "Z" && state != "X"
    })
}

/// Waits until no live process is left in group `pgid`, at most `timeout`.
fn wait_group_gone(pgid: i32, timeout: Duration) {
    let started = Instant::now();
    while group_alive(pgid) {
        if started.elapsed() >= timeout {
            tracing::warn!(pgid, "processes of the group outlived SIGKILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `sh` that, as soon as this process is gone, kills process group `pgid` and removes
/// the work directory `dir` (unless it holds the keep marker), so that nothing outlives an
/// owner that died or exited without running destructors (a handle in a `static`).
fn spawn_watchdog(pgid: u32, dir: &Path) -> Option<Child> {
    // dash's kill takes "-PGID" without "--".
    let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
kill -9 "-$2" 2>/dev/null
case "$3" in
  */devstack-*) [ -e "$3/.keep" ] || rm -rf -- "$3" ;;
esac"#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("devstack-watchdog")
        .arg(std::process::id().to_string())
        .arg(pgid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| tracing::warn!(error = %e, "cannot start the watchdog"))
        .ok()
}

/// The last 3 000 bytes of a log file, or a note why it cannot be read.
pub(crate) fn log_tail(path: &Path) -> String {
    const TAIL: u64 = 3000;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => "(log is empty)".into(),
        Ok(text) => text,
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// Reports a failed start: prints the log path (it is kept) and returns the error.
pub(crate) fn report_failure(dir: &mut WorkDir, error: Error) -> Error {
    dir.keep();
    eprintln!(
        "devstack: {error}\ndevstack: logs kept in {}",
        dir.path().display()
    );
    error
}

/// Whether a log says the program could not bind its port (another process took it).
pub(crate) fn address_in_use(log: &Path) -> bool {
    let tail = log_tail(log).to_ascii_lowercase();
    tail.contains("address already in use") || tail.contains("addrinuse")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_names_the_fix() {
        let program = Program {
            name: "no-such-tool",
            env_var: "DEVSTACK_TEST_NO_SUCH_TOOL_BIN",
            file_name: "devstack-no-such-tool",
            fallbacks: &["/nonexistent/no-such-tool"],
        };
        let message = program.locate().unwrap_err().to_string();
        assert!(message.starts_with("no-such-tool not found"), "{message}");
        assert!(message.contains("scripts/install-deps.sh"), "{message}");
        assert!(
            message.contains("DEVSTACK_TEST_NO_SUCH_TOOL_BIN"),
            "{message}"
        );
        assert!(message.contains("/nonexistent/no-such-tool"), "{message}");
        assert!(
            message.contains(".tools/venv/bin/devstack-no-such-tool"),
            "{message}"
        );
    }

    #[test]
    fn the_repository_tools_come_before_path() {
        use std::os::unix::fs::PermissionsExt;
        let repo = tempfile::tempdir().unwrap();
        let program = Program {
            name: "sh",
            env_var: "DEVSTACK_TEST_NO_SUCH_SH_BIN",
            file_name: "sh",
            fallbacks: &[],
        };
        let in_repo = |relative: &str| vec![repo.path().join(relative)];
        assert!(!program
            .locate_with(in_repo)
            .unwrap()
            .starts_with(repo.path()));
        for dir in TOOL_DIRS.iter().rev() {
            let tool = repo.path().join(dir).join("sh");
            std::fs::create_dir_all(repo.path().join(dir)).unwrap();
            std::fs::write(&tool, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(program.locate_with(in_repo).unwrap(), tool);
        }
    }

    #[test]
    fn programs_are_found_in_path() {
        let program = Program {
            name: "sh",
            env_var: "DEVSTACK_TEST_NO_SUCH_SH_BIN",
            file_name: "sh",
            fallbacks: &[],
        };
        assert!(program.locate().unwrap().ends_with("sh"));
    }

    #[test]
    fn exited_processes_report_their_log() {
        let dir = WorkDir::new("unit").unwrap();
        let log = dir.path().join("x.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo boom: address already in use >&2; exit 3"]);
        let mut process = Supervised::spawn("sh", command, &log, &dir).unwrap();
        let error = process
            .wait_ready(Duration::from_secs(5), || false)
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("exited during startup"), "{message}");
        assert!(message.contains("boom"), "{message}");
        assert!(address_in_use(&log));
    }

    #[test]
    fn slow_processes_time_out_and_are_killed() {
        let dir = WorkDir::new("unit").unwrap();
        let log = dir.path().join("x.log");
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 30 & sleep 30"]);
        let mut process = Supervised::spawn("sleeper", command, &log, &dir).unwrap();
        let pid = process.pid().unwrap();
        let error = process
            .wait_ready(Duration::from_millis(200), || false)
            .unwrap_err();
        assert!(matches!(error, Error::NotReady { .. }), "{error}");
        drop(process);
        // The whole group is gone: no process is left in it.
        let group = i32::try_from(pid).unwrap();
        assert!(
            !group_alive(group),
            "process group {group} still has live members"
        );
    }
}
