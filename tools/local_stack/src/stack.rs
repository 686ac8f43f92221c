//! Bringing the whole system up: the local AWS endpoint, `sls deploy -s local`, nodes, nginx,
//! the deployed functions, and the event sources of the deployed stack (schedule, bucket
//! notification, ECS service, alarm and its SNS subscription).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use devstack::{Anvil, AnvilOptions, MetricsRecorder, Moto, Nginx};
use jsonrpc_proxy::aws::config_bucket::parse_s3_path;
use jsonrpc_proxy::aws::config_bucket::{ConfigBucket, ConfigPointer};
use jsonrpc_proxy::aws::store::BackendStore;
use jsonrpc_proxy::functions::ecs_updater::config_path_of;
use jsonrpc_proxy::model::backend::{iso8601, Backend};
use jsonrpc_proxy::render::gate::GatePolicy;
use jsonrpc_proxy::render::nginx::render;
use jsonrpc_proxy::render::options::RenderOptions;
use jsonrpc_proxy::render::routing::RoutingPlan;
use serde_json::{json, Value};
use thiserror::Error;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::alarm::{self, AlarmState};
use crate::deploy::{DeployError, DeployedStack, LocalConfig, Serverless};
use crate::lambda_emulator::{FunctionSpec, FunctionStats, InvokeError, LambdaEmulator};
use crate::webhook::SlackStandIn;

/// The shared ECS cluster the local account has.
pub const CLUSTER: &str = "local";
/// The name of the client the stack registers at start ([`StackOptions::demo_client`]).
pub const DEMO_CLIENT: &str = "demo";

/// How to run the stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Port of the JSON-RPC proxy.
    pub proxy_port: u16,
    /// Address the JSON-RPC proxy listens on (`nginx_listen_address` of the local stage):
    /// 127.0.0.1 unless asked, so that nothing outside this machine reaches it.
    pub listen_address: IpAddr,
    /// Loopback port of the local AWS endpoint (0: any free port).
    pub aws_port: u16,
    /// Time between scheduled health checks (the deployed schedule, accelerated).
    pub check_interval: Duration,
    /// `diff_tolerance` of the local configuration.
    pub tolerance: u64,
    /// `probe_timeout_ms` of the local configuration.
    pub probe_timeout: Duration,
    /// `alarm_period_seconds` of the local configuration.
    pub alarm_period: Duration,
    /// The user's node URLs; empty means start local anvil nodes.
    pub nodes: Vec<String>,
    /// The user's leader URL.
    pub leader: Option<String>,
    /// How many anvil nodes to start besides the leader when no URLs are given.
    pub anvil_nodes: usize,
    /// Seconds between anvil blocks.
    pub block_time: u64,
    /// Whether the stack registers the nodes itself (with `add_backend`).
    pub register: bool,
    /// Directory holding the host builds of the function binaries.
    pub bin_dir: PathBuf,
    /// The config agent binary.
    pub config_agent: PathBuf,
    /// Directory for logs.
    pub work_dir: PathBuf,
    /// The repository (`serverless.yml`, `node_modules/.bin/sls`).
    pub repo_root: PathBuf,
    /// Where the local stage's configuration is written (`config.local.yml`).
    pub config_path: PathBuf,
    /// Where the packaged function zips are (`${CARGO_TARGET_DIR:-target}/lambda`).
    pub artifacts_dir: PathBuf,
    /// Deploy the zips already in `artifacts_dir` instead of building them first.
    pub skip_zip_build: bool,
    /// Register the demo client ([`DEMO_CLIENT`]) with `add_client` at start: from then on the
    /// endpoint answers at its key URL ([`LocalStack::endpoint_url`]) only, and the local stage
    /// is closed (`gate.open_without_key: false`: with no client left, every caller gets 401).
    /// Without it the stage is open (`true`): the endpoint answers at `/` until a client is
    /// added.
    pub demo_client: bool,
    /// `gate.default_calls_per_second` of the local configuration (`None`: the default).
    pub calls_per_second: Option<u32>,
}

impl StackOptions {
    /// Where this machine reaches the proxy: its listen address, or loopback when that is
    /// every interface (`0.0.0.0`, `::`).
    pub fn proxy_address(&self) -> SocketAddr {
        let ip = match self.listen_address {
            IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        SocketAddr::new(ip, self.proxy_port)
    }

    /// The local stack's defaults, with the function binaries in `bin_dir` and logs in
    /// `work_dir`; the configuration goes to `work_dir/config.local.yml`.
    pub fn defaults(bin_dir: PathBuf, work_dir: PathBuf) -> Self {
        let repo_root = devstack::repo_root();
        let artifacts_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root.join("target"))
            .join("lambda");
        Self {
            proxy_port: 18545,
            listen_address: Ipv4Addr::LOCALHOST.into(),
            aws_port: 0,
            check_interval: Duration::from_secs(5),
            tolerance: 10,
            probe_timeout: Duration::from_millis(2000),
            alarm_period: Duration::from_secs(10),
            nodes: Vec::new(),
            leader: None,
            anvil_nodes: 2,
            block_time: 1,
            register: true,
            config_agent: bin_dir.join("config_agent"),
            bin_dir,
            config_path: work_dir.join("config.local.yml"),
            work_dir,
            repo_root,
            artifacts_dir,
            skip_zip_build: false,
            demo_client: false,
            calls_per_second: None,
        }
    }
}

/// Starting or running the stack failed.
#[derive(Debug, Error)]
pub enum StackError {
    /// A stand-in could not be started.
    #[error(transparent)]
    Devstack(#[from] devstack::Error),
    /// Deploying or reading the deployed stack failed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// A function invocation failed.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// A file or process operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A backend was refused.
    #[error("add_backend refused {url}: {answer}")]
    Refused {
        /// The redacted URL.
        url: String,
        /// The function's answer.
        answer: String,
    },
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// A change the stack observed, for the live view and the tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// When, ISO-8601 UTC.
    pub at: String,
    /// What happened.
    pub text: String,
}

/// The configuration nginx runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedConfig {
    /// `s3://bucket/key`.
    pub s3_path: String,
    /// Redacted labels of its backends (from the pointer, when it names this key).
    pub backends: Vec<String>,
    /// When it was applied.
    pub applied_at: String,
}

/// State shared by the background tasks.
#[derive(Debug, Default)]
pub struct Observed {
    /// Backends as last read from the table.
    pub backends: Vec<Backend>,
    /// The configuration in force.
    pub applied: Option<AppliedConfig>,
    /// Recent transitions, newest last.
    pub transitions: Vec<Transition>,
    /// Health-check rounds run.
    pub rounds: u64,
    /// Errors of the background tasks, newest last.
    pub errors: Vec<String>,
}

impl Observed {
    fn note(&mut self, text: String) {
        self.transitions.push(Transition {
            at: iso8601(OffsetDateTime::now_utc()),
            text,
        });
        let excess = self.transitions.len().saturating_sub(200);
        self.transitions.drain(..excess);
    }

    fn error(&mut self, text: String) {
        tracing::warn!("{text}");
        self.errors.push(text);
        let excess = self.errors.len().saturating_sub(50);
        self.errors.drain(..excess);
    }
}

/// A local node started by the stack.
#[derive(Debug)]
pub struct LocalNode {
    /// The node.
    pub anvil: Anvil,
    /// Whether it is registered as the leader.
    pub is_leader: bool,
}

/// The running system. Dropping it stops everything it started.
pub struct LocalStack {
    /// Options it runs with.
    pub options: StackOptions,
    /// Local anvil nodes (empty when the user gave URLs).
    pub nodes: Vec<LocalNode>,
    /// What the background tasks observe.
    pub observed: Arc<Mutex<Observed>>,
    /// The deployed stack the system runs on.
    pub deployed: DeployedStack,
    emulator: Arc<LambdaEmulator>,
    nginx: Arc<Mutex<Nginx>>,
    slack: SlackStandIn,
    moto: Moto,
    recorder: Arc<MetricsRecorder>,
    sdk: SdkConfig,
    agent_env: Vec<(String, String)>,
    socket_dir: PathBuf,
    tasks: Vec<JoinHandle<()>>,
    /// The demo client's key, as `add_client` answered it (shown only in its URLs).
    demo_key: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LocalStack {
    /// Starts the local AWS endpoint, deploys the `local` stage with `sls deploy -s local`,
    /// then runs the system on what was deployed and registers the backends; returns when the
    /// proxy listens.
    pub async fn start(options: StackOptions) -> Result<Self, StackError> {
        std::fs::create_dir_all(&options.work_dir)
            .map_err(|e| StackError::Io(format!("creating {}", options.work_dir.display()), e))?;
        let work_dir = options
            .work_dir
            .canonicalize()
            .map_err(|e| StackError::Io(format!("resolving {}", options.work_dir.display()), e))?;
        // The gate's Lua directory (in the checkout) and its access log (in the work directory)
        // are rendered into nginx's configuration, which takes plain paths only: the renderer's
        // own check, before anything starts.
        let gate_paths = GatePolicy {
            lua_dir: devstack::gate_lua_dir(),
            access_log: work_dir.join("nginx-access.log").display().to_string(),
            ..GatePolicy::default()
        };
        gate_paths.validate().map_err(|error| {
            StackError::Other(format!(
                "{error}: the local stack renders paths under the checkout ({}) and the work \
                 directory ({}) into nginx's configuration; move or clone the checkout to a path of \
                 letters, digits and / . _ - (and pick such a --work-dir)",
                devstack::repo_root().display(),
                work_dir.display()
            ))
        })?;
        let socket_dir = short_socket_dir()?;

        let moto = tokio::task::block_in_place(Moto::start)?;
        let recorder = tokio::task::block_in_place(MetricsRecorder::start)?;
        let slack = SlackStandIn::start()
            .await
            .map_err(|e| StackError::Io("starting the Slack stand-in".into(), e))?;
        let emulator = Arc::new(
            LambdaEmulator::start(
                SocketAddr::from(([127, 0, 0, 1], options.aws_port)),
                Some(moto.endpoint()),
                &options.work_dir.join("functions"),
            )
            .await
            .map_err(|e| {
                StackError::Io(
                    format!(
                        "listening on 127.0.0.1:{} (the AWS endpoint)",
                        options.aws_port
                    ),
                    e,
                )
            })?,
        );
        let endpoint = emulator.endpoint().to_owned();
        let sdk = devstack::sdk_config(&endpoint).await;

        // The nginx "container" starts as the image does, the 404 server on its port, before
        // the deploy: the port is taken at once (a deploy's many connections use ephemeral
        // ports too). The deployed renderer must render for the same port and sockets.
        let render_options = RenderOptions {
            listen_port: options.proxy_port,
            listen_address: Some(options.listen_address),
            socket_dir: socket_dir.display().to_string(),
            ..RenderOptions::default()
        };
        let initial = render(&RoutingPlan::default(), &render_options);
        let nginx = tokio::task::block_in_place(|| Nginx::start(&initial, &socket_dir))?;

        // The account as a deployment finds it, then the stage deployed as on AWS.
        let shared = moto.create_shared_infrastructure(CLUSTER).await?;
        let config = LocalConfig {
            shared,
            listen_port: options.proxy_port,
            listen_address: options.listen_address,
            socket_dir: socket_dir.display().to_string(),
            tolerance: options.tolerance,
            probe_timeout_ms: options.probe_timeout.as_millis(),
            slack_webhook_url: slack.url(),
            alarm_period_seconds: options.alarm_period.as_secs(),
            gate_lua_dir: gate_paths.lua_dir,
            gate_access_log: gate_paths.access_log,
            gate_calls_per_second: options.calls_per_second,
            gate_open_without_key: !options.demo_client,
        };
        std::fs::write(&options.config_path, config.yaml())
            .map_err(|e| StackError::Io(format!("writing {}", options.config_path.display()), e))?;
        let serverless = Serverless {
            repo_root: options.repo_root.clone(),
            config: options.config_path.clone(),
            aws_port: emulator.port(),
            skip_build: options.skip_zip_build,
            log_dir: work_dir.clone(),
        };
        let deploying = std::time::Instant::now();
        tracing::info!(
            output = %work_dir.join("sls-{package,deploy}.log").display(),
            "sls deploy -s local"
        );
        serverless.deploy(&options.work_dir.join("package")).await?;
        tracing::info!(
            seconds = deploying.elapsed().as_secs(),
            "sls deploy -s local done"
        );
        let deployed = DeployedStack::read(&sdk).await?;
        deployed.check_code(&options.artifacts_dir)?;
        let renderer = &deployed.function("config_renderer")?.env;
        for (variable, expected) in [
            ("NGINX_LISTEN_PORT", render_options.listen_port.to_string()),
            ("NGINX_LISTEN_ADDRESS", options.listen_address.to_string()),
            ("NGINX_SOCKET_DIR", render_options.socket_dir.clone()),
            ("GATE_LUA_DIR", config.gate_lua_dir.clone()),
            (
                "GATE_OPEN_WITHOUT_KEY",
                config.gate_open_without_key.to_string(),
            ),
        ] {
            if renderer.get(variable) != Some(&expected) {
                return Err(StackError::Other(format!(
                    "the deployed config_renderer has {variable}={:?}, but the local nginx uses {expected:?}",
                    renderer.get(variable)
                )));
            }
        }

        let mut nodes = Vec::new();
        let (leader_url, node_urls) = if options.nodes.is_empty() && options.leader.is_none() {
            for index in 0..=options.anvil_nodes {
                let anvil = tokio::task::block_in_place(|| {
                    Anvil::start(AnvilOptions {
                        block_time: Some(options.block_time.max(1)),
                        chain_id: None,
                    })
                })?;
                nodes.push(LocalNode {
                    anvil,
                    is_leader: index == 0,
                });
            }
            let leader = nodes.first().map(|n| n.anvil.url());
            let others = nodes.iter().skip(1).map(|n| n.anvil.url()).collect();
            (leader, others)
        } else {
            (options.leader.clone(), options.nodes.clone())
        };

        let local_aws = devstack::aws_env(&endpoint, &recorder.endpoint());
        let agent_env: Vec<(String, String)> = local_aws
            .iter()
            .cloned()
            .chain(
                std::env::var("NGINX_BIN")
                    .ok()
                    .map(|bin| ("NGINX_BIN".to_owned(), bin)),
            )
            .collect();
        let mut specs = Vec::new();
        for function in deployed.functions.values() {
            let binary = options.bin_dir.join(&function.key);
            if !binary.is_file() {
                return Err(StackError::Other(format!(
                    "{} is deployed, but its host build {} is missing (cargo build --release -p {})",
                    function.name,
                    binary.display(),
                    function.key
                )));
            }
            specs.push(FunctionSpec {
                name: function.name.clone(),
                binary,
                env: function
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain(local_aws.iter().cloned())
                    .collect(),
                timeout: function.timeout,
                memory_mb: function.memory_mb,
            });
        }
        emulator
            .add_functions(specs)
            .await
            .map_err(|e| StackError::Io("starting the functions".into(), e))?;

        let mut stack = Self {
            options,
            nodes,
            observed: Arc::new(Mutex::new(Observed::default())),
            deployed,
            emulator,
            nginx: Arc::new(Mutex::new(nginx)),
            slack,
            moto,
            recorder: Arc::new(recorder),
            sdk,
            agent_env,
            socket_dir,
            tasks: Vec::new(),
            demo_key: None,
        };
        if stack.options.register {
            if let Some(url) = leader_url {
                stack.add_backend(&url, true).await?;
            }
            for url in node_urls {
                stack.add_backend(&url, false).await?;
            }
        }
        if stack.options.demo_client {
            stack.demo_key = Some(stack.add_client(DEMO_CLIENT).await?);
        }
        stack.spawn_background_tasks();
        Ok(stack)
    }

    /// The proxy's URL.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.options.proxy_address())
    }

    /// Where applications call JSON-RPC: the demo client's `/v3/<key>` when there is one, else
    /// the proxy itself (open while no client is registered: a stage without the demo client
    /// is open, [`StackOptions::demo_client`]).
    pub fn endpoint_url(&self) -> String {
        match &self.demo_key {
            Some(key) => format!("{}/v3/{key}", self.proxy_url()),
            None => self.proxy_url(),
        }
    }

    /// The WebSocket form of [`LocalStack::endpoint_url`] (`/ws/v3/<key>`).
    pub fn websocket_url(&self) -> String {
        let proxy = self.options.proxy_address();
        match &self.demo_key {
            Some(key) => format!("ws://{proxy}/ws/v3/{key}"),
            None => format!("ws://{proxy}"),
        }
    }

    /// The directory of nginx's unix sockets (the gate's usage endpoint among them).
    pub fn socket_dir(&self) -> &std::path::Path {
        &self.socket_dir
    }

    /// The local AWS endpoint (moto behind the Lambda emulator's Invoke API).
    pub fn aws_endpoint(&self) -> String {
        self.emulator.endpoint().to_owned()
    }

    /// nginx's error log as it stands (empty when it cannot be read).
    pub fn nginx_error_log(&self) -> String {
        let path = lock(&self.nginx).error_log_path();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// moto's own endpoint.
    pub fn moto_endpoint(&self) -> String {
        self.moto.endpoint()
    }

    /// The CloudWatch recorder.
    pub fn recorder(&self) -> &MetricsRecorder {
        &self.recorder
    }

    /// The Lambda emulator.
    pub fn emulator(&self) -> &LambdaEmulator {
        &self.emulator
    }

    /// Counters of every deployed function, by key.
    pub fn function_stats(&self) -> Vec<(String, FunctionStats)> {
        self.deployed
            .functions
            .values()
            .map(|f| {
                (
                    f.key.clone(),
                    self.emulator.stats(&f.name).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Invokes the deployed function `key` and waits for its answer.
    pub async fn invoke(&self, key: &str, payload: &Value) -> Result<Value, StackError> {
        let name = &self.deployed.function(key)?.name;
        Ok(self.emulator.invoke(name, payload).await?)
    }

    /// Registers a backend through the `add_backend` function, with the event `sls invoke` sends.
    pub async fn add_backend(&self, url: &str, is_leader: bool) -> Result<Value, StackError> {
        let body = json!({ "url": url, "is_leader": is_leader }).to_string();
        let answer = self.invoke("add_backend", &json!({ "body": body })).await?;
        check_admin_answer(url, answer)
    }

    /// Registers a client through the `add_client` function, with the event `sls invoke`
    /// sends; answers its key.
    pub async fn add_client(&self, name: &str) -> Result<String, StackError> {
        let body = json!({ "name": name }).to_string();
        let answer = self.invoke("add_client", &json!({ "body": body })).await?;
        let status = answer
            .get("statusCode")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let body: Value = answer
            .get("body")
            .and_then(Value::as_str)
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        match body.get("key").and_then(Value::as_str) {
            Some(key) if status == 201 => Ok(key.to_owned()),
            _ => Err(StackError::Other(format!(
                "add_client refused {name:?}: status {status}, {}",
                body.get("error").unwrap_or(&body)
            ))),
        }
    }

    /// Removes a backend through the `remove_backend` function.
    pub async fn remove_backend(&self, url: &str) -> Result<Value, StackError> {
        let body = json!({ "url": url }).to_string();
        let answer = self
            .invoke("remove_backend", &json!({ "body": body }))
            .await?;
        check_admin_answer(url, answer)
    }

    /// Lists the backends through the `list_backends` function.
    pub async fn list_backends(&self) -> Result<Vec<Backend>, StackError> {
        let answer = self.invoke("list_backends", &json!({})).await?;
        let body = answer.get("body").and_then(Value::as_str).unwrap_or("[]");
        serde_json::from_str(body)
            .map_err(|e| StackError::Other(format!("list_backends answered {answer}: {e}")))
    }

    /// The configuration the renderer's pointer names, `s3://bucket/key` (`None` before the
    /// first render): the one the stack must end on.
    pub async fn newest_config(&self) -> Result<Option<String>, StackError> {
        let bucket = ConfigBucket::new(aws_sdk_s3::Client::new(&self.sdk), &self.deployed.bucket);
        let pointer = bucket
            .read_pointer()
            .await
            .map_err(|e| StackError::Other(e.to_string()))?;
        Ok(pointer.map(|p| format!("s3://{}/{}", self.deployed.bucket, p.key)))
    }

    /// Runs one health check now (as the schedule would).
    pub async fn check_now(&self) -> Result<Value, StackError> {
        let (rule, _, function) = self
            .deployed
            .schedules
            .iter()
            .find(|(_, _, function)| function == HEALTH_CHECKER)
            .ok_or_else(|| {
                StackError::Other("the deployed stack schedules no health check".into())
            })?;
        let name = &self.deployed.function(function)?.name;
        Ok(self.emulator.invoke(name, &scheduled_event(rule)).await?)
    }

    /// A snapshot of what the stack observed.
    pub fn snapshot(&self) -> (Vec<Backend>, Option<AppliedConfig>, Vec<Transition>, u64) {
        let observed = lock(&self.observed);
        (
            observed.backends.clone(),
            observed.applied.clone(),
            observed.transitions.clone(),
            observed.rounds,
        )
    }

    fn spawn_background_tasks(&mut self) {
        let function_name = |key: &str| {
            self.deployed
                .functions
                .get(key)
                .map(|f| f.name.clone())
                .unwrap_or_else(|| key.to_owned())
        };
        for (rule, _, function) in self.deployed.schedules.clone() {
            let interval = self.options.check_interval;
            let emulator = self.emulator.clone();
            let observed = self.observed.clone();
            let name = function_name(&function);
            self.tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let result = emulator.invoke(&name, &scheduled_event(&rule)).await;
                    let mut observed = lock(&observed);
                    if function == HEALTH_CHECKER {
                        observed.rounds += 1;
                    }
                    if let Err(error) = result {
                        observed.error(format!("{function}: {error}"));
                    }
                }
            }));
        }
        let notifications = self
            .deployed
            .bucket_notifications
            .iter()
            .map(|(suffix, function)| (suffix.clone(), function_name(function)))
            .collect();
        self.tasks.push(tokio::spawn(watch_bucket(
            aws_sdk_s3::Client::new(&self.sdk),
            self.deployed.bucket.clone(),
            notifications,
            self.emulator.clone(),
            self.observed.clone(),
        )));
        self.tasks.push(tokio::spawn(play_ecs_service(
            aws_sdk_ecs::Client::new(&self.sdk),
            aws_sdk_s3::Client::new(&self.sdk),
            (self.deployed.cluster.clone(), self.deployed.service.clone()),
            self.nginx.clone(),
            AgentCommand {
                binary: self.options.config_agent.clone(),
                env: self.agent_env.clone(),
                socket_dir: self.socket_dir.clone(),
            },
            self.options.proxy_address(),
            self.observed.clone(),
        )));
        self.tasks.push(tokio::spawn(watch_table(
            BackendStore::new(
                aws_sdk_dynamodb::Client::new(&self.sdk),
                &self.deployed.table,
            ),
            self.observed.clone(),
        )));
        if let Some(alarm) = self.deployed.alarm.clone() {
            let subscribers: Vec<(String, String)> = self
                .deployed
                .subscriptions
                .iter()
                .map(|(topic, function)| (topic.clone(), function_name(function)))
                .collect();
            self.tasks.push(tokio::spawn(play_alarm(
                alarm,
                subscribers,
                self.recorder.clone(),
                self.emulator.clone(),
                self.observed.clone(),
            )));
        }
        self.tasks.push(tokio::spawn(watch_slack(
            self.slack.clone(),
            self.observed.clone(),
        )));
    }

    /// Stops every task, function, node and server, and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        // Dropping the rest kills the function processes, nginx, the nodes and moto.
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

fn check_admin_answer(url: &str, answer: Value) -> Result<Value, StackError> {
    let status = answer
        .get("statusCode")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if (200..300).contains(&status) {
        Ok(answer)
    } else {
        let label = jsonrpc_proxy::model::backend_url::BackendUrl::parse(url)
            .map(|u| u.redacted())
            .unwrap_or_else(|_| jsonrpc_proxy::model::backend_url::redact_unvalidated(url));
        Err(StackError::Refused {
            url: label,
            answer: answer
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        })
    }
}

/// The function whose schedule is the health check.
const HEALTH_CHECKER: &str = "health_checker";

/// The event EventBridge delivers for the scheduled rule `rule` (its ARN).
pub fn scheduled_event(rule: &str) -> Value {
    json!({
        "version": "0",
        "id": format!("{:x}", OffsetDateTime::now_utc().unix_timestamp_nanos()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": iso8601(OffsetDateTime::now_utc()),
        "region": devstack::TEST_REGION,
        "resources": [rule],
        "detail": {}
    })
}

/// The event S3 delivers for a new object, with the key URL-encoded as S3 encodes it.
pub fn s3_created_event(bucket: &str, key: &str, size: i64) -> Value {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'*');
    let encoded = percent_encoding::utf8_percent_encode(key, KEEP)
        .to_string()
        .replace("%20", "+");
    json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": devstack::TEST_REGION,
        "eventTime": OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "local"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "config-written",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "local"}, "arn": format!("arn:aws:s3:::{bucket}")},
            "object": {"key": encoded, "size": size, "sequencer": "0"}
        }
    }]})
}

/// A short directory for nginx's unix sockets (their paths must stay under 108 bytes).
fn short_socket_dir() -> Result<PathBuf, StackError> {
    static STACKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(format!("/tmp/jrp-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| StackError::Io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

/// Plays S3's event notification: every new object whose key ends in a notification's
/// suffix becomes an `ObjectCreated` event for that notification's function.
async fn watch_bucket(
    s3: aws_sdk_s3::Client,
    bucket: String,
    notifications: Vec<(String, String)>,
    emulator: Arc<LambdaEmulator>,
    observed: Arc<Mutex<Observed>>,
) {
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    loop {
        match s3.list_objects_v2().bucket(&bucket).send().await {
            Ok(page) => {
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    if seen.insert(key.to_owned(), ()).is_some() {
                        continue;
                    }
                    for (suffix, function) in &notifications {
                        if !key.ends_with(suffix.as_str()) {
                            continue;
                        }
                        let event = s3_created_event(&bucket, key, object.size().unwrap_or(0));
                        if let Err(error) = emulator.invoke_async(function, &event) {
                            lock(&observed).error(format!("{function}: {error}"));
                        }
                    }
                }
            }
            Err(error) => lock(&observed).error(format!(
                "S3 ListObjectsV2: {}",
                aws_sdk_s3::error::DisplayErrorContext(&error)
            )),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Plays CloudWatch's evaluation of the deployed alarm and SNS's delivery of its state
/// changes to the subscribed functions (see [`crate::alarm`]).
async fn play_alarm(
    alarm: crate::deploy::AlarmDefinition,
    subscribers: Vec<(String, String)>,
    recorder: Arc<MetricsRecorder>,
    emulator: Arc<LambdaEmulator>,
    observed: Arc<Mutex<Observed>>,
) {
    let mut state = AlarmState::InsufficientData;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let recorded = match tokio::task::block_in_place(|| recorder.recorded()) {
            Ok(recorded) => recorded,
            Err(error) => {
                lock(&observed).error(format!("CloudWatch recorder: {error}"));
                continue;
            }
        };
        // Evaluation starts once the metric has been published at all.
        let points = alarm::datapoints(&alarm, &recorded);
        if points.is_empty() {
            continue;
        }
        let now = OffsetDateTime::now_utc();
        let evaluation = alarm::evaluate(&alarm, &points, now.unix_timestamp() as f64);
        if evaluation.state == state {
            continue;
        }
        lock(&observed).note(format!(
            "alarm \"{}\": {} → {}",
            alarm.name,
            state.as_str(),
            evaluation.state.as_str()
        ));
        let actions = match evaluation.state {
            AlarmState::Alarm => &alarm.alarm_actions,
            AlarmState::Ok => &alarm.ok_actions,
            AlarmState::InsufficientData => &Vec::new(),
        };
        for topic in actions {
            for (subscribed, function) in &subscribers {
                if subscribed != topic {
                    continue;
                }
                let event = alarm::sns_event(&alarm, topic, state, &evaluation, now);
                if let Err(error) = emulator.invoke_async(function, &event) {
                    lock(&observed).error(format!("{function}: {error}"));
                }
            }
        }
        state = evaluation.state;
    }
}

/// Notes every message the Slack stand-in receives.
async fn watch_slack(slack: SlackStandIn, observed: Arc<Mutex<Observed>>) {
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let posts = slack.posts();
        for post in posts.iter().skip(seen) {
            let text = [&post["text"], &post["attachments"][0]["fallback"]]
                .into_iter()
                .find_map(Value::as_str)
                .map(|t| t.lines().next().unwrap_or("").to_owned())
                .unwrap_or_else(|| post.to_string());
            lock(&observed).note(format!("Slack: {text}"));
        }
        seen = posts.len();
    }
}

/// Plays the ECS service: when the service moves to a new task definition, the config agent
/// applies its `S3_CONFIG_PATH` to the local nginx.
async fn play_ecs_service(
    ecs: aws_sdk_ecs::Client,
    s3: aws_sdk_s3::Client,
    (cluster, service): (String, String),
    nginx: Arc<Mutex<Nginx>>,
    agent: AgentCommand,
    proxy: SocketAddr,
    observed: Arc<Mutex<Observed>>,
) {
    let mut running: Option<String> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let service = match ecs
            .describe_services()
            .cluster(&cluster)
            .services(&service)
            .send()
            .await
        {
            Ok(output) => output
                .services()
                .first()
                .and_then(|s| s.task_definition())
                .map(str::to_owned),
            Err(error) => {
                lock(&observed).error(format!(
                    "ECS DescribeServices: {}",
                    aws_sdk_ecs::error::DisplayErrorContext(&error)
                ));
                continue;
            }
        };
        let Some(arn) = service else { continue };
        if running.as_deref() == Some(arn.as_str()) {
            continue;
        }
        let definition = match ecs
            .describe_task_definition()
            .task_definition(&arn)
            .send()
            .await
        {
            Ok(output) => output.task_definition,
            Err(error) => {
                lock(&observed).error(format!(
                    "ECS DescribeTaskDefinition: {}",
                    aws_sdk_ecs::error::DisplayErrorContext(&error)
                ));
                continue;
            }
        };
        running = Some(arn.clone());
        let Some(path) = definition.as_ref().and_then(config_path_of) else {
            continue; // the first revision has no config: nginx keeps its 404 server
        };
        let (prefix, conf, fragment) = {
            let nginx = lock(&nginx);
            (
                nginx.prefix().to_owned(),
                nginx.prefix().join("conf/nginx.conf"),
                nginx.prefix().join("conf/fragment.conf"),
            )
        };
        match agent.apply(&path, &prefix, &conf, &fragment).await {
            Ok(()) => {
                // The agent returns once nginx's old workers have stopped accepting; the config
                // is in force once a new connection's answer carries its plan header.
                if let Err(error) = wait_until_serving(proxy, &fragment).await {
                    // nginx reloaded onto something that does not answer as this config:
                    // what it serves is not known, so nothing counts as applied.
                    {
                        let mut observed = lock(&observed);
                        observed.error(error);
                        observed.applied = None;
                    }
                    running = None;
                    tokio::time::sleep(APPLY_RETRY_PAUSE).await;
                    continue;
                }
                let backends = pointer_labels(&s3, &path).await;
                let mut observed = lock(&observed);
                observed.note(format!(
                    "nginx now runs {} ({})",
                    path.rsplit('/').next().unwrap_or(&path),
                    if backends.is_empty() {
                        "404 server".to_owned()
                    } else {
                        backends.join(", ")
                    }
                ));
                observed.applied = Some(AppliedConfig {
                    s3_path: path,
                    backends,
                    applied_at: iso8601(OffsetDateTime::now_utc()),
                });
            }
            Err(error) => {
                lock(&observed).error(format!("config agent did not apply {path}: {error}"));
                // As ECS replaces a task that fails: the service's config is applied again.
                running = None;
                tokio::time::sleep(APPLY_RETRY_PAUSE).await;
            }
        }
    }
}

/// Pause before the service's configuration is applied again after a failed apply.
const APPLY_RETRY_PAUSE: Duration = Duration::from_secs(3);

/// How the stack runs the config agent: its binary, the AWS environment it needs and where
/// the backends' sockets go.
#[derive(Debug, Clone)]
struct AgentCommand {
    binary: PathBuf,
    env: Vec<(String, String)>,
    socket_dir: PathBuf,
}

impl AgentCommand {
    /// `config_agent apply`: fetch, `nginx -t`, install, reload, and wait until nginx's old
    /// workers have stopped accepting; the previous config stays when the new one is refused.
    async fn apply(
        &self,
        s3_path: &str,
        prefix: &Path,
        conf: &Path,
        fragment: &Path,
    ) -> Result<(), String> {
        let output = tokio::process::Command::new(&self.binary)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("apply")
            .arg("--socket-dir")
            .arg(&self.socket_dir)
            .arg("--s3-path")
            .arg(s3_path)
            .arg("--config-path")
            .arg(fragment)
            .arg("--nginx-conf")
            .arg(conf)
            .arg("--nginx-prefix")
            .arg(prefix)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            Err(text.lines().last().unwrap_or("failed").to_owned())
        }
    }
}

/// Waits (at most 10 s) until the proxy's answer on a new connection carries the plan header
/// of the installed configuration.
async fn wait_until_serving(proxy: SocketAddr, fragment: &Path) -> Result<(), String> {
    let text = tokio::fs::read_to_string(fragment)
        .await
        .map_err(|e| format!("cannot read {}: {e}", fragment.display()))?;
    let fingerprint = text
        .lines()
        .find_map(|line| line.strip_prefix("# Routing plan "))
        .map(str::trim)
        .ok_or_else(|| format!("{} names no routing plan", fragment.display()))?;
    let expected = jsonrpc_proxy::render::routing::plan_id(fingerprint).to_owned();
    // No pooled connection: a kept-alive one may belong to a worker of the previous config.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://{proxy}/healthz");
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(response) = client.get(&url).send().await {
            let served = response
                .headers()
                .get(jsonrpc_proxy::render::nginx::PLAN_HEADER)
                .and_then(|v| v.to_str().ok());
            if served == Some(expected.as_str()) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "nginx did not serve plan {expected} within 10 s of the reload"
    ))
}

async fn pointer_labels(s3: &aws_sdk_s3::Client, path: &str) -> Vec<String> {
    let Some((bucket, key)) = parse_s3_path(path) else {
        return Vec::new();
    };
    match ConfigBucket::new(s3.clone(), bucket).read_pointer().await {
        Ok(Some(ConfigPointer {
            key: pointed,
            backends,
            ..
        })) if pointed == key => backends,
        _ => Vec::new(),
    }
}

/// Reads the table for the live view and notes every health transition.
async fn watch_table(store: BackendStore, observed: Arc<Mutex<Observed>>) {
    let mut previous: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        match store.scan_all().await {
            Ok(backends) => {
                let mut observed = lock(&observed);
                for backend in &backends {
                    match previous.get(&backend.url) {
                        Some(&was) if was != backend.is_healthy => observed.note(format!(
                            "{} {} → {}{}",
                            backend.label(),
                            if was { "healthy" } else { "unhealthy" },
                            if backend.is_healthy {
                                "healthy"
                            } else {
                                "unhealthy"
                            },
                            backend
                                .health_reason
                                .as_ref()
                                .map(|r| format!(" ({r})"))
                                .unwrap_or_default()
                        )),
                        None => observed.note(format!(
                            "{} registered ({})",
                            backend.label(),
                            if backend.is_leader { "leader" } else { "node" }
                        )),
                        _ => {}
                    }
                }
                for url in previous.keys() {
                    if !backends.iter().any(|b| &b.url == url) {
                        let label = jsonrpc_proxy::model::backend_url::BackendUrl::parse(url)
                            .map(|u| u.redacted())
                            .unwrap_or_default();
                        observed.note(format!("{label} removed"));
                    }
                }
                previous = backends
                    .iter()
                    .map(|b| (b.url.clone(), b.is_healthy))
                    .collect();
                observed.backends = backends;
            }
            Err(error) => lock(&observed).error(format!("table scan: {error}")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_path_nginx_cannot_take_is_refused_before_anything_starts() {
        let parent = tempfile::tempdir().expect("temporary directory");
        for name in ["with space", "c++"] {
            let options =
                StackOptions::defaults(PathBuf::from("/nonexistent"), parent.path().join(name));
            let started = std::time::Instant::now();
            let Err(error) = LocalStack::start(options).await else {
                panic!("a stack started in {name:?}");
            };
            let message = error.to_string();
            assert!(message.contains(name), "{message}");
            assert!(message.contains("move or clone the checkout"), "{message}");
            assert!(started.elapsed() < Duration::from_secs(5), "{message}");
        }
    }

    #[test]
    fn the_proxy_is_reached_at_its_listen_address_or_loopback() {
        let mut options = StackOptions::defaults(PathBuf::from("/b"), PathBuf::from("/w"));
        assert_eq!(options.proxy_address().to_string(), "127.0.0.1:18545");
        options.listen_address = Ipv4Addr::UNSPECIFIED.into();
        assert_eq!(options.proxy_address().to_string(), "127.0.0.1:18545");
        options.listen_address = Ipv6Addr::UNSPECIFIED.into();
        assert_eq!(options.proxy_address().to_string(), "[::1]:18545");
        options.listen_address = Ipv4Addr::new(192, 0, 2, 7).into();
        assert_eq!(options.proxy_address().to_string(), "192.0.2.7:18545");
    }
}
