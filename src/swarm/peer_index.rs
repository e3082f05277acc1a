//! A large swarm's index: where each peer's entry is in the swarm's dense entry list.
//!
//! The index stores only positions (4 bytes a bucket) and compares keys through the entries,
//! which the announce reads anyway. It records where its buckets are, like the torrent
//! table does (see `torrent_table`), so the lines an announce will need can be prefetched
//! before the announce is answered; nothing reads through the recorded addresses.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::peer_map::PeerKey;
use super::prefetch::prefetch_line;

pub(super) struct PeerIndex {
    positions: HashTable<u32>,
    /// Keyed: a large swarm's addresses are chosen by whoever announces into it.
    hasher: foldhash::fast::RandomState,
    /// Address of bucket 0 (buckets go downwards from there), 0 while unallocated.
    bucket0: usize,
    /// Number of buckets minus one.
    mask: usize,
}

impl PeerIndex {
    /// An index of `keys` (position = order), with room for `capacity` peers.
    pub fn new<K: PeerKey>(keys: impl Iterator<Item = K>, capacity: usize) -> Self {
        let mut index = PeerIndex {
            positions: HashTable::with_capacity(capacity),
            hasher: foldhash::fast::RandomState::default(),
            bucket0: 0,
            mask: 0,
        };
        let hasher = index.hasher.clone();
        let hashes: Vec<u64> = keys.map(|key| hasher.hash_one(key)).collect();
        for (position, &hash) in hashes.iter().enumerate() {
            // Room was made for all of them, so no rehash needs the keys again.
            index
                .positions
                .insert_unique(hash, position as u32, |&p| hashes[p as usize]);
        }
        index.note_layout();
        index
    }

    pub fn hash<K: PeerKey>(&self, key: K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The position of `key`, whose entry `key_at` gives for a position.
    pub fn find<K: PeerKey>(&self, key: K, key_at: impl Fn(u32) -> K) -> Option<u32> {
        self.positions
            .find(self.hash(key), |&p| key_at(p) == key)
            .copied()
    }

    /// Indexes `key` at `position`; `key_at` gives the key of every indexed position (the
    /// table may grow and hash them all again).
    pub fn insert<K: PeerKey>(&mut self, key: K, position: u32, key_at: impl Fn(u32) -> K) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(key);
        let grows = self.positions.len() == self.positions.capacity();
        self.positions
            .insert_unique(hash, position, |&p| hasher.hash_one(key_at(p)));
        if grows || self.bucket0 == 0 {
            self.note_layout();
        }
    }

    /// Forgets `key`, indexed at `position`: the comparison is by position, so the entry may
    /// already hold another peer.
    pub fn remove<K: PeerKey>(&mut self, key: K, position: u32) {
        if let Ok(found) = self
            .positions
            .find_entry(self.hash(key), |&p| p == position)
        {
            found.remove();
        }
    }

    /// `key`'s entry moved from `from` to `to`.
    pub fn moved<K: PeerKey>(&mut self, key: K, from: u32, to: u32) {
        if let Some(p) = self.positions.find_mut(self.hash(key), |&p| p == from) {
            *p = to;
        }
    }

    /// Gives memory back when far more buckets than peers are left.
    pub fn shrink<K: PeerKey>(&mut self, len: usize, key_at: impl Fn(u32) -> K) {
        if self.positions.capacity() > 4 * len {
            let hasher = &self.hasher;
            self.positions
                .shrink_to(len, |&p| hasher.hash_one(key_at(p)));
            self.note_layout();
        }
    }

    /// Asks for the control bytes and bucket where `key`'s position most likely is.
    pub fn prefetch_slot<K: PeerKey>(&self, key: K) {
        if self.bucket0 == 0 {
            return;
        }
        let position = self.hash(key) as usize & self.mask;
        let size = size_of::<u32>();
        // Control bytes start right after bucket 0; buckets go downwards.
        prefetch_line(self.bucket0 + size + position);
        prefetch_line(self.bucket0.wrapping_sub(position * size));
    }

    /// Calls `prefetch` with the first position whose hash tag matches `key`'s, reading only
    /// the lines [`Self::prefetch_slot`] asked for (no entry is compared).
    pub fn prefetch_entry<K: PeerKey>(&self, key: K, prefetch: impl Fn(u32)) {
        self.positions.find(self.hash(key), |&p| {
            prefetch(p);
            true
        });
    }

    /// Records where bucket 0 is, from any full bucket.
    fn note_layout(&mut self) {
        self.bucket0 = 0;
        if let Some(index) = self.positions.iter_buckets().next() {
            let full = self.positions.get_bucket(index).expect("a full bucket");
            self.bucket0 = (&raw const *full) as usize + index * size_of::<u32>();
            self.mask = self.positions.num_buckets() - 1;
        }
    }
}
