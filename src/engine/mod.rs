//! Engines own sockets, buffers and event loops, and nothing else: every request goes to the
//! handlers in [`crate::handler`]. Each worker thread has its own sockets (SO_REUSEPORT, so
//! the kernel spreads load) and runs each request to completion.

pub mod epoll;
mod shutdown;
pub mod sockets;
pub mod uring;

pub use shutdown::{Shutdown, Wake};

use std::time::Duration;

use crate::config::HttpConfig;
use crate::handler::ConnectionRules;
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
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections_per_worker: usize,
    pub idle_timeout: Duration,
    pub connection: ConnectionRules,
}

impl HttpLimits {
    /// `max_connections` is for the process; each of `workers` gets an even share.
    pub fn new(config: &HttpConfig, workers: usize) -> Self {
        HttpLimits {
            max_connections_per_worker: config.max_connections.div_ceil(workers),
            idle_timeout: Duration::from_secs(u64::from(config.idle_timeout_secs)),
            connection: ConnectionRules {
                max_request_bytes: config.max_request_bytes,
                keep_alive: config.keep_alive,
            },
        }
    }
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
