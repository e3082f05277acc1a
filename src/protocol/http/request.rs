//! Decodes the request target (`/announce?...`, `/scrape?...`) into a typed request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use percent_encoding::percent_decode;

use crate::bittorrent::{AnnounceEvent, ClientError, InfoHash, PeerId};

/// An announce as the HTTP client sent it, before the address is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnnounce {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: AnnounceEvent,
    pub numwant: Option<u32>,
    pub compact: bool,
    pub no_peer_id: bool,
    pub key: Option<u32>,
    /// `ip`, `ipv4`, `ipv6`: only used when config allows clients to name their address.
    pub ip: Option<IpAddr>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpRequest {
    Announce(HttpAnnounce),
    /// The info hashes went into the caller's buffer.
    Scrape,
    NotFound,
}

/// Splits `target` into path and query and decodes the tracker request it names.
///
/// Scrape hashes are written into `scrape_hashes` (cleared first), at most `max_scrape`.
pub fn decode_target(
    target: &[u8],
    scrape_hashes: &mut Vec<InfoHash>,
    max_scrape: usize,
) -> Result<HttpRequest, ClientError> {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &b""[..]),
    };
    match path {
        b"/announce" | b"/announce/" => decode_announce(query).map(HttpRequest::Announce),
        b"/scrape" | b"/scrape/" => {
            decode_scrape(query, scrape_hashes, max_scrape)?;
            Ok(HttpRequest::Scrape)
        }
        _ => Ok(HttpRequest::NotFound),
    }
}

/// `key=value` pairs of a query string, values still percent-encoded.
pub fn query_pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        })
}

fn decode_announce(query: &[u8]) -> Result<HttpAnnounce, ClientError> {
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let mut uploaded = None;
    let mut downloaded = None;
    let mut left = None;
    let mut event = AnnounceEvent::None;
    let mut numwant = None;
    let mut compact = true;
    let mut no_peer_id = false;
    let mut key = None;
    let mut ip = None;
    let mut ipv4 = None;
    let mut ipv6 = None;

    for (name, raw) in query_pairs(query) {
        match name {
            b"info_hash" if info_hash.is_none() => {
                info_hash = Some(InfoHash(
                    decode_20(raw)
                        .ok_or(ClientError::new("invalid info_hash: must be 20 bytes"))?,
                ));
            }
            b"peer_id" if peer_id.is_none() => {
                peer_id = Some(PeerId(
                    decode_20(raw).ok_or(ClientError::new("invalid peer_id: must be 20 bytes"))?,
                ));
            }
            b"port" => {
                let p = number(raw).ok_or(ClientError::new("invalid port"))?;
                port = Some(match u16::try_from(p) {
                    Ok(0) => return Err(ClientError::new("invalid port: 0")),
                    Ok(p) => p,
                    Err(_) => return Err(ClientError::new("invalid port: above 65535")),
                });
            }
            b"uploaded" => {
                uploaded = Some(number(raw).ok_or(ClientError::new("invalid uploaded"))?)
            }
            b"downloaded" => {
                downloaded = Some(number(raw).ok_or(ClientError::new("invalid downloaded"))?)
            }
            b"left" => left = Some(number(raw).ok_or(ClientError::new("invalid left"))?),
            b"event" => {
                event = match raw {
                    b"" | b"empty" | b"paused" => AnnounceEvent::None,
                    b"started" => AnnounceEvent::Started,
                    b"stopped" => AnnounceEvent::Stopped,
                    b"completed" => AnnounceEvent::Completed,
                    _ => return Err(ClientError::new("invalid event")),
                }
            }
            b"numwant" | b"num_want" => numwant = decode_numwant(raw)?,
            b"compact" => compact = raw != b"0",
            b"no_peer_id" => no_peer_id = raw != b"0",
            b"key" => key = Some(decode_key(raw)),
            b"ip" => ip = decode_ip(raw),
            b"ipv4" => {
                ipv4 = decode_ip(raw).and_then(|a| match a.to_canonical() {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
            }
            b"ipv6" => {
                ipv6 = decode_ip(raw).and_then(|a| match a {
                    IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => Some(v6),
                    _ => None,
                })
            }
            _ => {}
        }
    }

    Ok(HttpAnnounce {
        info_hash: info_hash.ok_or(ClientError::new("missing info_hash"))?,
        peer_id: peer_id.ok_or(ClientError::new("missing peer_id"))?,
        port: port.ok_or(ClientError::new("missing port"))?,
        uploaded: uploaded.unwrap_or(0),
        downloaded: downloaded.unwrap_or(0),
        left: left.ok_or(ClientError::new("missing left"))?,
        event,
        numwant,
        compact,
        no_peer_id,
        key,
        ip,
        ipv4,
        ipv6,
    })
}

fn decode_scrape(query: &[u8], hashes: &mut Vec<InfoHash>, max: usize) -> Result<(), ClientError> {
    hashes.clear();
    for (name, raw) in query_pairs(query) {
        if name == b"info_hash" {
            if hashes.len() == max {
                return Err(ClientError::new("too many info_hash values in one scrape"));
            }
            hashes.push(InfoHash(
                decode_20(raw).ok_or(ClientError::new("invalid info_hash: must be 20 bytes"))?,
            ));
        }
    }
    if hashes.is_empty() {
        // A full scrape of millions of torrents is a denial of service; ask for hashes.
        return Err(ClientError::new(
            "missing info_hash (full scrape is not supported)",
        ));
    }
    Ok(())
}

/// Percent-decodes exactly 20 bytes.
fn decode_20(raw: &[u8]) -> Option<[u8; 20]> {
    let mut out = [0u8; 20];
    let mut n = 0;
    for byte in percent_decode(raw) {
        *out.get_mut(n)? = byte;
        n += 1;
    }
    (n == 20).then_some(out)
}

/// A non-negative decimal number.
fn number(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 {
        return None;
    }
    raw.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// `numwant`: a number, or a negative one (some clients send -1) meaning "the default".
fn decode_numwant(raw: &[u8]) -> Result<Option<u32>, ClientError> {
    if let Some(rest) = raw.strip_prefix(b"-") {
        return number(rest)
            .map(|_| None)
            .ok_or(ClientError::new("invalid numwant"));
    }
    let n = number(raw).ok_or(ClientError::new("invalid numwant"))?;
    Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
}

/// `key` is opaque; clients send 8 hex digits, others anything. Keep 32 bits of it.
fn decode_key(raw: &[u8]) -> u32 {
    let hex = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok());
    hex.unwrap_or_else(|| {
        percent_decode(raw).fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
    })
}

fn decode_ip(raw: &[u8]) -> Option<IpAddr> {
    let mut buf = [0u8; 64];
    let mut n = 0;
    for byte in percent_decode(raw) {
        *buf.get_mut(n)? = byte;
        n += 1;
    }
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.trim_matches(|c| c == '[' || c == ']').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "%01%02%03%04%05%06%07%08%09%0a%0b%0c%0d%0e%0f%10%11%12%13%14";

    fn announce(query: &str) -> Result<HttpAnnounce, ClientError> {
        let target = format!("/announce?{query}");
        match decode_target(target.as_bytes(), &mut Vec::new(), 10)? {
            HttpRequest::Announce(a) => Ok(a),
            other => panic!("not an announce: {other:?}"),
        }
    }

    #[test]
    fn a_full_announce_is_decoded() {
        let a = announce(&format!(
            "info_hash={HASH}&peer_id=-qB4650-abcdefghijkl&port=6881&uploaded=1&downloaded=2\
             &left=3&event=started&numwant=30&compact=1&no_peer_id=1&key=DEADBEEF&ip=10.0.0.1"
        ))
        .unwrap();
        assert_eq!(a.info_hash.0[0], 1);
        assert_eq!(a.info_hash.0[19], 0x14);
        assert_eq!(&a.peer_id.0, b"-qB4650-abcdefghijkl");
        assert_eq!((a.port, a.uploaded, a.downloaded, a.left), (6881, 1, 2, 3));
        assert_eq!(a.event, AnnounceEvent::Started);
        assert_eq!(a.numwant, Some(30));
        assert!(a.compact && a.no_peer_id);
        assert_eq!(a.key, Some(0xDEAD_BEEF));
        assert_eq!(a.ip, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_fields_get_a_reason_that_names_them() {
        let ok = format!("info_hash={HASH}&peer_id=-qB4650-abcdefghijkl&port=1&left=0");
        assert!(announce(&ok).is_ok());
        let cases = [
            (
                "peer_id=-qB4650-abcdefghijkl&port=1&left=0".to_string(),
                "missing info_hash",
            ),
            (
                "info_hash=abc&peer_id=-qB4650-abcdefghijkl&port=1&left=0".to_string(),
                "invalid info_hash",
            ),
            (format!("info_hash={HASH}&port=1&left=0"), "missing peer_id"),
            (
                format!("info_hash={HASH}&peer_id=short&port=1&left=0"),
                "invalid peer_id",
            ),
            (
                format!("info_hash={HASH}&peer_id=-qB4650-abcdefghijkl&left=0"),
                "missing port",
            ),
            (format!("{ok}&port=0"), "invalid port: 0"),
            (format!("{ok}&port=70000"), "invalid port"),
            (format!("{ok}&left=-1"), "invalid left"),
            (format!("{ok}&uploaded=x"), "invalid uploaded"),
            (format!("{ok}&event=exploded"), "invalid event"),
            (format!("{ok}&numwant=many"), "invalid numwant"),
        ];
        for (query, reason) in cases {
            let err = announce(&query).unwrap_err();
            assert!(err.reason().starts_with(reason), "{query}: {err}");
        }
    }

    #[test]
    fn a_negative_numwant_means_the_default() {
        let a = announce(&format!(
            "info_hash={HASH}&peer_id=-qB4650-abcdefghijkl&port=1&left=0&numwant=-1"
        ))
        .unwrap();
        assert_eq!(a.numwant, None);
    }

    #[test]
    fn scrape_collects_hashes_up_to_the_maximum() {
        let mut hashes = Vec::new();
        let target = format!(
            "/scrape?info_hash={HASH}&info_hash=%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff"
        );
        assert_eq!(
            decode_target(target.as_bytes(), &mut hashes, 2),
            Ok(HttpRequest::Scrape)
        );
        assert_eq!(hashes.len(), 2);
        assert!(decode_target(target.as_bytes(), &mut hashes, 1).is_err());
        assert!(decode_target(b"/scrape", &mut hashes, 1).is_err());
    }

    #[test]
    fn unknown_paths_are_not_found() {
        assert_eq!(
            decode_target(b"/favicon.ico", &mut Vec::new(), 1),
            Ok(HttpRequest::NotFound)
        );
    }
}
