//! Admits an announce only with a JSON Web Token for its torrent: Quay's scheme for private
//! torrents, as Chihaya's `jwt` middleware checks it. The announce URL carries `jwt=<token>`
//! (HTTP query, or UDP BEP 41 URL data), signed RS256 or ES256 by a key of a JWK set, issued by
//! `issuer` for `audience`, with an `infohash` claim naming the torrent.
//!
//! The key set is loaded at start (a failure then stops hayate), then refreshed by one thread
//! of its own, on a timer and on SIGHUP, and swapped atomically: the hot path never fetches
//! and never waits on a refresh, and neither does the supervisor that handles SIGHUP. A
//! refresh that fails keeps the old keys, logs why and counts the failure.
//!
//! A signature check costs about 0.2 ms, and a client re-announces with the same token for as
//! long as it runs, so tokens that passed it are remembered ([`VerifiedTokens`]) until the key
//! set changes. What depends on the time (`exp`, `nbf`) or on the request (`infohash`) is
//! checked on every announce.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use percent_encoding::percent_decode;
use serde::{Deserialize, Deserializer};
use siphasher::sip128::{Hasher128, SipHasher13};

use super::{PreHook, RequestContext};
use crate::bittorrent::{AnnounceRequest, ClientError, InfoHash};
use crate::clock::Clock;
use crate::config::{DAY_SECS, read_capped};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// A value the token's `aud` must hold (a string, or one of a list).
    pub audience: String,
    /// The JWK set, from a file...
    pub jwks_file: Option<PathBuf>,
    /// ...or from an http:// or https:// URL. Exactly one of the two.
    pub jwks_url: Option<String>,
    /// How often the key set is reloaded (seconds).
    pub refresh_interval_secs: u64,
    /// How long one fetch of `jwks_url` may take (seconds).
    pub fetch_timeout_secs: u64,
    /// Clock skew allowed on `exp` and `nbf` (seconds).
    pub leeway_secs: u64,
    /// Refuse tokens without `exp`. Quay issues none: set false for it (an `exp` that is
    /// present is still enforced).
    pub require_exp: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: None,
            jwks_url: None,
            refresh_interval_secs: 300,
            fetch_timeout_secs: 5,
            leeway_secs: 0,
            require_exp: true,
        }
    }
}

impl JwtConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("`issuer` is required".into());
        }
        if self.audience.is_empty() {
            return Err("`audience` is required".into());
        }
        match (&self.jwks_file, &self.jwks_url) {
            (Some(_), Some(_)) => return Err("set `jwks_file` or `jwks_url`, not both".into()),
            (None, None) => return Err("set `jwks_file` or `jwks_url`".into()),
            (None, Some(url)) => check_url(url)?,
            (Some(_), None) => {}
        }
        // Keys rotated at the issuer reach the tracker within this (SIGHUP: at once).
        if !(1..=u64::from(DAY_SECS)).contains(&self.refresh_interval_secs) {
            return Err(format!(
                "`refresh_interval_secs` must be between 1 and {DAY_SECS} (a day)"
            ));
        }
        // A hung key server holds the refresh thread this long, so SIGHUPs and timed
        // refreshes queue behind it; and the HTTP client adds it to an Instant, which panics
        // past the clock's range.
        if !(1..=MAX_FETCH_TIMEOUT_SECS).contains(&self.fetch_timeout_secs) {
            return Err(format!(
                "`fetch_timeout_secs` must be between 1 and {MAX_FETCH_TIMEOUT_SECS}"
            ));
        }
        // Skew between clocks is seconds; past an hour, expired tokens would simply be taken.
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(format!(
                "`leeway_secs` must be between 0 and {MAX_LEEWAY_SECS} (an hour)"
            ));
        }
        Ok(())
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let bad = || format!("`jwks_url` `{url}` is not an http:// or https:// URL");
    let uri: ureq::http::Uri = url.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(()),
        _ => Err(bad()),
    }
}

/// An http:// URL to another machine (loopback is a sidecar, or a test).
fn is_plain_http_off_host(url: &str) -> bool {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    uri.scheme_str() == Some("http") && !loopback
}

/// Largest JWK set accepted, from a file or over the network: a set of a few keys is a few
/// KiB.
const MAX_JWKS_BYTES: u64 = 1 << 20;
const MAX_FETCH_TIMEOUT_SECS: u64 = 60;
const MAX_LEEWAY_SECS: u64 = 3600;

enum KeySource {
    File(PathBuf),
    Url { url: String, agent: ureq::Agent },
}

impl KeySource {
    fn fetch(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            KeySource::File(path) => read_capped(path, MAX_JWKS_BYTES, "JWK set file"),
            KeySource::Url { url, agent } => {
                let mut response = agent
                    .get(url.as_str())
                    .call()
                    .with_context(|| format!("fetch {url}"))?;
                response
                    .body_mut()
                    .with_config()
                    .limit(MAX_JWKS_BYTES)
                    .read_to_vec()
                    .with_context(|| format!("read the body of {url}"))
            }
        }
    }
}

/// A verification key, and the one algorithm it verifies: a token naming another algorithm
/// is refused, so no key is ever used with an algorithm it was not published for.
#[derive(Debug)]
struct Key {
    decoding: DecodingKey,
    alg: Algorithm,
}

/// Keys by `kid`.
type KeySet = HashMap<String, Key>;

/// The key an entry of a JWK set gives, or why it gives none.
fn usable_key(jwk: &Jwk) -> Result<(String, Key), &'static str> {
    let kid = jwk.common.key_id.clone().ok_or("no `kid`")?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("not a signing key (`use`)");
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return Err("neither RSA nor EC P-256"),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        // A key published for RS512 (say) must not verify RS256 tokens.
        if declared != KeyAlgorithm::from(alg) {
            return Err("its `alg` is neither RS256 nor ES256");
        }
    }
    let decoding = DecodingKey::from_jwk(jwk).map_err(|_| "malformed key parameters")?;
    Ok((kid, Key { decoding, alg }))
}

/// Parses a JWK set. Entries are parsed one by one, so a key of a kind we do not use (an
/// encryption key, an Ed25519 key, an `alg` jsonwebtoken does not know) is skipped rather than
/// making the whole set unusable. Returns the keys and a note for each entry skipped.
fn parse_jwks(bytes: &[u8]) -> anyhow::Result<(KeySet, Vec<String>)> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(bytes).context("not a JWK set")?;
    let mut keys = KeySet::new();
    let mut skipped = Vec::new();
    for (i, entry) in raw.keys.into_iter().enumerate() {
        let kid = entry.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let name = match &kid {
            Some(kid) => format!("key `{kid}`"),
            None => format!("keys[{i}]"),
        };
        let parsed = serde_json::from_value::<Jwk>(entry)
            .map_err(|_| "not a JWK jsonwebtoken knows")
            .and_then(|jwk| usable_key(&jwk));
        match parsed {
            Ok((kid, key)) => {
                if let Entry::Vacant(slot) = keys.entry(kid) {
                    slot.insert(key);
                } else {
                    skipped.push(format!("{name}: a second key with this `kid`"));
                }
            }
            Err(why) => skipped.push(format!("{name}: {why}")),
        }
    }
    if keys.is_empty() {
        anyhow::bail!(
            "no usable key (RSA or EC P-256, for signing, with a `kid`){}",
            skipped.iter().map(|s| format!("; {s}")).collect::<String>()
        );
    }
    Ok((keys, skipped))
}

/// How many usable keys a JWK set holds: the parser every set from a file or the network goes
/// through, for those who check it from outside (the fuzz target).
pub fn usable_keys_in_set(bytes: &[u8]) -> anyhow::Result<usize> {
    parse_jwks(bytes).map(|(keys, _)| keys.len())
}

fn sorted_kids(keys: &KeySet) -> Vec<&str> {
    let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
    kids.sort_unstable();
    kids
}

/// What announces read of the key set.
struct Shared {
    keys: ArcSwap<KeySet>,
    /// Bumped after each change of `keys`: a token verified under another generation is
    /// verified again.
    generation: AtomicU64,
    failures: AtomicU64,
}

/// Fetches the key set and swaps it in. After the first load it lives on the refresh thread
/// alone, so fetches never overlap and an older fetch can never land after a newer one.
struct Refresher {
    shared: Arc<Shared>,
    source: KeySource,
    /// The bytes of the set in use.
    in_use: Vec<u8>,
}

impl Refresher {
    fn refresh(&mut self) -> anyhow::Result<()> {
        let bytes = self.source.fetch()?;
        if bytes == self.in_use {
            // The same set: its keys and the tokens they verified stay.
            return Ok(());
        }
        let (keys, skipped) = parse_jwks(&bytes)?;
        let shared = &self.shared;
        let old = shared.keys.load();
        // Logged only when the set changes, so a refresh every few minutes stays quiet.
        if sorted_kids(&old) != sorted_kids(&keys) {
            tracing::info!(kids = ?sorted_kids(&keys), "jwt: JWK set loaded");
            for note in &skipped {
                tracing::warn!("jwt: JWK set entry skipped: {note}");
            }
        }
        shared.keys.store(Arc::new(keys));
        // After the store: a check that reads the new generation also reads the new keys.
        shared.generation.fetch_add(1, Ordering::Release);
        self.in_use = bytes;
        Ok(())
    }

    fn refresh_or_log(&mut self) {
        if let Err(e) = self.refresh() {
            self.shared.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("jwt: JWK set not refreshed, keeping the old keys: {e:#}");
        }
    }

    /// Starts the refresh thread: a fetch every `every`, and one at once for each request on
    /// the returned sender. It stops when the sender is dropped (with the hook).
    fn spawn(mut self, every: Duration) -> anyhow::Result<SyncSender<()>> {
        // Room for one request: SIGHUPs that come during a fetch collapse into one more fetch,
        // which starts after all of them, so it sees the keys as of the last one.
        let (requests, requested) = sync_channel(1);
        std::thread::Builder::new()
            .name("jwks-refresh".into())
            .spawn(move || {
                loop {
                    match requested.recv_timeout(every) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => self.refresh_or_log(),
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            // Without it neither the timer nor SIGHUP would ever refresh the keys.
            .context("spawn the JWK set refresh thread")?;
        Ok(requests)
    }
}

/// The claims beyond those `Validation` checks. `exp` and `nbf` are checked here, against the
/// tracker's clock: `Validation` reads the system clock, which tests cannot stop.
#[derive(Deserialize)]
struct Claims {
    /// NumericDate, which may have a fraction. Absent only with `require_exp: false`
    /// (`Validation` refuses the token otherwise).
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<f64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<f64>,
    infohash: Option<String>,
}

/// A time claim that is there must be a number: `"exp": null` is a malformed token, not a
/// token without `exp` (an absent claim never reaches this: `default` gives `None`).
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    f64::deserialize(deserializer).map(Some)
}

/// The most tokens remembered; past it the memory starts over (a few MB at most). Only tokens
/// with a valid signature get in, so nobody without the issuer's key can fill it.
const VERIFIED_TOKENS_MAX: usize = 65_536;

/// Tokens whose signature, issuer and audience checked out, with their claims, by a keyed
/// 128-bit hash of the token (keyed so that nobody can make a forged token collide with a
/// verified one).
struct VerifiedTokens {
    key: [u8; 16],
    tokens: Mutex<HashMap<u128, (u64, Claims)>>,
}

impl VerifiedTokens {
    fn new() -> anyhow::Result<Self> {
        let mut key = [0; 16];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("random key: {e}"))?;
        Ok(VerifiedTokens {
            key,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn digest(&self, token: &[u8]) -> u128 {
        let mut hasher = SipHasher13::new_with_key(&self.key);
        hasher.write(token);
        hasher.finish128().as_u128()
    }

    /// `check` of the claims of a token verified under key set `generation`; `None` when
    /// the token is not known as verified under it.
    fn check<R>(
        &self,
        digest: u128,
        generation: u64,
        check: impl FnOnce(&Claims) -> R,
    ) -> Option<R> {
        let tokens = self.tokens.lock();
        let (verified_under, claims) = tokens.get(&digest)?;
        (*verified_under == generation).then(|| check(claims))
    }

    fn insert(&self, digest: u128, generation: u64, claims: Claims) {
        let mut tokens = self.tokens.lock();
        if tokens.len() >= VERIFIED_TOKENS_MAX {
            tokens.clear();
        }
        tokens.insert(digest, (generation, claims));
    }
}

pub struct Jwt {
    shared: Arc<Shared>,
    /// Asks the refresh thread for a fetch now (SIGHUP); dropping it stops the thread.
    refresh_now: SyncSender<()>,
    verified: VerifiedTokens,
    rs256: Validation,
    es256: Validation,
    clock: Clock,
    leeway: f64,
}

impl Jwt {
    /// Loads the keys; a key set that cannot be had now is an error, not a warning.
    pub fn new(config: &JwtConfig, clock: &Clock) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => KeySource::File(path.clone()),
            (None, Some(url)) => {
                if is_plain_http_off_host(url) {
                    tracing::warn!(
                        "jwt: `jwks_url` is plain http: anyone on the path can swap the keys \
                         and forge tokens; prefer https"
                    );
                }
                KeySource::Url {
                    url: url.clone(),
                    agent: ureq::Agent::new_with_config(
                        ureq::Agent::config_builder()
                            .timeout_global(Some(Duration::from_secs(config.fetch_timeout_secs)))
                            .user_agent(concat!("hayate/", env!("CARGO_PKG_VERSION")))
                            .build(),
                    ),
                }
            }
            (None, None) => unreachable!("validated"),
        };
        let shared = Arc::new(Shared {
            keys: ArcSwap::from_pointee(KeySet::new()),
            generation: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let mut refresher = Refresher {
            shared: shared.clone(),
            source,
            in_use: Vec::new(),
        };
        refresher.refresh().context("load the JWK set")?;
        let refresh_now = refresher.spawn(Duration::from_secs(config.refresh_interval_secs))?;
        if !config.require_exp {
            tracing::info!(
                "jwt: tokens without `exp` are accepted (require_exp: false): such a token \
                 is good for as long as its key stays in the JWK set"
            );
        }

        // One per algorithm: jsonwebtoken refuses a `Validation` listing an algorithm of
        // another family than the key's.
        let required: &[&str] = match config.require_exp {
            true => &["exp", "iss", "aud"],
            false => &["iss", "aud"],
        };
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.set_required_spec_claims(required);
            v.set_issuer(&[&config.issuer]);
            v.set_audience(&[&config.audience]);
            v.validate_exp = false;
            v.validate_nbf = false;
            v
        };
        Ok(Jwt {
            shared,
            refresh_now,
            verified: VerifiedTokens::new()?,
            rs256: validation(Algorithm::RS256),
            es256: validation(Algorithm::ES256),
            clock: clock.clone(),
            leeway: config.leeway_secs as f64,
        })
    }

    /// JWK set refreshes that failed since start (the keys before them stayed in use).
    pub fn jwks_refresh_failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    fn check(&self, token: &[u8], info_hash: &InfoHash) -> Result<(), ClientError> {
        let digest = self.verified.digest(token);
        // Read before the keys (see `Shared::refresh`): a token verified with keys older than
        // this generation is never remembered as verified under it.
        let generation = self.shared.generation.load(Ordering::Acquire);
        let check = |claims: &Claims| self.check_claims(claims, info_hash);
        if let Some(checked) = self.verified.check(digest, generation, check) {
            return checked;
        }
        let claims = self.verify(token)?;
        let checked = check(&claims);
        self.verified.insert(digest, generation, claims);
        checked
    }

    /// The checks of a verified token that depend on the time or on the request.
    fn check_claims(&self, claims: &Claims, info_hash: &InfoHash) -> Result<(), ClientError> {
        let now = f64::from(self.clock.wall());
        if claims.exp.is_some_and(|exp| now >= exp + self.leeway) {
            return Err(EXPIRED);
        }
        if claims.nbf.is_some_and(|nbf| now + self.leeway < nbf) {
            return Err(NOT_YET_VALID);
        }
        let claimed = claims.infohash.as_deref().ok_or(INVALID)?;
        if !infohash_claim_matches(claimed, info_hash) {
            return Err(OTHER_TORRENT);
        }
        Ok(())
    }

    /// Checks the token's key, signature, issuer and audience, and returns its claims.
    fn verify(&self, token: &[u8]) -> Result<Claims, ClientError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| INVALID)?;
        let kid = header.kid.as_deref().ok_or(INVALID)?;
        let keys = self.shared.keys.load();
        let key = keys.get(kid).ok_or(UNKNOWN_KEY)?;
        if header.alg != key.alg {
            return Err(INVALID);
        }
        let validation = match key.alg {
            Algorithm::ES256 => &self.es256,
            _ => &self.rs256,
        };
        jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map(|data| data.claims)
            .map_err(|e| {
                tracing::debug!(kid, error = %e, "jwt refused");
                INVALID
            })
    }
}

const MISSING: ClientError = ClientError::new("missing jwt");
const INVALID: ClientError = ClientError::new("invalid jwt");
const EXPIRED: ClientError = ClientError::new("jwt expired");
const NOT_YET_VALID: ClientError = ClientError::new("jwt not yet valid");
const OTHER_TORRENT: ClientError = ClientError::new("jwt for another torrent");
const UNKNOWN_KEY: ClientError = ClientError::new("jwt signed by an unknown key");

/// The `jwt` parameter of a URL's query, percent-decoded; the first one wins.
fn token_in(url: &[u8]) -> Option<Cow<'_, [u8]>> {
    let start = url.iter().position(|&b| b == b'?')? + 1;
    let value = url[start..]
        .split(|&b| b == b'&')
        .find_map(|pair| pair.strip_prefix(b"jwt="))?;
    (!value.is_empty()).then(|| percent_decode(value).into())
}

/// Quay issues the info hash as 40 hex characters; Chihaya compares the claim as the 20 raw
/// bytes, or as those bytes query-escaped. All three are accepted: they cannot be confused,
/// since a hex claim is 40 bytes long and holds no `%`.
fn infohash_claim_matches(claim: &str, info_hash: &InfoHash) -> bool {
    let hash = &info_hash.0;
    if claim.len() == 40 {
        let hex = claim.as_bytes().chunks(2).map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        });
        if hex.eq(hash.iter().map(|&b| Some(b))) {
            return true;
        }
    }
    if claim.as_bytes() == hash {
        return true;
    }
    // Go's url.QueryUnescape, which reads `+` as a space.
    let plus_as_space = claim.replace('+', " ");
    let unescaped: Cow<'_, [u8]> = percent_decode(plus_as_space.as_bytes()).into();
    *unescaped == *hash
}

impl PreHook for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn before_announce(
        &self,
        ctx: &RequestContext<'_>,
        request: &mut AnnounceRequest,
    ) -> Result<(), ClientError> {
        let token = token_in(ctx.url).ok_or(MISSING)?;
        self.check(&token, &request.info_hash)
    }

    // Scrapes are not checked, as in Chihaya: a scrape reveals only counts, and Quay's torrent
    // files put the token in the announce URL, which clients do not reuse for scrapes.

    // Called on the supervisor's thread, which also handles SIGTERM: a fetch there would
    // hold a stop for up to `fetch_timeout_secs`, so the refresh thread fetches instead.
    fn reload(&self) {
        match self.refresh_now.try_send(()) {
            // Full: a fetch is already waiting to start, and it starts after this signal.
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                tracing::error!("jwt: the JWK set refresh thread is gone; keys stay as they are")
            }
        }
    }

    fn jwks_refresh_failures(&self) -> Option<u64> {
        Some(Jwt::jwks_refresh_failures(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_first_jwt_parameter_percent_decoded() {
        let token = |url: &str| token_in(url.as_bytes()).map(|t| t.into_owned());
        assert_eq!(
            token("/announce?info_hash=%AA&jwt=a.b%2Ec&jwt=x").as_deref(),
            Some(&b"a.b.c"[..])
        );
        assert_eq!(token("/announce?jwt=t").as_deref(), Some(&b"t"[..]));
        assert_eq!(token("?port=1&jwt=t&left=0").as_deref(), Some(&b"t"[..]));
        assert_eq!(token("/announce?jwt="), None, "empty is missing");
        assert_eq!(token("/announce?xjwt=t&jwtx=u"), None);
        assert_eq!(token("/announce/jwt=t"), None, "only in the query");
        assert_eq!(token(""), None);
    }

    #[test]
    fn the_infohash_claim_may_be_hex_raw_or_query_escaped() {
        let hash = InfoHash(*b"0123456789abcdefghi\xff");
        let hex: String = hash.0.iter().map(|b| format!("{b:02x}")).collect();
        assert!(infohash_claim_matches(&hex, &hash));
        assert!(infohash_claim_matches(&hex.to_uppercase(), &hash));
        assert!(infohash_claim_matches("0123456789abcdefghi%FF", &hash));
        let ascii = InfoHash(*b"0123456789 bcdefghij");
        assert!(infohash_claim_matches("0123456789 bcdefghij", &ascii));
        assert!(infohash_claim_matches("0123456789+bcdefghij", &ascii));
        assert!(!infohash_claim_matches(&"00".repeat(20), &hash));
        assert!(!infohash_claim_matches("", &hash));
    }

    #[test]
    fn a_jwk_set_keeps_signing_keys_with_a_kid_and_skips_the_rest() {
        // The public EC P-256 key of RFC 7517, appendix A.1.
        let ec = |extra: &str| {
            format!(
                r#"{{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"{extra}}}"#
            )
        };
        let set = format!(
            r#"{{"keys":[{},{},{},{},{},{},{{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},{{"kty":"weird","kid":"w"}}]}}"#,
            ec(r#","kid":"good","use":"sig","alg":"ES256""#),
            ec(r#","kid":"good""#),
            ec(""),
            ec(r#","kid":"enc","use":"enc""#),
            ec(r#","kid":"es384","alg":"ES384""#),
            ec(r#","kid":"bare""#),
        );
        let (keys, skipped) = parse_jwks(set.as_bytes()).unwrap();
        assert_eq!(sorted_kids(&keys), ["bare", "good"]);
        assert_eq!(keys["good"].alg, Algorithm::ES256);
        assert_eq!(skipped.len(), 6, "{skipped:?}");
        let err = parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no usable key") && err.contains("hmac"),
            "{err}"
        );
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn a_key_file_past_the_cap_is_refused() {
        let err = KeySource::File("/dev/zero".into())
            .fetch()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/zero") && err.contains("larger than 1 MiB"),
            "{err}"
        );
    }

    #[test]
    fn plain_http_is_flagged_unless_on_this_host() {
        assert!(is_plain_http_off_host("http://keys.example/jwks.json"));
        assert!(!is_plain_http_off_host("https://keys.example/jwks.json"));
        assert!(!is_plain_http_off_host("http://127.0.0.1:8080/jwks.json"));
        assert!(!is_plain_http_off_host("http://[::1]:8080/jwks.json"));
        assert!(!is_plain_http_off_host("http://localhost/jwks.json"));
    }

    #[test]
    fn a_time_claim_may_be_absent_but_if_present_must_be_a_number() {
        let claims = |json: &str| serde_json::from_str::<Claims>(json);
        let none = claims(r#"{"infohash":"x"}"#).unwrap();
        assert_eq!((none.exp, none.nbf), (None, None));
        let both = claims(r#"{"exp":1.5,"nbf":1}"#).unwrap();
        assert_eq!((both.exp, both.nbf), (Some(1.5), Some(1.0)));
        for bad in [
            r#"{"exp":null}"#,
            r#"{"nbf":null}"#,
            r#"{"exp":"1"}"#,
            r#"{"exp":[1]}"#,
        ] {
            assert!(claims(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_config_needs_one_key_source_and_a_web_url() {
        let config = JwtConfig {
            issuer: "quay".into(),
            audience: "tracker".into(),
            jwks_url: Some("https://quay.example/keys".into()),
            ..JwtConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
        let err = |c: JwtConfig| c.validate().unwrap_err();
        assert!(
            err(JwtConfig {
                jwks_file: Some("keys.json".into()),
                ..config.clone()
            })
            .contains("not both")
        );
        assert!(
            err(JwtConfig {
                jwks_url: Some("ftp://quay.example/keys".into()),
                ..config.clone()
            })
            .contains("jwks_url")
        );
        assert!(
            err(JwtConfig {
                jwks_url: Some("keys.json".into()),
                ..config.clone()
            })
            .contains("jwks_url")
        );
        assert!(
            err(JwtConfig {
                issuer: String::new(),
                ..config.clone()
            })
            .contains("issuer")
        );
        assert!(
            err(JwtConfig {
                refresh_interval_secs: 0,
                ..config
            })
            .contains("refresh_interval_secs")
        );
    }
}
