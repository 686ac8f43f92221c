//! [`TestStack`]: what `serverless.yml` creates, under unique names, on the shared moto.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use jsonrpc_proxy::aws::clients_store::ClientStore;
use jsonrpc_proxy::aws::config_bucket::{ConfigBucket, ConfigPointer};
use jsonrpc_proxy::aws::renderer_trigger::RendererTrigger;
use jsonrpc_proxy::aws::store::BackendStore;
use jsonrpc_proxy::functions::config_renderer::ConfigRenderer;
use jsonrpc_proxy::model::backend::Backend;
use jsonrpc_proxy::model::backend_url::BackendUrl;
use jsonrpc_proxy::render::gate::GatePolicy;
use jsonrpc_proxy::render::options::RenderOptions;
use jsonrpc_proxy::render::routing::RoutingPlan;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{moto, recorder, unique, CheckerBuilder, Item};
use crate::FaultProxy;

/// AWS clients built from one endpoint (CloudWatch from another), with the SDK's default
/// retry configuration. Clients are tied to the runtime that built them: one set per test.
#[derive(Clone)]
pub struct Clients {
    #[allow(missing_docs)]
    pub dynamodb: aws_sdk_dynamodb::Client,
    #[allow(missing_docs)]
    pub s3: aws_sdk_s3::Client,
    #[allow(missing_docs)]
    pub ecs: aws_sdk_ecs::Client,
    #[allow(missing_docs)]
    pub lambda: aws_sdk_lambda::Client,
    #[allow(missing_docs)]
    pub cloudwatch: aws_sdk_cloudwatch::Client,
}

impl Clients {
    /// Clients for `endpoint`, CloudWatch for `cloudwatch_endpoint`.
    pub async fn new(endpoint: &str, cloudwatch_endpoint: &str) -> Self {
        let config = crate::sdk_config(endpoint).await;
        let cloudwatch = crate::sdk_config(cloudwatch_endpoint).await;
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            s3: aws_sdk_s3::Client::new(&config),
            ecs: aws_sdk_ecs::Client::new(&config),
            lambda: aws_sdk_lambda::Client::new(&config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&cloudwatch),
        }
    }
}

/// Fault proxies in front of moto and the recorder, and clients through them.
struct Faults {
    moto: FaultProxy,
    metrics: FaultProxy,
    clients: Clients,
}

/// The tables, bucket and renderer function `serverless.yml` creates, a CloudWatch namespace
/// and a stack name, all unique to one test, on the binary's [`moto`] and [`recorder`].
///
/// [`TestStack::with_faults`] puts a [`FaultProxy`] in front of each; the code under test
/// ([`TestStack::clients`], [`TestStack::checker`], [`TestStack::trigger`],
/// [`TestStack::renderer`]) then goes through them, while the helpers that set up and inspect
/// ([`TestStack::aws`], [`TestStack::store`], [`TestStack::bucket`], [`TestStack::items`])
/// always go straight to moto.
pub struct TestStack {
    /// Straight to moto and the recorder.
    pub aws: Clients,
    #[allow(missing_docs)]
    pub table: String,
    /// The clients table (hash key `name`).
    pub clients_table: String,
    #[allow(missing_docs)]
    pub bucket_name: String,
    /// The renderer's Lambda function.
    pub function: String,
    /// The CloudWatch namespace.
    pub namespace: String,
    #[allow(missing_docs)]
    pub stack_name: String,
    faults: Option<Faults>,
}

impl TestStack {
    /// A stack whose code under test talks straight to moto.
    pub async fn new(prefix: &str) -> Self {
        Self::create(prefix, false).await
    }

    /// A stack whose code under test talks through fault proxies.
    pub async fn with_faults(prefix: &str) -> Self {
        Self::create(prefix, true).await
    }

    async fn create(prefix: &str, faulty: bool) -> Self {
        let moto = moto();
        let table = unique(&format!("{prefix}-table"));
        let clients_table = unique(&format!("{prefix}-clients"));
        let bucket_name = unique(&format!("{prefix}-bucket"));
        let function = unique(&format!("{prefix}-renderer"));
        moto.create_table(&table).await.expect("create table");
        moto.create_clients_table(&clients_table)
            .await
            .expect("create clients table");
        moto.create_bucket(&bucket_name)
            .await
            .expect("create bucket");
        // moto now and then answers the first CreateFunction of a fresh server without an
        // ARN; a second attempt works.
        let mut created = moto.create_lambda_function(&function).await;
        for _ in 0..3 {
            if created.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            created = moto.create_lambda_function(&function).await;
        }
        created.expect("create function");
        let aws = Clients::new(&moto.endpoint(), &recorder().endpoint()).await;
        let faults = if faulty {
            let moto = FaultProxy::start(&moto.endpoint()).expect("fault proxy for moto");
            let metrics =
                FaultProxy::start(&recorder().endpoint()).expect("fault proxy for the recorder");
            let clients = Clients::new(&moto.endpoint(), &metrics.endpoint()).await;
            Some(Faults {
                moto,
                metrics,
                clients,
            })
        } else {
            None
        };
        Self {
            aws,
            namespace: unique(&format!("{prefix}-ns")),
            stack_name: unique(&format!("{prefix}-stack")),
            table,
            clients_table,
            bucket_name,
            function,
            faults,
        }
    }

    fn faults(&self) -> &Faults {
        self.faults
            .as_ref()
            .expect("a stack made with TestStack::with_faults")
    }

    /// The fault proxy in front of moto (a stack made [`TestStack::with_faults`]).
    pub fn moto_proxy(&self) -> &FaultProxy {
        &self.faults().moto
    }

    /// The fault proxy in front of the recorder (a stack made [`TestStack::with_faults`]).
    pub fn metrics_proxy(&self) -> &FaultProxy {
        &self.faults().metrics
    }

    /// The clients of the code under test: through the fault proxies when there are some.
    pub fn clients(&self) -> &Clients {
        self.faults
            .as_ref()
            .map_or(&self.aws, |faults| &faults.clients)
    }

    /// The table, straight to moto.
    pub fn store(&self) -> BackendStore {
        BackendStore::new(self.aws.dynamodb.clone(), &self.table)
    }

    /// The clients table, straight to moto.
    pub fn client_store(&self) -> ClientStore {
        ClientStore::new(self.aws.dynamodb.clone(), &self.clients_table)
    }

    /// The bucket, straight to moto.
    pub fn bucket(&self) -> ConfigBucket {
        ConfigBucket::new(self.aws.s3.clone(), &self.bucket_name)
    }

    /// The renderer trigger of the code under test.
    pub fn trigger(&self) -> RendererTrigger {
        RendererTrigger::new(self.clients().lambda.clone(), &self.function)
    }

    /// A health checker over this stack for the code under test (see [`CheckerBuilder`]).
    pub fn checker(&self) -> CheckerBuilder {
        CheckerBuilder::new(self)
    }

    /// The renderer of the code under test, rendering for `listen_port` and `socket_dir`, with
    /// the gate's default policy made open while no client is registered
    /// (`open_without_key`: the tests of routing call `/` without a key), the repository's Lua
    /// modules ([`crate::gate_lua_dir`]) and no access log.
    pub fn renderer(&self, listen_port: u16, socket_dir: &str) -> ConfigRenderer {
        let clients = self.clients();
        ConfigRenderer {
            store: BackendStore::new(clients.dynamodb.clone(), &self.table),
            clients: ClientStore::new(clients.dynamodb.clone(), &self.clients_table),
            bucket: ConfigBucket::new(clients.s3.clone(), &self.bucket_name),
            options: RenderOptions {
                listen_port,
                socket_dir: socket_dir.to_owned(),
                ..RenderOptions::default()
            },
            gate: GatePolicy {
                open_without_key: true,
                lua_dir: crate::gate_lua_dir(),
                access_log: "/dev/null".into(),
                ..GatePolicy::default()
            },
        }
    }

    /// Adds a backend straight to the table (as add_backend does).
    pub async fn add(&self, url: &str, is_leader: bool) {
        let url = BackendUrl::parse(url).expect("valid url");
        self.store()
            .upsert(&url, is_leader, time::OffsetDateTime::now_utc())
            .await
            .expect("upsert");
    }

    /// Sets `is_healthy` of an item straight in the table.
    pub async fn set_healthy(&self, url: &str, healthy: bool) {
        self.aws
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("url", AttributeValue::S(url.to_owned()))
            .update_expression("SET is_healthy = :h")
            .expression_attribute_values(":h", AttributeValue::Bool(healthy))
            .send()
            .await
            .expect("update item");
    }

    /// Every raw item of the table, by URL (a consistent scan).
    pub async fn items(&self) -> BTreeMap<String, Item> {
        super::scan_items(&self.aws.dynamodb, &self.table, "url").await
    }

    /// The backends, decoded.
    pub async fn backends(&self) -> Vec<Backend> {
        self.store().scan_all().await.expect("scan")
    }

    /// The fingerprint of the routing plan the table implies now.
    pub async fn table_plan(&self) -> String {
        RoutingPlan::from_backends(&self.backends().await).fingerprint()
    }

    /// Keys of the objects in the bucket, sorted.
    pub async fn object_keys(&self) -> Vec<String> {
        let listed = self
            .aws
            .s3
            .list_objects_v2()
            .bucket(&self.bucket_name)
            .send()
            .await
            .expect("list objects");
        let mut keys: Vec<String> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        keys.sort();
        keys
    }

    /// The PutMetricData calls the recorder saw for this stack's namespace.
    pub fn metric_calls(&self) -> Vec<Value> {
        recorder()
            .recorded()
            .expect("recorded calls")
            .into_iter()
            .filter(|call| call["namespace"] == self.namespace.as_str())
            .collect()
    }

    /// The pointer invariant: when a pointer exists, it names a config that exists and whose
    /// text has the pointer's sha256. Returns the pointer.
    pub async fn pointer_is_consistent(&self, context: &str) -> Option<ConfigPointer> {
        let bucket = self.bucket();
        let pointer = bucket.read_pointer().await.expect("read pointer")?;
        let text = bucket
            .get(&pointer.key)
            .await
            .expect("get config")
            .unwrap_or_else(|| {
                panic!(
                    "{context}: the pointer names {}, which does not exist",
                    pointer.key
                )
            });
        assert_eq!(
            hex::encode(Sha256::digest(&text)),
            pointer.sha256,
            "{context}: the pointer's sha256 is not its config's"
        );
        Some(pointer)
    }
}
