//! Command line and environment of the agent.
//!
//! Every setting is a flag, an environment variable, or its default, in that order of
//! precedence. The defaults are the container's (`docker/Dockerfile`); the flags let the agent
//! drive any local nginx.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use jsonrpc_proxy::aws::config_bucket::parse_s3_path;
use jsonrpc_proxy::aws::config_bucket::POINTER_KEY;
use jsonrpc_proxy::settings::Env;
use thiserror::Error;

use crate::nginx::NginxCommand;

/// The default 404 configuration (the same file the image installs as `conf.d/default.conf`).
pub const BUILTIN_DEFAULT_CONFIG: &str = include_str!("../../../docker/default.conf");

/// Default path of the configuration the agent manages (the nginx image's default server).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nginx/conf.d/default.conf";
/// Default directory of the rendered configuration's unix sockets (the renderer's default).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/jsonrpc-proxy";
/// Default nginx binary (looked up in `PATH`).
pub const DEFAULT_NGINX_BIN: &str = "nginx";
/// Default seconds between pointer checks in `run` (when there is a pointer to follow).
pub const DEFAULT_POLL_SECONDS: u64 = 30;
/// Longest accepted poll interval, seconds.
pub const MAX_POLL_SECONDS: u64 = 86_400;
/// Default seconds between publications of the gate's usage (CloudWatch's minute).
pub const DEFAULT_USAGE_SECONDS: u64 = 60;

/// The usage text.
pub const USAGE: &str = "\
config_agent: installs the rendered nginx configuration from S3 and runs nginx.

USAGE:
    config_agent [run] [OPTIONS]     fetch, validate and install the configuration (the default
                                     404 server when that fails), then run nginx in the
                                     foreground; with a poll interval, follow new renders
    config_agent apply [OPTIONS]     fetch, validate, install and reload a running nginx once;
                                     exit status 0 when applied, 1 otherwise (the previous
                                     configuration stays in place)
    config_agent help | --help       this text

OPTIONS (flag, then environment variable, then default):
    --s3-path s3://BUCKET/KEY        S3_CONFIG_PATH: the configuration to install
    --pointer s3://BUCKET/KEY        CONFIG_POINTER_PATH: the renderer's latest.json pointer,
                                     followed when no S3 path is given or it cannot be read,
                                     and polled (default: latest.json in the S3 path's bucket)
    --poll-seconds N                 CONFIG_POLL_SECONDS: run only; seconds between pointer
                                     checks, 0 = never (default 30; never without a
                                     pointer or S3 path)
    --usage-seconds N                USAGE_PUBLISH_SECONDS: run only; seconds between
                                     publications of the gate's usage per client to
                                     CloudWatch (with CLOUDWATCH_NAMESPACE and STACK_NAME
                                     set), 0 = never (default 60)
    --config-path PATH               NGINX_CONFIG_PATH: the file nginx includes
                                     (default /etc/nginx/conf.d/default.conf)
    --default-config PATH            NGINX_DEFAULT_CONFIG: the fallback configuration
                                     (default: the built-in 404 server on port 80)
    --socket-dir PATH                NGINX_SOCKET_DIR: created for the backends' unix sockets
                                     (default /var/run/jsonrpc-proxy)
    --nginx-bin PATH                 NGINX_BIN (default nginx)
    --nginx-conf PATH                NGINX_CONF: main configuration, passed as -c (default:
                                     nginx's own); it must not set `daemon` (run adds
                                     -g 'daemon off;')
    --nginx-prefix PATH              NGINX_PREFIX: passed as -p (default: nginx's own)
    --no-reload                      apply only: install without reloading nginx

AWS credentials, region and endpoints come from the standard AWS environment (task role,
AWS_REGION, AWS_ENDPOINT_URL_S3, ...).
";

/// An `s3://bucket/key` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
}

impl S3Location {
    /// Parses `s3://bucket/key`.
    pub fn parse(text: &str) -> Option<Self> {
        parse_s3_path(text.trim()).map(|(bucket, key)| Self { bucket, key })
    }

    /// The renderer's pointer in the same bucket.
    pub fn pointer_in_bucket(&self) -> Self {
        Self {
            bucket: self.bucket.clone(),
            key: POINTER_KEY.to_owned(),
        }
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Where configurations come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sources {
    /// An explicit configuration (`S3_CONFIG_PATH`).
    pub config: Option<S3Location>,
    /// The renderer's pointer (`CONFIG_POINTER_PATH`, or `latest.json` next to `config`).
    pub pointer: Option<S3Location>,
}

/// Settings shared by both modes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// Where configurations come from.
    pub sources: Sources,
    /// The file nginx includes, which the agent replaces.
    pub config_path: PathBuf,
    /// The fallback configuration's text.
    pub default_config: String,
    /// Directory created for the backends' unix sockets.
    pub socket_dir: PathBuf,
    /// How to run nginx.
    pub nginx: NginxCommand,
}

/// Where the agent publishes whether the configuration in force is the newest render, and the
/// gate's usage per client: both `CLOUDWATCH_NAMESPACE` and `STACK_NAME` set, else nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsTarget {
    /// The CloudWatch namespace.
    pub namespace: String,
    /// The `Stack name` dimension's value.
    pub stack_name: String,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Prepare the configuration and run nginx (the container's entrypoint).
    Run {
        /// The settings.
        settings: AgentSettings,
        /// Pointer poll interval; `None` = no polling.
        poll: Option<Duration>,
        /// Interval of the usage publication; `None` = never.
        usage: Option<Duration>,
        /// Where the agent's metrics go; `None` = nowhere.
        metrics: Option<MetricsTarget>,
    },
    /// Apply one configuration to a running nginx.
    Apply {
        /// The settings.
        settings: AgentSettings,
        /// Whether to reload nginx after installing.
        reload: bool,
    },
    /// Print the usage.
    Help,
}

/// The command line or environment is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UsageError {
    /// An unknown flag or subcommand.
    #[error("unknown argument {0:?} (see config_agent --help)")]
    Unknown(String),
    /// A flag without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A malformed value.
    #[error("{name}={value:?} is invalid: {problem}")]
    Invalid {
        /// The flag or variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The fallback configuration file cannot be read.
    #[error("cannot read the default configuration {path}: {message}")]
    DefaultConfig {
        /// Its path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// `apply` without a source.
    #[error("apply needs --s3-path or --pointer (or S3_CONFIG_PATH / CONFIG_POINTER_PATH)")]
    NoSource,
    /// Polling without a pointer.
    #[error("polling needs a pointer: set --pointer / CONFIG_POINTER_PATH or an S3 path")]
    NoPointer,
}

/// The flags that take a value, with their environment variables.
const VALUE_FLAGS: &[(&str, &str)] = &[
    ("--s3-path", "S3_CONFIG_PATH"),
    ("--pointer", "CONFIG_POINTER_PATH"),
    ("--poll-seconds", "CONFIG_POLL_SECONDS"),
    ("--usage-seconds", "USAGE_PUBLISH_SECONDS"),
    ("--config-path", "NGINX_CONFIG_PATH"),
    ("--default-config", "NGINX_DEFAULT_CONFIG"),
    ("--socket-dir", "NGINX_SOCKET_DIR"),
    ("--nginx-bin", "NGINX_BIN"),
    ("--nginx-conf", "NGINX_CONF"),
    ("--nginx-prefix", "NGINX_PREFIX"),
];

/// Parses the command line (without the program name) over an environment.
pub fn parse_args(args: &[String], env: &Env<'_>) -> Result<Mode, UsageError> {
    let mut rest = args;
    let mut subcommand = "run";
    if let Some(first) = rest.first() {
        match first.as_str() {
            "run" | "apply" => {
                subcommand = if first == "run" { "run" } else { "apply" };
                rest = &rest[1..];
            }
            "help" | "--help" | "-h" => return Ok(Mode::Help),
            _ => {}
        }
    }

    let mut values: Vec<(&'static str, String)> = Vec::new();
    let mut no_reload = false;
    let mut index = 0;
    while index < rest.len() {
        let arg = rest[index].as_str();
        if arg == "--help" || arg == "-h" {
            return Ok(Mode::Help);
        }
        if arg == "--no-reload" && subcommand == "apply" {
            no_reload = true;
            index += 1;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (arg, None),
        };
        let Some((flag, _)) = VALUE_FLAGS.iter().find(|(flag, _)| *flag == name) else {
            return Err(UsageError::Unknown(arg.to_owned()));
        };
        if matches!(*flag, "--poll-seconds" | "--usage-seconds") && subcommand == "apply" {
            return Err(UsageError::Unknown(arg.to_owned()));
        }
        let value = match inline {
            Some(value) => value,
            None => {
                index += 1;
                rest.get(index)
                    .cloned()
                    .ok_or_else(|| UsageError::MissingValue((*flag).to_owned()))?
            }
        };
        values.push((flag, value));
        index += 1;
    }

    let get = |flag: &str| -> Option<String> {
        let from_flag = values
            .iter()
            .rev()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.trim().to_owned());
        let variable = VALUE_FLAGS
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, variable)| *variable)?;
        from_flag
            .or_else(|| env.get(variable))
            .filter(|v| !v.is_empty())
    };
    let location = |flag: &'static str| -> Result<Option<S3Location>, UsageError> {
        match get(flag) {
            None => Ok(None),
            Some(value) => S3Location::parse(&value)
                .map(Some)
                .ok_or(UsageError::Invalid {
                    name: flag,
                    value,
                    problem: "expected s3://bucket/key",
                }),
        }
    };

    let config = location("--s3-path")?;
    let pointer = location("--pointer")?;
    let sources = Sources {
        pointer: pointer.or_else(|| config.as_ref().map(S3Location::pointer_in_bucket)),
        config,
    };
    let default_config = match get("--default-config") {
        None => BUILTIN_DEFAULT_CONFIG.to_owned(),
        Some(path) => std::fs::read_to_string(&path).map_err(|e| UsageError::DefaultConfig {
            path,
            message: e.to_string(),
        })?,
    };
    let settings = AgentSettings {
        sources,
        config_path: PathBuf::from(
            get("--config-path").unwrap_or_else(|| DEFAULT_CONFIG_PATH.into()),
        ),
        default_config,
        socket_dir: PathBuf::from(get("--socket-dir").unwrap_or_else(|| DEFAULT_SOCKET_DIR.into())),
        nginx: NginxCommand {
            bin: PathBuf::from(get("--nginx-bin").unwrap_or_else(|| DEFAULT_NGINX_BIN.into())),
            conf: get("--nginx-conf").map(PathBuf::from),
            prefix: get("--nginx-prefix").map(PathBuf::from),
        },
    };

    if subcommand == "apply" {
        if settings.sources.config.is_none() && settings.sources.pointer.is_none() {
            return Err(UsageError::NoSource);
        }
        return Ok(Mode::Apply {
            settings,
            reload: !no_reload,
        });
    }

    let interval = |flag: &'static str, name: &'static str, default: u64| {
        let seconds = match get(flag) {
            None => default,
            Some(value) => match value.parse::<u64>() {
                Ok(seconds) if seconds <= MAX_POLL_SECONDS => seconds,
                _ => {
                    return Err(UsageError::Invalid {
                        name,
                        value,
                        problem: "expected whole seconds, 0 to 86400",
                    })
                }
            },
        };
        Ok((seconds > 0).then(|| Duration::from_secs(seconds)))
    };
    let poll = interval(
        "--poll-seconds",
        "--poll-seconds / CONFIG_POLL_SECONDS",
        DEFAULT_POLL_SECONDS,
    )?;
    let usage = interval(
        "--usage-seconds",
        "--usage-seconds / USAGE_PUBLISH_SECONDS",
        DEFAULT_USAGE_SECONDS,
    )?;
    // The default interval applies when there is a pointer to follow; an interval asked for
    // without one is an error.
    let poll = match poll {
        Some(_) if settings.sources.pointer.is_none() => {
            if get("--poll-seconds").is_some() {
                return Err(UsageError::NoPointer);
            }
            None
        }
        poll => poll,
    };
    let metrics = env
        .get("CLOUDWATCH_NAMESPACE")
        .zip(env.get("STACK_NAME"))
        .map(|(namespace, stack_name)| MetricsTarget {
            namespace,
            stack_name,
        });
    Ok(Mode::Run {
        settings,
        poll,
        usage,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(args: &[&str], vars: &[(&str, &str)]) -> Result<Mode, UsageError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let env = Env::from_fn(|k| vars.get(k).cloned());
        parse_args(&args, &env)
    }

    #[test]
    fn container_defaults() {
        let Mode::Run {
            settings,
            poll,
            usage,
            ..
        } = parse(&[], &[]).unwrap()
        else {
            panic!("run expected")
        };
        // Nothing to follow: no polling.
        assert_eq!(poll, None);
        assert_eq!(usage, Some(Duration::from_secs(DEFAULT_USAGE_SECONDS)));
        assert_eq!(settings.sources, Sources::default());
        assert!(matches!(
            parse(&[], &[("STACK_NAME", "s")]),
            Ok(Mode::Run { metrics: None, .. })
        ));
        assert_eq!(settings.config_path, PathBuf::from(DEFAULT_CONFIG_PATH));
        assert_eq!(settings.socket_dir, PathBuf::from(DEFAULT_SOCKET_DIR));
        assert_eq!(settings.nginx.bin, PathBuf::from("nginx"));
        assert_eq!(settings.nginx.conf, None);
        assert!(settings.default_config.contains("return 404;"));
    }

    #[test]
    fn the_pointer_is_followed_every_30_seconds_by_default() {
        for vars in [
            [("S3_CONFIG_PATH", "s3://b/abc_nginx.conf")],
            [("CONFIG_POINTER_PATH", "s3://b/latest.json")],
        ] {
            let Mode::Run { poll, .. } = parse(&["run"], &vars).unwrap() else {
                panic!("run expected")
            };
            assert_eq!(poll, Some(Duration::from_secs(DEFAULT_POLL_SECONDS)));
            assert_eq!(DEFAULT_POLL_SECONDS, 30);
        }
        let Mode::Run { poll, .. } = parse(
            &["--poll-seconds", "0"],
            &[("S3_CONFIG_PATH", "s3://b/abc_nginx.conf")],
        )
        .unwrap() else {
            panic!("run expected")
        };
        assert_eq!(poll, None);
    }

    #[test]
    fn environment_then_flags() {
        let mode = parse(
            &["run", "--poll-seconds=5", "--nginx-bin", "/usr/sbin/nginx"],
            &[
                ("S3_CONFIG_PATH", "s3://cfg-bucket/abc_nginx.conf"),
                ("CONFIG_POLL_SECONDS", "60"),
                ("USAGE_PUBLISH_SECONDS", "30"),
                ("NGINX_CONF", "/tmp/x/nginx.conf"),
                ("NGINX_BIN", "/opt/nginx"),
            ],
        )
        .unwrap();
        let Mode::Run {
            settings,
            poll,
            usage,
            ..
        } = mode
        else {
            panic!("run expected")
        };
        assert_eq!(poll, Some(Duration::from_secs(5)));
        assert_eq!(usage, Some(Duration::from_secs(30)));
        assert_eq!(
            settings.sources.config.as_ref().unwrap().to_string(),
            "s3://cfg-bucket/abc_nginx.conf"
        );
        assert_eq!(
            settings.sources.pointer.unwrap().to_string(),
            "s3://cfg-bucket/latest.json"
        );
        assert_eq!(settings.nginx.bin, PathBuf::from("/usr/sbin/nginx"));
        assert_eq!(
            settings.nginx.conf,
            Some(PathBuf::from("/tmp/x/nginx.conf"))
        );
    }

    #[test]
    fn apply_needs_a_source_and_takes_no_reload() {
        assert_eq!(parse(&["apply"], &[]), Err(UsageError::NoSource));
        let Mode::Apply { settings, reload } = parse(
            &["apply", "--pointer", "s3://b/latest.json", "--no-reload"],
            &[],
        )
        .unwrap() else {
            panic!("apply expected")
        };
        assert!(!reload);
        assert_eq!(settings.sources.config, None);
        assert!(matches!(
            parse(
                &["apply", "--s3-path", "s3://b/k.conf", "--poll-seconds", "1"],
                &[]
            ),
            Err(UsageError::Unknown(_))
        ));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(matches!(
            parse(&["--s3-path", "https://b/k"], &[]),
            Err(UsageError::Invalid {
                name: "--s3-path",
                ..
            })
        ));
        assert!(matches!(
            parse(
                &[],
                &[
                    ("CONFIG_POLL_SECONDS", "-1"),
                    ("S3_CONFIG_PATH", "s3://b/k")
                ]
            ),
            Err(UsageError::Invalid { .. })
        ));
        assert_eq!(
            parse(&["--poll-seconds", "10"], &[]),
            Err(UsageError::NoPointer)
        );
        assert!(matches!(
            parse(&[], &[("USAGE_PUBLISH_SECONDS", "soon")]),
            Err(UsageError::Invalid { .. })
        ));
        assert_eq!(
            parse(
                &["apply", "--pointer", "s3://b/p", "--usage-seconds", "5"],
                &[]
            ),
            Err(UsageError::Unknown("--usage-seconds".into()))
        );
        assert_eq!(
            parse(&["--config-path"], &[]),
            Err(UsageError::MissingValue("--config-path".into()))
        );
        assert_eq!(
            parse(&["--bogus"], &[]),
            Err(UsageError::Unknown("--bogus".into()))
        );
        assert_eq!(
            parse(&["run", "--no-reload"], &[]),
            Err(UsageError::Unknown("--no-reload".into()))
        );
        assert!(matches!(
            parse(&["--default-config", "/nonexistent/default.conf"], &[]),
            Err(UsageError::DefaultConfig { .. })
        ));
        assert_eq!(parse(&["--help"], &[]), Ok(Mode::Help));
        assert_eq!(parse(&["apply", "-h"], &[]), Ok(Mode::Help));
    }

    #[test]
    fn blank_environment_values_are_unset() {
        let Mode::Run {
            settings,
            poll,
            usage,
            ..
        } = parse(
            &["--usage-seconds", "0"],
            &[("S3_CONFIG_PATH", " "), ("CONFIG_POLL_SECONDS", "0")],
        )
        .unwrap()
        else {
            panic!("run expected")
        };
        assert_eq!(settings.sources.config, None);
        assert_eq!((poll, usage), (None, None));
    }
}
