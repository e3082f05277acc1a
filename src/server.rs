//! Puts a tracker together from its config and supervises it: workers, the maintenance thread
//! (clock and cleaning), signals. A worker that dies ends the process; SIGTERM stops it cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::clock::Clock;
use crate::config::{Config, EngineKind};
use crate::engine::epoll::{EpollSettings, EpollWorker};
use crate::engine::sockets::{SocketOptions, bind_all};
use crate::engine::uring::{self, RingSettings, UringWorker};
use crate::engine::{HttpLimits, Shutdown};
use crate::handler::{Handlers, HttpHandler, Tracker, UdpHandler};
use crate::metrics::Metrics;
use crate::middleware::Middleware;
use crate::replication;
use crate::swarm::{SwarmLimits, SwarmStore};

/// What the supervisor hears about.
enum ServerEvent {
    WorkerExited { name: String, panicked: bool },
    Signal(i32),
}

/// Sends `WorkerExited` however the worker thread ends, panics included.
struct ExitNotice {
    name: String,
    events: Sender<ServerEvent>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.events.send(ServerEvent::WorkerExited {
            name: self.name.clone(),
            panicked: std::thread::panicking(),
        });
    }
}

/// How a server ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Stopped on request (signal or [`RunningServer::stop`]).
    Stopped,
    /// A worker died; the process should exit non-zero.
    WorkerDied(String),
}

pub struct RunningServer {
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    metrics_addr: Option<SocketAddr>,
    udp_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
    shutdown: Arc<Shutdown>,
    workers: usize,
    events: Receiver<ServerEvent>,
    events_tx: Sender<ServerEvent>,
    maintenance: Option<JoinHandle<()>>,
}

/// Starts a tracker: binds every socket, then starts the workers and the maintenance thread.
pub fn start(
    config: &Config,
    clock: Clock,
    middleware: Middleware,
) -> anyhow::Result<RunningServer> {
    let workers = config.worker_count();
    raise_open_files_limit(config, workers);
    let limits = SwarmLimits {
        max_torrents: config.swarm.max_torrents,
        max_peers_per_torrent: config.swarm.max_peers_per_torrent,
        peer_lifetime_secs: config.swarm.peer_lifetime_secs,
    };
    let metrics = Arc::new(Metrics::default());
    let hook_names: Vec<&'static str> = middleware.pre_hook_names().collect();
    let worker_metrics: Vec<_> = (0..workers)
        .map(|_| metrics.add_worker(hook_names.clone()))
        .collect();
    let replication = match config.replication.enabled {
        true => Some(replication::prepare(&config.replication, &worker_metrics)?),
        false => None,
    };
    let mut store = SwarmStore::new(config.shard_count(), limits, clock.clone());
    let mut outboxes = Vec::new();
    let mut replication = replication;
    if let Some(replication) = replication.as_mut() {
        store = store.with_observer(replication.observer.clone());
        outboxes = std::mem::take(&mut replication.outboxes);
    }
    let mut outboxes = outboxes.into_iter();
    let store = Arc::new(store);
    let tracker = Arc::new(Tracker::new(config, store.clone(), middleware)?);
    let sockets = bind_all(&SocketOptions {
        workers,
        udp_bind: if config.udp.enabled {
            config.udp.bind.clone()
        } else {
            Vec::new()
        },
        http_bind: if config.http.enabled {
            config.http.bind.clone()
        } else {
            Vec::new()
        },
        udp_recv_buffer_bytes: config.udp.socket_recv_buffer_bytes,
    })?;
    let shutdown = Arc::new(Shutdown::default());
    let (events_tx, events) = channel();
    let http_limits = HttpLimits::new(config, workers);
    let ring = ring_settings(config, http_limits.clone());
    let engine = choose_engine(config, &ring)?;
    let (ready_tx, ready_rx) = channel::<anyhow::Result<()>>();
    for (i, worker_sockets) in sockets.workers.into_iter().enumerate() {
        let name = format!("worker-{i:02}");
        let notice = ExitNotice {
            name: name.clone(),
            events: events_tx.clone(),
        };
        let ready = ready_tx.clone();
        let worker_metrics = worker_metrics[i].clone();
        let outbox = outboxes.next();
        let handlers = || Handlers {
            udp: UdpHandler::new(tracker.clone(), worker_metrics.clone()),
            http: HttpHandler::new(tracker.clone(), worker_metrics.clone()),
            metrics: worker_metrics.clone(),
        };
        let body: Box<dyn FnOnce() -> anyhow::Result<()> + Send> = match engine {
            EngineKind::Epoll => {
                let settings = EpollSettings {
                    udp_batch_size: config.udp.batch_size,
                    http: http_limits.clone(),
                };
                let worker =
                    EpollWorker::new(worker_sockets, handlers(), settings, shutdown.clone())?;
                Box::new(move || {
                    let _ = ready.send(Ok(()));
                    worker.run()
                })
            }
            EngineKind::IoUring | EngineKind::Auto => {
                let worker =
                    UringWorker::new(worker_sockets, handlers(), ring.clone(), shutdown.clone())?;
                Box::new(move || worker.run(|r| drop(ready.send(r))))
            }
        };
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _notice = notice;
                if let Some(outbox) = outbox {
                    outbox.install();
                }
                if let Err(e) = body() {
                    tracing::error!(worker = %name, error = format!("{e:#}"), "worker failed");
                }
            })
            .context("spawn worker thread")?;
    }
    // Every worker has its sockets armed before we say we serve.
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.request();
                return Err(e.context(format!("start the {engine:?} engine")));
            }
            Err(_) => anyhow::bail!("a worker exited during start-up"),
        }
    }
    if let Some(replication) = replication {
        let status = replication.start(store.clone(), shutdown.clone())?;
        metrics.set_replication(status);
    }
    let maintenance = spawn_maintenance(
        store,
        clock,
        config.swarm.cleaning_interval_secs,
        shutdown.clone(),
        metrics.clone(),
    )?;
    metrics.set_serving(engine_label(engine), tracker.clone());
    let metrics_addr = match config.metrics.enabled {
        true => Some(crate::metrics::serve(config.metrics.bind, metrics.clone())?),
        false => None,
    };
    tracing::info!(
        ?engine,
        workers,
        udp = ?sockets.udp_addrs,
        http = ?sockets.http_addrs,
        metrics = ?metrics_addr,
        "hayate is serving"
    );
    Ok(RunningServer {
        tracker,
        metrics,
        metrics_addr,
        udp_addrs: sockets.udp_addrs,
        http_addrs: sockets.http_addrs,
        shutdown,
        workers,
        events,
        events_tx,
        maintenance: Some(maintenance),
    })
}

/// Raises the soft limit of open files to the hard limit (systemd and most shells start with
/// 1024), and warns when even that is short of what `http.max_connections` needs: past it
/// accepts fail with EMFILE and new clients wait.
fn raise_open_files_limit(config: &Config, workers: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer, which is to `limit`, live and
    // writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            ..limit
        };
        // SAFETY: setrlimit reads one rlimit through the pointer, which is to `raised`, live.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    if !config.http.enabled {
        return;
    }
    // Per worker: its sockets, an eventfd and a ring; then the metrics listener's connections,
    // hook files and the like.
    let sockets = config.udp.bind.len() + config.http.bind.len() + 2;
    let needed = config.http.max_connections + workers * sockets + 256;
    if (limit.rlim_cur as u128) < needed as u128 {
        tracing::warn!(
            open_files_limit = limit.rlim_cur,
            needed,
            "the open-files limit is below what http.max_connections needs: accepts past it \
             fail with EMFILE (raise LimitNOFILE= or `ulimit -n`, or lower http.max_connections)"
        );
    }
}

/// The engine to run: `auto` probes io_uring and falls back to epoll, saying why; an explicit
/// `io_uring` that cannot start is an error with the reason.
pub fn choose_engine(config: &Config, ring: &RingSettings) -> anyhow::Result<EngineKind> {
    match config.engine {
        EngineKind::Epoll => Ok(EngineKind::Epoll),
        EngineKind::IoUring => match uring::probe(ring) {
            Ok(()) => Ok(EngineKind::IoUring),
            Err(reason) => anyhow::bail!("engine io_uring cannot start: {reason}"),
        },
        EngineKind::Auto => match uring::probe(ring) {
            Ok(()) => Ok(EngineKind::IoUring),
            Err(reason) => {
                tracing::warn!("io_uring unavailable, using epoll: {reason}");
                Ok(EngineKind::Epoll)
            }
        },
    }
}

fn engine_label(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::IoUring => "io_uring",
        EngineKind::Epoll | EngineKind::Auto => "epoll",
    }
}

fn ring_settings(config: &Config, http: HttpLimits) -> RingSettings {
    let ring = &config.io_uring;
    RingSettings {
        ring_entries: ring.ring_entries,
        udp_recv_buffers: ring.udp_recv_buffers,
        udp_send_slots: ring.udp_send_slots,
        http_recv_buffers: ring.http_recv_buffers,
        http_recv_buffer_bytes: ring.http_recv_buffer_bytes,
        defer_taskrun: ring.defer_taskrun,
        http,
    }
}

/// Refreshes the coarse clock a few times a second and cleans the store on its interval.
fn spawn_maintenance(
    store: Arc<SwarmStore>,
    clock: Clock,
    cleaning_interval_secs: u32,
    shutdown: Arc<Shutdown>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<JoinHandle<()>> {
    let interval = Duration::from_secs(u64::from(cleaning_interval_secs));
    std::thread::Builder::new()
        .name("maintenance".into())
        .spawn(move || {
            let mut last_clean = Instant::now();
            while !shutdown.is_requested() {
                std::thread::sleep(Duration::from_millis(100));
                clock.tick();
                if last_clean.elapsed() >= interval {
                    let report = store.clean();
                    metrics.record_cleaning(&report);
                    tracing::debug!(
                        peers_removed = report.peers_removed,
                        torrents_removed = report.torrents_removed,
                        micros = report.duration.as_micros() as u64,
                        "cleaned the store"
                    );
                    last_clean = Instant::now();
                }
            }
        })
        .context("spawn maintenance thread")
}

/// Catches SIGTERM and SIGINT (stop) and SIGHUP (reload hook lists) from now on; hand the
/// result to [`RunningServer::handle_signals`].
pub fn signals() -> anyhow::Result<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("install signal handlers")
}

impl RunningServer {
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    pub fn store(&self) -> &SwarmStore {
        &self.tracker.store
    }

    /// Forwards the signals caught by `signals` to the supervisor. Install the handlers with
    /// [`signals`] before [`start`], so that no signal arrives unhandled in between.
    pub fn handle_signals(
        &self,
        mut signals: signal_hook::iterator::Signals,
    ) -> anyhow::Result<()> {
        let events = self.events_tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if events.send(ServerEvent::Signal(signal)).is_err() {
                        return;
                    }
                }
            })
            .context("spawn signal thread")?;
        Ok(())
    }

    /// Blocks until a signal (then stops cleanly) or a worker's death.
    pub fn wait(mut self) -> Exit {
        loop {
            match self.events.recv() {
                Ok(ServerEvent::Signal(signal_hook::consts::SIGHUP)) => {
                    tracing::info!("SIGHUP: reloading hook lists");
                    // Hooks do not wait on the network here (`PreHook::reload`): a SIGTERM
                    // queued behind this must still stop the server within its second.
                    self.tracker.middleware.reload();
                }
                Ok(ServerEvent::Signal(signal)) => {
                    tracing::info!(signal, "stopping");
                    let _ = self.stop_workers(self.workers);
                    return Exit::Stopped;
                }
                Ok(ServerEvent::WorkerExited { name, panicked }) => {
                    let why = if panicked { "panicked" } else { "stopped" };
                    tracing::error!(worker = %name, "worker {why}; exiting");
                    let _ = self.stop_workers(self.workers - 1);
                    return Exit::WorkerDied(name);
                }
                Err(_) => unreachable!("the server holds a sender"),
            }
        }
    }

    /// Stops the workers and waits (up to a second) for them to exit: `WorkerDied` names one
    /// that panicked, now or before (tests see their engine's assertions fail this way).
    pub fn stop(mut self) -> Exit {
        self.stop_workers(self.workers)
    }

    /// Stops the `running` workers; the first that panicked, as an `Exit`.
    fn stop_workers(&mut self, running: usize) -> Exit {
        self.metrics.set_not_ready();
        self.shutdown.request();
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut left = running;
        let mut exit = Exit::Stopped;
        while left > 0 {
            match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(ServerEvent::WorkerExited { name, panicked }) => {
                    left -= 1;
                    if panicked && exit == Exit::Stopped {
                        exit = Exit::WorkerDied(name);
                    }
                }
                Ok(ServerEvent::Signal(_)) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    tracing::warn!(workers = left, "workers did not stop within a second");
                    break;
                }
            }
        }
        if let Some(maintenance) = self.maintenance.take() {
            let _ = maintenance.join();
        }
        exit
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.request();
    }
}
