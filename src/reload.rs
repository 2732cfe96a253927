//! Policy hot reload: on SIGHUP, and when the config file or the policy
//! file changes. A configuration that does not load keeps the previous
//! policy in force and says why. Only the policy and attestors are
//! reloaded; listeners and upstreams need a restart.
//!
//! May use: `serve` (the app whose policy it swaps), `config`, `policy`.
//! Must never use: app or cli (the app hands it the loader).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::policy::Policy;
use crate::serve::App;

/// Loads the configuration at a path for a reload: its policy, compiled,
/// and the warnings about it, or why it does not load. The composition
/// root supplies it, so that a reload accepts exactly what a start does.
pub type Load = fn(&Path) -> Result<(Policy, Vec<String>), String>;

/// How often the files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn watched_paths(config_path: &Path) -> Vec<PathBuf> {
    let mut paths = vec![config_path.to_owned()];
    if let Ok(config) = Config::load(config_path) {
        if let Some(policy_file) = config.policy_file {
            paths.push(policy_file);
        }
    }
    paths
}

/// Reloads the policy from `config_path` now. Returns the new revision.
pub fn reload(app: &App, config_path: &Path, why: &str, load: Load) -> Result<String, String> {
    let previous = app.verifier.policy().revision.clone();
    match load(config_path) {
        Ok((policy, warnings)) => {
            let revision = policy.revision.clone();
            app.verifier.set_policy(policy);
            app.observer.metrics.reload(true);
            app.observer.metrics.policy_loaded(&revision);
            tracing::info!(%why, %previous, %revision, "policy reloaded");
            for warning in warnings {
                tracing::warn!(%revision, "{warning}");
            }
            Ok(revision)
        }
        Err(e) => {
            app.observer.metrics.reload(false);
            tracing::error!(%why, kept = %previous, "policy reload failed; keeping the previous policy: {e}");
            app.observer.reload_failed(why, &previous, &e);
            Err(e)
        }
    }
}

/// Re-reads the attestation store, off the async threads.
async fn refresh_store(app: &Arc<App>) {
    if app.verifier.store().is_none() {
        return;
    }
    let app = Arc::clone(app);
    match tokio::task::spawn_blocking(move || app.verifier.refresh_store()).await {
        Ok(true) => tracing::info!("attestation store changed; cached verdicts dropped"),
        Ok(false) => {}
        Err(e) => tracing::error!("attestation store refresh failed: {e}"),
    }
}

/// Watches for SIGHUP, file changes and the attestation store until the
/// process ends.
pub async fn watch(app: Arc<App>, config_path: PathBuf, load: Load) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot watch SIGHUP: {e}");
            None
        }
    };
    let mut paths = watched_paths(&config_path);
    let mut seen = fingerprint(&paths);
    loop {
        let why = tokio::select! {
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            () = tokio::time::sleep(WATCH_INTERVAL) => {
                refresh_store(&app).await;
                let now = fingerprint(&paths);
                if now == seen {
                    continue;
                }
                "file change"
            }
        };
        let _ = reload(&app, &config_path, why, load);
        paths = watched_paths(&config_path);
        seen = fingerprint(&paths);
    }
}
