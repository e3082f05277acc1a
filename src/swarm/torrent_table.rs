//! One shard's torrents: a dense array of (info hash, torrent) and a [`PositionIndex`] into
//! it, locked together and prefetchable without the lock.
//!
//! Why not a hash table of torrents: its buckets are sized by its load factor, which after a
//! doubling is under one half, so a shard paid for every torrent's bytes about twice (a
//! million one-peer torrents took 175 bytes a peer). The index's buckets are 4 bytes, and
//! the array holds torrents without gaps (85 bytes a peer; `benches/store.rs`).
//!
//! With a million torrents this is far larger than the CPU caches, and finding a torrent
//! costs three cache misses (the index's control bytes and bucket, then the entry). The
//! engines receive requests in batches, so the store asks for those lines a few requests
//! before it needs them ([`LockedTable::prefetch`], then [`TableGuard::prefetch_entry`]):
//! the misses then overlap with other work instead of stalling it. The first step runs
//! without the lock, so the table copies where the index's buckets are into atomics
//! whenever they may have moved.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};

use super::position_index::{Hasher, PositionIndex};
use super::prefetch::{BucketLayout, prefetch_bytes, prefetch_line};
use crate::bittorrent::InfoHash;

/// An info hash and its hash by the store's hasher, which every shard's index shares: hashed
/// once per request, it picks the shard and finds the torrent there.
#[derive(Clone, Copy)]
pub(super) struct TorrentKey {
    pub info_hash: InfoHash,
    pub hash: u64,
}

/// The torrents of one shard and where each one is.
struct Torrents<T> {
    index: PositionIndex,
    /// Dense: a removed torrent's place goes to the last one.
    entries: Chunks<(InfoHash, T)>,
}

/// Entries in blocks of [`CHUNK`], all full but the last: a growing array that never
/// reallocates. One `Vec` grown by reallocation left its old buffers free but resident, 13%
/// of the store's memory after a million torrents, and doubling would leave up to half of
/// it unused; equal blocks are reused exactly by the allocator, and at most one is partly
/// empty.
struct Chunks<E> {
    chunks: Vec<Vec<E>>,
    len: usize,
}

/// Entries per block: a power of two (a position's block is a shift away), 4.5 KiB blocks
/// for IPv4 torrents.
const CHUNK: usize = 64;

impl<E> Chunks<E> {
    fn new() -> Self {
        Chunks {
            chunks: Vec::new(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, p: usize) -> &E {
        &self.chunks[p / CHUNK][p % CHUNK]
    }

    fn get_mut(&mut self, p: usize) -> &mut E {
        &mut self.chunks[p / CHUNK][p % CHUNK]
    }

    fn push(&mut self, entry: E) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a block").push(entry);
        self.len += 1;
    }

    /// Removes the entry at `p`; the last one takes its place.
    fn swap_remove(&mut self, p: usize) -> E {
        let last_chunk = self.chunks.last_mut().expect("an entry");
        let last = last_chunk.pop().expect("blocks are never empty");
        if last_chunk.is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
        if p == self.len {
            last
        } else {
            std::mem::replace(self.get_mut(p), last)
        }
    }

    fn iter(&self) -> impl Iterator<Item = &E> {
        self.chunks.iter().flatten()
    }

    /// Gives back the list of blocks' spare room after many were removed.
    fn shrink(&mut self) {
        if self.chunks.capacity() > 2 * self.chunks.len() + 4 {
            self.chunks.shrink_to_fit();
        }
    }
}

/// A shard's torrents behind their lock, plus where the index's buckets are, for lock-free
/// prefetching.
pub(super) struct LockedTable<T> {
    torrents: Mutex<Torrents<T>>,
    /// Address of the index's bucket 0 (buckets go downwards from there), 0 while unknown.
    bucket0: AtomicUsize,
    /// Number of index buckets minus one.
    mask: AtomicUsize,
}

impl<T> LockedTable<T> {
    /// An empty shard hashing with `hasher` (the store's, so that the lock-free prefetch,
    /// which has no access to the index, computes the same hash).
    pub fn new(hasher: Hasher) -> Self {
        LockedTable {
            torrents: Mutex::new(Torrents {
                index: PositionIndex::with_hasher(hasher),
                entries: Chunks::new(),
            }),
            bucket0: AtomicUsize::new(0),
            mask: AtomicUsize::new(0),
        }
    }

    pub fn lock(&self) -> TableGuard<'_, T> {
        TableGuard {
            torrents: self.torrents.lock(),
            layout: self,
        }
    }

    /// The guard, unless another thread holds the lock (prefetching never waits for one).
    pub fn try_lock(&self) -> Option<TableGuard<'_, T>> {
        Some(TableGuard {
            torrents: self.torrents.try_lock()?,
            layout: self,
        })
    }

    /// Asks the CPU for the lines of the index where `hash` (the key's hash by the store's
    /// hasher) is most likely found: the control bytes and the bucket its probe starts at.
    pub fn prefetch(&self, hash: u64) {
        let layout = BucketLayout {
            bucket0: self.bucket0.load(Ordering::Relaxed),
            mask: self.mask.load(Ordering::Relaxed),
        };
        if let Some((control, bucket)) = layout.probe_start::<u32>(hash) {
            prefetch_line(control);
            prefetch_line(bucket);
        }
    }

    /// Records where the index's buckets are.
    fn note_layout(&self, layout: BucketLayout) {
        self.bucket0.store(layout.bucket0, Ordering::Relaxed);
        self.mask.store(layout.mask, Ordering::Relaxed);
    }
}

/// The locked table; records the index's layout for prefetching whenever it may have moved.
pub(super) struct TableGuard<'a, T> {
    torrents: MutexGuard<'a, Torrents<T>>,
    layout: &'a LockedTable<T>,
}

impl<T> TableGuard<'_, T> {
    fn position(&self, key: &TorrentKey) -> Option<usize> {
        let entries = &self.torrents.entries;
        let index = &self.torrents.index;
        let found = index.find_hashed(key.hash, key.info_hash, |p| entries.get(p as usize).0);
        found.map(|p| p as usize)
    }

    pub fn get(&self, key: &TorrentKey) -> Option<&T> {
        let p = self.position(key)?;
        Some(&self.torrents.entries.get(p).1)
    }

    pub fn get_mut(&mut self, key: &TorrentKey) -> Option<&mut T> {
        let p = self.position(key)?;
        Some(&mut self.torrents.entries.get_mut(p).1)
    }

    /// The value for `key`; when there is none, a new one from `make` (which may refuse).
    pub fn get_or_insert(
        &mut self,
        key: &TorrentKey,
        make: impl FnOnce() -> Option<T>,
    ) -> Option<&mut T> {
        if let Some(p) = self.position(key) {
            return Some(&mut self.torrents.entries.get_mut(p).1);
        }
        let Torrents { index, entries } = &mut *self.torrents;
        // Positions are u32: four billion torrents in one shard would not fit in memory.
        if entries.len() >= u32::MAX as usize {
            return None;
        }
        // Removals hash with the index's own hasher: it must be the one `key` was hashed by.
        debug_assert_eq!(key.hash, index.hash(key.info_hash), "another hasher");
        let value = make()?;
        let p = entries.len();
        entries.push((key.info_hash, value));
        // An insert is where the index grows: note where its buckets are now.
        index.insert_hashed(key.hash, p as u32, |q| entries.get(q as usize).0);
        self.layout.note_layout(index.layout());
        Some(&mut entries.get_mut(p).1)
    }

    /// Removes the torrent at `p`; the last one takes its place.
    fn remove_at(&mut self, p: usize) -> T {
        let Torrents { index, entries } = &mut *self.torrents;
        index.remove(entries.get(p).0, p as u32);
        let last = entries.len() - 1;
        let (_, value) = entries.swap_remove(p);
        if p != last {
            index.moved(entries.get(p).0, last as u32, p as u32);
        }
        value
    }

    pub fn remove(&mut self, key: &TorrentKey) -> Option<T> {
        let p = self.position(key)?;
        Some(self.remove_at(p))
    }

    pub fn len(&self) -> usize {
        self.torrents.entries.len()
    }

    pub fn entries(&self) -> impl Iterator<Item = (&InfoHash, &T)> {
        self.torrents.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.torrents.entries.iter().map(|(_, v)| v)
    }

    /// Keeps the entries `keep` says yes to, then gives memory back if the table is mostly
    /// empty.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        // Removal touches the index only for removed and moved torrents, so a pass where few
        // are removed costs a scan and not a rebuild.
        let mut p = 0;
        while p < self.torrents.entries.len() {
            if keep(&mut self.torrents.entries.get_mut(p).1) {
                p += 1;
            } else {
                // The last torrent moves here and is looked at next.
                self.remove_at(p);
            }
        }
        let Torrents { index, entries } = &mut *self.torrents;
        entries.shrink();
        index.shrink(entries.len(), |q| entries.get(q as usize).0);
        self.layout.note_layout(index.layout());
    }

    /// Asks for the line of the entry that a lookup of `key` most likely ends at, reading
    /// only the index lines [`LockedTable::prefetch`] asked for (no key is compared).
    pub fn prefetch_entry(&self, key: &TorrentKey) {
        let entries = &self.torrents.entries;
        let size = size_of::<(InfoHash, T)>();
        self.torrents.index.prefetch_entry_hashed(key.hash, |p| {
            // (The position is a stored one, so within the array; the block list is read,
            // but it is a few hundred bytes a shard.)
            let entry = (&raw const *entries.get(p as usize)) as usize;
            prefetch_bytes(entry, size, 2);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    use super::*;

    fn key(hasher: &Hasher, i: u32) -> TorrentKey {
        let mut info_hash = [0; 20];
        info_hash[..4].copy_from_slice(&i.to_le_bytes());
        let info_hash = InfoHash(info_hash);
        let hash = hasher.hash_one(info_hash);
        TorrentKey { info_hash, hash }
    }

    /// The table against a plain map, over random inserts (some refused), removals and
    /// retains, growing to thousands of torrents and shrinking back several times: every
    /// removal moves the last torrent, and each must still be found at its new place.
    #[test]
    fn random_inserts_removals_and_retains_agree_with_a_simple_model() {
        let hasher = Hasher::default();
        let table = LockedTable::<u32>::new(hasher.clone());
        let mut model: HashMap<InfoHash, u32> = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut largest, mut smallest_after) = (0, usize::MAX);
        for step in 0..60_000u32 {
            let k = key(&hasher, rng.u32(..4000));
            // Prefetching must change nothing, in whatever state the table is.
            table.prefetch(k.hash);
            let mut guard = table.lock();
            guard.prefetch_entry(&k);
            // Phases of growing and of shrinking.
            let removals = if step / 10_000 % 2 == 0 { 1 } else { 6 };
            match rng.u32(..10) {
                n if n < removals => {
                    assert_eq!(guard.remove(&k), model.remove(&k.info_hash), "step {step}")
                }
                9 => {
                    let got = guard.get_or_insert(&k, || None).map(|v| *v);
                    assert_eq!(
                        got,
                        model.get(&k.info_hash).copied(),
                        "refused, step {step}"
                    );
                }
                _ => {
                    let got = *guard.get_or_insert(&k, || Some(step)).expect("made");
                    assert_eq!(
                        got,
                        *model.entry(k.info_hash).or_insert(step),
                        "step {step}"
                    );
                }
            }
            if rng.u32(..2000) == 0 {
                let third = rng.u32(..3);
                guard.retain(|v| *v % 3 != third);
                model.retain(|_, v| *v % 3 != third);
            }
            assert_eq!(guard.get(&k), model.get(&k.info_hash), "step {step}");
            assert_eq!(guard.len(), model.len(), "step {step}");
            largest = largest.max(model.len());
            if largest > 2000 {
                smallest_after = smallest_after.min(model.len());
            }
        }
        assert!(
            largest > 2000 && smallest_after < 500,
            "{largest} {smallest_after}"
        );
        let mut guard = table.lock();
        for (info_hash, v) in &model {
            let hash = hasher.hash_one(info_hash);
            let k = TorrentKey {
                info_hash: *info_hash,
                hash,
            };
            assert_eq!(guard.get_mut(&k).copied(), Some(*v));
        }
        let stored: HashMap<InfoHash, u32> = guard.entries().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(stored, model);
        assert_eq!(guard.values().count(), model.len());
    }

    /// A cleaning pass that empties the shard gives its memory back.
    #[test]
    fn a_retain_that_removes_most_torrents_gives_memory_back() {
        let hasher = Hasher::default();
        let table = LockedTable::<u32>::new(hasher.clone());
        let mut guard = table.lock();
        for i in 0..10_000 {
            guard.get_or_insert(&key(&hasher, i), || Some(i));
        }
        guard.retain(|v| *v < 100);
        assert_eq!(guard.len(), 100);
        assert_eq!(
            guard.torrents.entries.chunks.len(),
            100usize.div_ceil(CHUNK)
        );
        assert!(guard.torrents.entries.chunks.capacity() <= 2 * 2 + 4);
        for i in 0..10_000 {
            assert_eq!(guard.get(&key(&hasher, i)).is_some(), i < 100);
        }
    }
}
