//! Compiling the policy as written ([`PolicyDoc`], [`AttestorDoc`]) into
//! a [`Policy`]: attestor keys parsed, name patterns read in canonical
//! form and indexed, rules ordered by specificity. Every problem names the
//! field it is in. Pure: the YAML was read by `config`.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::{
    attestation, attestor_short_name, canonical_pattern, Attestor, AttestorKey, EnforcementMode,
    EvaluationMode, Keyless, Pattern, PatternIndex, Policy, PolicyError, Rule, RuleSource,
    SignedIdentity,
};
use crate::config::policy::{
    AttestorDoc, GlobalMode, KeylessDoc, KeylessIdentityDoc, PolicyDoc, RuleDoc,
};
use crate::crypto::{self, PublicKey};
use crate::sigstore::{identity, IdentityPolicy, Matcher, TrustedRoot};

fn err(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

impl Policy {
    /// Compiles a policy and its attestors; every problem names its field.
    pub fn compile(doc: &PolicyDoc, attestor_docs: &[AttestorDoc]) -> Result<Policy, PolicyError> {
        let attestors = compile_attestors(attestor_docs)?;
        let default_rule = compile_rule(
            &attestors,
            "policy.defaultAdmissionRule",
            RuleSource::Default,
            &doc.default_admission_rule,
        )?;
        let mut names = Names::default();
        let repository_rules = compile_repository_rules(doc, &attestors, &mut names)?;
        let allowlist = doc
            .admission_whitelist_patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                names.read(
                    &format!("policy.admissionWhitelistPatterns[{i}]"),
                    &p.name_pattern,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allowlist_index = PatternIndex::new(&allowlist);
        let repository_index = PatternIndex::new(repository_rules.iter().map(|(p, _)| p));
        Ok(Policy {
            revision: revision_of(doc, attestor_docs),
            allowlist,
            allowlist_index,
            default_rule,
            repository_rules,
            repository_index,
            attestors,
            ignored: ignored_fields(doc),
            rewritten: names.rewritten,
            patterns: names.patterns,
            configured: true,
        })
    }
}

/// The name patterns read so far. Requests are matched on canonical
/// names, so patterns are read in canonical form too; one that cannot be
/// is an error, never a rule that silently matches nothing.
#[derive(Default)]
struct Names {
    /// As written → as read, for `check`.
    rewritten: Vec<String>,
    /// Every pattern (canonical) with its field.
    patterns: Vec<(String, String)>,
}

impl Names {
    fn read(&mut self, field: &str, written: &str) -> Result<Pattern, PolicyError> {
        let text = canonical_pattern(written).map_err(|m| err(field, m))?;
        if text != written {
            self.rewritten
                .push(format!("{field}: {written:?} is read as {text:?}"));
        }
        self.patterns.push((field.to_owned(), text.clone()));
        Pattern::new(&text).map_err(|m| err(field, m))
    }
}

fn compile_attestors(docs: &[AttestorDoc]) -> Result<HashMap<String, Attestor>, PolicyError> {
    let mut attestors = HashMap::new();
    for (i, a) in docs.iter().enumerate() {
        let attestor = compile_attestor(a, i)?;
        if attestors.insert(attestor.name.clone(), attestor).is_some() {
            return Err(err(
                format!("attestors[{i}].name"),
                format!("attestor {:?} is defined twice", a.name),
            ));
        }
    }
    Ok(attestors)
}

/// The repository rules, most specific first; two keys that mean the same
/// canonical pattern are an error.
fn compile_repository_rules(
    doc: &PolicyDoc,
    attestors: &HashMap<String, Attestor>,
    names: &mut Names,
) -> Result<Vec<(Pattern, Rule)>, PolicyError> {
    let mut rules: Vec<(Pattern, Rule)> = Vec::new();
    let mut written_as: HashMap<String, &str> = HashMap::new();
    for (key, rule) in &doc.repository_admission_rules {
        let field = format!("policy.repositoryAdmissionRules[{key:?}]");
        let pattern = names.read(&field, key)?;
        if let Some(other) = written_as.insert(pattern.as_str().to_owned(), key) {
            return Err(err(
                &field,
                format!(
                    "{key:?} and {other:?} both mean {:?}; keep one rule",
                    pattern.as_str()
                ),
            ));
        }
        let source = RuleSource::Repository(pattern.as_str().to_owned());
        let rule = compile_rule(attestors, &field, source, rule)?;
        rules.push((pattern, rule));
    }
    rules.sort_by(|(a, _), (b, _)| Pattern::specificity_order(a, b));
    Ok(rules)
}

fn compile_rule(
    attestors: &HashMap<String, Attestor>,
    field: &str,
    source: RuleSource,
    rule: &RuleDoc,
) -> Result<Rule, PolicyError> {
    let attestor_names: Vec<String> = rule
        .require_attestations_by
        .iter()
        .map(|n| attestor_short_name(n).to_owned())
        .collect();
    if rule.evaluation_mode == EvaluationMode::RequireAttestation {
        if attestor_names.is_empty() {
            return Err(err(
                format!("{field}.requireAttestationsBy"),
                "REQUIRE_ATTESTATION needs at least one attestor",
            ));
        }
        for name in &attestor_names {
            if !attestors.contains_key(name) {
                return Err(err(
                    format!("{field}.requireAttestationsBy"),
                    format!("attestor {name:?} is not defined under attestors:"),
                ));
            }
        }
    }
    if let SignedIdentity::RemapIdentity { prefix, .. } = &rule.signed_identity {
        if prefix.is_empty() {
            return Err(err(
                format!("{field}.signedIdentity.remapIdentity.prefix"),
                "must not be empty",
            ));
        }
    }
    Ok(Rule {
        source,
        evaluation: rule.evaluation_mode,
        enforcement: rule
            .enforcement_mode
            .unwrap_or(EnforcementMode::EnforcedBlockAndAuditLog),
        attestors: attestor_names,
        signed_identity: rule.signed_identity.clone(),
        require_named_identity: rule.require_named_identity,
    })
}

/// Notes about accepted BinAuthz fields that mean nothing at pull time.
fn ignored_fields(doc: &PolicyDoc) -> Vec<String> {
    let mut ignored = Vec::new();
    if doc.global_policy_evaluation_mode == Some(GlobalMode::Enable) {
        ignored.push(
            "globalPolicyEvaluationMode: ENABLE exempts Google-maintained GKE system images; \
             Portcullis has no such list and ignores it (list exemptions under admissionWhitelistPatterns)"
                .to_owned(),
        );
    }
    for (field, value) in [
        ("clusterAdmissionRules", &doc.cluster_admission_rules),
        (
            "kubernetesNamespaceAdmissionRules",
            &doc.kubernetes_namespace_admission_rules,
        ),
        (
            "kubernetesServiceAccountAdmissionRules",
            &doc.kubernetes_service_account_admission_rules,
        ),
        (
            "istioServiceIdentityAdmissionRules",
            &doc.istio_service_identity_admission_rules,
        ),
    ] {
        if value.is_some() {
            ignored.push(format!(
                "{field} is a Kubernetes/GKE scope with no meaning at pull time: ignored \
                 (use repositoryAdmissionRules to scope rules by image name)"
            ));
        }
    }
    ignored
}

fn compile_attestor(doc: &AttestorDoc, index: usize) -> Result<Attestor, PolicyError> {
    let field = format!("attestors[{index}]");
    let name = attestor_short_name(&doc.name).to_owned();
    if name.is_empty() {
        return Err(err(format!("{field}.name"), "must not be empty"));
    }
    if doc.public_keys.is_empty() && doc.keyless.is_none() {
        return Err(err(
            format!("{field}.publicKeys"),
            format!("attestor {name:?} has no public keys and no keyless identities"),
        ));
    }
    let mut keys = Vec::new();
    for (k, key) in doc.public_keys.iter().enumerate() {
        let kfield = format!("{field}.publicKeys[{k}]");
        if key.ascii_armored_pgp_public_key.is_some() {
            return Err(err(
                format!("{kfield}.asciiArmoredPgpPublicKey"),
                "PGP attestor keys are not supported; use a pkixPublicKey",
            ));
        }
        let pkix = key
            .pkix_public_key
            .as_ref()
            .ok_or_else(|| err(format!("{kfield}.pkixPublicKey"), "missing"))?;
        let algorithm = crypto::Algorithm::parse(&pkix.signature_algorithm)
            .map_err(|m| err(format!("{kfield}.pkixPublicKey.signatureAlgorithm"), m))?;
        let public = PublicKey::from_pem(&pkix.public_key_pem, algorithm)
            .map_err(|m| err(format!("{kfield}.pkixPublicKey.publicKeyPem"), m))?;
        let id = match &key.id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => {
                let der = crypto::pem_decode(&pkix.public_key_pem)
                    .map(|(_, d)| d)
                    .unwrap_or_default();
                format!("sha256:{}", hex::encode(Sha256::digest(der)))
            }
        };
        keys.push(AttestorKey { id, key: public });
    }
    let attestations = doc
        .attestations
        .iter()
        .enumerate()
        .map(|(i, r)| {
            attestation::Requirement::compile(r)
                .map_err(|m| err(format!("{field}.attestations[{i}]"), m))
        })
        .collect::<Result<_, _>>()?;
    Ok(Attestor {
        name,
        keys,
        signature_repository: doc.signature_repository.clone(),
        attestations,
        keyless: doc
            .keyless
            .as_ref()
            .map(|k| compile_keyless(k, &format!("{field}.keyless")))
            .transpose()?,
    })
}

fn compile_keyless(doc: &KeylessDoc, field: &str) -> Result<Keyless, PolicyError> {
    if doc.identities.is_empty() {
        return Err(err(
            format!("{field}.identities"),
            "at least one identity is required (an issuer and a subject)",
        ));
    }
    let identities = doc
        .identities
        .iter()
        .enumerate()
        .map(|(i, id)| compile_identity(id, &format!("{field}.identities[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let (root, root_source) = match (&doc.trusted_root, &doc.trusted_root_content) {
        (None, _) => (
            TrustedRoot::public_good(),
            "the Sigstore public-good root (embedded)".to_owned(),
        ),
        (Some(path), Some(text)) => (
            TrustedRoot::parse(text.as_bytes()).map_err(|m| {
                err(
                    format!("{field}.trustedRoot"),
                    format!("{}: {m}", path.display()),
                )
            })?,
            path.display().to_string(),
        ),
        (Some(path), None) => {
            return Err(err(
                format!("{field}.trustedRoot"),
                format!("{} was not read", path.display()),
            ))
        }
    };
    if root.certificate_authorities.is_empty() {
        return Err(err(
            format!("{field}.trustedRoot"),
            format!("{root_source} has no certificate authority: no certificate could verify"),
        ));
    }
    Ok(Keyless {
        identities,
        root: Arc::new(root),
        root_source,
        require_tlog: doc.require_tlog,
        require_sct: doc.require_sct,
    })
}

fn compile_identity(doc: &KeylessIdentityDoc, field: &str) -> Result<IdentityPolicy, PolicyError> {
    let issuer = Matcher::one_of(
        doc.issuer.as_deref(),
        doc.issuer_reg_exp.as_deref(),
        "issuer",
    )
    .map_err(|m| err(field, m))?;
    let subject = Matcher::one_of(
        doc.subject.as_deref(),
        doc.subject_reg_exp.as_deref(),
        "subject",
    )
    .map_err(|m| err(field, m))?;
    let mut claims = Vec::new();
    let written = doc
        .claims
        .iter()
        .map(|(name, value)| (name, "claims", Ok(Matcher::Exact(value.clone()))))
        .chain(
            doc.claims_reg_exp
                .iter()
                .map(|(name, pattern)| (name, "claimsRegExp", Matcher::regex(pattern))),
        );
    for (name, key, matcher) in written {
        let cfield = format!("{field}.{key}.{name}");
        let oid = identity::claim_oid(name).ok_or_else(|| {
            let known: Vec<&str> = identity::CLAIMS.iter().map(|(n, _)| *n).collect();
            err(
                &cfield,
                format!("unknown Fulcio claim (known: {})", known.join(", ")),
            )
        })?;
        if claims.iter().any(|(o, _)| *o == oid) {
            return Err(err(&cfield, "set in both claims and claimsRegExp"));
        }
        claims.push((oid, matcher.map_err(|m| err(&cfield, m))?));
    }
    Ok(IdentityPolicy {
        issuer,
        subject,
        claims,
    })
}

fn revision_of(doc: &PolicyDoc, attestors: &[AttestorDoc]) -> String {
    let text = serde_json::to_vec(&(doc, attestors)).unwrap_or_default();
    hex::encode(&Sha256::digest(text)[..6])
}
