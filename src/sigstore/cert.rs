//! The signing certificate of a keyless signature: its chain to a
//! trusted Fulcio CA at the signing time, the identity it was issued to,
//! and its embedded certificate-transparency proof ([`super::sct`]).
//!
//! Building blocks, chosen rather than written: `rustls-webpki` (already
//! in the tree through rustls, and the path validation every rustls
//! connection relies on) validates the chain — names, signatures,
//! validity at the given time, basic constraints, key usage and the
//! code-signing extended key usage; RustCrypto's `x509-cert` (on the `der`
//! and `spki` crates the project already uses) reads the extensions
//! webpki does not expose: subject alternative names, Fulcio's identity
//! claims and the SCT list. No DER is parsed by hand here.

use spki::der::Decode as _;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

use super::root::{Authority, Key, TrustedRoot};
use super::time;

/// `id-kp-codeSigning` (1.3.6.1.5.5.7.3.3), DER contents.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// Fulcio's certificate extensions (1.3.6.1.4.1.57264.1.*): the claims of
/// the OIDC token the certificate was issued for.
pub mod oid {
    /// Issuer, raw string (deprecated, still written).
    pub const ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
    /// Issuer, DER UTF8String.
    pub const ISSUER: &str = "1.3.6.1.4.1.57264.1.8";
    pub const BUILD_SIGNER_URI: &str = "1.3.6.1.4.1.57264.1.9";
    pub const BUILD_SIGNER_DIGEST: &str = "1.3.6.1.4.1.57264.1.10";
    pub const RUNNER_ENVIRONMENT: &str = "1.3.6.1.4.1.57264.1.11";
    pub const SOURCE_REPOSITORY_URI: &str = "1.3.6.1.4.1.57264.1.12";
    pub const SOURCE_REPOSITORY_DIGEST: &str = "1.3.6.1.4.1.57264.1.13";
    pub const SOURCE_REPOSITORY_REF: &str = "1.3.6.1.4.1.57264.1.14";
    pub const SOURCE_REPOSITORY_OWNER_URI: &str = "1.3.6.1.4.1.57264.1.16";
    pub const BUILD_CONFIG_URI: &str = "1.3.6.1.4.1.57264.1.18";
    pub const BUILD_TRIGGER: &str = "1.3.6.1.4.1.57264.1.20";
    /// The embedded SCT list (RFC 6962).
    pub const SCT_LIST: &str = "1.3.6.1.4.1.11129.2.4.2";
}

/// A leaf certificate, parsed; nothing in it is trusted until
/// [`Leaf::chain_to`] found a trusted CA.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub der: Vec<u8>,
    pub cert: Certificate,
    /// The certificate's key (what the signature is checked with).
    pub key: Key,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

/// The identity a certificate was issued to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The subject alternative name: a URI (CI workflows), an email
    /// address, or another name Fulcio wrote.
    pub subject: Option<String>,
    /// The OIDC issuer.
    pub issuer: Option<String>,
    /// Fulcio's other claims, by OID (the build signer URI, source
    /// repository, ref, trigger ...), as text.
    pub claims: Vec<(String, String)>,
}

impl Identity {
    /// A claim by OID.
    pub fn claim(&self, oid: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(o, _)| o == oid)
            .map(|(_, v)| v.as_str())
    }
}

impl Leaf {
    pub fn parse(der: &[u8]) -> Result<Leaf, String> {
        let cert = Certificate::from_der(der)
            .map_err(|e| format!("the certificate is not X.509 DER: {e}"))?;
        let spki = {
            use spki::der::Encode as _;
            cert.tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(|e| format!("the certificate's key: {e}"))?
        };
        let key = Key::from_spki(&spki).map_err(|e| format!("the certificate's key: {e}"))?;
        let validity = &cert.tbs_certificate.validity;
        Ok(Leaf {
            der: der.to_vec(),
            not_before_ms: time::x509_ms(&validity.not_before),
            not_after_ms: time::x509_ms(&validity.not_after),
            cert,
            key,
        })
    }

    /// Whether `at_ms` lies within the certificate's validity.
    pub fn valid_at(&self, at_ms: i64) -> bool {
        at_ms >= self.not_before_ms && at_ms <= self.not_after_ms
    }

    /// Validates the chain to one of the root's certificate authorities
    /// valid at `at_ms` (the signing time): the CA that issued it.
    pub fn chain_to<'r>(&self, root: &'r TrustedRoot, at_ms: i64) -> Result<&'r Authority, String> {
        let mut reasons = Vec::new();
        for ca in root
            .certificate_authorities
            .iter()
            .filter(|ca| ca.valid.contains(at_ms))
        {
            match chain_to(&self.der, &ca.chain, at_ms, Some(CODE_SIGNING)) {
                Ok(()) => return Ok(ca),
                Err(e) => reasons.push(format!("{}: {e}", ca.uri)),
            }
        }
        if reasons.is_empty() {
            return Err(
                "no certificate authority of the trusted root was valid at the signing time".into(),
            );
        }
        Err(format!(
            "the certificate does not chain to a trusted certificate authority at the signing time ({})",
            reasons.join("; ")
        ))
    }

    /// The identity the certificate names (read; trusted only after
    /// [`Leaf::chain_to`]).
    pub fn identity(&self) -> Result<Identity, String> {
        let mut identity = Identity::default();
        let Some(extensions) = &self.cert.tbs_certificate.extensions else {
            return Err("the certificate has no extensions (no identity)".into());
        };
        for ext in extensions {
            let oid = ext.extn_id.to_string();
            let value = ext.extn_value.as_bytes();
            match oid.as_str() {
                "2.5.29.17" => {
                    let names = SubjectAltName::from_der(value)
                        .map_err(|e| format!("subjectAltName: {e}"))?;
                    identity.subject = names.0.iter().find_map(general_name);
                }
                oid::ISSUER => {
                    let text = spki::der::asn1::Utf8StringRef::from_der(value)
                        .map_err(|e| format!("the Fulcio issuer extension: {e}"))?;
                    identity.issuer = Some(text.as_str().to_owned());
                }
                // The v2 issuer wins when both are present, in any order.
                oid::ISSUER_V1 => {
                    let v2 = extensions
                        .iter()
                        .any(|e| e.extn_id.to_string() == oid::ISSUER);
                    if !v2 {
                        let text = std::str::from_utf8(value)
                            .map_err(|_| "the Fulcio issuer extension (v1) is not UTF-8")?;
                        identity.issuer = Some(text.to_owned());
                    }
                }
                other if other.starts_with("1.3.6.1.4.1.57264.1.") => {
                    // Claims from .9 on are DER UTF8Strings; older ones raw.
                    let text = spki::der::asn1::Utf8StringRef::from_der(value)
                        .map(|s| s.as_str().to_owned())
                        .or_else(|_| std::str::from_utf8(value).map(str::to_owned))
                        .unwrap_or_default();
                    identity.claims.push((other.to_owned(), text));
                }
                _ => {}
            }
        }
        Ok(identity)
    }

    /// The raw SCT list extension, if the certificate carries one.
    pub fn sct_list(&self) -> Option<&[u8]> {
        self.cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|ext| ext.extn_id.to_string() == oid::SCT_LIST)
            .map(|ext| ext.extn_value.as_bytes())
    }
}

/// The text of a subject alternative name Fulcio writes.
fn general_name(name: &GeneralName) -> Option<String> {
    match name {
        GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str().to_owned()),
        GeneralName::Rfc822Name(email) => Some(email.as_str().to_owned()),
        GeneralName::DnsName(dns) => Some(dns.as_str().to_owned()),
        GeneralName::OtherName(other) => {
            // Fulcio's username SAN: an UTF8String in an explicit [0].
            use spki::der::Decode as _;
            let value = other.value.value();
            spki::der::asn1::Utf8StringRef::from_der(value)
                .ok()
                .map(|s| s.as_str().to_owned())
        }
        _ => None,
    }
}

/// Validates `leaf` (DER) against `chain` (issuer first, root last) at
/// `at_ms`, requiring the extended key usage `eku` when given.
pub fn chain_to(
    leaf: &[u8],
    chain: &[Vec<u8>],
    at_ms: i64,
    eku: Option<&'static [u8]>,
) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let (anchor, intermediates) = chain.split_last().ok_or("the authority's chain is empty")?;
    let anchor_der = CertificateDer::from(anchor.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&anchor_der)
        .map_err(|e| format!("the authority's root certificate: {e:?}"))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf);
    let cert = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| format!("{e:?}"))?;
    let secs = u64::try_from(at_ms.div_euclid(1000)).map_err(|_| "a time before 1970")?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    let usage = match eku {
        Some(oid) => webpki::KeyUsage::required(oid),
        None => webpki::KeyUsage::required_if_present(CODE_SIGNING),
    };
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        std::slice::from_ref(&anchor),
        &intermediates,
        at,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}
