//! Property tests over the URL validator and the nginx renderer.
//!
//! - Every string is either accepted, and then holds only characters nginx reads as one bare
//!   token, or refused with a non-empty reason.
//! - For every set of accepted backends, the rendered configuration passes `nginx -t` and
//!   contains exactly the intended servers and directives: nothing injected, nothing lost.

use std::collections::BTreeSet;

use jsonrpc_proxy::model::backend::Backend;
use jsonrpc_proxy::model::backend_url::{BackendUrl, MAX_URL_BYTES};
use jsonrpc_proxy::render::routing::RoutingPlan;
use jsonrpc_proxy::{
    render::nginx::{direct_address, render},
    render::options::RenderOptions,
};
use proptest::prelude::*;

const ALLOWED: &str = "-._~:/?[]@!&*+,=%";

/// Characters a generated URL part may contain, nasty ones included.
fn part_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => proptest::char::range('a', 'z'),
        3 => proptest::char::range('0', '9'),
        3 => proptest::sample::select(ALLOWED.chars().collect::<Vec<_>>()),
        2 => proptest::sample::select(vec![';', '{', '}', '#', '$', '"', '\'', '\\', ' ', '\n', '\t', '(', ')', '<', '>', '^', '`', '|', 'é', '\u{0}', '\u{7f}']),
    ]
}

fn part(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(part_char(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

/// URL-shaped strings: a scheme, a host, maybe credentials, port, path and query, each part
/// possibly containing characters that must be refused.
fn url_like() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("http"),
            Just("https"),
            Just("ftp"),
            Just("HTTP"),
            Just("")
        ],
        prop_oneof![
            Just("127.0.0.1".to_owned()),
            Just("[::1]".to_owned()),
            Just("node.example".to_owned()),
            // Percent-escapes in a host are decoded by the parser (`%3B` is `;`).
            Just("x%3B%7Dy".to_owned()),
            Just("node%2Da".to_owned()),
            part(12),
        ],
        proptest::option::of((part(6), part(6))),
        proptest::option::of(0u32..70000),
        part(24),
        proptest::option::of(part(12)),
    )
        .prop_map(|(scheme, host, credentials, port, path, query)| {
            let mut url = format!("{scheme}://");
            if let Some((user, password)) = credentials {
                url.push_str(&format!("{user}:{password}@"));
            }
            url.push_str(&host);
            if let Some(port) = port {
                url.push_str(&format!(":{port}"));
            }
            if !path.is_empty() {
                url.push('/');
                url.push_str(&path);
            }
            if let Some(query) = query {
                url.push('?');
                url.push_str(&query);
            }
            url
        })
}

fn accepted_chars_only(url: &str) -> bool {
    url.chars()
        .all(|c| c.is_ascii_alphanumeric() || ALLOWED.contains(c))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_string_is_accepted_safely_or_refused_with_a_reason(input in prop_oneof![url_like(), any::<String>()]) {
        match BackendUrl::parse(&input) {
            Ok(url) => {
                prop_assert!(accepted_chars_only(url.as_str()), "accepted {:?}", url.as_str());
                // What the config is written from, the decoded host included, is as safe.
                prop_assert!(accepted_chars_only(&url.host()), "host {:?} of {:?}", url.host(), url.as_str());
                prop_assert!(accepted_chars_only(&url.host_header()));
                prop_assert!(accepted_chars_only(&url.path_and_query()));
                if let Some(address) = direct_address(&url) {
                    prop_assert!(accepted_chars_only(&address));
                    prop_assert!(!url.has_secret_parts() && !url.is_https());
                    prop_assert_eq!(address, format!("{}:{}", url.host(), url.port()));
                }
                prop_assert!(url.as_str().len() <= MAX_URL_BYTES);
                prop_assert!(matches!(url.scheme(), "http" | "https"));
                prop_assert!(!url.host().is_empty());
                prop_assert!(url.port() > 0);
                // The redacted label never shows a path, a query or credentials.
                let label = url.redacted();
                if url.has_secret_parts() {
                    prop_assert!(label.contains("[redacted:"));
                }
                let path = url.path_and_query();
                let after_scheme = label.split_once("://").map_or(label.as_str(), |(_, rest)| rest);
                // The marker itself starts with "/[": a path like "/[" must not match it.
                let after_scheme = match after_scheme.find("/[redacted:") {
                    Some(start) => &after_scheme[..start],
                    None => after_scheme,
                };
                if path.len() > 1 {
                    prop_assert!(!after_scheme.contains(&path), "{label} shows {path}");
                }
                if let Some((user, password)) = url.credentials() {
                    if user.len() > 3 {
                        prop_assert!(!label.contains(&user));
                    }
                    if password.len() > 3 {
                        prop_assert!(!label.contains(&password));
                    }
                }
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }
}

/// A URL part built only from accepted characters (percent-escapes well formed).
fn safe_part(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            6 => proptest::char::range('a', 'z').prop_map(String::from),
            2 => proptest::char::range('0', '9').prop_map(String::from),
            2 => proptest::sample::select(vec!["-", ".", "_", "~", "!", "*", "+", ",", "=", "&", ":", "@", "/"]).prop_map(String::from),
            1 => (0u8..=255).prop_map(|b| format!("%{b:02X}")),
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

/// Accepted URLs on hosts nginx can resolve without DNS, for `nginx -t`.
fn resolvable_url() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("http"), Just("https")],
        prop_oneof![Just("127.0.0.1"), Just("[::1]"), Just("localhost")],
        proptest::option::of(("[a-z0-9]{1,8}", "[a-zA-Z0-9%_.~-]{0,8}")),
        proptest::option::of(1u16..=65535),
        safe_part(20),
        proptest::option::of(safe_part(10)),
    )
        .prop_map(|(scheme, host, credentials, port, path, query)| {
            let credentials = credentials
                .map(|(u, p)| format!("{u}:{p}@"))
                .unwrap_or_default();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{scheme}://{credentials}{host}{port}/{path}{query}")
        })
        .prop_filter("must be accepted", |url| BackendUrl::parse(url).is_ok())
}

fn backend(url: &str, is_leader: bool, is_healthy: bool) -> Backend {
    let parsed = BackendUrl::parse(url).expect("generated url is valid");
    let mut backend = Backend::new(&parsed, is_leader, time::OffsetDateTime::UNIX_EPOCH);
    backend.is_healthy = is_healthy;
    backend
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_rendered_config_passes_nginx_and_holds_exactly_the_plan(
        urls in proptest::collection::btree_set(resolvable_url(), 0..6),
        flags in proptest::collection::vec((any::<bool>(), any::<bool>()), 6),
    ) {
        let urls: Vec<String> = urls.into_iter().collect();
        let backends: Vec<Backend> = urls
            .iter()
            .zip(&flags)
            .enumerate()
            .map(|(i, (url, (healthy, leader)))| backend(url, i == 0 && *leader, *healthy))
            .collect();
        let plan = RoutingPlan::from_backends(&backends);
        // `nginx -t` binds the unix sockets, so their directory must exist.
        std::fs::create_dir_all("/tmp/jrp-prop").map_err(|e| TestCaseError::fail(e.to_string()))?;
        let options = RenderOptions { listen_port: 18080, socket_dir: "/tmp/jrp-prop".into(), ..RenderOptions::default() };
        let conf = render(&plan, &options);

        // nginx accepts it.
        if let Err(complaint) = devstack::Nginx::check_config(&conf) {
            return Err(TestCaseError::fail(format!("nginx -t refused:\n{complaint}\n---\n{conf}")));
        }

        // Exactly the intended servers.
        let expected: BTreeSet<&str> = backends.iter().filter(|b| b.is_healthy).map(|b| b.url.as_str()).collect();
        let routed: BTreeSet<&str> = plan.targets().map(|(t, _)| t.url.as_str()).collect();
        let leaders = backends.iter().filter(|b| b.is_healthy && b.is_leader).count();
        let nodes = backends.iter().filter(|b| b.is_healthy && !b.is_leader).count();
        prop_assert_eq!(routed.len(), nodes + leaders);
        prop_assert!(routed.is_subset(&expected));
        // A plain http backend is a direct member of both upstreams; every other one has two
        // internal servers (JSON-RPC and WebSocket), each listed in its upstream. The leader is
        // `backup` in both upstreams when nodes are healthy.
        let direct: Vec<String> = plan
            .targets()
            .filter_map(|(t, _)| direct_address(&t.url))
            .collect();
        let internal = routed.len() - direct.len();
        prop_assert_eq!(conf.matches("    listen unix:").count(), 2 * internal);
        prop_assert_eq!(conf.matches("server unix:").count(), 2 * internal);
        prop_assert_eq!(conf.matches(" backup;").count(), 2 * usize::from(nodes > 0 && leaders > 0));
        if routed.is_empty() {
            prop_assert!(conf.contains("return 404;"));
        }
        for (target, backup) in plan.targets() {
            match direct_address(&target.url) {
                Some(address) => {
                    let line = if backup {
                        format!("    server {address} backup;\n")
                    } else {
                        format!("    server {address} max_fails=")
                    };
                    prop_assert_eq!(conf.matches(&line).count(), 2, "{} in\n{}", line, conf);
                    prop_assert!(!conf.contains(&options.socket_path(target)));
                }
                None => {
                    let path_line = format!("{};", target.url.path_and_query());
                    prop_assert!(conf.contains(&path_line), "missing {} in\n{}", path_line, conf);
                    let listen = format!("listen unix:{};", options.socket_path(target));
                    prop_assert!(conf.contains(&listen));
                }
            }
        }
        if !routed.is_empty() {
            // Both public locations send direct members the one fixed Host.
            let public_start = conf.find("server {\n    listen 18080 default_server;").unwrap_or(0);
            let public = &conf[public_start..];
            let public = &public[..public.find("\n}\n").unwrap_or(public.len())];
            prop_assert_eq!(public.matches("proxy_set_header Host ").count(), 2);
            prop_assert_eq!(public.matches("proxy_set_header Host 127.0.0.1;").count(), 2);
        }

        // Nothing injected: every directive line starts with a directive the renderer writes,
        // ends like a directive, and braces balance.
        let known = [
            "upstream", "server", "keepalive", "listen", "server_name", "location", "return", "proxy_pass",
            "proxy_http_version", "proxy_set_header", "proxy_next_upstream", "proxy_next_upstream_tries",
            "proxy_next_upstream_timeout", "proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout",
            "proxy_ssl_server_name", "proxy_ssl_name", "proxy_ssl_verify", "proxy_ssl_verify_depth",
            "proxy_ssl_trusted_certificate", "proxy_ssl_session_reuse", "access_log", "error_log", "map", "default", "\"~*^websocket$\"", "if", "error_page",
            "}", "add_header", "default_type", "proxy_buffering", "proxy_socket_keepalive", "keepalive_requests",
            "keepalive_timeout",
        ];
        let mut depth = 0i32;
        for line in conf.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            prop_assert!(depth >= 0);
            let word = line.split_whitespace().next().unwrap_or("");
            prop_assert!(known.contains(&word), "unexpected directive {:?} in line {:?}", word, line);
            prop_assert!(line.ends_with(';') || line.ends_with('{') || line.ends_with('}'), "line {:?}", line);
        }
        prop_assert_eq!(depth, 0);
    }
}
