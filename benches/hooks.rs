//! What hooks cost per announce, through the whole UDP request path in one thread: no hooks,
//! the three list and interval hooks, and the jwt hook with RS256 and ES256 tokens (the load
//! testers cannot sign tokens, so the jwt hook is measured here rather than under load): a
//! token's first announce, which checks its signature, and its re-announces, which find it
//! verified already.

use std::hint::black_box;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hayate::clock::Clock;
use hayate::config::Config;
use hayate::handler::{Tracker, UdpHandler};
use hayate::middleware::Middleware;
use hayate::swarm::{SwarmLimits, SwarmStore};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const NOW: u32 = 1_800_000_000;
const INFO_HASH: [u8; 20] = [7; 20];

/// A key pair from `openssl genpkey`: its JWK with `kid`, and its signing key.
fn key(dir: &std::path::Path, kid: &str, alg: Algorithm, args: &[&str]) -> (Jwk, EncodingKey) {
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
    (jwk, key)
}

/// Token number `n` (its `jti`) for INFO_HASH, signed by `key` as `kid`.
fn token(key: &EncodingKey, alg: Algorithm, kid: &str, n: u64) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let hex: String = INFO_HASH.iter().map(|b| format!("{b:02x}")).collect();
    let claims = serde_json::json!({
        "iss": "bench", "aud": "hayate", "exp": NOW + 3600, "infohash": hex, "jti": n
    });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
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

/// Makes token number `n` for a case (no token: empty).
type Tokens<'a> = dyn Fn(u64) -> String + 'a;

fn hooks(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_key) = key(
        dir.path(),
        "rsa",
        Algorithm::RS256,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec, ec_key) = key(
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
    let rs256 = |n| token(&rsa_key, Algorithm::RS256, "rsa", n);
    let es256 = |n| token(&ec_key, Algorithm::ES256, "ec", n);
    let none = |_| String::new();
    let cases: [(&str, &String, &Tokens); 4] = [
        ("hooks/udp_announce_no_hooks", &String::new(), &none),
        ("hooks/udp_announce_three_hooks", &lists, &none),
        ("hooks/udp_announce_all_four_rs256", &all, &rs256),
        ("hooks/udp_announce_all_four_es256", &all, &es256),
    ];
    let mut out = Vec::with_capacity(2048);
    for (name, yaml, token) in cases {
        let (mut handler, id) = handler(yaml);
        let packet = |n| announce(id, format!("/announce?jwt={}", token(n)).as_bytes());
        // A re-announce: the same token as the announce before it.
        let again = packet(0);
        handler.handle(&again, client(), &mut out);
        assert_eq!(out[3], 1, "{name}: the announce is served");
        c.bench_function(name, |b| {
            b.iter(|| handler.handle(black_box(&again), client(), &mut out))
        });
        if token(0).is_empty() {
            continue;
        }
        // A token's first announce: signed outside the timing, one new token per iteration.
        let mut n = 0;
        c.bench_function(&format!("{name}_first_use"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    packet(n)
                },
                |first| {
                    handler.handle(&first, client(), &mut out);
                    assert_eq!(out[3], 1, "{name}: a new token is served");
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, hooks);
criterion_main!(benches);
