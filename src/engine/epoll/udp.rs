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

// SAFETY: the raw pointers inside the iovecs and headers only ever point into this struct's own
// buffers, and are rebuilt before every syscall.
unsafe impl Send for MmsgBatch {}

fn zeroed<T>() -> T {
    // SAFETY: only used for plain C structs (iovec, mmsghdr, sockaddr_in6), for which all
    // zero bytes is a valid value.
    unsafe { std::mem::zeroed() }
}

impl MmsgBatch {
    pub fn new(batch: usize) -> Self {
        MmsgBatch {
            recv_buffers: vec![[0; MAX_UDP_REQUEST_BYTES]; batch],
            recv_addrs: (0..batch).map(|_| zeroed()).collect(),
            recv_iovecs: (0..batch).map(|_| zeroed()).collect(),
            recv_headers: (0..batch).map(|_| zeroed()).collect(),
            responses: (0..batch).map(|_| Vec::with_capacity(1500)).collect(),
            send_to: Vec::with_capacity(batch),
            send_iovecs: (0..batch).map(|_| zeroed()).collect(),
            send_headers: (0..batch).map(|_| zeroed()).collect(),
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
                header.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                header.msg_iov = &raw mut self.recv_iovecs[i];
                header.msg_iovlen = 1;
                header.msg_control = std::ptr::null_mut();
                header.msg_controllen = 0;
                header.msg_flags = 0;
            }
            // SAFETY: every header points at live buffers of the sizes given above.
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
        // SAFETY: the kernel wrote msg_namelen bytes of address into recv_addrs[i].
        let name = unsafe {
            std::slice::from_raw_parts(
                (&raw const self.recv_addrs[i]).cast::<u8>(),
                self.recv_headers[i].msg_hdr.msg_namelen as usize,
            )
        };
        sockaddr_to_std(name)
    }

    /// Sends the first `count` responses. Datagrams the socket cannot take now are dropped:
    /// the client retries, as BEP 15 expects of a lossy transport.
    fn send(&mut self, fd: i32, count: usize) {
        for i in 0..count {
            self.send_iovecs[i] = libc::iovec {
                iov_base: self.responses[i].as_mut_ptr().cast(),
                iov_len: self.responses[i].len(),
            };
            let header = &mut self.send_headers[i].msg_hdr;
            let request = self.send_to[i];
            header.msg_name = (&raw mut self.recv_addrs[request]).cast();
            header.msg_namelen = self.recv_headers[request].msg_hdr.msg_namelen;
            header.msg_iov = &raw mut self.send_iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers [sent, count) point at live responses and addresses.
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
