//! The attacks: what each sends, at what rate, with what tracker config. Every flood runs on
//! loopback, at most at its rate, until told to stop (or its deadline).

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::floods::{self, Behaviour, HeldConnections, Pacer, UdpFleet, Until, flood_source, rate};
use crate::tracker::TrackerAddrs;
use crate::wire;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// No flood: the legitimate client alone, for comparison.
    Baseline,
    UdpGarbage,
    TorrentFlood,
    PeerFlood,
    Slowloris,
    ConnFlood,
    Pipeliner,
    MetricsFlood,
}

/// Extra tracker config per attack: YAML merged key by key over the base config
/// (`tracker::base_config_yaml`: 2 workers, loopback, warn logs). The one place for per-attack
/// settings: the limits being added against these attacks (for example
/// `http.max_connections_per_source`, `http.request_timeout_secs`) go here.
pub fn config_overrides(attack: Attack) -> &'static str {
    match attack {
        // A connection cap the floods can reach: 1000 for the process, 500 per worker.
        Attack::Slowloris | Attack::ConnFlood | Attack::Pipeliner => {
            "http:
  max_connections: 1000
"
        }
        Attack::Baseline
        | Attack::UdpGarbage
        | Attack::TorrentFlood
        | Attack::PeerFlood
        | Attack::MetricsFlood => "",
    }
}

// What each flood sends. Rates are ceilings (floods::Pacer); the report gives what was reached.
const UDP_GARBAGE_PER_SEC: u64 = 20_000;
const UDP_GARBAGE_MAX_BYTES: usize = 2100;
const UDP_GARBAGE_SOCKETS: usize = 256;
const UDP_GARBAGE_SOURCES: u32 = 64;
const TORRENT_FLOOD_PER_SEC: u64 = 50_000;
/// BEP 15: a connection id is good for at least 2 minutes; the flood renews it every minute.
const CONNECTION_ID_REFRESH: Duration = Duration::from_secs(60);
const PEER_FLOOD_PER_SEC: u64 = 50_000;
const PEER_FLOOD_SOURCES: u32 = 256;
const PEER_FLOOD_INFO_HASH: [u8; 20] = *b"hayate-attack-peers!";
const SLOWLORIS_CONNECTIONS: usize = 3000;
const SLOWLORIS_SOURCES: u32 = 100;
/// Well inside the tracker's idle timeout (30 s by default), so a byte keeps a connection on.
const SLOW_BYTE_INTERVAL: Duration = Duration::from_secs(3);
const CONN_FLOOD_CONNECTIONS: usize = 3000;
const CONN_FLOOD_SOURCES: u32 = 100;
/// New connections per second, the first ones and the reopens together.
const TCP_OPENS_PER_SEC: u64 = 3000;
const PIPELINER_CONNECTIONS: u32 = 4;
const METRICS_FLOOD_CONNECTIONS: usize = 200;
const METRICS_FLOOD_SOURCES: u32 = 20;
const METRICS_OPENS_PER_SEC: u64 = 1000;

/// What a flood did: a line for the table's "sent" column and details for the notes.
#[derive(Clone, Debug, Default)]
pub struct FloodReport {
    pub sent: String,
    pub notes: Vec<String>,
}

impl Attack {
    pub const ALL: [Attack; 8] = [
        Attack::Baseline,
        Attack::UdpGarbage,
        Attack::TorrentFlood,
        Attack::PeerFlood,
        Attack::Slowloris,
        Attack::ConnFlood,
        Attack::Pipeliner,
        Attack::MetricsFlood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::Baseline => "baseline",
            Attack::UdpGarbage => "udp-garbage",
            Attack::TorrentFlood => "torrent-flood",
            Attack::PeerFlood => "peer-flood",
            Attack::Slowloris => "slowloris",
            Attack::ConnFlood => "conn-flood",
            Attack::Pipeliner => "pipeliner",
            Attack::MetricsFlood => "metrics-flood",
        }
    }

    pub fn from_name(name: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether the legitimate client must keep ≥ 99% answered in the CI mode: the attacks
    /// that, at their bounded rates, leave the tracker's CPU to spare. The torrent and peer
    /// floods may saturate it, where slower answers are no defect.
    pub fn must_keep_legit_service(self) -> bool {
        !matches!(self, Attack::TorrentFlood | Attack::PeerFlood)
    }

    /// Whether the legitimate client also asks for /healthz.
    pub fn probes_healthz(self) -> bool {
        self == Attack::MetricsFlood
    }

    /// Runs the flood against `addrs` until `until`.
    pub fn flood(self, addrs: TrackerAddrs, until: &Until) -> FloodReport {
        let result = match self {
            Attack::Baseline => {
                while !until.reached() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(FloodReport {
                    sent: "nothing".into(),
                    notes: Vec::new(),
                })
            }
            Attack::UdpGarbage => udp_garbage(addrs.udp, until),
            Attack::TorrentFlood => torrent_flood(addrs.udp, until),
            Attack::PeerFlood => peer_flood(addrs.udp, until),
            Attack::Slowloris => held(
                HeldConnections {
                    target: addrs.http,
                    connections: SLOWLORIS_CONNECTIONS,
                    sources: SLOWLORIS_SOURCES,
                    behaviour: Behaviour::Trickle {
                        request: wire::http_unfinished_get(
                            &wire::http_announce_query(&[7; 20], &wire::peer_id(b"-SL0001-"), 6881),
                            addrs.http,
                        )
                        .into_bytes(),
                        interval: SLOW_BYTE_INTERVAL,
                    },
                    opens_per_sec: TCP_OPENS_PER_SEC,
                },
                until,
            ),
            Attack::ConnFlood => held(
                HeldConnections {
                    target: addrs.http,
                    connections: CONN_FLOOD_CONNECTIONS,
                    sources: CONN_FLOOD_SOURCES,
                    behaviour: Behaviour::Idle,
                    opens_per_sec: TCP_OPENS_PER_SEC,
                },
                until,
            ),
            Attack::Pipeliner => pipeliner(addrs.http, until),
            Attack::MetricsFlood => held(
                HeldConnections {
                    target: addrs.metrics,
                    connections: METRICS_FLOOD_CONNECTIONS,
                    sources: METRICS_FLOOD_SOURCES,
                    behaviour: Behaviour::Trickle {
                        request: wire::http_unfinished_get("/metrics", addrs.metrics).into_bytes(),
                        interval: SLOW_BYTE_INTERVAL,
                    },
                    opens_per_sec: METRICS_OPENS_PER_SEC,
                },
                until,
            ),
        };
        result.unwrap_or_else(|e| FloodReport {
            sent: format!("flood failed: {e}"),
            notes: vec![format!("the flood could not run: {e}")],
        })
    }
}

fn thousands(n: f64) -> String {
    if n >= 10_000.0 {
        format!("{:.0}k", n / 1000.0)
    } else if n >= 1000.0 {
        format!("{:.1}k", n / 1000.0)
    } else {
        format!("{n:.0}")
    }
}

fn udp_garbage(udp: SocketAddr, until: &Until) -> io::Result<FloodReport> {
    let mut fleet = UdpFleet::bind(UDP_GARBAGE_SOCKETS, UDP_GARBAGE_SOURCES)?;
    let mut pacer = Pacer::new(UDP_GARBAGE_PER_SEC);
    let started = Instant::now();
    let mut datagram = [0u8; UDP_GARBAGE_MAX_BYTES];
    let (mut sent, mut bytes) = (0u64, 0u64);
    while !until.reached() {
        let granted = pacer.grant();
        if granted == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        for _ in 0..granted {
            let len = fastrand::usize(0..=UDP_GARBAGE_MAX_BYTES);
            fastrand::fill(&mut datagram[..len]);
            let socket = fastrand::usize(..UDP_GARBAGE_SOCKETS);
            if fleet.send(socket, &datagram[..len], udp) {
                sent += 1;
                bytes += len as u64;
            }
        }
    }
    let elapsed = started.elapsed();
    // Late replies to the last datagrams.
    std::thread::sleep(Duration::from_millis(100));
    fleet.finish();
    let reply_bytes = fleet
        .replies
        .bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    Ok(FloodReport {
        sent: format!(
            "{} datagrams at {}/s, 0–{UDP_GARBAGE_MAX_BYTES} B random, {UDP_GARBAGE_SOCKETS} ports on {UDP_GARBAGE_SOURCES} sources",
            thousands(sent as f64),
            thousands(rate(sent, elapsed)),
        ),
        notes: vec![format!(
            "sent {:.1} MB; tracker replied {} (reply bytes / request bytes {:.3})",
            bytes as f64 / 1e6,
            fleet.describe_replies(),
            reply_bytes as f64 / bytes.max(1) as f64,
        )],
    })
}

/// Sends announces at `per_sec` until `until`, sending the fleet's connects again as their
/// ids age. `next(n, fleet)` gives the socket and the announce of the `n`th one (its socket has
/// a connection id). Returns how many were sent and over how long, the fleet finished.
fn paced_announces(
    fleet: &mut UdpFleet,
    udp: SocketAddr,
    until: &Until,
    per_sec: u64,
    mut next: impl FnMut(u64, &UdpFleet) -> (usize, wire::Announce),
) -> (u64, Duration) {
    let mut pacer = Pacer::new(per_sec);
    let started = Instant::now();
    let mut last_connect = Instant::now();
    let mut sent = 0u64;
    let mut n = 0u64;
    while !until.reached() {
        if last_connect.elapsed() >= CONNECTION_ID_REFRESH {
            fleet.send_connects(udp);
            last_connect = Instant::now();
        }
        let granted = pacer.grant();
        if granted == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        for _ in 0..granted {
            let (socket, announce) = next(n, fleet);
            n += 1;
            if fleet.send(socket, &announce.encode(), udp) {
                sent += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    fleet.finish();
    (sent, elapsed)
}

/// Announces for new random torrents, as fast as the rate allows, from one source.
fn torrent_flood(udp: SocketAddr, until: &Until) -> io::Result<FloodReport> {
    let mut fleet = UdpFleet::bind(1, 1)?;
    if fleet.obtain_connection_ids(udp, until) == 0 {
        return Ok(FloodReport {
            sent: "nothing: no connection id".into(),
            notes: vec!["the tracker never answered the flood's connect".into()],
        });
    }
    let peer_id = wire::peer_id(b"-TF0001-");
    let (sent, elapsed) =
        paced_announces(&mut fleet, udp, until, TORRENT_FLOOD_PER_SEC, |_, fleet| {
            let announce = wire::Announce {
                connection_id: fleet.connection_id(0).expect("obtained above"),
                transaction_id: fastrand::u32(..),
                info_hash: wire::random_info_hash(),
                peer_id,
                left: 100,
                num_want: -1,
                port: 6881,
            };
            (0, announce)
        });
    Ok(FloodReport {
        sent: format!(
            "{} announces for new torrents at {}/s, 1 source",
            thousands(sent as f64),
            thousands(rate(sent, elapsed)),
        ),
        notes: vec![format!("tracker replied {}", fleet.describe_replies())],
    })
}

/// Announces into one torrent from many (address, port) pairs.
fn peer_flood(udp: SocketAddr, until: &Until) -> io::Result<FloodReport> {
    let mut fleet = UdpFleet::bind(PEER_FLOOD_SOURCES as usize, PEER_FLOOD_SOURCES)?;
    let with_id = fleet.obtain_connection_ids(udp, until);
    let sockets: Vec<usize> = (0..fleet.sockets.len())
        .filter(|&i| fleet.connection_id(i).is_some())
        .collect();
    if sockets.is_empty() {
        return Ok(FloodReport {
            sent: "nothing: no connection id".into(),
            notes: vec!["the tracker never answered the flood's connects".into()],
        });
    }
    let (sent, elapsed) =
        paced_announces(&mut fleet, udp, until, PEER_FLOOD_PER_SEC, |n, fleet| {
            let socket = sockets[n as usize % sockets.len()];
            let announce = wire::Announce {
                connection_id: fleet.connection_id(socket).expect("filtered above"),
                transaction_id: fastrand::u32(..),
                info_hash: PEER_FLOOD_INFO_HASH,
                peer_id: wire::peer_id(b"-PF0001-"),
                // Seeders and leechers both.
                left: if fastrand::bool() { 0 } else { 100 },
                num_want: -1,
                port: fastrand::u16(1..),
            };
            (socket, announce)
        });
    Ok(FloodReport {
        sent: format!(
            "{} announces into 1 torrent at {}/s, random ports from {with_id} sources",
            thousands(sent as f64),
            thousands(rate(sent, elapsed)),
        ),
        notes: vec![format!("tracker replied {}", fleet.describe_replies())],
    })
}

fn held(plan: HeldConnections, until: &Until) -> io::Result<FloodReport> {
    let report = floods::hold_connections(&plan, until)?;
    Ok(FloodReport {
        sent: format!(
            "{} conns ({}) from {} sources, {} connects ({}/s avg)",
            plan.connections,
            match plan.behaviour {
                Behaviour::Idle => "idle".to_string(),
                Behaviour::Trickle { interval, .. } =>
                    format!("1 B / {} s", interval.as_secs_f64()),
            },
            plan.sources,
            thousands(report.attempts as f64),
            thousands(rate(report.attempts, report.elapsed)),
        ),
        notes: vec![report.describe(&plan)],
    })
}

/// A few connections that write pipelined announces as fast as the socket takes them and
/// never read a reply.
fn pipeliner(http: SocketAddr, until: &Until) -> io::Result<FloodReport> {
    let request = wire::http_get(
        &wire::http_announce_query(&[9; 20], &wire::peer_id(b"-PL0001-"), 6881),
        http,
        false,
    );
    // Whole requests only, so that the stream stays well-formed as the buffer repeats.
    let batch = request.repeat(64 * 1024 / request.len()).into_bytes();
    let started = Instant::now();
    let counts: Vec<PipelineCounts> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..PIPELINER_CONNECTIONS)
            .map(|i| {
                let batch = &batch;
                scope.spawn(move || {
                    floods::lower_this_thread_priority();
                    pipeline(flood_source(i), http, batch, until)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let elapsed = started.elapsed();
    let bytes: u64 = counts.iter().map(|c| c.bytes).sum();
    let connects: u64 = counts.iter().map(|c| c.connects).sum();
    let dropped: u64 = counts.iter().map(|c| c.dropped_by_server).sum();
    let requests = bytes / request.len() as u64;
    Ok(FloodReport {
        sent: format!(
            "{} pipelined announces ({:.0} MB) at {}/s on {PIPELINER_CONNECTIONS} conns, never read",
            thousands(requests as f64),
            bytes as f64 / 1e6,
            thousands(rate(requests, elapsed)),
        ),
        notes: vec![format!(
            "{:.1} MB/s written; {connects} connections opened, {dropped} dropped by the tracker",
            bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9),
        )],
    })
}

#[derive(Clone, Copy, Debug, Default)]
struct PipelineCounts {
    bytes: u64,
    connects: u64,
    dropped_by_server: u64,
}

fn pipeline(source: Ipv4Addr, http: SocketAddr, batch: &[u8], until: &Until) -> PipelineCounts {
    let mut counts = PipelineCounts::default();
    let mut stream: Option<std::net::TcpStream> = None;
    let mut offset = 0;
    let mut reconnects = Pacer::new(100);
    while !until.reached() {
        let Some(connection) = stream.as_mut() else {
            if reconnects.grant() == 0 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            // A short write timeout, so the deadline is checked while the socket is full.
            stream = floods::connect_from(source, http, Duration::from_secs(1))
                .and_then(|s| {
                    s.set_write_timeout(Some(Duration::from_millis(50)))
                        .map(|()| s)
                })
                .ok();
            counts.connects += u64::from(stream.is_some());
            offset = 0;
            continue;
        };
        match connection.write(&batch[offset..]) {
            Ok(0) => stream = None,
            Ok(n) => {
                counts.bytes += n as u64;
                offset = (offset + n) % batch.len();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                counts.dropped_by_server += 1;
                stream = None;
            }
        }
    }
    counts
}
