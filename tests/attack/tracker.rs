//! The tracker under attack: the real `hayate` binary in a process of its own, on loopback ports
//! chosen here, configured by a YAML file written here; its CPU time and memory read from
//! /proc; stopped by its PID whatever happens.

use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::wire;

const BIN: &str = env!("CARGO_BIN_EXE_hayate");
const READY_WITHIN: Duration = Duration::from_secs(10);
const SIGKILL_AFTER: Duration = Duration::from_secs(3);
/// Attempts to start when another process takes a chosen port between its release and the
/// tracker's bind.
const START_ATTEMPTS: usize = 3;

#[derive(Clone, Copy, Debug)]
pub struct TrackerAddrs {
    pub udp: SocketAddr,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
}

/// The config every run starts from; `overrides` (YAML) is merged over it, key by key.
fn base_config_yaml(engine: &str, addrs: &TrackerAddrs) -> String {
    let mut secret = [0u8; 16];
    fastrand::fill(&mut secret);
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "workers: 2
engine: {engine}
log:
  level: warn
udp:
  bind: [\"{udp}\"]
  connection_id_secret: \"{secret}\"
http:
  bind: [\"{http}\"]
metrics:
  bind: \"{metrics}\"
",
        udp = addrs.udp,
        http = addrs.http,
        metrics = addrs.metrics,
    )
}

/// `overrides` merged into `base`: mappings key by key, anything else replaced.
fn merge(base: &mut serde_json::Value, overrides: serde_json::Value) {
    match (base, overrides) {
        (serde_json::Value::Object(base), serde_json::Value::Object(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overrides) => *base = overrides,
    }
}

fn config_yaml(engine: &str, addrs: &TrackerAddrs, overrides: &str) -> Result<String, String> {
    let mut config: serde_json::Value = serde_saphyr::from_str(&base_config_yaml(engine, addrs))
        .map_err(|e| format!("base config: {e}"))?;
    if !overrides.trim().is_empty() {
        let overrides: serde_json::Value = serde_saphyr::from_str(overrides)
            .map_err(|e| format!("config overrides {overrides:?}: {e}"))?;
        merge(&mut config, overrides);
    }
    serde_saphyr::to_string(&config).map_err(|e| format!("writing the config: {e}"))
}

/// Three loopback ports free right now: the OS picks them, and they are released for the
/// tracker to bind (another process could take one in between; [`TrackerProcess::start`]
/// retries then).
fn free_addrs() -> std::io::Result<TrackerAddrs> {
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let http = TcpListener::bind("127.0.0.1:0")?;
    let metrics = TcpListener::bind("127.0.0.1:0")?;
    Ok(TrackerAddrs {
        udp: udp.local_addr()?,
        http: http.local_addr()?,
        metrics: metrics.local_addr()?,
    })
}

/// CPU time and memory of the process at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Readings {
    pub at: Instant,
    /// User plus system time, seconds.
    pub cpu_secs: f64,
    pub rss_kib: u64,
    /// Peak RSS since the process started.
    pub peak_rss_kib: u64,
    pub open_fds: usize,
}

pub fn read_readings(pid: u32) -> Option<Readings> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after
    // its closing parenthesis, where field 3 (state) comes first.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    Some(Readings {
        at,
        cpu_secs: (utime + stime) as f64 / ticks_per_sec,
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:")?,
        open_fds,
    })
}

/// The current RSS alone, for the watchdog that samples it often.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How the process ended when it was stopped.
#[derive(Clone, Copy, Debug)]
pub struct StopOutcome {
    /// It had already exited before it was asked to stop.
    pub exited_early: Option<ExitStatus>,
    /// Its status after SIGTERM (or SIGKILL).
    pub status: Option<ExitStatus>,
    /// SIGTERM did not stop it within 3 s.
    pub needed_sigkill: bool,
}

/// A running tracker; dropping it stops the process (SIGTERM, SIGKILL after 3 s).
pub struct TrackerProcess {
    child: Child,
    pub addrs: TrackerAddrs,
    pub config_text: String,
    stderr_log: std::fs::File,
    stopped: Option<StopOutcome>,
    _config_file: tempfile::NamedTempFile,
}

impl TrackerProcess {
    /// Starts `hayate` on `engine` with `overrides` (YAML) merged over the base config, and
    /// waits until its /readyz answers 200.
    pub fn start(engine: &str, overrides: &str) -> Result<TrackerProcess, String> {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let addrs = free_addrs().map_err(|e| format!("no free loopback port: {e}"))?;
            let config_text = config_yaml(engine, &addrs, overrides)?;
            match Self::start_once(addrs, config_text) {
                Ok(tracker) => return Ok(tracker),
                Err((message, port_taken)) => {
                    last_error = message;
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    /// The error, and whether it was a port taken by someone else (worth another attempt).
    fn start_once(
        addrs: TrackerAddrs,
        config_text: String,
    ) -> Result<TrackerProcess, (String, bool)> {
        let fail = |m: String| (m, false);
        let mut config_file = tempfile::Builder::new()
            .prefix("hayate-attack-")
            .suffix(".yaml")
            .tempfile()
            .map_err(|e| fail(format!("config file: {e}")))?;
        config_file
            .write_all(config_text.as_bytes())
            .map_err(|e| fail(format!("config file: {e}")))?;
        // A file rather than a pipe: nobody has to drain it while floods run, and a tracker
        // that logs a lot can never block on it.
        let stderr_log = tempfile::tempfile().map_err(|e| fail(format!("log file: {e}")))?;
        let mut command = Command::new(BIN);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe.
        unsafe {
            // Should this tool itself be killed (a CI timeout), the kernel sends the tracker
            // SIGTERM: no tracker outlives the test. The signal follows the death of the
            // thread that spawned the tracker, which is the main thread here.
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .arg("--config")
            .arg(config_file.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                stderr_log
                    .try_clone()
                    .map_err(|e| fail(format!("log file: {e}")))?,
            )
            .spawn()
            .map_err(|e| fail(format!("spawn {BIN}: {e}")))?;
        let mut tracker = TrackerProcess {
            child,
            addrs,
            config_text,
            stderr_log,
            stopped: None,
            _config_file: config_file,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = tracker.child.try_wait() {
                let log = tracker.stderr_tail();
                let port_taken = log.contains("in use");
                return Err((
                    format!(
                        "hayate exited before it was ready ({status}).\nIts config:\n{}\nIts log:\n{log}",
                        tracker.config_text
                    ),
                    port_taken,
                ));
            }
            if probe_status(addrs.metrics, "/readyz", Duration::from_millis(500)) == Some(200) {
                return Ok(tracker);
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "hayate was not ready within {READY_WITHIN:?}.\nIts log:\n{}",
                    tracker.stderr_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn readings(&self) -> Option<Readings> {
        read_readings(self.pid())
    }

    pub fn is_running(&mut self) -> bool {
        self.stopped.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// The last 4 KiB of what it logged.
    pub fn stderr_tail(&mut self) -> String {
        let mut log = Vec::new();
        let _ = self.stderr_log.rewind();
        let _ = self.stderr_log.read_to_end(&mut log);
        let start = log.len().saturating_sub(4096);
        String::from_utf8_lossy(&log[start..]).into_owned()
    }

    /// SIGTERM, then SIGKILL if it still runs after 3 s; waits for it. Idempotent.
    pub fn stop(&mut self) -> StopOutcome {
        if let Some(outcome) = self.stopped {
            return outcome;
        }
        let exited_early = self.child.try_wait().ok().flatten();
        let mut outcome = StopOutcome {
            exited_early,
            status: exited_early,
            needed_sigkill: false,
        };
        if exited_early.is_none() {
            let pid = self.pid() as libc::pid_t;
            // SAFETY: kill(2) on the PID of our own child, not yet reaped (try_wait said it
            // runs), so the PID cannot belong to another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + SIGKILL_AFTER;
            while outcome.status.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                outcome.status = self.child.try_wait().ok().flatten();
            }
            if outcome.status.is_none() {
                outcome.needed_sigkill = true;
                // Child::kill sends SIGKILL to this child's PID.
                let _ = self.child.kill();
                outcome.status = self.child.wait().ok();
            }
        }
        self.stopped = Some(outcome);
        outcome
    }
}

impl Drop for TrackerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status code of `GET path` on `addr`, or None if no complete reply came within `wait`.
pub fn probe_status(addr: SocketAddr, path: &str, wait: Duration) -> Option<u16> {
    let deadline = Instant::now() + wait;
    let mut stream = TcpStream::connect_timeout(&addr, wait).ok()?;
    stream.set_write_timeout(Some(wait)).ok()?;
    stream
        .write_all(wire::http_get(path, addr, true).as_bytes())
        .ok()?;
    wire::read_http_reply(&mut stream, deadline)
        .ok()
        .map(|(status, _)| status)
}

/// What the store holds, from the tracker's own gauges: (torrents, peers).
pub fn store_gauges(metrics: SocketAddr, wait: Duration) -> Option<(u64, u64)> {
    let deadline = Instant::now() + wait;
    let mut stream = TcpStream::connect_timeout(&metrics, wait).ok()?;
    stream.set_write_timeout(Some(wait)).ok()?;
    stream
        .write_all(wire::http_get("/metrics", metrics, true).as_bytes())
        .ok()?;
    let (status, body) = wire::read_http_reply(&mut stream, deadline).ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let gauge = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    };
    Some((gauge("hayate_torrents")?, gauge("hayate_peers")?))
}
