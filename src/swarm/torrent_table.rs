//! One shard's torrents: a hash table keyed by info hash that can be prefetched without its lock.
//!
//! With a million torrents the table is far larger than the CPU caches, and finding a torrent
//! costs two cache misses (the control bytes, then the bucket): profiled, over half of an
//! announce's time in the store. The engines receive requests in batches, so the store can
//! ask for those lines a few requests before it needs them ([`LockedTable::prefetch`]): the
//! misses then overlap with other work instead of stalling it.
//!
//! A prefetch has to know where a key's bucket lives, which `hashbrown`'s API does not say.
//! Its layout is stable and simple (buckets stored downwards from the control bytes, a probe
//! starting at `hash & mask`), so the table records, under the lock, where bucket 0 is and
//! how many buckets there are, in atomics a prefetch reads without the lock. Were the layout
//! ever to change, prefetches would touch the wrong lines and cost a few cycles: nothing reads
//! through these addresses, so correctness never depends on them.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

use crate::bittorrent::InfoHash;

type Bucket<T> = (InfoHash, T);

/// A `Mutex<HashTable>` plus where its buckets are, for lock-free prefetching.
pub(super) struct LockedTable<T> {
    table: Mutex<Table<T>>,
    /// Address of bucket 0 (buckets go downwards from there), 0 while unallocated.
    bucket0: AtomicUsize,
    /// Number of buckets minus one.
    mask: AtomicUsize,
}

/// The table proper, reached through [`LockedTable::lock`].
pub(super) struct Table<T> {
    buckets: HashTable<Bucket<T>>,
}

impl<T> Default for LockedTable<T> {
    fn default() -> Self {
        LockedTable {
            table: Mutex::new(Table {
                buckets: HashTable::new(),
            }),
            bucket0: AtomicUsize::new(0),
            mask: AtomicUsize::new(0),
        }
    }
}

/// The hasher all shards share (info hashes are chosen by clients, so it is keyed).
pub(super) type Hasher = foldhash::fast::RandomState;

fn hash(hasher: &Hasher, key: &InfoHash) -> u64 {
    hasher.hash_one(key)
}

impl<T> LockedTable<T> {
    pub fn lock(&self) -> TableGuard<'_, T> {
        TableGuard {
            table: self.table.lock(),
            layout: self,
        }
    }

    /// Asks the CPU for the lines where `key`'s control bytes and bucket most likely are.
    pub fn prefetch(&self, hasher: &Hasher, key: &InfoHash) {
        let bucket0 = self.bucket0.load(Ordering::Relaxed);
        if bucket0 == 0 {
            return;
        }
        let mask = self.mask.load(Ordering::Relaxed);
        let position = hash(hasher, key) as usize & mask;
        let size = size_of::<Bucket<T>>();
        // Control bytes start right after bucket 0; the key is in the probe's first group
        // (16 control bytes) unless the table is crowded, most often at its first bucket or
        // the next one down.
        let control = bucket0 + size + position;
        let bucket = bucket0.wrapping_sub(position * size);
        for address in [
            control,
            bucket,
            bucket + size - 1,
            bucket.wrapping_sub(size),
        ] {
            prefetch(address);
        }
    }
}

#[inline(always)]
fn prefetch(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// The locked table; records the bucket layout for prefetching whenever it may have moved.
pub(super) struct TableGuard<'a, T> {
    table: MutexGuard<'a, Table<T>>,
    layout: &'a LockedTable<T>,
}

impl<T> TableGuard<'_, T> {
    pub fn get(&self, hasher: &Hasher, key: &InfoHash) -> Option<&T> {
        self.table
            .buckets
            .find(hash(hasher, key), |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, hasher: &Hasher, key: &InfoHash) -> Option<&mut T> {
        self.table
            .buckets
            .find_mut(hash(hasher, key), |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The value for `key`; when there is none, a new one from `make` (which may refuse).
    pub fn get_or_insert(
        &mut self,
        hasher: &Hasher,
        key: InfoHash,
        make: impl FnOnce() -> Option<T>,
    ) -> Option<&mut T> {
        let entry = self.table.buckets.entry(
            hash(hasher, &key),
            |(k, _)| *k == key,
            |(k, _)| hash(hasher, k),
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
            .bucket0
            .store(address + index * size_of::<Bucket<T>>(), Ordering::Relaxed);
        self.layout
            .mask
            .store(buckets.num_buckets() - 1, Ordering::Relaxed);
        Some(&mut buckets.get_bucket_mut(index).expect("just inserted").1)
    }

    pub fn remove(&mut self, hasher: &Hasher, key: &InfoHash) -> Option<T> {
        let entry = self
            .table
            .buckets
            .find_entry(hash(hasher, key), |(k, _)| k == key)
            .ok()?;
        Some(entry.remove().0.1)
    }

    pub fn len(&self) -> usize {
        self.table.buckets.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.table.buckets.iter().map(|(_, v)| v)
    }

    /// Keeps the entries `keep` says yes to, then gives memory back if the table is mostly
    /// empty.
    pub fn retain(&mut self, hasher: &Hasher, mut keep: impl FnMut(&mut T) -> bool) {
        let buckets = &mut self.table.buckets;
        buckets.retain(|(_, v)| keep(v));
        if buckets.capacity() > 64 && buckets.len() < buckets.capacity() / 4 {
            buckets.shrink_to_fit(|(k, _)| hash(hasher, k));
            self.record_layout();
        }
    }

    /// Finds bucket 0's address from any full bucket (after a shrink moved the table).
    fn record_layout(&self) {
        let buckets = &self.table.buckets;
        let (bucket0, mask) = match buckets.iter_buckets().next() {
            Some(index) => {
                let full = buckets.get_bucket(index).expect("a full bucket");
                let address = (&raw const *full) as usize;
                (
                    address + index * size_of::<Bucket<T>>(),
                    buckets.num_buckets() - 1,
                )
            }
            None => (0, 0),
        };
        self.layout.bucket0.store(bucket0, Ordering::Relaxed);
        self.layout.mask.store(mask, Ordering::Relaxed);
    }
}
