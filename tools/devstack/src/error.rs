//! The one error type of the crate.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Something a stand-in could not do. Messages name the program, and for processes the log
/// file and its last lines, so a failing test says what went wrong.
#[derive(Debug, Error)]
pub enum Error {
    /// A required program is not installed.
    #[error(
        "{program} not found (looked at {looked}). Install it with scripts/install-deps.sh, \
         or set {env_var} to its path"
    )]
    NotFound {
        /// The program.
        program: &'static str,
        /// The environment variable that overrides its path.
        env_var: &'static str,
        /// Where it was looked for.
        looked: String,
    },
    /// The program could not be started.
    #[error(
        "cannot start {program} ({path}): {source}. Is it installed? (scripts/install-deps.sh)"
    )]
    Spawn {
        /// The program.
        program: String,
        /// The path that was executed.
        path: PathBuf,
        /// The error from the OS.
        source: std::io::Error,
    },
    /// The program started but did not become ready in time.
    #[error("{program} was not ready after {waited:?}; log file {log}; last lines:\n{tail}")]
    NotReady {
        /// The program.
        program: String,
        /// How long it was waited for.
        waited: Duration,
        /// Its log file (kept on failure).
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// The program exited while it was being started.
    #[error("{program} exited during startup ({status}); log file {log}; last lines:\n{tail}")]
    Exited {
        /// The program.
        program: String,
        /// How it exited.
        status: String,
        /// Its log file (kept on failure).
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error from the OS.
        source: std::io::Error,
    },
    /// A request to a stand-in failed or got an unexpected answer.
    #[error("{program} request {request} failed: {message}")]
    Request {
        /// The program asked.
        program: &'static str,
        /// The request (method, path or RPC method).
        request: String,
        /// What went wrong.
        message: String,
    },
    /// An AWS SDK call to moto failed.
    #[error("AWS {operation} against moto failed: {message}")]
    Aws {
        /// The operation.
        operation: &'static str,
        /// The SDK's error with its context.
        message: String,
    },
    /// nginx refused a configuration.
    #[error("nginx refused the configuration: {0}")]
    NginxConfig(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn aws<E>(operation: &'static str, error: &E) -> Self
    where
        E: std::error::Error + 'static,
    {
        Self::Aws {
            operation,
            message: aws_sdk_s3::error::DisplayErrorContext(error).to_string(),
        }
    }
}
