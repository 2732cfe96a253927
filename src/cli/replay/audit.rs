//! Reading the audit trail: JSON lines into the images to replay, each
//! once, from its latest manifest record.

use std::collections::HashMap;

use crate::audit::record::{DecisionRecord, Subject};
use crate::policy::RuleSource;

/// One image to replay: its latest manifest record.
#[derive(Debug, Clone)]
pub(super) struct Image {
    pub(super) record: DecisionRecord,
    /// The latest tag it was pulled by (a later pull by digest keeps it).
    pub(super) tag: Option<String>,
}

impl Image {
    pub(super) fn name(&self) -> String {
        format!("{}@{}", self.record.reference, self.record.digest)
    }
}

#[derive(Debug, Default)]
pub(super) struct Parsed {
    /// In order of first appearance.
    pub(super) images: Vec<Image>,
    pub(super) skipped: usize,
    pub(super) errors: Vec<String>,
}

/// Reads JSON lines: blank lines ignored, bad lines reported by number,
/// manifest records deduplicated by (reference, digest), latest kept.
pub(super) fn parse_audit(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = n + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: DecisionRecord = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                parsed
                    .errors
                    .push(format!("line {number}: not an audit record: {e}"));
                continue;
            }
        };
        if record.subject != Subject::Manifest || record.rule == RuleSource::Artifact.to_string() {
            parsed.skipped += 1;
            continue;
        }
        let key = (record.reference.clone(), record.digest.clone());
        match index.get(&key) {
            Some(&i) => {
                parsed.skipped += 1;
                let existing = &mut parsed.images[i];
                // RFC 3339 UTC with fixed precision sorts as text; equal
                // times keep file order.
                if record.time >= existing.record.time {
                    let tag = record.tag.clone().or_else(|| existing.tag.take());
                    *existing = Image { record, tag };
                } else if existing.tag.is_none() {
                    existing.tag = record.tag;
                }
            }
            None => {
                index.insert(key, parsed.images.len());
                let tag = record.tag.clone();
                parsed.images.push(Image { record, tag });
            }
        }
    }
    parsed
}
