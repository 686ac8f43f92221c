//! Validated backend URLs ([`BackendUrl::parse`]) and their secret-free form
//! ([`BackendUrl::redacted`]). Rationale: docs/architecture.md, "Backend URLs".

use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a string is not an acceptable backend URL.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    /// The string is empty (or only whitespace).
    #[error("url is empty")]
    Empty,
    /// The string is longer than [`MAX_URL_BYTES`].
    #[error("url is {0} bytes long; at most {MAX_URL_BYTES} are allowed")]
    TooLong(usize),
    /// The string contains whitespace.
    #[error("url contains whitespace at byte {0}")]
    Whitespace(usize),
    /// The string contains a control character.
    #[error("url contains a control character at byte {0}")]
    ControlCharacter(usize),
    /// The string contains a character that could change the meaning of an nginx config.
    #[error("url contains {0:?} at byte {1}, which is not allowed in a backend url")]
    ForbiddenCharacter(char, usize),
    /// A `%` is not followed by two hexadecimal digits.
    #[error("url has a malformed percent-escape at byte {0}")]
    BadPercentEscape(usize),
    /// The URL does not parse.
    #[error("url is not a valid absolute URL: {0}")]
    Unparsable(String),
    /// The scheme is not `http` or `https`.
    #[error("url scheme must be http or https, not {0:?}")]
    UnsupportedScheme(String),
    /// The URL has no host.
    #[error("url has no host")]
    MissingHost,
    /// The port is 0.
    #[error("url port 0 is not a usable port")]
    ZeroPort,
    /// The URL has a user name but an empty one, or a password without a user name.
    #[error("url credentials must be given as user:password@ with a non-empty user")]
    BadCredentials,
    /// The host, once its percent-escapes are decoded (as every URL parser does), contains a
    /// character that is not allowed: `http://a%3Bb` names the host `a;b`.
    #[error("url host contains {0:?} once percent-decoded, which is not allowed in a backend url")]
    EncodedHostCharacter(char),
    /// The host is `unix`: nginx reads an address that starts with `unix:` as a socket path.
    #[error("url host \"unix\" cannot be proxied: nginx reads unix: as a socket path")]
    UnixHost,
}

/// A backend URL that passed validation.
///
/// The string is kept as given: it is the key of the backend's item in the table.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BackendUrl {
    raw: String,
    parsed: url::Url,
}

/// Characters allowed anywhere in a backend URL, besides ASCII letters and digits.
///
/// This is RFC 3986's unreserved, gen-delims and sub-delims set, minus everything nginx gives a
/// meaning to inside a bare token (`;`, `{`, `}`, `#`, `$`, quotes, parentheses, `\`).
const ALLOWED_PUNCTUATION: &str = "-._~:/?[]@!&*+,=%";

impl BackendUrl {
    /// Validates `input` as a backend URL.
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        if input.trim().is_empty() {
            return Err(UrlError::Empty);
        }
        if input.len() > MAX_URL_BYTES {
            return Err(UrlError::TooLong(input.len()));
        }
        check_characters(input)?;
        let parsed = url::Url::parse(input).map_err(|e| UrlError::Unparsable(e.to_string()))?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => return Err(UrlError::UnsupportedScheme(other.to_owned())),
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::MissingHost);
        }
        // The host is decoded: `%3B` in the input is `;` in the host that nginx and the
        // HTTP client see, so the decoded host must pass the same character check.
        if let Some(ch) = parsed
            .host_str()
            .unwrap_or_default()
            .chars()
            .find(|ch| !(ch.is_ascii_alphanumeric() || ALLOWED_PUNCTUATION.contains(*ch)))
        {
            return Err(UrlError::EncodedHostCharacter(ch));
        }
        if parsed
            .host_str()
            .is_some_and(|host| host.eq_ignore_ascii_case("unix"))
        {
            return Err(UrlError::UnixHost);
        }
        if parsed.port() == Some(0) {
            return Err(UrlError::ZeroPort);
        }
        if parsed.username().is_empty() && parsed.password().is_some() {
            return Err(UrlError::BadCredentials);
        }
        if parsed.fragment().is_some() {
            // '#' is refused by the character check; this guards the invariant regardless.
            return Err(UrlError::ForbiddenCharacter('#', 0));
        }
        Ok(Self {
            raw: input.to_owned(),
            parsed,
        })
    }

    /// The URL exactly as it was given (and as it is stored).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// `true` for `https` URLs.
    pub fn is_https(&self) -> bool {
        self.parsed.scheme() == "https"
    }

    /// The scheme, `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.parsed.scheme()
    }

    /// The host as nginx and the HTTP client see it (IPv6 addresses in brackets).
    pub fn host(&self) -> String {
        self.parsed
            .host()
            .map(|h| h.to_string())
            .unwrap_or_default()
    }

    /// The host without IPv6 brackets, as used for TLS server names.
    pub fn host_name(&self) -> String {
        match self.parsed.host() {
            Some(url::Host::Ipv6(addr)) => addr.to_string(),
            Some(host) => host.to_string(),
            None => String::new(),
        }
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.parsed
            .port_or_known_default()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }

    /// `host` or `host:port` when the port is not the scheme's default: the `Host` header value.
    pub fn host_header(&self) -> String {
        match self.parsed.port() {
            Some(port) => format!("{}:{port}", self.host()),
            None => self.host(),
        }
    }

    /// Path and query, e.g. `/v3/KEY` or `/`.
    pub fn path_and_query(&self) -> String {
        let mut out = self.parsed.path().to_owned();
        if out.is_empty() {
            out.push('/');
        }
        if let Some(query) = self.parsed.query() {
            out.push('?');
            out.push_str(query);
        }
        out
    }

    /// `(user, password)` when the URL carries credentials, percent-decoded.
    pub fn credentials(&self) -> Option<(String, String)> {
        if self.parsed.username().is_empty() {
            return None;
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        Some((
            decode(self.parsed.username()),
            decode(self.parsed.password().unwrap_or("")),
        ))
    }

    /// The value of an HTTP `Authorization` header for the URL's credentials, if it has any.
    pub fn basic_authorization(&self) -> Option<String> {
        self.credentials().map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        })
    }

    /// The URL with credentials removed: what the HTTP client requests.
    pub fn request_url(&self) -> url::Url {
        let mut url = self.parsed.clone();
        // Both setters only fail for URLs that cannot have credentials, which http(s) can.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url
    }

    /// `true` when the URL holds anything that may be secret: credentials, a path or a query.
    pub fn has_secret_parts(&self) -> bool {
        !self.parsed.username().is_empty()
            || self.parsed.password().is_some()
            || self.parsed.query().is_some()
            || !matches!(self.parsed.path(), "" | "/")
    }

    /// A label safe for logs, metric dimensions and error messages.
    ///
    /// `scheme://host[:port]` when the URL has nothing secret in it; otherwise the same followed
    /// by `/[redacted:xxxxxxxx]`, where the eight hex digits are a hash of the whole URL so that
    /// two keyed URLs on one host stay distinguishable without revealing either key.
    pub fn redacted(&self) -> String {
        let mut label = format!("{}://{}", self.scheme(), self.host_header());
        if self.has_secret_parts() {
            let digest = Sha256::digest(self.raw.as_bytes());
            label.push_str("/[redacted:");
            label.push_str(&hex::encode(&digest[..4]));
            label.push(']');
        }
        label
    }
}

impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendUrl").field(&self.redacted()).finish()
    }
}

/// Redacts a string that failed validation, for error messages and logs: keeps at most the
/// scheme and host part, never a path or credentials.
pub fn redact_unvalidated(input: &str) -> String {
    match url::Url::parse(input) {
        Ok(parsed) => match parsed.host_str() {
            Some(host) if input.is_ascii() => format!("{}://{}/[redacted]", parsed.scheme(), host),
            _ => "[unparsable url redacted]".to_owned(),
        },
        Err(_) => "[unparsable url redacted]".to_owned(),
    }
}

fn check_characters(input: &str) -> Result<(), UrlError> {
    let bytes = input.as_bytes();
    for (index, ch) in input.char_indices() {
        if ch.is_whitespace() {
            return Err(UrlError::Whitespace(index));
        }
        if ch.is_control() {
            return Err(UrlError::ControlCharacter(index));
        }
        if !(ch.is_ascii_alphanumeric() || ALLOWED_PUNCTUATION.contains(ch)) {
            return Err(UrlError::ForbiddenCharacter(ch, index));
        }
        if ch == '%' {
            let valid = bytes.get(index + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(index + 2).is_some_and(u8::is_ascii_hexdigit);
            if !valid {
                return Err(UrlError::BadPercentEscape(index));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_keyed_urls() {
        let node = BackendUrl::parse("http://10.0.0.1:8545").unwrap();
        assert_eq!(node.host(), "10.0.0.1");
        assert_eq!(node.port(), 8545);
        assert_eq!(node.path_and_query(), "/");
        assert_eq!(node.redacted(), "http://10.0.0.1:8545");
        assert!(!node.has_secret_parts());

        let infura = BackendUrl::parse("https://mainnet.infura.io/v3/0123456789abcdef").unwrap();
        assert!(infura.is_https());
        assert_eq!(infura.port(), 443);
        assert_eq!(infura.host_header(), "mainnet.infura.io");
        assert_eq!(infura.path_and_query(), "/v3/0123456789abcdef");
        assert!(infura
            .redacted()
            .starts_with("https://mainnet.infura.io/[redacted:"));
        assert!(!infura.redacted().contains("0123456789abcdef"));
        assert!(!format!("{infura:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn a_harmless_escape_in_the_host_is_decoded() {
        let url = BackendUrl::parse("http://node%2Da:8545/").unwrap();
        assert_eq!(url.host(), "node-a");
        assert_eq!(url.host_header(), "node-a:8545");
    }

    #[test]
    fn keeps_query_and_ipv6() {
        let url = BackendUrl::parse("https://[::1]:8443/rpc?apikey=s3cr3t").unwrap();
        assert_eq!(url.host(), "[::1]");
        assert_eq!(url.host_name(), "::1");
        assert_eq!(url.host_header(), "[::1]:8443");
        assert_eq!(url.path_and_query(), "/rpc?apikey=s3cr3t");
        assert!(!url.redacted().contains("s3cr3t"));
    }

    #[test]
    fn credentials_become_basic_auth_and_leave_the_request_url() {
        let url = BackendUrl::parse("https://alice:p%40ss@node.example:8545/").unwrap();
        assert_eq!(url.credentials(), Some(("alice".into(), "p@ss".into())));
        assert_eq!(url.basic_authorization().unwrap(), "Basic YWxpY2U6cEBzcw==");
        assert_eq!(url.request_url().as_str(), "https://node.example:8545/");
        assert!(!url.redacted().contains("alice"));
        assert!(url.redacted().contains("[redacted:"));
    }

    #[test]
    fn distinct_keys_give_distinct_labels() {
        let a = BackendUrl::parse("https://host/v3/aaaa").unwrap();
        let b = BackendUrl::parse("https://host/v3/bbbb").unwrap();
        assert_ne!(a.redacted(), b.redacted());
    }

    #[test]
    fn refuses_injection_and_bad_forms() {
        type Check = fn(&UrlError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| *e == UrlError::Empty),
            ("   ", |e| *e == UrlError::Empty),
            ("http://a b", |e| matches!(e, UrlError::Whitespace(8))),
            ("http://a\n", |e| matches!(e, UrlError::Whitespace(_))),
            ("http://a/\u{7}", |e| {
                matches!(e, UrlError::ControlCharacter(_))
            }),
            ("http://a;b", |e| {
                matches!(e, UrlError::ForbiddenCharacter(';', _))
            }),
            ("http://a/{x}", |e| {
                matches!(e, UrlError::ForbiddenCharacter('{', _))
            }),
            ("http://a/}", |e| {
                matches!(e, UrlError::ForbiddenCharacter('}', _))
            }),
            ("http://a/#x", |e| {
                matches!(e, UrlError::ForbiddenCharacter('#', _))
            }),
            ("http://a/$host", |e| {
                matches!(e, UrlError::ForbiddenCharacter('$', _))
            }),
            ("http://a/\"", |e| {
                matches!(e, UrlError::ForbiddenCharacter('"', _))
            }),
            ("http://a/'", |e| {
                matches!(e, UrlError::ForbiddenCharacter('\'', _))
            }),
            ("http://a\\b", |e| {
                matches!(e, UrlError::ForbiddenCharacter('\\', _))
            }),
            ("http://ä.example", |e| {
                matches!(e, UrlError::ForbiddenCharacter('ä', _))
            }),
            ("http://a/%zz", |e| {
                matches!(e, UrlError::BadPercentEscape(_))
            }),
            ("http://a/%4", |e| {
                matches!(e, UrlError::BadPercentEscape(_))
            }),
            ("ftp://a", |e| matches!(e, UrlError::UnsupportedScheme(_))),
            ("ws://a", |e| matches!(e, UrlError::UnsupportedScheme(_))),
            ("10.0.0.1:8545", |e| {
                matches!(e, UrlError::UnsupportedScheme(_) | UrlError::Unparsable(_))
            }),
            ("http://", |e| {
                matches!(e, UrlError::Unparsable(_) | UrlError::MissingHost)
            }),
            ("http://a:0", |e| *e == UrlError::ZeroPort),
            ("http://unix:8545/", |e| *e == UrlError::UnixHost),
            ("https://UNIX/key", |e| *e == UrlError::UnixHost),
            ("http://a:70000", |e| matches!(e, UrlError::Unparsable(_))),
            ("http://:pw@a", |e| *e == UrlError::BadCredentials),
            // Percent-escapes in the host are decoded by the parser: the decoded host must
            // hold only allowed characters too.
            ("http://a%3Bb:8545/", |e| {
                *e == UrlError::EncodedHostCharacter(';')
            }),
            ("http://x%7Dserver%7B/", |e| {
                *e == UrlError::EncodedHostCharacter('}')
            }),
            ("http://a%27b%28%29/", |e| {
                *e == UrlError::EncodedHostCharacter('\'')
            }),
            ("http://a%24host/", |e| {
                *e == UrlError::EncodedHostCharacter('$')
            }),
            ("http://a%22b/", |e| {
                *e == UrlError::EncodedHostCharacter('"')
            }),
            ("http://a%7Bb:1/", |e| {
                *e == UrlError::EncodedHostCharacter('{')
            }),
        ];
        for (input, check) in cases {
            let err = BackendUrl::parse(input).expect_err(input);
            assert!(check(&err), "{input:?} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
        let long = format!("http://a/{}", "x".repeat(MAX_URL_BYTES));
        assert!(matches!(
            BackendUrl::parse(&long),
            Err(UrlError::TooLong(_))
        ));
    }

    #[test]
    fn unvalidated_redaction_never_shows_paths() {
        assert_eq!(
            redact_unvalidated("https://h/v3/key;x"),
            "https://h/[redacted]"
        );
        assert_eq!(redact_unvalidated("not a url"), "[unparsable url redacted]");
    }
}
