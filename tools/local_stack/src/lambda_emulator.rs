//! A local Lambda service: runs the real function binaries on the Lambda Runtime API and
//! answers the Lambda `Invoke` API, so functions call each other exactly as on AWS.
//!
//! Its endpoint is the local AWS endpoint: every request that is not an `Invoke` goes on to
//! moto unchanged, so one endpoint serves `sls deploy`, `sls invoke` and the functions' own
//! AWS calls (docs/architecture.md, "The local AWS endpoint").
//!
//! Each function is one long-lived process (a warm sandbox) polling its own Runtime API
//! endpoint (`AWS_LAMBDA_RUNTIME_API`, one loopback port per function). Invocations queue per
//! function and are handed out one at a time, like a function with reserved concurrency 1.
//! `InvocationType: Event` invocations are answered 202 at once and retried twice on error,
//! as Lambda does. A process that exits is restarted (a new sandbox) after a short pause, and
//! the invocation it held fails. An `Invoke` of a function the emulator does not run goes on to
//! moto too. [`LambdaEmulator::invoke_timed`] and [`LambdaEmulator::sandbox`] give what the bench
//! measures: each invocation's duration, and the process's pid and init time.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// How a function is run.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// Function name (also what `Invoke` is called with).
    pub name: String,
    /// The built bootstrap binary.
    pub binary: PathBuf,
    /// Environment of the function (the emulator adds the Lambda runtime variables and
    /// `AWS_ENDPOINT_URL_LAMBDA`).
    pub env: Vec<(String, String)>,
    /// Longest an invocation may take.
    pub timeout: Duration,
    /// Memory size, MB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub memory_mb: u32,
}

/// An invocation failed.
#[derive(Debug, Clone, Error)]
pub enum InvokeError {
    /// No function of that name.
    #[error("no function named {0:?}")]
    UnknownFunction(String),
    /// The function returned an error (its error document).
    #[error("function {function} failed: {error}")]
    Function {
        /// The function.
        function: String,
        /// The error document it reported.
        error: String,
    },
    /// No answer within the function's timeout.
    #[error("function {0} timed out")]
    Timeout(String),
    /// The emulator is stopping.
    #[error("the Lambda emulator stopped")]
    Stopped,
}

/// Counters for one function, for the live view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionStats {
    /// Invocations answered successfully.
    pub succeeded: u64,
    /// Invocations that failed.
    pub failed: u64,
    /// The last error, shortened.
    pub last_error: Option<String>,
}

/// One answered invocation, timed.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// The function's answer, or the error document it reported.
    pub answer: Result<Value, String>,
    /// From the process taking the invocation (its `GET …/invocation/next`) to its answer:
    /// how long the function ran it, without the time it waited in the queue.
    pub duration: Duration,
}

/// The process that runs a function now (its sandbox).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Its process id (`None` until it is started).
    pub pid: Option<u32>,
    /// Processes started for the function so far, this one included (1: never restarted).
    pub starts: u64,
    /// From starting the process to its first `GET …/invocation/next`: its init phase
    /// (`None` until it asks).
    pub init: Option<Duration>,
}

type Outcome = Result<Bytes, String>;

/// What became of one invocation, and how long the process held it.
struct Answer {
    outcome: Outcome,
    held: Duration,
}

struct Invocation {
    request_id: String,
    payload: Bytes,
    responder: oneshot::Sender<Answer>,
}

/// An invocation a process has taken: who waits for it, and since when.
struct Held {
    responder: oneshot::Sender<Answer>,
    since: Instant,
}

#[derive(Default)]
struct SandboxState {
    started: Option<Instant>,
    info: Sandbox,
}

struct FunctionSlot {
    spec: FunctionSpec,
    queue: Mutex<VecDeque<Invocation>>,
    ready: Notify,
    in_flight: Mutex<HashMap<String, Held>>,
    stats: Mutex<FunctionStats>,
    sandbox: Mutex<SandboxState>,
}

impl FunctionSlot {
    fn enqueue(&self, invocation: Invocation) {
        lock(&self.queue).push_back(invocation);
        self.ready.notify_one();
    }

    fn record(&self, outcome: &Outcome) {
        let mut stats = lock(&self.stats);
        match outcome {
            Ok(_) => stats.succeeded += 1,
            Err(error) => {
                stats.failed += 1;
                stats.last_error = Some(error.chars().take(200).collect());
            }
        }
    }

    /// Fails every invocation the (dead) process held.
    fn fail_in_flight(&self, why: &str) {
        let held: Vec<_> = lock(&self.in_flight).drain().collect();
        for (_, held) in held {
            let _ = held.responder.send(Answer {
                outcome: Err(why.to_owned()),
                held: held.since.elapsed(),
            });
        }
    }

    /// A new process is being started: a new sandbox.
    fn starting(&self) {
        let mut sandbox = lock(&self.sandbox);
        sandbox.started = Some(Instant::now());
        sandbox.info = Sandbox {
            pid: None,
            starts: sandbox.info.starts + 1,
            init: None,
        };
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    functions: RwLock<HashMap<String, Arc<FunctionSlot>>>,
    next_id: AtomicU64,
    stopping: Notify,
    /// Where requests other than `Invoke` go (moto), when set.
    upstream: Option<String>,
    client: reqwest::Client,
}

impl Shared {
    fn slot(&self, name: &str) -> Option<Arc<FunctionSlot>> {
        // Accept a name, a function ARN (…:function:NAME[:qualifier]) or NAME:qualifier.
        let bare = match name.split_once(":function:") {
            Some((_, rest)) => rest.split(':').next().unwrap_or(rest),
            None => name.split(':').next().unwrap_or(name),
        };
        self.functions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(bare)
            .cloned()
    }

    fn slots(&self) -> Vec<Arc<FunctionSlot>> {
        self.functions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// The running emulator. Dropping it (or [`LambdaEmulator::shutdown`]) stops every function.
pub struct LambdaEmulator {
    shared: Arc<Shared>,
    endpoint: String,
    port: u16,
    log_dir: PathBuf,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl LambdaEmulator {
    /// Starts the Invoke API on `listen` (port 0: any free port), passing every other request
    /// on to `upstream`. Functions are added with [`LambdaEmulator::add_functions`]; their
    /// output goes to `<log_dir>/<name>.log`.
    pub async fn start(
        listen: SocketAddr,
        upstream: Option<String>,
        log_dir: &Path,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let invoke_listener = TcpListener::bind(listen).await?;
        let address = invoke_listener.local_addr()?;
        let endpoint = format!("http://{address}");
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            functions: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stopping: Notify::new(),
            upstream,
            client,
        });
        let invoke_app = Router::new()
            .route("/2015-03-31/functions/{name}/invocations", post(invoke_api))
            .fallback(forward_upstream)
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(invoke_listener, invoke_app).await;
        });
        Ok(Self {
            shared,
            endpoint,
            port: address.port(),
            log_dir: log_dir.to_owned(),
            tasks: Mutex::new(vec![server]),
        })
    }

    /// Adds functions: one Runtime API each, and their processes.
    pub async fn add_functions(&self, specs: Vec<FunctionSpec>) -> std::io::Result<()> {
        for spec in specs {
            let slot = Arc::new(FunctionSlot {
                spec: spec.clone(),
                queue: Mutex::new(VecDeque::new()),
                ready: Notify::new(),
                in_flight: Mutex::new(HashMap::new()),
                stats: Mutex::new(FunctionStats::default()),
                sandbox: Mutex::new(SandboxState::default()),
            });
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let runtime_api = listener.local_addr()?.to_string();
            let app = Router::new()
                .route("/2018-06-01/runtime/invocation/next", get(runtime_next))
                .route(
                    "/2018-06-01/runtime/invocation/{id}/response",
                    post(runtime_response),
                )
                .route(
                    "/2018-06-01/runtime/invocation/{id}/error",
                    post(runtime_error),
                )
                .route("/2018-06-01/runtime/init/error", post(runtime_init_error))
                .with_state(slot.clone());
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            let supervisor = tokio::spawn(supervise(
                slot.clone(),
                runtime_api,
                self.endpoint.clone(),
                self.log_dir.join(format!("{}.log", slot.spec.name)),
                self.shared.clone(),
            ));
            lock(&self.tasks).extend([server, supervisor]);
            self.shared
                .functions
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(spec.name, slot);
        }
        Ok(())
    }

    /// The Invoke API endpoint (the local AWS endpoint when an upstream is set).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The port the Invoke API listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Invokes a function and waits for its answer (InvocationType `RequestResponse`).
    pub async fn invoke(&self, function: &str, payload: &Value) -> Result<Value, InvokeError> {
        let bytes = Bytes::from(payload.to_string());
        let answer = invoke_sync(&self.shared, function, bytes).await?;
        Ok(serde_json::from_slice(&answer).unwrap_or(Value::Null))
    }

    /// Invokes a function and waits for its answer, timed; an error document the function
    /// reports is an answer here, not an error.
    pub async fn invoke_timed(
        &self,
        function: &str,
        payload: &Value,
    ) -> Result<Timed, InvokeError> {
        let answer =
            invoke_answer(&self.shared, function, Bytes::from(payload.to_string())).await?;
        Ok(Timed {
            answer: answer
                .outcome
                .map(|bytes| serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
            duration: answer.held,
        })
    }

    /// Queues an invocation without waiting (InvocationType `Event`), retried twice on error.
    pub fn invoke_async(&self, function: &str, payload: &Value) -> Result<(), InvokeError> {
        invoke_event(&self.shared, function, Bytes::from(payload.to_string()))
    }

    /// Counters of one function.
    pub fn stats(&self, function: &str) -> Option<FunctionStats> {
        self.shared
            .slot(function)
            .map(|slot| lock(&slot.stats).clone())
    }

    /// The process that runs a function now.
    pub fn sandbox(&self, function: &str) -> Option<Sandbox> {
        self.shared
            .slot(function)
            .map(|slot| lock(&slot.sandbox).info)
    }

    /// Stops every function process and server.
    pub async fn shutdown(mut self) {
        self.stop_tasks().await;
    }

    async fn stop_tasks(&mut self) {
        self.shared.stopping.notify_waiters();
        for slot in self.shared.slots() {
            slot.fail_in_flight("the Lambda emulator stopped");
        }
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for LambdaEmulator {
    fn drop(&mut self) {
        self.shared.stopping.notify_waiters();
        for task in lock(&self.tasks).iter() {
            task.abort();
        }
    }
}

/// Headers that belong to one connection, not to the request (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// Passes a request that is not an `Invoke` on to the upstream (moto) unchanged.
async fn forward_upstream(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(upstream) = &shared.upstream else {
        return (StatusCode::NOT_FOUND, "not a Lambda Invoke request").into_response();
    };
    let path = uri
        .path_and_query()
        .map(axum::http::uri::PathAndQuery::as_str)
        .unwrap_or("/");
    let mut request = shared
        .client
        .request(method, format!("{upstream}{path}"))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" && !HOP_BY_HOP.contains(&name.as_str()) {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = answer.headers().clone();
            for name in HOP_BY_HOP.iter().chain(&["content-length"]) {
                headers.remove(*name);
            }
            match answer.bytes().await {
                Ok(body) => (status, headers, body).into_response(),
                Err(error) => (StatusCode::BAD_GATEWAY, format!("moto: {error}")).into_response(),
            }
        }
        Err(error) => (StatusCode::BAD_GATEWAY, format!("moto: {error}")).into_response(),
    }
}

fn new_request_id(shared: &Shared) -> String {
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (nanos & 0xffff_ffff) as u32,
        n & 0xffff,
        (n >> 16) & 0xfff,
        (nanos >> 32) & 0xfff,
        n
    )
}

/// Runs one invocation and waits for what became of it.
async fn invoke_answer(
    shared: &Shared,
    function: &str,
    payload: Bytes,
) -> Result<Answer, InvokeError> {
    let slot = shared
        .slot(function)
        .ok_or_else(|| InvokeError::UnknownFunction(function.to_owned()))?;
    let (tx, rx) = oneshot::channel();
    slot.enqueue(Invocation {
        request_id: new_request_id(shared),
        payload,
        responder: tx,
    });
    match tokio::time::timeout(slot.spec.timeout + Duration::from_secs(5), rx).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(InvokeError::Stopped),
        Err(_) => Err(InvokeError::Timeout(slot.spec.name.clone())),
    }
}

async fn invoke_sync(
    shared: &Shared,
    function: &str,
    payload: Bytes,
) -> Result<Bytes, InvokeError> {
    invoke_answer(shared, function, payload)
        .await?
        .outcome
        .map_err(|error| InvokeError::Function {
            function: function.to_owned(),
            error,
        })
}

fn invoke_event(shared: &Arc<Shared>, function: &str, payload: Bytes) -> Result<(), InvokeError> {
    let slot = shared
        .slot(function)
        .ok_or_else(|| InvokeError::UnknownFunction(function.to_owned()))?;
    let request_id = new_request_id(shared);
    tokio::spawn(async move {
        // Lambda runs an asynchronous invocation up to three times, the same request id each time.
        for attempt in 1..=3u32 {
            let (tx, rx) = oneshot::channel();
            slot.enqueue(Invocation {
                request_id: request_id.clone(),
                payload: payload.clone(),
                responder: tx,
            });
            match tokio::time::timeout(slot.spec.timeout + Duration::from_secs(5), rx)
                .await
                .map(|answer| answer.map(|a| a.outcome))
            {
                Ok(Ok(Ok(_)) | Err(_)) => return,
                Ok(Ok(Err(error))) => {
                    tracing::warn!(function = %slot.spec.name, attempt, %error, "asynchronous invocation failed");
                }
                Err(_) => {
                    tracing::warn!(function = %slot.spec.name, attempt, "asynchronous invocation timed out");
                }
            }
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
    });
    Ok(())
}

async fn invoke_api(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.upstream.is_some() && shared.slot(&name).is_none() {
        // Not one of ours: the upstream's (moto's) to answer.
        return forward_upstream(State(shared), method, uri, headers, body).await;
    }
    let invocation_type = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    let not_found = || {
        let mut response = (
            StatusCode::NOT_FOUND,
            format!(
                r#"{{"Type":"User","message":"Function not found: {}"}}"#,
                name.replace('"', "")
            ),
        )
            .into_response();
        response.headers_mut().insert(
            "x-amzn-errortype",
            HeaderValue::from_static("ResourceNotFoundException"),
        );
        response
    };
    match invocation_type {
        "Event" => match invoke_event(&shared, &name, body) {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(_) => not_found(),
        },
        "DryRun" => match shared.slot(&name) {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => not_found(),
        },
        _ => match invoke_sync(&shared, &name, body).await {
            Ok(answer) => (StatusCode::OK, answer).into_response(),
            Err(InvokeError::UnknownFunction(_)) => not_found(),
            Err(error) => {
                let document = serde_json::json!({"errorMessage": error.to_string(), "errorType": "Unhandled"});
                let mut response = (StatusCode::OK, document.to_string()).into_response();
                response.headers_mut().insert(
                    "x-amz-function-error",
                    HeaderValue::from_static("Unhandled"),
                );
                response
            }
        },
    }
}

async fn runtime_next(State(slot): State<Arc<FunctionSlot>>) -> Response {
    {
        let mut sandbox = lock(&slot.sandbox);
        if let (Some(started), None) = (sandbox.started, sandbox.info.init) {
            sandbox.info.init = Some(started.elapsed());
        }
    }
    loop {
        let notified = slot.ready.notified();
        let next = lock(&slot.queue).pop_front();
        if let Some(invocation) = next {
            let deadline = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d + slot.spec.timeout)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            lock(&slot.in_flight).insert(
                invocation.request_id.clone(),
                Held {
                    responder: invocation.responder,
                    since: Instant::now(),
                },
            );
            let mut response = (StatusCode::OK, invocation.payload).into_response();
            let headers = response.headers_mut();
            let arn = format!(
                "arn:aws:lambda:us-east-1:123456789012:function:{}",
                slot.spec.name
            );
            for (name, value) in [
                ("lambda-runtime-aws-request-id", invocation.request_id),
                ("lambda-runtime-deadline-ms", deadline.to_string()),
                ("lambda-runtime-invoked-function-arn", arn),
                (
                    "lambda-runtime-trace-id",
                    "Root=1-00000000-000000000000000000000000;Sampled=0".to_owned(),
                ),
                ("content-type", "application/json".to_owned()),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            return response;
        }
        notified.await;
    }
}

fn finish(slot: &FunctionSlot, id: &str, outcome: Outcome) -> StatusCode {
    slot.record(&outcome);
    let held = lock(&slot.in_flight).remove(id);
    match held {
        Some(held) => {
            let _ = held.responder.send(Answer {
                outcome,
                held: held.since.elapsed(),
            });
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn runtime_response(
    State(slot): State<Arc<FunctionSlot>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    finish(&slot, &id, Ok(body))
}

async fn runtime_error(
    State(slot): State<Arc<FunctionSlot>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    finish(&slot, &id, Err(String::from_utf8_lossy(&body).into_owned()))
}

async fn runtime_init_error(State(slot): State<Arc<FunctionSlot>>, body: Bytes) -> StatusCode {
    let error = String::from_utf8_lossy(&body).into_owned();
    tracing::error!(function = %slot.spec.name, %error, "function failed to initialise");
    slot.record(&Err(format!("init error: {error}")));
    StatusCode::ACCEPTED
}

async fn supervise(
    slot: Arc<FunctionSlot>,
    runtime_api: String,
    lambda_endpoint: String,
    log_path: PathBuf,
    shared: Arc<Shared>,
) {
    let mut pause = Duration::from_millis(200);
    loop {
        let log = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
        {
            Ok(file) => file,
            Err(error) => {
                tracing::error!(path = %log_path.display(), %error, "cannot open the function log");
                return;
            }
        };
        let Ok(log_err) = log.try_clone() else {
            return;
        };
        let mut command = tokio::process::Command::new(&slot.spec.binary);
        command
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| {
                k == "PATH" || k == "HOME" || k == "RUST_LOG" || k == "LOG_FORMAT"
            }))
            .envs(slot.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AWS_LAMBDA_RUNTIME_API", &runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", &slot.spec.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                slot.spec.memory_mb.to_string(),
            )
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", slot.spec.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .env("AWS_ENDPOINT_URL_LAMBDA", &lambda_endpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        let started = Instant::now();
        slot.starting();
        let mut child = match command.spawn() {
            Ok(child) => {
                lock(&slot.sandbox).info.pid = child.id();
                child
            }
            Err(error) => {
                tracing::error!(function = %slot.spec.name, binary = %slot.spec.binary.display(), %error, "cannot start the function");
                slot.record(&Err(format!("cannot start: {error}")));
                return;
            }
        };
        tokio::select! {
            status = child.wait() => {
                let why = format!("process exited ({})", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                tracing::warn!(function = %slot.spec.name, %why, "function process ended; restarting");
                slot.fail_in_flight(&why);
            }
            () = shared.stopping.notified() => {
                let _ = child.kill().await;
                return;
            }
        }
        // A process that died at once is backed off; one that ran a while restarts quickly.
        pause = if started.elapsed() > Duration::from_secs(10) {
            Duration::from_millis(200)
        } else {
            (pause * 2).min(Duration::from_secs(5))
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    /// A function in sh and curl: answers each event with itself, or reports an error for an
    /// event holding `fail`.
    const ECHO: &str = r#"#!/bin/sh
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  body=$(curl -sS -D "$WORK/headers" "$api/invocation/next") || exit 1
  id=$(grep -i '^lambda-runtime-aws-request-id:' "$WORK/headers" | cut -d' ' -f2 | tr -d '\r')
  case "$body" in
    *fail*) curl -sS -o /dev/null -X POST -d '{"errorMessage":"failed"}' "$api/invocation/$id/error" ;;
    *) curl -sS -o /dev/null -X POST -d "$body" "$api/invocation/$id/response" ;;
  esac
done
"#;

    async fn echo_emulator(dir: &Path, upstream: Option<String>) -> LambdaEmulator {
        let binary = dir.join("echo");
        std::fs::write(&binary, ECHO).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let emulator = LambdaEmulator::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream,
            &dir.join("logs"),
        )
        .await
        .unwrap();
        emulator
            .add_functions(vec![FunctionSpec {
                name: "echo".into(),
                binary,
                env: vec![("WORK".into(), dir.display().to_string())],
                timeout: Duration::from_secs(10),
                memory_mb: 128,
            }])
            .await
            .unwrap();
        emulator
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timed_invocations_and_the_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let emulator = echo_emulator(dir.path(), None).await;
        let first = emulator
            .invoke_timed("echo", &json!({"n": 1}))
            .await
            .unwrap();
        assert_eq!(first.answer, Ok(json!({"n": 1})));
        assert!(first.duration > Duration::ZERO);
        let sandbox = emulator.sandbox("echo").unwrap();
        assert!(sandbox.pid.is_some());
        assert_eq!(sandbox.starts, 1);
        assert!(sandbox.init.is_some_and(|init| init > Duration::ZERO));

        let failed = emulator
            .invoke_timed("echo", &json!({"fail": true}))
            .await
            .unwrap();
        assert!(failed.answer.unwrap_err().contains("failed"));
        assert!(matches!(
            emulator.invoke("echo", &json!({"fail": true})).await,
            Err(InvokeError::Function { .. })
        ));
        assert_eq!(
            emulator.invoke("echo", &json!([2])).await.unwrap(),
            json!([2])
        );
        assert_eq!(emulator.sandbox("echo").unwrap(), sandbox);
        assert!(matches!(
            emulator.invoke_timed("other", &json!({})).await,
            Err(InvokeError::UnknownFunction(_))
        ));
        let stats = emulator.stats("echo").unwrap();
        assert_eq!((stats.succeeded, stats.failed), (2, 2));
        emulator.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invoke_of_another_function_goes_upstream() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
        let app = Router::new().fallback(|uri: Uri| async move {
            (StatusCode::ACCEPTED, format!("upstream: {}", uri.path()))
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(upstream, app).await;
        });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let invoke = |endpoint: &str, function: &str| {
            client
                .post(format!(
                    "{endpoint}/2015-03-31/functions/{function}/invocations"
                ))
                .header("x-amz-invocation-type", "Event")
                .body("{}")
                .send()
        };

        let dir = tempfile::tempdir().unwrap();
        let emulator = echo_emulator(dir.path(), Some(upstream_url)).await;
        let answer = invoke(emulator.endpoint(), "config_renderer")
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        assert_eq!(
            answer.text().await.unwrap(),
            "upstream: /2015-03-31/functions/config_renderer/invocations"
        );
        let ours = invoke(emulator.endpoint(), "echo").await.unwrap();
        assert_eq!(ours.status(), StatusCode::ACCEPTED);
        assert_eq!(ours.text().await.unwrap(), "");
        emulator.shutdown().await;

        let alone = echo_emulator(dir.path(), None).await;
        let answer = invoke(alone.endpoint(), "config_renderer").await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        alone.shutdown().await;
        server.abort();
    }
}
