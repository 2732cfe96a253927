//! A Sigstore of the tests' own: a Fulcio-like certificate authority, a
//! certificate-transparency log key, a Rekor-like log key, and the
//! `trusted_root.json` naming them — and cosign-style keyless signing with
//! them into a real registry (a `.sig` layer with the certificate and the
//! Rekor bundle as annotations, as `cosign sign` leaves it).
//!
//! Built from the same RustCrypto pieces Portcullis reads certificates
//! with (x509-cert structures, p256 signatures), never from Portcullis'
//! own verification code: what is signed here is what a real Fulcio, CT
//! log and Rekor would sign. No registry I/O here: `bench/keyless_sign.rs`
//! (the benchmark's keyless signer) includes this file too.

#![allow(dead_code)]

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use x509_cert::der::asn1::{BitString, Ia5String, OctetString, UtcTime, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode as _, Encode as _};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate};

const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";
const BASIC_CONSTRAINTS: &str = "2.5.29.19";
const KEY_USAGE: &str = "2.5.29.15";
const EXT_KEY_USAGE: &str = "2.5.29.37";
const SUBJECT_ALT_NAME: &str = "2.5.29.17";
const CODE_SIGNING: &str = "1.3.6.1.5.5.7.3.3";
const FULCIO_ISSUER: &str = "1.3.6.1.4.1.57264.1.8";
const SCT_LIST: &str = "1.3.6.1.4.1.11129.2.4.2";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A deterministic P-256 key from a label.
pub fn key(label: &str) -> SigningKey {
    let seed = Sha256::digest(format!("portcullis test sigstore {label}"));
    SigningKey::from_slice(&seed).expect("a valid scalar")
}

fn spki_der(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_public_key_der()
        .expect("SPKI")
        .as_bytes()
        .to_vec()
}

fn oid(text: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(text)
}

fn extension(id: &str, critical: bool, value: Vec<u8>) -> Extension {
    Extension {
        extn_id: oid(id),
        critical,
        extn_value: OctetString::new(value).expect("octets"),
    }
}

fn utc(at: SystemTime) -> Time {
    let since = at.duration_since(UNIX_EPOCH).expect("after 1970");
    Time::UtcTime(UtcTime::from_unix_duration(Duration::from_secs(since.as_secs())).expect("UTC"))
}

fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let dt = x509_cert::der::DateTime::from_unix_duration(Duration::from_secs(secs)).expect("date");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minutes(),
        dt.seconds()
    )
}

/// Signs `tbs` with `key`: the certificate's DER.
fn sign_certificate(tbs: TbsCertificate, key: &SigningKey) -> Vec<u8> {
    let signature: Signature = key.sign(&tbs.to_der().expect("TBS"));
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: oid(ECDSA_WITH_SHA256),
            parameters: None,
        },
        signature: BitString::from_bytes(signature.to_der().as_bytes()).expect("bits"),
    }
    .to_der()
    .expect("certificate")
}

/// Who a certificate is issued to, and when it is valid.
#[derive(Debug, Clone)]
pub struct Issue {
    /// An e-mail address or a URI (a CI workflow).
    pub subject: String,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Embed an SCT from the CT log.
    pub sct: bool,
}

impl Issue {
    /// Fulcio's usual: valid for ten minutes from a minute ago, with an SCT.
    pub fn now(subject: &str, issuer: &str) -> Issue {
        let now = SystemTime::now();
        Issue {
            subject: subject.into(),
            issuer: issuer.into(),
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(600),
            sct: true,
        }
    }
}

/// The test Sigstore: its CA, CT log and Rekor log keys.
pub struct TestSigstore {
    pub name: String,
    pub ca_key: SigningKey,
    pub ca_der: Vec<u8>,
    pub ct_key: SigningKey,
    pub rekor_key: SigningKey,
    /// The log ID its Rekor entries claim (normally its key's, see
    /// [`TestSigstore::rekor_log_id`]); a forger claims another log's.
    pub claimed_log_id: Option<Vec<u8>>,
}

impl TestSigstore {
    /// A Sigstore called `name` (its keys derive from it).
    pub fn new(name: &str) -> TestSigstore {
        let ca_key = key(&format!("{name} ca"));
        let ca_name = Name::from_str(&format!("CN={name}-fulcio,O=portcullis-test")).expect("name");
        let year = Duration::from_secs(365 * 24 * 3600);
        let now = SystemTime::now();
        let tbs = TbsCertificate {
            version: x509_cert::Version::V3,
            serial_number: SerialNumber::new(&[1]).expect("serial"),
            signature: AlgorithmIdentifierOwned {
                oid: oid(ECDSA_WITH_SHA256),
                parameters: None,
            },
            issuer: ca_name.clone(),
            validity: Validity {
                not_before: utc(now - 5 * year),
                not_after: utc(now + 5 * year),
            },
            subject: ca_name,
            subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(&spki_der(&ca_key))
                .expect("SPKI"),
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(vec![
                extension(
                    BASIC_CONSTRAINTS,
                    true,
                    BasicConstraints {
                        ca: true,
                        path_len_constraint: Some(1),
                    }
                    .to_der()
                    .expect("DER"),
                ),
                extension(
                    KEY_USAGE,
                    true,
                    KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
                        .to_der()
                        .expect("DER"),
                ),
            ]),
        };
        let ca_der = sign_certificate(tbs, &ca_key);
        TestSigstore {
            name: name.into(),
            ca_key,
            ca_der,
            ct_key: key(&format!("{name} ct")),
            rekor_key: key(&format!("{name} rekor")),
            claimed_log_id: None,
        }
    }

    /// The Rekor log's ID: SHA-256 of its key.
    pub fn rekor_log_id(&self) -> Vec<u8> {
        Sha256::digest(spki_der(&self.rekor_key)).to_vec()
    }

    /// The `trusted_root.json` naming this Sigstore's CA and logs.
    pub fn trusted_root(&self) -> String {
        let key = |k: &SigningKey| {
            json!({
                "rawBytes": b64(&spki_der(k)),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": "2020-01-01T00:00:00Z"}
            })
        };
        let root = json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": format!("https://rekor.{}.test", self.name),
                "hashAlgorithm": "SHA2_256",
                "publicKey": key(&self.rekor_key),
                "logId": {"keyId": b64(&self.rekor_log_id())}
            }],
            "certificateAuthorities": [{
                "subject": {"organization": "portcullis-test", "commonName": format!("{}-fulcio", self.name)},
                "uri": format!("https://fulcio.{}.test", self.name),
                "certChain": {"certificates": [{"rawBytes": b64(&self.ca_der)}]},
                "validFor": {"start": "2020-01-01T00:00:00Z"}
            }],
            "ctlogs": [{
                "baseUrl": format!("https://ct.{}.test", self.name),
                "hashAlgorithm": "SHA2_256",
                "publicKey": key(&self.ct_key),
                "logId": {"keyId": b64(&Sha256::digest(spki_der(&self.ct_key)))}
            }],
            "timestampAuthorities": []
        });
        serde_json::to_string_pretty(&root).expect("JSON")
    }

    /// Issues a leaf certificate for `signer`'s key: code signing, the
    /// identity as SAN and Fulcio issuer extension, an embedded SCT.
    pub fn issue(&self, signer: &SigningKey, issue: &Issue) -> Vec<u8> {
        let ca = Certificate::from_der(&self.ca_der).expect("CA");
        let san = if issue.subject.contains("://") {
            GeneralName::UniformResourceIdentifier(Ia5String::new(&issue.subject).expect("IA5"))
        } else {
            GeneralName::Rfc822Name(Ia5String::new(&issue.subject).expect("IA5"))
        };
        let mut extensions = vec![
            extension(
                KEY_USAGE,
                true,
                KeyUsage(KeyUsages::DigitalSignature.into())
                    .to_der()
                    .expect("DER"),
            ),
            extension(
                EXT_KEY_USAGE,
                false,
                ExtendedKeyUsage(vec![oid(CODE_SIGNING)])
                    .to_der()
                    .expect("DER"),
            ),
            extension(
                SUBJECT_ALT_NAME,
                true,
                SubjectAltName(vec![san]).to_der().expect("DER"),
            ),
            extension(
                FULCIO_ISSUER,
                false,
                Utf8StringRef::new(&issue.issuer)
                    .expect("UTF-8")
                    .to_der()
                    .expect("DER"),
            ),
        ];
        let serial: [u8; 8] = Sha256::digest(format!("{issue:?}"))[..8]
            .try_into()
            .expect("8 bytes");
        let mut tbs = TbsCertificate {
            version: x509_cert::Version::V3,
            serial_number: SerialNumber::new(&[&[0x01][..], &serial].concat()).expect("serial"),
            signature: AlgorithmIdentifierOwned {
                oid: oid(ECDSA_WITH_SHA256),
                parameters: None,
            },
            issuer: ca.tbs_certificate.subject.clone(),
            validity: Validity {
                not_before: utc(issue.not_before),
                not_after: utc(issue.not_after),
            },
            subject: Name::default(),
            subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(&spki_der(signer))
                .expect("SPKI"),
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions.clone()),
        };
        if issue.sct {
            let list = self.sct_list(&tbs.to_der().expect("TBS"), issue.not_before);
            let value = OctetString::new(list)
                .expect("octets")
                .to_der()
                .expect("DER");
            extensions.push(extension(SCT_LIST, false, value));
            tbs.extensions = Some(extensions);
        }
        sign_certificate(tbs, &self.ca_key)
    }

    /// An RFC 6962 SCT list over the precertificate `tbs` (the final
    /// TBS without the SCT extension), signed by the CT log.
    fn sct_list(&self, tbs: &[u8], at: SystemTime) -> Vec<u8> {
        let timestamp = u64::try_from(
            at.duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_millis(),
        )
        .expect("ms");
        let issuer_key_hash = Sha256::digest(spki_der(&self.ca_key));
        let mut signed = vec![0u8, 0u8];
        signed.extend_from_slice(&timestamp.to_be_bytes());
        signed.extend_from_slice(&1u16.to_be_bytes());
        signed.extend_from_slice(&issuer_key_hash);
        signed.extend_from_slice(&u32::try_from(tbs.len()).expect("len").to_be_bytes()[1..]);
        signed.extend_from_slice(tbs);
        signed.extend_from_slice(&0u16.to_be_bytes());
        let signature: Signature = self.ct_key.sign(&signed);
        let signature = signature.to_der().as_bytes().to_vec();

        let mut sct = vec![0u8];
        sct.extend_from_slice(&Sha256::digest(spki_der(&self.ct_key)));
        sct.extend_from_slice(&timestamp.to_be_bytes());
        sct.extend_from_slice(&0u16.to_be_bytes());
        sct.extend_from_slice(&[4, 3]); // SHA-256, ECDSA
        sct.extend_from_slice(&u16::try_from(signature.len()).expect("len").to_be_bytes());
        sct.extend_from_slice(&signature);
        let mut list = u16::try_from(sct.len())
            .expect("len")
            .to_be_bytes()
            .to_vec();
        list.extend_from_slice(&sct);
        let mut out = u16::try_from(list.len())
            .expect("len")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(&list);
        out
    }

    /// cosign's `dev.sigstore.cosign/bundle` for a hashedrekord entry of
    /// `signature` over `payload` by `certificate_pem`, integrated at
    /// `integrated` (seconds), signed by this Sigstore's Rekor key.
    pub fn rekor_bundle(
        &self,
        payload: &[u8],
        signature: &[u8],
        certificate_pem: &str,
        integrated: u64,
        log_index: u64,
    ) -> String {
        let body = json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(payload))}},
                "signature": {
                    "content": b64(signature),
                    "publicKey": {"content": b64(certificate_pem.as_bytes())}
                }
            }
        });
        self.rekor_bundle_of(
            &serde_json::to_vec(&body).expect("JSON"),
            integrated,
            log_index,
        )
    }

    /// cosign's `dev.sigstore.cosign/bundle` for a log entry of `body`.
    pub fn rekor_bundle_of(&self, body: &[u8], integrated: u64, log_index: u64) -> String {
        let body = b64(body);
        json!({
            "SignedEntryTimestamp": b64(&self.set(&body, integrated, log_index)),
            "Payload": {
                "body": body,
                "integratedTime": integrated,
                "logIndex": log_index,
                "logID": self.log_id_hex()
            }
        })
        .to_string()
    }

    /// The log ID (hex) this Sigstore's entries claim.
    fn log_id_hex(&self) -> String {
        hex::encode(
            self.claimed_log_id
                .clone()
                .unwrap_or_else(|| self.rekor_log_id()),
        )
    }

    /// The signed entry timestamp over an entry: the canonical JSON of its
    /// body (base64), integrated time, log ID and index (keys sorted, no
    /// spaces), as Rekor signs it.
    fn set(&self, body_b64: &str, integrated: u64, log_index: u64) -> Vec<u8> {
        let canonical = format!(
            "{{\"body\":\"{body_b64}\",\"integratedTime\":{integrated},\"logID\":\"{}\",\"logIndex\":{log_index}}}",
            self.log_id_hex()
        );
        let set: Signature = self.rekor_key.sign(canonical.as_bytes());
        set.to_der().as_bytes().to_vec()
    }

    /// `statement` in a DSSE envelope signed by an ephemeral key certified
    /// for `issue`, and the Rekor `dsse` 0.0.1 entry body recording it.
    fn dsse_keyless(&self, statement: &[u8], issue: &Issue) -> KeylessDsse {
        let ephemeral = key(&format!(
            "ephemeral attestation {issue:?} {}",
            b64(statement)
        ));
        let der = self.issue(&ephemeral, issue);
        let certificate = pem(&der);
        let payload_type = "application/vnd.in-toto+json";
        let mut pae = format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            statement.len()
        )
        .into_bytes();
        pae.extend_from_slice(statement);
        let signature: Signature = ephemeral.sign(&pae);
        let signature = signature.to_der().as_bytes().to_vec();
        let envelope = json!({
            "payload": b64(statement),
            "payloadType": payload_type,
            "signatures": [{"sig": b64(&signature), "keyid": ""}]
        });
        let body = serde_json::to_vec(&json!({
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(envelope.to_string()))},
                "payloadHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(statement))},
                "signatures": [{"signature": b64(&signature), "verifier": b64(certificate.as_bytes())}]
            }
        }))
        .expect("JSON");
        KeylessDsse {
            der,
            certificate,
            envelope,
            body,
        }
    }

    /// A cosign `.att` layer signed keyless (cosign v2 `attest`): the DSSE
    /// envelope (the layer's bytes) and the layer's annotations (the
    /// certificate, and the Rekor entry integrated at `integrated` when
    /// given).
    pub fn att_keyless(
        &self,
        statement: &[u8],
        issue: &Issue,
        integrated: Option<SystemTime>,
    ) -> KeylessSignature {
        let dsse = self.dsse_keyless(statement, issue);
        let mut annotations = json!({
            SIGNATURE_ANNOTATION: "",
            CERTIFICATE_ANNOTATION: dsse.certificate,
        });
        if let Some(at) = integrated {
            let secs = at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
            annotations[BUNDLE_ANNOTATION] =
                Value::String(self.rekor_bundle_of(&dsse.body, secs, 77));
        }
        KeylessSignature {
            payload: serde_json::to_vec(&dsse.envelope).expect("JSON"),
            annotations,
        }
    }

    /// A cosign v3 keyless attestation: `statement` (an in-toto statement)
    /// in a DSSE envelope signed by an ephemeral key certified for
    /// `issue`, logged as a Rekor `dsse` 0.0.1 entry integrated at
    /// `integrated` with a signed entry timestamp and an inclusion proof
    /// (a one-entry tree) up to a checkpoint the log signed: a v0.3 bundle,
    /// as `cosign attest --new-bundle-format` writes it.
    pub fn attest_keyless(
        &self,
        statement: &[u8],
        issue: &Issue,
        integrated: SystemTime,
    ) -> Vec<u8> {
        let KeylessDsse {
            der,
            envelope,
            body,
            ..
        } = self.dsse_keyless(statement, issue);
        let body_b64 = b64(&body);
        let secs = integrated
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let log_id = self.rekor_log_id();
        let set = self.set(&body_b64, secs, 0);
        // A tree of one entry: the root is the entry's leaf hash.
        let mut leaf = Sha256::new();
        leaf.update([0u8]);
        leaf.update(&body);
        let root = leaf.finalize();
        let origin = format!("rekor.{}.test", self.name);
        let note = format!("{origin} - 1193050959916656506\n1\n{}\n", b64(&root));
        let note_signature: Signature = self.rekor_key.sign(note.as_bytes());
        let mut signed = log_id[..4].to_vec();
        signed.extend_from_slice(note_signature.to_der().as_bytes());
        let checkpoint = format!("{note}\n\u{2014} {origin} {}\n", b64(&signed));
        serde_json::to_vec(&json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": b64(&der)},
                "tlogEntries": [{
                    "logIndex": "0",
                    "logId": {"keyId": b64(&log_id)},
                    "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                    "integratedTime": secs.to_string(),
                    "inclusionPromise": {"signedEntryTimestamp": b64(&set)},
                    "inclusionProof": {
                        "logIndex": "0",
                        "rootHash": b64(&root),
                        "treeSize": "1",
                        "hashes": [],
                        "checkpoint": {"envelope": checkpoint}
                    },
                    "canonicalizedBody": body_b64
                }]
            },
            "dsseEnvelope": envelope
        }))
        .expect("JSON")
    }
}

/// A DSSE envelope signed keyless, and its Rekor entry body.
struct KeylessDsse {
    der: Vec<u8>,
    certificate: String,
    envelope: Value,
    body: Vec<u8>,
}

/// PEM of a certificate.
pub fn pem(der: &[u8]) -> String {
    let text = b64(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// What goes into one keyless `.sig` layer.
pub struct KeylessSignature {
    pub payload: Vec<u8>,
    pub annotations: Value,
}

/// cosign's simple-signing payload for `digest` of `reference`.
pub fn payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .expect("JSON")
}

/// Signs `digest` of `reference` keyless: an ephemeral key, a certificate
/// from `sigstore` for `issue`, a Rekor entry integrated at `integrated`
/// (seconds since the epoch; `None`: no log entry).
pub fn sign_keyless(
    sigstore: &TestSigstore,
    reference: &str,
    digest: &str,
    issue: &Issue,
    integrated: Option<SystemTime>,
) -> KeylessSignature {
    let ephemeral = key(&format!("ephemeral {reference} {digest} {issue:?}"));
    let certificate = pem(&sigstore.issue(&ephemeral, issue));
    let payload = payload(reference, digest);
    let signature: Signature = ephemeral.sign(&payload);
    let signature = signature.to_der().as_bytes().to_vec();
    let mut annotations = json!({
        SIGNATURE_ANNOTATION: b64(&signature),
        CERTIFICATE_ANNOTATION: certificate,
    });
    if let Some(at) = integrated {
        let secs = at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        annotations[BUNDLE_ANNOTATION] =
            Value::String(sigstore.rekor_bundle(&payload, &signature, &certificate, secs, 4242));
    }
    KeylessSignature {
        payload,
        annotations,
    }
}

/// The simple-signing layer type of a `.sig` manifest.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The DSSE envelope layer type of a `.att` manifest.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";

/// The `.sig` (`layer_type` [`SIMPLE_SIGNING`]) or `.att`
/// ([`DSSE_ENVELOPE`]) manifest cosign writes for `signature`, given its
/// config blob (`{}`) and layer blob descriptors.
pub fn cosign_manifest(
    layer_type: &str,
    signature: &KeylessSignature,
    config: (&str, u64),
    layer: (&str, u64),
) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.1, "digest": config.0},
        "layers": [{
            "mediaType": layer_type,
            "size": layer.1,
            "digest": layer.0,
            "annotations": signature.annotations
        }]
    })
}

/// `rfc3339` for trusted-root windows and messages.
pub fn time_text(at: SystemTime) -> String {
    rfc3339(at)
}
