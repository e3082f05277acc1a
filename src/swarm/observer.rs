//! The seam where swarm changes can be observed, outside the shard lock: replication hangs
//! here.

use std::net::SocketAddr;

use crate::bittorrent::{InfoHash, PeerId};

/// Told of the changes other nodes must hear of, after the shard lock is released: a new
/// peer, one that turned seeder or leecher, a first `completed`, and a refresh once per
/// refresh epoch (see [`crate::swarm::SwarmStore::refresh_secs`]); and every stop of a stored
/// peer. Re-announces that change nothing within an epoch are not told. Changes applied from
/// other nodes are never told (no loops). Must be cheap (hand the change to another thread):
/// it runs on the worker's hot path.
pub trait SwarmObserver: Send + Sync {
    fn announced(
        &self,
        info_hash: &InfoHash,
        peer: SocketAddr,
        peer_id: &PeerId,
        seeder: bool,
        completed: bool,
    );
    fn removed(&self, info_hash: &InfoHash, peer: SocketAddr);
}
