//! The configuration contract: environment variables, read once at start.
//!
//! The names are part of the compatibility contract (docs/compatibility.md). A missing or
//! malformed variable is an error that names it.

use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::health::{
    HealthPolicy, DEFAULT_DIFF_TOLERANCE, DEFAULT_HEALTHY_AFTER, DEFAULT_UNHEALTHY_AFTER,
};
use crate::health_checker::{
    RoundSchedule, DEFAULT_ROUNDS_PER_INVOCATION, DEFAULT_ROUND_INTERVAL_SECS,
    DEFAULT_ROW_REFRESH_SECS, MAX_ROUNDS_PER_INVOCATION,
};
use crate::nginx::RenderOptions;
use crate::probe::ProbeSettings;

/// A variable is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingsError {
    /// A required variable is not set (or empty).
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// A variable's value is not acceptable.
    #[error("environment variable {name}={value:?} is invalid: {problem}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: String,
    },
}

/// A function that looks a variable up.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Reads variables through a lookup function, so that tests need no process environment.
pub struct Env<'a> {
    lookup: Lookup<'a>,
}

impl Env<'static> {
    /// The process environment.
    pub fn process() -> Self {
        Self {
            lookup: Box::new(|name| std::env::var(name).ok()),
        }
    }
}

impl<'a> Env<'a> {
    /// An environment backed by any lookup (tests pass a map).
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self {
            lookup: Box::new(lookup),
        }
    }

    /// A variable's value, trimmed; `None` when unset or blank.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A required variable.
    pub fn required(&self, name: &'static str) -> Result<String, SettingsError> {
        self.get(name).ok_or(SettingsError::Missing(name))
    }

    /// An optional number with a default and a lower bound.
    pub fn number<T>(&self, name: &'static str, default: T, min: T) -> Result<T, SettingsError>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(value) => match value.parse::<T>() {
                Ok(parsed) if parsed >= min => Ok(parsed),
                _ => Err(SettingsError::Invalid {
                    name,
                    value,
                    problem: format!("expected a whole number of at least {min}"),
                }),
            },
        }
    }

    /// An optional number without a default, with a lower bound.
    pub fn optional_number<T>(&self, name: &'static str, min: T) -> Result<Option<T>, SettingsError>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.number(name, min, min).map(Some),
        }
    }

    /// An optional number with a default and inclusive bounds.
    pub fn bounded_number<T>(
        &self,
        name: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, SettingsError>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        let value = self.number(name, default, min)?;
        if value > max {
            return Err(SettingsError::Invalid {
                name,
                value: value.to_string(),
                problem: format!("expected a whole number between {min} and {max}"),
            });
        }
        Ok(value)
    }

    /// An optional string with a default.
    pub fn string_or(&self, name: &'static str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }
}

/// Settings of `add_backend` and `list_backends`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSettings {
    /// `DYNAMODB_TABLE`.
    pub table: String,
}

impl TableSettings {
    /// Reads the settings.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        Ok(Self {
            table: env.required("DYNAMODB_TABLE")?,
        })
    }
}

/// Settings of `remove_backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveSettings {
    /// `DYNAMODB_TABLE`.
    pub table: String,
    /// `CONFIG_RENDERER_FUNCTION`: invoked after a removal.
    pub renderer_function: String,
}

impl RemoveSettings {
    /// Reads the settings.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        Ok(Self {
            table: env.required("DYNAMODB_TABLE")?,
            renderer_function: env.required("CONFIG_RENDERER_FUNCTION")?,
        })
    }
}

/// Settings of `list_clients`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientsTableSettings {
    /// `DYNAMODB_CLIENTS_TABLE`.
    pub table: String,
}

impl ClientsTableSettings {
    /// Reads the settings.
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
    /// Reads the settings.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        Ok(Self {
            table: env.required("DYNAMODB_CLIENTS_TABLE")?,
            renderer_function: env.required("CONFIG_RENDERER_FUNCTION")?,
        })
    }
}

/// Settings of `health_checker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSettings {
    /// `DYNAMODB_TABLE`.
    pub table: String,
    /// `STACK_NAME`: the healthy-node metric's dimension.
    pub stack_name: String,
    /// `DIFF_TOLERANCE` (default 10).
    pub tolerance: u64,
    /// `CLOUDWATCH_NAMESPACE`.
    pub namespace: String,
    /// `NGINX_CONFIG_BUCKET_NAME`: where the last rendered plan is recorded.
    pub bucket: String,
    /// `CONFIG_RENDERER_FUNCTION`.
    pub renderer_function: String,
    /// `PROBE_TIMEOUT_MS` (2000), `PROBE_CONCURRENCY` (512), `PROBE_MAX_BODY_BYTES` (65536).
    pub probe: ProbeSettings,
    /// `WRITE_CONCURRENCY` (16): table writes in flight at once.
    pub write_concurrency: usize,
    /// `ROW_REFRESH_SECS` (300): a row whose check found nothing new is still rewritten when
    /// its last write is this old (0 writes every row every round).
    pub row_refresh: Duration,
    /// `UNHEALTHY_AFTER` (2): consecutive soft failures before a healthy backend is unhealthy.
    pub unhealthy_after: u32,
    /// `HEALTHY_AFTER` (2): consecutive passed checks before an unhealthy backend is healthy.
    pub healthy_after: u32,
    /// `EXPECTED_CHAIN_ID` (unset): pins the chain every backend must be on.
    pub expected_chain_id: Option<u64>,
    /// `ROUNDS_PER_INVOCATION` (1, at most 60): rounds per scheduled event.
    pub rounds_per_invocation: u32,
    /// `ROUND_INTERVAL_SECS` (15): seconds between the starts of consecutive rounds.
    pub round_interval: Duration,
}

impl HealthCheckSettings {
    /// Reads the settings.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        let defaults = ProbeSettings::default();
        Ok(Self {
            table: env.required("DYNAMODB_TABLE")?,
            stack_name: env.required("STACK_NAME")?,
            tolerance: env.number("DIFF_TOLERANCE", DEFAULT_DIFF_TOLERANCE, 0)?,
            namespace: env.required("CLOUDWATCH_NAMESPACE")?,
            bucket: env.required("NGINX_CONFIG_BUCKET_NAME")?,
            renderer_function: env.required("CONFIG_RENDERER_FUNCTION")?,
            probe: ProbeSettings {
                timeout: Duration::from_millis(env.number("PROBE_TIMEOUT_MS", 2000, 1)?),
                concurrency: env.number("PROBE_CONCURRENCY", defaults.concurrency, 1)?,
                max_body_bytes: env.number("PROBE_MAX_BODY_BYTES", defaults.max_body_bytes, 256)?,
            },
            write_concurrency: env.number("WRITE_CONCURRENCY", 16, 1)?,
            row_refresh: Duration::from_secs(env.number(
                "ROW_REFRESH_SECS",
                DEFAULT_ROW_REFRESH_SECS,
                0,
            )?),
            unhealthy_after: env.number("UNHEALTHY_AFTER", DEFAULT_UNHEALTHY_AFTER, 1)?,
            healthy_after: env.number("HEALTHY_AFTER", DEFAULT_HEALTHY_AFTER, 1)?,
            expected_chain_id: env.optional_number("EXPECTED_CHAIN_ID", 1)?,
            rounds_per_invocation: env.bounded_number(
                "ROUNDS_PER_INVOCATION",
                DEFAULT_ROUNDS_PER_INVOCATION,
                1,
                MAX_ROUNDS_PER_INVOCATION,
            )?,
            round_interval: Duration::from_secs(env.number(
                "ROUND_INTERVAL_SECS",
                DEFAULT_ROUND_INTERVAL_SECS,
                1,
            )?),
        })
    }

    /// The judging rules these settings give.
    pub fn policy(&self) -> HealthPolicy {
        HealthPolicy {
            tolerance: self.tolerance,
            unhealthy_after: self.unhealthy_after,
            healthy_after: self.healthy_after,
            expected_chain_id: self.expected_chain_id,
        }
    }

    /// The rounds-per-invocation schedule these settings give.
    pub fn schedule(&self) -> RoundSchedule {
        RoundSchedule {
            rounds: self.rounds_per_invocation,
            interval: self.round_interval,
        }
    }
}

/// Settings of `config_renderer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendererSettings {
    /// `DYNAMODB_TABLE`.
    pub table: String,
    /// `NGINX_CONFIG_BUCKET_NAME`.
    pub bucket: String,
    /// `NGINX_LISTEN_PORT`, `NGINX_SOCKET_DIR`, `NGINX_CA_BUNDLE` and the proxy's timeouts.
    pub render: RenderOptions,
}

impl RendererSettings {
    /// Reads the settings.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        let defaults = RenderOptions::default();
        let render = RenderOptions {
            listen_port: env.number("NGINX_LISTEN_PORT", defaults.listen_port, 1)?,
            socket_dir: env.string_or("NGINX_SOCKET_DIR", &defaults.socket_dir),
            ca_bundle: env.string_or("NGINX_CA_BUNDLE", &defaults.ca_bundle),
            connect_timeout_secs: env.number(
                "PROXY_CONNECT_TIMEOUT_SECS",
                defaults.connect_timeout_secs,
                1,
            )?,
            read_timeout_secs: env.number(
                "PROXY_READ_TIMEOUT_SECS",
                defaults.read_timeout_secs,
                1,
            )?,
            retry_tries: env.number("PROXY_RETRY_TRIES", defaults.retry_tries, 1)?,
            retry_timeout_secs: env.number(
                "PROXY_RETRY_TIMEOUT_SECS",
                defaults.retry_timeout_secs,
                1,
            )?,
            max_fails: env.number("PROXY_MAX_FAILS", defaults.max_fails, 1)?,
            fail_timeout_secs: env.number(
                "PROXY_FAIL_TIMEOUT_SECS",
                defaults.fail_timeout_secs,
                1,
            )?,
            keepalive: env.number("PROXY_KEEPALIVE", defaults.keepalive, 1)?,
            websocket_timeout_secs: env.number(
                "PROXY_WEBSOCKET_TIMEOUT_SECS",
                defaults.websocket_timeout_secs,
                1,
            )?,
        };
        render.validate().map_err(|e| SettingsError::Invalid {
            name: "NGINX_SOCKET_DIR/NGINX_CA_BUNDLE",
            value: format!("{} / {}", render.socket_dir, render.ca_bundle),
            problem: e.to_string(),
        })?;
        Ok(Self {
            table: env.required("DYNAMODB_TABLE")?,
            bucket: env.required("NGINX_CONFIG_BUCKET_NAME")?,
            render,
        })
    }
}

/// Settings of `ecs_updater`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsUpdaterSettings {
    /// `TASK_DEFINITION_FAMILY`.
    pub family: String,
    /// `CLUSTER_ARN`.
    pub cluster: String,
    /// `ECS_SERVICE`: service name or ARN.
    pub service: String,
}

impl EcsUpdaterSettings {
    /// Reads the settings.
    pub fn from_env(env: &Env<'_>) -> Result<Self, SettingsError> {
        Ok(Self {
            family: env.required("TASK_DEFINITION_FAMILY")?,
            cluster: env.required("CLUSTER_ARN")?,
            service: env.required("ECS_SERVICE")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn health_check_settings_with_defaults() {
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("STACK_NAME", "s"),
            ("CLOUDWATCH_NAMESPACE", "ns"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("CONFIG_RENDERER_FUNCTION", "f"),
        ]);
        let settings =
            HealthCheckSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap();
        assert_eq!(settings.tolerance, 10);
        assert_eq!(settings.probe.timeout, Duration::from_secs(2));
        assert_eq!(settings.probe.concurrency, 512);
        assert_eq!(settings.policy(), HealthPolicy::default());
        assert_eq!((settings.unhealthy_after, settings.healthy_after), (2, 2));
        assert_eq!(settings.expected_chain_id, None);
        assert_eq!(settings.schedule(), RoundSchedule::default());
        assert_eq!(settings.schedule().rounds, 1);
        assert_eq!(settings.schedule().interval, Duration::from_secs(15));
    }

    #[test]
    fn health_model_and_schedule_variables() {
        let base = [
            ("DYNAMODB_TABLE", "t"),
            ("STACK_NAME", "s"),
            ("CLOUDWATCH_NAMESPACE", "ns"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("CONFIG_RENDERER_FUNCTION", "f"),
        ];
        let read = |extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            let vars = env(&pairs);
            let settings = HealthCheckSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned()));
            settings
        };
        let settings = read(&[
            ("DIFF_TOLERANCE", "3"),
            ("UNHEALTHY_AFTER", "1"),
            ("HEALTHY_AFTER", "4"),
            ("EXPECTED_CHAIN_ID", "137"),
            ("ROUNDS_PER_INVOCATION", "4"),
            ("ROUND_INTERVAL_SECS", "14"),
            ("ROW_REFRESH_SECS", "0"),
        ])
        .unwrap();
        assert_eq!(settings.row_refresh, Duration::ZERO);
        assert_eq!(
            read(&[]).unwrap().row_refresh,
            Duration::from_secs(DEFAULT_ROW_REFRESH_SECS)
        );
        assert_eq!(
            settings.policy(),
            HealthPolicy {
                tolerance: 3,
                unhealthy_after: 1,
                healthy_after: 4,
                expected_chain_id: Some(137),
            }
        );
        assert_eq!(
            settings.schedule(),
            RoundSchedule {
                rounds: 4,
                interval: Duration::from_secs(14)
            }
        );
        for (name, value) in [
            ("UNHEALTHY_AFTER", "0"),
            ("HEALTHY_AFTER", "0"),
            ("EXPECTED_CHAIN_ID", "0"),
            ("EXPECTED_CHAIN_ID", "mainnet"),
            ("ROUNDS_PER_INVOCATION", "0"),
            ("ROUNDS_PER_INVOCATION", "61"),
            ("ROUND_INTERVAL_SECS", "0"),
            ("ROW_REFRESH_SECS", "-1"),
        ] {
            let err = read(&[(name, value)]).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let vars = env(&[("DYNAMODB_TABLE", "t"), ("STACK_NAME", "  ")]);
        let err =
            HealthCheckSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable STACK_NAME is not set"
        );

        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("STACK_NAME", "s"),
            ("DIFF_TOLERANCE", "-1"),
        ]);
        let err =
            HealthCheckSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable DIFF_TOLERANCE=\"-1\" is invalid"),
            "{err}"
        );
    }

    #[test]
    fn renderer_settings_refuse_unsafe_paths() {
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("NGINX_SOCKET_DIR", "/tmp/x;y"),
        ]);
        assert!(RendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).is_err());
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("NGINX_LISTEN_PORT", "8080"),
        ]);
        let settings = RendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap();
        assert_eq!(settings.render.listen_port, 8080);
        assert_eq!(settings.render.websocket_timeout_secs, 3600);
        let vars = env(&[
            ("DYNAMODB_TABLE", "t"),
            ("NGINX_CONFIG_BUCKET_NAME", "b"),
            ("PROXY_WEBSOCKET_TIMEOUT_SECS", "600"),
        ]);
        let settings = RendererSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap();
        assert_eq!(settings.render.websocket_timeout_secs, 600);
    }

    #[test]
    fn client_settings_name_the_clients_table() {
        let vars = env(&[
            ("DYNAMODB_TABLE", "backends"),
            ("DYNAMODB_CLIENTS_TABLE", "clients"),
            ("CONFIG_RENDERER_FUNCTION", "f"),
        ]);
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
        let vars = env(&[
            ("DYNAMODB_TABLE", "backends"),
            ("CONFIG_RENDERER_FUNCTION", "f"),
        ]);
        let lookup = Env::from_fn(|k| vars.get(k).cloned());
        assert_eq!(
            ClientsTableSettings::from_env(&lookup).unwrap_err(),
            SettingsError::Missing("DYNAMODB_CLIENTS_TABLE")
        );
        let vars = env(&[("DYNAMODB_CLIENTS_TABLE", "clients")]);
        assert_eq!(
            ClientChangeSettings::from_env(&Env::from_fn(|k| vars.get(k).cloned())).unwrap_err(),
            SettingsError::Missing("CONFIG_RENDERER_FUNCTION")
        );
    }
}
