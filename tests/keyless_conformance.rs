//! `portcullis verify-bundle` against the Sigstore conformance suite's
//! bundle-verify cases (`tests/fixtures/sigstore-conformance-bundles/`,
//! whose README gives the protocol and the expected result of every
//! case): every case is run twice — the artifact as a path and as
//! `sha256:<hex>` — offline, and a case named `*_fail` must be rejected
//! (exit 1, with the failing check named), every other case verified
//! (exit 0).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

const IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn cases_dir() -> PathBuf {
    common::fixture_dir::fixtures_dir().join("sigstore-conformance-bundles")
}

/// The command line the suite's client protocol builds for a case.
fn args(case: &Path, artifact: &str) -> Vec<String> {
    let mut args = vec![
        "verify-bundle".to_owned(),
        "--bundle".to_owned(),
        case.join("bundle.sigstore.json").display().to_string(),
    ];
    if case.join("key.pub").exists() {
        args.extend([
            "--key".to_owned(),
            case.join("key.pub").display().to_string(),
        ]);
    } else {
        let read = |name: &str, default: &str| {
            std::fs::read_to_string(case.join(name))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| default.to_owned())
        };
        args.extend([
            "--certificate-identity".to_owned(),
            read("identity", IDENTITY),
            "--certificate-oidc-issuer".to_owned(),
            read("issuer", ISSUER),
        ]);
    }
    if case.join("trusted_root.json").exists() {
        args.extend([
            "--trusted-root".to_owned(),
            case.join("trusted_root.json").display().to_string(),
        ]);
    }
    args.push(artifact.to_owned());
    args
}

#[test]
fn every_conformance_case_gives_its_expected_result_by_path_and_by_digest() {
    let dir = cases_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the conformance cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("bundle.sigstore.json").exists())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 34, "the README lists 34 cases");
    let mut wrong = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expect_ok = !name.ends_with("_fail");
        let artifact = if case.join("artifact").exists() {
            case.join("artifact")
        } else {
            dir.join("a.txt")
        };
        let digest = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(std::fs::read(&artifact).expect("artifact")))
        );
        for (mode, given) in [("path", artifact.display().to_string()), ("digest", digest)] {
            let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(args(case, &given))
                .env("NO_PROXY", "*")
                .env("HTTPS_PROXY", "http://127.0.0.1:9")
                .output()
                .expect("run portcullis");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let code = out.status.code();
            let ok = match code {
                Some(0) => true,
                // Rejected: exit 1 with the check that failed.
                Some(1) if stderr.contains("not verified: ") => false,
                other => {
                    wrong.push(format!("{name} ({mode}): exit {other:?}: {stderr}"));
                    continue;
                }
            };
            eprintln!(
                "{name} ({mode}): {}",
                if ok {
                    "verified".to_owned()
                } else {
                    stderr.trim().to_owned()
                }
            );
            if ok != expect_ok {
                wrong.push(format!(
                    "{name} ({mode}): expected {}, got {}: {}",
                    if expect_ok { "verified" } else { "rejected" },
                    if ok { "verified" } else { "rejected" },
                    stderr.trim()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong results:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
