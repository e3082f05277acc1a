//! Redis replication: several nodes serve one set of swarms, a restarted node comes back warm,
//! and Redis is never on the request path.
//!
//! Each node serves from its own store. The store tells its observer of the changes other
//! nodes must hear of (a new peer, one that changed sides or completed, a stop, and one
//! refresh per refresh epoch: see [`crate::swarm::SwarmObserver`]); workers hand them over
//! through per-worker bounded queues ([`outbox`]); one replication thread coalesces them (one
//! change per peer), and every `flush_interval_ms` appends them as batches
//! ([`record`]) to 16 Redis streams, partitioned by info hash, and reads the other nodes'
//! batches from the same streams and applies them to its own store.
//!
//! The streams are the whole state in Redis: each append trims entries older than a peer's
//! lifetime at other nodes (`MINID`), and a key nobody appends to for that long expires, so
//! a dead node leaves nothing behind for longer. Every live peer has a change within that
//! window (the refresh epoch sees to it), so a node that starts, or comes back after Redis
//! lost track of it, replays the window and has the swarms (warm restart). Streams rather
//! than pub/sub: a node that was away resumes from its last id instead of losing what was
//! sent meanwhile; rather than sorted sets per peer: one append per batch, not per peer, and
//! the same keys give both the feed and the state. Hash tags put each stream in its own
//! Cluster slot.

mod backlog;
mod link;
pub mod outbox;
pub mod record;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use redis::Value;

use self::backlog::Backlog;
use self::link::Link;
use self::outbox::{Inboxes, WorkerOutbox};
use self::record::{BatchWriter, Change, decode, decode_header};
use crate::bittorrent::InfoHash;
use crate::config::ReplicationConfig;
use crate::engine::Shutdown;
use crate::metrics::WorkerMetrics;
use crate::swarm::SwarmStore;

/// Streams (and Cluster slots) the changes are spread over, by info hash. Every node reads
/// all of them; a torrent's changes always go to the same one, so they stay in order.
pub const PARTITIONS: usize = 16;
/// Changes in one stream entry: about 100 KB.
const CHANGES_PER_BATCH: usize = 2000;
/// Stream entries read per partition per command.
const ENTRIES_PER_READ: usize = 100;
/// Reads per flush before the thread moves on (a backlog of entries is caught up over a few
/// flushes rather than starving the publishing of this node's own changes).
const READS_PER_FLUSH: usize = 16;
/// Reconnect attempts back off from 100 ms to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Upper bounds of the replication lag histogram's buckets, in seconds.
pub const LAG_BUCKETS: [f64; 9] = [0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 30.0];

/// What the metrics show of replication; written by the replication thread only.
#[derive(Default)]
pub struct ReplicationStatus {
    /// The swarms were loaded from Redis at start (or the wait for Redis ran out): `/readyz`
    /// may say ready.
    pub ready: AtomicBool,
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub batches_published: AtomicU64,
    pub bytes_published: AtomicU64,
    pub applied: AtomicU64,
    pub coalesced: AtomicU64,
    /// Changes dropped because the backlog held `max_backlog` while Redis was away.
    pub dropped_backlog: AtomicU64,
    /// Stream entries that were not batches of ours (garbage, truncated records).
    pub skipped_records: AtomicU64,
    /// Other nodes' changes refused by this node's store limits.
    pub refused: AtomicU64,
    pub lag_buckets: [AtomicU64; LAG_BUCKETS.len()],
    pub lag_count: AtomicU64,
    pub lag_sum_micros: AtomicU64,
    pub warm_restart_peers: AtomicU64,
    pub warm_restart_micros: AtomicU64,
}

impl ReplicationStatus {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn observe_lag(&self, lag: Duration) {
        let secs = lag.as_secs_f64();
        if let Some(i) = LAG_BUCKETS.iter().position(|&b| secs <= b) {
            Self::add(&self.lag_buckets[i], 1);
        }
        Self::add(&self.lag_count, 1);
        Self::add(&self.lag_sum_micros, lag.as_micros() as u64);
    }
}

/// Replication set up, before the store exists: the store's observer, and each worker's end
/// of its queue (install it on the worker's thread).
pub struct Prepared {
    pub observer: Arc<outbox::Outboxes>,
    pub outboxes: Vec<WorkerOutbox>,
    inboxes: Inboxes,
    worker_metrics: Vec<Arc<WorkerMetrics>>,
    link: Link,
    config: ReplicationConfig,
    origin: u64,
    node_id: String,
}

/// Reads the password file and checks the Redis addresses; connects later, on its thread.
pub fn prepare(
    config: &ReplicationConfig,
    worker_metrics: &[Arc<WorkerMetrics>],
) -> anyhow::Result<Prepared> {
    let link = Link::new(config)?;
    let node_id = match config.node_id.as_str() {
        "" => host_name().context("replication.node_id is empty and the host name unknown")?,
        id => id.to_string(),
    };
    let (observer, outboxes, inboxes) = outbox::outboxes(worker_metrics, config.queue_capacity);
    Ok(Prepared {
        observer,
        outboxes,
        inboxes,
        worker_metrics: worker_metrics.to_vec(),
        link,
        config: config.clone(),
        origin: origin_of(&node_id),
        node_id,
    })
}

impl Prepared {
    /// Starts the replication thread: it loads the swarms from Redis first (warm restart).
    pub fn start(
        self,
        store: Arc<SwarmStore>,
        shutdown: Arc<Shutdown>,
    ) -> anyhow::Result<Arc<ReplicationStatus>> {
        let status = Arc::new(ReplicationStatus::default());
        let prefix = &self.config.key_prefix;
        let keys = std::array::from_fn(|p| format!("{prefix}:{{{p}}}:changes"));
        tracing::info!(
            node_id = %self.node_id,
            redis = %self.link.description(),
            "replication on"
        );
        let node = Node {
            link: self.link,
            store,
            inboxes: self.inboxes,
            worker_metrics: self.worker_metrics,
            worker_drops_seen: 0,
            backlog_drops_seen: 0,
            origin: self.origin,
            keys,
            read_ids: std::array::from_fn(|_| None),
            backlog: Backlog::new(self.config.max_backlog),
            writers: std::array::from_fn(|_| BatchWriter::new()),
            changes: Vec::new(),
            status: status.clone(),
            redis_offset_ms: 0,
            backoff: Duration::from_millis(100),
            next_attempt: Instant::now(),
            loaded: false,
            lost_changes: false,
            instance: None,
            instance_key: format!("{prefix}:{{0}}:instance"),
            ever_connected: false,
            said_unreachable: false,
            tick: Duration::from_millis(u64::from(self.config.flush_interval_ms)),
            warm_restart_timeout: Duration::from_secs(u64::from(
                self.config.warm_restart_timeout_secs,
            )),
        };
        std::thread::Builder::new()
            .name("replication".into())
            .spawn(move || node.run(&shutdown))
            .context("spawn replication thread")?;
        Ok(status)
    }
}

struct Node {
    link: Link,
    store: Arc<SwarmStore>,
    inboxes: Inboxes,
    worker_metrics: Vec<Arc<WorkerMetrics>>,
    /// Dropped changes as last seen: more means a republish is due.
    worker_drops_seen: u64,
    backlog_drops_seen: u64,
    origin: u64,
    keys: [String; PARTITIONS],
    /// The last entry read from each stream; `None` before the first load.
    read_ids: [Option<String>; PARTITIONS],
    backlog: Backlog,
    /// One batch being written per partition.
    writers: [BatchWriter; PARTITIONS],
    changes: Vec<Change>,
    status: Arc<ReplicationStatus>,
    /// Redis's clock minus ours: stream ids are Redis time.
    redis_offset_ms: i64,
    backoff: Duration,
    next_attempt: Instant,
    /// The swarms were loaded from Redis since the last time it may have lost track.
    loaded: bool,
    /// Changes were dropped (a full queue or backlog), or Redis lost its data: publish every
    /// local peer again once connected.
    lost_changes: bool,
    /// The marker key's value when last connected (see `check_instance`).
    instance: Option<String>,
    instance_key: String,
    ever_connected: bool,
    /// The current outage was logged.
    said_unreachable: bool,
    tick: Duration,
    warm_restart_timeout: Duration,
}

impl Node {
    fn run(mut self, shutdown: &Shutdown) {
        let started = Instant::now();
        while !shutdown.is_requested() {
            let tick_started = Instant::now();
            self.drain();
            if !self.link.is_connected() && tick_started >= self.next_attempt {
                self.connect();
            }
            if self.link.is_connected() {
                self.serve();
            }
            if !self.status.ready.load(Ordering::Relaxed)
                && started.elapsed() >= self.warm_restart_timeout
            {
                tracing::warn!(
                    "replication: Redis did not answer within replication.warm_restart_timeout_secs; \
                     serving without the other nodes' swarms until it does"
                );
                self.status.ready.store(true, Ordering::Release);
            }
            let spent = tick_started.elapsed();
            if spent < self.tick {
                std::thread::sleep(self.tick - spent);
            }
        }
        // Stopping: what is waiting goes out if Redis takes it at once.
        self.drain();
        if self.link.is_connected() {
            let _ = self.flush();
        }
    }

    /// One connected turn: load if due, publish, read.
    fn serve(&mut self) {
        let result = (|| {
            if !self.loaded {
                self.load()?;
            }
            if self.lost_changes {
                self.republish_local_peers();
            }
            self.flush()?;
            self.poll()
        })();
        if let Err(e) = result {
            self.lost(&e);
        }
    }

    /// Moves what the workers handed over into the backlog, a queue's worth at a time.
    fn drain(&mut self) {
        for inbox in &mut self.inboxes {
            let Ok(chunk) = inbox.read_chunk(inbox.slots()) else {
                continue;
            };
            let (first, second) = chunk.as_slices();
            self.backlog.extend(first, &self.status);
            self.backlog.extend(second, &self.status);
            chunk.commit_all();
        }
        let drops: u64 = self
            .worker_metrics
            .iter()
            .map(|m| m.replication_dropped.get())
            .sum();
        let backlog_drops = self.status.dropped_backlog.load(Ordering::Relaxed);
        if drops > self.worker_drops_seen || backlog_drops > self.backlog_drops_seen {
            self.worker_drops_seen = drops;
            self.backlog_drops_seen = backlog_drops;
            self.lost_changes = true;
        }
    }

    fn connect(&mut self) {
        let connected = self.link.connect();
        if let Err(e) = connected
            .and_then(|()| self.sync_clock())
            .and_then(|()| self.check_instance())
        {
            self.link.disconnect();
            // Once per outage, not once per attempt.
            if !self.said_unreachable {
                self.said_unreachable = true;
                tracing::warn!(
                    redis = %self.link.description(),
                    error = %e,
                    "replication: cannot reach Redis; serving from memory and retrying"
                );
            }
            self.next_attempt = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            return;
        }
        tracing::info!(redis = %self.link.description(), "replication: connected to Redis");
        self.said_unreachable = false;
        self.status.connected.store(true, Ordering::Relaxed);
        self.backoff = Duration::from_millis(100);
        if self.ever_connected {
            // Back after an outage: what was read may have been trimmed meanwhile, or Redis
            // may have restarted empty. Load the window again (applying is idempotent: the
            // latest change of a peer wins) and, if Redis lost its data, publish ours again.
            self.loaded = false;
        }
        self.ever_connected = true;
    }

    /// Logs the outage once (not once per failed batch) and schedules the reconnect.
    fn lost(&mut self, error: &redis::RedisError) {
        self.link.disconnect();
        // The reconnect attempts that follow are this outage: logged here, once.
        self.said_unreachable = true;
        self.status.connected.store(false, Ordering::Relaxed);
        tracing::warn!(
            redis = %self.link.description(),
            error = %error,
            backlog = self.backlog.len(),
            "replication: lost Redis; serving from memory, keeping changes to send, retrying"
        );
        self.next_attempt = Instant::now() + self.backoff;
    }

    /// Notices a Redis that lost its data since we last saw it (restarted without
    /// persistence, or a failover to a replica that had not caught up): the shared marker
    /// key is gone or new. Then every node publishes its peers again.
    fn check_instance(&mut self) -> redis::RedisResult<()> {
        let get = redis::cmd("GET").arg(&self.instance_key).to_owned();
        let mut current: Option<String> = self.link.query(&get)?;
        if current.is_none() {
            let mine = format!("{:016x}", fastrand::u64(..));
            let set = redis::cmd("SET")
                .arg(&self.instance_key)
                .arg(&mine)
                .arg("NX")
                .to_owned();
            let _: Value = self.link.query(&set)?;
            current = self.link.query(&get)?;
        }
        let expire = redis::cmd("PEXPIRE")
            .arg(&self.instance_key)
            .arg(self.window_ms())
            .to_owned();
        let _: Value = self.link.query(&expire)?;
        if self.instance.is_some() && self.instance != current {
            tracing::warn!("replication: Redis lost its data; publishing this node's peers again");
            self.lost_changes = true;
        }
        self.instance = current;
        Ok(())
    }

    fn sync_clock(&mut self) -> redis::RedisResult<()> {
        let (secs, micros): (i64, i64) = self.link.query(&redis::cmd("TIME"))?;
        self.redis_offset_ms = secs * 1000 + micros / 1000 - unix_ms() as i64;
        Ok(())
    }

    fn redis_now_ms(&self) -> u64 {
        (unix_ms() as i64 + self.redis_offset_ms).max(0) as u64
    }

    /// How long a stream keeps changes: a peer's lifetime at other nodes.
    fn window_ms(&self) -> u64 {
        u64::from(self.store.remote_lifetime_secs()) * 1000
    }

    /// Replays every stream's window into the store: warm restart, or a resync after Redis
    /// was away. Then reads go on from the last entry of each.
    fn load(&mut self) -> redis::RedisResult<()> {
        let started = Instant::now();
        let cutoff = self.redis_now_ms().saturating_sub(self.window_ms());
        let mut peers = 0u64;
        for p in 0..PARTITIONS {
            let mut start = format!("{cutoff}-0");
            let mut last = None;
            loop {
                let cmd = redis::cmd("XRANGE")
                    .arg(&self.keys[p])
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(ENTRIES_PER_READ)
                    .to_owned();
                let reply: Value = self.link.query(&cmd)?;
                let entries = stream_entries(&reply);
                let n = entries.len();
                for (id, data) in entries {
                    peers += self.apply(&id, data, true) as u64;
                    start = format!("({id}");
                    last = Some(id);
                }
                // Workers serve (and hand over changes) while a node loads: keep their
                // queues from filling.
                self.drain();
                if n < ENTRIES_PER_READ {
                    break;
                }
            }
            self.read_ids[p] = Some(last.unwrap_or(format!("{cutoff}-0")));
        }
        if !self.status.ready.load(Ordering::Relaxed) {
            let took = started.elapsed();
            self.status
                .warm_restart_peers
                .store(peers, Ordering::Relaxed);
            self.status
                .warm_restart_micros
                .store(took.as_micros() as u64, Ordering::Relaxed);
            tracing::info!(
                changes = peers,
                millis = took.as_millis() as u64,
                "replication: swarms loaded from Redis"
            );
            self.status.ready.store(true, Ordering::Release);
        }
        self.loaded = true;
        Ok(())
    }

    /// Queues every local peer again (after changes were lost).
    fn republish_local_peers(&mut self) {
        self.lost_changes = false;
        let (backlog, status) = (&mut self.backlog, &*self.status);
        let mut peers = 0;
        self.store
            .for_each_local_peer(|info_hash, peer, peer_id, seeder| {
                peers += 1;
                let change = Change::Announced {
                    info_hash: *info_hash,
                    peer,
                    peer_id,
                    seeder,
                    completed: false,
                };
                backlog.push(change, status);
            });
        tracing::info!(peers, "replication: publishing this node's peers again");
    }

    /// Appends the backlog to the streams, in batches; kept for the next try if Redis fails.
    fn flush(&mut self) -> redis::RedisResult<()> {
        if self.backlog.is_empty() {
            return Ok(());
        }
        let created_ms = unix_ms();
        let ttl = self.store.remote_lifetime_secs();
        let window_ms = self.window_ms();
        let cutoff = self.redis_now_ms().saturating_sub(window_ms);
        let mut cmds = Vec::new();
        let (mut bytes, mut batches) = (0, 0);
        let mut xadd = |key: &str, batch: &[u8]| {
            bytes += batch.len();
            batches += 1;
            redis::cmd("XADD")
                .arg(key)
                .arg("MINID")
                .arg("~")
                .arg(cutoff)
                .arg("*")
                .arg("d")
                .arg(batch)
                .to_owned()
        };
        let mut touched = [false; PARTITIONS];
        // One pass in arrival order: each change to its torrent's partition.
        for change in self.backlog.changes() {
            let p = partition(change.info_hash());
            let writer = &mut self.writers[p];
            if !touched[p] {
                touched[p] = true;
                writer.start(self.origin, created_ms, ttl);
            }
            writer.push(change);
            if writer.len() == CHANGES_PER_BATCH {
                cmds.push(xadd(&self.keys[p], writer.finish()));
                writer.start(self.origin, created_ms, ttl);
            }
        }
        for p in (0..PARTITIONS).filter(|&p| touched[p]) {
            let writer = &mut self.writers[p];
            if !writer.is_empty() {
                cmds.push(xadd(&self.keys[p], writer.finish()));
            }
            cmds.push(
                redis::cmd("PEXPIRE")
                    .arg(&self.keys[p])
                    .arg(window_ms)
                    .to_owned(),
            );
        }
        cmds.push(
            redis::cmd("PEXPIRE")
                .arg(&self.instance_key)
                .arg(window_ms)
                .to_owned(),
        );
        self.link.run(&cmds)?;
        ReplicationStatus::add(&self.status.published, self.backlog.len() as u64);
        ReplicationStatus::add(&self.status.batches_published, batches as u64);
        ReplicationStatus::add(&self.status.bytes_published, bytes as u64);
        self.backlog.clear();
        Ok(())
    }

    /// Reads and applies what the other nodes appended since the last read.
    fn poll(&mut self) -> redis::RedisResult<()> {
        for _ in 0..READS_PER_FLUSH {
            let mut full = false;
            let replies: Vec<Value> = if self.link.is_cluster() {
                // One slot a command.
                let mut replies = Vec::with_capacity(PARTITIONS);
                for p in 0..PARTITIONS {
                    let cmd = self.xread(&[p]);
                    replies.push(self.link.query(&cmd)?);
                }
                replies
            } else {
                let all: Vec<usize> = (0..PARTITIONS).collect();
                vec![self.link.query(&self.xread(&all))?]
            };
            for reply in &replies {
                for (key, entries) in streams_of(reply) {
                    let Some(p) = self.keys.iter().position(|k| k.as_bytes() == key) else {
                        continue;
                    };
                    full |= entries.len() >= ENTRIES_PER_READ;
                    for (id, data) in entries {
                        self.apply(&id, data, false);
                        self.read_ids[p] = Some(id);
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    fn xread(&self, partitions: &[usize]) -> redis::Cmd {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(ENTRIES_PER_READ).arg("STREAMS");
        for &p in partitions {
            cmd.arg(&self.keys[p]);
        }
        for &p in partitions {
            cmd.arg(self.read_ids[p].as_deref().unwrap_or("0-0"));
        }
        cmd
    }

    /// Applies one stream entry; returns the changes applied. Entries this node wrote are
    /// skipped unless `own_too` (a restarted node takes back its own peers).
    fn apply(&mut self, id: &str, data: &[u8], own_too: bool) -> usize {
        // Every node reads its own batches back from the shared streams: skip them unread.
        if !own_too && decode_header(data).is_ok_and(|h| h.origin == self.origin) {
            return 0;
        }
        let header = match decode(data, &mut self.changes) {
            Ok(header) => header,
            Err(e) => {
                ReplicationStatus::add(&self.status.skipped_records, 1);
                tracing::debug!(id, error = ?e, "replication: skipped an entry that is not a batch");
                return 0;
            }
        };
        if header.origin == self.origin && !own_too {
            return 0;
        }
        if !own_too {
            let lag = unix_ms().saturating_sub(header.created_ms);
            self.status.observe_lag(Duration::from_millis(lag));
        }
        // The batch's age by Redis's clock (its entry id), so peers expire here when they
        // would have at the origin, whatever the nodes' clocks say.
        let entry_ms = id
            .split_once('-')
            .and_then(|(ms, _)| ms.parse::<u64>().ok())
            .unwrap_or(0);
        let age_secs = (self.redis_now_ms().saturating_sub(entry_ms) / 1000) as u32;
        let Some(left) = header.ttl_secs.checked_sub(age_secs).filter(|&s| s > 0) else {
            return 0;
        };
        let expires_at = self.store.clock().now().saturating_add(left);
        let mut applied = 0;
        for change in &self.changes {
            match *change {
                Change::Announced {
                    info_hash,
                    peer,
                    peer_id,
                    seeder,
                    completed,
                } => {
                    match self
                        .store
                        .apply_remote(&info_hash, peer, peer_id, seeder, completed, expires_at)
                    {
                        Ok(()) => applied += 1,
                        Err(_) => ReplicationStatus::add(&self.status.refused, 1),
                    }
                }
                Change::Removed { info_hash, peer } => {
                    self.store.apply_remote_removal(&info_hash, peer);
                    applied += 1;
                }
            }
        }
        ReplicationStatus::add(&self.status.applied, applied as u64);
        applied
    }
}

fn partition(info_hash: &InfoHash) -> usize {
    usize::from(info_hash.0[19]) % PARTITIONS
}

/// A node's name as the 64 bits each batch carries.
fn origin_of(node_id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    // Fixed keys: every node must compute the same value for a name.
    BuildHasherDefault::<siphasher::sip::SipHasher13>::default().hash_one(node_id)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes through the pointer, and `buf` is a live
    // array of that many; it may leave the name unterminated, which the search below allows.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// A stream entry: its id and the bytes of its `d` field.
type StreamEntry<'a> = (String, &'a [u8]);

/// The entries of an XRANGE reply: (id, the `d` field's bytes). Entries of another shape
/// (another program's data in our key) are left out.
fn stream_entries(reply: &Value) -> Vec<(String, &[u8])> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else {
                return None;
            };
            let id = String::from_utf8(id.clone()).ok()?;
            let data = fields.chunks_exact(2).find_map(|pair| match pair {
                [Value::BulkString(name), Value::BulkString(data)] if name == b"d" => {
                    Some(data.as_slice())
                }
                _ => None,
            });
            // An entry without our field still moves the read on: give it an empty record.
            Some((id, data.unwrap_or(&[])))
        })
        .collect()
}

/// The streams of an XREAD reply: (key, entries). RESP2 answers with an array of
/// [key, entries] pairs, RESP3 with a map.
fn streams_of(reply: &Value) -> Vec<(&[u8], Vec<StreamEntry<'_>>)> {
    let pairs: Vec<(&Value, &Value)> = match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => Some((&kv[0], &kv[1])),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(key, entries)| match key {
            Value::BulkString(key) => Some((key.as_slice(), stream_entries(entries))),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_another_shape_are_left_out_of_a_reply() {
        let entry = |id: &str, field: &str, data: &[u8]| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(field.as_bytes().to_vec()),
                    Value::BulkString(data.to_vec()),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            entry("1-0", "d", b"abc"),
            Value::Int(3),
            entry("2-0", "other", b"x"),
        ]);
        let entries = stream_entries(&reply);
        assert_eq!(
            entries,
            [("1-0".to_string(), &b"abc"[..]), ("2-0".into(), &b""[..])]
        );
        assert!(stream_entries(&Value::Nil).is_empty());
        let xread = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"k".to_vec()),
            Value::Array(vec![entry("3-1", "d", b"z")]),
        ])]);
        assert_eq!(streams_of(&xread)[0].0, b"k");
        assert_eq!(streams_of(&xread)[0].1.len(), 1);
    }

    #[test]
    fn node_names_map_to_the_same_origin_everywhere() {
        assert_eq!(origin_of("node-a"), origin_of("node-a"));
        assert_ne!(origin_of("node-a"), origin_of("node-b"));
    }
}
