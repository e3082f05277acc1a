//! Protocol codecs: pure functions from bytes to typed requests and from typed responses into a
//! caller's buffer. No I/O, no clock, no allocation beyond the caller's buffers; fuzzable alone.

pub mod bencode;
pub mod http;
pub mod udp;
