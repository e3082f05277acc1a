//! The `jwt` pre-hook: tokens in the announce URL (HTTP query, UDP BEP 41 URL data), checked
//! against a JWK set served by a small HTTP server in the test, on every engine and family.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use hayate::config::{Config, EngineKind};
use hayate::middleware::{JwtConfig, PreHookConfig};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ISSUER: &str = "quay";
const AUDIENCE: &str = "https://tracker.example/announce";

// ---- keys ------------------------------------------------------------------------------

struct SigningKey {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
}

struct Keys {
    rsa: SigningKey,
    ec: SigningKey,
    /// Not in the served set until a rotation.
    ec_next: SigningKey,
}

/// Key pairs made by `openssl genpkey` once per test run (RSA key generation is slow in a
/// debug build of a pure-Rust implementation).
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let generate = |kid: &'static str, alg: Algorithm, args: &[&str]| {
            let path = dir.path().join(format!("{kid}.pem"));
            let out = Command::new("openssl")
                .arg("genpkey")
                .args(args)
                .arg("-out")
                .arg(&path)
                .output()
                .expect("openssl runs (ci/test.sh installs it)");
            assert!(out.status.success(), "{out:?}");
            let pem = std::fs::read(&path).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
                _ => EncodingKey::from_ec_pem(&pem).unwrap(),
            };
            let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
            jwk.common.key_id = Some(kid.into());
            SigningKey { kid, alg, key, jwk }
        };
        let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
        Keys {
            rsa: generate(
                "rsa-1",
                Algorithm::RS256,
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            ),
            ec: generate("ec-1", Algorithm::ES256, &ec),
            ec_next: generate("ec-2", Algorithm::ES256, &ec),
        }
    })
}

fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Claims a valid token for `info_hash` carries, as Quay issues them (plus `exp`).
fn claims(info_hash: [u8; 20]) -> serde_json::Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": NOW + 3600,
        "infohash": hex(&info_hash),
    })
}

fn sign(key: &SigningKey, kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key.key).unwrap()
}

fn token(key: &SigningKey, info_hash: [u8; 20]) -> String {
    sign(key, key.kid, &claims(info_hash))
}

// ---- a JWK set server ------------------------------------------------------------------

/// Serves whatever `body` holds at any path; with `None` it is "down": connections are
/// closed without an answer. Each answer waits `delay` (a slow issuer), one at a time.
struct JwksServer {
    url: String,
    body: Arc<Mutex<Option<String>>>,
    delay: Arc<Mutex<Duration>>,
    /// Requests read so far (a fetch is in flight once its request is counted).
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl JwksServer {
    fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(Some(body)));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (served, slow, counted, stopping) =
            (body.clone(), delay.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match read_some(&mut stream, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let wait = *slow.lock().unwrap();
                std::thread::sleep(wait);
                let Some(body) = served.lock().unwrap().clone() else {
                    continue; // down: drop the connection unanswered
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            body,
            delay,
            requests,
            stop,
            addr,
        }
    }

    fn serve(&self, body: Option<String>) {
        *self.body.lock().unwrap() = body;
    }

    fn answer_after(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wakes the accept
    }
}

// ---- the tracker -----------------------------------------------------------------------

fn jwt_hook_yaml(source: &str, refresh_secs: u64, leeway_secs: u64) -> String {
    format!(
        "prehooks:\n  - name: jwt\n    options:\n      issuer: {ISSUER}\n      \
         audience: \"{AUDIENCE}\"\n      {source}\n      refresh_interval_secs: {refresh_secs}\n      \
         fetch_timeout_secs: 2\n      leeway_secs: {leeway_secs}\n"
    )
}

/// A tracker whose only hook is `jwt`, configured through YAML as an operator would.
fn tracker(engine: EngineKind, hook_yaml: &str) -> TestServer {
    let mut config = test_config(engine);
    config.prehooks = Config::from_yaml(hook_yaml).expect("hook config").prehooks;
    TestServer::start(config)
}

fn tracker_for(engine: EngineKind, jwks: &JwksServer, refresh_secs: u64) -> TestServer {
    let source = format!("jwks_url: \"{}\"", jwks.url);
    tracker(engine, &jwt_hook_yaml(&source, refresh_secs, 0))
}

/// BEP 41 URL data: the URL in options of at most 255 bytes, then end of options.
fn url_data(url: &str) -> Vec<u8> {
    let mut options = Vec::new();
    for chunk in url.as_bytes().chunks(255) {
        options.extend_from_slice(&[0x2, chunk.len() as u8]);
        options.extend_from_slice(chunk);
    }
    options.push(0x0);
    options
}

/// Announces over HTTP or UDP with `token` (none when `None`); the failure reason, or None if
/// served.
fn announce(
    t: &TestServer,
    udp: bool,
    ipv6: bool,
    info_hash: [u8; 20],
    token: Option<&str>,
) -> Option<String> {
    let addr = if udp { t.udp(ipv6) } else { t.http(ipv6) };
    announce_at(addr, udp, info_hash, token)
}

/// [`announce`] to the UDP (`udp`) or HTTP port at `addr`.
fn announce_at(
    addr: SocketAddr,
    udp: bool,
    info_hash: [u8; 20],
    token: Option<&str>,
) -> Option<String> {
    let query = token.map(|t| format!("&jwt={t}")).unwrap_or_default();
    if udp {
        let c = UdpClient::new(addr);
        let id = c.connect();
        let mut a = UdpAnnounce::new(id, info_hash, 7100);
        a.options = url_data(&format!("/announce?{}", query.trim_start_matches('&')));
        match c.request(&a.packet()) {
            UdpReply::Announce { .. } => None,
            UdpReply::Error { message, .. } => Some(message),
            other => panic!("{other:?}"),
        }
    } else {
        let target = announce_target(info_hash, 1, 7100, 0, &query);
        let reply = http_get(addr, &target);
        assert_eq!(reply.status, 200);
        reply.failure()
    }
}

/// Every protocol and family.
const PATHS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

fn path_name(udp: bool, ipv6: bool) -> String {
    format!(
        "{} over IPv{}",
        if udp { "UDP" } else { "HTTP" },
        if ipv6 { 6 } else { 4 }
    )
}

/// Polls `done` every 100 ms for at most `limit`.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

// ---- tests -----------------------------------------------------------------------------

#[test]
fn valid_rs256_and_es256_tokens_are_served_over_both_protocols_and_families() {
    let k = keys();
    let jwks = JwksServer::start(jwks(&[&k.rsa, &k.ec]));
    for engine in engines() {
        let t = tracker_for(engine, &jwks, 300);
        for (udp, ipv6) in PATHS {
            for key in [&k.rsa, &k.ec] {
                assert_eq!(
                    announce(&t, udp, ipv6, hash(1), Some(&token(key, hash(1)))),
                    None,
                    "{:?} {} {engine:?}",
                    key.alg,
                    path_name(udp, ipv6)
                );
            }
        }
        assert_eq!(
            t.server
                .tracker()
                .middleware
                .jwks_refresh_failures()
                .first()
                .map(|&(_, n)| n),
            Some(0)
        );
    }
}

#[test]
fn bad_or_missing_tokens_are_refused_with_their_reason() {
    let k = keys();
    let jwks = JwksServer::start(jwks(&[&k.rsa, &k.ec]));
    let h = hash(1);
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(h);
        change(&mut c);
        sign(&k.rsa, k.rsa.kid, &c)
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing jwt"),
        ("garbage", Some("not.a.jwt".into()), "invalid jwt"),
        (
            "another torrent",
            Some(token(&k.rsa, hash(2))),
            "jwt for another torrent",
        ),
        (
            "expired",
            Some(with(&|c| c["exp"] = json!(NOW))),
            "jwt expired",
        ),
        (
            "not yet valid",
            Some(with(&|c| c["nbf"] = json!(NOW + 10))),
            "jwt not yet valid",
        ),
        (
            "no exp",
            Some(with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))),
            "invalid jwt",
        ),
        (
            "no infohash",
            Some(with(&|c| {
                drop(c.as_object_mut().unwrap().remove("infohash"))
            })),
            "invalid jwt",
        ),
        (
            "wrong audience",
            Some(with(&|c| {
                c["aud"] = json!("https://other.example/announce")
            })),
            "invalid jwt",
        ),
        (
            "wrong issuer",
            Some(with(&|c| c["iss"] = json!("someone else"))),
            "invalid jwt",
        ),
        (
            "unknown kid",
            Some(sign(&k.ec, "nobody", &claims(h))),
            "jwt signed by an unknown key",
        ),
        (
            "forged: a known kid, another key's signature",
            Some(sign(&k.ec_next, k.ec.kid, &claims(h))),
            "invalid jwt",
        ),
        (
            "an RS256 token naming the EC key",
            Some(sign(&k.rsa, k.ec.kid, &claims(h))),
            "invalid jwt",
        ),
    ];
    for engine in engines() {
        let t = tracker_for(engine, &jwks, 300);
        for (udp, ipv6) in PATHS {
            for (case, token, reason) in &cases {
                assert_eq!(
                    announce(&t, udp, ipv6, h, token.as_deref()).as_deref(),
                    Some(*reason),
                    "{case}, {} {engine:?}",
                    path_name(udp, ipv6)
                );
            }
        }
        // An audience list holding ours is fine.
        let listed = with(&|c| c["aud"] = json!(["someone", AUDIENCE]));
        assert_eq!(announce(&t, true, false, h, Some(&listed)), None);
        // Scrapes are not checked (as in Chihaya).
        let c = UdpClient::new(t.udp(false));
        let id = c.connect();
        assert!(matches!(
            c.request(&scrape_packet(id, 5, &[h])),
            UdpReply::Scrape { .. }
        ));
        let scrape = http_get(
            t.http(true),
            &format!("/scrape?info_hash={}", urlencode(&h)),
        );
        assert_eq!(scrape.failure(), None);
    }
}

#[test]
fn exp_and_nbf_follow_the_tracker_clock_with_the_configured_leeway() {
    let k = keys();
    let jwks = JwksServer::start(jwks(&[&k.rsa, &k.ec]));
    let source = format!("jwks_url: \"{}\"", jwks.url);
    let mut c = claims(hash(3));
    c["nbf"] = json!(NOW + 40);
    c["exp"] = json!(NOW + 60);
    let token = sign(&k.ec, k.ec.kid, &c);
    for engine in engines() {
        let t = tracker(engine, &jwt_hook_yaml(&source, 300, 30));
        let at = |secs: u32, udp: bool| {
            t.clock.set(NOW + secs);
            announce(&t, udp, false, hash(3), Some(&token))
        };
        for udp in [false, true] {
            assert_eq!(at(9, udp).as_deref(), Some("jwt not yet valid"));
            assert_eq!(at(10, udp), None, "nbf less the leeway");
            assert_eq!(at(89, udp), None);
            assert_eq!(
                at(90, udp).as_deref(),
                Some("jwt expired"),
                "exp plus the leeway"
            );
        }
    }
}

/// Claims as Quay issues them: `iss`, `aud` (the announce URL) and the info hash in hex, and
/// no `exp`, `nbf` nor `iat`.
fn quay_claims(info_hash: [u8; 20]) -> serde_json::Value {
    let mut c = claims(info_hash);
    c.as_object_mut().unwrap().remove("exp");
    c
}

/// The `jwt` hook as a Quay deployment sets it.
fn quay_hook_yaml(jwks: &JwksServer) -> String {
    let source = format!("jwks_url: \"{}\"", jwks.url);
    format!(
        "{}      require_exp: false\n",
        jwt_hook_yaml(&source, 300, 0)
    )
}

#[test]
fn with_require_exp_false_tokens_without_exp_are_served_and_every_other_check_stays() {
    let k = keys();
    let jwks = JwksServer::start(jwks(&[&k.rsa, &k.ec]));
    let h = hash(8);
    let quay = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut c = quay_claims(h);
        change(&mut c);
        sign(&k.rsa, k.rsa.kid, &c)
    };
    let served = [
        ("Quay's token (RS256, no exp)", quay(&|_| {})),
        ("ES256, no exp", sign(&k.ec, k.ec.kid, &quay_claims(h))),
        (
            "an exp still to come",
            quay(&|c| c["exp"] = json!(NOW + 60)),
        ),
        ("an nbf gone by", quay(&|c| c["nbf"] = json!(NOW - 60))),
    ];
    let refused: Vec<(&str, String, &str)> = vec![
        (
            "an exp gone by is still enforced",
            quay(&|c| c["exp"] = json!(NOW)),
            "jwt expired",
        ),
        (
            "an nbf to come",
            quay(&|c| c["nbf"] = json!(NOW + 10)),
            "jwt not yet valid",
        ),
        (
            "exp null is malformed, not absent",
            quay(&|c| c["exp"] = json!(null)),
            "invalid jwt",
        ),
        (
            "exp not a number",
            quay(&|c| c["exp"] = json!("tomorrow")),
            "invalid jwt",
        ),
        (
            "wrong issuer",
            quay(&|c| c["iss"] = json!("someone else")),
            "invalid jwt",
        ),
        (
            "wrong audience",
            quay(&|c| c["aud"] = json!("https://other.example/announce")),
            "invalid jwt",
        ),
        (
            "no audience",
            quay(&|c| drop(c.as_object_mut().unwrap().remove("aud"))),
            "invalid jwt",
        ),
        (
            "no infohash",
            quay(&|c| drop(c.as_object_mut().unwrap().remove("infohash"))),
            "invalid jwt",
        ),
        (
            "another torrent",
            sign(&k.rsa, k.rsa.kid, &quay_claims(hash(9))),
            "jwt for another torrent",
        ),
        (
            "forged: a known kid, another key's signature",
            sign(&k.ec_next, k.ec.kid, &quay_claims(h)),
            "invalid jwt",
        ),
        (
            "unknown kid",
            sign(&k.ec, "nobody", &quay_claims(h)),
            "jwt signed by an unknown key",
        ),
    ];
    for engine in engines() {
        let t = tracker(engine, &quay_hook_yaml(&jwks));
        // Each path twice: the second announce finds the token verified already.
        for (udp, ipv6) in PATHS.iter().chain(PATHS.iter()).copied() {
            for (case, token) in &served {
                assert_eq!(
                    announce(&t, udp, ipv6, h, Some(token)),
                    None,
                    "{case}, {} {engine:?}",
                    path_name(udp, ipv6)
                );
            }
            for (case, token, reason) in &refused {
                assert_eq!(
                    announce(&t, udp, ipv6, h, Some(token)).as_deref(),
                    Some(*reason),
                    "{case}, {} {engine:?}",
                    path_name(udp, ipv6)
                );
            }
        }
        // By default a token without exp is refused.
        let strict = tracker_for(engine, &jwks, 300);
        for (udp, ipv6) in PATHS {
            assert_eq!(
                announce(&strict, udp, ipv6, h, Some(&served[0].1)).as_deref(),
                Some("invalid jwt"),
                "{} {engine:?}",
                path_name(udp, ipv6)
            );
        }
    }
}

#[test]
fn require_exp_is_checked_as_a_boolean_and_a_quay_config_passes_check_config() {
    let k = keys();
    let jwks = JwksServer::start(jwks(&[&k.rsa]));
    let err = Config::from_yaml(
        &quay_hook_yaml(&jwks).replace("require_exp: false", "require_exp: sometimes"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("require_exp"), "{err}");
    let config = Config::from_yaml(&quay_hook_yaml(&jwks)).unwrap();
    assert!(matches!(
        &config.prehooks[..],
        [PreHookConfig::Jwt(JwtConfig {
            require_exp: false,
            ..
        })]
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hayate.yaml");
    std::fs::write(&path, quay_hook_yaml(&jwks)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hayate"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_failed_refresh_keeps_the_old_keys_and_is_counted() {
    let k = keys();
    let jwks = JwksServer::start(jwks(&[&k.rsa, &k.ec]));
    for engine in engines() {
        jwks.serve(Some(self::jwks(&[&k.rsa, &k.ec])));
        let t = tracker_for(engine, &jwks, 1);
        let middleware = &t.server.tracker().middleware;
        jwks.serve(None);
        assert!(
            eventually(Duration::from_secs(10), || middleware
                .jwks_refresh_failures()
                .first()
                .map(|&(_, n)| n)
                .unwrap()
                >= 1),
            "a refresh against a server that is down counts as failed"
        );
        for (udp, ipv6) in PATHS {
            assert_eq!(
                announce(&t, udp, ipv6, hash(4), Some(&token(&k.rsa, hash(4)))),
                None,
                "the old keys still verify, {} {engine:?}",
                path_name(udp, ipv6)
            );
        }
        // A body that is not a usable key set fails too (here through SIGHUP's path).
        jwks.serve(Some("<html>maintenance</html>".into()));
        let failures = || {
            middleware
                .jwks_refresh_failures()
                .first()
                .map(|&(_, n)| n)
                .unwrap()
        };
        let before = failures();
        middleware.reload();
        assert!(eventually(Duration::from_secs(10), || failures() > before));
        assert_eq!(
            announce(&t, true, true, hash(4), Some(&token(&k.ec, hash(4)))),
            None
        );
    }
}

/// A token that verified once is remembered, but its torrent is checked on every announce.
#[test]
fn a_verified_token_is_still_refused_for_another_torrent() {
    let k = keys();
    let jwks = JwksServer::start(jwks(&[&k.rsa, &k.ec]));
    let token = token(&k.rsa, hash(6));
    for engine in engines() {
        let t = tracker_for(engine, &jwks, 300);
        for udp in [false, true] {
            assert_eq!(announce(&t, udp, false, hash(6), Some(&token)), None);
            assert_eq!(
                announce(&t, udp, false, hash(7), Some(&token)).as_deref(),
                Some("jwt for another torrent")
            );
            assert_eq!(announce(&t, udp, false, hash(6), Some(&token)), None);
        }
    }
}

#[test]
fn a_rotated_key_set_is_picked_up_by_the_timed_refresh() {
    let k = keys();
    let jwks = JwksServer::start(jwks(&[&k.rsa, &k.ec]));
    for engine in engines() {
        jwks.serve(Some(self::jwks(&[&k.rsa, &k.ec])));
        let t = tracker_for(engine, &jwks, 1);
        let next = token(&k.ec_next, hash(5));
        assert_eq!(
            announce(&t, false, false, hash(5), Some(&next)).as_deref(),
            Some("jwt signed by an unknown key")
        );
        // Verified (and remembered as verified) under the set that is about to change.
        let retired = token(&k.ec, hash(5));
        assert_eq!(announce(&t, false, true, hash(5), Some(&retired)), None);
        // ec-1 retires, ec-2 comes in.
        jwks.serve(Some(self::jwks(&[&k.rsa, &k.ec_next])));
        assert!(
            eventually(Duration::from_secs(10), || announce(
                &t,
                true,
                false,
                hash(5),
                Some(&next)
            )
            .is_none()),
            "the new key verifies after a refresh ({engine:?})"
        );
        assert_eq!(
            announce(&t, false, true, hash(5), Some(&retired)).as_deref(),
            Some("jwt signed by an unknown key"),
            "the retired key no longer does, not even for a token it verified before"
        );
        assert_eq!(
            t.server
                .tracker()
                .middleware
                .jwks_refresh_failures()
                .first()
                .map(|&(_, n)| n),
            Some(0)
        );
    }
}

#[test]
fn sighup_reloads_a_key_set_file_at_once() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&k.rsa])).unwrap();
    let source = format!("jwks_file: \"{}\"", path.display());
    for engine in engines() {
        std::fs::write(&path, jwks(&[&k.rsa])).unwrap();
        let t = tracker(engine, &jwt_hook_yaml(&source, 3600, 0));
        let ec = token(&k.ec, hash(6));
        assert_eq!(
            announce(&t, false, false, hash(6), Some(&ec)).as_deref(),
            Some("jwt signed by an unknown key")
        );
        std::fs::write(&path, jwks(&[&k.rsa, &k.ec])).unwrap();
        // The refresh thread reads it, so "at once" is a moment after the call returns (the
        // timer would take an hour).
        t.server.tracker().middleware.reload();
        assert!(
            eventually(Duration::from_secs(5), || announce(
                &t,
                true,
                true,
                hash(6),
                Some(&ec)
            )
            .is_none()),
            "{engine:?}"
        );
    }
}

/// A reload only wakes the hook's refresh thread: it returns at once however slow the key
/// server is, the new keys are in force once the server answers, and reloads asked for during
/// a fetch make one more fetch (which sees what they were sent for), not one each.
#[test]
fn a_reload_returns_at_once_and_its_slow_fetch_lands_when_the_server_answers() {
    let k = keys();
    let slow = Duration::from_secs(2);
    for engine in engines() {
        let jwks = JwksServer::start(jwks(&[&k.rsa, &k.ec]));
        // A fetch may take longer than the server's delay on a loaded machine: the timeout
        // (2 s elsewhere) must not be what the test measures.
        let source = format!("jwks_url: \"{}\"", jwks.url);
        let yaml = jwt_hook_yaml(&source, 3600, 0)
            .replace("fetch_timeout_secs: 2", "fetch_timeout_secs: 10");
        let t = tracker(engine, &yaml);
        let middleware = &t.server.tracker().middleware;
        assert_eq!(jwks.requests(), 1, "the load at start");
        let next = token(&k.ec_next, hash(10));
        jwks.answer_after(slow);
        jwks.serve(Some(self::jwks(&[&k.rsa, &k.ec_next])));
        let asked = Instant::now();
        middleware.reload();
        assert!(
            asked.elapsed() < Duration::from_millis(100),
            "the reload waited {:?}",
            asked.elapsed()
        );
        assert!(eventually(Duration::from_secs(5), || jwks.requests() == 2));
        for _ in 0..3 {
            middleware.reload();
        }
        assert_eq!(
            announce(&t, false, false, hash(10), Some(&next)).as_deref(),
            Some("jwt signed by an unknown key"),
            "{engine:?}: before the server answers"
        );
        assert!(asked.elapsed() < slow, "too slow a machine for this test");
        assert!(
            eventually(Duration::from_secs(10), || announce(
                &t,
                true,
                false,
                hash(10),
                Some(&next)
            )
            .is_none()),
            "{engine:?}: the fetch never landed"
        );
        assert!(
            asked.elapsed() >= slow,
            "in force before the server answered"
        );
        // The three reloads asked during the fetch: one more fetch, and no other after it.
        assert!(eventually(Duration::from_secs(5), || jwks.requests() == 3));
        std::thread::sleep(slow + Duration::from_millis(500));
        assert_eq!(jwks.requests(), 3, "{engine:?}");
        assert_eq!(
            middleware.jwks_refresh_failures().first().map(|&(_, n)| n),
            Some(0)
        );
    }
}

// ---- the binary ------------------------------------------------------------------------

/// Runs hayate with `config` and `--engine engine` until it logs that it serves (as
/// tests/process.rs does); returns it, that log, and its stderr, which must stay open.
// The child goes back to the caller, which stops it (clippy cannot see through the return).
#[allow(clippy::zombie_processes)]
fn spawn_hayate(
    config: &std::path::Path,
    engine: &str,
) -> (
    std::process::Child,
    String,
    BufReader<std::process::ChildStderr>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hayate"))
        .arg("--config")
        .arg(config)
        .args(["--engine", engine])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).unwrap_or(0);
        log.push_str(&line);
        if line.contains("hayate is serving") {
            return (child, log, stderr);
        }
        if read == 0 || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("never served: {log}");
        }
    }
}

/// The port after `label=[127.0.0.1:` in the "hayate is serving" line.
fn logged_addr(log: &str, label: &str) -> SocketAddr {
    let port = log
        .split(&format!("{label}=[127.0.0.1:"))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no {label} address in {log}"));
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `signal`; the exit code, which must come within a second.
fn exit_code_within_a_second(mut child: std::process::Child, signal: i32) -> i32 {
    let sent = Instant::now();
    // SAFETY: kill(2) on the PID of a child we own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                sent.elapsed() < Duration::from_secs(1),
                "took {:?}",
                sent.elapsed()
            );
            return status.code().unwrap_or(-1);
        }
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("did not stop");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &std::process::Child, signal: i32) {
    // SAFETY: kill(2) on the PID of a child we own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// A token the real clock takes (the binary has no stopped clock).
fn token_for_the_real_clock(key: &SigningKey, info_hash: [u8; 20]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = claims(info_hash);
    c["exp"] = json!(now + 3600);
    sign(key, key.kid, &c)
}

/// SIGHUP while the key server takes longer to answer than a stop may take: the supervisor
/// that handles signals does not wait for the fetch, so the torrent list (the next hook)
/// reloads at once and SIGTERM still ends hayate within its second; the new keys are in
/// force once the server answers.
#[test]
fn sighup_with_a_slow_key_server_holds_neither_the_torrent_list_nor_sigterm() {
    let k = keys();
    let slow = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("torrents.txt");
    let config = dir.path().join("hayate.yaml");
    for engine in ["epoll", "io_uring"] {
        let jwks = JwksServer::start(jwks(&[&k.rsa]));
        std::fs::write(&list, format!("{}\n", hex(&hash(1)))).unwrap();
        let source = format!("jwks_url: \"{}\"", jwks.url);
        // The fetch may take longer than the slow answer: it must land, not time out.
        let jwt = jwt_hook_yaml(&source, 3600, 0)
            .replace("fetch_timeout_secs: 2", "fetch_timeout_secs: 10");
        std::fs::write(
            &config,
            format!(
                "workers: 1\nudp:\n  bind: [\"127.0.0.1:0\"]\nhttp:\n  bind: [\"127.0.0.1:0\"]\n\
                 metrics:\n  enabled: false\n{jwt}  - name: torrent_approval\n    options:\n      \
                 file: \"{}\"\n      check_interval_secs: 3600\n",
                list.display()
            ),
        )
        .unwrap();
        let (child, log, _stderr) = spawn_hayate(&config, engine);
        let (udp, http) = (logged_addr(&log, "udp"), logged_addr(&log, "http"));
        let both = |h: [u8; 20], token: &str| {
            [
                announce_at(http, false, h, Some(token)),
                announce_at(udp, true, h, Some(token)),
            ]
        };
        let rsa = |h| token_for_the_real_clock(&k.rsa, h);
        let next = token_for_the_real_clock(&k.ec_next, hash(1));
        let unknown = Some("jwt signed by an unknown key".to_string());
        let not_approved = Some("torrent not approved".to_string());
        assert_eq!(both(hash(1), &rsa(hash(1))), [None, None], "{engine}");
        assert_eq!(
            both(hash(2), &rsa(hash(2))),
            [not_approved.clone(), not_approved]
        );
        assert_eq!(both(hash(1), &next), [unknown.clone(), unknown.clone()]);

        // The issuer rotates in ec-2 and the operator approves a torrent, then SIGHUP.
        jwks.answer_after(slow);
        jwks.serve(Some(self::jwks(&[&k.rsa, &k.ec_next])));
        std::fs::write(&list, format!("{}\n{}\n", hex(&hash(1)), hex(&hash(2)))).unwrap();
        let hup = Instant::now();
        signal(&child, libc::SIGHUP);
        assert!(
            eventually(Duration::from_secs(2), || jwks.requests() == 2),
            "{engine}: no fetch after SIGHUP"
        );
        assert!(
            eventually(Duration::from_secs(2), || both(hash(2), &rsa(hash(2)))
                == [None, None]),
            "{engine}: the torrent list waited for the key fetch"
        );
        assert_eq!(both(hash(1), &next), [unknown.clone(), unknown]);
        assert!(hup.elapsed() < slow, "too slow a machine for this test");
        assert!(
            eventually(Duration::from_secs(10), || both(hash(1), &next)
                == [None, None]),
            "{engine}: the slow fetch never landed"
        );
        assert!(
            hup.elapsed() >= slow,
            "{engine}: in force before the answer"
        );

        // SIGHUP again, and SIGTERM while that fetch waits for its answer.
        signal(&child, libc::SIGHUP);
        assert!(
            eventually(Duration::from_secs(2), || jwks.requests() == 3),
            "{engine}: no fetch after the second SIGHUP"
        );
        assert_eq!(
            exit_code_within_a_second(child, libc::SIGTERM),
            0,
            "{engine}"
        );
    }
}

#[test]
fn a_key_set_that_cannot_be_loaded_at_start_stops_hayate() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let no_keys = dir.path().join("no-keys.json");
    std::fs::write(
        &no_keys,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
    )
    .unwrap();
    for source in [
        format!("jwks_url: \"http://{closed}/jwks.json\""),
        format!(
            "jwks_file: \"{}\"",
            dir.path().join("missing.json").display()
        ),
        format!("jwks_file: \"{}\"", no_keys.display()),
    ] {
        let config = dir.path().join("hayate.yaml");
        std::fs::write(&config, jwt_hook_yaml(&source, 300, 0)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hayate"))
            .arg("--check-config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{source}: {stderr}");
        assert!(
            stderr.contains("prehooks[0]") && stderr.contains("load the JWK set"),
            "{source}: {stderr}"
        );
    }
    // Options are checked before any fetch, naming the option.
    let err = Config::from_yaml(&jwt_hook_yaml("jwks_url: \"ftp://x/keys\"", 300, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("jwks_url"), "{err}");
}
