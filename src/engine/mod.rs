//! Engines own sockets, buffers and event loops, and nothing else: every request goes to the
//! handlers in [`crate::handler`]. Each worker thread has its own sockets (SO_REUSEPORT, so
//! the kernel spreads load) and runs each request to completion.

mod connections;
pub mod epoll;
mod shutdown;
pub mod sockets;
pub mod uring;

pub use shutdown::{Shutdown, Wake};

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::config::Config;
use crate::handler::ConnectionRules;
use crate::metrics::WorkerMetrics;
use crate::swarm::PrefetchStep;

/// How many received items apart an engine runs the successive prefetch steps of one datagram
/// (see `UdpHandler::prefetch`). Each step reads a pointer from lines the step before asked
/// for, so a step that comes too soon waits for them. Measured under the UDP load test
/// (io_uring, 5 pairs each): 3 gave 1.014x throughput and 1.019x efficiency over 2, every pair
/// at or above 1; 4 gave 1.008 / 1.013 over 3, pairs 0.93 to 1.07, so 3 it is.
pub const PREFETCH_SPACING: usize = 3;

/// The prefetches an engine runs just before it answers item `i` of a batch of `n`: step `s`
/// of [`PrefetchStep::ALL`] for the item `(steps - s) * PREFETCH_SPACING` places ahead, so that
/// every item goes through the steps in order and is answered `PREFETCH_SPACING` items after
/// its last one. The call for item 0 also runs the steps due before the batch began.
pub fn prefetch_schedule(i: usize, n: usize) -> impl Iterator<Item = (usize, PrefetchStep)> {
    let steps = PrefetchStep::ALL.len();
    let lead = (steps * PREFETCH_SPACING) as isize;
    let first = if i == 0 { -lead } else { i as isize };
    (first..=i as isize).flat_map(move |now| {
        PrefetchStep::ALL
            .iter()
            .enumerate()
            .filter_map(move |(s, &step)| {
                let item = now + ((steps - s) * PREFETCH_SPACING) as isize;
                (0..n as isize)
                    .contains(&item)
                    .then_some((item as usize, step))
            })
    })
}

/// The HTTP connection limits every engine enforces, derived once from config.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub max_connections_per_worker: usize,
    /// Open connections one source may hold on one worker; 0 = no limit.
    pub max_per_source: usize,
    pub ipv6_prefix_len: u8,
    /// Sources the per-source limit does not apply to: the trusted reverse proxies, when the
    /// reverse-proxy rule is on (every client comes through them).
    pub per_source_exempt: Arc<[IpNet]>,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub connection: ConnectionRules,
}

impl HttpLimits {
    /// `max_connections` and `per_source.max_http_connections` are for the process; each of
    /// `workers` gets an even share (the kernel spreads connections evenly over them).
    pub fn new(config: &Config, workers: usize) -> Self {
        let http = &config.http;
        HttpLimits {
            max_connections_per_worker: http.max_connections.div_ceil(workers),
            max_per_source: config.per_source.max_http_connections.div_ceil(workers),
            ipv6_prefix_len: config.per_source.ipv6_prefix_len,
            per_source_exempt: match &http.reverse_proxy {
                proxy if proxy.enabled => proxy.trusted_proxies.iter().copied().collect(),
                _ => Arc::from([]),
            },
            idle_timeout: Duration::from_secs(u64::from(http.idle_timeout_secs)),
            request_timeout: Duration::from_secs(u64::from(http.request_timeout_secs)),
            connection: ConnectionRules {
                max_request_bytes: http.max_request_bytes,
                keep_alive: http.keep_alive,
            },
        }
    }
}

/// Accepting, paused for a moment after the process ran out of descriptors or memory:
/// retrying at once only fails again (io_uring's multishot accept, re-armed at once, failed
/// 9.75 million times in 36 s and burned 1.5 cores). Failures are logged at most once every
/// [`ACCEPT_WARN_EVERY`], with how many went unlogged, and counted in the metrics.
pub struct AcceptBackoff {
    paused_until: Option<Instant>,
    last_warning: Option<Instant>,
    unreported: u64,
    metrics: Arc<WorkerMetrics>,
}

/// How long accepting pauses after EMFILE and the like: long enough not to spin, short
/// enough that a descriptor freed meanwhile serves the next client soon.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
pub const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

impl AcceptBackoff {
    pub fn new(metrics: Arc<WorkerMetrics>) -> Self {
        AcceptBackoff {
            paused_until: None,
            last_warning: None,
            unreported: 0,
            metrics,
        }
    }

    /// Whether accepting is paused at `now`.
    pub fn is_paused(&mut self, now: Instant) -> bool {
        match self.paused_until {
            Some(until) if now < until => true,
            _ => {
                self.paused_until = None;
                false
            }
        }
    }

    pub fn resumes_at(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Records a failed accept; true when accepting should pause. Errors that concern only
    /// the connection being accepted (it was reset meanwhile, a firewall refused it) do not.
    pub fn failed(&mut self, error: &io::Error, now: Instant) -> bool {
        self.metrics.http_connections.accept_errors.inc();
        let pause = !matches!(
            error.raw_os_error(),
            Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR | libc::EAGAIN)
        );
        if pause {
            self.paused_until = Some(now + ACCEPT_PAUSE);
        }
        if self
            .last_warning
            .is_some_and(|at| now.saturating_duration_since(at) < ACCEPT_WARN_EVERY)
        {
            self.unreported += 1;
        } else {
            tracing::warn!(
                error = %error,
                since_last_warning = self.unreported,
                "accept failed (EMFILE: raise the open-files limit, or lower http.max_connections)"
            );
            self.last_warning = Some(now);
            self.unreported = 0;
        }
        pause
    }
}

/// Makes closing `socket` reset the connection: the kernel drops its buffers at once instead
/// of holding them for a client that would not read them (nginx's reset_timedout_connection).
pub fn abort_socket(socket: &impl AsFd) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item of a batch, whatever its size, goes through every step once, in order, and
    /// its last step runs at least `PREFETCH_SPACING` items before it is answered.
    #[test]
    fn the_prefetch_schedule_runs_every_step_in_order_ahead_of_the_answer() {
        for n in [0, 1, 2, 3, 7, 8, 9, 10, 64] {
            let mut done: Vec<Vec<(usize, PrefetchStep)>> = vec![Vec::new(); n];
            for i in 0..n {
                for (item, step) in prefetch_schedule(i, n) {
                    assert!(
                        item >= i,
                        "n={n}: step {step:?} for {item} after it was answered"
                    );
                    done[item].push((i, step));
                }
                let steps: Vec<PrefetchStep> = done[i].iter().map(|&(_, s)| s).collect();
                assert_eq!(steps, PrefetchStep::ALL, "n={n}, item {i}");
                let last_at = done[i].last().expect("all steps").0;
                assert!(
                    i == 0 || i - last_at >= PREFETCH_SPACING || last_at == 0,
                    "n={n}, item {i}: last step at {last_at}"
                );
            }
        }
    }
}
