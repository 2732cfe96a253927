//! `portcullis serve`: logging, the configuration, the runtime, and the
//! proxy ([`crate::app::serve`]) until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::telemetry::{self, LogFormat};

/// Runs `portcullis serve`.
pub fn run(config: Option<PathBuf>, log_format: LogFormat) -> ExitCode {
    telemetry::init(log_format);
    let config_path = config.clone();
    let config = match super::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::app::serve(config, config_path, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
