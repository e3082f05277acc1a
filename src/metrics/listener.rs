//! The metrics listener: `/metrics` (Prometheus text format), `/healthz` (the process runs) and
//! `/readyz` (every worker listens and the store is ready).
//!
//! Liveness probes fail, and orchestrators restart the process, when these paths stop answering,
//! so no client may hold them up: one thread runs a non-blocking event loop over many
//! connections at once (never a thread per connection), and every connection is bounded.
//!
//! - One request per connection, its head at most 4 KiB (more is a 400), answered with
//!   `Connection: close`.
//! - Deadlines counted from fixed points, which bytes trickling in do not move: the request head
//!   must arrive within [`REQUEST_DEADLINE`] of the accept, the response must be written within
//!   [`RESPONSE_DEADLINE`] of being ready; past either, the connection is closed.
//! - At most [`MAX_CONNECTIONS`] open: a newcomer at the cap evicts the oldest connection still
//!   waiting for its request (slow clients are what fills the cap, while probes and scrapers send
//!   their request at once); when every connection is being answered, the oldest of those (128
//!   clients that ask for `/metrics` and never read must not lock the probes out either).
//! - Output goes out as the client takes it: a client that never reads stalls only itself.
//! - Failing accepts (EMFILE, ...) pause accepting for 100 ms and warn at most once every 10 s.
//!
//! The thread runs until the process exits.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

use super::Metrics;

/// From accept to a complete request head. Probes and scrapers send theirs in one packet as soon
/// as they connect: three seconds is ample even over a poor network, and short enough that what
/// a slow client holds is soon given back.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// From a response being ready to its last byte written. `/metrics` is tens of KB at most, a
/// moment for a scraper that reads; this bounds how long one that does not read holds its slot
/// (when the cap is reached before, the oldest being answered makes room).
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(5);
/// Open connections. Far more than the probes and scrapers of one process need, few enough that
/// their buffers (4 KiB in, at most one `/metrics` out) stay small.
pub const MAX_CONNECTIONS: usize = 128;

/// A request head longer than this is refused.
const MAX_REQUEST_BYTES: usize = 4096;
/// After a failed accept: the usual causes (out of descriptors or memory) last a while, and a
/// listener that stays readable would otherwise be retried in a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Accepts before the loop turns to the connections it has: a flood of connections must not
/// starve the deadlines and writes of those already open.
const ACCEPTS_PER_TURN: usize = 64;
const LISTENER: Token = Token(usize::MAX);

/// The listener's bounds; [`serve`] uses the defaults, tests may pick others.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub request_deadline: Duration,
    pub response_deadline: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_deadline: REQUEST_DEADLINE,
            response_deadline: RESPONSE_DEADLINE,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Binds `addr` and serves on a thread of its own with the default [`Limits`]; returns the
/// bound address.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<SocketAddr> {
    serve_with(addr, metrics, Limits::default())
}

/// [`serve`] with other limits.
pub fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> anyhow::Result<SocketAddr> {
    let mut listener =
        TcpListener::bind(addr).with_context(|| format!("bind metrics listener on {addr}"))?;
    let bound = listener.local_addr()?;
    let poll = Poll::new().context("create the metrics listener's poller")?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .context("register the metrics listener")?;
    let listener = Listener {
        poll,
        listener,
        metrics,
        limits,
        connections: Slab::with_capacity(limits.max_connections),
        backlog: true,
        accept_paused_until: None,
        accept_warnings: WarningLimiter::new(ACCEPT_WARNING_INTERVAL),
    };
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || listener.run())
        .context("spawn metrics thread")?;
    Ok(bound)
}

struct Listener {
    poll: Poll,
    listener: TcpListener,
    metrics: Arc<Metrics>,
    limits: Limits,
    connections: Slab<Connection>,
    /// Connections may wait in the kernel's queue: events are edge-triggered, so after a pause
    /// or a full turn of accepts no new event says so.
    backlog: bool,
    accept_paused_until: Option<Instant>,
    accept_warnings: WarningLimiter,
}

struct Connection {
    stream: TcpStream,
    accepted: Instant,
    /// Of the current state; closed once past.
    deadline: Instant,
    state: State,
}

enum State {
    /// `len` bytes of the request head are in `buf`.
    Reading { buf: Box<[u8]>, len: usize },
    /// `sent` bytes of `out` are written.
    Writing {
        out: Vec<u8>,
        sent: usize,
        waits_writable: bool,
    },
}

impl Listener {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.next_wakeup(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Not a condition that passes (a bad descriptor or argument): with the probes
                // unanswered, an orchestrator restarts the process, which is the repair.
                tracing::error!(error = %e, "metrics listener stopped: poll failed");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.backlog = true,
                    Token(key) => self.advance(key),
                }
            }
            let now = Instant::now();
            if self.backlog && self.accept_paused_until.is_none_or(|until| until <= now) {
                self.accept_paused_until = None;
                self.accept(now);
            }
            self.close_expired(Instant::now());
        }
    }

    /// How long the loop may sleep: until the first deadline or the end of an accept pause.
    fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        let accept = match (self.backlog, self.accept_paused_until) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, Some(until)) => Some(until),
        };
        self.connections
            .iter()
            .map(|(_, c)| c.deadline)
            .chain(accept)
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backlog = false;
                    return;
                }
                // The client gave up before we took it: nothing to pause for.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    self.accept_failed(e, now);
                    return;
                }
            }
        }
    }

    fn accept_failed(&mut self, error: io::Error, now: Instant) {
        self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
        if let Some(suppressed) = self.accept_warnings.due(now) {
            tracing::warn!(
                error = %error,
                suppressed,
                "metrics listener cannot accept; retrying every {} ms (`suppressed`: failures not \
                 logged since the last warning, at most one every {} s)",
                ACCEPT_BACKOFF.as_millis(),
                ACCEPT_WARNING_INTERVAL.as_secs(),
            );
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        if self.connections.len() >= self.limits.max_connections && !self.evict_oldest() {
            tracing::debug!(%peer, "metrics connection cap reached; closing");
            return;
        }
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
            .is_err()
        {
            return;
        }
        // Taken per connection, not per turn: a deadline never starts before the client connected.
        let accepted = Instant::now();
        entry.insert(Connection {
            stream,
            accepted,
            deadline: accepted + self.limits.request_deadline,
            state: State::Reading {
                buf: vec![0; MAX_REQUEST_BYTES].into_boxed_slice(),
                len: 0,
            },
        });
        // A probe's request usually arrives with its connection: answer it now, before more
        // connections queued behind it can evict it at the cap.
        self.advance(key);
    }

    /// Closes the oldest connection still waiting for its request, or if there is none the
    /// oldest being answered; false if there is no connection at all.
    fn evict_oldest(&mut self) -> bool {
        let oldest = |reading: bool| {
            self.connections
                .iter()
                .filter(|(_, c)| matches!(c.state, State::Reading { .. }) == reading)
                .min_by_key(|(_, c)| c.accepted)
                .map(|(key, _)| key)
        };
        match oldest(true).or_else(|| oldest(false)) {
            Some(key) => {
                tracing::debug!("metrics connection cap reached; evicting the oldest client");
                self.close(key);
                true
            }
            None => false,
        }
    }

    /// Moves the connection on as far as its socket allows, closing it when it is done.
    fn advance(&mut self, key: usize) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if !conn.advance(&self.metrics, self.limits, self.poll.registry(), Token(key)) {
            self.close(key);
        }
    }

    fn close_expired(&mut self, now: Instant) {
        let registry = self.poll.registry();
        self.connections.retain(|_, conn| {
            if conn.deadline > now {
                return true;
            }
            tracing::debug!(
                writing = matches!(conn.state, State::Writing { .. }),
                "metrics connection past its deadline; closing"
            );
            let _ = registry.deregister(&mut conn.stream);
            false
        });
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.connections.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }
}

impl Connection {
    /// False once the connection is over: answered, closed by the client, or failed.
    fn advance(
        &mut self,
        metrics: &Metrics,
        limits: Limits,
        registry: &Registry,
        token: Token,
    ) -> bool {
        if let State::Reading { buf, len } = &mut self.state {
            match read_request(&mut self.stream, buf, len, metrics) {
                Ok(Some(out)) => {
                    self.state = State::Writing {
                        out,
                        sent: 0,
                        waits_writable: false,
                    };
                    self.deadline = Instant::now() + limits.response_deadline;
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
        let State::Writing {
            out,
            sent,
            waits_writable,
        } = &mut self.state
        else {
            return true;
        };
        match write_response(&mut self.stream, out, sent) {
            Ok(true) => false,
            Ok(false) if *waits_writable => true,
            Ok(false) => {
                *waits_writable = true;
                registry
                    .reregister(&mut self.stream, token, Interest::WRITABLE)
                    .is_ok()
            }
            Err(_) => false,
        }
    }
}

/// Reads what the socket holds: the response once the head is complete (or can never be valid),
/// None while more is to come, an error once the connection is over.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut [u8],
    len: &mut usize,
    metrics: &Metrics,
) -> io::Result<Option<Vec<u8>>> {
    loop {
        // Never empty: a full buffer was answered below.
        match stream.read(&mut buf[*len..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => *len += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..*len]) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(Some(route(request.path.unwrap_or("/"), metrics)));
            }
            Ok(httparse::Status::Partial) if *len < buf.len() => {}
            // Too long, too many headers, or not HTTP.
            _ => {
                return Ok(Some(response(
                    "400 Bad Request",
                    "text/plain",
                    b"bad request",
                )));
            }
        }
    }
}

fn route(path: &str, metrics: &Metrics) -> Vec<u8> {
    match path.split('?').next().unwrap_or("") {
        "/metrics" => response(
            "200 OK",
            "text/plain; version=0.0.4",
            metrics.render().as_bytes(),
        ),
        "/healthz" => response("200 OK", "text/plain", b"ok"),
        "/readyz" if metrics.is_ready() => response("200 OK", "text/plain", b"ready"),
        "/readyz" => response("503 Service Unavailable", "text/plain", b"not ready"),
        _ => response("404 Not Found", "text/plain", b"not found"),
    }
}

fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

/// Writes what the socket takes: true once all of `out` is written.
fn write_response(stream: &mut TcpStream, out: &[u8], sent: &mut usize) -> io::Result<bool> {
    while *sent < out.len() {
        match stream.write(&out[*sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Lets a repeated warning through at most once an interval, counting the ones held back.
struct WarningLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarningLimiter {
    fn new(interval: Duration) -> Self {
        WarningLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Some(how many were held back since the last one) when this warning is to be logged.
    fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.saturating_duration_since(at) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_pass_once_an_interval_with_the_count_held_back() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut limiter = WarningLimiter::new(Duration::from_secs(10));
        assert_eq!(limiter.due(at(0)), Some(0));
        // A failing accept every 100 ms: one warning in ten seconds, then the count.
        let passed: Vec<u64> = (1..100).filter_map(|i| limiter.due(at(i * 100))).collect();
        assert!(passed.is_empty(), "{passed:?}");
        assert_eq!(limiter.due(at(10_000)), Some(99));
        assert_eq!(limiter.due(at(10_100)), None);
        assert_eq!(limiter.due(at(60_000)), Some(1));
    }
}
