//! The request path, one straight line for both protocols:
//! decode -> middleware (pre) -> store -> middleware (post) -> encode.
//!
//! [`UdpHandler::handle`] and [`HttpConnection`] are what every engine calls; engines only move
//! bytes. One handler per worker holds that worker's scratch buffers; [`Tracker`] is shared.

mod http;
mod http_connection;
mod tracker;
mod udp;

pub use http::HttpHandler;
pub use http_connection::{ConnectionRules, HttpConnection};
pub use tracker::{RequestError, Tracker};
pub use udp::{MAX_UDP_REQUEST_BYTES, UdpHandler};

/// What an engine's worker gets: a handler per protocol, each with the worker's own scratch
/// buffers and counters.
pub struct Handlers {
    pub udp: UdpHandler,
    pub http: HttpHandler,
    /// The worker's counters, for what engines count themselves (connections).
    pub metrics: std::sync::Arc<crate::metrics::WorkerMetrics>,
}
