use super::*;
use crate::config::policy::{AttestorDoc, PkixKeyDoc, PolicyDoc, PublicKeyDoc};
use p256::pkcs8::EncodePublicKey;

fn key_pem() -> String {
    p256::ecdsa::SigningKey::random(&mut rand_core::OsRng)
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
}

fn attestor(name: &str) -> AttestorDoc {
    AttestorDoc {
        name: name.into(),
        description: None,
        update_time: None,
        etag: None,
        user_owned_grafeas_note: None,
        public_keys: vec![PublicKeyDoc {
            id: Some(format!("{name}-key")),
            comment: None,
            pkix_public_key: Some(PkixKeyDoc {
                public_key_pem: Some(key_pem()),
                public_key_file: None,
                public_key_file_content: None,
                signature_algorithm: "ECDSA_P256_SHA256".into(),
                key_id: None,
            }),
            ascii_armored_pgp_public_key: None,
        }],
        keyless: None,
        signature_repository: None,
        attestations: Vec::new(),
    }
}

fn policy(yaml: &str, attestors: &[AttestorDoc]) -> Result<Policy, PolicyError> {
    let doc: PolicyDoc = serde_yaml_ng::from_str(yaml).unwrap();
    Policy::compile(&doc, attestors)
}

/// A policy as `gcloud container binauthz policy export` prints it.
const BINAUTHZ_EXPORT: &str = r#"
admissionWhitelistPatterns:
- namePattern: gcr.io/google_containers/*
- namePattern: gcr.io/google-containers/*
clusterAdmissionRules:
  us-central1-a.prod-cluster:
    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
    evaluationMode: REQUIRE_ATTESTATION
    requireAttestationsBy:
    - projects/my-project/attestors/built-by-cloud-build
defaultAdmissionRule:
  enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
  evaluationMode: REQUIRE_ATTESTATION
  requireAttestationsBy:
  - projects/my-project/attestors/built-by-cloud-build
etag: '"F3lMz7Mq2Ra3"'
globalPolicyEvaluationMode: ENABLE
name: projects/my-project/policy
updateTime: '2026-01-10T12:00:00.123456Z'
"#;

#[test]
fn binauthz_export_loads_and_reports_ignored_fields() {
    let p = policy(BINAUTHZ_EXPORT, &[attestor("built-by-cloud-build")]).unwrap();
    let rule = p.rule_for("gcr.io/my-project/app");
    assert_eq!(rule.source, RuleSource::Default);
    assert_eq!(rule.attestors, vec!["built-by-cloud-build".to_string()]);
    assert_eq!(
        p.rule_for("gcr.io/google_containers/pause").source,
        RuleSource::Allowlist("gcr.io/google_containers/*".into())
    );
    assert_eq!(p.ignored.len(), 2, "{:?}", p.ignored);
    assert!(crate::app::policy_summary(&p).contains("clusterAdmissionRules"));
    assert!(
        p.ignored[0].contains("applies to cluster \"us-central1-a.prod-cluster\"")
            && p.ignored[0].contains("no cluster: configured"),
        "{:?}",
        p.ignored
    );
    assert!(crate::app::policy_summary(&p).contains("globalPolicyEvaluationMode"));
}

#[test]
fn unknown_fields_and_bad_values_are_rejected() {
    let bad_enum = "defaultAdmissionRule:\n  evaluationMode: REQUIRE_ATTESTATIONS\n";
    assert!(serde_yaml_ng::from_str::<PolicyDoc>(bad_enum).is_err());
    let unknown = "defaultAdmissionRule:\n  evaluationMode: ALWAYS_ALLOW\n  bogus: 1\n";
    assert!(serde_yaml_ng::from_str::<PolicyDoc>(unknown).is_err());
    let e = policy(
        "defaultAdmissionRule:\n  evaluationMode: REQUIRE_ATTESTATION\n  requireAttestationsBy: [nobody]\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("nobody"), "{e}");
    let e = policy(
        "defaultAdmissionRule:\n  evaluationMode: REQUIRE_ATTESTATION\n",
        &[],
    )
    .unwrap_err();
    assert!(e.field.ends_with("requireAttestationsBy"), "{e}");
    let mut p384 = attestor("a");
    p384.public_keys[0]
        .pkix_public_key
        .as_mut()
        .unwrap()
        .signature_algorithm = "ECDSA_P384_SHA384".into();
    let e = policy(
        "defaultAdmissionRule:\n  evaluationMode: ALWAYS_ALLOW\n",
        &[p384],
    )
    .unwrap_err();
    assert!(e.field.contains("publicKeyPem"), "{e}");
    let mut pgp = attestor("a");
    pgp.public_keys[0].ascii_armored_pgp_public_key = Some("x".into());
    let e = policy(
        "defaultAdmissionRule:\n  evaluationMode: ALWAYS_ALLOW\n",
        &[pgp],
    )
    .unwrap_err();
    assert!(e.message.contains("PGP"), "{e}");
    let e = policy(
        "defaultAdmissionRule:\n  evaluationMode: ALWAYS_ALLOW\n",
        &[attestor("a"), attestor("a")],
    )
    .unwrap_err();
    assert!(e.message.contains("twice"), "{e}");
}

#[test]
fn most_specific_repository_rule_wins() {
    let p = policy(
        r#"
defaultAdmissionRule: {evaluationMode: ALWAYS_DENY, enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG}
repositoryAdmissionRules:
  "r/**": {evaluationMode: ALWAYS_ALLOW}
  "r/team/*": {evaluationMode: REQUIRE_ATTESTATION, requireAttestationsBy: [ci]}
  "r/team/app": {evaluationMode: ALWAYS_DENY}
admissionWhitelistPatterns:
  - namePattern: r/team/base
"#,
        &[attestor("ci")],
    )
    .unwrap();
    let source = |n: &str| p.rule_for(n).source;
    assert_eq!(
        source("r/team/app"),
        RuleSource::Repository("r/team/app".into())
    );
    assert_eq!(
        source("r/team/web"),
        RuleSource::Repository("r/team/*".into())
    );
    assert_eq!(
        source("r/team/web/x"),
        RuleSource::Repository("r/**".into())
    );
    assert_eq!(
        source("r/team/base"),
        RuleSource::Allowlist("r/team/base".into())
    );
    assert_eq!(source("other/x"), RuleSource::Default);
}

/// Rules and allowlist entries written with any spelling of a Docker Hub
/// name match the canonical names requests carry; the rule is reported by
/// its canonical pattern.
#[test]
fn docker_hub_spellings_match_canonical_names() {
    for written in [
        "docker.io/library/nginx",
        "docker.io/nginx",
        "index.docker.io/library/nginx",
        "registry-1.docker.io/nginx",
        "Docker.io/library/nginx",
    ] {
        let p = policy(
            &format!(
                "defaultAdmissionRule: {{evaluationMode: ALWAYS_ALLOW}}\n\
                 repositoryAdmissionRules:\n  \"{written}\": {{evaluationMode: ALWAYS_DENY}}\n"
            ),
            &[],
        )
        .unwrap();
        let rule = p.rule_for("docker.io/library/nginx");
        assert_eq!(
            rule.source,
            RuleSource::Repository("docker.io/library/nginx".into()),
            "{written}"
        );
        assert_eq!(rule.evaluation, EvaluationMode::AlwaysDeny, "{written}");
        assert_eq!(
            p.rule_for("docker.io/library/redis").source,
            RuleSource::Default
        );
        assert_eq!(
            p.rewritten.is_empty(),
            written == "docker.io/library/nginx",
            "{written}: {:?}",
            p.rewritten
        );
        if written != "docker.io/library/nginx" {
            assert!(crate::app::policy_summary(&p).contains(&format!(
                "{written:?} is read as \"docker.io/library/nginx\""
            )));
        }
    }
    // The allowlist too, globs kept.
    let p = policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_DENY}\n\
         admissionWhitelistPatterns:\n  - namePattern: index.docker.io/*\n  \
         - namePattern: Docker.io/bitnami/**\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        p.rule_for("docker.io/library/alpine").source,
        RuleSource::Allowlist("docker.io/library/*".into())
    );
    assert_eq!(
        p.rule_for("docker.io/bitnami/redis/x").source,
        RuleSource::Allowlist("docker.io/bitnami/**".into())
    );
    assert_eq!(p.rule_for("docker.io/other/x").source, RuleSource::Default);
}

#[test]
fn patterns_with_tags_or_digests_or_two_spellings_are_refused() {
    let deny = |key: &str| {
        policy(
            &format!(
                "defaultAdmissionRule: {{evaluationMode: ALWAYS_ALLOW}}\n\
                 repositoryAdmissionRules:\n  \"{key}\": {{evaluationMode: ALWAYS_DENY}}\n"
            ),
            &[],
        )
    };
    let e = deny("docker.io/library/nginx:v1").unwrap_err();
    assert_eq!(
        e.field,
        "policy.repositoryAdmissionRules[\"docker.io/library/nginx:v1\"]"
    );
    assert!(e.message.contains("tag"), "{e}");
    let e = deny("docker.io/library/nginx@sha256:abc").unwrap_err();
    assert!(e.to_string().contains("digest"), "{e}");
    let e = policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n\
         admissionWhitelistPatterns:\n  - namePattern: ghcr.io/org/app:latest\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(e.field, "policy.admissionWhitelistPatterns[0]");
    assert!(
        e.message.contains("\"ghcr.io/org/app:latest\" names a tag")
            && e.message.contains("@sha256:<digest>"),
        "{e}"
    );
    // Two spellings of one name are two rules for one image: ambiguous.
    let e = policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n\
         repositoryAdmissionRules:\n  \"docker.io/nginx\": {evaluationMode: ALWAYS_DENY}\n  \
         \"docker.io/library/nginx\": {evaluationMode: ALWAYS_ALLOW}\n",
        &[],
    )
    .unwrap_err();
    assert!(
        e.message.contains("both mean \"docker.io/library/nginx\""),
        "{e}"
    );
}

#[test]
fn patterns_for_registries_without_an_upstream_are_reported() {
    let p = policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n\
         admissionWhitelistPatterns:\n  - namePattern: gcr.io/google_containers/*\n\
         repositoryAdmissionRules:\n  \"dockerio/library/nginx\": {evaluationMode: ALWAYS_DENY}\n  \
         \"docker.io/library/redis\": {evaluationMode: ALWAYS_DENY}\n",
        &[],
    )
    .unwrap();
    let warnings = p.unreachable_patterns(&["docker.io"]);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "policy.repositoryAdmissionRules[\"dockerio/library/nginx\"]: registry \"dockerio\""
        ),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("policy.admissionWhitelistPatterns[0]: registry \"gcr.io\""),
        "{warnings:?}"
    );
    assert!(p
        .unreachable_patterns(&["docker.io", "gcr.io", "dockerio"])
        .is_empty());
}

fn rule(evaluation: EvaluationMode, enforcement: EnforcementMode, attestors: &[&str]) -> Rule {
    Rule {
        source: RuleSource::Default,
        evaluation,
        enforcement,
        attestors: attestors.iter().map(|s| s.to_string()).collect(),
        signed_identity: SignedIdentity::MatchRepository,
        require_named_identity: false,
    }
}

fn ev(check: Check) -> Evidence {
    Evidence::new(EvidenceKind::SigTag, "test", check)
}

fn valid() -> Check {
    Check::Valid { key_id: "k".into() }
}

#[test]
fn every_evaluation_and_enforcement_mode() {
    use EnforcementMode::*;
    use EvaluationMode::*;
    let none = HashMap::new();
    let mut good = HashMap::new();
    good.insert("a".to_string(), vec![ev(valid())]);
    let table = [
        (AlwaysAllow, EnforcedBlockAndAuditLog, &none, Verdict::Allow),
        (AlwaysAllow, DryrunAuditLogOnly, &none, Verdict::Allow),
        (AlwaysDeny, EnforcedBlockAndAuditLog, &none, Verdict::Deny),
        (AlwaysDeny, DryrunAuditLogOnly, &none, Verdict::DryRunDeny),
        (
            RequireAttestation,
            EnforcedBlockAndAuditLog,
            &none,
            Verdict::Deny,
        ),
        (
            RequireAttestation,
            DryrunAuditLogOnly,
            &none,
            Verdict::DryRunDeny,
        ),
        (
            RequireAttestation,
            EnforcedBlockAndAuditLog,
            &good,
            Verdict::Allow,
        ),
        (
            RequireAttestation,
            DryrunAuditLogOnly,
            &good,
            Verdict::Allow,
        ),
    ];
    for (evaluation, enforcement, evidence, want) in table {
        let d = evaluate(&rule(evaluation, enforcement, &["a"]), evidence);
        assert_eq!(d.verdict, want, "{evaluation:?} {enforcement:?}");
        assert_eq!(d.serves(), want != Verdict::Deny);
    }
}

#[test]
fn attestors_are_anded_and_any_valid_signature_satisfies_one() {
    let r = rule(
        EvaluationMode::RequireAttestation,
        EnforcementMode::EnforcedBlockAndAuditLog,
        &["a", "b"],
    );
    let mut evidence = HashMap::new();
    evidence.insert("a".to_string(), vec![ev(Check::UnknownKey), ev(valid())]);
    let d = evaluate(&r, &evidence);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(
        d.reason,
        "attestor b: no valid signature (no signatures found)"
    );
    evidence.insert("b".to_string(), vec![ev(valid())]);
    assert_eq!(evaluate(&r, &evidence).verdict, Verdict::Allow);
    // An attestor whose only evidence is invalid does not count.
    evidence.insert(
        "b".to_string(),
        vec![ev(Check::OtherDigest {
            signed: "sha256:x".into(),
        })],
    );
    assert_eq!(evaluate(&r, &evidence).verdict, Verdict::Deny);
    // An empty attestor list means deny, never allow.
    let empty = rule(
        EvaluationMode::RequireAttestation,
        EnforcementMode::EnforcedBlockAndAuditLog,
        &[],
    );
    assert_eq!(evaluate(&empty, &HashMap::new()).verdict, Verdict::Deny);
}

#[test]
fn denial_messages_count_each_kind_of_failure() {
    let r = rule(
        EvaluationMode::RequireAttestation,
        EnforcementMode::EnforcedBlockAndAuditLog,
        &["built-by-ci"],
    );
    let mut evidence = HashMap::new();
    evidence.insert(
        "built-by-ci".to_string(),
        vec![
            ev(Check::UnknownKey),
            ev(Check::OtherDigest { signed: "x".into() }),
            ev(Check::OtherDigest { signed: "y".into() }),
        ],
    );
    let d = evaluate(&r, &evidence);
    assert_eq!(
        d.message("image r/demo/app@sha256:1"),
        "image r/demo/app@sha256:1 denied by default admission rule: attestor built-by-ci: \
         no valid signature (3 checked: 1 by unknown key or altered, 2 for another digest)"
    );
    assert_eq!(
        d.short_reason(),
        "denied by policy: attestor built-by-ci: no valid signature"
    );
}

#[test]
fn key_rotation_any_key_of_an_attestor_counts() {
    let mut a = attestor("ci");
    let mut second = a.public_keys[0].clone();
    second.id = Some("ci-2027".into());
    second.pkix_public_key.as_mut().unwrap().public_key_pem = Some(key_pem());
    a.public_keys.push(second);
    let p = policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n",
        &[a],
    )
    .unwrap();
    let keys: Vec<_> = p.attestors["ci"]
        .keys
        .iter()
        .map(|k| k.id.as_str())
        .collect();
    assert_eq!(keys, ["ci-key", "ci-2027"]);
}

#[test]
fn revision_changes_with_keys() {
    let yaml = "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n";
    let a = attestor("ci");
    let p1 = policy(yaml, std::slice::from_ref(&a)).unwrap();
    let p2 = policy(yaml, std::slice::from_ref(&a)).unwrap();
    assert_eq!(p1.revision, p2.revision);
    let p3 = policy(yaml, &[attestor("ci")]).unwrap();
    assert_ne!(p1.revision, p3.revision);
}

#[test]
fn no_policy_is_loud() {
    let p = Policy::allow_all();
    assert!(crate::app::policy_summary(&p).contains("NONE"));
    let d = evaluate(&p.rule_for("x/y"), &HashMap::new());
    assert_eq!(d.verdict, Verdict::Exempt);
}

#[test]
fn signed_identity_forms() {
    let parse = |y: &str| serde_yaml_ng::from_str::<SignedIdentity>(y);
    assert_eq!(
        parse("matchRepository").unwrap(),
        SignedIdentity::MatchRepository
    );
    assert_eq!(parse("ignore").unwrap(), SignedIdentity::Ignore);
    assert_eq!(
        parse("{exactRepository: r.io/a}").unwrap(),
        SignedIdentity::ExactRepository("r.io/a".into())
    );
    assert_eq!(
        parse("remapIdentity: {prefix: m.local/, signedPrefix: ghcr.io/}").unwrap(),
        SignedIdentity::RemapIdentity {
            prefix: "m.local/".into(),
            signed_prefix: "ghcr.io/".into()
        }
    );
    assert!(parse("matchExact").is_err());
    assert!(parse("{exactRepository: a, remapIdentity: {prefix: a, signedPrefix: b}}").is_err());
    assert!(parse("{remapIdentity: {prefix: a}}").is_err());
    assert!(parse("{bogus: 1}").is_err());
    let doc: PolicyDoc = serde_yaml_ng::from_str(
        "defaultAdmissionRule:\n  evaluationMode: ALWAYS_ALLOW\n  signedIdentity:\n    exactRepository: r.io/x\n",
    )
    .unwrap();
    assert_eq!(
        doc.default_admission_rule.signed_identity,
        SignedIdentity::ExactRepository("r.io/x".into())
    );
}

/// An attestor with only `keyless:` (as YAML, the way users write it).
fn keyless_attestor(keyless_yaml: &str) -> AttestorDoc {
    serde_yaml_ng::from_str(&format!("name: ci\nkeyless:\n{keyless_yaml}")).unwrap()
}

const ONE_RULE: &str = "defaultAdmissionRule:\n  evaluationMode: REQUIRE_ATTESTATION\n  \
                        enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n  requireAttestationsBy: [ci]\n";

#[test]
fn keyless_attestors_compile_with_defaults_and_claims() {
    let doc = keyless_attestor(
        "  identities:\n  - issuer: https://token.actions.githubusercontent.com\n    \
         subjectRegExp: https://github.com/acme/.*\n    \
         claims: {sourceRepositoryURI: https://github.com/acme/app, buildTrigger: push}\n    \
         claimsRegExp: {sourceRepositoryRef: refs/tags/v.*}\n",
    );
    let compiled = policy(ONE_RULE, &[doc]).expect("compiles");
    let keyless = compiled.attestors["ci"].keyless.as_ref().expect("keyless");
    assert!(
        keyless.require_tlog && keyless.require_sct,
        "both default on"
    );
    assert!(keyless.root_source.contains("public-good"));
    assert_eq!(keyless.identities[0].claims.len(), 3);
}

#[test]
fn keyless_attestors_refuse_what_would_match_too_much_or_nothing() {
    for (yaml, field, says) in [
        ("  identities: []\n", "keyless.identities", "at least one"),
        (
            "  identities:\n  - subject: a@example.com\n",
            "identities[0]",
            "issuer or issuerRegExp is required",
        ),
        (
            "  identities:\n  - issuer: https://x\n",
            "identities[0]",
            "subject or subjectRegExp is required",
        ),
        (
            "  identities:\n  - {issuer: https://x, issuerRegExp: x, subject: s}\n",
            "identities[0]",
            "not both",
        ),
        (
            "  identities:\n  - {issuer: https://x, subjectRegExp: '('}\n",
            "identities[0]",
            "invalid regular expression",
        ),
        (
            "  identities:\n  - {issuer: https://x, subject: s, claims: {workflowRepo: x}}\n",
            "claims.workflowRepo",
            "unknown Fulcio claim",
        ),
        (
            "  identities:\n  - {issuer: https://x, subject: s, claims: {buildTrigger: push}, \
             claimsRegExp: {buildTrigger: p.*}}\n",
            "buildTrigger",
            "both",
        ),
        (
            "  identities:\n  - {issuer: https://x, subject: s}\n  trustedRoot: /nonexistent\n",
            "keyless.trustedRoot",
            "was not read",
        ),
    ] {
        let e = policy(ONE_RULE, &[keyless_attestor(yaml)]).expect_err(yaml);
        assert!(e.field.contains(field), "{yaml}: field {}", e.field);
        assert!(e.message.contains(says), "{yaml}: {}", e.message);
    }
    let unknown: Result<AttestorDoc, _> = serde_yaml_ng::from_str(
        "name: ci\nkeyless:\n  identities: [{issuer: a, subject: b}]\n  ignoreSct: true\n",
    );
    assert!(unknown.is_err(), "unknown keys are refused");
}

#[test]
fn a_trusted_root_file_changes_the_revision_and_must_parse() {
    let root = crate::sigstore::root::PUBLIC_GOOD;
    let with_root = |text: &str| {
        let mut doc = keyless_attestor(
            "  identities: [{issuer: https://x, subject: s}]\n  trustedRoot: root.json\n",
        );
        doc.keyless.as_mut().unwrap().trusted_root_content = Some(text.to_owned());
        doc
    };
    let a = policy(ONE_RULE, &[with_root(root)]).expect("compiles");
    let b = policy(ONE_RULE, &[with_root(&root.replacen("rekor", "rekr", 1))]).expect("compiles");
    assert_ne!(
        a.revision, b.revision,
        "the root's content is part of the revision"
    );
    assert_eq!(
        a.attestors["ci"].keyless.as_ref().unwrap().root_source,
        "root.json"
    );
    let e = policy(ONE_RULE, &[with_root("{}")]).expect_err("not a root");
    assert!(
        e.field.ends_with("keyless.trustedRoot") && e.message.contains("root.json"),
        "{e}"
    );
}

#[test]
fn the_cluster_of_this_instance_has_its_rule_and_others_are_reported() {
    let doc: PolicyDoc = serde_yaml_ng::from_str(
        r#"
clusterAdmissionRules:
  us-east1-b.prod:
    evaluationMode: ALWAYS_DENY
    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
  us-central1-a.staging:
    evaluationMode: REQUIRE_ATTESTATION
    enforcementMode: DRYRUN_AUDIT_LOG_ONLY
    requireAttestationsBy: [projects/acme/attestors/ci]
defaultAdmissionRule:
  evaluationMode: REQUIRE_ATTESTATION
  requireAttestationsBy: [projects/acme/attestors/ci]
"#,
    )
    .unwrap();
    let attestors = [attestor("projects/acme/attestors/ci")];
    let prod = Policy::compile_for(&doc, &attestors, Some("us-east1-b.prod")).unwrap();
    let rule = prod.rule_for("gcr.io/acme/app");
    assert_eq!(rule.source, RuleSource::Cluster("us-east1-b.prod".into()));
    assert_eq!(rule.evaluation, EvaluationMode::AlwaysDeny);
    assert_eq!(prod.ignored.len(), 1, "{:?}", prod.ignored);
    assert!(prod.ignored[0].contains("us-central1-a.staging"));
    let staging = Policy::compile_for(&doc, &attestors, Some("us-central1-a.staging")).unwrap();
    assert_eq!(
        staging.rule_for("gcr.io/acme/app").enforcement,
        EnforcementMode::DryrunAuditLogOnly
    );
    assert_ne!(
        prod.revision, staging.revision,
        "the cluster is part of the revision"
    );
    let elsewhere = Policy::compile_for(&doc, &attestors, Some("eu.dev")).unwrap();
    assert_eq!(
        elsewhere.rule_for("gcr.io/acme/app").source,
        RuleSource::Default
    );
    assert!(
        elsewhere
            .ignored
            .iter()
            .any(|n| n.contains("cluster: eu.dev has no")),
        "{:?}",
        elsewhere.ignored
    );
    // Every cluster's rule is checked, whichever applies.
    let bad: PolicyDoc = serde_yaml_ng::from_str(
        "clusterAdmissionRules:\n  other.c:\n    evaluationMode: REQUIRE_ATTESTATION\n    requireAttestationsBy: [nobody]\ndefaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n",
    )
    .unwrap();
    let e = Policy::compile_for(&bad, &attestors, Some("us-east1-b.prod")).unwrap_err();
    assert!(e.field.contains("clusterAdmissionRules"), "{e:?}");
}

#[test]
fn attestors_in_gcloud_describe_shape_load_with_their_keys_and_key_ids() {
    let pem = key_pem();
    let describe = format!(
        r#"
name: projects/acme/attestors/built-by-ci
description: Built by our CI
updateTime: '2026-11-30T09:00:00.654321Z'
etag: '"Xq1w2e3r4t5y"'
userOwnedGrafeasNote:
  noteReference: projects/acme/notes/built-by-ci
  delegationServiceAccountEmail: service-123@gcp-sa-binaryauthorization.iam.gserviceaccount.com
  publicKeys:
  - comment: ci signing key
    pkixPublicKey:
      publicKeyPem: |
{}
      signatureAlgorithm: RSA_SIGN_PSS_2048_SHA256
      keyId: //cloudkms.googleapis.com/v1/projects/acme/locations/global/keyRings/ci/cryptoKeys/signer/cryptoKeyVersions/1
"#,
        pem.lines()
            .map(|l| format!("        {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let doc: AttestorDoc = serde_yaml_ng::from_str(&describe).unwrap();
    // RSA_SIGN_PSS_* is BinAuthz's other spelling of RSA_PSS_*: a P-256
    // key under it is refused for what it is, not for the name.
    let e = policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n",
        std::slice::from_ref(&doc),
    )
    .unwrap_err();
    assert!(
        e.field
            .ends_with("userOwnedGrafeasNote.publicKeys[0].pkixPublicKey.publicKeyPem"),
        "{e:?}"
    );
    let mut doc = doc;
    doc.user_owned_grafeas_note.as_mut().unwrap().public_keys[0]
        .pkix_public_key
        .as_mut()
        .unwrap()
        .signature_algorithm = "ECDSA_P256_SHA256".into();
    let p = policy(
        "defaultAdmissionRule:\n  evaluationMode: REQUIRE_ATTESTATION\n  requireAttestationsBy: [projects/acme/attestors/built-by-ci]\n",
        &[doc],
    )
    .unwrap();
    let a = p.attestors_by_name()[0];
    assert_eq!(a.name, "built-by-ci");
    assert!(
        a.keys[0].id.starts_with("//cloudkms.googleapis.com/"),
        "{}",
        a.keys[0].id
    );
    assert!(
        p.ignored.iter().any(|n| n.contains("noteReference")),
        "{:?}",
        p.ignored
    );
    assert!(p
        .ignored
        .iter()
        .any(|n| n.contains("delegationServiceAccountEmail")));
    assert_eq!(
        crate::crypto::Algorithm::parse("RSA_SIGN_PSS_4096_SHA512"),
        crate::crypto::Algorithm::parse("RSA_PSS_4096_SHA512")
    );
}

#[test]
fn a_key_is_inline_or_in_a_file_never_both_or_neither() {
    let mut a = attestor("ci");
    let pkix = a.public_keys[0].pkix_public_key.as_mut().unwrap();
    pkix.public_key_file = Some("/run/secrets/ci.pub".into());
    let both = policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n",
        &[a.clone()],
    );
    assert!(both.unwrap_err().message.contains("not both"));
    let pkix = a.public_keys[0].pkix_public_key.as_mut().unwrap();
    let pem = pkix.public_key_pem.take();
    let unread = policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n",
        &[a.clone()],
    );
    assert!(unread.unwrap_err().message.contains("was not read"));
    let pkix = a.public_keys[0].pkix_public_key.as_mut().unwrap();
    pkix.public_key_file_content = pem;
    assert!(policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n",
        &[a.clone()]
    )
    .is_ok());
    let pkix = a.public_keys[0].pkix_public_key.as_mut().unwrap();
    pkix.public_key_file = None;
    pkix.public_key_file_content = None;
    let neither = policy(
        "defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}\n",
        &[a],
    );
    assert!(neither.unwrap_err().message.contains("missing"));
}

#[test]
fn allowlist_entries_match_names_or_one_digest_never_a_tag() {
    let pinned = format!("sha256:{}", "ab".repeat(32));
    let other: crate::oci::Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
    let p = policy(
        &format!(
            "admissionWhitelistPatterns:\n- namePattern: gcr.io/nginx*\n- namePattern: gcr.io/acme/*@{pinned}\ndefaultAdmissionRule: {{evaluationMode: ALWAYS_DENY}}\n"
        ),
        &[],
    )
    .unwrap();
    let pinned_digest: crate::oci::Digest = pinned.parse().unwrap();
    // BinAuthz's trailing `*` covers the name (and so every tag of it).
    assert!(matches!(
        p.rule_for("gcr.io/nginx").source,
        RuleSource::Allowlist(_)
    ));
    assert!(matches!(
        p.rule_for("gcr.io/nginx-unprivileged").source,
        RuleSource::Allowlist(_)
    ));
    assert_eq!(p.rule_for("gcr.io/nginx/image").source, RuleSource::Default);
    // A pinned entry exempts exactly its digest, in the names it matches.
    assert_eq!(
        p.rule_for_image("gcr.io/acme/app", &pinned_digest).source,
        RuleSource::Allowlist(format!("gcr.io/acme/*@{pinned}"))
    );
    assert_eq!(
        p.rule_for_image("gcr.io/acme/app", &other).source,
        RuleSource::Default
    );
    assert_eq!(
        p.rule_for_image("gcr.io/other/app", &pinned_digest).source,
        RuleSource::Default
    );
    assert_eq!(
        p.rule_for("gcr.io/acme/app").source,
        RuleSource::Default,
        "the name alone is not exempt"
    );
    let tag = policy(
        "admissionWhitelistPatterns:\n- namePattern: gcr.io/acme/app:latest\ndefaultAdmissionRule: {evaluationMode: ALWAYS_DENY}\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(tag.field, "policy.admissionWhitelistPatterns[0]");
    assert!(
        tag.message.contains("names a tag") && tag.message.contains("gcr.io/acme/app@sha256:"),
        "{}",
        tag.message
    );
    for bad in [
        "gcr.io/acme/app@sha256:abc",
        "gcr.io/acme/app:v1@sha256:".to_owned().as_str(),
    ] {
        let e = policy(
            &format!("admissionWhitelistPatterns:\n- namePattern: {bad}{}\ndefaultAdmissionRule: {{evaluationMode: ALWAYS_DENY}}\n", if bad.ends_with(':') { "ab".repeat(32) } else { String::new() }),
            &[],
        )
        .unwrap_err();
        assert!(e.message.contains("pinned entry"), "{bad}: {}", e.message);
    }
    // A port in the registry is not a tag.
    assert!(policy(
        "admissionWhitelistPatterns:\n- namePattern: 127.0.0.1:5001/base/*\ndefaultAdmissionRule: {evaluationMode: ALWAYS_DENY}\n",
        &[],
    )
    .is_ok());
}

#[test]
fn rule_ids_are_short_stable_and_distinct() {
    let p = policy(
        r#"
defaultAdmissionRule: {evaluationMode: ALWAYS_DENY, enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG}
repositoryAdmissionRules:
  "r/**": {evaluationMode: ALWAYS_ALLOW}
  "r/team/app": {evaluationMode: ALWAYS_DENY}
admissionWhitelistPatterns:
  - namePattern: r/**
"#,
        &[],
    )
    .unwrap();
    let sources = p.rule_sources();
    let ids: Vec<String> = sources.iter().map(RuleSource::id).collect();
    // Allowlist, repository rules (most specific first), default, artifact.
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(&ids[3..], ["default", "artifact"]);
    assert!(ids[0].starts_with("allowlist-") && ids[0].len() == "allowlist-".len() + 12);
    assert!(ids[1].starts_with("repository-") && ids[1].len() == "repository-".len() + 12);
    // One pattern as an allowlist entry and as a rule: two ids.
    let rule = RuleSource::Repository("r/**".into());
    assert!(ids.contains(&rule.id()) && rule.id() != ids[0]);
    // Stable: the same pattern, the same id, in any policy.
    assert_eq!(rule.id(), RuleSource::Repository("r/**".into()).id());
    assert_eq!(rule.pattern(), Some("r/**"));
    assert_eq!(rule.kind(), "repository");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    // Ids are label-safe: no spaces, no pattern text.
    for id in &ids {
        assert!(
            id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "{id}"
        );
    }
    assert_eq!(Policy::allow_all().rule_sources()[0].id(), "no-policy");
}
