//! The keyless work's log and timestamp parsing, and a whole bundle
//! through the verifier: SCT lists (TLS encoding), checkpoints (signed
//! notes), RFC 3161 timestamps (CMS), Rekor entries (JSON, inclusion
//! proofs) and `sigstore::verify_bundle` under the embedded public-good
//! root. JSON goes to the entry and bundle readers; for other bytes the
//! first picks the parser. The seeds (tests/fixtures, fuzz/seeds) hold
//! real bundles and checkpoints, so mutations reach the checks behind
//! the parsers.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::sigstore::tlog::{self, Entry, Requirements};
use portcullis::sigstore::{self, sct, tsa, Artifact, Options, Signer, TrustedRoot};

/// 2026-11-30, inside the public-good root's validity windows.
const NOW_MS: i64 = 1_795_996_800_000;

fn root() -> &'static TrustedRoot {
    static ROOT: OnceLock<TrustedRoot> = OnceLock::new();
    ROOT.get_or_init(TrustedRoot::public_good)
}

fuzz_target!(|data: &[u8]| {
    let root = root();
    if data.first() == Some(&b'{') {
        // JSON: a Rekor entry, and a whole bundle for any artifact.
        if let Ok(entry) = serde_json::from_slice::<Entry>(data) {
            for needs in [
                Requirements {
                    promise: true,
                    proof: false,
                },
                Requirements {
                    promise: false,
                    proof: true,
                },
            ] {
                let _ = entry.verify(root, needs, NOW_MS);
            }
        }
        let _ = sigstore::verify_bundle(
            data,
            &Artifact::Digest([0; 32]),
            &Signer::Identities(&[]),
            root,
            Options::at(NOW_MS),
        );
        return;
    }
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 3 {
        0 => {
            let _ = sct::fuzz_parse_list(rest);
        }
        1 => {
            if let (Ok(text), Some(log)) = (std::str::from_utf8(rest), root.tlogs.first()) {
                let _ = tlog::fuzz_checkpoint(text, log);
            }
        }
        _ => {
            let _ = tsa::verify(rest, b"signature", root);
        }
    }
});
