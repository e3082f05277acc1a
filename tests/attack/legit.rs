//! The legitimate client: while an attack runs it announces every 100 ms over UDP and over HTTP
//! from 127.0.0.1 (and asks for /healthz when the metrics port is attacked), and records how
//! many attempts were answered correctly within 1 s, and how fast.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::wire::{self, FailureKind};

pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// An attempt counts as answered only if its whole exchange ends within this.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);
const INFO_HASH: [u8; 20] = *b"hayate-attack-legit!";
const CLIENT_TAG: &[u8; 8] = b"-LG0001-";

/// What the legitimate client does each interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// BEP 15 connect, then announce.
    Udp,
    /// One announce on a new connection.
    Http,
    /// GET /healthz on the metrics port.
    Healthz,
}

#[derive(Clone, Debug, Default)]
pub struct ProbeStats {
    pub attempts: u32,
    /// Latency of each attempt answered correctly in time.
    pub answered: Vec<Duration>,
    /// Attempts that were not, by why.
    pub failures: BTreeMap<FailureKind, u32>,
}

impl ProbeStats {
    pub fn ok_percent(&self) -> f64 {
        if self.attempts == 0 {
            return 0.0;
        }
        100.0 * self.answered.len() as f64 / f64::from(self.attempts)
    }

    /// The latency below which `fraction` of the answered attempts fell.
    pub fn percentile(&self, fraction: f64) -> Option<Duration> {
        let mut sorted = self.answered.clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        Some(sorted[((last as f64) * fraction).round() as usize])
    }

    /// "12/30 answered (failures: connection reset 18)".
    pub fn describe(&self) -> String {
        let mut text = format!("{}/{} answered", self.answered.len(), self.attempts);
        if !self.failures.is_empty() {
            let failures: Vec<String> = self
                .failures
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            text += &format!(" (failures: {})", failures.join(", "));
        }
        text
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LegitTargets {
    pub udp: SocketAddr,
    pub http: SocketAddr,
    /// The metrics listener, when /healthz is probed too.
    pub healthz: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct LegitResults {
    pub udp: ProbeStats,
    pub http: ProbeStats,
    pub healthz: Option<ProbeStats>,
}

/// Probes `targets` every [`PROBE_INTERVAL`] for `duration`; returns when the last attempt
/// ended.
pub fn run(targets: LegitTargets, duration: Duration) -> LegitResults {
    let start = Instant::now();
    std::thread::scope(|scope| {
        let udp =
            scope.spawn(move || probe_every_interval(start, duration, ProbeKind::Udp, targets.udp));
        let http = scope
            .spawn(move || probe_every_interval(start, duration, ProbeKind::Http, targets.http));
        let healthz = targets.healthz.map(|metrics| {
            scope.spawn(move || probe_every_interval(start, duration, ProbeKind::Healthz, metrics))
        });
        LegitResults {
            udp: udp.join().expect("UDP probe thread"),
            http: http.join().expect("HTTP probe thread"),
            healthz: healthz.map(|h| h.join().expect("healthz probe thread")),
        }
    })
}

fn probe_every_interval(
    start: Instant,
    duration: Duration,
    kind: ProbeKind,
    target: SocketAddr,
) -> ProbeStats {
    let mut attempts = Vec::new();
    for tick in 0u32.. {
        let due = start + PROBE_INTERVAL * tick;
        if due >= start + duration {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Each attempt on a thread of its own: one that waits out its second never delays
        // the next, so attempts stay 100 ms apart whatever the tracker does.
        let attempt = std::thread::Builder::new()
            .name("legit-probe".into())
            .spawn(move || attempt(kind, target));
        attempts.push(attempt);
    }
    let mut stats = ProbeStats::default();
    for attempt in attempts {
        stats.attempts += 1;
        let result = match attempt {
            Ok(handle) => handle.join().unwrap_or(Err("probe thread panicked")),
            Err(_) => Err("the tool could not start a thread"),
        };
        match result {
            Ok(latency) => stats.answered.push(latency),
            Err(kind) => *stats.failures.entry(kind).or_default() += 1,
        }
    }
    stats
}

/// One attempt: its latency if answered correctly within [`ANSWER_WITHIN`].
fn attempt(kind: ProbeKind, target: SocketAddr) -> Result<Duration, FailureKind> {
    let started = Instant::now();
    let deadline = started + ANSWER_WITHIN;
    match kind {
        ProbeKind::Udp => udp_connect_and_announce(target, deadline)?,
        ProbeKind::Http => {
            let request = wire::http_get(
                &wire::http_announce_query(&INFO_HASH, &wire::peer_id(CLIENT_TAG), random_port()),
                target,
                true,
            );
            let (status, body) = http_exchange(target, &request, deadline)?;
            if status != 200 {
                return Err("HTTP status other than 200");
            }
            if body.windows(14).any(|w| w == b"failure reason") {
                return Err("announce refused (failure reason)");
            }
            if !(body.starts_with(b"d") && body.windows(10).any(|w| w == b"8:interval")) {
                return Err("not an announce reply");
            }
        }
        ProbeKind::Healthz => {
            let (status, body) =
                http_exchange(target, &wire::http_get("/healthz", target, true), deadline)?;
            if status != 200 || body != b"ok" {
                return Err("not a 200 ok");
            }
        }
    }
    let latency = started.elapsed();
    if latency > ANSWER_WITHIN {
        return Err("no complete reply in time");
    }
    Ok(latency)
}

fn random_port() -> u16 {
    fastrand::u16(1024..)
}

/// Connect, then announce with the id it gave, from a fresh socket on 127.0.0.1 (so no reply
/// to an earlier attempt can be taken for this one).
fn udp_connect_and_announce(server: SocketAddr, deadline: Instant) -> Result<(), FailureKind> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| wire::io_failure(&e))?;
    let connect_id = fastrand::u32(..);
    socket
        .send_to(&wire::connect_request(connect_id), server)
        .map_err(|e| wire::io_failure(&e))?;
    let connection_id = loop {
        let reply = receive_before(&socket, deadline).map_err(|_| "no connect reply in time")?;
        if let Some(id) = wire::connect_reply_id(&reply, connect_id) {
            break id;
        }
        if wire::reply_header(&reply) == Some((wire::ACTION_ERROR, connect_id)) {
            return Err("connect refused (error reply)");
        }
    };
    let announce_id = fastrand::u32(..);
    let announce = wire::Announce {
        connection_id,
        transaction_id: announce_id,
        info_hash: INFO_HASH,
        peer_id: wire::peer_id(CLIENT_TAG),
        left: 100,
        num_want: -1,
        port: random_port(),
    };
    socket
        .send_to(&announce.encode(), server)
        .map_err(|e| wire::io_failure(&e))?;
    loop {
        let reply = receive_before(&socket, deadline).map_err(|_| "no announce reply in time")?;
        match wire::reply_header(&reply) {
            Some((wire::ACTION_ANNOUNCE, id))
                if id == announce_id
                    && reply.len() >= wire::ANNOUNCE_REPLY_HEADER_BYTES
                    && (reply.len() - wire::ANNOUNCE_REPLY_HEADER_BYTES).is_multiple_of(6) =>
            {
                return Ok(());
            }
            Some((wire::ACTION_ERROR, id)) if id == announce_id => {
                return Err("announce refused (error reply)");
            }
            _ => {}
        }
    }
}

fn receive_before(socket: &UdpSocket, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(io::ErrorKind::TimedOut)?;
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => return Ok(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A new connection from 127.0.0.1, one request, one complete reply.
fn http_exchange(
    server: SocketAddr,
    request: &str,
    deadline: Instant,
) -> Result<(u16, Vec<u8>), FailureKind> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .ok_or("no complete reply in time")?;
    let mut stream = TcpStream::connect_timeout(&server, left).map_err(|e| wire::io_failure(&e))?;
    stream
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| wire::io_failure(&e))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| wire::io_failure(&e))?;
    wire::read_http_reply(&mut stream, deadline)
}
