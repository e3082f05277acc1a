//! Where each entry of a dense list is, by key: a large swarm's peers, a shard's torrents.
//!
//! The index stores only positions (4 bytes a bucket) and compares keys through the entries,
//! which a lookup reads anyway; the entries themselves sit in one array without gaps, so
//! memory follows what is stored rather than a hash table's load factor. It records its
//! [`BucketLayout`] so the lines a lookup will need can be prefetched before the lookup;
//! nothing reads through the recorded addresses.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use super::prefetch::{BucketLayout, prefetch_line};

/// The keyed hasher (keys are chosen by clients: addresses announced into a swarm, info
/// hashes).
pub(super) type Hasher = foldhash::fast::RandomState;

pub(super) struct PositionIndex {
    positions: HashTable<u32>,
    hasher: Hasher,
    /// Recorded whenever the table may have moved.
    layout: BucketLayout,
}

impl PositionIndex {
    /// An empty index hashing with `hasher`.
    pub fn with_hasher(hasher: Hasher) -> Self {
        PositionIndex {
            positions: HashTable::new(),
            hasher,
            layout: BucketLayout::default(),
        }
    }

    /// An index of `keys` (position = order), with room for `capacity` entries.
    pub fn new<K: Hash>(keys: impl Iterator<Item = K>, capacity: usize) -> Self {
        let mut index = PositionIndex {
            positions: HashTable::with_capacity(capacity),
            hasher: Hasher::default(),
            layout: BucketLayout::default(),
        };
        let hasher = index.hasher.clone();
        let hashes: Vec<u64> = keys.map(|key| hasher.hash_one(key)).collect();
        for (position, &hash) in hashes.iter().enumerate() {
            // Room was made for all of them, so no rehash needs the keys again.
            index
                .positions
                .insert_unique(hash, position as u32, |&p| hashes[p as usize]);
        }
        index.layout = BucketLayout::of(&index.positions);
        index
    }

    pub fn hash<K: Hash>(&self, key: K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Where the buckets are (for prefetching without the index).
    pub fn layout(&self) -> BucketLayout {
        self.layout
    }

    /// The position of `key`, whose entry `key_at` gives for a position.
    pub fn find<K: Hash + Eq + Copy>(&self, key: K, key_at: impl Fn(u32) -> K) -> Option<u32> {
        self.find_hashed(self.hash(key), key, key_at)
    }

    /// [`Self::find`] for a caller that has `key`'s hash by this index's hasher already (the
    /// store hashes an info hash once to pick its shard).
    pub fn find_hashed<K: Eq + Copy>(
        &self,
        hash: u64,
        key: K,
        key_at: impl Fn(u32) -> K,
    ) -> Option<u32> {
        self.positions.find(hash, |&p| key_at(p) == key).copied()
    }

    /// Indexes `key` at `position`; `key_at` gives the key of every indexed position (the
    /// table may grow and hash them all again).
    pub fn insert<K: Hash>(&mut self, key: K, position: u32, key_at: impl Fn(u32) -> K) {
        self.insert_hashed(self.hash(key), position, key_at);
    }

    /// [`Self::insert`] with the key's hash (see [`Self::find_hashed`]).
    pub fn insert_hashed<K: Hash>(&mut self, hash: u64, position: u32, key_at: impl Fn(u32) -> K) {
        let hasher = &self.hasher;
        let grows = self.positions.len() == self.positions.capacity();
        self.positions
            .insert_unique(hash, position, |&p| hasher.hash_one(key_at(p)));
        if grows || self.layout.bucket0 == 0 {
            self.layout = BucketLayout::of(&self.positions);
        }
    }

    /// Forgets `key`, indexed at `position`: the comparison is by position, so the entry may
    /// already hold another key.
    pub fn remove<K: Hash>(&mut self, key: K, position: u32) {
        if let Ok(found) = self
            .positions
            .find_entry(self.hash(key), |&p| p == position)
        {
            found.remove();
        }
    }

    /// `key`'s entry moved from `from` to `to`.
    pub fn moved<K: Hash>(&mut self, key: K, from: u32, to: u32) {
        if let Some(p) = self.positions.find_mut(self.hash(key), |&p| p == from) {
            *p = to;
        }
    }

    /// The entries of `a` (at `at_a`) and `b` (at `at_b`) traded places. Both buckets are
    /// found before either changes: for a moment two buckets would hold the same position,
    /// and a search by position could take the wrong one.
    pub fn swapped<K: Hash>(&mut self, a: K, at_a: u32, b: K, at_b: u32) {
        let bucket_a = self
            .positions
            .find_bucket_index(self.hash(a), |&p| p == at_a);
        let bucket_b = self
            .positions
            .find_bucket_index(self.hash(b), |&p| p == at_b);
        if let (Some(bucket_a), Some(bucket_b)) = (bucket_a, bucket_b) {
            for (bucket, position) in [(bucket_a, at_b), (bucket_b, at_a)] {
                if let Some(p) = self.positions.get_bucket_mut(bucket) {
                    *p = position;
                }
            }
        }
    }

    /// Gives memory back when far more buckets than entries are left.
    pub fn shrink<K: Hash>(&mut self, len: usize, key_at: impl Fn(u32) -> K) {
        if self.positions.capacity() > 4 * len {
            let hasher = &self.hasher;
            self.positions
                .shrink_to(len, |&p| hasher.hash_one(key_at(p)));
            self.layout = BucketLayout::of(&self.positions);
        }
    }

    /// Asks for the control bytes and bucket where `key`'s position most likely is.
    pub fn prefetch_slot<K: Hash>(&self, key: K) {
        if let Some((control, bucket)) = self.layout.probe_start::<u32>(self.hash(key)) {
            prefetch_line(control);
            prefetch_line(bucket);
        }
    }

    /// Calls `prefetch` with the first position whose hash tag matches `key`'s, reading only
    /// the lines [`Self::prefetch_slot`] asked for (no entry is compared).
    pub fn prefetch_entry<K: Hash>(&self, key: K, prefetch: impl Fn(u32)) {
        self.prefetch_entry_hashed(self.hash(key), prefetch);
    }

    /// [`Self::prefetch_entry`] with the key's hash (see [`Self::find_hashed`]).
    pub fn prefetch_entry_hashed(&self, hash: u64, prefetch: impl Fn(u32)) {
        self.positions.find(hash, |&p| {
            prefetch(p);
            true
        });
    }
}
