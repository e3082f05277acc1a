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

/// How many datagrams ahead of the one being answered an engine prefetches (see
/// `UdpHandler::prefetch`). A batch can hold a thousand datagrams; prefetching all of them at
/// once would push the first ones' lines out of the L1 cache before they are used, while a
/// short window keeps a few misses in flight (the CPU tracks about a dozen) and the lines warm.
pub const PREFETCH_AHEAD: usize = 8;

/// The HTTP connection limits every engine enforces, derived once from config.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections_per_worker: usize,
    pub max_request_bytes: usize,
    pub idle_timeout: Duration,
}

impl HttpLimits {
    /// `max_connections` is for the process; each of `workers` gets an even share.
    pub fn new(config: &HttpConfig, workers: usize) -> Self {
        HttpLimits {
            max_connections_per_worker: config.max_connections.div_ceil(workers),
            max_request_bytes: config.max_request_bytes,
            idle_timeout: Duration::from_secs(u64::from(config.idle_timeout_secs)),
        }
    }
}
