//! Running nginx: `nginx -t`, `nginx -s reload`, and nginx in the foreground.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jsonrpc_proxy::backend_url::BackendUrl;
use thiserror::Error;
use tokio::process::Command;

/// Longest time `nginx -t` or `nginx -s` may take (it resolves the backends' host names).
pub const NGINX_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest nginx output quoted in an error.
const MAX_OUTPUT: usize = 4000;

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
    fn long_output_is_capped() {
        let long = "é".repeat(5000);
        assert!(sanitize_output(&long).len() <= MAX_OUTPUT + 3);
    }
}
