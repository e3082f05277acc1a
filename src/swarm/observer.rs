//! The seam where swarm changes can be observed, outside the shard lock.

use std::net::SocketAddr;

use crate::bittorrent::{InfoHash, PeerId};

/// Told of every stored announce and every stop, after the shard lock is released. Must be
/// cheap (hand the event to another thread): it runs on the worker's hot path.
pub trait SwarmObserver: Send + Sync {
    fn announced(
        &self,
        info_hash: &InfoHash,
        peer: SocketAddr,
        peer_id: &PeerId,
        seeder: bool,
        expires_at: u32,
    );
    fn removed(&self, info_hash: &InfoHash, peer: SocketAddr);
}
