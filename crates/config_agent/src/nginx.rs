//! Running nginx: `nginx -t`, `nginx -s reload`, nginx in the foreground, and finding the
//! running master through its pid file (the one `nginx -s` signals).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use jsonrpc_proxy::model::backend_url::BackendUrl;
use thiserror::Error;
use tokio::process::Command;

/// Longest time `nginx -t` or `nginx -s` may take (it resolves the backends' host names).
pub const NGINX_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest nginx output quoted in an error.
const MAX_OUTPUT: usize = 4000;

/// nginx's own defaults when it was built without `--prefix`, `--conf-path` or `--pid-path`.
const NGINX_PREFIX: &str = "/usr/local/nginx";
const NGINX_CONF_PATH: &str = "conf/nginx.conf";
const NGINX_PID_PATH: &str = "logs/nginx.pid";

/// How to invoke nginx: the binary and the optional `-c` / `-p` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxCommand {
    /// The nginx binary.
    pub bin: PathBuf,
    /// The main configuration (`-c`), if not nginx's compiled-in one.
    pub conf: Option<PathBuf>,
    /// The prefix (`-p`), if not nginx's compiled-in one.
    pub prefix: Option<PathBuf>,
}

/// An nginx command failed.
#[derive(Debug, Error)]
pub enum NginxError {
    /// nginx could not be started.
    #[error("cannot run {bin}: {message}")]
    Spawn {
        /// The binary.
        bin: String,
        /// The I/O error.
        message: String,
    },
    /// nginx ran and refused (for `-t`: the configuration is invalid).
    #[error("`nginx {action}` failed ({status}): {output}")]
    Failed {
        /// `-t` or `-s reload`.
        action: &'static str,
        /// The exit status.
        status: String,
        /// nginx's messages, with URLs reduced to scheme and host.
        output: String,
    },
    /// nginx did not finish in time.
    #[error("`nginx {action}` did not finish within {timeout:?}")]
    Timeout {
        /// `-t` or `-s reload`.
        action: &'static str,
        /// The limit.
        timeout: Duration,
    },
}

impl NginxCommand {
    /// The common arguments (`-p`, `-c`).
    pub fn base_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(prefix) = &self.prefix {
            args.push("-p".into());
            args.push(prefix.clone().into_os_string());
        }
        if let Some(conf) = &self.conf {
            args.push("-c".into());
            args.push(conf.clone().into_os_string());
        }
        args
    }

    /// `nginx -t`: checks the whole configuration, including the file the agent manages.
    pub async fn test(&self) -> Result<(), NginxError> {
        self.run("-t", &["-t", "-q"]).await
    }

    /// `nginx -s reload`: a running nginx (found through its pid file) reloads gracefully.
    pub async fn reload(&self) -> Result<(), NginxError> {
        self.run("-s reload", &["-s", "reload"]).await
    }

    /// The pid of the running nginx's master, from its pid file: the `pid` directive of the
    /// main configuration (`-c`, else nginx's built-in one), else nginx's built-in pid path,
    /// relative to the prefix (`-p`, else nginx's) when relative. The built-in paths come
    /// from `nginx -V`.
    pub async fn master_pid(&self) -> Result<u32, String> {
        let output = Command::new(&self.bin)
            .arg("-V")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(NGINX_COMMAND_TIMEOUT, output)
            .await
            .map_err(|_| format!("`{} -V` did not finish", self.bin.display()))?
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let mut version = String::from_utf8_lossy(&output.stderr).into_owned();
        version.push_str(&String::from_utf8_lossy(&output.stdout));
        let built_in = BuiltInPaths::parse(&version);
        let prefix = self.prefix.as_deref();
        let conf = built_in.main_conf(prefix, self.conf.as_deref());
        let text = std::fs::read_to_string(&conf)
            .map_err(|e| format!("cannot read {}: {e}", conf.display()))?;
        let pid_file = built_in.pid_file(prefix, &text);
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("cannot read nginx's pid file {}: {e}", pid_file.display()))?;
        pid.trim()
            .parse::<u32>()
            .ok()
            .filter(|pid| *pid > 1)
            .ok_or_else(|| format!("{} holds no pid: {:?}", pid_file.display(), pid.trim()))
    }

    /// The command that runs nginx in the foreground (`-g 'daemon off;'`).
    pub fn foreground(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.bin);
        command.args(self.base_args()).args(["-g", "daemon off;"]);
        command
    }

    async fn run(&self, action: &'static str, args: &[&str]) -> Result<(), NginxError> {
        let child = Command::new(&self.bin)
            .args(self.base_args())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| NginxError::Spawn {
                bin: self.bin.display().to_string(),
                message: e.to_string(),
            })?;
        let output = tokio::time::timeout(NGINX_COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| NginxError::Timeout {
                action,
                timeout: NGINX_COMMAND_TIMEOUT,
            })?
            .map_err(|e| NginxError::Spawn {
                bin: self.bin.display().to_string(),
                message: e.to_string(),
            })?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        Err(NginxError::Failed {
            action,
            status: output.status.to_string(),
            output: sanitize_output(&text),
        })
    }
}

/// The paths nginx was built with, as `nginx -V` prints them (`--prefix=`, `--conf-path=`,
/// `--pid-path=`), or nginx's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltInPaths {
    /// The prefix.
    pub prefix: PathBuf,
    /// The main configuration, maybe relative to the prefix.
    pub conf: PathBuf,
    /// The pid file, maybe relative to the prefix.
    pub pid: PathBuf,
}

impl BuiltInPaths {
    /// Reads `nginx -V`'s output.
    pub fn parse(version: &str) -> Self {
        let argument = |name: &str, default: &str| {
            PathBuf::from(
                version
                    .split_whitespace()
                    .find_map(|a| a.strip_prefix(name))
                    .filter(|v| !v.is_empty())
                    .unwrap_or(default),
            )
        };
        Self {
            prefix: argument("--prefix=", NGINX_PREFIX),
            conf: argument("--conf-path=", NGINX_CONF_PATH),
            pid: argument("--pid-path=", NGINX_PID_PATH),
        }
    }

    /// The main configuration nginx reads: `conf` (`-c`), else the built-in one; under the
    /// prefix (`prefix`, `-p`, else the built-in one) when relative.
    pub fn main_conf(&self, prefix: Option<&Path>, conf: Option<&Path>) -> PathBuf {
        under(prefix.unwrap_or(&self.prefix), conf.unwrap_or(&self.conf))
    }

    /// The pid file of an nginx running the main configuration `main_conf` (its text): the
    /// `pid` it sets, else the built-in one; under the prefix when relative.
    pub fn pid_file(&self, prefix: Option<&Path>, main_conf: &str) -> PathBuf {
        let pid = pid_directive(main_conf).map_or_else(|| self.pid.clone(), PathBuf::from);
        under(prefix.unwrap_or(&self.prefix), &pid)
    }
}

/// `path`, under `prefix` when relative.
fn under(prefix: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        prefix.join(path)
    }
}

/// The value of the `pid` directive in the main context of an nginx configuration (outside
/// every block; comments and quotes respected), if it sets one.
pub fn pid_directive(text: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut statement: Vec<String> = Vec::new();
    // The token being read; `None` between tokens, where quotes and comments may start.
    let mut token: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' if token.is_none() => {
                let mut quoted = String::new();
                while let Some(inner) = chars.next() {
                    match inner {
                        '\\' => quoted.extend(chars.next()),
                        _ if inner == c => break,
                        _ => quoted.push(inner),
                    }
                }
                statement.push(quoted);
                continue;
            }
            '#' if token.is_none() => {
                chars.by_ref().find(|c| *c == '\n');
                continue;
            }
            _ => {}
        }
        if c.is_whitespace() || matches!(c, ';' | '{' | '}') {
            statement.extend(token.take());
        }
        match c {
            ';' => {
                if depth == 0 && statement.len() == 2 && statement[0] == "pid" {
                    return statement.pop().filter(|path| !path.is_empty());
                }
                statement.clear();
            }
            '{' => {
                depth += 1;
                statement.clear();
            }
            '}' => {
                depth = depth.saturating_sub(1);
                statement.clear();
            }
            _ if c.is_whitespace() => {}
            _ => token.get_or_insert_with(String::new).push(c),
        }
    }
    None
}

/// nginx's messages made safe to log: URLs reduced to `scheme://host[:port]` (plus a hash when
/// they carried a path, query or credentials, as everywhere in jsonrpc-proxy), whitespace
/// collapsed, length capped.
pub fn sanitize_output(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let redacted = redact_urls(&collapsed);
    if redacted.len() <= MAX_OUTPUT {
        return redacted;
    }
    let mut end = MAX_OUTPUT;
    while !redacted.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &redacted[..end])
}

/// Replaces every `scheme://...` token with its redacted form.
pub fn redact_urls(text: &str) -> String {
    let is_scheme_char = |c: char| c.is_ascii_alphanumeric() || "+-.".contains(c);
    let ends_token = |c: char| c.is_whitespace() || "\"';{}()<>,".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let before = &rest[..at];
        let start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_scheme_char(*c))
            .last()
            .map_or(at, |(i, _)| i);
        let after = &rest[at + 3..];
        let end = after.find(ends_token).map_or(rest.len(), |i| at + 3 + i);
        let token = &rest[start..end];
        out.push_str(&rest[..start]);
        match BackendUrl::parse(token) {
            Ok(url) => out.push_str(&url.redacted()),
            Err(_) => {
                let scheme = &rest[start..at];
                out.push_str(scheme);
                out.push_str("://[redacted]");
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let nginx = NginxCommand {
            bin: "/usr/sbin/nginx".into(),
            conf: Some("/tmp/n/nginx.conf".into()),
            prefix: Some("/tmp/n".into()),
        };
        let args: Vec<String> = nginx
            .base_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(args, ["-p", "/tmp/n", "-c", "/tmp/n/nginx.conf"]);
        let command = nginx.foreground();
        let args: Vec<_> = command.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args[4..], ["-g", "daemon off;"]);
    }

    #[test]
    fn urls_in_nginx_messages_are_redacted() {
        let message = "nginx: [emerg] host not found in upstream \"https://user:pw@node.example:8545/v3/KEY123\" in /etc/nginx/conf.d/default.conf:12\n\
                       nginx: configuration file /etc/nginx/nginx.conf test failed";
        let safe = sanitize_output(message);
        assert!(!safe.contains("KEY123"), "{safe}");
        assert!(!safe.contains("pw@"), "{safe}");
        assert!(
            safe.contains("https://node.example:8545/[redacted:"),
            "{safe}"
        );
        assert!(
            safe.contains("default.conf:12 nginx: configuration file"),
            "{safe}"
        );
        assert_eq!(
            redact_urls("see http://a.example:80 and x-y://bad\"stuff\" end"),
            "see http://a.example and x-y://[redacted]\"stuff\" end"
        );
        assert_eq!(redact_urls("no urls here"), "no urls here");
        assert_eq!(redact_urls("://"), "://[redacted]");
    }

    #[test]
    fn built_in_paths_come_from_nginx_v() {
        let debian = "nginx version: nginx/1.22.1\nconfigure arguments: --with-cc-opt='-g -O2 \
                      -ffile-prefix-map=/build/nginx=.' --prefix=/usr/share/nginx \
                      --conf-path=/etc/nginx/nginx.conf --error-log-path=stderr \
                      --pid-path=/run/nginx.pid --modules-path=/usr/lib/nginx/modules\n";
        let paths = BuiltInPaths::parse(debian);
        assert_eq!(
            paths,
            BuiltInPaths {
                prefix: "/usr/share/nginx".into(),
                conf: "/etc/nginx/nginx.conf".into(),
                pid: "/run/nginx.pid".into(),
            }
        );
        let given = Some(Path::new("/tmp/p"));
        assert_eq!(
            paths.main_conf(given, None),
            PathBuf::from("/etc/nginx/nginx.conf")
        );
        assert_eq!(
            paths.main_conf(given, Some(Path::new("conf/nginx.conf"))),
            PathBuf::from("/tmp/p/conf/nginx.conf")
        );
        assert_eq!(
            paths.main_conf(None, Some(Path::new("/tmp/x/nginx.conf"))),
            PathBuf::from("/tmp/x/nginx.conf")
        );
        assert_eq!(
            paths.pid_file(given, "events {}\n"),
            PathBuf::from("/run/nginx.pid")
        );
        assert_eq!(
            paths.pid_file(given, "pid logs/nginx.pid;"),
            PathBuf::from("/tmp/p/logs/nginx.pid")
        );
        assert_eq!(
            paths.pid_file(None, "pid logs/nginx.pid;"),
            PathBuf::from("/usr/share/nginx/logs/nginx.pid")
        );
        assert_eq!(
            paths.pid_file(None, "pid /tmp/x/nginx.pid;"),
            PathBuf::from("/tmp/x/nginx.pid")
        );
        // Built without the options: nginx's own defaults.
        let plain = BuiltInPaths::parse("nginx version: nginx/1.27.0\nconfigure arguments:\n");
        assert_eq!(
            plain.main_conf(None, None),
            PathBuf::from("/usr/local/nginx/conf/nginx.conf")
        );
        assert_eq!(
            plain.main_conf(given, None),
            PathBuf::from("/tmp/p/conf/nginx.conf")
        );
        assert_eq!(
            plain.pid_file(given, ""),
            PathBuf::from("/tmp/p/logs/nginx.pid")
        );
    }

    #[test]
    fn the_pid_directive_of_the_main_context() {
        let debian = "user www-data;\nworker_processes auto;\npid /run/nginx.pid;\n\
                      include /etc/nginx/modules-enabled/*.conf;\nevents {\n\
                      \tworker_connections 768;\n}\n";
        assert_eq!(pid_directive(debian).as_deref(), Some("/run/nginx.pid"));
        assert_eq!(
            pid_directive("worker_processes 1;pid logs/n.pid;").as_deref(),
            Some("logs/n.pid")
        );
        assert_eq!(
            pid_directive("pid \"/tmp/a b/n.pid\" ;").as_deref(),
            Some("/tmp/a b/n.pid")
        );
        assert_eq!(
            pid_directive("pid '/tmp/it\\'s.pid';").as_deref(),
            Some("/tmp/it's.pid")
        );
        // Not the main context's: commented out, inside a block, a word in a string.
        let none = "# pid /commented.pid;\n\
                    http { log_format main '$pid; pid /in/string.pid;'; server { pid x; } }\n\
                    events { worker_connections 8; } # pid /trailing.pid;\n";
        assert_eq!(pid_directive(none), None);
        assert_eq!(
            pid_directive(&format!("{none}pid /after/blocks.pid;")).as_deref(),
            Some("/after/blocks.pid")
        );
        assert_eq!(pid_directive("pid;"), None);
        assert_eq!(pid_directive("pid"), None);
        assert_eq!(pid_directive("pidfile /x;"), None);
        assert_eq!(pid_directive("pid/x;"), None);
        assert_eq!(pid_directive("pid \"\";"), None);
        assert_eq!(
            pid_directive("pid /a#b.pid; # the pid file").as_deref(),
            Some("/a#b.pid")
        );
    }

    #[test]
    fn long_output_is_capped() {
        let long = "é".repeat(5000);
        assert!(sanitize_output(&long).len() <= MAX_OUTPUT + 3);
    }
}
