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
    /// Compiles a policy and its attestors for an instance that names no
    /// cluster; every problem names its field.
    pub fn compile(doc: &PolicyDoc, attestor_docs: &[AttestorDoc]) -> Result<Policy, PolicyError> {
        Policy::compile_for(doc, attestor_docs, None)
    }

    /// Compiles a policy and its attestors for the instance named
    /// `cluster` (the top-level `cluster:`): its `clusterAdmissionRules`
    /// entry, if there is one, replaces the default rule, as it does for
    /// that cluster in Binary Authorization. Every cluster rule is checked
    /// (a mistake in another cluster's rule is still a mistake); those of
    /// other clusters are reported as not applying.
    pub fn compile_for(
        doc: &PolicyDoc,
        attestor_docs: &[AttestorDoc],
        cluster: Option<&str>,
    ) -> Result<Policy, PolicyError> {
        let attestors = compile_attestors(attestor_docs)?;
        let mut default_rule = compile_rule(
            &attestors,
            "policy.defaultAdmissionRule",
            RuleSource::Default,
            &doc.default_admission_rule,
        )?;
        let mut ignored = Vec::new();
        for (key, rule) in &doc.cluster_admission_rules {
            let field = format!("policy.clusterAdmissionRules[{key:?}]");
            if key.is_empty() || key.contains('/') {
                return Err(err(
                    field,
                    "a cluster rule's key is `<location>.<cluster>`, e.g. us-central1-a.prod",
                ));
            }
            let compiled =
                compile_rule(&attestors, &field, RuleSource::Cluster(key.clone()), rule)?;
            if cluster == Some(key.as_str()) {
                default_rule = compiled;
            } else {
                ignored.push(format!(
                    "{field} applies to cluster {key:?}, not to this instance ({}): ignored",
                    match cluster {
                        Some(c) => format!("cluster: {c}"),
                        None => "no cluster: configured".to_owned(),
                    }
                ));
            }
        }
        for (i, a) in attestor_docs.iter().enumerate() {
            if let Some(note) = &a.user_owned_grafeas_note {
                if let Some(reference) = &note.note_reference {
                    ignored.push(format!(
                        "attestors[{i}].userOwnedGrafeasNote.noteReference ({reference}): \
                         attestations are read from the registry and the attestation store, \
                         not from Container Analysis"
                    ));
                }
                if note.delegation_service_account_email.is_some() {
                    ignored.push(format!(
                        "attestors[{i}].userOwnedGrafeasNote.delegationServiceAccountEmail: \
                         a Google Cloud service account, with no meaning here"
                    ));
                }
            }
        }
        if let Some(c) = cluster {
            if !doc.cluster_admission_rules.contains_key(c) {
                ignored.push(format!(
                    "cluster: {c} has no policy.clusterAdmissionRules entry: the default rule applies"
                ));
            }
        }
        let mut names = Names::default();
        let repository_rules = compile_repository_rules(doc, &attestors, &mut names)?;
        let mut allowlist = Vec::new();
        let mut pinned = Vec::new();
        for (i, p) in doc.admission_whitelist_patterns.iter().enumerate() {
            let field = format!("policy.admissionWhitelistPatterns[{i}]");
            match allowlist_entry(&field, &p.name_pattern)? {
                (name, None) => allowlist.push(names.read(&field, name)?),
                (name, Some(digest)) => pinned.push((names.read(&field, name)?, digest)),
            }
        }
        let allowlist_index = PatternIndex::new(&allowlist);
        let repository_index = PatternIndex::new(repository_rules.iter().map(|(p, _)| p));
        Ok(Policy {
            revision: revision_of(doc, attestor_docs, cluster),
            allowlist,
            allowlist_index,
            pinned,
            default_rule,
            repository_rules,
            repository_index,
            attestors,
            ignored: {
                ignored.extend(ignored_fields(doc));
                ignored
            },
            rewritten: names.rewritten,
            patterns: names.patterns,
            configured: true,
        })
    }
}

/// An allowlist `namePattern` as Binary Authorization reads it, at pull
/// time: a name pattern (its trailing `*` matches any tag or digest of the
/// names it matches, as BinAuthz's `gcr.io/nginx*` matches
/// `gcr.io/nginx@latest`), optionally pinned to one manifest digest
/// (`…@sha256:<hex>`), which then exempts exactly that content.
///
/// A pattern with a tag is refused: a tag names whatever was last pushed
/// under it, and a pull-through proxy decides once per digest (verdicts
/// are cached and shared by digest), so exempting a tag would exempt
/// whatever anyone with push access puts there, under any tag that
/// resolves to it. The error says to pin the digest instead.
fn allowlist_entry<'a>(
    field: &str,
    text: &'a str,
) -> Result<(&'a str, Option<crate::oci::Digest>), PolicyError> {
    if let Some((name, digest)) = text.split_once('@') {
        let hex_digest = digest.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        let tagged = name.contains('/') && name.rsplit('/').next().is_some_and(|l| l.contains(':'));
        if !hex_digest || tagged {
            return Err(err(
                field,
                format!(
                    "{text:?}: a pinned entry is <name pattern>@sha256:<64 lowercase hex digits>, without a tag"
                ),
            ));
        }
        let digest = digest
            .parse()
            .map_err(|e| err(field, format!("{text:?}: {e}")))?;
        return Ok((name, Some(digest)));
    }
    let last = text.rsplit('/').next().unwrap_or(text);
    if text.contains('/') && last.contains(':') {
        let (repo, tag) = text.rsplit_once(':').unwrap_or((text, ""));
        return Err(err(
            field,
            format!(
                "{text:?} names a tag ({tag:?}): at pull time a tag is whatever was last pushed \
                 under it, so Portcullis exempts names or digests, not tags; write {repo:?} to \
                 exempt the repository, or \"{repo}@sha256:<digest>\" to exempt exactly the \
                 image the tag names today"
            ),
        ));
    }
    Ok((text, None))
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
    let note_keys = doc
        .user_owned_grafeas_note
        .as_ref()
        .map_or(0, |n| n.public_keys.len());
    if doc.public_keys.is_empty() && note_keys == 0 && doc.keyless.is_none() {
        return Err(err(
            format!("{field}.publicKeys"),
            format!("attestor {name:?} has no public keys and no keyless identities"),
        ));
    }
    let mut keys = Vec::new();
    let key_fields = (0..doc.public_keys.len())
        .map(|k| format!("{field}.publicKeys[{k}]"))
        .chain((0..note_keys).map(|k| format!("{field}.userOwnedGrafeasNote.publicKeys[{k}]")));
    for (kfield, key) in key_fields.zip(doc.all_public_keys()) {
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
        let (pem, pem_field) = match (
            &pkix.public_key_pem,
            &pkix.public_key_file,
            &pkix.public_key_file_content,
        ) {
            (Some(pem), None, _) => (pem, "publicKeyPem"),
            (None, Some(_), Some(content)) => (content, "publicKeyFile"),
            (None, Some(path), None) => {
                return Err(err(
                    format!("{kfield}.pkixPublicKey.publicKeyFile"),
                    format!("{} was not read", path.display()),
                ))
            }
            (Some(_), Some(_), _) => {
                return Err(err(
                    format!("{kfield}.pkixPublicKey"),
                    "set publicKeyPem or publicKeyFile, not both",
                ))
            }
            (None, None, _) => {
                return Err(err(
                    format!("{kfield}.pkixPublicKey.publicKeyPem"),
                    "missing (or give publicKeyFile)",
                ))
            }
        };
        let public = PublicKey::from_pem(pem, algorithm).map_err(|m| {
            let m = match &pkix.public_key_file {
                Some(path) if pem_field == "publicKeyFile" => format!("{}: {m}", path.display()),
                _ => m,
            };
            err(format!("{kfield}.pkixPublicKey.{pem_field}"), m)
        })?;
        let id = match (&key.id, &pkix.key_id) {
            (Some(id), _) if !id.is_empty() => id.clone(),
            (_, Some(id)) if !id.is_empty() => id.clone(),
            _ => {
                let der = crypto::pem_decode(pem).map(|(_, d)| d).unwrap_or_default();
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

fn revision_of(doc: &PolicyDoc, attestors: &[AttestorDoc], cluster: Option<&str>) -> String {
    let text = serde_json::to_vec(&(doc, attestors, cluster)).unwrap_or_default();
    hex::encode(&Sha256::digest(text)[..6])
}
