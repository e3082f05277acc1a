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
