//! The `portcullis` command line: the one-shot commands and `serve`. The
//! top layer: it may use anything in the library, and nothing in the
//! library uses it.
//!
//! [`args`] holds what clap parses; [`run`] hands each command to its
//! module, which does the work and prints the outcome.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG};

mod args;
pub mod attest;
pub mod attestations;
pub mod check;
pub mod explain;
pub mod image;
pub mod keygen;
pub mod registry;
pub mod replay;
pub mod serve;
pub mod sign;
pub mod verify;

pub use args::{AttestationsCommand, Cli, Command, PolicyCommand};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config, log_format } => serve::run(config, log_format),
        Command::Check { config } => check::run(config.as_deref()),
        Command::Keygen { key, public } => keygen::run(&key, &public),
        Command::Sign {
            reference,
            key,
            insecure,
            annotations,
            username,
            password_file,
            ca_file,
            token_realms,
        } => {
            let options = registry::RegistryOptions {
                insecure,
                username,
                password_file,
                ca_file,
                token_realms,
            };
            sign::run(&reference, &key, &annotations, &options)
        }
        Command::Attest {
            reference,
            key,
            predicate,
            predicate_type,
            registry,
        } => attest::run(&reference, &key, &predicate, &predicate_type, &registry),
        Command::Policy {
            command:
                PolicyCommand::Replay {
                    audit,
                    config,
                    offline,
                    json,
                },
        } => replay::run(&audit, &config, replay::ReplayOptions { offline }, json),
        Command::Attestations {
            command:
                AttestationsCommand::Import {
                    file,
                    config,
                    store,
                },
        } => attestations::run_import(&file, config.as_deref(), store.as_deref()),
        Command::Attestations {
            command:
                AttestationsCommand::List {
                    reference,
                    config,
                    json,
                },
        } => attestations::run_list(&reference, config.as_deref(), json),
        Command::Verify { reference, config } => verify::run(&reference, config.as_deref()),
    }
}

/// A multi-threaded runtime for the commands that talk to registries.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// The configuration at `path`; without one, the embedded default.
fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::load(path),
        None => Config::from_yaml(DEFAULT_CONFIG, Path::new(".")),
    }
}
