//! Policy hot reload: on SIGHUP, and when the config file or the policy
//! file changes. A configuration that does not load keeps the previous
//! policy in force and says why. Only the policy and attestors are
//! reloaded; listeners and upstreams need a restart.
//!
//! In a fleet (`state.redis`), a reload here that changes the policy is
//! announced to the other replicas, which re-read their own configuration
//! within [`FLEET_POLL`]: a SIGHUP on one replica reaches them all. (A
//! file change reaches each replica by itself too.)
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
/// How often a replica asks the fleet whether another one reloaded.
pub const FLEET_POLL: Duration = Duration::from_millis(250);

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
    if let Ok(mut config) = Config::load(config_path) {
        if let Some(policy_file) = config.policy_file.take() {
            paths.push(policy_file);
        }
        // Key files and trusted roots of the configuration's attestors
        // (a mounted secret rotated in place reloads the policy).
        for attestor in &mut config.attestors {
            if let Some(root) = attestor
                .keyless
                .as_ref()
                .and_then(|k| k.trusted_root.clone())
            {
                paths.push(root);
            }
            for (_, key) in attestor.all_public_keys_mut() {
                if let Some(file) = key
                    .pkix_public_key
                    .as_ref()
                    .and_then(|k| k.public_key_file.clone())
                {
                    paths.push(file);
                }
            }
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
            app.observer.metrics.policy_loaded(&policy);
            app.verifier.set_policy(policy);
            app.observer.metrics.reload(true);
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

/// The fleet's reload count, as this replica last saw it.
struct FleetReloads {
    seen: Option<u64>,
}

impl FleetReloads {
    /// Whether another replica announced a reload since the last look
    /// (the first answer only sets where counting starts).
    async fn announced(&mut self, app: &App) -> bool {
        let Some(fleet) = app.verifier.fleet() else {
            return false;
        };
        let Ok(now) = fleet.reloads().await else {
            return false;
        };
        let seen = self.seen.replace(now);
        seen.is_some_and(|seen| now != seen)
    }

    /// Tells the fleet this replica's policy changed.
    async fn announce(&mut self, app: &App) {
        if let Some(fleet) = app.verifier.fleet() {
            match fleet.announce_reload().await {
                Ok(n) => self.seen = Some(n),
                Err(e) => tracing::warn!("policy reload not announced to the fleet: {e}"),
            }
        }
    }
}

/// Watches for SIGHUP, file changes, the attestation store and, in a
/// fleet, the other replicas' reloads, until the process ends.
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
    let mut files = tokio::time::interval(WATCH_INTERVAL);
    files.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fleet_poll = tokio::time::interval(FLEET_POLL);
    fleet_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_fleet = app.verifier.fleet().is_some();
    let mut reloads = FleetReloads { seen: None };
    loop {
        let why = tokio::select! {
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            _ = files.tick() => {
                refresh_store(&app).await;
                let now = fingerprint(&paths);
                if now == seen {
                    continue;
                }
                "file change"
            }
            _ = fleet_poll.tick(), if in_fleet => {
                if !reloads.announced(&app).await {
                    continue;
                }
                "another replica reloaded"
            }
        };
        let before = app.verifier.policy().revision.clone();
        let result = reload(&app, &config_path, why, load);
        if matches!(&result, Ok(revision) if *revision != before)
            && why != "another replica reloaded"
        {
            reloads.announce(&app).await;
        }
        paths = watched_paths(&config_path);
        seen = fingerprint(&paths);
    }
}
