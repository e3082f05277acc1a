//! The lock-striped in-memory swarm store: the only shared mutable state of the hot path.
//!
//! Torrents live in a power-of-two number of shards chosen by the info hash, each a locked
//! dense array of torrents with an index of positions (`torrent_table`). Each torrent keeps its IPv4 and IPv6 peers apart, so IPv4 keys stay 6 bytes and
//! a family's peers are taken without filtering; the IPv6 peers sit behind a box that most
//! torrents never allocate. Memory per peer is what limits how many peers one machine holds,
//! so the layout is measured (`benches/store.rs`) rather than left to default collections.

mod observer;
mod peer_map;
mod position_index;
mod prefetch;
mod torrent_table;

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use observer::SwarmObserver;
pub use prefetch::PrefetchStep;

use crate::bittorrent::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, ClientError, InfoHash, PeerId, ScrapeStats,
};
use crate::clock::Clock;
use peer_map::{Origin, PeerKey, PeerMap, PeerMapFull, Upserted, V4Key, V6Key};
use position_index::Hasher;
use torrent_table::{LockedTable, TableGuard, TorrentKey};

type Shard = LockedTable<Torrent>;

/// What a reply will carry besides the announcing peer's own family's addresses, so the store
/// reads no more than the protocol sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSelection {
    /// Peers of the other address family too (HTTP; a UDP reply has one family's format).
    pub both_families: bool,
    /// Each peer's id (non-compact HTTP replies without `no_peer_id`).
    pub peer_ids: bool,
}

impl PeerSelection {
    /// Both families, with peer ids: everything the store has.
    pub const ALL: PeerSelection = PeerSelection {
        both_families: true,
        peer_ids: true,
    };
}

#[derive(Clone, Copy, Debug)]
pub struct SwarmLimits {
    pub max_torrents: usize,
    pub max_peers_per_torrent: usize,
    pub peer_lifetime_secs: u32,
}

/// 48 bytes, beside its 20-byte key in the shard's array, a one-peer torrent's peer
/// included: the seeder counts live here rather than in the peer maps so that no field is
/// padded out to the next 8 bytes.
#[derive(Default)]
struct Torrent {
    v4: PeerMap<V4Key>,
    /// `None` whenever there are no IPv6 peers, so IPv4-only torrents pay 8 bytes for them.
    v6: Option<Box<V6Peers>>,
    v4_seeders: u32,
    /// Completed downloads seen: one per peer that announced `completed` (saturating; no
    /// torrent comes near four billion).
    downloaded: u32,
}

const _: () = assert!(size_of::<Torrent>() == 48);

#[derive(Default)]
struct V6Peers {
    peers: PeerMap<V6Key>,
    seeders: u32,
}

/// Adds or refreshes a peer and keeps `seeders` in step.
#[allow(clippy::too_many_arguments)]
fn upsert<K: PeerKey>(
    peers: &mut PeerMap<K>,
    seeders: &mut u32,
    key: K,
    peer_id: PeerId,
    seeder: bool,
    completed: bool,
    expires_at: u32,
    max: usize,
    origin: Origin,
) -> Result<Upserted, PeerMapFull> {
    let upserted = peers.upsert(key, peer_id, seeder, completed, expires_at, max, origin)?;
    *seeders = *seeders - u32::from(upserted.was_seeder == Some(true)) + u32::from(seeder);
    Ok(upserted)
}

impl Torrent {
    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_none()
    }

    fn stats(&self) -> ScrapeStats {
        let (v6_len, v6_seeders) = self
            .v6
            .as_ref()
            .map_or((0, 0), |v6| (v6.peers.len(), v6.seeders));
        let complete = self.v4_seeders + v6_seeders;
        ScrapeStats {
            complete,
            incomplete: (self.v4.len() + v6_len) as u32 - complete,
            downloaded: u64::from(self.downloaded),
        }
    }

    /// Removes `peer`; returns whether it was stored.
    fn remove(&mut self, peer: SocketAddr) -> bool {
        match peer {
            SocketAddr::V4(a) => {
                let Some(seeder) = self.v4.remove(V4Key::new(*a.ip(), a.port())) else {
                    return false;
                };
                self.v4_seeders -= u32::from(seeder);
            }
            SocketAddr::V6(a) => {
                let Some(v6) = &mut self.v6 else {
                    return false;
                };
                let Some(seeder) = v6.peers.remove(V6Key::new(*a.ip(), a.port())) else {
                    return false;
                };
                v6.seeders -= u32::from(seeder);
                if v6.peers.is_empty() {
                    self.v6 = None;
                }
            }
        }
        true
    }

    /// Adds or refreshes `peer`; returns what changed.
    #[allow(clippy::too_many_arguments)]
    fn upsert(
        &mut self,
        peer: SocketAddr,
        peer_id: PeerId,
        seeder: bool,
        completed: bool,
        expires_at: u32,
        max: usize,
        origin: Origin,
    ) -> Result<Upserted, PeerMapFull> {
        let upserted = match peer {
            SocketAddr::V4(a) => upsert(
                &mut self.v4,
                &mut self.v4_seeders,
                V4Key::new(*a.ip(), a.port()),
                peer_id,
                seeder,
                completed,
                expires_at,
                max,
                origin,
            ),
            SocketAddr::V6(a) => {
                let v6 = self.v6.get_or_insert_with(Box::default);
                let upserted = upsert(
                    &mut v6.peers,
                    &mut v6.seeders,
                    V6Key::new(*a.ip(), a.port()),
                    peer_id,
                    seeder,
                    completed,
                    expires_at,
                    max,
                    origin,
                );
                if v6.peers.is_empty() {
                    self.v6 = None;
                }
                upserted
            }
        }?;
        if upserted.newly_completed {
            self.downloaded = self.downloaded.saturating_add(1);
        }
        Ok(upserted)
    }

    /// Removes expired peers; returns how many.
    fn expire(&mut self, now: u32) -> usize {
        let v4 = self.v4.expire(now);
        self.v4_seeders -= v4.seeders;
        let mut removed = v4.peers;
        if let Some(v6) = &mut self.v6 {
            let expired = v6.peers.expire(now);
            v6.seeders -= expired.seeders;
            removed += expired.peers;
            if v6.peers.is_empty() {
                self.v6 = None;
            }
        }
        removed
    }
}

/// What one cleaning pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub peers_removed: usize,
    pub torrents_removed: usize,
    pub duration: Duration,
}

/// Totals over the whole store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreTotals {
    pub torrents: usize,
    pub seeders: u64,
    pub leechers: u64,
}

pub struct SwarmStore {
    shards: Box<[Shard]>,
    hasher: Hasher,
    torrent_count: AtomicUsize,
    limits: SwarmLimits,
    /// See [`SwarmStore::refresh_secs`].
    refresh_secs: u32,
    clock: Clock,
    observer: Option<Arc<dyn SwarmObserver>>,
}

const TRACKER_FULL: ClientError = ClientError::new("tracker is full: no room for a new torrent");
const OVER_BUDGET: ClientError =
    ClientError::new("too many new torrents from your address: retry later");
const TORRENT_FULL: ClientError = ClientError::new("torrent is full: no room for a new peer");

impl SwarmStore {
    /// `shards` is rounded up to a power of two.
    pub fn new(shards: usize, limits: SwarmLimits, clock: Clock) -> Self {
        let n = shards.max(1).next_power_of_two();
        let hasher = Hasher::default();
        SwarmStore {
            shards: (0..n).map(|_| Shard::new(hasher.clone())).collect(),
            hasher,
            torrent_count: AtomicUsize::new(0),
            limits,
            refresh_secs: (limits.peer_lifetime_secs / 4).max(1),
            clock,
            observer: None,
        }
    }

    /// Hangs an observer on announce and stop events (Redis replication hangs here).
    pub fn with_observer(mut self, observer: Arc<dyn SwarmObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// `info_hash`, hashed once: the hash picks its shard and finds it there.
    fn key(&self, info_hash: &InfoHash) -> TorrentKey {
        TorrentKey {
            info_hash: *info_hash,
            hash: self.hasher.hash_one(info_hash),
        }
    }

    fn shard(&self, key: &TorrentKey) -> &Shard {
        &self.shards[self.shard_index(key.hash)]
    }

    /// Keyed, although info hashes look random: clients choose them, and picking shards by
    /// their raw bytes let one client aim 4.8 M torrents at one shard (every announce's tail
    /// went from 10 ms to 357 ms). The shard takes the keyed hash's middle bits: each shard's
    /// index uses the same hash's low bits for buckets and its top 7 for tags, so a shard's
    /// torrents still spread over its index (shards are at most 2^16, bits 32 to 47).
    fn shard_index(&self, hash: u64) -> usize {
        (hash >> 32) as usize & (self.shards.len() - 1)
    }

    /// `key`'s shard, locked.
    fn lock(&self, key: &TorrentKey) -> TableGuard<'_, Torrent> {
        self.shard(key).lock()
    }

    /// Brings into the cache, without waiting for them, the lines that an announce by `peer`
    /// into `info_hash` will read at one link of its chain of pointers (see [`PrefetchStep`]).
    /// Engines run the steps in order a few datagrams before they answer the announce, so
    /// its cache misses overlap with the work before it. A wrong guess (another peer address,
    /// a table that changed meanwhile) wastes a prefetch and changes nothing.
    pub fn prefetch(
        &self,
        step: PrefetchStep,
        info_hash: &InfoHash,
        peer: SocketAddr,
        seeder: bool,
    ) {
        let key = self.key(info_hash);
        let shard = self.shard(&key);
        if step == PrefetchStep::Torrent {
            shard.prefetch(key.hash);
            return;
        }
        // The later steps read through the table, so they take the lock, but never wait
        // for it: another worker holding it would be paid for in full, not overlapped.
        let Some(shard) = shard.try_lock() else {
            return;
        };
        if step == PrefetchStep::TorrentEntry {
            shard.prefetch_entry(&key);
            return;
        }
        let Some(torrent) = shard.get(&key) else {
            return;
        };
        let now = self.clock.now();
        match peer {
            SocketAddr::V4(a) => {
                let key = V4Key::new(*a.ip(), a.port());
                torrent.v4.prefetch(step, key, seeder, now);
            }
            SocketAddr::V6(a) => {
                if let Some(v6) = &torrent.v6 {
                    let key = V6Key::new(*a.ip(), a.port());
                    v6.peers.prefetch(step, key, seeder, now);
                }
            }
        }
    }

    /// Records the announce and fills `response` with counts and up to `numwant` other peers:
    /// the announcing peer's family first, then (if `selection.both_families`) the other one.
    pub fn announce(
        &self,
        request: &AnnounceRequest,
        numwant: usize,
        selection: PeerSelection,
        response: &mut AnnounceResponse,
    ) -> Result<(), ClientError> {
        self.announce_limited(request, numwant, selection, response, || true)
    }

    /// [`Self::announce`], asking `may_create` before the announce creates a torrent (the
    /// per-source budget; torrents that exist cost nothing more).
    pub fn announce_limited(
        &self,
        request: &AnnounceRequest,
        numwant: usize,
        selection: PeerSelection,
        response: &mut AnnounceResponse,
        may_create: impl FnOnce() -> bool,
    ) -> Result<(), ClientError> {
        response.peers.clear();
        let peer = SocketAddr::new(request.peer_ip, request.port);
        let stopped = request.event == AnnounceEvent::Stopped;
        let key = self.key(&request.info_hash);
        let mut shard = self.lock(&key);

        if stopped {
            let mut removed = false;
            if let Some(torrent) = shard.get_mut(&key) {
                removed = torrent.remove(peer);
                let stats = torrent.stats();
                (response.complete, response.incomplete) = (stats.complete, stats.incomplete);
                response.downloaded = torrent.downloaded;
            }
            drop(shard);
            // Wherever the peer was announced, every node stored it: all must drop it.
            if removed && let Some(observer) = &self.observer {
                observer.removed(&request.info_hash, peer);
            }
            return Ok(());
        }

        let count = &self.torrent_count;
        let max_torrents = self.limits.max_torrents;
        let mut refused = TRACKER_FULL;
        let torrent = shard
            .get_or_insert(&key, || {
                if count.load(Ordering::Relaxed) >= max_torrents {
                    return None;
                }
                if !may_create() {
                    refused = OVER_BUDGET;
                    return None;
                }
                count.fetch_add(1, Ordering::Relaxed);
                Some(Torrent::default())
            })
            .ok_or(refused)?;
        let now = self.clock.now();
        let expires_at = now.saturating_add(self.limits.peer_lifetime_secs);
        let completed = request.event == AnnounceEvent::Completed;
        let origin = match self.observer {
            Some(_) => Origin::Replicated {
                epoch: (now / self.refresh_secs) as u8,
            },
            None => Origin::Local,
        };
        let upserted = torrent.upsert(
            peer,
            request.peer_id,
            request.is_seeder(),
            completed,
            expires_at,
            self.limits.max_peers_per_torrent,
            origin,
        );
        let upserted = match upserted {
            Ok(upserted) => upserted,
            Err(PeerMapFull) => {
                if torrent.is_empty() {
                    shard.remove(&key);
                    self.torrent_count.fetch_sub(1, Ordering::Relaxed);
                }
                return Err(TORRENT_FULL);
            }
        };
        let stats = torrent.stats();
        (response.complete, response.incomplete) = (stats.complete, stats.incomplete);
        response.downloaded = torrent.downloaded;
        // A seeder is sent leechers only (and nothing when there are none): it has nothing to
        // exchange with other seeders, and the smaller reply is cheaper for both sides.
        let seeder = request.is_seeder();
        let v4_wanted = !seeder || torrent.v4.len() > torrent.v4_seeders as usize;
        let v6 = torrent
            .v6
            .as_deref()
            .filter(|v6| !seeder || v6.peers.len() > v6.seeders as usize)
            .map(|v6| &v6.peers);
        let v4 = v4_wanted.then_some(&torrent.v4);
        match peer {
            SocketAddr::V4(a) => {
                if let Some(v4) = v4 {
                    v4.select(
                        Some(V4Key::new(*a.ip(), a.port())),
                        numwant,
                        seeder,
                        selection.peer_ids,
                        now,
                        &mut response.peers,
                    );
                }
                if selection.both_families
                    && let Some(v6) = v6
                {
                    v6.select(
                        None,
                        numwant - response.peers.len(),
                        seeder,
                        selection.peer_ids,
                        now,
                        &mut response.peers,
                    );
                }
            }
            SocketAddr::V6(a) => {
                if let Some(v6) = v6 {
                    v6.select(
                        Some(V6Key::new(*a.ip(), a.port())),
                        numwant,
                        seeder,
                        selection.peer_ids,
                        now,
                        &mut response.peers,
                    );
                }
                if selection.both_families
                    && let Some(v4) = v4
                {
                    v4.select(
                        None,
                        numwant - response.peers.len(),
                        seeder,
                        selection.peer_ids,
                        now,
                        &mut response.peers,
                    );
                }
            }
        }
        drop(shard);
        if upserted.publish
            && let Some(observer) = &self.observer
        {
            observer.announced(
                &request.info_hash,
                peer,
                &request.peer_id,
                seeder,
                upserted.newly_completed,
            );
        }
        Ok(())
    }

    /// How long a refresh epoch lasts: a peer that keeps announcing is told to other nodes
    /// once per epoch, and their copy lives [`Self::remote_lifetime_secs`] from then on. A
    /// quarter of the peer lifetime: the copy at other nodes outlives the peer's own here
    /// by at most that much.
    pub fn refresh_secs(&self) -> u32 {
        self.refresh_secs
    }

    /// How long other nodes keep a peer from the moment they are told of it: it outlives the
    /// peer here, wherever in its epoch it announced last (see [`Self::refresh_secs`]).
    pub fn remote_lifetime_secs(&self) -> u32 {
        self.limits
            .peer_lifetime_secs
            .saturating_add(self.refresh_secs)
    }

    /// Stores another node's announce: never told to the observer (no loops), marked so
    /// that this node does not refresh it, `completed` counted unless this node counted it
    /// already. Limits hold as for announces.
    pub fn apply_remote(
        &self,
        info_hash: &InfoHash,
        peer: SocketAddr,
        peer_id: PeerId,
        seeder: bool,
        completed: bool,
        expires_at: u32,
    ) -> Result<(), ClientError> {
        let key = self.key(info_hash);
        let mut shard = self.lock(&key);
        let count = &self.torrent_count;
        let max_torrents = self.limits.max_torrents;
        let torrent = shard
            .get_or_insert(&key, || {
                (count.load(Ordering::Relaxed) < max_torrents).then(|| {
                    count.fetch_add(1, Ordering::Relaxed);
                    Torrent::default()
                })
            })
            .ok_or(TRACKER_FULL)?;
        let max = self.limits.max_peers_per_torrent;
        let upserted = torrent.upsert(
            peer,
            peer_id,
            seeder,
            completed,
            expires_at,
            max,
            Origin::Remote,
        );
        if upserted.is_err() {
            if torrent.is_empty() {
                shard.remove(&key);
                count.fetch_sub(1, Ordering::Relaxed);
            }
            return Err(TORRENT_FULL);
        }
        Ok(())
    }

    /// Removes a peer another node saw stop; returns whether it was stored.
    pub fn apply_remote_removal(&self, info_hash: &InfoHash, peer: SocketAddr) -> bool {
        let key = self.key(info_hash);
        let mut shard = self.lock(&key);
        let Some(torrent) = shard.get_mut(&key) else {
            return false;
        };
        let removed = torrent.remove(peer);
        if torrent.is_empty() {
            shard.remove(&key);
            self.torrent_count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Calls `f` with every peer announced to this node (not copied from another), one shard
    /// lock at a time: what replication publishes again after Redis was away.
    pub fn for_each_local_peer(&self, mut f: impl FnMut(&InfoHash, SocketAddr, PeerId, bool)) {
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (info_hash, torrent) in shard.entries() {
                torrent
                    .v4
                    .for_each_local(|key, id, seeder| f(info_hash, key.socket_addr(), id, seeder));
                if let Some(v6) = &torrent.v6 {
                    v6.peers.for_each_local(|key, id, seeder| {
                        f(info_hash, key.socket_addr(), id, seeder)
                    });
                }
            }
        }
    }

    pub fn scrape(&self, info_hash: &InfoHash) -> ScrapeStats {
        let key = self.key(info_hash);
        let shard = self.lock(&key);
        shard.get(&key).map(Torrent::stats).unwrap_or_default()
    }

    /// Removes expired peers and empty torrents, one shard lock at a time.
    pub fn clean(&self) -> CleanReport {
        let started = Instant::now();
        let now = self.clock.now();
        let mut report = CleanReport::default();
        for shard in self.shards.iter() {
            shard.lock().retain(|torrent| {
                report.peers_removed += torrent.expire(now);
                if torrent.is_empty() {
                    report.torrents_removed += 1;
                    false
                } else {
                    true
                }
            });
        }
        self.torrent_count
            .fetch_sub(report.torrents_removed, Ordering::Relaxed);
        report.duration = started.elapsed();
        report
    }

    pub fn totals(&self) -> StoreTotals {
        let mut totals = StoreTotals::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            totals.torrents += shard.len();
            for torrent in shard.values() {
                let stats = torrent.stats();
                totals.seeders += u64::from(stats.complete);
                totals.leechers += u64::from(stats.incomplete);
            }
        }
        totals
    }

    /// Whether `ip` (v4 or v6) with `port` is stored for `info_hash`.
    pub fn contains_peer(&self, info_hash: &InfoHash, ip: IpAddr, port: u16) -> bool {
        let key = self.key(info_hash);
        let shard = self.lock(&key);
        shard.get(&key).is_some_and(|t| match ip {
            IpAddr::V4(v4) => t.v4.contains(V4Key::new(v4, port)),
            IpAddr::V6(v6) => {
                t.v6.as_ref()
                    .is_some_and(|v6s| v6s.peers.contains(V6Key::new(v6, port)))
            }
        })
    }
}

#[cfg(test)]
mod tests;
