//! Writes BEP 15 response datagrams into the caller's buffer.

use std::net::IpAddr;

use super::{ACTION_ANNOUNCE, ACTION_CONNECT, ACTION_ERROR, ACTION_SCRAPE};
use crate::bittorrent::{AnnounceResponse, ScrapeStats};

pub fn write_connect(out: &mut Vec<u8>, transaction_id: u32, connection_id: u64) {
    out.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(&connection_id.to_be_bytes());
}

/// Peers of the request's address family only: 6 bytes each over IPv4, 18 over IPv6.
pub fn write_announce(
    out: &mut Vec<u8>,
    transaction_id: u32,
    response: &AnnounceResponse,
    ipv6: bool,
) {
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(&response.interval.to_be_bytes());
    out.extend_from_slice(&response.incomplete.to_be_bytes());
    out.extend_from_slice(&response.complete.to_be_bytes());
    for peer in response.peers.iter().filter(|p| p.addr.is_ipv6() == ipv6) {
        match peer.addr.ip() {
            IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
        }
        out.extend_from_slice(&peer.addr.port().to_be_bytes());
    }
}

/// Seeders, completed, leechers per requested torrent, in request order.
pub fn write_scrape(
    out: &mut Vec<u8>,
    transaction_id: u32,
    stats: impl Iterator<Item = ScrapeStats>,
) {
    out.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    for s in stats {
        out.extend_from_slice(&s.complete.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(s.downloaded)
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&s.incomplete.to_be_bytes());
    }
}

pub fn write_error(out: &mut Vec<u8>, transaction_id: u32, message: &str) {
    out.extend_from_slice(&ACTION_ERROR.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bittorrent::{PeerId, ResponsePeer};

    #[test]
    fn announce_responses_carry_only_the_requests_family() {
        let response = AnnounceResponse {
            interval: 60,
            min_interval: 30,
            complete: 3,
            incomplete: 4,
            downloaded: 0,
            peers: vec![
                ResponsePeer {
                    addr: "1.2.3.4:5".parse().unwrap(),
                    peer_id: PeerId([0; 20]),
                },
                ResponsePeer {
                    addr: "[::1]:6".parse().unwrap(),
                    peer_id: PeerId([0; 20]),
                },
            ],
        };
        let mut v4 = Vec::new();
        write_announce(&mut v4, 9, &response, false);
        assert_eq!(v4.len(), 20 + 6);
        assert_eq!(&v4[12..20], &[0, 0, 0, 4, 0, 0, 0, 3]);
        assert_eq!(&v4[20..], &[1, 2, 3, 4, 0, 5]);
        let mut v6 = Vec::new();
        write_announce(&mut v6, 9, &response, true);
        assert_eq!(v6.len(), 20 + 18);
    }

    #[test]
    fn scrape_and_error_layouts() {
        let mut out = Vec::new();
        let s = ScrapeStats {
            complete: 1,
            incomplete: 2,
            downloaded: 3,
        };
        write_scrape(&mut out, 7, [s].into_iter());
        assert_eq!(
            out,
            [0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 2]
        );
        out.clear();
        write_error(&mut out, 7, "no");
        assert_eq!(out, [0, 0, 0, 3, 0, 0, 0, 7, b'n', b'o']);
    }
}
