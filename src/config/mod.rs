//! Configuration: one struct tree that is the documentation (`config.yaml`), the defaults and
//! the validation. Errors name the key and the line.

mod locate;
mod replication;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use crate::middleware::{PostHookConfig, PreHookConfig};
pub use replication::{
    ClusterConfig, RedisConfig, RedisMode, ReplicationConfig, SentinelConfig, redact_url,
};

/// The embedded default configuration, with its comments.
pub const DEFAULT_YAML: &str = include_str!("../../config.yaml");

/// Largest config file read. The embedded default is a few KiB, and a config with an inline
/// torrent list of 100,000 hashes about 5 MiB; a larger list belongs in `torrent_approval`'s
/// `file`. Without a cap, `--config /dev/zero` would read until memory ran out.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Largest `udp.connection_id_secret_file`: 32 hex characters and a line end, with room for
/// whitespace around them.
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;

// Bounds of numeric keys: generous for any real deployment, and small enough that no value
// overflows, allocates without bound, or is silently cut short by what consumes it.

/// Most worker threads (`workers`), configured or automatic: far more than the CPUs of most
/// machines, and 64 shards each stay within [`MAX_SHARDS`].
pub const MAX_WORKERS: usize = 1024;
/// Most store shards (`swarm.shards`): lock stripes of a few dozen bytes each, which every
/// cleaning pass visits; 64 per worker for the most workers.
pub const MAX_SHARDS: usize = 65536;
/// Most bytes of HTTP receive buffers one io_uring worker holds (64 times the default 4 MiB).
pub const MAX_HTTP_RING_BYTES: usize = 256 << 20;
/// Largest `udp.socket_recv_buffer_bytes`: setsockopt takes a C int, and the kernel keeps at
/// most INT_MAX / 2 (it doubles the value for its bookkeeping).
pub const MAX_SOCKET_RECV_BUFFER_BYTES: usize = 1 << 30;
/// Most open HTTP connections (`http.max_connections`): each is a file descriptor, and Linux
/// allows a process 1,048,576 by default (fs.nr_open); this leaves room for raised limits.
pub const MAX_HTTP_CONNECTIONS: usize = 16 << 20;
/// Most peers per torrent and family (`swarm.max_peers_per_torrent`): replies count seeders
/// and leechers of both families in 32-bit fields, signed in UDP (BEP 15), and the store keeps
/// a large swarm's positions in 4 bytes. A billion IPv4 peers would also take 31 GB.
pub const MAX_PEERS_PER_TORRENT: usize = 1_000_000_000;
pub(crate) const DAY_SECS: u32 = 86_400;
pub(crate) const WEEK_SECS: u32 = 7 * DAY_SECS;
pub(crate) const MONTH_SECS: u32 = 30 * DAY_SECS;

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
    pub per_source: PerSourceConfig,
    pub metrics: MetricsConfig,
    pub replication: ReplicationConfig,
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
    /// A file holding `connection_id_secret` (a Kubernetes Secret mounted as a file), read
    /// once at load; empty for none.
    pub connection_id_secret_file: String,
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
    pub request_timeout_secs: u32,
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
pub struct PerSourceConfig {
    pub ipv6_prefix_len: u8,
    pub max_http_connections: usize,
    pub new_torrents_burst: u32,
    pub new_torrents_per_minute: u32,
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
            per_source: PerSourceConfig::default(),
            metrics: MetricsConfig::default(),
            replication: ReplicationConfig::default(),
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
            connection_id_secret_file: String::new(),
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
            request_timeout_secs: 10,
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

impl Default for PerSourceConfig {
    fn default() -> Self {
        PerSourceConfig {
            ipv6_prefix_len: 64,
            max_http_connections: 256,
            new_torrents_burst: 2000,
            new_torrents_per_minute: 200,
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
        // YAML breaks lines at \r\n, \r and \n; the key/line lookup splits at \n only. One
        // kind of break for both, so that an error names the line and key the parser meant
        // (the fuzzer found an old-Mac `\r` file named a key on a line that was not there).
        if text.contains('\r') {
            return Config::from_yaml(&text.replace("\r\n", "\n").replace('\r', "\n"));
        }
        // An empty document (or one of only comments) means "all defaults".
        let config = if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            Config::default()
        } else {
            serde_saphyr::from_str::<Config>(text).map_err(|e| parse_error(text, &e))?
        };
        let mut config = config;
        config
            .validate()
            .and_then(|()| config.read_secret_files())
            .map_err(|(key, message)| ConfigError {
                line: locate::line_of_key(text, &key),
                key: Some(key),
                message,
            })?;
        Ok(config)
    }

    /// Reads the secrets that the config names files for into the keys they stand for. Errors
    /// never quote the file's contents.
    fn read_secret_files(&mut self) -> Result<(), (String, String)> {
        const KEY: &str = "udp.connection_id_secret_file";
        let path = &self.udp.connection_id_secret_file;
        if path.is_empty() {
            return Ok(());
        }
        if !self.udp.connection_id_secret.is_empty() {
            return Err((
                KEY.into(),
                "set udp.connection_id_secret or udp.connection_id_secret_file, not both".into(),
            ));
        }
        let bytes = read_capped(Path::new(path), MAX_SECRET_FILE_BYTES, "secret file")
            .map_err(|e| (KEY.to_string(), format!("{e:#}")))?;
        // A line end (`echo KEY > file`, most Secret tools) or spaces around the key are fine.
        let key = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
        if parse_hex_key(key).is_none() {
            return Err((
                KEY.into(),
                format!("{path} must hold 32 hex characters (16 bytes)"),
            ));
        }
        self.udp.connection_id_secret = key.to_string();
        Ok(())
    }

    /// Checks what types alone cannot; returns the dotted key and why.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.replication.enabled {
            self.replication.validate()?;
        }
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
        if self.workers > MAX_WORKERS {
            return fail(
                "workers",
                format!("must be between 1 and {MAX_WORKERS}, or 0 for one per CPU"),
            );
        }
        if let Err(why) = check_log_level(&self.log.level) {
            return fail("log.level", why);
        }
        let ring = &self.io_uring;
        // The completion queue is four times the submission queue, and the kernel refuses one
        // of more than 65536 entries: larger values would pass here and fail at start-up.
        if !(8..=16384).contains(&ring.ring_entries) {
            return fail("io_uring.ring_entries", "must be between 8 and 16384");
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
        // Each slot holds a 1500-byte response buffer: 65536 of them are 94 MiB a worker.
        if !(1..=65536).contains(&ring.udp_send_slots) {
            return fail("io_uring.udp_send_slots", "must be between 1 and 65536");
        }
        if !(512..=65536).contains(&ring.http_recv_buffer_bytes) {
            return fail(
                "io_uring.http_recv_buffer_bytes",
                "must be between 512 and 65536",
            );
        }
        let http_ring_bytes = usize::from(ring.http_recv_buffers) * ring.http_recv_buffer_bytes;
        if http_ring_bytes > MAX_HTTP_RING_BYTES {
            return fail(
                "io_uring.http_recv_buffers",
                format!(
                    "io_uring.http_recv_buffers x io_uring.http_recv_buffer_bytes is {}, \
                     more than the {} a worker may hold",
                    describe_bytes(http_ring_bytes as u64),
                    describe_bytes(MAX_HTTP_RING_BYTES as u64)
                ),
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
        let lifetime_max = crate::protocol::udp::connection_id::MAX_LIFETIME_SECS;
        if !(60..=lifetime_max).contains(&self.udp.connection_id_lifetime_secs) {
            return fail(
                "udp.connection_id_lifetime_secs",
                format!(
                    "must be between 60 and {lifetime_max} (a connection id holds 16 bits of \
                     its issue time)"
                ),
            );
        }
        if !(1..=1024).contains(&self.udp.batch_size) {
            return fail("udp.batch_size", "must be between 1 and 1024");
        }
        // setsockopt takes a C int, and the kernel holds no more than INT_MAX / 2 anyway.
        if self.udp.socket_recv_buffer_bytes > MAX_SOCKET_RECV_BUFFER_BYTES {
            return fail(
                "udp.socket_recv_buffer_bytes",
                format!(
                    "must be at most {}, or 0 for the system default",
                    describe_bytes(MAX_SOCKET_RECV_BUFFER_BYTES as u64)
                ),
            );
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
        // A request of at most 1 MiB (max_request_bytes) holds no more than about 33,000
        // `info_hash=` parameters of 31 bytes or more.
        if self.http.max_scrape_hashes > 32768 {
            return fail("http.max_scrape_hashes", "must be between 1 and 32768");
        }
        if !(1..=MAX_HTTP_CONNECTIONS).contains(&self.http.max_connections) {
            return fail(
                "http.max_connections",
                format!("must be between 1 and {MAX_HTTP_CONNECTIONS}"),
            );
        }
        if !(256..=1024 * 1024).contains(&self.http.max_request_bytes) {
            return fail("http.max_request_bytes", "must be between 256 and 1048576");
        }
        if !(1..=DAY_SECS).contains(&self.http.idle_timeout_secs) {
            return fail(
                "http.idle_timeout_secs",
                format!("must be between 1 and {DAY_SECS} (a day)"),
            );
        }
        if !(1..=3600).contains(&self.http.request_timeout_secs) {
            return fail("http.request_timeout_secs", "must be between 1 and 3600");
        }
        if self.per_source.ipv6_prefix_len > 128 {
            return fail("per_source.ipv6_prefix_len", "must be between 0 and 128");
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
        // UDP replies carry the interval as a signed 32-bit number; a week is far above any
        // tracker's interval and keeps the sum with interval_variation's delay in range.
        if !(1..=WEEK_SECS).contains(&self.announce.interval_secs) {
            return fail(
                "announce.interval_secs",
                format!("must be between 1 and {WEEK_SECS} (a week)"),
            );
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
        let shards = self.swarm.shards;
        if shards != 0 && (shards > MAX_SHARDS || !shards.is_power_of_two()) {
            return fail(
                "swarm.shards",
                format!("must be a power of two up to {MAX_SHARDS}, or 0 for 64 per worker"),
            );
        }
        if self.swarm.max_torrents == 0 {
            return fail("swarm.max_torrents", "must be at least 1");
        }
        if !(1..=MAX_PEERS_PER_TORRENT).contains(&self.swarm.max_peers_per_torrent) {
            return fail(
                "swarm.max_peers_per_torrent",
                format!(
                    "must be between 1 and {MAX_PEERS_PER_TORRENT} (both families' counts \
                     together must fit the 32-bit counts of a reply)"
                ),
            );
        }
        let longest_interval = self
            .announce
            .interval_secs
            .saturating_add(self.longest_interval_delay());
        if self.swarm.peer_lifetime_secs <= longest_interval {
            let what = if longest_interval == self.announce.interval_secs {
                "announce.interval_secs".to_string()
            } else {
                format!(
                    "announce.interval_secs plus interval_variation's max_increase_delta \
                     ({longest_interval})"
                )
            };
            return fail(
                "swarm.peer_lifetime_secs",
                format!("must exceed {what}, or peers expire between announces"),
            );
        }
        if self.swarm.peer_lifetime_secs > MONTH_SECS {
            return fail(
                "swarm.peer_lifetime_secs",
                format!("must be at most {MONTH_SECS} (30 days)"),
            );
        }
        if !(1..=DAY_SECS).contains(&self.swarm.cleaning_interval_secs) {
            return fail(
                "swarm.cleaning_interval_secs",
                format!("must be between 1 and {DAY_SECS} (a day)"),
            );
        }
        Ok(())
    }

    /// The most an interval_variation post-hook may add to `interval`.
    fn longest_interval_delay(&self) -> u32 {
        self.posthooks
            .iter()
            .map(|hook| match hook {
                PostHookConfig::IntervalVariation(c) if c.modify_response_probability > 0.0 => {
                    c.max_increase_delta
                }
                PostHookConfig::IntervalVariation(_) => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// Worker threads: the configured number, or one per CPU this process may run on (at
    /// most [`MAX_WORKERS`], the bound a configured number has too).
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS))
        }
    }

    /// Store shards: the configured number, or 64 per worker rounded to a power of two, at
    /// most [`MAX_SHARDS`].
    pub fn shard_count(&self) -> usize {
        if self.swarm.shards > 0 {
            self.swarm.shards
        } else {
            self.worker_count()
                .saturating_mul(64)
                .min(MAX_SHARDS)
                .next_power_of_two()
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

const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// `log.level`: a level, or a list of tracing directives (`info,hayate::swarm=debug`) each
/// ending in a level. tracing-subscriber reads a bare word that is not a level as a target to
/// log at every level, so `warning` alone would log nothing at all: every directive must name
/// its level here.
fn check_log_level(level: &str) -> Result<(), String> {
    let refuse = |what: String| {
        Err(format!(
            "{what}: give a level ({}) or directives such as `info,hayate=debug`",
            LOG_LEVELS.join(", ")
        ))
    };
    // tracing-subscriber splits directives on commas, and so do we.
    let directives = level.split(',').map(str::trim).filter(|d| !d.is_empty());
    if directives.clone().next().is_none() {
        return refuse("no level".into());
    }
    for directive in directives {
        // The level follows the last `=`; a bare word must be a level itself.
        let (named, bare) = match directive.rsplit_once('=') {
            Some((_, level)) => (level, false),
            None => (directive, true),
        };
        if !LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(named)) {
            let why = if bare {
                "is not a level"
            } else {
                "does not end in a level"
            };
            return refuse(format!("`{directive}` {why}"));
        }
        if tracing_subscriber::EnvFilter::builder()
            .parse(directive)
            .is_err()
        {
            return refuse(format!("`{directive}` is not a valid directive"));
        }
    }
    Ok(())
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
    // An error at the end of the input is placed just past the last line break: name the
    // last line instead of one the file does not have (found by the fuzzer).
    let last = text.lines().count().max(1);
    let line = error
        .location()
        .and_then(|loc| usize::try_from(loc.line()).ok())
        .filter(|&l| l > 0)
        .map(|l| l.min(last));
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
    fn the_connection_id_secret_is_read_from_its_file_without_the_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "00112233445566778899aabbccddeeff\n").unwrap();
        let yaml = format!("udp:\n  connection_id_secret_file: {}\n", path.display());
        let config = Config::from_yaml(&yaml).unwrap();
        assert_eq!(
            config.udp.connection_id_secret,
            "00112233445566778899aabbccddeeff"
        );
    }

    #[test]
    fn a_bad_connection_id_secret_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "0011secret").unwrap();
        let large = dir.path().join("large");
        std::fs::write(&large, "0".repeat(MAX_SECRET_FILE_BYTES as usize + 1)).unwrap();
        let missing = dir.path().join("missing");
        let key = "udp.connection_id_secret_file";
        for path in [&short, &large, &missing] {
            let yaml = format!(
                "log:\n  level: info\nudp:\n  connection_id_secret_file: {}\n",
                path.display()
            );
            let (k, l, message) = refused(&yaml);
            assert_eq!((k.as_deref(), l), (Some(key), Some(4)), "{message}");
            assert!(message.contains(&*path.to_string_lossy()), "{message}");
            assert!(!message.contains("0011secret"), "{message}");
        }
        let both = format!(
            "udp:\n  connection_id_secret: 00112233445566778899aabbccddeeff\n  \
             connection_id_secret_file: {}\n",
            short.display()
        );
        let (k, _, message) = refused(&both);
        assert_eq!(k.as_deref(), Some(key), "{message}");
        assert!(message.contains("not both"), "{message}");
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

    /// Key, line and message of the error `yaml` gives; panics if it is valid.
    fn refused(yaml: &str) -> (Option<String>, Option<usize>, String) {
        let err = Config::from_yaml(yaml).expect_err(yaml);
        (err.key, err.line, err.message)
    }

    #[test]
    fn values_that_crashed_the_process_are_refused_with_key_and_line() {
        let cases = [
            (
                "log:\n  level: info\nworkers: 18446744073709551615\n",
                "workers",
                3,
            ),
            ("workers: 1000000000000\n", "workers", 1),
            ("swarm:\n  shards: 4611686018427387904\n", "swarm.shards", 2),
            ("swarm:\n  shards: 1099511627776\n", "swarm.shards", 2),
            (
                "io_uring:\n  ring_entries: 64\n  udp_send_slots: 1000000000000\n",
                "io_uring.udp_send_slots",
                3,
            ),
        ];
        for (yaml, key, line) in cases {
            let (k, l, message) = refused(yaml);
            assert_eq!(
                (k.as_deref(), l),
                (Some(key), Some(line)),
                "{yaml}: {message}"
            );
        }
    }

    #[test]
    fn the_largest_values_allowed_are_accepted() {
        let yaml = concat!(
            "workers: 1024\n",
            "io_uring:\n",
            "  ring_entries: 16384\n",
            "  udp_send_slots: 65536\n",
            "  http_recv_buffers: 4096\n",
            "  http_recv_buffer_bytes: 65536\n",
            "udp:\n",
            "  connection_id_lifetime_secs: 65533\n",
            "  socket_recv_buffer_bytes: 1073741824\n",
            "http:\n",
            "  max_connections: 16777216\n",
            "  idle_timeout_secs: 86400\n",
            "  max_scrape_hashes: 32768\n",
            "announce:\n",
            "  interval_secs: 604800\n",
            "  min_interval_secs: 604800\n",
            "swarm:\n",
            "  shards: 65536\n",
            "  max_peers_per_torrent: 1000000000\n",
            "  peer_lifetime_secs: 2592000\n",
            "  cleaning_interval_secs: 86400\n",
        );
        let config = Config::from_yaml(yaml).unwrap();
        assert_eq!(config.shard_count(), 65536);
    }

    #[test]
    fn every_bounded_key_refuses_one_past_its_bound() {
        let cases = [
            ("workers: 1025\n", "workers"),
            (
                "io_uring:\n  ring_entries: 16385\n",
                "io_uring.ring_entries",
            ),
            (
                "io_uring:\n  udp_send_slots: 65537\n",
                "io_uring.udp_send_slots",
            ),
            (
                "io_uring:\n  udp_send_slots: 0\n",
                "io_uring.udp_send_slots",
            ),
            (
                "io_uring:\n  http_recv_buffers: 8192\n  http_recv_buffer_bytes: 65536\n",
                "io_uring.http_recv_buffers",
            ),
            (
                "udp:\n  connection_id_lifetime_secs: 65534\n",
                "udp.connection_id_lifetime_secs",
            ),
            (
                "udp:\n  socket_recv_buffer_bytes: 4294967396\n",
                "udp.socket_recv_buffer_bytes",
            ),
            ("udp:\n  batch_size: 1025\n", "udp.batch_size"),
            (
                "http:\n  max_connections: 16777217\n",
                "http.max_connections",
            ),
            (
                "http:\n  idle_timeout_secs: 86401\n",
                "http.idle_timeout_secs",
            ),
            (
                "http:\n  max_scrape_hashes: 32769\n",
                "http.max_scrape_hashes",
            ),
            (
                "announce:\n  interval_secs: 604801\nswarm:\n  peer_lifetime_secs: 2592000\n",
                "announce.interval_secs",
            ),
            ("swarm:\n  shards: 131072\n", "swarm.shards"),
            (
                "swarm:\n  max_peers_per_torrent: 1000000001\n",
                "swarm.max_peers_per_torrent",
            ),
            (
                "swarm:\n  peer_lifetime_secs: 2592001\n",
                "swarm.peer_lifetime_secs",
            ),
            (
                "swarm:\n  cleaning_interval_secs: 86401\n",
                "swarm.cleaning_interval_secs",
            ),
        ];
        for (yaml, key) in cases {
            let (k, l, message) = refused(yaml);
            assert_eq!(k.as_deref(), Some(key), "{yaml}: {message}");
            assert_eq!(l, locate::line_of_key(yaml, key), "{yaml}");
            assert!(l.is_some(), "{yaml}: no line");
        }
    }

    #[test]
    fn the_automatic_shard_count_stays_within_its_bound() {
        let config = |workers| Config {
            workers,
            ..Config::default()
        };
        assert_eq!(config(1).shard_count(), 64);
        assert_eq!(config(MAX_WORKERS).shard_count(), MAX_SHARDS);
        // Built in code, unvalidated: still no overflow.
        assert_eq!(config(usize::MAX).shard_count(), MAX_SHARDS);
        assert!(config(0).shard_count() <= MAX_SHARDS);
        assert!((1..=MAX_WORKERS).contains(&config(0).worker_count()));
    }

    #[test]
    fn hook_options_are_bounded_and_named() {
        let jwt = |option: &str| {
            format!(
                "prehooks:\n  - name: jwt\n    options:\n      issuer: i\n      audience: a\n      \
                 jwks_url: https://keys.example/k\n      {option}\n"
            )
        };
        let cases = [
            (jwt("fetch_timeout_secs: 18446744073709551615"), "fetch_timeout_secs"),
            (jwt("refresh_interval_secs: 86401"), "refresh_interval_secs"),
            (jwt("leeway_secs: 3601"), "leeway_secs"),
            (
                "prehooks:\n  - name: torrent_approval\n    options:\n      hashes: [\"{}\"]\n      \
                 check_interval_secs: 18446744073709551615\n"
                    .replace("{}", &"ab".repeat(20)),
                "check_interval_secs",
            ),
            (
                "posthooks:\n  - name: interval_variation\n    options: {max_increase_delta: 86401}\n"
                    .into(),
                "max_increase_delta",
            ),
        ];
        for (yaml, option) in cases {
            let (key, _, message) = refused(&yaml);
            assert!(
                key.is_some_and(|k| k.ends_with("hooks[0].options")),
                "{yaml}"
            );
            assert!(message.contains(option), "{yaml}: {message}");
        }
    }

    #[test]
    fn peers_must_outlive_the_longest_interval_a_hook_can_give() {
        let yaml = |probability| {
            format!(
                "swarm:\n  peer_lifetime_secs: 2700\nposthooks:\n  - name: interval_variation\n    \
                 options: {{modify_response_probability: {probability}, max_increase_delta: 900}}\n"
            )
        };
        let (key, line, message) = refused(&yaml("0.2"));
        assert_eq!(
            (key.as_deref(), line),
            (Some("swarm.peer_lifetime_secs"), Some(2))
        );
        assert!(message.contains("2700") && message.contains("max_increase_delta"));
        // Never applied: the interval alone counts.
        Config::from_yaml(&yaml("0")).unwrap();
    }

    #[test]
    fn log_levels_and_directive_lists_with_levels_are_accepted() {
        for level in [
            "error",
            "warn",
            "info",
            "debug",
            "trace",
            "off",
            "INFO",
            "info,hayate=debug",
            "warn, hayate::swarm=trace",
            "hayate[worker]=debug",
            "hayate=off,info",
        ] {
            let yaml = format!("log:\n  level: \"{level}\"\n");
            assert_eq!(
                Config::from_yaml(&yaml).map(|c| c.log.level),
                Ok(level.into())
            );
        }
    }

    #[test]
    fn a_log_level_that_is_not_a_level_is_refused() {
        let not_levels = [
            "warning",
            "info,hayate",
            "hayate=loud",
            "",
            " , ",
            "hayate=3",
            "[x=1",
            "hayate[{}]=info",
        ];
        for level in not_levels {
            let yaml = format!("log:\n  level: \"{level}\"\n");
            let (key, line, message) = refused(&yaml);
            assert_eq!(
                (key.as_deref(), line),
                (Some("log.level"), Some(2)),
                "{level}: {message}"
            );
            assert!(
                message.contains("error, warn, info, debug, trace, off"),
                "{message}"
            );
        }
        let (_, _, message) = refused("log:\n  level: warning\n");
        assert!(message.starts_with("`warning` is not a level"), "{message}");
        // Its level is fine; tracing-subscriber's parser refuses the rest.
        let (_, _, message) = refused("log:\n  level: \"hayate[{}]=info\"\n");
        assert!(message.contains("not a valid directive"), "{message}");
    }

    #[test]
    fn a_megabyte_config_names_the_key_and_line_of_its_last_value() {
        // Some 75,000 short lines, then a bad value on the last line: finding that line once
        // took time quadratic in the lines (minutes here; a file of shorter lines, hours).
        let mut yaml =
            String::from("prehooks:\n  - name: client_approval\n    options:\n      deny:\n");
        let mut prefixes = 0;
        while yaml.len() < 1 << 20 {
            yaml.push_str(&format!("        - \"{prefixes:x}\"\n"));
            prefixes += 1;
        }
        yaml.push_str("swarm:\n  shards: 3\n");
        let lines = yaml.lines().count();
        let (key, line, _) = refused(&yaml);
        assert_eq!((key.as_deref(), line), (Some("swarm.shards"), Some(lines)));
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
    fn lines_broken_by_carriage_returns_alone_are_counted_as_yaml_counts_them() {
        // Found by the fuzzer: the parser counted `\r` as a line break and the key lookup did
        // not, so the error named a line the lookup never saw.
        let err = Config::from_yaml("log:\r  level: info\rswarm:\r  shards: 3\r").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("swarm.shards"), "{err}");
        assert_eq!(err.line, Some(4), "{err}");
        let err =
            Config::from_yaml("log:\r\n  level: info\r\nhttp:\r\n  bogus: 1\r\n").unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
    }

    #[test]
    fn an_error_at_the_end_of_the_input_names_the_last_line() {
        for text in ["\n?\n\n", "%%\n", "\n%hos\n"] {
            let err = Config::from_yaml(text).unwrap_err();
            let line = err.line.expect("a line");
            assert!(line <= text.lines().count().max(1), "{text:?}: {err}");
        }
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
