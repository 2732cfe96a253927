//! `portcullis serve`: logging, the configuration, the runtime, and the
//! proxy ([`crate::app::serve`]) until SIGTERM or SIGINT.

use std::path::PathBuf;

use super::{CliError, Exit, Outcome};
use crate::telemetry::{self, LogFormat};

/// Runs `portcullis serve` until SIGTERM or SIGINT.
pub fn run(config: Option<PathBuf>, log_format: LogFormat) -> Outcome {
    telemetry::init(log_format);
    let loaded = super::configuration(config.as_deref())?;
    super::runtime()?
        .block_on(crate::app::serve(loaded, config, shutdown_signal()))
        .map_err(|e| CliError::error(e.to_string()))?;
    Ok(Exit::Ok)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(target: super::LOG_TARGET, "cannot watch SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(target: super::LOG_TARGET, "SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!(target: super::LOG_TARGET, "SIGINT received"),
    }
}
