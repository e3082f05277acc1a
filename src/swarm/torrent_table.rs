//! One shard's torrents: a hash table keyed by info hash that can be prefetched without its lock.
//!
//! With a million torrents the table is far larger than the CPU caches, and finding a torrent
//! costs two cache misses (the control bytes, then the bucket): profiled, over half of an
//! announce's time in the store. The engines receive requests in batches, so the store can
//! ask for those lines a few requests before it needs them ([`LockedTable::prefetch`]): the
//! misses then overlap with other work instead of stalling it.
//!
//! A prefetch has to know where a key's bucket lives, so the table records its
//! [`BucketLayout`] under the lock, whenever it may have moved, in atomics a prefetch reads
//! without the lock.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

use super::prefetch::{BucketLayout, prefetch_line};
use crate::bittorrent::InfoHash;

type Bucket<T> = (InfoHash, T);

/// A `Mutex<HashTable>` plus where its buckets are, for lock-free prefetching.
pub(super) struct LockedTable<T> {
    buckets: Mutex<HashTable<Bucket<T>>>,
    /// Address of bucket 0 (buckets go downwards from there), 0 while unallocated.
    bucket0: AtomicUsize,
    /// Number of buckets minus one.
    mask: AtomicUsize,
}

impl<T> Default for LockedTable<T> {
    fn default() -> Self {
        LockedTable {
            buckets: Mutex::new(HashTable::new()),
            bucket0: AtomicUsize::new(0),
            mask: AtomicUsize::new(0),
        }
    }
}

/// The hasher all shards share (info hashes are chosen by clients, so it is keyed).
pub(super) type Hasher = foldhash::fast::RandomState;

impl<T> LockedTable<T> {
    pub fn lock<'a>(&'a self, hasher: &'a Hasher) -> TableGuard<'a, T> {
        TableGuard {
            buckets: self.buckets.lock(),
            hasher,
            layout: self,
        }
    }

    /// The guard, unless another thread holds the lock (prefetching never waits for one).
    pub fn try_lock<'a>(&'a self, hasher: &'a Hasher) -> Option<TableGuard<'a, T>> {
        Some(TableGuard {
            buckets: self.buckets.try_lock()?,
            hasher,
            layout: self,
        })
    }

    /// Asks the CPU for the lines where `key`'s control bytes and bucket most likely are.
    pub fn prefetch(&self, hasher: &Hasher, key: &InfoHash) {
        let layout = BucketLayout {
            bucket0: self.bucket0.load(Ordering::Relaxed),
            mask: self.mask.load(Ordering::Relaxed),
        };
        let Some((control, bucket)) = layout.probe_start::<Bucket<T>>(hasher.hash_one(key)) else {
            return;
        };
        let size = size_of::<Bucket<T>>();
        // The key is in the probe's first group (16 control bytes) unless the table is
        // crowded, most often at its first bucket or the next one down.
        for address in [
            control,
            bucket,
            bucket + size - 1,
            bucket.wrapping_sub(size),
        ] {
            prefetch_line(address);
        }
    }

    /// Records where the buckets are.
    fn note_layout(&self, layout: BucketLayout) {
        self.bucket0.store(layout.bucket0, Ordering::Relaxed);
        self.mask.store(layout.mask, Ordering::Relaxed);
    }
}

/// The locked table; records the bucket layout for prefetching whenever it may have moved.
pub(super) struct TableGuard<'a, T> {
    buckets: MutexGuard<'a, HashTable<Bucket<T>>>,
    hasher: &'a Hasher,
    layout: &'a LockedTable<T>,
}

impl<T> TableGuard<'_, T> {
    fn hash(&self, key: &InfoHash) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn get(&self, key: &InfoHash) -> Option<&T> {
        self.buckets
            .find(self.hash(key), |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &InfoHash) -> Option<&mut T> {
        let hash = self.hash(key);
        self.buckets
            .find_mut(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The value for `key`; when there is none, a new one from `make` (which may refuse).
    pub fn get_or_insert(
        &mut self,
        key: InfoHash,
        make: impl FnOnce() -> Option<T>,
    ) -> Option<&mut T> {
        let hasher = self.hasher;
        let entry = self.buckets.entry(
            hasher.hash_one(key),
            |(k, _)| *k == key,
            |(k, _)| hasher.hash_one(k),
        );
        let vacant = match entry {
            hashbrown::hash_table::Entry::Occupied(found) => return Some(&mut found.into_mut().1),
            hashbrown::hash_table::Entry::Vacant(vacant) => vacant,
        };
        // (`entry` may already have grown the table when `make` refuses: the recorded layout
        // is then stale until the next insert, which costs wasted prefetches, nothing more.)
        let inserted = vacant.insert((key, make()?));
        // An insert is where the table grows: note where its buckets are now.
        let index = inserted.bucket_index();
        let address = (&raw const *inserted.get()) as usize;
        let buckets = inserted.into_table();
        self.layout
            .note_layout(BucketLayout::at(buckets, index, address));
        Some(&mut buckets.get_bucket_mut(index).expect("just inserted").1)
    }

    pub fn remove(&mut self, key: &InfoHash) -> Option<T> {
        let hash = self.hash(key);
        let entry = self.buckets.find_entry(hash, |(k, _)| k == key).ok()?;
        Some(entry.remove().0.1)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn entries(&self) -> impl Iterator<Item = (&InfoHash, &T)> {
        self.buckets.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.buckets.iter().map(|(_, v)| v)
    }

    /// Keeps the entries `keep` says yes to, then gives memory back if the table is mostly
    /// empty.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        let hasher = self.hasher;
        let buckets = &mut *self.buckets;
        buckets.retain(|(_, v)| keep(v));
        if buckets.capacity() > 64 && buckets.len() < buckets.capacity() / 4 {
            buckets.shrink_to_fit(|(k, _)| hasher.hash_one(k));
            // The table moved: find bucket 0 again from any full bucket.
            self.layout.note_layout(BucketLayout::of(buckets));
        }
    }
}
