//! The changes waiting to be sent. While Redis takes them, each flush empties it and it is a
//! plain list in arrival order: copying the workers' changes into it is all the work (a map
//! keyed by peer cost the replication thread 450 ns a change under the load test, most of
//! its time). While Redis is away it grows; at `max` it is compacted to one change per peer,
//! the latest, and from then on a peer's later change replaces its earlier one in place,
//! and changes of new peers are dropped and counted.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::ReplicationStatus;
use super::record::Change;
use crate::bittorrent::InfoHash;

type PeerKey = (InfoHash, SocketAddr);

pub struct Backlog {
    changes: Vec<Change>,
    /// Once `max` was reached: where each peer's change is.
    index: Option<HashMap<PeerKey, usize, foldhash::fast::RandomState>>,
    max: usize,
}

impl Backlog {
    pub fn new(max: usize) -> Self {
        Backlog {
            changes: Vec::new(),
            index: None,
            max,
        }
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Everything was sent.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.index = None;
    }

    pub fn extend(&mut self, changes: &[Change], status: &ReplicationStatus) {
        if self.index.is_none() && self.changes.len() + changes.len() <= self.max {
            self.changes.extend_from_slice(changes);
        } else {
            changes.iter().for_each(|&c| self.push(c, status));
        }
    }

    pub fn push(&mut self, change: Change, status: &ReplicationStatus) {
        if self.index.is_none() {
            if self.changes.len() < self.max {
                self.changes.push(change);
                return;
            }
            self.compact(status);
        }
        let index = self.index.as_mut().expect("compacted");
        match index.entry(key(&change)) {
            Entry::Occupied(at) => {
                merge(&mut self.changes[*at.get()], change);
                status.coalesced.fetch_add(1, Ordering::Relaxed);
            }
            Entry::Vacant(slot) if self.changes.len() < self.max => {
                slot.insert(self.changes.len());
                self.changes.push(change);
            }
            Entry::Vacant(_) => {
                status.dropped_backlog.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One change per peer, the latest of each (in the order of each peer's first).
    fn compact(&mut self, status: &ReplicationStatus) {
        let mut index: HashMap<PeerKey, usize, foldhash::fast::RandomState> = HashMap::default();
        let mut kept: Vec<Change> = Vec::with_capacity(self.changes.len());
        for change in self.changes.drain(..) {
            match index.entry(key(&change)) {
                Entry::Occupied(at) => {
                    merge(&mut kept[*at.get()], change);
                    status.coalesced.fetch_add(1, Ordering::Relaxed);
                }
                Entry::Vacant(slot) => {
                    slot.insert(kept.len());
                    kept.push(change);
                }
            }
        }
        self.changes = kept;
        self.index = Some(index);
    }
}

fn key(change: &Change) -> PeerKey {
    (*change.info_hash(), change.peer())
}

/// `later` replaces `earlier`, but a first `completed` is counted where it is applied: a
/// later change of the same peer must not erase it.
fn merge(earlier: &mut Change, mut later: Change) {
    if let (
        Change::Announced {
            completed: true, ..
        },
        Change::Announced { completed, .. },
    ) = (&*earlier, &mut later)
    {
        *completed = true;
    }
    *earlier = later;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bittorrent::PeerId;

    fn announced(port: u16, seeder: bool, completed: bool) -> Change {
        Change::Announced {
            info_hash: InfoHash([1; 20]),
            peer: SocketAddr::from(([10, 0, 0, 1], port)),
            peer_id: PeerId([0; 20]),
            seeder,
            completed,
        }
    }

    #[test]
    fn changes_stay_in_order_until_the_bound_then_one_per_peer() {
        let status = ReplicationStatus::default();
        let mut backlog = Backlog::new(3);
        backlog.extend(
            &[announced(1, false, true), announced(1, true, false)],
            &status,
        );
        assert_eq!(backlog.len(), 2, "a plain list below the bound");
        backlog.push(announced(2, true, false), &status);
        // At the bound: compacted to one change per peer, the latest, keeping `completed`.
        backlog.push(announced(3, true, false), &status);
        assert_eq!(
            backlog.changes(),
            [
                announced(1, true, true),
                announced(2, true, false),
                announced(3, true, false)
            ]
        );
        // Now a peer's change replaces its earlier one; a new peer past the bound is dropped.
        backlog.push(announced(2, false, false), &status);
        backlog.push(announced(4, false, false), &status);
        assert_eq!(backlog.changes()[1], announced(2, false, false));
        assert_eq!(backlog.len(), 3);
        assert_eq!(status.coalesced.load(Ordering::Relaxed), 2);
        assert_eq!(status.dropped_backlog.load(Ordering::Relaxed), 1);
        // Sent: a plain list again.
        backlog.clear();
        backlog.extend(&[announced(5, true, false); 3], &status);
        assert_eq!(backlog.len(), 3);
    }
}
