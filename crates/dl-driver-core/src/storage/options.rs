//! Storage options: DLIO's `storage.storage_options` names, object_store's own config keys, and dl-driver's keys
//! (retries, backoff, in-flight requests, multipart part size). Environment variables (`AWS_*`, `AZURE_*`,
//! `GOOGLE_*`) are read by the backend builders; explicit options win over them.

use std::collections::BTreeMap;
use std::time::Duration;

use object_store::{BackoffConfig, RetryConfig};

use super::error::StorageError;
use crate::config::is_secret_key;

/// Default multipart part size: 8 MiB (S3 needs >= 5 MiB; O_DIRECT needs a multiple of the page size).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Default number of concurrent part uploads per writer.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

/// Option keys dl-driver handles itself, for every backend.
const OWN_KEYS: &[&str] = &[
    "max_in_flight",
    "part_size",
    "max_retries",
    "retry_timeout",
    "backoff_initial",
    "backoff_max",
    "s3_max_attempts",
];
/// Keys DLIO or MLPerf configs carry that select their own client library: accepted, without effect here.
const ACCEPTED_WITHOUT_EFFECT: &[&str] = &["storage_library", "prefetch_window", "uri_scheme"];

/// Options given for one store, as text (YAML values and keyword arguments are stringified).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageOptions {
    entries: BTreeMap<String, String>,
}

impl StorageOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` (later settings win).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.entries.insert(key.into(), value.into());
        self
    }

    /// Options from a YAML mapping such as `storage.storage_options`.
    pub fn from_yaml(map: &serde_yaml::Mapping) -> Result<Self, String> {
        let mut options = Self::new();
        for (k, v) in map {
            let key = k.as_str().ok_or_else(|| format!("option names must be strings, got {k:?}"))?;
            let value = match v {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                serde_yaml::Value::Number(n) => n.to_string(),
                _ => return Err(format!("option '{key}' must be a string, number or boolean, got a list or mapping")),
            };
            options.insert(key, value);
        }
        Ok(options)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The values of options and of `AWS_*`/`AZURE_*`/`GOOGLE_*` variables that name credentials, to be scrubbed
    /// from every message.
    pub fn secrets(&self) -> Vec<String> {
        let from_env = std::env::vars()
            .filter(|(k, _)| ["AWS_", "AZURE_", "GOOGLE_"].iter().any(|p| k.starts_with(p)) && is_secret_key(k));
        self.entries
            .iter()
            .filter(|(k, _)| is_secret_key(k))
            .map(|(_, v)| v.clone())
            .chain(from_env.map(|(_, v)| v))
            .collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The options dl-driver itself acts on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_in_flight: usize,
    pub part_size: usize,
    pub retry: RetryConfig,
}

impl Settings {
    /// Reads dl-driver's own keys; `uri` is for messages.
    pub fn from_options(uri: &str, options: &StorageOptions) -> Result<Self, StorageError> {
        let bad = |key: &str, problem: String| StorageError::Option { uri: uri.into(), key: key.into(), problem };
        let number = |key: &str| -> Result<Option<usize>, StorageError> {
            options
                .get(key)
                .map(|v| v.trim().parse::<usize>().map_err(|_| bad(key, format!("got '{v}', expected a whole number"))))
                .transpose()
        };
        let duration = |key: &str| -> Result<Option<Duration>, StorageError> {
            options.get(key).map(|v| parse_duration(v).map_err(|p| bad(key, p))).transpose()
        };
        let mut retry = RetryConfig::default();
        if let Some(n) = number("max_retries")? {
            retry.max_retries = n;
        }
        if let Some(attempts) = number("s3_max_attempts")? {
            if attempts == 0 {
                return Err(bad("s3_max_attempts", "got 0, expected at least 1 attempt".into()));
            }
            retry.max_retries = attempts - 1;
        }
        if let Some(d) = duration("retry_timeout")? {
            retry.retry_timeout = d;
        }
        let mut backoff = BackoffConfig::default();
        if let Some(d) = duration("backoff_initial")? {
            backoff.init_backoff = d;
        }
        if let Some(d) = duration("backoff_max")? {
            backoff.max_backoff = d;
        }
        retry.backoff = backoff;
        let max_in_flight = number("max_in_flight")?.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(bad("max_in_flight", "got 0, expected at least 1".into()));
        }
        let part_size = number("part_size")?.unwrap_or(DEFAULT_PART_SIZE);
        if part_size == 0 || part_size % super::buffer::ALIGN != 0 {
            return Err(bad("part_size", format!("got {part_size}, expected a positive multiple of 4096 bytes")));
        }
        Ok(Self { max_in_flight, part_size, retry })
    }
}

/// Whether `key` is one dl-driver handles itself rather than passing to the backend.
pub(crate) fn is_own_key(key: &str) -> bool {
    OWN_KEYS.contains(&key) || ACCEPTED_WITHOUT_EFFECT.contains(&key)
}

/// Seconds as a number (`30`, `0.5`) or with a unit (`100ms`, `30s`, `2m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("got '{text}', expected a duration like 30, 0.5, 100ms, 30s or 2m"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("got '{text}', expected a duration >= 0"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// Whether an endpoint URL points at this machine over plain HTTP (tests and local servers).
pub fn is_loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_settings_parse_and_validate() {
        let mut o = StorageOptions::new();
        o.insert("max_in_flight", "4").insert("part_size", "16777216").insert("s3_max_attempts", "3");
        o.insert("retry_timeout", "30s").insert("backoff_initial", "50ms");
        let s = Settings::from_options("s3://b", &o).unwrap();
        assert_eq!((s.max_in_flight, s.part_size, s.retry.max_retries), (4, 16 << 20, 2));
        assert_eq!(s.retry.retry_timeout, Duration::from_secs(30));
        assert_eq!(s.retry.backoff.init_backoff, Duration::from_millis(50));
        let mut bad = StorageOptions::new();
        bad.insert("part_size", "1000");
        let e = Settings::from_options("s3://b", &bad).unwrap_err().to_string();
        assert!(e.contains("part_size") && e.contains("s3://b") && e.contains("4096"), "{e}");
        let mut bad = StorageOptions::new();
        bad.insert("retry_timeout", "soon");
        assert!(Settings::from_options("s3://b", &bad).unwrap_err().to_string().contains("'soon'"));
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_http("http://127.0.0.1:9000"));
        assert!(is_loopback_http("http://localhost:10000/devstoreaccount1"));
        assert!(is_loopback_http("http://[::1]:9000/"));
        assert!(!is_loopback_http("https://127.0.0.1:9000"));
        assert!(!is_loopback_http("http://10.0.0.1:9000"));
        assert!(!is_loopback_http("http://127.evil.example:9000"));
    }

    #[test]
    fn secrets_are_collected() {
        let mut o = StorageOptions::new();
        o.insert("secret_access_key", "abcd1234").insert("region", "us-east-1");
        let secrets = o.secrets();
        assert!(
            secrets.contains(&"abcd1234".to_string()) && !secrets.contains(&"us-east-1".to_string()),
            "{secrets:?}"
        );
    }
}
