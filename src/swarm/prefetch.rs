//! Cache-line prefetch hints, and the steps in which an announce's data is prefetched.
//!
//! An announce follows a chain of pointers (shard index, torrent, peer list, peer index, peer
//! entry), and with a million torrents every link is a cache miss. The engines receive
//! requests in batches, so each link can be asked for a few requests before it is needed: each
//! [`PrefetchStep`] reads only lines the step before it asked for (so it does not stall)
//! and asks for the lines one link further on. Engines run the steps a few requests apart
//! (`engine::prefetch_schedule`); the misses then overlap with other requests' work.

use hashbrown::HashTable;

/// One link of the chain, in the order engines run them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchStep {
    /// The control bytes and bucket of the torrent's position in its shard's index (no lock
    /// taken).
    Torrent,
    /// The torrent's entry in its shard's array: counts, and a one-peer swarm's peer.
    TorrentEntry,
    /// The torrent's peer list: a small swarm's whole list, a large swarm's header.
    PeerList,
    /// A large swarm's index lines for the announcing peer.
    PeerIndex,
    /// A large swarm's entry for the announcing peer.
    PeerEntry,
}

impl PrefetchStep {
    pub const ALL: [PrefetchStep; 5] = [
        PrefetchStep::Torrent,
        PrefetchStep::TorrentEntry,
        PrefetchStep::PeerList,
        PrefetchStep::PeerIndex,
        PrefetchStep::PeerEntry,
    ];
}

/// Where a `hashbrown::HashTable`'s buckets are, so that the lines a lookup will read can be
/// prefetched without the table (or its lock).
///
/// `hashbrown`'s API does not say where a key's bucket lives, but its layout is stable and
/// simple: buckets are stored downwards from the control bytes, which start right after
/// bucket 0, and a probe starts at `hash & mask`. Were the layout ever to change, prefetches
/// would touch the wrong lines and cost a few cycles: nothing reads through these addresses,
/// so correctness never depends on them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct BucketLayout {
    /// Address of bucket 0, 0 while unknown (no allocation, or no full bucket to find it by).
    pub bucket0: usize,
    /// Number of buckets minus one.
    pub mask: usize,
}

impl BucketLayout {
    /// From the address of the full bucket at `index` of `table`.
    pub fn at<T>(table: &HashTable<T>, index: usize, address: usize) -> Self {
        BucketLayout {
            bucket0: address + index * size_of::<T>(),
            mask: table.num_buckets() - 1,
        }
    }

    /// From `table`'s first full bucket; unknown when there is none.
    pub fn of<T>(table: &HashTable<T>) -> Self {
        match table.iter_buckets().next() {
            Some(index) => {
                let full = table.get_bucket(index).expect("a full bucket");
                BucketLayout::at(table, index, (&raw const *full) as usize)
            }
            None => BucketLayout::default(),
        }
    }

    /// The addresses of the control bytes and of the bucket where a probe for `hash` starts,
    /// in a table of `T` buckets; `None` while the layout is unknown.
    pub fn probe_start<T>(self, hash: u64) -> Option<(usize, usize)> {
        if self.bucket0 == 0 {
            return None;
        }
        let position = hash as usize & self.mask;
        let size = size_of::<T>();
        let control = self.bucket0 + size + position;
        let bucket = self.bucket0.wrapping_sub(position * size);
        Some((control, bucket))
    }
}

/// Asks the CPU for the line holding `address`.
#[inline(always)]
pub(super) fn prefetch_line(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: _mm_prefetch needs SSE, which every x86_64 CPU has. It never dereferences the
    // address for the program: a prefetch is a hint that does not fault, whatever the
    // address, so any usize is sound here.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Asks for every line of `bytes` bytes from `start`, at most `max_lines` of them.
#[inline]
pub(super) fn prefetch_bytes(start: usize, bytes: usize, max_lines: usize) {
    const LINE: usize = 64;
    if bytes == 0 {
        return;
    }
    let first = start & !(LINE - 1);
    let end = start + bytes;
    for line in (first..end).step_by(LINE).take(max_lines) {
        prefetch_line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout assumption holds for the `hashbrown` in use: in a sparse table, nearly every
    /// key sits in the bucket its probe starts at, and the control bytes follow bucket 0. A
    /// `hashbrown` upgrade that changed the layout would fail here, not only slow down.
    #[test]
    fn the_recorded_layout_points_at_the_buckets_keys_are_in() {
        let mut table: HashTable<u64> = HashTable::with_capacity(1024);
        assert_eq!(BucketLayout::of(&table), BucketLayout::default());
        let hash = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for k in 0..100u64 {
            table.insert_unique(hash(k), k, |&k| hash(k));
        }
        let layout = BucketLayout::of(&table);
        let mask = table.num_buckets() - 1;
        let at_home = (0..100u64)
            .filter(|&k| {
                let (control, bucket) = layout.probe_start::<u64>(hash(k)).expect("known");
                let found = table.find(hash(k), |&v| v == k).expect("inserted");
                assert_eq!(control, layout.bucket0 + 8 + (hash(k) as usize & mask));
                bucket == (&raw const *found) as usize
            })
            .count();
        assert!(
            at_home >= 90,
            "only {at_home} of 100 keys where their probe starts"
        );
    }
}
