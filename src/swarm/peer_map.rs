//! The peers of one torrent in one address family, in as few bytes as the hot path allows.
//!
//! Most torrents have a handful of peers, so memory per stored peer is decided by small
//! swarms: they are one exactly sized boxed slice of packed entries (31 bytes per IPv4 peer,
//! one allocation, no slack), searched linearly. Past [`SMALL_MAX`] peers a swarm switches to
//! a dense `Vec` of the same entries plus a keyed hash index, so a big swarm (where an
//! attacker chooses the addresses) never costs more than one hash lookup per announce.
//!
//! Either way the entries are partitioned: leechers first, then seeders. A seeder is sent
//! leechers only, and most announces come from seeders, so its window is then a slice of
//! leechers rather than a scan past every seeder (profiled: that scan was the largest part
//! of answering an announce in a seeded swarm). The map does not store where the seeders
//! begin; its owner keeps the seeder count, passes it in, and has it kept in step.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::bittorrent::{PeerId, ResponsePeer};

/// The largest swarm kept as a linear list. Measured over 10k torrents of 64 peers, an
/// announce took ~0.65 µs with lists (2 KiB each, contiguous, prefetched) and ~1.2 µs with
/// the same swarms indexed (the box, the index and the window are three more cache misses);
/// lists stayed ahead up to 128, but each join copies the list, and a scan must stay short
/// whatever addresses an attacker chooses.
pub(super) const SMALL_MAX: usize = 64;
/// A large swarm goes back to a list only well below [`SMALL_MAX`], so a swarm hovering at
/// the threshold does not rebuild its index on every join and leave.
pub(super) const SMALL_AGAIN: usize = SMALL_MAX / 2;

/// A new peer found the map at its maximum size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerMapFull;

/// (IP, announced port) as bytes: the peer id is the client's claim, the address is not.
/// Byte arrays keep entries at alignment 1, hence free of padding.
pub(super) trait PeerKey: Copy + Eq + Hash {
    fn socket_addr(self) -> SocketAddr;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct V4Key([u8; 6]);

impl V4Key {
    pub fn new(ip: Ipv4Addr, port: u16) -> Self {
        let mut key = [0; 6];
        key[..4].copy_from_slice(&ip.octets());
        key[4..].copy_from_slice(&port.to_be_bytes());
        V4Key(key)
    }
}

impl Hash for V4Key {
    // One word instead of a length prefix and six single bytes.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut word = [0; 8];
        word[..6].copy_from_slice(&self.0);
        state.write_u64(u64::from_le_bytes(word));
    }
}

impl PeerKey for V4Key {
    fn socket_addr(self) -> SocketAddr {
        let [a, b, c, d, p0, p1] = self.0;
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(a, b, c, d),
            u16::from_be_bytes([p0, p1]),
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct V6Key([u8; 18]);

impl V6Key {
    pub fn new(ip: Ipv6Addr, port: u16) -> Self {
        let mut key = [0; 18];
        key[..16].copy_from_slice(&ip.octets());
        key[16..].copy_from_slice(&port.to_be_bytes());
        V6Key(key)
    }
}

impl Hash for V6Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (ip, port) = self.0.split_at(16);
        state.write_u128(u128::from_le_bytes(ip.try_into().expect("16 bytes")));
        state.write_u16(u16::from_le_bytes(port.try_into().expect("2 bytes")));
    }
}

impl PeerKey for V6Key {
    fn socket_addr(self) -> SocketAddr {
        let (ip, port) = self.0.split_at(16);
        let ip: [u8; 16] = ip.try_into().expect("16 bytes");
        let port = u16::from_be_bytes(port.try_into().expect("2 bytes"));
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
    }
}

const SEEDER: u8 = 1;
/// This peer's `completed` was counted already.
const COMPLETED: u8 = 2;

#[derive(Clone, Copy)]
pub(super) struct Entry<K> {
    key: K,
    /// UNIX seconds; bytes rather than `u32` so the entry needs no alignment padding.
    expires_at: [u8; 4],
    flags: u8,
    peer_id: PeerId,
}

// The per-peer figure the memory benchmark is built on; a new field should be a decision.
const _: () = assert!(size_of::<Entry<V4Key>>() == 31);
const _: () = assert!(size_of::<Entry<V6Key>>() == 43);

impl<K: PeerKey> Entry<K> {
    fn new(key: K, peer_id: PeerId, seeder: bool, completed: bool, expires_at: u32) -> Self {
        Entry {
            key,
            expires_at: expires_at.to_ne_bytes(),
            flags: if seeder { SEEDER } else { 0 } | if completed { COMPLETED } else { 0 },
            peer_id,
        }
    }

    fn seeder(&self) -> bool {
        self.flags & SEEDER != 0
    }

    fn expires_at(&self) -> u32 {
        u32::from_ne_bytes(self.expires_at)
    }

    fn refresh(
        &mut self,
        peer_id: PeerId,
        seeder: bool,
        completed: bool,
        expires_at: u32,
    ) -> Refreshed {
        let was_completed = self.flags & COMPLETED != 0;
        let refreshed = Refreshed {
            was_seeder: self.seeder(),
            newly_completed: completed && !was_completed,
        };
        *self = Entry::new(
            self.key,
            peer_id,
            seeder,
            completed || was_completed,
            expires_at,
        );
        refreshed
    }
}

/// What an upsert changed, for the torrent's counters.
struct Refreshed {
    was_seeder: bool,
    newly_completed: bool,
}

pub(super) enum PeerMap<K> {
    /// Exactly `len` entries: each new peer reallocates, which is cheap at this size, and
    /// leaves no unused capacity in the most numerous allocation.
    Small(Box<[Entry<K>]>),
    Large(Box<Large<K>>),
}

/// Dense entries (a random window is a slice) and the position of each key in them.
pub(super) struct Large<K> {
    entries: Vec<Entry<K>>,
    index: HashMap<K, u32, foldhash::fast::RandomState>,
}

// The small case is the common one: a torrent pays 16 bytes for its IPv4 map.
const _: () = assert!(size_of::<PeerMap<V4Key>>() == 16);

impl<K> Default for PeerMap<K> {
    fn default() -> Self {
        PeerMap::Small(Box::default())
    }
}

impl<K: PeerKey> Large<K> {
    fn from_entries(small: Box<[Entry<K>]>, extra: usize) -> Self {
        let mut entries = small.into_vec();
        entries.reserve_exact(extra);
        let mut index = HashMap::with_capacity_and_hasher(
            entries.capacity(),
            foldhash::fast::RandomState::default(),
        );
        for (i, entry) in entries.iter().enumerate() {
            index.insert(entry.key, i as u32);
        }
        Large { entries, index }
    }
}

impl<K: PeerKey> PeerMap<K> {
    fn entries(&self) -> &[Entry<K>] {
        match self {
            PeerMap::Small(entries) => entries,
            PeerMap::Large(large) => &large.entries,
        }
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    #[cfg(test)]
    pub fn is_large(&self) -> bool {
        matches!(self, PeerMap::Large(_))
    }

    pub fn contains(&self, key: K) -> bool {
        match self {
            PeerMap::Small(entries) => entries.iter().any(|e| e.key == key),
            PeerMap::Large(large) => large.index.contains_key(&key),
        }
    }

    fn position(&self, key: K) -> Option<usize> {
        match self {
            PeerMap::Small(entries) => entries.iter().position(|e| e.key == key),
            PeerMap::Large(large) => large.index.get(&key).map(|&i| i as usize),
        }
    }

    /// Swaps two entries, keeping the index in step.
    fn swap(&mut self, i: usize, j: usize) {
        if i == j {
            return;
        }
        match self {
            PeerMap::Small(entries) => entries.swap(i, j),
            PeerMap::Large(large) => {
                large.entries.swap(i, j);
                for at in [i, j] {
                    let key = large.entries[at].key;
                    *large.index.get_mut(&key).expect("every entry is indexed") = at as u32;
                }
            }
        }
    }

    /// Appends an entry (a list past [`SMALL_MAX`] becomes indexed).
    fn push(&mut self, entry: Entry<K>) {
        match self {
            PeerMap::Small(entries) if entries.len() < SMALL_MAX => {
                let mut grown = std::mem::take(entries).into_vec();
                grown.reserve_exact(1);
                grown.push(entry);
                *entries = grown.into_boxed_slice();
            }
            PeerMap::Small(entries) => {
                let mut large = Large::from_entries(std::mem::take(entries), SMALL_MAX / 4);
                large.index.insert(entry.key, large.entries.len() as u32);
                large.entries.push(entry);
                *self = PeerMap::Large(Box::new(large));
            }
            PeerMap::Large(large) => {
                let len = large.entries.len();
                if len == large.entries.capacity() {
                    // Growing by a quarter keeps pushes amortised O(1) and wastes at most 20%
                    // of the entries, where doubling would waste up to half.
                    large.entries.reserve_exact((len / 4).max(1));
                }
                large.index.insert(entry.key, len as u32);
                large.entries.push(entry);
            }
        }
    }

    /// Removes the last entry (an indexed map stays indexed until [`Self::demote_if_small`]).
    fn pop(&mut self) {
        match self {
            PeerMap::Small(entries) => {
                let mut shrunk = std::mem::take(entries).into_vec();
                shrunk.pop();
                *entries = shrunk.into_boxed_slice();
            }
            PeerMap::Large(large) => {
                if let Some(removed) = large.entries.pop() {
                    large.index.remove(&removed.key);
                }
            }
        }
    }

    /// Removes the entry at `i`, keeping leechers before seeders: only entries at `i` or
    /// after it move, so a pass from the end to the start sees every entry once.
    fn remove_at(&mut self, i: usize, seeders: &mut u32) {
        let len = self.len();
        let first_seeder = len - *seeders as usize;
        if i < first_seeder {
            // The last leecher fills the hole, the last seeder fills the last leecher's place.
            self.swap(i, first_seeder - 1);
            self.swap(first_seeder - 1, len - 1);
        } else {
            self.swap(i, len - 1);
            *seeders -= 1;
        }
        self.pop();
    }

    /// Adds or refreshes a peer, keeping `seeders` (this map's seeder count) in step; returns
    /// whether this announce is the peer's first `completed`. `Err(PeerMapFull)` when the
    /// peer is new and the map already holds `max` peers.
    #[allow(clippy::too_many_arguments)]
    pub fn upsert(
        &mut self,
        seeders: &mut u32,
        key: K,
        peer_id: PeerId,
        seeder: bool,
        completed: bool,
        expires_at: u32,
        max: usize,
    ) -> Result<bool, PeerMapFull> {
        let len = self.len();
        let first_seeder = len - *seeders as usize;
        if let Some(i) = self.position(key) {
            let entries = self.entries_mut();
            let refreshed = entries[i].refresh(peer_id, seeder, completed, expires_at);
            match (refreshed.was_seeder, seeder) {
                (false, true) => {
                    // Becomes the first seeder.
                    self.swap(i, first_seeder - 1);
                    *seeders += 1;
                }
                (true, false) => {
                    // Becomes the last leecher.
                    self.swap(i, first_seeder);
                    *seeders -= 1;
                }
                _ => {}
            }
            return Ok(refreshed.newly_completed);
        }
        // Positions are u32: four billion peers of one torrent would not fit in memory.
        if len >= max || len >= u32::MAX as usize {
            return Err(PeerMapFull);
        }
        self.push(Entry::new(key, peer_id, seeder, completed, expires_at));
        if seeder {
            *seeders += 1;
        } else {
            self.swap(len, first_seeder);
        }
        Ok(completed)
    }

    fn entries_mut(&mut self) -> &mut [Entry<K>] {
        match self {
            PeerMap::Small(entries) => entries,
            PeerMap::Large(large) => &mut large.entries,
        }
    }

    /// Removes a peer, keeping `seeders` in step; returns whether it was stored.
    pub fn remove(&mut self, seeders: &mut u32, key: K) -> bool {
        let Some(i) = self.position(key) else {
            return false;
        };
        self.remove_at(i, seeders);
        self.demote_if_small();
        true
    }

    fn demote_if_small(&mut self) {
        if let PeerMap::Large(large) = self
            && large.entries.len() <= SMALL_AGAIN
        {
            let entries = std::mem::take(&mut large.entries);
            *self = PeerMap::Small(entries.into_boxed_slice());
        }
    }

    /// Appends up to `n` peers other than `exclude`, a window from a random position: much
    /// more cache-friendly than picking each peer at random, and as good for swarm health.
    /// `leechers_only` for a seeder's announce: seeders have nothing to give each other.
    /// `seeders` is this map's seeder count.
    pub fn select(
        &self,
        seeders: u32,
        exclude: Option<K>,
        n: usize,
        leechers_only: bool,
        out: &mut Vec<ResponsePeer>,
    ) {
        let entries = self.entries();
        let entries = if leechers_only {
            &entries[..entries.len() - seeders as usize]
        } else {
            entries
        };
        if entries.is_empty() || n == 0 {
            return;
        }
        let (after, before) = entries.split_at(fastrand::usize(..entries.len()));
        let window = before
            .iter()
            .chain(after)
            .filter(|e| Some(e.key) != exclude);
        out.extend(window.take(n).map(|entry| ResponsePeer {
            addr: entry.key.socket_addr(),
            peer_id: entry.peer_id,
        }));
    }

    /// Drops peers whose lifetime ended before `now`, keeping `seeders` in step, and gives
    /// back memory a shrunken swarm no longer needs; returns how many peers it dropped.
    pub fn expire(&mut self, seeders: &mut u32, now: u32) -> usize {
        let before = self.len();
        match self {
            PeerMap::Small(entries) => {
                if entries.iter().any(|e| e.expires_at() < now) {
                    // `retain` keeps the order, hence leechers before seeders.
                    let mut kept = std::mem::take(entries).into_vec();
                    kept.retain(|e| {
                        let gone = e.expires_at() < now;
                        *seeders -= u32::from(gone && e.seeder());
                        !gone
                    });
                    *entries = kept.into_boxed_slice();
                }
            }
            PeerMap::Large(_) => {
                // From the end: removal moves only entries already looked at, and touches the
                // index only for removed and moved peers.
                for i in (0..before).rev() {
                    if self.entries()[i].expires_at() < now {
                        self.remove_at(i, seeders);
                    }
                }
                if let PeerMap::Large(large) = self {
                    let len = large.entries.len();
                    if large.entries.capacity() - len > len / 2 {
                        large.entries.shrink_to(len + len / 4);
                    }
                    if large.index.capacity() > 4 * len {
                        large.index.shrink_to(len);
                    }
                }
                self.demote_if_small();
            }
        }
        before - self.len()
    }

    /// Leechers come before seeders, `seeders` counts the seeders, and an index (if any)
    /// knows where each entry is (for tests).
    #[cfg(test)]
    pub fn is_consistent(&self, seeders: u32) -> bool {
        let entries = self.entries();
        let Some(first_seeder) = entries.len().checked_sub(seeders as usize) else {
            return false;
        };
        let indexed = match self {
            PeerMap::Small(_) => true,
            PeerMap::Large(large) => {
                large.index.len() == entries.len()
                    && entries
                        .iter()
                        .enumerate()
                        .all(|(i, e)| large.index.get(&e.key) == Some(&(i as u32)))
            }
        };
        indexed
            && entries[..first_seeder].iter().all(|e| !e.seeder())
            && entries[first_seeder..].iter().all(|e| e.seeder())
    }
}
