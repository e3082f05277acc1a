//! Test helpers: start hayate in-process on ephemeral loopback ports, talk to it over UDP and
//! HTTP as clients do, decode what it says with an independent bencode decoder.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use bt_bencode::{ByteString, Value};
use hayate::clock::Clock;
use hayate::config::{Config, EngineKind};
use hayate::middleware::Middleware;
use hayate::server::{self, RunningServer};

pub mod redis;

pub const NOW: u32 = 1_800_000_000;
pub const SECRET: &str = "00112233445566778899aabbccddeeff";

/// The engines every integration test runs against.
pub fn engines() -> Vec<EngineKind> {
    vec![EngineKind::Epoll, EngineKind::IoUring]
}

/// A config bound to 127.0.0.1:0 and [::1]:0 for both protocols.
pub fn test_config(engine: EngineKind) -> Config {
    let mut config = Config {
        workers: 2,
        engine,
        ..Config::default()
    };
    let loopback: Vec<SocketAddr> =
        vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    config.udp.bind = loopback.clone();
    config.http.bind = loopback;
    config.udp.socket_recv_buffer_bytes = 0;
    config.udp.connection_id_secret = SECRET.into();
    config.metrics.bind = "127.0.0.1:0".parse().unwrap();
    config.log.level = "warn".into();
    config
}

pub struct TestServer {
    pub server: RunningServer,
    pub clock: Clock,
}

impl TestServer {
    /// Hooks from the config.
    pub fn start(config: Config) -> TestServer {
        let clock = Clock::stopped(NOW);
        let hooks = Middleware::from_config(&config.prehooks, &config.posthooks, &clock)
            .expect("hooks build");
        Self::start_with_clock(config, hooks, clock)
    }

    /// These hooks instead of the config's.
    pub fn start_with(config: Config, middleware: Middleware) -> TestServer {
        Self::start_with_clock(config, middleware, Clock::stopped(NOW))
    }

    fn start_with_clock(config: Config, middleware: Middleware, clock: Clock) -> TestServer {
        hayate::logging::init(&config.log);
        let server = server::start(&config, clock.clone(), middleware).expect("server starts");
        TestServer { server, clock }
    }

    pub fn udp(&self, ipv6: bool) -> SocketAddr {
        *self
            .server
            .udp_addrs()
            .iter()
            .find(|a| a.is_ipv6() == ipv6)
            .expect("bound")
    }

    pub fn http(&self, ipv6: bool) -> SocketAddr {
        *self
            .server
            .http_addrs()
            .iter()
            .find(|a| a.is_ipv6() == ipv6)
            .expect("bound")
    }
}

pub fn hash(n: u8) -> [u8; 20] {
    [n; 20]
}

pub fn peer_id(n: u8) -> [u8; 20] {
    let mut id = *b"-HY0001-000000000000";
    id[19] = n;
    id
}

/// Percent-encodes every byte, as clients do for binary values.
pub fn urlencode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

// ---- UDP -------------------------------------------------------------------------------

pub struct UdpClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
}

pub const ACTION_ERROR: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpReply {
    Connect {
        transaction_id: u32,
        connection_id: u64,
    },
    Announce {
        transaction_id: u32,
        interval: u32,
        leechers: u32,
        seeders: u32,
        peers: Vec<SocketAddr>,
    },
    Scrape {
        transaction_id: u32,
        stats: Vec<(u32, u32, u32)>,
    },
    Error {
        transaction_id: u32,
        message: String,
    },
}

impl UdpClient {
    pub fn new(server: SocketAddr) -> Self {
        let local = if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        Self::bound(local, server)
    }

    pub fn bound(local: &str, server: SocketAddr) -> Self {
        let socket = UdpSocket::bind(local).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        UdpClient { socket, server }
    }

    pub fn send(&self, packet: &[u8]) {
        self.socket.send_to(packet, self.server).unwrap();
    }

    /// The next datagram, or None after `wait`.
    pub fn recv_raw(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => return Some(buf[..n].to_vec()),
                // A receive with a timeout is not restarted after an interruption (io_uring
                // task work on this thread can cause one): wait for the rest of the time.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }

    pub fn recv(&self) -> UdpReply {
        // Generous: a debug build verifying signatures while other tests load both cores can
        // take seconds, and the wait only runs out when the test fails anyway.
        let raw = self.recv_raw(Duration::from_secs(10)).expect("a reply");
        parse_udp_reply(&raw, self.server.is_ipv6())
    }

    /// Sends `packet` and returns the raw reply.
    pub fn request_raw(&self, packet: &[u8]) -> Vec<u8> {
        self.send(packet);
        self.recv_raw(Duration::from_secs(10)).expect("a reply")
    }

    pub fn request(&self, packet: &[u8]) -> UdpReply {
        self.send(packet);
        self.recv()
    }

    pub fn connect(&self) -> u64 {
        match self.request(&connect_packet(11)) {
            UdpReply::Connect {
                transaction_id: 11,
                connection_id,
            } => connection_id,
            other => panic!("unexpected reply to connect: {other:?}"),
        }
    }
}

pub fn connect_packet(transaction_id: u32) -> Vec<u8> {
    let mut p = 0x417_2710_1980u64.to_be_bytes().to_vec();
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&transaction_id.to_be_bytes());
    p
}

pub struct UdpAnnounce {
    pub connection_id: u64,
    pub transaction_id: u32,
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub left: u64,
    pub event: u32,
    pub ip: u32,
    pub num_want: i32,
    pub port: u16,
    pub options: Vec<u8>,
}

impl UdpAnnounce {
    pub fn new(connection_id: u64, info_hash: [u8; 20], port: u16) -> Self {
        UdpAnnounce {
            connection_id,
            transaction_id: 22,
            info_hash,
            peer_id: peer_id(port as u8),
            left: 100,
            event: 0,
            ip: 0,
            num_want: -1,
            port,
            options: Vec::new(),
        }
    }

    pub fn packet(&self) -> Vec<u8> {
        let mut p = self.connection_id.to_be_bytes().to_vec();
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&self.transaction_id.to_be_bytes());
        p.extend_from_slice(&self.info_hash);
        p.extend_from_slice(&self.peer_id);
        p.extend_from_slice(&0u64.to_be_bytes());
        p.extend_from_slice(&self.left.to_be_bytes());
        p.extend_from_slice(&0u64.to_be_bytes());
        p.extend_from_slice(&self.event.to_be_bytes());
        p.extend_from_slice(&self.ip.to_be_bytes());
        p.extend_from_slice(&0x1234u32.to_be_bytes());
        p.extend_from_slice(&self.num_want.to_be_bytes());
        p.extend_from_slice(&self.port.to_be_bytes());
        p.extend_from_slice(&self.options);
        p
    }
}

pub fn scrape_packet(connection_id: u64, transaction_id: u32, hashes: &[[u8; 20]]) -> Vec<u8> {
    let mut p = connection_id.to_be_bytes().to_vec();
    p.extend_from_slice(&2u32.to_be_bytes());
    p.extend_from_slice(&transaction_id.to_be_bytes());
    hashes.iter().for_each(|h| p.extend_from_slice(h));
    p
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn parse_udp_reply(raw: &[u8], ipv6: bool) -> UdpReply {
    assert!(raw.len() >= 8, "reply too short: {raw:?}");
    let transaction_id = be32(raw, 4);
    match be32(raw, 0) {
        0 => UdpReply::Connect {
            transaction_id,
            connection_id: u64::from_be_bytes(raw[8..16].try_into().unwrap()),
        },
        1 => {
            let size = if ipv6 { 18 } else { 6 };
            assert_eq!(
                (raw.len() - 20) % size,
                0,
                "peer list of whole {size}-byte peers"
            );
            let peers = raw[20..]
                .chunks(size)
                .map(|c| {
                    let port = u16::from_be_bytes([c[size - 2], c[size - 1]]);
                    let ip: std::net::IpAddr = if ipv6 {
                        <[u8; 16]>::try_from(&c[..16]).unwrap().into()
                    } else {
                        <[u8; 4]>::try_from(&c[..4]).unwrap().into()
                    };
                    SocketAddr::new(ip, port)
                })
                .collect();
            UdpReply::Announce {
                transaction_id,
                interval: be32(raw, 8),
                leechers: be32(raw, 12),
                seeders: be32(raw, 16),
                peers,
            }
        }
        2 => UdpReply::Scrape {
            transaction_id,
            stats: raw[8..]
                .chunks(12)
                .map(|c| (be32(c, 0), be32(c, 4), be32(c, 8)))
                .collect(),
        },
        3 => UdpReply::Error {
            transaction_id,
            message: String::from_utf8_lossy(&raw[8..]).into_owned(),
        },
        other => panic!("unknown action {other}"),
    }
}

// ---- HTTP ------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as a bencoded dictionary.
    pub fn dict(&self) -> Dict {
        Dict(match bt_bencode::from_slice::<Value>(&self.body) {
            Ok(Value::Dict(d)) => d,
            other => panic!(
                "body is not a bencoded dictionary: {other:?} {:?}",
                String::from_utf8_lossy(&self.body)
            ),
        })
    }

    pub fn failure(&self) -> Option<String> {
        self.dict().str("failure reason")
    }
}

#[derive(Debug, Clone)]
pub struct Dict(pub BTreeMap<ByteString, Value>);

impl Dict {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(&ByteString::from(key.as_bytes().to_vec()))
    }
    pub fn int(&self, key: &str) -> i64 {
        self.get(key)
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_u64().and_then(|u| i64::try_from(u).ok()))
            })
            .unwrap_or_else(|| panic!("no integer {key} in {self:?}"))
    }
    pub fn bytes(&self, key: &str) -> Vec<u8> {
        self.get(key)
            .and_then(Value::as_byte_str)
            .map(|b| b.to_vec())
            .unwrap_or_else(|| panic!("no bytes {key} in {self:?}"))
    }
    pub fn str(&self, key: &str) -> Option<String> {
        self.get(key).and_then(Value::as_str).map(str::to_string)
    }
    pub fn dict(&self, key: &str) -> Dict {
        match self.get(key) {
            Some(Value::Dict(d)) => Dict(d.clone()),
            other => panic!("no dict {key}: {other:?}"),
        }
    }
    pub fn dict_bytes_key(&self, key: &[u8]) -> Dict {
        match self.0.get(&ByteString::from(key.to_vec())) {
            Some(Value::Dict(d)) => Dict(d.clone()),
            other => panic!("no dict for key: {other:?}"),
        }
    }
    pub fn list(&self, key: &str) -> Vec<Value> {
        self.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("no list {key}"))
    }
}

/// Compact peers of 6 or 18 bytes.
pub fn compact_peers(bytes: &[u8], ipv6: bool) -> Vec<SocketAddr> {
    parse_udp_reply(
        &[&[0, 0, 0, 1, 0, 0, 0, 0][..], &[0; 12], bytes].concat(),
        ipv6,
    )
    .peers()
}

impl UdpReply {
    pub fn peers(&self) -> Vec<SocketAddr> {
        match self {
            UdpReply::Announce { peers, .. } => peers.clone(),
            other => panic!("not an announce reply: {other:?}"),
        }
    }
}

/// Sends raw bytes on a new connection and reads until the server closes it.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// One `read`, retried when interrupted: a read with a timeout is not restarted after an
/// interruption (io_uring task work on the test's thread can cause one), and taking it for
/// "closed" would let a test pass for the wrong reason.
pub fn read_some(stream: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// One GET with `Connection: close`.
pub fn http_get(addr: SocketAddr, target: &str) -> HttpReply {
    let raw = http_raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut replies = parse_http_replies(&raw);
    assert_eq!(
        replies.len(),
        1,
        "one reply expected: {:?}",
        String::from_utf8_lossy(&raw)
    );
    replies.remove(0)
}

/// Splits a byte stream into HTTP responses (Content-Length framed).
pub fn parse_http_replies(mut raw: &[u8]) -> Vec<HttpReply> {
    let mut replies = Vec::new();
    while !raw.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(raw).expect("valid HTTP response") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => {
                panic!("partial response: {:?}", String::from_utf8_lossy(raw))
            }
        };
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .expect("Content-Length");
        let status = response.code.unwrap();
        replies.push(HttpReply {
            status,
            headers,
            body: raw[head_len..head_len + length].to_vec(),
        });
        raw = &raw[head_len + length..];
    }
    replies
}

/// `/announce?...` for the given peer.
pub fn announce_target(info_hash: [u8; 20], peer: u8, port: u16, left: u64, extra: &str) -> String {
    format!(
        "/announce?info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left={left}{extra}",
        urlencode(&info_hash),
        urlencode(&peer_id(peer)),
    )
}

/// Fails unless `promtool check metrics` (Debian package prometheus) accepts `text`.
pub fn promtool_check(text: &str) {
    use std::process::{Command, Stdio};
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
