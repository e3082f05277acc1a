//! How workers hand swarm changes to the replication thread: one bounded single-producer
//! queue per worker (nothing shared between workers: no lock, no common atomic), preallocated
//! (no allocation per change), installed in the worker's thread so that the store's observer
//! seam finds it without the request path carrying it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::record::Change;
use crate::bittorrent::{InfoHash, PeerId};
use crate::metrics::WorkerMetrics;
use crate::swarm::SwarmObserver;

/// One worker's end of its queue.
pub struct WorkerOutbox {
    producer: rtrb::Producer<Change>,
    metrics: Arc<WorkerMetrics>,
}

thread_local! {
    static OUTBOX: RefCell<Option<WorkerOutbox>> = const { RefCell::new(None) };
}

impl WorkerOutbox {
    /// Makes this the outbox of the calling thread (a worker, at its start).
    pub fn install(self) {
        OUTBOX.with(|outbox| *outbox.borrow_mut() = Some(self));
    }
}

/// The observer the store calls: pushes to the calling worker's queue. Threads without one
/// (tests and tools calling the store directly) share a fallback queue behind a lock.
pub struct Outboxes {
    fallback: Mutex<rtrb::Producer<Change>>,
}

/// The replication thread's ends: one consumer per worker, then the fallback's.
pub type Inboxes = Vec<rtrb::Consumer<Change>>;

/// Queues for `workers` workers of `capacity` changes each, with the worker's counters.
pub fn outboxes(
    metrics: &[Arc<WorkerMetrics>],
    capacity: usize,
) -> (Arc<Outboxes>, Vec<WorkerOutbox>, Inboxes) {
    let mut inboxes = Vec::with_capacity(metrics.len() + 1);
    let workers = metrics
        .iter()
        .map(|metrics| {
            let (producer, consumer) = rtrb::RingBuffer::new(capacity);
            inboxes.push(consumer);
            WorkerOutbox {
                producer,
                metrics: metrics.clone(),
            }
        })
        .collect();
    let (fallback, consumer) = rtrb::RingBuffer::new(capacity);
    inboxes.push(consumer);
    let observer = Arc::new(Outboxes {
        fallback: Mutex::new(fallback),
    });
    (observer, workers, inboxes)
}

impl Outboxes {
    fn push(&self, change: Change) {
        OUTBOX.with(|outbox| match outbox.borrow_mut().as_mut() {
            Some(outbox) => {
                if outbox.producer.push(change).is_err() {
                    outbox.metrics.replication_dropped.inc();
                }
            }
            None => {
                // Full: dropped; the replication thread sees the fallback's losses nowhere,
                // but nothing on a worker's path comes here.
                let _ = self.fallback.lock().push(change);
            }
        });
    }
}

impl SwarmObserver for Outboxes {
    fn announced(
        &self,
        info_hash: &InfoHash,
        peer: SocketAddr,
        peer_id: &PeerId,
        seeder: bool,
        completed: bool,
    ) {
        self.push(Change::Announced {
            info_hash: *info_hash,
            peer,
            peer_id: *peer_id,
            seeder,
            completed,
        });
    }

    fn removed(&self, info_hash: &InfoHash, peer: SocketAddr) {
        self.push(Change::Removed {
            info_hash: *info_hash,
            peer,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_fills_its_own_queue_and_a_full_one_drops_and_counts() {
        let metrics: Vec<Arc<WorkerMetrics>> = (0..2).map(|_| Arc::default()).collect();
        let (observer, mut workers, mut inboxes) = outboxes(&metrics, 2);
        let second = workers.pop().unwrap();
        let first = workers.pop().unwrap();
        let hash = InfoHash([1; 20]);
        let peer: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let observer2 = observer.clone();
        std::thread::spawn(move || {
            first.install();
            for _ in 0..3 {
                observer2.removed(&hash, peer);
            }
        })
        .join()
        .unwrap();
        let observer3 = observer.clone();
        std::thread::spawn(move || {
            second.install();
            observer3.announced(&hash, peer, &PeerId([2; 20]), true, false);
        })
        .join()
        .unwrap();
        // A thread without an outbox uses the fallback.
        observer.removed(&hash, peer);
        assert_eq!(inboxes[0].slots(), 2);
        assert_eq!(metrics[0].replication_dropped.get(), 1);
        assert_eq!(inboxes[1].slots(), 1);
        assert_eq!(metrics[1].replication_dropped.get(), 0);
        assert!(matches!(
            inboxes[1].pop(),
            Ok(Change::Announced { seeder: true, .. })
        ));
        assert_eq!(inboxes[2].slots(), 1);
    }
}
