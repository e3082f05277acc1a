//! Writes bencoded tracker responses and their HTTP framing into the caller's buffer.

use std::net::IpAddr;

use crate::bittorrent::{AnnounceResponse, InfoHash, ScrapeStats};
use crate::protocol::bencode::{bytes, int, key_bytes, key_int};

/// The announce body (BEP 3, 7, 23, 24). Keys are written in sorted order.
///
/// Compact: IPv4 peers in `peers` (6 bytes each), IPv6 peers in `peers6` (18 bytes each).
/// Not compact: every peer as a dictionary in `peers`, without `peer id` under `no_peer_id`.
pub fn write_announce(
    out: &mut Vec<u8>,
    response: &AnnounceResponse,
    compact: bool,
    no_peer_id: bool,
    external_ip: IpAddr,
) {
    out.push(b'd');
    key_int(out, "complete", i64::from(response.complete));
    key_int(out, "downloaded", i64::from(response.downloaded));
    match external_ip {
        IpAddr::V4(ip) => key_bytes(out, "external ip", &ip.octets()),
        IpAddr::V6(ip) => key_bytes(out, "external ip", &ip.octets()),
    }
    key_int(out, "incomplete", i64::from(response.incomplete));
    key_int(out, "interval", i64::from(response.interval));
    key_int(out, "min interval", i64::from(response.min_interval));
    if compact {
        write_compact_peers(out, response, false);
        write_compact_peers(out, response, true);
    } else {
        bytes(out, b"peers");
        out.push(b'l');
        for peer in &response.peers {
            out.push(b'd');
            // "ip" < "peer id" < "port"
            key_bytes(out, "ip", peer.addr.ip().to_string().as_bytes());
            if !no_peer_id {
                key_bytes(out, "peer id", &peer.peer_id.0);
            }
            key_int(out, "port", i64::from(peer.addr.port()));
            out.push(b'e');
        }
        out.push(b'e');
    }
    out.push(b'e');
}

fn write_compact_peers(out: &mut Vec<u8>, response: &AnnounceResponse, ipv6: bool) {
    let (key, size) = if ipv6 { ("peers6", 18) } else { ("peers", 6) };
    let count = response
        .peers
        .iter()
        .filter(|p| p.addr.is_ipv6() == ipv6)
        .count();
    bytes(out, key.as_bytes());
    out.extend_from_slice(itoa::Buffer::new().format(count * size).as_bytes());
    out.push(b':');
    for peer in response.peers.iter().filter(|p| p.addr.is_ipv6() == ipv6) {
        match peer.addr.ip() {
            IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
        }
        out.extend_from_slice(&peer.addr.port().to_be_bytes());
    }
}

/// The scrape body (BEP 48). `files` keys must be sorted and unique, so `stats` must be too.
pub fn write_scrape(out: &mut Vec<u8>, stats: &[(InfoHash, ScrapeStats)]) {
    debug_assert!(stats.windows(2).all(|w| w[0].0 < w[1].0));
    out.extend_from_slice(b"d5:filesd");
    for (info_hash, s) in stats {
        bytes(out, &info_hash.0);
        out.push(b'd');
        key_int(out, "complete", i64::from(s.complete));
        key_int(
            out,
            "downloaded",
            i64::try_from(s.downloaded).unwrap_or(i64::MAX),
        );
        key_int(out, "incomplete", i64::from(s.incomplete));
        out.push(b'e');
    }
    out.extend_from_slice(b"ee");
}

/// `d14:failure reason...e`; `retry_in` minutes (BEP 31) when the client should back off.
pub fn write_failure(out: &mut Vec<u8>, reason: &str, retry_in_minutes: Option<u32>) {
    out.push(b'd');
    key_bytes(out, "failure reason", reason.as_bytes());
    if let Some(minutes) = retry_in_minutes {
        bytes(out, b"retry in");
        int(out, i64::from(minutes));
    }
    out.push(b'e');
}

/// Status line, headers and body. `close` adds `Connection: close`.
pub fn write_http(out: &mut Vec<u8>, status: &str, content_type: &str, body: &[u8], close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bittorrent::{PeerId, ResponsePeer};
    use bt_bencode::Value;

    fn response() -> AnnounceResponse {
        AnnounceResponse {
            interval: 1800,
            min_interval: 900,
            complete: 2,
            incomplete: 1,
            downloaded: 9,
            peers: vec![
                ResponsePeer {
                    addr: "1.2.3.4:5".parse().unwrap(),
                    peer_id: PeerId([7; 20]),
                },
                ResponsePeer {
                    addr: "[::1]:6".parse().unwrap(),
                    peer_id: PeerId([8; 20]),
                },
            ],
        }
    }

    fn dict(body: &[u8]) -> std::collections::BTreeMap<bt_bencode::ByteString, Value> {
        match bt_bencode::from_slice::<Value>(body).expect("valid bencode") {
            Value::Dict(d) => d,
            other => panic!("not a dict: {other:?}"),
        }
    }

    fn get<'a>(
        d: &'a std::collections::BTreeMap<bt_bencode::ByteString, Value>,
        k: &str,
    ) -> &'a Value {
        d.get(&bt_bencode::ByteString::from(k.as_bytes().to_vec()))
            .unwrap_or_else(|| panic!("no key {k}"))
    }

    #[test]
    fn a_compact_announce_has_peers_peers6_and_external_ip() {
        let mut out = Vec::new();
        write_announce(
            &mut out,
            &response(),
            true,
            false,
            "9.9.9.9".parse().unwrap(),
        );
        let d = dict(&out);
        assert_eq!(get(&d, "complete").as_u64(), Some(2));
        assert_eq!(get(&d, "downloaded").as_u64(), Some(9));
        assert_eq!(get(&d, "incomplete").as_u64(), Some(1));
        assert_eq!(get(&d, "interval").as_u64(), Some(1800));
        assert_eq!(get(&d, "min interval").as_u64(), Some(900));
        assert_eq!(
            get(&d, "peers").as_byte_str().unwrap().as_slice(),
            &[1, 2, 3, 4, 0, 5]
        );
        let p6 = get(&d, "peers6").as_byte_str().unwrap();
        assert_eq!(p6.len(), 18);
        assert_eq!(&p6[16..], &[0, 6]);
        assert_eq!(
            get(&d, "external ip").as_byte_str().unwrap().as_slice(),
            &[9, 9, 9, 9]
        );
        assert_sorted_keys(&out);
    }

    #[test]
    fn a_dictionary_announce_lists_ip_peer_id_and_port() {
        for no_peer_id in [false, true] {
            let mut out = Vec::new();
            write_announce(
                &mut out,
                &response(),
                false,
                no_peer_id,
                "::2".parse().unwrap(),
            );
            let d = dict(&out);
            let peers = get(&d, "peers").as_array().unwrap();
            assert_eq!(peers.len(), 2);
            let first = match &peers[0] {
                Value::Dict(p) => p,
                _ => panic!(),
            };
            assert_eq!(get(first, "ip").as_str(), Some("1.2.3.4"));
            assert_eq!(get(first, "port").as_u64(), Some(5));
            let has_id = first.contains_key(&bt_bencode::ByteString::from(b"peer id".to_vec()));
            assert_eq!(has_id, !no_peer_id);
            assert_eq!(get(&d, "external ip").as_byte_str().unwrap().len(), 16);
            assert_sorted_keys(&out);
        }
    }

    #[test]
    fn scrape_and_failure_bodies_decode() {
        let mut out = Vec::new();
        let s = ScrapeStats {
            complete: 3,
            incomplete: 4,
            downloaded: 5,
        };
        write_scrape(&mut out, &[(InfoHash([1; 20]), s), (InfoHash([2; 20]), s)]);
        let d = dict(&out);
        let files = match get(&d, "files") {
            Value::Dict(f) => f,
            _ => panic!(),
        };
        assert_eq!(files.len(), 2);
        let one = match files.values().next().unwrap() {
            Value::Dict(x) => x,
            _ => panic!(),
        };
        assert_eq!(get(one, "downloaded").as_u64(), Some(5));
        out.clear();
        write_failure(&mut out, "bad", Some(5));
        let d = dict(&out);
        assert_eq!(get(&d, "failure reason").as_str(), Some("bad"));
        assert_eq!(get(&d, "retry in").as_u64(), Some(5));
    }

    /// bencode requires sorted dictionary keys; check every dictionary in `body`.
    fn assert_sorted_keys(body: &[u8]) {
        fn check(v: &Value) {
            match v {
                Value::Dict(d) => d.values().for_each(check),
                Value::List(l) => l.iter().for_each(check),
                _ => {}
            }
        }
        // bt_bencode's BTreeMap re-sorts, so compare the raw key order of the top dictionary.
        let d = dict(body);
        d.values().for_each(check);
        let mut reencoded = Vec::new();
        bt_bencode::to_writer(&mut reencoded, &Value::Dict(d)).unwrap();
        assert_eq!(reencoded, body, "keys were not in sorted order");
    }
}
