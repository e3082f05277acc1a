//! Property tests of the codecs and of the whole request path: what a client encodes decodes to
//! the same fields, what we encode decodes to what we meant, and no bytes make anything panic.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use common::{UdpAnnounce, UdpReply, parse_http_replies, parse_udp_reply, urlencode};
use hayate::bittorrent::{AnnounceEvent, AnnounceResponse, PeerId, ResponsePeer};
use hayate::clock::Clock;
use hayate::config::Config;
use hayate::handler::{ConnectionRules, HttpConnection, HttpHandler, Tracker, UdpHandler};
use hayate::middleware::Middleware;
use hayate::protocol::http::{HttpRequest, decode_target};
use hayate::protocol::udp::{self, UdpRequest};
use hayate::swarm::{SwarmLimits, SwarmStore};
use proptest::prelude::*;

fn tracker() -> Arc<Tracker> {
    let mut config = Config::default();
    config.udp.connection_id_secret = common::SECRET.into();
    let limits = SwarmLimits {
        max_torrents: 1000,
        max_peers_per_torrent: 1000,
        peer_lifetime_secs: 3600,
    };
    let store = Arc::new(SwarmStore::new(8, limits, Clock::stopped(common::NOW)));
    Arc::new(Tracker::new(&config, store, Middleware::default()).unwrap())
}

fn event_strategy() -> impl Strategy<Value = (u32, AnnounceEvent, &'static str)> {
    prop_oneof![
        Just((0, AnnounceEvent::None, "")),
        Just((1, AnnounceEvent::Completed, "completed")),
        Just((2, AnnounceEvent::Started, "started")),
        Just((3, AnnounceEvent::Stopped, "stopped")),
    ]
}

fn peer_strategy() -> impl Strategy<Value = ResponsePeer> {
    (
        any::<bool>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<[u8; 20]>(),
    )
        .prop_map(|(v6, ip, port, id)| {
            let ip: IpAddr = if v6 {
                // Not IPv4-mapped: those are IPv4 peers.
                let mut ip = ip;
                ip[0] = 0x20;
                Ipv6Addr::from(ip).into()
            } else {
                <[u8; 4]>::try_from(&ip[..4]).unwrap().into()
            };
            ResponsePeer {
                addr: SocketAddr::new(ip, port),
                peer_id: PeerId(id),
            }
        })
}

const RULES: ConnectionRules = ConnectionRules {
    max_request_bytes: 1024,
    keep_alive: true,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_udp_announce_decodes_to_the_fields_encoded(
        connection_id: u64, transaction_id: u32, info_hash: [u8; 20], peer_id: [u8; 20],
        left: u64, (wire_event, event, _) in event_strategy(), ip: u32, num_want: i32, port in 1u16..,
        options in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let packet = UdpAnnounce { connection_id, transaction_id, info_hash, peer_id, left, event: wire_event, ip, num_want, port, options: options.clone() }.packet();
        let Ok(UdpRequest::Announce(a)) = udp::decode(&packet) else { panic!("not an announce") };
        prop_assert_eq!((a.connection_id, a.transaction_id, a.left, a.port), (connection_id, transaction_id, left, port));
        prop_assert_eq!((a.info_hash.0, a.peer_id.0, a.event), (info_hash, peer_id, event));
        prop_assert_eq!(a.ip.map(u32::from), (ip != 0).then_some(ip));
        prop_assert_eq!(a.num_want, u32::try_from(num_want).ok());
        prop_assert_eq!(a.options.0, &options[..]);
    }

    #[test]
    fn an_http_announce_decodes_to_the_fields_encoded(
        info_hash: [u8; 20], peer_id: [u8; 20], port in 1u16.., uploaded: u64, downloaded: u64, left: u64,
        (_, event, event_name) in event_strategy(), numwant in proptest::option::of(0u32..10_000),
        compact: bool, shuffle: u64,
    ) {
        let mut params = vec![
            format!("info_hash={}", urlencode(&info_hash)),
            format!("peer_id={}", urlencode(&peer_id)),
            format!("port={port}"),
            format!("uploaded={uploaded}"),
            format!("downloaded={downloaded}"),
            format!("left={left}"),
            format!("event={event_name}"),
            format!("compact={}", u8::from(compact)),
        ];
        if let Some(n) = numwant {
            params.push(format!("numwant={n}"));
        }
        // Parameter order does not matter.
        let len = params.len();
        params.rotate_left((shuffle % len as u64) as usize);
        let target = format!("/announce?{}", params.join("&"));
        let Ok(HttpRequest::Announce(a)) = decode_target(target.as_bytes(), &mut Vec::new(), 10) else { panic!("{target}") };
        prop_assert_eq!((a.info_hash.0, a.peer_id.0, a.port), (info_hash, peer_id, port));
        prop_assert_eq!((a.uploaded, a.downloaded, a.left), (uploaded, downloaded, left));
        prop_assert_eq!((a.event, a.numwant, a.compact), (event, numwant, compact));
    }

    #[test]
    fn a_udp_announce_response_decodes_to_the_peers_written(
        peers in proptest::collection::vec(peer_strategy(), 0..50), interval: u32, complete: u32, incomplete: u32, ipv6: bool,
    ) {
        let response = AnnounceResponse { interval, min_interval: 0, complete, incomplete, downloaded: 0, peers: peers.clone() };
        let mut out = Vec::new();
        udp::response::write_announce(&mut out, 5, &response, ipv6);
        let expected: Vec<SocketAddr> = peers.iter().filter(|p| p.addr.is_ipv6() == ipv6).map(|p| p.addr).collect();
        prop_assert_eq!(parse_udp_reply(&out, ipv6), UdpReply::Announce { transaction_id: 5, interval, leechers: incomplete, seeders: complete, peers: expected });
    }

    #[test]
    fn an_http_announce_response_is_valid_bencode_with_every_peer(
        peers in proptest::collection::vec(peer_strategy(), 0..50), complete: u32, compact: bool,
    ) {
        let response = AnnounceResponse { interval: 60, min_interval: 30, complete, incomplete: 0, downloaded: 7, peers: peers.clone() };
        let mut body = Vec::new();
        hayate::protocol::http::response::write_announce(&mut body, &response, compact, false, "::1".parse().unwrap());
        let value: bt_bencode::Value = bt_bencode::from_slice(&body).expect("valid bencode");
        let d = common::Dict(value.as_dict().unwrap().clone());
        prop_assert_eq!(d.int("complete"), i64::from(complete));
        prop_assert_eq!(d.int("downloaded"), 7);
        if compact {
            let mut got = common::compact_peers(&d.bytes("peers"), false);
            got.extend(common::compact_peers(&d.bytes("peers6"), true));
            let mut want: Vec<SocketAddr> = peers.iter().filter(|p| !p.addr.is_ipv6()).map(|p| p.addr).collect();
            want.extend(peers.iter().filter(|p| p.addr.is_ipv6()).map(|p| p.addr));
            prop_assert_eq!(got, want);
        } else {
            prop_assert_eq!(d.list("peers").len(), peers.len());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_http_decoder(target in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_target(&target, &mut Vec::new(), 5);
        let mut with_path = b"/announce?".to_vec();
        with_path.extend_from_slice(&target);
        let _ = decode_target(&with_path, &mut Vec::new(), 5);
    }

    #[test]
    fn arbitrary_datagrams_through_the_whole_udp_path_never_panic(
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..20),
    ) {
        let mut handler = UdpHandler::new(tracker(), Default::default());
        let mut out = Vec::new();
        for packet in packets {
            handler.handle(&packet, "127.0.0.1:5000".parse().unwrap(), &mut out);
            prop_assert!(out.len() <= 20 + 18 * 74, "response of {} bytes", out.len());
        }
    }

    #[test]
    fn arbitrary_bytes_through_an_http_connection_never_panic_and_frame_cleanly(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..10),
    ) {
        let mut handler = HttpHandler::new(tracker(), Default::default());
        let mut conn = HttpConnection::new("[::1]:5000".parse().unwrap(), RULES);
        for chunk in &chunks {
            conn.received(chunk, &mut handler);
        }
        let out = conn.pending_output().to_vec();
        // Whatever came in, what goes out is a sequence of whole HTTP responses.
        let replies = parse_http_replies(&out);
        prop_assert!(replies.iter().all(|r| [200, 400, 404, 405, 431].contains(&r.status)));
    }

    #[test]
    fn a_connection_whose_answers_are_never_written_holds_bounded_bytes(
        requests in proptest::collection::vec((any::<u8>(), 0usize..40), 1..2000),
        chunk in 1usize..5000,
    ) {
        let mut handler = HttpHandler::new(tracker(), Default::default());
        let mut conn = HttpConnection::new("[::1]:5000".parse().unwrap(), RULES);
        let stream: Vec<u8> = requests
            .iter()
            .flat_map(|&(torrent, pad)| {
                format!(
                    "GET {} HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
                    common::announce_target([torrent; 20], torrent, 1 + u16::from(torrent), 0, ""),
                    "p".repeat(pad)
                )
                .into_bytes()
            })
            .collect();
        // An engine that ignores `wants_input` (the worst case: io_uring's receives already in
        // flight) and a client that never reads: the connection still holds a bounded amount,
        // and closes rather than grow.
        for piece in stream.chunks(chunk) {
            conn.received(piece, &mut handler);
            prop_assert!(
                conn.buffered_bytes() <= RULES.max_request_bytes + 64 * 1024 + chunk + 32 * 1024 + 4096,
                "{} bytes held", conn.buffered_bytes()
            );
        }
        // An engine that heeds it reads a request's worth at most before answers go out.
        let mut conn = HttpConnection::new("[::1]:5000".parse().unwrap(), RULES);
        for piece in stream.chunks(chunk) {
            if !conn.wants_input() {
                break;
            }
            conn.received(piece, &mut handler);
        }
        prop_assert!(conn.buffered_bytes() <= RULES.max_request_bytes + chunk + 32 * 1024 + 4096);
        prop_assert!(!conn.overflowed());
    }
}

/// One connection's replies to `input`, sent in one piece.
fn replies_to(input: &[u8]) -> Vec<common::HttpReply> {
    let mut handler = HttpHandler::new(tracker(), Default::default());
    let mut conn = HttpConnection::new("[::1]:5000".parse().unwrap(), RULES);
    conn.received(input, &mut handler);
    parse_http_replies(conn.pending_output())
}

#[test]
fn max_request_bytes_is_exact_even_when_a_request_arrives_whole() {
    let request = |len: usize| {
        let head = "GET /x HTTP/1.1\r\nX-Pad: ";
        let tail = "\r\n\r\n";
        format!("{head}{}{tail}", "p".repeat(len - head.len() - tail.len())).into_bytes()
    };
    assert_eq!(replies_to(&request(RULES.max_request_bytes))[0].status, 404);
    assert_eq!(
        replies_to(&request(RULES.max_request_bytes + 1))[0].status,
        431
    );
}

#[test]
fn differing_content_lengths_are_refused_and_equal_zero_lengths_accepted() {
    let replies =
        replies_to(b"GET /x HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(replies.len(), 1, "the body is never read as a request");
    assert_eq!(replies[0].status, 400);
    assert_eq!(replies[0].body, b"conflicting Content-Length headers");
    let replies =
        replies_to(b"GET /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello");
    assert_eq!(replies[0].status, 400);
    let replies = replies_to(
        b"GET /x HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\nGET /y HTTP/1.1\r\n\r\n",
    );
    assert_eq!(
        replies.iter().map(|r| r.status).collect::<Vec<_>>(),
        [404, 404]
    );
}
