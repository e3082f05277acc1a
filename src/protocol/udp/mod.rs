//! UDP tracker protocol (BEP 15) with URL data options (BEP 41).

pub mod connection_id;
pub mod request;
pub mod response;

pub use connection_id::ConnectionIdKey;
pub use request::{UdpAnnounce, UdpDecodeError, UdpRequest, decode};

/// The magic constant of a connect request.
pub const PROTOCOL_ID: u64 = 0x417_2710_1980;

pub const ACTION_CONNECT: u32 = 0;
pub const ACTION_ANNOUNCE: u32 = 1;
pub const ACTION_SCRAPE: u32 = 2;
pub const ACTION_ERROR: u32 = 3;
