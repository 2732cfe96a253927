//! The composition root: builds the proxy from a [`Config`]. This is the
//! one place the policy is compiled for serving, the upstream clients,
//! verifier, break-glass credentials and admin token are made (their token
//! files read once), and the audit writer and alerter started; the
//! pipeline ([`crate::serve`]) and the listeners ([`crate::server`]) only
//! receive what is built here.
//!
//! [`prepare`] is the step between a loaded configuration and a proxy:
//! what `config` cannot check because it needs files read or the policy
//! compiled. `portcullis check`, `serve`, the one-shot commands and every
//! policy reload go through it, so they accept and reject the same
//! configurations with the same messages.
//!
//! May use every module below it; nothing but `cli` uses it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::AdminToken;
use crate::audit::Observer;
use crate::breakglass::BreakGlass;
use crate::clientauth::ClientAuth;
use crate::config::{line_of_field, Config, ConfigError};
use crate::fleet::{Shared, Ttls};
use crate::metrics::Metrics;
use crate::policy::{Policy, Rule};
use crate::routing::Router;
use crate::serve::{App, Parts};
use crate::server::{self, Connections, Listeners, Settings};
use crate::store::ContentStore;
use crate::upstream::{SetupError, Upstream};
use crate::verify::Verifier;

/// A configuration and what is made from it once: the compiled policy,
/// the break-glass credentials and the admin token (their files read).
#[derive(Debug)]
pub struct Prepared {
    pub config: Config,
    pub policy: Policy,
    pub break_glass: Option<BreakGlass>,
    pub admin_token: Option<Arc<AdminToken>>,
    pub client_auth: Option<ClientAuth>,
}

impl Prepared {
    /// See [`policy_warnings`].
    pub fn policy_warnings(&self) -> Vec<String> {
        policy_warnings(&self.config, &self.policy)
    }
}

/// Reads the break-glass token files, the admin token file, the client
/// credentials and the alert webhooks' signing secrets, and compiles the
/// policy, in that order. Errors are [`ConfigError`]s naming the field
/// (and, for the token files, the line), as `config`'s own are.
pub fn prepare(config: Config) -> Result<Prepared, ConfigError> {
    let break_glass = match &config.break_glass {
        Some(bg) => BreakGlass::from_config(bg)
            .map_err(|message| config.invalid_named(message, "breakGlass", "tokenFile"))?,
        None => None,
    };
    let admin_token = match config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        Some(path) => Some(Arc::new(AdminToken::from_file(path).map_err(
            |message| config.invalid("admin.tokenFile", "tokenFile", "", message),
        )?)),
        None => None,
    };
    let client_auth = match &config.client_auth {
        Some(auth) => Some(
            ClientAuth::from_config(auth)
                .map_err(|message| config.invalid_named(message, "clientAuth", "clientAuth"))?,
        ),
        None => None,
    };
    // The alerter reads them again when it starts; reading them here
    // makes `portcullis check` name an unreadable or short secret.
    if let Some(alerts) = &config.alerts {
        for (i, w) in alerts.webhooks.iter().enumerate() {
            if let Some(path) = &w.signing_secret_file {
                crate::alerts::signing::SigningKey::from_file(path).map_err(|message| {
                    config.invalid(
                        format!("alerts.webhooks[{i}].signingSecretFile"),
                        "signingSecretFile",
                        "",
                        message,
                    )
                })?;
            }
        }
    }
    let policy = compile_policy(&config)?;
    Ok(Prepared {
        config,
        policy,
        break_glass,
        admin_token,
        client_auth,
    })
}

/// Compiles the configured policy (inline, or read from `policyFile`),
/// with the configured attestors; the allow-all policy when none is
/// configured.
pub fn compile_policy(config: &Config) -> Result<Policy, ConfigError> {
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        field: field.to_owned(),
        line: config.line_of(field),
        message,
    };
    let mut file = None;
    let (doc, mut attestors) = match (&config.policy, &config.policy_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "policyFile",
                "set either policy or policyFile, not both".into(),
            ))
        }
        (None, None) => {
            if !config.attestors.is_empty() {
                tracing::warn!("attestors are configured but there is no policy");
            }
            return Ok(Policy::allow_all());
        }
        (Some(doc), None) => (doc.clone(), Vec::new()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid("policyFile", format!("cannot read {}: {e}", path.display()))
            })?;
            let (doc, mut attestors) = crate::config::policy::parse_policy_file(path, &text)?;
            // Relative paths in a policy file are the policy file's.
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            for attestor in &mut attestors {
                if let Some(root) = attestor
                    .keyless
                    .as_mut()
                    .and_then(|k| k.trusted_root.as_mut())
                    .filter(|p| p.is_relative())
                {
                    *root = base.join(&*root);
                }
                for (_, key) in attestor.all_public_keys_mut() {
                    if let Some(file) = key
                        .pkix_public_key
                        .as_mut()
                        .and_then(|k| k.public_key_file.as_mut())
                        .filter(|p| p.is_relative())
                    {
                        *file = base.join(&*file);
                    }
                }
            }
            file = Some(PolicyFileText {
                path,
                bare: !text.lines().any(|l| l.starts_with("policy:")),
                text,
                attestors: attestors.len(),
            });
            (doc, attestors)
        }
    };
    let locate = |field: String, message: String| locate(config, file.as_ref(), field, message);
    attestors.extend(config.attestors.iter().cloned());
    for (i, attestor) in attestors.iter_mut().enumerate() {
        if let Some(keyless) = &mut attestor.keyless {
            if let Some(path) = &keyless.trusted_root {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    locate(
                        format!("attestors[{i}].keyless.trustedRoot"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                keyless.trusted_root_content = Some(text);
            }
        }
        for (field, key) in attestor.all_public_keys_mut() {
            let Some(pkix) = key.pkix_public_key.as_mut() else {
                continue;
            };
            if let Some(path) = &pkix.public_key_file {
                let text = read_key_file(path).map_err(|e| {
                    locate(
                        format!("attestors[{i}].{field}.pkixPublicKey.publicKeyFile"),
                        e,
                    )
                })?;
                pkix.public_key_file_content = Some(text);
            }
        }
    }
    Policy::compile_for(&doc, &attestors, config.cluster.as_deref())
        .map_err(|e| locate(e.field, e.message))
}

/// A `policyFile`'s text, for errors that point into it.
struct PolicyFileText<'a> {
    path: &'a Path,
    text: String,
    /// A bare policy (the export's top level is the policy itself, without
    /// `policy:` and `attestors:`).
    bare: bool,
    /// How many attestors it holds: they come before the config's.
    attestors: usize,
}

/// The error for `field` of the combined policy (policy file first, then
/// the config's attestors), naming the file and line it comes from.
fn locate(
    config: &Config,
    file: Option<&PolicyFileText<'_>>,
    field: String,
    message: String,
) -> ConfigError {
    let attestor = field
        .strip_prefix("attestors[")
        .and_then(|r| r.split_once(']'))
        .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)));
    let in_file = |file: &PolicyFileText<'_>, field: &str| {
        let path = if file.bare {
            field.strip_prefix("policy.").unwrap_or(field)
        } else {
            field
        };
        ConfigError::InPolicyFile {
            path: file.path.to_owned(),
            field: path.to_owned(),
            line: line_of_field(&file.text, path),
            message: message.clone(),
        }
    };
    match (file, attestor) {
        (Some(file), Some((i, _))) if i < file.attestors => in_file(file, &field),
        (Some(file), Some((i, rest))) => {
            let field = format!("attestors[{}]{rest}", i - file.attestors);
            ConfigError::Invalid {
                line: config.line_of(&field),
                field,
                message,
            }
        }
        (Some(file), None) if field.starts_with("policy.") => in_file(file, &field),
        _ => ConfigError::Invalid {
            line: config.line_of(&field),
            field,
            message,
        },
    }
}

/// Largest public key file read (`publicKeyFile`): a PEM key is a few
/// kilobytes at most.
const MAX_KEY_FILE: u64 = 64 * 1024;

fn read_key_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "{} is larger than {MAX_KEY_FILE} bytes: not a public key",
            path.display()
        ));
    }
    Ok(text)
}

/// What is worth a warning in a policy that loads: name patterns that
/// can match no image served through this configuration's upstreams.
/// `portcullis check` prints them; `serve` logs them at startup and on
/// every reload, and starts anyway (a policy may be shared by proxies
/// fronting other registries, and images of a registry that is not an
/// upstream cannot be pulled through this one at all).
pub fn policy_warnings(config: &Config, policy: &Policy) -> Vec<String> {
    let registries: Vec<&str> = config
        .upstreams
        .iter()
        .map(|u| u.registry.as_str())
        .collect();
    policy.unreachable_patterns(&registries)
}

/// A proxy whose decisions go to metrics and the recent list only (no
/// audit file, no alerts): what one-shot commands use.
pub fn build_quiet(prepared: Prepared) -> Result<App, SetupError> {
    let metrics = Arc::new(Metrics::new());
    let observer = Arc::new(Observer::new(metrics, None, None));
    build(
        &prepared.config,
        prepared.policy,
        Guards {
            break_glass: prepared.break_glass,
            client_auth: prepared.client_auth,
        },
        observer,
        None,
        None,
    )
}

/// Who may pull, besides the policy: the client credentials and the
/// break-glass credentials, as read.
struct Guards {
    break_glass: Option<BreakGlass>,
    client_auth: Option<ClientAuth>,
}

/// The proxy for `config`, with its compiled `policy` and `guards`, its
/// decisions going to `observer`.
fn build(
    config: &Config,
    policy: Policy,
    guards: Guards,
    observer: Arc<Observer>,
    fleet: Option<Arc<Shared>>,
    content: Option<Arc<ContentStore>>,
) -> Result<App, SetupError> {
    let upstreams = config
        .upstreams
        .iter()
        .map(|u| {
            Upstream::new(u, config.timeouts).map(|up| {
                let up = up.with_metrics(Arc::clone(&observer.metrics));
                Arc::new(match &content {
                    Some(store) => up.with_store(Arc::clone(store)),
                    None => up,
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    observer.metrics.policy_loaded(&policy);
    let mut verifier = Verifier::new(policy, config.cache.clone(), upstreams.clone())
        .with_timeouts(config.timeouts)
        .with_limits(&config.limits);
    if let Some(store) = &config.attestation_store {
        let store = crate::verify::sources::store::Store::open(&store.path)
            .map_err(SetupError::AttestationStore)?;
        verifier = verifier.with_store(Arc::new(store));
    }
    if let Some(fleet) = fleet {
        verifier = verifier.with_fleet(fleet);
    }
    let parts = Parts {
        router: Router::new(config),
        upstreams,
        verifier,
        observer,
        break_glass: guards.break_glass,
        client_auth: guards.client_auth.map(Arc::new),
        content,
    };
    Ok(App::new(parts, config))
}

/// What a policy reload loads: the configuration at `path`, prepared as
/// at start (a reload fails on whatever `check` rejects), as the policy
/// and its warnings.
fn reload_policy(path: &Path) -> Result<(Policy, Vec<String>), String> {
    let prepared = Config::load(path)
        .and_then(prepare)
        .map_err(|e| e.to_string())?;
    let warnings = prepared.policy_warnings();
    Ok((prepared.policy, warnings))
}

/// Where decisions go when serving: metrics, the audit trail and the
/// alerter, as configured.
fn observer(config: &Config) -> Result<Observer, String> {
    let metrics = Arc::new(Metrics::new());
    let audit = match &config.audit {
        Some(audit) => Some(
            crate::audit::writer::start(audit)
                .map_err(|e| format!("audit trail: cannot open {:?}: {e}", audit.path))?,
        ),
        None => None,
    };
    let alerter = match &config.alerts {
        Some(alerts) if !alerts.webhooks.is_empty() => Some(Box::new(
            crate::alerts::Alerter::start(alerts).map_err(|e| format!("alerts: {e}"))?,
        )
            as Box<dyn crate::audit::AlertSink>),
        _ => None,
    };
    Ok(Observer::new(metrics, audit, alerter))
}

/// Runs the proxy for a prepared configuration until `shutdown` completes: binds the
/// registry listener (and the admin listener if configured), starts the
/// audit writer, the alerter and, when the config came from a file, the
/// policy reloader, and serves ([`server::run`]).
pub async fn serve(
    prepared: Prepared,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let Prepared {
        config,
        policy,
        break_glass,
        admin_token,
        client_auth,
    } = prepared;
    if client_auth.is_none() {
        if let Some(u) = config.upstreams.iter().find(|u| u.auth.is_some()) {
            tracing::warn!(
                upstream = %u.registry,
                "no clientAuth: anyone who can reach the registry port pulls with this upstream's credentials"
            );
        }
    }
    let client_ca = config
        .client_auth
        .as_ref()
        .and_then(|a| a.client_ca_file.as_deref());
    let fleet = match &config.state.redis {
        Some(redis) => {
            let ttls = Ttls {
                allow: config.cache.allow_ttl,
                deny: config.cache.deny_ttl,
            };
            let fleet = Shared::start(redis, ttls)?;
            tracing::info!(redis = %fleet.url(), "fleet: sharing admissions, verdicts and decisions through redis");
            Some(fleet)
        }
        None => None,
    };
    let content = match &config.cache.content {
        Some(c) => {
            let store = ContentStore::open(c)
                .map_err(|e| format!("content store {}: {e}", c.path.display()))?;
            let (blobs, bytes) = store.usage();
            tracing::info!(
                path = %c.path.display(),
                blobs,
                bytes,
                max_size = c.max_size,
                "content store: serving stored blobs from disk"
            );
            Some(Arc::new(store))
        }
        None => None,
    };
    let replica = replica_name(&config);
    let observer = Arc::new(observer(&config)?.with_fleet(replica, fleet.clone()));
    let app = Arc::new(
        build(
            &config,
            policy,
            Guards {
                break_glass,
                client_auth,
            },
            observer,
            fleet,
            content,
        )
        .map_err(|e| e.to_string())?,
    );
    log_policy(&config, &app);
    if let Some(path) = config_path {
        tokio::spawn(crate::reload::watch(Arc::clone(&app), path, reload_policy));
    }
    let tls = match &config.tls {
        Some(tls) => Some(server::tls_acceptor(tls, client_ca).map_err(|e| e.to_string())?),
        None => None,
    };
    let registry = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let admin = match &config.admin {
        Some(admin) => {
            let listener = TcpListener::bind(admin.listen)
                .await
                .map_err(|e| format!("cannot listen on {} (admin): {e}", admin.listen))?;
            tracing::info!(
                listen = %admin.listen,
                token = admin_token.is_some(),
                "admin listener: /metrics, /-/ui, /-/api, /healthz, /readyz"
            );
            Some(listener)
        }
        None => None,
    };
    for line in config.summary().lines() {
        tracing::info!("{line}");
    }
    tracing::info!(listen = %config.listen, "portcullis is serving");
    let settings = Settings {
        tls,
        admin_token,
        connections: Connections {
            timeouts: config.timeouts,
            limits: config.limits,
        },
    };
    let listeners = Listeners { registry, admin };
    server::run(listeners, app, settings, shutdown).await;
    Ok(())
}

/// This replica's name: `state.replica`; in a fleet without one,
/// `$HOSTNAME` (the pod name on Kubernetes), else the host name. `None`
/// for a lone instance that names none.
fn replica_name(config: &Config) -> Option<String> {
    if let Some(name) = &config.state.replica {
        return Some(name.clone());
    }
    config.state.redis.as_ref()?;
    let valid = |n: &String| !n.is_empty() && n.len() <= 253;
    std::env::var("HOSTNAME")
        .ok()
        .filter(valid)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(valid)
        })
        .or_else(|| Some("portcullis".to_owned()))
}

/// Logs the policy in force at startup (or that there is none).
fn log_policy(config: &Config, app: &App) {
    let policy = app.verifier.policy();
    if policy.configured {
        for line in policy_summary(&policy).lines() {
            tracing::info!("{line}");
        }
        for warning in policy_warnings(config, &policy) {
            tracing::warn!("{warning}");
        }
    } else {
        tracing::warn!(
            "NO POLICY CONFIGURED: every image is served without any signature check (ALWAYS_ALLOW)"
        );
    }
}

/// The policy in a few lines, for `portcullis check` and the startup log.
pub fn policy_summary(policy: &Policy) -> String {
    if !policy.configured {
        return "policy: NONE — every image is served unchecked (ALWAYS_ALLOW). \
                Add a policy: section to enforce signatures.\n"
            .to_owned();
    }
    let mut out = format!("policy revision {}\n", policy.revision);
    for p in policy.allowlist() {
        out.push_str(&format!("  allowlist: {}\n", p.as_str()));
    }
    for pinned in policy.pinned_allowlist() {
        out.push_str(&format!("  allowlist (this digest only): {pinned}\n"));
    }
    let describe = |r: &Rule| {
        let mut s = format!("{} / {}", r.evaluation, r.enforcement);
        if !r.attestors.is_empty() {
            s.push_str(&format!(" by [{}]", r.attestors.join(", ")));
        }
        s
    };
    for (p, r) in policy.repository_rules() {
        out.push_str(&format!("  rule {}: {}\n", p.as_str(), describe(r)));
    }
    out.push_str(&format!(
        "  default rule: {}\n",
        describe(policy.default_rule())
    ));
    for a in policy.attestors_by_name() {
        let keys: Vec<String> = a
            .keys
            .iter()
            .map(|k| format!("{} ({})", k.id, k.key.algorithm().name()))
            .collect();
        out.push_str(&format!("  attestor {}:", a.name));
        if !keys.is_empty() {
            out.push_str(&format!(" keys {}", keys.join(", ")));
        }
        if let Some(keyless) = &a.keyless {
            let identities: Vec<String> =
                keyless.identities.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "{} keyless {} under {}{}{}",
                if keys.is_empty() { "" } else { ";" },
                identities.join(" or "),
                keyless.root_source,
                if keyless.require_tlog {
                    ""
                } else {
                    ", no log entry required"
                },
                if keyless.require_sct {
                    ""
                } else {
                    ", no SCT required"
                },
            ));
        }
        if let Some(repo) = &a.signature_repository {
            out.push_str(&format!(", signatures in {repo}"));
        }
        out.push('\n');
    }
    for note in &policy.ignored {
        out.push_str(&format!("  ignored: {note}\n"));
    }
    for note in &policy.rewritten {
        out.push_str(&format!("  canonical name: {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n";

    fn prepared(yaml: &str) -> Result<Prepared, String> {
        Config::from_yaml(yaml, Path::new("/"))
            .and_then(prepare)
            .map_err(|e| e.to_string())
    }

    /// What needs files read or the policy compiled is checked by
    /// `prepare`, with the field and (for token files) the line.
    #[test]
    fn prepare_reads_token_files_and_compiles_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "0123456789abcdef-token\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "short\n").unwrap();
        let missing = dir.path().join("missing");

        let glass = |file: &Path| {
            format!(
                "{BASE}breakGlass:\n  enabled: true\n  credentials:\n    - name: oncall\n      tokenFile: {}\n",
                file.display()
            )
        };
        let p = prepared(&glass(&good)).unwrap();
        assert!(p.break_glass.is_some() && p.admin_token.is_none());
        assert!(!p.policy.configured);
        let e = prepared(&glass(&missing)).unwrap_err();
        assert!(
            e.starts_with("line 8: breakGlass.credentials[0].tokenFile: cannot read"),
            "{e}"
        );
        let e = prepared(&glass(&short)).unwrap_err();
        assert!(e.contains("at least 16 characters without spaces"), "{e}");
        // Pure break-glass checks are the configuration's own.
        let e = Config::from_yaml(
            &format!("{BASE}breakGlass: {{enabled: true}}\n"),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("breakGlass.credentials: enabled but no credentials configured"),
            "{e}"
        );

        let admin = |file: &Path| {
            format!(
                "{BASE}admin:\n  listen: 127.0.0.1:2\n  tokenFile: {}\n",
                file.display()
            )
        };
        assert!(prepared(&admin(&good)).unwrap().admin_token.is_some());
        let e = prepared(&admin(&short)).unwrap_err();
        assert!(
            e.starts_with("line 6: admin.tokenFile: the token in") && e.contains("at least 16"),
            "{e}"
        );

        let hook = |file: &Path| {
            format!(
                "{BASE}alerts:\n  webhooks:\n    - url: http://127.0.0.1:9/h\n      \
                 signingSecretFile: {}\n",
                file.display()
            )
        };
        assert!(prepared(&hook(&good)).is_ok());
        let e = prepared(&hook(&short)).unwrap_err();
        assert!(
            e.contains("alerts.webhooks[0].signingSecretFile: ") && e.contains("at least 16 bytes"),
            "{e}"
        );
        let e = prepared(&hook(&missing)).unwrap_err();
        assert!(
            e.contains("alerts.webhooks[0].signingSecretFile: cannot read"),
            "{e}"
        );

        let e = prepared(&format!(
            "{BASE}policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
             requireAttestationsBy: [nobody]\n"
        ))
        .unwrap_err();
        assert!(e.contains("nobody"), "{e}");
        let e = prepared(&format!(
            "{BASE}policy:\n  defaultAdmissionRule: {{evaluationMode: ALWAYS_ALLOW}}\npolicyFile: p.yaml\n"
        ))
        .unwrap_err();
        assert_eq!(
            e,
            "line 6: policyFile: set either policy or policyFile, not both"
        );
        let e = prepared(&format!("{BASE}policyFile: {}\n", missing.display())).unwrap_err();
        assert!(e.starts_with("line 4: policyFile: cannot read"), "{e}");
    }

    #[test]
    fn a_policy_file_holds_a_bare_policy_or_a_document() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        let config = format!("{BASE}policyFile: {}\n", file.display());
        std::fs::write(
            &file,
            "defaultAdmissionRule: {evaluationMode: ALWAYS_DENY}\n",
        )
        .unwrap();
        assert!(prepared(&config).unwrap().policy.configured);
        std::fs::write(
            &file,
            "policy:\n  defaultAdmissionRule: {evaluationMode: ALWAYS_DENY}\nattestors: []\n",
        )
        .unwrap();
        assert!(prepared(&config).unwrap().policy.configured);
        std::fs::write(&file, "policy:\n  bogus: 1\n").unwrap();
        let e = prepared(&config).unwrap_err();
        assert!(e.starts_with(&format!("{} line 2", file.display())), "{e}");
    }
}
