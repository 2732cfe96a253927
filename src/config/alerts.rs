//! `alerts:` as written: webhooks, their filters and formats, queue and
//! retry settings, and the checks serde cannot make (URLs, empty filters,
//! zero sizes). Delivering alerts is the `alerts` module's job.
//!
//! ```yaml
//! alerts:
//!   queueSize: 1000        # per webhook, denials and dry runs; a full queue drops (counted)
//!   maxRetries: 5          # on connection errors, timeouts, 5xx and 429
//!   coalesce: 60s          # repeats of one denial within this window: one alert with a count
//!   webhooks:
//!     - url: https://hooks.slack.com/services/T000/B000/XXXX
//!       format: slack      # or json (the default)
//!       on: [deny, breakglass, reload]   # default [deny]
//!       timeout: 5s        # per attempt (connect + response)
//!       coalesce: 5m       # optional, overrides alerts.coalesce for this webhook
//!       signingSecretFile: /run/secrets/webhook-hmac   # optional: sign each body (HMAC-SHA256)
//! ```
//!
//! Webhook URLs often carry a token (Slack's do, in the path), so they are
//! never logged, printed or put in an error in full: only
//! `scheme://host[:port]` ([`redact_url`]).
//!
//! May use: std, serde, http, `super::duration`. Must never use: any other
//! module of the crate (in particular not the `alerts` or
//! `audit` modules, which build on these shapes).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use super::duration;

/// Default capacity of each webhook's normal lane (denials, dry runs).
pub const DEFAULT_QUEUE_SIZE: usize = 1000;
/// Default coalescing window for repeated denials.
pub const DEFAULT_COALESCE: Duration = Duration::from_secs(60);
/// Default number of retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `alerts:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertsConfig {
    /// Where alerts go.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Capacity of each webhook's normal lane (denials, dry runs); past
    /// it alerts are dropped.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Retries after the first attempt, on connection errors, timeouts,
    /// 5xx and 429.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Repeated denials (and dry-run would-denials) of one image by one
    /// rule within this window are sent as one alert with a count; `0s`
    /// sends every one on its own.
    #[serde(
        default = "default_coalesce",
        deserialize_with = "duration::deserialize"
    )]
    pub coalesce: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            queue_size: DEFAULT_QUEUE_SIZE,
            max_retries: DEFAULT_MAX_RETRIES,
            coalesce: DEFAULT_COALESCE,
        }
    }
}

/// One webhook.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the alert is POSTed to. May hold a
    /// token, so it is only ever shown as `scheme://host[:port]`.
    pub url: String,
    /// Body format.
    #[serde(default)]
    pub format: AlertFormat,
    /// Which decisions are sent.
    #[serde(default = "default_on")]
    pub on: Vec<AlertEvent>,
    /// Per-attempt timeout (connect, send, response).
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
    /// This webhook's coalescing window, instead of `alerts.coalesce`.
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub coalesce: Option<Duration>,
    /// A file holding the shared secret every body is signed with
    /// (HMAC-SHA256, `X-Portcullis-Signature`); relative to the
    /// configuration file. Only the path is kept here: the secret is read
    /// by the `alerts` module and never shown.
    #[serde(default)]
    pub signing_secret_file: Option<PathBuf>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("format", &self.format)
            .field("on", &self.on)
            .field("timeout", &self.timeout)
            .field("coalesce", &self.coalesce)
            .field("signing_secret_file", &self.signing_secret_file)
            .finish()
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// `{"event": "...", "record": <the audit record>}`.
    #[default]
    Json,
    /// Slack incoming-webhook message: `{"text": "...", "blocks": [...]}`.
    Slack,
}

/// What an alert is about; also a webhook's filter vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertEvent {
    /// A pull denied by policy (verdict `deny`).
    Deny,
    /// A dry-run would-deny (verdict `dryrun-deny`), served anyway.
    Dryrun,
    /// A denied pull served because the client used break-glass.
    Breakglass,
    /// A policy reload that failed (the previous policy stays in force).
    Reload,
}

impl AlertEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::Deny => "deny",
            AlertEvent::Dryrun => "dryrun",
            AlertEvent::Breakglass => "breakglass",
            AlertEvent::Reload => "reload",
        }
    }

    /// Whether the event goes on the urgent lane, which denials never
    /// enter: break-glass uses and failed reloads.
    pub fn urgent(self) -> bool {
        matches!(self, AlertEvent::Breakglass | AlertEvent::Reload)
    }
}

fn default_queue_size() -> usize {
    DEFAULT_QUEUE_SIZE
}

fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}

fn default_on() -> Vec<AlertEvent> {
    vec![AlertEvent::Deny]
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_coalesce() -> Duration {
    DEFAULT_COALESCE
}

impl AlertsConfig {
    /// Checks what serde cannot: URLs, non-empty filters, non-zero sizes.
    /// Errors name the offending field (`alerts.webhooks[1].url: ...`) and
    /// never include a URL's path or query.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_size == 0 {
            return Err("alerts.queueSize: must be at least 1".into());
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = format!("alerts.webhooks[{i}]");
            parse_webhook_url(&w.url).map_err(|e| format!("{at}.url: {e}"))?;
            if w.on.is_empty() {
                return Err(format!(
                    "{at}.on: must name at least one of deny, dryrun, breakglass, reload"
                ));
            }
            if w.timeout.is_zero() {
                return Err(format!("{at}.timeout: must be more than 0"));
            }
        }
        Ok(())
    }
}

/// Parses a webhook URL: absolute `http` or `https`, with a host, without
/// user-info. Errors do not repeat the URL.
pub fn parse_webhook_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| "not a valid URL (expected http://… or https://…)".to_owned())?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must be an http:// or https:// URL".into()),
    }
    let Some(authority) = uri.authority() else {
        return Err("must name a host".into());
    };
    if authority.as_str().contains('@') {
        return Err("user-info (user:password@) is not supported in webhook URLs".into());
    }
    if authority.host().is_empty() {
        return Err("must name a host".into());
    }
    Ok(uri)
}

/// `scheme://host[:port]` of a URL, for logs; `<invalid url>` otherwise.
pub fn redact_url(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => match uri.port_u16() {
                Some(port) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            },
            _ => "<invalid url>".into(),
        },
        Err(_) => "<invalid url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AlertsConfig, String> {
        let c: AlertsConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn config_defaults() {
        let c = parse("webhooks:\n  - url: https://hooks.example/x\n").unwrap();
        assert_eq!(c.queue_size, DEFAULT_QUEUE_SIZE);
        assert_eq!(c.max_retries, DEFAULT_MAX_RETRIES);
        let w = &c.webhooks[0];
        assert_eq!(w.format, AlertFormat::Json);
        assert_eq!(w.on, vec![AlertEvent::Deny]);
        assert_eq!(w.timeout, Duration::from_secs(5));
        assert_eq!(parse("{}").unwrap(), AlertsConfig::default());
    }

    #[test]
    fn config_full() {
        let c = parse(
            "queueSize: 10\nmaxRetries: 2\nwebhooks:\n  - url: http://127.0.0.1:9/hook\n    \
             format: slack\n    on: [dryrun, breakglass]\n    timeout: 250ms\n",
        )
        .unwrap();
        assert_eq!(c.queue_size, 10);
        assert_eq!(c.max_retries, 2);
        let w = &c.webhooks[0];
        assert_eq!(w.format, AlertFormat::Slack);
        assert_eq!(w.on, vec![AlertEvent::Dryrun, AlertEvent::Breakglass]);
        assert_eq!(w.timeout, Duration::from_millis(250));
    }

    #[test]
    fn config_coalesce_and_reload() {
        let c = parse("webhooks:\n  - url: https://h/x\n").unwrap();
        assert_eq!(c.coalesce, DEFAULT_COALESCE);
        assert_eq!(c.coalesce, Duration::from_secs(60));
        assert_eq!(c.webhooks[0].coalesce, None);
        let c = parse(
            "coalesce: 0s\nwebhooks:\n  - url: https://h/x\n    coalesce: 5m\n    \
             on: [reload, deny]\n  - url: https://h/y\n",
        )
        .unwrap();
        assert_eq!(c.coalesce, Duration::ZERO);
        assert_eq!(c.webhooks[0].coalesce, Some(Duration::from_secs(300)));
        assert_eq!(c.webhooks[0].on, vec![AlertEvent::Reload, AlertEvent::Deny]);
        assert_eq!(c.webhooks[1].coalesce, None);
        assert_eq!(c.webhooks[1].signing_secret_file, None);
        let c =
            parse("webhooks:\n  - url: https://h/x\n    signingSecretFile: /run/s/hmac\n").unwrap();
        assert_eq!(
            c.webhooks[0].signing_secret_file.as_deref(),
            Some(std::path::Path::new("/run/s/hmac"))
        );
        assert!(parse("coalesce: 60\n")
            .unwrap_err()
            .contains("invalid duration"));
        assert!(AlertEvent::Breakglass.urgent() && AlertEvent::Reload.urgent());
        assert!(!AlertEvent::Deny.urgent() && !AlertEvent::Dryrun.urgent());
    }

    #[test]
    fn config_rejects() {
        let bad = |yaml: &str, want: &str| {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml:?}: {e}");
        };
        bad("webhooks:\n  - url: ftp://h/x\n", "webhooks[0].url");
        bad("webhooks:\n  - url: /relative\n", "webhooks[0].url");
        bad("webhooks:\n  - url: 'not a url'\n", "webhooks[0].url");
        bad("webhooks:\n  - url: https://u:p@h/x\n", "user-info");
        bad(
            "webhooks:\n  - url: https://h/x\n    on: [allow]\n",
            "unknown variant",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    on: []\n",
            "webhooks[0].on",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    format: xml\n",
            "unknown variant",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    timeout: 0s\n",
            "timeout",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    timeout: 5\n",
            "invalid duration",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    extra: 1\n",
            "unknown field",
        );
        bad("queueSize: 0\n", "queueSize");
        bad("webhook: []\n", "unknown field");
        // Errors never echo the URL (it may hold a token).
        let e = parse("webhooks:\n  - url: ftp://h/T0KEN\n").unwrap_err();
        assert!(!e.contains("T0KEN"), "{e}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T0/B0/SECRET"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/hook?token=SECRET"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(redact_url("::"), "<invalid url>");
        let c = parse("webhooks:\n  - url: https://h.example/SECRET\n").unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("SECRET") && debug.contains("https://h.example"));
    }
}
