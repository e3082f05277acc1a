//! Decodes BEP 15 request datagrams.

use std::net::Ipv4Addr;

use super::{ACTION_ANNOUNCE, ACTION_CONNECT, ACTION_SCRAPE, PROTOCOL_ID};
use crate::bittorrent::{AnnounceEvent, InfoHash, PeerId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdpRequest<'a> {
    Connect {
        transaction_id: u32,
    },
    Announce(UdpAnnounce<'a>),
    Scrape {
        connection_id: u64,
        transaction_id: u32,
        /// Concatenated 20-byte info hashes (at least one); see [`scrape_hashes`].
        info_hashes: &'a [u8],
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpAnnounce<'a> {
    pub connection_id: u64,
    pub transaction_id: u32,
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub downloaded: u64,
    pub left: u64,
    pub uploaded: u64,
    pub event: AnnounceEvent,
    /// The `ip` field; 0 (absent) is `None`. Only used when config allows it.
    pub ip: Option<Ipv4Addr>,
    pub key: u32,
    /// `None` for -1 (the default) or any negative value.
    pub num_want: Option<u32>,
    pub port: u16,
    /// BEP 41 options after the fixed fields.
    pub options: UrlOptions<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpDecodeError {
    /// Too short to carry a transaction id: nobody to answer.
    Unanswerable,
    /// Answer with an error packet carrying this transaction id.
    Malformed {
        transaction_id: u32,
        reason: &'static str,
    },
}

/// The info hashes of a scrape request.
pub fn scrape_hashes(info_hashes: &[u8]) -> impl Iterator<Item = InfoHash> + '_ {
    info_hashes
        .chunks_exact(20)
        .map(|c| InfoHash(c.try_into().expect("chunk of 20")))
}

/// BEP 41 options: 0x0 ends them, 0x1 is a no-op, every other type has a length byte; 0x2
/// carries URL data (path and query of the announce URL), possibly split over several options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UrlOptions<'a>(pub &'a [u8]);

impl<'a> UrlOptions<'a> {
    /// The URL data chunks, in order. Unknown options are skipped; a truncated option ends the
    /// list (the fixed fields were valid, so the announce itself still stands).
    pub fn url_data(&self) -> impl Iterator<Item = &'a [u8]> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            loop {
                let (&kind, tail) = rest.split_first()?;
                match kind {
                    0x0 => return None,
                    0x1 => rest = tail,
                    _ => {
                        let (&len, tail) = tail.split_first()?;
                        let Some(data) = tail.get(..usize::from(len)) else {
                            rest = &[];
                            return None;
                        };
                        rest = &tail[usize::from(len)..];
                        if kind == 0x2 {
                            return Some(data);
                        }
                    }
                }
            }
        })
    }

    /// All URL data, concatenated into `out` (cleared first).
    pub fn url_into(&self, out: &mut Vec<u8>) {
        out.clear();
        self.url_data()
            .for_each(|chunk| out.extend_from_slice(chunk));
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().expect("length checked"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("length checked"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("length checked"))
}
fn bytes20_at(b: &[u8], at: usize) -> [u8; 20] {
    b[at..at + 20].try_into().expect("length checked")
}

/// What an announce will touch in the store, read before the request is decoded for real.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceTarget {
    pub info_hash: InfoHash,
    pub port: u16,
    /// `left` is 0.
    pub seeder: bool,
}

/// The target of what looks like an announce, read without validating the rest: enough for
/// the store to start fetching the torrent and the peer's entry.
pub fn announce_target(packet: &[u8]) -> Option<AnnounceTarget> {
    (packet.len() >= 98 && u32_at(packet, 8) == ACTION_ANNOUNCE).then(|| AnnounceTarget {
        info_hash: InfoHash(bytes20_at(packet, 16)),
        port: u16_at(packet, 96),
        seeder: u64_at(packet, 64) == 0,
    })
}

/// Decodes one request datagram. Never panics, whatever the bytes.
pub fn decode(packet: &[u8]) -> Result<UdpRequest<'_>, UdpDecodeError> {
    if packet.len() < 16 {
        return Err(UdpDecodeError::Unanswerable);
    }
    let connection_id = u64_at(packet, 0);
    let action = u32_at(packet, 8);
    let transaction_id = u32_at(packet, 12);
    let malformed = |reason| UdpDecodeError::Malformed {
        transaction_id,
        reason,
    };
    match action {
        ACTION_CONNECT => {
            if connection_id != PROTOCOL_ID {
                return Err(malformed("invalid protocol id"));
            }
            Ok(UdpRequest::Connect { transaction_id })
        }
        ACTION_ANNOUNCE => {
            if packet.len() < 98 {
                return Err(malformed("announce too short"));
            }
            let event = match u32_at(packet, 80) {
                0 => AnnounceEvent::None,
                1 => AnnounceEvent::Completed,
                2 => AnnounceEvent::Started,
                3 => AnnounceEvent::Stopped,
                _ => return Err(malformed("invalid event")),
            };
            let port = u16_at(packet, 96);
            if port == 0 {
                return Err(malformed("invalid port: 0"));
            }
            let ip = u32_at(packet, 84);
            let num_want = u32_at(packet, 92) as i32;
            Ok(UdpRequest::Announce(UdpAnnounce {
                connection_id,
                transaction_id,
                info_hash: InfoHash(bytes20_at(packet, 16)),
                peer_id: PeerId(bytes20_at(packet, 36)),
                downloaded: u64_at(packet, 56),
                left: u64_at(packet, 64),
                uploaded: u64_at(packet, 72),
                event,
                ip: (ip != 0).then(|| Ipv4Addr::from(ip)),
                key: u32_at(packet, 88),
                num_want: u32::try_from(num_want).ok(),
                port,
                options: UrlOptions(&packet[98..]),
            }))
        }
        ACTION_SCRAPE => {
            let info_hashes = &packet[16..];
            if info_hashes.is_empty() {
                return Err(malformed("scrape without info hashes"));
            }
            if !info_hashes.len().is_multiple_of(20) {
                return Err(malformed("scrape info hashes must be 20 bytes each"));
            }
            Ok(UdpRequest::Scrape {
                connection_id,
                transaction_id,
                info_hashes,
            })
        }
        _ => Err(malformed("unknown action")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn announce_packet(options: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&7u64.to_be_bytes());
        p.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
        p.extend_from_slice(&99u32.to_be_bytes());
        p.extend_from_slice(&[1; 20]);
        p.extend_from_slice(&[2; 20]);
        p.extend_from_slice(&10u64.to_be_bytes());
        p.extend_from_slice(&20u64.to_be_bytes());
        p.extend_from_slice(&30u64.to_be_bytes());
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&0xABCDu32.to_be_bytes());
        p.extend_from_slice(&(-1i32).to_be_bytes());
        p.extend_from_slice(&6881u16.to_be_bytes());
        p.extend_from_slice(options);
        p
    }

    #[test]
    fn an_announce_is_decoded_field_by_field() {
        let p = announce_packet(&[]);
        let UdpRequest::Announce(a) = decode(&p).unwrap() else {
            panic!()
        };
        assert_eq!((a.connection_id, a.transaction_id), (7, 99));
        assert_eq!((a.downloaded, a.left, a.uploaded), (10, 20, 30));
        assert_eq!(a.event, AnnounceEvent::Started);
        assert_eq!(
            (a.ip, a.key, a.num_want, a.port),
            (None, 0xABCD, None, 6881)
        );
        assert_eq!(a.info_hash, InfoHash([1; 20]));
        let target = AnnounceTarget {
            info_hash: InfoHash([1; 20]),
            port: 6881,
            seeder: false,
        };
        assert_eq!(announce_target(&p), Some(target));
        assert_eq!(announce_target(&p[..97]), None);
    }

    #[test]
    fn url_data_is_joined_and_unknown_options_are_skipped() {
        let opts = [
            0x1, 0x2, 4, b'/', b'a', b'n', b'n', 0x7, 2, 9, 9, 0x2, 3, b'?', b'x', b'=', 0x0, 0x2,
            1, b'!',
        ];
        let p = announce_packet(&opts);
        let UdpRequest::Announce(a) = decode(&p).unwrap() else {
            panic!()
        };
        let mut url = Vec::new();
        a.options.url_into(&mut url);
        assert_eq!(url, b"/ann?x=");
    }

    #[test]
    fn a_truncated_option_ends_the_options() {
        let p = announce_packet(&[0x2, 200, b'/']);
        let UdpRequest::Announce(a) = decode(&p).unwrap() else {
            panic!()
        };
        assert_eq!(a.options.url_data().count(), 0);
    }

    #[test]
    fn connect_needs_the_protocol_id() {
        let mut p = PROTOCOL_ID.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(decode(&p), Ok(UdpRequest::Connect { transaction_id: 5 }));
        p[0] = 1;
        assert!(matches!(
            decode(&p),
            Err(UdpDecodeError::Malformed {
                transaction_id: 5,
                ..
            })
        ));
        assert_eq!(decode(&p[..15]), Err(UdpDecodeError::Unanswerable));
    }

    #[test]
    fn scrape_hashes_must_be_whole() {
        let mut p = 7u64.to_be_bytes().to_vec();
        p.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        assert!(decode(&p).is_err());
        p.extend_from_slice(&[3; 40]);
        let UdpRequest::Scrape { info_hashes, .. } = decode(&p).unwrap() else {
            panic!()
        };
        assert_eq!(scrape_hashes(info_hashes).count(), 2);
        p.push(0);
        assert!(decode(&p).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(UdpRequest::Announce(a)) = decode(&bytes) {
                let mut url = Vec::new();
                a.options.url_into(&mut url);
            }
        }

        #[test]
        fn arbitrary_options_never_panic(opts in proptest::collection::vec(any::<u8>(), 0..300)) {
            let p = announce_packet(&opts);
            let UdpRequest::Announce(a) = decode(&p).unwrap() else { panic!() };
            let total: usize = a.options.url_data().map(<[u8]>::len).sum();
            prop_assert!(total <= opts.len());
        }
    }
}
