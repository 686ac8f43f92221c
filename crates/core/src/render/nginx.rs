//! The nginx configuration of a routing plan: [`render`] turns a
//! [`RoutingPlan`](crate::render::routing::RoutingPlan) into the `http`-context configuration that
//! replaces the container's default server. Rationale: docs/architecture.md,
//! "The nginx configuration".

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::backend_url::BackendUrl;
use crate::render::gate::{self, GatePolicy, LuaMember};
use crate::render::options::RenderOptions;
use crate::render::routing::{plan_id, RouteTarget, RoutingPlan};

/// The upstream of plain JSON-RPC requests.
pub const UPSTREAM_NAME: &str = "jsonrpc_backends";

/// Response header naming the routing plan that served a request (the first 16 hex digits of
/// [`RoutingPlan::fingerprint`]): which configuration is live can be seen from outside.
pub const PLAN_HEADER: &str = "X-Jsonrpc-Proxy-Plan";

/// The upstream of WebSocket upgrades.
pub const WEBSOCKET_UPSTREAM_NAME: &str = "jsonrpc_backends_websocket";
/// The http-level variable holding the `Connection` header to send upstream (prefixed so that
/// it cannot collide with a `$connection_upgrade` of the including configuration).
pub const CONNECTION_UPGRADE_VARIABLE: &str = "$jsonrpc_proxy_connection_upgrade";
/// The public server's health endpoint.
pub const HEALTH_PATH: &str = "/healthz";
/// The `Host` header every direct member receives; internal servers send their backend's own.
/// Why this value, and its caveat: docs/architecture.md, "The Host header of direct members".
pub const DIRECT_HOST_HEADER: &str = "127.0.0.1";

/// The `host:port` at which the public upstreams reach `url` directly, or `None` when the
/// backend needs its internal servers.
///
/// Direct: `http` (not https), no credentials, path `/` or none, no query (not even an
/// empty `?`). The port is the URL's, or 80; an IPv6 host keeps its brackets
/// (`[::1]:8545`); a DNS name is resolved by nginx when it loads the configuration, as the
/// internal servers' upstreams always were. Nothing in the address is secret, and it comes
/// from the validated URL, so it is a safe bare token.
pub fn direct_address(url: &BackendUrl) -> Option<String> {
    // `path_and_query` is "/" for a path of "/" or none without a query; `has_secret_parts`
    // says the same of path, query and credentials, and is checked too so that a URL a log
    // line would redact is never a direct member, whatever either check becomes.
    let plain = url.scheme() == "http"
        && url.credentials().is_none()
        && url.path_and_query() == "/"
        && !url.has_secret_parts();
    plain.then(|| format!("{}:{}", url.host(), url.port()))
}

/// Renders the nginx configuration for a plan, plain backends as direct members.
///
/// The result is an `http`-context fragment (it becomes `conf.d/default.conf`): a `map`,
/// upstreams and servers, included once. `options` must have passed [`RenderOptions::validate`].
pub fn render(plan: &RoutingPlan, options: &RenderOptions) -> String {
    render_gated(plan, options, None)
}

/// Renders the nginx configuration for a plan and, when `gate` is given, the JSON-RPC gate in
/// front of the public server (see [`crate::render::gate`]). `options` must have passed
/// [`RenderOptions::validate`], `gate` [`GatePolicy::validate`].
pub fn render_gated(
    plan: &RoutingPlan,
    options: &RenderOptions,
    gate: Option<&GatePolicy>,
) -> String {
    let mut out = String::with_capacity(2048 + plan.primaries.len() * 2048);
    out.push_str(
        "# Rendered by jsonrpc-proxy config_renderer. Do not edit: the next render replaces it.\n",
    );
    let _ = writeln!(out, "# Routing plan {}", plan.fingerprint());
    for label in plan.labels() {
        let _ = writeln!(out, "#   {label}");
    }
    out.push('\n');

    // Each target with its direct address (`None`: through its internal servers). Behind the
    // gate, whose balancer reaches members by address, only an IP address is direct.
    let members: Vec<Member<'_>> = plan
        .targets()
        .map(|(target, backup)| Member {
            target,
            backup,
            direct: direct_address(&target.url)
                .filter(|_| gate.is_none() || target.url.host_name().parse::<IpAddr>().is_ok()),
        })
        .collect();
    if let Some(policy) = gate {
        let lua_members = members
            .iter()
            .map(|member| LuaMember {
                address: member
                    .direct
                    .clone()
                    .unwrap_or_else(|| format!("unix:{}", options.socket_path(member.target))),
                backup: member.backup,
            })
            .collect();
        gate::render_http_level(&mut out, policy, options, lua_members);
    }

    if plan.is_empty() {
        render_no_backend_server(&mut out, options, plan_id(&plan.fingerprint()));
        if gate.is_some() {
            gate::render_internal_servers(&mut out, options, None);
        }
        return out;
    }

    // Only WebSocket upgrades get `Connection: upgrade`; everything else an empty header, so
    // upstream connections stay alive.
    let _ = write!(
        out,
        "map $http_upgrade {CONNECTION_UPGRADE_VARIABLE} {{
    default \"\";
    \"~*^websocket$\" upgrade;
}}

"
    );

    if gate.is_some() {
        let _ = write!(
            out,
            "upstream {UPSTREAM_NAME} {{
    # Never used: the gate's balancer picks every request's member.
    server 0.0.0.1;
{balancer}    keepalive {keepalive};
}}

",
            balancer = gate::BALANCER_LINE,
            keepalive = options.keepalive,
        );
    } else {
        render_upstream(&mut out, options, UPSTREAM_NAME, &members, |target| {
            format!("unix:{}", options.socket_path(target))
        });
    }
    render_upstream(
        &mut out,
        options,
        WEBSOCKET_UPSTREAM_NAME,
        &members,
        |target| format!("unix:{}", options.websocket_socket_path(target)),
    );

    render_public_server(&mut out, options, plan_id(&plan.fingerprint()), gate);
    if gate.is_some() {
        let proxy = websocket_proxy_directives(options);
        gate::render_internal_servers(&mut out, options, Some(&proxy));
    }

    for (index, member) in members.iter().enumerate() {
        match &member.direct {
            Some(address) => {
                let _ = writeln!(
                    out,
                    "# backend-{index}: {} ({}), direct member {address}\n",
                    member.target.url.redacted(),
                    role(member.target, member.backup),
                );
            }
            None => {
                render_backend_servers(&mut out, options, index, member.target, member.backup);
            }
        }
    }
    out
}

/// One member of the public upstreams.
struct Member<'a> {
    target: &'a RouteTarget,
    backup: bool,
    /// `host:port` for a direct member; `None` when it is reached through its internal servers.
    direct: Option<String>,
}

fn role(target: &RouteTarget, backup: bool) -> &'static str {
    match (target.is_leader, backup) {
        (_, true) => "backup",
        (true, false) => "leader",
        (false, false) => "node",
    }
}

/// An upstream of every member: direct ones at their `host:port`, the others at the internal
/// server `socket` names.
fn render_upstream(
    out: &mut String,
    options: &RenderOptions,
    name: &str,
    members: &[Member<'_>],
    socket: impl Fn(&RouteTarget) -> String,
) {
    let _ = writeln!(out, "upstream {name} {{");
    for member in members {
        let address = member
            .direct
            .clone()
            .unwrap_or_else(|| socket(member.target));
        if member.backup {
            let _ = writeln!(out, "    server {address} backup;");
        } else {
            let _ = writeln!(
                out,
                "    server {address} max_fails={} fail_timeout={}s;",
                options.max_fails, options.fail_timeout_secs
            );
        }
    }
    let _ = writeln!(out, "    keepalive {};", options.keepalive);
    out.push_str("}\n\n");
}

fn render_no_backend_server(out: &mut String, options: &RenderOptions, plan_id: &str) {
    let _ = write!(
        out,
        "server {{
    listen {port} default_server;
    server_name _;
    add_header {PLAN_HEADER} {plan_id} always;

    location = {HEALTH_PATH} {{
        access_log off;
        default_type text/plain;
        return 503 \"no healthy backend\\n\";
    }}

    location / {{
        return 404;
    }}
}}
",
        port = options.listen_target()
    );
}

/// The proxy directives of a WebSocket location (inside a location block).
fn websocket_proxy_directives(options: &RenderOptions) -> String {
    format!(
        "        proxy_pass http://{WEBSOCKET_UPSTREAM_NAME};
        proxy_http_version 1.1;
        proxy_set_header Host {DIRECT_HOST_HEADER};
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection {CONNECTION_UPGRADE_VARIABLE};
        proxy_next_upstream error timeout http_502 http_503 http_504;
        proxy_next_upstream_tries {tries};
        proxy_next_upstream_timeout {retry_timeout}s;
        proxy_connect_timeout {connect}s;
        proxy_send_timeout {websocket}s;
        proxy_read_timeout {websocket}s;
",
        tries = options.retry_tries,
        retry_timeout = options.retry_timeout_secs,
        connect = options.connect_timeout_secs,
        websocket = options.websocket_timeout_secs,
    )
}

fn render_public_server(
    out: &mut String,
    options: &RenderOptions,
    plan_id: &str,
    gate: Option<&GatePolicy>,
) {
    let proxy = plain_proxy_directives(options);
    // With the gate, plain requests are judged before they are proxied, and WebSocket
    // upgrades go to its relay instead of straight to the upstream; the calls of a batch it
    // answers in part go on through its internal location.
    let (gate_server, gate_access, websocket, gate_location) = match gate {
        Some(policy) => (
            gate::public_server_directives(policy),
            gate::ACCESS_LINE,
            gate::WEBSOCKET_LOCATION_BODY.to_owned(),
            format!(
                "
    location = {location} {{
        internal;
        proxy_pass http://{UPSTREAM_NAME}/;
{proxy}    }}
",
                location = gate::UPSTREAM_LOCATION
            ),
        ),
        None => (
            String::new(),
            "",
            websocket_proxy_directives(options),
            String::new(),
        ),
    };
    let _ = write!(
        out,
        "server {{
    listen {port} default_server;
    server_name _;
    add_header {PLAN_HEADER} {plan_id} always;
{gate_server}
    location = {HEALTH_PATH} {{
        access_log off;
        default_type text/plain;
        return 200 \"ok\\n\";
    }}

    location / {{
        error_page 418 = @websocket;
        if ({CONNECTION_UPGRADE_VARIABLE}) {{
            return 418;
        }}
{gate_access}        proxy_pass http://{UPSTREAM_NAME};
{proxy}    }}
{gate_location}
    location @websocket {{
{websocket}    }}
}}

",
        port = options.listen_target(),
    );
}

/// The proxy directives of plain JSON-RPC requests to the public upstream (inside a location
/// block, after its `proxy_pass`).
fn plain_proxy_directives(options: &RenderOptions) -> String {
    format!(
        "        proxy_http_version 1.1;
        proxy_set_header Host {DIRECT_HOST_HEADER};
        proxy_set_header Upgrade \"\";
        proxy_set_header Connection {CONNECTION_UPGRADE_VARIABLE};
        proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
        proxy_next_upstream_tries {tries};
        proxy_next_upstream_timeout {retry_timeout}s;
        proxy_connect_timeout {connect}s;
        proxy_send_timeout {read}s;
        proxy_read_timeout {read}s;
",
        tries = options.retry_tries,
        retry_timeout = options.retry_timeout_secs,
        connect = options.connect_timeout_secs,
        read = options.read_timeout_secs,
    )
}

/// The origin upstream of one backend and its two internal servers: plain JSON-RPC on
/// `b-<hash>.sock`, WebSocket upgrades on `b-<hash>-ws.sock` (see [`RenderOptions::socket_path`]).
fn render_backend_servers(
    out: &mut String,
    options: &RenderOptions,
    index: usize,
    target: &RouteTarget,
    backup: bool,
) {
    let url = &target.url;
    let _ = writeln!(
        out,
        "# backend-{index}: {} ({}), socket {}",
        url.redacted(),
        role(target, backup),
        options.socket_path(target)
    );
    let _ = writeln!(out, "upstream backend_{index}_origin {{");
    let _ = writeln!(out, "    server {}:{};", url.host(), url.port());
    let _ = writeln!(out, "    keepalive {};", options.keepalive);
    out.push_str("}\n\n");

    render_backend_server(
        out,
        options,
        index,
        target,
        &options.socket_path(target),
        "\"\"",
        options.read_timeout_secs,
    );
    render_backend_server(
        out,
        options,
        index,
        target,
        &options.websocket_socket_path(target),
        "$http_upgrade",
        options.websocket_timeout_secs,
    );
}

fn render_backend_server(
    out: &mut String,
    options: &RenderOptions,
    index: usize,
    target: &RouteTarget,
    socket: &str,
    upgrade: &str,
    read_timeout_secs: u32,
) {
    let url = &target.url;
    let _ = writeln!(out, "server {{");
    let _ = writeln!(out, "    listen unix:{socket};");
    out.push_str("    access_log off;\n");
    // nginx names the full upstream URL (path and query: a provider's key) in its error lines;
    // this server's are dropped. The public server still logs every failure, naming the
    // backend by its secret-free socket, and the health checker records why (redacted).
    out.push_str("    error_log /dev/null emerg;\n\n");
    out.push_str("    location / {\n");
    let _ = writeln!(
        out,
        "        proxy_pass {}://backend_{index}_origin{};",
        url.scheme(),
        url.path_and_query()
    );
    out.push_str("        proxy_http_version 1.1;\n");
    let _ = writeln!(out, "        proxy_set_header Upgrade {upgrade};");
    let _ = writeln!(
        out,
        "        proxy_set_header Connection {CONNECTION_UPGRADE_VARIABLE};"
    );
    let _ = writeln!(out, "        proxy_set_header Host {};", url.host_header());
    if let Some(authorization) = url.basic_authorization() {
        let _ = writeln!(
            out,
            "        proxy_set_header Authorization \"{authorization}\";"
        );
    }
    let _ = writeln!(
        out,
        "        proxy_connect_timeout {}s;",
        options.connect_timeout_secs
    );
    let _ = writeln!(out, "        proxy_send_timeout {read_timeout_secs}s;");
    let _ = writeln!(out, "        proxy_read_timeout {read_timeout_secs}s;");
    if url.is_https() {
        out.push_str("        proxy_ssl_server_name on;\n");
        let _ = writeln!(out, "        proxy_ssl_name {};", url.host_name());
        out.push_str("        proxy_ssl_verify on;\n");
        out.push_str("        proxy_ssl_verify_depth 4;\n");
        let _ = writeln!(
            out,
            "        proxy_ssl_trusted_certificate {};",
            options.ca_bundle
        );
        out.push_str("        proxy_ssl_session_reuse on;\n");
    }
    out.push_str("    }\n}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::Backend;

    fn backend(url: &str, is_leader: bool, is_healthy: bool) -> Backend {
        Backend {
            url: url.into(),
            is_leader,
            is_healthy,
            ..Backend::default()
        }
    }

    const LEADER: &str = "https://mainnet.infura.io/v3/0123456789abcdef";

    #[test]
    fn nothing_healthy_is_the_404_server() {
        let plan = RoutingPlan::from_backends(&[
            backend(LEADER, true, false),
            backend("http://10.0.0.1:8545", false, false),
        ]);
        assert!(plan.is_empty());
        let conf = render(&plan, &RenderOptions::default());
        assert!(conf.contains("return 404;"));
        assert!(!conf.contains("upstream"));
        assert!(!conf.contains("proxy_pass"));
    }

    #[test]
    fn leader_only_proxies_to_the_leaders_full_url() {
        let plan = RoutingPlan::from_backends(&[
            backend(LEADER, true, true),
            backend("http://10.0.0.1:8545", false, false),
        ]);
        assert_eq!(plan.primaries.len(), 1);
        assert!(plan.backup.is_none());
        let conf = render(&plan, &RenderOptions::default());
        assert!(conf.contains("server mainnet.infura.io:443;"));
        assert!(conf.contains("proxy_pass https://backend_0_origin/v3/0123456789abcdef;"));
        assert!(conf.contains("proxy_set_header Host mainnet.infura.io;"));
        assert!(conf.contains("proxy_ssl_server_name on;"));
        assert!(conf.contains("proxy_ssl_name mainnet.infura.io;"));
        assert!(conf.contains("proxy_ssl_verify on;"));
        assert!(!conf.contains(" backup;"));
        // The key appears only where it must: in the proxy_pass lines of its two servers.
        assert_eq!(conf.matches("0123456789abcdef").count(), 2);
        assert_eq!(
            conf.lines()
                .filter(|l| l.contains("0123456789abcdef"))
                .filter(|l| l
                    .trim_start()
                    .starts_with("proxy_pass https://backend_0_origin/"))
                .count(),
            2
        );
    }

    #[test]
    fn one_node_takes_traffic_and_the_leader_stands_by() {
        let plan = RoutingPlan::from_backends(&[
            backend(LEADER, true, true),
            backend("http://10.0.0.1:8545", false, true),
        ]);
        assert_eq!(plan.primaries.len(), 1);
        assert!(!plan.primaries[0].is_leader);
        assert!(plan.backup.as_ref().is_some_and(|b| b.is_leader));
        let options = RenderOptions::default();
        let conf = render(&plan, &options);
        let node_socket = options.socket_path(&plan.primaries[0]);
        let leader_socket = options.socket_path(plan.backup.as_ref().unwrap());
        let leader_ws_socket = options.websocket_socket_path(plan.backup.as_ref().unwrap());
        assert!(
            leader_socket.starts_with("/var/run/jsonrpc-proxy/b-")
                && leader_socket.ends_with(".sock")
        );
        // The plain node is a direct member of both upstreams; the keyed https leader stands
        // by through its internal servers.
        assert_eq!(
            block(&conf, "upstream jsonrpc_backends {"),
            [
                "upstream jsonrpc_backends {",
                "server 10.0.0.1:8545 max_fails=1 fail_timeout=10s;",
                &format!("server unix:{leader_socket} backup;"),
                "keepalive 32;",
                "}"
            ]
        );
        assert_eq!(
            block(&conf, "upstream jsonrpc_backends_websocket {"),
            [
                "upstream jsonrpc_backends_websocket {",
                "server 10.0.0.1:8545 max_fails=1 fail_timeout=10s;",
                &format!("server unix:{leader_ws_socket} backup;"),
                "keepalive 32;",
                "}"
            ]
        );
        assert!(
            !conf.contains(&node_socket),
            "no internal server for the node"
        );
        assert!(!conf.contains("backend_0_origin"));
        assert!(conf.contains(&format!("listen unix:{leader_socket};")));
        assert!(conf.contains("proxy_pass https://backend_1_origin/v3/0123456789abcdef;"));
        assert!(conf
            .contains("# backend-0: http://10.0.0.1:8545 (node), direct member 10.0.0.1:8545\n"));
    }

    #[test]
    fn several_nodes_are_load_balanced_at_their_full_urls() {
        let plan = RoutingPlan::from_backends(&[
            backend("http://10.0.0.2:8545", false, true),
            backend(
                "https://user:pa%3Ass@node.example:8443/rpc?key=k1",
                false,
                true,
            ),
            backend("http://10.0.0.1:8545/", false, true),
            backend("http://10.0.0.3:8545", false, false),
            backend(LEADER, true, false),
        ]);
        assert_eq!(plan.primaries.len(), 3);
        assert!(plan.backup.is_none(), "an unhealthy leader is not a backup");
        let conf = render(&plan, &RenderOptions::default());
        assert!(conf.contains(
            "proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;"
        ));
        assert!(conf.contains("keepalive 32;"));
        assert!(conf.contains("proxy_pass https://backend_2_origin/rpc?key=k1;"));
        assert!(conf.contains("proxy_set_header Host node.example:8443;"));
        assert!(conf.contains("proxy_set_header Authorization \"Basic dXNlcjpwYTpzcw==\";"));
        assert!(!conf.contains("10.0.0.3"));
        assert!(!conf.contains("infura"));
    }

    #[test]
    fn plans_are_order_independent_and_fingerprinted() {
        let a = [
            backend("http://b:1", false, true),
            backend("http://a:1", false, true),
        ];
        let b = [
            backend("http://a:1", false, true),
            backend("http://b:1", false, true),
        ];
        let plan_a = RoutingPlan::from_backends(&a);
        assert_eq!(plan_a, RoutingPlan::from_backends(&b));
        assert_eq!(
            plan_a.fingerprint(),
            RoutingPlan::from_backends(&b).fingerprint()
        );
        assert_eq!(
            render(&plan_a, &RenderOptions::default()),
            render(&RoutingPlan::from_backends(&b), &RenderOptions::default())
        );
        let other = RoutingPlan::from_backends(&[backend("http://a:1", false, true)]);
        assert_ne!(plan_a.fingerprint(), other.fingerprint());
        assert_ne!(plan_a.fingerprint(), RoutingPlan::default().fingerprint());
    }

    #[test]
    fn invalid_stored_urls_are_never_rendered() {
        let plan = RoutingPlan::from_backends(&[
            backend("http://evil;}server{listen 81;", false, true),
            backend("http://evil%3B%7Dserver%7Blisten:8545/", false, true),
            backend("http://10.0.0.1:8545", false, true),
        ]);
        assert_eq!(plan.primaries.len(), 1);
        let conf = render(&plan, &RenderOptions::default());
        assert!(!conf.contains("evil"));
    }

    #[test]
    fn labels_are_redacted() {
        let plan = RoutingPlan::from_backends(&[backend(LEADER, true, true)]);
        let conf = render(&plan, &RenderOptions::default());
        let comments: String = conf
            .lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .collect();
        assert!(!comments.contains("0123456789abcdef"));
        assert!(comments.contains("https://mainnet.infura.io/[redacted:"));
    }

    #[test]
    fn options_are_validated() {
        assert_eq!(RenderOptions::default().validate(), Ok(()));
        let bad = |f: fn(&mut RenderOptions)| {
            let mut options = RenderOptions::default();
            f(&mut options);
            options.validate().is_err()
        };
        assert!(bad(|o| o.socket_dir = "relative".into()));
        assert!(bad(|o| o.socket_dir = "/tmp/a;b".into()));
        assert!(bad(|o| o.socket_dir = "/tmp/../etc".into()));
        assert!(bad(|o| o.socket_dir = format!("/{}", "a".repeat(90))));
        assert!(bad(|o| o.ca_bundle = "/etc/x y".into()));
        assert!(bad(|o| o.listen_port = 0));
        assert!(bad(|o| o.retry_tries = 0));
    }

    #[test]
    fn the_public_server_listens_on_every_interface_unless_given_an_address() {
        let plan = RoutingPlan::from_backends(&[backend(LEADER, true, true)]);
        let empty = RoutingPlan::default();
        let mut options = RenderOptions {
            listen_port: 18545,
            ..RenderOptions::default()
        };
        for conf in [render(&plan, &options), render(&empty, &options)] {
            assert!(
                conf.contains("    listen 18545 default_server;\n"),
                "{conf}"
            );
        }
        options.listen_address = Some(std::net::Ipv4Addr::LOCALHOST.into());
        for conf in [render(&plan, &options), render(&empty, &options)] {
            assert!(
                conf.contains("    listen 127.0.0.1:18545 default_server;\n"),
                "{conf}"
            );
            assert!(!conf.contains("listen 18545"), "{conf}");
        }
        options.listen_address = Some(std::net::Ipv6Addr::LOCALHOST.into());
        assert!(render(&empty, &options).contains("    listen [::1]:18545 default_server;\n"));
    }

    /// The lines of the block that starts with `header` (up to its closing brace).
    fn block<'a>(conf: &'a str, header: &str) -> Vec<&'a str> {
        let mut lines = conf.lines().skip_while(|l| l.trim() != header);
        let mut block = Vec::new();
        let mut depth = 0usize;
        for line in lines.by_ref() {
            depth += line.matches('{').count();
            depth = depth.saturating_sub(line.matches('}').count());
            block.push(line.trim());
            if depth == 0 {
                break;
            }
        }
        block
    }

    /// The lines of the internal server that listens on the unix socket `path`.
    fn server_listening_on<'a>(conf: &'a str, path: &str) -> Vec<&'a str> {
        let listen = conf
            .find(&format!("listen unix:{path};"))
            .unwrap_or_else(|| panic!("no server listens on {path}"));
        let start = conf[..listen].rfind("server {").expect("a server block");
        block(&conf[start..], "server {")
    }

    fn two_nodes_and_a_leader() -> RoutingPlan {
        RoutingPlan::from_backends(&[
            backend(LEADER, true, true),
            backend("http://10.0.0.1:8545", false, true),
            backend("https://u:p@10.0.0.2:8443/rpc", false, true),
        ])
    }

    /// The backends of `two_nodes_and_a_leader` that go through internal servers (the https
    /// node with credentials and the keyed leader), with the plain node direct.
    fn internal_targets(plan: &RoutingPlan) -> Vec<&RouteTarget> {
        plan.targets()
            .map(|(t, _)| t)
            .filter(|t| direct_address(&t.url).is_none())
            .collect()
    }

    #[test]
    fn websocket_upgrades_pass_through_both_kinds_of_members() {
        let conf = render(&two_nodes_and_a_leader(), &RenderOptions::default());
        // One map, with a name no including configuration uses.
        assert_eq!(conf.matches("map $http_upgrade").count(), 1);
        assert!(conf.contains("map $http_upgrade $jsonrpc_proxy_connection_upgrade {"));
        assert!(!conf.contains("$connection_upgrade"));
        let map = block(
            &conf,
            "map $http_upgrade $jsonrpc_proxy_connection_upgrade {",
        );
        assert_eq!(
            map,
            [
                "map $http_upgrade $jsonrpc_proxy_connection_upgrade {",
                "default \"\";",
                "\"~*^websocket$\" upgrade;",
                "}"
            ]
        );

        // Public layer: upgrades go to the named location, over the WebSocket upstream.
        let plain = block(&conf, "location / {");
        assert!(plain.contains(&"error_page 418 = @websocket;"));
        assert!(plain.contains(&"if ($jsonrpc_proxy_connection_upgrade) {"));
        assert!(plain.contains(&"proxy_pass http://jsonrpc_backends;"));
        assert!(plain.contains(&"proxy_set_header Connection $jsonrpc_proxy_connection_upgrade;"));
        let websocket = block(&conf, "location @websocket {");
        assert!(websocket.contains(&"proxy_pass http://jsonrpc_backends_websocket;"));
        assert!(websocket.contains(&"proxy_http_version 1.1;"));
        assert!(websocket.contains(&"proxy_set_header Upgrade $http_upgrade;"));
        assert!(
            websocket.contains(&"proxy_set_header Connection $jsonrpc_proxy_connection_upgrade;")
        );
        assert!(websocket.contains(&"proxy_set_header Host 127.0.0.1;"));

        // The WebSocket upstream has the same members and backup: the plain node directly,
        // the others on their -ws sockets.
        let plan = two_nodes_and_a_leader();
        let options = RenderOptions::default();
        let ws: Vec<String> = internal_targets(&plan)
            .into_iter()
            .map(|t| options.websocket_socket_path(t))
            .collect();
        let upstream = block(&conf, "upstream jsonrpc_backends_websocket {");
        assert_eq!(
            upstream,
            [
                "upstream jsonrpc_backends_websocket {",
                "server 10.0.0.1:8545 max_fails=1 fail_timeout=10s;",
                &format!("server unix:{} max_fails=1 fail_timeout=10s;", ws[0]),
                &format!("server unix:{} backup;", ws[1]),
                "keepalive 32;",
                "}"
            ]
        );

        // Internal layer: every backend that has one has a WebSocket server passing the
        // upgrade on.
        for path in &ws {
            assert!(path.ends_with("-ws.sock"));
            let server = server_listening_on(&conf, path);
            assert!(server.contains(&"proxy_set_header Upgrade $http_upgrade;"));
            assert!(
                server.contains(&"proxy_set_header Connection $jsonrpc_proxy_connection_upgrade;")
            );
            assert!(server.contains(&"proxy_http_version 1.1;"));
            assert!(server.contains(&"proxy_read_timeout 3600s;"));
        }
        assert_eq!(
            conf.matches("-ws.sock").count(),
            2 * ws.len(),
            "listen + upstream"
        );
        assert!(conf.contains("proxy_pass https://backend_1_origin/rpc;"));
        assert_eq!(
            conf.matches("proxy_set_header Authorization \"Basic dTpw\";")
                .count(),
            2,
            "basic auth on both internal servers of the node"
        );
    }

    #[test]
    fn long_read_timeouts_only_for_websockets() {
        let options = RenderOptions {
            read_timeout_secs: 7,
            websocket_timeout_secs: 900,
            ..RenderOptions::default()
        };
        let conf = render(&two_nodes_and_a_leader(), &options);
        let plain = block(&conf, "location / {");
        assert!(plain.contains(&"proxy_read_timeout 7s;"));
        assert!(plain.contains(&"proxy_send_timeout 7s;"));
        let websocket = block(&conf, "location @websocket {");
        assert!(websocket.contains(&"proxy_read_timeout 900s;"));
        assert!(websocket.contains(&"proxy_send_timeout 900s;"));
        // 1 public WebSocket location + 2 internal WebSocket servers (the plain node is a
        // direct member, without internal servers); the rest stays short.
        assert_eq!(conf.matches("proxy_read_timeout 900s;").count(), 3);
        assert_eq!(conf.matches("proxy_read_timeout 7s;").count(), 3);
        for line in conf
            .lines()
            .filter(|l| l.contains("proxy_read_timeout 900s;"))
        {
            assert!(line.starts_with("        "), "inside a location: {line:?}");
        }
    }

    #[test]
    fn plain_requests_keep_connections_alive_to_every_member() {
        let plan = two_nodes_and_a_leader();
        let options = RenderOptions::default();
        let conf = render(&plan, &options);
        // Plain internal servers never send an Upgrade; the map gives them an empty
        // Connection header, so their upstream connections are kept.
        for target in internal_targets(&plan) {
            let server = server_listening_on(&conf, &options.socket_path(target));
            assert!(server.contains(&"proxy_set_header Upgrade \"\";"));
            assert!(
                server.contains(&"proxy_set_header Connection $jsonrpc_proxy_connection_upgrade;")
            );
            assert!(server.contains(&"proxy_read_timeout 30s;"));
        }
        // The public location does the same for every member, direct ones included: HTTP/1.1,
        // no Upgrade, and (upgrades being sent to @websocket) an empty Connection header.
        let plain = block(&conf, "location / {");
        assert!(plain.contains(&"proxy_http_version 1.1;"));
        assert!(plain.contains(&"proxy_set_header Upgrade \"\";"));
        assert!(plain.contains(&"proxy_set_header Connection $jsonrpc_proxy_connection_upgrade;"));
        assert_eq!(
            conf.matches("keepalive 32;").count(),
            4,
            "2 balancers (which keep the direct member's connections) + 2 origins"
        );
    }

    #[test]
    fn health_endpoint_answers_200_while_there_is_somewhere_to_send_traffic() {
        for plan in [
            two_nodes_and_a_leader(),
            RoutingPlan::from_backends(&[backend(LEADER, true, true)]),
            RoutingPlan::from_backends(&[backend("http://10.0.0.1:8545", false, true)]),
        ] {
            let conf = render(&plan, &RenderOptions::default());
            assert_eq!(
                block(&conf, "location = /healthz {"),
                [
                    "location = /healthz {",
                    "access_log off;",
                    "default_type text/plain;",
                    "return 200 \"ok\\n\";",
                    "}"
                ]
            );
            assert_eq!(conf.matches("location = /healthz").count(), 1);
        }
    }

    #[test]
    fn health_endpoint_answers_503_when_nothing_is_healthy_and_the_rest_404() {
        let conf = render(&RoutingPlan::default(), &RenderOptions::default());
        assert_eq!(
            block(&conf, "location = /healthz {"),
            [
                "location = /healthz {",
                "access_log off;",
                "default_type text/plain;",
                "return 503 \"no healthy backend\\n\";",
                "}"
            ]
        );
        assert_eq!(
            block(&conf, "location / {"),
            ["location / {", "return 404;", "}"]
        );
        assert!(!conf.contains("map "), "no map without a proxy");
    }

    #[test]
    fn every_feature_is_on_by_default() {
        let options = RenderOptions::default();
        assert_eq!(options.websocket_timeout_secs, 3600);
        let conf = render(&two_nodes_and_a_leader(), &options);
        for needle in [
            " backup;",
            "max_fails=1 fail_timeout=10s;",
            "proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;",
            "proxy_next_upstream_tries 3;",
            "proxy_next_upstream_timeout 10s;",
            "keepalive 32;",
            "proxy_http_version 1.1;",
            "proxy_connect_timeout 2s;",
            "proxy_read_timeout 30s;",
            "location @websocket {",
            "location = /healthz {",
        ] {
            assert!(conf.contains(needle), "{needle}");
        }
        let bad = RenderOptions {
            websocket_timeout_secs: 0,
            ..RenderOptions::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_backend_keeps_its_socket_across_plans() {
        let options = RenderOptions::default();
        let with_node = RoutingPlan::from_backends(&[
            backend(LEADER, true, true),
            backend("http://10.0.0.1:8545", false, true),
        ]);
        let leader_only = RoutingPlan::from_backends(&[
            backend(LEADER, true, true),
            backend("http://10.0.0.1:8545", false, false),
        ]);
        let before = options.socket_path(with_node.backup.as_ref().unwrap());
        let after = options.socket_path(&leader_only.primaries[0]);
        assert_eq!(
            before, after,
            "old workers still reach the leader after a reload"
        );
        assert!(!before.contains("infura") && !before.contains("0123456789abcdef"));
        assert!(render(&leader_only, &options).contains(&format!("listen unix:{after};")));
    }

    #[test]
    fn every_config_names_its_plan_in_a_response_header() {
        let empty = RoutingPlan::default();
        let conf = render(&empty, &RenderOptions::default());
        let expected = format!(
            "add_header {PLAN_HEADER} {} always;",
            plan_id(&empty.fingerprint())
        );
        assert!(conf.contains(&expected), "{conf}");

        let plan = RoutingPlan::from_backends(&[backend("http://10.0.0.1:8545", false, true)]);
        let conf = render(&plan, &RenderOptions::default());
        let expected = format!(
            "add_header {PLAN_HEADER} {} always;",
            plan_id(&plan.fingerprint())
        );
        assert!(conf.contains(&expected));
        assert_eq!(plan_id(&plan.fingerprint()).len(), 16);
    }

    #[test]
    fn internal_servers_never_log_the_full_upstream_url() {
        let conf = render(&two_nodes_and_a_leader(), &RenderOptions::default());
        let plan = two_nodes_and_a_leader();
        let options = RenderOptions::default();
        for target in internal_targets(&plan) {
            for socket in [
                options.socket_path(target),
                options.websocket_socket_path(target),
            ] {
                let server = server_listening_on(&conf, &socket);
                assert!(server.contains(&"error_log /dev/null emerg;"), "{server:?}");
                assert!(server.contains(&"access_log off;"));
            }
        }
        // The public server keeps nginx's error log: it names direct members by `host:port`
        // (nothing secret) and the others by their sockets.
        let public = block(&conf, "server {");
        assert!(!public.iter().any(|line| line.starts_with("error_log")));
        for upstream in [
            "upstream jsonrpc_backends {",
            "upstream jsonrpc_backends_websocket {",
        ] {
            for line in block(&conf, upstream) {
                assert!(!line.contains("0123456789abcdef") && !line.contains("u:p"));
            }
        }
    }

    fn url(input: &str) -> BackendUrl {
        BackendUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    #[test]
    fn plain_http_backends_are_direct_and_the_rest_internal() {
        let cases: &[(&str, Option<&str>)] = &[
            ("http://h:8545/", Some("h:8545")),
            ("http://h:8545", Some("h:8545")),
            ("http://h", Some("h:80")),
            ("http://h/", Some("h:80")),
            ("http://h:80", Some("h:80")),
            ("http://Node.Example:8545", Some("node.example:8545")),
            ("http://10.0.0.1:8545", Some("10.0.0.1:8545")),
            ("http://[::1]:8545", Some("[::1]:8545")),
            ("http://[2001:db8::1]", Some("[2001:db8::1]:80")),
            ("http://h:8545/key", None),
            ("http://h:8545/v3/0123456789abcdef", None),
            ("http://h:8545//", None),
            ("http://u:p@h:8545", None),
            ("http://u@h:8545/", None),
            ("https://h", None),
            ("https://h:8545/", None),
            ("https://[::1]:8545", None),
            ("http://h:8545?x=1", None),
            ("http://h:8545/?x=1", None),
            ("http://h:8545/?", None),
        ];
        for (input, expected) in cases {
            let parsed = url(input);
            assert_eq!(
                direct_address(&parsed).as_deref(),
                *expected,
                "{input} (has secret parts: {})",
                parsed.has_secret_parts()
            );
            if expected.is_some() {
                assert!(!parsed.has_secret_parts(), "{input}");
            }
        }
    }

    #[test]
    fn a_mixed_fleet_mixes_direct_members_and_internal_servers() {
        let plan = RoutingPlan::from_backends(&[
            backend("http://[::1]:8545", false, true),
            backend("http://10.0.0.1", false, true),
            backend("http://10.0.0.2:8545/key", false, true),
            backend("http://10.0.0.3:8545?x=1", false, true),
            backend("http://10.0.0.9:8545/", true, true),
        ]);
        let options = RenderOptions::default();
        let conf = render(&plan, &options);
        let socket = |u: &str| {
            options.socket_path(&RouteTarget {
                url: url(u),
                is_leader: false,
            })
        };
        // Primaries sorted by URL, then the backup leader (plain, so direct too).
        assert_eq!(
            block(&conf, "upstream jsonrpc_backends {"),
            [
                "upstream jsonrpc_backends {",
                "server 10.0.0.1:80 max_fails=1 fail_timeout=10s;",
                &format!(
                    "server unix:{} max_fails=1 fail_timeout=10s;",
                    socket("http://10.0.0.2:8545/key")
                ),
                &format!(
                    "server unix:{} max_fails=1 fail_timeout=10s;",
                    socket("http://10.0.0.3:8545?x=1")
                ),
                "server [::1]:8545 max_fails=1 fail_timeout=10s;",
                "server 10.0.0.9:8545 backup;",
                "keepalive 32;",
                "}"
            ]
        );
        // Two internal servers (JSON-RPC, WebSocket) for each of the two keyed backends only.
        assert_eq!(conf.matches("    listen unix:").count(), 4);
        assert_eq!(conf.matches("server unix:").count(), 4);
        assert_eq!(conf.matches(" backup;").count(), 2);
        assert!(conf.contains("proxy_pass http://backend_1_origin/key;"));
        assert!(conf.contains("proxy_pass http://backend_2_origin/?x=1;"));
        // The keyed backends still get their own Host; the direct ones the public server's.
        assert!(conf.contains("proxy_set_header Host 10.0.0.2:8545;"));
        assert!(conf.contains("proxy_set_header Host 10.0.0.3:8545;"));
        assert_eq!(
            block(&conf, "location / {")
                .iter()
                .filter(|l| l.starts_with("proxy_set_header Host "))
                .collect::<Vec<_>>(),
            [&"proxy_set_header Host 127.0.0.1;"]
        );
        // Retries (POST included), passive failure detection and the plan header as before.
        let public = block(&conf, "server {");
        assert!(public.contains(
            &"proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;"
        ));
        assert!(public.contains(
            &format!(
                "add_header {PLAN_HEADER} {} always;",
                plan_id(&plan.fingerprint())
            )
            .as_str()
        ));
        for direct in ["[::1]:8545", "10.0.0.1:80", "10.0.0.9:8545"] {
            assert!(
                conf.contains(&format!("direct member {direct}\n")),
                "{direct}"
            );
        }
    }

    #[test]
    fn a_gated_render_judges_before_proxying_and_relays_websockets() {
        let plan = RoutingPlan::from_backends(&[Backend {
            url: "http://10.0.0.1:8545".into(),
            is_healthy: true,
            ..Backend::default()
        }]);
        let options = RenderOptions::default();
        let policy = GatePolicy {
            clients: vec![gate::GateClient {
                name: "app".into(),
                key_sha256: gate::key_sha256("app"),
                calls_per_second: 5,
                allow_methods: vec![],
                concurrent_requests: 64,
                allowed_origins: vec![],
            }],
            ..GatePolicy::default()
        };
        let plain = render(&plan, &options);
        assert_eq!(plain, render_gated(&plan, &options, None));
        assert!(!plain.contains("lua"));
        let conf = render_gated(&plan, &options, Some(&policy));
        let public = &conf[conf.find("    location / {").expect("location /")..];
        let public = &public[..public.find("\n    }\n").expect("end")];
        let access = public.find("access_by_lua_block").expect("the gate");
        assert!(
            access
                < public
                    .find("proxy_pass http://jsonrpc_backends;")
                    .expect("proxy")
        );
        assert!(public.contains(
            "proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;"
        ));
        assert!(public.contains("error_page 413 = @jsonrpc_gate_too_large;"));
        assert!(conf.contains("location @websocket {\n        content_by_lua_block"));
        let relay = &conf[conf
            .find(&format!(
                "listen unix:/var/run/jsonrpc-proxy/{};",
                gate::WEBSOCKET_SOCKET
            ))
            .expect("relay server")..];
        assert!(relay.contains("proxy_pass http://jsonrpc_backends_websocket;"));
        assert!(conf.contains(&format!(
            "listen unix:/var/run/jsonrpc-proxy/{};",
            gate::USAGE_SOCKET
        )));
        assert!(conf.contains("access_log /var/log/nginx/access.log jsonrpc_gate;"));
        assert!(conf.contains("set_real_ip_from 10.0.0.0/8;"));
        assert!(
            !conf.contains("$request "),
            "no request line in the log format"
        );
        assert!(!conf.contains("$request_uri"));
        // Nothing healthy: still the 404 server, and the usage endpoint stays.
        let empty = render_gated(&RoutingPlan::default(), &options, Some(&policy));
        assert!(empty.contains("return 404;"));
        assert!(empty.contains(gate::USAGE_SOCKET));
        assert!(!empty.contains(&format!(
            "listen unix:/var/run/jsonrpc-proxy/{};",
            gate::WEBSOCKET_SOCKET
        )));
    }
}
