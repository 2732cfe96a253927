//! `state:` as written: what replicas of one fleet share, and where. Absent
//! (or without `redis`), every table stays inside the process: one
//! instance needs nothing else. With `redis`, admitted content, verdicts,
//! break-glass admissions, the policy revision in force and the recent
//! decisions are shared through it (the `fleet` module does that).
//!
//! May use: std, serde, `super::duration` and `super` (the error type and
//! its line finder). Must never use: any other module of the crate.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, ConfigError, Source};

/// Fleet settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateConfig {
    /// This replica's name in decision records, the dashboard and
    /// `/readyz` (default: `$HOSTNAME`, which Kubernetes sets to the pod
    /// name, else the host name).
    #[serde(default)]
    pub replica: Option<String>,
    /// Shared state on Redis (or Valkey). Without it: in-process tables.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
}

/// Where the shared state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS). A password here is
    /// refused: it belongs in `passwordFile`, so it never sits in the
    /// config (or a log line quoting it).
    pub url: String,
    /// Prepended to every key and stream name, so several fleets (or other
    /// applications) can share one server.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// TLS to the server: `true` (the system's and webpki roots) or
    /// `{caFile: PATH}`; a `rediss://` URL implies `true`.
    #[serde(default)]
    pub tls: Option<RedisTls>,
    /// A file holding the server's password (`requirepass`, or an ACL
    /// user's with `username`), read at start. Never logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The ACL user name, with `passwordFile`.
    #[serde(default)]
    pub username: Option<String>,
    /// The longest one Redis round trip may take before the replica acts
    /// without it (fail closed: see the README's fleet section).
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
    /// Recent decisions kept in the fleet's stream (approximately).
    #[serde(default = "default_decisions")]
    pub decisions: u64,
}

/// `tls:` under `redis`: on or off, or on with an extra CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RedisTls {
    Enabled(bool),
    Ca {
        #[serde(rename = "caFile")]
        ca_file: PathBuf,
    },
}

fn default_prefix() -> String {
    "portcullis:".to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_millis(250)
}
fn default_decisions() -> u64 {
    10_000
}

/// Longest Redis timeout accepted: beyond it a slow server would stall
/// every pull that consults it.
pub const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(10);
/// Most decisions the fleet's stream may keep.
pub const MAX_DECISIONS: u64 = 1_000_000;

impl RedisConfig {
    /// Whether the connection is TLS.
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("rediss://")
            || matches!(
                self.tls,
                Some(RedisTls::Enabled(true)) | Some(RedisTls::Ca { .. })
            )
    }

    /// The extra CA file, if one is configured.
    pub fn ca_file(&self) -> Option<&PathBuf> {
        match &self.tls {
            Some(RedisTls::Ca { ca_file }) => Some(ca_file),
            _ => None,
        }
    }

    /// The URL with the password (if any) hidden: what logs show.
    pub fn redacted_url(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://…@{host}"),
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }
}

/// Checks `state`: a name that fits a record, a `redis://`/`rediss://` URL
/// without a password, a sane prefix, timeout and stream length, and that
/// the files named exist.
/// A `redis://` or `rediss://` URL naming a host and no password,
/// consistent with `tls`.
fn validate_url(redis: &RedisConfig, at: &Source) -> Result<(), ConfigError> {
    let url = redis.url.as_str();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(at.invalid(
            "state.redis.url",
            "url",
            url,
            "expected redis://host:port[/db] or rediss://…",
        ));
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(at.invalid(
            "state.redis.url",
            "url",
            url,
            format!("scheme {scheme:?}: expected redis:// or rediss://"),
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err(at.invalid(
                "state.redis.url",
                "url",
                "",
                "the URL holds a password: put it in state.redis.passwordFile instead",
            ));
        }
    }
    if authority.rsplit('@').next().unwrap_or_default().is_empty() {
        return Err(at.invalid("state.redis.url", "url", "", "the URL names no host"));
    }
    if scheme == "rediss" && matches!(redis.tls, Some(RedisTls::Enabled(false))) {
        return Err(at.invalid(
            "state.redis.tls",
            "tls",
            "",
            "tls: false contradicts a rediss:// URL",
        ));
    }
    Ok(())
}

pub(super) fn validate(state: &StateConfig, at: &Source) -> Result<(), ConfigError> {
    if let Some(replica) = &state.replica {
        if replica.is_empty()
            || replica.len() > 253
            || !replica
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(at.invalid(
                "state.replica",
                "replica",
                replica,
                "1 to 253 characters: letters, digits, '-', '_', '.', ':'",
            ));
        }
    }
    let Some(redis) = &state.redis else {
        return Ok(());
    };
    validate_url(redis, at)?;
    if redis.key_prefix.is_empty()
        || redis.key_prefix.len() > 64
        || redis
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(at.invalid(
            "state.redis.keyPrefix",
            "keyPrefix",
            "",
            "1 to 64 characters, no spaces",
        ));
    }
    if redis.timeout.is_zero() || redis.timeout > MAX_REDIS_TIMEOUT {
        return Err(at.invalid(
            "state.redis.timeout",
            "timeout",
            "",
            format!("must be more than 0 and at most {MAX_REDIS_TIMEOUT:?}"),
        ));
    }
    if redis.decisions == 0 || redis.decisions > MAX_DECISIONS {
        return Err(at.invalid(
            "state.redis.decisions",
            "decisions",
            "",
            format!("must be between 1 and {MAX_DECISIONS}"),
        ));
    }
    if redis.username.is_some() && redis.password_file.is_none() {
        return Err(at.invalid(
            "state.redis.username",
            "username",
            "",
            "a username needs a passwordFile",
        ));
    }
    for (field, key, path) in [
        (
            "state.redis.passwordFile",
            "passwordFile",
            redis.password_file.as_ref(),
        ),
        ("state.redis.tls.caFile", "caFile", redis.ca_file()),
    ] {
        if let Some(path) = path {
            if !path.is_file() {
                return Err(at.invalid(
                    field,
                    key,
                    "",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn load(state: &str) -> Result<Config, String> {
        let text = format!("listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n{state}");
        Config::from_yaml(&text, Path::new("/")).map_err(|e| e.to_string())
    }

    #[test]
    fn absent_state_is_a_lone_instance() {
        let c = load("").unwrap();
        assert!(c.state.redis.is_none() && c.state.replica.is_none());
    }

    #[test]
    fn defaults_and_tls_forms() {
        let c = load("state:\n  redis: {url: redis://r:6379/0}\n").unwrap();
        let r = c.state.redis.unwrap();
        assert_eq!(r.key_prefix, "portcullis:");
        assert_eq!(r.timeout, std::time::Duration::from_millis(250));
        assert!(!r.uses_tls());
        let c = load("state:\n  redis: {url: redis://r, tls: true}\n").unwrap();
        assert!(c.state.redis.unwrap().uses_tls());
        let c = load("state:\n  redis: {url: rediss://r}\n").unwrap();
        assert!(c.state.redis.unwrap().uses_tls());
    }

    #[test]
    fn refused_with_the_field_named() {
        for (state, field, words) in [
            (
                "state:\n  redis: {url: 'redis://u:pw@r:6379'}\n",
                "state.redis.url",
                "passwordFile",
            ),
            (
                "state:\n  redis: {url: 'http://r'}\n",
                "state.redis.url",
                "redis://",
            ),
            (
                "state:\n  redis: {url: 'redis://'}\n",
                "state.redis.url",
                "no host",
            ),
            (
                "state:\n  redis: {url: 'rediss://r', tls: false}\n",
                "state.redis.tls",
                "contradicts",
            ),
            (
                "state:\n  redis: {url: 'redis://r', timeout: 0ms}\n",
                "state.redis.timeout",
                "more than 0",
            ),
            (
                "state:\n  redis: {url: 'redis://r', timeout: 1m}\n",
                "state.redis.timeout",
                "at most",
            ),
            (
                "state:\n  redis: {url: 'redis://r', keyPrefix: 'a b'}\n",
                "state.redis.keyPrefix",
                "no spaces",
            ),
            (
                "state:\n  redis: {url: 'redis://r', decisions: 0}\n",
                "state.redis.decisions",
                "between",
            ),
            (
                "state:\n  redis: {url: 'redis://r', username: u}\n",
                "state.redis.username",
                "passwordFile",
            ),
            (
                "state:\n  redis: {url: 'redis://r', passwordFile: /nonexistent/pw}\n",
                "state.redis.passwordFile",
                "not a readable file",
            ),
            ("state:\n  replica: 'a b'\n", "state.replica", "letters"),
            (
                "state:\n  redis: {url: 'redis://r', bogus: 1}\n",
                "bogus",
                "unknown field",
            ),
        ] {
            let e = load(state).expect_err(state);
            assert!(e.contains(field) && e.contains(words), "{state} → {e}");
        }
    }

    #[test]
    fn logs_never_see_a_password() {
        let c = load("state:\n  redis: {url: 'redis://user@r:6379'}\n").unwrap();
        assert_eq!(c.state.redis.unwrap().redacted_url(), "redis://…@r:6379");
    }
}
