//! A client of the public endpoint as stored: the record, the limits of its fields, and its API
//! key (generation, SHA-256, the non-secret id). A key exists in clear only in `add_client`'s
//! answer. Rationale: docs/architecture.md, "Clients and keys".

use serde::Serialize;
use sha2::{Digest, Sha256};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
