//! The composition root: builds the proxy from a [`Config`]. This is the
//! one place the policy is compiled for serving, the upstream clients,
//! verifier, break-glass credentials and admin token are made (their token
//! files read once), and the audit writer and alerter started; the
//! pipeline ([`crate::serve`]) and the listeners ([`crate::server`]) only
//! receive what is built here.
//!
//! May use every module below it; nothing but `cli` uses it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::audit::Observer;
use crate::breakglass::BreakGlass;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::serve::{App, Parts};
use crate::server::{self, Connections, Listeners, Settings};
use crate::upstream::{SetupError, Upstream};
use crate::verify::Verifier;

/// A proxy whose decisions go to metrics and the recent list only (no
/// audit file, no alerts): what one-shot commands use.
pub fn build_quiet(config: &Config) -> Result<App, SetupError> {
    let metrics = Arc::new(Metrics::new());
    build(config, Arc::new(Observer::new(metrics, None, None)))
}

/// The proxy for `config`, its decisions going to `observer`.
pub fn build(config: &Config, observer: Arc<Observer>) -> Result<App, SetupError> {
    let upstreams = config
        .upstreams
        .iter()
        .map(|u| {
            Upstream::new(u, config.timeouts)
                .map(|up| Arc::new(up.with_metrics(Arc::clone(&observer.metrics))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policy = config
        .compile_policy()
        .map_err(|e| SetupError::Policy(e.to_string()))?;
    observer.metrics.policy_loaded(&policy.revision);
    let mut verifier = Verifier::new(policy, config.cache, upstreams.clone())
        .with_timeouts(config.timeouts)
        .with_limits(&config.limits);
    if let Some(store) = &config.attestation_store {
        let store =
            crate::verify::store::Store::open(&store.path).map_err(SetupError::AttestationStore)?;
        verifier = verifier.with_store(Arc::new(store));
    }
    let break_glass = match &config.break_glass {
        Some(bg) => BreakGlass::from_config(bg).map_err(SetupError::Policy)?,
        None => None,
    };
    let parts = Parts {
        router: Router::new(config),
        upstreams,
        verifier,
        observer,
        break_glass,
    };
    Ok(App::new(parts, config))
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

/// Runs the proxy for `config` until `shutdown` completes: binds the
/// registry listener (and the admin listener if configured), starts the
/// audit writer, the alerter and, when the config came from a file, the
/// policy reloader, and serves ([`server::run`]).
pub async fn serve(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let observer = Arc::new(observer(&config)?);
    let app = Arc::new(build(&config, observer).map_err(|e| e.to_string())?);
    log_policy(&config, &app);
    if let Some(path) = config_path {
        tokio::spawn(crate::reload::watch(Arc::clone(&app), path));
    }
    let tls = match &config.tls {
        Some(tls) => Some(server::tls_acceptor(tls).map_err(|e| e.to_string())?),
        None => None,
    };
    let registry = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let (admin, admin_token) = match &config.admin {
        Some(admin) => {
            let listener = TcpListener::bind(admin.listen)
                .await
                .map_err(|e| format!("cannot listen on {} (admin): {e}", admin.listen))?;
            let token = match &admin.token_file {
                Some(path) => Some(Arc::new(
                    crate::admin::AdminToken::from_file(path)
                        .map_err(|e| format!("admin.tokenFile: {e}"))?,
                )),
                None => None,
            };
            tracing::info!(
                listen = %admin.listen,
                token = token.is_some(),
                "admin listener: /metrics, /-/ui, /-/api, /healthz, /readyz"
            );
            (Some(listener), token)
        }
        None => (None, None),
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

/// Logs the policy in force at startup (or that there is none).
fn log_policy(config: &Config, app: &App) {
    let policy = app.verifier.policy();
    if policy.configured {
        for line in policy.summary().lines() {
            tracing::info!("{line}");
        }
        for warning in config.policy_warnings(&policy) {
            tracing::warn!("{warning}");
        }
    } else {
        tracing::warn!(
            "NO POLICY CONFIGURED: every image is served without any signature check (ALWAYS_ALLOW)"
        );
    }
}
