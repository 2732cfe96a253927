//! The command line as clap reads it: every command, its arguments and
//! their help text (a public contract: names, flags and wording stay as
//! they are). [`super::run`] dispatches a parsed [`Cli`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::registry::RegistryOptions;
use crate::telemetry::LogFormat;

/// A pull-through OCI registry proxy that only serves images your policy
/// trusts.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// The commands; each variant's doc comment is its help text.
#[derive(Subcommand)]
pub enum Command {
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
        /// Fail (exit 1) when anything is ignored or unreachable: policy
        /// fields with no meaning here, other clusters' rules, patterns
        /// no upstream can serve.
        #[arg(long)]
        strict: bool,
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
        /// The private key: PKCS#8 PEM (as `portcullis keygen` writes it)
        /// or cosign's encrypted cosign.key, opened with COSIGN_PASSWORD.
        /// The signature goes to COSIGN_REPOSITORY when that is set.
        #[arg(long)]
        key: PathBuf,
        /// Talk plain HTTP to the registry.
        #[arg(long, visible_alias = "allow-insecure-registry")]
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
        /// The private key: PKCS#8 PEM (as `portcullis keygen` writes it)
        /// or cosign's encrypted cosign.key, opened with COSIGN_PASSWORD.
        /// The attestation goes to COSIGN_REPOSITORY when that is set.
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
        registry: RegistryOptions,
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
    /// The content store (cache.content): list, size, clean, purge, warm.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Evaluate the policy for an image against the live upstream and
    /// explain the decision; or, with --key, check its cosign signatures
    /// with one public key, no configuration needed (as `cosign verify
    /// --key --insecure-ignore-tlog`; COSIGN_REPOSITORY is honoured).
    /// Exit 0 allow/verified, 1 deny/not verified, 2 error.
    Verify {
        /// Fully qualified image, e.g. 127.0.0.1:5001/demo/app:v1.
        reference: String,
        #[arg(long, short, conflicts_with = "key")]
        config: Option<PathBuf>,
        /// A public key (PEM, e.g. cosign.pub): verify the image's
        /// signatures with it instead of evaluating a policy.
        #[arg(long)]
        key: Option<PathBuf>,
        /// How to reach the registry (with --key only).
        #[command(flatten)]
        registry: RegistryOptions,
    },
    /// Verify a Sigstore bundle offline, as the Sigstore conformance
    /// suite's client protocol runs it: keyless (an identity and its OIDC
    /// issuer) or with a key. Exit 0 only when verified.
    VerifyBundle {
        /// The bundle (JSON).
        #[arg(long)]
        bundle: PathBuf,
        /// The certificate identity (subject alternative name) expected.
        #[arg(long, conflicts_with = "key", requires = "certificate_oidc_issuer")]
        certificate_identity: Option<String>,
        /// The OIDC issuer expected.
        #[arg(long, conflicts_with = "key", requires = "certificate_identity")]
        certificate_oidc_issuer: Option<String>,
        /// The signer's public key (PEM), for a key-signed bundle.
        #[arg(long)]
        key: Option<PathBuf>,
        /// A trusted_root.json; default: Sigstore's public-good root,
        /// embedded.
        #[arg(long)]
        trusted_root: Option<PathBuf>,
        /// The artifact: a file, or `sha256:<hex>`.
        artifact: String,
    },
}

// `portcullis attestations …`.
#[derive(Subcommand)]
pub enum AttestationsCommand {
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

/// Which content store a `cache` command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The configuration whose cache.content is the store.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The store's directory, instead of the configuration's (no maxSize:
    /// `gc` then does not evict).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

impl From<StoreArgs> for super::cache::StoreLocation {
    fn from(args: StoreArgs) -> Self {
        super::cache::StoreLocation {
            config: args.config,
            store: args.store,
        }
    }
}

// `portcullis cache …`.
#[derive(Subcommand)]
pub enum CacheCommand {
    /// List the tags the store answers for (and with --blobs every blob).
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        /// Also list every stored blob, its size and when it was last used.
        #[arg(long)]
        blobs: bool,
    },
    /// Show what the store takes, against cache.content.maxSize.
    Du {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Evict to maxSize and empty tmp/ (when no Portcullis holds the
    /// store), drop kept answers whose content is gone; --verify hashes
    /// every blob again and removes those that changed (exit 1 if any).
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Hash every stored blob and remove those that no longer match.
        #[arg(long)]
        verify: bool,
    },
    /// Remove images from the store: the tag's answer, its manifests,
    /// configs, layers and signature tags. Nothing of them is served from
    /// the store afterwards, also not while the upstream is down.
    Purge {
        #[command(flatten)]
        store: StoreArgs,
        /// Images, fully qualified at their upstream, e.g.
        /// docker.io/library/alpine:3.20.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Pull images through a running Portcullis ahead of a rollout, so it
    /// verifies and stores them (a progress bar on a terminal, a line per
    /// blob otherwise). Exit 1 if the proxy refuses one.
    Warm {
        /// Images as a runtime names them through Portcullis, e.g.
        /// portcullis.internal:5000/library/alpine:3.20.
        #[arg(required = true)]
        references: Vec<String>,
        /// Only these platforms of a multi-platform image (os/arch[/variant],
        /// repeatable); all without.
        #[arg(long = "platform")]
        platforms: Vec<String>,
        #[command(flatten)]
        registry: RegistryOptions,
    },
}

// `portcullis policy …`.
#[derive(Subcommand)]
pub enum PolicyCommand {
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

/// `--annotation k=v`: a key (not empty) and a value.
fn parse_annotation(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}
