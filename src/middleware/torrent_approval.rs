//! Admits or refuses torrents by info hash: a list inline in the config, a file of hex hashes
//! (one per line, `#` comments), or both. The file is reread on SIGHUP and when it changes; the
//! set is swapped atomically, so the hot path never waits on a reload. A reload that fails
//! keeps the old set and logs why.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Deserialize;

use super::{PreHook, RequestContext};
use crate::bittorrent::{AnnounceRequest, ClientError, InfoHash};
use crate::config::{DAY_SECS, describe_bytes};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListMode {
    /// Only listed torrents are served.
    #[default]
    Allow,
    /// Listed torrents are refused.
    Deny,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TorrentApprovalConfig {
    pub mode: ListMode,
    /// Info hashes as 40 hex characters.
    pub hashes: Vec<String>,
    /// A file of info hashes, one per line; reread on SIGHUP and when it changes.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes (seconds).
    pub check_interval_secs: u64,
}

impl Default for TorrentApprovalConfig {
    fn default() -> Self {
        TorrentApprovalConfig {
            mode: ListMode::Allow,
            hashes: Vec::new(),
            file: None,
            check_interval_secs: 5,
        }
    }
}

impl TorrentApprovalConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.hashes.is_empty() && self.file.is_none() {
            return Err("set `hashes`, `file` or both".into());
        }
        for hash in &self.hashes {
            parse_hex_hash(hash)
                .ok_or_else(|| format!("`{hash}` is not an info hash (40 hex characters)"))?;
        }
        // Past a day the file is as good as never checked (SIGHUP still reloads it).
        if !(1..=u64::from(DAY_SECS)).contains(&self.check_interval_secs) {
            return Err(format!(
                "`check_interval_secs` must be between 1 and {DAY_SECS} (a day)"
            ));
        }
        Ok(())
    }
}

fn parse_hex_hash(text: &str) -> Option<InfoHash> {
    let text = text.trim();
    if text.len() != 40 || !text.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 20];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(InfoHash(hash))
}

/// Largest hash file read: at 41 bytes a line, 26 million hashes, several times the torrents
/// of the largest public trackers. The file is read a line at a time, so this bounds the time
/// a (re)load takes, and the set's memory (about 30 bytes a hash), not a copy of the text.
const MAX_HASH_FILE_BYTES: u64 = 1 << 30;
/// Longest line: a hash and a comment. Bounds the line buffer, so that a file without line
/// breaks (/dev/zero) is refused at once rather than read whole into one line.
const MAX_HASH_LINE_BYTES: u64 = 4096;

/// Reads a file of hex info hashes; the error names the file and line.
fn read_hash_file(path: &Path) -> anyhow::Result<HashSet<InfoHash>> {
    read_hashes(path, MAX_HASH_FILE_BYTES)
}

/// [`read_hash_file`] with the size cap given.
fn read_hashes(path: &Path, cap: u64) -> anyhow::Result<HashSet<InfoHash>> {
    use std::io::{BufRead, BufReader, Read};
    let cannot = |e: std::io::Error| anyhow::anyhow!("read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut reader = BufReader::new(file.take(cap + 1));
    let mut set = HashSet::new();
    let mut line = Vec::new();
    let mut total = 0u64;
    for n in 1.. {
        line.clear();
        let read = (&mut reader)
            .take(MAX_HASH_LINE_BYTES + 1)
            .read_until(b'\n', &mut line)
            .map_err(cannot)?;
        if read == 0 {
            break;
        }
        total += read as u64;
        if total > cap {
            anyhow::bail!(
                "{} is larger than {}, the most hayate reads",
                path.display(),
                describe_bytes(cap)
            );
        }
        if line.len() as u64 > MAX_HASH_LINE_BYTES {
            anyhow::bail!(
                "{} line {n}: longer than {MAX_HASH_LINE_BYTES} bytes",
                path.display()
            );
        }
        let line = std::str::from_utf8(&line)
            .map_err(|_| anyhow::anyhow!("{} line {n}: not UTF-8", path.display()))?;
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let hash = parse_hex_hash(line).ok_or_else(|| {
            anyhow::anyhow!("{} line {n}: `{line}` is not an info hash", path.display())
        })?;
        set.insert(hash);
    }
    Ok(set)
}

struct Shared {
    set: ArcSwap<HashSet<InfoHash>>,
    inline: HashSet<InfoHash>,
    file: Option<PathBuf>,
    /// The file's (modification time, length) at the last load.
    seen: Mutex<Option<(SystemTime, u64)>>,
}

impl Shared {
    fn file_stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(self.file.as_ref()?).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    /// Rereads the file; on failure keeps the current set.
    fn reload(&self) -> anyhow::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let stamp = self.file_stamp();
        let mut set = read_hash_file(file)?;
        set.extend(self.inline.iter().copied());
        let count = set.len();
        self.set.store(Arc::new(set));
        *self.seen.lock() = stamp;
        tracing::info!(file = %file.display(), hashes = count, "torrent approval list loaded");
        Ok(())
    }

    fn reload_or_log(&self) {
        if let Err(e) = self.reload() {
            tracing::warn!("torrent approval list not reloaded, keeping the old one: {e:#}");
            // Do not retry the same broken file every few seconds.
            *self.seen.lock() = self.file_stamp();
        }
    }
}

pub struct TorrentApproval {
    shared: Arc<Shared>,
    allow: bool,
}

impl TorrentApproval {
    pub fn new(config: &TorrentApprovalConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let inline: HashSet<InfoHash> = config
            .hashes
            .iter()
            .filter_map(|h| parse_hex_hash(h))
            .collect();
        let shared = Arc::new(Shared {
            set: ArcSwap::from_pointee(inline.clone()),
            inline,
            file: config.file.clone(),
            seen: Mutex::new(None),
        });
        // At start-up a bad file is a config error, not a warning.
        shared.reload()?;
        if config.file.is_some() {
            watch(
                Arc::downgrade(&shared),
                Duration::from_secs(config.check_interval_secs),
            );
        }
        Ok(TorrentApproval {
            shared,
            allow: config.mode == ListMode::Allow,
        })
    }
}

/// Polls the file's stamp; stops when the hook is dropped.
fn watch(shared: Weak<Shared>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("torrent-list".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let stamp = shared.file_stamp();
                if stamp.is_some() && stamp != *shared.seen.lock() {
                    shared.reload_or_log();
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch the torrent approval file (SIGHUP still reloads it): {e}");
    }
}

const NOT_APPROVED: ClientError = ClientError::new("torrent not approved");

impl PreHook for TorrentApproval {
    fn name(&self) -> &'static str {
        "torrent_approval"
    }

    fn before_announce(
        &self,
        _: &RequestContext<'_>,
        request: &mut AnnounceRequest,
    ) -> Result<(), ClientError> {
        let listed = self.shared.set.load().contains(&request.info_hash);
        if listed == self.allow {
            Ok(())
        } else {
            Err(NOT_APPROVED)
        }
    }

    fn before_scrape(
        &self,
        _: &RequestContext<'_>,
        info_hashes: &mut Vec<InfoHash>,
    ) -> Result<(), ClientError> {
        // A scrape answers for approved torrents only: the others are left out, as unknown.
        let set = self.shared.set.load();
        info_hashes.retain(|h| set.contains(h) == self.allow);
        Ok(())
    }

    fn reload(&self) {
        self.shared.reload_or_log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_files_parse_with_comments_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.txt");
        std::fs::write(
            &path,
            format!(
                "# approved\n{}\n\n{}  # two\n",
                "ab".repeat(20),
                "CD".repeat(20)
            ),
        )
        .unwrap();
        let set = read_hash_file(&path).unwrap();
        assert!(set.contains(&InfoHash([0xab; 20])) && set.contains(&InfoHash([0xcd; 20])));
        std::fs::write(&path, "ab\n").unwrap();
        let err = read_hash_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn hash_files_past_the_caps_are_refused() {
        // No line breaks: refused at the first line's cap, not read whole.
        let err = read_hash_file(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/zero line 1: longer than 4096 bytes"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.txt");
        let line = format!("{}\n", "ab".repeat(20));
        std::fs::write(&path, line.repeat(3)).unwrap();
        let cap = 3 * line.len() as u64;
        assert_eq!(read_hashes(&path, cap).unwrap().len(), 1);
        let err = read_hashes(&path, cap - 1).unwrap_err().to_string();
        assert!(err.contains("larger than 122 bytes"), "{err}");
        let long = format!("{} # {}\n", "ab".repeat(20), "x".repeat(5000));
        std::fs::write(&path, long).unwrap();
        let err = read_hash_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 1: longer than"), "{err}");
    }
}
