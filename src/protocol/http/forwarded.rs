//! Which address is the client, behind reverse proxies.
//!
//! A forwarding header is only believed on a connection from a trusted proxy, and each proxy
//! appends the address it saw, so the list is read from the right: the first address that is
//! not itself a trusted proxy is the client. Everything left of it could have been written by
//! the client. (Chihaya believes a single-address header from anyone.)

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::bittorrent::ClientError;

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client address of a request that arrived from `socket_ip` with the given values of the
/// forwarding header, in the order the header lines appeared.
pub fn client_ip<'a>(
    socket_ip: IpAddr,
    header_values: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> Result<IpAddr, ClientError> {
    if !is_trusted(socket_ip, trusted) {
        return Ok(socket_ip);
    }
    let mut leftmost = None;
    for value in header_values.rev() {
        for entry in value.rsplit(|&b| b == b',') {
            let ip = parse_entry(entry)
                .ok_or(ClientError::new("invalid address in the forwarding header"))?;
            if !is_trusted(ip, trusted) {
                return Ok(ip);
            }
            leftmost = Some(ip);
        }
    }
    // Every hop was a trusted proxy: the request started at the first of them.
    Ok(leftmost.unwrap_or(socket_ip))
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` or `[::1]:80`, with surrounding spaces.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_of_an_untrusted_peer_is_ignored() {
        let got = client_ip(ip("8.8.8.8"), [&b"1.1.1.1"[..]].into_iter(), &trusted());
        assert_eq!(got, Ok(ip("8.8.8.8")));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let header = [&b"6.6.6.6, 1.2.3.4, 10.0.0.7"[..]];
        let got = client_ip(ip("10.0.0.1"), header.into_iter(), &trusted());
        assert_eq!(got, Ok(ip("1.2.3.4")));
    }

    #[test]
    fn several_header_lines_read_as_one_list() {
        let header = [&b"1.2.3.4"[..], &b"10.9.9.9, [::1]:443"[..]];
        assert_eq!(
            client_ip(ip("::1"), header.into_iter(), &trusted()),
            Ok(ip("1.2.3.4"))
        );
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost_and_no_header_the_socket() {
        let header = [&b"10.0.0.9, 10.0.0.8"[..]];
        assert_eq!(
            client_ip(ip("10.0.0.1"), header.into_iter(), &trusted()),
            Ok(ip("10.0.0.9"))
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), std::iter::empty(), &trusted()),
            Ok(ip("10.0.0.1"))
        );
    }

    #[test]
    fn garbage_is_a_client_error() {
        let header = [&b"1.2.3.4, not-an-ip"[..]];
        assert!(client_ip(ip("10.0.0.1"), header.into_iter(), &trusted()).is_err());
    }
}
