//! The user-space half of UDP serving, without the kernel: datagrams shaped like
//! `aquatic_udp_load_test`'s (the load `../shared/bench/udp_bench.sh` drives: 1M torrents with
//! its weighting, 2M peers, connect:announce:scrape 50:50:1, 30 peers wanted, 3 in 4 seeders)
//! go through `UdpHandler` in batches, with the engines' prefetch schedule, as a ring's
//! completions would. It prints nanoseconds per datagram with the schedule and, as the
//! reference measured in the same run, without it, in alternating rounds.
//!
//!   cargo bench --bench udp_path            (BATCH=512 ROUNDS=5 ROUND=200000 WARMUP=3000000)
//!
//! Under load the engines' user-space time was mostly cache misses in the store; this bench
//! shows how much of that a change hides, in seconds and without the noise of the network path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use hayate::clock::Clock;
use hayate::config::Config;
use hayate::engine::prefetch_schedule;
use hayate::handler::{Tracker, UdpHandler};
use hayate::middleware::Middleware;
use hayate::swarm::{SwarmLimits, SwarmStore};

const TORRENTS: usize = 1_000_000;
const PEERS: usize = 2_000_000;
const SOCKETS: usize = 4;
const PROTOCOL_ID: u64 = 0x417_2710_1980;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Peer {
    torrent: u32,
    port: u16,
    socket: u8,
    scrape: Vec<u32>,
}

/// The load tester's request stream, rebuilt: the same torrent weights and request mix.
struct Load {
    rng: fastrand::Rng,
    info_hashes: Vec<[u8; 20]>,
    peers: Vec<Peer>,
    connection_ids: [u64; SOCKETS],
    next_peer: usize,
    next_socket: usize,
    numwant: u32,
    seeder_probability: f64,
}

impl Load {
    fn new() -> Load {
        let mut rng = fastrand::Rng::with_seed(0xc3aa_8be6_17b3_acce);
        let info_hashes: Vec<[u8; 20]> = (0..TORRENTS)
            .map(|_| std::array::from_fn(|_| rng.u8(..)))
            .collect();
        // aquatic_udp_load_test 0.9: weight(i) = torrents/peers + e^(6.5 - 500 i / torrents).
        let floor = TORRENTS as f64 / PEERS as f64;
        let mut cumulative = Vec::with_capacity(TORRENTS);
        let mut total = 0.0;
        for i in 0..TORRENTS {
            total += floor + (6.5 - 500.0 * i as f64 / TORRENTS as f64).exp();
            cumulative.push(total);
        }
        let pick = |rng: &mut fastrand::Rng| {
            let x = rng.f64() * total;
            cumulative.partition_point(|&c| c < x).min(TORRENTS - 1) as u32
        };
        let peers = (0..PEERS)
            .map(|_| Peer {
                scrape: (0..rng.usize(1..=10)).map(|_| pick(&mut rng)).collect(),
                torrent: pick(&mut rng),
                port: rng.u16(1..), // hayate refuses port 0, as it should
                socket: rng.u8(..SOCKETS as u8),
            })
            .collect();
        Load {
            rng,
            info_hashes,
            peers,
            connection_ids: [0; SOCKETS],
            next_peer: 0,
            next_socket: 0,
            numwant: env("NUMWANT", 30) as u32,
            seeder_probability: env("SEEDER_PERCENT", 75) as f64 / 100.0,
        }
    }

    fn client(socket: usize) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + socket as u8)),
            40000,
        )
    }

    /// A connect request from client socket `socket` (its transaction id), into `packet`.
    fn connect(socket: usize, packet: &mut Vec<u8>) -> SocketAddr {
        packet.clear();
        packet.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
        packet.extend_from_slice(&0u32.to_be_bytes());
        packet.extend_from_slice(&(socket as u32).to_be_bytes());
        Load::client(socket)
    }

    /// The next request datagram into `packet`, and the address it comes from.
    fn next(&mut self, packet: &mut Vec<u8>) -> SocketAddr {
        packet.clear();
        let kind = self.rng.usize(..101);
        if kind < 50 {
            let socket = self.next_socket;
            self.next_socket = (socket + 1) % SOCKETS;
            return Load::connect(socket, packet);
        }
        let peer = &self.peers[self.next_peer];
        self.next_peer = (self.next_peer + 1) % PEERS;
        let socket = peer.socket as usize;
        packet.extend_from_slice(&self.connection_ids[socket].to_be_bytes());
        if kind < 100 {
            let seeder = self.rng.f64() < self.seeder_probability;
            packet.extend_from_slice(&1u32.to_be_bytes());
            packet.extend_from_slice(&7u32.to_be_bytes());
            packet.extend_from_slice(&self.info_hashes[peer.torrent as usize]);
            packet.extend_from_slice(&[0; 20]);
            packet.extend_from_slice(&50u64.to_be_bytes());
            packet.extend_from_slice(&(if seeder { 0u64 } else { 50 }).to_be_bytes());
            packet.extend_from_slice(&50u64.to_be_bytes());
            packet.extend_from_slice(&(if seeder { 1u32 } else { 2 }).to_be_bytes());
            packet.extend_from_slice(&[0; 8]);
            packet.extend_from_slice(&self.numwant.to_be_bytes());
            packet.extend_from_slice(&peer.port.to_be_bytes());
        } else {
            packet.extend_from_slice(&2u32.to_be_bytes());
            packet.extend_from_slice(&7u32.to_be_bytes());
            for &t in &peer.scrape {
                packet.extend_from_slice(&self.info_hashes[t as usize]);
            }
        }
        Load::client(socket)
    }
}

/// Serves `count` datagrams in batches of `batch`; returns nanoseconds per datagram.
fn serve(
    handler: &mut UdpHandler,
    load: &mut Load,
    count: usize,
    batch: usize,
    prefetch: bool,
    pollution: &mut [u8],
) -> f64 {
    let mut packets: Vec<(Vec<u8>, SocketAddr)> = (0..batch)
        .map(|_| (Vec::with_capacity(256), Load::client(0)))
        .collect();
    let mut out = Vec::with_capacity(1500);
    let mut spent = 0.0;
    let mut served = 0;
    while served < count {
        for (packet, from) in packets.iter_mut() {
            *from = load.next(packet);
        }
        let started = Instant::now();
        for i in 0..batch {
            if prefetch {
                for (ahead, step) in prefetch_schedule(i, batch) {
                    let (packet, from) = &packets[ahead];
                    handler.prefetch(step, packet, *from);
                }
            }
            let (packet, from) = &packets[i];
            handler.handle(packet, *from, &mut out);
            assert!(
                out.get(3).is_some_and(|&action| action != 3),
                "an error answer: {:?}",
                String::from_utf8_lossy(out.get(8..).unwrap_or_default())
            );
            // Keep connection ids fresh, as the load tester does from connect responses.
            if out.len() == 16 && out[..4] == [0; 4] {
                let socket = u32::from_be_bytes(out[4..8].try_into().unwrap()) as usize;
                load.connection_ids[socket % SOCKETS] =
                    u64::from_be_bytes(out[8..16].try_into().unwrap());
            }
        }
        spent += started.elapsed().as_nanos() as f64;
        served += batch;
        // The kernel's share of a batch (sending the answers, receiving the next datagrams)
        // runs here on a real ring and evicts what it does not use from the caches.
        for line in pollution.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
    }
    spent / served as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let batch = env("BATCH", 512);
    let rounds = env("ROUNDS", 5);
    let round = env("ROUND", 200_000);
    let warmup = env("WARMUP", 3_000_000);
    let mut pollution = vec![0u8; env("POLLUTE_KB", 0) * 1024];

    let mut config = Config::default();
    config.udp.connection_id_secret = "00112233445566778899aabbccddeeff".into();
    // The load tester is one source creating a million torrents: keep the per-source budget
    // on, so its cost is in the figures, but never binding.
    config.per_source.new_torrents_burst = u32::MAX;
    let clock = Clock::real();
    let hooks = Middleware::from_config(&config.prehooks, &config.posthooks, &clock).unwrap();
    let limits = SwarmLimits {
        max_torrents: config.swarm.max_torrents,
        max_peers_per_torrent: config.swarm.max_peers_per_torrent,
        peer_lifetime_secs: config.swarm.peer_lifetime_secs,
    };
    let store = Arc::new(SwarmStore::new(config.shard_count(), limits, clock));
    let tracker = Arc::new(Tracker::new(&config, store, hooks).unwrap());
    let mut handler = UdpHandler::new(tracker, Default::default());

    let started = Instant::now();
    let mut load = Load::new();
    let mut packet = Vec::new();
    let mut out = Vec::new();
    for socket in 0..SOCKETS {
        let from = Load::connect(socket, &mut packet);
        handler.handle(&packet, from, &mut out);
        load.connection_ids[socket] = u64::from_be_bytes(out[8..16].try_into().unwrap());
    }
    serve(&mut handler, &mut load, warmup, batch, true, &mut pollution);
    eprintln!(
        "set up and warmed up with {warmup} datagrams in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        with.push(serve(
            &mut handler,
            &mut load,
            round,
            batch,
            true,
            &mut pollution,
        ));
        without.push(serve(
            &mut handler,
            &mut load,
            round,
            batch,
            false,
            &mut pollution,
        ));
    }
    let (with, without) = (median(with), median(without));
    println!("udp_path batch={batch} rounds={rounds} round={round}");
    println!("ns_per_datagram_prefetched={with:.1}");
    println!("ns_per_datagram_unprefetched={without:.1}");
    println!("ratio_unprefetched_over_prefetched={:.3}", without / with);
}
