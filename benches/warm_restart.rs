//! Warm restart through Redis: one node is told of PEERS peers over TORRENTS torrents (1M over
//! 100k by default) and publishes them; a second node then starts on the same Redis and loads
//! them. Prints the seconds the load took (the node's own figure), the peers the new node
//! holds, and Redis's memory per replicated peer.
//!
//!   cargo bench --bench warm_restart          (PEERS=1000000 TORRENTS=100000)
//!
//! Needs `redis-server` (Debian package redis-server); starts its own on a free port.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hayate::bittorrent::{AnnounceEvent, AnnounceRequest, AnnounceResponse, InfoHash, PeerId};
use hayate::clock::Clock;
use hayate::config::Config;
use hayate::middleware::Middleware;
use hayate::server::{self, RunningServer};
use hayate::swarm::PeerSelection;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One RESP command to Redis; the reply's text (empty when nothing answers).
fn redis(port: u16, args: &[&str]) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(request.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut out = String::new();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        out.push_str(&line);
        line.clear();
    }
    out
}

fn used_memory(port: u16) -> u64 {
    redis(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

fn metric(server: &RunningServer, name: &str) -> f64 {
    server
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn node(port: u16, id: &str, peers: usize) -> RunningServer {
    let mut config = Config {
        workers: 1,
        ..Config::default()
    };
    config.udp.bind = vec!["127.0.0.1:0".parse().unwrap()];
    config.udp.socket_recv_buffer_bytes = 0;
    config.http.enabled = false;
    config.metrics.enabled = false;
    config.log.level = "warn".into();
    config.swarm.max_peers_per_torrent = 1_000_000;
    config.replication.enabled = true;
    config.replication.node_id = id.into();
    config.replication.redis.url = format!("redis://127.0.0.1:{port}/0");
    config.replication.warm_restart_timeout_secs = 120;
    // The bench thread announces into the store directly (no worker), through the observer's
    // shared fallback queue: room for every change.
    config.replication.queue_capacity = peers + 1024;
    config.replication.max_backlog = peers + 1024;
    hayate::logging::init(&config.log);
    server::start(&config, Clock::real(), Middleware::default()).expect("node starts")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let peers = env("PEERS", 1_000_000);
    let torrents = env("TORRENTS", 100_000);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let _redis = Stopped(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis(port, &["PING"]).contains("PONG") {
        assert!(Instant::now() < deadline, "redis never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = used_memory(port);

    let first = node(port, "first", peers);
    let store = first.store();
    let mut response = AnnounceResponse::default();
    let started = Instant::now();
    for i in 0..peers {
        let torrent = (i % torrents) as u32;
        let mut hash = [0u8; 20];
        hash[..4].copy_from_slice(&torrent.to_le_bytes());
        hash[19] = torrent as u8;
        let peer = (i / torrents) as u32;
        let request = AnnounceRequest {
            info_hash: InfoHash(hash),
            peer_id: PeerId([7; 20]),
            peer_ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + peer)),
            port: 6881,
            uploaded: 0,
            downloaded: 0,
            left: (i % 4 != 0) as u64,
            event: AnnounceEvent::Started,
            numwant: Some(0),
            key: None,
        };
        store
            .announce(&request, 0, PeerSelection::default(), &mut response)
            .expect("stored");
    }
    println!(
        "stored {peers} peers over {torrents} torrents in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while metric(&first, "hayate_replication_changes_published_total") < peers as f64 {
        assert!(Instant::now() < deadline, "never published them all");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "published in {:.2} s ({} batches, {:.1} MB)",
        started.elapsed().as_secs_f64(),
        metric(&first, "hayate_replication_batches_published_total"),
        metric(&first, "hayate_replication_bytes_published_total") / 1e6
    );
    let after = used_memory(port);
    println!(
        "redis memory: {:.1} MB for {peers} peers: {:.1} bytes a peer",
        (after - before) as f64 / 1e6,
        (after - before) as f64 / peers as f64
    );

    let second = node(port, "second", peers);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !second.metrics().is_ready() {
        assert!(Instant::now() < deadline, "second node never ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let totals = second.store().totals();
    println!(
        "warm restart: {:.3} s to load {} changes; the new node holds {} torrents, {} peers",
        metric(&second, "hayate_replication_warm_restart_seconds"),
        metric(&second, "hayate_replication_warm_restart_changes"),
        totals.torrents,
        totals.seeders + totals.leechers
    );
    drop(second);
    drop(first);
}

/// Stops the Redis it holds however the bench ends.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
