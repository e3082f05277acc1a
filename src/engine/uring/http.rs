//! HTTP on io_uring: multishot accept per listener, a multishot receive per connection over a
//! provided-buffer ring, one send in flight per connection from a buffer that stays put, idle
//! timeouts swept once a second, and a connection cap. A connection's slot is freed only when
//! none of its operations is in flight, so no completion ever finds its slot reused.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, types};
use slab::Slab;

use super::buf_ring::BufRing;
use super::{Op, Queue, RingSettings};
use crate::handler::{ConnectionRules, HttpConnection, HttpHandler};

const HTTP_GROUP: u16 = 1;

struct Conn {
    fd: OwnedFd,
    http: HttpConnection,
    /// What the in-flight send reads from; untouched until that send completes.
    send_buf: Vec<u8>,
    sent: usize,
    sending: bool,
    receiving: bool,
    closing: bool,
    last_active: Instant,
}

pub struct HttpConnections {
    bufs: BufRing,
    first_listener: u32,
    slab: Slab<Conn>,
    max: usize,
    connection_rules: ConnectionRules,
    idle_timeout: Duration,
}

impl HttpConnections {
    pub fn new(
        ring: &IoUring,
        settings: &RingSettings,
        first_listener: usize,
        listeners: usize,
        queue: &mut Queue,
    ) -> anyhow::Result<Self> {
        let (count, size) = if listeners == 0 {
            (1, 64)
        } else {
            (settings.http_recv_buffers, settings.http_recv_buffer_bytes)
        };
        let bufs = BufRing::new(ring, HTTP_GROUP, count, size)
            .map_err(|e| anyhow::anyhow!("HTTP buffer ring: {e}"))?;
        let http = HttpConnections {
            bufs,
            first_listener: first_listener as u32,
            slab: Slab::new(),
            max: settings.http.max_connections_per_worker,
            connection_rules: settings.http.connection,
            idle_timeout: settings.http.idle_timeout,
        };
        for listener in 0..listeners {
            http.arm_accept(listener, queue);
        }
        Ok(http)
    }

    fn arm_accept(&self, listener: usize, queue: &mut Queue) {
        let entry = opcode::AcceptMulti::new(types::Fixed(self.first_listener + listener as u32))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Op::Accept.data(listener));
        queue.push(entry);
    }

    fn arm_recv(&mut self, key: usize, queue: &mut Queue) {
        let conn = &mut self.slab[key];
        let entry = opcode::RecvMulti::new(types::Fd(conn.fd.as_raw_fd()), self.bufs.group())
            .build()
            .user_data(Op::ConnRecv.data(key));
        conn.receiving = true;
        queue.push(entry);
    }

    pub fn on_accept(&mut self, listener: usize, result: i32, flags: u32, queue: &mut Queue) {
        if !cqueue::more(flags) {
            self.arm_accept(listener, queue);
        }
        if result < 0 {
            // EMFILE and friends: keep serving the connections we have.
            tracing::warn!(error = %std::io::Error::from_raw_os_error(-result), "accept failed");
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(result) };
        if self.slab.len() >= self.max {
            tracing::debug!("connection limit reached; closing");
            return; // dropping fd closes it
        }
        let Some(peer) = peer_addr(&fd) else { return };
        let key = self.slab.insert(Conn {
            fd,
            http: HttpConnection::new(peer, self.connection_rules),
            send_buf: Vec::new(),
            sent: 0,
            sending: false,
            receiving: false,
            closing: false,
            last_active: Instant::now(),
        });
        self.arm_recv(key, queue);
    }

    pub fn on_recv(
        &mut self,
        key: usize,
        result: i32,
        flags: u32,
        handler: &mut HttpHandler,
        queue: &mut Queue,
    ) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        if let Some(bid) = cqueue::buffer_select(flags) {
            if result > 0 && !conn.closing {
                conn.http
                    .received(self.bufs.buffer(bid, result as usize), handler);
                conn.last_active = Instant::now();
            }
            self.bufs.give_back(bid);
        }
        let more = cqueue::more(flags);
        if !more {
            conn.receiving = false;
        }
        if result == 0 || (result < 0 && result != -libc::ENOBUFS) {
            // End of stream, an error, or our own cancel.
            self.begin_close(key, queue);
        } else if !more && !conn.closing {
            self.arm_recv(key, queue);
        }
        self.flush(key, handler, queue);
    }

    pub fn on_send(
        &mut self,
        key: usize,
        result: i32,
        handler: &mut HttpHandler,
        queue: &mut Queue,
    ) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        conn.sending = false;
        if result <= 0 {
            self.begin_close(key, queue);
            self.free_if_done(key);
            return;
        }
        conn.sent += result as usize;
        if conn.sent < conn.send_buf.len() {
            self.send(key, queue);
            return;
        }
        conn.send_buf.clear();
        self.flush(key, handler, queue);
    }

    /// Sends pending output if no send is in flight; answers requests held back by output;
    /// closes a finished connection.
    fn flush(&mut self, key: usize, handler: &mut HttpHandler, queue: &mut Queue) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        if conn.sending {
            return;
        }
        if conn.http.pending_output().is_empty() && conn.http.has_unprocessed_input() {
            conn.http.process(handler);
        }
        if !conn.http.pending_output().is_empty() {
            conn.http.take_output(&mut conn.send_buf);
            conn.sent = 0;
            self.send(key, queue);
        } else if conn.http.is_finished() {
            self.begin_close(key, queue);
        }
        self.free_if_done(key);
    }

    fn send(&mut self, key: usize, queue: &mut Queue) {
        let conn = &mut self.slab[key];
        let rest = &conn.send_buf[conn.sent..];
        let entry = opcode::Send::new(
            types::Fd(conn.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(Op::ConnSend.data(key));
        conn.sending = true;
        queue.push(entry);
    }

    fn begin_close(&mut self, key: usize, queue: &mut Queue) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        if conn.receiving {
            let cancel = opcode::AsyncCancel::new(Op::ConnRecv.data(key))
                .build()
                .user_data(Op::Cancel.data(key));
            queue.push(cancel);
        }
    }

    /// Frees a closing connection once nothing of it is in flight (dropping the fd closes it).
    fn free_if_done(&mut self, key: usize) {
        if self
            .slab
            .get(key)
            .is_some_and(|c| c.closing && !c.receiving && !c.sending)
        {
            self.slab.remove(key);
        }
    }

    pub fn close_idle(&mut self, queue: &mut Queue) {
        let now = Instant::now();
        let idle: Vec<usize> = self
            .slab
            .iter()
            .filter(|(_, c)| !c.closing && now.duration_since(c.last_active) > self.idle_timeout)
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.begin_close(key, queue);
            self.free_if_done(key);
        }
    }

    pub fn publish(&self) {
        self.bufs.publish();
    }
}

fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(fd);
    sock.peer_addr().ok()?.as_socket()
}
