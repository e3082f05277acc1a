//! Configuration: one struct tree that is the documentation (`config.yaml`), the defaults and
//! the validation. Errors name the key and the line.

mod locate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use crate::middleware::{PostHookConfig, PreHookConfig};

/// The embedded default configuration, with its comments.
pub const DEFAULT_YAML: &str = include_str!("../../config.yaml");

/// Largest config file read. The embedded default is a few KiB, and a config with an inline
/// torrent list of 100,000 hashes about 5 MiB; a larger list belongs in `torrent_approval`'s
/// `file`. Without a cap, `--config /dev/zero` would read until memory ran out.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub workers: usize,
    pub engine: EngineKind,
    pub io_uring: IoUringConfig,
    pub log: LogConfig,
    pub udp: UdpConfig,
    pub http: HttpConfig,
    pub announce: AnnounceConfig,
    pub swarm: SwarmConfig,
    pub metrics: MetricsConfig,
    /// Hooks run before the store, in order.
    pub prehooks: Vec<PreHookConfig>,
    /// Hooks run after the store, in order.
    pub posthooks: Vec<PostHookConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// io_uring where this process may use it, epoll otherwise.
    Auto,
    IoUring,
    Epoll,
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EngineKind::Auto),
            "io_uring" => Ok(EngineKind::IoUring),
            "epoll" => Ok(EngineKind::Epoll),
            _ => Err(format!("unknown engine `{s}` (auto, io_uring or epoll)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IoUringConfig {
    pub ring_entries: u32,
    pub udp_recv_buffers: u16,
    pub udp_send_slots: usize,
    pub http_recv_buffers: u16,
    pub http_recv_buffer_bytes: usize,
    pub defer_taskrun: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpConfig {
    pub enabled: bool,
    pub bind: Vec<SocketAddr>,
    pub connection_id_secret: String,
    pub connection_id_lifetime_secs: u32,
    pub batch_size: usize,
    pub socket_recv_buffer_bytes: usize,
    pub max_scrape_hashes: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    pub bind: Vec<SocketAddr>,
    pub max_connections: usize,
    pub max_request_bytes: usize,
    pub idle_timeout_secs: u32,
    pub keep_alive: bool,
    pub max_scrape_hashes: usize,
    pub reverse_proxy: ReverseProxyConfig,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReverseProxyConfig {
    pub enabled: bool,
    pub header: String,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnounceConfig {
    pub interval_secs: u32,
    pub min_interval_secs: u32,
    pub default_numwant: u32,
    pub max_numwant: u32,
    pub allow_client_ip: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmConfig {
    pub shards: usize,
    pub max_torrents: usize,
    pub max_peers_per_torrent: usize,
    pub peer_lifetime_secs: u32,
    pub cleaning_interval_secs: u32,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 6880)),
        }
    }
}

fn all_addresses(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::from(([0u16; 8], port)),
    ]
}

// The defaults below are the values written in config.yaml; a test keeps the two equal.
impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 0,
            engine: EngineKind::Auto,
            io_uring: IoUringConfig::default(),
            log: LogConfig::default(),
            udp: UdpConfig::default(),
            http: HttpConfig::default(),
            announce: AnnounceConfig::default(),
            swarm: SwarmConfig::default(),
            metrics: MetricsConfig::default(),
            prehooks: Vec::new(),
            posthooks: Vec::new(),
        }
    }
}

impl Default for IoUringConfig {
    fn default() -> Self {
        IoUringConfig {
            ring_entries: 4096,
            udp_recv_buffers: 1024,
            udp_send_slots: 4096,
            http_recv_buffers: 1024,
            http_recv_buffer_bytes: 4096,
            defer_taskrun: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Human,
        }
    }
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            enabled: true,
            bind: all_addresses(6969),
            connection_id_secret: String::new(),
            connection_id_lifetime_secs: 120,
            batch_size: 64,
            socket_recv_buffer_bytes: 8 * 1024 * 1024,
            max_scrape_hashes: 74,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: all_addresses(6969),
            max_connections: 10_000,
            max_request_bytes: 8192,
            idle_timeout_secs: 30,
            keep_alive: true,
            max_scrape_hashes: 64,
            reverse_proxy: ReverseProxyConfig::default(),
        }
    }
}

impl Default for ReverseProxyConfig {
    fn default() -> Self {
        ReverseProxyConfig {
            enabled: false,
            header: "X-Forwarded-For".into(),
            trusted_proxies: vec![
                "127.0.0.0/8".parse().expect("valid CIDR"),
                "::1/128".parse().expect("valid CIDR"),
            ],
        }
    }
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            interval_secs: 1800,
            min_interval_secs: 900,
            default_numwant: 50,
            max_numwant: 74,
            allow_client_ip: false,
        }
    }
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            shards: 0,
            max_torrents: 10_000_000,
            max_peers_per_torrent: 100_000,
            peer_lifetime_secs: 2700,
            cleaning_interval_secs: 60,
        }
    }
}

/// A config that cannot be used, with the key and line that say where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.key, self.line) {
            (Some(key), Some(line)) => write!(f, "key `{key}` (line {line}): {}", self.message),
            (Some(key), None) => write!(f, "key `{key}`: {}", self.message),
            (None, Some(line)) => write!(f, "line {line}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The embedded default (`config.yaml`).
    pub fn embedded() -> Config {
        Config::from_yaml(DEFAULT_YAML).expect("the embedded config.yaml is valid")
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let bytes = read_capped(path, MAX_CONFIG_BYTES, "config file")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("config file {} is not UTF-8", path.display()))?;
        Config::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        // An empty document (or one of only comments) means "all defaults".
        let config = if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            Config::default()
        } else {
            serde_saphyr::from_str::<Config>(text).map_err(|e| parse_error(text, &e))?
        };
        config.validate().map_err(|(key, message)| ConfigError {
            line: locate::line_of_key(text, &key),
            key: Some(key),
            message,
        })?;
        Ok(config)
    }

    /// Checks what types alone cannot; returns the dotted key and why.
    fn validate(&self) -> Result<(), (String, String)> {
        fn fail<T>(key: &str, why: impl Into<String>) -> Result<T, (String, String)> {
            Err((key.to_string(), why.into()))
        }
        for (i, hook) in self.prehooks.iter().enumerate() {
            hook.validate()
                .map_err(|why| (format!("prehooks[{i}].options"), why))?;
        }
        for (i, hook) in self.posthooks.iter().enumerate() {
            hook.validate()
                .map_err(|why| (format!("posthooks[{i}].options"), why))?;
        }
        let ring = &self.io_uring;
        if !(8..=32768).contains(&ring.ring_entries) {
            return fail("io_uring.ring_entries", "must be between 8 and 32768");
        }
        if !ring.udp_recv_buffers.is_power_of_two() {
            return fail(
                "io_uring.udp_recv_buffers",
                "must be a power of two (at most 32768)",
            );
        }
        if !ring.http_recv_buffers.is_power_of_two() {
            return fail(
                "io_uring.http_recv_buffers",
                "must be a power of two (at most 32768)",
            );
        }
        if ring.udp_send_slots == 0 {
            return fail("io_uring.udp_send_slots", "must be at least 1");
        }
        if !(512..=65536).contains(&ring.http_recv_buffer_bytes) {
            return fail(
                "io_uring.http_recv_buffer_bytes",
                "must be between 512 and 65536",
            );
        }
        if !self.udp.enabled && !self.http.enabled {
            return fail(
                "udp.enabled",
                "both udp and http are disabled: nothing to serve",
            );
        }
        if self.udp.enabled && self.udp.bind.is_empty() {
            return fail(
                "udp.bind",
                "no address to listen on (or set udp.enabled: false)",
            );
        }
        if self.http.enabled && self.http.bind.is_empty() {
            return fail(
                "http.bind",
                "no address to listen on (or set http.enabled: false)",
            );
        }
        let secret = &self.udp.connection_id_secret;
        if !secret.is_empty() && parse_hex_key(secret).is_none() {
            return fail(
                "udp.connection_id_secret",
                "must be 32 hex characters (16 bytes), or empty for a random key",
            );
        }
        if self.udp.connection_id_lifetime_secs < 60 {
            return fail("udp.connection_id_lifetime_secs", "must be at least 60");
        }
        if !(1..=1024).contains(&self.udp.batch_size) {
            return fail("udp.batch_size", "must be between 1 and 1024");
        }
        if self.udp.max_scrape_hashes == 0 || self.http.max_scrape_hashes == 0 {
            let key = if self.udp.max_scrape_hashes == 0 {
                "udp.max_scrape_hashes"
            } else {
                "http.max_scrape_hashes"
            };
            return fail(key, "must be at least 1");
        }
        if self.udp.max_scrape_hashes > 74 {
            return fail(
                "udp.max_scrape_hashes",
                "at most 74 info hashes fit in one UDP request",
            );
        }
        if self.http.max_connections == 0 {
            return fail("http.max_connections", "must be at least 1");
        }
        if !(256..=1024 * 1024).contains(&self.http.max_request_bytes) {
            return fail("http.max_request_bytes", "must be between 256 and 1048576");
        }
        if self.http.idle_timeout_secs == 0 {
            return fail("http.idle_timeout_secs", "must be at least 1");
        }
        let proxy = &self.http.reverse_proxy;
        if proxy.enabled
            && httparse::parse_headers(
                format!("{}: x\r\n\r\n", proxy.header).as_bytes(),
                &mut [httparse::EMPTY_HEADER; 1],
            )
            .is_err()
        {
            return fail("http.reverse_proxy.header", "not a valid HTTP header name");
        }
        if self.announce.interval_secs == 0 {
            return fail("announce.interval_secs", "must be at least 1");
        }
        if self.announce.min_interval_secs > self.announce.interval_secs {
            return fail(
                "announce.min_interval_secs",
                "must not exceed announce.interval_secs",
            );
        }
        if self.announce.max_numwant == 0 || self.announce.max_numwant > 1000 {
            return fail("announce.max_numwant", "must be between 1 and 1000");
        }
        if self.announce.default_numwant > self.announce.max_numwant {
            return fail(
                "announce.default_numwant",
                "must not exceed announce.max_numwant",
            );
        }
        if self.swarm.shards != 0 && !self.swarm.shards.is_power_of_two() {
            return fail(
                "swarm.shards",
                "must be a power of two (or 0 for automatic)",
            );
        }
        if self.swarm.max_torrents == 0 {
            return fail("swarm.max_torrents", "must be at least 1");
        }
        if self.swarm.max_peers_per_torrent == 0 {
            return fail("swarm.max_peers_per_torrent", "must be at least 1");
        }
        if self.swarm.peer_lifetime_secs <= self.announce.interval_secs {
            return fail(
                "swarm.peer_lifetime_secs",
                "must exceed announce.interval_secs, or peers expire between announces",
            );
        }
        if self.swarm.cleaning_interval_secs == 0 {
            return fail("swarm.cleaning_interval_secs", "must be at least 1");
        }
        Ok(())
    }

    /// Worker threads: the configured number, or one per CPU this process may run on.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Store shards: the configured number, or 64 per worker rounded to a power of two.
    pub fn shard_count(&self) -> usize {
        if self.swarm.shards > 0 {
            self.swarm.shards
        } else {
            (self.worker_count() * 64).next_power_of_two()
        }
    }
}

/// The contents of `path`, refused if longer than `cap` bytes. Reads at most one byte past the
/// cap, so a FIFO or a device such as /dev/zero ends the read too. `what` names the file in
/// errors ("config file").
pub(crate) fn read_capped(path: &Path, cap: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let cannot = |e: std::io::Error| anyhow::anyhow!("cannot read {what} {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > cap {
        anyhow::bail!(
            "{what} {} is larger than {}, the most hayate reads",
            path.display(),
            describe_bytes(cap)
        );
    }
    Ok(bytes)
}

/// `16 MiB (16777216 bytes)`: the unit an operator reads, and the exact number.
pub(crate) fn describe_bytes(n: u64) -> String {
    let unit = [(30, "GiB"), (20, "MiB"), (10, "KiB")]
        .into_iter()
        .find(|&(shift, _)| n >= 1 << shift && n.is_multiple_of(1 << shift));
    match unit {
        Some((shift, name)) => format!("{} {name} ({n} bytes)", n >> shift),
        None => format!("{n} bytes"),
    }
}

/// The connection-id key from its 32 hex characters.
pub fn parse_hex_key(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        key[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(key)
}

fn parse_error(text: &str, error: &serde_saphyr::Error) -> ConfigError {
    let line = error
        .location()
        .and_then(|loc| usize::try_from(loc.line()).ok())
        .filter(|&l| l > 0);
    // serde names an unknown key itself; for other errors the key is the one on the error line.
    let key = line.and_then(|l| locate::key_at_line(text, l));
    let message = first_line(&error.to_string());
    ConfigError { key, line, message }
}

/// The parser's first line, without its own `error: line N column M:` prefix (we say the line).
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let line = match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((_, rest)) => rest,
        None => line,
    };
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_config_equals_the_built_in_defaults() {
        assert_eq!(Config::embedded(), Config::default());
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        assert_eq!(Config::from_yaml("# nothing\n").unwrap(), Config::default());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = Config::from_yaml("udp:\n  enabled: true\n  bogus_key: 3\n").unwrap_err();
        assert!(err.message.contains("bogus_key"), "{err}");
        assert_eq!(err.line, Some(3), "{err}");
        assert_eq!(err.key.as_deref(), Some("udp.bogus_key"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_key_and_line() {
        let err =
            Config::from_yaml("log:\n  level: info\nhttp:\n  max_connections: lots\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("http.max_connections"), "{err}");
        assert_eq!(err.line, Some(4), "{err}");
    }

    #[test]
    fn a_value_that_fails_validation_names_the_key_and_line() {
        let err = Config::from_yaml("announce:\n  default_numwant: 500\n  max_numwant: 100\n")
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("announce.default_numwant"));
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn a_validated_key_left_at_its_default_is_named_without_a_line() {
        let err = Config::from_yaml("announce:\n  interval_secs: 9000\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("swarm.peer_lifetime_secs"));
        assert_eq!(err.line, None);
    }

    #[test]
    fn config_files_past_the_cap_are_refused_naming_file_and_cap() {
        let err = Config::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/dev/zero") && err.contains("16 MiB"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        let at_cap = "#".repeat(MAX_CONFIG_BYTES as usize);
        std::fs::write(&path, &at_cap).unwrap();
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        std::fs::write(&path, at_cap + "\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("larger than 16 MiB"), "{err}");
    }

    #[test]
    fn byte_counts_read_in_their_unit() {
        assert_eq!(describe_bytes(16 << 20), "16 MiB (16777216 bytes)");
        assert_eq!(describe_bytes(1 << 30), "1 GiB (1073741824 bytes)");
        assert_eq!(describe_bytes(1000), "1000 bytes");
    }

    #[test]
    fn hex_keys_parse_only_at_full_length() {
        assert_eq!(
            parse_hex_key("000102030405060708090a0b0c0d0e0f").unwrap()[15],
            15
        );
        assert!(parse_hex_key("0001").is_none());
        assert!(parse_hex_key("zz0102030405060708090a0b0c0d0e0f").is_none());
    }
}
