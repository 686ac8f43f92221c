//! moto: the local AWS endpoint (DynamoDB, S3, ECS, Lambda, IAM, CloudFormation, EC2, ELBv2,
//! SNS, ...) on loopback, started through `scripts/moto_server.py`, which adds the
//! CloudFormation models the deployed template needs (docs/architecture.md, "The local AWS
//! endpoint").

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_ecs::types::{ContainerDefinition, NetworkMode, PortMapping};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{FunctionCode, Runtime};
use aws_sdk_s3::config::Credentials;

use crate::process::{address_in_use, report_failure, Supervised, WorkDir, PYTHON};
use crate::{free_port, http, repo_script, Error};

/// The region every client of the stand-ins uses.
pub const TEST_REGION: &str = "us-east-1";

/// The account moto puts every resource in.
const MOTO_ACCOUNT: &str = "123456789012";

/// The IAM role the Lambda function records are created with.
const LAMBDA_ROLE: &str = "devstack-lambda-role";

/// How long moto may take to start (it imports every service's models).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The launcher, relative to the repository root.
const MOTO_SCRIPT: &str = "scripts/moto_server.py";

/// An empty but valid zip archive (just the end-of-central-directory record), accepted by
/// moto as a function's code.
const EMPTY_ZIP: [u8; 22] = [
    0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// An SDK configuration for a stand-in: `endpoint`, region [`TEST_REGION`], static test
/// credentials. Build every AWS client of a test from it (with the service's `Client::new`,
/// or `from_conf` to change more).
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(TEST_REGION))
        .credentials_provider(Credentials::new(
            "testing", "testing", None, None, "devstack",
        ))
        .load()
        .await
}

/// The ECS resources [`Moto::create_ecs_service`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsService {
    /// `CLUSTER_ARN`.
    pub cluster_arn: String,
    /// `ECS_SERVICE` (the service's name).
    pub service_name: String,
    /// The service's ARN.
    pub service_arn: String,
    /// `TASK_DEFINITION_FAMILY`.
    pub family: String,
    /// The first revision, which the service runs.
    pub task_definition_arn: String,
}

/// What a deployment of `serverless.yml` expects to find in the account (the keys of
/// `config.yml.sample` that name existing resources), made by
/// [`Moto::create_shared_infrastructure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedInfrastructure {
    /// `vpc_id`.
    pub vpc_id: String,
    /// `subnet_ids`: two, in two availability zones.
    pub subnet_ids: Vec<String>,
    /// `security_group_ids`: one.
    pub security_group_ids: Vec<String>,
    /// `ecs_cluster_arn`.
    pub ecs_cluster_arn: String,
    /// `alb_listener_arn`: an HTTP listener on port 80 answering 404 by default.
    pub alb_listener_arn: String,
}

/// A running `moto_server` on 127.0.0.1, killed when dropped.
///
/// Lambda runs in moto's docker-free mode (configured at start): `Invoke` answers without
/// running code (202 for InvocationType `Event`).
#[derive(Debug)]
pub struct Moto {
    port: u16,
    process: Supervised,
    dir: WorkDir,
}

impl Moto {
    /// Starts `scripts/moto_server.py -H 127.0.0.1 -p <free port>` and waits until it answers
    /// (at most 60 s). Blocks the calling thread.
    pub fn start() -> Result<Self, Error> {
        let python = PYTHON.locate()?;
        let script = repo_script(MOTO_SCRIPT, "MOTO_SERVER_SCRIPT");
        let mut dir = WorkDir::new("moto")?;
        let log = dir.path().join("moto_server.log");
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut command = Command::new(&python);
            command
                .arg(&script)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("PYTHONUNBUFFERED", "1");
            let mut process = Supervised::spawn("moto_server", command, &log, &dir)
                .map_err(|e| report_failure(&mut dir, e))?;
            let ready = process.wait_ready(START_TIMEOUT, || {
                http::request(port, "GET", "/moto-api/", &[], b"", Duration::from_secs(2)).is_ok()
            });
            match ready {
                Ok(()) => {
                    let moto = Self { port, process, dir };
                    moto.configure()?;
                    return Ok(moto);
                }
                Err(error) => {
                    let retry = matches!(error, Error::Exited { .. }) && address_in_use(&log);
                    drop(process);
                    if !retry {
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
                    "starting moto_server",
                    std::io::Error::other("no attempt made"),
                )
            }),
        ))
    }

    /// Turns Lambda's docker use off, so that functions can be created and invoked.
    fn configure(&self) -> Result<(), Error> {
        self.moto_api(
            "POST",
            "/moto-api/config",
            br#"{"lambda": {"use_docker": false}, "batch": {"use_docker": false}}"#,
        )
        .map(|_| ())
    }

    /// Clears every resource of every service (`POST /moto-api/reset`); the Lambda
    /// configuration stays.
    pub fn reset(&self) -> Result<(), Error> {
        self.moto_api("POST", "/moto-api/reset", b"").map(|_| ())?;
        self.configure()
    }

    fn moto_api(&self, method: &str, path: &str, body: &[u8]) -> Result<http::Response, Error> {
        let response = http::request(
            self.port,
            method,
            path,
            &[("Content-Type", "application/json")],
            body,
            Duration::from_secs(10),
        )
        .map_err(|e| Error::Request {
            program: "moto_server",
            request: format!("{method} {path}"),
            message: e.to_string(),
        })?;
        if !(200..300).contains(&response.status) {
            return Err(Error::Request {
                program: "moto_server",
                request: format!("{method} {path}"),
                message: format!("status {}: {}", response.status, response.text()),
            });
        }
        Ok(response)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        self.process.log()
    }

    /// Keeps the log directory after drop (for a test that wants to look at it later).
    pub fn keep_logs(&mut self) {
        self.dir.keep();
    }

    /// An SDK configuration pointing at this server (see [`sdk_config`]).
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config(&self.endpoint()).await
    }

    /// Creates the backends table as `serverless.yml` does: hash key `url` (S), on-demand.
    pub async fn create_table(&self, name: &str) -> Result<(), Error> {
        self.create_table_keyed(name, "url").await
    }

    /// Creates the clients table as `serverless.yml` does: hash key `name` (S), on-demand.
    pub async fn create_clients_table(&self, name: &str) -> Result<(), Error> {
        self.create_table_keyed(name, "name").await
    }

    async fn create_table_keyed(&self, name: &str, hash_key: &str) -> Result<(), Error> {
        let client = aws_sdk_dynamodb::Client::new(&self.sdk_config().await);
        client
            .create_table()
            .table_name(name)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(hash_key)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| Error::aws("CreateTable", &e))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(hash_key)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| Error::aws("CreateTable", &e))?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| Error::aws("CreateTable", &e))?;
        Ok(())
    }

    /// Creates a bucket (in [`TEST_REGION`], so without a location constraint).
    pub async fn create_bucket(&self, name: &str) -> Result<(), Error> {
        let client = aws_sdk_s3::Client::new(&self.sdk_config().await);
        client
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .map_err(|e| Error::aws("CreateBucket", &e))?;
        Ok(())
    }

    /// Creates an ECS cluster, a task definition family with one container `nginx` (bridge
    /// networking, 64 MB, port 80), and a service of one task on its first revision.
    pub async fn create_ecs_service(
        &self,
        cluster: &str,
        family: &str,
        service: &str,
    ) -> Result<EcsService, Error> {
        let client = aws_sdk_ecs::Client::new(&self.sdk_config().await);
        let cluster_arn = create_cluster(&client, cluster).await?;
        let task_definition_arn = client
            .register_task_definition()
            .family(family)
            .network_mode(NetworkMode::Bridge)
            .container_definitions(
                ContainerDefinition::builder()
                    .name("nginx")
                    .image(format!(
                        "{MOTO_ACCOUNT}.dkr.ecr.{TEST_REGION}.amazonaws.com/jsonrpc-proxy:latest"
                    ))
                    .memory(64)
                    .essential(true)
                    .port_mappings(
                        PortMapping::builder()
                            .container_port(80)
                            .host_port(0)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::aws("RegisterTaskDefinition", &e))?
            .task_definition
            .and_then(|t| t.task_definition_arn)
            .ok_or_else(|| Error::Aws {
                operation: "RegisterTaskDefinition",
                message: "no task definition ARN returned".into(),
            })?;
        let service_arn = client
            .create_service()
            .cluster(&cluster_arn)
            .service_name(service)
            .task_definition(&task_definition_arn)
            .desired_count(1)
            .send()
            .await
            .map_err(|e| Error::aws("CreateService", &e))?
            .service
            .and_then(|s| s.service_arn)
            .ok_or_else(|| Error::Aws {
                operation: "CreateService",
                message: "no service ARN returned".into(),
            })?;
        Ok(EcsService {
            cluster_arn,
            service_name: service.to_owned(),
            service_arn,
            family: family.to_owned(),
            task_definition_arn,
        })
    }

    /// Creates a Lambda function record (runtime `provided.al2023`, empty code) that can be
    /// invoked, and the IAM role it needs; returns the function's ARN. moto runs no code:
    /// `Invoke` with InvocationType `Event` answers 202.
    pub async fn create_lambda_function(&self, name: &str) -> Result<String, Error> {
        let role = self.ensure_lambda_role()?;
        let client = aws_sdk_lambda::Client::new(&self.sdk_config().await);
        let output = client
            .create_function()
            .function_name(name)
            .runtime(Runtime::Providedal2023)
            .role(role)
            .handler("bootstrap")
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(EMPTY_ZIP.to_vec()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::aws("CreateFunction", &e))?;
        output.function_arn.ok_or_else(|| Error::Aws {
            operation: "CreateFunction",
            message: "no function ARN returned".into(),
        })
    }

    /// Creates a VPC with two subnets and a security group, an ECS cluster named `cluster`, and
    /// an Application Load Balancer with an HTTP listener: what an account that deploys the
    /// stack already has.
    pub async fn create_shared_infrastructure(
        &self,
        cluster: &str,
    ) -> Result<SharedInfrastructure, Error> {
        const EC2: (&str, &str) = ("ec2", "2016-11-15");
        const ELB: (&str, &str) = ("elasticloadbalancing", "2015-12-01");
        let vpc_id = self.query(EC2, "CreateVpc", &[("CidrBlock", "10.0.0.0/16")], "vpcId")?;
        let mut subnet_ids = Vec::new();
        for (cidr, zone) in [("10.0.1.0/24", "a"), ("10.0.2.0/24", "b")] {
            let zone = format!("{TEST_REGION}{zone}");
            subnet_ids.push(self.query(
                EC2,
                "CreateSubnet",
                &[
                    ("VpcId", &vpc_id),
                    ("CidrBlock", cidr),
                    ("AvailabilityZone", &zone),
                ],
                "subnetId",
            )?);
        }
        let group = self.query(
            EC2,
            "CreateSecurityGroup",
            &[
                ("GroupName", "jsonrpc-proxy-nodes"),
                ("GroupDescription", "reaches the Ethereum nodes"),
                ("VpcId", &vpc_id),
            ],
            "groupId",
        )?;
        let balancer = self.query(
            ELB,
            "CreateLoadBalancer",
            &[
                ("Name", "shared"),
                ("Subnets.member.1", &subnet_ids[0]),
                ("Subnets.member.2", &subnet_ids[1]),
                ("SecurityGroups.member.1", &group),
            ],
            "LoadBalancerArn",
        )?;
        let listener = self.query(
            ELB,
            "CreateListener",
            &[
                ("LoadBalancerArn", &balancer),
                ("Protocol", "HTTP"),
                ("Port", "80"),
                ("DefaultActions.member.1.Type", "fixed-response"),
                (
                    "DefaultActions.member.1.FixedResponseConfig.StatusCode",
                    "404",
                ),
            ],
            "ListenerArn",
        )?;
        let ecs = aws_sdk_ecs::Client::new(&self.sdk_config().await);
        let ecs_cluster_arn = create_cluster(&ecs, cluster).await?;
        Ok(SharedInfrastructure {
            vpc_id,
            subnet_ids,
            security_group_ids: vec![group],
            ecs_cluster_arn,
            alb_listener_arn: listener,
        })
    }

    /// One call of an AWS query API (`(service, version)`), answering the text of the first
    /// `<element>` of the XML answer.
    fn query(
        &self,
        (service, version): (&str, &str),
        action: &'static str,
        parameters: &[(&str, &str)],
        element: &str,
    ) -> Result<String, Error> {
        let mut body = format!("Action={action}&Version={version}");
        for (name, value) in parameters {
            body.push_str(&format!("&{name}={}", form_encode(value)));
        }
        let response = self.post_query(service, action, &body)?;
        let text = response.text();
        let open = format!("<{element}>");
        let value = text
            .split_once(&open)
            .and_then(|(_, rest)| rest.split_once(&format!("</{element}>")))
            .map(|(value, _)| value.trim().to_owned());
        match value {
            Some(value) if (200..300).contains(&response.status) => Ok(value),
            _ => Err(Error::Aws {
                operation: action,
                message: format!("status {}: {text}", response.status),
            }),
        }
    }

    /// Posts a query-API form to moto, routed to `service`.
    fn post_query(
        &self,
        service: &str,
        action: &'static str,
        body: &str,
    ) -> Result<http::Response, Error> {
        // moto routes a request by the service of its credential scope.
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/{TEST_REGION}/{service}/aws4_request, \
             SignedHeaders=host, Signature=0"
        );
        http::request(
            self.port,
            "POST",
            "/",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &authorization),
            ],
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .map_err(|e| Error::Aws {
            operation: action,
            message: e.to_string(),
        })
    }

    /// Creates the Lambda execution role through IAM's query API (once per server).
    fn ensure_lambda_role(&self) -> Result<String, Error> {
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let body = format!(
            "Action=CreateRole&Version=2010-05-08&RoleName={LAMBDA_ROLE}&AssumeRolePolicyDocument={}",
            form_encode(policy)
        );
        let response = self.post_query("iam", "CreateRole", &body)?;
        let text = response.text();
        let already = response.status == 409 || text.contains("EntityAlreadyExists");
        if !(200..300).contains(&response.status) && !already {
            return Err(Error::Aws {
                operation: "CreateRole",
                message: format!("status {}: {text}", response.status),
            });
        }
        Ok(format!("arn:aws:iam::{MOTO_ACCOUNT}:role/{LAMBDA_ROLE}"))
    }
}

/// Creates an ECS cluster; answers its ARN.
async fn create_cluster(client: &aws_sdk_ecs::Client, name: &str) -> Result<String, Error> {
    client
        .create_cluster()
        .cluster_name(name)
        .send()
        .await
        .map_err(|e| Error::aws("CreateCluster", &e))?
        .cluster
        .and_then(|c| c.cluster_arn)
        .ok_or_else(|| Error::Aws {
            operation: "CreateCluster",
            message: "no cluster ARN returned".into(),
        })
}

/// The AWS environment of a process that talks to the stand-ins: every service at `endpoint`,
/// CloudWatch at the recorder `cloudwatch`, region [`TEST_REGION`], test credentials.
pub fn aws_env(endpoint: &str, cloudwatch: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch),
        ("AWS_REGION", TEST_REGION),
        ("AWS_DEFAULT_REGION", TEST_REGION),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b/{\"c\"}"), "a%20b%2F%7B%22c%22%7D");
    }
}
