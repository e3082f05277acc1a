//! The fuzz targets' bodies: every decoder of outside bytes, each with the properties it must
//! keep beyond not crashing. The AFL binaries in `targets/` call these; `tests/replay.rs` runs
//! every seed and every past finding through them in plain `cargo test`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hayate::bittorrent::{AnnounceEvent, AnnounceRequest, InfoHash, PeerId, Protocol};
use hayate::clock::Clock;
use hayate::config::Config;
use hayate::handler::{ConnectionRules, HttpConnection, HttpHandler, Tracker, UdpHandler};
use hayate::middleware::{Jwt, JwtConfig, Middleware, PreHook, RequestContext, usable_keys_in_set};
use hayate::protocol::http::forwarded;
use hayate::protocol::http::{HttpAnnounce, HttpRequest, decode_target};
use hayate::protocol::udp::{UdpRequest, decode};
use hayate::replication::record::{self, BatchWriter};
use hayate::swarm::{SwarmLimits, SwarmStore};

/// The clock the targets' trackers stand at.
pub const NOW: u32 = 1_800_000_000;
const SECRET: &str = "00112233445566778899aabbccddeeff";

fn tracker() -> Arc<Tracker> {
    static TRACKER: OnceLock<Arc<Tracker>> = OnceLock::new();
    TRACKER
        .get_or_init(|| {
            let mut config = Config::default();
            config.udp.connection_id_secret = SECRET.into();
            config.workers = 1;
            let limits = SwarmLimits {
                max_torrents: 10_000,
                max_peers_per_torrent: 1000,
                peer_lifetime_secs: 3600,
            };
            let store = Arc::new(SwarmStore::new(16, limits, Clock::stopped(NOW)));
            Arc::new(Tracker::new(&config, store, Middleware::default()).expect("tracker"))
        })
        .clone()
}

// ---- UDP ---------------------------------------------------------------------------------

const CLIENTS: [&str; 2] = ["198.51.100.7:6881", "[2001:db8::7]:6881"];

/// BEP 15 and 41 requests: decoding, re-encoding, and the whole handler.
///
/// The first byte picks the client (bit 0) and, with bit 1, puts a connection id valid for
/// that client in front of the rest, so the fuzzer reaches announces and scrapes too (it
/// cannot forge the MAC).
pub fn udp_request(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let client: SocketAddr = CLIENTS[usize::from(control & 1)].parse().expect("address");
    let shared = tracker();
    let mut packet = Vec::with_capacity(rest.len() + 8);
    if control & 2 != 0 {
        let id = shared.connection_ids.issue(NOW, client.ip());
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(rest.get(8..).unwrap_or(&[]));
    } else {
        packet.extend_from_slice(rest);
    }
    // A decoded request encodes to bytes that decode to the same request.
    if let Ok(request) = decode(&packet) {
        let encoded = encode_udp(&request);
        assert_eq!(
            decode(&encoded).ok(),
            Some(request),
            "re-encoded differently"
        );
    }
    thread_local! {
        static HANDLER: std::cell::RefCell<UdpHandler> =
            std::cell::RefCell::new(UdpHandler::new(tracker(), Arc::default()));
    }
    let mut out = Vec::new();
    HANDLER.with(|h| h.borrow_mut().handle(&packet, client, &mut out));
    // One datagram: at most 74 IPv6 peers after the 20-byte header (max_numwant).
    assert!(out.len() <= 20 + 18 * 74, "a reply of {} bytes", out.len());
    let is_error = out.get(..4) == Some(&3u32.to_be_bytes()[..]);
    if is_error && out.len() > packet.len() {
        // Only a source that proved its address (a valid connection id) may get more back.
        let id = u64::from_be_bytes(packet[..8].try_into().expect("8 bytes"));
        assert!(
            shared.connection_ids.is_valid(id, NOW, client.ip()),
            "an error of {} bytes to an unproven request of {}",
            out.len(),
            packet.len()
        );
    }
}

/// A request as a client would send it.
pub fn encode_udp(request: &UdpRequest<'_>) -> Vec<u8> {
    let mut p = Vec::new();
    match request {
        UdpRequest::Connect { transaction_id } => {
            p.extend_from_slice(&0x417_2710_1980u64.to_be_bytes());
            p.extend_from_slice(&0u32.to_be_bytes());
            p.extend_from_slice(&transaction_id.to_be_bytes());
        }
        UdpRequest::Announce(a) => {
            p.extend_from_slice(&a.connection_id.to_be_bytes());
            p.extend_from_slice(&1u32.to_be_bytes());
            p.extend_from_slice(&a.transaction_id.to_be_bytes());
            p.extend_from_slice(&a.info_hash.0);
            p.extend_from_slice(&a.peer_id.0);
            p.extend_from_slice(&a.downloaded.to_be_bytes());
            p.extend_from_slice(&a.left.to_be_bytes());
            p.extend_from_slice(&a.uploaded.to_be_bytes());
            let event: u32 = match a.event {
                AnnounceEvent::None => 0,
                AnnounceEvent::Completed => 1,
                AnnounceEvent::Started => 2,
                AnnounceEvent::Stopped => 3,
            };
            p.extend_from_slice(&event.to_be_bytes());
            p.extend_from_slice(&a.ip.map_or(0, u32::from).to_be_bytes());
            p.extend_from_slice(&a.key.to_be_bytes());
            let num_want = a.num_want.map_or(-1, |n| n as i32);
            p.extend_from_slice(&num_want.to_be_bytes());
            p.extend_from_slice(&a.port.to_be_bytes());
            p.extend_from_slice(a.options.0);
        }
        UdpRequest::Scrape {
            connection_id,
            transaction_id,
            info_hashes,
        } => {
            p.extend_from_slice(&connection_id.to_be_bytes());
            p.extend_from_slice(&2u32.to_be_bytes());
            p.extend_from_slice(&transaction_id.to_be_bytes());
            p.extend_from_slice(info_hashes);
        }
    }
    p
}

// ---- HTTP ----------------------------------------------------------------------------------

/// The request target (announce and scrape queries) and the forwarding header.
///
/// The input is the target; after a newline, forwarding header values, one a line.
pub fn http_request(data: &[u8]) {
    let (target, header) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let mut hashes = Vec::new();
    match decode_target(target, &mut hashes, 64) {
        Ok(HttpRequest::Announce(a)) => {
            // An announce encodes to a query that decodes to the same announce.
            let query = encode_announce(&a);
            let again = decode_target(query.as_bytes(), &mut Vec::new(), 64);
            assert_eq!(again, Ok(HttpRequest::Announce(a)), "{query}");
        }
        Ok(HttpRequest::Scrape) => {
            assert!((1..=64).contains(&hashes.len()));
            let query: String = std::iter::once("/scrape?".to_string())
                .chain(
                    hashes
                        .iter()
                        .map(|h| format!("info_hash={}&", escape(&h.0))),
                )
                .collect();
            let mut again = Vec::new();
            assert_eq!(
                decode_target(query.as_bytes(), &mut again, 64),
                Ok(HttpRequest::Scrape)
            );
            assert_eq!(again, hashes);
        }
        Ok(HttpRequest::NotFound) | Err(_) => {}
    }
    let trusted = [
        "10.0.0.0/8".parse().expect("net"),
        "::1/128".parse().expect("net"),
    ];
    let values = header.split(|&b| b == b'\n');
    let socket: std::net::IpAddr = "10.1.2.3".parse().expect("address");
    if let Ok(ip) = forwarded::client_ip(socket, values, &trusted) {
        // The client is never a trusted proxy, unless every hop was one.
        let _ = ip;
    }
}

fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// An announce as a client would write it.
pub fn encode_announce(a: &HttpAnnounce) -> String {
    let mut q = format!(
        "/announce?info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact={}&no_peer_id={}",
        escape(&a.info_hash.0),
        escape(&a.peer_id.0),
        a.port,
        a.uploaded,
        a.downloaded,
        a.left,
        u8::from(a.compact),
        u8::from(a.no_peer_id),
    );
    q.push_str(match a.event {
        AnnounceEvent::None => "&event=empty",
        AnnounceEvent::Started => "&event=started",
        AnnounceEvent::Stopped => "&event=stopped",
        AnnounceEvent::Completed => "&event=completed",
    });
    if let Some(n) = a.numwant {
        q.push_str(&format!("&numwant={n}"));
    }
    if let Some(key) = a.key {
        q.push_str(&format!("&key={key:08x}"));
    }
    if let Some(ip) = a.ip {
        q.push_str(&format!("&ip={}", escape(ip.to_string().as_bytes())));
    }
    if let Some(ip) = a.ipv4 {
        q.push_str(&format!("&ipv4={ip}"));
    }
    if let Some(ip) = a.ipv6 {
        q.push_str(&format!("&ipv6={}", escape(ip.to_string().as_bytes())));
    }
    q
}

const RULES: ConnectionRules = ConnectionRules {
    max_request_bytes: 1024,
    keep_alive: true,
};

/// One HTTP connection fed an arbitrary byte stream split at arbitrary points, with the
/// socket taking arbitrary parts of the output: its buffers stay within their bounds, it
/// stops wanting input while answers wait unread, and what it writes is a sequence of whole
/// HTTP responses.
///
/// The input is a list of steps: a step byte, then for a feed step that many bytes of input.
/// Step byte `n`: below 0xC0, feed the next `n` bytes (or what is left); 0xC0-0xEF, the socket
/// takes `n - 0xBF` hundred bytes of output; 0xF0 and above, the engine moves all output out.
pub fn http_connection(mut data: &[u8]) {
    thread_local! {
        static HANDLER: std::cell::RefCell<HttpHandler> =
            std::cell::RefCell::new(HttpHandler::new(tracker(), Arc::default()));
    }
    let peer: SocketAddr = "[2001:db8::9]:5000".parse().expect("address");
    let mut conn = HttpConnection::new(peer, RULES);
    let mut written = Vec::new();
    let mut moved = Vec::new();
    HANDLER.with(|handler| {
        let mut handler = handler.borrow_mut();
        while let Some((&step, rest)) = data.split_first() {
            data = rest;
            match step {
                0..0xC0 => {
                    let n = usize::from(step).min(data.len());
                    let (chunk, rest) = data.split_at(n);
                    data = rest;
                    conn.received(chunk, &mut handler);
                }
                0xC0..0xF0 => {
                    let n = (usize::from(step - 0xBF) * 100).min(conn.pending_output().len());
                    written.extend_from_slice(&conn.pending_output()[..n]);
                    conn.wrote(n);
                    if conn.has_unprocessed_input() && conn.pending_output().is_empty() {
                        conn.process(&mut handler);
                    }
                }
                _ => {
                    conn.take_output(&mut moved);
                    written.extend_from_slice(&moved);
                    if conn.has_unprocessed_input() {
                        conn.process(&mut handler);
                    }
                }
            }
            // Unanswered input, a request's worth plus what may arrive before reading
            // stops, and unsent output, 32 KiB plus the answer that crossed it.
            assert!(
                conn.buffered_bytes()
                    <= RULES.max_request_bytes + 64 * 1024 + 0xC0 + 32 * 1024 + 8192,
                "{} bytes held",
                conn.buffered_bytes()
            );
        }
    });
    written.extend_from_slice(conn.pending_output());
    assert_whole_responses(&written);
}

/// `stream` is whole HTTP/1.1 responses, each framed by its Content-Length.
fn assert_whole_responses(mut stream: &[u8]) {
    while !stream.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(stream) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("not a response: {other:?}"),
        };
        assert!(
            matches!(response.code, Some(200 | 400 | 404 | 405 | 431)),
            "status {:?}",
            response.code
        );
        let length: usize = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
            .expect("Content-Length");
        assert!(stream.len() >= head + length, "a response cut short");
        stream = &stream[head + length..];
    }
}

// ---- config --------------------------------------------------------------------------------

/// The YAML config loader: a config or an error naming where, never a panic (AFL reports a
/// hang as its own finding).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::from_yaml(text) {
        // Errors can be shown: never empty, and a line (when given) is one of the text's.
        assert!(!e.message.is_empty());
        if let Some(line) = e.line {
            // Lines as YAML counts them: broken at \r\n, \r or \n.
            let lines = text
                .replace("\r\n", "\n")
                .replace('\r', "\n")
                .lines()
                .count();
            assert!(line >= 1 && line <= lines.max(1), "line {line} of {lines}");
        }
    }
}

// ---- JWT -----------------------------------------------------------------------------------

/// An EC P-256 key made for these targets (nothing else uses it): the JWK set holds its
/// public half, and `seeds` signs valid tokens with it, so the fuzzer starts from tokens that
/// get past the signature.
pub const SIGNING_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgl0RILsKHH/XIAO+Y
ZEEAYuxKBFPuN9O6iz6cM6XsrT+hRANCAARumMb8n2zr2s53lqCloP9EVQT1baCk
ApW9ZA8TZzeU9r72RhHmsQ/FvV9eVCpLC4QeyFqmD4BqKLSUNJ79XzzZ
-----END PRIVATE KEY-----
";
pub const KID: &str = "fuzz-1";
pub const ISSUER: &str = "quay";
pub const AUDIENCE: &str = "https://tracker.example/announce";
/// The torrent the seed tokens are for.
pub const INFO_HASH: [u8; 20] = [0x5a; 20];

/// The public JWK set of [`SIGNING_KEY_PEM`].
pub fn jwk_set() -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(SIGNING_KEY_PEM.as_bytes()).expect("pem");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
        .expect("jwk");
    jwk.common.key_id = Some(KID.into());
    serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }).expect("json")
}

fn jwt_hook() -> &'static Jwt {
    static HOOK: OnceLock<Jwt> = OnceLock::new();
    HOOK.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hayate-fuzz-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("jwks.json");
        std::fs::write(&file, jwk_set()).expect("jwks");
        let config = JwtConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_file: Some(file),
            refresh_interval_secs: 86_400,
            ..JwtConfig::default()
        };
        Jwt::new(&config, &Clock::stopped(NOW)).expect("jwt hook")
    })
}

/// JWTs through the `jwt` hook, and JWK sets through its parser. The first byte picks: even,
/// the rest is a JWK set; odd, a token for an announce of [`INFO_HASH`].
pub fn jwt(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    if control & 1 == 0 {
        if let Ok(keys) = usable_keys_in_set(rest) {
            assert!(keys >= 1, "a set without a usable key is refused");
        }
        return;
    }
    let _ = check_token(rest);
}

/// What the `jwt` hook says of an announce for [`INFO_HASH`] carrying `token`.
pub fn check_token(token: &[u8]) -> Result<(), hayate::bittorrent::ClientError> {
    let mut url = b"/announce?jwt=".to_vec();
    url.extend_from_slice(token);
    let ctx = RequestContext {
        protocol: Protocol::Http,
        client: "192.0.2.1:6881".parse().expect("address"),
        url: &url,
    };
    let mut request = AnnounceRequest {
        info_hash: InfoHash(INFO_HASH),
        peer_id: PeerId([1; 20]),
        peer_ip: "192.0.2.1".parse().expect("address"),
        port: 6881,
        uploaded: 0,
        downloaded: 0,
        left: 0,
        event: AnnounceEvent::Started,
        numwant: None,
        key: None,
    };
    jwt_hook().before_announce(&ctx, &mut request)
}

// ---- replication records ---------------------------------------------------------------------

/// A batch from Redis: a decoded batch writes back to the same bytes (the format has one
/// encoding), and a refused one leaves no changes behind.
pub fn replication_record(data: &[u8]) {
    let mut changes = Vec::new();
    match record::decode(data, &mut changes) {
        Ok(header) => {
            assert_eq!(changes.len(), header.count as usize);
            let mut writer = BatchWriter::new();
            writer.start(header.origin, header.created_ms, header.ttl_secs);
            changes.iter().for_each(|c| writer.push(c));
            assert_eq!(writer.finish(), data, "re-encoded differently");
        }
        Err(_) => assert!(changes.is_empty()),
    }
}
