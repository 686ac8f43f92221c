//! The CloudWatch stand-in: `scripts/cloudwatch_recorder.py`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::{address_in_use, report_failure, Supervised, WorkDir, PYTHON};
use crate::{free_port, http, repo_script, Error};

/// How long the recorder may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running CloudWatch recorder on 127.0.0.1, killed when dropped.
///
/// Point the CloudWatch client at [`MetricsRecorder::endpoint`]; every `PutMetricData` call
/// is recorded as `{"operation", "namespace", "metric_data": [...], "received_at"}` with the
/// SDK's field names (`MetricName`, `Dimensions`, `Value`, `Unit`, `StorageResolution`,
/// `Timestamp` in epoch seconds).
#[derive(Debug)]
pub struct MetricsRecorder {
    port: u16,
    process: Supervised,
    dir: WorkDir,
}

impl MetricsRecorder {
    /// Starts the recorder on a free port and waits until it answers (at most 20 s). Needs
    /// `python3` with `cbor2` (scripts/install-deps.sh). Blocks the calling thread.
    pub fn start() -> Result<Self, Error> {
        let python = PYTHON.locate()?;
        let script = repo_script(
            "scripts/cloudwatch_recorder.py",
            "CLOUDWATCH_RECORDER_SCRIPT",
        );
        let mut dir = WorkDir::new("cloudwatch-recorder")?;
        if !script.is_file() {
            return Err(report_failure(
                &mut dir,
                Error::io(
                    format!("the CloudWatch recorder script {}", script.display()),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ),
            ));
        }
        let log = dir.path().join("recorder.log");
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut command = Command::new(&python);
            command
                .arg(&script)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .env("PYTHONUNBUFFERED", "1");
            let mut process = Supervised::spawn("cloudwatch_recorder.py", command, &log, &dir)
                .map_err(|e| report_failure(&mut dir, e))?;
            let ready = process.wait_ready(START_TIMEOUT, || {
                http::request(port, "GET", "/health", &[], b"", Duration::from_secs(2))
                    .is_ok_and(|r| r.status == 200)
            });
            match ready {
                Ok(()) => return Ok(Self { port, process, dir }),
                Err(error) => {
                    let retry = matches!(error, Error::Exited { .. }) && address_in_use(&log);
                    drop(process);
                    if !retry {
                        let error = match error {
                            Error::Exited {
                                program,
                                status,
                                log,
                                tail,
                            } if tail.contains("cbor2") => Error::Exited {
                                program,
                                status,
                                log,
                                tail: format!(
                                    "{tail}\n(python3 lacks cbor2: run scripts/install-deps.sh)"
                                ),
                            },
                            other => other,
                        };
                        return Err(report_failure(&mut dir, error));
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(report_failure(
            &mut dir,
            last_error.unwrap_or_else(|| {
                Error::io(
                    "starting the recorder",
                    std::io::Error::other("no attempt made"),
                )
            }),
        ))
    }

    /// `http://127.0.0.1:PORT`: the CloudWatch endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The recorder's log file (one line per request).
    pub fn log_path(&self) -> &Path {
        self.process.log()
    }

    /// Keeps the log directory after drop.
    pub fn keep_logs(&mut self) {
        self.dir.keep();
    }

    /// Every `PutMetricData` call recorded since start or the last [`MetricsRecorder::clear`],
    /// in arrival order.
    pub fn recorded(&self) -> Result<Vec<Value>, Error> {
        let response = self.call("GET")?;
        match serde_json::from_slice::<Value>(&response.body) {
            Ok(Value::Array(calls)) => Ok(calls),
            _ => Err(Error::Request {
                program: "cloudwatch_recorder.py",
                request: "GET /recorded".into(),
                message: format!("answer is not a JSON list: {}", response.text()),
            }),
        }
    }

    /// Forgets the recorded calls.
    pub fn clear(&self) -> Result<(), Error> {
        self.call("DELETE").map(|_| ())
    }

    fn call(&self, method: &str) -> Result<http::Response, Error> {
        http::ok(
            "cloudwatch_recorder.py",
            &format!("{method} /recorded"),
            http::request(
                self.port,
                method,
                "/recorded",
                &[],
                b"",
                Duration::from_secs(10),
            ),
        )
    }
}
