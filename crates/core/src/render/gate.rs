//! The JSON-RPC gate's part of the rendered nginx configuration: API keys, the method policy,
//! the limits and the usage counters, enforced by the Lua module in `docker/gate` (nginx's
//! Lua module runs it). [`GatePolicy`] is what the gate enforces; [`crate::render::nginx::render_gated`]
//! renders it. Rationale and alternatives: `docs/architecture.md`, "The JSON-RPC gate".

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use crate::model::client::key_sha256;
use crate::model::client::ClientRecord;
use crate::render::options::RenderOptions;

/// Shared dictionary of the per-second call counters.
pub const RATE_DICT: &str = "jsonrpc_gate_rate";
/// Shared dictionary of the usage counters (monotonic, read through [`USAGE_SOCKET`]).
pub const USAGE_DICT: &str = "jsonrpc_gate_usage";
/// Shared dictionary of the nodes' heads and the served head (docs/architecture.md, "One
/// chain, as a client sees it"); a few keys per node.
pub const HEADS_DICT: &str = "jsonrpc_gate_heads";
/// Shared dictionary of the answers that cannot change (its size: [`GatePolicy::cache_mib`]).
pub const CACHE_DICT: &str = "jsonrpc_gate_cache";
/// Largest answer (its `result`, bytes) the cache keeps.
pub const CACHE_MAX_ANSWER_BYTES: u32 = 512 * 1024;
/// The internal location that forwards the calls of a request the gate answers in part, or
/// whose answers it may keep.
pub const UPSTREAM_LOCATION: &str = "/_jsonrpc_gate/upstream";
/// Seconds the served head holds while no node has it (a rollback deeper than the nodes'
/// lead, or a chain that was reset) before it follows the nodes back.
pub const HEAD_RESET_SECS: u32 = 60;
/// Polls a node may miss before the data plane stops counting on its head.
const HEAD_STALE_POLLS: u32 = 3;
/// Methods with a block parameter, and its position: `latest` there (written, `null`, or
/// implied by a missing last parameter) is pinned to the served head.
pub const BLOCK_PARAMS: &[(&str, u32)] = &[
    ("eth_getBalance", 1),
    ("eth_getCode", 1),
    ("eth_getTransactionCount", 1),
    ("eth_getStorageAt", 2),
    ("eth_call", 1),
    ("eth_estimateGas", 1),
    ("eth_createAccessList", 1),
    ("eth_getProof", 2),
    ("eth_feeHistory", 1),
    ("eth_getBlockByNumber", 0),
    ("eth_getBlockTransactionCountByNumber", 0),
    ("eth_getBlockReceipts", 0),
    ("eth_getTransactionByBlockNumberAndIndex", 0),
    ("eth_getUncleByBlockNumberAndIndex", 0),
    ("eth_getUncleCountByBlockNumber", 0),
];
/// The access-log variable naming the caller: a client's name, `(open)` or `(unknown)`.
pub const CLIENT_VARIABLE: &str = "$jsonrpc_gate_client";
/// Socket (in the socket directory) of the internal server answering `GET /usage`,
/// `GET /policy` (the policy as the Lua module holds it, [`LuaConfig`]'s shape) and
/// `GET /heads` (the served head, safe and finalized blocks, and each member's head).
pub const USAGE_SOCKET: &str = "gate-usage.sock";
/// Socket (in the socket directory) of the internal server the WebSocket relay reaches the
/// nodes through.
pub const WEBSOCKET_SOCKET: &str = "gate-ws.sock";
/// Bytes of a request body nginx keeps in memory; the rest of a larger body goes to a
/// temporary file while it arrives, so slow uploads cost a file each, not a buffer of
/// `max_body_bytes` (docs/architecture.md, "The JSON-RPC gate").
pub const BODY_BUFFER_BYTES: u32 = 16 * 1024;
/// The variable naming the in-flight counter a request holds (empty: none), released by the
/// log phase; a variable, unlike the Lua request context, survives an `error_page` redirect.
pub const SLOT_VARIABLE: &str = "$jsonrpc_gate_slot";
/// The variable holding the `Access-Control-Allow-Origin` value of an answer.
pub const CORS_VARIABLE: &str = "$jsonrpc_gate_cors";
/// The answers' `Access-Control-Allow-Origin`: [`CORS_VARIABLE`], or `*` when it is empty.
const ALLOW_ORIGIN_VARIABLE: &str = "$jsonrpc_gate_allow_origin";
/// The answers' `Vary`: `Origin` when [`CORS_VARIABLE`] names one (no header otherwise).
const VARY_VARIABLE: &str = "$jsonrpc_gate_vary";
/// CORS headers a node may send, dropped so that every answer carries the gate's.
const NODE_CORS_HEADERS: [&str; 6] = [
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
];
/// Longest piece of the policy's text in one Lua string of the configuration (nginx's
/// configuration buffer is 4 KiB).
const LUA_PIECE_BYTES: usize = 3072;
/// Where the image installs the Lua modules (`docker/Dockerfile`).
pub const IMAGE_LUA_DIR: &str = "/usr/share/jsonrpc-proxy/lua";

/// One client: its name and the SHA-256 of its key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateClient {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Lowercase hex SHA-256 of the key ([`key_sha256`]).
    pub key_sha256: String,
    /// JSON-RPC calls per second (a batch of N counts N).
    pub calls_per_second: u32,
    /// Method names, or namespace prefixes ending in `_`, this client may call although the
    /// deployment denies them.
    pub allow_methods: Vec<String>,
    /// Requests and WebSocket connections in flight at once.
    pub concurrent_requests: u32,
    /// Origins whose pages may use the key (validated by
    /// [`validate_origin`](crate::model::client::validate_origin)); empty: any.
    pub allowed_origins: Vec<String>,
}

/// The deployment's values for what a client record leaves unset, applied at every render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDefaults {
    /// Calls per second.
    pub calls_per_second: u32,
    /// Requests in flight at once.
    pub concurrent_requests: u32,
}

impl GateClient {
    /// What a stored client is granted: its own limits, or the deployment's `defaults` where
    /// it has none.
    pub fn of(record: &ClientRecord, defaults: ClientDefaults) -> Self {
        Self {
            name: record.name.clone(),
            key_sha256: record.key_sha256.clone(),
            calls_per_second: record.calls_per_second.unwrap_or(defaults.calls_per_second),
            allow_methods: record.allow_methods.clone(),
            concurrent_requests: record
                .concurrent_requests
                .unwrap_or(defaults.concurrent_requests),
            allowed_origins: record.allowed_origins.clone(),
        }
    }

    /// Checks this client alone (names and digests must also be unique within a policy).
    pub fn validate(&self) -> Result<(), GatePolicyError> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(GatePolicyError::ClientName(self.name.clone()));
        }
        let digest_ok = self.key_sha256.len() == 64
            && self
                .key_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !digest_ok {
            return Err(GatePolicyError::KeyDigest(self.name.clone()));
        }
        if self.calls_per_second == 0 {
            return Err(GatePolicyError::Zero("calls per second"));
        }
        if self.concurrent_requests == 0 {
            return Err(GatePolicyError::Zero("concurrent requests"));
        }
        if let Some(bad) = self.allow_methods.iter().find(|m| !is_method(m)) {
            return Err(GatePolicyError::Method(bad.clone()));
        }
        if let Some(bad) = self
            .allowed_origins
            .iter()
            .find(|o| crate::model::client::validate_origin(o).is_err())
        {
            return Err(GatePolicyError::Origin(bad.clone()));
        }
        Ok(())
    }
}

/// What the gate enforces: the registered clients and the deployment-wide policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatePolicy {
    /// Registered clients. None: every caller gets 401, unless `open_without_key`.
    pub clients: Vec<GateClient>,
    /// While no client is registered, serve every path to every caller (counted per client
    /// address) instead of refusing them all. Off by default: a deployment whose last client
    /// was removed, or whose client items are all unreadable, must not become an open relay.
    pub open_without_key: bool,
    /// Calls per second of a caller in open mode, and of a client added without one.
    pub default_calls_per_second: u32,
    /// Requests (and WebSocket connections) in flight at once of a caller in open mode, and of
    /// a client added without its own number.
    pub default_concurrent_requests: u32,
    /// Method names, or namespace prefixes ending in `_`, denied to every caller (matched
    /// ignoring ASCII case).
    pub deny_methods: Vec<String>,
    /// Largest request body (and WebSocket message), bytes.
    pub max_body_bytes: u64,
    /// Most calls in one batch.
    pub max_batch_calls: u32,
    /// Widest `eth_getLogs`/`eth_newFilter` block range whose ends are both numbers or
    /// `earliest`.
    pub max_get_logs_blocks: u64,
    /// Addresses of the load balancers whose `X-Forwarded-For` names the caller.
    pub trusted_proxy_cidrs: Vec<String>,
    /// Directory of the Lua modules (`jsonrpc_gate.lua` and `jsonrpc_gate/`).
    pub lua_dir: String,
    /// Access log file of the public server (its own format, which names the client and
    /// never the request path).
    pub access_log: String,
    /// Size of each shared dictionary, MiB.
    pub shared_dict_mib: u32,
    /// Milliseconds between two polls of every routed node's head (`GATE_HEAD_POLL_MS`).
    pub head_poll_ms: u32,
    /// Blocks a routed node may trail the highest one and still hold the served head back
    /// (`DIFF_TOLERANCE`, the health checker's own: a node that far behind is still in sync).
    pub head_tolerance_blocks: u64,
    /// Size of the cache of answers that cannot change, MiB (`GATE_CACHE_MIB`).
    pub cache_mib: u32,
    /// Blocks below the served head taken as final where the nodes name no `finalized` block
    /// (`GATE_FINALITY_DEPTH`).
    pub finality_depth: u64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        let deny = [
            "admin_",
            "debug_",
            "personal_",
            "miner_",
            "txpool_",
            "engine_",
            "clique_",
            "anvil_",
            "hardhat_",
            "evm_",
            "trace_",
            "eth_sendTransaction",
            "eth_sendUnsignedTransaction",
            "eth_sign",
            "eth_signTransaction",
            "eth_signTypedData",
            "eth_signTypedData_v1",
            "eth_signTypedData_v3",
            "eth_signTypedData_v4",
        ];
        Self {
            clients: Vec::new(),
            open_without_key: false,
            default_calls_per_second: 100,
            default_concurrent_requests: 64,
            deny_methods: deny.iter().map(|m| (*m).to_owned()).collect(),
            max_body_bytes: 1 << 20,
            max_batch_calls: 100,
            max_get_logs_blocks: 10_000,
            trusted_proxy_cidrs: vec![
                "10.0.0.0/8".into(),
                "172.16.0.0/12".into(),
                "192.168.0.0/16".into(),
            ],
            lua_dir: IMAGE_LUA_DIR.into(),
            access_log: "/var/log/nginx/access.log".into(),
            shared_dict_mib: 10,
            head_poll_ms: 1000,
            head_tolerance_blocks: crate::health::judgement::DEFAULT_DIFF_TOLERANCE,
            cache_mib: 32,
            finality_depth: 64,
        }
    }
}

/// A policy that would not give a valid, safe configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GatePolicyError {
    /// A client name outside 1 to 64 of `A-Z a-z 0-9 . _ -`, or used twice.
    #[error("client name {0:?} must be 1 to 64 of A-Z a-z 0-9 . _ - and unique")]
    ClientName(String),
    /// A key digest that is not 64 lowercase hex digits, or used twice.
    #[error("the key digest of client {0:?} must be 64 lowercase hex digits, unique")]
    KeyDigest(String),
    /// A method name or prefix outside `A-Z a-z 0-9 _`.
    #[error("method {0:?} must be 1 to 128 of A-Z a-z 0-9 _")]
    Method(String),
    /// A CIDR of other characters than an address and a prefix length.
    #[error("trusted proxy {0:?} must be an IP address or CIDR")]
    Cidr(String),
    /// An allowed origin that is not `scheme://host[:port]`.
    #[error("allowed origin {0:?} must be http(s)://host[:port], lowercase")]
    Origin(String),
    /// A path that is not absolute and plain.
    #[error("path {0:?} must be an absolute path of letters, digits, '/', '-', '_' and '.'")]
    Path(String),
    /// A limit of 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

/// Each record in order, with the client the gate makes of it, or why the gate cannot use it
/// (a damaged item, or a name or key digest an earlier record already has) as its name and
/// the problem.
fn admit<'a>(
    records: impl IntoIterator<Item = &'a ClientRecord>,
    defaults: ClientDefaults,
) -> impl Iterator<Item = (&'a ClientRecord, Result<GateClient, (String, String)>)> {
    let mut names = std::collections::BTreeSet::new();
    let mut digests = std::collections::BTreeSet::new();
    records.into_iter().map(move |record| {
        let client = GateClient::of(record, defaults);
        let problem = match client.validate() {
            Err(error) => Some(error.to_string()),
            Ok(()) if names.contains(&client.name) => Some("its name is listed twice".into()),
            Ok(()) if digests.contains(&client.key_sha256) => {
                Some("another client has the same key".into())
            }
            Ok(()) => None,
        };
        let admitted = match problem {
            Some(problem) => Err((client.name, problem)),
            None => {
                names.insert(client.name.clone());
                digests.insert(client.key_sha256.clone());
                Ok(client)
            }
        };
        (record, admitted)
    })
}

/// A fingerprint of the clients the gate admits from `records` ([`GatePolicy::with_clients`]'s
/// rule, records taken in name order, as the clients table's store gives them): the lowercase hex SHA-256 over each admitted client's name, key digest, own
/// `calls_per_second` (none: the deployment's default) and `allow_methods`. It holds only what
/// the clients table holds, never a key; equal clients give equal fingerprints, whatever their
/// order. The renderer records it in the config pointer, and the health checker compares the
/// table's with it (docs/architecture.md, "Level-triggered renders").
pub fn clients_fingerprint(records: &[ClientRecord]) -> String {
    let mut sorted: Vec<&ClientRecord> = records.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |r: &'_ ClientRecord| {
            (
                r.name.clone(),
                r.key_sha256.clone(),
                r.calls_per_second,
                r.allow_methods.clone(),
                r.concurrent_requests,
                r.allowed_origins.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    // The defaults only fill in missing limits, and every valid default is at least 1, so
    // which records are admitted does not depend on them.
    let any = ClientDefaults {
        calls_per_second: 1,
        concurrent_requests: 1,
    };
    let entries: Vec<serde_json::Value> = admit(sorted, any)
        .filter(|(_, admitted)| admitted.is_ok())
        .map(|(record, _)| {
            let mut entry = json!([
                record.name,
                record.key_sha256,
                record.calls_per_second,
                record.allow_methods,
            ]);
            // Only when set, so that a client without them keeps its fingerprint.
            if let Some(list) = entry.as_array_mut() {
                if record.concurrent_requests.is_some() || !record.allowed_origins.is_empty() {
                    list.push(json!(record.concurrent_requests));
                    list.push(json!(record.allowed_origins));
                }
            }
            entry
        })
        .collect();
    hex::encode(Sha256::digest(
        serde_json::Value::Array(entries).to_string().as_bytes(),
    ))
}

fn is_method(m: &str) -> bool {
    (1..=128).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_plain_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains("..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
}

impl GatePolicy {
    /// Checks that every value is safe to put into the configuration.
    pub fn validate(&self) -> Result<(), GatePolicyError> {
        let mut names = std::collections::BTreeSet::new();
        let mut digests = std::collections::BTreeSet::new();
        for client in &self.clients {
            client.validate()?;
            if !names.insert(client.name.as_str()) {
                return Err(GatePolicyError::ClientName(client.name.clone()));
            }
            if !digests.insert(client.key_sha256.as_str()) {
                return Err(GatePolicyError::KeyDigest(client.name.clone()));
            }
        }
        if let Some(bad) = self.deny_methods.iter().find(|m| !is_method(m)) {
            return Err(GatePolicyError::Method(bad.clone()));
        }
        if let Some(bad) = self.trusted_proxy_cidrs.iter().find(|c| {
            c.is_empty()
                || c.len() > 49
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":./".contains(&b))
        }) {
            return Err(GatePolicyError::Cidr(bad.clone()));
        }
        for path in [&self.lua_dir, &self.access_log] {
            if !is_plain_path(path) {
                return Err(GatePolicyError::Path(path.clone()));
            }
        }
        for (name, value) in [
            (
                "default calls per second",
                u64::from(self.default_calls_per_second),
            ),
            (
                "default concurrent requests",
                u64::from(self.default_concurrent_requests),
            ),
            ("max body bytes", self.max_body_bytes),
            ("max batch calls", u64::from(self.max_batch_calls)),
            ("max eth_getLogs blocks", self.max_get_logs_blocks),
            ("shared dictionary size", u64::from(self.shared_dict_mib)),
            ("head poll interval", u64::from(self.head_poll_ms)),
            ("cache size", u64::from(self.cache_mib)),
        ] {
            if value == 0 {
                return Err(GatePolicyError::Zero(name));
            }
        }
        Ok(())
    }

    /// This deployment-wide policy with the stored clients as its clients. A client the gate
    /// cannot use (a damaged item, or a name or key digest another client already has) is
    /// left out with a warning naming it, never its digest, and grants nothing.
    pub fn with_clients(&self, records: &[ClientRecord]) -> Self {
        let defaults = ClientDefaults {
            calls_per_second: self.default_calls_per_second,
            concurrent_requests: self.default_concurrent_requests,
        };
        let clients = admit(records, defaults)
            .filter_map(|(_, admitted)| match admitted {
                Ok(client) => Some(client),
                Err((name, problem)) => {
                    tracing::warn!(client = %name, %problem, "client left out of the gate");
                    None
                }
            })
            .collect();
        Self {
            clients,
            ..self.clone()
        }
    }

    /// The policy as the Lua module's `configure` reads it, for a configuration whose public
    /// upstream has `members`.
    pub fn lua_config(&self, options: &RenderOptions, members: Vec<LuaMember>) -> LuaConfig {
        let bare = |variable: &str| variable.trim_start_matches('$').to_owned();
        // Answers are kept per set of members: a new set (another chain, say) starts afresh.
        let mut addresses: Vec<&str> = members.iter().map(|m| m.address.as_str()).collect();
        addresses.sort_unstable();
        let cache_scope = hex::encode(&Sha256::digest(addresses.join("\n").as_bytes())[..8]);
        LuaConfig {
            clients: self.clients.clone(),
            open_without_key: self.open_without_key,
            default_calls_per_second: self.default_calls_per_second,
            default_concurrent_requests: self.default_concurrent_requests,
            deny_methods: self.deny_methods.clone(),
            max_body_bytes: self.max_body_bytes,
            max_batch_calls: self.max_batch_calls,
            max_get_logs_blocks: self.max_get_logs_blocks,
            websocket_upstream: format!("unix:{}", socket(options, WEBSOCKET_SOCKET)),
            websocket_timeout_secs: options.websocket_timeout_secs,
            rate_dict: RATE_DICT.into(),
            usage_dict: USAGE_DICT.into(),
            client_variable: bare(CLIENT_VARIABLE),
            slot_variable: bare(SLOT_VARIABLE),
            cors_variable: bare(CORS_VARIABLE),
            members,
            heads_dict: HEADS_DICT.into(),
            head_poll_ms: self.head_poll_ms,
            head_stale_ms: self.head_poll_ms.saturating_mul(HEAD_STALE_POLLS),
            head_reset_secs: HEAD_RESET_SECS,
            head_tolerance_blocks: self.head_tolerance_blocks,
            block_params: BLOCK_PARAMS
                .iter()
                .map(|(method, index)| (method.to_lowercase(), *index))
                .collect(),
            upstream_location: UPSTREAM_LOCATION.into(),
            retry_tries: options.retry_tries,
            fail_timeout_secs: options.fail_timeout_secs,
            cache_dict: CACHE_DICT.into(),
            cache_scope,
            finality_depth: self.finality_depth,
            cache_max_answer_bytes: CACHE_MAX_ANSWER_BYTES,
        }
    }
}

/// A member of the public upstream as the gate's balancer reaches it: `host:port` (an IP
/// address) or `unix:<socket>` of its internal server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuaMember {
    /// `ip:port`, `[ipv6]:port` or `unix:/path`.
    pub address: String,
    /// Tried only when no other member can take the request (the leader beside nodes).
    pub backup: bool,
}

/// The JSON the Lua module's `configure` reads (`docker/gate/jsonrpc_gate.lua`), the one
/// definition of it; `GET /policy` on the usage socket answers the same shape back from what
/// the module holds, clients in name order with lowercased methods and sorted origins
/// ([`LuaConfig::as_held`]). A field means what its namesake in [`GatePolicy`] or
/// [`RenderOptions`] means; the last five name the shared dictionaries ([`RATE_DICT`],
/// [`USAGE_DICT`]) and the variables ([`CLIENT_VARIABLE`], [`SLOT_VARIABLE`],
/// [`CORS_VARIABLE`], without `$`) the module uses. The rest is the data plane's chain
/// (`docker/gate/jsonrpc_gate/chain.lua`): the upstream's members, where heads are kept
/// ([`HEADS_DICT`]), how often they are polled and when a node's is stale, [`HEAD_RESET_SECS`],
/// the tolerance, [`BLOCK_PARAMS`] (lowercased), [`UPSTREAM_LOCATION`], the retry policy of
/// [`RenderOptions`], and the cache: [`CACHE_DICT`], the scope its keys start with (a digest of
/// the members' addresses), the finality depth and [`CACHE_MAX_ANSWER_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LuaConfig {
    pub clients: Vec<GateClient>,
    pub open_without_key: bool,
    pub default_calls_per_second: u32,
    pub default_concurrent_requests: u32,
    pub deny_methods: Vec<String>,
    pub max_body_bytes: u64,
    pub max_batch_calls: u32,
    pub max_get_logs_blocks: u64,
    pub websocket_upstream: String,
    pub websocket_timeout_secs: u32,
    pub rate_dict: String,
    pub usage_dict: String,
    pub client_variable: String,
    pub slot_variable: String,
    pub cors_variable: String,
    pub members: Vec<LuaMember>,
    pub heads_dict: String,
    pub head_poll_ms: u32,
    pub head_stale_ms: u32,
    pub head_reset_secs: u32,
    pub head_tolerance_blocks: u64,
    pub block_params: std::collections::BTreeMap<String, u32>,
    pub upstream_location: String,
    pub retry_tries: u32,
    pub fail_timeout_secs: u32,
    pub cache_dict: String,
    pub cache_scope: String,
    pub finality_depth: u64,
    pub cache_max_answer_bytes: u32,
}

impl LuaConfig {
    /// This configuration as the Lua module holds it once read: clients in name order, method
    /// names and prefixes lowercased, origins sorted, backup members after the others.
    pub fn as_held(&self) -> Self {
        let lowered = |list: &[String]| list.iter().map(|m| m.to_lowercase()).collect();
        let mut clients: Vec<GateClient> = self
            .clients
            .iter()
            .map(|c| {
                let mut origins = c.allowed_origins.clone();
                origins.sort();
                GateClient {
                    key_sha256: c.key_sha256.to_lowercase(),
                    allow_methods: lowered(&c.allow_methods),
                    allowed_origins: origins,
                    ..c.clone()
                }
            })
            .collect();
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        let (mut members, backups): (Vec<LuaMember>, Vec<LuaMember>) =
            self.members.iter().cloned().partition(|m| !m.backup);
        members.extend(backups);
        Self {
            clients,
            members,
            deny_methods: lowered(&self.deny_methods),
            ..self.clone()
        }
    }
}

fn socket(options: &RenderOptions, name: &str) -> String {
    format!("{}/{name}", options.socket_dir.trim_end_matches('/'))
}

/// The http-level directives: the Lua path, the shared dictionaries, the policy (handed to
/// the module at every load: a reload re-reads it, the dictionaries' counters survive) and
/// the access-log format.
pub(crate) fn render_http_level(
    out: &mut String,
    policy: &GatePolicy,
    options: &RenderOptions,
    members: Vec<LuaMember>,
) {
    let config = serde_json::to_string(&policy.lua_config(options, members)).unwrap_or_default();
    // Only validated names, digests, methods and origins: the text holds no `]==]`.
    debug_assert!(!config.contains("]==]"));
    // nginx reads a configuration in 4 KiB buffers and refuses a Lua string longer than one
    // (a policy of a few dozen clients is): the policy goes in as pieces, joined in Lua.
    let mut pieces = String::new();
    let mut rest = config.as_str();
    while !rest.is_empty() {
        let mut end = rest.len().min(LUA_PIECE_BYTES);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let _ = writeln!(pieces, "        [==[{}]==],", &rest[..end]);
        rest = &rest[end..];
    }
    let _ = write!(
        out,
        "lua_package_path \"{lua}/?.lua;;\";
lua_shared_dict {RATE_DICT} {mib}m;
lua_shared_dict {USAGE_DICT} {mib}m;
lua_shared_dict {HEADS_DICT} 1m;
lua_shared_dict {CACHE_DICT} {cache_mib}m;
init_by_lua_block {{
    require(\"jsonrpc_gate\").configure(table.concat({{
{pieces}    }}))
}}
init_worker_by_lua_block {{
    require(\"jsonrpc_gate\").init_worker()
}}
log_format jsonrpc_gate '$remote_addr {CLIENT_VARIABLE} [$time_local] $request_method $status '
    '$body_bytes_sent $request_time $upstream_addr \"$http_user_agent\"';
map {CORS_VARIABLE} {ALLOW_ORIGIN_VARIABLE} {{
    \"\" \"*\";
    default {CORS_VARIABLE};
}}
map {CORS_VARIABLE} {VARY_VARIABLE} {{
    \"\" \"\";
    default Origin;
}}

",
        lua = policy.lua_dir,
        mib = policy.shared_dict_mib,
        cache_mib = policy.cache_mib,
    );
}

/// Server-level directives of the public server.
pub(crate) fn public_server_directives(policy: &GatePolicy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "    set {CLIENT_VARIABLE} \"-\";");
    // Every answer of the public server, the nodes' included, carries the gate's CORS headers
    // (the origin the access phase settled, "*" unless the client names its origins); the
    // nodes' own are dropped.
    let _ = writeln!(
        out,
        "    add_header Access-Control-Allow-Origin {ALLOW_ORIGIN_VARIABLE} always;"
    );
    let _ = writeln!(out, "    add_header Vary {VARY_VARIABLE} always;");
    for header in NODE_CORS_HEADERS {
        let _ = writeln!(out, "    proxy_hide_header {header};");
    }
    let _ = writeln!(out, "    access_log {} jsonrpc_gate;", policy.access_log);
    // nginx's error lines for a request name its request line, the key included; the gate
    // logs upstream failures itself, without it.
    out.push_str("    error_log /dev/null emerg;\n");
    for cidr in &policy.trusted_proxy_cidrs {
        let _ = writeln!(out, "    set_real_ip_from {cidr};");
    }
    out.push_str("    real_ip_header X-Forwarded-For;\n    real_ip_recursive on;\n");
    let _ = writeln!(out, "    client_max_body_size {};", policy.max_body_bytes);
    let _ = writeln!(out, "    client_body_buffer_size {BODY_BUFFER_BYTES};");
    out.push_str("    error_page 413 = @jsonrpc_gate_too_large;\n\n");
    out.push_str(
        "    location @jsonrpc_gate_too_large {
        content_by_lua_block { require(\"jsonrpc_gate\").too_large() }
        log_by_lua_block { require(\"jsonrpc_gate\").log() }
    }

",
    );
    out
}

/// The gate's lines in the public JSON-RPC location (which has an `error_page` of its own, so
/// it does not inherit the server's).
pub(crate) const ACCESS_LINE: &str = "        error_page 413 = @jsonrpc_gate_too_large;
        access_by_lua_block { require(\"jsonrpc_gate\").http() }
        log_by_lua_block { require(\"jsonrpc_gate\").log() }
";

/// The public upstream's balancer: the gate picks each request's member.
pub(crate) const BALANCER_LINE: &str =
    "    balancer_by_lua_block { require(\"jsonrpc_gate.chain\").balance() }\n";

/// The public server's WebSocket location: the relay.
pub(crate) const WEBSOCKET_LOCATION_BODY: &str =
    "        content_by_lua_block { require(\"jsonrpc_gate\").websocket() }
        log_by_lua_block { require(\"jsonrpc_gate\").log() }
";

/// The internal servers: the relay's way to the nodes (`websocket_proxy` holds the proxy
/// directives of today's WebSocket location), and the usage endpoint.
pub(crate) fn render_internal_servers(
    out: &mut String,
    options: &RenderOptions,
    websocket_proxy: Option<&str>,
) {
    if let Some(proxy) = websocket_proxy {
        let _ = write!(
            out,
            "server {{
    listen unix:{socket};
    access_log off;

    location / {{
{proxy}    }}
}}

",
            socket = socket(options, WEBSOCKET_SOCKET),
        );
    }
    // The usage server declares the access log's variable, which the public server sets
    // (nginx refuses a log format naming an undeclared variable, as when nothing is healthy),
    // and the variables the gate sets from Lua. Those are not `set` in the public server: a
    // server-level `set` runs again after an `error_page` redirect and would forget them.
    let _ = write!(
        out,
        "server {{
    listen unix:{socket};
    access_log off;
    set {CLIENT_VARIABLE} \"-\";
    set {SLOT_VARIABLE} \"\";
    set {CORS_VARIABLE} \"\";

    location = /usage {{
        content_by_lua_block {{ require(\"jsonrpc_gate\").usage() }}
    }}

    location = /policy {{
        content_by_lua_block {{ require(\"jsonrpc_gate\").policy() }}
    }}

    location = /heads {{
        content_by_lua_block {{ require(\"jsonrpc_gate.chain\").report() }}
    }}

    location / {{
        return 404;
    }}
}}

",
        socket = socket(options, USAGE_SOCKET),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> GateClient {
        GateClient {
            name: name.into(),
            key_sha256: key_sha256(name),
            calls_per_second: 5,
            allow_methods: vec!["debug_".into()],
            concurrent_requests: 64,
            allowed_origins: vec![],
        }
    }

    #[test]
    fn the_defaults_are_valid_and_deny_the_node_namespaces() {
        let policy = GatePolicy::default();
        policy.validate().expect("valid");
        for m in [
            "admin_",
            "debug_",
            "trace_",
            "anvil_",
            "eth_sendTransaction",
        ] {
            assert!(policy.deny_methods.iter().any(|d| d == m), "{m}");
        }
    }

    #[test]
    fn the_gate_is_closed_without_clients_unless_the_deployment_opens_it() {
        let options = RenderOptions::default();
        let read = |policy: &GatePolicy| -> serde_json::Value {
            serde_json::to_value(policy.lua_config(&options, Vec::new())).expect("JSON")
        };
        let closed = GatePolicy::default();
        assert!(!closed.open_without_key);
        assert_eq!(read(&closed)["open_without_key"], false);
        assert_eq!(read(&closed)["clients"], json!([]));
        let open = GatePolicy {
            open_without_key: true,
            ..GatePolicy::default()
        };
        assert_eq!(read(&open)["open_without_key"], true);
        // Leaving out every stored client keeps the deployment's choice.
        assert!(!closed.with_clients(&[]).open_without_key);
        assert!(open.with_clients(&[]).open_without_key);
    }

    #[test]
    fn refuses_what_could_break_the_configuration() {
        let with = |f: &dyn Fn(&mut GatePolicy)| {
            let mut p = GatePolicy {
                clients: vec![client("a")],
                ..GatePolicy::default()
            };
            f(&mut p);
            p.validate()
        };
        assert!(with(&|_| {}).is_ok());
        assert!(with(&|p| p.clients[0].name = "a b".into()).is_err());
        assert!(with(&|p| p.clients.push(client("a"))).is_err());
        assert!(with(&|p| p.clients[0].key_sha256 = "]==]".into()).is_err());
        assert!(with(&|p| p.clients[0].allow_methods = vec!["]==]".into()]).is_err());
        assert!(with(&|p| p.deny_methods.push("a;b".into())).is_err());
        assert!(with(&|p| p.trusted_proxy_cidrs = vec!["1.2.3.4; x".into()]).is_err());
        assert!(with(&|p| p.lua_dir = "rel".into()).is_err());
        assert!(with(&|p| p.max_batch_calls = 0).is_err());
        assert!(with(&|p| p.clients[0].calls_per_second = 0).is_err());
    }

    #[test]
    fn stored_clients_get_the_default_rate_and_unusable_ones_are_left_out() {
        use crate::model::client::{key_id, ClientRecord};
        let record = |name: &str, key: &str, calls: Option<u32>| {
            let digest = key_sha256(key);
            ClientRecord {
                name: name.into(),
                key_id: key_id(&digest),
                key_sha256: digest,
                calls_per_second: calls,
                allow_methods: vec!["debug_".into()],
                concurrent_requests: None,
                allowed_origins: vec![],
                when_added: String::new(),
            }
        };
        let deployment = GatePolicy {
            default_calls_per_second: 7,
            ..GatePolicy::default()
        };
        let policy = deployment.with_clients(&[
            record("a", "ka", None),
            record("b", "kb", Some(40)),
            ClientRecord {
                key_sha256: "not-a-digest".into(),
                ..record("damaged", "kd", None)
            },
            record("bad name", "kn", None),
            record("c", "ka", None),
        ]);
        assert_eq!(
            policy.clients,
            vec![
                GateClient {
                    name: "a".into(),
                    key_sha256: key_sha256("ka"),
                    calls_per_second: 7,
                    allow_methods: vec!["debug_".into()],
                    concurrent_requests: 64,
                    allowed_origins: vec![],
                },
                GateClient {
                    name: "b".into(),
                    key_sha256: key_sha256("kb"),
                    calls_per_second: 40,
                    allow_methods: vec!["debug_".into()],
                    concurrent_requests: 64,
                    allowed_origins: vec![],
                },
            ]
        );
        assert_eq!(policy.deny_methods, deployment.deny_methods);
        policy.validate().expect("what is left is valid");
        assert!(deployment.with_clients(&[]).clients.is_empty());
    }

    #[test]
    fn the_configuration_holds_digests_never_keys() {
        let key = "k3y-secret_value";
        let policy = GatePolicy {
            clients: vec![GateClient {
                key_sha256: key_sha256(key),
                ..client("app")
            }],
            ..GatePolicy::default()
        };
        let mut out = String::new();
        render_http_level(&mut out, &policy, &RenderOptions::default(), Vec::new());
        assert!(!out.contains(key));
        assert!(out.contains(&key_sha256(key)));
        assert_eq!(
            key_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_clients_fingerprint_follows_what_the_gate_admits_never_a_key() {
        use crate::model::client::{key_id, ClientRecord};
        let record = |name: &str, key: &str| {
            let digest = key_sha256(key);
            ClientRecord {
                name: name.into(),
                key_id: key_id(&digest),
                key_sha256: digest,
                calls_per_second: Some(40),
                allow_methods: vec!["debug_".into()],
                concurrent_requests: None,
                allowed_origins: vec![],
                when_added: "2026-12-02T10:00:00.000000Z".into(),
            }
        };
        let (a, b) = (record("a", "key-of-a"), record("b", "key-of-b"));
        let both = clients_fingerprint(&[a.clone(), b.clone()]);
        assert_eq!(both.len(), 64);
        assert!(both.bytes().all(|c| c.is_ascii_hexdigit()));

        // Order-independent, and blind to what the gate does not hold.
        assert_eq!(clients_fingerprint(&[b.clone(), a.clone()]), both);
        let renamed_id = ClientRecord {
            key_id: "00000000".into(),
            when_added: "2027-01-01T00:00:00.000000Z".into(),
            ..a.clone()
        };
        assert_eq!(clients_fingerprint(&[renamed_id, b.clone()]), both);
        // Items the gate leaves out count for nothing.
        let damaged = ClientRecord {
            key_sha256: "not-a-digest".into(),
            ..record("damaged", "kd")
        };
        let same_key = record("c", "key-of-a");
        assert_eq!(
            clients_fingerprint(&[a.clone(), damaged, same_key, b.clone()]),
            both
        );

        // Every change of what the gate enforces changes it.
        let changed = [
            vec![a.clone()],
            vec![a.clone(), b.clone(), record("c", "key-of-c")],
            vec![record("a", "a-new-key"), b.clone()],
            vec![record("a2", "key-of-a"), b.clone()],
            vec![
                ClientRecord {
                    calls_per_second: Some(41),
                    ..a.clone()
                },
                b.clone(),
            ],
            vec![
                ClientRecord {
                    calls_per_second: None,
                    ..a.clone()
                },
                b.clone(),
            ],
            vec![
                ClientRecord {
                    allow_methods: vec!["debug_".into(), "trace_".into()],
                    concurrent_requests: None,
                    allowed_origins: vec![],
                    ..a.clone()
                },
                b.clone(),
            ],
            vec![
                ClientRecord {
                    allow_methods: Vec::new(),
                    concurrent_requests: None,
                    allowed_origins: vec![],
                    ..a.clone()
                },
                b.clone(),
            ],
        ];
        let mut seen = std::collections::BTreeSet::from([both.clone()]);
        for clients in &changed {
            let fingerprint = clients_fingerprint(clients);
            assert!(seen.insert(fingerprint), "{clients:?}");
        }
        assert!(seen.insert(clients_fingerprint(&[])));

        // Digests of the table's digests: never a key, nor a digest itself.
        for fingerprint in &seen {
            for text in ["key-of-a", "key-of-b", &a.key_sha256, &b.key_sha256] {
                assert!(!fingerprint.contains(text), "{fingerprint} holds {text}");
            }
        }
    }
}
