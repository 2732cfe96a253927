//! Unit tests of `policy replay`: recorded results, parsing, offline
//! decisions, index inheritance and the report.

use std::path::Path;

use super::audit::{parse_audit, Image};
use super::offline::{check_from_record, offline_decision, offline_decisions};
use super::report::{classify, Diff};
use super::*;
use crate::audit::record::{
    AttestorRecord, DecisionRecord, EvidenceRecord, RecordedVerdict, Subject,
};
use crate::policy::{Check, Policy, RuleSource, Verdict};

const R: &str = "r.test";

fn pem() -> String {
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    p256::SecretKey::random(&mut rand_core::OsRng)
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

/// A candidate: default REQUIRE_ATTESTATION by `attestors` (name, key
/// ids), plus `extra_rules` under repositoryAdmissionRules.
fn policy(default_mode: &str, attestors: &[(&str, &[&str])], extra_rules: &str) -> Policy {
    let names: Vec<&str> = attestors.iter().map(|(n, _)| *n).collect();
    let mut y = format!(
        "listen: 127.0.0.1:0\n\
         upstreams:\n  - registry: {R}\n    url: http://127.0.0.1:9\n    default: true\n\
         policy:\n  defaultAdmissionRule:\n    evaluationMode: {default_mode}\n    \
         requireAttestationsBy: [{}]\n  repositoryAdmissionRules:\n{extra_rules}    \
         \"{R}/never/**\": {{evaluationMode: ALWAYS_DENY}}\nattestors:\n",
        names.join(", ")
    );
    for (name, ids) in attestors {
        y.push_str(&format!("  - name: {name}\n    publicKeys:\n"));
        for id in *ids {
            y.push_str(&format!(
                "      - id: {id}\n        pkixPublicKey:\n          signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n"
            ));
            for line in pem().lines() {
                y.push_str(&format!("            {line}\n"));
            }
        }
    }
    let config = Config::from_yaml(&y, Path::new(".")).unwrap_or_else(|e| panic!("{e}\n{y}"));
    crate::app::compile_policy(&config).unwrap()
}

const SANDBOX: &str = "    \"r.test/sandbox/**\": {evaluationMode: ALWAYS_ALLOW}\n";

fn evidence(source: &str, result: &str, key: Option<&str>) -> EvidenceRecord {
    EvidenceRecord {
        source: source.into(),
        result: result.into(),
        detail: match result {
            "other-digest" => "valid signature, but for another digest (sha256:0ther)".into(),
            "malformed" => "malformed: not base64".into(),
            _ => String::new(),
        },
        key_id: key.map(str::to_owned),
        kind: None,
        predicate_type: None,
        note: None,
        keyless: None,
    }
}

fn record(repo: &str, digest: &str, verdict: RecordedVerdict, rule: &str) -> DecisionRecord {
    DecisionRecord {
        time: "2026-01-01T00:00:00.000Z".into(),
        request_id: 1,
        client_addr: None,
        user_agent: None,
        identity: None,
        client_identity: None,
        subject: Subject::Manifest,
        reference: format!("{R}/{repo}"),
        tag: Some("v1".into()),
        digest: digest.into(),
        rule: rule.into(),
        evaluation_mode: "REQUIRE_ATTESTATION".into(),
        enforcement_mode: "ENFORCED_BLOCK_AND_AUDIT_LOG".into(),
        verdict,
        reason_category: "ok".into(),
        reason: String::new(),
        attestors: Vec::new(),
        cache_hit: false,
        latency_ms: 1.0,
        break_glass_justification: None,
        replica: None,
        stale: None,
    }
}

fn with_attestor(mut r: DecisionRecord, name: &str, ev: Vec<EvidenceRecord>) -> DecisionRecord {
    r.attestors.push(AttestorRecord {
        name: name.into(),
        satisfied: ev.iter().any(|e| e.result == "valid"),
        summary: String::new(),
        evidence: ev,
    });
    r
}

fn image(record: DecisionRecord) -> Image {
    let tag = record.tag.clone();
    Image { record, tag }
}

fn offline(policy: &Policy, r: DecisionRecord) -> Diff {
    let e = offline_decision(policy, &r);
    classify(&image(r), e)
}

const DEFAULT: &str = "default admission rule";

#[test]
fn recorded_results_map_back_to_checks() {
    let c = |result: &str, key: Option<&str>| check_from_record(&evidence("s", result, key));
    assert_eq!(
        c("valid", Some("k1")),
        Check::Valid {
            key_id: "k1".into()
        }
    );
    assert!(matches!(c("valid", None), Check::Malformed { .. }));
    assert_eq!(c("unknown-key", None), Check::UnknownKey);
    assert_eq!(
        c("other-digest", None),
        Check::OtherDigest {
            signed: "sha256:0ther".into()
        }
    );
    assert_eq!(
        c("malformed", None),
        Check::Malformed {
            reason: "not base64".into()
        }
    );
    assert!(matches!(
        c("other-repository", None),
        Check::OtherRepository { .. }
    ));
    assert!(
        matches!(c("from-the-future", None), Check::Malformed { reason } if reason.contains("from-the-future"))
    );
}

#[test]
fn parsing_skips_blobs_and_artifacts_reports_bad_lines_and_keeps_the_latest() {
    let mut first = record("a", "sha256:aa", RecordedVerdict::Deny, DEFAULT);
    first.time = "2026-01-01T00:00:00.000Z".into();
    let mut later = record("a", "sha256:aa", RecordedVerdict::Allow, DEFAULT);
    later.time = "2026-01-02T00:00:00.000Z".into();
    later.tag = None; // pulled by digest: the tag seen before is kept
    let mut blob = record("a", "sha256:b10b", RecordedVerdict::Deny, DEFAULT);
    blob.subject = Subject::Blob;
    let artifact = record(
        "a",
        "sha256:5165",
        RecordedVerdict::Exempt,
        &RuleSource::Artifact.to_string(),
    );
    let line = |r: &DecisionRecord| serde_json::to_string(r).unwrap();
    let text = [
        line(&later),
        String::new(),
        "{not json".into(),
        line(&blob),
        "   ".into(),
        line(&first),
        line(&artifact),
        line(&record("b", "sha256:bb", RecordedVerdict::Allow, DEFAULT)),
    ]
    .join("\n");
    let parsed = parse_audit(text.as_bytes());
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
    assert!(
        parsed.errors[0].starts_with("line 3: "),
        "{:?}",
        parsed.errors
    );
    assert_eq!(parsed.skipped, 3, "blob, artifact, superseded record");
    assert_eq!(parsed.images.len(), 2);
    let a = &parsed.images[0];
    assert_eq!(
        a.record.verdict,
        RecordedVerdict::Allow,
        "latest by time wins"
    );
    assert_eq!(a.tag.as_deref(), Some("v1"));
    assert_eq!(parsed.images[1].record.reference, "r.test/b");
}

#[test]
fn a_valid_signature_counts_for_any_attestor_holding_its_key() {
    // Recorded under attestor "old-ci"; the candidate calls it "ci".
    let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
    let r = with_attestor(
        record("a", "sha256:aa", RecordedVerdict::Deny, DEFAULT),
        "old-ci",
        vec![evidence("sig0", "valid", Some("k1"))],
    );
    match offline(&p, r) {
        Diff::NewlyAllowed(c) => {
            assert_eq!(c.new_verdict, "allow");
            assert!(
                c.reason.contains("attestor ci: verified (key k1)"),
                "{}",
                c.reason
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_key_no_longer_held_is_named() {
    let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
    let r = with_attestor(
        record("b", "sha256:bb", RecordedVerdict::Allow, DEFAULT),
        "ci",
        vec![evidence("sig0", "valid", Some("k2"))],
    );
    match offline(&p, r) {
        Diff::NewlyDenied(c) => {
            assert_eq!(
                (c.old_verdict.as_str(), c.new_verdict.as_str()),
                ("allow", "deny")
            );
            assert_eq!(c.new_rule, DEFAULT);
            assert!(
                c.reason.contains("1 by unknown key or altered")
                    && c.reason.contains("key k2 is not trusted by attestor ci"),
                "{}",
                c.reason
            );
            assert!(!c.reason.contains("now under"), "same rule: {}", c.reason);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failures_carry_over_and_unknown_keys_are_not_rechecked_offline() {
    let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1", "k9"])], "");
    let r = with_attestor(
        record("c", "sha256:cc", RecordedVerdict::Deny, DEFAULT),
        "ci",
        vec![
            evidence("sig0", "unknown-key", None),
            evidence("sig1", "other-digest", None),
        ],
    );
    let e = offline_decision(&p, &r);
    assert_eq!(e.decision.verdict, Verdict::Deny);
    let checks: Vec<_> = e.decision.attestors[0]
        .evidence
        .iter()
        .map(|e| &e.check)
        .collect();
    assert_eq!(
        checks,
        [
            &Check::UnknownKey,
            &Check::OtherDigest {
                signed: "sha256:0ther".into()
            }
        ]
    );
    assert!(
        e.notes.iter().any(|n| n.contains("not re-checked")),
        "{:?}",
        e.notes
    );
    assert!(matches!(classify(&image(r), e), Diff::Unchanged));
}

#[test]
fn an_attestor_not_recorded_has_no_evidence_offline() {
    // Recorded under ALWAYS_ALLOW (no attestors); the candidate drops
    // that rule, so the default applies.
    let sandbox_rule = "repository admission rule r.test/sandbox/**";
    let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
    let r = record(
        "sandbox/d",
        "sha256:dd",
        RecordedVerdict::Allow,
        sandbox_rule,
    );
    match offline(&p, r) {
        Diff::NewlyDenied(c) => {
            assert_eq!(c.old_rule, sandbox_rule);
            assert_eq!(c.new_rule, DEFAULT);
            assert_eq!(
                c.reason,
                format!(
                    "now under {DEFAULT} (REQUIRE_ATTESTATION) instead of {sandbox_rule}; \
                     no recorded evidence for attestor ci (offline)"
                )
            );
        }
        other => panic!("{other:?}"),
    }
    // With the rule kept, nothing changes.
    let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], SANDBOX);
    let r = record(
        "sandbox/d",
        "sha256:dd",
        RecordedVerdict::Allow,
        sandbox_rule,
    );
    assert!(matches!(offline(&p, r), Diff::Unchanged));
}

#[test]
fn served_means_anything_but_deny() {
    let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
    for old in [
        RecordedVerdict::Allow,
        RecordedVerdict::Exempt,
        RecordedVerdict::DryrunDeny,
        RecordedVerdict::Breakglass,
    ] {
        let r = record("never/x", "sha256:ee", old, DEFAULT);
        match offline(&p, r) {
            Diff::NewlyDenied(c) => {
                assert_eq!(c.old_verdict, old.as_str());
                assert!(c.reason.contains("ALWAYS_DENY"), "{}", c.reason);
            }
            other => panic!("{old:?}: {other:?}"),
        }
    }
    let r = record("never/x", "sha256:ee", RecordedVerdict::Deny, DEFAULT);
    assert!(matches!(offline(&p, r), Diff::Unchanged));
    // Dry run under the candidate is served: a recorded deny becomes
    // newly allowed, as `dryrun-deny`.
    let p = policy(
        "REQUIRE_ATTESTATION",
        &[("ci", &["k1"])],
        "    \"r.test/dry/**\": {evaluationMode: REQUIRE_ATTESTATION, enforcementMode: DRYRUN_AUDIT_LOG_ONLY, requireAttestationsBy: [ci]}\n",
    );
    let r = record("dry/x", "sha256:ff", RecordedVerdict::Deny, DEFAULT);
    match offline(&p, r) {
        Diff::NewlyAllowed(c) => assert_eq!(c.new_verdict, "dryrun-deny"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn children_follow_their_index() {
    let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
    let index = with_attestor(
        record("m", "sha256:1dx", RecordedVerdict::Allow, DEFAULT),
        "ci",
        vec![evidence("sig0", "valid", Some("k1"))],
    );
    let mut child = record("m", "sha256:c1", RecordedVerdict::Allow, DEFAULT);
    child.tag = None;
    child.reason =
        format!("image {R}/m@sha256:c1 allowed by {DEFAULT}: listed by admitted index sha256:1dx");
    assert_eq!(admitted_index(&child), Some("sha256:1dx"));
    let images = vec![image(index.clone()), image(child.clone())];
    let out = offline_decisions(&p, &images);
    let child_decision = &out[1].as_ref().unwrap().decision;
    assert_eq!(child_decision.verdict, Verdict::Allow);
    assert!(child_decision.reason.contains("listed by index sha256:1dx"));

    // The index's key is dropped: both are newly denied.
    let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k2"])], "");
    let out = offline_decisions(&p, &images);
    let e = out[1].clone().unwrap();
    assert!(e
        .notes
        .iter()
        .any(|n| n.contains("index sha256:1dx is denied too")));
    assert!(matches!(classify(&images[1], e), Diff::NewlyDenied(_)));

    // Without its index in the file, the child is judged alone.
    let out = offline_decisions(&p, &[image(child)]);
    let e = out[0].clone().unwrap();
    assert!(
        e.notes.iter().any(|n| n.contains("not in the audit file")),
        "{:?}",
        e.notes
    );
}

#[test]
fn the_report_groups_by_rule() {
    let change = |repo: &str, rule: &str, tag: Option<&str>| Change {
        reference: format!("{R}/{repo}"),
        digest: "sha256:aa".into(),
        tag: tag.map(str::to_owned),
        old_verdict: "allow".into(),
        new_verdict: "deny".into(),
        old_rule: DEFAULT.into(),
        new_rule: rule.into(),
        reason: format!("because {repo}"),
    };
    let report = ReplayReport {
        replayed: 4,
        skipped: 1,
        newly_denied: vec![
            change("x", DEFAULT, Some("v1")),
            change("y", DEFAULT, None),
            change("z", "repository admission rule r.test/z/**", None),
        ],
        newly_allowed: Vec::new(),
        unchanged: 1,
        errors: vec!["line 2: bad".into()],
    };
    let text = report.render();
    assert!(text.starts_with(
        "replayed 4 image(s): 3 newly denied, 0 newly allowed, 1 unchanged (1 record(s) skipped, 1 error(s))\n"
    ), "{text}");
    assert!(text.contains(&format!(
        "newly denied (3):\n  {DEFAULT} (2):\n    r.test/x:v1@sha256:aa\n      was allow by {DEFAULT}, now deny\n      why: because x\n    r.test/y@sha256:aa\n"
    )), "{text}");
    assert!(
        text.contains("  repository admission rule r.test/z/** (1):\n"),
        "{text}"
    );
    assert!(text.contains("\nnewly allowed: none\n"), "{text}");
    assert!(text.ends_with("errors (1):\n  line 2: bad\n"), "{text}");
    let json = report.to_json();
    assert_eq!(json["newly_denied"][0]["tag"], "v1");
    assert_eq!(json["newly_denied"][1]["tag"], serde_json::Value::Null);
    assert_eq!(json["newly_denied_by_rule"][DEFAULT], 2);
    assert_eq!(json["errors"][0], "line 2: bad");
    assert_eq!(json["replayed"], 4);
}

/// A candidate whose one attestor is keyless: `identities` is the YAML
/// flow list.
fn keyless_policy(identities: &str) -> Policy {
    let y = format!(
        "listen: 127.0.0.1:0\n\
         upstreams:\n  - registry: {R}\n    url: http://127.0.0.1:9\n    default: true\n\
         policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
         requireAttestationsBy: [release]\n\
         attestors:\n  - name: release\n    keyless:\n      identities: {identities}\n"
    );
    let config = Config::from_yaml(&y, Path::new(".")).unwrap_or_else(|e| panic!("{e}\n{y}"));
    crate::app::compile_policy(&config).unwrap()
}

#[test]
fn keyless_evidence_replays_against_the_candidates_identities() {
    const WORKFLOW: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1";
    const ISSUER: &str = "https://token.actions.githubusercontent.com";
    let mut signed = evidence("sig0", "valid", Some(&format!("keyless:{WORKFLOW}")));
    signed.keyless = Some(crate::policy::KeylessSigner {
        key_id: format!("keyless:{WORKFLOW}"),
        subject: WORKFLOW.into(),
        issuer: ISSUER.into(),
        certificate_sha256: "ab".repeat(32),
        log_index: Some(7),
        integrated_time: Some(1_700_000_000),
    });
    let r = || {
        with_attestor(
            record("k", "sha256:kk", RecordedVerdict::Allow, DEFAULT),
            "release",
            vec![signed.clone()],
        )
    };
    let same = keyless_policy(&format!(
        "[{{issuer: {ISSUER}, subjectRegExp: 'https://github.com/acme/app/.*'}}]"
    ));
    assert!(
        matches!(offline(&same, r()), Diff::Unchanged),
        "{:?}",
        offline(&same, r())
    );
    for other in [
        format!("[{{issuer: {ISSUER}, subject: https://github.com/acme/other/x.yml@main}}]"),
        format!("[{{issuer: https://accounts.google.com, subject: {WORKFLOW}}}]"),
        // Claims were not recorded: they cannot be re-checked offline.
        format!("[{{issuer: {ISSUER}, subject: {WORKFLOW}, claims: {{buildTrigger: push}}}}]"),
    ] {
        match offline(&keyless_policy(&other), r()) {
            Diff::NewlyDenied(_) => {}
            d => panic!("{other}: {d:?}"),
        }
    }
    // A key-based attestor does not take keyless evidence by its key id.
    let keyed = policy("REQUIRE_ATTESTATION", &[("release", &["k1"])], "");
    assert!(matches!(offline(&keyed, r()), Diff::NewlyDenied(_)));
}
