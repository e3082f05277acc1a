//! UDP amplification: bytes of reply per byte of request, for each kind of request. A source
//! address that has not shown it receives replies (no valid connection id) may be spoofed: a
//! reply larger than the request would let anyone turn the tracker on a victim.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::wire;

/// Who a request comes from, as far as the tracker can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A connect: answered to anyone, it is the handshake that verifies the source.
    Handshake,
    /// A valid connection id: the source received the tracker's connect reply.
    Verified,
    /// No valid connection id: the source address may be forged; replies are errors.
    Unverified,
}

/// The largest reply seen for a kind of request, relative to the request.
#[derive(Clone, Debug)]
pub struct Worst {
    pub request_bytes: usize,
    pub reply_bytes: usize,
    /// The error message, or what kind of reply it was.
    pub reply: String,
}

impl Worst {
    pub fn ratio(&self) -> f64 {
        self.reply_bytes as f64 / self.request_bytes.max(1) as f64
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    pub label: &'static str,
    pub source: Source,
    pub requests: u32,
    pub replies: u32,
    pub worst: Option<Worst>,
    /// Lengths of the requests that got no reply.
    pub unanswered: Vec<usize>,
}

impl Case {
    fn new(label: &'static str, source: Source) -> Self {
        Case {
            label,
            source,
            requests: 0,
            replies: 0,
            worst: None,
            unanswered: Vec::new(),
        }
    }

    fn record(&mut self, request: &[u8], reply: Option<Vec<u8>>) {
        self.requests += 1;
        let Some(reply) = reply else {
            self.unanswered.push(request.len());
            return;
        };
        self.replies += 1;
        let candidate = Worst {
            request_bytes: request.len(),
            reply_bytes: reply.len(),
            reply: describe_reply(&reply),
        };
        if self
            .worst
            .as_ref()
            .is_none_or(|w| candidate.ratio() > w.ratio())
        {
            self.worst = Some(candidate);
        }
    }

    /// The unanswered lengths as ranges: "0–15, 2051–2098 B".
    pub fn describe_unanswered(&self) -> Option<String> {
        let mut lengths = self.unanswered.clone();
        lengths.sort_unstable();
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for len in lengths {
            match ranges.last_mut() {
                // Random lengths are sparse: a gap of up to 64 still counts as one range.
                Some((_, end)) if len <= *end + 64 => *end = len,
                _ => ranges.push((len, len)),
            }
        }
        let ranges: Vec<String> = ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    format!("{a}")
                } else {
                    format!("{a}–{b}")
                }
            })
            .collect();
        (!ranges.is_empty()).then(|| format!("{} B", ranges.join(", ")))
    }
}

fn describe_reply(reply: &[u8]) -> String {
    match wire::reply_header(reply) {
        Some((wire::ACTION_CONNECT, _)) => "connect reply".into(),
        Some((wire::ACTION_ANNOUNCE, _)) => format!(
            "announce reply, {} peers",
            reply
                .len()
                .saturating_sub(wire::ANNOUNCE_REPLY_HEADER_BYTES)
                / 6
        ),
        Some((wire::ACTION_SCRAPE, _)) => "scrape reply".into(),
        Some((wire::ACTION_ERROR, _)) => {
            format!("error: {:?}", String::from_utf8_lossy(&reply[8..]))
        }
        _ => format!("{} unknown bytes", reply.len()),
    }
}

/// Lengths tried for each kind of malformed or forged request: every length from a bare header
/// past a whole announce (error messages are short, so small requests are where a reply can
/// outgrow its request).
const SWEPT_LENGTHS: std::ops::RangeInclusive<usize> = wire::REQUEST_HEADER_BYTES..=120;
const SWARM_PEERS: u16 = 100;
const INFO_HASH: [u8; 20] = *b"hayate-attack-amplif";

/// Sends one request at a time and waits for its reply, so every reply is matched to its
/// request.
struct Prober {
    socket: UdpSocket,
    server: SocketAddr,
    next_transaction_id: u32,
}

impl Prober {
    fn transaction_id(&mut self) -> u32 {
        self.next_transaction_id = self.next_transaction_id.wrapping_add(1);
        self.next_transaction_id
    }

    /// Sends `request` (its transaction id field, when it has one, set to a fresh id) and
    /// returns the reply to it, if one comes.
    fn exchange(&mut self, request: &mut [u8]) -> io::Result<Option<Vec<u8>>> {
        let transaction_id = (request.len() >= wire::REQUEST_HEADER_BYTES).then(|| {
            let id = self.transaction_id();
            request[12..16].copy_from_slice(&id.to_be_bytes());
            id
        });
        self.socket.send_to(request, self.server)?;
        // A request without a transaction id should get nothing: wait briefly for anything.
        let wait = if transaction_id.is_some() {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(30)
        };
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                return Ok(None);
            };
            self.socket.set_read_timeout(Some(left))?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let reply = &buf[..n];
                    match transaction_id {
                        None => return Ok(Some(reply.to_vec())),
                        Some(id) if wire::reply_header(reply).map(|h| h.1) == Some(id) => {
                            return Ok(Some(reply.to_vec()));
                        }
                        Some(_) => {} // a late reply to an earlier request
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn connection_id(&mut self) -> io::Result<u64> {
        let mut request = wire::connect_request(0);
        for _ in 0..5 {
            let reply = self.exchange(&mut request)?;
            // exchange() wrote the transaction id it used into the request.
            let transaction_id = wire::be32(&request, 12);
            if let Some(id) = reply.and_then(|r| wire::connect_reply_id(&r, transaction_id)) {
                return Ok(id);
            }
        }
        Err(io::Error::other("no connect reply"))
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    fastrand::fill(&mut bytes);
    bytes
}

/// A connection id that is not valid (2^-48 odds of hitting a valid one).
fn forged_connection_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != wire::PROTOCOL_ID {
            return id;
        }
    }
}

/// `header` followed by random bytes up to `len` in all.
fn with_random_tail(header: &[u8], len: usize) -> Vec<u8> {
    let mut packet = random_bytes(len);
    let n = header.len().min(len);
    packet[..n].copy_from_slice(&header[..n]);
    packet
}

/// Measures every kind of request against the tracker at `udp`; `random_samples` datagrams of
/// random bytes besides the systematic ones.
pub fn measure(udp: SocketAddr, random_samples: usize) -> io::Result<Vec<Case>> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let mut prober = Prober {
        socket,
        server: udp,
        next_transaction_id: fastrand::u32(..),
    };
    let connection_id = prober.connection_id()?;
    let announce = |connection_id, port, num_want| wire::Announce {
        connection_id,
        transaction_id: 0,
        info_hash: INFO_HASH,
        peer_id: wire::peer_id(b"-AM0001-"),
        left: 100,
        num_want,
        port,
    };
    // A swarm to be answered from: one address, many ports.
    for port in 1..=SWARM_PEERS {
        prober.exchange(&mut announce(connection_id, port, 0).encode())?;
    }

    let mut connect = Case::new("connect", Source::Handshake);
    let mut request = wire::connect_request(0);
    let reply = prober.exchange(&mut request)?;
    connect.record(&request, reply);

    let mut valid_announce = Case::new(
        "announce, valid id, numwant -1/74/1000, 100-peer swarm",
        Source::Verified,
    );
    for num_want in [-1, 74, 1000] {
        let mut request = announce(connection_id, SWARM_PEERS + 1, num_want).encode();
        let reply = prober.exchange(&mut request)?;
        valid_announce.record(&request, reply);
    }

    let mut valid_scrape = Case::new("scrape, valid id, 1 hash", Source::Verified);
    let mut request = wire::scrape_request(connection_id, 0, &[INFO_HASH]);
    let reply = prober.exchange(&mut request)?;
    valid_scrape.record(&request, reply);

    let mut bad_protocol_id = Case::new("connect, wrong protocol id, 16–120 B", Source::Unverified);
    let mut forged_announce = Case::new(
        "announce, forged id, 98–120 B (well-formed)",
        Source::Unverified,
    );
    let mut short_announce = Case::new(
        "announce, forged id, 16–97 B (too short)",
        Source::Unverified,
    );
    let mut forged_scrape = Case::new("scrape, forged id, 1 hash (36 B)", Source::Unverified);
    let mut partial_scrape = Case::new(
        "scrape, forged id, 17 B (a partial hash)",
        Source::Unverified,
    );
    let mut other_scrape = Case::new(
        "scrape, forged id, every other length 16–120 B",
        Source::Unverified,
    );
    let mut unknown_action = Case::new("unknown action, 16–120 B", Source::Unverified);
    for len in SWEPT_LENGTHS {
        let header = wire::request_header(forged_connection_id(), wire::ACTION_CONNECT, 0);
        let mut request = with_random_tail(&header, len);
        let reply = prober.exchange(&mut request)?;
        bad_protocol_id.record(&request, reply);

        // A well-formed announce but for its id, cut short, or followed by zeros (BEP 41's
        // "end of options").
        let mut request = announce(forged_connection_id(), 6881, -1).encode().to_vec();
        request.resize(len, 0);
        let reply = prober.exchange(&mut request)?;
        if len >= wire::ANNOUNCE_BYTES {
            forged_announce.record(&request, reply);
        } else {
            short_announce.record(&request, reply);
        }

        let header = wire::request_header(forged_connection_id(), wire::ACTION_SCRAPE, 0);
        let mut request = with_random_tail(&header, len);
        let reply = prober.exchange(&mut request)?;
        match len {
            36 => forged_scrape.record(&request, reply),
            17 => partial_scrape.record(&request, reply),
            _ => other_scrape.record(&request, reply),
        }

        let action = fastrand::u32(wire::ACTION_ERROR..);
        let header = wire::request_header(forged_connection_id(), action, 0);
        let mut request = with_random_tail(&header, len);
        let reply = prober.exchange(&mut request)?;
        unknown_action.record(&request, reply);
    }

    let mut random = Case::new("random bytes, 0–2100 B", Source::Unverified);
    // Every length below a header (they carry no transaction id, so should get nothing),
    // then random lengths.
    let lengths = (0..wire::REQUEST_HEADER_BYTES)
        .chain(std::iter::repeat_with(|| fastrand::usize(..=2100)).take(random_samples));
    for len in lengths {
        let mut request = random_bytes(len);
        let reply = prober.exchange(&mut request)?;
        random.record(&request, reply);
    }

    Ok(vec![
        connect,
        valid_announce,
        valid_scrape,
        bad_protocol_id,
        forged_announce,
        short_announce,
        forged_scrape,
        partial_scrape,
        other_scrape,
        unknown_action,
        random,
    ])
}
