//! Configuration: the YAML file's shape, its validation, and the embedded
//! default. A leaf: nothing here knows what is built from it.
//!
//! Loading is [`Config::load`] / [`Config::from_yaml`]: `parse` (serde,
//! unknown fields are errors, syntax and type errors carry a line), paths
//! resolved against the config file's directory, then `validate`:
//! cross-field rules and the files the config points at exist, one
//! function per section. Checks that read those files or compile things
//! (the policy, break-glass and admin token files) are made once, by the
//! composition root (`app::prepare`), whose errors are [`ConfigError`]s
//! too ([`Config::invalid`] points them at a line). Nothing here does
//! network I/O.
//!
//! One file per section: [`listen`] (`tls`, `admin`), [`upstreams`],
//! [`limits`] (`timeouts`, `limits`), [`cache`], [`policy`] (the policy
//! and attestors as written, and a `policyFile`'s document), [`audit`],
//! [`alerts`], [`breakglass`], [`clientauth`] (`clientAuth`), [`state`]
//! (the fleet's Redis); [`duration`]
//! is the one parser of `10s`, [`size`] of `50GiB`.
//!
//! May use: std, serde, http, `crate::oci` (name syntax, Docker Hub's
//! aliases). Must never use: any other module of the crate; every other
//! module may use this one.

pub mod alerts;
pub mod audit;
pub mod breakglass;
pub mod cache;
pub mod clientauth;
pub mod duration;
pub mod limits;
pub mod listen;
pub mod policy;
pub mod size;
pub mod state;
pub mod upstreams;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use alerts::AlertsConfig;
pub use audit::{AuditConfig, FsyncMode, OnFull};
pub use breakglass::BreakGlassConfig;
pub use cache::CacheConfig;
pub use clientauth::ClientAuthConfig;
pub use limits::{Limits, Timeouts, MAX_LIMIT};
pub use listen::{AdminConfig, TlsConfig};
pub use policy::{AttestorDoc, PolicyDoc};
pub use state::{RedisConfig, RedisTls, StateConfig};
pub use upstreams::{AuthConfig, UpstreamConfig};

/// The configuration `serve` uses without `--config`: the same text as
/// `config/portcullis.yaml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/portcullis.yaml");

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
    /// An error in the file `policyFile` names, at its own line.
    #[error("{}{}: {field}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    InPolicyFile {
        path: PathBuf,
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
    /// This instance's cluster name (`<location>.<cluster>`, as Binary
    /// Authorization keys `clusterAdmissionRules`): the policy's entry
    /// for it replaces the default rule, so one exported policy serves
    /// several clusters.
    #[serde(default)]
    pub cluster: Option<String>,
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
    pub alerts: Option<AlertsConfig>,
    /// Break-glass: pulling a denied image with a credential and a
    /// justification, audited and alerted. Off by default.
    #[serde(default)]
    pub break_glass: Option<BreakGlassConfig>,
    /// Who may pull through the registry port: htpasswd (Basic), bearer
    /// tokens, client certificates, and per-identity access rules. Absent:
    /// every client is anonymous.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
    /// Evidence kept outside the registry: a directory of BinAuthz
    /// occurrences, cosign signatures, DSSE envelopes and sigstore bundles,
    /// indexed by the digest their signed content names.
    #[serde(default)]
    pub attestation_store: Option<AttestationStoreConfig>,
    /// What the replicas of a fleet share (Redis), and this replica's name.
    #[serde(default)]
    pub state: StateConfig,
    /// The text the configuration was read from, for errors that point at
    /// a line of it.
    #[serde(skip)]
    source: Source,
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

/// The text a configuration was read from: where semantic errors find the
/// line they point at. `Debug` shows only its size.
#[derive(Clone, Default)]
pub struct Source {
    text: String,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({} bytes)", self.text.len())
    }
}

impl Source {
    /// A field that is invalid, pointing at the first line holding
    /// `key: value` (any value when `value` is empty), if there is one.
    pub fn invalid(
        &self,
        field: impl Into<String>,
        key: &str,
        value: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            field: field.into(),
            line: line_of(&self.text, key, value),
            message: message.into(),
        }
    }

    /// [`Source::invalid`] for a message that starts with the field it is
    /// about (`breakGlass.header: …`); `section` when it names none.
    pub fn invalid_named(&self, message: String, section: &str, key: &str) -> ConfigError {
        let (field, message) = message
            .split_once(": ")
            .map(|(f, m)| (f.to_owned(), m.to_owned()))
            .unwrap_or((section.to_owned(), message));
        self.invalid(field, key, "", message)
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
        config.source = Source {
            text: text.to_owned(),
        };
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// An error about `field` of this configuration, pointing at the line
    /// of `key: value` in its text (see [`Source::invalid`]): for checks
    /// made after loading (files read, the policy compiled).
    pub fn invalid(
        &self,
        field: impl Into<String>,
        key: &str,
        value: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.source.invalid(field, key, value, message)
    }

    /// The line of this configuration's text holding `field` (a path as
    /// [`line_of_field`] reads it).
    pub fn line_of(&self, field: &str) -> Option<usize> {
        line_of_field(&self.source.text, field)
    }

    /// [`Source::invalid_named`], for this configuration's text.
    pub fn invalid_named(&self, message: String, section: &str, key: &str) -> ConfigError {
        self.source.invalid_named(message, section, key)
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
        for attestor in &mut self.attestors {
            if let Some(path) = attestor
                .keyless
                .as_mut()
                .and_then(|k| k.trusted_root.as_mut())
            {
                fix(path);
            }
            for (_, key) in attestor.all_public_keys_mut() {
                if let Some(path) = key
                    .pkix_public_key
                    .as_mut()
                    .and_then(|k| k.public_key_file.as_mut())
                {
                    fix(path);
                }
            }
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
        if let Some(auth) = &mut self.client_auth {
            auth.resolve_paths(fix);
        }
        if let Some(alerts) = &mut self.alerts {
            for w in &mut alerts.webhooks {
                if let Some(path) = &mut w.signing_secret_file {
                    fix(path);
                }
            }
        }
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(content) = &mut self.cache.content {
            fix(&mut content.path);
        }
        if let Some(redis) = &mut self.state.redis {
            if let Some(path) = &mut redis.password_file {
                fix(path);
            }
            if let Some(RedisTls::Ca { ca_file }) = &mut redis.tls {
                fix(ca_file);
            }
        }
        for upstream in &mut self.upstreams {
            if let Some(auth) = &mut upstream.auth {
                if let Some(path) = &mut auth.password_file {
                    fix(path);
                }
                if let Some(path) = &mut auth.docker_config {
                    fix(path);
                }
            }
            if let Some(ca) = &mut upstream.ca_file {
                fix(ca);
            }
        }
    }

    /// Every section's checks, in order; the first failure is the error.
    fn validate(&self) -> Result<(), ConfigError> {
        let at = &self.source;
        if self.upstreams.is_empty() {
            return Err(at.invalid(
                "upstreams",
                "upstreams",
                "",
                "at least one upstream is required",
            ));
        }
        limits::validate_evidence(&self.limits, at)?;
        upstreams::validate(&self.upstreams, at)?;
        if let Some(tls) = &self.tls {
            listen::validate_tls(tls, at)?;
        }
        if let Some(audit) = &self.audit {
            audit::validate(audit, at)?;
        }
        if let Some(alerts) = &self.alerts {
            alerts
                .validate()
                .map_err(|message| at.invalid_named(message, "alerts", "url"))?;
        }
        if let Some(bg) = &self.break_glass {
            bg.validate()
                .map_err(|message| at.invalid_named(message, "breakGlass", "tokenFile"))?;
        }
        if let Some(admin) = &self.admin {
            listen::validate_admin(admin, self.listen, at)?;
        }
        if let Some(auth) = &self.client_auth {
            clientauth::validate(auth, self.tls.is_some(), at)?;
        }
        if let Some(cluster) = &self.cluster {
            if cluster.trim().is_empty() || cluster.contains('/') {
                return Err(at.invalid(
                    "cluster",
                    "cluster",
                    "",
                    "the cluster's name as Binary Authorization keys it: <location>.<cluster>, \
                     e.g. us-central1-a.prod",
                ));
            }
        }
        state::validate(&self.state, at)?;
        cache::validate(&self.cache, at)?;
        limits::validate_timeouts(&self.timeouts, at)?;
        limits::validate_limits(&self.limits, at)
    }

    /// The upstream requests go to when they name no prefix and no `?ns=`:
    /// the one marked `default`, or the only one.
    pub fn default_upstream(&self) -> Option<usize> {
        self.upstreams
            .iter()
            .position(|u| u.default)
            .or((self.upstreams.len() == 1).then_some(0))
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
                    Some(a) => format!(", {}", a.describe()),
                    None => ", anonymous".to_owned(),
                },
            ));
        }
        if let Some(cluster) = &self.cluster {
            out.push_str(&format!(
                "cluster: {cluster} (its clusterAdmissionRules entry replaces the default rule)\n"
            ));
        }
        match &self.client_auth {
            Some(auth) => {
                let mut methods = Vec::new();
                if auth.htpasswd.is_some() {
                    methods.push("htpasswd".to_owned());
                }
                if !auth.tokens.is_empty() {
                    methods.push(format!("{} token(s)", auth.tokens.len()));
                }
                if auth.client_ca_file.is_some() {
                    methods.push("client certificates".to_owned());
                }
                out.push_str(&format!(
                    "clients: authenticated ({}){}\n",
                    methods.join(", "),
                    match &auth.access {
                        Some(rules) => format!(", {} access rule(s)", rules.len()),
                        None => ", every identity may pull everything".to_owned(),
                    }
                ));
            }
            None => out.push_str("clients: anonymous (no clientAuth)\n"),
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
        if let Some(content) = &self.cache.content {
            out.push_str(&content.summary());
        }
        if let Some(alerts) = &self.alerts {
            out.push_str(&format!("alerts: {} webhook(s)\n", alerts.webhooks.len()));
        }
        match &self.state.redis {
            Some(redis) => out.push_str(&format!(
                "state: shared with the fleet through {} (prefix {}, timeout {:?})\n",
                redis.redacted_url(),
                redis.key_prefix,
                redis.timeout
            )),
            None => out.push_str("state: this process only (no state.redis)\n"),
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

/// The line (1-based) of the YAML node a field path names, e.g.
/// `attestors[1].publicKeys[0].pkixPublicKey.signatureAlgorithm` or
/// `policy.repositoryAdmissionRules["docker.io/**"].evaluationMode`:
/// block-style YAML walked by indentation, mapping keys (plain or quoted)
/// and list items by position. Where the path leaves block style (a flow
/// mapping `{…}`), the deepest line found; `None` when not even the first
/// step is found.
pub fn line_of_field(text: &str, field: &str) -> Option<usize> {
    enum Step {
        Key(String),
        Index(usize),
    }
    let mut steps = Vec::new();
    let mut rest = field;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix("[\"") {
            let end = inner.find("\"]")?;
            steps.push(Step::Key(inner[..end].to_owned()));
            rest = &inner[end + 2..];
        } else if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            steps.push(Step::Index(inner[..end].parse().ok()?));
            rest = &inner[end + 1..];
        } else {
            rest = rest.strip_prefix('.').unwrap_or(rest);
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Key(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
    // (line number, indentation, content) of every meaningful line.
    let mut block: Vec<(usize, usize, &str)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let content = line.trim_start();
            (!content.is_empty() && !content.starts_with('#'))
                .then(|| (i + 1, line.len() - content.len(), content))
        })
        .collect();
    let mut found = None;
    for step in steps {
        let Some(indent) = block.iter().map(|&(_, i, _)| i).min() else {
            break;
        };
        let at = match &step {
            Step::Key(key) => block.iter().position(|&(_, i, c)| {
                i == indent
                    && [key.clone(), format!("\"{key}\""), format!("'{key}'")]
                        .iter()
                        .any(|k| {
                            c.strip_prefix(k.as_str())
                                .is_some_and(|r| r.starts_with(':'))
                        })
            }),
            Step::Index(n) => block
                .iter()
                .enumerate()
                .filter(|(_, &(_, i, c))| i == indent && (c == "-" || c.starts_with("- ")))
                .nth(*n)
                .map(|(at, _)| at),
        };
        let Some(at) = at else { break };
        let (line, own, content) = block[at];
        found = Some(line);
        let mut child = Vec::new();
        if let Step::Index(_) = step {
            // The item's first line holds its first key, after the dash.
            let first = content.trim_start_matches('-').trim_start();
            if !first.is_empty() {
                child.push((line, own + (content.len() - first.len()), first));
            }
        }
        // A key's value is what is indented deeper, or a list written at
        // the key's own indentation (`key:` then `- item` lines).
        let indentless = matches!(step, Step::Key(_))
            && block
                .get(at + 1)
                .is_some_and(|&(_, i, c)| i == own && (c == "-" || c.starts_with("- ")));
        child.extend(
            block[at + 1..]
                .iter()
                .take_while(|&&(_, i, c)| {
                    i > own || (indentless && i == own && (c == "-" || c.starts_with("- ")))
                })
                .copied(),
        );
        block = child;
    }
    found
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
    fn a_field_path_finds_its_line() {
        let text = "\
policy:
  defaultAdmissionRule:
    evaluationMode: REQUIRE_ATTESTATION
  repositoryAdmissionRules:
    # a comment
    \"docker.io/**\":
      evaluationMode: ALWAYS_DENY
attestors:
  - name: first
    publicKeys:
      - id: a
        pkixPublicKey: {publicKeyPem: x, signatureAlgorithm: BAD}
  - name: second
    publicKeys:
      - id: b
      - id: c
        pkixPublicKey:
          signatureAlgorithm: BAD
";
        let line = |f: &str| line_of_field(text, f);
        assert_eq!(line("policy.defaultAdmissionRule.evaluationMode"), Some(3));
        assert_eq!(
            line("policy.repositoryAdmissionRules[\"docker.io/**\"].evaluationMode"),
            Some(7)
        );
        assert_eq!(line("attestors[1].name"), Some(13));
        assert_eq!(
            line("attestors[1].publicKeys[1].pkixPublicKey.signatureAlgorithm"),
            Some(18)
        );
        // Into a flow mapping: the deepest line found.
        assert_eq!(
            line("attestors[0].publicKeys[0].pkixPublicKey.signatureAlgorithm"),
            Some(12)
        );
        assert_eq!(line("attestors[2]"), Some(8));
        // A list at its key's own indentation, as gcloud writes them.
        let export = "\
admissionWhitelistPatterns:
- namePattern: a/*
- namePattern: b/*
defaultAdmissionRule:
  requireAttestationsBy:
  - one
";
        assert_eq!(
            line_of_field(export, "admissionWhitelistPatterns[1].namePattern"),
            Some(3)
        );
        assert_eq!(line_of_field(export, "defaultAdmissionRule"), Some(4));
        assert_eq!(
            line_of_field(export, "defaultAdmissionRule.requireAttestationsBy[0]"),
            Some(6)
        );
        assert_eq!(line("nowhere.at.all"), None);
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
}
