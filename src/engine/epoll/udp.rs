//! UDP in batches: one recvmmsg takes up to `batch` datagrams, one sendmmsg answers them.
//! (aquatic's mio backend makes one syscall per datagram.)

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use super::super::sockets::sockaddr_to_std;
use mio::net::UdpSocket;

use crate::engine::prefetch_schedule;
use crate::handler::{MAX_UDP_REQUEST_BYTES, UdpHandler};

pub struct MmsgBatch {
    recv_buffers: Vec<[u8; MAX_UDP_REQUEST_BYTES]>,
    recv_addrs: Vec<libc::sockaddr_in6>,
    recv_iovecs: Vec<libc::iovec>,
    recv_headers: Vec<libc::mmsghdr>,
    responses: Vec<Vec<u8>>,
    /// For each response: the index of the request whose source address it goes back to.
    send_to: Vec<usize>,
    send_iovecs: Vec<libc::iovec>,
    send_headers: Vec<libc::mmsghdr>,
}

const SOCKADDR_BYTES: usize = size_of::<libc::sockaddr_in6>();

impl MmsgBatch {
    pub fn new(batch: usize) -> Self {
        // SAFETY: sockaddr_in6, iovec and mmsghdr are C structs of integers and raw pointers,
        // for which all-zero bytes (null pointers, zero lengths) is a valid value. (The
        // pointers are set before each syscall.)
        let (addr, iovec, header): (libc::sockaddr_in6, libc::iovec, libc::mmsghdr) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
        MmsgBatch {
            recv_buffers: vec![[0; MAX_UDP_REQUEST_BYTES]; batch],
            recv_addrs: vec![addr; batch],
            recv_iovecs: vec![iovec; batch],
            recv_headers: vec![header; batch],
            responses: (0..batch).map(|_| Vec::with_capacity(1500)).collect(),
            send_to: Vec::with_capacity(batch),
            send_iovecs: vec![iovec; batch],
            send_headers: vec![header; batch],
        }
    }

    /// Receives and answers datagrams until the socket has none left (edge-triggered epoll).
    pub fn drain(&mut self, socket: &UdpSocket, handler: &mut UdpHandler) -> io::Result<()> {
        let fd = socket.as_raw_fd();
        let batch = self.recv_buffers.len();
        loop {
            for i in 0..batch {
                self.recv_iovecs[i] = libc::iovec {
                    iov_base: self.recv_buffers[i].as_mut_ptr().cast(),
                    iov_len: MAX_UDP_REQUEST_BYTES,
                };
                let header = &mut self.recv_headers[i].msg_hdr;
                header.msg_name = (&raw mut self.recv_addrs[i]).cast();
                // A sockaddr_in6 holds either family's source address.
                header.msg_namelen = SOCKADDR_BYTES as libc::socklen_t;
                header.msg_iov = &raw mut self.recv_iovecs[i];
                header.msg_iovlen = 1;
                header.msg_control = std::ptr::null_mut();
                header.msg_controllen = 0;
                header.msg_flags = 0;
            }
            // SAFETY: recvmmsg writes through the first `batch` headers of recv_headers (that
            // many exist), each set just above to point at its own address (a sockaddr_in6,
            // msg_namelen bytes), iovec and receive buffer (MAX_UDP_REQUEST_BYTES, iov_len):
            // all owned by self, live and not otherwise borrowed during the call.
            let received = unsafe {
                libc::recvmmsg(
                    fd,
                    self.recv_headers.as_mut_ptr(),
                    batch as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if received < 0 {
                let err = io::Error::last_os_error();
                return match err.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    // An ICMP error from an earlier send surfaces here; the socket is fine.
                    io::ErrorKind::ConnectionRefused => continue,
                    _ => Err(err),
                };
            }
            let received = received as usize;
            self.send_to.clear();
            let mut answers = 0;
            for i in 0..received {
                for (ahead, step) in prefetch_schedule(i, received) {
                    if let Some(from) = self.source(ahead) {
                        let len = self.recv_headers[ahead].msg_len as usize;
                        let len = len.min(MAX_UDP_REQUEST_BYTES);
                        handler.prefetch(step, &self.recv_buffers[ahead][..len], from);
                    }
                }
                let header = &self.recv_headers[i];
                let Some(from) = self.source(i) else {
                    continue;
                };
                if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    continue; // Longer than any valid request.
                }
                let len = header.msg_len as usize;
                let out = &mut self.responses[answers];
                handler.handle(&self.recv_buffers[i][..len], from, out);
                if !out.is_empty() {
                    self.send_to.push(i);
                    answers += 1;
                }
            }
            self.send(fd, answers);
            if received < batch {
                return Ok(());
            }
        }
    }

    /// The source address of received datagram `i`.
    fn source(&self, i: usize) -> Option<SocketAddr> {
        // SAFETY: reads at most the SOCKADDR_BYTES bytes of recv_addrs[i], a live
        // sockaddr_in6, which has no padding: all its bytes are initialised fields.
        // (msg_namelen is the address's true length, which recvmmsg may set beyond the room
        // given; hence the bound.)
        let name = unsafe {
            std::slice::from_raw_parts(
                (&raw const self.recv_addrs[i]).cast::<u8>(),
                self.name_len(i) as usize,
            )
        };
        sockaddr_to_std(name)
    }

    /// The length of received datagram `i`'s source address, within its sockaddr_in6.
    fn name_len(&self, i: usize) -> libc::socklen_t {
        self.recv_headers[i]
            .msg_hdr
            .msg_namelen
            .min(SOCKADDR_BYTES as libc::socklen_t)
    }

    /// Sends the first `count` responses. Datagrams the socket cannot take now are dropped:
    /// the client retries, as BEP 15 expects of a lossy transport.
    fn send(&mut self, fd: i32, count: usize) {
        for i in 0..count {
            self.send_iovecs[i] = libc::iovec {
                iov_base: self.responses[i].as_mut_ptr().cast(),
                iov_len: self.responses[i].len(),
            };
            let request = self.send_to[i];
            let name_len = self.name_len(request);
            let header = &mut self.send_headers[i].msg_hdr;
            header.msg_name = (&raw mut self.recv_addrs[request]).cast();
            header.msg_namelen = name_len;
            header.msg_iov = &raw mut self.send_iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: sendmmsg reads `count - sent` headers from send_headers[sent..] (count <=
            // batch of them exist), each set above to point at its own iovec, the response's
            // bytes (iov_len = its length) and its request's source address (name_len bytes
            // of a sockaddr_in6): all owned by self and live during the call.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_headers[sent..].as_mut_ptr(),
                    (count - sent) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        tracing::debug!(dropped = count - sent, "UDP send buffer full");
                        return;
                    }
                    _ => {
                        // One bad destination (e.g. unreachable) fails only its own datagram.
                        tracing::debug!(error = %err, "UDP send failed");
                        sent += 1;
                    }
                }
            } else {
                sent += n as usize;
            }
        }
    }
}
