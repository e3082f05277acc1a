//! BEP 15 datagrams and HTTP requests as a client writes them, and the little of the replies
//! the tool reads. Written independently of hayate's codecs, which are what is under test.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// The magic constant a connect request carries in its connection-id field.
pub const PROTOCOL_ID: u64 = 0x417_2710_1980;
pub const ACTION_CONNECT: u32 = 0;
pub const ACTION_ANNOUNCE: u32 = 1;
pub const ACTION_SCRAPE: u32 = 2;
pub const ACTION_ERROR: u32 = 3;
/// connection id, action, transaction id: the header of every request.
pub const REQUEST_HEADER_BYTES: usize = 16;
pub const ANNOUNCE_BYTES: usize = 98;
/// action, transaction id, interval, leechers, seeders: an announce reply before its peers.
pub const ANNOUNCE_REPLY_HEADER_BYTES: usize = 20;

pub fn connect_request(transaction_id: u32) -> [u8; 16] {
    request_header(PROTOCOL_ID, ACTION_CONNECT, transaction_id)
}

pub fn request_header(connection_id: u64, action: u32, transaction_id: u32) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[..8].copy_from_slice(&connection_id.to_be_bytes());
    packet[8..12].copy_from_slice(&action.to_be_bytes());
    packet[12..16].copy_from_slice(&transaction_id.to_be_bytes());
    packet
}

/// The fields of a BEP 15 announce that the tool varies.
#[derive(Clone, Copy, Debug)]
pub struct Announce {
    pub connection_id: u64,
    pub transaction_id: u32,
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub left: u64,
    /// -1: the tracker's default.
    pub num_want: i32,
    pub port: u16,
}

impl Announce {
    pub fn encode(&self) -> [u8; ANNOUNCE_BYTES] {
        let mut packet = [0u8; ANNOUNCE_BYTES];
        packet[..16].copy_from_slice(&request_header(
            self.connection_id,
            ACTION_ANNOUNCE,
            self.transaction_id,
        ));
        packet[16..36].copy_from_slice(&self.info_hash);
        packet[36..56].copy_from_slice(&self.peer_id);
        // downloaded (56..64) stays 0.
        packet[64..72].copy_from_slice(&self.left.to_be_bytes());
        // uploaded (72..80), event (80..84: none), ip (84..88: the source's) stay 0.
        packet[88..92].copy_from_slice(&fastrand::u32(..).to_be_bytes()); // key
        packet[92..96].copy_from_slice(&self.num_want.to_be_bytes());
        packet[96..98].copy_from_slice(&self.port.to_be_bytes());
        packet
    }
}

pub fn scrape_request(
    connection_id: u64,
    transaction_id: u32,
    info_hashes: &[[u8; 20]],
) -> Vec<u8> {
    let mut packet = request_header(connection_id, ACTION_SCRAPE, transaction_id).to_vec();
    info_hashes.iter().for_each(|h| packet.extend_from_slice(h));
    packet
}

pub fn random_info_hash() -> [u8; 20] {
    let mut hash = [0u8; 20];
    fastrand::fill(&mut hash);
    hash
}

/// An Azureus-style peer id: a client tag, then random digits.
pub fn peer_id(client_tag: &[u8; 8]) -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(client_tag);
    id[8..]
        .iter_mut()
        .for_each(|b| *b = fastrand::u8(b'0'..=b'9'));
    id
}

/// Action and transaction id of a reply; None when it is too short to carry them.
pub fn reply_header(datagram: &[u8]) -> Option<(u32, u32)> {
    (datagram.len() >= 8).then(|| (be32(datagram, 0), be32(datagram, 4)))
}

/// The connection id of a connect reply to `transaction_id`.
pub fn connect_reply_id(datagram: &[u8], transaction_id: u32) -> Option<u64> {
    (datagram.len() == 16 && reply_header(datagram) == Some((ACTION_CONNECT, transaction_id)))
        .then(|| u64::from_be_bytes(datagram[8..16].try_into().expect("16 bytes")))
}

pub fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(
        bytes[at..at + 4]
            .try_into()
            .expect("caller checked the length"),
    )
}

/// Percent-encodes every byte, as clients do for binary values.
pub fn percent_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// The query of an HTTP announce (BEP 3), compact peers.
pub fn http_announce_query(info_hash: &[u8; 20], peer_id: &[u8; 20], port: u16) -> String {
    format!(
        "/announce?info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left=100&compact=1",
        percent_encode(info_hash),
        percent_encode(peer_id),
    )
}

/// One `GET` request; `close` asks the server to close after answering.
pub fn http_get(target: &str, host: SocketAddr, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n\r\n")
}

/// The start of a `GET` request that never ends: request line and a Host header, without the
/// blank line that would complete it.
pub fn http_unfinished_get(target: &str, host: SocketAddr) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n")
}

/// Why reading an HTTP reply failed, short enough to count by kind.
pub type FailureKind = &'static str;

/// Names an I/O error as a failure kind.
pub fn io_failure(error: &io::Error) -> FailureKind {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "connection reset",
        io::ErrorKind::BrokenPipe => "broken pipe",
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "no complete reply in time",
        io::ErrorKind::UnexpectedEof => "closed before a complete reply",
        io::ErrorKind::AddrNotAvailable => "no local address or port free",
        _ => "other I/O error",
    }
}

/// Reads one complete HTTP response (status line, headers, `Content-Length` body) before
/// `deadline`; returns the status code and the body.
pub fn read_http_reply(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<(u16, Vec<u8>), FailureKind> {
    // /metrics is the largest reply read here, some tens of KiB.
    const MAX_REPLY_BYTES: usize = 1024 * 1024;
    let mut received = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or("no complete reply in time")?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| io_failure(&e))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err("closed before a complete reply"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failure(&e)),
        };
        received.extend_from_slice(&chunk[..n]);
        if received.len() > MAX_REPLY_BYTES {
            return Err("reply larger than 1 MiB");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&received) {
            Ok(httparse::Status::Complete(head_len)) => {
                let content_length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or("reply without a Content-Length")?;
                if received.len() >= head_len + content_length {
                    let status = response.code.unwrap_or(0);
                    return Ok((
                        status,
                        received[head_len..head_len + content_length].to_vec(),
                    ));
                }
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err("malformed HTTP reply"),
        }
    }
}
