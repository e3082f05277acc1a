//! The HTTP connections of one worker, as both engines keep them: who gets in, who is closed to
//! make room, and whose time is up. Engines do the I/O and tell this table what happened.
//!
//! A public tracker's HTTP port meets slowloris, idle-connection floods and clients that never
//! read. Three rules keep it open to everyone else (nginx's and HAProxy's defences):
//! - **per source**, at most [`HttpLimits::max_per_source`] connections (a source is an IPv4
//!   address or an IPv6 prefix, see [`crate::source`]); more are closed at once;
//! - **at the cap**, the least recently active connection is closed to admit the new one, so a
//!   flood of connections that never finish a request cannot lock real clients out: theirs
//!   finish their request at once and move to the back of the line;
//! - **deadlines** that trickling bytes do not extend: a request must arrive whole within
//!   `request_timeout` of its first byte, an answer must be taken within `request_timeout` of
//!   being written, and a connection with nothing to do is closed after `idle_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::HttpLimits;
use crate::metrics::{ConnectionClose, WorkerMetrics};
use crate::source::SourceKey;

/// No slot: the end of the activity list.
const NIL: usize = usize::MAX;
/// At most one warning this often per worker about refused or evicted connections.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A connection's slot: the engine's state plus what the rules need.
struct Slot<C> {
    conn: C,
    source: SourceKey,
    /// Neighbours in the activity list (open connections, least recently active first).
    prev: usize,
    next: usize,
    /// False once the connection is being closed (io_uring keeps the slot until its
    /// operations end; it no longer counts against any limit).
    open: bool,
    /// Accepted, or last answered a request.
    last_active: Instant,
    /// The first byte of the request not yet answered arrived then.
    request_started: Option<Instant>,
    /// Output has waited for the client since then.
    output_since: Option<Instant>,
}

/// What happened on a connection, as the engine saw it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Activity {
    /// Requests answered.
    pub answered: usize,
    /// Bytes of an unanswered request are held.
    pub partial_input: bool,
    /// Output waits to be written or is being written.
    pub output_pending: bool,
}

/// Why a new connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

pub struct ConnectionTable<C> {
    slots: Slab<Slot<C>>,
    head: usize,
    tail: usize,
    open: usize,
    per_source: HashMap<SourceKey, u32, foldhash::fast::RandomState>,
    limits: HttpLimits,
    metrics: Arc<WorkerMetrics>,
    last_warning: Option<Instant>,
    unreported: u64,
}

impl<C> ConnectionTable<C> {
    pub fn new(limits: HttpLimits, metrics: Arc<WorkerMetrics>) -> Self {
        ConnectionTable {
            slots: Slab::new(),
            head: NIL,
            tail: NIL,
            open: 0,
            per_source: HashMap::default(),
            limits,
            metrics,
            last_warning: None,
            unreported: 0,
        }
    }

    /// Decides on a new connection from `peer`: `Err` when its source holds its share already;
    /// at the cap, `Ok(Some(key))` names the connection to close first (the engine closes it
    /// with [`Self::close`] before it inserts the new one).
    pub fn admit(&mut self, peer: SocketAddr, now: Instant) -> Result<Option<usize>, Refused> {
        let source = SourceKey::new(peer.ip(), self.limits.ipv6_prefix_len);
        let max_per_source = self.limits.max_per_source;
        if max_per_source > 0
            && self.per_source.get(&source).copied().unwrap_or(0) as usize >= max_per_source
            && !self.is_exempt(peer)
        {
            self.metrics.http_connections.refused_per_source.inc();
            self.warn(
                now,
                "a source reached per_source.max_http_connections; refusing",
            );
            return Err(Refused);
        }
        if self.open < self.limits.max_connections_per_worker || self.head == NIL {
            return Ok(None);
        }
        self.warn(
            now,
            "http.max_connections reached: closing the least recently active connections",
        );
        Ok(Some(self.head))
    }

    /// The key the next [`Self::insert`] will return (engines register the socket under it
    /// first).
    pub fn next_key(&self) -> usize {
        self.slots.vacant_key()
    }

    fn is_exempt(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.limits
            .per_source_exempt
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// Adds an admitted connection; returns its key.
    pub fn insert(&mut self, conn: C, peer: SocketAddr, now: Instant) -> usize {
        let source = SourceKey::new(peer.ip(), self.limits.ipv6_prefix_len);
        let key = self.slots.insert(Slot {
            conn,
            source,
            prev: NIL,
            next: NIL,
            open: true,
            last_active: now,
            request_started: None,
            output_since: None,
        });
        self.push_back(key);
        self.open += 1;
        *self.per_source.entry(source).or_insert(0) += 1;
        self.metrics.http_connections.accepted.inc();
        key
    }

    pub fn get(&self, key: usize) -> Option<&C> {
        self.slots.get(key).map(|s| &s.conn)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut C> {
        self.slots.get_mut(key).map(|s| &mut s.conn)
    }

    /// Every connection with a slot, open or closing.
    pub fn iter(&self) -> impl Iterator<Item = &C> {
        self.slots.iter().map(|(_, s)| &s.conn)
    }

    /// Whether `key` is an open connection (not closing, not freed).
    #[cfg(test)]
    fn is_open(&self, key: usize) -> bool {
        self.slots.get(key).is_some_and(|s| s.open)
    }

    /// Records what the engine saw on `key`, which sets its deadlines.
    pub fn note(&mut self, key: usize, now: Instant, activity: Activity) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if !slot.open {
            return;
        }
        if activity.answered > 0 {
            slot.last_active = now;
            // What is left is the start of the next request.
            slot.request_started = activity.partial_input.then_some(now);
            self.move_to_back(key);
        } else if !activity.partial_input {
            slot.request_started = None;
        } else if slot.request_started.is_none() {
            slot.request_started = Some(now);
        }
        let slot = &mut self.slots[key];
        if !activity.output_pending {
            slot.output_since = None;
        } else if slot.output_since.is_none() {
            slot.output_since = Some(now);
        }
    }

    /// The connections whose time is up at `now`, with the reason, into `out` (cleared).
    pub fn expired(&self, now: Instant, out: &mut Vec<(usize, ConnectionClose)>) {
        out.clear();
        let limits = &self.limits;
        let past = |since: Instant, limit: Duration| now.saturating_duration_since(since) > limit;
        for (key, slot) in self.slots.iter().filter(|(_, s)| s.open) {
            // Output first: requests held back behind unread answers are the client's doing
            // as a reader, not a slow request.
            let reason = if slot
                .output_since
                .is_some_and(|t| past(t, limits.request_timeout))
            {
                ConnectionClose::SendTimeout
            } else if slot
                .request_started
                .is_some_and(|t| past(t, limits.request_timeout))
            {
                ConnectionClose::RequestTimeout
            } else if slot.request_started.is_none()
                && slot.output_since.is_none()
                && past(slot.last_active, limits.idle_timeout)
            {
                ConnectionClose::IdleTimeout
            } else {
                continue;
            };
            out.push((key, reason));
        }
    }

    /// Marks `key` closed for `reason`: it stops counting against the limits. The slot stays
    /// until [`Self::remove`] (io_uring waits for its operations first).
    pub fn close(&mut self, key: usize, reason: ConnectionClose) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if !slot.open {
            return;
        }
        slot.open = false;
        let source = slot.source;
        self.unlink(key);
        self.open -= 1;
        if let Some(count) = self.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
        self.metrics.http_connections.closed[reason as usize].inc();
    }

    /// Frees `key`'s slot (closing it first, as the client's doing, if still open).
    pub fn remove(&mut self, key: usize) -> Option<C> {
        self.close(key, ConnectionClose::Done);
        self.slots.try_remove(key).map(|s| s.conn)
    }

    /// Open connections.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open
    }

    /// Slots held, open or closing.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// A warning at most every [`WARN_EVERY`], saying how many were not logged in between:
    /// a flood must not turn into a flood of log lines.
    fn warn(&mut self, now: Instant, what: &str) {
        if self
            .last_warning
            .is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY)
        {
            self.unreported += 1;
            return;
        }
        tracing::warn!(
            open = self.open,
            since_last_warning = self.unreported,
            "{what}"
        );
        self.last_warning = Some(now);
        self.unreported = 0;
    }

    fn push_back(&mut self, key: usize) {
        let slot = &mut self.slots[key];
        slot.prev = self.tail;
        slot.next = NIL;
        if self.tail == NIL {
            self.head = key;
        } else {
            self.slots[self.tail].next = key;
        }
        self.tail = key;
    }

    fn unlink(&mut self, key: usize) {
        let (prev, next) = (self.slots[key].prev, self.slots[key].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next].prev = prev;
        }
    }

    fn move_to_back(&mut self, key: usize) {
        if self.tail != key {
            self.unlink(key);
            self.push_back(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::ConnectionRules;

    fn limits(max: usize, per_source: usize) -> HttpLimits {
        HttpLimits {
            max_connections_per_worker: max,
            max_per_source: per_source,
            ipv6_prefix_len: 64,
            per_source_exempt: Arc::from(["10.9.0.0/16".parse::<ipnet::IpNet>().unwrap()]),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            connection: ConnectionRules {
                max_request_bytes: 8192,
                keep_alive: true,
            },
        }
    }

    fn table(max: usize, per_source: usize) -> ConnectionTable<u32> {
        ConnectionTable::new(limits(max, per_source), Arc::default())
    }

    fn peer(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 5000))
    }

    fn admit_and_insert(t: &mut ConnectionTable<u32>, p: SocketAddr, now: Instant) -> usize {
        if let Some(victim) = t.admit(p, now).expect("admitted") {
            t.remove(victim);
        }
        t.insert(0, p, now)
    }

    #[test]
    fn at_the_cap_the_least_recently_active_connection_makes_room() {
        let mut t = table(3, 0);
        let now = Instant::now();
        let a = t.insert(1, peer(1), now);
        let b = t.insert(2, peer(2), now);
        let c = t.insert(3, peer(3), now);
        // a answers a request: b is now the least recently active.
        t.note(
            a,
            now,
            Activity {
                answered: 1,
                ..Activity::default()
            },
        );
        assert_eq!(t.admit(peer(4), now), Ok(Some(b)));
        t.close(b, ConnectionClose::Evicted);
        assert_eq!(t.open(), 2);
        let d = t.insert(4, peer(4), now);
        assert_eq!(t.admit(peer(5), now), Ok(Some(c)));
        t.remove(c);
        assert_eq!(t.admit(peer(5), now), Ok(None));
        assert!(t.is_open(a) && t.is_open(d) && !t.is_open(b));
        // A closed slot is kept until removed, and no longer counts.
        assert_eq!(t.len(), 3);
        assert_eq!(t.remove(b), Some(2));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_source_at_its_share_is_refused_and_counted_by_ipv6_prefix() {
        let mut t = table(100, 2);
        let now = Instant::now();
        let v6 = |s: &str| SocketAddr::new(s.parse().unwrap(), 1);
        admit_and_insert(&mut t, v6("2001:db8::1"), now);
        let second = admit_and_insert(&mut t, v6("2001:db8::2"), now);
        assert_eq!(t.admit(v6("2001:db8::ffff:3"), now), Err(Refused));
        assert_eq!(t.admit(v6("2001:db8:0:1::1"), now), Ok(None));
        t.remove(second);
        assert_eq!(t.admit(v6("2001:db8::3"), now), Ok(None));
        assert_eq!(t.metrics.http_connections.refused_per_source.get(), 1);
        // A trusted proxy carries every client: no per-source limit for it.
        let proxy = SocketAddr::from(([10, 9, 1, 1], 80));
        for _ in 0..5 {
            admit_and_insert(&mut t, proxy, now);
        }
    }

    #[test]
    fn deadlines_are_not_extended_by_trickling_bytes() {
        let mut t = table(100, 0);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let idle = t.insert(0, peer(1), start);
        let slow = t.insert(0, peer(2), start);
        let stuck = t.insert(0, peer(3), start);
        let busy = t.insert(0, peer(4), start);
        let partial = Activity {
            partial_input: true,
            ..Activity::default()
        };
        // `slow` sends a byte every second and never finishes its request.
        for s in 1..12 {
            t.note(slow, at(s), partial);
        }
        // `stuck` was answered but never reads its answer.
        t.note(
            stuck,
            at(2),
            Activity {
                answered: 1,
                output_pending: true,
                ..Activity::default()
            },
        );
        // `busy` answers a request every 5 s.
        for s in (5..40).step_by(5) {
            t.note(
                busy,
                at(s),
                Activity {
                    answered: 1,
                    ..Activity::default()
                },
            );
        }
        let mut out = Vec::new();
        t.expired(at(11), &mut out);
        assert_eq!(out, vec![]);
        t.expired(at(12), &mut out);
        assert_eq!(out, vec![(slow, ConnectionClose::RequestTimeout)]);
        t.expired(at(12), &mut out);
        t.expired(at(12) + Duration::from_millis(1), &mut out);
        assert!(out.contains(&(stuck, ConnectionClose::SendTimeout)));
        t.expired(at(31), &mut out);
        assert!(out.contains(&(idle, ConnectionClose::IdleTimeout)));
        assert!(!out.iter().any(|&(k, _)| k == busy));
    }
}
