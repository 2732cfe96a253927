//! Turns what the evidence sources found into [`Evidence`] for one
//! attestor: each piece is checked with the attestor's keys against the
//! image being decided. Pure: no I/O.
//!
//! Which evidence can satisfy which attestor:
//!
//! | evidence                                   | plain attestor | attestor with `attestations:` |
//! |--------------------------------------------|----------------|-------------------------------|
//! | simple-signing signature (`.sig`, store)   | yes            | —                             |
//! | BinAuthz occurrence (store)                | yes            | —                             |
//! | DSSE, predicate `cosign/sign/v1`           | yes            | no (another predicate type)   |
//! | DSSE, any other predicate (`.att`, bundle, store) | no (another predicate type) | when a requirement holds |
//! | bundle `messageSignature`                  | yes            | no                            |
//!
//! An attestor with `keyless:` also accepts evidence signed with a Fulcio
//! certificate — a `.sig` or `.att` layer with cosign's certificate
//! annotations, or a bundle with a certificate — once [`crate::sigstore`]
//! verified all of it (chain, SCT, log entry, signing time, identity);
//! what the signed content says is then judged exactly as for a key.
//! Keyless evidence that fails is [`Check::Unverified`], naming the check.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::formats::bundle::{self, Artifact};
use super::formats::{dsse, simple_signing};
use super::sources::cosign::{self, FoundLayer};
use super::sources::store::{Content, Item};
use crate::oci::Digest;
use crate::policy::attestation::SIGNATURE_PREDICATE_TYPE;
use crate::policy::{
    Attestor, Check, Evidence, EvidenceKind, Keyless, KeylessSigner, SignedIdentity,
};
use crate::sigstore::{self, cosign as classic};

/// The image a decision is about.
pub struct Target<'a> {
    /// Canonical `<registry>/<repository>`.
    pub name: &'a str,
    pub digest: &'a Digest,
    /// The exact manifest bytes being served.
    pub manifest: &'a [u8],
    pub identity: &'a SignedIdentity,
    /// The rule's `requireNamedIdentity`.
    pub require_named: bool,
    /// Now, in milliseconds since the epoch: keyless verification's clock.
    pub now_ms: i64,
}

/// The wall clock in milliseconds since the epoch, for [`Target::now_ms`].
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Target<'_> {
    fn digest_text(&self) -> String {
        self.digest.to_string()
    }

    /// The manifest's SHA-256, as bytes.
    fn sha256(&self) -> Result<[u8; 32], Check> {
        hex::decode(self.digest.hex())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| malformed("keyless evidence needs a sha256 manifest digest"))
    }

    fn artifact(&self) -> Artifact<'_> {
        Artifact {
            digest_hex: self.digest.hex(),
            bytes: Some(self.manifest),
            binding: Some(self.binding()),
        }
    }

    /// What signed content must say about the repository.
    pub fn binding(&self) -> dsse::Binding<'_> {
        dsse::Binding {
            name: self.name,
            identity: self.identity,
            require_named: self.require_named,
        }
    }
}

fn malformed(reason: &str) -> Check {
    Check::Malformed {
        reason: reason.to_owned(),
    }
}

/// A simple-signing signature: keyless when it carries a certificate and
/// the attestor has `keyless:`, else with the attestor's keys.
fn signature_check(
    candidate: &simple_signing::Candidate,
    attestor: &Attestor,
    target: &Target<'_>,
) -> (Check, Option<KeylessSigner>) {
    if !attestor.attestations.is_empty() {
        let check = Check::OtherPredicate {
            signed: "none (a plain signature)".into(),
        };
        return (check, None);
    }
    let digest = target.digest_text();
    let subject = simple_signing::Subject {
        name: target.name,
        digest: &digest,
    };
    match &attestor.keyless {
        Some(keyless) if classic::has_certificate(&candidate.annotations) => {
            let signed = classic::Signed::Payload {
                payload: &candidate.payload,
                signature_b64: &candidate.signature_b64,
            };
            let ((check, _, _), signer) = keyless_check(
                keyless,
                target,
                |signer, root, options| {
                    classic::verify(signed, &candidate.annotations, signer, root, options)
                },
                |_, key_id| {
                    let check = simple_signing::check_payload(
                        &candidate.payload,
                        &subject,
                        target.identity,
                        &key_id,
                    );
                    (check, None, None)
                },
            );
            either_way((check, signer), attestor, || {
                simple_signing::check(candidate, attestor, &subject, target.identity)
            })
        }
        _ => (
            simple_signing::check(candidate, attestor, &subject, target.identity),
            None,
        ),
    }
}

/// Evidence an attestor with both keys and `keyless:` could accept either
/// way: the keyless outcome, unless it failed and the attestor's keys
/// verify the same evidence (a certificate annotation added to a
/// key-signed signature does not hide it from the keys).
fn either_way<T>(
    keyless: (T, Option<KeylessSigner>),
    attestor: &Attestor,
    by_key: impl FnOnce() -> T,
) -> (T, Option<KeylessSigner>)
where
    T: Verdict,
{
    if keyless.0.is_valid() || attestor.keys.is_empty() {
        return keyless;
    }
    let keyed = by_key();
    if keyed.is_valid() {
        (keyed, None)
    } else {
        keyless
    }
}

/// A check's outcome, with or without the signed predicate type.
trait Verdict {
    fn is_valid(&self) -> bool;
}

impl Verdict for Check {
    fn is_valid(&self) -> bool {
        matches!(self, Check::Valid { .. })
    }
}

impl Verdict for Checked {
    fn is_valid(&self) -> bool {
        self.0.is_valid()
    }
}

/// Verifies keyless evidence with `verify` under the attestor's
/// `keyless:` (its identities, trusted root and requirements, at the
/// target's time); once everything held, `judge` reads the signed content
/// as signed by `key_id` (`keyless:<subject>`). The verified signer goes
/// with a valid verdict only.
fn keyless_check(
    keyless: &Keyless,
    target: &Target<'_>,
    verify: impl FnOnce(
        &sigstore::Signer<'_>,
        &sigstore::TrustedRoot,
        sigstore::Options,
    ) -> Result<sigstore::Verified, String>,
    judge: impl FnOnce(&sigstore::Verified, String) -> Checked,
) -> (Checked, Option<KeylessSigner>) {
    let options = sigstore::Options {
        require_tlog: keyless.require_tlog,
        require_sct: keyless.require_sct,
        now_ms: target.now_ms,
    };
    let signer = sigstore::Signer::Identities(&keyless.identities);
    let verified = match verify(&signer, &keyless.root, options) {
        Ok(verified) => verified,
        Err(reason) => return ((Check::Unverified { reason }, None, None), None),
    };
    let identity = verified.identity.clone().unwrap_or_default();
    let subject = identity.subject.unwrap_or_default();
    let entry = verified.entries.first();
    let signer = KeylessSigner {
        key_id: format!("keyless:{subject}"),
        subject,
        issuer: identity.issuer.unwrap_or_default(),
        certificate_sha256: verified.certificate_sha256.clone().unwrap_or_default(),
        log_index: entry.map(|(_, index, _)| *index),
        integrated_time: entry.and_then(|(_, _, at)| at.map(|ms| ms / 1000)),
    };
    let checked = judge(&verified, signer.key_id.clone());
    let valid = matches!(checked.0, Check::Valid { .. });
    (checked, valid.then_some(signer))
}

/// A DSSE statement keyless verification vouched for, judged like one a
/// key verified.
fn judge_statement(
    verified: &sigstore::Verified,
    key_id: String,
    attestor: &Attestor,
    target: &Target<'_>,
) -> Checked {
    let Some((payload_type, payload)) = &verified.statement else {
        return (malformed("no DSSE statement was verified"), None, None);
    };
    match dsse::Verified::from_signed(payload_type, payload, key_id) {
        Ok(statement) => judge_envelope(&statement, attestor, target),
        Err(check) => (check, None, None),
    }
}

/// A DSSE envelope, for either kind of attestor; with the signed
/// predicate type when the signature verified.
pub fn envelope_check(envelope: &[u8], attestor: &Attestor, target: &Target<'_>) -> Checked {
    match dsse::verify(envelope, attestor) {
        Ok(verified) => judge_envelope(&verified, attestor, target),
        Err(check) => (check, None, None),
    }
}

/// A `.att` layer: keyless when it carries a certificate and the attestor
/// has `keyless:`, else with the attestor's keys.
fn att_check(
    envelope: &[u8],
    annotations: &HashMap<String, String>,
    attestor: &Attestor,
    target: &Target<'_>,
) -> (Checked, Option<KeylessSigner>) {
    let Some(keyless) = attestor
        .keyless
        .as_ref()
        .filter(|_| classic::has_certificate(annotations))
    else {
        return (envelope_check(envelope, attestor, target), None);
    };
    let digest = match target.sha256() {
        Ok(digest) => digest,
        Err(check) => return ((check, None, None), None),
    };
    let signed = classic::Signed::Envelope {
        json: envelope,
        digest,
    };
    either_way(
        keyless_check(
            keyless,
            target,
            |signer, root, options| classic::verify(signed, annotations, signer, root, options),
            |verified, key_id| judge_statement(verified, key_id, attestor, target),
        ),
        attestor,
        || envelope_check(envelope, attestor, target),
    )
}

/// A statement whose signature verified, for either kind of attestor.
fn judge_envelope(verified: &dsse::Verified, attestor: &Attestor, target: &Target<'_>) -> Checked {
    let digest_hex = target.digest.hex();
    let binding = target.binding();
    let predicate_type = Some(verified.predicate_type().to_owned());
    let note = verified
        .subject_names(digest_hex)
        .is_empty()
        .then(|| dsse::UNNAMED.to_owned());
    let check = if attestor.attestations.is_empty() {
        match verified.check(digest_hex, None, Some(&binding)) {
            Check::Valid { .. } if verified.predicate_type() != SIGNATURE_PREDICATE_TYPE => {
                Check::OtherPredicate {
                    signed: verified.predicate_type().to_owned(),
                }
            }
            other => other,
        }
    } else {
        dsse::check_for_attestor(verified, attestor, digest_hex, Some(&binding))
    };
    (check, predicate_type, note)
}

/// A check's outcome: the verdict, the signed predicate type, a note.
type Checked = (Check, Option<String>, Option<String>);

/// Evidence of `kind` from what a source found: each item checked by
/// `check`, each item that could not be read malformed.
fn each<T>(
    kind: EvidenceKind,
    found: &[(String, Result<T, String>)],
    check: impl Fn(&T) -> (Checked, Option<KeylessSigner>),
) -> Vec<Evidence> {
    found
        .iter()
        .map(|(source, item)| {
            let ((check, predicate, note), signer) = match item {
                Ok(item) => check(item),
                Err(reason) => ((malformed(reason), None, None), None),
            };
            let note = match (&signer, note) {
                (Some(signer), None) => Some(format!("signed keyless by {signer}")),
                (Some(signer), Some(note)) => Some(format!("{note}; signed keyless by {signer}")),
                (None, note) => note,
            };
            Evidence::new(kind, source.clone(), check)
                .with_predicate_type(predicate)
                .with_note(note)
                .with_keyless(signer)
        })
        .collect()
}

/// Signatures from a `.sig` tag.
pub fn from_signatures(
    found: &[cosign::FoundSignature],
    attestor: &Attestor,
    target: &Target<'_>,
) -> Vec<Evidence> {
    each(EvidenceKind::SigTag, found, |candidate| {
        let (check, signer) = signature_check(candidate, attestor, target);
        ((check, None, None), signer)
    })
}

/// Envelopes from an `.att` tag.
pub fn from_envelopes(
    found: &[FoundLayer],
    attestor: &Attestor,
    target: &Target<'_>,
) -> Vec<Evidence> {
    each(EvidenceKind::AttTag, found, |(bytes, annotations)| {
        att_check(bytes, annotations, attestor, target)
    })
}

/// Bundles attached as referrers.
pub fn from_bundles(
    found: &[(String, Result<Bytes, String>)],
    attestor: &Attestor,
    target: &Target<'_>,
) -> Vec<Evidence> {
    each(EvidenceKind::Referrer, found, |bytes| {
        match bundle::parse(bytes) {
            Ok(parsed) => match &attestor.keyless {
                Some(keyless) if parsed.is_keyless() => {
                    keyless_bundle_check(bytes, &parsed, keyless, attestor, target)
                }
                _ => {
                    let (check, predicate) = parsed.check(attestor, &target.artifact());
                    ((check, predicate, Some(bundle_note(&parsed, target))), None)
                }
            },
            Err(reason) => ((malformed(&reason), None, None), None),
        }
    })
}

/// A bundle signed with a certificate, for an attestor with `keyless:`:
/// the whole bundle verified by [`sigstore::verify_bundle`] — a DSSE
/// statement about the manifest's digest, or a message signature over the
/// manifest's bytes — then its content judged.
fn keyless_bundle_check(
    bytes: &[u8],
    parsed: &bundle::Bundle,
    keyless: &Keyless,
    attestor: &Attestor,
    target: &Target<'_>,
) -> (Checked, Option<KeylessSigner>) {
    let artifact = if parsed.is_dsse() {
        match target.sha256() {
            Ok(digest) => sigstore::Artifact::Digest(digest),
            Err(check) => return ((check, None, None), None),
        }
    } else {
        sigstore::Artifact::Bytes(target.manifest.to_vec())
    };
    let keyless = keyless_check(
        keyless,
        target,
        |signer, root, options| sigstore::verify_bundle(bytes, &artifact, signer, root, options),
        |verified, key_id| {
            if verified.statement.is_some() {
                return judge_statement(verified, key_id, attestor, target);
            }
            // A message signature: never an attestation, names no repository.
            if !attestor.attestations.is_empty() {
                let check = Check::OtherPredicate {
                    signed: "none (a message signature signs the artifact itself; it is not \
                             an attestation)"
                        .into(),
                };
                return (check, None, None);
            }
            let check = match target.binding().check(&[]) {
                Ok(()) => Check::Valid { key_id },
                Err(refused) => refused,
            };
            (check, None, None)
        },
    );
    either_way(keyless, attestor, || {
        let (check, predicate) = parsed.check(attestor, &target.artifact());
        (check, predicate, Some(bundle_note(parsed, target)))
    })
}

/// What a bundle checked by key carries besides its signature: its
/// transparency-log entries are recorded, not verified (they are, in full,
/// when it is checked keyless).
fn bundle_note(bundle: &bundle::Bundle, target: &Target<'_>) -> String {
    let entries = match bundle.tlog_entries() {
        0 => "no transparency-log entry".to_owned(),
        1 => "1 transparency-log entry (recorded, not verified)".to_owned(),
        n => format!("{n} transparency-log entries (recorded, not verified)"),
    };
    let unnamed = if bundle.names_repository(target.digest.hex()) {
        String::new()
    } else {
        format!("; {}", dsse::UNNAMED)
    };
    format!(
        "sigstore bundle ({}); {entries}{unnamed}",
        bundle.media_type()
    )
}

/// Items from the attestation store that name this digest.
pub fn from_store(items: &[Arc<Item>], attestor: &Attestor, target: &Target<'_>) -> Vec<Evidence> {
    items
        .iter()
        .map(|item| {
            let ((check, predicate, _), signer) = match &item.content {
                Content::Signature(candidate) => {
                    let (check, signer) = signature_check(candidate, attestor, target);
                    ((check, None, None), signer)
                }
                Content::Occurrence(occurrence) => {
                    let check = if attestor.attestations.is_empty() {
                        let digest = target.digest_text();
                        let subject = simple_signing::Subject {
                            name: target.name,
                            digest: &digest,
                        };
                        occurrence.check(attestor, &subject, target.identity)
                    } else {
                        Check::OtherPredicate {
                            signed: "none (a Binary Authorization attestation)".into(),
                        }
                    };
                    ((check, None, None), None)
                }
                Content::Envelope(envelope) => (envelope_check(envelope, attestor, target), None),
                Content::Bundle(bundle, json) => match &attestor.keyless {
                    Some(keyless) if bundle.is_keyless() => {
                        keyless_bundle_check(json, bundle, keyless, attestor, target)
                    }
                    _ => {
                        let (check, predicate) = bundle.check(attestor, &target.artifact());
                        ((check, predicate, None), None)
                    }
                },
            };
            let note = match (&item.content, &signer) {
                (_, Some(signer)) => format!("{}; signed keyless by {signer}", item.content.kind()),
                (Content::Bundle(bundle, _), None) => bundle_note(bundle, target),
                (other, None) => other.kind().to_owned(),
            };
            Evidence::new(EvidenceKind::Store, item.source.clone(), check)
                .with_predicate_type(predicate)
                .with_note(Some(note))
                .with_keyless(signer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigstore::TrustedRoot;
    use crate::verify::testing::{fixture, fixture_text, keyless_attestor};

    const GITHUB_ACTIONS: &str = "https://token.actions.githubusercontent.com";
    const GITHUB_OAUTH: &str = "https://github.com/login/oauth";
    /// The kubewarden-controller image sigstore-rs' cosign v3 bundle signs.
    const KUBEWARDEN: &str =
        "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172";
    const KUBEWARDEN_WORKFLOW: &str = "https://github.com/kubewarden/kubewarden-controller/.*";
    /// go-containerregistry's empty image, cosign's keyless attestation's subject.
    const EMPTY_IMAGE: &str =
        "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4";
    const NOW: i64 = 1_780_000_000_000;

    fn target<'a>(name: &'a str, digest: &'a Digest) -> Target<'a> {
        Target {
            name,
            digest,
            manifest: b"",
            identity: &SignedIdentity::MatchRepository,
            require_named: false,
            now_ms: NOW,
        }
    }

    fn referrer(path: &str) -> Vec<(String, Result<Bytes, String>)> {
        vec![(path.to_owned(), Ok(Bytes::from(fixture(path))))]
    }

    #[test]
    fn a_cosign_v3_keyless_bundle_satisfies_a_keyless_attestor_with_its_identity() {
        let digest: Digest = KUBEWARDEN.parse().unwrap();
        let target = target("ghcr.io/kubewarden/kubewarden-controller", &digest);
        let found = referrer("sigstore-rs/bundle_v03/bundle_v03.json");
        let right = keyless_attestor(
            "ci",
            &[(GITHUB_ACTIONS, KUBEWARDEN_WORKFLOW)],
            TrustedRoot::public_good(),
            &[],
        );
        let evidence = from_bundles(&found, &right, &target);
        assert!(
            matches!(&evidence[0].check, Check::Valid { key_id } if key_id.starts_with("keyless:https://github.com/kubewarden/")),
            "{evidence:?}"
        );
        let signer = evidence[0]
            .keyless
            .as_ref()
            .expect("the signer is recorded");
        assert_eq!(signer.issuer, GITHUB_ACTIONS);
        assert!(
            signer.subject.ends_with("release.yml@refs/tags/v1.34.0"),
            "{signer:?}"
        );
        assert!(signer.log_index.is_some() && signer.certificate_sha256.len() == 64);

        // Another workflow, another issuer, another image: refused, naming why.
        for (attestor, digest, says) in [
            (
                keyless_attestor(
                    "ci",
                    &[(GITHUB_ACTIONS, "https://github.com/acme/.*")],
                    TrustedRoot::public_good(),
                    &[],
                ),
                KUBEWARDEN,
                "no expected identity matches",
            ),
            (
                keyless_attestor(
                    "ci",
                    &[(GITHUB_OAUTH, KUBEWARDEN_WORKFLOW)],
                    TrustedRoot::public_good(),
                    &[],
                ),
                KUBEWARDEN,
                "issuer",
            ),
            (right, EMPTY_IMAGE, "subjects"),
        ] {
            let digest: Digest = digest.parse().unwrap();
            let evidence = from_bundles(&found, &attestor, &target_for(&digest));
            assert!(
                matches!(&evidence[0].check, Check::Unverified { reason } if reason.contains(says)),
                "{says}: {evidence:?}"
            );
            assert!(evidence[0].keyless.is_none());
        }
    }

    fn target_for(digest: &Digest) -> Target<'_> {
        target("ghcr.io/kubewarden/kubewarden-controller", digest)
    }

    #[test]
    fn a_keyless_attestation_bundle_meets_a_requirement_under_its_own_trusted_root() {
        let dir = "cosign/oci-attestation-bundle";
        let root =
            TrustedRoot::parse(fixture_text(&format!("{dir}/trusted_root_pgi.json")).as_bytes())
                .expect("root");
        let digest: Digest = EMPTY_IMAGE.parse().unwrap();
        let target = target("127.0.0.1:60943/repo", &digest);
        let found = referrer(&format!("{dir}/oci-attestation.sigstore.json"));
        let predicate = "https://cosign.sigstore.dev/attestation/v1";
        let attestor = |predicates: &[&str]| {
            keyless_attestor(
                "ci",
                &[(GITHUB_OAUTH, "cody@soyland\\.com")],
                root.clone(),
                predicates,
            )
        };
        let evidence = from_bundles(&found, &attestor(&[predicate]), &target);
        assert!(
            matches!(evidence[0].check, Check::Valid { .. }),
            "{evidence:?}"
        );
        assert_eq!(evidence[0].predicate_type.as_deref(), Some(predicate));
        // A plain signature is wanted: an attestation is not one.
        let evidence = from_bundles(&found, &attestor(&[]), &target);
        assert!(
            matches!(evidence[0].check, Check::OtherPredicate { .. }),
            "{evidence:?}"
        );
        // Without keyless identities the attestor cannot use it.
        let mut keyed = attestor(&[predicate]);
        keyed.keyless = None;
        let evidence = from_bundles(&found, &keyed, &target);
        assert!(
            matches!(evidence[0].check, Check::Unsupported { .. }),
            "{evidence:?}"
        );
    }

    #[test]
    fn keyless_bundles_in_the_attestation_store_count_as_json_lines() {
        // What `gh attestation download` writes: one bundle per line.
        let one = |path: &str| {
            let value: serde_json::Value = serde_json::from_slice(&fixture(path)).unwrap();
            serde_json::to_string(&value).unwrap()
        };
        let lines = format!(
            "{}\n{}\n",
            one("sigstore-rs/bundle_v03/bundle_v03.json"),
            one("cosign/oci-attestation-bundle/oci-attestation.sigstore.json")
        );
        let items: Vec<Arc<Item>> = crate::verify::sources::store::parse(lines.as_bytes())
            .expect("two bundles")
            .into_iter()
            .map(|(_, content)| {
                Arc::new(Item {
                    source: "store".into(),
                    content,
                })
            })
            .collect();
        assert_eq!(items.len(), 2);
        let digest: Digest = KUBEWARDEN.parse().unwrap();
        let target = target_for(&digest);
        let attestor = keyless_attestor(
            "ci",
            &[(GITHUB_ACTIONS, KUBEWARDEN_WORKFLOW)],
            TrustedRoot::public_good(),
            &[],
        );
        let evidence = from_store(&items, &attestor, &target);
        assert!(
            matches!(evidence[0].check, Check::Valid { .. }),
            "{evidence:?}"
        );
        assert!(evidence[0].keyless.is_some());
        assert!(
            evidence[0]
                .note
                .as_deref()
                .is_some_and(|n| n.contains("signed keyless by")),
            "{evidence:?}"
        );
        // The other bundle is about another image.
        assert!(
            matches!(evidence[1].check, Check::Unverified { .. }),
            "{evidence:?}"
        );
    }

    #[test]
    fn a_certificate_added_to_a_key_signed_signature_does_not_hide_it_from_the_keys() {
        use base64::Engine as _;
        use p256::ecdsa::signature::Signer as _;
        let (signer, key) = crate::verify::testing::p256_pair("ci");
        let digest: Digest = KUBEWARDEN.parse().unwrap();
        let name = "ghcr.io/kubewarden/kubewarden-controller";
        let payload =
            simple_signing::cosign_payload(name, &digest.to_string(), "null").into_bytes();
        let signature: p256::ecdsa::Signature = signer.sign(&payload);
        let candidate = simple_signing::Candidate {
            payload,
            signature_b64: base64::engine::general_purpose::STANDARD
                .encode(signature.to_der().as_bytes()),
            annotations: [(
                classic::CERTIFICATE.to_owned(),
                fixture_text("containers-image/sigstore/dir-img-cosign-fulcio-rekor-valid/signature-1.cert.pem"),
            )]
            .into(),
        };
        let found = vec![("sig".to_owned(), Ok(candidate))];
        let target = target_for(&digest);
        let mut both = keyless_attestor(
            "ci",
            &[(GITHUB_ACTIONS, KUBEWARDEN_WORKFLOW)],
            TrustedRoot::public_good(),
            &[],
        );
        both.keys = vec![key];
        let evidence = from_signatures(&found, &both, &target);
        assert!(
            matches!(&evidence[0].check, Check::Valid { key_id } if key_id == "ci"),
            "{evidence:?}"
        );
        assert!(evidence[0].keyless.is_none());
        // Keyless only: the certificate did not sign it.
        both.keys.clear();
        let evidence = from_signatures(&found, &both, &target);
        assert!(
            matches!(&evidence[0].check, Check::Unverified { .. }),
            "{evidence:?}"
        );
    }

    #[test]
    fn fulcio_claims_are_read_from_a_real_github_actions_certificate() {
        use crate::sigstore::{identity::claim_oid, IdentityPolicy, Matcher};
        let digest: Digest = KUBEWARDEN.parse().unwrap();
        let target = target_for(&digest);
        let found = referrer("sigstore-rs/bundle_v03/bundle_v03.json");
        let claim = |name: &str, matcher: Matcher| (claim_oid(name).expect(name), matcher);
        let with_claims = |claims: Vec<(&'static str, Matcher)>| {
            let mut attestor = keyless_attestor("ci", &[], TrustedRoot::public_good(), &[]);
            if let Some(keyless) = attestor.keyless.as_mut() {
                keyless.identities = vec![IdentityPolicy {
                    issuer: Matcher::Exact(GITHUB_ACTIONS.into()),
                    subject: Matcher::regex(KUBEWARDEN_WORKFLOW).unwrap(),
                    claims,
                }];
            }
            from_bundles(&found, &attestor, &target)
        };
        let repository = "https://github.com/kubewarden/kubewarden-controller";
        let evidence = with_claims(vec![
            claim("sourceRepositoryURI", Matcher::Exact(repository.into())),
            claim(
                "sourceRepositoryRef",
                Matcher::regex("refs/tags/v.*").unwrap(),
            ),
            claim("buildTrigger", Matcher::Exact("push".into())),
            // The deprecated GitHub extensions are raw strings, not DER.
            claim(
                "githubWorkflowRepository",
                Matcher::Exact("kubewarden/kubewarden-controller".into()),
            ),
        ]);
        assert!(
            matches!(evidence[0].check, Check::Valid { .. }),
            "{evidence:?}"
        );
        let evidence = with_claims(vec![claim(
            "buildTrigger",
            Matcher::Exact("workflow_dispatch".into()),
        )]);
        assert!(
            matches!(&evidence[0].check, Check::Unverified { reason } if reason.contains("buildTrigger \"push\" is not \"workflow_dispatch\"")),
            "{evidence:?}"
        );
    }

    #[test]
    fn an_integrated_time_without_a_signed_entry_timestamp_is_no_signing_time() {
        // cosign's keyless attestation bundle: SET and inclusion proof. The
        // proof alone does not vouch for the (unsigned) integratedTime, and
        // the certificate expired long ago: without the SET there is no
        // verified signing time.
        let dir = "cosign/oci-attestation-bundle";
        let root =
            TrustedRoot::parse(fixture_text(&format!("{dir}/trusted_root_pgi.json")).as_bytes())
                .expect("root");
        let mut bundle: serde_json::Value =
            serde_json::from_slice(&fixture(&format!("{dir}/oci-attestation.sigstore.json")))
                .unwrap();
        let entry = &mut bundle["verificationMaterial"]["tlogEntries"][0];
        assert!(entry["inclusionProof"].is_object() && entry["inclusionPromise"].is_object());
        let identities = [crate::sigstore::IdentityPolicy::exact(
            "cody@soyland.com",
            GITHUB_OAUTH,
        )];
        let artifact = crate::sigstore::Artifact::Digest(
            hex::decode(EMPTY_IMAGE.trim_start_matches("sha256:"))
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let verify = |bundle: &serde_json::Value| {
            crate::sigstore::verify_bundle(
                &serde_json::to_vec(bundle).unwrap(),
                &artifact,
                &crate::sigstore::Signer::Identities(&identities),
                &root,
                crate::sigstore::Options::at(NOW),
            )
        };
        assert!(verify(&bundle).is_ok());
        bundle["verificationMaterial"]["tlogEntries"][0]
            .as_object_mut()
            .unwrap()
            .remove("inclusionPromise");
        let e = verify(&bundle).expect_err("no signing time");
        assert!(e.contains("no verified signing time"), "{e}");
    }
}
