//! The content store (`cache.content`): blobs on disk by digest, each
//! written once, checked against its digest, and only then made visible.
//!
//! Layout under the configured path (created `0700`, private to
//! Portcullis):
//!
//! - `blobs/<algorithm>/<hex>`: stored blobs. A file is renamed here only
//!   after its bytes hashed to its name and were flushed to disk, so a
//!   file that is here is whole and correct unless something other than
//!   Portcullis changed it (`verifyOnRead` hashes it again on every read
//!   for those who will not assume that).
//! - `tmp/`: downloads in progress. Emptied at startup: a crash leaves
//!   nothing half-written in `blobs/`.
//!
//! One upstream fetch per digest: the first request for a blob that is not
//! stored *leads* (fetches it and hands the body to a [`download`] task
//! that writes the file, and gets the upstream's frames from that task as
//! they arrive); requests for the same digest meanwhile *follow* the file
//! as it grows ([`read`]). A download runs for `timeouts.download` at
//! most. The download does not belong to any
//! client: a client that disconnects does not cancel it. A failed download
//! is forgotten (its file removed), and the next request leads again.
//!
//! Bounded: at most `maxSize` bytes stored plus reserved for downloads;
//! past it the least recently used blobs are evicted. Disk trouble (no
//! space, I/O errors) makes the store step aside for
//! [`DEGRADED_FOR`]: requests then go to the upstream as without a store.
//!
//! May use: std, tokio, bytes, `crate::oci`, `crate::config`. Must never
//! use: anything above it (what may be stored is `verify`'s decision, made
//! before `serve` asks).

mod buffers;
mod download;
mod index;
pub mod inventory;
pub mod read;
pub mod small;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use download::{Download, Lead};
use index::Index;

use crate::config::cache::ContentConfig;
use crate::oci::Digest;

/// How long the store steps aside after a disk error.
pub const DEGRADED_FOR: Duration = Duration::from_secs(30);

/// Counters `/metrics` reads.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Blob requests answered from a stored file.
    pub hits: AtomicU64,
    /// Blob requests that found nothing stored (led or followed a
    /// download, or went to the upstream).
    pub misses: AtomicU64,
    /// Bytes sent to clients from stored files.
    pub bytes_from_store: AtomicU64,
    /// Bytes downloaded from upstreams into the store.
    pub bytes_downloaded: AtomicU64,
    /// Blobs evicted to stay under `maxSize`.
    pub evictions: AtomicU64,
    /// Disk errors (each makes the store step aside for a while).
    pub errors: AtomicU64,
    /// Downloads whose bytes did not match their digest (never stored).
    pub mismatches: AtomicU64,
    /// Stored files that no longer matched their digest when read
    /// (`verifyOnRead`, or `cache gc --verify`): removed.
    pub corrupt: AtomicU64,
    /// Tag requests whose `HEAD` at the upstream named the manifest the
    /// store holds (served from the store, no `GET`).
    pub tags_unchanged: AtomicU64,
    /// Tag requests whose `HEAD` named another manifest (fetched again).
    pub tags_changed: AtomicU64,
}

/// What the store has for a digest.
#[derive(Debug)]
pub enum Join {
    /// Stored: serve the file.
    Stored(read::StoredBlob),
    /// Another request is fetching it: wait for its download.
    Wait(Waiter),
    /// Nobody is: this request fetches it and starts the download.
    Lead(Lead),
    /// The store cannot take it now (degraded): go to the upstream.
    Bypass,
}

/// A download some other request is starting.
#[derive(Debug)]
pub struct Waiter(watch::Receiver<Phase>);

impl Waiter {
    /// The download once its leader started it; `None` if the leader gave
    /// up (the upstream refused, the blob is too large to store) or did
    /// not start it within `wait`.
    pub async fn started(mut self, wait: Duration) -> Option<Arc<Download>> {
        let phase = tokio::time::timeout(wait, self.0.wait_for(|p| !matches!(p, Phase::Fetching)))
            .await
            .ok()?
            .ok()?
            .clone();
        match phase {
            // A download whose disk failed goes on for its leader alone.
            Phase::Started(download) if !download.failed() => Some(download),
            Phase::Started(_) | Phase::Fetching | Phase::Abandoned => None,
        }
    }
}

/// Where a digest's in-flight download is.
#[derive(Debug, Clone)]
enum Phase {
    /// Its leader is asking the upstream.
    Fetching,
    /// Being written.
    Started(Arc<Download>),
    /// Its leader gave up.
    Abandoned,
}

/// The content store.
#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
    max_size: u64,
    verify_on_read: bool,
    index: Mutex<Index>,
    /// Downloads in flight, by digest.
    in_flight: Mutex<HashMap<Digest, watch::Receiver<Phase>>>,
    /// Until when the store steps aside after a disk error.
    degraded_until: Mutex<Option<Instant>>,
    pub stats: StoreStats,
    /// `lock`, held exclusively while this store is open.
    _lock: std::fs::File,
}

/// Locks a mutex; a panic elsewhere while holding it leaves plain data
/// that is still consistent enough to use (counters and maps).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ContentStore {
    /// Opens (creating) the store at `config.path`: empties `tmp/`, reads
    /// what `blobs/` holds (least recently used first by modification
    /// time, which reads refresh) and evicts down to `maxSize`.
    /// One process at a time: a second one (another replica given the
    /// same volume) is refused.
    pub fn open(config: &ContentConfig) -> std::io::Result<ContentStore> {
        let root = config.path.clone();
        create_private_dir(&root)?;
        let lock = lock_exclusively(&root.join("lock"))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        create_private_dir(&tmp)?;
        create_private_dir(&root.join("blobs"))?;
        let index = Index::scan(&root.join("blobs"))?;
        let store = ContentStore {
            root,
            max_size: config.max_size,
            verify_on_read: config.verify_on_read,
            index: Mutex::new(index),
            in_flight: Mutex::new(HashMap::new()),
            degraded_until: Mutex::new(None),
            stats: StoreStats::default(),
            _lock: lock,
        };
        store.evict_to(store.max_size);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    pub fn verify_on_read(&self) -> bool {
        self.verify_on_read
    }

    /// Blobs stored and the bytes they take.
    pub fn usage(&self) -> (u64, u64) {
        let index = lock(&self.index);
        (index.len(), index.stored())
    }

    /// Downloads in flight.
    pub fn downloads(&self) -> u64 {
        lock(&self.in_flight).len() as u64
    }

    /// The file a stored blob is in (whether or not it is stored).
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        inventory::blob_path(&self.root, digest)
    }

    /// Whether a disk error made the store step aside and it has not come
    /// back yet.
    pub fn degraded(&self) -> bool {
        let mut until = lock(&self.degraded_until);
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Notes a disk error: counted, logged, and the store steps aside for
    /// [`DEGRADED_FOR`].
    fn disk_error(&self, what: &str, error: &std::io::Error) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            %error,
            "content store: {what}; serving from the upstreams only for {}s",
            DEGRADED_FOR.as_secs()
        );
        *lock(&self.degraded_until) = Some(Instant::now() + DEGRADED_FOR);
    }

    /// The stored blob `digest`, opened, or `None`. A file the index knows
    /// but that is gone or has another size is forgotten.
    /// A download that is verified but not yet renamed into place counts
    /// as stored (its open file is read).
    pub async fn stored(self: &Arc<Self>, digest: &Digest) -> Option<read::StoredBlob> {
        let Some(size) = lock(&self.index).touch(digest) else {
            return self.verified_download(digest);
        };
        let path = self.blob_path(digest);
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::File::open(&path)?;
            // Reads refresh the modification time, which orders eviction
            // after a restart.
            let _ = file.set_modified(std::time::SystemTime::now());
            Ok(file)
        })
        .await;
        match opened {
            Ok(Ok(file)) if file.metadata().map(|m| m.len()).ok() == Some(size) => Some(
                read::StoredBlob::new(Arc::clone(self), digest.clone(), Arc::new(file), size),
            ),
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                lock(&self.index).remove(digest);
                None
            }
        }
    }

    /// The in-flight download of `digest` if all its bytes are written and
    /// matched the digest.
    fn verified_download(self: &Arc<Self>, digest: &Digest) -> Option<read::StoredBlob> {
        let phase = lock(&self.in_flight).get(digest)?.borrow().clone();
        let Phase::Started(download) = phase else {
            return None;
        };
        let size = download.verified_size()?;
        Some(read::StoredBlob::new(
            Arc::clone(self),
            digest.clone(),
            download.file(),
            size,
        ))
    }

    /// What to do for a blob request by `digest`: serve the stored file,
    /// wait for the download another request leads, or lead one.
    pub async fn join(self: &Arc<Self>, digest: &Digest) -> Join {
        if let Some(blob) = self.stored(digest).await {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Join::Stored(blob);
        }
        if self.degraded() {
            return Join::Bypass;
        }
        let mut in_flight = lock(&self.in_flight);
        if let Some(phase) = in_flight.get(digest) {
            return Join::Wait(Waiter(phase.clone()));
        }
        let (tx, rx) = watch::channel(Phase::Fetching);
        in_flight.insert(digest.clone(), rx);
        Join::Lead(Lead::new(Arc::clone(self), digest.clone(), tx))
    }

    /// Forgets the in-flight download of `digest`.
    fn finished(&self, digest: &Digest) {
        lock(&self.in_flight).remove(digest);
    }

    /// Reserves `size` bytes for a download, evicting what it takes; false
    /// if `size` can never fit.
    fn reserve(&self, size: u64) -> bool {
        if size > self.max_size {
            return false;
        }
        lock(&self.index).reserve(size);
        self.evict_to(self.max_size);
        true
    }

    /// Gives back a reservation.
    fn unreserve(&self, size: u64) {
        lock(&self.index).unreserve(size);
    }

    /// Records a blob renamed into `blobs/` (its reservation becomes the
    /// stored size).
    fn committed(&self, digest: &Digest, reserved: u64, size: u64) {
        {
            let mut index = lock(&self.index);
            index.unreserve(reserved);
            index.insert(digest.clone(), size);
        }
        self.evict_to(self.max_size);
    }

    /// Removes the least recently used blobs until stored plus reserved
    /// bytes are at most `limit`. An evicted file a client is still
    /// reading stays readable through its open handle.
    fn evict_to(&self, limit: u64) {
        loop {
            let victim = {
                let mut index = lock(&self.index);
                if index.used() <= limit {
                    return;
                }
                match index.pop_least_recent() {
                    Some(victim) => victim,
                    None => return,
                }
            };
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = std::fs::remove_file(self.blob_path(&victim)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    self.disk_error("evicting a blob failed", &e);
                }
            }
        }
    }

    /// Removes a stored blob (a corrupt one, or `cache purge`).
    pub fn remove(&self, digest: &Digest) -> bool {
        let known = lock(&self.index).remove(digest).is_some();
        let removed = std::fs::remove_file(self.blob_path(digest)).is_ok();
        known || removed
    }

    /// A stored file did not hash to its name: counted, logged, removed.
    fn corrupt(&self, digest: &Digest, actual: &Digest) {
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            %digest,
            %actual,
            "content store: a stored blob no longer matches its digest; removed (something other than Portcullis changed the store)"
        );
        self.remove(digest);
    }

    /// Every stored blob's digest and size, least recently used first.
    pub fn list(&self) -> Vec<(Digest, u64)> {
        lock(&self.index).list()
    }
}

/// Opens `path` and takes an exclusive lock on it, or fails saying the
/// store is in use.
fn lock_exclusively(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |e| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{} is locked ({e}): another Portcullis process uses this store; give each \
                 replica its own cache.content.path",
                    path.display()
                ),
            )
        },
    )?;
    Ok(file)
}

/// Creates `dir` (and parents) and makes it private to this user.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
