//! UDP on io_uring: one multishot RecvMsgMulti per socket draws datagrams from a provided-buffer
//! ring; each answer is a Send with a destination address (sendto) from a preallocated slot,
//! queued and submitted with the next wait. (Send rather than SendMsg: the kernel then copies
//! no msghdr and imports no iovec per datagram.) A datagram that arrives while every slot is
//! in flight goes unanswered (the client retries, as BEP 15 expects).

use io_uring::{IoUring, cqueue, opcode, types};

use super::buf_ring::BufRing;
use super::{Op, Queue, RingSettings};
use crate::engine::sockets::sockaddr_to_std;
use crate::handler::{MAX_UDP_REQUEST_BYTES, UdpHandler};
use crate::swarm::PrefetchStep;

const UDP_GROUP: u16 = 0;
/// io_uring_recvmsg_out (16 bytes) and the source address (up to a sockaddr_in6) precede the
/// payload in each buffer.
const RECV_BUFFER_BYTES: usize = 16 + 32 + MAX_UDP_REQUEST_BYTES;

/// What a Send reads: taken off `free` when its answer is written, back on it when the Send's
/// completion is reaped (or at once, when there is nothing to send). So a slot's bytes are
/// never rewritten while the kernel may still read them.
struct SendSlot {
    /// The destination, a sockaddr_in or sockaddr_in6 as the receive gave it (the kernel
    /// reads it as bytes).
    name: [u8; SOCKADDR_BYTES],
    buf: Vec<u8>,
}

const SOCKADDR_BYTES: usize = size_of::<libc::sockaddr_in6>();

pub struct UdpSockets {
    bufs: BufRing,
    /// The template every RecvMsgMulti of this worker uses: it tells the kernel how much room
    /// to leave for the source address.
    recv_header: Box<libc::msghdr>,
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
}

impl UdpSockets {
    pub fn new(
        ring: &IoUring,
        settings: &RingSettings,
        sockets: usize,
        queue: &mut Queue,
    ) -> anyhow::Result<Self> {
        let count = if sockets == 0 {
            1
        } else {
            settings.udp_recv_buffers
        };
        let bufs = BufRing::new(ring, UDP_GROUP, count, RECV_BUFFER_BYTES)
            .map_err(|e| anyhow::anyhow!("UDP buffer ring: {e}"))?;
        // SAFETY: msghdr is a C struct of integers and raw pointers, for which all-zero bytes
        // (null pointers, zero lengths) is a valid value.
        let mut recv_header: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_header.msg_namelen = SOCKADDR_BYTES as u32;
        let slot_count = if sockets == 0 {
            0
        } else {
            settings.udp_send_slots
        };
        let slots: Box<[SendSlot]> = (0..slot_count)
            .map(|_| SendSlot {
                name: [0; SOCKADDR_BYTES],
                buf: Vec::with_capacity(1500),
            })
            .collect();
        let free = (0..slot_count as u32).rev().collect();
        let mut udp = UdpSockets {
            bufs,
            recv_header,
            slots,
            free,
        };
        for socket in 0..sockets {
            udp.arm(socket, queue);
        }
        Ok(udp)
    }

    fn arm(&mut self, socket: usize, queue: &mut Queue) {
        let entry = opcode::RecvMsgMulti::new(
            types::Fixed(socket as u32),
            &raw const *self.recv_header,
            self.bufs.group(),
        )
        .build()
        .user_data(Op::UdpRecv.data(socket));
        queue.push(entry);
    }

    pub fn on_recv(
        &mut self,
        socket: usize,
        result: i32,
        flags: u32,
        handler: &mut UdpHandler,
        queue: &mut Queue,
    ) {
        if !cqueue::more(flags) {
            // The kernel ended the multishot (out of buffers, or an error): arm it again.
            tracing::debug!(socket, result, "UDP multishot receive ended; re-arming");
            self.arm(socket, queue);
        }
        // (Taken when reaped: `take_buffer`.)
        let Some(bid) = cqueue::buffer_select(flags) else {
            return;
        };
        if result > 0 {
            self.answer(socket, bid, result as usize, handler, queue);
        }
        self.bufs.give_back(bid);
    }

    /// Takes the receive buffer a reaped completion carries (see [`BufRing::take`]).
    pub fn take_buffer(&mut self, flags: u32) {
        self.bufs.take(flags);
    }

    /// One prefetch step for a received datagram (see [`UdpHandler::prefetch`]).
    pub fn prefetch(&self, step: PrefetchStep, result: i32, flags: u32, handler: &UdpHandler) {
        let Some(bid) = cqueue::buffer_select(flags) else {
            return;
        };
        if result <= 0 {
            return;
        }
        let data = self.bufs.buffer(bid, result as usize);
        if let Ok(message) = types::RecvMsgOut::parse(data, &self.recv_header)
            && let Some(from) = sockaddr_to_std(message.name_data())
        {
            handler.prefetch(step, message.payload_data(), from);
        }
    }

    fn answer(
        &mut self,
        socket: usize,
        bid: u16,
        len: usize,
        handler: &mut UdpHandler,
        queue: &mut Queue,
    ) {
        let data = self.bufs.buffer(bid, len);
        let Ok(message) = types::RecvMsgOut::parse(data, &self.recv_header) else {
            return;
        };
        // Dropped like epoll's truncated datagrams: the buffer has a little room past
        // MAX_UDP_REQUEST_BYTES (the header and address share it), so a datagram one byte
        // longer would otherwise be served here and not there.
        if message.is_payload_truncated()
            || message.is_name_data_truncated()
            || message.incoming_payload_len() as usize > MAX_UDP_REQUEST_BYTES
        {
            return; // longer than any valid request
        }
        let name = message.name_data();
        let Some(from) = sockaddr_to_std(name) else {
            return;
        };
        let Some(index) = self.free.pop() else { return };
        let slot = &mut self.slots[index as usize];
        handler.handle(message.payload_data(), from, &mut slot.buf);
        if slot.buf.is_empty() {
            self.free.push(index);
            return;
        }
        // (At most a sockaddr_in6: the template header leaves that much room.)
        slot.name[..name.len()].copy_from_slice(name);
        let entry = opcode::Send::new(
            types::Fixed(socket as u32),
            slot.buf.as_ptr(),
            slot.buf.len() as u32,
        )
        .dest_addr((&raw const slot.name).cast())
        .dest_addr_len(name.len() as libc::socklen_t)
        .build()
        .user_data(Op::UdpSend.data(index as usize));
        queue.push(entry);
    }

    /// A Send's completion: its slot is free again, whatever the result.
    pub fn on_send(&mut self, slot: usize) {
        self.free.push(slot as u32);
    }

    /// Send slots taken off the free list (their Sends queued or in flight).
    pub fn slots_in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn publish(&self) {
        self.bufs.publish();
    }
}
