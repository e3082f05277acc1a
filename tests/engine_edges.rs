//! Edge cases of the engines' buffers and connections, on every engine: more datagrams than
//! receive buffers or send slots, receive buffers exhausted by many connections, clients that
//! close mid-request or half-close after it.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn small_buffers(engine: hayate::config::EngineKind) -> hayate::config::Config {
    let mut config = test_config(engine);
    config.workers = 1;
    config.udp.batch_size = 4;
    config.io_uring.udp_recv_buffers = 4;
    config.io_uring.udp_send_slots = 2;
    config.io_uring.http_recv_buffers = 2;
    config.io_uring.http_recv_buffer_bytes = 512;
    config
}

#[test]
fn a_burst_beyond_the_receive_buffers_and_send_slots_leaves_the_tracker_serving() {
    for engine in engines() {
        let t = TestServer::start(small_buffers(engine));
        let burst = UdpClient::new(t.udp(false));
        for i in 0..3000u32 {
            burst.send(&connect_packet(i));
        }
        let mut answered = 0;
        while burst.recv_raw(Duration::from_millis(300)).is_some() {
            answered += 1;
        }
        assert!(answered > 0, "{engine:?}: some of the burst is answered");
        // The multishot receive was re-armed: one request after another is answered.
        let c = UdpClient::new(t.udp(false));
        for i in 0..100 {
            assert!(
                matches!(c.request(&connect_packet(i)), UdpReply::Connect { transaction_id, .. } if transaction_id == i)
            );
        }
    }
}

#[test]
fn many_connections_sharing_few_receive_buffers_all_get_answers() {
    for engine in engines() {
        let t = TestServer::start(small_buffers(engine));
        let target = announce_target(hash(1), 1, 1, 0, "");
        let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").repeat(10);
        let mut streams: Vec<TcpStream> = (0..20)
            .map(|_| TcpStream::connect(t.http(true)).unwrap())
            .collect();
        for s in &mut streams {
            s.write_all(request.as_bytes()).unwrap();
        }
        for s in &mut streams {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            while parse_count(&raw) < 10 {
                match read_some(s, &mut buf) {
                    Ok(0) => panic!("{engine:?}: closed early"),
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("{engine:?}: {e} after {} replies", parse_count(&raw)),
                }
            }
            assert!(parse_http_replies(&raw).iter().all(|r| r.status == 200));
        }
    }
}

fn parse_count(raw: &[u8]) -> usize {
    raw.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count()
}

#[test]
fn clients_that_vanish_mid_request_leave_no_connection_behind() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.workers = 1;
        config.http.max_connections = 3;
        let t = TestServer::start(config);
        for _ in 0..30 {
            let mut s = TcpStream::connect(t.http(false)).unwrap();
            s.write_all(b"GET /announce?info_ha").unwrap();
            drop(s);
        }
        std::thread::sleep(Duration::from_millis(300));
        // No socket of theirs is left on the tracker's side.
        assert_eq!(
            server_side_connections(t.http(false).port()),
            0,
            "{engine:?}"
        );
        // All three slots are free again: three held connections are all served.
        let target = announce_target(hash(2), 1, 1, 0, "");
        let mut held: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(t.http(false)).unwrap())
            .collect();
        for s in &mut held {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes())
                .unwrap();
            let mut buf = [0u8; 512];
            let n = read_some(s, &mut buf).unwrap_or(0);
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{engine:?}: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
}

#[test]
fn a_half_closed_connection_still_gets_its_answer() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let mut s = TcpStream::connect(t.http(false)).unwrap();
        s.write_all(
            format!(
                "GET {} HTTP/1.1\r\n\r\n",
                announce_target(hash(3), 1, 1, 0, "")
            )
            .as_bytes(),
        )
        .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert_eq!(parse_http_replies(&raw).len(), 1, "{engine:?}");
    }
}

/// Established TCP connections whose local port is `port`: the tracker's side of its
/// connections (the clients' sides have it as their remote port).
fn server_side_connections(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields
                        .get(1)
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| u16::from_str_radix(p, 16).ok());
                    local_port == Some(port) && fields.get(3) == Some(&"01")
                })
                .map(|_| ())
                .collect::<Vec<_>>()
        })
        .count()
}

#[test]
fn clients_that_pipeline_without_reading_are_stopped_and_closed() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.workers = 1;
        config.http.max_connections = 4;
        config.http.request_timeout_secs = 2;
        let t = TestServer::start(config);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: t\r\n\r\n",
            announce_target(hash(4), 1, 1, 0, "")
        )
        .repeat(200);
        let mut clients: Vec<TcpStream> = (0..4)
            .map(|_| {
                let s = TcpStream::connect(t.http(false)).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        // Write until the tracker has stopped taking more from every client: each socket
        // either refuses more for a whole second (flow control: the tracker stopped reading)
        // or was closed (it sent more than a connection may hold unanswered). Before, the
        // tracker read and buffered without end: 420 MB from one client. Bounded at 10 s.
        let started = Instant::now();
        let mut written = [0usize; 4];
        let mut closed = [false; 4];
        let mut blocked_since = None;
        while started.elapsed() < Duration::from_secs(10) && !closed.iter().all(|&c| c) {
            let mut progress = false;
            for (i, c) in clients.iter_mut().enumerate() {
                if closed[i] {
                    continue;
                }
                // (Continue where the last write stopped: the stream stays whole requests.)
                let at = written[i] % request.len();
                match c.write(&request.as_bytes()[at..]) {
                    Ok(n) => {
                        written[i] += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => closed[i] = true,
                }
            }
            if progress {
                blocked_since = None;
            } else {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert!(
            closed.iter().all(|&c| c)
                || blocked_since.is_some_and(|s| s.elapsed() > Duration::from_secs(1)),
            "{engine:?}: the tracker kept reading: {written:?} bytes written"
        );
        // What a client can get in before that: the kernel's socket buffers (kept small for
        // HTTP) and a connection's bounded input.
        assert!(
            written.iter().all(|&w| w < 8 << 20),
            "{engine:?}: {written:?} bytes written before the tracker stopped them"
        );
        // Their answers are never taken: they are closed (at the latest at the deadline),
        // their sockets freed (io_uring's sends to them used to stay in flight for good), and
        // others are served.
        let deadline = Instant::now() + Duration::from_secs(8);
        while server_side_connections(t.http(false).port()) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            server_side_connections(t.http(false).port()),
            0,
            "{engine:?}"
        );
        let metrics = t.server.metrics().render();
        let closed_for = |reason: &str| -> u64 {
            let prefix = format!("hayate_http_connections_closed_total{{reason=\"{reason}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert_eq!(
            closed_for("send_timeout") + closed_for("input_limit"),
            4,
            "{engine:?}: {metrics}"
        );
        assert_eq!(
            http_get(t.http(false), "/nothing").status,
            404,
            "{engine:?}"
        );
    }
}

#[test]
fn a_second_tracker_on_the_same_ports_refuses_to_start() {
    let first = TestServer::start(test_config(hayate::config::EngineKind::Epoll));
    for (udp, http) in [(true, false), (false, true)] {
        let mut config = test_config(hayate::config::EngineKind::Epoll);
        config.udp.enabled = udp;
        config.http.enabled = http;
        // Every address the first one holds, ports and all.
        config.udp.bind = first.server.udp_addrs().to_vec();
        config.http.bind = first.server.http_addrs().to_vec();
        let error = match hayate::server::start(
            &config,
            hayate::clock::Clock::stopped(NOW),
            hayate::middleware::Middleware::default(),
        ) {
            Ok(_) => panic!("a second tracker started on ports in use (udp {udp})"),
            Err(e) => format!("{e:#}"),
        };
        let what = if udp { "UDP" } else { "TCP" };
        assert!(
            error.contains(what) && error.contains("in use by another process"),
            "{error}"
        );
    }
    // The first one still has all its clients.
    let c = UdpClient::new(first.udp(false));
    assert!(c.connect() > 0);
    assert_eq!(http_get(first.http(true), "/nothing").status, 404);
}

// ---- Every way a buffer or slot is released --------------------------------------------
//
// io_uring hands the kernel memory for as long as an operation runs: provided receive
// buffers, UDP send slots, HTTP connections (their descriptor and the buffer a send reads).
// Each is freed only once none of its operations is in flight, and each must then come back.
// The tests below take each way a release happens, on rings so small that a buffer or slot
// not coming back stops the tracker (2 receive buffers a ring, 2 send slots), and count the
// tracker's sockets to see each connection's descriptor closed. In debug builds the engine
// also checks, once a second and when it stops, that every slot waiting for an operation has
// one in flight and every operation in flight has its slot (`Ring::check_ownership`), and
// that each batch gives back every buffer it took (`BufRing::publish`); a worker that fails
// those panics, which `stopped_cleanly` reports.

/// One worker; 2 receive buffers in each ring, 2 UDP send slots, at most 2 HTTP connections.
fn tight(engine: hayate::config::EngineKind) -> hayate::config::Config {
    let mut config = test_config(engine);
    config.workers = 1;
    config.udp.batch_size = 4;
    config.io_uring.udp_recv_buffers = 2;
    config.io_uring.udp_send_slots = 2;
    config.io_uring.http_recv_buffers = 2;
    config.io_uring.http_recv_buffer_bytes = 4096;
    config.http.max_connections = 2;
    // Big scrapes (`big_scrape`): one answer larger than the sockets' buffers.
    config.http.max_request_bytes = 256 * 1024;
    config.http.max_scrape_hashes = SCRAPE_HASHES;
    config
}

/// Stops the tracker and checks that no worker died (an engine assertion failing).
fn stopped_cleanly(t: TestServer, engine: hayate::config::EngineKind) {
    assert_eq!(
        t.server.stop(),
        hayate::server::Exit::Stopped,
        "{engine:?}: a worker panicked (see its message above)"
    );
}

/// The tracker's sockets on `port` that a descriptor of it still refers to (listeners
/// aside): its connections that are not freed yet. A socket whose last descriptor is closed
/// (or in TIME_WAIT) has inode 0 in /proc/net/tcp; one an io_uring operation still holds
/// keeps its inode, so this sees a connection freed under a running operation too.
fn held_sockets(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields
                        .get(1)
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| u16::from_str_radix(p, 16).ok());
                    local_port == Some(port)
                        && fields.get(3) != Some(&"0A")
                        && fields.get(9).is_some_and(|inode| *inode != "0")
                })
                .count()
        })
        .sum()
}

/// Polls `done` for up to `secs` seconds.
fn eventually(secs: u64, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits until the tracker holds no socket of its connections on `port`.
fn assert_all_connections_freed(t: &TestServer, engine: hayate::config::EngineKind) {
    let port = t.http(false).port();
    assert!(
        eventually(5, || held_sockets(port) == 0
            && metric(t, "hayate_http_connections_open") == 0),
        "{engine:?}: {} connections still held, {} open",
        held_sockets(port),
        metric(t, "hayate_http_connections_open")
    );
}

/// A sample without labels, or with exactly these (`reason="done"`).
fn metric(t: &TestServer, name_and_labels: &str) -> u64 {
    let prefix = format!("{name_and_labels} ");
    t.server
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn closed_for(t: &TestServer, reason: &str) -> u64 {
    metric(
        t,
        &format!("hayate_http_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

const SCRAPE_HASHES: usize = 2000;

/// A keep-alive scrape of `SCRAPE_HASHES` torrents: its answer, about 140 KB, is more than
/// the tracker's send buffer and a slow reader's receive buffer hold, so the send that
/// carries it stays in flight until the client reads.
fn big_scrape() -> Vec<u8> {
    let mut target = String::from("/scrape?");
    for i in 0..SCRAPE_HASHES as u32 {
        let mut h = [0x5a; 20];
        h[..4].copy_from_slice(&i.to_be_bytes());
        target.push_str("info_hash=");
        target.push_str(&urlencode(&h));
        target.push('&');
    }
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

/// A client with the smallest receive buffer the kernel allows: it takes only a few KB of
/// an answer until it reads.
fn slow_reader(addr: std::net::SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    socket.set_recv_buffer_size(1).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Sends a big scrape and waits until its answer has started to arrive: from then on the
/// tracker's send is stuck on this client, in flight, and (its output taken) it receives.
fn stuck_send(t: &TestServer) -> TcpStream {
    let mut s = slow_reader(t.http(false));
    s.write_all(&big_scrape()).unwrap();
    let mut byte = [0u8; 1];
    loop {
        match s.peek(&mut byte) {
            Ok(n) if n > 0 => return s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => panic!("no answer started: {other:?}"),
        }
    }
}

/// Closes `s` with a reset (RST) instead of a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// One keep-alive announce answered on `s`.
fn announce_on(s: &mut TcpStream, engine: hayate::config::EngineKind) {
    let target = announce_target(hash(7), 1, 1, 0, "");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while parse_count(&raw) < 1 || !complete_reply(&raw) {
        match read_some(s, &mut buf) {
            Ok(0) => panic!("{engine:?}: closed before answering"),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{engine:?}: no answer: {e}"),
        }
    }
}

fn complete_reply(raw: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = response.parse(raw) else {
        return false;
    };
    let length: usize = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .unwrap_or(0);
    raw.len() >= head + length
}

/// Reads until the tracker closes `s` (a FIN or a reset); panics if it does not within 5 s.
fn read_until_closed(s: &mut TcpStream, engine: hayate::config::EngineKind) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match read_some(s, &mut buf) {
            Ok(0) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return raw,
            Err(e) => panic!("{engine:?}: not closed by the tracker: {e}"),
        }
    }
}

/// Both connection slots take a new connection each and serve it.
fn both_slots_serve(t: &TestServer, engine: hayate::config::EngineKind) {
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(t.http(false)).unwrap())
        .collect();
    for s in &mut held {
        announce_on(s, engine);
    }
}

#[test]
fn a_udp_send_slot_comes_back_when_its_send_completes() {
    for engine in engines() {
        let t = TestServer::start(tight(engine));
        // With 2 slots, answers stop at the third if a completed send kept its slot.
        let clients = [UdpClient::new(t.udp(false)), UdpClient::new(t.udp(true))];
        for i in 0..200u32 {
            let c = &clients[i as usize % 2];
            assert!(
                matches!(c.request(&connect_packet(i)), UdpReply::Connect { transaction_id, .. } if transaction_id == i),
                "{engine:?}: request {i}"
            );
        }
        stopped_cleanly(t, engine);
    }
}

#[test]
fn a_udp_send_slot_comes_back_when_a_datagram_gets_no_answer() {
    for engine in engines() {
        let t = TestServer::start(tight(engine));
        let c = UdpClient::new(t.udp(false));
        for i in 0..100u32 {
            // Too short to carry a transaction id: a slot is taken, nothing is sent.
            c.send(&[1, 2, 3, 4, 5, 6, 7]);
            c.send(&[0; 7]);
            // (Answered in order on one socket: both were handled before this one.)
            assert!(
                matches!(c.request(&connect_packet(i)), UdpReply::Connect { transaction_id, .. } if transaction_id == i),
                "{engine:?}: request {i}"
            );
        }
        stopped_cleanly(t, engine);
    }
}

#[test]
fn receive_buffers_come_back_after_truncated_oversized_and_unanswered_datagrams() {
    for engine in engines() {
        let t = TestServer::start(tight(engine));
        let c = UdpClient::new(t.udp(false));
        // 4000 bytes: cut short by the buffer (MSG_TRUNC). 2050: whole, but longer than any
        // request. 7: no answer. With 2 buffers, the tracker goes deaf after two kept.
        for i in 0..100u32 {
            c.send(&[0x41; 4000]);
            c.send(&[0x41; 2050]);
            c.send(&[0x41; 7]);
            assert!(
                matches!(c.request(&connect_packet(i)), UdpReply::Connect { transaction_id, .. } if transaction_id == i),
                "{engine:?}: request {i}"
            );
        }
        stopped_cleanly(t, engine);
    }
}

#[test]
fn receive_buffers_come_back_after_the_multishot_receive_runs_out_of_them() {
    for engine in engines() {
        let t = TestServer::start(tight(engine));
        for round in 0..3 {
            // 2 buffers against a burst: the kernel ends the multishot receive with ENOBUFS
            // (on io_uring) over and over, and it is armed again each time.
            let burst = UdpClient::new(t.udp(false));
            for i in 0..2000u32 {
                burst.send(&connect_packet(i));
            }
            while burst.recv_raw(Duration::from_millis(300)).is_some() {}
            let c = UdpClient::new(t.udp(round % 2 == 1));
            for i in 0..20u32 {
                assert!(
                    matches!(c.request(&connect_packet(i)), UdpReply::Connect { transaction_id, .. } if transaction_id == i),
                    "{engine:?}: round {round}, request {i}"
                );
            }
        }
        stopped_cleanly(t, engine);
    }
}

#[test]
fn a_connection_slot_is_freed_after_a_normal_close() {
    for engine in engines() {
        let t = TestServer::start(tight(engine));
        let target = announce_target(hash(8), 1, 1, 0, "");
        for _ in 0..10 {
            // The tracker closes after the answer: `Connection: close`, and HTTP/1.0.
            assert_eq!(http_get(t.http(false), &target).status, 200, "{engine:?}");
            let raw = http_raw(
                t.http(false),
                format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes(),
            );
            assert_eq!(parse_http_replies(&raw).len(), 1, "{engine:?}");
            // The client closes after its answer (end of input, nothing in flight but the
            // receive).
            let mut s = TcpStream::connect(t.http(false)).unwrap();
            announce_on(&mut s, engine);
            drop(s);
        }
        assert_all_connections_freed(&t, engine);
        assert_eq!(closed_for(&t, "done"), 30, "{engine:?}");
        both_slots_serve(&t, engine);
        stopped_cleanly(t, engine);
    }
}

#[test]
fn a_connection_slot_is_freed_after_a_client_reset() {
    for engine in engines() {
        let t = TestServer::start(tight(engine));
        // (Each freed before the next connects: at the cap, a newcomer would evict it.)
        for _ in 0..5 {
            // Mid-request: a receive in flight.
            let mut s = TcpStream::connect(t.http(false)).unwrap();
            s.write_all(b"GET /announce?info_ha").unwrap();
            reset(s);
            assert_all_connections_freed(&t, engine);
            // After an answer, idle.
            let mut s = TcpStream::connect(t.http(false)).unwrap();
            announce_on(&mut s, engine);
            reset(s);
            assert_all_connections_freed(&t, engine);
            // With its answer's send stuck on it: a receive and a send in flight.
            reset(stuck_send(&t));
            assert_all_connections_freed(&t, engine);
        }
        assert_all_connections_freed(&t, engine);
        // (A connection reset before it is accepted is never served, nor counted.)
        let accepted = metric(&t, "hayate_http_connections_accepted_total");
        assert!(accepted >= 10, "{engine:?}: {accepted} accepted");
        assert_eq!(closed_for(&t, "done"), accepted, "{engine:?}");
        both_slots_serve(&t, engine);
        stopped_cleanly(t, engine);
    }
}

#[test]
fn a_connection_slot_is_freed_after_its_input_ends_with_a_send_in_flight() {
    for engine in engines() {
        let t = TestServer::start(tight(engine));
        for _ in 0..3 {
            let mut s = stuck_send(&t);
            // The end of input arrives while the answer's send waits for the client.
            s.shutdown(Shutdown::Write).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            // Then the client reads: the send completes, and the tracker closes.
            let raw = read_until_closed(&mut s, engine);
            assert!(
                complete_reply(&raw),
                "{engine:?}: closed after {} bytes of the answer",
                raw.len()
            );
            let replies = parse_http_replies(&raw);
            assert_eq!(replies.len(), 1, "{engine:?}");
            assert_eq!(replies[0].status, 200, "{engine:?}");
            assert_eq!(
                replies[0].dict().dict("files").0.len(),
                SCRAPE_HASHES,
                "{engine:?}"
            );
        }
        assert_all_connections_freed(&t, engine);
        assert_eq!(closed_for(&t, "done"), 3, "{engine:?}");
        stopped_cleanly(t, engine);
    }
}

#[test]
fn a_connection_slot_is_freed_after_an_idle_or_request_timeout() {
    for engine in engines() {
        let mut config = tight(engine);
        config.http.idle_timeout_secs = 1;
        config.http.request_timeout_secs = 1;
        let t = TestServer::start(config);
        // Idle after an answer, and a request that never ends: a receive in flight each.
        let mut idle = TcpStream::connect(t.http(false)).unwrap();
        announce_on(&mut idle, engine);
        let mut partial = TcpStream::connect(t.http(false)).unwrap();
        partial.write_all(b"GET /announce?info_ha").unwrap();
        read_until_closed(&mut idle, engine);
        read_until_closed(&mut partial, engine);
        // (The clients still hold their ends: only the tracker's are gone.)
        assert_all_connections_freed(&t, engine);
        assert_eq!(closed_for(&t, "idle_timeout"), 1, "{engine:?}");
        assert_eq!(closed_for(&t, "request_timeout"), 1, "{engine:?}");
        both_slots_serve(&t, engine);
        stopped_cleanly(t, engine);
    }
}

#[test]
fn a_connection_slot_is_freed_after_a_send_timeout_with_a_receive_and_a_send_in_flight() {
    for engine in engines() {
        let mut config = tight(engine);
        config.http.request_timeout_secs = 1;
        let t = TestServer::start(config);
        // Two clients that never read their answers, and do not close.
        let mut stuck = [stuck_send(&t), stuck_send(&t)];
        let port = t.http(false).port();
        assert!(
            eventually(5, || held_sockets(port) == 0),
            "{engine:?}: {} connections still held",
            held_sockets(port)
        );
        assert_eq!(closed_for(&t, "send_timeout"), 2, "{engine:?}");
        for s in &mut stuck {
            // Reset, or closed after what the kernel had taken of the answer.
            let mut buf = vec![0u8; 1 << 20];
            while matches!(read_some(s, &mut buf), Ok(n) if n > 0) {}
        }
        assert_all_connections_freed(&t, engine);
        both_slots_serve(&t, engine);
        stopped_cleanly(t, engine);
    }
}

#[test]
fn a_connection_slot_is_freed_after_an_eviction_at_the_cap() {
    for engine in engines() {
        let t = TestServer::start(tight(engine));
        // At the cap of 2: one idle connection (a receive in flight), one whose answer's send
        // is stuck (a receive and a send in flight).
        let mut idle = TcpStream::connect(t.http(false)).unwrap();
        announce_on(&mut idle, engine);
        let mut stuck = stuck_send(&t);
        // Two newcomers evict them, least recently active first.
        let mut newcomers: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(t.http(false)).unwrap())
            .collect();
        for s in &mut newcomers {
            announce_on(s, engine);
        }
        read_until_closed(&mut idle, engine);
        let mut buf = vec![0u8; 1 << 20];
        while matches!(read_some(&mut stuck, &mut buf), Ok(n) if n > 0) {}
        assert_eq!(closed_for(&t, "evicted"), 2, "{engine:?}");
        // Then each newcomer evicts the oldest: 20 more, each served.
        for _ in 0..20 {
            let mut s = TcpStream::connect(t.http(false)).unwrap();
            announce_on(&mut s, engine);
            newcomers.push(s);
        }
        assert_eq!(closed_for(&t, "evicted"), 22, "{engine:?}");
        let port = t.http(false).port();
        assert!(
            eventually(5, || held_sockets(port) == 2),
            "{engine:?}: {} connections held at a cap of 2",
            held_sockets(port)
        );
        drop(newcomers);
        assert_all_connections_freed(&t, engine);
        stopped_cleanly(t, engine);
    }
}

#[test]
fn a_connection_slot_is_freed_after_its_receive_was_paused_by_unread_answers() {
    for engine in engines() {
        let mut config = tight(engine);
        config.http.request_timeout_secs = 2;
        let t = TestServer::start(config);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: t\r\n\r\n",
            announce_target(hash(9), 1, 1, 0, "")
        )
        .repeat(100);
        let port = t.http(false).port();
        for end in ["reset", "send_timeout"] {
            let s = slow_reader(t.http(false));
            s.set_nonblocking(true).unwrap();
            // Pipelined requests, answers never read, until the tracker stops taking more:
            // its receive is paused (cancelled) until the client reads.
            let mut written = 0usize;
            let mut blocked_since: Option<Instant> = None;
            let started = Instant::now();
            while blocked_since.is_none_or(|b| b.elapsed() < Duration::from_secs(1)) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{engine:?}: the tracker kept reading"
                );
                let at = written % request.len();
                match (&s).write(&request.as_bytes()[at..]) {
                    Ok(n) => {
                        written += n;
                        blocked_since = None;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        blocked_since.get_or_insert_with(Instant::now);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("{engine:?}: {e} after {written} bytes"),
                }
            }
            if end == "reset" {
                reset(s);
            } else {
                assert!(
                    eventually(6, || closed_for(&t, "send_timeout") == 1),
                    "{engine:?}: not closed for its unread answers"
                );
                drop(s);
            }
            assert!(
                eventually(5, || held_sockets(port) == 0),
                "{engine:?}: {end}: {} connections still held",
                held_sockets(port)
            );
        }
        assert_eq!(closed_for(&t, "done"), 1, "{engine:?}");
        assert_all_connections_freed(&t, engine);
        both_slots_serve(&t, engine);
        stopped_cleanly(t, engine);
    }
}

#[test]
fn receive_buffers_come_back_from_a_busy_connection_evicted_mid_stream() {
    for engine in engines() {
        let mut config = tight(engine);
        config.http.max_connections = 1;
        let t = TestServer::start(config);
        let addr = t.http(false);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: t\r\n\r\n",
            announce_target(hash(10), 1, 1, 0, "")
        )
        .repeat(20);
        for round in 0..20u64 {
            // A client that pipelines requests and reads its answers as fast as it can: its
            // receive keeps handing over buffers, also after the eviction has begun (those
            // must come back like any other).
            let rounds = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let busy = {
                let (rounds, request) = (rounds.clone(), request.clone());
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = vec![0u8; 65536];
                    loop {
                        if s.write_all(request.as_bytes()).is_err() {
                            return;
                        }
                        let mut raw = Vec::new();
                        while parse_count(&raw) < 20 {
                            match read_some(&mut s, &mut buf) {
                                Ok(n) if n > 0 => raw.extend_from_slice(&buf[..n]),
                                _ => return,
                            }
                        }
                        rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            };
            assert!(
                eventually(5, || rounds.load(std::sync::atomic::Ordering::Relaxed) >= 3),
                "{engine:?}: the busy client is not served"
            );
            let mut newcomer = TcpStream::connect(addr).unwrap();
            announce_on(&mut newcomer, engine);
            busy.join().unwrap();
            assert_eq!(closed_for(&t, "evicted"), round + 1, "{engine:?}");
        }
        assert_all_connections_freed(&t, engine);
        stopped_cleanly(t, engine);
    }
}

#[test]
fn a_connection_slot_is_freed_after_the_input_limit() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.workers = 1;
        config.http.max_request_bytes = 256;
        let t = TestServer::start(config);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: t\r\n\r\n",
            announce_target(hash(11), 1, 1, 0, "")
        )
        .repeat(1000);
        // Clients that pipeline as fast as they can and never read. io_uring's multishot
        // receive hands over more, before its cancel lands, than a connection may hold
        // unanswered: it is closed for the input limit once its answers are out. (epoll stops
        // within one read: its clients are stopped by flow control, then leave.)
        let attempts = if engine == hayate::config::EngineKind::IoUring {
            20
        } else {
            2
        };
        for _ in 0..attempts {
            let mut s = TcpStream::connect(t.http(false)).unwrap();
            s.set_write_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            for _ in 0..50 {
                if s.write(request.as_bytes()).is_err() {
                    break;
                }
            }
            drop(s);
            if closed_for(&t, "input_limit") > 0 {
                break;
            }
        }
        assert_all_connections_freed(&t, engine);
        if engine == hayate::config::EngineKind::IoUring {
            assert!(
                closed_for(&t, "input_limit") > 0,
                "{engine:?}: never reached"
            );
        }
        let accepted = metric(&t, "hayate_http_connections_accepted_total");
        assert_eq!(
            closed_for(&t, "input_limit") + closed_for(&t, "done"),
            accepted,
            "{engine:?}"
        );
        stopped_cleanly(t, engine);
    }
}
