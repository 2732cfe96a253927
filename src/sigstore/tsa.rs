//! RFC 3161 timestamps over a signature: a trusted timestamp authority's
//! statement that the signature existed at a time. Read with RustCrypto's
//! `x509-tsp` and `cms` (the CMS `SignedData` around the `TSTInfo`);
//! the signing certificate's path checked with rustls-webpki.
//!
//! A timestamp counts when: the response was granted; its token is a
//! `SignedData` over a `TSTInfo` whose message imprint is the hash of the
//! signature; its one signer's signed attributes name that content type
//! and its digest; the signature over those attributes verifies with a
//! certificate that is — or chains to — a timestamp authority of the
//! trusted root, for time stamping, valid at the stamped time, which lies
//! within the authority's window.

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use sha2::Digest as _;
use spki::der::asn1::OctetString;
use spki::der::{Decode as _, Encode as _};
use x509_tsp::{TimeStampResp, TstInfo};

use super::cert;
use super::root::TrustedRoot;

/// `id-kp-timeStamping` (1.3.6.1.5.5.7.3.8), DER contents.
const TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];

const OID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const OID_TST_INFO: &str = "1.2.840.113549.1.9.16.1.4";
const OID_CONTENT_TYPE: &str = "1.2.840.113549.1.9.3";
const OID_MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";

/// Hashes `data` with the digest algorithm `oid` names.
fn hash(oid: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    Ok(match oid {
        "2.16.840.1.101.3.4.2.1" => sha2::Sha256::digest(data).to_vec(),
        "2.16.840.1.101.3.4.2.2" => sha2::Sha384::digest(data).to_vec(),
        "2.16.840.1.101.3.4.2.3" => sha2::Sha512::digest(data).to_vec(),
        other => return Err(format!("unsupported digest algorithm {other}")),
    })
}

/// The webpki algorithms a CMS signature algorithm may be (the key's type
/// picks among them).
fn signature_algorithms(
    oid: &str,
    digest_oid: &str,
) -> Result<Vec<&'static dyn rustls_pki_types::SignatureVerificationAlgorithm>, String> {
    use webpki::ring as alg;
    Ok(match oid {
        // rsaEncryption: PKCS#1 v1.5 with the signer's digest algorithm
        // (RFC 5754 §3.2 allows it in CMS).
        "1.2.840.113549.1.1.1" => match digest_oid {
            "2.16.840.1.101.3.4.2.1" => vec![alg::RSA_PKCS1_2048_8192_SHA256],
            "2.16.840.1.101.3.4.2.2" => vec![alg::RSA_PKCS1_2048_8192_SHA384],
            "2.16.840.1.101.3.4.2.3" => vec![alg::RSA_PKCS1_2048_8192_SHA512],
            other => {
                return Err(format!(
                    "unsupported RSA timestamp digest algorithm {other}"
                ))
            }
        },
        "1.2.840.10045.4.3.2" => vec![alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA256],
        "1.2.840.10045.4.3.3" => vec![alg::ECDSA_P256_SHA384, alg::ECDSA_P384_SHA384],
        "1.2.840.113549.1.1.11" => vec![alg::RSA_PKCS1_2048_8192_SHA256],
        "1.2.840.113549.1.1.12" => vec![alg::RSA_PKCS1_2048_8192_SHA384],
        "1.2.840.113549.1.1.13" => vec![alg::RSA_PKCS1_2048_8192_SHA512],
        "1.3.101.112" => vec![alg::ED25519],
        other => return Err(format!("unsupported timestamp signature algorithm {other}")),
    })
}

/// Verifies a DER `TimeStampResp` over `signature`; the stamped time (ms).
pub fn verify(der: &[u8], signature: &[u8], root: &TrustedRoot) -> Result<i64, String> {
    let response =
        TimeStampResp::from_der(der).map_err(|e| format!("not an RFC 3161 response: {e}"))?;
    let status = response.status.status as u8;
    if status > 1 {
        return Err(format!(
            "the timestamp request was not granted (status {status})"
        ));
    }
    let token: &ContentInfo = response
        .time_stamp_token
        .as_ref()
        .ok_or("the response carries no timestamp token")?;
    if token.content_type.to_string() != OID_SIGNED_DATA {
        return Err("the timestamp token is not CMS SignedData".into());
    }
    let signed_data: SignedData = token
        .content
        .decode_as()
        .map_err(|e| format!("the timestamp token's SignedData: {e}"))?;
    let encap = &signed_data.encap_content_info;
    if encap.econtent_type.to_string() != OID_TST_INFO {
        return Err("the timestamp token does not hold a TSTInfo".into());
    }
    let tst_bytes = encap
        .econtent
        .as_ref()
        .ok_or("the timestamp token's content is missing")?
        .decode_as::<OctetString>()
        .map_err(|e| format!("the timestamp token's content: {e}"))?;
    let tst = TstInfo::from_der(tst_bytes.as_bytes()).map_err(|e| format!("the TSTInfo: {e}"))?;
    let imprint = &tst.message_imprint;
    let want = hash(&imprint.hash_algorithm.oid.to_string(), signature)?;
    if imprint.hashed_message.as_bytes() != want.as_slice() {
        return Err(
            "the timestamp is over something else than this signature (message imprint)".into(),
        );
    }
    let at_ms = i64::try_from(tst.gen_time.to_unix_duration().as_millis())
        .map_err(|_| "genTime overflows")?;

    let [signer] = signed_data.signer_infos.0.as_slice() else {
        return Err("the timestamp token must have exactly one signer".into());
    };
    let attributes = signer
        .signed_attrs
        .as_ref()
        .ok_or("the timestamp signer has no signed attributes")?;
    let attribute = |oid: &str| {
        attributes
            .iter()
            .find(|a| a.oid.to_string() == oid)
            .and_then(|a| a.values.get(0))
    };
    let content_type = attribute(OID_CONTENT_TYPE)
        .and_then(|v| v.decode_as::<spki::ObjectIdentifier>().ok())
        .ok_or("the signed attributes do not name the content type")?;
    if content_type.to_string() != OID_TST_INFO {
        return Err("the signed attributes name another content type".into());
    }
    let digest = attribute(OID_MESSAGE_DIGEST)
        .and_then(|v| v.decode_as::<OctetString>().ok())
        .ok_or("the signed attributes carry no message digest")?;
    if digest.as_bytes() != hash(&signer.digest_alg.oid.to_string(), tst_bytes.as_bytes())? {
        return Err("the signed attributes' digest is not the TSTInfo's".into());
    }
    let signed = attributes
        .to_der()
        .map_err(|e| format!("re-encoding the signed attributes: {e}"))?;
    let algorithms = signature_algorithms(
        &signer.signature_algorithm.oid.to_string(),
        &signer.digest_alg.oid.to_string(),
    )?;
    let sig = signer.signature.as_bytes();

    // The candidates: certificates in the token, and each authority's own.
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    if let Some(set) = &signed_data.certificates {
        for choice in set.0.iter() {
            if let CertificateChoices::Certificate(c) = choice {
                candidates.push(
                    c.to_der()
                        .map_err(|e| format!("an embedded certificate: {e}"))?,
                );
            }
        }
    }
    let mut reasons = Vec::new();
    for authority in &root.timestamp_authorities {
        if !authority.valid.contains(at_ms) {
            reasons.push(format!(
                "{}: not trusted at the stamped time",
                authority.uri
            ));
            continue;
        }
        let own = authority.chain.first().cloned().into_iter();
        for candidate in candidates.iter().cloned().chain(own) {
            let chained = if authority.chain.len() == 1 {
                // A self-signed authority certificate: it must be that one.
                if candidate == authority.chain[0] {
                    cert::chain_to(&candidate, &authority.chain, at_ms, Some(TIME_STAMPING))
                        .or_else(|_| valid_at(&candidate, at_ms))
                } else {
                    Err("not the authority's certificate".into())
                }
            } else if candidate == authority.chain[0] {
                cert::chain_to(
                    &candidate,
                    &authority.chain[1..],
                    at_ms,
                    Some(TIME_STAMPING),
                )
            } else {
                cert::chain_to(&candidate, &authority.chain, at_ms, Some(TIME_STAMPING))
            };
            if let Err(e) = chained {
                reasons.push(format!("{}: {e}", authority.uri));
                continue;
            }
            let der = rustls_pki_types::CertificateDer::from(candidate.as_slice());
            let Ok(end_entity) = webpki::EndEntityCert::try_from(&der) else {
                continue;
            };
            if algorithms
                .iter()
                .any(|alg| end_entity.verify_signature(*alg, &signed, sig).is_ok())
            {
                return Ok(at_ms);
            }
            reasons.push(format!(
                "{}: the timestamp's signature does not verify",
                authority.uri
            ));
        }
    }
    Err(format!(
        "no trusted timestamp authority signed it ({})",
        if reasons.is_empty() {
            "the trusted root has none".to_owned()
        } else {
            reasons.join("; ")
        }
    ))
}

/// Whether a certificate's validity covers `at_ms`.
fn valid_at(der: &[u8], at_ms: i64) -> Result<(), String> {
    let leaf = cert::Leaf::parse(der)?;
    if leaf.valid_at(at_ms) {
        Ok(())
    } else {
        Err("the authority's certificate was not valid at the stamped time".into())
    }
}
