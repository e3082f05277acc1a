//! Engines own sockets, buffers and event loops, and nothing else: every request goes to the
//! handlers in [`crate::handler`]. Each worker thread has its own sockets (SO_REUSEPORT, so
//! the kernel spreads load) and runs each request to completion.

pub mod epoll;
mod shutdown;
pub mod sockets;
pub mod uring;

pub use shutdown::{Shutdown, Wake};
