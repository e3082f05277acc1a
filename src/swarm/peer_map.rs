//! The peers of one torrent in one address family, in as few bytes as the hot path allows.
//!
//! Most torrents have a handful of peers, so memory per stored peer is decided by small
//! swarms: they are one exactly sized boxed slice of packed entries (31 bytes per IPv4 peer,
//! one allocation, no slack), searched linearly. Past [`SMALL_MAX`] peers a swarm switches to
//! a dense `Vec` of the same entries plus a keyed hash index, so a big swarm (where an
//! attacker chooses the addresses) never costs more than one hash lookup per announce.

use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::peer_index::PeerIndex;
use super::prefetch::{PrefetchStep, prefetch_bytes};
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
    ) -> Upserted {
        let was_completed = self.flags & COMPLETED != 0;
        let upserted = Upserted {
            was_seeder: Some(self.seeder()),
            newly_completed: completed && !was_completed,
        };
        *self = Entry::new(
            self.key,
            peer_id,
            seeder,
            completed || was_completed,
            expires_at,
        );
        upserted
    }
}

/// What an upsert changed, for the torrent's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Upserted {
    /// The peer's previous seeder state; `None` for a new peer.
    pub was_seeder: Option<bool>,
    /// This announce is the peer's first `completed`.
    pub newly_completed: bool,
}

/// What an expiry pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Expired {
    pub peers: usize,
    pub seeders: u32,
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
    index: PeerIndex,
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
        let index = PeerIndex::new(entries.iter().map(|e| e.key), entries.capacity());
        Large { entries, index }
    }

    fn position(&self, key: K) -> Option<usize> {
        let entries = &self.entries;
        let found = self.index.find(key, |p| entries[p as usize].key);
        found.map(|p| p as usize)
    }

    fn push(&mut self, entry: Entry<K>) {
        let position = self.entries.len() as u32;
        self.entries.push(entry);
        let entries = &self.entries;
        self.index
            .insert(entry.key, position, |p| entries[p as usize].key);
    }

    /// Removes the entry at `i`; the last entry takes its place (and its index is updated).
    fn swap_remove(&mut self, i: usize) -> Entry<K> {
        let last = self.entries.len() - 1;
        self.index.remove(self.entries[i].key, i as u32);
        if i != last {
            self.index
                .moved(self.entries[last].key, last as u32, i as u32);
        }
        self.entries.swap_remove(i)
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
            PeerMap::Large(large) => large.position(key).is_some(),
        }
    }

    /// One step of prefetching an announce by `key` (see [`PrefetchStep`]).
    pub fn prefetch(&self, step: PrefetchStep, key: K) {
        match (self, step) {
            // An announce scans a small list whole, looking for its own entry.
            (PeerMap::Small(entries), PrefetchStep::PeerList) => prefetch_bytes(
                entries.as_ptr() as usize,
                size_of_val::<[Entry<K>]>(entries),
                usize::MAX,
            ),
            (PeerMap::Large(large), PrefetchStep::PeerList) => {
                prefetch_bytes((&raw const **large) as usize, size_of::<Large<K>>(), 2)
            }
            (PeerMap::Large(large), PrefetchStep::PeerIndex) => large.index.prefetch_slot(key),
            (PeerMap::Large(large), PrefetchStep::PeerEntry) => {
                let entries = large.entries.as_ptr() as usize;
                let size = size_of::<Entry<K>>();
                large.index.prefetch_entry(key, |p| {
                    prefetch_bytes(entries + p as usize * size, size, 2);
                });
            }
            _ => {}
        }
    }

    /// Adds or refreshes a peer; `Err(PeerMapFull)` when the peer is new and the map already
    /// holds `max` peers.
    pub fn upsert(
        &mut self,
        key: K,
        peer_id: PeerId,
        seeder: bool,
        completed: bool,
        expires_at: u32,
        max: usize,
    ) -> Result<Upserted, PeerMapFull> {
        let new = Upserted {
            was_seeder: None,
            newly_completed: completed,
        };
        match self {
            PeerMap::Small(entries) => {
                if let Some(entry) = entries.iter_mut().find(|e| e.key == key) {
                    return Ok(entry.refresh(peer_id, seeder, completed, expires_at));
                }
                if entries.len() >= max {
                    return Err(PeerMapFull);
                }
                let entry = Entry::new(key, peer_id, seeder, completed, expires_at);
                if entries.len() < SMALL_MAX {
                    let mut grown = std::mem::take(entries).into_vec();
                    grown.reserve_exact(1);
                    grown.push(entry);
                    *entries = grown.into_boxed_slice();
                } else {
                    let mut large = Large::from_entries(std::mem::take(entries), SMALL_MAX / 4);
                    large.push(entry);
                    *self = PeerMap::Large(Box::new(large));
                }
                Ok(new)
            }
            PeerMap::Large(large) => {
                if let Some(i) = large.position(key) {
                    let entry = &mut large.entries[i];
                    return Ok(entry.refresh(peer_id, seeder, completed, expires_at));
                }
                let len = large.entries.len();
                // Positions are u32: four billion peers of one torrent would not fit in memory.
                if len >= max || len >= u32::MAX as usize {
                    return Err(PeerMapFull);
                }
                if len == large.entries.capacity() {
                    // Growing by a quarter keeps pushes amortised O(1) and wastes at most 20%
                    // of the entries, where doubling would waste up to half.
                    large.entries.reserve_exact((len / 4).max(1));
                }
                large.push(Entry::new(key, peer_id, seeder, completed, expires_at));
                Ok(new)
            }
        }
    }

    /// Removes a peer; returns whether it was a seeder, `None` when it was not stored.
    pub fn remove(&mut self, key: K) -> Option<bool> {
        match self {
            PeerMap::Small(entries) => {
                let i = entries.iter().position(|e| e.key == key)?;
                let mut shrunk = std::mem::take(entries).into_vec();
                let removed = shrunk.swap_remove(i);
                *entries = shrunk.into_boxed_slice();
                Some(removed.seeder())
            }
            PeerMap::Large(large) => {
                let i = large.position(key)?;
                let removed = large.swap_remove(i);
                self.demote_if_small();
                Some(removed.seeder())
            }
        }
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
    pub fn select(
        &self,
        exclude: Option<K>,
        n: usize,
        leechers_only: bool,
        out: &mut Vec<ResponsePeer>,
    ) {
        let entries = self.entries();
        if entries.is_empty() || n == 0 {
            return;
        }
        let (after, before) = entries.split_at(fastrand::usize(..entries.len()));
        let mut taken = 0;
        for entry in before.iter().chain(after) {
            if Some(entry.key) == exclude || (leechers_only && entry.seeder()) {
                continue;
            }
            out.push(ResponsePeer {
                addr: entry.key.socket_addr(),
                peer_id: entry.peer_id,
            });
            taken += 1;
            if taken == n {
                break;
            }
        }
    }

    /// Drops peers whose lifetime ended before `now`, and gives back memory a shrunken swarm
    /// no longer needs.
    pub fn expire(&mut self, now: u32) -> Expired {
        let mut expired = Expired::default();
        let mut count = |entry: &Entry<K>| {
            let gone = entry.expires_at() < now;
            if gone {
                expired.peers += 1;
                expired.seeders += u32::from(entry.seeder());
            }
            gone
        };
        match self {
            PeerMap::Small(entries) => {
                if entries.iter().any(|e| e.expires_at() < now) {
                    let mut kept = std::mem::take(entries).into_vec();
                    kept.retain(|e| !count(e));
                    *entries = kept.into_boxed_slice();
                }
            }
            PeerMap::Large(large) => {
                // Swap-removal touches the index only for removed and moved peers, so a pass
                // where few expire costs a scan and not a rebuild.
                let mut i = 0;
                while i < large.entries.len() {
                    if count(&large.entries[i]) {
                        large.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
                let len = large.entries.len();
                if large.entries.capacity() - len > len / 2 {
                    large.entries.shrink_to(len + len / 4);
                }
                let entries = &large.entries;
                large.index.shrink(len, |p| entries[p as usize].key);
                self.demote_if_small();
            }
        }
        expired
    }
}
