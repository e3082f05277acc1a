//! HTTP tracker protocol (BEP 3, 7, 23, 24, 48): the query decoder, the bencoded response
//! writers and the reverse-proxy address rule.

pub mod forwarded;
pub mod request;
pub mod response;

pub use request::{HttpAnnounce, HttpRequest, decode_target};
