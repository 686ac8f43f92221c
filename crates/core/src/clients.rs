//! The clients of the public endpoint and their API keys: the record, its validation, key
//! generation and hashing, and the admin functions `add_client`, `list_clients`,
//! `remove_client` (same event and answer shapes as [`crate::admin`]).
//!
//! A key exists in clear only in `add_client`'s answer; the table holds its SHA-256. Why, and
//! the table's schema: docs/architecture.md, "Clients and keys".

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::admin::{log_admin_error, request_body, AdminError, ApiResponse};
use crate::backend::iso8601;
use crate::clients_store::{ClientStore, PutOutcome, Removed};
use crate::json_kind;
use crate::renderer_trigger::RendererTrigger;
use crate::settings::{Env, SettingsError};

/// Longest client name, in characters.
pub const MAX_NAME_LEN: usize = 64;
/// Longest method name or prefix in `allow_methods`, in characters.
pub const MAX_METHOD_LEN: usize = 64;
/// Most entries in `allow_methods`.
pub const MAX_ALLOW_METHODS: usize = 256;
/// Largest `calls_per_second` accepted.
pub const MAX_CALLS_PER_SECOND: u64 = 1_000_000;
/// Largest `concurrent_requests` accepted.
pub const MAX_CONCURRENT_REQUESTS: u64 = 100_000;
/// Most entries in `allowed_origins`.
pub const MAX_ALLOWED_ORIGINS: usize = 64;
/// Longest origin in `allowed_origins`, in characters.
pub const MAX_ORIGIN_LEN: usize = 253;
/// Random bytes in a key (256 bits).
pub const KEY_BYTES: usize = 32;
/// Characters of a key: [`KEY_BYTES`] as unpadded base64url.
pub const KEY_LEN: usize = 43;
/// Hex digits of `key_sha256` that form the non-secret `key_id`.
pub const KEY_ID_LEN: usize = 8;

/// One client as stored (hash key `name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// 1 to [`MAX_NAME_LEN`] of `A-Z a-z 0-9 . _ -`; the CloudWatch dimension and log label.
    pub name: String,
    /// Lowercase hex SHA-256 of the key's UTF-8 text, as it appears in `/v3/<key>`.
    pub key_sha256: String,
    /// The first [`KEY_ID_LEN`] hex digits of `key_sha256`: names the key without revealing it.
    pub key_id: String,
    /// Calls per second; `None` means the deployment's default, whatever it is at render time.
    pub calls_per_second: Option<u32>,
    /// Method names and namespace prefixes (ending in `_`) this client may call beyond the
    /// deployment's policy, in the order given.
    pub allow_methods: Vec<String>,
    /// Requests (and WebSocket connections) in flight at once; `None` means the deployment's
    /// default, whatever it is at render time.
    pub concurrent_requests: Option<u32>,
    /// Browser origins (`scheme://host[:port]`) whose pages may use the key; empty means any
    /// origin, and any caller without an `Origin` header.
    pub allowed_origins: Vec<String>,
    /// When it was added, ISO-8601 UTC.
    pub when_added: String,
}

/// A client as the admin functions show it: no key, no hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientView<'a> {
    /// The name.
    pub name: &'a str,
    /// The key's non-secret id.
    pub key_id: &'a str,
    /// `null` means the deployment's default.
    pub calls_per_second: Option<u32>,
    /// Extra methods and prefixes.
    pub allow_methods: &'a [String],
    /// `null` means the deployment's default.
    pub concurrent_requests: Option<u32>,
    /// Empty means any origin.
    pub allowed_origins: &'a [String],
    /// When it was added.
    pub when_added: &'a str,
}

impl ClientRecord {
    /// The record without its hash, as answered.
    pub fn view(&self) -> ClientView<'_> {
        ClientView {
            name: &self.name,
            key_id: &self.key_id,
            calls_per_second: self.calls_per_second,
            allow_methods: &self.allow_methods,
            concurrent_requests: self.concurrent_requests,
            allowed_origins: &self.allowed_origins,
            when_added: &self.when_added,
        }
    }

    /// Whether `method` is in this client's `allow_methods`, by name or by prefix.
    pub fn allows(&self, method: &str) -> bool {
        self.allow_methods
            .iter()
            .any(|entry| method_matches(entry, method))
    }
}

/// Whether an `allow_methods` entry covers `method`: the same name, or a prefix ending in `_`
/// that `method` starts with.
pub fn method_matches(entry: &str, method: &str) -> bool {
    if entry.ends_with('_') {
        method.starts_with(entry)
    } else {
        method == entry
    }
}

/// A new API key. Neither `Debug` nor `Display` shows it; only [`ClientKey::expose`] does,
/// for the one answer that carries it.
pub struct ClientKey(String);

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey(key_id {})", key_id(&self.sha256()))
    }
}

impl ClientKey {
    /// A key of [`KEY_BYTES`] bytes from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::getrandom(&mut bytes)?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The key made of these bytes (unpadded base64url).
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        use base64::Engine as _;
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The key's text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its lowercase hex SHA-256 (see [`key_sha256`]).
    pub fn sha256(&self) -> String {
        key_sha256(&self.0)
    }
}

/// The lowercase hex SHA-256 of a key's UTF-8 text: what the table stores and the data plane
/// compares.
pub fn key_sha256(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The non-secret id of a key: the first [`KEY_ID_LEN`] hex digits of its hash.
pub fn key_id(sha256: &str) -> String {
    sha256.chars().take(KEY_ID_LEN).collect()
}

/// Whether `text` has a key's shape: [`KEY_LEN`] characters of `A-Z a-z 0-9 - _`.
pub fn is_key_shaped(text: &str) -> bool {
    text.len() == KEY_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a client name: 1 to [`MAX_NAME_LEN`] of `A-Z a-z 0-9 . _ -`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("\"name\" is empty".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "\"name\" holds {bad:?}; only A-Z a-z 0-9 . _ - are accepted"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "\"name\" is {} characters long; at most {MAX_NAME_LEN} are accepted",
            name.len()
        ));
    }
    Ok(())
}

/// Checks an `allow_methods` entry: a letter, then up to 63 of `A-Z a-z 0-9 _` (an entry
/// ending in `_` is a namespace prefix).
pub fn validate_method(entry: &str) -> Result<(), String> {
    let mut bytes = entry.bytes();
    let starts_with_letter = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !starts_with_letter || !rest_ok || entry.len() > MAX_METHOD_LEN {
        return Err(format!(
            "allow_methods entry {entry:?} is not a method name or prefix: a letter, then up to \
             {} of A-Z a-z 0-9 _ (a prefix ends in _, like \"debug_\")",
            MAX_METHOD_LEN - 1
        ));
    }
    Ok(())
}

/// Checks an `allowed_origins` entry: an origin as browsers send it, `http` or `https`, a
/// lowercase host name or IPv4 address, an optional port, nothing after it.
pub fn validate_origin(origin: &str) -> Result<(), String> {
    let problem = || {
        Err(format!(
            "allowed_origins entry {origin:?} is not an origin: \"https://host\" or \
             \"http://host:port\", lowercase, with no path and at most {MAX_ORIGIN_LEN} characters"
        ))
    };
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return problem();
    };
    let (host, port) = match rest.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    if !host_ok || !port_ok || origin.len() > MAX_ORIGIN_LEN {
        return problem();
    }
    Ok(())
}

/// A valid `add_client` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddClientRequest {
    /// The name.
    pub name: String,
    /// `None`: the deployment's default.
    pub calls_per_second: Option<u32>,
    /// Extra methods and prefixes.
    pub allow_methods: Vec<String>,
    /// `None`: the deployment's default.
    pub concurrent_requests: Option<u32>,
    /// Empty: any origin.
    pub allowed_origins: Vec<String>,
}

impl AddClientRequest {
    /// The record this request stores with `key`, added at `now`.
    pub fn record(&self, key: &ClientKey, now: OffsetDateTime) -> ClientRecord {
        let key_sha256 = key.sha256();
        ClientRecord {
            name: self.name.clone(),
            key_id: key_id(&key_sha256),
            key_sha256,
            calls_per_second: self.calls_per_second,
            allow_methods: self.allow_methods.clone(),
            concurrent_requests: self.concurrent_requests,
            allowed_origins: self.allowed_origins.clone(),
            when_added: iso8601(now),
        }
    }
}

const ADD_SHAPE: &str = "the body must be {\"name\": string, \"calls_per_second\": positive \
                         integer (optional), \"allow_methods\": [string] (optional), \
                         \"concurrent_requests\": positive integer (optional), \
                         \"allowed_origins\": [string] (optional)}";

/// Parses an `add_client` event.
pub fn parse_add_client(event: &Value) -> Result<AddClientRequest, AdminError> {
    let body = request_body(event)?;
    refuse_unknown_fields(
        &body,
        &[
            "name",
            "calls_per_second",
            "allow_methods",
            "concurrent_requests",
            "allowed_origins",
        ],
        ADD_SHAPE,
    )?;
    let name = required_name(&body)?;
    let calls_per_second = optional_count(&body, "calls_per_second", MAX_CALLS_PER_SECOND)?;
    let concurrent_requests =
        optional_count(&body, "concurrent_requests", MAX_CONCURRENT_REQUESTS)?;
    let allow_methods = string_list(&body, "allow_methods", MAX_ALLOW_METHODS, validate_method)?;
    let allowed_origins = string_list(
        &body,
        "allowed_origins",
        MAX_ALLOWED_ORIGINS,
        validate_origin,
    )?;
    Ok(AddClientRequest {
        name,
        calls_per_second,
        allow_methods,
        concurrent_requests,
        allowed_origins,
    })
}

/// An optional whole number from 1 to `max`.
fn optional_count(
    body: &Map<String, Value>,
    field: &str,
    max: u64,
) -> Result<Option<u32>, AdminError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(value) if (1..=max).contains(&value) => Ok(u32::try_from(value).ok()),
            _ => Err(AdminError::Validation(format!(
                "\"{field}\" must be a whole number from 1 to {max}, not {n}"
            ))),
        },
        Some(other) => Err(AdminError::Validation(format!(
            "\"{field}\" must be a whole number, not {}",
            json_kind(other)
        ))),
    }
}

/// An optional list of at most `max` distinct strings, each checked by `validate`.
fn string_list(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
    validate: fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, AdminError> {
    let entries = match body.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            return Err(AdminError::Validation(format!(
                "\"{field}\" must be an array of strings, not {}",
                json_kind(other)
            )))
        }
    };
    if entries.len() > max {
        return Err(AdminError::Validation(format!(
            "\"{field}\" has {} entries; at most {max} are accepted",
            entries.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::String(entry) = entry else {
            return Err(AdminError::Validation(format!(
                "\"{field}\" entries must be strings, not {}",
                json_kind(entry)
            )));
        };
        validate(entry).map_err(AdminError::Validation)?;
        if out.contains(entry) {
            return Err(AdminError::Validation(format!(
                "{field} lists {entry:?} twice"
            )));
        }
        out.push(entry.clone());
    }
    Ok(out)
}

/// Parses a `remove_client` event: the body must be exactly `{"name": string}`.
pub fn parse_remove_client(event: &Value) -> Result<String, AdminError> {
    let body = request_body(event)?;
    refuse_unknown_fields(&body, &["name"], "the body must be {\"name\": string}")?;
    required_name(&body)
}

fn refuse_unknown_fields(
    body: &Map<String, Value>,
    known: &[&str],
    shape: &str,
) -> Result<(), AdminError> {
    let mut unknown: Vec<&str> = body
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(AdminError::Validation(format!(
        "unexpected field(s) {}: {shape}",
        unknown.join(", ")
    )))
}

fn required_name(body: &Map<String, Value>) -> Result<String, AdminError> {
    match body.get("name") {
        Some(Value::String(name)) => {
            validate_name(name).map_err(AdminError::Validation)?;
            Ok(name.clone())
        }
        Some(other) => Err(AdminError::Validation(format!(
            "\"name\" must be a string, not {}",
            json_kind(other)
        ))),
        None => Err(AdminError::Validation("\"name\" is required".into())),
    }
}

/// `add_client`'s answer: the only place the key ever appears.
#[derive(Serialize)]
struct AddedClient<'a> {
    name: &'a str,
    key: &'a str,
    key_id: &'a str,
    calls_per_second: Option<u32>,
    allow_methods: &'a [String],
    concurrent_requests: Option<u32>,
    allowed_origins: &'a [String],
    when_added: &'a str,
}

/// `add_client`: 201 with the new client and its key, 409 for a known name; then requests a
/// render.
pub async fn add_client(
    store: &ClientStore,
    trigger: &RendererTrigger,
    event: &Value,
    now: OffsetDateTime,
) -> ApiResponse {
    let outcome = async {
        let request = parse_add_client(event)?;
        let key = ClientKey::generate()
            .map_err(|e| AdminError::Internal(format!("the system's random source failed: {e}")))?;
        let record = request.record(&key, now);
        match store.put_new(&record).await? {
            PutOutcome::Created => Ok((record, key)),
            PutOutcome::NameTaken => Err(AdminError::Conflict(format!(
                "a client named {:?} already exists; remove it first to issue a new key",
                record.name
            ))),
        }
    }
    .await;
    match outcome {
        Ok((record, key)) => {
            tracing::info!(client = %record.name, key_id = %record.key_id, "client added");
            request_render(trigger, "add_client").await;
            ApiResponse::json(
                201,
                &AddedClient {
                    name: &record.name,
                    key: key.expose(),
                    key_id: &record.key_id,
                    calls_per_second: record.calls_per_second,
                    allow_methods: &record.allow_methods,
                    concurrent_requests: record.concurrent_requests,
                    allowed_origins: &record.allowed_origins,
                    when_added: &record.when_added,
                },
            )
        }
        Err(error) => {
            log_admin_error("add_client", &error);
            error.to_response()
        }
    }
}

/// `list_clients`: 200 with every client (no key, no hash), sorted by name.
pub async fn list_clients(store: &ClientStore) -> ApiResponse {
    match store.all().await {
        Ok(clients) => {
            let views: Vec<ClientView<'_>> = clients.iter().map(ClientRecord::view).collect();
            ApiResponse::json(200, &views)
        }
        Err(error) => {
            let error = AdminError::from(error);
            log_admin_error("list_clients", &error);
            error.to_response()
        }
    }
}

/// `remove_client`: 200 with the removed client (only its name when the item did not read as a
/// client), 404 for an unknown name; then requests a render.
pub async fn remove_client(
    store: &ClientStore,
    trigger: &RendererTrigger,
    event: &Value,
) -> ApiResponse {
    let outcome = async {
        let name = parse_remove_client(event)?;
        match store.delete(&name).await? {
            Some(removed) => Ok((name, removed)),
            None => Err(AdminError::NotFound("no client has that name".into())),
        }
    }
    .await;
    match outcome {
        Ok((name, removed)) => {
            request_render(trigger, "remove_client").await;
            match removed {
                Removed::Client(client) => {
                    tracing::info!(client = %client.name, key_id = %client.key_id, "client removed");
                    ApiResponse::json(200, &client.view())
                }
                Removed::Unreadable => {
                    tracing::info!(client = %name, "unreadable client item removed");
                    ApiResponse::json(200, &serde_json::json!({ "name": name }))
                }
            }
        }
        Err(error) => {
            log_admin_error("remove_client", &error);
            error.to_response()
        }
    }
}

/// Requests a render; a failure is logged and the change stands.
async fn request_render(trigger: &RendererTrigger, reason: &str) {
    if let Err(error) = trigger.request_render(reason).await {
        tracing::error!(%error, "client change stored, but the re-render could not be requested");
    }
}

/// Settings of `list_clients`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientsTableSettings {
    /// `DYNAMODB_CLIENTS_TABLE`.
    pub table: String,
}

impl ClientsTableSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        Ok(Self {
            table: env.required("DYNAMODB_CLIENTS_TABLE")?,
        })
    }
}

/// Settings of `add_client` and `remove_client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientChangeSettings {
    /// `DYNAMODB_CLIENTS_TABLE`.
    pub table: String,
    /// `CONFIG_RENDERER_FUNCTION`: invoked after a change.
    pub renderer_function: String,
}

impl ClientChangeSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        Ok(Self {
            table: env.required("DYNAMODB_CLIENTS_TABLE")?,
            renderer_function: env.required("CONFIG_RENDERER_FUNCTION")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn event(body: Value) -> Value {
        json!({ "body": body.to_string() })
    }

    #[test]
    fn parses_a_full_and_a_minimal_request() {
        let request = parse_add_client(&event(json!({
            "name": "wallet-1.prod_eu",
            "calls_per_second": 25,
            "allow_methods": ["debug_", "eth_sendTransaction"],
            "concurrent_requests": 8,
            "allowed_origins": ["https://app.example", "http://127.0.0.1:8080"]
        })))
        .unwrap();
        assert_eq!(
            request,
            AddClientRequest {
                name: "wallet-1.prod_eu".into(),
                calls_per_second: Some(25),
                allow_methods: vec!["debug_".into(), "eth_sendTransaction".into()],
                concurrent_requests: Some(8),
                allowed_origins: vec!["https://app.example".into(), "http://127.0.0.1:8080".into()],
            }
        );
        let request = parse_add_client(&json!({"body": {"name": "w"}})).unwrap();
        assert_eq!(request.calls_per_second, None);
        assert!(request.allow_methods.is_empty());
        let request = parse_add_client(&event(
            json!({"name": "w", "calls_per_second": null, "allow_methods": null}),
        ))
        .unwrap();
        assert_eq!(
            (request.calls_per_second, request.allow_methods.len()),
            (None, 0)
        );
        let longest = "a".repeat(MAX_NAME_LEN);
        assert_eq!(
            parse_add_client(&event(json!({ "name": longest })))
                .unwrap()
                .name,
            longest
        );
        let max = parse_add_client(&event(
            json!({"name": "w", "calls_per_second": MAX_CALLS_PER_SECOND}),
        ))
        .unwrap();
        assert_eq!(max.calls_per_second, Some(1_000_000));
    }

    fn refusal(event: &Value) -> (u16, Value) {
        let response = parse_add_client(event).unwrap_err().to_response();
        (response.status_code, response.body_json().unwrap())
    }

    #[test]
    fn wrong_shapes_are_validation_errors_that_say_what_is_wrong() {
        let long_method = format!("a{}", "b".repeat(MAX_METHOD_LEN));
        let too_many: Vec<String> = (0..=MAX_ALLOW_METHODS).map(|i| format!("m{i}")).collect();
        let cases = [
            (json!({}), "required"),
            (json!({"name": ""}), "empty"),
            (json!({"name": "a".repeat(MAX_NAME_LEN + 1)}), "at most 64"),
            (json!({"name": "wallet app"}), "' '"),
            (json!({"name": "wallet/app"}), "'/'"),
            (json!({"name": "wallét"}), "'é'"),
            (json!({"name": "a\nb"}), "'\\n'"),
            (json!({"name": 7}), "must be a string"),
            (json!({"name": null}), "must be a string"),
            (
                json!({"name": "w", "key": "mine"}),
                "unexpected field(s) key",
            ),
            (
                json!({"name": "w", "Name": "x"}),
                "unexpected field(s) Name",
            ),
            (json!({"name": "w", "calls_per_second": 0}), "from 1 to"),
            (json!({"name": "w", "calls_per_second": -5}), "from 1 to"),
            (json!({"name": "w", "calls_per_second": 1.5}), "from 1 to"),
            (json!({"name": "w", "calls_per_second": 1e3}), "from 1 to"),
            (
                json!({"name": "w", "calls_per_second": 1_000_001}),
                "from 1 to",
            ),
            (
                json!({"name": "w", "calls_per_second": u64::MAX}),
                "from 1 to",
            ),
            (
                json!({"name": "w", "calls_per_second": "10"}),
                "not a string",
            ),
            (
                json!({"name": "w", "calls_per_second": true}),
                "not a boolean",
            ),
            (
                json!({"name": "w", "allow_methods": "debug_"}),
                "array of strings",
            ),
            (
                json!({"name": "w", "allow_methods": {"a": 1}}),
                "array of strings",
            ),
            (
                json!({"name": "w", "allow_methods": [1]}),
                "must be strings",
            ),
            (
                json!({"name": "w", "allow_methods": [null]}),
                "must be strings",
            ),
            (json!({"name": "w", "allow_methods": [""]}), "not a method"),
            (json!({"name": "w", "allow_methods": ["_"]}), "not a method"),
            (
                json!({"name": "w", "allow_methods": ["1eth_"]}),
                "not a method",
            ),
            (
                json!({"name": "w", "allow_methods": ["debug_*"]}),
                "not a method",
            ),
            (
                json!({"name": "w", "allow_methods": ["eth.call"]}),
                "not a method",
            ),
            (
                json!({"name": "w", "allow_methods": ["eth_call "]}),
                "not a method",
            ),
            (
                json!({"name": "w", "allow_methods": ["eth\u{0}_"]}),
                "not a method",
            ),
            (
                json!({"name": "w", "allow_methods": ["ｅth_call"]}),
                "not a method",
            ),
            (
                json!({"name": "w", "allow_methods": [long_method]}),
                "not a method",
            ),
            (
                json!({"name": "w", "allow_methods": too_many}),
                "at most 256",
            ),
            (json!({"name": "w", "allow_methods": ["a_", "a_"]}), "twice"),
            (json!({"name": "w", "concurrent_requests": 0}), "from 1 to"),
            (
                json!({"name": "w", "concurrent_requests": 100_001}),
                "from 1 to",
            ),
            (
                json!({"name": "w", "concurrent_requests": "8"}),
                "whole number",
            ),
            (
                json!({"name": "w", "allowed_origins": "https://a.example"}),
                "array",
            ),
            (json!({"name": "w", "allowed_origins": [7]}), "strings"),
            (
                json!({"name": "w", "allowed_origins": ["*"]}),
                "not an origin",
            ),
            (
                json!({"name": "w", "allowed_origins": ["https://a.example/"]}),
                "not an origin",
            ),
            (
                json!({"name": "w", "allowed_origins": ["https://A.example"]}),
                "not an origin",
            ),
            (
                json!({"name": "w", "allowed_origins": ["ftp://a.example"]}),
                "not an origin",
            ),
            (
                json!({"name": "w", "allowed_origins": ["https://a.example:0"]}),
                "not an origin",
            ),
            (
                json!({"name": "w", "allowed_origins": ["https://a.example:99999"]}),
                "not an origin",
            ),
            (
                json!({"name": "w", "allowed_origins": ["https://a b.example"]}),
                "not an origin",
            ),
            (
                json!({"name": "w", "allowed_origins": ["https://"]}),
                "not an origin",
            ),
            (
                json!({"name": "w", "allowed_origins": ["https://a.example\r\nX: y"]}),
                "not an origin",
            ),
            (
                json!({"name": "w", "allowed_origins": ["https://a.example", "https://a.example"]}),
                "twice",
            ),
        ];
        for (body, expected) in cases {
            let (status, answer) = refusal(&event(body.clone()));
            assert_eq!(status, 400, "{body}");
            assert_eq!(answer["type"], "validation_error", "{body}");
            assert_eq!(answer["errorClass"], "ValidationError", "{body}");
            let message = answer["error"].as_str().unwrap();
            assert!(message.contains(expected), "{body}: {message}");
        }
        for not_an_object in [json!("text"), json!([1]), json!({"body": "[]"}), json!({})] {
            assert_eq!(refusal(&not_an_object).1["type"], "validation_error");
        }
        assert_eq!(
            refusal(&json!({"body": "{\"name\":"})).1["type"],
            "parse_error"
        );
    }

    #[test]
    fn remove_requests() {
        assert_eq!(
            parse_remove_client(&event(json!({"name": "w.1"}))).unwrap(),
            "w.1"
        );
        for body in [
            json!({"name": "w", "x": 1}),
            json!({"name": ""}),
            json!({"name": "a b"}),
            json!({"name": 1}),
            json!({}),
        ] {
            assert!(
                matches!(
                    parse_remove_client(&event(body.clone())),
                    Err(AdminError::Validation(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn a_key_is_256_random_bits_as_unpadded_base64url() {
        let keys: Vec<ClientKey> = (0..64).map(|_| ClientKey::generate().unwrap()).collect();
        for key in &keys {
            assert!(is_key_shaped(key.expose()), "{}", key.expose());
        }
        let mut texts: Vec<&str> = keys.iter().map(ClientKey::expose).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), keys.len(), "keys repeat");
        // Every output character position varies across 64 keys (not a fixed prefix or tail).
        for position in 0..KEY_LEN {
            let mut seen: Vec<u8> = texts.iter().map(|t| t.as_bytes()[position]).collect();
            seen.sort_unstable();
            seen.dedup();
            assert!(seen.len() > 1, "position {position} never changes");
        }

        let zeros = ClientKey::from_bytes(&[0; KEY_BYTES]);
        assert_eq!(zeros.expose(), "A".repeat(KEY_LEN));
        let ones = ClientKey::from_bytes(&[0xff; KEY_BYTES]);
        // 42 characters of six 1 bits, then the last four 1 bits padded with zeros: 0b111100 = '8'.
        assert_eq!(ones.expose(), format!("{}8", "_".repeat(KEY_LEN - 1)));
        assert!(!is_key_shaped("short"));
        assert!(!is_key_shaped(&format!("{}=", "A".repeat(KEY_LEN - 1))));
    }

    #[test]
    fn the_hash_is_sha256_hex_of_the_key_text_and_the_id_its_first_digits() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            key_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(key_id(&key_sha256("abc")), "ba7816bf");
        let key = ClientKey::from_bytes(&[7; KEY_BYTES]);
        assert_eq!(key.sha256(), key_sha256(key.expose()));
        let debug = format!("{key:?}");
        assert!(!debug.contains(key.expose()), "{debug}");
        assert!(debug.contains(&key_id(&key.sha256())), "{debug}");
    }

    #[test]
    fn the_record_holds_the_hash_and_its_view_neither_hash_nor_key() {
        let request = AddClientRequest {
            name: "wallet".into(),
            calls_per_second: None,
            allow_methods: vec!["debug_".into()],
            concurrent_requests: None,
            allowed_origins: vec![],
        };
        let key = ClientKey::from_bytes(&[9; KEY_BYTES]);
        let record = request.record(&key, datetime!(2026-12-02 10:00:00 UTC));
        assert_eq!(record.key_sha256, key.sha256());
        assert_eq!(record.key_id, record.key_sha256[..KEY_ID_LEN]);
        assert_eq!(record.when_added, "2026-12-02T10:00:00.000000Z");
        let view = serde_json::to_value(record.view()).unwrap();
        assert_eq!(
            view,
            json!({
                "name": "wallet",
                "key_id": record.key_id,
                "calls_per_second": null,
                "allow_methods": ["debug_"],
                "concurrent_requests": null,
                "allowed_origins": [],
                "when_added": "2026-12-02T10:00:00.000000Z"
            })
        );
        let text = view.to_string();
        assert!(!text.contains(&record.key_sha256));
        assert!(!text.contains(key.expose()));
    }

    #[test]
    fn allow_methods_match_names_exactly_and_prefixes_by_start() {
        let record = ClientRecord {
            name: "w".into(),
            key_sha256: key_sha256("k"),
            key_id: key_id(&key_sha256("k")),
            calls_per_second: Some(1),
            allow_methods: vec!["debug_".into(), "eth_sendTransaction".into()],
            concurrent_requests: None,
            allowed_origins: vec![],
            when_added: String::new(),
        };
        assert!(record.allows("debug_traceTransaction"));
        assert!(record.allows("debug_"));
        assert!(record.allows("eth_sendTransaction"));
        assert!(!record.allows("eth_sendTransactionX"));
        assert!(!record.allows("debug"));
        assert!(!record.allows("admin_peers"));
        assert!(!record.allows("Debug_traceTransaction"));
    }

    #[test]
    fn client_settings_name_the_clients_table() {
        let vars: std::collections::HashMap<String, String> = [
            ("DYNAMODB_TABLE", "backends"),
            ("DYNAMODB_CLIENTS_TABLE", "clients"),
            ("CONFIG_RENDERER_FUNCTION", "f"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let lookup = Env::from_fn(|k| vars.get(k).cloned());
        assert_eq!(
            ClientsTableSettings::from_env(&lookup).unwrap().table,
            "clients"
        );
        let change = ClientChangeSettings::from_env(&lookup).unwrap();
        assert_eq!(
            (change.table.as_str(), change.renderer_function.as_str()),
            ("clients", "f")
        );
        let only_renderer = Env::from_fn(|k| (k == "CONFIG_RENDERER_FUNCTION").then(|| "f".into()));
        assert_eq!(
            ClientsTableSettings::from_env(&only_renderer).unwrap_err(),
            SettingsError::Missing("DYNAMODB_CLIENTS_TABLE")
        );
        let only_table =
            Env::from_fn(|k| (k == "DYNAMODB_CLIENTS_TABLE").then(|| "clients".into()));
        assert_eq!(
            ClientChangeSettings::from_env(&only_table).unwrap_err(),
            SettingsError::Missing("CONFIG_RENDERER_FUNCTION")
        );
    }
}
