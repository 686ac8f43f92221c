//! The admin functions `add_backend`, `list_backends` and `remove_backend`: their events,
//! answers and settings. Rationale: docs/architecture.md, "Admin functions".

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;
use time::OffsetDateTime;

use crate::aws::renderer_trigger::RendererTrigger;
use crate::aws::store::{BackendStore, StoreError};
use crate::json_kind;
use crate::model::backend::Backend;
use crate::model::backend_url::BackendUrl;
use crate::settings::{Env, SettingsError};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The answer of an admin function, shaped like an API Gateway proxy response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiResponse {
    /// HTTP-style status code.
    #[serde(rename = "statusCode")]
    pub status_code: u16,
    /// The JSON body, as text.
    pub body: String,
}

impl ApiResponse {
    /// A response whose body is `value` serialised as JSON.
    pub fn json(status_code: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_string(value)
            .unwrap_or_else(|e| format!(r#"{{"type":"error","error":"cannot serialise response: {e}","errorClass":"SerializationError"}}"#));
        Self { status_code, body }
    }

    /// The body parsed back as JSON (for tests and the local stack).
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Why an admin request failed.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The body is not JSON (400 `parse_error`).
    #[error("{0}")]
    Parse(String),
    /// The event or body has the wrong shape, or the URL is refused (400 `validation_error`).
    #[error("{0}")]
    Validation(String),
    /// Another backend is already the leader (409 `conflict_error`).
    #[error("{0}")]
    Conflict(String),
    /// No backend has that URL (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The table failed (500 `error`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something else of the function's own failed (500 `error`).
    #[error("{0}")]
    Internal(String),
}

/// The error body of a refused or failed admin call.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    error: String,
    #[serde(rename = "errorClass")]
    error_class: &'a str,
}

impl AdminError {
    /// Status code, `type` and `errorClass` of this error.
    pub fn parts(&self) -> (u16, &'static str, &'static str) {
        match self {
            Self::Parse(_) => (400, "parse_error", "JSONDecodeError"),
            Self::Validation(_) => (400, "validation_error", "ValidationError"),
            Self::Conflict(_) => (409, "conflict_error", "ConflictError"),
            Self::NotFound(_) => (404, "not_found", "NotFoundError"),
            Self::Store(_) => (500, "error", "StoreError"),
            Self::Internal(_) => (500, "error", "InternalError"),
        }
    }

    /// The error as a response.
    pub fn to_response(&self) -> ApiResponse {
        let (status, kind, error_class) = self.parts();
        ApiResponse::json(
            status,
            &ErrorBody {
                kind,
                error: self.to_string(),
                error_class,
            },
        )
    }
}

/// Settings of `add_backend` and `list_backends`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSettings {
    /// `DYNAMODB_TABLE`.
    pub table: String,
}

impl TableSettings {
    /// Reads `DYNAMODB_TABLE`.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        Ok(Self {
            table: env.required("DYNAMODB_TABLE")?,
        })
    }
}

/// Settings of `remove_backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveBackendSettings {
    /// `DYNAMODB_TABLE`.
    pub table: String,
    /// `CONFIG_RENDERER_FUNCTION`: invoked after a removal.
    pub renderer_function: String,
}

impl RemoveBackendSettings {
    /// Reads `DYNAMODB_TABLE` and `CONFIG_RENDERER_FUNCTION`.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        Ok(Self {
            table: env.required("DYNAMODB_TABLE")?,
            renderer_function: env.required("CONFIG_RENDERER_FUNCTION")?,
        })
    }
}

/// A valid `add_backend` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddRequest {
    /// The backend's URL.
    pub url: BackendUrl,
    /// Whether it becomes the leader.
    pub is_leader: bool,
}

/// Extracts the request body object from an admin event.
pub fn request_body(event: &Value) -> Result<Map<String, Value>, AdminError> {
    let Some(event) = event.as_object() else {
        return Err(AdminError::Validation(format!(
            "event must be a JSON object with a \"body\", not {}",
            json_kind(event)
        )));
    };
    let body = match event.get("body") {
        None | Some(Value::Null) => {
            return Err(AdminError::Validation("event has no \"body\"".into()));
        }
        Some(Value::String(text)) => {
            if text.len() > MAX_BODY_BYTES {
                return Err(AdminError::Validation(format!(
                    "body is {} bytes long; at most {MAX_BODY_BYTES} are accepted",
                    text.len()
                )));
            }
            serde_json::from_str::<Value>(text)
                .map_err(|e| AdminError::Parse(format!("body is not valid JSON: {e}")))?
        }
        Some(other) => other.clone(),
    };
    match body {
        Value::Object(map) => Ok(map),
        other => Err(AdminError::Validation(format!(
            "body must be a JSON object, not {}",
            json_kind(&other)
        ))),
    }
}

/// Parses an `add_backend` event: the body must be exactly `{"url": string, "is_leader": bool}`.
pub fn parse_add_request(event: &Value) -> Result<AddRequest, AdminError> {
    let body = request_body(event)?;
    let mut unknown: Vec<&str> = body
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "url" | "is_leader"))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(AdminError::Validation(format!(
            "unexpected field(s) {}: the body must be {{\"url\": string, \"is_leader\": bool}}",
            unknown.join(", ")
        )));
    }
    let url = required_url(&body)?;
    let is_leader = match body.get("is_leader") {
        Some(Value::Bool(flag)) => *flag,
        Some(other) => {
            return Err(AdminError::Validation(format!(
                "\"is_leader\" must be a boolean, not {}",
                json_kind(other)
            )));
        }
        None => return Err(AdminError::Validation("\"is_leader\" is required".into())),
    };
    let url = BackendUrl::parse(&url).map_err(|e| AdminError::Validation(e.to_string()))?;
    Ok(AddRequest { url, is_leader })
}

/// Parses a `remove_backend` event: the body must be exactly `{"url": string}`.
///
/// The URL is not re-validated, so that a legacy item whose URL today's rules refuse can
/// still be removed.
pub fn parse_remove_request(event: &Value) -> Result<String, AdminError> {
    let body = request_body(event)?;
    if let Some(extra) = body.keys().find(|k| k.as_str() != "url") {
        return Err(AdminError::Validation(format!(
            "unexpected field {extra:?}: the body must be {{\"url\": string}}"
        )));
    }
    required_url(&body)
}

fn required_url(body: &Map<String, Value>) -> Result<String, AdminError> {
    match body.get("url") {
        Some(Value::String(url)) if !url.is_empty() => Ok(url.clone()),
        Some(Value::String(_)) => Err(AdminError::Validation("url is empty".into())),
        Some(other) => Err(AdminError::Validation(format!(
            "\"url\" must be a string, not {}",
            json_kind(other)
        ))),
        None => Err(AdminError::Validation("\"url\" is required".into())),
    }
}

/// `add_backend`: 201 with the new item, 200 when the URL was known (its `is_leader` updated,
/// its history kept), 409 when another backend is the leader.
pub async fn add_backend(store: &BackendStore, event: &Value, now: OffsetDateTime) -> ApiResponse {
    match try_add_backend(store, event, now).await {
        Ok((backend, created)) => ApiResponse::json(if created { 201 } else { 200 }, &backend),
        Err(error) => {
            log_admin_error("add_backend", &error);
            error.to_response()
        }
    }
}

async fn try_add_backend(
    store: &BackendStore,
    event: &Value,
    now: OffsetDateTime,
) -> Result<(Backend, bool), AdminError> {
    let request = parse_add_request(event)?;
    if request.is_leader {
        let backends = store.scan_all().await?;
        if let Some(leader) = backends
            .iter()
            .find(|b| b.is_leader && b.url != request.url.as_str())
        {
            return Err(AdminError::Conflict(format!(
                "{} is already the leader; remove it or add it with is_leader false first",
                leader.label()
            )));
        }
    }
    let (backend, created) = store.upsert(&request.url, request.is_leader, now).await?;
    tracing::info!(
        backend = %request.url.redacted(),
        is_leader = request.is_leader,
        created,
        "backend stored"
    );
    Ok((backend, created))
}

/// `list_backends`: 200 with every backend, sorted by URL.
pub async fn list_backends(store: &BackendStore) -> ApiResponse {
    match store.scan_all().await {
        Ok(backends) => ApiResponse::json(200, &backends),
        Err(error) => {
            let error = AdminError::from(error);
            log_admin_error("list_backends", &error);
            error.to_response()
        }
    }
}

/// `remove_backend`: 200 with the removed item, 404 for an unknown URL. After a removal the
/// config renderer is invoked; if that invocation fails the removal stands and the next health
/// check, which compares the rendered plan with the table, re-renders.
pub async fn remove_backend(
    store: &BackendStore,
    trigger: &RendererTrigger,
    event: &Value,
) -> ApiResponse {
    let outcome = async {
        let url = parse_remove_request(event)?;
        match store.delete(&url).await? {
            Some(removed) => Ok(removed),
            None => Err(AdminError::NotFound("no backend has that url".into())),
        }
    }
    .await;
    match outcome {
        Ok(removed) => {
            tracing::info!(backend = %removed.label(), "backend removed");
            if let Err(error) = trigger.request_render("remove_backend").await {
                tracing::error!(%error, "backend removed, but the re-render could not be requested; the next health check will request it");
            }
            ApiResponse::json(200, &removed)
        }
        Err(error) => {
            log_admin_error("remove_backend", &error);
            error.to_response()
        }
    }
}

pub(crate) fn log_admin_error(function: &str, error: &AdminError) {
    let (status, kind, _) = error.parts();
    if status >= 500 {
        tracing::error!(function, status, kind, %error, "request failed");
    } else {
        tracing::warn!(function, status, kind, %error, "request refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn add_event(body: &str) -> Value {
        json!({ "body": body })
    }

    #[test]
    fn parses_a_string_body_and_an_object_body() {
        let request = parse_add_request(&add_event(
            r#"{"url":"https://node.example/","is_leader":true}"#,
        ))
        .unwrap();
        assert_eq!(request.url.as_str(), "https://node.example/");
        assert!(request.is_leader);
        let request = parse_add_request(
            &json!({"body": {"url": "http://10.0.0.1:8545", "is_leader": false}}),
        )
        .unwrap();
        assert!(!request.is_leader);
    }

    fn refused(event: &Value) -> (u16, Value) {
        let error = parse_add_request(event).unwrap_err();
        let response = error.to_response();
        (response.status_code, response.body_json().unwrap())
    }

    #[test]
    fn parse_errors_keep_the_compatible_shape() {
        let (status, body) = refused(&add_event("{not json"));
        assert_eq!(status, 400);
        assert_eq!(body["type"], "parse_error");
        assert_eq!(body["errorClass"], "JSONDecodeError");
        assert!(body["error"].as_str().unwrap().contains("not valid JSON"));
        assert_eq!(body.as_object().unwrap().len(), 3);
    }

    #[test]
    fn wrong_shapes_are_validation_errors() {
        let cases = [
            json!("just a string"),
            json!([1, 2]),
            json!({}),
            json!({"body": null}),
            add_event("[]"),
            add_event("42"),
            add_event(r#"{"url":"http://a"}"#),
            add_event(r#"{"is_leader":true}"#),
            add_event(r#"{"url":5,"is_leader":true}"#),
            add_event(r#"{"url":"http://a","is_leader":"yes"}"#),
            add_event(r#"{"url":"http://a","is_leader":true,"extra":1}"#),
            add_event(r#"{"url":"","is_leader":true}"#),
            add_event(r#"{"url":"http://a;b","is_leader":true}"#),
            add_event(r#"{"url":"ftp://a","is_leader":true}"#),
            json!({"body": "x".repeat(MAX_BODY_BYTES + 1)}),
        ];
        for event in cases {
            let (status, body) = refused(&event);
            assert_eq!(status, 400, "{event}");
            assert_eq!(body["type"], "validation_error", "{event}");
            assert_eq!(body["errorClass"], "ValidationError");
        }
    }

    #[test]
    fn url_errors_say_what_is_wrong_without_echoing_secrets() {
        let (_, body) = refused(&add_event(
            r#"{"url":"https://h/v3/KEY{x}","is_leader":false}"#,
        ));
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("'{'"), "{message}");
        assert!(!message.contains("KEY"));
    }

    #[test]
    fn remove_requests() {
        assert_eq!(
            parse_remove_request(&add_event(r#"{"url":"http://a:1"}"#)).unwrap(),
            "http://a:1"
        );
        assert!(matches!(
            parse_remove_request(&add_event(r#"{"url":"http://a:1","x":1}"#)),
            Err(AdminError::Validation(_))
        ));
        assert!(matches!(
            parse_remove_request(&add_event("nope")),
            Err(AdminError::Parse(_))
        ));
        assert!(matches!(
            parse_remove_request(&json!({"body": {"url": null}})),
            Err(AdminError::Validation(_))
        ));
    }

    #[test]
    fn response_shape() {
        let response = ApiResponse::json(201, &json!({"a": 1}));
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"statusCode": 201, "body": "{\"a\":1}"})
        );
    }

    #[test]
    fn settings() {
        let vars = crate::settings::tests::vars(&[
            ("DYNAMODB_TABLE", "backends"),
            ("CONFIG_RENDERER_FUNCTION", "render"),
        ]);
        let env = Env::from_fn(|k| vars.get(k).cloned());
        assert_eq!(TableSettings::from_env(&env).unwrap().table, "backends");
        let remove = RemoveBackendSettings::from_env(&env).unwrap();
        assert_eq!(
            (remove.table.as_str(), remove.renderer_function.as_str()),
            ("backends", "render")
        );
        assert_eq!(
            RemoveBackendSettings::from_env(&Env::from_fn(|_| None))
                .unwrap_err()
                .to_string(),
            "environment variable DYNAMODB_TABLE is not set"
        );
    }
}
