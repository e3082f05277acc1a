//! The UDP tracker (BEP 15, 41), over IPv4 and IPv6, on every engine.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hayate::bittorrent::{AnnounceRequest, ClientError};
use hayate::middleware::{Middleware, PreHook, RequestContext};

#[test]
fn connect_announce_and_scrape_over_both_families() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        for ipv6 in [false, true] {
            let h = hash(if ipv6 { 2 } else { 1 });
            let seeder = UdpClient::new(t.udp(ipv6));
            let id = seeder.connect();
            let mut a = UdpAnnounce::new(id, h, 7001);
            a.left = 0;
            a.event = 2; // started
            match seeder.request(&a.packet()) {
                UdpReply::Announce {
                    transaction_id,
                    interval,
                    leechers,
                    seeders,
                    peers,
                } => {
                    assert_eq!(
                        (transaction_id, interval, leechers, seeders),
                        (22, 1800, 0, 1)
                    );
                    assert!(peers.is_empty(), "never lists the announcing peer");
                }
                other => panic!("{other:?}"),
            }
            let leecher = UdpClient::new(t.udp(ipv6));
            let id = leecher.connect();
            let reply = leecher.request(&UdpAnnounce::new(id, h, 7002).packet());
            let UdpReply::Announce {
                leechers,
                seeders,
                peers,
                ..
            } = reply
            else {
                panic!("{reply:?}")
            };
            assert_eq!((leechers, seeders), (1, 1));
            let expected: SocketAddr = if ipv6 { "[::1]:7001" } else { "127.0.0.1:7001" }
                .parse()
                .unwrap();
            assert_eq!(
                peers,
                vec![expected],
                "18-byte peers over IPv6, 6-byte over IPv4"
            );

            let reply = leecher.request(&scrape_packet(id, 33, &[h, hash(99)]));
            assert_eq!(
                reply,
                UdpReply::Scrape {
                    transaction_id: 33,
                    stats: vec![(1, 0, 1), (0, 0, 0)]
                }
            );
        }
    }
}

#[test]
fn completed_counts_once_and_stopped_removes() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let c = UdpClient::new(t.udp(false));
        let id = c.connect();
        let h = hash(3);
        let mut a = UdpAnnounce::new(id, h, 7003);
        c.request(&a.packet());
        a.left = 0;
        a.event = 1; // completed, twice
        c.request(&a.packet());
        c.request(&a.packet());
        assert_eq!(
            c.request(&scrape_packet(id, 1, &[h])),
            UdpReply::Scrape {
                transaction_id: 1,
                stats: vec![(1, 1, 0)]
            }
        );
        a.event = 3; // stopped
        c.request(&a.packet());
        assert_eq!(
            c.request(&scrape_packet(id, 1, &[h])),
            UdpReply::Scrape {
                transaction_id: 1,
                stats: vec![(0, 1, 0)]
            }
        );
    }
}

#[test]
fn numwant_is_bounded_by_the_configured_maximum() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.announce.default_numwant = 4;
        config.announce.max_numwant = 6;
        let t = TestServer::start(config);
        let c = UdpClient::new(t.udp(true));
        let id = c.connect();
        for port in 1..=10 {
            c.request(&UdpAnnounce::new(id, hash(4), port).packet());
        }
        let mut a = UdpAnnounce::new(id, hash(4), 999);
        assert_eq!(c.request(&a.packet()).peers().len(), 4);
        a.num_want = 2;
        assert_eq!(c.request(&a.packet()).peers().len(), 2);
        a.num_want = 5000;
        let raw = {
            c.send(&a.packet());
            c.recv_raw(Duration::from_secs(2)).unwrap()
        };
        assert_eq!(raw.len(), 20 + 6 * 18, "no larger than the maximum allows");
    }
}

#[test]
fn a_bad_or_expired_or_spoofed_connection_id_gets_an_error() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let c = UdpClient::new(t.udp(false));
        // (Cut to the request's length when that is shorter: the source is unproven.)
        let is_bad_id = |reply: UdpReply| matches!(reply, UdpReply::Error { transaction_id: 22, ref message } if message.len() >= 20 && "invalid or expired connection id".starts_with(message.as_str()));
        // Made up.
        assert!(is_bad_id(
            c.request(&UdpAnnounce::new(0xdead_beef, hash(5), 1).packet())
        ));
        // Valid now, and for two minutes.
        let id = c.connect();
        assert!(matches!(
            c.request(&UdpAnnounce::new(id, hash(5), 1).packet()),
            UdpReply::Announce { .. }
        ));
        t.clock.advance(120);
        assert!(matches!(
            c.request(&UdpAnnounce::new(id, hash(5), 1).packet()),
            UdpReply::Announce { .. }
        ));
        // Expired.
        t.clock.advance(1);
        assert!(is_bad_id(
            c.request(&UdpAnnounce::new(id, hash(5), 1).packet())
        ));
        // Another address cannot use an id it did not get (127.0.0.2 is loopback too).
        let id = c.connect();
        let other = UdpClient::bound("127.0.0.2:0", t.udp(false));
        assert!(is_bad_id(
            other.request(&UdpAnnounce::new(id, hash(5), 1).packet())
        ));
        let reply = other.request(&scrape_packet(id, 22, &[hash(5)]));
        assert!(is_bad_id(reply));
        // From the future: an id issued by a node whose clock is an hour ahead.
        let future = UdpClient::new(t.udp(false));
        t.clock.advance(3600);
        let future_id = future.connect();
        t.clock.set(NOW + 121);
        assert!(is_bad_id(
            future.request(&UdpAnnounce::new(future_id, hash(5), 1).packet())
        ));
    }
}

#[test]
fn nodes_with_the_same_secret_accept_each_others_ids() {
    for engine in engines() {
        let a = TestServer::start(test_config(engine));
        let b = TestServer::start(test_config(engine));
        // The same client socket talks to node b with node a's id.
        let c = UdpClient::new(a.udp(false));
        let id_from_a = c.connect();
        let c_to_b = UdpClient {
            socket: c.socket.try_clone().unwrap(),
            server: b.udp(false),
        };
        assert!(matches!(
            c_to_b.request(&UdpAnnounce::new(id_from_a, hash(6), 1).packet()),
            UdpReply::Announce { .. }
        ));
        let mut other = test_config(engine);
        other.udp.connection_id_secret = "ffeeddccbbaa99887766554433221100".into();
        let x = TestServer::start(other);
        let c_to_x = UdpClient {
            socket: c.socket.try_clone().unwrap(),
            server: x.udp(false),
        };
        assert!(matches!(
            c_to_x.request(&UdpAnnounce::new(id_from_a, hash(6), 1).packet()),
            UdpReply::Error { .. }
        ));
    }
}

#[test]
fn malformed_packets_get_error_packets_and_never_stop_the_tracker() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        for ipv6 in [false, true] {
            let c = UdpClient::new(t.udp(ipv6));
            let id = c.connect();
            // Too short to carry a transaction id: no answer at all.
            c.send(&[1, 2, 3]);
            assert_eq!(c.recv_raw(Duration::from_millis(200)), None);
            let cases: Vec<(Vec<u8>, &str)> = vec![
                (
                    [
                        &0x1234u64.to_be_bytes()[..],
                        &0u32.to_be_bytes(),
                        &5u32.to_be_bytes(),
                    ]
                    .concat(),
                    "protocol id",
                ),
                (
                    [
                        &id.to_be_bytes()[..],
                        &9u32.to_be_bytes(),
                        &5u32.to_be_bytes(),
                    ]
                    .concat(),
                    "unknown action",
                ),
                (
                    UdpAnnounce::new(id, hash(7), 1).packet()[..60].to_vec(),
                    "too short",
                ),
                (
                    {
                        let mut a = UdpAnnounce::new(id, hash(7), 1);
                        a.event = 9;
                        a.packet()
                    },
                    "invalid event",
                ),
                (UdpAnnounce::new(id, hash(7), 0).packet(), "invalid port"),
                (
                    scrape_packet(id, 5, &[])[..16].to_vec(),
                    "without info hashes",
                ),
                (
                    [scrape_packet(id, 5, &[hash(1)]), vec![1, 2]].concat(),
                    "20 bytes",
                ),
            ];
            for (packet, reason) in cases {
                match c.request(&packet) {
                    // Without a valid connection id the source is unproven: the reason is cut
                    // to the request's length (16 bytes: 8 of header, 8 of reason).
                    UdpReply::Error { message, .. } if reason == "protocol id" => {
                        assert_eq!(message, "invalid ", "{message} vs {reason}")
                    }
                    UdpReply::Error { message, .. } => {
                        assert!(message.contains(reason), "{message} vs {reason}")
                    }
                    other => panic!("expected an error for {reason}, got {other:?}"),
                }
            }
            // Random garbage of every length: answered or ignored, never a crash.
            let mut rng = 12345u64;
            for len in 0..300 {
                let packet: Vec<u8> = (0..len)
                    .map(|_| {
                        rng = rng
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (rng >> 56) as u8
                    })
                    .collect();
                c.send(&packet);
            }
            while c.recv_raw(Duration::from_millis(200)).is_some() {}
            // Still serving.
            assert!(matches!(
                c.request(&UdpAnnounce::new(c.connect(), hash(7), 1).packet()),
                UdpReply::Announce { .. }
            ));
        }
    }
}

#[test]
fn too_many_scrape_hashes_get_an_error() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.udp.max_scrape_hashes = 2;
        let t = TestServer::start(config);
        let c = UdpClient::new(t.udp(false));
        let id = c.connect();
        let reply = c.request(&scrape_packet(id, 8, &[hash(1), hash(2), hash(3)]));
        assert!(
            matches!(reply, UdpReply::Error { transaction_id: 8, ref message } if message.contains("too many"))
        );
    }
}

#[test]
fn the_ip_field_is_honoured_only_when_allowed() {
    for engine in engines() {
        for allowed in [false, true] {
            let mut config = test_config(engine);
            config.announce.allow_client_ip = allowed;
            let t = TestServer::start(config);
            let c = UdpClient::new(t.udp(false));
            let mut a = UdpAnnounce::new(c.connect(), hash(8), 7008);
            a.ip = u32::from_be_bytes([192, 0, 2, 7]);
            c.request(&a.packet());
            let h = hayate::bittorrent::InfoHash(hash(8));
            assert_eq!(
                t.server
                    .store()
                    .contains_peer(&h, "192.0.2.7".parse().unwrap(), 7008),
                allowed
            );
        }
    }
}

/// Records the URL each announce carried, and refuses one passkey.
struct PasskeyHook(Arc<Mutex<Vec<Vec<u8>>>>);

impl PreHook for PasskeyHook {
    fn name(&self) -> &'static str {
        "passkey"
    }
    fn before_announce(
        &self,
        ctx: &RequestContext<'_>,
        _: &mut AnnounceRequest,
    ) -> Result<(), ClientError> {
        self.0.lock().unwrap().push(ctx.url.to_vec());
        if ctx.url.ends_with(b"/revoked") {
            Err(ClientError::new("passkey revoked"))
        } else {
            Ok(())
        }
    }
}

#[test]
fn bep41_url_data_reaches_the_middleware_which_can_refuse() {
    for engine in engines() {
        let urls = Arc::new(Mutex::new(Vec::new()));
        let hooks = Middleware::new(vec![Box::new(PasskeyHook(urls.clone()))], vec![]);
        let t = TestServer::start_with(test_config(engine), hooks);
        let c = UdpClient::new(t.udp(true));
        let id = c.connect();
        let mut a = UdpAnnounce::new(id, hash(9), 7009);
        // NOP, URL data split in two, an unknown option with a length, end of options.
        a.options = [
            &[0x1, 0x2, 5][..],
            b"/abcd",
            &[0x7, 2, 0, 0],
            &[0x2, 4],
            b"?x=1",
            &[0x0],
        ]
        .concat();
        assert!(matches!(c.request(&a.packet()), UdpReply::Announce { .. }));
        a.options = [&[0x2, 8][..], b"/revoked"].concat();
        assert_eq!(
            c.request(&a.packet()),
            UdpReply::Error {
                transaction_id: 22,
                message: "passkey revoked".into()
            }
        );
        assert_eq!(
            *urls.lock().unwrap(),
            vec![b"/abcd?x=1".to_vec(), b"/revoked".to_vec()]
        );
        // Over HTTP the hook sees the request target.
        let target = announce_target(hash(9), 1, 1, 0, "");
        http_get(t.http(false), &target);
        assert_eq!(urls.lock().unwrap().last().unwrap(), target.as_bytes());
    }
}

#[test]
fn no_error_to_an_unproven_source_is_longer_than_its_request() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let c = UdpClient::new(t.udp(false));
        // A 17-byte scrape with a made-up connection id got a 48-byte reason.
        let mut scrape = scrape_packet(0xdead_beef, 31, &[]);
        scrape.push(0);
        let reply = c.request_raw(&scrape);
        assert!(
            reply.len() <= scrape.len(),
            "{engine:?}: {} bytes",
            reply.len()
        );
        assert!(matches!(
            parse_udp_reply(&reply, false),
            UdpReply::Error {
                transaction_id: 31,
                ..
            }
        ));
        // Every request with a made-up id, of every length: no reply outgrows it.
        for len in 16..120 {
            let mut packet = UdpAnnounce::new(0xdead_beef, hash(3), 1).packet();
            packet.resize(len, 0);
            packet[8..12].copy_from_slice(&(len as u32 % 4).to_be_bytes());
            c.send(&packet);
            if let Some(reply) = c.recv_raw(Duration::from_secs(2)) {
                assert!(reply.len() <= len, "{engine:?}: {len} -> {}", reply.len());
            }
        }
        // A proven source gets the whole reason.
        let id = c.connect();
        let mut scrape = scrape_packet(id, 32, &[]);
        scrape.push(0);
        match c.request(&scrape) {
            UdpReply::Error { message, .. } => assert!(message.contains("20 bytes"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn datagrams_longer_than_2048_bytes_are_dropped_by_both_engines() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let c = UdpClient::new(t.udp(false));
        for (len, answered) in [(2048, true), (2049, false), (4000, false)] {
            let mut packet = connect_packet(40);
            packet.resize(len, 0);
            c.send(&packet);
            let reply = c.recv_raw(Duration::from_millis(500));
            assert_eq!(reply.is_some(), answered, "{engine:?}: {len} bytes");
        }
        assert!(matches!(
            c.request(&connect_packet(41)),
            UdpReply::Connect {
                transaction_id: 41,
                ..
            }
        ));
    }
}

#[test]
fn a_source_creates_new_torrents_within_its_budget_and_joins_existing_ones_freely() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.workers = 1;
        // One worker, two protocols: each handler has half, 3 at once and 30 a minute.
        config.per_source.new_torrents_burst = 6;
        config.per_source.new_torrents_per_minute = 60;
        let t = TestServer::start(config);
        let c = UdpClient::new(t.udp(false));
        let id = c.connect();
        let announce = |c: &UdpClient, id: u64, n: u8| {
            c.request(&UdpAnnounce::new(id, hash(100 + n), 1000 + u16::from(n)).packet())
        };
        for n in 0..3 {
            assert!(matches!(announce(&c, id, n), UdpReply::Announce { .. }));
        }
        let refused = announce(&c, id, 3);
        assert!(
            matches!(&refused, UdpReply::Error { message, .. } if message.contains("too many new torrents")),
            "{engine:?}: {refused:?}"
        );
        // Torrents that exist are joined without limit, by the same source too.
        let mut again = UdpAnnounce::new(id, hash(100), 2000);
        again.peer_id = peer_id(77);
        assert!(matches!(
            c.request(&again.packet()),
            UdpReply::Announce { .. }
        ));
        // Another source has its own budget (127.0.0.2 is loopback too).
        let other = UdpClient::bound("127.0.0.2:0", t.udp(false));
        let other_id = other.connect();
        assert!(matches!(
            announce(&other, other_id, 10),
            UdpReply::Announce { .. }
        ));
        // Tokens come back with time: 30 a minute is one every 2 s.
        t.clock.advance(2);
        let id = c.connect();
        assert!(matches!(announce(&c, id, 4), UdpReply::Announce { .. }));
        assert!(matches!(announce(&c, id, 5), UdpReply::Error { .. }));
        assert_eq!(t.server.store().totals().torrents, 5, "{engine:?}");
    }
}

#[test]
fn a_step_of_the_wall_clock_empties_no_swarm_and_new_connection_ids_work_at_once() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let c = UdpClient::new(t.udp(false));
        let id = c.connect();
        assert!(matches!(
            c.request(&UdpAnnounce::new(id, hash(30), 3001).packet()),
            UdpReply::Announce { .. }
        ));
        for step in [100_000i64, -200_000] {
            // NTP or an operator steps the wall clock by more than the peer lifetime (45 min).
            t.clock.step_wall(step);
            t.server.store().clean();
            // Ids issued before the step carry the old time; a client connects again, and
            // the peer announced before is still there.
            let c2 = UdpClient::new(t.udp(false));
            let fresh = c2.connect();
            let peers = c2
                .request(&UdpAnnounce::new(fresh, hash(30), 3002).packet())
                .peers();
            assert!(
                peers.contains(&"127.0.0.1:3001".parse().unwrap()),
                "{engine:?}, step {step}: {peers:?}"
            );
        }
        // Time itself passing still expires peers (45 min, then a cleaning pass).
        t.clock.advance(2701);
        t.server.store().clean();
        assert_eq!(t.server.store().totals().torrents, 0, "{engine:?}");
    }
}
