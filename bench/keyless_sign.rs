//! The benchmark's keyless signer (`cargo run --release --example
//! keyless-sign`): the tests' own Sigstore (`tests/common/sigstore.rs`: a
//! Fulcio-like CA, a CT log, a Rekor-like log) signs images the way
//! `cosign sign` does keyless, so `bench/run.sh` can measure a cold
//! keyless verification without the internet.
//!
//!     keyless-sign root FILE
//!         writes the trusted_root.json naming that Sigstore
//!     keyless-sign sign REFERENCE < "tag digest" lines
//!         prints one JSON line per image: {"digest", "payload" (base64),
//!         "manifest" (the .sig manifest), "config" (base64)}; the payload
//!         is signed for REFERENCE (`<registry>/<repository>`) by the
//!         identity the benchmark's keyless attestor trusts
//!
//! `bench/push.py sigs` pushes what `sign` prints.

#[path = "../tests/common/sigstore.rs"]
mod sigstore;

use std::io::BufRead as _;
use std::time::SystemTime;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The identity the benchmark's attestor names.
const SUBJECT: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1";
const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ours = sigstore::TestSigstore::new("bench");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["root", file] => {
            if let Err(e) = std::fs::write(file, ours.trusted_root()) {
                eprintln!("keyless-sign: cannot write {file}: {e}");
                std::process::exit(2);
            }
        }
        ["sign", reference] => {
            let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
            let digest_of = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
            for line in std::io::stdin().lock().lines() {
                let line = line.unwrap_or_default();
                let Some(digest) = line.split_whitespace().nth(1) else {
                    continue;
                };
                let issue = sigstore::Issue::now(SUBJECT, ISSUER);
                let signature = sigstore::sign_keyless(
                    &ours,
                    reference,
                    digest,
                    &issue,
                    Some(SystemTime::now()),
                );
                let config = b"{}";
                let manifest = sigstore::cosign_manifest(
                    sigstore::SIMPLE_SIGNING,
                    &signature,
                    (&digest_of(config), config.len() as u64),
                    (
                        &digest_of(&signature.payload),
                        signature.payload.len() as u64,
                    ),
                );
                let out = serde_json::json!({
                    "digest": digest,
                    "payload": b64(&signature.payload),
                    "config": b64(config),
                    "manifest": manifest,
                });
                println!("{out}");
            }
        }
        _ => {
            eprintln!("usage: keyless-sign root FILE | keyless-sign sign REFERENCE < \"tag digest\" lines");
            std::process::exit(2);
        }
    }
}
