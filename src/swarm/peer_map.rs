//! The peers of one torrent in one address family.

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use indexmap::IndexMap;

use crate::bittorrent::{PeerId, ResponsePeer};

/// A new peer found the map at its maximum size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerMapFull;

/// `Ipv4Addr` or `Ipv6Addr`.
pub trait PeerIp: Copy + Eq + Hash + Into<IpAddr> {}
impl PeerIp for Ipv4Addr {}
impl PeerIp for Ipv6Addr {}

#[derive(Clone, Copy, Debug)]
struct PeerEntry {
    peer_id: PeerId,
    expires_at: u32,
    seeder: bool,
    /// This peer's `completed` was counted already.
    completed: bool,
}

/// Keyed by (IP, announced port): the peer id is the client's claim, the address is not.
/// An `IndexMap` lets a random window of peers be taken by position.
pub struct PeerMap<I: PeerIp> {
    peers: IndexMap<(I, u16), PeerEntry, foldhash::fast::RandomState>,
    seeders: u32,
}

impl<I: PeerIp> Default for PeerMap<I> {
    fn default() -> Self {
        PeerMap {
            peers: IndexMap::default(),
            seeders: 0,
        }
    }
}

impl<I: PeerIp> PeerMap<I> {
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn seeders(&self) -> u32 {
        self.seeders
    }

    pub fn leechers(&self) -> u32 {
        self.peers.len() as u32 - self.seeders
    }

    pub fn contains(&self, ip: I, port: u16) -> bool {
        self.peers.contains_key(&(ip, port))
    }

    /// Adds or refreshes a peer. `Ok(true)` when this announce is the peer's first `completed`;
    /// `Err(PeerMapFull)` when the peer is new and the map already holds `max` peers.
    #[allow(clippy::too_many_arguments)]
    pub fn upsert(
        &mut self,
        ip: I,
        port: u16,
        peer_id: PeerId,
        seeder: bool,
        completed_event: bool,
        expires_at: u32,
        max: usize,
    ) -> Result<bool, PeerMapFull> {
        let len = self.peers.len();
        match self.peers.entry((ip, port)) {
            indexmap::map::Entry::Occupied(mut e) => {
                let entry = e.get_mut();
                if entry.seeder != seeder {
                    if seeder {
                        self.seeders += 1;
                    } else {
                        self.seeders -= 1;
                    }
                }
                let newly_completed = completed_event && !entry.completed;
                *entry = PeerEntry {
                    peer_id,
                    expires_at,
                    seeder,
                    completed: entry.completed || completed_event,
                };
                Ok(newly_completed)
            }
            indexmap::map::Entry::Vacant(e) => {
                if len >= max {
                    return Err(PeerMapFull);
                }
                e.insert(PeerEntry {
                    peer_id,
                    expires_at,
                    seeder,
                    completed: completed_event,
                });
                self.seeders += u32::from(seeder);
                Ok(completed_event)
            }
        }
    }

    pub fn remove(&mut self, ip: I, port: u16) -> bool {
        match self.peers.swap_remove(&(ip, port)) {
            Some(entry) => {
                self.seeders -= u32::from(entry.seeder);
                true
            }
            None => false,
        }
    }

    /// Appends up to `n` peers other than `exclude`, a window from a random position: much
    /// more cache-friendly than picking each peer at random, and as good for swarm health.
    pub fn select(&self, exclude: Option<(I, u16)>, n: usize, out: &mut Vec<ResponsePeer>) {
        let len = self.peers.len();
        if len == 0 || n == 0 {
            return;
        }
        let start = fastrand::usize(..len);
        let mut taken = 0;
        for i in (start..len).chain(0..start) {
            let Some((&(ip, port), entry)) = self.peers.get_index(i) else {
                break;
            };
            if Some((ip, port)) == exclude {
                continue;
            }
            out.push(ResponsePeer {
                addr: SocketAddr::new(ip.into(), port),
                peer_id: entry.peer_id,
            });
            taken += 1;
            if taken == n {
                break;
            }
        }
    }

    /// Drops peers whose lifetime ended before `now`; returns how many.
    pub fn expire(&mut self, now: u32) -> usize {
        let before = self.peers.len();
        let mut seeders_removed = 0;
        self.peers.retain(|_, entry| {
            let keep = entry.expires_at >= now;
            if !keep && entry.seeder {
                seeders_removed += 1;
            }
            keep
        });
        self.seeders -= seeders_removed;
        if self.peers.capacity() > 16 && self.peers.len() < self.peers.capacity() / 4 {
            self.peers.shrink_to_fit();
        }
        before - self.peers.len()
    }
}
