//! hayate: a BitTorrent tracker (HTTP and UDP, IPv4 and IPv6).
//!
//! The request path is one straight line, and the modules follow it:
//!
//! ```text
//! engine (epoll)  ->  protocol (decode)  ->  middleware (pre)  ->  swarm (store)
//!                 <-  protocol (encode)  <-  middleware (post) <-
//! ```
//!
//! - [`engine`]: sockets, buffers and event loops; moves bytes, knows no protocol.
//! - [`handler`]: one `handle` per protocol that every engine calls: the line above.
//! - [`protocol`]: pure codecs (bytes to typed requests, typed responses to bytes).
//! - [`middleware`]: the pre/post hook chain.
//! - [`swarm`]: the lock-striped in-memory store of torrents and peers.
//! - [`metrics`]: Prometheus metrics and health probes, beside the hot path.
//! - [`replication`]: several nodes sharing their swarms through Redis, beside the hot path.
//! - [`bittorrent`]: domain types shared by all of the above.
//! - [`source`]: clients counted by source address, for the per-source limits.

pub mod bittorrent;
pub mod clock;
pub mod config;
pub mod engine;
pub mod handler;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod source;
pub mod swarm;
