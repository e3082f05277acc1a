//! Domain types shared by the codecs, the middleware and the store.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// SHA-1 info hash of a torrent (or a v2 SHA-256 hash truncated to 20 bytes, BEP 52).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

/// The 20-byte id a peer announces. Anyone can claim any id, so it is never a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub [u8; 20]);

macro_rules! hex_debug {
    ($t:ty) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for byte in self.0 {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    };
}
hex_debug!(InfoHash);
hex_debug!(PeerId);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceEvent {
    /// A regular re-announce (empty or absent `event`).
    None,
    Started,
    Stopped,
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Udp,
}

/// An announce, as decoded from either protocol and then resolved to the peer's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    /// The address the peer is stored under: the client's, or the one it announced if config
    /// allows that.
    pub peer_ip: IpAddr,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: AnnounceEvent,
    /// Peers wanted; `None` means the configured default.
    pub numwant: Option<u32>,
    pub key: Option<u32>,
}

impl AnnounceRequest {
    pub fn is_seeder(&self) -> bool {
        self.left == 0
    }
}

/// A peer as it goes out in a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponsePeer {
    pub addr: SocketAddr,
    pub peer_id: PeerId,
}

/// What the store and the post-hooks produce for one announce; encoded by the protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnounceResponse {
    pub interval: u32,
    pub min_interval: u32,
    /// Seeders of the whole swarm (both address families), the announcing peer included.
    pub complete: u32,
    /// Leechers of the whole swarm, the announcing peer included.
    pub incomplete: u32,
    /// Completed downloads of the torrent (HTTP replies carry it, as opentracker's do;
    /// Transmission shows it, and "-1" without it).
    pub downloaded: u32,
    /// Peers of the announcing peer's own address family come first.
    pub peers: Vec<ResponsePeer>,
}

impl AnnounceResponse {
    pub fn clear(&mut self) {
        self.interval = 0;
        self.min_interval = 0;
        self.complete = 0;
        self.incomplete = 0;
        self.downloaded = 0;
        self.peers.clear();
    }
}

/// Per-torrent counts for scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    pub complete: u32,
    pub incomplete: u32,
    /// Completed downloads seen (one per peer that sent `completed`).
    pub downloaded: u64,
}

/// A reason that is safe to show the client (HTTP `failure reason`, UDP error message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError(pub Cow<'static, str>);

impl ClientError {
    pub const fn new(reason: &'static str) -> Self {
        ClientError(Cow::Borrowed(reason))
    }

    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) to IPv4, so one peer has one key.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}
