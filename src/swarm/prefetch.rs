//! Cache-line prefetch hints, and the steps in which an announce's data is prefetched.
//!
//! An announce follows a chain of pointers (shard table, torrent, peer list, index, entry),
//! and with a million torrents every link is a cache miss. The engines receive requests in
//! batches, so each link can be asked for a few requests before it is needed: each
//! [`PrefetchStep`] reads only lines the step before it asked for (so it does not stall)
//! and asks for the lines one link further on. Engines run the steps a few requests apart
//! (`engine::prefetch_schedule`); the misses then overlap with other requests' work.

/// One link of the chain, in the order engines run them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchStep {
    /// The torrent's control bytes and bucket in its shard's table (no lock taken).
    Torrent,
    /// The torrent's peer list: a small swarm's whole list, a large swarm's header.
    PeerList,
    /// A large swarm's index lines for the announcing peer.
    PeerIndex,
    /// A large swarm's entry for the announcing peer.
    PeerEntry,
}

impl PrefetchStep {
    pub const ALL: [PrefetchStep; 4] = [
        PrefetchStep::Torrent,
        PrefetchStep::PeerList,
        PrefetchStep::PeerIndex,
        PrefetchStep::PeerEntry,
    ];
}

/// Asks the CPU for the line holding `address`.
#[inline(always)]
pub(super) fn prefetch_line(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Asks for every line of `bytes` bytes from `start`, at most `max_lines` of them.
#[inline]
pub(super) fn prefetch_bytes(start: usize, bytes: usize, max_lines: usize) {
    const LINE: usize = 64;
    if bytes == 0 {
        return;
    }
    let first = start & !(LINE - 1);
    let end = start + bytes;
    for line in (first..end).step_by(LINE).take(max_lines) {
        prefetch_line(line);
    }
}
