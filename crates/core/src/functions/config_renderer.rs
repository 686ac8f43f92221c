//! `config_renderer`: scans the backends and the clients, renders the plan behind the JSON-RPC
//! gate, publishes it to S3; its event and settings (the gate's among them). Rationale:
//! docs/architecture.md, "Level-triggered renders" and "The JSON-RPC gate".

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;
use time::OffsetDateTime;

use crate::aws::clients_store::ClientStore;
use crate::aws::config_bucket::{
    BucketError, ConfigBucket, ConfigPointer, PointerWrite, CONFIG_KEY_SUFFIX,
};
use crate::aws::renderer_trigger::RenderRequest;
use crate::aws::store::{BackendStore, StoreError};
use crate::model::backend::iso8601;
use crate::model::client::{MAX_CALLS_PER_SECOND, MAX_CONCURRENT_REQUESTS};
use crate::render::gate::{clients_fingerprint, GatePolicy, GatePolicyError};
use crate::render::nginx::render_gated;
use crate::render::options::RenderOptions;
use crate::render::routing::RoutingPlan;
use crate::settings::{Env, SettingsError};

/// A render failed; Lambda retries (the same request id gives the same key).
#[derive(Debug, Error)]
pub enum RenderError {
    /// The table could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bucket could not be written.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// The request id cannot form an object key.
    #[error("request id {0:?} cannot be used in an object key")]
    RequestId(String),
    /// The gate's policy would not give a safe configuration; nothing was written.
    #[error("the gate policy is invalid: {0}")]
    Gate(#[from] GatePolicyError),
    /// Other renders kept publishing first.
    #[error("{0} renders in a row were superseded by other renders")]
    Contended(u32),
}

/// What a render did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderSummary {
    /// Whether a new configuration was written.
    pub written: bool,
    /// The key of the configuration in force.
    pub key: String,
    /// SHA-256 of its text.
    pub sha256: String,
    /// Fingerprint of its routing plan.
    pub plan_fingerprint: String,
    /// Fingerprint of the clients its gate admits ([`clients_fingerprint`]).
    pub clients_fingerprint: String,
    /// Redacted labels of the routed backends.
    pub backends: Vec<String>,
    /// Names of the clients the gate admits.
    pub clients: Vec<String>,
    /// Client items left out: unreadable ones, and those the gate cannot use. They grant
    /// nothing and never open the endpoint.
    pub clients_left_out: usize,
    /// Whether the gate serves callers without a key (`open_without_key` and no client).
    pub open_without_key: bool,
}

/// Settings of `config_renderer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRendererSettings {
    /// `DYNAMODB_TABLE`.
    pub table: String,
    /// `DYNAMODB_CLIENTS_TABLE`.
    pub clients_table: String,
    /// `NGINX_CONFIG_BUCKET_NAME`.
    pub bucket: String,
    /// `NGINX_LISTEN_PORT`, `NGINX_LISTEN_ADDRESS`, `NGINX_SOCKET_DIR`, `NGINX_CA_BUNDLE` and
    /// the proxy's timeouts.
    pub render: RenderOptions,
    /// The gate's deployment-wide policy (`GATE_*`; no clients: those come from the table).
    pub gate: GatePolicy,
}

/// Reads the gate's deployment-wide policy; an unset or blank variable keeps
/// [`GatePolicy::default`]'s value, a list variable (comma-separated) replaces the default list.
fn gate_from_env(env: &Env<'_>) -> Result<GatePolicy, SettingsError> {
    let defaults = GatePolicy::default();
    let gate = GatePolicy {
        clients: Vec::new(),
        open_without_key: env.flag("GATE_OPEN_WITHOUT_KEY", defaults.open_without_key)?,
        default_calls_per_second: env.bounded_number(
            "GATE_DEFAULT_CALLS_PER_SECOND",
            defaults.default_calls_per_second,
            1,
            u32::try_from(MAX_CALLS_PER_SECOND).unwrap_or(u32::MAX),
        )?,
        default_concurrent_requests: env.bounded_number(
            "GATE_DEFAULT_CONCURRENT_REQUESTS",
            defaults.default_concurrent_requests,
            1,
            u32::try_from(MAX_CONCURRENT_REQUESTS).unwrap_or(u32::MAX),
        )?,
        deny_methods: env.list_or("GATE_DENY_METHODS", &defaults.deny_methods),
        max_body_bytes: env.number("GATE_MAX_BODY_BYTES", defaults.max_body_bytes, 1)?,
        max_batch_calls: env.number("GATE_MAX_BATCH_CALLS", defaults.max_batch_calls, 1)?,
        max_get_logs_blocks: env.number(
            "GATE_MAX_GET_LOGS_BLOCKS",
            defaults.max_get_logs_blocks,
            1,
        )?,
        trusted_proxy_cidrs: env.list_or("GATE_TRUSTED_PROXY_CIDRS", &defaults.trusted_proxy_cidrs),
        lua_dir: env.string_or("GATE_LUA_DIR", &defaults.lua_dir),
        access_log: env.string_or("GATE_ACCESS_LOG", &defaults.access_log),
        shared_dict_mib: env.number("GATE_SHARED_DICT_MIB", defaults.shared_dict_mib, 1)?,
        head_poll_ms: env.bounded_number(
            "GATE_HEAD_POLL_MS",
            defaults.head_poll_ms,
            100,
            60_000,
        )?,
        head_tolerance_blocks: env.number("DIFF_TOLERANCE", defaults.head_tolerance_blocks, 0)?,
        cache_mib: env.number("GATE_CACHE_MIB", defaults.cache_mib, 1)?,
        finality_depth: env.number("GATE_FINALITY_DEPTH", defaults.finality_depth, 0)?,
    };
    gate.validate().map_err(|error| {
        let name = match &error {
            GatePolicyError::Method(_) => "GATE_DENY_METHODS",
            GatePolicyError::Cidr(_) => "GATE_TRUSTED_PROXY_CIDRS",
            GatePolicyError::Path(path) if *path == gate.access_log => "GATE_ACCESS_LOG",
            GatePolicyError::Path(_) => "GATE_LUA_DIR",
            _ => "GATE_*",
        };
        SettingsError::Invalid {
            name,
            value: env.get(name).unwrap_or_default(),
            problem: error.to_string(),
        }
    })?;
    Ok(gate)
}

impl ConfigRendererSettings {
    /// Reads the two tables, the bucket, the `NGINX_*`/`PROXY_*` render options and the
    /// `GATE_*` policy; invalid values are refused.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        let defaults = RenderOptions::default();
        let render = RenderOptions {
            listen_port: env.number("NGINX_LISTEN_PORT", defaults.listen_port, 1)?,
            listen_address: env.optional_ip("NGINX_LISTEN_ADDRESS")?,
            socket_dir: env.string_or("NGINX_SOCKET_DIR", &defaults.socket_dir),
            ca_bundle: env.string_or("NGINX_CA_BUNDLE", &defaults.ca_bundle),
            connect_timeout_secs: env.number(
                "PROXY_CONNECT_TIMEOUT_SECS",
                defaults.connect_timeout_secs,
                1,
            )?,
            read_timeout_secs: env.number(
                "PROXY_READ_TIMEOUT_SECS",
                defaults.read_timeout_secs,
                1,
            )?,
            retry_tries: env.number("PROXY_RETRY_TRIES", defaults.retry_tries, 1)?,
            retry_timeout_secs: env.number(
                "PROXY_RETRY_TIMEOUT_SECS",
                defaults.retry_timeout_secs,
                1,
            )?,
            max_fails: env.number("PROXY_MAX_FAILS", defaults.max_fails, 1)?,
            fail_timeout_secs: env.number(
                "PROXY_FAIL_TIMEOUT_SECS",
                defaults.fail_timeout_secs,
                1,
            )?,
            keepalive: env.number("PROXY_KEEPALIVE", defaults.keepalive, 1)?,
            websocket_timeout_secs: env.number(
                "PROXY_WEBSOCKET_TIMEOUT_SECS",
                defaults.websocket_timeout_secs,
                1,
            )?,
        };
        render.validate().map_err(|e| SettingsError::Invalid {
            name: "NGINX_SOCKET_DIR/NGINX_CA_BUNDLE",
            value: format!("{} / {}", render.socket_dir, render.ca_bundle),
            problem: e.to_string(),
        })?;
        Ok(Self {
            table: env.required("DYNAMODB_TABLE")?,
            clients_table: env.required("DYNAMODB_CLIENTS_TABLE")?,
            bucket: env.required("NGINX_CONFIG_BUCKET_NAME")?,
            render,
            gate: gate_from_env(env)?,
        })
    }
}

/// The renderer; build once per process.
#[derive(Debug, Clone)]
pub struct ConfigRenderer {
    /// The backends table, scanned at every render.
    pub store: BackendStore,
    /// The clients table, scanned at every render.
    pub clients: ClientStore,
    /// The bucket the configurations and the pointer are written to.
    pub bucket: ConfigBucket,
    /// Fixed rendering options.
    pub options: RenderOptions,
    /// The gate's deployment-wide policy; the clients are read at every render.
    pub gate: GatePolicy,
}

impl ConfigRenderer {
    /// A renderer for `settings` over its AWS clients.
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        settings: &ConfigRendererSettings,
    ) -> Self {
        Self {
            store: BackendStore::new(dynamodb.clone(), &settings.table),
            clients: ClientStore::new(dynamodb, &settings.clients_table),
            bucket: ConfigBucket::new(s3, &settings.bucket),
            options: settings.render.clone(),
            gate: settings.gate.clone(),
        }
    }

    /// Handles one invocation's event (see [`RenderRequest`]); `request_id` names the config.
    pub async fn handle_event(
        &self,
        event: &Value,
        request_id: &str,
    ) -> Result<RenderSummary, RenderError> {
        let request = RenderRequest::of(event);
        if let Some(reason) = &request.reason {
            tracing::info!(reason, "render requested");
        }
        self.render_and_publish(request_id, request.force).await
    }

    /// Renders the plan the backends table implies, behind the gate with the clients table's
    /// clients, and publishes it: the configuration, then the pointer, replaced only if no
    /// other render published since this one read it. When another did, the render starts
    /// over from the tables, so the last pointer written is always of a scan made after the
    /// one before it was published (docs/architecture.md, "One order of renders"). When the
    /// last published config has the same text (which holds the clients' key digests), no
    /// config is written (no needless redeploy) unless `force` is set; the pointer is only
    /// rewritten, with the same config, when its fingerprints are not this render's (an older
    /// pointer without the clients' one), or the health checker would ask again every round.
    /// A policy that fails validation is an error: nothing is written.
    pub async fn render_and_publish(
        &self,
        request_id: &str,
        force: bool,
    ) -> Result<RenderSummary, RenderError> {
        if request_id.is_empty()
            || request_id.len() > 200
            || !request_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(RenderError::RequestId(request_id.to_owned()));
        }
        for attempt in 1..=PUBLISH_ATTEMPTS {
            if let Some(summary) = self.publish_once(request_id, force).await? {
                return Ok(summary);
            }
            tracing::info!(
                attempt,
                "another render published meanwhile; rendering again from the tables"
            );
        }
        Err(RenderError::Contended(PUBLISH_ATTEMPTS))
    }

    /// One render and publication; `None` when another render replaced the pointer first.
    async fn publish_once(
        &self,
        request_id: &str,
        force: bool,
    ) -> Result<Option<RenderSummary>, RenderError> {
        // A pointer that is not one (damaged by hand) is replaced, unconditionally, by one
        // numbered after every sequence a counter from 1 can have reached.
        let (read, damaged) = match self.bucket.read_pointer_version().await {
            Ok(read) => (read, false),
            Err(BucketError::Invalid { problem, .. }) => {
                tracing::warn!(%problem, "the config pointer is unusable; replacing it");
                (None, true)
            }
            Err(error) => return Err(error.into()),
        };
        let (backends, records) = tokio::join!(self.store.scan_all(), self.clients.all_counted());
        let (backends, (records, unreadable)) = (backends?, records?);
        let plan = RoutingPlan::from_backends(&backends);
        let policy = self.gate.with_clients(&records);
        policy.validate()?;
        let clients: Vec<String> = policy.clients.iter().map(|c| c.name.clone()).collect();
        let clients_left_out = unreadable + records.len().saturating_sub(policy.clients.len());
        let open_without_key = policy.clients.is_empty() && policy.open_without_key;
        if clients_left_out > 0 {
            tracing::warn!(
                clients_left_out,
                admitted = clients.len(),
                "client items left out of the gate"
            );
        }
        if policy.clients.is_empty() {
            if open_without_key {
                tracing::warn!("no client: the gate is open to every caller (open_without_key)");
            } else if clients_left_out > 0 {
                tracing::warn!("no usable client: every caller gets 401");
            } else {
                tracing::info!("no client: every caller gets 401");
            }
        }
        let text = render_gated(&plan, &self.options, Some(&policy));
        let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
        let plan_fingerprint = plan.fingerprint();
        let clients_fingerprint = clients_fingerprint(&records);
        let labels = plan.labels();
        let summary = |written: bool, key: String| RenderSummary {
            written,
            key,
            sha256: sha256.clone(),
            plan_fingerprint: plan_fingerprint.clone(),
            clients_fingerprint: clients_fingerprint.clone(),
            backends: labels.clone(),
            clients: clients.clone(),
            clients_left_out,
            open_without_key,
        };
        let etag = read.as_ref().map(|r| r.etag.as_str());
        let previous = read.as_ref().map(|r| &r.pointer);

        if let Some(pointer) = previous.filter(|p| !force && p.sha256 == sha256) {
            if self.bucket.head(&pointer.key).await?.is_some() {
                if pointer.plan_fingerprint == plan_fingerprint
                    && pointer.clients_fingerprint.as_deref() == Some(clients_fingerprint.as_str())
                {
                    tracing::info!(key = %pointer.key, "config unchanged; nothing written");
                } else {
                    let updated = ConfigPointer {
                        plan_fingerprint: plan_fingerprint.clone(),
                        clients_fingerprint: Some(clients_fingerprint.clone()),
                        backends: labels.clone(),
                        ..pointer.clone()
                    };
                    if self.bucket.replace_pointer(&updated, etag).await?
                        == PointerWrite::Superseded
                    {
                        return Ok(None);
                    }
                    tracing::info!(
                        key = %pointer.key,
                        "config unchanged; the pointer's fingerprints brought up to date"
                    );
                }
                return Ok(Some(summary(false, pointer.key.clone())));
            }
        }

        let sequence = match previous {
            Some(p) => p.sequence + 1,
            None if damaged => after_damage(OffsetDateTime::now_utc()),
            None => 1,
        };
        let key = config_key(request_id, sequence, previous.map(|p| p.key.as_str()));
        self.bucket.put_config(&key, &text, sequence).await?;
        let pointer = ConfigPointer {
            key: key.clone(),
            sha256: sha256.clone(),
            plan_fingerprint: plan_fingerprint.clone(),
            clients_fingerprint: Some(clients_fingerprint.clone()),
            rendered_at: iso8601(OffsetDateTime::now_utc()),
            sequence,
            backends: labels.clone(),
        };
        if damaged {
            self.bucket.put_pointer(&pointer).await?;
        } else if self.bucket.replace_pointer(&pointer, etag).await? == PointerWrite::Superseded {
            return Ok(None);
        }
        tracing::info!(%key, sequence, backends = ?labels, clients = ?clients, "config published");
        Ok(Some(summary(true, key)))
    }
}

/// The sequence of a render that replaces a damaged pointer: milliseconds since the epoch,
/// above any count of renders.
fn after_damage(now: OffsetDateTime) -> u64 {
    u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(u64::MAX / 2)
}

/// Renders that may replace the pointer first before one gives up (Lambda then retries).
const PUBLISH_ATTEMPTS: u32 = 8;

/// The key of render `sequence` of invocation `request_id`: `<request id>_nginx.conf`, unless
/// the pointer (`pointed`) already names that key (a retried invocation that published
/// before): a published key is never rewritten with other content, so it gets the sequence
/// too. An unpublished key may be rewritten: nothing ever deployed it.
fn config_key(request_id: &str, sequence: u64, pointed: Option<&str>) -> String {
    let key = format!("{request_id}{CONFIG_KEY_SUFFIX}");
    if pointed == Some(key.as_str()) {
        format!("{request_id}-{sequence}{CONFIG_KEY_SUFFIX}")
    } else {
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::vars as env;
    use serde_json::json;

    const REQUIRED: [(&str, &str); 3] = [
        ("DYNAMODB_TABLE", "t"),
        ("DYNAMODB_CLIENTS_TABLE", "c"),
        ("NGINX_CONFIG_BUCKET_NAME", "b"),
    ];

    fn settings(extra: &[(&str, &str)]) -> Result<ConfigRendererSettings, SettingsError> {
        let vars = env(&[&REQUIRED[..], extra].concat());
        let result = ConfigRendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned()));
        result
    }

    #[test]
    fn gate_settings_default_to_the_gate_policy_defaults() {
        let read = settings(&[]).unwrap();
        assert_eq!(read.clients_table, "c");
        assert_eq!(read.gate, GatePolicy::default());
        assert!(
            !read.gate.open_without_key,
            "closed unless the deployment says so"
        );
        let closed = settings(&[("GATE_OPEN_WITHOUT_KEY", "FALSE")]).unwrap();
        assert!(!closed.gate.open_without_key);
        let blank = settings_with_all_gate_variables("");
        assert_eq!(blank.unwrap().gate, GatePolicy::default());
        assert_eq!(
            settings(&[("DYNAMODB_CLIENTS_TABLE", "")]).unwrap_err(),
            SettingsError::Missing("DYNAMODB_CLIENTS_TABLE")
        );
    }

    fn settings_with_all_gate_variables(
        value: &str,
    ) -> Result<ConfigRendererSettings, SettingsError> {
        settings(&[
            ("GATE_OPEN_WITHOUT_KEY", value),
            ("GATE_DEFAULT_CALLS_PER_SECOND", value),
            ("GATE_DEFAULT_CONCURRENT_REQUESTS", value),
            ("GATE_DENY_METHODS", value),
            ("GATE_MAX_BODY_BYTES", value),
            ("GATE_MAX_BATCH_CALLS", value),
            ("GATE_MAX_GET_LOGS_BLOCKS", value),
            ("GATE_TRUSTED_PROXY_CIDRS", value),
            ("GATE_LUA_DIR", value),
            ("GATE_ACCESS_LOG", value),
            ("GATE_SHARED_DICT_MIB", value),
        ])
    }

    #[test]
    fn gate_settings_are_read_and_checked() {
        let gate = settings(&[
            ("GATE_OPEN_WITHOUT_KEY", "true"),
            ("GATE_DEFAULT_CALLS_PER_SECOND", "250"),
            ("GATE_DEFAULT_CONCURRENT_REQUESTS", "12"),
            ("GATE_DENY_METHODS", "debug_, eth_sign"),
            ("GATE_MAX_BODY_BYTES", "2048"),
            ("GATE_MAX_BATCH_CALLS", "10"),
            ("GATE_MAX_GET_LOGS_BLOCKS", "500"),
            ("GATE_TRUSTED_PROXY_CIDRS", "10.1.0.0/16,fd00::/8"),
            ("GATE_LUA_DIR", "/repo/docker/gate"),
            ("GATE_ACCESS_LOG", "/tmp/run/access.log"),
            ("GATE_SHARED_DICT_MIB", "2"),
            ("GATE_HEAD_POLL_MS", "250"),
            ("DIFF_TOLERANCE", "4"),
            ("GATE_CACHE_MIB", "5"),
            ("GATE_FINALITY_DEPTH", "12"),
        ])
        .unwrap()
        .gate;
        assert_eq!(
            gate,
            GatePolicy {
                clients: Vec::new(),
                open_without_key: true,
                default_calls_per_second: 250,
                default_concurrent_requests: 12,
                deny_methods: vec!["debug_".into(), "eth_sign".into()],
                max_body_bytes: 2048,
                max_batch_calls: 10,
                max_get_logs_blocks: 500,
                trusted_proxy_cidrs: vec!["10.1.0.0/16".into(), "fd00::/8".into()],
                lua_dir: "/repo/docker/gate".into(),
                access_log: "/tmp/run/access.log".into(),
                shared_dict_mib: 2,
                head_poll_ms: 250,
                head_tolerance_blocks: 4,
                cache_mib: 5,
                finality_depth: 12,
            }
        );
        for (name, value) in [
            ("GATE_OPEN_WITHOUT_KEY", "yes"),
            ("GATE_OPEN_WITHOUT_KEY", "1"),
            ("GATE_DEFAULT_CALLS_PER_SECOND", "0"),
            ("GATE_DEFAULT_CALLS_PER_SECOND", "1000001"),
            ("GATE_DEFAULT_CALLS_PER_SECOND", "many"),
            ("GATE_DEFAULT_CONCURRENT_REQUESTS", "0"),
            ("GATE_DEFAULT_CONCURRENT_REQUESTS", "100001"),
            ("GATE_MAX_BODY_BYTES", "0"),
            ("GATE_MAX_BATCH_CALLS", "-1"),
            ("GATE_MAX_GET_LOGS_BLOCKS", "0"),
            ("GATE_SHARED_DICT_MIB", "0"),
            ("GATE_DENY_METHODS", "debug_,a;b"),
            ("GATE_TRUSTED_PROXY_CIDRS", "10.0.0.0/8; deny all"),
            ("GATE_LUA_DIR", "relative/dir"),
            ("GATE_ACCESS_LOG", "/var/log/a b.log"),
        ] {
            match settings(&[(name, value)]) {
                Err(SettingsError::Invalid { name: named, .. }) => {
                    assert_eq!(named, name, "{name}={value}");
                }
                other => panic!("{name}={value} gave {other:?}"),
            }
        }
    }

    #[test]
    fn renderer_settings_refuse_unsafe_paths() {
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("DYNAMODB_CLIENTS_TABLE", "c"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("NGINX_SOCKET_DIR", "/tmp/x;y"),
        ]);
        assert!(ConfigRendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).is_err());
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("DYNAMODB_CLIENTS_TABLE", "c"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("NGINX_LISTEN_PORT", "8080"),
        ]);
        let settings =
            ConfigRendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap();
        assert_eq!(settings.render.listen_port, 8080);
        assert_eq!(settings.render.listen_address, None);
        assert_eq!(settings.render.websocket_timeout_secs, 3600);
        let with_address = |address: &str| {
            let vars = env(&[
                ("DYNAMODB_TABLE", "t"),
                ("DYNAMODB_CLIENTS_TABLE", "c"),
                ("NGINX_CONFIG_BUCKET_NAME", "b"),
                ("NGINX_LISTEN_ADDRESS", address),
            ]);
            let settings =
                ConfigRendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned()));
            settings.map(|s| s.render.listen_address)
        };
        assert_eq!(with_address(""), Ok(None));
        assert_eq!(
            with_address("127.0.0.1"),
            Ok(Some(std::net::Ipv4Addr::LOCALHOST.into()))
        );
        assert_eq!(
            with_address("::1"),
            Ok(Some(std::net::Ipv6Addr::LOCALHOST.into()))
        );
        for refused in ["localhost", "127.0.0.1:80", "0.0.0.0;listen 81"] {
            assert!(
                matches!(
                    with_address(refused),
                    Err(SettingsError::Invalid {
                        name: "NGINX_LISTEN_ADDRESS",
                        ..
                    })
                ),
                "{refused}"
            );
        }
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("DYNAMODB_CLIENTS_TABLE", "c"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("PROXY_WEBSOCKET_TIMEOUT_SECS", "600"),
        ]);
        let settings =
            ConfigRendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap();
        assert_eq!(settings.render.websocket_timeout_secs, 600);
    }

    #[test]
    fn a_published_key_is_never_rewritten() {
        assert_eq!(config_key("r1", 7, None), "r1_nginx.conf");
        assert_eq!(config_key("r1", 7, Some("r0_nginx.conf")), "r1_nginx.conf");
        assert_eq!(
            config_key("r1", 7, Some("r1_nginx.conf")),
            "r1-7_nginx.conf"
        );
        let damaged = after_damage(time::macros::datetime!(2026-12-06 20:00 UTC));
        assert_eq!(damaged, 1_796_587_200_000);
    }

    #[test]
    fn render_requests() {
        let sent = RenderRequest {
            source: Some("jsonrpc-proxy".into()),
            reason: Some("routing plan changed".into()),
            ..RenderRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            json!({"source": "jsonrpc-proxy", "reason": "routing plan changed"})
        );
        assert_eq!(
            RenderRequest::of(&serde_json::to_value(&sent).unwrap()),
            sent
        );
        assert!(RenderRequest::of(&json!({"force": true})).force);
        assert!(!RenderRequest::of(&json!({"force": false, "extra": 1})).force);
        for other in [json!({}), json!(null), json!([1]), json!({"force": "yes"})] {
            assert_eq!(
                RenderRequest::of(&other),
                RenderRequest::default(),
                "{other}"
            );
        }
    }
}
