//! The policy as the configuration writes it: Binary Authorization's
//! policy YAML (field names and enum values as BinAuthz exports them, so an
//! exported policy loads unchanged), attestors, attestation requirements,
//! and the document a `policyFile` holds. Shapes only: compiling them into
//! a policy is the `policy` module's job, reading a `policyFile` the
//! composition root's.
//!
//! May use: std, serde, `super` (the config's error type). Must never use:
//! any other module of the crate (in particular not the `policy` module, which
//! builds on these shapes).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `policy:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    /// BinAuthz metadata, accepted so exported policies load.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub update_time: Option<String>,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub global_policy_evaluation_mode: Option<GlobalMode>,
    #[serde(default)]
    pub admission_whitelist_patterns: Vec<NamePatternDoc>,
    pub default_admission_rule: RuleDoc,
    /// Portcullis' scope map: namePattern → rule.
    #[serde(default)]
    pub repository_admission_rules: BTreeMap<String, RuleDoc>,
    /// Rules by cluster (`<location>.<cluster>` in BinAuthz): the one named
    /// by the top-level `cluster:` replaces the default rule; the others
    /// are checked and reported as not applying here.
    #[serde(default)]
    pub cluster_admission_rules: BTreeMap<String, RuleDoc>,
    /// BinAuthz scopes that have no meaning at pull time: accepted and
    /// reported as ignored.
    #[serde(default)]
    pub kubernetes_namespace_admission_rules: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub kubernetes_service_account_admission_rules: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub istio_service_identity_admission_rules: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GlobalMode {
    GlobalPolicyEvaluationModeUnspecified,
    Enable,
    Disable,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamePatternDoc {
    pub name_pattern: String,
}

/// An admission rule as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleDoc {
    pub evaluation_mode: EvaluationMode,
    #[serde(default)]
    pub enforcement_mode: Option<EnforcementMode>,
    #[serde(default)]
    pub require_attestations_by: Vec<String>,
    /// How the signed `docker-reference` must relate to the request.
    #[serde(default)]
    pub signed_identity: SignedIdentity,
    /// Evidence counts only when its signed content names a repository
    /// (checked under `signedIdentity`): digest-only evidence (message
    /// signatures, in-toto subjects without a name) is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_named_identity: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EvaluationMode {
    AlwaysAllow,
    AlwaysDeny,
    RequireAttestation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnforcementMode {
    EnforcedBlockAndAuditLog,
    DryrunAuditLogOnly,
}

impl fmt::Display for EvaluationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EvaluationMode::AlwaysAllow => "ALWAYS_ALLOW",
            EvaluationMode::AlwaysDeny => "ALWAYS_DENY",
            EvaluationMode::RequireAttestation => "REQUIRE_ATTESTATION",
        })
    }
}

impl fmt::Display for EnforcementMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnforcementMode::EnforcedBlockAndAuditLog => "ENFORCED_BLOCK_AND_AUDIT_LOG",
            EnforcementMode::DryrunAuditLogOnly => "DRYRUN_AUDIT_LOG_ONLY",
        })
    }
}

/// How a signature's `critical.identity.docker-reference` must relate to
/// the repository being pulled (containers/image's `signedIdentity`).
///
/// Written as `matchRepository`, `ignore`, `{exactRepository: <repo>}` or
/// `{remapIdentity: {prefix: <p>, signedPrefix: <s>}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SignedIdentity {
    /// The signed repository equals the pulled one (tag ignored).
    #[default]
    MatchRepository,
    /// The signed repository must be exactly this one.
    ExactRepository(String),
    /// Pulled names under `prefix` were signed under `signedPrefix`
    /// (mirrors, relocated images).
    RemapIdentity {
        prefix: String,
        #[serde(rename = "signedPrefix")]
        signed_prefix: String,
    },
    /// The signed identity is not checked (the digest still is).
    Ignore,
}

impl<'de> Deserialize<'de> for SignedIdentity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct Remap {
            prefix: String,
            signed_prefix: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct Form {
            #[serde(default)]
            exact_repository: Option<String>,
            #[serde(default)]
            remap_identity: Option<Remap>,
        }
        const EXPECTED: &str = "matchRepository, ignore, {exactRepository: <repo>} or \
             {remapIdentity: {prefix: <prefix>, signedPrefix: <prefix>}}";
        let value = serde_yaml_ng::Value::deserialize(d)?;
        if let Some(word) = value.as_str() {
            return match word {
                "matchRepository" => Ok(SignedIdentity::MatchRepository),
                "ignore" => Ok(SignedIdentity::Ignore),
                other => Err(D::Error::custom(format!(
                    "unknown signedIdentity {other:?}; expected {EXPECTED}"
                ))),
            };
        }
        let form: Form = serde_yaml_ng::from_value(value)
            .map_err(|e| D::Error::custom(format!("{e}; expected {EXPECTED}")))?;
        match (form.exact_repository, form.remap_identity) {
            (Some(repo), None) => Ok(SignedIdentity::ExactRepository(repo)),
            (None, Some(r)) => Ok(SignedIdentity::RemapIdentity {
                prefix: r.prefix,
                signed_prefix: r.signed_prefix,
            }),
            _ => Err(D::Error::custom(format!(
                "expected exactly one of {EXPECTED}"
            ))),
        }
    }
}

/// An attestor as written under `attestors:`: Portcullis' shape, or
/// `gcloud container binauthz attestors describe`'s (keys under
/// `userOwnedGrafeasNote`, a full `projects/<p>/attestors/<name>` name).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AttestorDoc {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// BinAuthz metadata, accepted so `describe` output loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// BinAuthz's home of an attestor's keys: its Grafeas note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_owned_grafeas_note: Option<GrafeasNoteDoc>,
    /// Keys whose signatures count (`pkixPublicKey`); may be empty when
    /// `keyless` is set.
    #[serde(default)]
    pub public_keys: Vec<PublicKeyDoc>,
    /// Keyless signers whose signatures count: Fulcio certificates for
    /// these identities, logged in Rekor, under a trusted root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyless: Option<KeylessDoc>,
    /// Where `.sig` artifacts live, like `COSIGN_REPOSITORY`.
    #[serde(default)]
    pub signature_repository: Option<String>,
    /// Attestations this attestor must have made (each one required);
    /// without any, a plain signature satisfies the attestor.
    #[serde(default)]
    pub attestations: Vec<RequirementDoc>,
}

/// `userOwnedGrafeasNote` as `describe` prints it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrafeasNoteDoc {
    /// `projects/<p>/notes/<note>`: where BinAuthz keeps attestations
    /// (Portcullis reads them from the registry and the attestation store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_reference: Option<String>,
    #[serde(default)]
    pub public_keys: Vec<PublicKeyDoc>,
    /// The service account BinAuthz reads the note with: no meaning here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_service_account_email: Option<String>,
}

/// `keyless:` on an attestor, in sigstore policy-controller's vocabulary.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeylessDoc {
    /// Any one of them suffices.
    pub identities: Vec<KeylessIdentityDoc>,
    /// A `trusted_root.json` file (a private Sigstore deployment); the
    /// default is Sigstore's public-good root, embedded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<std::path::PathBuf>,
    /// The file's contents, read by `app::compile_policy` (never from
    /// YAML); serialized so the policy revision changes with them.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub trusted_root_content: Option<String>,
    /// At least one verified transparency-log entry (default true).
    #[serde(default = "yes")]
    pub require_tlog: bool,
    /// An SCT from a trusted CT log in the certificate (default true).
    #[serde(default = "yes")]
    pub require_sct: bool,
}

fn yes() -> bool {
    true
}

/// One acceptable keyless signer: an OIDC issuer and subject (each exact
/// or a regular expression over the whole value) and Fulcio claims.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeylessIdentityDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_reg_exp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_reg_exp: Option<String>,
    /// Fulcio claims by name (`sourceRepositoryURI`, `buildTrigger` ...)
    /// and their exact values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claims: std::collections::BTreeMap<String, String>,
    /// Fulcio claims by name and regular expressions over their values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claims_reg_exp: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PublicKeyDoc {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub pkix_public_key: Option<PkixKeyDoc>,
    #[serde(default)]
    pub ascii_armored_pgp_public_key: Option<String>,
}

/// `pkixPublicKey`: the key inline (`publicKeyPem`) or in a file
/// (`publicKeyFile`, e.g. a mounted secret), exactly one of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PkixKeyDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<std::path::PathBuf>,
    /// The file's contents, read by `app::compile_policy` (never from
    /// YAML); serialized so the policy revision changes with them.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub public_key_file_content: Option<String>,
    pub signature_algorithm: String,
    /// BinAuthz's optional key ID (an RFC 3986 URI): the key's `id` when
    /// the public key entry has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl AttestorDoc {
    /// Every key entry: `publicKeys` and the Grafeas note's.
    pub fn all_public_keys(&self) -> impl Iterator<Item = &PublicKeyDoc> {
        self.public_keys.iter().chain(
            self.user_owned_grafeas_note
                .iter()
                .flat_map(|n| n.public_keys.iter()),
        )
    }

    /// [`AttestorDoc::all_public_keys`], mutable, with the field each is
    /// written under.
    pub fn all_public_keys_mut(&mut self) -> Vec<(String, &mut PublicKeyDoc)> {
        let mut keys: Vec<(String, &mut PublicKeyDoc)> = self
            .public_keys
            .iter_mut()
            .enumerate()
            .map(|(k, key)| (format!("publicKeys[{k}]"), key))
            .collect();
        if let Some(note) = &mut self.user_owned_grafeas_note {
            keys.extend(
                note.public_keys
                    .iter_mut()
                    .enumerate()
                    .map(|(k, key)| (format!("userOwnedGrafeasNote.publicKeys[{k}]"), key)),
            );
        }
        keys
    }
}

/// One required attestation, as written: a predicate type and conditions
/// on the signed predicate (see the `policy::attestation` module).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequirementDoc {
    pub predicate_type: String,
    #[serde(default)]
    pub conditions: Vec<ConditionDoc>,
}

/// One condition, as written: a path and exactly one operator.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionDoc {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

/// The document a `policyFile` may hold when it is not a bare policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFileDoc {
    policy: PolicyDoc,
    #[serde(default)]
    attestors: Vec<AttestorDoc>,
}

/// Parses the text of the `policyFile` at `path`: either a bare BinAuthz
/// policy (as `gcloud container binauthz policy export` prints it) or a
/// document with `policy:` and optionally `attestors:`. Errors name the
/// file and, where known, the line.
pub fn parse_policy_file(
    path: &Path,
    text: &str,
) -> Result<(PolicyDoc, Vec<AttestorDoc>), ConfigError> {
    let parse_error = |e: serde_yaml_ng::Error| ConfigError::Parse {
        location: format!(
            "{}{}: ",
            path.display(),
            e.location()
                .map(|l| format!(" line {} column {}", l.line(), l.column()))
                .unwrap_or_default()
        ),
        message: e.to_string(),
    };
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(parse_error)?;
    if value.get("policy").is_some() {
        let file: PolicyFileDoc = serde_yaml_ng::from_str(text).map_err(parse_error)?;
        Ok((file.policy, file.attestors))
    } else {
        let doc: PolicyDoc = serde_yaml_ng::from_str(text).map_err(parse_error)?;
        Ok((doc, Vec::new()))
    }
}
