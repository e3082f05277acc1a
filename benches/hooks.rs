//! What hooks cost per announce, through the whole UDP request path in one thread: no hooks,
//! the three list and interval hooks, and the jwt hook with RS256 and ES256 tokens (the load
//! testers cannot sign tokens, so the jwt hook is measured here rather than under load).

use std::hint::black_box;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hayate::clock::Clock;
use hayate::config::Config;
use hayate::handler::{Tracker, UdpHandler};
use hayate::middleware::Middleware;
use hayate::swarm::{SwarmLimits, SwarmStore};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const NOW: u32 = 1_800_000_000;
const INFO_HASH: [u8; 20] = [7; 20];

/// A key pair from `openssl genpkey`, its JWK with `kid`, and a token for INFO_HASH.
fn key(dir: &std::path::Path, kid: &str, alg: Algorithm, args: &[&str]) -> (Jwk, String) {
    let path = dir.join(format!("{kid}.pem"));
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&path)
        .output()
        .expect("openssl");
    assert!(out.status.success());
    let pem = std::fs::read(&path).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let hex: String = INFO_HASH.iter().map(|b| format!("{b:02x}")).collect();
    let claims =
        serde_json::json!({"iss": "bench", "aud": "hayate", "exp": NOW + 3600, "infohash": hex});
    (jwk, jsonwebtoken::encode(&header, &claims, &key).unwrap())
}

fn handler(yaml: &str) -> (UdpHandler, u64) {
    let mut config = Config::from_yaml(yaml).unwrap();
    config.udp.connection_id_secret = "00112233445566778899aabbccddeeff".into();
    let clock = Clock::stopped(NOW);
    let hooks = Middleware::from_config(&config.prehooks, &config.posthooks, &clock).unwrap();
    let limits = SwarmLimits {
        max_torrents: 1000,
        max_peers_per_torrent: 1000,
        peer_lifetime_secs: 3600,
    };
    let store = Arc::new(SwarmStore::new(64, limits, clock));
    let tracker = Arc::new(Tracker::new(&config, store, hooks).unwrap());
    let mut handler = UdpHandler::new(tracker, Default::default());
    let mut out = Vec::new();
    let connect = [&0x417_2710_1980u64.to_be_bytes()[..], &[0; 8]].concat();
    handler.handle(&connect, client(), &mut out);
    (handler, u64::from_be_bytes(out[8..16].try_into().unwrap()))
}

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// An announce for INFO_HASH, with `url` as BEP 41 URL data.
fn announce(connection_id: u64, url: &[u8]) -> Vec<u8> {
    let mut p = connection_id.to_be_bytes().to_vec();
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend_from_slice(&INFO_HASH);
    p.extend_from_slice(b"-qB4650-abcdefghijkl");
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&5u64.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&[0; 12]);
    p.extend_from_slice(&(-1i32).to_be_bytes());
    p.extend_from_slice(&6881u16.to_be_bytes());
    for chunk in url.chunks(255) {
        p.push(2);
        p.push(chunk.len() as u8);
        p.extend_from_slice(chunk);
    }
    p
}

fn hooks(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_token) = key(
        dir.path(),
        "rsa",
        Algorithm::RS256,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec, ec_token) = key(
        dir.path(),
        "ec",
        Algorithm::ES256,
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&JwkSet {
            keys: vec![rsa, ec],
        })
        .unwrap(),
    )
    .unwrap();
    let lists = format!(
        "prehooks:\n  - {{name: client_approval, options: {{deny: [\"-XX\"]}}}}\n  - {{name: torrent_approval, options: {{mode: deny, hashes: [\"{}\"]}}}}\nposthooks:\n  - {{name: interval_variation, options: {{modify_response_probability: 0.5}}}}\n",
        "00".repeat(20)
    );
    let jwt = format!(
        "  - {{name: jwt, options: {{issuer: bench, audience: hayate, jwks_file: \"{}\"}}}}\n",
        jwks.display()
    );
    let all = lists.replacen("posthooks:", &format!("{}posthooks:", jwt), 1);
    let cases = [
        ("hooks/udp_announce_no_hooks", String::new(), String::new()),
        ("hooks/udp_announce_three_hooks", lists, String::new()),
        ("hooks/udp_announce_all_four_rs256", all.clone(), rsa_token),
        ("hooks/udp_announce_all_four_es256", all, ec_token),
    ];
    let mut out = Vec::with_capacity(2048);
    for (name, yaml, token) in cases {
        let (mut handler, id) = handler(&yaml);
        let packet = announce(id, format!("/announce?jwt={token}").as_bytes());
        handler.handle(&packet, client(), &mut out);
        assert_eq!(out[3], 1, "{name}: the announce is served");
        c.bench_function(name, |b| {
            b.iter(|| handler.handle(black_box(&packet), client(), &mut out))
        });
    }
}

criterion_group!(benches, hooks);
criterion_main!(benches);
