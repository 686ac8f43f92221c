//! What the bench reads from the operating system: memory of a process, open-file limits,
//! the machine it runs on and how busy it is.

use std::path::{Path, PathBuf};

/// One `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`, …) in KiB; `None` when the
/// process is gone or the field is missing.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kb(&text, field)
}

/// One `kB` field of this process's `/proc/self/status`.
pub fn self_status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    status_field_kb(&text, field)
}

/// Peak resident set of this process in KiB (`getrusage`), which needs no file descriptor.
pub fn self_max_rss_kb() -> u64 {
    // SAFETY: getrusage only writes the struct passed by pointer; zeroed is a valid rusage.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0 {
            u64::try_from(usage.ru_maxrss).unwrap_or(0)
        } else {
            0
        }
    }
}

/// Parses `Field:    1234 kB` out of a `/proc/<pid>/status` text.
pub fn status_field_kb(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Raises this process's open-file limit: the soft limit to `wanted` (or to the hard limit
/// when `wanted` is `None`), raising the hard limit too when allowed (root). Returns the soft
/// limit now in force.
pub fn set_nofile(wanted: Option<u64>) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let target = wanted.unwrap_or(limit.rlim_max.max(65_536));
        if target > limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: target,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return target;
            }
        }
        let soft = libc::rlimit {
            rlim_cur: target.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return soft.rlim_cur;
        }
        limit.rlim_cur
    }
}

/// The machine: logical CPUs, CPU model, memory, kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Machine {
    /// `nproc`.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `MemTotal` in MiB.
    pub memory_mib: u64,
    /// `uname -r`.
    pub kernel: String,
}

impl Machine {
    /// Reads `/proc`.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            memory_mib: status_field_kb(&meminfo, "MemTotal").unwrap_or(0) / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// `/proc/loadavg`'s three averages.
pub fn load_average() -> Option<(f64, f64, f64)> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    Some((
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ))
}

/// The cargo target directory: `$CARGO_TARGET_DIR`, else the one this executable was built
/// into (`<target>/release/jsonrpc-proxy-bench`), else `<repo>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = exe_dir();
    if exe.ends_with("release") || exe.ends_with("debug") {
        if let Some(parent) = exe.parent() {
            return parent.to_path_buf();
        }
    }
    devstack::repo_root().join("target")
}

/// The directory holding this executable (`target/release` when built with `--release`).
pub fn exe_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| devstack::repo_root().join("target/release"))
}

/// The processes of a process group, each with its CPU time so far (utime + stime, ticks).
pub fn group_processes(pgid: u32) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (group, cpu) = parse_stat(&stat)?;
            (group == pgid).then_some((pid, cpu))
        })
        .collect()
}

/// CPU time (user + system, seconds) used so far by every process of a process group.
pub fn group_cpu_seconds(pgid: u32) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let total: u64 = group_processes(pgid).iter().map(|&(_, cpu)| cpu).sum();
    total as f64 / ticks
}

/// Resident memory of every process of a process group, KiB.
pub fn group_rss_kb(pgid: u32) -> u64 {
    group_processes(pgid)
        .iter()
        .map(|&(pid, _)| proc_status_kb(pid, "VmRSS").unwrap_or(0))
        .sum()
}

/// `(process group, utime + stime in ticks)` from a `/proc/<pid>/stat` line.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); pgrp is field 5, utime 14, stime 15.
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((pgrp, utime + stime))
}

/// Sends `signal` to a whole process group (a process started with `process_group(0)`).
pub fn kill_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_fields() {
        let text = "Name:\tx\nVmPeak:\t  2000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t  1000 kB\n";
        assert_eq!(status_field_kb(text, "VmHWM"), Some(1234));
        assert_eq!(status_field_kb(text, "VmRSS"), Some(1000));
        assert_eq!(status_field_kb(text, "VmSwap"), None);
    }

    #[test]
    fn parses_proc_stat() {
        let stat =
            "1234 (nginx: worker (x)) S 1 1230 1230 0 -1 4194624 100 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(stat), Some((1230, 10)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_the_cpu_model() {
        let text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: x\n";
        assert_eq!(
            cpu_model(text).as_deref(),
            Some("Intel(R) Xeon(R) Processor")
        );
    }
}
