//! The HTTP tracker, over IPv4 and IPv6, on every engine.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn announce_counts_the_whole_swarm_and_lists_the_others_in_both_families() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let h = hash(1);
        // A seeder over IPv4 and a leecher over IPv6.
        let seeder = http_get(
            t.http(false),
            &announce_target(h, 1, 6001, 0, "&event=started"),
        )
        .dict();
        assert_eq!((seeder.int("complete"), seeder.int("incomplete")), (1, 0));
        assert!(
            seeder.bytes("peers").is_empty(),
            "never lists the announcing peer"
        );
        assert_eq!(seeder.bytes("external ip"), vec![127, 0, 0, 1]);
        let leecher = http_get(t.http(true), &announce_target(h, 2, 6002, 50, "")).dict();
        assert_eq!((leecher.int("complete"), leecher.int("incomplete")), (1, 1));
        assert_eq!(
            compact_peers(&leecher.bytes("peers"), false),
            vec!["127.0.0.1:6001".parse::<SocketAddr>().unwrap()]
        );
        assert!(leecher.bytes("peers6").is_empty());
        assert_eq!(leecher.bytes("external ip").len(), 16);
        assert_eq!(
            (leecher.int("interval"), leecher.int("min interval")),
            (1800, 900)
        );
        // The IPv4 seeder now sees the IPv6 leecher in peers6.
        let again = http_get(t.http(false), &announce_target(h, 1, 6001, 0, "")).dict();
        assert_eq!(
            compact_peers(&again.bytes("peers6"), true),
            vec!["[::1]:6002".parse::<SocketAddr>().unwrap()]
        );
    }
}

#[test]
fn compact_zero_gives_dictionaries_and_no_peer_id_drops_the_id() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let h = hash(2);
        http_get(t.http(false), &announce_target(h, 1, 6001, 0, ""));
        let d = http_get(t.http(false), &announce_target(h, 2, 6002, 5, "&compact=0")).dict();
        let peers = d.list("peers");
        assert_eq!(peers.len(), 1);
        let peer = match &peers[0] {
            bt_bencode::Value::Dict(p) => Dict(p.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!(peer.str("ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(peer.int("port"), 6001);
        assert_eq!(peer.bytes("peer id"), peer_id(1).to_vec());
        let d = http_get(
            t.http(false),
            &announce_target(h, 2, 6002, 5, "&compact=0&no_peer_id=1"),
        )
        .dict();
        let bt_bencode::Value::Dict(p) = &d.list("peers")[0] else {
            panic!()
        };
        assert!(Dict(p.clone()).get("peer id").is_none());
    }
}

#[test]
fn numwant_is_honoured_up_to_the_configured_maximum() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.announce.default_numwant = 3;
        config.announce.max_numwant = 5;
        let t = TestServer::start(config);
        let h = hash(3);
        for port in 1..=10 {
            http_get(t.http(false), &announce_target(h, port as u8, port, 1, ""));
        }
        let count = |extra: &str| {
            let d = http_get(t.http(false), &announce_target(h, 99, 9999, 1, extra)).dict();
            d.bytes("peers").len() / 6
        };
        assert_eq!(count(""), 3);
        assert_eq!(count("&numwant=2"), 2);
        assert_eq!(count("&numwant=200"), 5);
        assert_eq!(count("&numwant=0"), 0);
    }
}

#[test]
fn stopped_completed_and_scrape_counts() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let (a, b) = (hash(4), hash(5));
        http_get(
            t.http(false),
            &announce_target(a, 1, 6001, 10, "&event=started"),
        );
        http_get(
            t.http(true),
            &announce_target(a, 2, 6002, 10, "&event=started"),
        );
        http_get(
            t.http(false),
            &announce_target(a, 1, 6001, 0, "&event=completed"),
        );
        let again = http_get(
            t.http(false),
            &announce_target(a, 1, 6001, 0, "&event=completed"),
        );
        // The announce reply carries the torrent's completed downloads too (Transmission
        // shows it), counted once per peer.
        assert_eq!(again.dict().int("downloaded"), 1, "{engine:?}");
        http_get(t.http(false), &announce_target(b, 3, 6003, 0, ""));
        http_get(
            t.http(false),
            &announce_target(b, 3, 6003, 0, "&event=stopped"),
        );
        let target = format!(
            "/scrape?info_hash={}&info_hash={}&info_hash={}",
            urlencode(&a),
            urlencode(&b),
            urlencode(&hash(6))
        );
        let files = http_get(t.http(false), &target).dict().dict("files");
        let fa = files.dict_bytes_key(&a);
        assert_eq!(
            (
                fa.int("complete"),
                fa.int("incomplete"),
                fa.int("downloaded")
            ),
            (1, 1, 1)
        );
        let fb = files.dict_bytes_key(&b);
        assert_eq!(
            (
                fb.int("complete"),
                fb.int("incomplete"),
                fb.int("downloaded")
            ),
            (0, 0, 0)
        );
        assert_eq!(files.0.len(), 3, "unknown torrents are answered with zeros");
    }
}

#[test]
fn scrape_has_a_maximum_of_hashes() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.http.max_scrape_hashes = 2;
        let t = TestServer::start(config);
        let target = format!(
            "/scrape?info_hash={}&info_hash={}&info_hash={}",
            urlencode(&hash(1)),
            urlencode(&hash(2)),
            urlencode(&hash(3))
        );
        let reply = http_get(t.http(false), &target);
        assert_eq!(reply.status, 200);
        assert!(reply.failure().unwrap().contains("too many"));
    }
}

#[test]
fn bad_input_gets_a_failure_reason_and_unknown_paths_404() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let h = urlencode(&hash(7));
        let p = urlencode(&peer_id(1));
        let cases = [
            (
                format!("/announce?peer_id={p}&port=1&left=0"),
                "missing info_hash",
            ),
            (
                format!("/announce?info_hash=%01%02&peer_id={p}&port=1&left=0"),
                "invalid info_hash",
            ),
            (
                format!("/announce?info_hash={h}&port=1&left=0"),
                "missing peer_id",
            ),
            (
                format!("/announce?info_hash={h}&peer_id=abc&port=1&left=0"),
                "invalid peer_id",
            ),
            (
                format!("/announce?info_hash={h}&peer_id={p}&left=0"),
                "missing port",
            ),
            (
                format!("/announce?info_hash={h}&peer_id={p}&port=0&left=0"),
                "invalid port",
            ),
            (
                format!("/announce?info_hash={h}&peer_id={p}&port=1&left=lots"),
                "invalid left",
            ),
            (
                format!("/announce?info_hash={h}&peer_id={p}&port=1&left=0&event=boom"),
                "invalid event",
            ),
            ("/scrape".to_string(), "missing info_hash"),
        ];
        for (target, reason) in &cases {
            for ipv6 in [false, true] {
                let reply = http_get(t.http(ipv6), target);
                assert_eq!(reply.status, 200, "{target}");
                let failure = reply
                    .failure()
                    .unwrap_or_else(|| panic!("no failure for {target}"));
                assert!(failure.starts_with(reason), "{target}: {failure}");
            }
        }
        assert_eq!(http_get(t.http(false), "/index.html").status, 404);
        // Still serving after all that.
        let ok = http_get(t.http(false), &announce_target(hash(7), 1, 1, 0, ""));
        assert!(ok.failure().is_none());
    }
}

#[test]
fn malformed_and_oversized_requests_are_refused_and_closed() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.http.max_request_bytes = 512;
        let t = TestServer::start(config);
        let raw = http_raw(t.http(false), b"NOT HTTP AT ALL\r\n\r\n");
        assert!(
            raw.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
        let big = format!("GET /announce?{} HTTP/1.1\r\n", "x".repeat(600));
        let raw = http_raw(t.http(false), big.as_bytes());
        assert!(
            raw.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
        let raw = http_raw(
            t.http(false),
            b"POST /announce HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(raw.starts_with(b"HTTP/1.1 405"));
        let raw = http_raw(
            t.http(false),
            b"GET /announce HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert!(raw.starts_with(b"HTTP/1.1 400"));
    }
}

#[test]
fn keep_alive_serves_pipelined_requests_in_order_on_one_connection() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        for ipv6 in [false, true] {
            let mut stream = TcpStream::connect(t.http(ipv6)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut batch = Vec::new();
            for port in 1..=20u16 {
                let target = announce_target(hash(8), port as u8, port, 1, "");
                batch.extend_from_slice(
                    format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
                );
            }
            // Sent in awkward pieces, to cross request boundaries.
            for piece in batch.chunks(97) {
                stream.write_all(piece).unwrap();
            }
            let replies = read_replies(&mut stream, 20);
            for (i, reply) in replies.iter().enumerate() {
                assert_eq!(reply.status, 200);
                assert!(
                    reply.header("connection").is_none(),
                    "keep-alive by default"
                );
                // Peers announced before this one are all leechers: counts grow by one each time.
                assert_eq!(
                    reply.dict().int("incomplete") as usize,
                    if ipv6 { 21 + i } else { i + 1 }
                );
            }
            // And the connection is still open for more.
            stream
                .write_all(
                    format!(
                        "GET {} HTTP/1.1\r\n\r\n",
                        announce_target(hash(8), 1, 1, 1, "")
                    )
                    .as_bytes(),
                )
                .unwrap();
            assert_eq!(read_replies(&mut stream, 1).len(), 1);
        }
    }
}

fn read_replies(stream: &mut TcpStream, n: usize) -> Vec<HttpReply> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(replies) = std::panic::catch_unwind(|| parse_http_replies(&raw))
            && replies.len() == n
        {
            return replies;
        }
        assert!(
            Instant::now() < deadline,
            "timed out with {} bytes",
            raw.len()
        );
        let got = read_some(stream, &mut buf).unwrap();
        assert!(got > 0, "closed early");
        raw.extend_from_slice(&buf[..got]);
    }
}

#[test]
fn http_1_0_and_connection_close_end_the_connection() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let target = announce_target(hash(9), 1, 1, 0, "");
        // Two requests sent, but HTTP/1.0 closes after the first answer.
        let raw = http_raw(
            t.http(false),
            format!("GET {target} HTTP/1.0\r\n\r\nGET {target} HTTP/1.0\r\n\r\n").as_bytes(),
        );
        let replies = parse_http_replies(&raw);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].header("connection"), Some("close"));
        let raw = http_raw(
            t.http(true),
            format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(parse_http_replies(&raw).len(), 1);
    }
}

#[test]
fn without_keep_alive_every_connection_ends_after_one_answer() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.http.keep_alive = false;
        let t = TestServer::start(config);
        let target = announce_target(hash(10), 1, 1, 0, "");
        for ipv6 in [false, true] {
            // HTTP/1.1 with no Connection header would stay open; here it gets one answer that
            // says so, then the end of the stream (not the read timeout).
            let mut stream = TcpStream::connect(t.http(ipv6)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream
                .write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).expect("closed by the tracker");
            let replies = parse_http_replies(&raw);
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0].status, 200);
            assert_eq!(replies[0].header("connection"), Some("close"));
        }
    }
}

/// Reads until the peer closes (or resets) the connection; false if it stays open past `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match read_some(stream, &mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn idle_connections_and_unfinished_requests_are_closed_at_their_deadlines() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.http.idle_timeout_secs = 1;
        config.http.request_timeout_secs = 2;
        let t = TestServer::start(config);
        let mut idle = TcpStream::connect(t.http(false)).unwrap();
        let mut partial = TcpStream::connect(t.http(false)).unwrap();
        let mut trickle = TcpStream::connect(t.http(false)).unwrap();
        partial.write_all(b"GET /announce").unwrap(); // and never finish
        let started = Instant::now();
        assert!(
            closed_within(&mut idle, Duration::from_secs(4)),
            "{engine:?}: idle"
        );
        // A byte every 300 ms does not extend the request's deadline.
        let mut sent = 0;
        while started.elapsed() < Duration::from_secs(5) {
            if trickle.write_all(b"G").is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(sent < 16, "{engine:?}: trickled {sent} bytes, still open");
        assert!(
            closed_within(&mut trickle, Duration::from_secs(2)),
            "{engine:?}: trickling"
        );
        assert!(
            closed_within(&mut partial, Duration::from_secs(2)),
            "{engine:?}: partial"
        );
        assert_eq!(http_get(t.http(false), "/nothing").status, 404);
    }
}

#[test]
fn at_the_cap_the_least_recently_active_connection_makes_room_for_a_new_one() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.workers = 1;
        config.http.max_connections = 3;
        let t = TestServer::start(config);
        let mut held: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(t.http(false)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // The first one is answered: the second is now the least recently active.
        held[0]
            .write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        held[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        assert!(read_some(&mut held[0], &mut buf).unwrap() > 0);
        assert_eq!(
            http_get(t.http(false), "/nothing").status,
            404,
            "{engine:?}: a new connection is served at the cap"
        );
        assert!(
            closed_within(&mut held[1], Duration::from_secs(2)),
            "{engine:?}: the least recently active one made room"
        );
        // The one that was answered is still open and serves another request.
        held[0]
            .write_all(b"GET /y HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let n = read_some(&mut held[0], &mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 404"), "{engine:?}");
        let metrics = t.server.metrics().render();
        assert!(
            metrics.contains("hayate_http_connections_closed_total{reason=\"evicted\"} 1"),
            "{engine:?}: {metrics}"
        );
    }
}

#[test]
fn a_source_past_its_share_of_connections_is_refused_while_others_are_served() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.workers = 1;
        config.per_source.max_http_connections = 4;
        let t = TestServer::start(config);
        let held: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect(t.http(false)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut fifth = TcpStream::connect(t.http(false)).unwrap();
        let _ = fifth.write_all(b"GET / HTTP/1.1\r\n\r\n");
        assert!(
            closed_within(&mut fifth, Duration::from_secs(3)),
            "{engine:?}: the fifth from one source is refused"
        );
        // Another source (127.0.0.2 is loopback too) is served.
        let other = std::net::SocketAddr::new("127.0.0.2".parse().unwrap(), 0);
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&other.into()).unwrap();
        socket.connect(&t.http(false).into()).unwrap();
        let mut stream: TcpStream = socket.into();
        stream
            .write_all(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = Vec::new();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.read_to_end(&mut raw).unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 404"), "{engine:?}");
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(http_get(t.http(false), "/nothing").status, 404);
        let metrics = t.server.metrics().render();
        assert!(
            metrics
                .contains("hayate_http_connections_refused_total{reason=\"per_source_limit\"} 1"),
            "{engine:?}: {metrics}"
        );
    }
}

#[test]
fn the_forwarding_header_is_believed_only_from_trusted_proxies_right_to_left() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.http.reverse_proxy.enabled = true;
        config.http.reverse_proxy.header = "X-Real-Chain".into();
        config.http.reverse_proxy.trusted_proxies = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let t = TestServer::start(config);
        let target = announce_target(hash(10), 1, 7001, 0, "");
        let ask = |addr: SocketAddr, header: &str| {
            let raw = http_raw(
                addr,
                format!("GET {target} HTTP/1.1\r\n{header}Connection: close\r\n\r\n").as_bytes(),
            );
            parse_http_replies(&raw).remove(0).dict()
        };
        // From a trusted proxy (127.0.0.1): the right-most untrusted hop is the client.
        let d = ask(
            t.http(false),
            "x-real-chain: 6.6.6.6, 203.0.113.9, 10.1.2.3\r\n",
        );
        assert_eq!(d.bytes("external ip"), vec![203, 0, 113, 9]);
        assert!(t.server.store().contains_peer(
            &hayate::bittorrent::InfoHash(hash(10)),
            "203.0.113.9".parse().unwrap(),
            7001
        ));
        // From ::1, which is not trusted here: the header is ignored.
        let d = ask(t.http(true), "X-Real-Chain: 203.0.113.10\r\n");
        assert_eq!(d.bytes("external ip").len(), 16);
        // Garbage from a trusted proxy is a client error.
        let d = ask(t.http(false), "X-Real-Chain: nonsense\r\n");
        assert!(
            d.str("failure reason")
                .unwrap()
                .contains("forwarding header")
        );
    }
}

#[test]
fn the_ip_parameter_is_honoured_only_when_allowed() {
    for engine in engines() {
        for allowed in [false, true] {
            let mut config = test_config(engine);
            config.announce.allow_client_ip = allowed;
            let t = TestServer::start(config);
            http_get(
                t.http(false),
                &announce_target(hash(11), 1, 7002, 0, "&ip=192.0.2.55"),
            );
            let store = t.server.store();
            let h = hayate::bittorrent::InfoHash(hash(11));
            assert_eq!(
                store.contains_peer(&h, "192.0.2.55".parse().unwrap(), 7002),
                allowed
            );
            assert_eq!(
                store.contains_peer(&h, "127.0.0.1".parse().unwrap(), 7002),
                !allowed
            );
        }
    }
}

#[test]
fn limits_on_torrents_and_peers_answer_with_a_reason() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.swarm.max_torrents = 1;
        config.swarm.max_peers_per_torrent = 1;
        let t = TestServer::start(config);
        assert!(
            http_get(t.http(false), &announce_target(hash(12), 1, 1, 0, ""))
                .failure()
                .is_none()
        );
        let full = http_get(t.http(false), &announce_target(hash(12), 2, 2, 0, ""))
            .failure()
            .unwrap();
        assert!(full.contains("torrent is full"), "{full}");
        let full = http_get(t.http(false), &announce_target(hash(13), 2, 2, 0, ""))
            .failure()
            .unwrap();
        assert!(full.contains("tracker is full"), "{full}");
    }
}

#[test]
fn peers_expire_after_their_lifetime_with_a_stopped_clock() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.announce.interval_secs = 60;
        config.announce.min_interval_secs = 30;
        config.swarm.peer_lifetime_secs = 100;
        let t = TestServer::start(config);
        let h = hash(14);
        http_get(t.http(false), &announce_target(h, 1, 1, 0, ""));
        t.clock.advance(60);
        http_get(t.http(true), &announce_target(h, 2, 2, 5, ""));
        t.clock.advance(41); // the first peer is 101 s old, the second 41 s
        let report = t.server.store().clean();
        assert_eq!((report.peers_removed, report.torrents_removed), (1, 0));
        let d = http_get(t.http(false), &announce_target(h, 3, 3, 5, "")).dict();
        assert_eq!((d.int("complete"), d.int("incomplete")), (0, 2));
        t.clock.advance(101);
        let report = t.server.store().clean();
        assert_eq!((report.peers_removed, report.torrents_removed), (2, 1));
    }
}
