//! The `local` stage: its configuration file, `sls deploy -s local` / `sls remove -s local`,
//! and what the deployed stack holds, read back from the local AWS endpoint (functions with
//! their environment, schedule, bucket notification, alarm, SNS subscriptions, ECS service).
//! Why the local stack runs on a deployed stack: docs/architecture.md, "The local stage".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::SdkConfig;
use base64::Engine as _;
use devstack::SharedInfrastructure;
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The stage the local stack deploys.
pub const STAGE: &str = "local";
/// `<service>-<stage>`: the stack, the table and the prefix of every function name.
pub const STACK_NAME: &str = "jsonrpc-proxy-local";

/// Logical id of the backends table (`infra/storage.yml`).
pub const BACKENDS_TABLE: &str = "BackendsTable";
/// Logical id of the clients table (`infra/storage.yml`).
pub const CLIENTS_TABLE: &str = "ClientsTable";

/// Deploying or reading the stack failed.
#[derive(Debug, Error)]
pub enum DeployError {
    /// A Serverless CLI command failed: the command and its output.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// A file could not be written or read.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// An AWS call to the local endpoint failed.
    #[error("{operation}: {message}")]
    Aws {
        /// The operation.
        operation: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The deployed stack is not what `serverless.yml` declares.
    #[error("the deployed stack {0}")]
    Stack(String),
}

fn aws<E: std::error::Error + 'static>(
    operation: &'static str,
) -> impl FnOnce(aws_sdk_cloudformation::error::SdkError<E>) -> DeployError {
    move |error| DeployError::Aws {
        operation,
        message: aws_sdk_cloudformation::error::DisplayErrorContext(&error).to_string(),
    }
}

/// The values of `config.local.yml`: the account's shared infrastructure, and where this
/// machine's nginx "container" listens.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// VPC, subnets, security group, ECS cluster, load balancer listener.
    pub shared: SharedInfrastructure,
    /// `nginx_listen_port`.
    pub listen_port: u16,
    /// `nginx_listen_address`.
    pub listen_address: std::net::IpAddr,
    /// `nginx_socket_dir`.
    pub socket_dir: String,
    /// `diff_tolerance`.
    pub tolerance: u64,
    /// `probe_timeout_ms`.
    pub probe_timeout_ms: u128,
    /// `slack_webhook_url`.
    pub slack_webhook_url: String,
    /// `alarm_period_seconds` (10, 30 or a multiple of 60).
    pub alarm_period_seconds: u64,
    /// `gate.lua_dir`: the repository's `docker/gate`, absolute.
    pub gate_lua_dir: String,
    /// `gate.access_log`: nginx's access log of the public server, absolute.
    pub gate_access_log: String,
    /// `gate.default_calls_per_second`; `None` keeps the deployment's default.
    pub gate_calls_per_second: Option<u32>,
    /// `gate.open_without_key`: serve callers without a key while no client is registered.
    pub gate_open_without_key: bool,
}

impl LocalConfig {
    /// The file's text (every key is explained in `config.yml.sample`).
    pub fn yaml(&self) -> String {
        let list = |items: &[String]| format!("[{}]", items.join(", "));
        format!(
            "# Written by the local stack (jsonrpc-proxy-local) at every start: the local AWS\n\
             # endpoint's resources change with every start. See config.yml.sample.\n\
             region: {region}\n\
             vpc_id: {vpc}\n\
             subnet_ids: {subnets}\n\
             security_group_ids: {groups}\n\
             ecr_image_uri: 123456789012.dkr.ecr.{region}.amazonaws.com/jsonrpc-proxy-nginx:local\n\
             ecs_cluster_arn: {cluster}\n\
             nginx_desired_count: 1\n\
             nginx_listen_port: {port}\n\
             nginx_listen_address: \"{address}\"\n\
             nginx_socket_dir: \"{sockets}\"\n\
             alb_listener_arn: {listener}\n\
             alb_rule_priority: 10\n\
             host_name: localhost\n\
             diff_tolerance: {tolerance}\n\
             probe_timeout_ms: {probe}\n\
             slack_webhook_url: {webhook}\n\
             alarm_healthy_nodes_threshold: 2\n\
             alarm_evaluation_periods: 2\n\
             alarm_period_seconds: {period}\n\
             gate:\n\
             \x20 lua_dir: \"{lua}\"\n\
             \x20 access_log: \"{access_log}\"\n\
             \x20 default_calls_per_second: \"{calls}\"\n\
             \x20 open_without_key: {open}\n",
            region = devstack::TEST_REGION,
            vpc = self.shared.vpc_id,
            subnets = list(&self.shared.subnet_ids),
            groups = list(&self.shared.security_group_ids),
            cluster = self.shared.ecs_cluster_arn,
            port = self.listen_port,
            address = self.listen_address,
            sockets = self.socket_dir,
            listener = self.shared.alb_listener_arn,
            tolerance = self.tolerance,
            probe = self.probe_timeout_ms,
            webhook = self.slack_webhook_url,
            period = self.alarm_period_seconds,
            lua = self.gate_lua_dir,
            access_log = self.gate_access_log,
            calls = self
                .gate_calls_per_second
                .map(|c| c.to_string())
                .unwrap_or_default(),
            open = self.gate_open_without_key,
        )
    }
}

/// The Serverless CLI of the repository (`node_modules/.bin/sls`), pointed at the local AWS
/// endpoint by the serverless-localstack plugin (`EDGE_PORT`).
#[derive(Debug, Clone)]
pub struct Serverless {
    /// The repository (where `serverless.yml` is).
    pub repo_root: PathBuf,
    /// The configuration file (`JSONRPC_PROXY_CONFIG`).
    pub config: PathBuf,
    /// The local AWS endpoint's port.
    pub aws_port: u16,
    /// Deploy the zips already built (`SKIP_CARGO_LAMBDA_BUILD=1`) instead of building them.
    pub skip_build: bool,
    /// Where every call's output goes as it is written (`sls-<command>.log`), so that a call
    /// that hangs still shows how far it came.
    pub log_dir: PathBuf,
}

impl Serverless {
    /// Runs `sls <args> -s local`; answers what it printed, or an error with the command and
    /// its output.
    pub async fn run(&self, args: &[&str]) -> Result<String, DeployError> {
        let sls = self.repo_root.join("node_modules/.bin/sls");
        let command_line = format!("sls {} -s {STAGE}", args.join(" "));
        let log_path = self
            .log_dir
            .join(format!("sls-{}.log", args.first().unwrap_or(&"run")));
        let log = std::fs::File::create(&log_path)
            .and_then(|file| Ok((file.try_clone()?, file)))
            .map_err(|e| DeployError::Io(format!("creating {}", log_path.display()), e))?;
        let status = tokio::process::Command::new(&sls)
            .args(args)
            .args(["-s", STAGE])
            .current_dir(&self.repo_root)
            // `cargo lambda` and zig, from the repository's tools when the scripts did not set PATH.
            .env("PATH", devstack::tool_path())
            .env("JSONRPC_PROXY_CONFIG", &self.config)
            .env("EDGE_PORT", self.aws_port.to_string())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("SLS_TELEMETRY_DISABLED", "1")
            .env("SLS_NOTIFICATIONS_MODE", "off")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL")
            .env(
                "SKIP_CARGO_LAMBDA_BUILD",
                if self.skip_build { "1" } else { "0" },
            )
            .stdin(std::process::Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| DeployError::Io(format!("running {}", sls.display()), e))?;
        let text = std::fs::read(&log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| DeployError::Io(format!("reading {}", log_path.display()), e))?;
        if status.success() {
            Ok(text)
        } else {
            Err(DeployError::Command {
                command: command_line,
                status: status.to_string(),
                output: text,
            })
        }
    }

    /// `sls package -s local --package <dir>`, then `sls deploy -s local --package <dir>`:
    /// `sls deploy -s local` in two steps, so that stacks started side by side (tests) keep
    /// their packages apart. The deploy step still reads the state file from the service's own
    /// `.serverless` directory, which another stack's `sls` may be rewriting: one `sls` at a
    /// time per checkout ([`Serverless::exclusive`]).
    pub async fn deploy(&self, package_dir: &Path) -> Result<String, DeployError> {
        let dir = package_dir.display().to_string();
        let _turn = self.exclusive().await?;
        let packaged = self.run(&["package", "--package", &dir]).await?;
        Ok(packaged + &self.run(&["deploy", "--package", &dir]).await?)
    }

    /// `sls remove -s local`.
    pub async fn remove(&self) -> Result<String, DeployError> {
        let _turn = self.exclusive().await?;
        self.run(&["remove"]).await
    }

    /// Waits for this checkout's `sls` lock (a file lock, so it holds across processes: test
    /// binaries run side by side); held until the answer is dropped.
    async fn exclusive(&self) -> Result<std::fs::File, DeployError> {
        let name: String = self
            .repo_root
            .display()
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join(format!("jsonrpc-proxy-sls{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DeployError::Io(format!("opening {}", path.display()), e))?;
        tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd as _;
            // SAFETY: flock(2) on a descriptor this function owns; no memory involved.
            match unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } {
                0 => Ok(file),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
        .await
        .map_err(|e| DeployError::Io("waiting for the sls lock".into(), std::io::Error::other(e)))?
        .map_err(|e| DeployError::Io(format!("locking {}", path.display()), e))
    }
}

/// A deployed Lambda function.
#[derive(Debug, Clone)]
pub struct DeployedFunction {
    /// The function's key in `serverless.yml`, also its crate's name.
    pub key: String,
    /// `jsonrpc-proxy-local-<key>`.
    pub name: String,
    /// Its ARN.
    pub arn: String,
    /// The environment CloudFormation gave it.
    pub env: BTreeMap<String, String>,
    /// Its timeout.
    pub timeout: Duration,
    /// Its memory size, MB.
    pub memory_mb: u32,
    /// Its execution role's ARN.
    pub role: String,
    /// Base64 SHA-256 of its code (the zip).
    pub code_sha256: String,
}

/// The deployed `AWS::CloudWatch::Alarm`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmDefinition {
    /// `AlarmName`.
    pub name: String,
    /// `AlarmDescription`.
    pub description: String,
    /// `Namespace`.
    pub namespace: String,
    /// `MetricName`.
    pub metric_name: String,
    /// `Dimensions` as (name, value).
    pub dimensions: Vec<(String, String)>,
    /// `Statistic`.
    pub statistic: String,
    /// `Period`, seconds.
    pub period: u64,
    /// `EvaluationPeriods`.
    pub evaluation_periods: u64,
    /// `DatapointsToAlarm` (`EvaluationPeriods` when absent).
    pub datapoints_to_alarm: u64,
    /// `Threshold`.
    pub threshold: f64,
    /// `ComparisonOperator`.
    pub comparison_operator: String,
    /// `TreatMissingData` (`missing` when absent).
    pub treat_missing_data: String,
    /// `AlarmActions`, resolved to ARNs.
    pub alarm_actions: Vec<String>,
    /// `OKActions`, resolved to ARNs.
    pub ok_actions: Vec<String>,
}

/// What the local stack plays for the deployed stack.
#[derive(Debug, Clone)]
pub struct DeployedStack {
    /// Every function, by key.
    pub functions: BTreeMap<String, DeployedFunction>,
    /// The backends table.
    pub table: String,
    /// The clients table.
    pub clients_table: String,
    /// The config bucket.
    pub bucket: String,
    /// The bucket's Lambda notifications: (key suffix, function key).
    pub bucket_notifications: Vec<(String, String)>,
    /// Scheduled rules: (rule ARN, schedule expression, function key).
    pub schedules: Vec<(String, String, String)>,
    /// SNS subscriptions of functions: (topic ARN, function key).
    pub subscriptions: Vec<(String, String)>,
    /// The alarm.
    pub alarm: Option<AlarmDefinition>,
    /// The ECS cluster's ARN.
    pub cluster: String,
    /// The ECS service's ARN.
    pub service: String,
}

impl DeployedStack {
    /// Reads the stack's resources and template from the endpoint `sdk` points at.
    pub async fn read(sdk: &SdkConfig) -> Result<Self, DeployError> {
        let cloudformation = aws_sdk_cloudformation::Client::new(sdk);
        let status = cloudformation
            .describe_stacks()
            .stack_name(STACK_NAME)
            .send()
            .await
            .map_err(aws("DescribeStacks"))?
            .stacks()
            .first()
            .and_then(|s| s.stack_status().map(|s| s.as_str().to_owned()))
            .unwrap_or_default();
        if !status.ends_with("_COMPLETE") || status.contains("ROLLBACK") {
            return Err(DeployError::Stack(format!("is {status}, not complete")));
        }
        let resources: BTreeMap<String, (String, String)> = cloudformation
            .describe_stack_resources()
            .stack_name(STACK_NAME)
            .send()
            .await
            .map_err(aws("DescribeStackResources"))?
            .stack_resources()
            .iter()
            .filter_map(|r| {
                Some((
                    r.logical_resource_id()?.to_owned(),
                    (
                        r.resource_type()?.to_owned(),
                        r.physical_resource_id().unwrap_or_default().to_owned(),
                    ),
                ))
            })
            .collect();
        let body = cloudformation
            .get_template()
            .stack_name(STACK_NAME)
            .send()
            .await
            .map_err(aws("GetTemplate"))?
            .template_body
            .unwrap_or_default();
        let template: Value = serde_json::from_str(&body)
            .map_err(|e| DeployError::Stack(format!("template is not JSON: {e}")))?;
        let declared = template["Resources"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let physical = |logical: &str| resources.get(logical).map(|(_, id)| id.clone());
        let of_type = |kind: &'static str| of_type(&declared, kind);
        let single = |kind: &'static str| {
            of_type(kind)
                .next()
                .and_then(|(logical, properties)| Some((physical(&logical)?, properties)))
                .ok_or_else(|| DeployError::Stack(format!("has no {kind}")))
        };

        let lambda = aws_sdk_lambda::Client::new(sdk);
        let mut functions = BTreeMap::new();
        let mut function_keys = BTreeMap::new();
        for (logical, _) in of_type("AWS::Lambda::Function") {
            let name =
                physical(&logical).ok_or_else(|| DeployError::Stack(format!("lacks {logical}")))?;
            let configuration = lambda
                .get_function_configuration()
                .function_name(&name)
                .send()
                .await
                .map_err(|e| DeployError::Aws {
                    operation: "GetFunctionConfiguration",
                    message: aws_sdk_lambda::error::DisplayErrorContext(&e).to_string(),
                })?;
            let key = name
                .strip_prefix(&format!("{STACK_NAME}-"))
                .ok_or_else(|| DeployError::Stack(format!("has a function {name}")))?
                .to_owned();
            function_keys.insert(logical, key.clone());
            functions.insert(
                key.clone(),
                DeployedFunction {
                    key,
                    arn: configuration.function_arn().unwrap_or_default().to_owned(),
                    env: configuration
                        .environment()
                        .and_then(|e| e.variables())
                        .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                    timeout: Duration::from_secs(
                        u64::try_from(configuration.timeout().unwrap_or(3)).unwrap_or(3),
                    ),
                    memory_mb: u32::try_from(configuration.memory_size().unwrap_or(128))
                        .unwrap_or(128),
                    role: configuration.role().unwrap_or_default().to_owned(),
                    code_sha256: configuration.code_sha256().unwrap_or_default().to_owned(),
                    name,
                },
            );
        }
        // `{"Fn::GetAtt": [<function>, "Arn"]}` → the function's key.
        let function_of = |value: &Value| {
            value["Fn::GetAtt"][0]
                .as_str()
                .and_then(|logical| function_keys.get(logical).cloned())
        };
        // `{"Ref": <resource>}` → its physical id; a string stays itself.
        let resolve = |value: &Value| match value {
            Value::String(text) => Some(text.clone()),
            other => other["Ref"].as_str().and_then(physical),
        };

        let table_named = |logical: &str| {
            resources
                .get(logical)
                .filter(|(kind, _)| kind == "AWS::DynamoDB::Table")
                .map(|(_, id)| id.clone())
                .ok_or_else(|| DeployError::Stack(format!("has no table {logical}")))
        };
        let table = table_named(BACKENDS_TABLE)?;
        let clients_table = table_named(CLIENTS_TABLE)?;
        let (bucket, bucket_properties) = of_type("AWS::S3::Bucket")
            .filter(|(_, properties)| !properties["NotificationConfiguration"].is_null())
            .find_map(|(logical, properties)| Some((physical(&logical)?, properties)))
            .ok_or_else(|| DeployError::Stack("has no bucket with notifications".into()))?;
        let bucket_notifications = bucket_properties["NotificationConfiguration"]
            ["LambdaConfigurations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["Event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("s3:ObjectCreated:"))
            })
            .filter_map(|c| {
                let suffix = c["Filter"]["S3Key"]["Rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|rule| rule["Name"] == "suffix")
                    .and_then(|rule| rule["Value"].as_str())
                    .unwrap_or("")
                    .to_owned();
                Some((suffix, function_of(&c["Function"])?))
            })
            .collect();
        let schedules = of_type("AWS::Events::Rule")
            .filter_map(|(logical, properties)| {
                let rule = physical(&logical)?;
                let expression = properties["ScheduleExpression"].as_str()?.to_owned();
                let target = properties["Targets"].as_array()?.first()?;
                Some((
                    format!(
                        "arn:aws:events:{}:123456789012:rule/{rule}",
                        devstack::TEST_REGION
                    ),
                    expression,
                    function_of(&target["Arn"])?,
                ))
            })
            .collect();
        let subscriptions = of_type("AWS::SNS::Subscription")
            .filter(|(_, properties)| properties["Protocol"] == "lambda")
            .filter_map(|(_, properties)| {
                Some((
                    resolve(&properties["TopicArn"])?,
                    function_of(&properties["Endpoint"])?,
                ))
            })
            .collect();
        let alarm = of_type("AWS::CloudWatch::Alarm")
            .next()
            .map(|(logical, p)| alarm_definition(&logical, &p, &resolve));
        let (service, service_properties) = single("AWS::ECS::Service")?;
        let cluster = resolve(&service_properties["Cluster"])
            .ok_or_else(|| DeployError::Stack("names no ECS cluster".into()))?;
        Ok(Self {
            functions,
            table,
            clients_table,
            bucket,
            bucket_notifications,
            schedules,
            subscriptions,
            alarm,
            cluster,
            service,
        })
    }

    /// The function deployed under `key`.
    pub fn function(&self, key: &str) -> Result<&DeployedFunction, DeployError> {
        self.functions
            .get(key)
            .ok_or_else(|| DeployError::Stack(format!("has no function {key}")))
    }

    /// Checks that every function's deployed code is the artifact packaged for it,
    /// `<artifacts>/<key>/<key>.zip`.
    pub fn check_code(&self, artifacts: &Path) -> Result<(), DeployError> {
        for function in self.functions.values() {
            let zip = artifacts
                .join(&function.key)
                .join(format!("{}.zip", function.key));
            let bytes =
                std::fs::read(&zip).map_err(|e| DeployError::Io(zip.display().to_string(), e))?;
            let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes));
            if digest != function.code_sha256 {
                return Err(DeployError::Stack(format!(
                    "runs other code as {}: CodeSha256 {} is not {} ({})",
                    function.name,
                    function.code_sha256,
                    digest,
                    zip.display()
                )));
            }
        }
        Ok(())
    }
}

/// The resources of a type in a template: (logical id, properties).
fn of_type<'a>(
    declared: &'a serde_json::Map<String, Value>,
    kind: &'a str,
) -> impl Iterator<Item = (String, Value)> + 'a {
    declared
        .iter()
        .filter(move |(_, r)| r["Type"] == kind)
        .map(|(logical, r)| (logical.clone(), r["Properties"].clone()))
}

fn alarm_definition(
    logical: &str,
    properties: &Value,
    resolve: &dyn Fn(&Value) -> Option<String>,
) -> AlarmDefinition {
    let text = |key: &str| match &properties[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let number = |key: &str| text(key).trim().parse::<f64>().ok();
    let whole = |key: &str| number(key).map(|n| n.max(0.0) as u64);
    let actions = |key: &str| {
        properties[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(resolve)
            .collect::<Vec<_>>()
    };
    let evaluation_periods = whole("EvaluationPeriods").unwrap_or(1).max(1);
    AlarmDefinition {
        name: Some(text("AlarmName"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| logical.to_owned()),
        description: text("AlarmDescription"),
        namespace: text("Namespace"),
        metric_name: text("MetricName"),
        dimensions: properties["Dimensions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| Some((d["Name"].as_str()?.to_owned(), resolve(&d["Value"])?)))
            .collect(),
        statistic: text("Statistic"),
        period: whole("Period").unwrap_or(60).max(1),
        evaluation_periods,
        datapoints_to_alarm: whole("DatapointsToAlarm").unwrap_or(evaluation_periods),
        threshold: number("Threshold").unwrap_or(0.0),
        comparison_operator: text("ComparisonOperator"),
        treat_missing_data: Some(text("TreatMissingData"))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "missing".to_owned()),
        alarm_actions: actions("AlarmActions"),
        ok_actions: actions("OKActions"),
    }
}
