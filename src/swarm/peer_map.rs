//! The peers of one torrent in one address family, in as few bytes as the hot path allows.
//!
//! Most torrents have a handful of peers, so memory per stored peer is decided by small
//! swarms: a lone peer is stored inline, and a few are one exactly sized boxed slice of
//! packed entries (31 bytes per IPv4 peer, one allocation, no slack), searched linearly. Past [`SMALL_MAX`] peers a swarm switches to
//! dense arrays plus a keyed hash index, so a big swarm (where an attacker chooses the
//! addresses) never costs more than one hash lookup per announce. The arrays keep leechers
//! before seeders, so a seeder (sent leechers only) reads a window of exactly the peers it
//! gets, and they keep what a window reads (address and flags) apart from the rest (expiry
//! and peer id): 7 bytes a peer instead of 31.

use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::position_index::PositionIndex;
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
/// Lines of a large swarm's reply window asked for ahead of the announce: 36 IPv4 peers, 12
/// IPv6 ones.
const WINDOW_PREFETCH_LINES: usize = 4;

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
/// The refresh epoch (2 bits) in which other nodes last heard of this peer (replication).
const EPOCH_SHIFT: u8 = 2;
const EPOCH: u8 = 3 << EPOCH_SHIFT;
/// Stored from another node's change: this node does not tell others about it.
const REMOTE: u8 = 16;

/// Where an upsert comes from, for replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// An announce to this node, replication off.
    Local,
    /// An announce to this node, replication on; `epoch` is the current refresh epoch (its
    /// two low bits are kept).
    Replicated { epoch: u8 },
    /// Another node's change, applied.
    Remote,
}

fn flags(seeder: bool, completed: bool, origin: Origin) -> u8 {
    let state = (if seeder { SEEDER } else { 0 }) | if completed { COMPLETED } else { 0 };
    match origin {
        Origin::Local => state,
        Origin::Replicated { epoch } => state | ((epoch << EPOCH_SHIFT) & EPOCH),
        Origin::Remote => state | REMOTE,
    }
}

/// A stored peer's flags after it announced again, and what that changed.
fn reannounced(old: u8, seeder: bool, completed: bool, origin: Origin) -> (u8, Upserted) {
    let was_completed = old & COMPLETED != 0;
    let was_seeder = old & SEEDER != 0;
    let newly_completed = completed && !was_completed;
    let new = flags(seeder, completed || was_completed, origin);
    // Other nodes hear of what changes what they would answer, and of a peer whose copy there
    // would expire before its next announce: once per refresh epoch.
    let publish = matches!(origin, Origin::Replicated { .. })
        && (old & REMOTE != 0
            || was_seeder != seeder
            || newly_completed
            || old & EPOCH != new & EPOCH);
    let upserted = Upserted {
        was_seeder: Some(was_seeder),
        newly_completed,
        publish,
    };
    (new, upserted)
}

/// A small swarm's peer, all in one place.
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
    fn new(key: K, peer_id: PeerId, flags: u8, expires_at: u32) -> Self {
        Entry {
            key,
            expires_at: expires_at.to_ne_bytes(),
            flags,
            peer_id,
        }
    }

    /// Told to other nodes: announced here, not copied from another node.
    fn is_local(&self) -> bool {
        self.flags & REMOTE == 0
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
        origin: Origin,
    ) -> Upserted {
        let (flags, upserted) = reannounced(self.flags, seeder, completed, origin);
        (self.flags, self.peer_id) = (flags, peer_id);
        self.expires_at = expires_at.to_ne_bytes();
        upserted
    }

    fn split(self) -> (Hot<K>, Cold) {
        let hot = Hot {
            key: self.key,
            flags: self.flags,
        };
        let cold = Cold {
            expires_at: self.expires_at,
            peer_id: self.peer_id,
        };
        (hot, cold)
    }

    fn join(hot: Hot<K>, cold: Cold) -> Self {
        Entry {
            key: hot.key,
            expires_at: cold.expires_at,
            flags: hot.flags,
            peer_id: cold.peer_id,
        }
    }
}

/// The part of a large swarm's peer that every announce's scan reads: 7 bytes for IPv4, so
/// a seeder's search for leechers through a window of mostly seeders reads a quarter of the
/// lines whole entries would take.
#[derive(Clone, Copy)]
struct Hot<K> {
    key: K,
    flags: u8,
}

/// The rest of a large swarm's peer, at the same position: read by expiry, by the peer's
/// own refresh and by replies that carry peer ids.
#[derive(Clone, Copy)]
struct Cold {
    expires_at: [u8; 4],
    peer_id: PeerId,
}

/// What an upsert changed, for the torrent's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Upserted {
    /// The peer's previous seeder state; `None` for a new peer.
    pub was_seeder: Option<bool>,
    /// This announce is the peer's first `completed`.
    pub newly_completed: bool,
    /// Other nodes must hear of it (see [`Origin::Replicated`]).
    pub publish: bool,
}

/// What an expiry pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Expired {
    pub peers: usize,
    pub seeders: u32,
}

pub(super) enum PeerMap<K> {
    /// Exactly `len` entries, none or two to [`SMALL_MAX`]: each new peer reallocates,
    /// which is cheap at this size, and leaves no unused capacity in the most numerous
    /// allocation.
    Small(Box<[Entry<K>]>),
    /// The one peer of a one-peer swarm, inline: the most numerous swarms then cost no
    /// allocation and no pointer to follow (a list of one took 48 bytes of heap and 16 of
    /// pointer for a 31-byte entry).
    One(Entry<K>),
    Large(Box<Large<K>>),
}

/// Dense peers split in two arrays at the same positions (a random window is a range), and
/// the position of each key. Leechers come first: positions `..leechers` hold leechers, the
/// rest seeders. In a swarm of mostly seeders, a seeder's window of leechers is then a few
/// lines rather than a scan past every seeder in between (measured on the UDP load test's
/// swarms, 3 in 4 peers seeders: an announce took ~200 ns less).
pub(super) struct Large<K> {
    hot: Vec<Hot<K>>,
    cold: Vec<Cold>,
    index: PositionIndex,
    leechers: usize,
}

// The one-peer case is the common one: a torrent pays 32 bytes for its IPv4 map, its peer
// included.
const _: () = assert!(size_of::<PeerMap<V4Key>>() == 32);

impl<K> Default for PeerMap<K> {
    fn default() -> Self {
        PeerMap::Small(Box::default())
    }
}

impl<K: PeerKey> Large<K> {
    fn from_entries(small: &[Entry<K>], extra: usize) -> Self {
        let capacity = small.len() + extra;
        let (mut hot, mut cold) = (Vec::with_capacity(capacity), Vec::with_capacity(capacity));
        // Leechers first (see `Large`), in two passes over the list.
        let by_side = |seeder: bool| small.iter().filter(move |e| e.seeder() == seeder);
        for entry in by_side(false).chain(by_side(true)) {
            let (h, c) = entry.split();
            hot.push(h);
            cold.push(c);
        }
        let index = PositionIndex::new(hot.iter().map(|h| h.key), capacity);
        let leechers = hot.iter().take_while(|h| h.flags & SEEDER == 0).count();
        Large {
            hot,
            cold,
            index,
            leechers,
        }
    }

    fn into_entries(self) -> Vec<Entry<K>> {
        let joined = self.hot.into_iter().zip(self.cold);
        joined.map(|(hot, cold)| Entry::join(hot, cold)).collect()
    }

    fn len(&self) -> usize {
        self.hot.len()
    }

    fn position(&self, key: K) -> Option<usize> {
        let hot = &self.hot;
        let found = self.index.find(key, |p| hot[p as usize].key);
        found.map(|p| p as usize)
    }

    fn refresh(
        &mut self,
        i: usize,
        peer_id: PeerId,
        seeder: bool,
        completed: bool,
        expires_at: u32,
        origin: Origin,
    ) -> Upserted {
        let (flags, upserted) = reannounced(self.hot[i].flags, seeder, completed, origin);
        self.hot[i].flags = flags;
        self.cold[i] = Cold {
            expires_at: expires_at.to_ne_bytes(),
            peer_id,
        };
        // A peer that changed sides trades places with the peer at the border.
        match upserted.was_seeder {
            Some(false) if seeder => {
                self.leechers -= 1;
                self.swap(i, self.leechers);
            }
            Some(true) if !seeder => {
                self.swap(i, self.leechers);
                self.leechers += 1;
            }
            _ => {}
        }
        upserted
    }

    /// How many peers a window for an announce by a seeder (if `seeder`) is taken from: a
    /// seeder's from the leechers, a leecher's from everyone.
    fn window_len(&self, seeder: bool) -> usize {
        if seeder { self.leechers } else { self.len() }
    }

    /// Where the window for `key`'s announce at second `now` starts among the first `len`
    /// peers. Derived rather than drawn, so that prefetching knows it before the announce:
    /// the swarm's keyed hash of the announcing peer, mixed with the second. Each peer gets
    /// its own window, a new one with every re-announce, and nobody outside can predict it.
    fn window_start(&self, key: K, now: u32, len: usize) -> usize {
        let mixed = self.index.hash(key) ^ u64::from(now).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((u128::from(mixed) * len as u128) >> 64) as usize
    }

    /// The peer that moves when an announce puts a peer on the side of `seeder`: the last
    /// leecher trades places with a leecher turning seeder, the first seeder makes room for
    /// a new leecher or trades places with a seeder turning leecher. Its index entry is
    /// rewritten then, so prefetching asks for it too.
    fn border_peer(&self, seeder: bool) -> Option<usize> {
        if seeder {
            self.leechers.checked_sub(1)
        } else {
            (self.leechers < self.len()).then_some(self.leechers)
        }
    }

    /// Exchanges the peers at `a` and `b`, in the arrays and the index.
    fn swap(&mut self, a: usize, b: usize) {
        if a != b {
            self.index
                .swapped(self.hot[a].key, a as u32, self.hot[b].key, b as u32);
            self.hot.swap(a, b);
            self.cold.swap(a, b);
        }
    }

    /// Moves the peer at `from` to the free position `to` (one past the end, or a removed
    /// peer's).
    fn move_to(&mut self, from: usize, to: usize) {
        if to == self.len() {
            self.hot.push(self.hot[from]);
            self.cold.push(self.cold[from]);
        } else {
            self.hot[to] = self.hot[from];
            self.cold[to] = self.cold[from];
        }
        self.index.moved(self.hot[to].key, from as u32, to as u32);
    }

    fn push(&mut self, entry: Entry<K>) {
        let len = self.len();
        if len == self.hot.capacity() {
            // Growing by a quarter keeps pushes amortised O(1) and wastes at most 20% of the
            // entries, where doubling would waste up to half.
            let more = (len / 4).max(1);
            self.hot.reserve_exact(more);
            self.cold.reserve_exact(more);
        }
        // A leecher goes to the end of the leechers, whose first seeder moves to the end.
        let at = if entry.seeder() { len } else { self.leechers };
        if at < len {
            self.move_to(at, len);
        }
        let (hot, cold) = entry.split();
        if at == len {
            self.hot.push(hot);
            self.cold.push(cold);
        } else {
            (self.hot[at], self.cold[at]) = (hot, cold);
        }
        self.leechers += usize::from(!entry.seeder());
        let keys = &self.hot;
        self.index
            .insert(entry.key, at as u32, |p| keys[p as usize].key);
    }

    /// Removes the peer at `i`, returning whether it was a seeder. A removed leecher's place
    /// goes to the last leecher, and a removed seeder's (or that leecher's) to the last peer,
    /// so both sides stay dense; the index follows every move.
    fn swap_remove(&mut self, i: usize) -> bool {
        let seeder = self.hot[i].flags & SEEDER != 0;
        self.index.remove(self.hot[i].key, i as u32);
        let mut hole = i;
        if !seeder {
            self.leechers -= 1;
            if i != self.leechers {
                self.move_to(self.leechers, i);
            }
            hole = self.leechers;
        }
        let last = self.len() - 1;
        if hole != last {
            self.move_to(last, hole);
        }
        self.hot.pop();
        self.cold.pop();
        seeder
    }

    /// Leechers before seeders, and every peer indexed at its position.
    #[cfg(test)]
    fn assert_consistent(&self) {
        for (i, hot) in self.hot.iter().enumerate() {
            assert_eq!(
                hot.flags & SEEDER == 0,
                i < self.leechers,
                "side of peer {i}"
            );
            assert_eq!(self.position(hot.key), Some(i), "index of peer {i}");
        }
        assert!(self.leechers <= self.len());
    }

    /// Gives back memory a shrunken swarm no longer needs.
    fn shrink(&mut self) {
        let len = self.len();
        if self.hot.capacity() - len > len / 2 {
            self.hot.shrink_to(len + len / 4);
            self.cold.shrink_to(len + len / 4);
        }
        let keys = &self.hot;
        self.index.shrink(len, |p| keys[p as usize].key);
    }
}

impl<K: PeerKey> PeerMap<K> {
    /// A small map of `list`'s peers: a list of one is stored inline.
    fn from_list(list: Vec<Entry<K>>) -> Self {
        match *list {
            [one] => PeerMap::One(one),
            _ => PeerMap::Small(list.into_boxed_slice()),
        }
    }

    /// A small map's peers (a large map's are in its arrays: none here).
    fn list(&self) -> &[Entry<K>] {
        match self {
            PeerMap::Small(entries) => entries,
            PeerMap::One(entry) => std::slice::from_ref(entry),
            PeerMap::Large(_) => &[],
        }
    }

    pub fn len(&self) -> usize {
        match self {
            PeerMap::Large(large) => large.len(),
            small => small.list().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    pub fn is_large(&self) -> bool {
        matches!(self, PeerMap::Large(_))
    }

    #[cfg(test)]
    pub fn is_one(&self) -> bool {
        matches!(self, PeerMap::One(_))
    }

    /// A large map's invariants hold (see [`Large`]).
    #[cfg(test)]
    pub fn assert_consistent(&self) {
        match self {
            PeerMap::Large(large) => large.assert_consistent(),
            PeerMap::Small(entries) => assert_ne!(entries.len(), 1, "a list of one"),
            PeerMap::One(_) => {}
        }
    }

    pub fn contains(&self, key: K) -> bool {
        match self {
            PeerMap::Large(large) => large.position(key).is_some(),
            small => small.list().iter().any(|e| e.key == key),
        }
    }

    /// One step of prefetching an announce by `key` (see [`PrefetchStep`]), a seeder's if
    /// `seeder`, answered at second `now`.
    pub fn prefetch(&self, step: PrefetchStep, key: K, seeder: bool, now: u32) {
        match (self, step) {
            // A one-peer map is in the torrent's entry, which the step before asked for.
            // An announce scans a small list whole, looking for its own entry.
            (PeerMap::Small(entries), PrefetchStep::PeerList) => prefetch_bytes(
                entries.as_ptr() as usize,
                size_of_val::<[Entry<K>]>(entries),
                usize::MAX,
            ),
            (PeerMap::Large(large), PrefetchStep::PeerList) => {
                prefetch_bytes((&raw const **large) as usize, size_of::<Large<K>>(), 2)
            }
            (PeerMap::Large(large), PrefetchStep::PeerIndex) => {
                large.index.prefetch_slot(key);
                if let Some(p) = large.border_peer(seeder) {
                    let hot_size = size_of::<Hot<K>>();
                    prefetch_bytes(large.hot.as_ptr() as usize + p * hot_size, hot_size, 2);
                }
            }
            (PeerMap::Large(large), PrefetchStep::PeerEntry) => {
                let hot = large.hot.as_ptr() as usize;
                let cold = large.cold.as_ptr() as usize;
                large.index.prefetch_entry(key, |p| {
                    let (hot_size, cold_size) = (size_of::<Hot<K>>(), size_of::<Cold>());
                    prefetch_bytes(hot + p as usize * hot_size, hot_size, 2);
                    prefetch_bytes(cold + p as usize * cold_size, cold_size, 2);
                });
                // Reads the line the step before asked for.
                if let Some(p) = large.border_peer(seeder) {
                    large.index.prefetch_slot(large.hot[p].key);
                }
                // The first lines of the reply's window (the hardware streams the rest).
                let len = large.window_len(seeder);
                if len > 0 {
                    let start = large.window_start(key, now, len);
                    let hot_size = size_of::<Hot<K>>();
                    let bytes = (len - start) * hot_size;
                    prefetch_bytes(hot + start * hot_size, bytes, WINDOW_PREFETCH_LINES);
                }
            }
            _ => {}
        }
    }

    /// Adds or refreshes a peer; `Err(PeerMapFull)` when the peer is new and the map already
    /// holds `max` peers.
    #[allow(clippy::too_many_arguments)]
    pub fn upsert(
        &mut self,
        key: K,
        peer_id: PeerId,
        seeder: bool,
        completed: bool,
        expires_at: u32,
        max: usize,
        origin: Origin,
    ) -> Result<Upserted, PeerMapFull> {
        let new = Upserted {
            was_seeder: None,
            newly_completed: completed,
            publish: matches!(origin, Origin::Replicated { .. }),
        };
        let flags = flags(seeder, completed, origin);
        match self {
            PeerMap::One(entry) => {
                if entry.key == key {
                    return Ok(entry.refresh(peer_id, seeder, completed, expires_at, origin));
                }
                if max <= 1 {
                    return Err(PeerMapFull);
                }
                let two = [*entry, Entry::new(key, peer_id, flags, expires_at)];
                *self = PeerMap::Small(Box::new(two));
                Ok(new)
            }
            PeerMap::Small(entries) => {
                if let Some(entry) = entries.iter_mut().find(|e| e.key == key) {
                    return Ok(entry.refresh(peer_id, seeder, completed, expires_at, origin));
                }
                if entries.len() >= max {
                    return Err(PeerMapFull);
                }
                let entry = Entry::new(key, peer_id, flags, expires_at);
                if entries.is_empty() {
                    *self = PeerMap::One(entry);
                } else if entries.len() < SMALL_MAX {
                    let mut grown = std::mem::take(entries).into_vec();
                    grown.reserve_exact(1);
                    grown.push(entry);
                    *entries = grown.into_boxed_slice();
                } else {
                    let mut large = Large::from_entries(entries, SMALL_MAX / 4);
                    large.push(entry);
                    *self = PeerMap::Large(Box::new(large));
                }
                Ok(new)
            }
            PeerMap::Large(large) => {
                if let Some(i) = large.position(key) {
                    return Ok(large.refresh(i, peer_id, seeder, completed, expires_at, origin));
                }
                let len = large.len();
                // Positions are u32: four billion peers of one torrent would not fit in memory.
                if len >= max || len >= u32::MAX as usize {
                    return Err(PeerMapFull);
                }
                large.push(Entry::new(key, peer_id, flags, expires_at));
                Ok(new)
            }
        }
    }

    /// Removes a peer; returns whether it was a seeder, `None` when it was not stored.
    pub fn remove(&mut self, key: K) -> Option<bool> {
        match self {
            PeerMap::One(entry) => {
                let seeder = (entry.key == key).then_some(entry.seeder())?;
                *self = PeerMap::default();
                Some(seeder)
            }
            PeerMap::Small(entries) => {
                let i = entries.iter().position(|e| e.key == key)?;
                let mut shrunk = std::mem::take(entries).into_vec();
                let removed = shrunk.swap_remove(i);
                *self = PeerMap::from_list(shrunk);
                Some(removed.seeder())
            }
            PeerMap::Large(large) => {
                let i = large.position(key)?;
                let seeder = large.swap_remove(i);
                self.demote_if_small();
                Some(seeder)
            }
        }
    }

    fn demote_if_small(&mut self) {
        if let PeerMap::Large(large) = self
            && large.len() <= SMALL_AGAIN
        {
            let PeerMap::Large(large) = std::mem::take(self) else {
                unreachable!("matched above")
            };
            *self = PeerMap::from_list(large.into_entries());
        }
    }

    /// Appends up to `n` peers other than `exclude`, a window from a random position: much
    /// more cache-friendly than picking each peer at random, and as good for swarm health.
    /// `leechers_only` for a seeder's announce: seeders have nothing to give each other.
    /// Peer ids are read only when `peer_ids` (otherwise they go out zeroed).
    pub fn select(
        &self,
        exclude: Option<K>,
        n: usize,
        leechers_only: bool,
        peer_ids: bool,
        now: u32,
        out: &mut Vec<ResponsePeer>,
    ) {
        let window = Window {
            exclude,
            n,
            leechers_only,
            peer_ids,
        };
        match self {
            // The leechers are the first positions: a seeder's window needs no skipping.
            PeerMap::Large(large) => {
                let len = large.window_len(leechers_only);
                let start = exclude.map(|key| large.window_start(key, now, len));
                window.take(
                    len,
                    start,
                    |i| (large.hot[i].key, large.hot[i].flags),
                    |i| large.cold[i].peer_id,
                    out,
                )
            }
            small => {
                let entries = small.list();
                window.take(
                    entries.len(),
                    None,
                    |i| (entries[i].key, entries[i].flags),
                    |i| entries[i].peer_id,
                    out,
                )
            }
        }
    }

    /// Calls `f` with every peer announced to this node rather than copied from another
    /// (replication republishes them after Redis was away): key, peer id, seeder.
    pub fn for_each_local(&self, mut f: impl FnMut(K, PeerId, bool)) {
        match self {
            PeerMap::Large(large) => {
                for (hot, cold) in large.hot.iter().zip(&large.cold) {
                    if hot.flags & REMOTE == 0 {
                        f(hot.key, cold.peer_id, hot.flags & SEEDER != 0);
                    }
                }
            }
            small => small
                .list()
                .iter()
                .filter(|e| e.is_local())
                .for_each(|e| f(e.key, e.peer_id, e.seeder())),
        }
    }

    /// Drops peers whose lifetime ended before `now`, and gives back memory a shrunken swarm
    /// no longer needs.
    pub fn expire(&mut self, now: u32) -> Expired {
        let mut expired = Expired::default();
        match self {
            PeerMap::One(entry) => {
                if entry.expires_at() < now {
                    expired.peers = 1;
                    expired.seeders = u32::from(entry.seeder());
                    *self = PeerMap::default();
                }
            }
            PeerMap::Small(entries) => {
                if entries.iter().any(|e| e.expires_at() < now) {
                    let mut kept = std::mem::take(entries).into_vec();
                    kept.retain(|entry| {
                        let gone = entry.expires_at() < now;
                        if gone {
                            expired.peers += 1;
                            expired.seeders += u32::from(entry.seeder());
                        }
                        !gone
                    });
                    *self = PeerMap::from_list(kept);
                }
            }
            PeerMap::Large(large) => {
                // Swap-removal touches the index only for removed and moved peers, so a pass
                // where few expire costs a scan and not a rebuild.
                let mut i = 0;
                while i < large.len() {
                    if u32::from_ne_bytes(large.cold[i].expires_at) < now {
                        expired.peers += 1;
                        expired.seeders += u32::from(large.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                large.shrink();
                self.demote_if_small();
            }
        }
        expired
    }
}

/// What [`PeerMap::select`] takes from a swarm.
struct Window<K> {
    exclude: Option<K>,
    n: usize,
    leechers_only: bool,
    peer_ids: bool,
}

impl<K: PeerKey> Window<K> {
    /// Takes from `len` peers, starting at `start` (a random one if `None`) and wrapping
    /// around; `key_flags` and `peer_id` read the peer at a position.
    fn take(
        &self,
        len: usize,
        start: Option<usize>,
        key_flags: impl Fn(usize) -> (K, u8),
        peer_id: impl Fn(usize) -> PeerId,
        out: &mut Vec<ResponsePeer>,
    ) {
        if len == 0 || self.n == 0 {
            return;
        }
        let start = start.unwrap_or_else(|| fastrand::usize(..len));
        let mut taken = 0;
        for i in (start..len).chain(0..start) {
            let (key, flags) = key_flags(i);
            if Some(key) == self.exclude || (self.leechers_only && flags & SEEDER != 0) {
                continue;
            }
            out.push(ResponsePeer {
                addr: key.socket_addr(),
                peer_id: if self.peer_ids {
                    peer_id(i)
                } else {
                    PeerId([0; 20])
                },
            });
            taken += 1;
            if taken == self.n {
                break;
            }
        }
    }
}
