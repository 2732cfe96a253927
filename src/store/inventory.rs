//! The store as files, for `portcullis cache`: what it holds, hashing a
//! stored blob again, and removing an image. These work on the directory
//! alone, with or without a running Portcullis holding the store's lock:
//! files in `blobs/` are immutable once renamed there, and a running
//! process that finds one removed forgets it when it next reads it (its
//! size accounting catches up as it evicts). What only the owner of the
//! lock may do — emptying `tmp/`, evicting to `maxSize` — happens when a
//! [`super::ContentStore`] is opened.

use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::small::{Answer, MAX_SMALL};
use crate::oci::{Digest, Hasher, Reference};

/// A stored blob.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub digest: Digest,
    pub size: u64,
    /// Last served (reads refresh it).
    pub used: SystemTime,
}

/// What an upstream answered for a name, as kept under `refs/`.
#[derive(Debug, Clone)]
pub struct RefFile {
    pub path: PathBuf,
    pub registry: String,
    pub repository: String,
    /// `manifests` or `referrers`.
    pub kind: String,
    /// A tag, a digest, or a referrers listing's key.
    pub name: String,
    /// `None` when the file is unreadable.
    pub answer: Option<Answer>,
}

/// Everything under a store's directory.
#[derive(Debug, Default)]
pub struct Inventory {
    pub blobs: Vec<BlobFile>,
    pub refs: Vec<RefFile>,
    /// Bytes in `tmp/`: downloads in flight (or left by a crash, until
    /// the next start).
    pub tmp_bytes: u64,
}

impl Inventory {
    /// Reads the store at `root` (a missing directory is an empty store).
    pub fn read(root: &Path) -> std::io::Result<Inventory> {
        let mut inventory = Inventory::default();
        for algorithm in ["sha256", "sha512"] {
            for entry in read_dir(&root.join("blobs").join(algorithm))? {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(digest) = format!("{algorithm}:{name}").parse::<Digest>() else {
                    continue;
                };
                let meta = entry.metadata()?;
                if meta.is_file() {
                    inventory.blobs.push(BlobFile {
                        digest,
                        size: meta.len(),
                        used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
        }
        for entry in read_dir(&root.join("tmp"))? {
            inventory.tmp_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
        let refs = root.join("refs");
        for registry in read_dir(&refs)? {
            let registry_name = registry.file_name().to_string_lossy().into_owned();
            walk_refs(
                &registry.path(),
                &registry_name,
                &mut Vec::new(),
                &mut inventory.refs,
            )?;
        }
        inventory.blobs.sort_by_key(|b| b.digest.to_string());
        inventory.refs.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(inventory)
    }

    /// Bytes stored in `blobs/`.
    pub fn stored_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }

    /// Whether `digest` is stored.
    pub fn holds(&self, digest: &Digest) -> bool {
        self.blobs.iter().any(|b| &b.digest == digest)
    }
}

/// The entries of `dir`, none if it does not exist.
fn read_dir(dir: &Path) -> std::io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Collects `refs/<registry>/<repository…>/<kind>/<name>` files below
/// `dir` (`repository` holds the components walked so far).
fn walk_refs(
    dir: &Path,
    registry: &str,
    components: &mut Vec<String>,
    out: &mut Vec<RefFile>,
) -> std::io::Result<()> {
    for entry in read_dir(dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            components.push(name);
            walk_refs(&entry.path(), registry, components, out)?;
            components.pop();
        } else if file_type.is_file() && components.len() >= 2 {
            let (kind, repository) = components.split_last().expect("two components");
            out.push(RefFile {
                path: entry.path(),
                registry: registry.to_owned(),
                repository: repository.join("/"),
                kind: kind.clone(),
                name,
                answer: read_answer(&entry.path()),
            });
        }
    }
    Ok(())
}

/// Reads a kept answer: `absent`, or the digest and media type.
pub(super) fn read_answer(path: &Path) -> Option<Answer> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let first = lines.next()?;
    if first == "absent" {
        return Some(Answer::Absent);
    }
    let digest = first.parse().ok()?;
    let media_type = lines.next().filter(|m| !m.is_empty()).map(str::to_owned);
    Some(Answer::Found { digest, media_type })
}

/// The file a stored blob is in.
pub fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    root.join("blobs")
        .join(digest.algorithm().name())
        .join(digest.hex())
}

/// Hashes the stored blob `digest`: whether it still matches its name.
pub fn blob_matches(root: &Path, digest: &Digest) -> std::io::Result<bool> {
    let mut file = std::fs::File::open(blob_path(root, digest))?;
    let mut hasher = Hasher::new(digest.algorithm());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish() == *digest)
}

/// Removes the stored blob `digest`; whether there was one.
pub fn remove_blob(root: &Path, digest: &Digest) -> std::io::Result<bool> {
    match std::fs::remove_file(blob_path(root, digest)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// What purging an image removed.
#[derive(Debug, Default)]
pub struct Purged {
    /// Blobs removed (manifests, configs, layers, evidence).
    pub blobs: u64,
    pub bytes: u64,
    /// Kept answers removed (the tag, the digests, signature tags).
    pub answers: u64,
}

/// Removes an image from the store at `root`: what `registry` answered for
/// `repository` at `reference`, the manifest it led to and everything that
/// manifest references (index children, configs, layers), and the
/// cosign signature and attestation tags of those manifests with their
/// contents. Blobs another image shares are removed too (they are fetched
/// again when needed). After this, nothing of the image can be served
/// from the store, also not while the upstream is unreachable.
pub fn purge(
    root: &Path,
    registry: &str,
    repository: &str,
    reference: &Reference,
) -> std::io::Result<Purged> {
    let inventory = Inventory::read(root)?;
    let in_repo: Vec<&RefFile> = inventory
        .refs
        .iter()
        .filter(|r| r.registry == clean(registry) && r.repository == clean_repo(repository))
        .collect();
    let answered = |name: &str| {
        in_repo
            .iter()
            .find(|r| r.kind == "manifests" && r.name == clean(name))
    };
    let mut roots = Vec::new();
    let mut answers: BTreeSet<PathBuf> = BTreeSet::new();
    match reference {
        Reference::Digest(d) => roots.push(d.clone()),
        Reference::Tag(tag) => {
            if let Some(found) = answered(tag) {
                answers.insert(found.path.clone());
                if let Some(Answer::Found { digest, .. }) = &found.answer {
                    roots.push(digest.clone());
                }
            }
        }
    }
    // Every manifest below the roots, and what they reference.
    let mut manifests: HashSet<Digest> = HashSet::new();
    let mut blobs: HashSet<Digest> = HashSet::new();
    let mut queue = roots;
    while let Some(digest) = queue.pop() {
        if !manifests.insert(digest.clone()) {
            continue;
        }
        blobs.insert(digest.clone());
        if let Some(found) = answered(&digest.to_string()) {
            answers.insert(found.path.clone());
        }
        // Signature and attestation tags of this manifest.
        for suffix in ["sig", "att", "sbom"] {
            if let Some(found) = answered(&format!("{}.{suffix}", digest.tag_form())) {
                answers.insert(found.path.clone());
                if let Some(Answer::Found { digest, .. }) = &found.answer {
                    queue.push(digest.clone());
                }
            }
        }
        let Some(bytes) = read_small(root, &digest) else {
            continue;
        };
        let media_type = answered(&digest.to_string())
            .and_then(|r| match &r.answer {
                Some(Answer::Found { media_type, .. }) => media_type.clone(),
                _ => None,
            })
            .unwrap_or_default();
        let Ok(reading) = crate::oci::manifest::read(&bytes, &media_type) else {
            continue;
        };
        queue.extend(reading.children.into_iter().map(|c| c.digest));
        blobs.extend(reading.config.into_iter().map(|c| c.digest));
        blobs.extend(reading.layers.into_iter().map(|l| l.digest));
    }
    let mut purged = Purged::default();
    for digest in &blobs {
        let size = std::fs::metadata(blob_path(root, digest))
            .map(|m| m.len())
            .unwrap_or(0);
        if remove_blob(root, digest)? {
            purged.blobs += 1;
            purged.bytes += size;
        }
    }
    for path in answers {
        match std::fs::remove_file(&path) {
            Ok(()) => purged.answers += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(purged)
}

/// A stored document's bytes, if small and still matching its digest.
fn read_small(root: &Path, digest: &Digest) -> Option<Vec<u8>> {
    let path = blob_path(root, digest);
    if std::fs::metadata(&path).ok()?.len() > MAX_SMALL {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    (digest.same_algorithm_of(&bytes) == *digest).then_some(bytes)
}

/// A name component as `refs/` spells it (see `small.rs`).
pub(super) fn clean(s: &str) -> String {
    s.replace(['/', '\\'], "_").replace("..", "_")
}

/// A repository as `refs/` spells it: each component cleaned.
fn clean_repo(repository: &str) -> String {
    repository
        .split('/')
        .map(clean)
        .collect::<Vec<_>>()
        .join("/")
}
