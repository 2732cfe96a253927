//! Embedded signed certificate timestamps (RFC 6962 §3.3): a CT log's
//! promise that it logged the certificate, signed over the
//! *precertificate* — the certificate's TBS without the SCT list — and the
//! issuing CA's key hash (RFC 6962 §3.2).

use sha2::{Digest as _, Sha256};
use spki::der::{Decode as _, Encode as _};

use super::cert::{oid, Leaf};
use super::root::TrustedRoot;

/// A parsed SCT.
#[derive(Debug, Clone)]
struct Sct<'a> {
    log_id: &'a [u8],
    timestamp_ms: u64,
    extensions: &'a [u8],
    signature: &'a [u8],
}

/// Reads big-endian TLS fields from a byte slice.
struct Tls<'a>(&'a [u8]);

impl<'a> Tls<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the SCT list is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// A length-prefixed vector (`n`-byte length).
    fn vector(&mut self, n: usize) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.uint(n)?).map_err(|_| "an SCT length overflows")?;
        self.take(len)
    }
}

fn parse_list(tls: &[u8]) -> Result<Vec<Sct<'_>>, String> {
    let mut outer = Tls(tls);
    let mut list = Tls(outer.vector(2)?);
    if !outer.0.is_empty() {
        return Err("bytes after the SCT list".into());
    }
    let mut out = Vec::new();
    while !list.0.is_empty() {
        let mut sct = Tls(list.vector(2)?);
        let version = sct.uint(1)?;
        if version != 0 {
            return Err(format!("SCT version {version} (only v1 is defined)"));
        }
        let log_id = sct.take(32)?;
        let timestamp_ms = sct.uint(8)?;
        let extensions = sct.vector(2)?;
        let (hash, algorithm) = (sct.uint(1)?, sct.uint(1)?);
        // SHA-256 with ECDSA (4, 3) or RSA (4, 1): what the log key says
        // decides the verification, this only has to agree with SHA-256.
        if hash != 4 {
            return Err(format!("SCT hash algorithm {hash} (only SHA-256 is used)"));
        }
        let _ = algorithm;
        let signature = sct.vector(2)?;
        if !sct.0.is_empty() {
            return Err("bytes after an SCT".into());
        }
        out.push(Sct {
            log_id,
            timestamp_ms,
            extensions,
            signature,
        });
    }
    Ok(out)
}

/// The precertificate TBS of `leaf`: its TBSCertificate without the SCT
/// list extension, DER.
fn precert_tbs(leaf: &Leaf) -> Result<Vec<u8>, String> {
    let mut tbs = leaf.cert.tbs_certificate.clone();
    if let Some(extensions) = tbs.extensions.as_mut() {
        extensions.retain(|ext| ext.extn_id.to_string() != oid::SCT_LIST);
    }
    tbs.to_der()
        .map_err(|e| format!("re-encoding the precertificate: {e}"))
}

/// Checks that an SCT embedded in `leaf`, signed by a CT log of `root`
/// whose key was valid at the SCT's time, covers the certificate as
/// issued by `issuer_spki` (the issuing CA's SubjectPublicKeyInfo, DER).
/// The log that verified, on success.
pub fn verify_embedded(
    leaf: &Leaf,
    issuer_spki: &[u8],
    root: &TrustedRoot,
) -> Result<String, String> {
    let extension = leaf
        .sct_list()
        .ok_or("the certificate carries no SCT (requireSct)")?;
    let tls = spki::der::asn1::OctetStringRef::from_der(extension)
        .map_err(|e| format!("the SCT list extension: {e}"))?;
    let scts = parse_list(tls.as_bytes())?;
    let tbs = precert_tbs(leaf)?;
    let tbs_len = u32::try_from(tbs.len())
        .ok()
        .filter(|l| *l < 1 << 24)
        .ok_or("the precertificate is too large for an SCT")?;
    let issuer_key_hash: [u8; 32] = Sha256::digest(issuer_spki).into();
    let mut reasons = Vec::new();
    for sct in &scts {
        let Some(log) = root.ctlog(sct.log_id) else {
            reasons.push(format!(
                "an SCT from unknown log {}",
                hex::encode(sct.log_id)
            ));
            continue;
        };
        let at = i64::try_from(sct.timestamp_ms).unwrap_or(i64::MAX);
        if !log.valid.contains(at) {
            reasons.push(format!(
                "{}: its key was not valid at the SCT's time",
                log.base_url
            ));
            continue;
        }
        let mut signed = Vec::with_capacity(tbs.len() + 64);
        signed.push(0); // v1
        signed.push(0); // certificate_timestamp
        signed.extend_from_slice(&sct.timestamp_ms.to_be_bytes());
        signed.extend_from_slice(&1u16.to_be_bytes()); // precert_entry
        signed.extend_from_slice(&issuer_key_hash);
        signed.extend_from_slice(&tbs_len.to_be_bytes()[1..]);
        signed.extend_from_slice(&tbs);
        let ext_len = u16::try_from(sct.extensions.len()).map_err(|_| "SCT extensions too long")?;
        signed.extend_from_slice(&ext_len.to_be_bytes());
        signed.extend_from_slice(sct.extensions);
        if log.key.verify(&signed, sct.signature) {
            return Ok(log.base_url.clone());
        }
        reasons.push(format!(
            "{}: the SCT signature does not verify",
            log.base_url
        ));
    }
    Err(format!(
        "no embedded SCT verified against the trusted CT logs ({})",
        if reasons.is_empty() {
            "the list is empty".to_owned()
        } else {
            reasons.join("; ")
        }
    ))
}

/// For `fuzz/` only: the SCT list parser on arbitrary bytes.
#[doc(hidden)]
pub fn fuzz_parse_list(tls: &[u8]) -> usize {
    parse_list(tls).map_or(0, |list| list.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_trailing_lists_are_refused() {
        assert!(parse_list(&[0, 5, 0, 3]).is_err());
        assert!(parse_list(&[0, 0, 9]).is_err());
        assert_eq!(parse_list(&[0, 0]).map(|l| l.len()), Ok(0));
    }
}
