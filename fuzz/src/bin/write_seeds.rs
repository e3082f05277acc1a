//! Writes the seed corpora into `fuzz/seeds/<target>/`: requests as clients send them, so the
//! fuzzer starts from what reaches deep into each decoder.
//!
//!   cargo run --bin write_seeds          (from fuzz/; run.sh does it when seeds are missing)

use std::path::Path;

use hayate::bittorrent::{InfoHash, PeerId};
use hayate::replication::record::{BatchWriter, Change};
use hayate_fuzz::{AUDIENCE, INFO_HASH, ISSUER, KID, NOW, SIGNING_KEY_PEM, jwk_set};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("seed dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn with(control: u8, packet: &[u8]) -> Vec<u8> {
    [&[control][..], packet].concat()
}

fn announce_packet(options: &[u8]) -> Vec<u8> {
    let mut p = 0u64.to_be_bytes().to_vec(); // replaced by a valid id (control bit 1)
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend_from_slice(&[0x11; 20]);
    p.extend_from_slice(b"-qB4650-abcdefghijkl");
    p.extend_from_slice(&0u64.to_be_bytes());
    p.extend_from_slice(&1000u64.to_be_bytes());
    p.extend_from_slice(&0u64.to_be_bytes());
    p.extend_from_slice(&2u32.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&0xABCDu32.to_be_bytes());
    p.extend_from_slice(&(-1i32).to_be_bytes());
    p.extend_from_slice(&6881u16.to_be_bytes());
    p.extend_from_slice(options);
    p
}

fn udp() {
    let mut connect = 0x417_2710_1980u64.to_be_bytes().to_vec();
    connect.extend_from_slice(&0u32.to_be_bytes());
    connect.extend_from_slice(&5u32.to_be_bytes());
    write("udp_request", "connect", &with(0, &connect));
    write("udp_request", "connect-v6", &with(1, &connect));
    write("udp_request", "announce", &with(2, &announce_packet(&[])));
    write(
        "udp_request",
        "announce-v6",
        &with(3, &announce_packet(&[])),
    );
    let options = [
        &[0x2, 10][..],
        b"/announce?",
        &[0x1, 0x2, 8],
        b"jwt=abcd",
        &[0x7, 1, 9, 0x0],
    ]
    .concat();
    write(
        "udp_request",
        "announce-bep41",
        &with(2, &announce_packet(&options)),
    );
    write(
        "udp_request",
        "announce-forged-id",
        &with(0, &announce_packet(&[])),
    );
    let mut scrape = 0u64.to_be_bytes().to_vec();
    scrape.extend_from_slice(&2u32.to_be_bytes());
    scrape.extend_from_slice(&9u32.to_be_bytes());
    scrape.extend_from_slice(&[0x11; 20]);
    scrape.extend_from_slice(&[0x22; 20]);
    write("udp_request", "scrape", &with(2, &scrape));
    write(
        "udp_request",
        "scrape-partial-hash",
        &with(0, &scrape[..17]),
    );
    write("udp_request", "short", &with(0, b"\x00\x01\x02"));
}

const HASH: &str = "%11%11%11%11%11%11%11%11%11%11%11%11%11%11%11%11%11%11%11%11";

fn http() {
    let announce = format!(
        "/announce?info_hash={HASH}&peer_id=-qB4650-abcdefghijkl&port=6881&uploaded=0&downloaded=0&left=100&event=started&numwant=30&key=DEADBEEF&compact=1"
    );
    write("http_request", "announce", announce.as_bytes());
    write(
        "http_request",
        "announce-ips",
        format!("{announce}&ip=10.0.0.1&ipv4=10.0.0.2&ipv6=%5B2001%3Adb8%3A%3A1%5D&no_peer_id=1")
            .as_bytes(),
    );
    write(
        "http_request",
        "scrape",
        format!("/scrape?info_hash={HASH}&info_hash=%22%22%22%22%22%22%22%22%22%22%22%22%22%22%22%22%22%22%22%22").as_bytes(),
    );
    write(
        "http_request",
        "forwarded",
        format!("{announce}\n203.0.113.9, 10.0.0.1\n[2001:db8::5], ::1").as_bytes(),
    );
    write("http_request", "not-found", b"/index.html?x=1");

    let request = format!("GET {announce} HTTP/1.1\r\nHost: t\r\n\r\n");
    let feed = |bytes: &[u8]| -> Vec<u8> {
        bytes
            .chunks(0xBF)
            .flat_map(|c| [&[c.len() as u8][..], c].concat())
            .collect()
    };
    write("http_connection", "one", &feed(request.as_bytes()));
    let mut pipelined = feed(request.repeat(5).as_bytes());
    pipelined.extend_from_slice(&[0xC3, 0xF0]);
    write("http_connection", "pipelined-partial-writes", &pipelined);
    let mut closing = feed(b"GET /scrape?info_hash=abc HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n");
    closing.push(0xF0);
    write("http_connection", "http10-then-more", &closing);
    write(
        "http_connection",
        "body",
        &feed(b"GET /announce HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello"),
    );
    let mut back_pressure = feed(request.repeat(400).as_bytes());
    back_pressure.extend_from_slice(&[0xEF, 0xEF, 0xF0]);
    write("http_connection", "back-pressure", &back_pressure);
}

fn config() {
    write(
        "config",
        "embedded",
        hayate::config::DEFAULT_YAML.as_bytes(),
    );
    write(
        "config",
        "hooks-replication",
        b"workers: 2\nhttp:\n  max_connections: 100\nprehooks:\n  - name: client_approval\n    options: {allow: [\"-qB\"]}\nposthooks:\n  - {name: interval_variation, options: {modify_response_probability: 0.5}}\nreplication:\n  enabled: true\n  node_id: a\n  redis: {sentinel: {master_name: m, addresses: [\"127.0.0.1:26379\"]}}\n",
    );
    write(
        "config",
        "bad-value",
        b"log:\n  level: warning\nswarm:\n  shards: 3\n",
    );
    write(
        "config",
        "flow",
        b"{udp: {bind: [\"127.0.0.1:1\"]}, http: {enabled: false}}\n",
    );
}

fn jwt() {
    write("jwt", "jwk-set", &with(0, jwk_set().as_bytes()));
    let key = jsonwebtoken::EncodingKey::from_ec_pem(SIGNING_KEY_PEM.as_bytes()).expect("pem");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(KID.into());
    let hex: String = INFO_HASH.iter().map(|b| format!("{b:02x}")).collect();
    for (name, claims) in [
        (
            "valid",
            serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 3600, "infohash": hex}),
        ),
        (
            "expired",
            serde_json::json!({"iss": ISSUER, "aud": [AUDIENCE], "exp": NOW - 1, "nbf": NOW - 10, "infohash": hex}),
        ),
        (
            "other-torrent",
            serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 3600, "infohash": "00".repeat(20)}),
        ),
    ] {
        let token = jsonwebtoken::encode(&header, &claims, &key).expect("token");
        write("jwt", name, &with(1, token.as_bytes()));
    }
    write("jwt", "not-a-token", &with(1, b"eyJhbGciOiJub25lIn0.e30."));
}

fn replication() {
    let mut writer = BatchWriter::new();
    writer.start(42, 1_700_000_000_000, 3375);
    writer.push(&Change::Announced {
        info_hash: InfoHash([1; 20]),
        peer: "10.1.2.3:6881".parse().expect("address"),
        peer_id: PeerId([7; 20]),
        seeder: true,
        completed: true,
    });
    writer.push(&Change::Removed {
        info_hash: InfoHash([2; 20]),
        peer: "[2001:db8::1]:51413".parse().expect("address"),
    });
    write("replication_record", "two-changes", writer.finish());
    writer.start(1, 2, 3);
    write("replication_record", "empty-batch", writer.finish());
}

fn main() {
    udp();
    http();
    config();
    jwt();
    replication();
}
