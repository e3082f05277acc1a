//! The machinery of the floods: loopback source addresses, a rate limit, UDP sockets from many
//! sources with a thread counting what comes back, and TCP connections held open (idle, or
//! trickling a request a byte at a time) and reopened when the server closes them. Every loop
//! here ends at its deadline or when told to stop, and sends at most its rate.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::wire;

/// The `index`th flood source address, spread over 127.0.0.0/8 (Linux routes all of it to
/// `lo`) and never in 127.0.0.0/16, so never the legitimate client's 127.0.0.1.
pub fn flood_source(index: u32) -> Ipv4Addr {
    let second = 1 + (index % 254) as u8;
    let third = ((index / 254) % 256) as u8;
    let fourth = 1 + ((index / (254 * 256)) % 254) as u8;
    Ipv4Addr::new(127, second, third, fourth)
}

/// Flood threads yield the CPU to the tracker and to the legitimate client (two cores are
/// shared by all three): a real attacker's sending costs the tracker's machine nothing.
/// Raising one's own nice value needs no privilege; if it fails the flood runs anyway.
pub fn lower_this_thread_priority() {
    const FLOOD_NICE: libc::c_int = 5;
    // SAFETY: gettid has no preconditions; setpriority on this thread's own id only.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, FLOOD_NICE);
    }
}

/// Grants sends at `per_sec` from its start. A sender that falls behind (descheduled) gets at
/// most 10 ms worth at once: the rate is a ceiling, never exceeded in bursts.
pub struct Pacer {
    start: Instant,
    per_sec: f64,
    granted: u64,
}

impl Pacer {
    pub fn new(per_sec: u64) -> Self {
        Pacer {
            start: Instant::now(),
            per_sec: per_sec as f64,
            granted: 0,
        }
    }

    /// How many may go now.
    pub fn grant(&mut self) -> u64 {
        let due = (self.start.elapsed().as_secs_f64() * self.per_sec) as u64;
        let max_burst = ((self.per_sec / 100.0) as u64).max(1);
        let granted = due.saturating_sub(self.granted).min(max_burst);
        self.granted = self.granted.max(due.saturating_sub(max_burst)) + granted;
        granted
    }
}

/// When a flood must end: its deadline, or earlier when told to stop.
#[derive(Clone)]
pub struct Until {
    pub deadline: Instant,
    pub stop: Arc<AtomicBool>,
}

impl Until {
    pub fn reached(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Per second, for reports.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Replies to one fleet, by kind.
#[derive(Default)]
pub struct ReplyCounts {
    pub datagrams: AtomicU64,
    pub bytes: AtomicU64,
    pub connect: AtomicU64,
    pub announce: AtomicU64,
    pub scrape: AtomicU64,
    pub error: AtomicU64,
    /// The first error message seen, as an example.
    pub first_error: Mutex<Option<String>>,
}

/// Transaction ids of a fleet's connect requests: this tag and the socket's index.
const CONNECT_TAG: u32 = 0xC000_0000;

/// UDP sockets from many source addresses, and a thread that receives and counts their
/// replies, keeping each socket's connection id.
pub struct UdpFleet {
    pub sockets: Vec<UdpSocket>,
    /// Each socket's connection id; 0 until the tracker gave one.
    pub connection_ids: Arc<Vec<AtomicU64>>,
    pub replies: Arc<ReplyCounts>,
    /// Datagrams the kernel refused to take (the socket's buffer was full).
    pub send_refused: u64,
    receiving: Arc<AtomicBool>,
    receiver: Option<JoinHandle<()>>,
}

impl UdpFleet {
    /// `count` sockets spread over `sources` source addresses.
    pub fn bind(count: usize, sources: u32) -> io::Result<UdpFleet> {
        let mut sockets = Vec::with_capacity(count);
        for i in 0..count {
            let source = flood_source(i as u32 % sources.max(1));
            let socket = UdpSocket::bind(SocketAddr::from((source, 0)))?;
            socket.set_nonblocking(true)?;
            sockets.push(socket);
        }
        let connection_ids = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let replies = Arc::new(ReplyCounts::default());
        let receiving = Arc::new(AtomicBool::new(true));
        let clones = sockets
            .iter()
            .map(|s| s.try_clone().map(mio::net::UdpSocket::from_std))
            .collect::<io::Result<Vec<_>>>()?;
        let receiver = {
            let (ids, replies, receiving) =
                (connection_ids.clone(), replies.clone(), receiving.clone());
            std::thread::Builder::new()
                .name("flood-udp-receiver".into())
                .spawn(move || receive_replies(clones, &ids, &replies, &receiving))?
        };
        Ok(UdpFleet {
            sockets,
            connection_ids,
            replies,
            send_refused: 0,
            receiving,
            receiver: Some(receiver),
        })
    }

    /// Sends; false if the kernel refused the datagram.
    pub fn send(&mut self, index: usize, packet: &[u8], to: SocketAddr) -> bool {
        match self.sockets[index].send_to(packet, to) {
            Ok(_) => true,
            Err(_) => {
                self.send_refused += 1;
                false
            }
        }
    }

    pub fn connection_id(&self, index: usize) -> Option<u64> {
        Some(self.connection_ids[index].load(Ordering::Relaxed)).filter(|&id| id != 0)
    }

    /// Sends a connect from every socket (the receiver stores the ids).
    pub fn send_connects(&mut self, to: SocketAddr) {
        for index in 0..self.sockets.len() {
            self.send(
                index,
                &wire::connect_request(CONNECT_TAG | index as u32),
                to,
            );
        }
    }

    /// Connects every socket that has no id yet, resending every 100 ms, until all have one
    /// or `until` is reached; returns how many have one.
    pub fn obtain_connection_ids(&mut self, to: SocketAddr, until: &Until) -> usize {
        loop {
            let missing: Vec<usize> = (0..self.sockets.len())
                .filter(|&i| self.connection_id(i).is_none())
                .collect();
            if missing.is_empty() || until.reached() {
                return self.sockets.len() - missing.len();
            }
            for index in missing {
                self.send(
                    index,
                    &wire::connect_request(CONNECT_TAG | index as u32),
                    to,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the receiver; counts are final after this.
    pub fn finish(&mut self) {
        self.receiving.store(false, Ordering::Relaxed);
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }

    /// "answered 123 (45 errors, e.g. "…")".
    pub fn describe_replies(&self) -> String {
        let r = &self.replies;
        let errors = r.error.load(Ordering::Relaxed);
        let mut text = format!(
            "{} replies, {} B",
            r.datagrams.load(Ordering::Relaxed),
            r.bytes.load(Ordering::Relaxed)
        );
        if errors > 0 {
            let example = r.first_error.lock().expect("not poisoned").clone();
            text += &format!(" ({errors} errors, e.g. {:?})", example.unwrap_or_default());
        }
        if self.send_refused > 0 {
            text += &format!("; {} sends refused by the local kernel", self.send_refused);
        }
        text
    }
}

impl Drop for UdpFleet {
    fn drop(&mut self) {
        self.finish();
    }
}

fn receive_replies(
    mut sockets: Vec<mio::net::UdpSocket>,
    connection_ids: &[AtomicU64],
    replies: &ReplyCounts,
    receiving: &AtomicBool,
) {
    lower_this_thread_priority();
    let Ok(mut poll) = Poll::new() else { return };
    for (i, socket) in sockets.iter_mut().enumerate() {
        if poll
            .registry()
            .register(socket, Token(i), Interest::READABLE)
            .is_err()
        {
            return;
        }
    }
    let mut events = Events::with_capacity(256);
    let mut buf = [0u8; 4096];
    while receiving.load(Ordering::Relaxed) {
        if poll
            .poll(&mut events, Some(Duration::from_millis(20)))
            .is_err()
        {
            continue;
        }
        for event in &events {
            let socket = &sockets[event.token().0];
            // Edge-triggered: drain it.
            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                count_reply(&buf[..n], connection_ids, replies);
            }
        }
    }
}

fn count_reply(reply: &[u8], connection_ids: &[AtomicU64], replies: &ReplyCounts) {
    replies.datagrams.fetch_add(1, Ordering::Relaxed);
    replies
        .bytes
        .fetch_add(reply.len() as u64, Ordering::Relaxed);
    let Some((action, transaction_id)) = wire::reply_header(reply) else {
        return;
    };
    let counter = match action {
        wire::ACTION_CONNECT => {
            let index = (transaction_id & !CONNECT_TAG) as usize;
            if transaction_id & CONNECT_TAG == CONNECT_TAG
                && let (Some(id), Some(slot)) = (
                    wire::connect_reply_id(reply, transaction_id),
                    connection_ids.get(index),
                )
            {
                slot.store(id, Ordering::Relaxed);
            }
            &replies.connect
        }
        wire::ACTION_ANNOUNCE => &replies.announce,
        wire::ACTION_SCRAPE => &replies.scrape,
        wire::ACTION_ERROR => {
            let mut first = replies.first_error.lock().expect("not poisoned");
            if first.is_none() {
                *first = Some(String::from_utf8_lossy(&reply[8..]).into_owned());
            }
            &replies.error
        }
        _ => return,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What each held TCP connection does once connected.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Sends nothing.
    Idle,
    /// Sends the next byte of `request` every `interval`: a request that never ends. After
    /// `request`, header lines follow without end.
    Trickle {
        request: Vec<u8>,
        interval: Duration,
    },
}

/// A plan for [`hold_connections`].
#[derive(Clone, Debug)]
pub struct HeldConnections {
    pub target: SocketAddr,
    pub connections: usize,
    pub sources: u32,
    pub behaviour: Behaviour,
    /// Most connection attempts per second, the first ones and the reopens together.
    pub opens_per_sec: u64,
}

#[derive(Clone, Debug, Default)]
pub struct HeldReport {
    pub attempts: u64,
    pub established: u64,
    /// Established connections that the server then closed (or reset).
    pub closed_by_server: u64,
    /// Attempts that failed before being established (refused, reset during the handshake).
    pub connect_failures: u64,
    /// Attempts the local kernel refused (no port or descriptor free).
    pub local_failures: u64,
    pub peak_open: u64,
    pub open_at_end: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub elapsed: Duration,
}

impl HeldReport {
    pub fn describe(&self, plan: &HeldConnections) -> String {
        let behaviour = match &plan.behaviour {
            Behaviour::Idle => "idle".to_string(),
            Behaviour::Trickle { interval, .. } => {
                format!("1 B every {} s", interval.as_secs_f64())
            }
        };
        format!(
            "{} conns from {} sources, {behaviour}: {} connects ({:.0}/s), {} established, ≤ {} open at once ({} at the end), {} closed by the tracker, {} refused/reset at connect{}, {} B sent, {} B received",
            plan.connections,
            plan.sources,
            self.attempts,
            rate(self.attempts, self.elapsed),
            self.established,
            self.peak_open,
            self.open_at_end,
            self.closed_by_server,
            self.connect_failures,
            if self.local_failures > 0 {
                format!(
                    ", {} local failures (ports, descriptors)",
                    self.local_failures
                )
            } else {
                String::new()
            },
            self.bytes_sent,
            self.bytes_received,
        )
    }
}

struct Held {
    stream: mio::net::TcpStream,
    generation: u32,
    established: bool,
    sent: u64,
}

/// Byte `position` of an endless request: `request`, then header lines forever.
fn trickle_byte(request: &[u8], position: u64) -> u8 {
    const FILLER: &[u8] = b"X-Padding: slow\r\n";
    match request.get(position as usize) {
        Some(&b) => b,
        None => FILLER[((position - request.len() as u64) % FILLER.len() as u64) as usize],
    }
}

/// Starts a non-blocking connect from `source` (an address of ours) to `target`.
fn start_connect(source: Ipv4Addr, target: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// Keeps `plan.connections` connections to the target open until `until`, reopening each one
/// as soon as the server closes it (within `opens_per_sec`), and, for [`Behaviour::Trickle`],
/// sending each its next byte on time.
pub fn hold_connections(plan: &HeldConnections, until: &Until) -> io::Result<HeldReport> {
    let started = Instant::now();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<Held>> = (0..plan.connections).map(|_| None).collect();
    let mut generations = vec![0u32; plan.connections];
    let mut to_open: VecDeque<usize> = (0..plan.connections).collect();
    // Next byte due: (when, slot, generation). Entries of a slot reopened since are skipped.
    let mut due: BinaryHeap<Reverse<(Instant, usize, u32)>> = BinaryHeap::new();
    let mut pacer = Pacer::new(plan.opens_per_sec);
    let mut report = HeldReport::default();
    let mut open_now = 0u64;
    let mut scratch = [0u8; 4096];
    // Slot and generation in one token, so that an event for a connection closed earlier in
    // the same batch is never taken for its successor's.
    let token = |slot: usize, generation: u32| Token(slot | (generation as usize) << 24);
    while !until.reached() {
        let mut grant = pacer.grant();
        while grant > 0 {
            let Some(slot) = to_open.pop_front() else {
                break;
            };
            grant -= 1;
            report.attempts += 1;
            let source = flood_source(slot as u32 % plan.sources.max(1));
            let mut stream = match start_connect(source, plan.target) {
                Ok(stream) => stream,
                Err(_) => {
                    report.local_failures += 1;
                    to_open.push_back(slot);
                    continue;
                }
            };
            generations[slot] = (generations[slot] + 1) % 256;
            let generation = generations[slot];
            if poll
                .registry()
                .register(
                    &mut stream,
                    token(slot, generation),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                report.local_failures += 1;
                to_open.push_back(slot);
                continue;
            }
            slots[slot] = Some(Held {
                stream,
                generation,
                established: false,
                sent: 0,
            });
        }
        let now = Instant::now();
        let mut wait = Duration::from_millis(20);
        if !to_open.is_empty() {
            wait = Duration::from_millis(1);
        }
        if let Some(Reverse((when, _, _))) = due.peek() {
            wait = wait.min(when.saturating_duration_since(now));
        }
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in &events {
            let slot = event.token().0 & 0xFF_FFFF;
            let generation = (event.token().0 >> 24) as u32;
            let Some(held) = slots[slot].as_mut().filter(|h| h.generation == generation) else {
                continue;
            };
            let mut closed = false;
            if !held.established {
                match held.stream.take_error() {
                    Ok(None) if held.stream.peer_addr().is_ok() => {
                        held.established = true;
                        report.established += 1;
                        open_now += 1;
                        report.peak_open = report.peak_open.max(open_now);
                        if let Behaviour::Trickle { interval, .. } = &plan.behaviour {
                            // Spread the connections' bytes over the interval.
                            let first = interval.mul_f64(fastrand::f64());
                            due.push(Reverse((Instant::now() + first, slot, generation)));
                        }
                    }
                    Ok(None) => {} // still connecting
                    _ => closed = true,
                }
            }
            if !closed && (event.is_readable() || event.is_read_closed() || event.is_error()) {
                loop {
                    match held.stream.read(&mut scratch) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => report.bytes_received += n as u64,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if closed {
                if held.established {
                    report.closed_by_server += 1;
                    open_now -= 1;
                } else {
                    report.connect_failures += 1;
                }
                slots[slot] = None;
                to_open.push_back(slot);
            }
        }
        if let Behaviour::Trickle { request, interval } = &plan.behaviour {
            let now = Instant::now();
            while let Some(&Reverse((when, slot, generation))) = due.peek() {
                if when > now {
                    break;
                }
                due.pop();
                let Some(held) = slots[slot].as_mut().filter(|h| h.generation == generation) else {
                    continue;
                };
                let byte = [trickle_byte(request, held.sent)];
                if let Ok(1) = held.stream.write(&byte) {
                    held.sent += 1;
                    report.bytes_sent += 1;
                }
                // A failed write shows up as a read event (closed) too; until then, try later.
                due.push(Reverse((now + *interval, slot, generation)));
            }
        }
    }
    report.open_at_end = open_now;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A blocking TCP connection from `source`.
pub fn connect_from(
    source: Ipv4Addr,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&target.into(), timeout)?;
    Ok(socket.into())
}
