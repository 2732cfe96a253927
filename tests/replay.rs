//! `portcullis policy replay`: a scripted scenario with a real registry and
//! a real proxy writing a real audit trail, replayed against candidate
//! policies, live and offline, through the library and through the binary.
//!
//! Scenario: `demo/a` signed with key1, `demo/b` signed with key2,
//! `demo/c` unsigned, `sandbox/d` unsigned. Policy P1 trusts key1 and key2
//! and exempts `sandbox/**` (ALWAYS_ALLOW): a, b, d are served and c is
//! denied. Candidate P2 trusts only key1 and drops the sandbox rule: exactly
//! b (key2 no longer trusted) and d (now under the default rule, unsigned)
//! are newly denied. Candidate P3 is P2 with an ALWAYS_ALLOW default: c is
//! newly allowed and nothing is newly denied.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::content;
use common::registry::Registry;
use common::trust::{self, KeyPair, TrustConfig, ATTESTOR, PORTCULLIS};
use common::Proxy;
use portcullis::cli::replay::{self, Change, ReplayOptions, ReplayReport};
use portcullis::config::Config;

const DEFAULT: &str = "default admission rule";

struct Scenario {
    registry: Registry,
    dir: tempfile::TempDir,
    audit: PathBuf,
    key1: KeyPair,
    /// repository → digest
    digests: Vec<(&'static str, String)>,
}

impl Scenario {
    /// Pushes and signs the four images, pulls them through a proxy
    /// running P1 and waits for the four audit lines.
    fn run() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start();
        let key1 = trust::keygen(dir.path(), "key1");
        let key2 = trust::keygen(dir.path(), "key2");
        let mut digests = Vec::new();
        for (seed, (repo, key)) in [
            ("demo/a", Some(&key1)),
            ("demo/b", Some(&key2)),
            ("demo/c", None),
            ("sandbox/d", None),
        ]
        .into_iter()
        .enumerate()
        {
            let pushed = content::push_image(
                &registry.url(),
                repo,
                Some("v1"),
                common::host_arch(),
                seed as u64 + 1,
                &[256],
            );
            if let Some(key) = key {
                trust::sign(
                    &registry.url(),
                    &format!("{}/{repo}:v1", registry.host()),
                    repo,
                    &pushed.digest,
                    key,
                    &[],
                );
            }
            digests.push((repo, pushed.digest));
        }
        let audit = dir.path().join("audit.jsonl");
        let p1 = TrustConfig::new(
            &registry.host(),
            &registry.url(),
            &[("key1", &key1), ("key2", &key2)],
        )
        .yaml()
            + &format!("audit: {{path: {}, fsync: always}}\n", audit.display());
        let proxy = Proxy::start(&p1);
        for (repo, expected) in [
            ("demo/a", 200),
            ("demo/b", 200),
            ("demo/c", 403),
            ("sandbox/d", 200),
        ] {
            let r = trust::pull_v1(&proxy, repo);
            assert_eq!(r.status, expected, "pull {repo} under P1: {}", r.text());
        }
        let count = || {
            std::fs::read_to_string(&audit)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        };
        assert!(
            trust::wait_until(Duration::from_secs(10), || count() == 4),
            "expected 4 audit lines, found {}:\n{}",
            count(),
            std::fs::read_to_string(&audit).unwrap_or_default()
        );
        drop(proxy);
        Scenario {
            registry,
            dir,
            audit,
            key1,
            digests,
        }
    }

    fn digest(&self, repo: &str) -> &str {
        &self.digests.iter().find(|(r, _)| *r == repo).unwrap().1
    }

    fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.registry.host())
    }

    fn sandbox_rule(&self) -> String {
        format!(
            "repository admission rule {}/sandbox/**",
            self.registry.host()
        )
    }

    /// A candidate trusting only key1, without the sandbox rule, with
    /// `default_mode` as the default rule's evaluation mode.
    fn candidate(&self, name: &str, default_mode: &str) -> PathBuf {
        let mut config = TrustConfig::new(
            &self.registry.host(),
            &self.registry.url(),
            &[("key1", &self.key1)],
        );
        config.default_mode = default_mode.into();
        let with_sandbox = config.yaml().replace("{listen}", "127.0.0.1:0");
        let sandbox_line = format!(
            "  \"{}/sandbox/**\": {{evaluationMode: ALWAYS_ALLOW}}\n",
            self.registry.host()
        );
        assert!(
            with_sandbox.contains(&sandbox_line),
            "TrustConfig changed shape; update this test:\n{with_sandbox}"
        );
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, with_sandbox.replace(&sandbox_line, "")).unwrap();
        path
    }

    fn replay(&self, audit: &Path, candidate: &Path, offline: bool) -> ReplayReport {
        let config = Config::load(candidate).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(replay::replay(audit, &config, ReplayOptions { offline }))
            .unwrap()
    }
}

fn by_reference(changes: &[Change]) -> Vec<(&str, &str)> {
    let mut v: Vec<_> = changes
        .iter()
        .map(|c| (c.reference.as_str(), c.digest.as_str()))
        .collect();
    v.sort();
    v
}

/// Asserts P2's outcome: newly denied exactly {b, d}, with reasons.
fn assert_p2(s: &Scenario, report: &ReplayReport, offline: bool) {
    let mode = if offline { "offline" } else { "live" };
    let text = report.render();
    assert!(report.errors.is_empty(), "{mode}: {text}");
    assert_eq!(report.replayed, 4, "{mode}: {text}");
    assert_eq!(report.skipped, 0, "{mode}: {text}");
    assert_eq!(report.unchanged, 2, "{mode}: a and c: {text}");
    assert!(report.newly_allowed.is_empty(), "{mode}: {text}");
    let (b, d) = (s.reference("demo/b"), s.reference("sandbox/d"));
    let mut expected = vec![
        (b.as_str(), s.digest("demo/b")),
        (d.as_str(), s.digest("sandbox/d")),
    ];
    expected.sort();
    assert_eq!(
        by_reference(&report.newly_denied),
        expected,
        "{mode}: {text}"
    );

    let change = |r: &str| {
        report
            .newly_denied
            .iter()
            .find(|c| c.reference == r)
            .unwrap()
    };
    let cb = change(&b);
    assert_eq!(cb.tag.as_deref(), Some("v1"));
    assert_eq!(
        (cb.old_verdict.as_str(), cb.new_verdict.as_str()),
        ("allow", "deny")
    );
    assert_eq!(
        (cb.old_rule.as_str(), cb.new_rule.as_str()),
        (DEFAULT, DEFAULT)
    );
    assert_eq!(
        cb.reason,
        format!(
            "attestor {ATTESTOR}: no valid signature (1 checked: 1 by unknown key or altered); \
             key key2 is not trusted by attestor {ATTESTOR} (it verified this signature when \
             the pull was recorded)"
        ),
        "{mode}"
    );
    let cd = change(&d);
    assert_eq!(
        (cd.old_verdict.as_str(), cd.new_verdict.as_str()),
        ("allow", "deny")
    );
    assert_eq!(cd.old_rule, s.sandbox_rule());
    assert_eq!(cd.new_rule, DEFAULT);
    let evidence = if offline {
        format!("no recorded evidence for attestor {ATTESTOR} (offline)")
    } else {
        format!("attestor {ATTESTOR}: no valid signature (no signatures found)")
    };
    assert_eq!(
        cd.reason,
        format!(
            "now under {DEFAULT} (REQUIRE_ATTESTATION) instead of {}; {evidence}",
            s.sandbox_rule()
        ),
        "{mode}"
    );
    assert!(
        text.starts_with(
            "replayed 4 image(s): 2 newly denied, 0 newly allowed, 2 unchanged \
             (0 record(s) skipped, 0 error(s))\n"
        ),
        "{mode}: {text}"
    );
    assert!(
        text.contains(&format!(
            "newly denied (2):\n  {DEFAULT} (2):\n    {b}:v1@{}\n      was allow by {DEFAULT}, now deny\n",
            s.digest("demo/b")
        )),
        "{mode}: {text}"
    );
    assert!(
        text.contains(&format!(
            "    {d}:v1@{}\n      was allow by {}, now deny\n      why: now under",
            s.digest("sandbox/d"),
            s.sandbox_rule()
        )),
        "{mode}: {text}"
    );
    assert!(text.contains("\nnewly allowed: none\n"), "{mode}: {text}");
}

/// Asserts P3's outcome: c newly allowed, nothing newly denied.
fn assert_p3(s: &Scenario, report: &ReplayReport, offline: bool) {
    let mode = if offline { "offline" } else { "live" };
    let text = report.render();
    assert!(report.errors.is_empty(), "{mode}: {text}");
    assert!(report.newly_denied.is_empty(), "{mode}: {text}");
    assert_eq!(report.unchanged, 3, "{mode}: {text}");
    let c = s.reference("demo/c");
    assert_eq!(
        by_reference(&report.newly_allowed),
        [(c.as_str(), s.digest("demo/c"))],
        "{mode}: {text}"
    );
    let cc = &report.newly_allowed[0];
    assert_eq!(
        (cc.old_verdict.as_str(), cc.new_verdict.as_str()),
        ("deny", "allow")
    );
    assert_eq!(
        (cc.old_rule.as_str(), cc.new_rule.as_str()),
        (DEFAULT, DEFAULT)
    );
    assert_eq!(cc.reason, "ALWAYS_ALLOW", "{mode}");
}

#[test]
fn replay_reports_the_exact_changes_live_and_offline() {
    let s = Scenario::run();
    let p2 = s.candidate("p2", "REQUIRE_ATTESTATION");
    for offline in [false, true] {
        assert_p2(&s, &s.replay(&s.audit, &p2, offline), offline);
    }
    let p3 = s.candidate("p3", "ALWAYS_ALLOW");
    for offline in [false, true] {
        assert_p3(&s, &s.replay(&s.audit, &p3, offline), offline);
    }

    // A damaged trail: bad lines are reported by number and skipped; a
    // repeated pull counts once.
    let text = std::fs::read_to_string(&s.audit).unwrap();
    let first = text.lines().next().unwrap();
    let damaged = s.dir.path().join("damaged.jsonl");
    std::fs::write(&damaged, format!("{text}\n{{\"truncated\": \n{first}\n")).unwrap();
    let report = s.replay(&damaged, &p2, true);
    assert_eq!(report.errors.len(), 1, "{}", report.render());
    assert!(
        report.errors[0].starts_with("line 6: "),
        "{:?}",
        report.errors
    );
    assert_eq!(report.replayed, 4);
    assert_eq!(report.skipped, 1, "the repeated record");
    assert_eq!(report.newly_denied.len(), 2);

    // Live replay needs the upstream: with it gone, every image is an
    // error, never a verdict.
    let url = s.registry.url();
    let unreachable = std::fs::read_to_string(&p2)
        .unwrap()
        .replace(&format!("url: {url}"), "url: http://127.0.0.1:9");
    let p2_down = s.dir.path().join("p2-down.yaml");
    std::fs::write(&p2_down, unreachable).unwrap();
    let report = s.replay(&s.audit, &p2_down, false);
    assert_eq!(report.errors.len(), 4, "{}", report.render());
    assert_eq!(report.replayed, 0);
    assert!(report.newly_denied.is_empty());
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(PORTCULLIS)
        .args(["policy", "replay"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_cli_prints_the_report() {
    let s = Scenario::run();
    let p2 = s.candidate("p2", "REQUIRE_ATTESTATION");
    let audit = s.audit.to_str().unwrap();
    let config = p2.to_str().unwrap();
    for offline in [false, true] {
        let mut args = vec!["--audit", audit, "--config", config];
        if offline {
            args.push("--offline");
        }
        // Text: exactly the library's rendering.
        let out = cli(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "policy replay {args:?}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report = s.replay(&s.audit, &p2, offline);
        assert_p2(&s, &report, offline);
        assert_eq!(stdout, report.render(), "{args:?}");

        // JSON.
        args.push("--json");
        let out = cli(&args);
        assert!(out.status.success(), "{args:?}: {}", out.status);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(json, report.to_json(), "{args:?}");
        let mut denied: Vec<&str> = json["newly_denied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["reference"].as_str().unwrap())
            .collect();
        denied.sort();
        assert_eq!(denied, [s.reference("demo/b"), s.reference("sandbox/d")]);
        assert_eq!(json["newly_allowed"], serde_json::json!([]));
        assert_eq!(json["newly_denied_by_rule"][DEFAULT], 2);
    }

    // An unreadable audit file or an invalid candidate: exit 2.
    let missing = s.dir.path().join("missing.jsonl");
    let out = cli(&["--audit", missing.to_str().unwrap(), "--config", config]);
    assert_eq!(out.status.code(), Some(2), "missing audit file");
    let invalid = s.dir.path().join("invalid.yaml");
    std::fs::write(&invalid, "listen: nowhere\n").unwrap();
    let out = cli(&["--audit", audit, "--config", invalid.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "invalid candidate");
}
