//! The DynamoDB adapter of the clients table (hash key `name`, string; `<stack>-clients`).
//! Schema and reasons: docs/architecture.md, "Clients and keys".

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use crate::aws::store::StoreError;
use crate::model::client::{
    key_id, validate_method, validate_name, validate_origin, ClientRecord, MAX_ALLOWED_ORIGINS,
    MAX_ALLOW_METHODS, MAX_CALLS_PER_SECOND, MAX_CONCURRENT_REQUESTS,
};

/// What a conditional put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The client was stored.
    Created,
    /// A client of that name exists; nothing was written.
    NameTaken,
}

/// What a delete removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// A client.
    Client(ClientRecord),
    /// An item of that name that does not read as a client (written by hand).
    Unreadable,
}

/// The clients table.
#[derive(Debug, Clone)]
pub struct ClientStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl ClientStore {
    /// An adapter for one table (`DYNAMODB_CLIENTS_TABLE`).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Stores a new client unless its name is taken (one conditional `PutItem`, so two
    /// concurrent adds of one name cannot both succeed).
    pub async fn put_new(&self, record: &ClientRecord) -> Result<PutOutcome, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from_client(record)))
            .condition_expression("attribute_not_exists(#name)")
            .expression_attribute_names("#name", "name")
            .send()
            .await;
        match result {
            Ok(_) => Ok(PutOutcome::Created),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(aws_sdk_dynamodb::operation::put_item::PutItemError::is_conditional_check_failed_exception) =>
            {
                Ok(PutOutcome::NameTaken)
            }
            Err(error) => Err(StoreError::from_sdk("PutItem", &error)),
        }
    }

    /// Removes a client; `None` when there was none.
    pub async fn delete(&self, name: &str) -> Result<Option<Removed>, StoreError> {
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("name", AttributeValue::S(name.to_owned()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| StoreError::from_sdk("DeleteItem", &e))?;
        Ok(output
            .attributes()
            .filter(|a| !a.is_empty())
            .map(|item| match client_from_item(item) {
                Ok(client) => Removed::Client(client),
                Err(_) => Removed::Unreadable,
            }))
    }

    /// Every client, following Scan pages to the end (consistent reads), sorted by name.
    /// Items that do not read as a valid client are left out with a warning, so a damaged
    /// item never grants anything.
    pub async fn all(&self) -> Result<Vec<ClientRecord>, StoreError> {
        Ok(self.all_counted().await?.0)
    }

    /// [`ClientStore::all`], and how many items it left out as unreadable.
    pub async fn all_counted(&self) -> Result<(Vec<ClientRecord>, usize), StoreError> {
        let mut clients = Vec::new();
        let mut unreadable = 0;
        let mut start_key: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| StoreError::from_sdk("Scan", &e))?;
            for item in page.items() {
                match client_from_item(item) {
                    Ok(client) => clients.push(client),
                    Err(problem) => {
                        unreadable += 1;
                        tracing::warn!(%problem, "skipping an unreadable client item");
                    }
                }
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start_key = Some(key.clone()),
                _ => break,
            }
        }
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((clients, unreadable))
    }
}

/// The table item of a client.
pub fn item_from_client(record: &ClientRecord) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("name".to_owned(), AttributeValue::S(record.name.clone())),
        (
            "key_sha256".to_owned(),
            AttributeValue::S(record.key_sha256.clone()),
        ),
        (
            "key_id".to_owned(),
            AttributeValue::S(record.key_id.clone()),
        ),
        (
            "when_added".to_owned(),
            AttributeValue::S(record.when_added.clone()),
        ),
    ]);
    if let Some(calls) = record.calls_per_second {
        item.insert(
            "calls_per_second".to_owned(),
            AttributeValue::N(calls.to_string()),
        );
    }
    if let Some(requests) = record.concurrent_requests {
        item.insert(
            "concurrent_requests".to_owned(),
            AttributeValue::N(requests.to_string()),
        );
    }
    for (name, list) in [
        ("allow_methods", &record.allow_methods),
        ("allowed_origins", &record.allowed_origins),
    ] {
        if !list.is_empty() {
            item.insert(
                name.to_owned(),
                AttributeValue::L(list.iter().map(|m| AttributeValue::S(m.clone())).collect()),
            );
        }
    }
    item
}

/// Decodes a table item under the rules `add_client` enforces; the error says what is wrong
/// (naming the item by its name only).
pub fn client_from_item(item: &HashMap<String, AttributeValue>) -> Result<ClientRecord, String> {
    let Some(AttributeValue::S(name)) = item.get("name") else {
        return Err("an item has no string name".into());
    };
    validate_name(name).map_err(|e| format!("item {name:?}: {e}"))?;
    let bad = |what: &str| format!("client {name:?}: {what}");
    let key_sha256 = match item.get("key_sha256") {
        Some(AttributeValue::S(hash))
            if hash.len() == 64
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            hash.clone()
        }
        _ => return Err(bad("key_sha256 is not 64 lowercase hex digits")),
    };
    let count = |field: &str, max: u64| match item.get(field) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(n)) => match n.parse::<u64>() {
            Ok(value) if (1..=max).contains(&value) => Ok(u32::try_from(value).ok()),
            _ => Err(bad(&format!("{field} is not a whole number in range"))),
        },
        Some(_) => Err(bad(&format!("{field} is not a number"))),
    };
    let list =
        |field: &str, max: usize, validate: fn(&str) -> Result<(), String>| match item.get(field) {
            None | Some(AttributeValue::Null(_)) => Ok(Vec::new()),
            Some(AttributeValue::L(entries)) if entries.len() <= max => {
                let mut out = Vec::with_capacity(entries.len());
                for entry in entries {
                    let AttributeValue::S(text) = entry else {
                        return Err(bad(&format!("{field} holds a non-string")));
                    };
                    validate(text).map_err(|e| bad(&e))?;
                    out.push(text.clone());
                }
                Ok(out)
            }
            Some(_) => Err(bad(&format!(
                "{field} is not a list of at most {max} strings"
            ))),
        };
    let calls_per_second = count("calls_per_second", MAX_CALLS_PER_SECOND)?;
    let concurrent_requests = count("concurrent_requests", MAX_CONCURRENT_REQUESTS)?;
    let allow_methods = list("allow_methods", MAX_ALLOW_METHODS, validate_method)?;
    let allowed_origins = list("allowed_origins", MAX_ALLOWED_ORIGINS, validate_origin)?;
    let when_added = match item.get("when_added") {
        Some(AttributeValue::S(when)) => when.clone(),
        _ => String::new(),
    };
    Ok(ClientRecord {
        name: name.clone(),
        key_id: key_id(&key_sha256),
        key_sha256,
        calls_per_second,
        allow_methods,
        concurrent_requests,
        allowed_origins,
        when_added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::client::key_sha256;

    fn record() -> ClientRecord {
        let hash = key_sha256("k");
        ClientRecord {
            name: "wallet".into(),
            key_id: key_id(&hash),
            key_sha256: hash,
            calls_per_second: Some(40),
            allow_methods: vec!["debug_".into(), "eth_sign".into()],
            concurrent_requests: Some(8),
            allowed_origins: vec!["https://app.example".into()],
            when_added: "2026-12-02T10:00:00.000000Z".into(),
        }
    }

    #[test]
    fn items_round_trip_and_defaults_are_left_out() {
        let full = record();
        assert_eq!(client_from_item(&item_from_client(&full)).unwrap(), full);
        let default = ClientRecord {
            calls_per_second: None,
            allow_methods: Vec::new(),
            concurrent_requests: None,
            allowed_origins: vec![],
            ..record()
        };
        let item = item_from_client(&default);
        assert!(!item.contains_key("calls_per_second"));
        assert!(!item.contains_key("allow_methods"));
        assert_eq!(client_from_item(&item).unwrap(), default);
    }

    #[test]
    fn damaged_items_do_not_read_as_clients() {
        let damage: [(&str, Option<AttributeValue>); 9] = [
            ("name", None),
            ("name", Some(AttributeValue::S("a b".into()))),
            ("key_sha256", None),
            ("key_sha256", Some(AttributeValue::S("ABC".into()))),
            (
                "key_sha256",
                Some(AttributeValue::S(key_sha256("k").to_uppercase())),
            ),
            ("calls_per_second", Some(AttributeValue::N("0".into()))),
            ("calls_per_second", Some(AttributeValue::S("5".into()))),
            (
                "allow_methods",
                Some(AttributeValue::L(vec![AttributeValue::S("*".into())])),
            ),
            (
                "allow_methods",
                Some(AttributeValue::Ss(vec!["debug_".into()])),
            ),
        ];
        for (attribute, value) in damage {
            let mut item = item_from_client(&record());
            match value.clone() {
                Some(value) => item.insert(attribute.to_owned(), value),
                None => item.remove(attribute),
            };
            assert!(client_from_item(&item).is_err(), "{attribute}: {value:?}");
        }
    }

    #[test]
    fn the_key_id_comes_from_the_hash_not_the_stored_copy() {
        let mut item = item_from_client(&record());
        item.insert("key_id".into(), AttributeValue::S("forged".into()));
        assert_eq!(
            client_from_item(&item).unwrap().key_id,
            key_id(&key_sha256("k"))
        );
    }
}
