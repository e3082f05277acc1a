//! Attack test: floods a real hayate process (the binary, on loopback) while a legitimate client
//! announces, and reports how that client fares, what the tracker's CPU and memory did, and how
//! much larger than its request any UDP reply is.
//!
//! `cargo test` runs the short CI mode (each attack ~3 s on both engines, then assertions);
//! `cargo test --release --test attack -- --full` prints the full report. `-- --help` for more.

mod amplification;
mod attacks;
mod floods;
mod legit;
mod report;
mod tracker;
mod wire;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use attacks::{Attack, FloodReport};
use legit::{LegitResults, LegitTargets};
use tracker::{Readings, StopOutcome, TrackerProcess};

const USAGE: &str = "\
attack: floods a real hayate process on loopback while a legitimate client announces every
100 ms (UDP connect+announce and HTTP announce, each to be answered within 1 s), and reports
how that client fares, the tracker's CPU and memory, and UDP amplification.

  cargo test --test attack
      short CI mode: each attack ~3 s on both engines, then assertions (exit 1 if any fails)
  cargo test --release --test attack -- --full [--secs N] [--engine E] [--attack NAME]...
      the full report: markdown tables per engine, then the amplification table

Options:
  --full          the full report (exit 0 whatever the figures)
  --secs N        seconds the legitimate client runs during each attack (default 10 full, 3 CI)
  --engine E      epoll, io_uring or both (default both)
  --attack NAME   run only this attack; repeat for several (default all). NAME is one of
                  baseline, udp-garbage, torrent-flood, peer-flood, slowloris, conn-flood,
                  pipeliner, metrics-flood, amplification
  --help          this text
";

const CI_SECS: u64 = 3;
const FULL_SECS: u64 = 10;
/// The flood runs this long before the legitimate client starts, so that caps fill first.
const RAMP_UP: Duration = Duration::from_millis(500);
/// The flood's own deadline, past the client's end: it is normally stopped before.
const FLOOD_GRACE: Duration = Duration::from_secs(2);
/// CI bound on the tracker's peak RSS during any attack.
const RSS_BOUND_MIB: f64 = 200.0;
/// The flood stops early if the tracker's RSS passes this: the machine is shared.
const RSS_SAFETY_LIMIT_MIB: u64 = 1024;
/// Share of the legitimate client's attempts to be answered within 1 s, in the CI mode.
const REQUIRED_OK_PERCENT: f64 = 99.0;
const ENGINES: [&str; 2] = ["epoll", "io_uring"];
const AMPLIFICATION: &str = "amplification";

#[derive(Debug)]
struct Options {
    full: bool,
    secs: u64,
    engines: Vec<&'static str>,
    attacks: Vec<Attack>,
    amplification: bool,
}

/// What to run; None when there is nothing to run (help, a test listing, a filter that
/// leaves this test out).
fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut full = false;
    let mut secs = None;
    let mut engines = ENGINES.to_vec();
    let mut attacks = Vec::new();
    let mut amplification = None;
    let mut filters = Vec::new();
    let mut exact = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--full" => full = true,
            "--secs" => {
                let n: u64 = value("--secs")?
                    .parse()
                    .map_err(|_| "--secs takes a whole number of seconds".to_string())?;
                if !(1..=3600).contains(&n) {
                    return Err("--secs must be 1 to 3600".into());
                }
                secs = Some(n);
            }
            "--engine" => {
                engines = match value("--engine")?.as_str() {
                    "epoll" => vec!["epoll"],
                    "io_uring" => vec!["io_uring"],
                    "both" => ENGINES.to_vec(),
                    other => return Err(format!("unknown engine {other:?}")),
                }
            }
            "--attack" => {
                let name = value("--attack")?;
                if name == AMPLIFICATION {
                    amplification = Some(true);
                } else {
                    attacks.push(
                        Attack::from_name(&name)
                            .ok_or_else(|| format!("unknown attack {name:?}"))?,
                    );
                    amplification.get_or_insert(false);
                }
            }
            // libtest's flags, which `cargo test -- ...` passes to every test binary.
            "--list" => {
                println!("attack: test");
                return Ok(None);
            }
            "--ignored" => return Ok(None),
            "--exact" => exact = true,
            "--nocapture" | "--show-output" | "--quiet" | "-q" | "--include-ignored" => {}
            "--test-threads" | "--color" | "--format" | "--logfile" | "--skip" | "-Z" => {
                value(arg)?;
            }
            flag if flag.starts_with("--test-threads=") || flag.starts_with("--color=") => {}
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            // `cargo test NAME` passes NAME as a filter to every test binary.
            filter => filters.push(filter.to_string()),
        }
    }
    let selected = filters.is_empty()
        || filters.iter().any(|f| {
            if exact {
                f == "attack"
            } else {
                "attack".contains(f.as_str())
            }
        });
    if !selected {
        return Ok(None);
    }
    if attacks.is_empty() && amplification != Some(true) {
        attacks = Attack::ALL.to_vec();
    }
    Ok(Some(Options {
        full,
        secs: secs.unwrap_or(if full { FULL_SECS } else { CI_SECS }),
        engines,
        attacks,
        amplification: amplification.unwrap_or(true),
    }))
}

/// Thousands of sockets: lift the soft descriptor limit to the hard one.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// One attack against one fresh tracker.
pub struct AttackOutcome {
    pub flood: FloodReport,
    pub legit: LegitResults,
    /// At the flood's start and at the end of the legitimate client's run.
    pub before: Option<Readings>,
    pub after: Option<Readings>,
    /// (torrents, peers) the store held after the attack.
    pub store: Option<(u64, u64)>,
    pub rss_watch: RssWatch,
    pub alive_at_end: bool,
    pub stop: StopOutcome,
    /// Lines the tracker logged (warnings and errors), and the last one.
    pub log_lines: usize,
    pub last_log_line: Option<String>,
}

impl AttackOutcome {
    /// The tracker's CPU time over the attack, in cores.
    pub fn cpu_cores(&self) -> Option<f64> {
        let (before, after) = (self.before?, self.after?);
        let wall = after.at.duration_since(before.at).as_secs_f64();
        (wall > 0.0).then(|| (after.cpu_secs - before.cpu_secs) / wall)
    }
}

pub struct AttackRun {
    pub attack: Attack,
    pub outcome: Result<AttackOutcome, String>,
}

pub struct EngineRun {
    pub engine: &'static str,
    pub attacks: Vec<AttackRun>,
    pub amplification: Option<Result<Vec<amplification::Case>, String>>,
}

/// What the watchdog saw of the tracker's RSS during the flood.
#[derive(Clone, Debug, Default)]
pub struct RssWatch {
    /// The largest RSS sampled, and how long after the flood's start.
    pub peak_kib: u64,
    pub peak_after: Duration,
    /// Why the flood was stopped early, if it was.
    pub stopped_early: Option<String>,
}

/// Samples the tracker's RSS every 50 ms until `stop`; sets `stop` itself, and says why, if
/// the RSS passes the safety limit or the process is gone.
fn watch_tracker(pid: u32, stop: &AtomicBool) -> RssWatch {
    let started = Instant::now();
    let mut watch = RssWatch::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(rss) = tracker::rss_kib(pid) else {
            stop.store(true, Ordering::Relaxed);
            watch.stopped_early = Some(format!(
                "flood stopped after {:.1} s: the tracker process is gone",
                started.elapsed().as_secs_f64()
            ));
            break;
        };
        if rss > watch.peak_kib {
            watch.peak_kib = rss;
            watch.peak_after = started.elapsed();
        }
        if rss / 1024 >= RSS_SAFETY_LIMIT_MIB {
            stop.store(true, Ordering::Relaxed);
            watch.stopped_early = Some(format!(
                "flood stopped after {:.1} s: tracker RSS reached {} MiB (safety limit {RSS_SAFETY_LIMIT_MIB} MiB)",
                started.elapsed().as_secs_f64(),
                rss / 1024
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    watch
}

fn run_attack(engine: &str, attack: Attack, window: Duration) -> Result<AttackOutcome, String> {
    let mut tracker = TrackerProcess::start(engine, attacks::config_overrides(attack))?;
    let addrs = tracker.addrs;
    let pid = tracker.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let until = floods::Until {
        deadline: Instant::now() + RAMP_UP + window + FLOOD_GRACE,
        stop: stop.clone(),
    };
    let before = tracker.readings();
    let flood = std::thread::Builder::new()
        .name(format!("flood-{}", attack.name()))
        .spawn(move || {
            floods::lower_this_thread_priority();
            attack.flood(addrs, &until)
        })
        .map_err(|e| format!("cannot start the flood thread: {e}"))?;
    let watchdog = {
        let stop = stop.clone();
        std::thread::spawn(move || watch_tracker(pid, &stop))
    };
    std::thread::sleep(RAMP_UP);
    let legit = legit::run(
        LegitTargets {
            udp: addrs.udp,
            http: addrs.http,
            healthz: attack.probes_healthz().then_some(addrs.metrics),
        },
        window,
    );
    let after = tracker.readings();
    stop.store(true, Ordering::Relaxed);
    let flood = flood.join().unwrap_or_else(|_| FloodReport {
        sent: "flood thread panicked".into(),
        notes: Vec::new(),
    });
    let rss_watch = watchdog.join().unwrap_or_default();
    let store = tracker::store_gauges(addrs.metrics, Duration::from_secs(2));
    let alive_at_end = tracker.is_running();
    let stop = tracker.stop();
    let log = tracker.stderr_tail();
    Ok(AttackOutcome {
        flood,
        legit,
        before,
        after,
        store,
        rss_watch,
        alive_at_end,
        stop,
        log_lines: log.lines().count(),
        last_log_line: log.lines().last().map(str::to_string),
    })
}

fn run_amplification(
    engine: &str,
    random_samples: usize,
) -> Result<Vec<amplification::Case>, String> {
    let tracker = TrackerProcess::start(engine, "")?;
    amplification::measure(tracker.addrs.udp, random_samples)
        .map_err(|e| format!("amplification measurement failed: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(Some(options)) => options,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("attack: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    let window = Duration::from_secs(options.secs);
    let random_samples = if options.full { 2000 } else { 300 };
    let started = Instant::now();
    let mut runs = Vec::new();
    for &engine in &options.engines {
        let mut run = EngineRun {
            engine,
            attacks: Vec::new(),
            amplification: None,
        };
        for &attack in &options.attacks {
            eprintln!(
                "attack: {engine} {} ({} s) ... [{:.0} s so far]",
                attack.name(),
                options.secs,
                started.elapsed().as_secs_f64()
            );
            let outcome = run_attack(engine, attack, window);
            if let Err(e) = &outcome {
                eprintln!("attack: {engine} {}: {e}", attack.name());
            }
            run.attacks.push(AttackRun { attack, outcome });
        }
        if options.amplification {
            eprintln!("attack: {engine} UDP amplification ...");
            run.amplification = Some(run_amplification(engine, random_samples));
        }
        runs.push(run);
    }
    eprintln!("attack: done in {:.0} s", started.elapsed().as_secs_f64());
    print!("{}", report::tables(&runs, options.secs));
    let checks = report::checks(&runs);
    print!("{}", report::describe_checks(&checks, options.full));
    let failed = checks.iter().filter(|c| !c.passed).count();
    if failed > 0 && !options.full {
        eprintln!(
            "attack: {failed} of {} checks failed (listed above)",
            checks.len()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
