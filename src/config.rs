//! Configuration: the YAML file's shape, its validation, and the embedded
//! default.
//!
//! Loading is `parse` (serde, unknown fields are errors, syntax and type
//! errors carry a line) followed by `validate` (cross-field rules and files
//! the config points at). Nothing here does network I/O.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::policy::{AttestorDoc, Policy, PolicyDoc};

/// The configuration `serve` uses without `--config`: the same text as
/// `config/portcullis.yaml`.
pub const DEFAULT_CONFIG: &str = include_str!("../config/portcullis.yaml");

/// A configuration that failed to load, naming the field and, where it can
/// be known, the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{location}{message}")]
    Parse { location: String, message: String },
    #[error("{}{field}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        field: String,
        line: Option<usize>,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Address the registry API and health endpoints listen on.
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The registries this proxy fronts.
    pub upstreams: Vec<UpstreamConfig>,
    /// Upstream, client-connection, verification and shutdown timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Caps on client connections, upstream blob fetches and the evidence
    /// a verification may read.
    #[serde(default)]
    pub limits: Limits,
    /// The admission policy (Binary Authorization's policy YAML). Without
    /// it (and without `policyFile`), every image is served unchecked.
    #[serde(default)]
    pub policy: Option<PolicyDoc>,
    /// A file holding the policy instead: either a bare BinAuthz policy
    /// (as `gcloud container binauthz policy export` prints it) or a
    /// document with `policy:` and optionally `attestors:`.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// Attestors: named holders of public keys.
    #[serde(default)]
    pub attestors: Vec<AttestorDoc>,
    /// Verdict cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// A second listener for operators: `/metrics`, `/-/ui`, `/-/api/…`,
    /// `/healthz`, `/readyz`. With it, the registry port serves only `/v2/`.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The audit trail: one JSON line per decision.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Webhooks notified of denials (and optionally dry-run and
    /// break-glass decisions).
    #[serde(default)]
    pub alerts: Option<crate::alerts::AlertsConfig>,
    /// Break-glass: pulling a denied image with a credential and a
    /// justification, audited and alerted. Off by default.
    #[serde(default)]
    pub break_glass: Option<crate::breakglass::BreakGlassConfig>,
    /// Evidence kept outside the registry: a directory of BinAuthz
    /// occurrences, cosign signatures, DSSE envelopes and sigstore bundles,
    /// indexed by the digest their signed content names.
    #[serde(default)]
    pub attestation_store: Option<AttestationStoreConfig>,
}

fn default_store_path() -> PathBuf {
    PathBuf::from("attestations")
}

/// The local attestation store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AttestationStoreConfig {
    /// The directory (`attestations` beside the config file when not
    /// given); files are picked up and re-read when they change, without a
    /// restart.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// A file holding a bearer token (one line, at least 16 visible ASCII
    /// characters) that every admin endpoint except `/healthz`, `/readyz`
    /// and the dashboard page itself then requires. Read at start.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// When audit lines reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Every line is synced before the next one is written.
    Always,
    /// Lines are synced at least every `fsyncInterval`.
    Interval,
}

/// What happens when the audit queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// The request waits for room: nothing is lost, pulls slow down.
    Block,
    /// The record is dropped and counted (`portcullis_audit_dropped_total`).
    Drop,
}

/// Audit trail settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// File to append to; without it, lines go to stdout.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "default_fsync")]
    pub fsync: FsyncMode,
    #[serde(default = "default_fsync_interval", deserialize_with = "duration")]
    pub fsync_interval: Duration,
    /// Rotate when the file reaches this size (`0`: never).
    #[serde(default = "default_max_size")]
    pub max_size_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` … `.N`).
    #[serde(default = "default_max_files")]
    pub max_files: u32,
    /// Records waiting to be written, at most.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    #[serde(default = "default_on_full")]
    pub on_full: OnFull,
    /// Audit files (and rotated ones) are created `0640` instead of `0600`,
    /// for a log shipper running in the file's group. The trail names
    /// client addresses, user agents and break-glass justifications, so it
    /// is never world-readable.
    #[serde(default)]
    pub group_readable: bool,
}

fn default_fsync() -> FsyncMode {
    FsyncMode::Interval
}
fn default_fsync_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_size() -> u64 {
    100 * 1024 * 1024
}
fn default_max_files() -> u32 {
    5
}
fn default_queue_size() -> usize {
    10_000
}
fn default_on_full() -> OnFull {
    OnFull::Block
}

/// Verdict cache settings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CacheConfig {
    /// How long an allow verdict is reused.
    #[serde(deserialize_with = "duration")]
    pub allow_ttl: Duration,
    /// How long a deny verdict is reused (short, so a newly signed image
    /// pulls soon after signing).
    #[serde(deserialize_with = "duration")]
    pub deny_ttl: Duration,
    /// Most verdicts kept; the least recently used are evicted past it.
    pub max_entries: u64,
    /// How long a tag's resolution (tag → manifest bytes, per Accept) is
    /// reused. `0s` (the default) asks the upstream on every request, so a
    /// moved tag is seen at once.
    #[serde(deserialize_with = "duration")]
    pub tag_ttl: Duration,
    /// Memory for manifests fetched by digest (immutable, so a warm
    /// by-digest request needs no upstream round trip); `0` disables it.
    pub manifest_cache_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            allow_ttl: Duration::from_secs(600),
            deny_ttl: Duration::from_secs(30),
            max_entries: 100_000,
            tag_ttl: Duration::ZERO,
            manifest_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The document a `policyFile` may hold when it is not a bare policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFileDoc {
    policy: PolicyDoc,
    #[serde(default)]
    attestors: Vec<AttestorDoc>,
}

/// PEM files for serving HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One upstream registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamConfig {
    /// Canonical registry host (`docker.io`, `ghcr.io`, `127.0.0.1:5001`):
    /// what image references, policies and signatures name.
    pub registry: String,
    /// Where to reach it; defaults to `https://<registry>`
    /// (`https://registry-1.docker.io` for `docker.io`).
    #[serde(default)]
    pub url: Option<String>,
    /// Optional first path component routing `/v2/<prefix>/<repo>` here.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Requests that name no prefix and no `?ns=` go to the default upstream.
    #[serde(default)]
    pub default: bool,
    /// Credentials for Basic auth and for bearer-token endpoints.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Extra CA certificates (PEM) trusted for this upstream, in addition to
    /// the webpki roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Upstream credentials. The password lives in a file so it never sits in
/// the config itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    pub username: String,
    pub password_file: PathBuf,
    /// Token endpoints on other hosts that may receive these credentials
    /// (e.g. `https://auth.docker.io/token` for Docker Hub). Credentials
    /// go to a bearer realm only on the upstream's own origin (scheme,
    /// host and port) or on one listed here; any other realm is asked for
    /// an anonymous token. An `https` upstream cannot list `http` realms.
    #[serde(default)]
    pub token_realms: Vec<String>,
}

/// Timeouts, written as `500ms`, `10s`, `2m` or `1h`.
///
/// Every wait on a peer is bounded by one of these: silence from an
/// upstream (`read`), a client that stops reading (`clientStall`), a
/// connection that carries no request (`handshake`, `idle`), and the total
/// time of a manifest fetch, an evidence lookup and a verification
/// (`manifest`, `evidence`, `verification`), which a live but trickling
/// upstream cannot stretch.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Timeouts {
    /// Establishing a TCP (and TLS) connection to an upstream.
    #[serde(deserialize_with = "duration")]
    pub connect: Duration,
    /// Waiting for an upstream's response headers, and the longest silence
    /// tolerated while reading an upstream body.
    #[serde(deserialize_with = "duration")]
    pub read: Duration,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    #[serde(deserialize_with = "duration")]
    pub shutdown: Duration,
    /// A client connection with no request in flight is closed after this
    /// long (HTTP/1.1 keep-alive and HTTP/2 alike; an HTTP/2 connection
    /// gets a GOAWAY first). Also bounds reading an HTTP/1.1 request's
    /// headers.
    #[serde(deserialize_with = "duration")]
    pub idle: Duration,
    /// From accepting a client connection to its first request: the TLS
    /// handshake, HTTP version detection, the HTTP/2 preface and the first
    /// request's headers together.
    #[serde(deserialize_with = "duration")]
    pub handshake: Duration,
    /// Total time of one upstream manifest fetch (or tag list, or
    /// referrers list), headers and body.
    #[serde(deserialize_with = "duration")]
    pub manifest: Duration,
    /// Total time of one evidence lookup (`.sig`, `.att`, referrers and
    /// the blobs they name) at one signature location.
    #[serde(deserialize_with = "duration")]
    pub evidence: Duration,
    /// Total time of one verification: its evidence lookups and, for a
    /// manifest requested by digest, the manifest fetch that runs
    /// alongside them. Every request joined to the verification gets its
    /// outcome.
    #[serde(deserialize_with = "duration")]
    pub verification: Duration,
    /// A response stream whose client accepts no bytes for this long is
    /// reset (HTTP/2 `RST_STREAM`; HTTP/1.1 closes the connection), and the
    /// upstream fetch behind it is dropped. Unset: `read`, so one setting
    /// bounds silence on both sides.
    #[serde(deserialize_with = "optional_duration")]
    pub client_stall: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(60),
            shutdown: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            handshake: Duration::from_secs(10),
            manifest: Duration::from_secs(60),
            evidence: Duration::from_secs(60),
            verification: Duration::from_secs(120),
            client_stall: None,
        }
    }
}

impl Timeouts {
    /// `clientStall`, or `read` when it is not set.
    pub fn client_stall(&self) -> Duration {
        self.client_stall.unwrap_or(self.read)
    }
}

/// The largest value a `limits` key takes: far above any deployment, and
/// below what the semaphores that enforce the limits can count.
pub const MAX_LIMIT: usize = 1 << 24;

/// Caps that keep one client (or many) from taking every connection or
/// every upstream fetch.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Limits {
    /// Concurrent client connections, in total; past it new connections
    /// are closed at once rather than queued without bound.
    pub connections: usize,
    /// Concurrent client connections from one IP address, so that one
    /// host cannot take all of `connections`. Behind a load balancer that
    /// does not keep client addresses, raise it to `connections`.
    pub connections_per_client: usize,
    /// Concurrent upstream blob fetches, in total (each holds an upstream
    /// connection while it streams).
    pub upstream_fetches: usize,
    /// Concurrent upstream blob fetches per client connection (HTTP/2
    /// multiplexes many on one): more wait for a slot.
    pub upstream_fetches_per_connection: usize,
    /// Evidence bytes one verification may read (signature and
    /// attestation manifests, payloads, envelopes, bundles, referrers),
    /// each distinct digest counted once. An image whose evidence needs
    /// more is denied with "evidence exceeds limits" (cached for the deny
    /// TTL only). 8 MiB holds dozens of real signatures and provenance
    /// attestations; an upstream that lists one 4 MiB blob a hundred
    /// times cannot make a verification read it more than once.
    pub evidence_bytes: u64,
    /// Evidence bytes held by all verifications at once; verifications
    /// wait for room past it. Bounds memory whatever the number of
    /// concurrent cold pulls.
    pub evidence_bytes_in_flight: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 4096,
            connections_per_client: 256,
            upstream_fetches: 512,
            upstream_fetches_per_connection: 16,
            evidence_bytes: 8 * 1024 * 1024,
            evidence_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Parses `250ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 10s, 5m, 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration {text:?}: unit must be ms, s, m or h"
        )),
    }
}

impl UpstreamConfig {
    /// The base URL requests go to.
    pub fn base_url(&self) -> String {
        match &self.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.registry == "docker.io" => "https://registry-1.docker.io".to_owned(),
            None => format!("https://{}", self.registry),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_yaml(&text, base)
    }

    /// Parses and validates config text; relative file paths in it are
    /// resolved against `base`.
    pub fn from_yaml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            location: e
                .location()
                .map(|l| format!("line {} column {}: ", l.line(), l.column()))
                .unwrap_or_default(),
            message: e.to_string(),
        })?;
        config.resolve_paths(base);
        config.validate(text)?;
        config.compile_policy()?;
        Ok(config)
    }

    /// Compiles the configured policy (inline or from `policyFile`); the
    /// allow-all policy when none is configured.
    pub fn compile_policy(&self) -> Result<Policy, ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            field,
            line: None,
            message,
        };
        let (doc, mut attestors) = match (&self.policy, &self.policy_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "policyFile".into(),
                    "set either policy or policyFile, not both".into(),
                ))
            }
            (None, None) => {
                if !self.attestors.is_empty() {
                    tracing::warn!("attestors are configured but there is no policy");
                }
                return Ok(Policy::allow_all());
            }
            (Some(doc), None) => (doc.clone(), Vec::new()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "policyFile".into(),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let parse_error = |e: serde_yaml_ng::Error| ConfigError::Parse {
                    location: format!(
                        "{}{}: ",
                        path.display(),
                        e.location()
                            .map(|l| format!(" line {} column {}", l.line(), l.column()))
                            .unwrap_or_default()
                    ),
                    message: e.to_string(),
                };
                let value: serde_yaml_ng::Value =
                    serde_yaml_ng::from_str(&text).map_err(parse_error)?;
                if value.get("policy").is_some() {
                    let file: PolicyFileDoc =
                        serde_yaml_ng::from_str(&text).map_err(parse_error)?;
                    (file.policy, file.attestors)
                } else {
                    let doc: PolicyDoc = serde_yaml_ng::from_str(&text).map_err(parse_error)?;
                    (doc, Vec::new())
                }
            }
        };
        attestors.extend(self.attestors.iter().cloned());
        Policy::compile(&doc, &attestors).map_err(|e| ConfigError::Invalid {
            field: e.field,
            line: None,
            message: e.message,
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(path) = &mut self.policy_file {
            fix(path);
        }
        if let Some(store) = &mut self.attestation_store {
            fix(&mut store.path);
        }
        if let Some(path) = self.audit.as_mut().and_then(|a| a.path.as_mut()) {
            fix(path);
        }
        if let Some(bg) = &mut self.break_glass {
            for c in &mut bg.credentials {
                fix(&mut c.token_file);
            }
        }
        if let Some(path) = self.admin.as_mut().and_then(|a| a.token_file.as_mut()) {
            fix(path);
        }
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        for upstream in &mut self.upstreams {
            if let Some(auth) = &mut upstream.auth {
                fix(&mut auth.password_file);
            }
            if let Some(ca) = &mut upstream.ca_file {
                fix(ca);
            }
        }
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let invalid =
            |field: String, key: &str, value: &str, message: String| ConfigError::Invalid {
                line: line_of(text, key, value),
                field,
                message,
            };
        if self.upstreams.is_empty() {
            return Err(invalid(
                "upstreams".into(),
                "upstreams",
                "",
                "at least one upstream is required".into(),
            ));
        }
        let limits = &self.limits;
        if limits.evidence_bytes < 64 * 1024 {
            return Err(invalid(
                "limits.evidenceBytes".into(),
                "evidenceBytes",
                "",
                "must be at least 65536 (64 KiB): real signatures need that much".into(),
            ));
        }
        if limits.evidence_bytes_in_flight < limits.evidence_bytes {
            return Err(invalid(
                "limits.evidenceBytesInFlight".into(),
                "evidenceBytesInFlight",
                "",
                "must be at least limits.evidenceBytes".into(),
            ));
        }
        let mut registries = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut defaults = 0;
        for (i, u) in self.upstreams.iter().enumerate() {
            let field = |name: &str| format!("upstreams[{i}].{name}");
            if !valid_registry_host(&u.registry) {
                return Err(invalid(
                    field("registry"),
                    "registry",
                    &u.registry,
                    format!(
                        "{:?} is not a registry host name (expected e.g. ghcr.io or 127.0.0.1:5001)",
                        u.registry
                    ),
                ));
            }
            if crate::oci::DOCKER_HUB_ALIASES.contains(&u.registry.as_str()) {
                return Err(invalid(
                    field("registry"),
                    "registry",
                    &u.registry,
                    format!(
                        "{:?} is Docker Hub, which Portcullis names docker.io (as image \
                         references, policies and signatures do): write registry: docker.io \
                         (its default url is https://registry-1.docker.io)",
                        u.registry
                    ),
                ));
            }
            if !registries.insert(u.registry.as_str()) {
                return Err(invalid(
                    field("registry"),
                    "registry",
                    &u.registry,
                    format!("registry {:?} is configured twice", u.registry),
                ));
            }
            if let Some(url) = &u.url {
                if let Err(message) = check_upstream_url(url) {
                    return Err(invalid(field("url"), "url", url, message));
                }
            }
            if let Some(prefix) = &u.prefix {
                if crate::oci::validate_name(prefix).is_err() || prefix.contains('/') {
                    return Err(invalid(
                        field("prefix"),
                        "prefix",
                        prefix,
                        format!("{prefix:?} must be one lowercase repository path component"),
                    ));
                }
                if !prefixes.insert(prefix.as_str()) {
                    return Err(invalid(
                        field("prefix"),
                        "prefix",
                        prefix,
                        format!("prefix {prefix:?} is used by two upstreams"),
                    ));
                }
            }
            if u.default {
                defaults += 1;
                if defaults > 1 {
                    return Err(invalid(
                        field("default"),
                        "default",
                        "",
                        "only one upstream can be the default".into(),
                    ));
                }
            }
            if let Some(auth) = &u.auth {
                let https = u.base_url().starts_with("https://");
                for (j, realm) in auth.token_realms.iter().enumerate() {
                    if let Err(message) = check_token_realm(realm, https) {
                        return Err(invalid(
                            field(&format!("auth.tokenRealms[{j}]")),
                            "tokenRealms",
                            "",
                            message,
                        ));
                    }
                }
                if let Err(e) = std::fs::metadata(&auth.password_file) {
                    return Err(invalid(
                        field("auth.passwordFile"),
                        "passwordFile",
                        "",
                        format!("cannot read {}: {e}", auth.password_file.display()),
                    ));
                }
            }
            if let Some(ca) = &u.ca_file {
                if let Err(e) = std::fs::metadata(ca) {
                    return Err(invalid(
                        field("caFile"),
                        "caFile",
                        "",
                        format!("cannot read {}: {e}", ca.display()),
                    ));
                }
            }
        }
        if let Some(tls) = &self.tls {
            for (name, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if let Err(e) = std::fs::metadata(path) {
                    return Err(invalid(
                        name.into(),
                        name.trim_start_matches("tls."),
                        "",
                        format!("cannot read {}: {e}", path.display()),
                    ));
                }
            }
        }
        if let Some(audit) = &self.audit {
            if audit.fsync_interval.is_zero() {
                return Err(invalid(
                    "audit.fsyncInterval".into(),
                    "fsyncInterval",
                    "",
                    "must be greater than zero (use fsync: always to sync every line)".into(),
                ));
            }
            if audit.queue_size == 0 {
                return Err(invalid(
                    "audit.queueSize".into(),
                    "queueSize",
                    "",
                    "must be at least 1".into(),
                ));
            }
        }
        if let Some(alerts) = &self.alerts {
            if let Err(message) = alerts.validate() {
                let (field, message) = message
                    .split_once(": ")
                    .map(|(f, m)| (f.to_owned(), m.to_owned()))
                    .unwrap_or(("alerts".to_owned(), message));
                return Err(invalid(field, "url", "", message));
            }
        }
        if let Some(bg) = &self.break_glass {
            if let Err(message) = crate::breakglass::BreakGlass::from_config(bg) {
                let (field, message) = message
                    .split_once(": ")
                    .map(|(f, m)| (f.to_owned(), m.to_owned()))
                    .unwrap_or(("breakGlass".to_owned(), message));
                return Err(invalid(field, "tokenFile", "", message));
            }
        }
        if let Some(admin) = &self.admin {
            if admin.listen == self.listen {
                return Err(invalid(
                    "admin.listen".into(),
                    "listen",
                    "",
                    "the admin listener needs its own address".into(),
                ));
            }
            if let Some(path) = &admin.token_file {
                if let Err(message) = crate::admin::AdminToken::from_file(path) {
                    return Err(invalid("admin.tokenFile".into(), "tokenFile", "", message));
                }
            }
        }
        let t = &self.timeouts;
        for (name, value) in [
            ("connect", t.connect),
            ("read", t.read),
            ("shutdown", t.shutdown),
            ("idle", t.idle),
            ("handshake", t.handshake),
            ("manifest", t.manifest),
            ("evidence", t.evidence),
            ("verification", t.verification),
            ("clientStall", t.client_stall()),
        ] {
            if value.is_zero() {
                return Err(invalid(
                    format!("timeouts.{name}"),
                    name,
                    "",
                    "must be greater than zero".into(),
                ));
            }
        }
        let l = &self.limits;
        for (name, value) in [
            ("connections", l.connections),
            ("connectionsPerClient", l.connections_per_client),
            ("upstreamFetches", l.upstream_fetches),
            (
                "upstreamFetchesPerConnection",
                l.upstream_fetches_per_connection,
            ),
        ] {
            if value == 0 || value > MAX_LIMIT {
                return Err(invalid(
                    format!("limits.{name}"),
                    name,
                    "",
                    format!("must be between 1 and {MAX_LIMIT}"),
                ));
            }
        }
        Ok(())
    }

    /// The upstream requests go to when they name no prefix and no `?ns=`:
    /// the one marked `default`, or the only one.
    pub fn default_upstream(&self) -> Option<usize> {
        self.upstreams
            .iter()
            .position(|u| u.default)
            .or((self.upstreams.len() == 1).then_some(0))
    }

    /// What is worth a warning in a policy that loads: name patterns that
    /// can match no image served through this configuration's upstreams.
    /// `portcullis check` prints them; `serve` logs them at startup and on
    /// every reload, and starts anyway (a policy may be shared by proxies
    /// fronting other registries, and images of a registry that is not an
    /// upstream cannot be pulled through this one at all).
    pub fn policy_warnings(&self, policy: &Policy) -> Vec<String> {
        let registries: Vec<&str> = self.upstreams.iter().map(|u| u.registry.as_str()).collect();
        policy.unreachable_patterns(&registries)
    }

    /// A human summary for `portcullis check` and the startup log.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "listen: {} ({})\n",
            self.listen,
            if self.tls.is_some() { "https" } else { "http" }
        );
        let default = self.default_upstream();
        for (i, u) in self.upstreams.iter().enumerate() {
            out.push_str(&format!(
                "upstream {}: {}{}{}{}\n",
                u.registry,
                u.base_url(),
                u.prefix
                    .as_deref()
                    .map(|p| format!(", prefix /v2/{p}/"))
                    .unwrap_or_default(),
                if default == Some(i) { ", default" } else { "" },
                match &u.auth {
                    Some(a) => format!(", auth as {}", a.username),
                    None => ", anonymous".to_owned(),
                },
            ));
        }
        if let Some(admin) = &self.admin {
            out.push_str(&format!(
                "admin: {} (/metrics, /-/ui, /-/api, /healthz, /readyz){}\n",
                admin.listen,
                if admin.token_file.is_some() {
                    ", bearer token required"
                } else {
                    ", no token: anyone who reaches it can read it"
                }
            ));
        }
        match &self.audit {
            Some(a) => out.push_str(&format!(
                "audit: {} (fsync {:?}, queue {}, on full: {:?})\n",
                a.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "stdout".into()),
                a.fsync,
                a.queue_size,
                a.on_full
            )),
            None => out.push_str("audit: off (decisions are still logged)\n"),
        }
        if let Some(alerts) = &self.alerts {
            out.push_str(&format!("alerts: {} webhook(s)\n", alerts.webhooks.len()));
        }
        if let Some(bg) = self.break_glass.as_ref().filter(|b| b.enabled) {
            out.push_str(&format!(
                "break-glass: ENABLED via header {} for {}\n",
                bg.header,
                bg.credentials
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let t = &self.timeouts;
        out.push_str(&format!(
            "timeouts: connect {:?}, read {:?}, shutdown {:?}, idle {:?}, handshake {:?}, \
             manifest {:?}, evidence {:?}, verification {:?}, clientStall {:?}\n",
            t.connect,
            t.read,
            t.shutdown,
            t.idle,
            t.handshake,
            t.manifest,
            t.evidence,
            t.verification,
            t.client_stall()
        ));
        let l = &self.limits;
        out.push_str(&format!(
            "limits: {} connections ({} per client), {} upstream blob fetches ({} per connection)\n",
            l.connections,
            l.connections_per_client,
            l.upstream_fetches,
            l.upstream_fetches_per_connection
        ));
        out
    }
}

/// `host`, `host:port`, IPv4 or `[v6]:port`; lowercase, no scheme or path.
fn valid_registry_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.contains("://")
        && !s.contains('/')
        && s.parse::<http::uri::Authority>().is_ok()
        && !s.contains('@')
        && s == s.to_ascii_lowercase()
}

fn check_upstream_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{url:?} must be a bare scheme://host[:port]; registries serve /v2/ at the root"
        ));
    }
    Ok(())
}

/// A configured token realm: an absolute `http(s)` URL without query;
/// `https` only when the upstream is `https`.
fn check_token_realm(realm: &str, upstream_https: bool) -> Result<(), String> {
    let uri: http::Uri = realm
        .parse()
        .map_err(|e| format!("{realm:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if !upstream_https => {}
        Some("http") => {
            return Err(format!(
                "{realm:?}: credentials for an https upstream are never sent over plain http"
            ))
        }
        _ => return Err(format!("{realm:?} must start with https:// (or http://)")),
    }
    if uri.authority().is_none() {
        return Err(format!("{realm:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "{realm:?}: give the token endpoint without a query"
        ));
    }
    Ok(())
}

/// Best-effort line number of `key: value` in the config text, so semantic
/// errors point where the user should look.
fn line_of(text: &str, key: &str, value: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let l = line.trim_start().trim_start_matches("- ");
            let after_key = l.strip_prefix(key).and_then(|r| r.strip_prefix(':'));
            after_key.is_some_and(|rest| value.is_empty() || rest.contains(value))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("/"))
    }

    #[test]
    fn embedded_default_loads() {
        let c = load(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.upstreams[0].registry, "docker.io");
        assert_eq!(c.default_upstream(), Some(0));
    }

    #[test]
    fn unknown_field_is_an_error_with_line() {
        let e = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    bogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn semantic_errors_name_field_and_line() {
        let text = "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    prefix: x\n  - registry: b.io\n    prefix: x\n";
        let e = load(text).unwrap_err().to_string();
        assert!(e.contains("upstreams[1].prefix"), "{e}");
        assert!(e.contains("line 4") || e.contains("line 6"), "{e}");

        let e = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    url: ftp://x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstreams[0].url") && e.contains("line 4"),
            "{e}"
        );

        let e = load("listen: 127.0.0.1:1\nupstreams: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one upstream"), "{e}");

        let e = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    default: true\n  - registry: b.io\n    default: true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstreams[1].default"), "{e}");

        let e = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: A.io\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstreams[0].registry"), "{e}");

        for alias in crate::oci::DOCKER_HUB_ALIASES {
            let e = load(&format!(
                "listen: 127.0.0.1:1\nupstreams:\n  - registry: {alias}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("upstreams[0].registry") && e.contains("write registry: docker.io"),
                "{e}"
            );
        }

        let e = load("listen: nope\nupstreams:\n  - registry: a.io\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");

        let e = load(
            "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    auth: {username: u, passwordFile: /nonexistent/pw}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstreams[0].auth.passwordFile"), "{e}");
    }

    #[test]
    fn token_realms_are_urls_and_never_plain_http_for_https() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let config = |url: &str, realms: &str| {
            format!(
                "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n    url: {url}\n    auth: {{username: u, passwordFile: {}, tokenRealms: {realms}}}\n",
                pw.display()
            )
        };
        let c = load(&config("https://a.io", "[https://auth.a.io/token]")).unwrap();
        let auth = c.upstreams[0].auth.as_ref().unwrap();
        assert_eq!(auth.token_realms, ["https://auth.a.io/token"]);
        assert!(load(&config("http://a.io", "[http://auth.a.io/token]")).is_ok());
        for (url, realms, want) in [
            ("https://a.io", "[http://auth.a.io/token]", "plain http"),
            ("https://a.io", "[auth.a.io/token]", "not a URL"),
            ("https://a.io", "[\"https://auth.a.io/token?x=1\"]", "query"),
            ("https://a.io", "[ftp://auth.a.io/token]", "https://"),
        ] {
            let e = load(&config(url, realms)).unwrap_err().to_string();
            assert!(
                e.contains("upstreams[0].auth.tokenRealms[0]") && e.contains(want),
                "{realms}: {e}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1d").is_err());
        let c = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\ntimeouts: {read: 3s}\n")
            .unwrap();
        assert_eq!(c.timeouts.read, Duration::from_secs(3));
        assert_eq!(c.timeouts.connect, Duration::from_secs(10));
        assert!(load(
            "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\ntimeouts: {read: 0s}\n"
        )
        .is_err());
    }

    #[test]
    fn connection_timeouts_and_limits() {
        let base = "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n";
        let c = load(base).unwrap();
        let t = c.timeouts;
        assert_eq!(t.idle, Duration::from_secs(60));
        assert_eq!(t.handshake, Duration::from_secs(10));
        assert_eq!(t.manifest, Duration::from_secs(60));
        assert_eq!(t.evidence, Duration::from_secs(60));
        assert_eq!(t.verification, Duration::from_secs(120));
        assert_eq!(t.client_stall(), t.read, "clientStall follows read");
        assert_eq!(c.limits.connections, 4096);
        assert_eq!(c.limits.connections_per_client, 256);
        assert_eq!(c.limits.upstream_fetches, 512);
        assert_eq!(c.limits.upstream_fetches_per_connection, 16);

        let c = load(&format!(
            "{base}timeouts: {{read: 7s, idle: 1s, handshake: 2s, manifest: 3s, evidence: 4s, verification: 5s}}\n\
             limits: {{connections: 10, connectionsPerClient: 2, upstreamFetches: 3, upstreamFetchesPerConnection: 1}}\n"
        ))
        .unwrap();
        let t = c.timeouts;
        assert_eq!(
            (t.idle, t.handshake, t.manifest, t.evidence, t.verification),
            (
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(3),
                Duration::from_secs(4),
                Duration::from_secs(5)
            )
        );
        assert_eq!(t.client_stall(), Duration::from_secs(7));
        assert_eq!(
            (
                c.limits.connections,
                c.limits.connections_per_client,
                c.limits.upstream_fetches,
                c.limits.upstream_fetches_per_connection
            ),
            (10, 2, 3, 1)
        );
        let c = load(&format!("{base}timeouts: {{clientStall: 9s}}\n")).unwrap();
        assert_eq!(c.timeouts.client_stall(), Duration::from_secs(9));

        for bad in [
            "timeouts: {idle: 0s}",
            "timeouts: {handshake: 0ms}",
            "timeouts: {manifest: 0s}",
            "timeouts: {evidence: 0s}",
            "timeouts: {verification: 0s}",
            "timeouts: {clientStall: 0s}",
            "limits: {connections: 0}",
            "limits: {connectionsPerClient: 0}",
            "limits: {upstreamFetches: 0}",
            "limits: {upstreamFetchesPerConnection: 0}",
            "limits: {bogus: 1}",
            "limits: {connections: 16777217}",
        ] {
            assert!(load(&format!("{base}{bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_urls() {
        let c = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: docker.io\n  - registry: ghcr.io\n  - registry: r.local:5000\n    url: http://127.0.0.1:5001/\n").unwrap();
        assert_eq!(c.upstreams[0].base_url(), "https://registry-1.docker.io");
        assert_eq!(c.upstreams[1].base_url(), "https://ghcr.io");
        assert_eq!(c.upstreams[2].base_url(), "http://127.0.0.1:5001");
        assert_eq!(c.default_upstream(), None);
    }
}
