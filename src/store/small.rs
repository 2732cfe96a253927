//! Small documents in the store, for answering when an upstream cannot be
//! reached: manifests, referrers listings and evidence blobs by digest
//! (in `blobs/`, like any blob), and what an upstream answered for a name
//! (`refs/<registry>/<repository>/<kind>/<name>`: the digest and media
//! type it served, or that it had nothing).
//!
//! Small documents are read whole and hashed again on every read: they
//! are few, small and decide admissions.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::ContentStore;
use crate::oci::{Digest, Hasher};

/// Largest document kept or read this way.
pub const MAX_SMALL: u64 = 8 * 1024 * 1024;

/// What an upstream answered for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `200`: this content (its media type, if it said one).
    Found {
        digest: Digest,
        media_type: Option<String>,
    },
    /// `404`: nothing there.
    Absent,
}

impl ContentStore {
    /// Keeps `bytes` under `digest` (checked) unless they are stored
    /// already.
    pub fn put_small(&self, digest: &Digest, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.len() as u64 > MAX_SMALL || digest.same_algorithm_of(bytes) != *digest {
            return Ok(());
        }
        let known = super::lock(&self.index).touch(digest);
        if let Some(size) = known {
            if std::fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.len() == size) {
                return Ok(());
            }
            // Removed behind the index (`cache purge` while serving):
            // written again below, else the answers kept with it would
            // name a document the store no longer has.
            super::lock(&self.index).remove(digest);
        }
        let size = bytes.len() as u64;
        if !self.reserve(size) {
            return Ok(());
        }
        let result = self.write_atomically(&self.blob_path(digest), bytes);
        match result {
            Ok(()) => self.committed(digest, size, size),
            Err(e) => {
                self.unreserve(size);
                self.disk_error("storing a document failed", &e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The stored bytes of `digest`, if stored, at most [`MAX_SMALL`], and
    /// still hashing to it (a file that does not is removed).
    pub fn get_small(&self, digest: &Digest) -> Option<Bytes> {
        let size = super::lock(&self.index).touch(digest)?;
        if size > MAX_SMALL {
            return None;
        }
        let Ok(bytes) = std::fs::read(self.blob_path(digest)) else {
            // Gone behind the index (`cache purge`): forget it.
            super::lock(&self.index).remove(digest);
            return None;
        };
        let mut hasher = Hasher::new(digest.algorithm());
        hasher.update(&bytes);
        let actual = hasher.finish();
        if actual != *digest {
            self.corrupt(digest, &actual);
            return None;
        }
        Some(Bytes::from(bytes))
    }

    /// Records what `registry` answered for `name` (a tag or digest of
    /// `kind` `manifests`, or a listing key of kind `referrers`).
    pub fn put_answer(
        &self,
        registry: &str,
        repository: &str,
        kind: &str,
        name: &str,
        answer: &Answer,
    ) -> std::io::Result<()> {
        let text = match answer {
            Answer::Found { digest, media_type } => {
                format!("{digest}\n{}\n", media_type.as_deref().unwrap_or(""))
            }
            Answer::Absent => "absent\n".to_owned(),
        };
        let path = self.answer_path(registry, repository, kind, name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.write_atomically(&path, text.as_bytes())
    }

    /// What `registry` last answered for `name`.
    pub fn get_answer(
        &self,
        registry: &str,
        repository: &str,
        kind: &str,
        name: &str,
    ) -> Option<Answer> {
        super::inventory::read_answer(&self.answer_path(registry, repository, kind, name))
    }

    /// `refs/<registry>/<repository>/<kind>/<name>`; every part is one a
    /// route or the configuration validated, and separators in them
    /// cannot climb out (`..` is not a valid name component).
    fn answer_path(&self, registry: &str, repository: &str, kind: &str, name: &str) -> PathBuf {
        use super::inventory::clean;
        let mut path = self.root.join("refs").join(clean(registry));
        for component in repository.split('/') {
            path.push(clean(component));
        }
        path.push(clean(kind));
        path.push(clean(name));
        path
    }

    /// Writes `bytes` to a new file in `tmp/`, flushes it and renames it
    /// to `target`.
    fn write_atomically(&self, target: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.root.join("tmp").join(format!(
            "small.{}.{}",
            std::process::id(),
            super::download::next_tmp_sequence()
        ));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_data()?;
            std::fs::rename(&tmp, target)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            self.stats
                .bytes_downloaded
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cache::ContentConfig;

    fn store(dir: &std::path::Path) -> ContentStore {
        ContentStore::open(&ContentConfig {
            path: dir.to_path_buf(),
            max_size: 1 << 20,
            verify_on_read: false,
        })
        .unwrap()
    }

    #[test]
    fn documents_and_answers_round_trip_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let doc = br#"{"schemaVersion":2}"#;
        let digest = Digest::sha256_of(doc);
        store.put_small(&digest, doc).unwrap();
        assert_eq!(store.get_small(&digest).as_deref(), Some(&doc[..]));
        // Bytes that do not hash to the digest are not kept.
        let other = Digest::sha256_of(b"other");
        store.put_small(&other, doc).unwrap();
        assert_eq!(store.get_small(&other), None);

        let found = Answer::Found {
            digest: digest.clone(),
            media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        };
        store
            .put_answer("r.io:5000", "team/app", "manifests", "v1", &found)
            .unwrap();
        store
            .put_answer(
                "r.io:5000",
                "team/app",
                "manifests",
                "gone",
                &Answer::Absent,
            )
            .unwrap();
        assert_eq!(
            store.get_answer("r.io:5000", "team/app", "manifests", "v1"),
            Some(found)
        );
        assert_eq!(
            store.get_answer("r.io:5000", "team/app", "manifests", "gone"),
            Some(Answer::Absent)
        );
        assert_eq!(
            store.get_answer("r.io:5000", "team/app", "manifests", "v2"),
            None
        );
        assert_eq!(
            store.get_answer("r.io:5000", "team/other", "manifests", "v1"),
            None
        );

        // A flipped bit: not served, and forgotten.
        let path = dir.path().join("blobs/sha256").join(digest.hex());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(store.get_small(&digest), None);
        assert!(!path.exists());
    }
}
