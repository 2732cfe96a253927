//! `portcullis verify <ref> --config FILE` against a real registry: exit 0
//! for a signed image, 1 with an explanation naming the failure for each
//! denial case, 2 when the upstream cannot be reached.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::clients;
use common::content;
use common::registry::Registry;
use common::trust::{self, TrustConfig, ALL_CASES};

fn write_config(dir: &Path, cfg: &TrustConfig) -> PathBuf {
    let p = dir.join("portcullis.yaml");
    let listen = format!("127.0.0.1:{}", common::free_port());
    std::fs::write(&p, cfg.yaml().replace("{listen}", &listen)).expect("write config");
    p
}

fn verify(reference: &str, config: &Path) -> Output {
    clients::run_unchecked(
        Command::new(trust::PORTCULLIS)
            .arg("verify")
            .arg(reference)
            .arg("--config")
            .arg(config),
        &format!("portcullis verify {reference}"),
    )
}

#[test]
fn verify_exits_0_for_signed_and_1_explaining_each_denial() {
    let reg = Registry::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let ci = trust::keygen(keys.path(), "ci");
    let other = trust::keygen(keys.path(), "other");
    let config = write_config(
        keys.path(),
        &TrustConfig::new(&reg.host(), &reg.url(), &[("ci-2026", &ci)]),
    );

    let img = content::push_image(
        &reg.url(),
        "demo/signed",
        Some("v1"),
        common::host_arch(),
        91,
        &[4096],
    );
    let signed_ref = format!("{}/demo/signed:v1", reg.host());
    trust::sign(
        &reg.url(),
        &signed_ref,
        "demo/signed",
        &img.digest,
        &ci,
        &[],
    );
    let out = verify(&signed_ref, &config);
    let text = trust::output_text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify of a signed image:\n{text}"
    );
    assert!(
        text.contains("built-by-ci") && text.contains(&img.digest),
        "the allow explanation should name the attestor and the digest:\n{text}"
    );

    for (i, case) in ALL_CASES.into_iter().enumerate() {
        let p = trust::prepare_case(case, &reg.host(), &ci, &other, 100 + 10 * i as u64);
        let reference = format!("{}/{}:{}", reg.host(), p.repo, p.tag);
        let out = verify(&reference, &config);
        let text = trust::output_text(&out);
        eprintln!("--- verify {case:?} ---\n{text}");
        assert_eq!(
            out.status.code(),
            Some(1),
            "verify {case:?} ({reference}) should exit 1:\n{text}"
        );
        for w in trust::DENIAL_WORDS.iter().chain([&p.failure]) {
            assert!(
                text.contains(w),
                "verify {case:?}: explanation lacks {w:?}:\n{text}"
            );
        }
    }
}

#[test]
fn verify_exits_2_when_the_upstream_is_unreachable() {
    let keys = tempfile::tempdir().expect("tempdir");
    let ci = trust::keygen(keys.path(), "ci");
    // A port nothing listens on.
    let host = format!("127.0.0.1:{}", common::free_port());
    let config = write_config(
        keys.path(),
        &TrustConfig::new(&host, &format!("http://{host}"), &[("ci-2026", &ci)]),
    );
    let out = verify(&format!("{host}/demo/app:v1"), &config);
    assert_eq!(
        out.status.code(),
        Some(2),
        "verify against an unreachable upstream:\n{}",
        trust::output_text(&out)
    );
}
