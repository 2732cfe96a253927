//! The `portcullis` command line: the one-shot commands and `serve`. The
//! top layer: it may use anything in the library, and nothing in the
//! library uses it.
//!
//! `args.rs` holds what clap parses. [`run`] hands each command to its
//! module (which does the work and prints the result), reports the error
//! if there is one, and turns how the command ended into the exit code.
//! [`Exit`] is the one exit-code policy:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done: `verify` would serve the image (with `--key`: a signature verifies), `check` found the configuration valid, `policy replay` printed its report (changes or not) |
//! | 1 | the answer is no: `verify`'s policy denies the image (with `--key`: no signature verifies), `check` finds the configuration or policy invalid, `attestations import` finds an invalid occurrence (nothing is imported) |
//! | 2 | the command could not do its job: a usage error (clap's too), an unreadable file, a configuration another command cannot use, a registry or network failure, `serve` failing to start or stopping on an error |

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use crate::app::Prepared;
use crate::config::{Config, ConfigError, DEFAULT_CONFIG};

mod args;
pub mod attest;
pub mod attestations;
pub mod cache;
pub mod check;
pub mod explain;
pub mod image;
pub mod keygen;
pub mod registry;
pub mod replay;
pub mod serve;
pub mod sign;
mod signing_key;
pub mod verify;
pub mod verify_bundle;

pub use args::{AttestationsCommand, CacheCommand, Cli, Command, PolicyCommand};

/// How a command ended. [`Exit::code`] is the one exit-code policy; see
/// the table in the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: the command's answer is no: the policy denies, the configuration
    /// or the occurrences are invalid.
    Denied,
    /// 2: the command could not do its job: usage, I/O, network, runtime.
    Error,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Denied => 1,
            Exit::Error => 2,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// Why a command failed: what to tell the user, and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    exit: Exit,
    message: String,
}

impl CliError {
    /// The input was examined and found invalid ([`Exit::Denied`]).
    pub fn invalid(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Denied,
            message: message.into(),
        }
    }

    /// The command could not do its job ([`Exit::Error`]).
    pub fn error(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Error,
            message: message.into(),
        }
    }

    /// How the command exits.
    pub fn exit(&self) -> Exit {
        self.exit
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// The target of what the command line logs: the binary's, as when
/// `main.rs` logged it.
const LOG_TARGET: &str = "portcullis";

/// What every command returns: how it ended, or why it failed.
pub type Outcome = Result<Exit, CliError>;

/// Runs a parsed command line: the command, then its error (if any) on
/// stderr, `error: <message>` (`serve` logs it instead, in its log
/// format), then the exit code.
pub fn run(cli: Cli) -> ExitCode {
    let logs = matches!(cli.command, Command::Serve { .. });
    if !logs {
        crate::telemetry::init_cli();
    }
    let exit = match dispatch(cli.command) {
        Ok(exit) => exit,
        Err(e) => {
            if logs {
                tracing::error!(target: LOG_TARGET, "{e}");
            } else {
                eprintln!("error: {e}");
            }
            e.exit()
        }
    };
    exit.into()
}

/// Hands each command to its module.
fn dispatch(command: Command) -> Outcome {
    match command {
        Command::Serve { config, log_format } => serve::run(config, log_format),
        Command::Check { config, strict } => check::run(config.as_deref(), strict),
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
        Command::Verify {
            reference,
            config,
            key,
            registry,
        } => match key {
            Some(key) => verify::run_key(&reference, &key, &registry),
            None if registry_options_given(&registry) => Err(CliError::error(
                "--insecure, --username, --password-file, --ca-file and --token-realm \
                 go with --key; with a configuration, its upstreams say how to reach \
                 the registry",
            )),
            None => verify::run(&reference, config.as_deref()),
        },
        Command::VerifyBundle {
            bundle,
            certificate_identity,
            certificate_oidc_issuer,
            key,
            trusted_root,
            artifact,
        } => verify_bundle::run(&verify_bundle::Args {
            bundle,
            identity: certificate_identity.zip(certificate_oidc_issuer),
            key,
            trusted_root,
            artifact,
        }),
        Command::Cache { command } => match command {
            CacheCommand::Ls { store, blobs } => cache::run_ls(&store.into(), blobs),
            CacheCommand::Du { store } => cache::run_du(&store.into()),
            CacheCommand::Gc { store, verify } => cache::run_gc(&store.into(), verify),
            CacheCommand::Purge { store, references } => {
                cache::run_purge(&store.into(), &references)
            }
            CacheCommand::Warm {
                references,
                platforms,
                registry,
            } => cache::run_warm(&references, &platforms, &registry),
        },
    }
}

/// Whether any registry option was given on the command line.
fn registry_options_given(options: &registry::RegistryOptions) -> bool {
    options.insecure
        || options.username.is_some()
        || options.password_file.is_some()
        || options.ca_file.is_some()
        || !options.token_realms.is_empty()
}

/// A multi-threaded runtime for the commands that talk to registries.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::error(format!("cannot start the runtime: {e}")))
}

/// Runs `work` to completion on a fresh [`runtime`]; its error is a
/// runtime error ([`Exit::Error`]).
fn block_on<T>(work: impl Future<Output = Result<T, String>>) -> Result<T, CliError> {
    runtime()?.block_on(work).map_err(CliError::error)
}

/// The configuration for a command that uses it (everything but `check`):
/// one it cannot use is an error ([`Exit::Error`]), not an answer.
fn configuration(path: Option<&Path>) -> Result<Prepared, CliError> {
    load(path).map_err(|e| CliError::error(format!("invalid configuration: {e}")))
}

/// The configuration at `path` (without one, the embedded default),
/// prepared: token files read, policy compiled ([`crate::app::prepare`]).
fn load(path: Option<&Path>) -> Result<Prepared, ConfigError> {
    match path {
        Some(path) => Config::load(path),
        None => Config::from_yaml(DEFAULT_CONFIG, Path::new(".")),
    }
    .and_then(crate::app::prepare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_exit_code_policy() {
        assert_eq!(
            [Exit::Ok, Exit::Denied, Exit::Error].map(Exit::code),
            [0, 1, 2]
        );
        assert_eq!(CliError::invalid("no").exit(), Exit::Denied);
        assert_eq!(CliError::error("broke").exit(), Exit::Error);
        assert_eq!(CliError::error("broke").to_string(), "broke");
    }

    #[test]
    fn check_answers_1_for_an_invalid_configuration_and_2_for_an_unreadable_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        let e = check::run(Some(&missing), false).unwrap_err();
        assert_eq!(e.exit(), Exit::Error, "{e}");
        let invalid = dir.path().join("invalid.yaml");
        std::fs::write(&invalid, "listen: nowhere\n").unwrap();
        let e = check::run(Some(&invalid), false).unwrap_err();
        assert_eq!(e.exit(), Exit::Denied, "{e}");
        // Any other command cannot use it: an error, not an answer.
        let e = configuration(Some(&invalid)).unwrap_err();
        assert_eq!(e.exit(), Exit::Error, "{e}");
        assert!(e.to_string().starts_with("invalid configuration: "), "{e}");
    }
}
