//! Several nodes on one real Redis (`redis-server`, started here on a free port and stopped by
//! PID): what one node is told, the others answer with; a stop anywhere removes everywhere; a
//! new or restarted node loads the swarms; Redis going away costs no request an answer.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::{ClusterSetup, MASTER_NAME, RedisServer, SentinelSetup};
use common::*;
use hayate::config::EngineKind;

/// A node on `redis`, ready (the swarms loaded).
fn node(redis: &RedisServer, id: &str, engine: EngineKind) -> TestServer {
    node_with(id, engine, |r| r.redis.url = redis.url())
}

/// A node whose Redis `set_redis` names, ready.
fn node_with(
    id: &str,
    engine: EngineKind,
    set_redis: impl FnOnce(&mut hayate::config::ReplicationConfig),
) -> TestServer {
    let mut config = test_config(engine);
    config.replication.enabled = true;
    config.replication.node_id = id.into();
    config.replication.flush_interval_ms = 20;
    config.replication.warm_restart_timeout_secs = 5;
    set_redis(&mut config.replication);
    let t = TestServer::start(config);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.server.metrics().is_ready() {
        assert!(Instant::now() < deadline, "{id} never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    t
}

/// Announces `port` into torrent `n` at `t` over UDP; the peers of the reply.
fn announce(t: &TestServer, n: u8, port: u16, event: u32) -> Vec<SocketAddr> {
    let c = UdpClient::new(t.udp(false));
    let id = c.connect();
    let mut a = UdpAnnounce::new(id, hash(n), port);
    a.event = event;
    a.peer_id = peer_id(port as u8);
    c.request(&a.packet()).peers()
}

/// Announces `port` at `t` until `want(peers)` holds, for up to `within`; whether it did.
fn eventually(
    t: &TestServer,
    n: u8,
    port: u16,
    within: Duration,
    want: impl Fn(&[SocketAddr]) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if want(&announce(t, n, port, 0)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn metric(t: &TestServer, name: &str) -> f64 {
    let text = t.server.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn a_peer_announced_at_one_node_is_in_the_others_replies_within_a_second_and_a_stop_removes_it() {
    let redis = RedisServer::start();
    for engine in engines() {
        let a = node(&redis, "a", engine);
        let b = node(&redis, "b", engine);
        let torrent = if engine == EngineKind::Epoll { 1 } else { 2 };
        announce(&a, torrent, 1001, 2);
        assert!(
            eventually(&b, torrent, 2001, Duration::from_secs(1), |p| p
                .contains(&peer(1001))),
            "{engine:?}: B never answered with A's peer"
        );
        // And the other way round.
        assert!(eventually(&a, torrent, 1001, Duration::from_secs(1), |p| p
            .contains(&peer(2001))));
        // A stop at A removes the peer at B.
        announce(&a, torrent, 1001, 3);
        assert!(
            eventually(&b, torrent, 2001, Duration::from_secs(1), |p| !p
                .contains(&peer(1001))),
            "{engine:?}: the stop did not reach B"
        );
        // The lag as the applying node measures it.
        assert!(metric(&b, "hayate_replication_lag_seconds_count") >= 1.0);
        assert_eq!(metric(&b, "hayate_replication_connected"), 1.0);
        promtool_check(&b.server.metrics().render());
    }
}

#[test]
fn with_three_nodes_each_change_is_published_once_and_never_sent_back() {
    let redis = RedisServer::start();
    let nodes: Vec<TestServer> = ["a", "b", "c"]
        .iter()
        .map(|id| node(&redis, id, EngineKind::Epoll))
        .collect();
    // Two peers at A: one change each.
    announce(&nodes[0], 5, 1101, 2);
    announce(&nodes[0], 5, 1102, 2);
    for (i, n) in nodes.iter().enumerate().skip(1) {
        assert!(
            eventually(n, 5, 1200 + i as u16, Duration::from_secs(1), |p| {
                p.contains(&peer(1101)) && p.contains(&peer(1102))
            }),
            "node {i} did not get both"
        );
    }
    // Time for any echo to show.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metric(&nodes[0], "hayate_replication_changes_published_total"),
        2.0
    );
    // B and C each published only their own announcing peer, never A's.
    for n in &nodes[1..] {
        assert_eq!(metric(n, "hayate_replication_changes_published_total"), 1.0);
    }
    // A applied B's and C's peer, nothing of its own.
    assert_eq!(
        metric(&nodes[0], "hayate_replication_changes_applied_total"),
        2.0
    );
    // Re-announces that change nothing are not published again.
    for _ in 0..5 {
        announce(&nodes[0], 5, 1101, 0);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        metric(&nodes[0], "hayate_replication_changes_published_total"),
        2.0
    );
}

#[test]
fn completed_downloads_are_counted_once_across_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", EngineKind::Epoll);
    let b = node(&redis, "b", EngineKind::Epoll);
    let scrape = |t: &TestServer| {
        let c = UdpClient::new(t.udp(false));
        let id = c.connect();
        match c.request(&scrape_packet(id, 9, &[hash(7)])) {
            UdpReply::Scrape { stats, .. } => stats[0].1,
            other => panic!("{other:?}"),
        }
    };
    announce(&a, 7, 1301, 2);
    announce(&a, 7, 1301, 1); // completed at A
    announce(&b, 7, 1302, 1); // another peer completed at B
    let deadline = Instant::now() + Duration::from_secs(2);
    while (scrape(&a), scrape(&b)) != (2, 2) {
        assert!(
            Instant::now() < deadline,
            "downloaded: A {} B {} (want 2, 2)",
            scrape(&a),
            scrape(&b)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The same peer's `completed` again, at the other node: not counted again.
    announce(&b, 7, 1301, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((scrape(&a), scrape(&b)), (2, 2));
}

#[test]
fn a_new_node_loads_the_swarms_before_it_says_ready() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", EngineKind::Epoll);
    for port in 1401..1411 {
        announce(&a, 8, port, 2);
    }
    // Published within a flush or two.
    std::thread::sleep(Duration::from_millis(200));
    let c = node(&redis, "c", EngineKind::IoUring);
    // Its very first reply, right after ready, has them all.
    let peers = announce(&c, 8, 1499, 2);
    assert_eq!(peers.len(), 10, "{peers:?}");
    assert!(metric(&c, "hayate_replication_warm_restart_changes") >= 10.0);
}

#[test]
fn while_redis_is_away_every_request_is_answered_and_afterwards_the_nodes_converge() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a", EngineKind::Epoll);
    let b = node(&redis, "b", EngineKind::IoUring);
    announce(&a, 9, 1501, 2);
    assert!(eventually(&b, 9, 1601, Duration::from_secs(1), |p| p
        .contains(&peer(1501))));
    redis.kill();
    // Both nodes keep answering, every time (a failed request panics in `announce`).
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(2) {
        announce(&a, 9, 1502, 0);
        announce(&b, 9, 1602, 0);
        answered += 2;
    }
    assert!(answered > 10);
    assert_eq!(metric(&a, "hayate_replication_connected"), 0.0);
    // Redis comes back empty (no persistence): the nodes reconnect, publish their peers again,
    // and each sees what the other was told meanwhile.
    redis.restart();
    assert!(
        eventually(&b, 9, 1601, Duration::from_secs(10), |p| p
            .contains(&peer(1502))),
        "B never got what A was told during the outage"
    );
    assert!(eventually(&a, 9, 1501, Duration::from_secs(5), |p| p
        .contains(&peer(1602))));
    // And a node that starts now finds everything in Redis again.
    let c = node(&redis, "c", EngineKind::Epoll);
    let peers = announce(&c, 9, 1701, 2);
    for port in [1501, 1502, 1601, 1602] {
        assert!(peers.contains(&peer(port)), "{port} missing: {peers:?}");
    }
}

#[test]
fn garbage_in_the_streams_is_skipped_and_counted() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", EngineKind::Epoll);
    let b = node(&redis, "b", EngineKind::Epoll);
    for (field, data) in [
        (&b"d"[..], &b"not a batch"[..]),
        (
            b"d",
            b"HYR1\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x01\0\0\0\x10\0\0\0\x05\x01",
        ),
        (b"something", b"else"),
    ] {
        redis.command(&[b"XADD", b"hayate:{3}:changes", b"*", field, data]);
    }
    // Still replicating, and the garbage was counted.
    announce(&a, 3, 1801, 2);
    assert!(eventually(&b, 3, 1802, Duration::from_secs(1), |p| p
        .contains(&peer(1801))));
    assert!(metric(&b, "hayate_replication_records_skipped_total") >= 2.0);
}

#[test]
fn replication_follows_a_sentinel_failover_without_a_restart() {
    let setup = SentinelSetup::start();
    let sentinel = |r: &mut hayate::config::ReplicationConfig| {
        r.redis.sentinel.master_name = MASTER_NAME.into();
        r.redis.sentinel.addresses = setup.addresses();
    };
    let a = node_with("a", EngineKind::Epoll, sentinel);
    let b = node_with("b", EngineKind::IoUring, sentinel);
    announce(&a, 11, 1901, 2);
    assert!(eventually(&b, 11, 1951, Duration::from_secs(1), |p| p
        .contains(&peer(1901))));
    setup.fail_over();
    // Every announce is answered during and after the failover (`announce` panics on none),
    // and changes flow again through the new master.
    announce(&a, 11, 1902, 2);
    assert!(
        eventually(&b, 11, 1951, Duration::from_secs(15), |p| p
            .contains(&peer(1902))),
        "nothing replicated after the failover"
    );
    assert!(
        setup
            .replica
            .command(&[b"XLEN", b"hayate:{11}:changes"])
            .contains(':'),
        "the new master holds the stream"
    );
}

#[test]
fn replication_works_on_a_redis_cluster_of_three_masters() {
    let cluster = ClusterSetup::start();
    let nodes = |r: &mut hayate::config::ReplicationConfig| r.redis.cluster.nodes = cluster.urls();
    let a = node_with("a", EngineKind::Epoll, nodes);
    let b = node_with("b", EngineKind::Epoll, nodes);
    // Torrents in several partitions, so several slots and masters.
    for n in [12u8, 13, 14, 15, 16] {
        announce(&a, n, 2001, 2);
    }
    for n in [12u8, 13, 14, 15, 16] {
        assert!(
            eventually(&b, n, 2002, Duration::from_secs(1), |p| p
                .contains(&peer(2001))),
            "torrent {n} not replicated through the cluster"
        );
    }
    // The streams are spread over the masters.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.command(&[b"DBSIZE"]).trim_start_matches(':').trim() != "0")
        .count();
    assert!(holding >= 2, "only {holding} masters hold keys");
    // A new node loads from the cluster too.
    let c = node_with("c", EngineKind::IoUring, nodes);
    assert!(announce(&c, 12, 2003, 2).contains(&peer(2001)));
}

/// GET `path` on `addr`; the status, or None when nothing answers.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    std::str::from_utf8(raw.get(9..12)?).ok()?.parse().ok()
}

#[test]
fn a_node_killed_with_sigkill_answers_with_its_swarms_once_ready_again() {
    let redis = RedisServer::start();
    let udp = SocketAddr::from(([127, 0, 0, 1], common::redis::free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::redis::free_port()));
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "workers: 1\nlog: {{level: warn}}\nudp: {{bind: [\"{udp}\"], connection_id_secret: \"{SECRET}\"}}\n\
             http: {{enabled: false}}\nmetrics: {{bind: \"{metrics}\"}}\n\
             replication: {{enabled: true, node_id: killed, flush_interval_ms: 20, redis: {{url: \"{}\"}}}}\n",
            redis.url()
        ),
    )
    .unwrap();
    let start = || {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_hayate"))
            .args(["--config", config.path().to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while http_status(metrics, "/readyz") != Some(200) {
            assert!(Instant::now() < deadline, "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let announce_at = |port: u16| {
        let c = UdpClient::new(udp);
        let id = c.connect();
        let mut a = UdpAnnounce::new(id, hash(21), port);
        a.peer_id = peer_id(port as u8);
        c.request(&a.packet()).peers()
    };
    let mut first = start();
    for port in 2101..2106 {
        announce_at(port);
    }
    std::thread::sleep(Duration::from_millis(300));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let mut second = start();
    // The first reply after /readyz says ready has the peers the killed process had.
    let peers = announce_at(2199);
    let _ = second.kill();
    let _ = second.wait();
    for port in 2101..2106 {
        assert!(peers.contains(&peer(port)), "{port} missing: {peers:?}");
    }
}

/// Runs the binary on `config` for a moment; what it logged.
fn log_of_a_short_run(config: &str) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hayate"))
        .args(["--config", file.path().to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn redis_passwords_never_show_in_logs_or_errors() {
    let redis = RedisServer::start_with(&["--requirepass", "right-password"]);
    let base = "workers: 1\nudp: {bind: [\"127.0.0.1:0\"]}\nhttp: {enabled: false}\n\
                metrics: {enabled: false}\nlog: {level: info}\n";
    // A wrong password in the URL, a password file with the right one, and an unreachable
    // server with a password: the tracker runs, says what is wrong, never the password.
    let wrong = log_of_a_short_run(&format!(
        "{base}replication: {{enabled: true, node_id: p1, warm_restart_timeout_secs: 1, \
         redis: {{url: \"redis://:wrong-password@127.0.0.1:{}/0\"}}}}\n",
        redis.port
    ));
    // One line for the outage, not one per attempt (it retries every 100 ms to 5 s).
    assert_eq!(wrong.matches("cannot reach Redis").count(), 1, "{wrong}");
    assert!(wrong.contains("redis://:***@127.0.0.1"), "{wrong}");
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "right-password\n").unwrap();
    let right = log_of_a_short_run(&format!(
        "{base}replication: {{enabled: true, node_id: p2, redis: {{url: \"{}\", password_file: \"{}\"}}}}\n",
        redis.url(),
        secret.path().display()
    ));
    assert!(right.contains("connected to Redis"), "{right}");
    let unreachable = log_of_a_short_run(&format!(
        "{base}replication: {{enabled: true, node_id: p3, warm_restart_timeout_secs: 1, \
         redis: {{url: \"rediss://user:tls-password@127.0.0.1:1/0\"}}}}\n"
    ));
    assert!(unreachable.contains("cannot reach Redis"), "{unreachable}");
    // A config error about the Redis section does not repeat the URL's password either.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad.path(),
        "replication: {enabled: true, node_id: x, redis: {cluster: {nodes: [\"http://:cluster-password@h:1\"]}}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hayate"))
        .args(["--check-config", bad.path().to_str().unwrap()])
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{error}");
    assert!(error.contains("replication.redis.cluster.nodes"), "{error}");
    for (log, password) in [
        (&wrong, "wrong-password"),
        (&right, "right-password"),
        (&unreachable, "tls-password"),
        (&error.to_string(), "cluster-password"),
    ] {
        assert!(!log.contains(password), "{password} shown: {log}");
    }
}

#[test]
fn each_change_is_applied_once_however_many_batches_and_reads_it_takes() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", EngineKind::Epoll);
    let b = node(&redis, "b", EngineKind::Epoll);
    // More changes than one read of every stream returns (100 entries each), straight into
    // A's store: they reach the replication thread through the store's observer.
    let mut response = hayate::bittorrent::AnnounceResponse::default();
    let changes = 30_000u32;
    for i in 0..changes {
        let mut info_hash = [0u8; 20];
        info_hash[..4].copy_from_slice(&i.to_le_bytes());
        info_hash[19] = i as u8;
        let request = hayate::bittorrent::AnnounceRequest {
            info_hash: hayate::bittorrent::InfoHash(info_hash),
            peer_id: hayate::bittorrent::PeerId([1; 20]),
            peer_ip: "10.0.0.1".parse().unwrap(),
            port: 6881,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event: hayate::bittorrent::AnnounceEvent::Started,
            numwant: Some(0),
            key: None,
        };
        a.server
            .store()
            .announce(
                &request,
                0,
                hayate::swarm::PeerSelection::default(),
                &mut response,
            )
            .unwrap();
        if i % 1000 == 999 {
            // The fallback queue holds 65,536: let the thread drain it now and then.
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&b, "hayate_replication_changes_applied_total") < f64::from(changes) {
        assert!(Instant::now() < deadline, "not all applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metric(&b, "hayate_replication_changes_applied_total"),
        f64::from(changes)
    );
    assert_eq!(
        metric(&b, "hayate_replication_lag_seconds_count"),
        metric(&a, "hayate_replication_batches_published_total")
    );
}
