//! Evidence source: the local attestation store (`attestationStore`), a
//! directory of evidence kept outside the registry — air-gapped sites, or
//! attestations exported from Google Cloud.
//!
//! Every file is read and classified by content, never by name:
//!
//! - Binary Authorization occurrences (`gcloud container binauthz
//!   attestations list --format=json`: a list, one occurrence, or the REST
//!   `{"occurrences": […]}` form);
//! - cosign signatures as `cosign download signature` prints them
//!   (`{"Base64Signature", "Payload", …}`, one per line);
//! - DSSE envelopes (one per file, or one per line as in `.intoto.jsonl`);
//! - sigstore bundles.
//!
//! Items are indexed by the digest their content names. That digest is
//! read before any signature is checked, so it only decides which items a
//! decision looks at; the decision verifies each one and binds it to the
//! served digest from the signed content. [`Store::refresh`] re-reads
//! changed files; the proxy calls it every second, so files dropped into
//! the directory count without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::verify::formats::binauthz::{self, Occurrence};
use crate::verify::formats::bundle::{self, Bundle};
use crate::verify::formats::dsse;
use crate::verify::formats::simple_signing::Candidate;

/// Largest file indexed; evidence is kilobytes.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Files indexed at most; the rest are reported.
pub const MAX_FILES: usize = 100_000;
/// Directory levels descended below the store's root.
const MAX_DEPTH: usize = 4;

/// One piece of evidence in the store.
#[derive(Debug)]
pub struct Item {
    /// `<file>` or `<file>#<n>` when a file holds several.
    pub source: String,
    pub content: Content,
}

/// What an item is.
#[derive(Debug)]
pub enum Content {
    Occurrence(Occurrence),
    Signature(Candidate),
    /// A DSSE envelope, as JSON.
    Envelope(Vec<u8>),
    /// A sigstore bundle, parsed, and its JSON (a keyless bundle is
    /// verified from the JSON by `sigstore`).
    Bundle(Box<Bundle>, Vec<u8>),
}

impl Content {
    pub fn kind(&self) -> &'static str {
        match self {
            Content::Occurrence(_) => "binauthz-occurrence",
            Content::Signature(_) => "cosign-signature",
            Content::Envelope(_) => "dsse-envelope",
            Content::Bundle(..) => "sigstore-bundle",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug, Default)]
struct Indexed {
    /// Every file seen, with what it gave: items indexed under digests, or
    /// why it gave nothing.
    files: HashMap<PathBuf, (Stamp, Parsed)>,
    /// sha256 hex → items naming it.
    by_digest: HashMap<String, Vec<Arc<Item>>>,
    /// See [`Store::evidence_digest`].
    evidence: [u8; 32],
}

/// The store's index, refreshed from its directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    index: RwLock<Arc<Indexed>>,
}

impl Store {
    /// A store over `dir`, indexed once. A missing directory is created.
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("attestation store {}: {e}", dir.display()))?;
        let store = Store {
            dir: dir.to_owned(),
            index: RwLock::new(Arc::new(Indexed::default())),
        };
        store.refresh();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn current(&self) -> Arc<Indexed> {
        match self.index.read() {
            Ok(i) => Arc::clone(&i),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The items whose content names the sha256 digest `digest_hex`.
    pub fn items_for(&self, digest_hex: &str) -> Vec<Arc<Item>> {
        self.current()
            .by_digest
            .get(digest_hex)
            .cloned()
            .unwrap_or_default()
    }

    /// A digest of the evidence the store holds: SHA-256 over every file
    /// that gave evidence, by path relative to the store and content, in
    /// path order. Replicas mounting the same files agree on it whatever
    /// their timestamps; the fleet's shared verdicts are keyed by it, so
    /// evidence added or removed on one replica's store never lends its
    /// verdicts to another.
    pub fn evidence_digest(&self) -> [u8; 32] {
        self.current().evidence
    }

    /// Items indexed, and files that gave none (with why).
    pub fn counts(&self) -> (usize, Vec<(PathBuf, String)>) {
        let index = self.current();
        let items = index.by_digest.values().map(Vec::len).sum();
        let mut problems: Vec<(PathBuf, String)> = index
            .files
            .iter()
            .filter_map(|(p, (_, r))| r.as_ref().err().map(|e| (p.clone(), e.clone())))
            .collect();
        problems.sort();
        (items, problems)
    }

    /// Re-reads the directory: new and changed files are parsed again,
    /// removed ones dropped. Blocking I/O. Returns whether anything
    /// changed.
    pub fn refresh(&self) -> bool {
        let old = self.current();
        let mut seen = Vec::new();
        let mut too_many = false;
        walk(&self.dir, 0, &mut seen, &mut too_many);
        if too_many {
            tracing::warn!(
                store = %self.dir.display(),
                "attestation store holds more than {MAX_FILES} files; the rest are ignored"
            );
        }
        let unchanged = seen.len() == old.files.len()
            && seen
                .iter()
                .all(|(p, s)| old.files.get(p).is_some_and(|(o, _)| o == s));
        if unchanged {
            return false;
        }
        let mut files = HashMap::with_capacity(seen.len());
        for (path, stamp) in seen {
            let entry = match old.files.get(&path) {
                Some((o, result)) if *o == stamp => (stamp, result.clone()),
                _ => {
                    let result = read_file(&path);
                    if let Err(reason) = &result {
                        tracing::warn!(file = %path.display(), "attestation store: {reason}");
                    }
                    (stamp, result)
                }
            };
            files.insert(path, entry);
        }
        let mut by_digest: HashMap<String, Vec<Arc<Item>>> = HashMap::new();
        for (_, result) in files.values() {
            for (digests, item) in result.iter().flat_map(|f| f.items.iter()) {
                for d in digests {
                    by_digest
                        .entry(d.clone())
                        .or_default()
                        .push(Arc::clone(item));
                }
            }
        }
        for items in by_digest.values_mut() {
            items.sort_by(|a, b| a.source.cmp(&b.source));
        }
        let evidence = evidence_digest(&self.dir, &files);
        let indexed = Arc::new(Indexed {
            files,
            by_digest,
            evidence,
        });
        match self.index.write() {
            Ok(mut i) => *i = indexed,
            Err(poisoned) => *poisoned.into_inner() = indexed,
        }
        true
    }
}

fn evidence_digest(dir: &Path, files: &HashMap<PathBuf, (Stamp, Parsed)>) -> [u8; 32] {
    let mut gave: Vec<(&Path, &[u8; 32])> = files
        .iter()
        .filter_map(|(path, (_, parsed))| {
            let file = parsed.as_ref().ok()?;
            let relative = path.strip_prefix(dir).unwrap_or(path);
            Some((relative, &file.sha256))
        })
        .collect();
    gave.sort();
    let mut h = Sha256::new();
    for (path, sha256) in gave {
        let path = path.to_string_lossy();
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(sha256);
    }
    h.finalize().into()
}

/// Regular files under `dir`, skipping hidden and temporary files (an
/// importer writes `.name.tmp` and renames it into place).
fn walk(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, Stamp)>, too_many: &mut bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let path = entry.path();
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, out, too_many);
            }
        } else if meta.is_file() {
            if out.len() >= MAX_FILES {
                *too_many = true;
                return;
            }
            out.push((
                path,
                Stamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                },
            ));
        }
    }
}

/// What one file gave: items with the digests they name, or why none.
type Parsed = Result<File, String>;

/// What one file gave: its items, each with the digests it names, and the
/// SHA-256 of its bytes (for [`Store::evidence_digest`]).
#[derive(Debug, Clone)]
struct File {
    sha256: [u8; 32],
    items: Vec<(Vec<String>, Arc<Item>)>,
}

fn read_file(path: &Path) -> Parsed {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{len} bytes exceeds {MAX_FILE_BYTES}; not indexed"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let contents = parse(&bytes)?;
    let name = path.display().to_string();
    let several = contents.len() > 1;
    let sha256 = Sha256::digest(&bytes).into();
    let items = contents
        .into_iter()
        .enumerate()
        .map(|(i, (digests, content))| {
            let source = if several {
                format!("{name}#{}", i + 1)
            } else {
                name.clone()
            };
            (digests, Arc::new(Item { source, content }))
        })
        .collect();
    Ok(File { sha256, items })
}

/// Classifies a file's content: one JSON document (an object or a list),
/// or JSON lines. Each item comes with the sha256 hex digests it names.
pub fn parse(bytes: &[u8]) -> Result<Vec<(Vec<String>, Content)>, String> {
    let values: Vec<serde_json::Value> = match serde_json::from_slice(bytes) {
        Ok(v) => vec![v],
        Err(whole) => {
            let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
            let lines: Result<Vec<_>, _> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str::<serde_json::Value>)
                .collect();
            match lines {
                Ok(v) if !v.is_empty() => v,
                _ => return Err(format!("not JSON: {whole}")),
            }
        }
    };
    let mut out = Vec::new();
    for value in values {
        classify(value, &mut out)?;
    }
    if out.is_empty() {
        return Err("holds no evidence".into());
    }
    Ok(out)
}

#[derive(Deserialize)]
struct CosignDownload {
    #[serde(rename = "Base64Signature")]
    signature: String,
    #[serde(rename = "Payload")]
    payload: String,
}

fn classify(value: serde_json::Value, out: &mut Vec<(Vec<String>, Content)>) -> Result<(), String> {
    use serde_json::Value;
    let object = match value {
        Value::Array(items) => {
            for item in items {
                classify(item, out)?;
            }
            return Ok(());
        }
        Value::Object(o) => o,
        _ => return Err("expected a JSON object or list".into()),
    };
    let has = |k: &str| object.contains_key(k);
    let bytes = || serde_json::to_vec(&object).map_err(|e| e.to_string());
    if has("occurrences") || has("attestation") || has("resourceUri") {
        for occurrence in binauthz::parse_occurrences(&bytes()?)? {
            let digests = occurrence
                .claimed_digest()
                .and_then(|d| d.strip_prefix("sha256:").map(str::to_owned))
                .into_iter()
                .collect();
            out.push((digests, Content::Occurrence(occurrence)));
        }
    } else if object
        .get("mediaType")
        .and_then(Value::as_str)
        .is_some_and(|m| m.starts_with("application/vnd.dev.sigstore.bundle"))
    {
        let json = bytes()?;
        let bundle = bundle::parse(&json)?;
        out.push((
            bundle.claimed_subjects(),
            Content::Bundle(Box::new(bundle), json),
        ));
    } else if has("payloadType") && has("payload") {
        let envelope = bytes()?;
        out.push((
            dsse::claimed_subjects(&envelope),
            Content::Envelope(envelope),
        ));
    } else if has("Base64Signature") && has("Payload") {
        let d: CosignDownload = serde_json::from_value(Value::Object(object))
            .map_err(|e| format!("cosign signature: {e}"))?;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(d.payload.trim())
            .map_err(|_| "cosign signature: Payload is not base64".to_owned())?;
        let digests = simple_signing_digest(&payload).into_iter().collect();
        out.push((
            digests,
            Content::Signature(Candidate {
                payload,
                signature_b64: d.signature,
                annotations: Default::default(),
            }),
        ));
    } else {
        return Err(
            "not a BinAuthz occurrence, cosign signature, DSSE envelope or sigstore bundle".into(),
        );
    }
    Ok(())
}

/// The digest a simple-signing payload names (unverified; for indexing).
fn simple_signing_digest(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value
        .pointer("/critical/image/docker-manifest-digest")?
        .as_str()?
        .strip_prefix("sha256:")
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::oci::Digest;
    use crate::policy::{Check, SignedIdentity};
    use crate::verify::evidence::{self, Target};
    use crate::verify::testing::{attestor, fixture, fixture_text, pem_key};

    const KRITIS_DIGEST: &str = "b0be9acc0c8ca214f64fa4e0e214abc0bf342e8a4bc23b7e842ab21cfb50a6ea";
    const COSIGN_BLOB: &str = "658781cd4ed9bca60dacd09f7bb914bb51502e8b5d619f57f39a1d652596cc24";
    const BUSYBOX: &str = "f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b";

    /// One line as `cosign download signature` prints it.
    fn cosign_download_line() -> String {
        use base64::Engine as _;
        let payload = fixture("sigstore-rs/simple-signing-vector/payload.json");
        let signature = fixture_text("sigstore-rs/simple-signing-vector/signature.b64");
        serde_json::json!({
            "Base64Signature": signature.trim(),
            "Payload": base64::engine::general_purpose::STANDARD.encode(payload),
            "Cert": null, "Chain": null, "Bundle": null, "RFC3161Timestamp": null,
        })
        .to_string()
    }

    fn digests(bytes: &[u8]) -> Vec<(Vec<String>, &'static str)> {
        parse(bytes)
            .unwrap()
            .into_iter()
            .map(|(d, c)| (d, c.kind()))
            .collect()
    }

    #[test]
    fn files_are_classified_by_content_and_indexed_by_the_digest_they_name() {
        assert_eq!(
            digests(&fixture("kritis-binauthz/DERIVED-pkix-occurrence.json")),
            vec![(vec![KRITIS_DIGEST.to_owned()], "binauthz-occurrence")]
        );
        assert_eq!(
            digests(&fixture(
                "cosign/dsse-attestation-vectors/blobSLSAProvenanceSignature.dsse.json"
            )),
            vec![(vec![COSIGN_BLOB.to_owned()], "dsse-envelope")]
        );
        let a_txt = Digest::sha256_of(&fixture("sigstore-conformance/a.txt"));
        assert_eq!(
            digests(&fixture(
                "sigstore-conformance/managed-key-happy-path/bundle.sigstore.json"
            )),
            vec![(vec![a_txt.hex().to_owned()], "sigstore-bundle")]
        );
        // JSON lines: two signatures in one file.
        let lines = format!("{}\n{}\n", cosign_download_line(), cosign_download_line());
        assert_eq!(
            digests(lines.as_bytes()),
            vec![(vec![BUSYBOX.to_owned()], "cosign-signature"); 2]
        );
        // A list of occurrences, as gcloud prints it.
        let occurrence: serde_json::Value =
            serde_json::from_slice(&fixture("kritis-binauthz/DERIVED-pkix-occurrence.json"))
                .unwrap();
        let list = serde_json::to_vec(&serde_json::json!([occurrence, occurrence])).unwrap();
        assert_eq!(digests(&list).len(), 2);
    }

    #[test]
    fn files_that_hold_no_evidence_are_reported() {
        for (bytes, words) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"hello": "world"}"#, "not a BinAuthz occurrence"),
            (b"[]", "holds no evidence"),
            (
                br#"{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}"#,
                "",
            ),
            (
                br#"{"Base64Signature": "x", "Payload": "%%%"}"#,
                "not base64",
            ),
        ] {
            let e = parse(bytes).unwrap_err();
            assert!(e.contains(words), "{e}");
        }
    }

    #[test]
    fn refresh_picks_up_new_changed_and_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        assert!(store.items_for(KRITIS_DIGEST).is_empty());
        assert!(!store.refresh(), "nothing changed");

        let file = store.dir().join("kritis.json");
        // Half-written files (importers write `.name.tmp`, then rename)
        // are not read.
        let tmp = store.dir().join(".kritis.json.tmp");
        std::fs::write(&tmp, b"{").unwrap();
        assert!(!store.refresh());
        std::fs::rename(&tmp, &file).unwrap();
        std::fs::write(
            &file,
            fixture("kritis-binauthz/DERIVED-pkix-occurrence.json"),
        )
        .unwrap();
        assert!(store.refresh());
        let items = store.items_for(KRITIS_DIGEST);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].source, file.display().to_string());

        // Nested directories count; broken files are reported, not fatal.
        std::fs::create_dir_all(store.dir().join("cosign")).unwrap();
        std::fs::write(
            store.dir().join("cosign/busybox.jsonl"),
            cosign_download_line(),
        )
        .unwrap();
        std::fs::write(store.dir().join("notes.txt"), b"hello").unwrap();
        assert!(store.refresh());
        assert_eq!(store.items_for(BUSYBOX).len(), 1);
        let (items, problems) = store.counts();
        assert_eq!(items, 2);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].0.ends_with("notes.txt"), "{problems:?}");

        // Replaced content is re-read.
        std::fs::write(&file, cosign_download_line()).unwrap();
        assert!(store.refresh());
        assert!(store.items_for(KRITIS_DIGEST).is_empty());
        assert_eq!(store.items_for(BUSYBOX).len(), 2);

        std::fs::remove_file(&file).unwrap();
        assert!(store.refresh());
        assert_eq!(store.items_for(BUSYBOX).len(), 1);
    }

    #[test]
    fn stored_evidence_is_verified_against_the_served_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("occurrence.json"),
            fixture("kritis-binauthz/DERIVED-pkix-occurrence.json"),
        )
        .unwrap();
        assert!(store.refresh());
        let rsa = Algorithm::parse("RSA_SIGN_PKCS1_2048_SHA256").unwrap();
        // Kritis signs with an empty publicKeyId: any key of the attestor.
        let kritis = attestor(
            "kritis",
            vec![pem_key(
                "kritis-e2e",
                &fixture_text("kritis-binauthz/rsa2048PubKey1.pem"),
                rsa,
            )],
            &[],
        );
        let wrong = attestor(
            "wrong",
            vec![pem_key(
                "other",
                &fixture_text("kritis-binauthz/rsa2048PubKey2.pem"),
                rsa,
            )],
            &[],
        );
        let digest: Digest = format!("sha256:{KRITIS_DIGEST}").parse().unwrap();
        // The occurrence binds the digest; the served manifest's bytes are
        // not needed for it.
        let target = Target {
            name: "gcr.io/kritis-project/kritis-server",
            digest: &digest,
            manifest: b"",
            identity: &SignedIdentity::MatchRepository,
            require_named: false,
            now_ms: 0,
        };
        let items = store.items_for(KRITIS_DIGEST);
        let found = evidence::from_store(&items, &kritis, &target);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, crate::policy::EvidenceKind::Store);
        assert_eq!(
            found[0].check,
            Check::Valid {
                key_id: "kritis-e2e".into()
            }
        );
        let found = evidence::from_store(&items, &wrong, &target);
        assert_eq!(found[0].check, Check::UnknownKey);
        // Another repository under MatchRepository.
        let elsewhere = Target {
            name: "gcr.io/other/image",
            ..target
        };
        let found = evidence::from_store(&items, &kritis, &elsewhere);
        assert!(
            matches!(found[0].check, Check::OtherRepository { .. }),
            "{:?}",
            found[0].check
        );
    }
}
