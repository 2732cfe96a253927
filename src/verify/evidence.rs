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

use std::sync::Arc;

use bytes::Bytes;

use super::formats::bundle::{self, Artifact};
use super::formats::{dsse, simple_signing};
use super::sources::cosign;
use super::sources::store::{Content, Item};
use crate::oci::Digest;
use crate::policy::attestation::SIGNATURE_PREDICATE_TYPE;
use crate::policy::{Attestor, Check, Evidence, EvidenceKind, SignedIdentity};

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
}

impl Target<'_> {
    fn digest_text(&self) -> String {
        self.digest.to_string()
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

/// A simple-signing signature.
fn signature_check(
    candidate: &simple_signing::Candidate,
    attestor: &Attestor,
    target: &Target<'_>,
) -> Check {
    if !attestor.attestations.is_empty() {
        return Check::OtherPredicate {
            signed: "none (a plain signature)".into(),
        };
    }
    let digest = target.digest_text();
    let subject = simple_signing::Subject {
        name: target.name,
        digest: &digest,
    };
    simple_signing::check(candidate, attestor, &subject, target.identity)
}

/// A DSSE envelope, for either kind of attestor; with the signed
/// predicate type when the signature verified.
pub fn envelope_check(envelope: &[u8], attestor: &Attestor, target: &Target<'_>) -> Checked {
    let digest_hex = target.digest.hex();
    let binding = target.binding();
    let verified = match dsse::verify(envelope, attestor) {
        Ok(v) => v,
        Err(check) => return (check, None, None),
    };
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
        dsse::check_for_attestor(&verified, attestor, digest_hex, Some(&binding))
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
    check: impl Fn(&T) -> Checked,
) -> Vec<Evidence> {
    found
        .iter()
        .map(|(source, item)| {
            let (check, predicate, note) = match item {
                Ok(item) => check(item),
                Err(reason) => (malformed(reason), None, None),
            };
            Evidence::new(kind, source.clone(), check)
                .with_predicate_type(predicate)
                .with_note(note)
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
        (signature_check(candidate, attestor, target), None, None)
    })
}

/// Envelopes from an `.att` tag.
pub fn from_envelopes(
    found: &[(String, Result<Bytes, String>)],
    attestor: &Attestor,
    target: &Target<'_>,
) -> Vec<Evidence> {
    each(EvidenceKind::AttTag, found, |bytes| {
        envelope_check(bytes, attestor, target)
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
            Ok(bundle) => {
                let (check, predicate) = bundle.check(attestor, &target.artifact());
                (check, predicate, Some(bundle_note(&bundle, target)))
            }
            Err(reason) => (malformed(&reason), None, None),
        }
    })
}

/// What a bundle carries besides its signature: transparency-log
/// entries are recorded, not verified (keyless verification, which needs
/// them, is not supported).
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
            let (check, predicate) = match &item.content {
                Content::Signature(candidate) => {
                    (signature_check(candidate, attestor, target), None)
                }
                Content::Occurrence(occurrence) => {
                    if attestor.attestations.is_empty() {
                        let digest = target.digest_text();
                        let subject = simple_signing::Subject {
                            name: target.name,
                            digest: &digest,
                        };
                        (occurrence.check(attestor, &subject, target.identity), None)
                    } else {
                        (
                            Check::OtherPredicate {
                                signed: "none (a Binary Authorization attestation)".into(),
                            },
                            None,
                        )
                    }
                }
                Content::Envelope(envelope) => {
                    let (check, predicate, _) = envelope_check(envelope, attestor, target);
                    (check, predicate)
                }
                Content::Bundle(bundle) => bundle.check(attestor, &target.artifact()),
            };
            let note = match &item.content {
                Content::Bundle(bundle) => bundle_note(bundle, target),
                other => other.kind().to_owned(),
            };
            Evidence::new(EvidenceKind::Store, item.source.clone(), check)
                .with_predicate_type(predicate)
                .with_note(Some(note))
        })
        .collect()
}
