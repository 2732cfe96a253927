//! Transparency log entries (Rekor v1 and v2) as a bundle carries them:
//! the signed entry timestamp (SET), the inclusion proof (RFC 6962 §2.1.1
//! / RFC 9162 §2.1.3.2) up to a root hash, and the checkpoint (a C2SP
//! signed note) in which the log signed that root. What the entry's body
//! says is compared with the bundle by [`super::body`].

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::root::{Log, TrustedRoot};

/// An int64 as protobuf JSON writes it: a string, or a number.
fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Number(i64),
    }
    match Wire::deserialize(d)? {
        Wire::Number(n) => Ok(n),
        Wire::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn opt_int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    int64(d).map(Some)
}

/// One `tlogEntries[]` element.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(deserialize_with = "int64")]
    pub log_index: i64,
    pub log_id: LogId,
    pub kind_version: KindVersion,
    #[serde(default, deserialize_with = "opt_int64")]
    pub integrated_time: Option<i64>,
    #[serde(default)]
    pub inclusion_promise: Option<Promise>,
    #[serde(default)]
    pub inclusion_proof: Option<Proof>,
    #[serde(default)]
    pub canonicalized_body: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogId {
    pub key_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KindVersion {
    pub kind: String,
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Promise {
    pub signed_entry_timestamp: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    #[serde(deserialize_with = "int64")]
    pub log_index: i64,
    pub root_hash: String,
    #[serde(deserialize_with = "int64")]
    pub tree_size: i64,
    #[serde(default)]
    pub hashes: Vec<String>,
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Checkpoint {
    pub envelope: String,
}

fn b64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// An entry whose log, SET and/or inclusion proof verified.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The log's URL.
    pub log: String,
    pub log_index: i64,
    /// The body the log committed to (JSON).
    pub body: Vec<u8>,
    /// The time the log says it integrated the entry (Rekor v1; a signed
    /// entry timestamp or an inclusion proof vouches for it only with a
    /// SET), in milliseconds.
    pub integrated_ms: Option<i64>,
}

/// What a bundle of this version must carry for each entry.
#[derive(Debug, Clone, Copy)]
pub struct Requirements {
    /// v0.1 bundles: a SET is required (inclusion proofs came later).
    pub promise: bool,
    /// v0.2 and later: an inclusion proof is required.
    pub proof: bool,
}

impl Entry {
    /// Verifies the entry against the root's logs: the log is trusted, the
    /// entry is well-formed, its SET (if any) is the log's signature, its
    /// inclusion proof (if any) leads to a root the log signed in a
    /// checkpoint. `now_ms` bounds the integrated time.
    pub fn verify(
        &self,
        root: &TrustedRoot,
        needs: Requirements,
        now_ms: i64,
    ) -> Result<Logged, String> {
        if self.log_index < 0 {
            return Err(format!(
                "the log entry's logIndex is negative ({})",
                self.log_index
            ));
        }
        let log_id = b64("logId.keyId", &self.log_id.key_id)?;
        let log = root.tlog(&log_id).ok_or_else(|| {
            format!(
                "the entry is in a log the trusted root does not know (log ID {})",
                self.log_id.key_id
            )
        })?;
        let body = b64("canonicalizedBody", &self.canonicalized_body)?;
        if body.is_empty() {
            return Err("the log entry has no canonicalizedBody".into());
        }
        let integrated_ms = match self.integrated_time {
            Some(t) if t < 0 => return Err("the log entry's integratedTime is negative".into()),
            // Rekor v2 writes no integrated time (0 when a client fills it).
            Some(0) | None => None,
            Some(t) => Some(t.saturating_mul(1000)),
        };
        if let Some(at) = integrated_ms {
            if at > now_ms.saturating_add(60_000) {
                return Err("the log entry's integratedTime is in the future".into());
            }
            if !log.valid.contains(at) {
                return Err(format!(
                    "the log's key ({}) was not valid at the entry's integrated time",
                    log.base_url
                ));
            }
        }
        if needs.promise && self.inclusion_promise.is_none() {
            return Err("the log entry has no signed entry timestamp (inclusionPromise), which this bundle version requires".into());
        }
        if needs.proof && self.inclusion_proof.is_none() {
            return Err(
                "the log entry has no inclusion proof, which this bundle version requires".into(),
            );
        }
        if self.inclusion_promise.is_none() && self.inclusion_proof.is_none() {
            return Err(
                "the log entry has neither a signed entry timestamp nor an inclusion proof".into(),
            );
        }
        if let Some(promise) = &self.inclusion_promise {
            let t = self
                .integrated_time
                .filter(|t| *t > 0)
                .ok_or("a signed entry timestamp without an integratedTime")?;
            self.verify_promise(log, &log_id, promise, t)?;
        }
        if let Some(proof) = &self.inclusion_proof {
            verify_proof(log, &log_id, proof, self.log_index, &body)?;
        }
        Ok(Logged {
            log: log.base_url.clone(),
            log_index: self.log_index,
            body,
            // An inclusion proof says the entry is in the log, not when it
            // got there: the integrated time is the log's word only under
            // its signed entry timestamp.
            integrated_ms: integrated_ms.filter(|_| self.inclusion_promise.is_some()),
        })
    }

    /// The SET: the log's signature over the canonical JSON of body,
    /// integrated time, log ID (hex) and index, keys sorted.
    fn verify_promise(
        &self,
        log: &Log,
        log_id: &[u8],
        promise: &Promise,
        integrated: i64,
    ) -> Result<(), String> {
        let signature = b64("signedEntryTimestamp", &promise.signed_entry_timestamp)?;
        let payload = serde_json::json!({
            "body": self.canonicalized_body,
            "integratedTime": integrated,
            "logID": hex::encode(log_id),
            "logIndex": self.log_index,
        });
        // serde_json's map is ordered by key: this is the canonical form.
        let canonical = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
        if log.key.verify(&canonical, &signature) {
            Ok(())
        } else {
            Err(format!(
                "the signed entry timestamp does not verify with the key of {}",
                log.base_url
            ))
        }
    }
}

/// RFC 6962 leaf and node hashes.
fn leaf_hash(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

fn node_hash(left: &[u8], right: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root an inclusion proof leads to (RFC 9162 §2.1.3.2).
fn root_from_proof(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    hashes: &[Vec<u8>],
) -> Result<[u8; 32], String> {
    if index >= size {
        return Err(format!(
            "the inclusion proof's index {index} is not below its tree size {size}"
        ));
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = leaf;
    for p in hashes {
        if p.len() != 32 {
            return Err("an inclusion proof hash is not 32 bytes".into());
        }
        if sn == 0 {
            return Err("the inclusion proof is longer than the tree is deep".into());
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err("the inclusion proof is shorter than the tree is deep".into());
    }
    Ok(r)
}

fn verify_proof(
    log: &Log,
    log_id: &[u8],
    proof: &Proof,
    entry_index: i64,
    body: &[u8],
) -> Result<(), String> {
    if proof.log_index < 0 || proof.tree_size < 0 {
        return Err("the inclusion proof has a negative index or size".into());
    }
    let _ = entry_index;
    let hashes = proof
        .hashes
        .iter()
        .map(|h| b64("inclusionProof.hashes", h))
        .collect::<Result<Vec<_>, _>>()?;
    let root_hash = b64("inclusionProof.rootHash", &proof.root_hash)?;
    let computed = root_from_proof(
        proof.log_index as u64,
        proof.tree_size as u64,
        leaf_hash(body),
        &hashes,
    )?;
    if computed.as_slice() != root_hash.as_slice() {
        return Err(
            "the inclusion proof does not lead to its root hash (the entry is not in that tree)"
                .into(),
        );
    }
    let checkpoint = proof
        .checkpoint
        .as_ref()
        .ok_or("the inclusion proof has no checkpoint (the root hash is not signed by the log)")?;
    let note = verify_checkpoint(&checkpoint.envelope, log, log_id)?;
    if note.size != proof.tree_size as u64 || note.root != root_hash {
        return Err(
            "the checkpoint's tree size or root hash differs from the inclusion proof's".into(),
        );
    }
    Ok(())
}

/// A checkpoint's body, once its signature verified.
#[derive(Debug)]
struct Note {
    size: u64,
    root: Vec<u8>,
}

/// Verifies a checkpoint (a C2SP signed note: origin, tree size, root
/// hash, optional lines, a blank line, then `— <name> <base64(key hint ||
/// signature)>` lines): one signature line must be the log's (its key
/// hint is the first four bytes of the log's ID) and verify over the note
/// text. Other signatures (witnesses, unknown keys) are ignored.
fn verify_checkpoint(envelope: &str, log: &Log, log_id: &[u8]) -> Result<Note, String> {
    let (text, signatures) = envelope
        .split_once("\n\n")
        .ok_or("the checkpoint has no signature block")?;
    let signed = format!("{text}\n");
    let mut lines = text.split('\n');
    let origin = lines
        .next()
        .filter(|o| !o.is_empty())
        .ok_or("the checkpoint has no origin")?;
    let size = lines
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("the checkpoint has no tree size")?;
    let root = lines
        .next()
        .map(|r| b64("the checkpoint's root hash", r))
        .transpose()?
        .ok_or("the checkpoint has no root hash")?;
    let hint = log_id
        .get(..4)
        .ok_or("the log ID is shorter than a key hint")?;
    // The name a log signs with: its origin's first word (Rekor v1 writes
    // "<host> - <tree ID>").
    let name = origin.split(' ').next().unwrap_or(origin);
    // And it is the log's host: a checkpoint from another log, even one
    // signed with the same key, is not this log's.
    let host = log
        .base_url
        .split_once("://")
        .map_or(log.base_url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    if !host.is_empty() && name != host {
        return Err(format!(
            "the checkpoint's origin {origin:?} is not the log {}",
            log.base_url
        ));
    }
    let mut found = false;
    for line in signatures.split('\n').filter(|l| !l.is_empty()) {
        let Some(rest) = line.strip_prefix("\u{2014} ") else {
            return Err("a checkpoint signature line does not start with an em dash".into());
        };
        let Some((signer, sig)) = rest.split_once(' ') else {
            return Err("a checkpoint signature line has no signature".into());
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
            continue;
        };
        if sig.len() < 5 || &sig[..4] != hint || signer != name {
            continue;
        }
        found = true;
        if log.key.verify(signed.as_bytes(), &sig[4..]) {
            return Ok(Note { size, root });
        }
    }
    Err(if found {
        format!(
            "the checkpoint's signature by {} does not verify",
            log.base_url
        )
    } else {
        format!(
            "the checkpoint carries no signature by {} (key hint or name differ)",
            log.base_url
        )
    })
}

/// For `fuzz/` only: a checkpoint (signed note) read and checked against
/// `log`, as an inclusion proof's checkpoint is.
#[doc(hidden)]
pub fn fuzz_checkpoint(envelope: &str, log: &Log) -> bool {
    verify_checkpoint(envelope, log, &log.id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(leaves: &[&[u8]]) -> [u8; 32] {
        match leaves.len() {
            1 => leaf_hash(leaves[0]),
            n => {
                let k = (n.next_power_of_two() / 2).max(1);
                node_hash(&tree(&leaves[..k]), &tree(&leaves[k..]))
            }
        }
    }

    fn path(leaves: &[&[u8]], index: usize) -> Vec<Vec<u8>> {
        if leaves.len() == 1 {
            return Vec::new();
        }
        let k = (leaves.len().next_power_of_two() / 2).max(1);
        if index < k {
            let mut p = path(&leaves[..k], index);
            p.push(tree(&leaves[k..]).to_vec());
            p
        } else {
            let mut p = path(&leaves[k..], index - k);
            p.push(tree(&leaves[..k]).to_vec());
            p
        }
    }

    #[test]
    fn inclusion_proofs_lead_to_the_root_for_every_leaf_of_every_size() {
        let data: Vec<Vec<u8>> = (0..13u8).map(|i| vec![i; 3]).collect();
        for size in 1..=data.len() {
            let leaves: Vec<&[u8]> = data[..size].iter().map(Vec::as_slice).collect();
            let root = tree(&leaves);
            for i in 0..size {
                let proof = path(&leaves, i);
                let got = root_from_proof(i as u64, size as u64, leaf_hash(leaves[i]), &proof);
                assert_eq!(got, Ok(root), "size {size} index {i}");
                // The wrong leaf, or a path one hash short, does not.
                let wrong = root_from_proof(i as u64, size as u64, leaf_hash(b"other"), &proof);
                assert_ne!(wrong, Ok(root));
                if !proof.is_empty() {
                    let short =
                        root_from_proof(i as u64, size as u64, leaf_hash(leaves[i]), &proof[1..]);
                    assert_ne!(short, Ok(root));
                }
            }
        }
    }
}
