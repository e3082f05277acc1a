//! A provided-buffer ring (kernel >= 5.19): buffers the kernel picks from for multishot
//! receives, handed back to it after each completion.
//!
//! Ownership: a buffer is the kernel's from [`BufRing::give_back`] until a completion names
//! it; from when that completion is reaped ([`BufRing::take`]) it is ours, read through
//! [`BufRing::buffer`], until we give it back. The engine gives back every buffer it takes
//! before the batch of completions ends (checked in debug builds when the batch is
//! published): a buffer kept would be lost to the ring for good, and an empty ring ends every
//! multishot receive of its group.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, cqueue};

/// One `io_uring_buf` of the shared ring: addr u64, len u32, bid u16, and a u16 that in entry 0
/// is the ring's tail.
const ENTRY_BYTES: usize = 16;
const TAIL_OFFSET: usize = 14;

/// `count` buffers of `size` bytes, registered as buffer group `group`.
pub struct BufRing {
    /// The shared ring of `count` entries (an anonymous mapping of `ring_bytes`). The kernel
    /// reads the entries between its head and our published tail; we write only past it.
    ring: *mut u8,
    ring_bytes: usize,
    /// The buffers, `count * size` bytes from `Box::into_raw`, freed in `Drop`. Held as a raw
    /// pointer, not a `Box`: the kernel writes into them while we hold no exclusive claim
    /// (a `Box` asserts one), and the addresses handed to it must allow writes.
    buffers: *mut u8,
    size: usize,
    count: u16,
    tail: u16,
    group: u16,
    /// One bit a buffer: taken from a completion and not yet given back. Checked on every
    /// read and give-back, so that no safe call can read a buffer the kernel may be filling
    /// or put one in the ring twice (it would then be handed out twice).
    held: Box<[u64]>,
    held_count: u32,
}

impl BufRing {
    /// `count` must be a power of two.
    pub fn new(ring: &IoUring, group: u16, count: u16, size: usize) -> io::Result<BufRing> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let ring_bytes = usize::from(count) * ENTRY_BYTES;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing
        // overlaps no memory Rust knows of; the result is checked below. (mmap returns a
        // page-aligned address, as buffer-ring registration requires.)
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let buffers = Box::into_raw(vec![0u8; usize::from(count) * size].into_boxed_slice());
        let mut br = BufRing {
            ring: mem.cast(),
            ring_bytes,
            buffers: buffers.cast(),
            size,
            count,
            tail: 0,
            group,
            held: vec![0; usize::from(count).div_ceil(64)].into_boxed_slice(),
            held_count: 0,
        };
        for bid in 0..count {
            br.push_entry(bid);
        }
        br.publish();
        // SAFETY: once registered, the kernel reads the ring's entries when a receive of this
        // group picks a buffer, and writes the buffer it picked until that receive's
        // completion; nothing else of it. So both must stay valid while such a receive is in
        // flight: the engine keeps this BufRing in the worker's `Ring` and drops it only
        // after `Ring::stop` has seen every operation end (leaking it if some do not), and
        // after the `IoUring` (fields drop in order); the probe submits no receive. Should
        // registration fail, nothing refers to `br`, which is simply dropped.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(br.ring as u64, count, group, 0)?
        };
        Ok(br)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// Takes the buffer a reaped completion hands over, if it carries one: ours until given
    /// back.
    pub fn take(&mut self, flags: u32) -> Option<u16> {
        let bid = cqueue::buffer_select(flags)?;
        assert!(!self.is_held(bid), "buffer {bid} handed over twice");
        self.held[usize::from(bid) / 64] |= 1 << (bid % 64);
        self.held_count += 1;
        Some(bid)
    }

    fn is_held(&self, bid: u16) -> bool {
        assert!(bid < self.count, "buffer id {bid} out of range");
        self.held[usize::from(bid) / 64] & (1 << (bid % 64)) != 0
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled it; `bid` must be held
    /// (taken with [`BufRing::take`], not yet given back).
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            self.is_held(bid),
            "buffer {bid} read while the kernel owns it"
        );
        let start = usize::from(bid) * self.size;
        // SAFETY: in bounds: bid < count (checked by is_held) and len <= size, within the
        // count * size bytes. The kernel wrote buffer `bid` before posting the completion
        // that handed it over (the CQ's acquire ordering makes those writes visible), and
        // writes it again only once it is back in the ring; it is held (checked), and
        // giving it back takes `&mut self`, so not while this borrow lives. The buffers the
        // kernel may fill meanwhile do not overlap this one.
        unsafe { std::slice::from_raw_parts(self.buffers.add(start), len.min(self.size)) }
    }

    /// Queues buffer `bid` for the kernel again; the kernel sees it after [`BufRing::publish`].
    pub fn give_back(&mut self, bid: u16) {
        assert!(self.is_held(bid), "buffer {bid} given back but not held");
        self.held[usize::from(bid) / 64] &= !(1 << (bid % 64));
        self.held_count -= 1;
        self.push_entry(bid);
    }

    fn push_entry(&mut self, bid: u16) {
        let mask = self.count - 1;
        let addr = self.buffers as u64 + u64::from(bid) * self.size as u64;
        // SAFETY: entry `tail & mask` is inside the `count * 16` mapped bytes, and 8-aligned
        // (the mapping is page-aligned); its fields are at their natural alignment. The
        // kernel is not reading it: it reads only entries between its head and the published
        // tail, and fewer than `count` are there now (a buffer enters the ring once at the
        // start, then only when given back after a completion took it out, which `held`
        // checks; `bid` is not in it), so the entry at our tail is not among them. The u16
        // at offset 14, which in entry 0 is the tail, is not written here.
        unsafe {
            let entry = self.ring.add(usize::from(self.tail & mask) * ENTRY_BYTES);
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(self.size as u32);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back visible to the kernel. Called once a batch of completions
    /// is handled: by then every buffer taken from them is given back.
    pub fn publish(&self) {
        // (A buffer kept past its batch is lost to the ring for good; tests catch that here.)
        debug_assert_eq!(
            self.held_count, 0,
            "buffer group {}: buffers taken from completions were not given back",
            self.group
        );
        // SAFETY: offset 14 is inside the mapping (count >= 1 entries of 16 bytes) and
        // 2-aligned. The kernel only reads this u16 (with an acquire load), we only write
        // it, and only through this atomic, so every access to it is atomic.
        let tail = unsafe { &*(self.ring.add(TAIL_OFFSET) as *const AtomicU16) };
        // Release: the entries written above are visible before the tail that covers them.
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `ring` and `ring_bytes` are the mapping `new` made, unmapped only here; no
        // receive of this group is in flight any more (see `new`), so the kernel no longer
        // reads it, and nothing of ours reads it after this.
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
        let len = usize::from(self.count) * self.size;
        // SAFETY: `buffers` came from `Box::into_raw` of a boxed slice of exactly `len`
        // bytes in `new` and is freed only here. No receive writes into it any more: none of
        // this group is in flight when a BufRing drops (see `new`), and `buffer`'s borrows
        // of it have ended.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.buffers, len)) });
    }
}
