//! The agent's two modes: `run` (the container's entrypoint) and `apply` (one update of a
//! running nginx).

use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};

use crate::install::{ensure_socket_dir, remove_stale_sockets, InstallError, Installer};
use crate::nginx::NginxError;
use crate::settings::{AgentSettings, S3Location};
use crate::source::{ConfigFetcher, FetchError, FetchedConfig};
use crate::status::{ConfigStatus, StatusReporter};
use crate::usage::UsageReporter;
use crate::workers::{ReloadWatch, Unconfirmed, RELOAD_CONFIRM_TIMEOUT};

/// The configuration nginx runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Where it came from; `None` for the default configuration.
    pub location: Option<S3Location>,
    /// SHA-256 of its text, hex.
    pub sha256: String,
}

impl Applied {
    /// A label for logs: the S3 location, or `default`.
    pub fn label(&self) -> String {
        self.location
            .as_ref()
            .map_or_else(|| "default".to_owned(), ToString::to_string)
    }
}

/// How often and how patiently the first fetch is tried when S3 fails (not when an object is
/// missing or invalid: that does not change by waiting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Pauses between attempts; one attempt more than pauses.
    pub pauses: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            pauses: vec![Duration::from_secs(1), Duration::from_secs(3)],
        }
    }
}

/// The agent failed.
#[derive(Debug, Error)]
pub enum AgentError {
    /// No configuration could be fetched.
    #[error("cannot fetch a configuration: {0}")]
    Fetch(String),
    /// The configuration was not installed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// nginx could not be reloaded (the new configuration is installed).
    #[error("the configuration is installed but nginx was not reloaded: {0}")]
    Reload(NginxError),
    /// nginx was told to reload, but its workers of the previous configuration were not seen
    /// to stop accepting connections.
    #[error("the configuration is installed and nginx was told to reload, but it is not confirmed in force: {0}")]
    Unconfirmed(Unconfirmed),
    /// Even the default configuration is refused: nginx itself is misconfigured.
    #[error("the default configuration is refused too, nginx cannot start: {0}")]
    DefaultRefused(InstallError),
    /// nginx could not be started or supervised.
    #[error("cannot run nginx: {0}")]
    Process(String),
}

/// What one pointer check found.
#[derive(Debug)]
pub enum CheckOutcome {
    /// Nothing new (or only what was refused before).
    Unchanged,
    /// A new configuration is installed; nginx must reload.
    Installed(Applied),
    /// A new configuration was refused; the last good one stays.
    Refused {
        /// Its checksum, not to be tried again.
        sha256: String,
    },
    /// The pointer or the configuration could not be read; tried again next time.
    Failed,
}

/// The agent: settings, an S3 fetcher and the installer.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The settings.
    pub settings: AgentSettings,
    /// Reads S3.
    pub fetcher: ConfigFetcher,
    /// Writes and validates the configuration file.
    pub installer: Installer,
    /// First-fetch retries (run mode).
    pub retry: RetryPolicy,
    /// Publishes whether the configuration in force is the newest (run mode with polling).
    pub reporter: Option<StatusReporter>,
    /// Publishes the gate's usage per client (run mode).
    pub usage: Option<UsageReporter>,
}

impl Agent {
    /// An agent with the default retry policy.
    pub fn new(settings: AgentSettings, s3: aws_sdk_s3::Client) -> Self {
        let installer = Installer {
            config_path: settings.config_path.clone(),
            nginx: settings.nginx.clone(),
        };
        Self {
            settings,
            fetcher: ConfigFetcher::new(s3),
            installer,
            retry: RetryPolicy::default(),
            reporter: None,
            usage: None,
        }
    }

    /// Compares the configuration in force with the pointer, logs the result (hash, age, and
    /// how long a newer render has waited) and publishes it when a reporter is set.
    pub async fn report_status(&self, applied_sha256: &str) -> Option<ConfigStatus> {
        let location = self.settings.sources.pointer.as_ref()?;
        let pointer = self.fetcher.pointer(location).await.ok().flatten();
        let status = ConfigStatus::evaluate(
            applied_sha256,
            pointer.as_ref(),
            time::OffsetDateTime::now_utc(),
        );
        match status.current {
            Some(false) => tracing::warn!(
                sha256 = %status.applied_sha256,
                newest_waiting_secs = ?status.staleness_secs,
                "the configuration in force is not the newest render"
            ),
            _ => tracing::info!(
                sha256 = %status.applied_sha256,
                age_secs = ?status.age_secs,
                "configuration in force is the newest render"
            ),
        }
        if let Some(reporter) = &self.reporter {
            reporter.publish(&status).await;
        }
        Some(status)
    }

    fn prepare_socket_dir(&self) {
        if let Err(error) = ensure_socket_dir(&self.settings.socket_dir) {
            tracing::warn!(dir = %self.settings.socket_dir.display(), %error, "cannot create the socket directory; configurations that use it will be refused");
        }
    }

    /// Start-up: installs the configuration to run (the explicit one, else the pointer's,
    /// else the default 404 server) and says why when it falls back. Fails only when nginx
    /// refuses even the default configuration.
    pub async fn prepare(&self) -> Result<Applied, AgentError> {
        self.prepare_socket_dir();
        match self.fetch_initial().await {
            Ok(fetched) => match self.installer.install(&fetched.text).await {
                Ok(()) => {
                    let applied = Applied {
                        location: Some(fetched.location),
                        sha256: fetched.sha256,
                    };
                    tracing::info!(config = %applied.label(), sha256 = %applied.sha256, "configuration installed");
                    return Ok(applied);
                }
                Err(error) => tracing::error!(
                    config = %fetched.location, %error,
                    "configuration refused; starting on the default 404 configuration"
                ),
            },
            Err(reason) => tracing::warn!(
                %reason,
                "no usable configuration; starting on the default 404 configuration"
            ),
        }
        let default = self.settings.default_config.as_bytes();
        self.installer
            .install(default)
            .await
            .map_err(AgentError::DefaultRefused)?;
        Ok(Applied {
            location: None,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(default)),
        })
    }

    /// The configuration to start with: the explicit path, else the pointer's target.
    async fn fetch_initial(&self) -> Result<FetchedConfig, String> {
        let sources = &self.settings.sources;
        let mut reasons = Vec::new();
        if let Some(location) = &sources.config {
            match self.with_retries(|| self.fetcher.fetch(location)).await {
                Ok(fetched) => return Ok(fetched),
                Err(error) => {
                    tracing::warn!(config = %location, %error, "cannot fetch the configuration");
                    reasons.push(error.to_string());
                }
            }
        }
        if let Some(pointer_location) = &sources.pointer {
            let fetched = async {
                let pointer = self
                    .with_retries(|| self.fetcher.pointer(pointer_location))
                    .await?
                    .ok_or_else(|| {
                        FetchError::Missing(format!("{pointer_location} (nothing rendered yet)"))
                    })?;
                self.with_retries(|| self.fetcher.fetch_pointed(pointer_location, &pointer))
                    .await
            }
            .await;
            match fetched {
                Ok(fetched) => return Ok(fetched),
                Err(error) => reasons.push(error.to_string()),
            }
        }
        if reasons.is_empty() {
            reasons.push("neither S3_CONFIG_PATH nor CONFIG_POINTER_PATH is set".into());
        }
        Err(reasons.join("; "))
    }

    async fn with_retries<'a, T, F, Fut>(&'a self, attempt: F) -> Result<T, FetchError>
    where
        F: Fn() -> Fut + 'a,
        Fut: Future<Output = Result<T, FetchError>> + 'a,
    {
        let mut pauses = self.retry.pauses.iter();
        loop {
            match attempt().await {
                Err(error) if error.is_transient() => match pauses.next() {
                    Some(pause) => {
                        tracing::warn!(%error, retry_in = ?pause, "S3 failed; trying again");
                        tokio::time::sleep(*pause).await;
                    }
                    None => return Err(error),
                },
                other => return other,
            }
        }
    }

    /// `apply`: fetches the configuration (the explicit path, else the pointer's target),
    /// installs it if `nginx -t` accepts it, reloads nginx and waits until nginx serves it
    /// (every worker of the previous configuration stopped accepting, a new one running;
    /// [`RELOAD_CONFIRM_TIMEOUT`] at most). On failure the previous configuration stays
    /// installed.
    pub async fn apply_once(&self, reload: bool) -> Result<Applied, AgentError> {
        self.prepare_socket_dir();
        let sources = &self.settings.sources;
        let fetched = match (&sources.config, &sources.pointer) {
            (Some(location), _) => self.fetcher.fetch(location).await,
            (None, Some(pointer_location)) => match self.fetcher.pointer(pointer_location).await {
                Ok(Some(pointer)) => self.fetcher.fetch_pointed(pointer_location, &pointer).await,
                Ok(None) => Err(FetchError::Missing(format!(
                    "{pointer_location} (nothing rendered yet)"
                ))),
                Err(error) => Err(error),
            },
            (None, None) => Err(FetchError::Missing("no S3 path or pointer given".into())),
        }
        .map_err(|e| AgentError::Fetch(e.to_string()))?;
        self.installer.install(&fetched.text).await?;
        let applied = Applied {
            location: Some(fetched.location),
            sha256: fetched.sha256,
        };
        let mut took = None;
        if reload {
            // The master (from its pid file) and its workers, noted before the signal.
            let watch = match self.settings.nginx.master_pid().await {
                Ok(master) => ReloadWatch::before_reload(master),
                Err(message) => Err(Unconfirmed::Master(message)),
            };
            self.settings
                .nginx
                .reload()
                .await
                .map_err(AgentError::Reload)?;
            took = Some(
                self.confirm_reload(watch, &applied)
                    .await
                    .map_err(AgentError::Unconfirmed)?,
            );
        }
        tracing::info!(
            config = %applied.label(), sha256 = %applied.sha256, reloaded = reload,
            in_force_after_ms = took.map(|t| t.as_millis() as u64),
            "configuration applied"
        );
        Ok(applied)
    }

    /// Waits until the reload that followed `watch` has taken over: nginx serves `applied`
    /// on every new connection. Returns how long that took; logs a warning when it is not
    /// seen in time.
    async fn confirm_reload(
        &self,
        watch: Result<ReloadWatch, Unconfirmed>,
        applied: &Applied,
    ) -> Result<Duration, Unconfirmed> {
        let waited = match watch {
            Ok(watch) => watch.wait(RELOAD_CONFIRM_TIMEOUT).await,
            Err(error) => Err(error),
        };
        waited.inspect_err(|reason| {
            tracing::warn!(
                config = %applied.label(), %reason,
                "the configuration is installed, but nginx's workers of the previous one may still accept connections: not confirmed as applied"
            );
        })
    }

    /// One pointer check: when the pointer names a configuration with other content than
    /// `current` (and not one refused before), fetch, validate and install it.
    pub async fn check_pointer(&self, current: &Applied, refused: Option<&str>) -> CheckOutcome {
        let Some(pointer_location) = &self.settings.sources.pointer else {
            return CheckOutcome::Unchanged;
        };
        let pointer = match self.fetcher.pointer(pointer_location).await {
            Ok(Some(pointer)) => pointer,
            Ok(None) => return CheckOutcome::Unchanged,
            Err(error) => {
                tracing::warn!(pointer = %pointer_location, %error, "cannot read the pointer; trying again later");
                return CheckOutcome::Failed;
            }
        };
        if pointer.sha256.eq_ignore_ascii_case(&current.sha256)
            || refused.is_some_and(|r| pointer.sha256.eq_ignore_ascii_case(r))
        {
            return CheckOutcome::Unchanged;
        }
        let fetched = match self.fetcher.fetch_pointed(pointer_location, &pointer).await {
            Ok(fetched) => fetched,
            Err(error) if error.is_transient() => {
                tracing::warn!(key = %pointer.key, %error, "cannot fetch the new configuration; trying again later");
                return CheckOutcome::Failed;
            }
            Err(error) => {
                tracing::error!(key = %pointer.key, %error, "new configuration unusable; keeping {}", current.label());
                return CheckOutcome::Refused {
                    sha256: pointer.sha256,
                };
            }
        };
        match self.installer.install(&fetched.text).await {
            Ok(()) => CheckOutcome::Installed(Applied {
                location: Some(fetched.location),
                sha256: fetched.sha256,
            }),
            Err(error) => {
                tracing::error!(config = %fetched.location, %error, "new configuration refused; keeping {}", current.label());
                CheckOutcome::Refused {
                    sha256: fetched.sha256,
                }
            }
        }
    }

    /// `run` without polling: prepares, then replaces this process with nginx in the
    /// foreground (nginx gets the container's signals itself). Returns only on failure.
    pub async fn run_exec(&self) -> AgentError {
        if let Err(error) = self.prepare().await {
            return error;
        }
        self.clear_stale_sockets();
        use std::os::unix::process::CommandExt as _;
        let error = self.settings.nginx.foreground().exec();
        AgentError::Process(format!(
            "exec {}: {error}",
            self.settings.nginx.bin.display()
        ))
    }

    fn clear_stale_sockets(&self) {
        match remove_stale_sockets(&self.settings.socket_dir) {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "removed stale unix sockets"),
            Err(error) => tracing::warn!(%error, "cannot clear the socket directory"),
        }
    }

    /// `run` with polling or usage publication: prepares, starts nginx in the foreground as a
    /// child, forwards SIGTERM, SIGQUIT, SIGINT and SIGHUP to it, every `poll` checks the
    /// pointer, installing a new valid configuration with a graceful reload (SIGHUP), and every
    /// `usage_every` publishes the gate's usage (with [`Agent::usage`] set). The two run side
    /// by side: a slow one never delays the other. A reloaded configuration counts as in force
    /// once nginx serves it (as in [`Agent::apply_once`]); one that is not confirmed in time
    /// is tried again at the next poll. Returns nginx's exit status.
    pub async fn run_supervised(
        &self,
        poll: Option<Duration>,
        usage_every: Option<Duration>,
    ) -> Result<ExitStatus, AgentError> {
        let mut current = self.prepare().await?;
        self.clear_stale_sockets();
        let mut child = tokio::process::Command::from(self.settings.nginx.foreground())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                AgentError::Process(format!("{}: {e}", self.settings.nginx.bin.display()))
            })?;
        let pid = child
            .id()
            .ok_or_else(|| AgentError::Process("nginx exited at once".into()))?;
        tracing::info!(
            pid,
            poll_seconds = poll.map(|p| p.as_secs()),
            usage_seconds = usage_every.filter(|_| self.usage.is_some()).map(|u| u.as_secs()),
            config = %current.label(),
            "nginx started under the agent"
        );

        let signal_stream = |kind: SignalKind| {
            signal(kind).map_err(|e| AgentError::Process(format!("cannot handle signals: {e}")))
        };
        let mut terminate = signal_stream(SignalKind::terminate())?;
        let mut quit = signal_stream(SignalKind::quit())?;
        let mut interrupt = signal_stream(SignalKind::interrupt())?;
        let mut hangup = signal_stream(SignalKind::hangup())?;
        let mut ticker = poll.map(every);
        let mut usage_reporter = usage_every.and(self.usage.clone());
        let mut usage_ticker = usage_every.filter(|_| usage_reporter.is_some()).map(every);
        let mut usage_step: Option<Step<'_, UsageReporter>> = None;

        let mut refused: Option<String> = None;
        let mut stopping = false;
        let mut check: Option<Step<'_, CheckOutcome>> = None;
        // A reload being confirmed: the configuration, and how long nginx took to serve it
        // (`None`: not confirmed).
        let mut confirm: Option<Step<'_, (Applied, Option<Duration>)>> = None;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_err(|e| AgentError::Process(e.to_string()))?;
                    tracing::info!(%status, "nginx exited");
                    return Ok(status);
                }
                _ = terminate.recv() => { forward(pid, libc::SIGTERM, "SIGTERM"); stopping = true; }
                _ = quit.recv() => { forward(pid, libc::SIGQUIT, "SIGQUIT"); stopping = true; }
                _ = interrupt.recv() => { forward(pid, libc::SIGINT, "SIGINT"); stopping = true; }
                _ = hangup.recv() => forward(pid, libc::SIGHUP, "SIGHUP"),
                _ = tick(&mut ticker), if check.is_none() && confirm.is_none() && !stopping => {
                    let (current, refused) = (current.clone(), refused.clone());
                    check = Some(Box::pin(async move {
                        let outcome = self.check_pointer(&current, refused.as_deref()).await;
                        if !matches!(outcome, CheckOutcome::Installed(_)) {
                            self.report_status(&current.sha256).await;
                        }
                        outcome
                    }));
                }
                outcome = in_flight(&mut check), if check.is_some() => {
                    check = None;
                    match outcome {
                        CheckOutcome::Installed(applied) if !stopping => {
                            let watch = ReloadWatch::before_reload(pid);
                            forward(pid, libc::SIGHUP, "SIGHUP");
                            refused = None;
                            let previous = current.sha256.clone();
                            confirm = Some(Box::pin(async move {
                                let served = self.confirm_reload(watch, &applied).await.ok();
                                let in_force = match served {
                                    Some(_) => &applied.sha256,
                                    None => &previous,
                                };
                                self.report_status(in_force).await;
                                (applied, served)
                            }));
                        }
                        CheckOutcome::Installed(applied) => current = applied,
                        CheckOutcome::Refused { sha256 } => refused = Some(sha256),
                        CheckOutcome::Unchanged | CheckOutcome::Failed => {}
                    }
                }
                _ = tick(&mut usage_ticker), if usage_reporter.is_some() && !stopping => {
                    if let Some(mut reporter) = usage_reporter.take() {
                        usage_step = Some(Box::pin(async move {
                            reporter.step().await;
                            reporter
                        }));
                    }
                }
                (applied, served) = in_flight(&mut confirm), if confirm.is_some() => {
                    confirm = None;
                    if let Some(took) = served {
                        tracing::info!(
                            config = %applied.label(), sha256 = %applied.sha256,
                            in_force_after_ms = took.as_millis() as u64,
                            "new configuration installed; nginx reloaded and serves it"
                        );
                        current = applied;
                    }
                }
                reporter = in_flight(&mut usage_step), if usage_step.is_some() => {
                    usage_step = None;
                    usage_reporter = Some(reporter);
                }
            }
        }
    }
}

/// A step of the supervision loop running beside it.
type Step<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The output of the future in `slot`; never ready when the slot is empty (a `select!` branch
/// guarded by `slot.is_some()`).
async fn in_flight<T>(slot: &mut Option<Step<'_, T>>) -> T {
    match slot.as_mut() {
        Some(pending) => pending.await,
        None => std::future::pending().await,
    }
}

/// A ticker every `period`, first ticking one period from now.
fn every(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// The next tick of `ticker`; never when there is none.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sends `signal` to nginx's master process.
fn forward(pid: u32, signal: libc::c_int, name: &str) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and has no memory effects; `pid` is our child's.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 {
        tracing::info!(signal = name, "signal sent to nginx");
    } else {
        tracing::warn!(signal = name, error = %std::io::Error::last_os_error(), "cannot signal nginx");
    }
}
