//! The clients of the public endpoint and their API keys: the record, its validation, key
//! generation and hashing, and the admin functions `add_client`, `list_clients`,
//! `remove_client` (same event and answer shapes as [`crate::functions::admin`]).
//!
//! A key exists in clear only in `add_client`'s answer; the table holds its SHA-256. Why, and
//! the table's schema: docs/architecture.md, "Clients and keys".

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::aws::clients_store::{ClientStore, PutOutcome, Removed};
use crate::aws::renderer_trigger::RendererTrigger;
use crate::functions::admin::{log_admin_error, request_body, AdminError, ApiResponse};
use crate::json_kind;
use crate::model::backend::iso8601;
use crate::model::client::{
    key_id, validate_method, validate_name, validate_origin, ClientKey, ClientRecord, ClientView,
    MAX_ALLOWED_ORIGINS, MAX_ALLOW_METHODS, MAX_CALLS_PER_SECOND, MAX_CONCURRENT_REQUESTS,
};
use crate::settings::{Env, SettingsError};

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
    /// Reads `DYNAMODB_CLIENTS_TABLE`.
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
    /// Reads `DYNAMODB_CLIENTS_TABLE` and `CONFIG_RENDERER_FUNCTION`.
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
    use crate::model::client::{KEY_BYTES, KEY_ID_LEN, MAX_METHOD_LEN, MAX_NAME_LEN};
    use serde_json::json;
    use time::macros::datetime;

    fn event(body: &Value) -> Value {
        json!({ "body": body.to_string() })
    }

    #[test]
    fn parses_a_full_and_a_minimal_request() {
        let request = parse_add_client(&event(&json!({
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
            &json!({"name": "w", "calls_per_second": null, "allow_methods": null}),
        ))
        .unwrap();
        assert_eq!(
            (request.calls_per_second, request.allow_methods.len()),
            (None, 0)
        );
        let longest = "a".repeat(MAX_NAME_LEN);
        assert_eq!(
            parse_add_client(&event(&json!({ "name": longest })))
                .unwrap()
                .name,
            longest
        );
        let max = parse_add_client(&event(
            &json!({"name": "w", "calls_per_second": MAX_CALLS_PER_SECOND}),
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
            let (status, answer) = refusal(&event(&body));
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
            parse_remove_client(&event(&json!({"name": "w.1"}))).unwrap(),
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
                    parse_remove_client(&event(&body)),
                    Err(AdminError::Validation(_))
                ),
                "{body}"
            );
        }
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
