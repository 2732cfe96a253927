//! What the store holds: digest → size, in least-recently-used order, and
//! the bytes stored and reserved for downloads. Pure bookkeeping; the
//! files are [`super::ContentStore`]'s.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::SystemTime;

use crate::oci::Digest;

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// When it was last used, as a position in `by_use`.
    tick: u64,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    entries: HashMap<Digest, Entry>,
    by_use: BTreeMap<u64, Digest>,
    next_tick: u64,
    stored: u64,
    reserved: u64,
}

impl Index {
    /// Reads `blobs/<algorithm>/<hex>` files, oldest modification time
    /// first. Files whose name is not a digest are left alone and not
    /// counted.
    pub(super) fn scan(blobs: &Path) -> std::io::Result<Index> {
        let mut found: Vec<(SystemTime, Digest, u64)> = Vec::new();
        for algorithm in ["sha256", "sha512"] {
            let dir = blobs.join(algorithm);
            std::fs::create_dir_all(&dir)?;
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(digest) = format!("{algorithm}:{name}").parse::<Digest>() else {
                    continue;
                };
                let meta = entry.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((modified, digest, meta.len()));
            }
        }
        found.sort_by_key(|f| f.0);
        let mut index = Index::default();
        for (_, digest, size) in found {
            index.insert(digest, size);
        }
        Ok(index)
    }

    pub(super) fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub(super) fn stored(&self) -> u64 {
        self.stored
    }

    /// Stored plus reserved bytes.
    pub(super) fn used(&self) -> u64 {
        self.stored + self.reserved
    }

    /// Adds (or replaces) `digest`, most recently used.
    pub(super) fn insert(&mut self, digest: Digest, size: u64) {
        self.remove(&digest);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.by_use.insert(tick, digest.clone());
        self.entries.insert(digest, Entry { size, tick });
        self.stored += size;
    }

    /// Marks `digest` used now; its size, if it is stored.
    pub(super) fn touch(&mut self, digest: &Digest) -> Option<u64> {
        let entry = self.entries.get_mut(digest)?;
        self.by_use.remove(&entry.tick);
        entry.tick = self.next_tick;
        self.next_tick += 1;
        self.by_use.insert(entry.tick, digest.clone());
        Some(entry.size)
    }

    pub(super) fn remove(&mut self, digest: &Digest) -> Option<u64> {
        let entry = self.entries.remove(digest)?;
        self.by_use.remove(&entry.tick);
        self.stored -= entry.size;
        Some(entry.size)
    }

    /// Removes and returns the least recently used digest.
    pub(super) fn pop_least_recent(&mut self) -> Option<Digest> {
        let (_, digest) = self.by_use.pop_first()?;
        if let Some(entry) = self.entries.remove(&digest) {
            self.stored -= entry.size;
        }
        Some(digest)
    }

    pub(super) fn reserve(&mut self, size: u64) {
        self.reserved += size;
    }

    pub(super) fn unreserve(&mut self, size: u64) {
        self.reserved = self.reserved.saturating_sub(size);
    }

    /// Every entry, least recently used first.
    pub(super) fn list(&self) -> Vec<(Digest, u64)> {
        self.by_use
            .values()
            .filter_map(|d| self.entries.get(d).map(|e| (d.clone(), e.size)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn least_recently_used_goes_first_and_sizes_add_up() {
        let mut index = Index::default();
        index.insert(d(1), 10);
        index.insert(d(2), 20);
        index.insert(d(3), 30);
        assert_eq!(index.stored(), 60);
        assert_eq!(index.touch(&d(1)), Some(10));
        index.reserve(5);
        assert_eq!(index.used(), 65);
        assert_eq!(index.pop_least_recent(), Some(d(2)));
        assert_eq!(index.pop_least_recent(), Some(d(3)));
        assert_eq!(index.stored(), 10);
        index.unreserve(5);
        assert_eq!(index.used(), 10);
        assert_eq!(index.remove(&d(1)), Some(10));
        assert_eq!(index.pop_least_recent(), None);
        assert_eq!((index.len(), index.stored()), (0, 0));
    }

    #[test]
    fn a_scan_orders_by_modification_time_and_skips_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let sha = dir.path().join("sha256");
        std::fs::create_dir_all(&sha).unwrap();
        for (n, age) in [(1u8, 30u64), (2, 10), (3, 20)] {
            let path = sha.join(d(n).hex());
            std::fs::write(&path, vec![0u8; n as usize]).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(SystemTime::now() - std::time::Duration::from_secs(age))
                .unwrap();
        }
        std::fs::write(sha.join("not-a-digest"), b"x").unwrap();
        let index = Index::scan(dir.path()).unwrap();
        let order: Vec<Digest> = index.list().into_iter().map(|(d, _)| d).collect();
        assert_eq!(order, vec![d(1), d(3), d(2)]);
        assert_eq!(index.stored(), 6);
    }
}
