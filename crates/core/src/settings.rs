//! Reading environment variables once at start: [`Env`] and its typed getters. Each function's
//! `<Name>Settings` lives in the function's module and reads its variables through [`Env`];
//! the variables are listed in docs/architecture.md, "Environment variables".

use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// A variable is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingsError {
    /// A required variable is not set (or empty).
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// A variable's value is not acceptable.
    #[error("environment variable {name}={value:?} is invalid: {problem}")]
    Invalid {
        /// The variable's name.
        name: &'static str,
        /// The value it holds.
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

    /// An optional `true` or `false` (ignoring ASCII case) with a default; any other value
    /// is an error.
    pub fn flag(&self, name: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) if value.eq_ignore_ascii_case("true") => Ok(true),
            Some(value) if value.eq_ignore_ascii_case("false") => Ok(false),
            Some(value) => Err(SettingsError::Invalid {
                name,
                value,
                problem: "expected true or false".into(),
            }),
        }
    }

    /// An optional IP address (v4 or v6); unset or blank: `None`.
    pub fn optional_ip(&self, name: &'static str) -> Result<Option<IpAddr>, SettingsError> {
        self.get(name)
            .map(|value| {
                value.parse().map_err(|_| SettingsError::Invalid {
                    name,
                    value,
                    problem: "expected an IP address such as 127.0.0.1 or ::1".into(),
                })
            })
            .transpose()
    }

    /// An optional string with a default.
    pub fn string_or(&self, name: &'static str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    /// An optional comma-separated list (entries trimmed, empty ones dropped); unset or blank:
    /// `default`.
    pub fn list_or(&self, name: &'static str, default: &[String]) -> Vec<String> {
        match self.get(name) {
            None => default.to_vec(),
            Some(value) => value
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A lookup over `pairs`, for the settings tests of every module.
    pub(crate) fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn getters_apply_defaults_and_bounds() {
        let map = vars(&[("N", " 7 "), ("BLANK", "  "), ("NEG", "-1"), ("S", "x")]);
        let env = Env::from_fn(|k| map.get(k).cloned());
        assert_eq!(env.get("BLANK"), None);
        assert_eq!(env.number("N", 1u32, 1), Ok(7));
        assert_eq!(env.number("UNSET", 3u32, 1), Ok(3));
        assert_eq!(env.optional_number("UNSET", 1u64), Ok(None));
        assert_eq!(env.optional_number("N", 1u64), Ok(Some(7)));
        assert_eq!(env.string_or("UNSET", "d"), "d");
        assert_eq!(env.string_or("S", "d"), "x");
        assert_eq!(env.required("BLANK"), Err(SettingsError::Missing("BLANK")));
        assert_eq!(env.flag("UNSET", true), Ok(true));
        assert_eq!(env.flag("BLANK", false), Ok(false));
        let flags = vars(&[("T", " True "), ("F", "false"), ("Y", "yes"), ("ONE", "1")]);
        let flags = Env::from_fn(|k| flags.get(k).cloned());
        assert_eq!(flags.flag("T", false), Ok(true));
        assert_eq!(flags.flag("F", true), Ok(false));
        for name in ["Y", "ONE"] {
            assert!(
                matches!(flags.flag(name, false), Err(SettingsError::Invalid { name: n, .. }) if n == name),
                "{name}"
            );
        }
        let default = vec!["d".to_owned()];
        assert_eq!(env.list_or("UNSET", &default), default);
        assert_eq!(env.list_or("BLANK", &default), default);
        let map = vars(&[("L", " a, b ,,c ")]);
        let lists = Env::from_fn(|k| map.get(k).cloned());
        assert_eq!(lists.list_or("L", &default), ["a", "b", "c"]);
        assert_eq!(
            env.number("NEG", 0i64, 0).unwrap_err().to_string(),
            "environment variable NEG=\"-1\" is invalid: expected a whole number of at least 0"
        );
        assert_eq!(
            env.bounded_number("N", 1u32, 1, 6).unwrap_err().to_string(),
            "environment variable N=\"7\" is invalid: expected a whole number between 1 and 6"
        );
    }
}
