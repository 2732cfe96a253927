//! The verifier's memory: cached verdicts ([`Verdicts`]), the blobs and
//! child manifests admitted images make servable ([`Content`]), and the
//! verifications in flight ([`Flights`]).
//!
//! Sized for millions of entries (issue 6: 1,000,000 cached verdicts in
//! ≤ 300 MiB). A verdict costs one 56-byte slot in a hash table (a 32-byte
//! key, a shared `Arc<Decision>`, expiry, recency and the content epoch),
//! an admitted blob a 32-byte key and the 4-byte number of the manifest
//! that admitted it (32 bytes a manifest): no per-entry heap allocation,
//! no per-entry strings, and no per-entry timers or list nodes. moka, which
//! this replaces for verdicts, costs ~340 MiB per million entries by
//! itself even with a 36-byte `Copy` key and one shared value
//! (`PORTCULLIS_BENCH_MOKA=1000000 PORTCULLIS_BENCH_MOKA_KEY=compact cargo
//! bench --bench core`): over the budget before any of Portcullis' data.
//! Its `try_get_with` coalescing is replaced by [`Flights`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use crate::oci::{Algorithm, Digest};
use crate::policy::{Decision, Verdict};

/// What a key identifies: SHA-256 of (upstream, repository, digest).
pub(crate) type Id = [u8; 32];

/// A cache key: `id` names (upstream, repository, digest); `generation`
/// names the policy and evidence it was decided under.
///
/// The id is SHA-256 over `upstream (u64 LE) ‖ len(repository) (u64 LE) ‖
/// repository ‖ digest as text` — an injective encoding, so two keys are
/// equal only if their inputs are, or SHA-256 collides. Finding such a
/// collision would also break the content addressing every digest relies
/// on, so this is as exact as keying by the strings themselves, in 32
/// bytes and with nothing to intern: an interner of repositories would
/// need its own bound and a policy for what to do when it fills (ids
/// cannot be reused while entries refer to them), and a truncated 128-bit
/// hash would give only 64-bit collision resistance — an attacker able to
/// get one manifest admitted could search for a second manifest sharing
/// its key. Hashing the ~100 bytes costs ~0.1 µs with SHA-NI.
///
/// The generation is bumped by every policy change and every change of
/// the attestation store. The tables remember the generation they hold
/// and ignore keys of any other: a verification that started under an old
/// generation and finishes after the bump cannot store its verdict where
/// the new generation looks, and is never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub generation: u32,
    pub id: Id,
}

/// (upstream, repository) under a generation, hashed once: [`Scope::key`]
/// adds a digest.
#[derive(Clone)]
pub(crate) struct Scope {
    generation: u32,
    prefix: Sha256,
}

impl Scope {
    pub fn new(generation: u32, upstream: usize, repository: &str) -> Scope {
        let mut prefix = Sha256::new();
        prefix.update((upstream as u64).to_le_bytes());
        prefix.update((repository.len() as u64).to_le_bytes());
        prefix.update(repository.as_bytes());
        Scope { generation, prefix }
    }

    /// The key of a digest written as text (`sha256:<hex>`), as manifests
    /// list them.
    #[cfg(test)]
    pub fn key(&self, digest: &str) -> Key {
        let mut h = self.prefix.clone();
        h.update(digest.as_bytes());
        self.finish(h)
    }

    /// The key of `digest`: the same as [`Scope::key`] of its text form.
    pub fn key_of(&self, digest: &Digest) -> Key {
        let mut h = self.prefix.clone();
        h.update(match digest.algorithm() {
            Algorithm::Sha256 => "sha256:",
            Algorithm::Sha512 => "sha512:",
        });
        h.update(digest.hex().as_bytes());
        self.finish(h)
    }

    fn finish(&self, h: Sha256) -> Key {
        Key {
            generation: self.generation,
            id: h.finalize().into(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the verifier started: the one clock verdict expiry
/// and content rotation both use.
#[derive(Debug)]
pub(crate) struct Clock {
    started: Instant,
    /// Added to the real time, so tests can move time forward.
    #[cfg(test)]
    skew: AtomicU64,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            started: Instant::now(),
            #[cfg(test)]
            skew: AtomicU64::new(0),
        }
    }

    pub fn now(&self) -> u64 {
        let now = millis(self.started.elapsed());
        #[cfg(test)]
        let now = now + self.skew.load(Ordering::Relaxed);
        now
    }

    #[cfg(test)]
    pub fn advance(&self, by: Duration) {
        self.skew.fetch_add(millis(by), Ordering::Relaxed);
    }
}

/// A cached verdict, and the content epoch its admitted content was
/// registered in.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub decision: Arc<Decision>,
    pub content: u32,
}

/// Verdicts by key: bounded, with per-verdict expiry (allow and deny
/// TTLs), the least recently used evicted first.
///
/// Sharded by key; each shard is a `HashMap` under a `Mutex` (held for a
/// lookup, never across an `await`). A shard that is full is rebuilt
/// without its expired verdicts and, if still more than 7/8 full, without
/// the least recently used beyond 7/8 of its capacity (a selection over
/// the shard's recency ticks, amortized over the next eighth of inserts):
/// each shard keeps at least 7/8 of its share of `max_entries`, its most
/// recently used. Keys spread evenly over the shards but not exactly, so
/// the first evictions start a little before `max_entries` verdicts are
/// cached in all. Expired verdicts are not served, and go at the next
/// rebuild or [`Verdicts::purge_expired`].
pub(crate) struct Verdicts {
    shards: Box<[Mutex<Shard>]>,
    /// Verdicts per shard, at most (`shards × shard_capacity ≤ max_entries`).
    shard_capacity: usize,
    allow_ttl: u64,
    deny_ttl: u64,
    clock: Arc<Clock>,
}

struct Shard {
    generation: u32,
    map: HashMap<Id, Slot>,
    /// Ticks at every use; a slot's `used` orders it for eviction.
    clock: u32,
}

/// 56 bytes: the `Arc` is shared between the verdicts of all images one
/// evidence-free rule decided.
struct Slot {
    decision: Arc<Decision>,
    /// [`Clock`] milliseconds.
    expires: u64,
    used: u32,
    content: u32,
}

/// Fewest and most shards a verdict table is split into (when it holds
/// more than [`MIN_SHARDS`] × 64 verdicts; smaller ones have one shard).
const MIN_SHARDS: usize = 16;
const MAX_SHARDS: usize = 32;

/// Buckets std's `HashMap` (hashbrown) allocates for `n` entries: a power
/// of two at most 7/8 full; 4 or 8 for tiny tables.
fn buckets(n: usize) -> usize {
    match n {
        0..4 => 4,
        4..8 => 8,
        _ => (n.saturating_mul(8) / 7).next_power_of_two(),
    }
}

/// How many shards, and how many verdicts each: at most `max_entries` in
/// all, with the shard count (16 to 31) whose full tables have the fewest
/// buckets — hash tables grow by doubling, and a table just past a power
/// of two is half empty; e.g. 1,000,000 verdicts take 18 shards of 55,555
/// (1.18 M buckets) instead of 16 of 62,500 (2.1 M buckets).
fn layout(max_entries: u64) -> (usize, usize) {
    let max = usize::try_from(max_entries).unwrap_or(usize::MAX);
    if max < MIN_SHARDS * 64 {
        return (1, max);
    }
    (MIN_SHARDS..MAX_SHARDS)
        .map(|shards| (shards, max / shards))
        .min_by_key(|&(shards, each)| shards.saturating_mul(buckets(each)))
        .unwrap_or((MIN_SHARDS, max / MIN_SHARDS))
}

impl Verdicts {
    pub fn new(
        max_entries: u64,
        allow_ttl: Duration,
        deny_ttl: Duration,
        clock: Arc<Clock>,
    ) -> Verdicts {
        let (shards, shard_capacity) = layout(max_entries);
        Verdicts {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        generation: 0,
                        map: HashMap::new(),
                        clock: 0,
                    })
                })
                .collect(),
            shard_capacity,
            allow_ttl: millis(allow_ttl),
            deny_ttl: millis(deny_ttl),
            clock,
        }
    }

    fn shard(&self, id: &Id) -> MutexGuard<'_, Shard> {
        let mut first = [0u8; 8];
        first.copy_from_slice(&id[..8]);
        // The id is a SHA-256 output: its bytes are uniform.
        let i = (u64::from_le_bytes(first) % self.shards.len() as u64) as usize;
        lock(&self.shards[i])
    }

    /// The verdict cached under `key`, unless it expired; marks it used.
    pub fn get(&self, key: &Key) -> Option<Hit> {
        let now = self.clock.now();
        let mut guard = self.shard(&key.id);
        let shard = &mut *guard;
        if shard.generation != key.generation {
            return None;
        }
        shard.clock = shard.clock.wrapping_add(1);
        match shard.map.get_mut(&key.id) {
            // Expired verdicts stay until the shard is rebuilt (see
            // `Shard`): removing single entries would leave tombstones.
            Some(slot) if slot.expires > now => {
                slot.used = shard.clock;
                Some(Hit {
                    decision: Arc::clone(&slot.decision),
                    content: slot.content,
                })
            }
            _ => None,
        }
    }

    /// Caches `decision` (for the allow or deny TTL, by its verdict), its
    /// content registered in epoch `content`. Ignored when `key` is of
    /// another generation than the table's.
    pub fn insert(&self, key: &Key, decision: Arc<Decision>, content: u32) {
        if self.shard_capacity == 0 {
            return;
        }
        let now = self.clock.now();
        let ttl = if decision.verdict == Verdict::Deny {
            self.deny_ttl
        } else {
            self.allow_ttl
        };
        let mut guard = self.shard(&key.id);
        let shard = &mut *guard;
        if shard.generation != key.generation {
            return;
        }
        if shard.map.len() >= self.shard_capacity && !shard.map.contains_key(&key.id) {
            shard.make_room(now, self.shard_capacity);
        }
        shard.clock = shard.clock.wrapping_add(1);
        shard.map.insert(
            key.id,
            Slot {
                decision,
                expires: now.saturating_add(ttl),
                used: shard.clock,
                content,
            },
        );
    }

    /// Records that the content of `key`'s verdict was registered again,
    /// in epoch `content`.
    pub fn set_content(&self, key: &Key, content: u32) {
        let mut shard = self.shard(&key.id);
        if shard.generation == key.generation {
            if let Some(slot) = shard.map.get_mut(&key.id) {
                slot.content = content;
            }
        }
    }

    /// Forgets `key`'s verdict if it is a denial (marks it expired).
    pub fn remove_denied(&self, key: &Key) {
        let mut shard = self.shard(&key.id);
        if shard.generation == key.generation {
            if let Some(slot) = shard.map.get_mut(&key.id) {
                if !slot.decision.serves() {
                    slot.expires = 0;
                }
            }
        }
    }

    /// Drops every verdict; from now on only keys of `generation` count.
    pub fn clear(&self, generation: u32) {
        for shard in self.shards.iter() {
            let old = {
                let mut shard = lock(shard);
                shard.generation = generation;
                shard.clock = 0;
                std::mem::take(&mut shard.map)
            };
            drop(old);
        }
    }

    /// Drops expired verdicts; returns how many remain.
    pub fn purge_expired(&self) -> u64 {
        let now = self.clock.now();
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = lock(shard);
                let alive = shard.map.values().filter(|s| s.expires > now).count();
                if alive < shard.map.len() {
                    shard.rebuild(alive, |s| s.expires > now);
                }
                alive as u64
            })
            .sum()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }
}

impl Shard {
    /// Frees at least an eighth of a full shard: the expired verdicts,
    /// then the least recently used.
    fn make_room(&mut self, now: u64, capacity: usize) {
        let keep = capacity - (capacity / 8).max(1);
        let clock = self.clock;
        let mut ages: Vec<u32> = self
            .map
            .values()
            .filter(|s| s.expires > now)
            .map(|s| clock.wrapping_sub(s.used))
            .collect();
        // Ticks are distinct: exactly the `keep` youngest are younger.
        let younger_than = match ages.len() > keep {
            true => *ages.select_nth_unstable(keep).1,
            false => u32::MAX,
        };
        let kept = ages.len().min(keep);
        drop(ages);
        self.rebuild(kept, |s| {
            s.expires > now && clock.wrapping_sub(s.used) < younger_than
        });
    }

    /// Keeps the `count` slots `keep` accepts, in a new table.
    ///
    /// Never removing single entries keeps the table free of tombstones:
    /// std's `HashMap` (hashbrown) doubles a table more than half full
    /// when tombstones use up its room, even with fewer entries than it
    /// was sized for, so a shard that evicted in place would soon take
    /// twice the memory. A fresh table sized for what is kept has none.
    fn rebuild(&mut self, count: usize, keep: impl Fn(&Slot) -> bool) {
        let mut map = HashMap::with_capacity(count);
        map.extend(self.map.drain().filter(|(_, s)| keep(s)));
        self.map = map;
    }
}

/// Blobs and child manifests that admitted images make servable, and which
/// manifest admitted each.
///
/// Two segments, `current` and `previous`: registrations go to `current`,
/// lookups check both. The segments rotate (`previous` is dropped,
/// `current` becomes `previous`, the epoch is bumped) when `current`
/// would pass half the capacity, or when a `period` has passed since the
/// last rotation. So everything registered stays at least one period (or
/// half the capacity's worth of later registrations) and at most two
/// periods, and the whole stays within the capacity.
///
/// A verdict remembers the epoch its content was registered in; when the
/// epoch has moved on (or a rotation is due) a verdict-cache hit
/// registers the content again. The period is the allow TTL: content is
/// servable for at least that long after the last manifest request that
/// found it current.
///
/// A generation change ([`Content::retire`]) serves nothing of the old
/// generation, but keeps its segments, *retired*, for one more period (or
/// until the next change): a pull whose manifest was admitted before the
/// change asks for its blobs after it, and the retired segments name the
/// manifest (and the index listing it) to verify again under the new
/// generation ([`Content::retired_blob`], [`Content::retired_child`]).
/// Retired content is never served by itself.
pub(crate) struct Content {
    inner: Mutex<ContentInner>,
    /// `inner.epoch` and when its next time rotation is due, readable
    /// without the lock by [`Content::is_current`].
    epoch: AtomicU32,
    due: AtomicU64,
    segment_capacity: usize,
    period: u64,
    clock: Arc<Clock>,
}

struct ContentInner {
    generation: u32,
    epoch: u32,
    /// [`Clock`] milliseconds.
    rotated: u64,
    current: Segment,
    previous: Segment,
    retired: Option<Retired>,
}

/// The segments of the generation before the current one.
struct Retired {
    generation: u32,
    /// [`Clock`] milliseconds; dropped one period later.
    since: u64,
    /// Late registrations (verifications that began before the change)
    /// go to the first.
    segments: [Segment; 2],
}

impl Retired {
    fn find<T>(&self, get: impl Fn(&Segment) -> Option<T>) -> Option<T> {
        self.segments.iter().find_map(get)
    }

    fn len(&self) -> usize {
        self.segments.iter().map(Segment::len).sum()
    }
}

/// One segment's content: 36 bytes a blob or child, 32 bytes an admitted
/// SHA-256 manifest, 16 an admitted index.
#[derive(Default)]
struct Segment {
    /// Blob → the number of the manifest that admitted it
    /// ([`Segment::manifest`]).
    blobs: HashMap<Id, u32>,
    /// Child manifest → the admitted index listing it (in `indexes`).
    children: HashMap<Id, u32>,
    /// The SHA-256 manifests registered here, numbered from 0.
    sha256: Vec<[u8; 32]>,
    /// Manifests of another algorithm (SHA-512: rare), numbered from
    /// [`OTHER`].
    other: Vec<Digest>,
    /// Admitted indexes: the index's number, and the decision admitting
    /// its children ("listed by admitted index …"), one `Arc` shared by
    /// them all.
    indexes: Vec<(u32, Arc<Decision>)>,
}

/// The first number of a manifest in [`Segment::other`].
const OTHER: u32 = 1 << 31;
/// No manifest recorded (content adopted from the fleet without one).
const UNKNOWN: u32 = u32::MAX;

impl Segment {
    fn len(&self) -> usize {
        self.blobs.len() + self.children.len()
    }

    fn clear(&mut self) {
        self.blobs.clear();
        self.children.clear();
        self.sha256.clear();
        self.other.clear();
        self.indexes.clear();
    }

    fn add(
        &mut self,
        manifest: Option<&Digest>,
        blobs: &[Id],
        children: &[Id],
        listed: Option<&Arc<Decision>>,
    ) {
        let children = if listed.is_some() { children } else { &[] };
        if blobs.is_empty() && children.is_empty() {
            return;
        }
        let number = manifest.map_or(UNKNOWN, |m| self.number(m));
        self.blobs.extend(blobs.iter().map(|b| (*b, number)));
        if let (Some(decision), false) = (listed, children.is_empty()) {
            let index = u32::try_from(self.indexes.len()).unwrap_or(UNKNOWN);
            if index != UNKNOWN {
                self.indexes.push((number, Arc::clone(decision)));
            }
            self.children.extend(children.iter().map(|c| (*c, index)));
        }
    }

    /// Records `manifest`; its number.
    fn number(&mut self, manifest: &Digest) -> u32 {
        let below_other = |n: usize| u32::try_from(n).ok().filter(|n| *n < OTHER);
        match manifest.sha256_bytes() {
            Some(bytes) => match below_other(self.sha256.len()) {
                Some(n) => {
                    self.sha256.push(bytes);
                    n
                }
                None => UNKNOWN,
            },
            None => match below_other(self.other.len()) {
                Some(n) => {
                    self.other.push(manifest.clone());
                    n | OTHER
                }
                None => UNKNOWN,
            },
        }
    }

    /// The manifest numbered `number`.
    fn manifest(&self, number: u32) -> Option<Digest> {
        match number {
            UNKNOWN => None,
            n if n & OTHER == 0 => self
                .sha256
                .get(usize::try_from(n).ok()?)
                .map(Digest::from_sha256_bytes),
            n => self.other.get(usize::try_from(n & !OTHER).ok()?).cloned(),
        }
    }

    fn index(&self, child: &Id) -> Option<&(u32, Arc<Decision>)> {
        self.indexes
            .get(usize::try_from(*self.children.get(child)?).ok()?)
    }

    /// The manifest that admitted blob `id`, if it is here and recorded.
    fn blob_origin(&self, id: &Id) -> Option<Digest> {
        self.manifest(*self.blobs.get(id)?)
    }

    /// The index listing child `id`, if it is here and recorded.
    fn child_origin(&self, id: &Id) -> Option<Digest> {
        self.manifest(self.index(id)?.0)
    }

    fn child_decision(&self, id: &Id) -> Option<Arc<Decision>> {
        self.index(id).map(|(_, decision)| Arc::clone(decision))
    }
}

impl Content {
    /// At most `capacity` blobs and children (each segment half of it),
    /// rotated at least every `period`; a retired generation holds at most
    /// as much again, for at most one period.
    pub fn new(capacity: usize, period: Duration, clock: Arc<Clock>) -> Content {
        let now = clock.now();
        let period = millis(period);
        Content {
            inner: Mutex::new(ContentInner {
                generation: 0,
                epoch: 0,
                rotated: now,
                current: Segment::default(),
                previous: Segment::default(),
                retired: None,
            }),
            epoch: AtomicU32::new(0),
            due: AtomicU64::new(now.saturating_add(period)),
            segment_capacity: capacity / 2,
            period,
            clock,
        }
    }

    /// Whether content registered in epoch `epoch` is in the current
    /// segment and no rotation is due: if not, it may be gone by the time
    /// its blobs are requested and should be registered again.
    pub fn is_current(&self, epoch: u32) -> bool {
        self.epoch.load(Ordering::Acquire) == epoch
            && self.clock.now() < self.due.load(Ordering::Acquire)
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Registers blobs and children (admitted by `child_decision`) of the
    /// admitted `manifest` (`None` when not known), all in one segment;
    /// returns its epoch. When `generation` is the retired one (a
    /// verification that began before the change), only recorded as
    /// retired, within the retired segments' size; ignored when it is
    /// neither.
    pub fn admit(
        &self,
        generation: u32,
        manifest: Option<&Digest>,
        blobs: &[Id],
        children: &[Id],
        child_decision: Option<&Arc<Decision>>,
    ) -> u32 {
        let now = self.clock.now();
        let mut inner = lock(&self.inner);
        self.expire(&mut inner, now);
        let adding = blobs.len() + children.len();
        if inner.generation != generation {
            let room = self.segment_capacity.saturating_mul(2);
            if let Some(retired) = inner
                .retired
                .as_mut()
                .filter(|r| r.generation == generation && r.len() + adding <= room)
            {
                retired.segments[0].add(manifest, blobs, children, child_decision);
            }
            return inner.epoch;
        }
        if inner.current.len() > 0 && inner.current.len() + adding > self.segment_capacity {
            self.rotate(&mut inner, now);
        }
        inner.current.add(manifest, blobs, children, child_decision);
        inner.epoch
    }

    /// Whether an admitted image in `key`'s repository lists the blob.
    pub fn has_blob(&self, key: &Key) -> bool {
        let now = self.clock.now();
        let mut inner = lock(&self.inner);
        if inner.generation != key.generation {
            return false;
        }
        self.expire(&mut inner, now);
        inner.current.blobs.contains_key(&key.id) || inner.previous.blobs.contains_key(&key.id)
    }

    /// The decision admitting `key`'s manifest as the child of an admitted
    /// index, if one lists it.
    pub fn child(&self, key: &Key) -> Option<Arc<Decision>> {
        let now = self.clock.now();
        let mut inner = lock(&self.inner);
        if inner.generation != key.generation {
            return None;
        }
        self.expire(&mut inner, now);
        inner
            .current
            .child_decision(&key.id)
            .or_else(|| inner.previous.child_decision(&key.id))
    }

    /// The manifest whose admission under the retired generation made blob
    /// `id` servable (not served by itself: see [`Content`]).
    pub fn retired_blob(&self, id: &Id) -> Option<Digest> {
        let now = self.clock.now();
        let mut inner = lock(&self.inner);
        self.expire(&mut inner, now);
        inner.retired.as_ref()?.find(|s| s.blob_origin(id))
    }

    /// The index whose admission under the retired generation admitted
    /// child manifest `id`.
    pub fn retired_child(&self, id: &Id) -> Option<Digest> {
        let now = self.clock.now();
        let mut inner = lock(&self.inner);
        self.expire(&mut inner, now);
        inner.retired.as_ref()?.find(|s| s.child_origin(id))
    }

    /// Drops everything; from now on only keys of `generation` count.
    pub fn clear(&self, generation: u32) {
        let old = self.change(generation, false);
        drop(old);
    }

    /// From now on only keys of `generation` count; what was registered
    /// is kept as retired for one period, to name the manifests to verify
    /// again (the previously retired generation is dropped).
    pub fn retire(&self, generation: u32) {
        let old = self.change(generation, true);
        drop(old);
    }

    /// A new generation; returns what it drops, to be freed outside the
    /// lock.
    fn change(&self, generation: u32, retire: bool) -> (Segment, Segment, Option<Retired>) {
        let now = self.clock.now();
        let mut inner = lock(&self.inner);
        let current = std::mem::take(&mut inner.current);
        let previous = std::mem::take(&mut inner.previous);
        let dropped = match retire {
            true => {
                let retired = Retired {
                    generation: inner.generation,
                    since: now,
                    segments: [current, previous],
                };
                let old = inner.retired.replace(retired);
                (Segment::default(), Segment::default(), old)
            }
            false => (current, previous, inner.retired.take()),
        };
        inner.generation = generation;
        self.set_epoch(&mut inner, now);
        dropped
    }

    /// Applies the time rotations due by `now`. They are scheduled every
    /// period from the last rotation (applied late if nothing asked in
    /// between), so content registered in an epoch is gone two periods
    /// after that epoch began, at the latest; retired content is gone one
    /// period after its generation ended.
    fn expire(&self, inner: &mut ContentInner, now: u64) {
        if inner
            .retired
            .as_ref()
            .is_some_and(|r| now.saturating_sub(r.since) >= self.period)
        {
            inner.retired = None;
        }
        let elapsed = now.saturating_sub(inner.rotated);
        if elapsed >= self.period.saturating_mul(2) {
            self.rotate(inner, now);
            self.rotate(inner, now);
        } else if elapsed >= self.period {
            let at = inner.rotated.saturating_add(self.period);
            self.rotate(inner, at);
        }
    }

    /// `previous` is dropped and `current` takes its place; the dropped
    /// segment's tables are reused for the new `current` (same size next
    /// time, no regrowth).
    fn rotate(&self, inner: &mut ContentInner, at: u64) {
        let mut recycled = std::mem::take(&mut inner.previous);
        recycled.clear();
        inner.previous = std::mem::replace(&mut inner.current, recycled);
        self.set_epoch(inner, at);
    }

    /// A new epoch without a rotation: everything registered so far stays,
    /// but no verdict's content counts as current, so the next request for
    /// each admitted manifest registers (and shares) its content again.
    pub fn renew(&self) {
        let mut inner = lock(&self.inner);
        inner.epoch = inner.epoch.wrapping_add(1);
        self.epoch.store(inner.epoch, Ordering::Release);
    }

    /// A new epoch, begun `at`.
    fn set_epoch(&self, inner: &mut ContentInner, at: u64) {
        inner.epoch = inner.epoch.wrapping_add(1);
        inner.rotated = at;
        self.epoch.store(inner.epoch, Ordering::Release);
        self.due
            .store(at.saturating_add(self.period), Ordering::Release);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let inner = lock(&self.inner);
        inner.current.len() + inner.previous.len()
    }
}

/// Verifications in flight, by key: concurrent misses for one key share
/// one run of the loader and its result, success or error. Nothing is
/// kept once a run finishes (errors are never cached); when the task
/// running the loader is cancelled, a waiting task runs its own loader.
pub(crate) struct Flights<T> {
    map: Mutex<HashMap<Key, Arc<OnceCell<T>>>>,
}

impl<T: Clone> Flights<T> {
    pub fn new() -> Flights<T> {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// `init`'s result, or that of the run already in flight for `key`.
    pub async fn run<F, Fut>(&self, key: Key, init: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let flight = Flight {
            cell: Some(Arc::clone(lock(&self.map).entry(key).or_default())),
            flights: self,
            key,
        };
        flight.cell().get_or_init(init).await.clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// One task's part in a flight. The map holds one reference to the cell
/// and each participant one, taken and released under the map's lock, so
/// the strong count there says exactly how many participants remain.
struct Flight<'a, T> {
    flights: &'a Flights<T>,
    key: Key,
    cell: Option<Arc<OnceCell<T>>>,
}

impl<T> Flight<'_, T> {
    fn cell(&self) -> &OnceCell<T> {
        self.cell.as_ref().expect("the cell is only taken on drop")
    }
}

impl<T> Drop for Flight<'_, T> {
    fn drop(&mut self) {
        let mut map = lock(&self.flights.map);
        let Some(cell) = self.cell.take() else {
            return;
        };
        // Finished: later misses must look in the cache (and run again if
        // this was an error), not reuse the result. Cancelled with nobody
        // else waiting: nothing to keep.
        let done = cell.initialized() || Arc::strong_count(&cell) == 2;
        if done && map.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&self.key);
        }
        drop(cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{EnforcementMode, EvaluationMode, RuleSource};
    use std::sync::atomic::AtomicUsize;

    fn decision(verdict: Verdict) -> Arc<Decision> {
        Arc::new(Decision {
            verdict,
            rule: RuleSource::Default,
            evaluation: EvaluationMode::AlwaysAllow,
            enforcement: EnforcementMode::EnforcedBlockAndAuditLog,
            attestors: Vec::new(),
            reason: "test".into(),
        })
    }

    fn key(generation: u32, n: u64) -> Key {
        Scope::new(generation, 0, "demo/app").key(&format!("sha256:{n:064x}"))
    }

    #[test]
    fn keys_differ_by_every_part_and_digest_text_equals_digest() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32))
            .parse()
            .expect("digest");
        let text = d.to_string();
        let s = Scope::new(1, 0, "demo/app");
        assert_eq!(s.key_of(&d), s.key(&text));
        let d512: Digest = format!("sha512:{}", "cd".repeat(64))
            .parse()
            .expect("digest");
        assert_eq!(s.key_of(&d512), s.key(&d512.to_string()));
        assert_ne!(s.key(&text), Scope::new(2, 0, "demo/app").key(&text));
        assert_ne!(s.key(&text).id, Scope::new(1, 1, "demo/app").key(&text).id);
        assert_ne!(s.key(&text).id, Scope::new(1, 0, "demo/ap").key(&text).id);
        // The repository is length-prefixed: moving bytes between the
        // repository and the digest changes the key.
        assert_ne!(
            Scope::new(1, 0, "a").key("bc").id,
            Scope::new(1, 0, "ab").key("c").id
        );
        assert_ne!(s.key_of(&d).id, s.key_of(&d512).id);
    }

    #[test]
    fn layout_stays_within_max_entries_and_avoids_half_empty_tables() {
        for max in [
            0, 1, 7, 100, 1023, 1024, 5000, 100_000, 1_000_000, 12_345_678,
        ] {
            let (shards, each) = layout(max);
            assert!((shards * each) as u64 <= max, "{max}: {shards} × {each}");
            assert!(
                (shards * each) as u64 >= max - max / 16,
                "{max}: {shards} × {each} wastes capacity"
            );
        }
        assert_eq!(layout(1_000_000), (18, 55_555));
        assert_eq!(buckets(55_555), 65_536);
        assert_eq!(buckets(62_500), 131_072);
    }

    #[test]
    fn verdicts_are_bounded_and_keep_the_recently_used() {
        let v = Verdicts::new(
            100,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Arc::new(Clock::new()),
        );
        let allow = decision(Verdict::Allow);
        for n in 0..100 {
            v.insert(&key(0, n), Arc::clone(&allow), 0);
        }
        assert_eq!(v.len(), 100);
        // Use the first ten; then insert 50 more.
        for n in 0..10 {
            assert!(v.get(&key(0, n)).is_some());
        }
        for n in 100..150 {
            v.insert(&key(0, n), Arc::clone(&allow), 0);
            assert!(v.len() <= 100);
        }
        for n in 0..10 {
            assert!(v.get(&key(0, n)).is_some(), "recently used {n} evicted");
        }
        for n in 140..150 {
            assert!(v.get(&key(0, n)).is_some(), "newest {n} evicted");
        }
        assert!(
            (10..40).all(|n| v.get(&key(0, n)).is_none()),
            "the least recently used go first"
        );
        assert!(v.len() >= 100 - 100 / 8);
    }

    #[test]
    fn sharded_verdicts_stay_within_max_entries() {
        let max = 20_000;
        let v = Verdicts::new(
            max,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Arc::new(Clock::new()),
        );
        assert!(v.shards.len() >= MIN_SHARDS);
        let allow = decision(Verdict::Allow);
        for n in 0..3 * max {
            v.insert(&key(0, n), Arc::clone(&allow), 0);
        }
        let len = v.len() as u64;
        assert!(len <= max, "{len}");
        assert!(len >= max * 3 / 4, "{len}");
        // One shared decision, however many verdicts.
        assert_eq!(Arc::strong_count(&allow), 1 + v.len());
    }

    #[test]
    fn verdicts_expire_after_their_verdicts_ttl() {
        let clock = Arc::new(Clock::new());
        let v = Verdicts::new(
            10,
            Duration::from_secs(600),
            Duration::from_secs(30),
            Arc::clone(&clock),
        );
        v.insert(&key(0, 1), decision(Verdict::Allow), 0);
        v.insert(&key(0, 2), decision(Verdict::Deny), 0);
        v.insert(&key(0, 3), decision(Verdict::DryRunDeny), 0);
        clock.advance(Duration::from_secs(29));
        assert!(v.get(&key(0, 2)).is_some());
        clock.advance(Duration::from_secs(1));
        assert!(v.get(&key(0, 2)).is_none(), "deny outlived denyTtl");
        assert!(v.get(&key(0, 1)).is_some());
        assert!(v.get(&key(0, 3)).is_some(), "a dry-run denial serves");
        clock.advance(Duration::from_secs(570));
        assert!(v.get(&key(0, 1)).is_none(), "allow outlived allowTtl");
        assert_eq!(v.purge_expired(), 0);
        // A zero TTL caches nothing.
        let v = Verdicts::new(10, Duration::ZERO, Duration::ZERO, clock);
        v.insert(&key(0, 1), decision(Verdict::Allow), 0);
        assert!(v.get(&key(0, 1)).is_none());
    }

    #[test]
    fn verdicts_of_another_generation_are_never_served() {
        let v = Verdicts::new(
            10,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Arc::new(Clock::new()),
        );
        v.insert(&key(0, 1), decision(Verdict::Allow), 0);
        assert!(v.get(&key(0, 1)).is_some());
        assert!(v.get(&key(1, 1)).is_none());
        v.clear(1);
        assert!(v.get(&key(0, 1)).is_none());
        assert_eq!(v.len(), 0);
        // A verification that started under generation 0 finishes now.
        v.insert(&key(0, 1), decision(Verdict::Allow), 0);
        assert_eq!(v.len(), 0, "stored a verdict of an old generation");
        assert!(v.get(&key(1, 1)).is_none());
        v.insert(&key(1, 1), decision(Verdict::Deny), 0);
        assert!(v
            .get(&key(1, 1))
            .is_some_and(|h| h.decision.verdict == Verdict::Deny));
    }

    #[test]
    fn remove_denied_keeps_allows_and_set_content_records_the_epoch() {
        let v = Verdicts::new(
            10,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Arc::new(Clock::new()),
        );
        v.insert(&key(0, 1), decision(Verdict::Allow), 3);
        v.insert(&key(0, 2), decision(Verdict::Deny), 3);
        v.remove_denied(&key(0, 1));
        v.remove_denied(&key(0, 2));
        assert!(v.get(&key(0, 2)).is_none());
        v.set_content(&key(0, 1), 4);
        assert_eq!(v.get(&key(0, 1)).map(|h| h.content), Some(4));
    }

    fn ids(range: std::ops::Range<u64>) -> Vec<Id> {
        range.map(|n| key(0, n).id).collect()
    }

    #[test]
    fn content_rotates_at_half_capacity_and_stays_bounded() {
        let c = Content::new(100, Duration::from_secs(600), Arc::new(Clock::new()));
        let first = c.admit(0, None, &ids(0..10), &[], None);
        assert!(c.is_current(first));
        for n in 1..5 {
            assert_eq!(
                c.admit(0, None, &ids(n * 10..n * 10 + 10), &[], None),
                first
            );
        }
        // 50 in the current segment: the next image starts a new one.
        let second = c.admit(0, None, &ids(50..60), &[], None);
        assert_ne!(second, first);
        assert!(!c.is_current(first));
        assert!(c.has_blob(&key(0, 0)), "the previous segment is still read");
        for n in 6..10 {
            c.admit(0, None, &ids(n * 10..n * 10 + 10), &[], None);
        }
        assert_eq!(c.len(), 100);
        let third = c.admit(0, None, &ids(100..110), &[], None);
        assert_ne!(third, second);
        assert!(!c.has_blob(&key(0, 0)), "two rotations ago");
        assert!(c.has_blob(&key(0, 50)));
        assert!(c.has_blob(&key(0, 105)));
        for n in 0..1000 {
            c.admit(0, None, &ids(n * 3..n * 3 + 3), &[], None);
            assert!(c.len() <= 100);
        }
        // An image larger than a segment is still registered whole.
        let e = c.admit(0, None, &ids(5000..5070), &[], None);
        assert!(c.is_current(e));
        assert!(c.has_blob(&key(0, 5000)) && c.has_blob(&key(0, 5069)));
    }

    #[test]
    fn content_rotates_every_period_and_lives_one_to_two_periods() {
        let clock = Arc::new(Clock::new());
        let c = Content::new(1000, Duration::from_secs(600), Arc::clone(&clock));
        let e = c.admit(0, None, &ids(0..2), &[], None);
        clock.advance(Duration::from_secs(599));
        assert!(c.is_current(e));
        assert!(c.has_blob(&key(0, 1)));
        clock.advance(Duration::from_secs(1));
        assert!(!c.is_current(e), "a rotation is due");
        assert!(c.has_blob(&key(0, 1)), "one period: still servable");
        assert!(!c.is_current(e));
        // Registered again (a verdict-cache hit does this): current again.
        let again = c.admit(0, None, &ids(0..2), &[], None);
        assert!(c.is_current(again));
        clock.advance(Duration::from_secs(1199));
        assert!(c.has_blob(&key(0, 1)), "less than two periods");
        clock.advance(Duration::from_secs(1));
        assert!(!c.has_blob(&key(0, 1)), "two periods after registration");
        // Idle for long: everything is gone at once.
        c.admit(0, None, &ids(10..12), &[], None);
        clock.advance(Duration::from_secs(3600));
        assert!(!c.has_blob(&key(0, 10)));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn content_children_carry_their_decision_and_generations_are_kept_apart() {
        let c = Content::new(1000, Duration::from_secs(600), Arc::new(Clock::new()));
        let listed = decision(Verdict::Allow);
        c.admit(0, None, &ids(0..1), &ids(10..13), Some(&listed));
        assert!(c
            .child(&key(0, 11))
            .is_some_and(|d| Arc::ptr_eq(&d, &listed)));
        assert!(c.child(&key(0, 0)).is_none(), "a blob is not a child");
        assert!(!c.has_blob(&key(0, 11)), "a child is not a blob");
        assert!(c.child(&key(1, 11)).is_none());
        assert!(!c.has_blob(&key(1, 0)));
        let before = c.epoch();
        c.clear(1);
        assert_ne!(c.epoch(), before);
        assert!(c.child(&key(1, 11)).is_none() && !c.has_blob(&key(1, 0)));
        // Registered by a verification that started before the change.
        c.admit(0, None, &ids(0..1), &ids(10..13), Some(&listed));
        assert_eq!(c.len(), 0, "content of an old generation was stored");
        assert_eq!(Arc::strong_count(&listed), 1);
    }

    fn manifest(n: u8) -> Digest {
        Digest::from_sha256_bytes(&[n; 32])
    }

    #[test]
    fn a_change_retires_content_that_names_its_manifests_and_serves_none_of_it() {
        let clock = Arc::new(Clock::new());
        let c = Content::new(1000, Duration::from_secs(600), Arc::clone(&clock));
        let listed = decision(Verdict::Allow);
        let index = manifest(1);
        let image = manifest(2);
        // An index listing child 10, and the child's blobs 0 and 1.
        c.admit(0, Some(&index), &[], &ids(10..11), Some(&listed));
        c.admit(0, Some(&image), &ids(0..2), &[], None);
        assert_eq!(c.retired_blob(&key(0, 0).id), None, "not retired yet");
        c.retire(1);
        assert!(!c.has_blob(&key(1, 0)) && !c.has_blob(&key(0, 0)));
        assert!(
            c.child(&key(1, 10)).is_none(),
            "retired children are not admitted"
        );
        assert_eq!(c.retired_blob(&key(1, 1).id), Some(image.clone()));
        assert_eq!(c.retired_child(&key(1, 10).id), Some(index.clone()));
        assert_eq!(
            c.retired_blob(&key(1, 10).id),
            None,
            "a child is not a blob"
        );
        assert_eq!(c.retired_blob(&key(1, 5).id), None);
        // A verification that began before the change registers late: as
        // retired only.
        c.admit(0, Some(&manifest(3)), &ids(20..21), &[], None);
        assert!(!c.has_blob(&key(1, 20)));
        assert_eq!(c.retired_blob(&key(1, 20).id), Some(manifest(3)));
        // Registrations of unknown generations are ignored.
        c.admit(7, Some(&manifest(4)), &ids(30..31), &[], None);
        assert_eq!(c.retired_blob(&key(1, 30).id), None);
        // One period later the retired content is gone.
        clock.advance(Duration::from_secs(600));
        assert_eq!(c.retired_blob(&key(1, 1).id), None);
        assert_eq!(c.retired_child(&key(1, 10).id), None);
    }

    #[test]
    fn only_the_last_generation_is_retired_and_clear_keeps_none() {
        let c = Content::new(1000, Duration::from_secs(600), Arc::new(Clock::new()));
        c.admit(0, Some(&manifest(1)), &ids(0..1), &[], None);
        c.retire(1);
        c.admit(1, Some(&manifest(2)), &ids(1..2), &[], None);
        c.retire(2);
        assert_eq!(c.retired_blob(&key(2, 0).id), None, "two changes ago");
        assert_eq!(c.retired_blob(&key(2, 1).id), Some(manifest(2)));
        c.clear(3);
        assert_eq!(c.retired_blob(&key(3, 1).id), None);
        // Content adopted without its manifest names none; SHA-512
        // manifests are named too.
        let sha512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        c.admit(3, None, &ids(5..6), &[], None);
        c.admit(3, Some(&sha512), &ids(6..7), &[], None);
        c.retire(4);
        assert_eq!(c.retired_blob(&key(4, 5).id), None);
        assert_eq!(c.retired_blob(&key(4, 6).id), Some(sha512));
    }

    #[test]
    fn retired_content_stays_within_the_capacity() {
        let c = Content::new(100, Duration::from_secs(600), Arc::new(Clock::new()));
        for n in 0..10 {
            c.admit(
                0,
                Some(&manifest(n as u8)),
                &ids(n * 10..n * 10 + 10),
                &[],
                None,
            );
        }
        c.retire(1);
        // Full: late registrations of the old generation are dropped.
        c.admit(0, Some(&manifest(99)), &ids(500..510), &[], None);
        assert_eq!(c.retired_blob(&key(1, 505).id), None);
        assert_eq!(c.retired_blob(&key(1, 95).id), Some(manifest(9)));
    }

    #[tokio::test]
    async fn concurrent_flights_share_one_run() {
        let flights: Arc<Flights<Result<u32, String>>> = Arc::new(Flights::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let flights = Arc::clone(&flights);
                let runs = Arc::clone(&runs);
                let mut gate = gate.clone();
                tokio::spawn(async move {
                    flights
                        .run(key(0, 1), || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            Ok(7)
                        })
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(true).expect("release");
        for t in tasks {
            assert_eq!(t.await.expect("task"), Ok(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "a finished flight was kept");
    }

    #[tokio::test]
    async fn a_failed_flight_is_shared_but_not_kept() {
        let flights: Flights<Result<u32, String>> = Flights::new();
        let r = flights
            .run(key(0, 1), || async { Err("upstream down".to_owned()) })
            .await;
        assert_eq!(r, Err("upstream down".to_owned()));
        assert_eq!(flights.len(), 0);
        let r = flights.run(key(0, 1), || async { Ok(1) }).await;
        assert_eq!(r, Ok(1), "the error was reused");
        // Other generations never share a flight.
        let r = flights.run(key(1, 1), || async { Ok(2) }).await;
        assert_eq!(r, Ok(2));
    }

    #[tokio::test]
    async fn a_cancelled_flight_hands_over_or_is_dropped() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::new());
        // Cancelled with nobody waiting: nothing is left behind.
        let leader = {
            let flights = Arc::clone(&flights);
            tokio::spawn(async move { flights.run(key(0, 1), std::future::pending::<u32>).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(flights.len(), 1);
        leader.abort();
        let _ = leader.await;
        assert_eq!(flights.len(), 0);
        // Cancelled while another waits: the waiter runs its own loader.
        let leader = {
            let flights = Arc::clone(&flights);
            tokio::spawn(async move { flights.run(key(0, 2), std::future::pending::<u32>).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiter = {
            let flights = Arc::clone(&flights);
            tokio::spawn(async move { flights.run(key(0, 2), || async { 5 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        assert_eq!(waiter.await.expect("waiter"), 5);
        let _ = leader.await;
        assert_eq!(flights.len(), 0);
    }
}
