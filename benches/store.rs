//! Store benchmarks: announce into small and large swarms, scrape, cleaning; and the resident
//! memory of one million IPv4 peers over 100k torrents, and of a million one-peer torrents
//! (printed as bytes per peer).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hayate::bittorrent::{AnnounceEvent, AnnounceRequest, AnnounceResponse, InfoHash, PeerId};
use hayate::clock::Clock;
use hayate::swarm::{PeerSelection, SwarmLimits, SwarmStore};

const LIMITS: SwarmLimits = SwarmLimits {
    max_torrents: 1 << 24,
    max_peers_per_torrent: 1 << 24,
    peer_lifetime_secs: 3600,
};

fn info_hash(i: u32) -> InfoHash {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(&i.to_le_bytes());
    h[16..].copy_from_slice(&i.to_be_bytes());
    InfoHash(h)
}

fn request(torrent: u32, peer: u32) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: info_hash(torrent),
        peer_id: PeerId([peer as u8; 20]),
        peer_ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + peer)),
        port: 6881,
        uploaded: 0,
        downloaded: 0,
        left: u64::from(peer % 4),
        event: AnnounceEvent::None,
        numwant: None,
        key: None,
    }
}

fn filled(torrents: u32, peers_per_torrent: u32) -> SwarmStore {
    let store = SwarmStore::new(256, LIMITS, Clock::real());
    let mut response = AnnounceResponse::default();
    for t in 0..torrents {
        for p in 0..peers_per_torrent {
            store
                .announce(&request(t, p), 0, PeerSelection::default(), &mut response)
                .unwrap();
        }
    }
    store
}

fn announce(c: &mut Criterion) {
    let mut response = AnnounceResponse::default();
    for (name, torrents, peers) in [
        ("store/announce_small_swarms_100k_x_10", 100_000u32, 10u32),
        ("store/announce_large_swarm_1_x_100k", 1, 100_000),
    ] {
        let store = filled(torrents, peers);
        let mut i = 0u32;
        c.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(7919);
                let req = request(i % torrents, i % peers);
                store
                    .announce(black_box(&req), 50, PeerSelection::ALL, &mut response)
                    .unwrap();
            })
        });
    }
    // A new peer joins a small swarm and leaves again: the cost of growing and shrinking
    // a swarm, which steady re-announces never pay.
    let store = filled(100_000, 10);
    let mut i = 0u32;
    c.bench_function("store/join_and_leave_small_swarms_100k_x_10", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            let mut req = request(i % 100_000, 10 + i % 1000);
            req.event = AnnounceEvent::Started;
            store
                .announce(black_box(&req), 50, PeerSelection::ALL, &mut response)
                .unwrap();
            req.event = AnnounceEvent::Stopped;
            store
                .announce(black_box(&req), 50, PeerSelection::ALL, &mut response)
                .unwrap();
        })
    });
    let mut i = 0u32;
    c.bench_function("store/scrape_100k_x_10", |b| {
        b.iter(|| {
            i = (i + 1) % 100_000;
            store.scrape(black_box(&info_hash(i)))
        })
    });
    c.bench_function("store/clean_10k_x_10_nothing_expired", |b| {
        b.iter_batched(
            || filled(10_000, 10),
            |s| s.clean(),
            BatchSize::PerIteration,
        )
    });
}

fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// Not a timing: one million IPv4 peers over 100k torrents, resident bytes per peer.
fn memory(_: &mut Criterion) {
    let before = resident_bytes();
    let store = filled(100_000, 10);
    let after = resident_bytes();
    let totals = store.totals();
    let peers = totals.seeders + totals.leechers;
    assert_eq!(peers, 1_000_000);
    println!(
        "store/memory_1m_ipv4_peers_100k_torrents: {} bytes resident, {:.1} bytes per peer",
        after - before,
        (after - before) as f64 / peers as f64
    );
    black_box(store);
}

/// Not a timing: one million torrents of one IPv4 peer each, resident bytes per peer (the
/// shard tables' slots and the one-entry lists dominate).
fn memory_one_peer_torrents(_: &mut Criterion) {
    let before = resident_bytes();
    let store = filled(1_000_000, 1);
    let after = resident_bytes();
    assert_eq!(store.totals().torrents, 1_000_000);
    println!(
        "store/memory_1m_one_peer_torrents: {} bytes resident, {:.1} bytes per peer",
        after - before,
        (after - before) as f64 / 1e6
    );
    drop(black_box(store));
    // SAFETY: malloc_trim only returns free memory to the system; nothing holds it. Without
    // it the next measurement would start from pages this one freed but kept.
    unsafe { libc::malloc_trim(0) };
}

criterion_group!(benches, memory_one_peer_torrents, memory, announce);
criterion_main!(benches);
