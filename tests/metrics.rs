//! `/metrics`, `/healthz` and `/readyz` after known traffic, on every engine: the counts add up
//! across workers, and promtool accepts the text. Then hostile clients: slowloris, trickling,
//! more connections than the cap, a client that never reads; the probes still answer.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use hayate::config::Config;
use hayate::metrics::{Limits, MAX_CONNECTIONS, REQUEST_DEADLINE, RESPONSE_DEADLINE};

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let raw = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes(),
    );
    let reply = parse_http_replies(&raw).remove(0);
    (reply.status, String::from_utf8(reply.body).unwrap())
}

/// `name{labels}` -> value, for every sample line.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(key, _)| {
            key.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| key.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_count_known_traffic_and_pass_promtool() {
    for engine in engines() {
        let hooks = Config::from_yaml(
            "prehooks:\n  - name: client_approval\n    options:\n      deny: [\"-BAD\"]\n",
        )
        .unwrap();
        let config = Config {
            prehooks: hooks.prehooks,
            ..test_config(engine)
        };
        let t = TestServer::start(config);
        let metrics = t.server.metrics_addr().expect("metrics listener");

        assert_eq!(get(metrics, "/healthz").0, 200);
        assert_eq!(get(metrics, "/readyz").0, 200);
        assert_eq!(get(metrics, "/nothing").0, 404);

        // UDP over IPv4: 3 connects, 2 announces, 1 scrape, 1 bad connection id.
        let c = UdpClient::new(t.udp(false));
        let id = c.connect();
        c.connect();
        c.connect();
        c.request(&UdpAnnounce::new(id, hash(1), 1).packet());
        c.request(&UdpAnnounce::new(id, hash(1), 2).packet());
        c.request(&scrape_packet(id, 1, &[hash(1)]));
        c.request(&UdpAnnounce::new(0xbad, hash(1), 3).packet());
        // UDP over IPv6: 1 connect, 1 announce refused by the hook.
        let c6 = UdpClient::new(t.udp(true));
        let mut refused = UdpAnnounce::new(c6.connect(), hash(1), 4);
        refused.peer_id = *b"-BAD001-000000000000";
        c6.request(&refused.packet());
        // HTTP: 2 announces over IPv6, 1 bad request over IPv4, 1 unknown path.
        http_get(t.http(true), &announce_target(hash(2), 1, 1, 0, ""));
        http_get(t.http(true), &announce_target(hash(2), 2, 2, 5, ""));
        http_get(t.http(false), "/announce?info_hash=short");
        http_get(t.http(false), "/favicon.ico");

        let (status, text) = get(metrics, "/metrics");
        assert_eq!(status, 200);
        let s = samples(&text);
        let e = if engine == hayate::config::EngineKind::IoUring {
            "io_uring"
        } else {
            "epoll"
        };
        let req = |p, a, ip| {
            value(
                &s,
                "hayate_requests_total",
                &[("protocol", p), ("action", a), ("ip", ip), ("engine", e)],
            )
        };
        let resp = |p, a, ip| {
            value(
                &s,
                "hayate_responses_total",
                &[("protocol", p), ("action", a), ("ip", ip), ("engine", e)],
            )
        };
        assert_eq!(req("udp", "connect", "ipv4"), 3.0, "{engine:?}");
        assert_eq!(req("udp", "announce", "ipv4"), 3.0);
        assert_eq!(req("udp", "scrape", "ipv4"), 1.0);
        assert_eq!(resp("udp", "announce", "ipv4"), 2.0);
        assert_eq!(resp("udp", "error", "ipv4"), 1.0);
        assert_eq!(req("udp", "connect", "ipv6"), 1.0);
        assert_eq!(resp("udp", "error", "ipv6"), 1.0);
        assert_eq!(req("http", "announce", "ipv6"), 2.0);
        assert_eq!(resp("http", "announce", "ipv6"), 2.0);
        assert_eq!(req("http", "announce", "ipv4"), 1.0);
        assert_eq!(resp("http", "error", "ipv4"), 1.0);
        assert_eq!(req("http", "other", "ipv4"), 1.0);
        let err = |p, k| value(&s, "hayate_errors_total", &[("protocol", p), ("kind", k)]);
        assert_eq!(err("udp", "bad_connection_id"), 1.0);
        assert_eq!(err("udp", "rejected_by_hook"), 1.0);
        assert_eq!(err("http", "bad_request"), 1.0);
        assert_eq!(
            value(
                &s,
                "hayate_hook_rejections_total",
                &[("hook", "client_approval")]
            ),
            1.0
        );
        assert_eq!(value(&s, "hayate_torrents", &[]), 2.0);
        // Two UDP leechers on hash 1; an HTTP seeder and leecher on hash 2.
        assert_eq!(value(&s, "hayate_seeders", &[]), 1.0);
        assert_eq!(value(&s, "hayate_leechers", &[]), 3.0);
        assert_eq!(value(&s, "hayate_peers", &[]), 4.0);
        assert_eq!(value(&s, "hayate_engine_info", &[("engine", e)]), 1.0);
        assert_eq!(value(&s, "hayate_workers", &[]), 2.0);
        // 16 requests so far, one in 16 timed per worker: the histogram's count is what was sampled.
        let sampled = value(&s, "hayate_request_duration_seconds_count", &[]);
        assert!(sampled <= 16.0 / 16.0 * 2.0, "{sampled}");
        assert!(value(&s, "process_resident_memory_bytes", &[]) > 1e6);
        assert!(value(&s, "process_open_fds", &[]) > 0.0);
        assert!(text.contains("process_cpu_seconds_total"));

        t.server.store().clean();
        promtool_check(&text);
    }
}

#[test]
fn readyz_fails_once_the_server_stops() {
    let t = TestServer::start(test_config(engines()[0]));
    let metrics = t.server.metrics_addr().unwrap();
    let shared = t.server.metrics().clone();
    assert_eq!(get(metrics, "/readyz").0, 200);
    t.server.stop();
    assert!(!shared.is_ready());
    assert_eq!(get(metrics, "/readyz").0, 503);
    assert_eq!(get(metrics, "/healthz").0, 200);
}

// ---- hostile clients -------------------------------------------------------------------

/// What a probe allows for each read, as a kubelet's timeout would.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `path` on a new connection, answered completely with no read waiting over [`PROBE_TIMEOUT`].
fn probe(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        panic!(
            "{path}: no complete answer, a read waited over {PROBE_TIMEOUT:?}: {e} ({} bytes came)",
            raw.len()
        );
    }
    assert!(!raw.is_empty(), "{path}: closed without an answer");
    let reply = parse_http_replies(&raw).remove(0);
    assert_eq!(reply.header("Connection"), Some("close"), "{path}");
    (reply.status, String::from_utf8(reply.body).unwrap())
}

/// The three paths, each answered correctly and in time.
fn probes_answer(addr: SocketAddr) {
    assert_eq!(probe(addr, "/healthz"), (200, "ok".into()));
    assert_eq!(probe(addr, "/readyz"), (200, "ready".into()));
    let (status, text) = probe(addr, "/metrics");
    assert_eq!(status, 200);
    let s = samples(&text);
    assert_eq!(value(&s, "hayate_workers", &[]), 2.0);
    assert_eq!(value(&s, "hayate_engine_info", &[]), 1.0);
}

/// The server's side of connections to `port` (IPv4), as (state, inode) from /proc/net/tcp.
fn server_sockets(port: u16) -> Vec<(String, String)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f[1].ends_with(&port) && f[3] != "0A")
        .map(|f| (f[3].to_string(), f[9].to_string()))
        .collect()
}

/// Connections to `port` that the process holds a descriptor for: ones still in the listen
/// queue, or closed and draining, have none (inode 0).
fn held_connections(port: u16) -> usize {
    server_sockets(port)
        .iter()
        .filter(|(_, inode)| inode != "0")
        .count()
}

/// Connections to `port` open at both ends, accepted or still queued.
fn established_connections(port: u16) -> usize {
    server_sockets(port)
        .iter()
        .filter(|(state, _)| state == "01")
        .count()
}

/// A request head that never ends: the start of a request, then header bytes forever.
fn endless_request_byte(i: usize) -> u8 {
    let start = b"GET /healthz HTTP/1.1\r\nHost: m\r\nX-Slow: ";
    start.get(i).copied().unwrap_or(b'a')
}

/// `clients` connections each sending one byte of an endless request every `every`, reconnecting
/// when the server closes them, until stopped (or a minute passed).
struct Slowloris {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Slowloris {
    fn start(addr: SocketAddr, clients: usize, every: Duration) -> Slowloris {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let connect = || {
                let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
                stream.set_nodelay(true).ok()?;
                stream
                    .set_write_timeout(Some(Duration::from_secs(1)))
                    .ok()?;
                Some(stream)
            };
            let mut conns: Vec<(Option<TcpStream>, usize)> =
                (0..clients).map(|_| (connect(), 0)).collect();
            let _ = ready_tx.send(());
            let started = Instant::now();
            while !stopped.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                for (stream, sent) in &mut conns {
                    let alive = stream
                        .as_mut()
                        .is_some_and(|s| s.write_all(&[endless_request_byte(*sent)]).is_ok());
                    *sent += 1;
                    if !alive {
                        *stream = connect();
                        *sent = 0;
                    }
                }
                let tick = Instant::now();
                while tick.elapsed() < every && !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("slowloris clients connected");
        Slowloris {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn probes_answer_during_a_slowloris() {
    let t = TestServer::start(test_config(engines()[0]));
    let metrics = t.server.metrics_addr().unwrap();
    let attack = Slowloris::start(metrics, 60, Duration::from_secs(1));
    // While the first wave holds its connections, and again once the server has closed it at
    // the deadline and the clients came back.
    let started = Instant::now();
    let first = Duration::from_millis(1500);
    std::thread::sleep(first);
    // Else the attack is not one, and the test proves nothing.
    let open = established_connections(metrics.port());
    assert!(open >= 50, "the slow clients have {open} connections only");
    probes_answer(metrics);
    let second = REQUEST_DEADLINE + first;
    std::thread::sleep(second.saturating_sub(started.elapsed()));
    probes_answer(metrics);
    drop(attack);
}

#[test]
fn a_trickled_request_is_cut_off_at_the_deadline() {
    let t = TestServer::start(test_config(engines()[0]));
    let metrics = t.server.metrics_addr().unwrap();
    // Before connecting: the server's deadline cannot start earlier.
    let started = Instant::now();
    let mut stream = TcpStream::connect(metrics).unwrap();
    stream.set_nodelay(true).unwrap();
    // The read's timeout paces the trickle: a byte every 500 ms.
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let give_up = REQUEST_DEADLINE + Duration::from_secs(3);
    let mut buf = [0u8; 256];
    let mut sent = 0;
    let closed_after = loop {
        assert!(
            started.elapsed() < give_up,
            "still connected after {:?} and {sent} bytes",
            started.elapsed()
        );
        if stream.write_all(&[endless_request_byte(sent)]).is_err() {
            break started.elapsed();
        }
        sent += 1;
        match read_some(&mut stream, &mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(n) => panic!(
                "an answer to an unfinished request: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break started.elapsed(),
        }
    };
    // A request may take its whole deadline, however slowly it comes.
    assert!(
        closed_after >= REQUEST_DEADLINE,
        "closed after {closed_after:?}, {sent} bytes"
    );
}

#[test]
fn newcomers_at_the_cap_evict_the_oldest_slow_clients() {
    let t = TestServer::start(test_config(engines()[0]));
    // Deadlines far away: only eviction can make room here.
    let limits = Limits {
        request_deadline: Duration::from_secs(120),
        ..Limits::default()
    };
    let metrics = hayate::metrics::serve_with(
        "127.0.0.1:0".parse().unwrap(),
        t.server.metrics().clone(),
        limits,
    )
    .unwrap();
    // One budget for every connect: a server that does not accept leaves each hanging on a full
    // listen queue.
    let connecting = Instant::now();
    let budget = Duration::from_secs(20);
    let mut slow: Vec<TcpStream> = (0..MAX_CONNECTIONS + 50)
        .map(|i| {
            let left = budget.saturating_sub(connecting.elapsed());
            let mut s = TcpStream::connect_timeout(&metrics, left.max(Duration::from_millis(1)))
                .unwrap_or_else(|e| panic!("slow client {i} not connected within {budget:?}: {e}"));
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    probes_answer(metrics);
    // The probes were queued behind every slow client, so all of those were taken by now; each
    // probe evicted one more and was closed once answered.
    let held = held_connections(metrics.port());
    assert!(
        (MAX_CONNECTIONS - 3..=MAX_CONNECTIONS).contains(&held),
        "{held} connections held, the cap is {MAX_CONNECTIONS}"
    );
    let mut buf = [0u8; 64];
    for (i, s) in slow[..50].iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        match read_some(s, &mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("slow client {i}, among the oldest, not evicted: {other:?}"),
        }
    }
    drop(slow);
}

#[test]
fn a_client_that_never_reads_stalls_only_itself() {
    // A /metrics answer of some 200 KB (a hook line each), more than the kernel buffers between
    // the server and a client that does not read. Not ready: no tracker behind it.
    let metrics = Arc::new(hayate::metrics::Metrics::default());
    let hooks = (0..2000)
        .map(|i| &*format!("hook_with_a_long_name_{i:05}").leak())
        .collect();
    metrics.add_worker(hooks);
    let addr = hayate::metrics::serve("127.0.0.1:0".parse().unwrap(), metrics).unwrap();

    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // The kernel's minimum receive buffer, and a small segment size so the server's send buffer
    // is not sized for loopback's 64 KB segments: the answer cannot all leave the server.
    socket.set_recv_buffer_size(1).unwrap();
    socket.set_tcp_mss(536).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut hog: TcpStream = socket.into();
    let started = Instant::now();
    hog.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .unwrap();

    for _ in 0..3 {
        assert_eq!(probe(addr, "/healthz"), (200, "ok".into()));
    }
    assert_eq!(probe(addr, "/readyz"), (503, "not ready".into()));
    let (status, text) = probe(addr, "/metrics");
    assert_eq!(status, 200);
    let s = samples(&text);
    assert_eq!(value(&s, "hayate_workers", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "hayate_hook_rejections_total",
            &[("hook", "hook_with_a_long_name_01999")]
        ),
        0.0
    );
    assert!(text.len() > 100_000, "{} bytes", text.len());
    assert_eq!(
        held_connections(addr.port()),
        1,
        "the server still writing to the client that does not read (else this proves nothing)"
    );
    // Until the response deadline ends it.
    let give_up = RESPONSE_DEADLINE + Duration::from_secs(3);
    while held_connections(addr.port()) > 0 {
        assert!(
            started.elapsed() < give_up,
            "the server still writes to a client that does not read after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(hog);
}
