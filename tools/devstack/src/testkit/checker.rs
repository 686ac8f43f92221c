//! [`CheckerBuilder`]: a `HealthChecker` over a [`TestStack`] with test defaults.

use std::time::Duration;

use jsonrpc_proxy::aws::clients_store::ClientStore;
use jsonrpc_proxy::aws::config_bucket::ConfigBucket;
use jsonrpc_proxy::aws::metrics::MetricsPublisher;
use jsonrpc_proxy::aws::renderer_trigger::RendererTrigger;
use jsonrpc_proxy::aws::store::BackendStore;
use jsonrpc_proxy::functions::health_checker::{
    HealthChecker, RoundSchedule, DEFAULT_ROW_REFRESH_SECS,
};
use jsonrpc_proxy::health::judgement::HealthPolicy;
use jsonrpc_proxy::health::probe::{ProbeSettings, Prober};

use super::{Clients, TestStack};

/// Builds a [`HealthChecker`] over a stack's tables, bucket, renderer function, namespace and
/// stack name, through [`TestStack::clients`]. Defaults: 1 s probes, no hysteresis
/// ([`HealthPolicy::immediate`] with tolerance 10, so every verdict takes effect in the round
/// that finds it), one round per invocation, 16 writes in flight, the function's row refresh
/// and scan pages.
#[must_use]
pub struct CheckerBuilder {
    clients: Clients,
    table: String,
    clients_table: String,
    bucket: String,
    function: String,
    namespace: String,
    stack_name: String,
    probe: ProbeSettings,
    policy: HealthPolicy,
    schedule: RoundSchedule,
    write_concurrency: usize,
    row_refresh: Duration,
    scan_page_items: Option<i32>,
}

impl CheckerBuilder {
    pub(super) fn new(stack: &TestStack) -> Self {
        Self {
            clients: stack.clients().clone(),
            table: stack.table.clone(),
            clients_table: stack.clients_table.clone(),
            bucket: stack.bucket_name.clone(),
            function: stack.function.clone(),
            namespace: stack.namespace.clone(),
            stack_name: stack.stack_name.clone(),
            probe: ProbeSettings {
                timeout: Duration::from_secs(1),
                ..ProbeSettings::default()
            },
            policy: HealthPolicy::immediate(10),
            schedule: RoundSchedule::default(),
            write_concurrency: 16,
            row_refresh: Duration::from_secs(DEFAULT_ROW_REFRESH_SECS),
            scan_page_items: None,
        }
    }

    /// Other clients (for example [`TestStack::aws`], past the fault proxies).
    pub fn clients(mut self, clients: &Clients) -> Self {
        self.clients = clients.clone();
        self
    }

    /// The probe timeout.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe.timeout = timeout;
        self
    }

    #[allow(missing_docs)]
    pub fn policy(mut self, policy: HealthPolicy) -> Self {
        self.policy = policy;
        self
    }

    #[allow(missing_docs)]
    pub fn schedule(mut self, schedule: RoundSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    #[allow(missing_docs)]
    pub fn write_concurrency(mut self, writes: usize) -> Self {
        self.write_concurrency = writes;
        self
    }

    /// How old a row may get before a check with nothing new rewrites it (zero: every row
    /// every round).
    pub fn row_refresh(mut self, refresh: Duration) -> Self {
        self.row_refresh = refresh;
        self
    }

    /// Items per Scan page.
    pub fn scan_page_items(mut self, items: i32) -> Self {
        self.scan_page_items = Some(items);
        self
    }

    /// The checker.
    pub fn build(self) -> HealthChecker {
        HealthChecker {
            store: BackendStore::new(self.clients.dynamodb.clone(), &self.table),
            clients: ClientStore::new(self.clients.dynamodb.clone(), &self.clients_table),
            prober: Prober::new(self.probe).expect("prober"),
            metrics: MetricsPublisher::new(self.clients.cloudwatch.clone(), &self.namespace),
            bucket: ConfigBucket::new(self.clients.s3.clone(), &self.bucket),
            trigger: RendererTrigger::new(self.clients.lambda.clone(), &self.function),
            policy: self.policy,
            schedule: self.schedule,
            stack_name: self.stack_name,
            write_concurrency: self.write_concurrency,
            row_refresh: self.row_refresh,
            scan_page_items: self.scan_page_items,
        }
    }
}
