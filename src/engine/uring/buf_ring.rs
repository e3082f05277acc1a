//! A provided-buffer ring (kernel >= 5.19): buffers the kernel picks from for multishot
//! receives, handed back to it after each completion.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;

/// `count` buffers of `size` bytes, registered as buffer group `group`.
pub struct BufRing {
    /// The shared ring of 16-byte entries: addr u64, len u32, bid u16, and (in entry 0's last
    /// two bytes) the tail.
    ring: *mut u8,
    ring_bytes: usize,
    buffers: Box<[u8]>,
    size: usize,
    count: u16,
    tail: u16,
    group: u16,
}

// SAFETY: the ring memory is owned by this struct and only touched by the worker that owns it.
unsafe impl Send for BufRing {}

impl BufRing {
    /// `count` must be a power of two.
    pub fn new(ring: &IoUring, group: u16, count: u16, size: usize) -> io::Result<BufRing> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let ring_bytes = usize::from(count) * 16;
        // SAFETY: a fresh anonymous mapping, checked below; page-aligned as the kernel requires.
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
        let mut br = BufRing {
            ring: mem.cast(),
            ring_bytes,
            buffers: vec![0u8; usize::from(count) * size].into_boxed_slice(),
            size,
            count,
            tail: 0,
            group,
        };
        for bid in 0..count {
            br.give_back(bid);
        }
        br.publish();
        // SAFETY: the ring memory stays mapped until `self` drops, after the io_uring that uses it
        // (workers drop their rings first).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(br.ring as u64, count, group, 0)?
        };
        Ok(br)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled it.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        &self.buffers[start..start + len.min(self.size)]
    }

    /// Queues buffer `bid` for the kernel again; the kernel sees it after [`BufRing::publish`].
    pub fn give_back(&mut self, bid: u16) {
        let mask = self.count - 1;
        let addr = self.buffers.as_ptr() as u64 + u64::from(bid) * self.size as u64;
        // SAFETY: the entry index is masked to the ring's size.
        unsafe {
            let entry = self.ring.add(usize::from(self.tail & mask) * 16);
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(self.size as u32);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    pub fn publish(&self) {
        // SAFETY: the tail field of the ring header, 2-byte aligned, shared with the kernel.
        let tail = unsafe { &*(self.ring.add(14) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}
