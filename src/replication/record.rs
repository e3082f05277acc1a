//! The replication record: one batch of swarm changes from one node, as one Redis stream entry.
//! A pure codec (no I/O, no clock): what other programs may have written in our keys goes
//! through [`decode`], which never panics and refuses what it cannot read.
//!
//! ```text
//! batch  := "HYR1" origin:u64 created_ms:u64 ttl_secs:u32 count:u32 change*count
//! change := 1 info_hash:20 ipv4:4  port:u16 peer_id:20 flags:u8    an IPv4 peer announced
//!         | 2 info_hash:20 ipv6:16 port:u16 peer_id:20 flags:u8    an IPv6 peer announced
//!         | 3 info_hash:20 ipv4:4  port:u16                        an IPv4 peer stopped
//!         | 4 info_hash:20 ipv6:16 port:u16                        an IPv6 peer stopped
//! flags  := bit 0 seeder, bit 1 completed (its first `completed`, counted by its origin)
//! ```
//!
//! Integers are big-endian. `origin` names the node (a hash of its `node_id`), so nodes skip
//! their own batches; `created_ms` is when the batch was formed (UNIX milliseconds at the
//! origin), for the replication lag; `ttl_secs` is how long a receiver keeps an announced peer
//! from the batch's time on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::bittorrent::{InfoHash, PeerId};

const MAGIC: &[u8; 4] = b"HYR1";
const HEADER_BYTES: usize = 4 + 8 + 8 + 4 + 4;
const ANNOUNCED_V4: u8 = 1;
const ANNOUNCED_V6: u8 = 2;
const REMOVED_V4: u8 = 3;
const REMOVED_V6: u8 = 4;
const SEEDER: u8 = 1;
const COMPLETED: u8 = 2;

/// The largest change (an IPv6 announce), for sizing buffers.
pub const MAX_CHANGE_BYTES: usize = 1 + 20 + 16 + 2 + 20 + 1;

/// One swarm change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Announced {
        info_hash: InfoHash,
        peer: SocketAddr,
        peer_id: PeerId,
        seeder: bool,
        /// The peer's first `completed`: receivers count the download.
        completed: bool,
    },
    Removed {
        info_hash: InfoHash,
        peer: SocketAddr,
    },
}

impl Change {
    pub fn info_hash(&self) -> &InfoHash {
        match self {
            Change::Announced { info_hash, .. } | Change::Removed { info_hash, .. } => info_hash,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        match self {
            Change::Announced { peer, .. } | Change::Removed { peer, .. } => *peer,
        }
    }
}

/// A batch's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub origin: u64,
    pub created_ms: u64,
    pub ttl_secs: u32,
    pub count: u32,
}

/// Writes one batch into a buffer that is reused from batch to batch.
pub struct BatchWriter {
    buf: Vec<u8>,
    count: u32,
}

impl BatchWriter {
    pub fn new() -> Self {
        BatchWriter {
            buf: Vec::new(),
            count: 0,
        }
    }

    /// Starts a new batch (what the last one held is dropped).
    pub fn start(&mut self, origin: u64, created_ms: u64, ttl_secs: u32) {
        self.buf.clear();
        self.count = 0;
        self.buf.extend_from_slice(MAGIC);
        self.buf.extend_from_slice(&origin.to_be_bytes());
        self.buf.extend_from_slice(&created_ms.to_be_bytes());
        self.buf.extend_from_slice(&ttl_secs.to_be_bytes());
        self.buf.extend_from_slice(&0u32.to_be_bytes());
    }

    pub fn push(&mut self, change: &Change) {
        let (tag_v4, tag_v6) = match change {
            Change::Announced { .. } => (ANNOUNCED_V4, ANNOUNCED_V6),
            Change::Removed { .. } => (REMOVED_V4, REMOVED_V6),
        };
        let peer = change.peer();
        self.buf.push(if peer.is_ipv4() { tag_v4 } else { tag_v6 });
        self.buf.extend_from_slice(&change.info_hash().0);
        match peer.ip() {
            IpAddr::V4(ip) => self.buf.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => self.buf.extend_from_slice(&ip.octets()),
        }
        self.buf.extend_from_slice(&peer.port().to_be_bytes());
        if let Change::Announced {
            peer_id,
            seeder,
            completed,
            ..
        } = change
        {
            self.buf.extend_from_slice(&peer_id.0);
            let flags = if *seeder { SEEDER } else { 0 } | if *completed { COMPLETED } else { 0 };
            self.buf.push(flags);
        }
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The batch, its count filled in.
    pub fn finish(&mut self) -> &[u8] {
        self.buf[HEADER_BYTES - 4..HEADER_BYTES].copy_from_slice(&self.count.to_be_bytes());
        &self.buf
    }
}

impl Default for BatchWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// Why bytes are not a batch (someone else's data in our keys, or a truncated record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    NotABatch,
    Truncated,
    UnknownChange(u8),
    UnknownFlags(u8),
    /// More or fewer changes than the header says.
    WrongCount,
}

/// A batch's header alone: enough for a node to skip its own batches without reading them.
pub fn decode_header(bytes: &[u8]) -> Result<BatchHeader, RecordError> {
    if bytes.len() < HEADER_BYTES || &bytes[..4] != MAGIC {
        return Err(RecordError::NotABatch);
    }
    let mut r = Reader(&bytes[4..]);
    Ok(BatchHeader {
        origin: r.u64()?,
        created_ms: r.u64()?,
        ttl_secs: r.u32()?,
        count: r.u32()?,
    })
}

/// Reads a batch: its header, and its changes, all checked before any is returned (a batch is
/// applied whole or not at all).
pub fn decode(bytes: &[u8], changes: &mut Vec<Change>) -> Result<BatchHeader, RecordError> {
    changes.clear();
    let header = decode_header(bytes)?;
    let mut r = Reader(&bytes[HEADER_BYTES..]);
    while !r.0.is_empty() {
        if changes.len() >= header.count as usize {
            changes.clear();
            return Err(RecordError::WrongCount);
        }
        let change = match r.read_change() {
            Ok(change) => change,
            Err(e) => {
                changes.clear();
                return Err(e);
            }
        };
        changes.push(change);
    }
    if changes.len() != header.count as usize {
        changes.clear();
        return Err(RecordError::WrongCount);
    }
    Ok(header)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(RecordError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        self.take().map(u64::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        self.take().map(u32::from_be_bytes)
    }

    fn read_change(&mut self) -> Result<Change, RecordError> {
        let [tag] = self.take()?;
        let info_hash = InfoHash(self.take()?);
        let ip = match tag {
            ANNOUNCED_V4 | REMOVED_V4 => IpAddr::V4(Ipv4Addr::from(self.take::<4>()?)),
            ANNOUNCED_V6 | REMOVED_V6 => IpAddr::V6(Ipv6Addr::from(self.take::<16>()?)),
            other => return Err(RecordError::UnknownChange(other)),
        };
        let peer = SocketAddr::new(ip, u16::from_be_bytes(self.take()?));
        Ok(match tag {
            ANNOUNCED_V4 | ANNOUNCED_V6 => {
                let peer_id = PeerId(self.take()?);
                let [flags] = self.take()?;
                // Strict: one encoding per batch, so what a node decodes is what was meant.
                if flags & !(SEEDER | COMPLETED) != 0 {
                    return Err(RecordError::UnknownFlags(flags));
                }
                Change::Announced {
                    info_hash,
                    peer,
                    peer_id,
                    seeder: flags & SEEDER != 0,
                    completed: flags & COMPLETED != 0,
                }
            }
            _ => Change::Removed { info_hash, peer },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes() -> Vec<Change> {
        vec![
            Change::Announced {
                info_hash: InfoHash([1; 20]),
                peer: "10.1.2.3:6881".parse().unwrap(),
                peer_id: PeerId([7; 20]),
                seeder: true,
                completed: false,
            },
            Change::Announced {
                info_hash: InfoHash([2; 20]),
                peer: "[2001:db8::5]:51413".parse().unwrap(),
                peer_id: PeerId([8; 20]),
                seeder: false,
                completed: true,
            },
            Change::Removed {
                info_hash: InfoHash([3; 20]),
                peer: "10.9.9.9:1".parse().unwrap(),
            },
            Change::Removed {
                info_hash: InfoHash([4; 20]),
                peer: "[::1]:2".parse().unwrap(),
            },
        ]
    }

    fn batch() -> Vec<u8> {
        let mut w = BatchWriter::new();
        w.start(42, 1_700_000_000_123, 3375);
        changes().iter().for_each(|c| w.push(c));
        w.finish().to_vec()
    }

    #[test]
    fn a_batch_decodes_to_what_was_written() {
        let mut out = Vec::new();
        let header = decode(&batch(), &mut out).unwrap();
        assert_eq!(
            header,
            BatchHeader {
                origin: 42,
                created_ms: 1_700_000_000_123,
                ttl_secs: 3375,
                count: 4
            }
        );
        assert_eq!(out, changes());
        // A writer is reused: the next batch holds only its own changes.
        let mut w = BatchWriter::new();
        w.start(1, 2, 3);
        w.push(&changes()[0]);
        w.start(1, 2, 3);
        w.push(&changes()[2]);
        decode(w.finish(), &mut out).unwrap();
        assert_eq!(out, [changes()[2]]);
    }

    #[test]
    fn what_is_not_a_whole_batch_is_refused_whole() {
        let good = batch();
        let mut out = Vec::new();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], &mut out).is_err(), "cut at {cut}");
            assert!(out.is_empty());
        }
        let mut wrong_count = good.clone();
        wrong_count[HEADER_BYTES - 1] = 3;
        assert_eq!(decode(&wrong_count, &mut out), Err(RecordError::WrongCount));
        let mut bad_flags = good.clone();
        // The first change's flags: after the header, tag, hash, IPv4, port and peer id.
        bad_flags[HEADER_BYTES + 1 + 20 + 4 + 2 + 20] |= 0x80;
        assert_eq!(
            decode(&bad_flags, &mut out),
            Err(RecordError::UnknownFlags(0x81))
        );
        let mut bad_tag = good.clone();
        bad_tag[HEADER_BYTES] = 9;
        assert_eq!(
            decode(&bad_tag, &mut out),
            Err(RecordError::UnknownChange(9))
        );
        assert_eq!(
            decode(b"{\"some\": \"json\"}", &mut out),
            Err(RecordError::NotABatch)
        );
        assert!(out.is_empty());
    }
}
