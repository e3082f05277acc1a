//! Codec benchmarks: UDP and HTTP decode and encode, and one whole UDP request through the
//! handler (decode, store, encode) for scale.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hayate::bittorrent::{AnnounceResponse, PeerId, ResponsePeer};
use hayate::clock::Clock;
use hayate::config::Config;
use hayate::handler::{ConnectionRules, HttpConnection, HttpHandler, Tracker, UdpHandler};
use hayate::middleware::Middleware;
use hayate::protocol::{http, udp};
use hayate::swarm::{SwarmLimits, SwarmStore};

fn udp_announce_packet(connection_id: u64, info_hash: [u8; 20], port: u16) -> Vec<u8> {
    let mut p = connection_id.to_be_bytes().to_vec();
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend_from_slice(&info_hash);
    p.extend_from_slice(b"-qB4650-abcdefghijkl");
    p.extend_from_slice(&[0; 24]);
    p.extend_from_slice(&2u32.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&50i32.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p
}

fn response(peers: usize, ipv6: bool) -> AnnounceResponse {
    AnnounceResponse {
        interval: 1800,
        min_interval: 900,
        complete: 10,
        incomplete: 40,
        downloaded: 5,
        peers: (0..peers)
            .map(|i| {
                let addr: SocketAddr = if ipv6 {
                    format!("[2001:db8::{i:x}]:6881").parse().unwrap()
                } else {
                    format!("10.0.{}.{}:6881", i / 256, i % 256)
                        .parse()
                        .unwrap()
                };
                ResponsePeer {
                    addr,
                    peer_id: PeerId([i as u8; 20]),
                }
            })
            .collect(),
    }
}

const HTTP_TARGET: &[u8] = b"/announce?info_hash=%01%02%03%04%05%06%07%08%09%0a%0b%0c%0d%0e%0f%10%11%12%13%14\
&peer_id=-qB4650-abcdefghijkl&port=6881&uploaded=0&downloaded=0&left=1234&event=started&compact=1&numwant=50&key=DEADBEEF";

fn tracker() -> Arc<Tracker> {
    let mut config = Config::default();
    config.udp.connection_id_secret = "00112233445566778899aabbccddeeff".into();
    let limits = SwarmLimits {
        max_torrents: 1 << 20,
        max_peers_per_torrent: 1 << 20,
        peer_lifetime_secs: 3600,
    };
    let store = Arc::new(SwarmStore::new(256, limits, Clock::real()));
    Arc::new(Tracker::new(&config, store, Middleware::default()).unwrap())
}

fn codecs(c: &mut Criterion) {
    let packet = udp_announce_packet(1, [1; 20], 6881);
    c.bench_function("udp/decode_announce", |b| {
        b.iter(|| udp::decode(black_box(&packet)).unwrap())
    });
    let mut out = Vec::with_capacity(2048);
    for (name, ipv6) in [
        ("udp/encode_announce_50_ipv4", false),
        ("udp/encode_announce_50_ipv6", true),
    ] {
        let r = response(50, ipv6);
        c.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                udp::response::write_announce(&mut out, 7, black_box(&r), ipv6);
            })
        });
    }
    let mut hashes = Vec::new();
    c.bench_function("http/decode_announce", |b| {
        b.iter(|| http::decode_target(black_box(HTTP_TARGET), &mut hashes, 64).unwrap())
    });
    let r = response(50, false);
    c.bench_function("http/encode_announce_50_compact", |b| {
        b.iter(|| {
            out.clear();
            http::response::write_announce(
                &mut out,
                black_box(&r),
                true,
                false,
                "1.2.3.4".parse().unwrap(),
            );
        })
    });
}

fn request_path(c: &mut Criterion) {
    let tracker = tracker();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut handler = UdpHandler::new(tracker.clone(), Default::default());
    let mut out = Vec::with_capacity(2048);
    handler.handle(
        &0x417_2710_1980u64
            .to_be_bytes()
            .iter()
            .chain(&[0; 8])
            .copied()
            .collect::<Vec<_>>(),
        client,
        &mut out,
    );
    let connection_id = u64::from_be_bytes(out[8..16].try_into().unwrap());
    // 10k torrents with 20 peers each, then announces spread over them.
    let packets: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| {
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(&i.to_le_bytes());
            udp_announce_packet(connection_id, h, 6881)
        })
        .collect();
    for port in 0..20u16 {
        for p in &packets {
            let mut p = p.clone();
            p[96..98].copy_from_slice(&(1000 + port).to_be_bytes());
            handler.handle(&p, client, &mut out);
        }
    }
    let mut i = 0;
    c.bench_function("udp/handle_announce_10k_torrents_20_peers", |b| {
        b.iter(|| {
            i = (i + 1) % packets.len();
            handler.handle(black_box(&packets[i]), client, &mut out);
        })
    });
    let mut http = HttpHandler::new(tracker, Default::default());
    let request = [
        b"GET ".as_slice(),
        HTTP_TARGET,
        b" HTTP/1.1\r\nHost: tracker\r\nUser-Agent: bench\r\n\r\n",
    ]
    .concat();
    let mut conn = HttpConnection::new(
        client,
        ConnectionRules {
            max_request_bytes: 8192,
            keep_alive: true,
        },
    );
    c.bench_function("http/connection_announce_keep_alive", |b| {
        b.iter(|| {
            conn.received(black_box(&request), &mut http);
            let n = conn.pending_output().len();
            conn.wrote(n);
        })
    });
}

criterion_group!(benches, codecs, request_path);
criterion_main!(benches);
