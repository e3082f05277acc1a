//! HTTP on io_uring: multishot accept per listener, a multishot receive per connection over a
//! provided-buffer ring, one send in flight per connection from a buffer that stays put. Who
//! may stay open, and for how long, is the shared [`ConnectionTable`]'s decision.
//!
//! A connection's slot is freed only when none of its operations is in flight, so no
//! completion ever finds its slot reused. Closing one that has operations in flight cancels
//! them; one closed for a timeout or to make room is also shut down and reset, which ends a
//! send waiting on a client that never reads (cancelling only its receive left such
//! connections, their descriptors and buffers, in place for good).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{IoUring, cqueue, opcode, types};

use super::buf_ring::BufRing;
use super::{Op, Queue, RingSettings};
use crate::engine::connections::{Activity, ConnectionTable};
use crate::engine::{AcceptBackoff, abort_socket};
use crate::handler::{ConnectionRules, HttpConnection, HttpHandler};
use crate::metrics::{ConnectionClose, WorkerMetrics};

const HTTP_GROUP: u16 = 1;

struct Conn {
    fd: OwnedFd,
    /// Tells this connection's completions from those of an earlier one in the same slot
    /// (see [`op_index`]).
    generation: u32,
    http: HttpConnection,
    /// What the in-flight send reads from; untouched until that send completes.
    send_buf: Vec<u8>,
    sent: usize,
    sending: bool,
    receiving: bool,
    /// The receive is being cancelled because the client leaves its answers unread; it is
    /// armed again once they are written.
    pausing: bool,
    /// The client sent its last byte: close once everything is answered and written.
    eof: bool,
    closing: bool,
}

pub struct HttpConnections {
    bufs: BufRing,
    first_listener: u32,
    table: ConnectionTable<Conn>,
    connection_rules: ConnectionRules,
    backoff: AcceptBackoff,
    /// Listeners whose multishot accept ended while accepting was paused.
    accept_unarmed: Vec<usize>,
    expired: Vec<(usize, ConnectionClose)>,
    /// The generation the next connection gets.
    next_generation: u32,
}

impl HttpConnections {
    pub fn new(
        ring: &IoUring,
        settings: &RingSettings,
        first_listener: usize,
        listeners: usize,
        metrics: Arc<WorkerMetrics>,
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
            table: ConnectionTable::new(settings.http.clone(), metrics.clone()),
            connection_rules: settings.http.connection,
            backoff: AcceptBackoff::new(metrics),
            accept_unarmed: Vec::new(),
            expired: Vec::new(),
            next_generation: 0,
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
        let group = self.bufs.group();
        let conn = self.table.get_mut(key).expect("live connection");
        let entry = opcode::RecvMulti::new(types::Fd(conn.fd.as_raw_fd()), group)
            .build()
            .user_data(Op::ConnRecv.data(op_index(key, conn.generation)));
        conn.receiving = true;
        queue.push(entry);
    }

    pub fn on_accept(
        &mut self,
        listener: usize,
        result: i32,
        flags: u32,
        queue: &mut Queue,
        now: Instant,
    ) {
        let pause = result < 0
            && self
                .backoff
                .failed(&std::io::Error::from_raw_os_error(-result), now);
        if !cqueue::more(flags) {
            if pause || self.backoff.is_paused(now) {
                // Re-armed when the pause is over (`resume_accepts`): at once it would fail
                // again, as fast as the ring can go.
                self.accept_unarmed.push(listener);
            } else {
                self.arm_accept(listener, queue);
            }
        }
        if result < 0 {
            return;
        }
        // SAFETY: a successful accept (into the descriptor table: no fixed-file slot was
        // asked for) returns a new open descriptor that nothing else owns; it is wrapped
        // once, here.
        let fd = unsafe { OwnedFd::from_raw_fd(result) };
        let Some(peer) = peer_addr(&fd) else { return };
        let victim = match self.table.admit(peer, now) {
            Ok(victim) => victim,
            Err(_) => {
                abort_socket(&fd);
                return; // dropping fd closes it
            }
        };
        if let Some(victim) = victim {
            // (Its slot is freed once its cancelled operations end.)
            self.close(victim, ConnectionClose::Evicted, queue);
        }
        let generation = self.next_generation;
        self.next_generation = (generation + 1) & GENERATION_MASK;
        let key = self.table.insert(
            Conn {
                fd,
                generation,
                http: HttpConnection::new(peer, self.connection_rules),
                send_buf: Vec::new(),
                sent: 0,
                sending: false,
                receiving: false,
                pausing: false,
                eof: false,
                closing: false,
            },
            peer,
            now,
        );
        self.arm_recv(key, queue);
    }

    /// When accepting, paused after EMFILE and the like, resumes (the ring's wait is no longer).
    pub fn accept_resumes_at(&self) -> Option<Instant> {
        self.backoff.resumes_at()
    }

    /// Re-arms the accepts that ended during a pause, once it is over.
    pub fn resume_accepts(&mut self, queue: &mut Queue, now: Instant) {
        // (is_paused first: it also ends a pause that is over, which ends the short waits.)
        if self.backoff.is_paused(now) || self.accept_unarmed.is_empty() {
            return;
        }
        for listener in std::mem::take(&mut self.accept_unarmed) {
            self.arm_accept(listener, queue);
        }
    }

    pub fn on_recv(
        &mut self,
        index: usize,
        result: i32,
        flags: u32,
        handler: &mut HttpHandler,
        queue: &mut Queue,
        now: Instant,
    ) {
        // (Taken when reaped: `take_buffer`.) Given back whatever becomes of the connection.
        let bid = cqueue::buffer_select(flags);
        let Some((key, conn)) = live(&mut self.table, index, |c| c.receiving) else {
            if let Some(bid) = bid {
                self.bufs.give_back(bid);
            }
            return;
        };
        let mut answered = 0;
        if let Some(bid) = bid {
            if result > 0 && !conn.closing && !conn.eof {
                answered = conn
                    .http
                    .received(self.bufs.buffer(bid, result as usize), handler);
            }
            self.bufs.give_back(bid);
        }
        if !cqueue::more(flags) {
            // Ended: out of buffers (ENOBUFS), our cancel, or the kernel's choice. `flush`
            // arms it again when the connection wants input.
            conn.receiving = false;
            conn.pausing = false;
        }
        if result == 0 {
            // The client is done sending: answer what it sent, then close.
            conn.eof = true;
        } else if result == -libc::ECANCELED && !conn.closing {
            // Our own pause.
        } else if result < 0 && result != -libc::ENOBUFS {
            // An error, or our own cancel of a closing connection.
            self.close(key, ConnectionClose::Done, queue);
        }
        self.flush(key, answered, handler, queue, now);
    }

    pub fn on_send(
        &mut self,
        index: usize,
        result: i32,
        handler: &mut HttpHandler,
        queue: &mut Queue,
        now: Instant,
    ) {
        let Some((key, conn)) = live(&mut self.table, index, |c| c.sending) else {
            return;
        };
        conn.sending = false;
        if result <= 0 {
            self.close(key, ConnectionClose::Done, queue);
            return;
        }
        conn.sent += result as usize;
        if conn.sent < conn.send_buf.len() {
            self.send(key, queue);
            return;
        }
        conn.send_buf.clear();
        self.flush(key, 0, handler, queue, now);
    }

    /// Sends pending output if no send is in flight; answers requests held back by output;
    /// pauses or resumes receiving; closes a finished connection; tells the table.
    fn flush(
        &mut self,
        key: usize,
        mut answered: usize,
        handler: &mut HttpHandler,
        queue: &mut Queue,
        now: Instant,
    ) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        if conn.closing {
            self.free_if_done(key);
            return;
        }
        if !conn.sending {
            if conn.http.pending_output().is_empty() && conn.http.has_unprocessed_input() {
                answered += conn.http.process(handler);
            }
            if !conn.http.pending_output().is_empty() {
                conn.http.take_output(&mut conn.send_buf);
                conn.sent = 0;
                self.send(key, queue);
            } else if conn.http.is_finished() || conn.eof {
                // (After an end of input with nothing left to send, whatever input remains is
                // a request that can never complete.)
                let reason = if conn.http.overflowed() {
                    ConnectionClose::InputLimit
                } else {
                    ConnectionClose::Done
                };
                self.close(key, reason, queue);
                return;
            }
        }
        let conn = self.table.get_mut(key).expect("live connection");
        let wants_input = conn.http.wants_input() && !conn.eof;
        if wants_input && !conn.receiving {
            self.arm_recv(key, queue);
        } else if !wants_input && conn.receiving && !conn.pausing {
            // Stop reading a client that leaves its answers unread: what it sends waits in
            // the kernel, which stops it with TCP flow control, not in our memory.
            conn.pausing = true;
            let recv = Op::ConnRecv.data(op_index(key, conn.generation));
            queue.push(cancel(recv, key));
        }
        let conn = self.table.get(key).expect("live connection");
        let activity = Activity {
            answered,
            partial_input: conn.http.has_partial_input(),
            output_pending: conn.sending,
        };
        self.table.note(key, now, activity);
    }

    fn send(&mut self, key: usize, queue: &mut Queue) {
        let conn = self.table.get_mut(key).expect("live connection");
        let rest = &conn.send_buf[conn.sent..];
        let entry = opcode::Send::new(
            types::Fd(conn.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(Op::ConnSend.data(op_index(key, conn.generation)));
        conn.sending = true;
        queue.push(entry);
    }

    /// Closes `key`: cancels what is in flight; for anything but a normal end, also shuts the
    /// socket down and resets it, so a send stuck on a client that never reads ends too. The
    /// slot is freed now if nothing of it is in flight, else when the last of it completes
    /// ([`Self::free_if_done`] from the completion handlers).
    fn close(&mut self, key: usize, reason: ConnectionClose, queue: &mut Queue) {
        self.table.close(key, reason);
        if let Some(conn) = self.table.get_mut(key)
            && !conn.closing
        {
            conn.closing = true;
            if reason != ConnectionClose::Done {
                abort_socket(&conn.fd);
                let _ = socket2::SockRef::from(&conn.fd).shutdown(std::net::Shutdown::Both);
            }
            let index = op_index(key, conn.generation);
            if conn.receiving {
                queue.push(cancel(Op::ConnRecv.data(index), key));
            }
            if conn.sending {
                queue.push(cancel(Op::ConnSend.data(index), key));
            }
        }
        self.free_if_done(key);
    }

    /// Frees a closing connection once nothing of it is in flight (dropping the fd closes it).
    fn free_if_done(&mut self, key: usize) {
        if self
            .table
            .get(key)
            .is_some_and(|c| c.closing && !c.receiving && !c.sending)
        {
            self.table.remove(key);
        }
    }

    /// Closes the connections whose time is up (once a second).
    pub fn close_expired(&mut self, queue: &mut Queue, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        self.table.expired(now, &mut expired);
        for &(key, reason) in &expired {
            self.close(key, reason, queue);
        }
        self.expired = expired;
    }

    pub fn publish(&self) {
        self.bufs.publish();
    }

    /// Takes the receive buffer a reaped completion carries (see [`BufRing::take`]).
    pub fn take_buffer(&mut self, flags: u32) {
        self.bufs.take(flags);
    }

    /// How many connections hold a receive, and a send, queued or in flight: what their slots
    /// wait for before they are freed; and how many hold neither (a slot that nothing will
    /// ever free: after each completion a connection is freed or waits for one).
    pub fn operations_claimed(&self) -> (usize, usize, usize) {
        self.table.iter().fold((0, 0, 0), |(r, s, none), c| {
            (
                r + usize::from(c.receiving),
                s + usize::from(c.sending),
                none + usize::from(!c.receiving && !c.sending),
            )
        })
    }
}

/// Generations wrap within 24 bits: with the key's 32 below, a `user_data` index fits in its
/// 56 bits.
const GENERATION_MASK: u32 = (1 << 24) - 1;

/// The `user_data` index of connection `key`'s operations: the key, and its generation above.
/// A completion must find its own connection in the slot, never a later one the slot was
/// reused for: applied to that one, it would clear the `sending` of a send still in flight,
/// and its buffer could then be rewritten while the kernel reads it. (Slots are freed only
/// with nothing in flight, so such a completion does not come; this makes sure.)
fn op_index(key: usize, generation: u32) -> usize {
    debug_assert!(key < 1 << 32, "connection key {key} beyond 32 bits");
    key | (generation as usize) << 32
}

/// The connection a completion with `index` is for, if it is still in its slot and `waits`
/// for that completion (`receiving` or `sending`); debug builds panic otherwise.
fn live(
    table: &mut ConnectionTable<Conn>,
    index: usize,
    waits: impl Fn(&Conn) -> bool,
) -> Option<(usize, &mut Conn)> {
    let (key, generation) = (index & 0xffff_ffff, (index >> 32) as u32);
    match table.get_mut(key) {
        Some(conn) if conn.generation == generation && waits(conn) => Some((key, conn)),
        _ => {
            if cfg!(debug_assertions) {
                panic!("a completion for connection slot {key} found no operation waiting for it");
            }
            None
        }
    }
}

fn cancel(user_data: u64, key: usize) -> io_uring::squeue::Entry {
    opcode::AsyncCancel::new(user_data)
        .build()
        .user_data(Op::Cancel.data(key))
}

fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(fd);
    sock.peer_addr().ok()?.as_socket()
}
