//! The `portcullis` command: parses the command line and hands over to the
//! library. See `src/lib.rs` for the map of the code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::config::{Config, ConfigError, DEFAULT_CONFIG};
use portcullis::serve::App;
use portcullis::server;
use portcullis::telemetry::{self, LogFormat};

/// A pull-through OCI registry proxy that only serves images your policy
/// trusts.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Configuration file; without it, the embedded default
        /// (config/portcullis.yaml: 127.0.0.1:5000 mirroring Docker Hub).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log line format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a configuration and print a summary; exit 1 if invalid.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::load(path),
        None => Config::from_yaml(DEFAULT_CONFIG, std::path::Path::new(".")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(config.as_ref()) {
            Ok(config) => {
                print!("configuration is valid\n{}", config.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, log_format } => {
            telemetry::init(log_format);
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("invalid configuration: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let app = App::new(&config).map_err(|e| e.to_string())?;
    let tls = match &config.tls {
        Some(tls) => Some(server::tls_acceptor(tls).map_err(|e| e.to_string())?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    for line in config.summary().lines() {
        tracing::info!("{line}");
    }
    tracing::info!(listen = %config.listen, "portcullis is serving");
    server::run(
        listener,
        Arc::new(app),
        tls,
        config.timeouts.shutdown,
        shutdown_signal(),
    )
    .await;
    Ok(())
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
