//! The `portcullis` command: parses the command line and hands over to the
//! library. See `src/lib.rs` for the map of the code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::cli::{attest, keygen, registry, sign, verify};
use portcullis::config::{Config, ConfigError, DEFAULT_CONFIG};
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
    /// Generate a P-256 key pair for signing (private key mode 0600).
    Keygen {
        /// Where to write the private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the public key (SPKI PEM), for an attestor.
        #[arg(long = "pub")]
        public: PathBuf,
    },
    /// Sign an image the way `cosign sign --key` does: resolve it at its
    /// registry and append a signature to its sha256-<hex>.sig manifest.
    Sign {
        /// Fully qualified image, e.g. 127.0.0.1:5001/demo/app:v1.
        reference: String,
        #[arg(long)]
        key: PathBuf,
        /// Talk plain HTTP to the registry.
        #[arg(long)]
        insecure: bool,
        /// Extra signed annotation k=v (repeatable); goes into `optional`.
        #[arg(long = "annotation", short = 'a', value_parser = parse_annotation)]
        annotations: Vec<(String, String)>,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// A token endpoint on another host that may receive the
        /// credentials (e.g. https://auth.docker.io/token); repeatable.
        #[arg(long = "token-realm")]
        token_realms: Vec<String>,
    },
    /// Attest an image the way `cosign attest --key` does: resolve it at its
    /// registry and append a signed in-toto statement (a DSSE envelope) to
    /// its sha256-<hex>.att manifest.
    Attest {
        /// Fully qualified image, e.g. 127.0.0.1:5001/demo/app:v1.
        reference: String,
        /// The private key (PKCS#8 PEM, as `portcullis keygen` writes it).
        #[arg(long)]
        key: PathBuf,
        /// The predicate: a file holding one JSON object, e.g. SLSA provenance.
        #[arg(long)]
        predicate: PathBuf,
        /// Predicate type: a URI, or one of cosign's shorthands (custom,
        /// slsaprovenance, slsaprovenance02, slsaprovenance1, spdx, spdxjson,
        /// cyclonedx, vuln, openvex, link).
        #[arg(long = "type", default_value = "custom")]
        predicate_type: String,
        #[command(flatten)]
        registry: registry::RegistryOptions,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Evidence kept outside the registry: the attestation store.
    Attestations {
        #[command(subcommand)]
        command: AttestationsCommand,
    },
    /// Evaluate the policy for an image against the live upstream and
    /// explain the decision. Exit 0 allow, 1 deny, 2 error.
    Verify {
        /// Fully qualified image, e.g. 127.0.0.1:5001/demo/app:v1.
        reference: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AttestationsCommand {
    /// Validate Binary Authorization occurrences (the JSON of `gcloud
    /// container binauthz attestations list --format=json`, or its YAML)
    /// and copy them into the attestation store. All or nothing; exit 1
    /// if any is invalid.
    Import {
        /// The occurrences file.
        file: PathBuf,
        /// The configuration: its attestors validate the signatures, and
        /// its `attestationStore.path` is where they go.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The store directory, instead of the config's.
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Show every piece of evidence found for an image (cosign tags,
    /// referrers, the attestation store), where it came from, and whether
    /// it verified for each attestor.
    List {
        /// Fully qualified image, e.g. 127.0.0.1:5001/demo/app:v1.
        reference: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Re-evaluate the pulls recorded in an audit trail against a candidate
    /// configuration and print what would change.
    Replay {
        /// The audit trail (JSON lines, as written by `audit.path`).
        #[arg(long)]
        audit: PathBuf,
        /// The candidate configuration (its policy and attestors are used).
        #[arg(long, short)]
        config: PathBuf,
        /// Use only the evidence recorded in the audit trail; no network.
        #[arg(long)]
        offline: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_annotation(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
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
            Ok(config) => match config.compile_policy() {
                Ok(policy) => {
                    print!(
                        "configuration is valid\n{}{}",
                        config.summary(),
                        policy.summary()
                    );
                    for warning in config.policy_warnings(&policy) {
                        eprintln!("warning: {warning}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Keygen { key, public } => match keygen::keygen(&key, &public) {
            Ok(()) => {
                println!(
                    "wrote private key {} (mode 0600) and public key {}",
                    key.display(),
                    public.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
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
            let result = runtime()
                .and_then(|rt| rt.block_on(sign::sign(&reference, &key, &annotations, &options)));
            match result {
                Ok(digest) => {
                    println!("signed {reference} ({digest})");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Attest {
            reference,
            key,
            predicate,
            predicate_type,
            registry,
        } => {
            let result = runtime().and_then(|rt| {
                rt.block_on(attest::attest(
                    &reference,
                    &key,
                    &predicate,
                    &predicate_type,
                    &registry,
                ))
            });
            match result {
                Ok(digest) => {
                    println!("attested {reference} ({digest})");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Policy {
            command:
                PolicyCommand::Replay {
                    audit,
                    config,
                    offline,
                    json,
                },
        } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let options = portcullis::cli::replay::ReplayOptions { offline };
            let result = runtime().and_then(|rt| {
                rt.block_on(portcullis::cli::replay::replay(&audit, &config, options))
            });
            match result {
                Ok(report) => {
                    if json {
                        println!("{}", report.to_json());
                    } else {
                        print!("{}", report.render());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Attestations { command } => attestations(command),
        Command::Verify { reference, config } => {
            let result = load(config.as_ref())
                .map_err(|e| format!("invalid configuration: {e}"))
                .and_then(|config| {
                    runtime().and_then(|rt| rt.block_on(verify::verify(&config, &reference)))
                });
            match result {
                Ok((decision, text)) => {
                    print!("{text}");
                    if decision.serves() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve { config, log_format } => {
            telemetry::init(log_format);
            let config_path = config.clone();
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("invalid configuration: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(portcullis::app::serve(
                config,
                config_path,
                shutdown_signal(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn attestations(command: AttestationsCommand) -> ExitCode {
    use portcullis::cli::attestations;
    match command {
        AttestationsCommand::Import {
            file,
            config,
            store,
        } => {
            let result = load(config.as_ref())
                .map_err(|e| format!("invalid configuration: {e}"))
                .and_then(|config| {
                    let dir = attestations::store_dir(Some(&config), store.as_deref())?;
                    let policy = config.compile_policy().map_err(|e| e.to_string())?;
                    let input = std::fs::read(&file)
                        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                    attestations::import(&policy, &input, &dir).map(|done| (dir, done))
                });
            match result {
                Ok((dir, done)) => {
                    println!(
                        "imported {} occurrence(s) into {} for {}",
                        done.files.len(),
                        dir.display(),
                        done.digests.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        AttestationsCommand::List {
            reference,
            config,
            json,
        } => {
            let result = load(config.as_ref())
                .map_err(|e| format!("invalid configuration: {e}"))
                .and_then(|config| {
                    runtime().and_then(|rt| rt.block_on(attestations::list(&config, &reference)))
                });
            match result {
                Ok((image, listed)) => {
                    if json {
                        let doc = serde_json::json!({"image": image, "evidence": listed});
                        println!("{doc:#}");
                    } else {
                        print!("{}", attestations::render(&image, &listed));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
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
