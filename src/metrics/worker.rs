//! One worker's counters. Each worker writes only its own (a relaxed load and store, no lock
//! prefix and no cache line shared with another worker); the collector sums them at scrape
//! time.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crate::bittorrent::Protocol;
use crate::handler::RequestError;

/// A counter with one writer.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a request asked for, or what a response answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Connect = 0,
    Announce,
    Scrape,
    /// A UDP error packet or an HTTP `failure reason`.
    Error,
    /// Anything else: malformed requests, unknown paths.
    Other,
}

pub const ACTIONS: [Action; 5] = [
    Action::Connect,
    Action::Announce,
    Action::Scrape,
    Action::Error,
    Action::Other,
];

impl Action {
    pub fn label(self) -> &'static str {
        ["connect", "announce", "scrape", "error", "other"][self as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest = 0,
    BadConnectionId,
    RejectedByHook,
    LimitReached,
}

pub const ERROR_KINDS: [ErrorKind; 4] = [
    ErrorKind::BadRequest,
    ErrorKind::BadConnectionId,
    ErrorKind::RejectedByHook,
    ErrorKind::LimitReached,
];

impl ErrorKind {
    pub fn label(self) -> &'static str {
        [
            "bad_request",
            "bad_connection_id",
            "rejected_by_hook",
            "limit_reached",
        ][self as usize]
    }
}

/// Why an HTTP connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionClose {
    /// By the client, or by us after its last answer (`Connection: close`, an error reply).
    Done = 0,
    /// Nothing to answer or send for `http.idle_timeout_secs`.
    IdleTimeout,
    /// A request not whole within `http.request_timeout_secs` of its first byte.
    RequestTimeout,
    /// An answer not taken by the client within `http.request_timeout_secs`.
    SendTimeout,
    /// Closed at `http.max_connections` to admit a new connection (least recently active).
    Evicted,
    /// The client sent more requests than a connection may hold while it left their answers
    /// unread.
    InputLimit,
}

pub const CONNECTION_CLOSES: [ConnectionClose; 6] = [
    ConnectionClose::Done,
    ConnectionClose::IdleTimeout,
    ConnectionClose::RequestTimeout,
    ConnectionClose::SendTimeout,
    ConnectionClose::Evicted,
    ConnectionClose::InputLimit,
];

impl ConnectionClose {
    pub fn label(self) -> &'static str {
        [
            "done",
            "idle_timeout",
            "request_timeout",
            "send_timeout",
            "evicted",
            "input_limit",
        ][self as usize]
    }
}

/// One worker's HTTP connections: what came, what was turned away, what was closed and why.
#[derive(Default)]
pub struct ConnectionCounters {
    pub accepted: Counter,
    /// Closed at once: the source held its share of `per_source.max_http_connections`.
    pub refused_per_source: Counter,
    /// [reason]
    pub closed: [Counter; CONNECTION_CLOSES.len()],
    /// accept() failures (EMFILE and the like).
    pub accept_errors: Counter,
}

pub const PROTOCOLS: [Protocol; 2] = [Protocol::Udp, Protocol::Http];

pub fn protocol_index(p: Protocol) -> usize {
    match p {
        Protocol::Udp => 0,
        Protocol::Http => 1,
    }
}

pub fn protocol_label(p: Protocol) -> &'static str {
    ["udp", "http"][protocol_index(p)]
}

/// Upper bounds of the latency buckets, in seconds: handler time, from bytes in to bytes out.
pub const LATENCY_BUCKETS: [f64; 10] = [
    1e-6, 2e-6, 5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 250e-6, 1e-3, 10e-3,
];

/// One request in this many is timed: two clock reads per request would cost more than the
/// rest of the metrics together.
pub const LATENCY_SAMPLE_EVERY: u32 = 16;

#[derive(Default)]
pub struct Latency {
    pub buckets: [Counter; LATENCY_BUCKETS.len()],
    pub count: Counter,
    pub sum_nanos: Counter,
}

#[derive(Default)]
pub struct WorkerMetrics {
    /// [protocol][action][ipv6]
    pub requests: [[[Counter; 2]; ACTIONS.len()]; 2],
    pub responses: [[[Counter; 2]; ACTIONS.len()]; 2],
    /// [protocol][kind]
    pub errors: [[Counter; ERROR_KINDS.len()]; 2],
    /// Rejections by pre-hook, in the chain's order.
    pub hook_rejections: Box<[Counter]>,
    pub latency: [Latency; 2],
    pub http_connections: ConnectionCounters,
    /// Swarm changes this worker could not hand to replication (its queue was full).
    pub replication_dropped: Counter,
    hook_names: Vec<&'static str>,
    sample: AtomicU32,
}

impl WorkerMetrics {
    pub fn new(hook_names: Vec<&'static str>) -> Self {
        WorkerMetrics {
            hook_rejections: hook_names.iter().map(|_| Counter::default()).collect(),
            hook_names,
            ..WorkerMetrics::default()
        }
    }

    /// Starts timing this request if it is one of the sampled ones.
    #[inline]
    pub fn start(&self) -> Option<Instant> {
        let n = self.sample.load(Ordering::Relaxed).wrapping_add(1);
        self.sample.store(n, Ordering::Relaxed);
        n.is_multiple_of(LATENCY_SAMPLE_EVERY).then(Instant::now)
    }

    /// Counts one request and its response (`None`: unanswered).
    #[inline]
    pub fn record(
        &self,
        protocol: Protocol,
        ipv6: bool,
        request: Action,
        response: Option<Action>,
        error: Option<&RequestError>,
        started: Option<Instant>,
    ) {
        let p = protocol_index(protocol);
        let f = usize::from(ipv6);
        self.requests[p][request as usize][f].inc();
        if let Some(action) = response {
            self.responses[p][action as usize][f].inc();
        }
        if let Some(error) = error {
            self.record_error(p, error);
        }
        if let Some(started) = started {
            let latency = &self.latency[p];
            let elapsed = started.elapsed();
            let secs = elapsed.as_secs_f64();
            if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
                latency.buckets[i].inc();
            }
            latency.count.inc();
            latency.sum_nanos.add(elapsed.as_nanos() as u64);
        }
    }

    #[cold]
    fn record_error(&self, protocol: usize, error: &RequestError) {
        let kind = match error {
            RequestError::BadRequest(_) => ErrorKind::BadRequest,
            RequestError::BadConnectionId => ErrorKind::BadConnectionId,
            RequestError::RejectedByHook { hook, .. } => {
                if let Some(i) = self.hook_names.iter().position(|n| n == hook) {
                    self.hook_rejections[i].inc();
                }
                ErrorKind::RejectedByHook
            }
            RequestError::LimitReached(_) => ErrorKind::LimitReached,
        };
        self.errors[protocol][kind as usize].inc();
    }

    pub fn hook_names(&self) -> &[&'static str] {
        &self.hook_names
    }
}
