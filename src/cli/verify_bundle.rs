//! `portcullis verify-bundle`: one Sigstore bundle, verified offline by
//! the same code the proxy uses ([`crate::sigstore`]), in
//! the Sigstore conformance suite's client protocol: exit 0 only when the
//! bundle verifies, 1 when it does not (the failing check on stderr), 2
//! when the command could not run.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{CliError, Exit, Outcome};
use crate::sigstore::{self, root, Artifact, IdentityPolicy, Options, Signer, TrustedRoot};

/// The command's arguments.
#[derive(Debug)]
pub struct Args {
    pub bundle: PathBuf,
    /// `--certificate-identity` and `--certificate-oidc-issuer`.
    pub identity: Option<(String, String)>,
    pub key: Option<PathBuf>,
    pub trusted_root: Option<PathBuf>,
    /// A path, or `sha256:<hex>`.
    pub artifact: String,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::error(format!("cannot read the {what} {}: {e}", path.display())))
}

/// `sha256:<64 lowercase hex>` as a digest; anything else is a path.
fn artifact(text: &str) -> Result<Artifact, CliError> {
    if let Some(hex_digest) = text.strip_prefix("sha256:") {
        let bytes = hex::decode(hex_digest)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| CliError::error(format!("{text:?} is not sha256:<64 hex digits>")))?;
        return Ok(Artifact::Digest(bytes));
    }
    Ok(Artifact::Bytes(read(&PathBuf::from(text), "artifact")?))
}

pub fn run(args: &Args) -> Outcome {
    let json = read(&args.bundle, "bundle")?;
    let root = match &args.trusted_root {
        Some(path) => TrustedRoot::parse(&read(path, "trusted root")?)
            .map_err(|e| CliError::error(format!("{}: {e}", path.display())))?,
        None => TrustedRoot::public_good(),
    };
    let identities;
    let signer = match (&args.identity, &args.key) {
        (Some((subject, issuer)), None) => {
            identities = [IdentityPolicy::exact(subject, issuer)];
            Signer::Identities(&identities)
        }
        (None, Some(path)) => {
            let pem = String::from_utf8(read(path, "key")?)
                .map_err(|_| CliError::error(format!("{} is not PEM text", path.display())))?;
            let (label, der) = crate::crypto::pem_decode(&pem).map_err(CliError::error)?;
            if label != "PUBLIC KEY" {
                return Err(CliError::error(format!(
                    "{}: expected a PEM PUBLIC KEY, found {label:?}",
                    path.display()
                )));
            }
            Signer::Key(root::Key::from_spki(&der).map_err(CliError::error)?)
        }
        _ => {
            return Err(CliError::error(
                "give --certificate-identity and --certificate-oidc-issuer, or --key",
            ))
        }
    };
    let artifact = artifact(&args.artifact)?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    match sigstore::verify_bundle(&json, &artifact, &signer, &root, Options::at(now_ms)) {
        Ok(verified) => {
            if let Some(identity) = &verified.identity {
                println!(
                    "verified: {} (issuer {})",
                    identity.subject.as_deref().unwrap_or("?"),
                    identity.issuer.as_deref().unwrap_or("?")
                );
            } else {
                println!("verified: signed by the given key");
            }
            for (log, index, integrated) in &verified.entries {
                match integrated {
                    Some(ms) => {
                        println!("  logged: {log} index {index}, integrated at {}", ms / 1000)
                    }
                    None => println!("  logged: {log} index {index}"),
                }
            }
            Ok(Exit::Ok)
        }
        Err(reason) => Err(CliError::invalid(format!("not verified: {reason}"))),
    }
}
