//! nginx's worker processes, read from `/proc`: which workers a master runs before a reload,
//! and when the reload has taken over from them (each one gone or shutting down, and a new
//! one running), which is when the agent calls a configuration applied. Parsing and the
//! decision are pure; why the agent waits is in docs/architecture.md, "Config agent".

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest wait for a reload to take over before the agent says it is not confirmed.
pub const RELOAD_CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

/// Pause between two looks at `/proc` while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot).
    pub start_time: u64,
}

/// What a worker does, by its process title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// `nginx: worker process`: it accepts new connections.
    Accepting,
    /// `nginx: worker process is shutting down`: set in the step that closes its listening
    /// sockets; it accepts nothing more and only finishes the requests it has.
    ShuttingDown,
}

/// The fields of `/proc/<pid>/stat` the agent reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `Z` (a zombie: exited, not yet reaped), ...
    pub state: char,
    /// Field 4: the parent's pid.
    pub ppid: u32,
    /// Field 22: when the process started.
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses,
/// so the fields are counted from its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // Fields 5 to 21 come first.
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        start_time,
    })
}

/// A worker's state from its `/proc/<pid>/cmdline` (the title nginx writes over its
/// arguments, padded with NULs); `None` for any other process (the master, the cache
/// manager, a process that has exited).
pub fn worker_state(cmdline: &[u8]) -> Option<WorkerState> {
    let title = cmdline.split(|byte| *byte == 0).next()?;
    match std::str::from_utf8(title).ok()?.trim_end() {
        "nginx: worker process" => Some(WorkerState::Accepting),
        "nginx: worker process is shutting down" => Some(WorkerState::ShuttingDown),
        _ => None,
    }
}

/// Where a reload stands against the workers that ran before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Workers from before the reload that still accept connections.
    pub old_accepting: usize,
    /// Workers started since that accept connections.
    pub new_accepting: usize,
}

impl Progress {
    /// Counts `now` against the workers `before` the reload.
    pub fn of(before: &BTreeSet<ProcessId>, now: &[(ProcessId, WorkerState)]) -> Self {
        let accepting = now.iter().filter(|(_, s)| *s == WorkerState::Accepting);
        let old_accepting = accepting
            .clone()
            .filter(|(id, _)| before.contains(id))
            .count();
        Self {
            old_accepting,
            new_accepting: accepting.count() - old_accepting,
        }
    }

    /// Whether the reload has taken over: every worker from before is gone or shutting down
    /// (a new connection can only reach the new configuration), and a new one runs.
    pub fn taken_over(&self) -> bool {
        self.old_accepting == 0 && self.new_accepting > 0
    }
}

/// The workers whose parent is `master`, from the `/proc` directory `proc` (zombies left
/// out: they have exited).
pub fn workers_in(proc: &Path, master: u32) -> std::io::Result<Vec<(ProcessId, WorkerState)>> {
    let mut workers = Vec::new();
    for entry in std::fs::read_dir(proc)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and the reads: then it is no worker.
        let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|text| parse_stat(&text))
        else {
            continue;
        };
        if stat.ppid != master || matches!(stat.state, 'Z' | 'X' | 'x') {
            continue;
        }
        let Some(state) = std::fs::read(entry.path().join("cmdline"))
            .ok()
            .and_then(|cmdline| worker_state(&cmdline))
        else {
            continue;
        };
        workers.push((
            ProcessId {
                pid,
                start_time: stat.start_time,
            },
            state,
        ));
    }
    Ok(workers)
}

/// The reload was not confirmed in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unconfirmed {
    /// nginx's master process could not be found.
    Master(String),
    /// `/proc` could not be read.
    Proc(String),
    /// nginx's master process is gone.
    MasterGone(u32),
    /// The wait expired.
    Expired {
        /// How long the agent waited.
        waited: Duration,
        /// Where the reload stood then.
        progress: Progress,
    },
}

impl fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Master(message) => write!(f, "cannot find nginx's master process: {message}"),
            Self::Proc(message) => write!(f, "cannot read nginx's workers: {message}"),
            Self::MasterGone(pid) => write!(f, "nginx's master process {pid} is gone"),
            Self::Expired { waited, progress } => write!(
                f,
                "after {:.1} s, {} worker(s) of the previous configuration still accept \
                 connections and {} of the new one run",
                waited.as_secs_f64(),
                progress.old_accepting,
                progress.new_accepting
            ),
        }
    }
}

/// A reload to confirm: nginx's master and the workers it ran before the signal.
#[derive(Debug, Clone)]
pub struct ReloadWatch {
    proc: PathBuf,
    master: u32,
    before: BTreeSet<ProcessId>,
}

impl ReloadWatch {
    /// Notes the workers of `master` (from `/proc`); call it before signalling the reload.
    pub fn before_reload(master: u32) -> Result<Self, Unconfirmed> {
        Self::in_proc(PathBuf::from("/proc"), master)
    }

    /// [`ReloadWatch::before_reload`] over the `/proc` directory `proc`.
    fn in_proc(proc: PathBuf, master: u32) -> Result<Self, Unconfirmed> {
        let before = workers_in(&proc, master)
            .map_err(|e| Unconfirmed::Proc(e.to_string()))?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        Ok(Self {
            proc,
            master,
            before,
        })
    }

    /// Waits, at most `timeout` and looking every 25 ms, until the reload has taken over
    /// ([`Progress::taken_over`]); returns how long that took.
    pub async fn wait(&self, timeout: Duration) -> Result<Duration, Unconfirmed> {
        let started = Instant::now();
        loop {
            let now = workers_in(&self.proc, self.master)
                .map_err(|e| Unconfirmed::Proc(e.to_string()))?;
            let progress = Progress::of(&self.before, &now);
            if progress.taken_over() {
                return Ok(started.elapsed());
            }
            if !self.proc.join(self.master.to_string()).exists() {
                return Err(Unconfirmed::MasterGone(self.master));
            }
            if started.elapsed() >= timeout {
                return Err(Unconfirmed::Expired {
                    waited: started.elapsed(),
                    progress,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (nginx) S 4200 4200 4200 0 -1 4194624 150 0 0 0 0 0 0 0 20 0 1 0 \
                        987654 12345678 900 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 \
                        1 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_counted_from_the_command_name() {
        assert_eq!(
            parse_stat(STAT),
            Some(Stat {
                state: 'S',
                ppid: 4200,
                start_time: 987654
            })
        );
        let odd_name = STAT.replace("(nginx)", "(a) b (c))");
        assert_eq!(parse_stat(&odd_name).map(|s| s.ppid), Some(4200));
        assert_eq!(parse_stat("4242 (nginx) S 4200"), None);
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("4242 (nginx) S x 1"), None);
    }

    #[test]
    fn worker_titles() {
        let padded = |title: &str| {
            let mut bytes = title.as_bytes().to_vec();
            bytes.extend([0; 40]);
            bytes
        };
        assert_eq!(
            worker_state(&padded("nginx: worker process")),
            Some(WorkerState::Accepting)
        );
        assert_eq!(
            worker_state(&padded("nginx: worker process is shutting down")),
            Some(WorkerState::ShuttingDown)
        );
        assert_eq!(
            worker_state(b"nginx: worker process"),
            Some(WorkerState::Accepting)
        );
        for other in [
            "nginx: master process /usr/sbin/nginx -g daemon off;",
            "nginx: cache manager process",
            "/usr/sbin/nginx",
            "",
        ] {
            assert_eq!(worker_state(&padded(other)), None, "{other:?}");
        }
        assert_eq!(worker_state(b"/usr/sbin/nginx\0-p\0/tmp\0"), None);
        assert_eq!(worker_state(b"\xff\xfe"), None);
    }

    fn id(pid: u32, start_time: u64) -> ProcessId {
        ProcessId { pid, start_time }
    }

    #[test]
    fn a_reload_takes_over_when_no_old_worker_accepts_and_a_new_one_does() {
        use WorkerState::{Accepting, ShuttingDown};
        let before: BTreeSet<_> = [id(10, 1), id(11, 1), id(9, 0)].into();
        let taken = |now: &[(ProcessId, WorkerState)]| Progress::of(&before, now).taken_over();
        // Just signalled: the old workers still accept (one was already leaving from an
        // earlier reload), the new ones start and accept beside them.
        let start = [(id(9, 0), ShuttingDown), (id(10, 1), Accepting)];
        assert!(!taken(&start));
        let both = [
            (id(10, 1), Accepting),
            (id(11, 1), Accepting),
            (id(12, 5), Accepting),
        ];
        assert!(!taken(&both));
        assert_eq!(
            Progress::of(&before, &both),
            Progress {
                old_accepting: 2,
                new_accepting: 1
            }
        );
        // One old worker still accepts.
        assert!(!taken(&[
            (id(10, 1), ShuttingDown),
            (id(11, 1), Accepting),
            (id(12, 5), Accepting),
        ]));
        // Every old worker leaving or gone, a new one accepting: taken over.
        assert!(taken(&[(id(10, 1), ShuttingDown), (id(12, 5), Accepting)]));
        assert!(taken(&[(id(13, 5), Accepting)]));
        // Old workers gone but no new one (nginx refused the configuration at reload, or
        // the new workers are not started yet): not yet.
        assert!(!taken(&[]));
        assert!(!taken(&[(id(12, 5), ShuttingDown)]));
        // A new worker that reuses an old pid is told apart by its start time.
        assert!(taken(&[(id(10, 7), Accepting)]));
        assert!(!taken(&[(id(10, 1), Accepting)]));
    }

    #[test]
    fn workers_are_the_masters_children_with_a_worker_title() {
        let proc = tempfile::tempdir().unwrap();
        let process = |pid: u32, ppid: u32, state: char, title: &str| {
            let dir = proc.path().join(pid.to_string());
            std::fs::create_dir(&dir).unwrap();
            let stat = STAT.replacen("4242", &pid.to_string(), 1).replacen(
                "S 4200",
                &format!("{state} {ppid}"),
                1,
            );
            std::fs::write(dir.join("stat"), stat).unwrap();
            std::fs::write(dir.join("cmdline"), format!("{title}\0\0\0")).unwrap();
        };
        process(100, 1, 'S', "nginx: master process nginx");
        process(101, 100, 'S', "nginx: worker process");
        process(102, 100, 'S', "nginx: worker process is shutting down");
        process(103, 100, 'S', "nginx: cache manager process");
        process(104, 100, 'Z', "");
        process(105, 7, 'S', "nginx: worker process");
        std::fs::create_dir(proc.path().join("106")).unwrap(); // ended while listed
        std::fs::create_dir(proc.path().join("self")).unwrap();
        let mut workers = workers_in(proc.path(), 100).unwrap();
        workers.sort_by_key(|(id, _)| *id);
        assert_eq!(
            workers,
            [
                (id(101, 987654), WorkerState::Accepting),
                (id(102, 987654), WorkerState::ShuttingDown)
            ]
        );
        assert!(workers_in(&proc.path().join("missing"), 100).is_err());
    }

    #[tokio::test]
    async fn the_wait_ends_when_the_reload_takes_over_or_expires() {
        let proc = tempfile::tempdir().unwrap();
        let process = |pid: u32, ppid: u32, title: &str| {
            let dir = proc.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let stat = STAT.replacen("4242", &pid.to_string(), 1).replacen(
                "S 4200",
                &format!("S {ppid}"),
                1,
            );
            std::fs::write(dir.join("stat"), stat).unwrap();
            std::fs::write(dir.join("cmdline"), format!("{title}\0")).unwrap();
        };
        process(100, 1, "nginx: master process nginx");
        process(101, 100, "nginx: worker process");
        let watch = ReloadWatch::in_proc(proc.path().to_owned(), 100).unwrap();
        let short = Duration::from_millis(60);
        assert!(matches!(
            watch.wait(short).await,
            Err(Unconfirmed::Expired {
                progress: Progress {
                    old_accepting: 1,
                    new_accepting: 0
                },
                ..
            })
        ));
        process(101, 100, "nginx: worker process is shutting down");
        process(102, 100, "nginx: worker process");
        assert!(watch.wait(short).await.is_ok());
        std::fs::remove_dir_all(proc.path().join("100")).unwrap();
        std::fs::remove_dir_all(proc.path().join("102")).unwrap();
        assert_eq!(watch.wait(short).await, Err(Unconfirmed::MasterGone(100)));
    }

    #[test]
    fn unconfirmed_reloads_say_why() {
        let expired = Unconfirmed::Expired {
            waited: Duration::from_millis(15_020),
            progress: Progress {
                old_accepting: 2,
                new_accepting: 0,
            },
        };
        assert_eq!(
            expired.to_string(),
            "after 15.0 s, 2 worker(s) of the previous configuration still accept connections \
             and 0 of the new one run"
        );
        assert_eq!(
            Unconfirmed::MasterGone(7).to_string(),
            "nginx's master process 7 is gone"
        );
    }
}
