//! Reading one variable: the typed getters every section is written with.
//!
//! Each getter names its variable in its error and takes its default in the same text form
//! the variable has, so a default reads like the line of `.env.example` that documents it.
//! A blank value counts as unset everywhere except [`Env::header`], where an explicitly
//! empty value is how a header is turned off.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

/// The variables the settings are read from: the process environment, or a map in tests.
pub(super) struct Env<'a> {
    /// The key → value lookup `Settings::from_lookup` was given.
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Env { lookup }
    }

    /// The value of `key`; blank counts as unset.
    pub(super) fn get(&self, key: &str) -> Option<String> {
        (self.lookup)(key).filter(|v| !v.trim().is_empty())
    }

    /// The first of `key` and `alias` that is set (`S3_REGION`, then `AWS_REGION`).
    pub(super) fn either(&self, key: &str, alias: &str) -> Option<String> {
        self.get(key).or_else(|| self.get(alias))
    }

    /// The value of `key` as text, or `default`.
    pub(super) fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or_else(|| default.to_owned())
    }

    /// The value of `key` (or `default`) parsed as a `T`.
    pub(super) fn value<T>(&self, key: &str, default: &str) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let raw = self.string(key, default);
        raw.trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{key}={raw:?} is not valid: {e}"))
    }

    /// A whole number of seconds.
    pub(super) fn seconds(&self, key: &str, default: &str) -> anyhow::Result<Duration> {
        Ok(Duration::from_secs(self.value(key, default)?))
    }

    /// A whole number of milliseconds.
    pub(super) fn millis(&self, key: &str, default: &str) -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(self.value(key, default)?))
    }

    /// A per-minute limit: a whole number of at least 1 (turn a limiter off with its
    /// `_ENABLED` switch, not with 0).
    pub(super) fn per_minute(&self, key: &str, default: &str) -> anyhow::Result<u32> {
        let value: u32 = self.value(key, default)?;
        if value == 0 {
            bail!("{key} must be at least 1");
        }
        Ok(value)
    }

    /// A switch: 1/true/yes/on or 0/false/no/off, any case.
    pub(super) fn flag(&self, key: &str, default: bool) -> anyhow::Result<bool> {
        match self.get(key).map(|v| v.trim().to_lowercase()) {
            None => Ok(default),
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(v) => bail!("{key}={v:?} is not a boolean (true or false)"),
        }
    }

    /// A JSON value (the `CORS_*` lists).
    pub(super) fn json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        default: &str,
    ) -> anyhow::Result<T> {
        let raw = self.string(key, default);
        serde_json::from_str(&raw).with_context(|| format!("{key} must be JSON, got {raw:?}"))
    }

    /// A JSON object of key id → secret text (`SIGNATURE_KEYS`, `ENCRYPTION_KEYS`); unset
    /// is empty. The error says where the JSON breaks but never quotes it, as serde's
    /// messages can: the value is secret.
    pub(super) fn secret_map(
        &self,
        key: &str,
        what: &str,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let Some(raw) = self.get(key) else {
            return Ok(BTreeMap::new());
        };
        serde_json::from_str(&raw)
            .map_err(|e| anyhow::anyhow!("invalid at line {}, column {}", e.line(), e.column()))
            .with_context(|| format!("{key} must be a JSON object of key id to {what}"))
    }

    /// A header value with a default, where an explicitly empty value turns the header off.
    pub(super) fn header(&self, key: &str, default: &str) -> Option<String> {
        match (self.lookup)(key) {
            Some(value) if value.trim().is_empty() => None,
            Some(value) => Some(value.trim().to_owned()),
            None => Some(default.to_owned()),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Runs `read` on an environment holding exactly `pairs`.
    pub(in crate::settings) fn with_env<T>(
        pairs: &[(&str, &str)],
        read: impl FnOnce(&Env) -> T,
    ) -> T {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |key: &str| map.get(key).cloned();
        read(&Env::new(&lookup))
    }

    #[test]
    fn blank_is_unset_except_for_headers() {
        with_env(&[("A", "  "), ("H", "")], |env| {
            assert_eq!(env.get("A"), None);
            assert_eq!(env.string("A", "default"), "default");
            assert_eq!(env.header("H", "DENY"), None);
            assert_eq!(env.header("UNSET", "DENY").as_deref(), Some("DENY"));
        });
    }

    #[test]
    fn errors_name_the_variable_and_its_value() {
        with_env(&[("N", "ten"), ("B", "maybe"), ("L", "0")], |env| {
            let err = env.value::<u32>("N", "1").unwrap_err().to_string();
            assert!(err.starts_with("N=\"ten\" is not valid"), "{err}");
            let err = env.flag("B", false).unwrap_err().to_string();
            assert_eq!(err, "B=\"maybe\" is not a boolean (true or false)");
            let err = env.per_minute("L", "5").unwrap_err().to_string();
            assert_eq!(err, "L must be at least 1");
        });
    }

    #[test]
    fn switches_accept_the_usual_spellings() {
        let pairs = [("A", "Yes"), ("B", "off"), ("C", "1")];
        with_env(&pairs, |env| {
            assert!(env.flag("A", false).unwrap());
            assert!(!env.flag("B", true).unwrap());
            assert!(env.flag("C", false).unwrap());
            assert!(env.flag("UNSET", true).unwrap());
        });
    }

    #[test]
    fn a_broken_secret_map_is_reported_without_its_secret() {
        with_env(&[("KEYS", r#"{"k1": "s3cr3t-value""#)], |env| {
            let err = env.secret_map("KEYS", "secret").unwrap_err();
            assert_eq!(
                err.to_string(),
                "KEYS must be a JSON object of key id to secret"
            );
            assert!(!format!("{err:#} {err:?}").contains("s3cr3t"), "{err:#}");
        });
        with_env(&[("KEYS", r#""s3cr3t-value""#)], |env| {
            let err = env.secret_map("KEYS", "secret").unwrap_err();
            assert!(!format!("{err:#} {err:?}").contains("s3cr3t"), "{err:#}");
        });
    }
}
