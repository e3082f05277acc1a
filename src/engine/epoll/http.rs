//! HTTP connections of one worker on epoll: accept, read, write, close. Who may stay open, and
//! for how long, is the shared [`ConnectionTable`]'s decision.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use super::{EpollSettings, FIRST_CONNECTION};
use crate::engine::connections::{Activity, ConnectionTable};
use crate::engine::{AcceptBackoff, abort_socket};
use crate::handler::{ConnectionRules, HttpConnection, HttpHandler};
use crate::metrics::{ConnectionClose, WorkerMetrics};

struct Connection {
    stream: TcpStream,
    http: HttpConnection,
    wants_writable: bool,
    /// Reading stopped because the client leaves its answers unread; it resumes once they
    /// are written (edge-triggered epoll reports no data that was already there).
    read_paused: bool,
    /// The client sent its last byte: close once everything is answered and written (an
    /// answer larger than the socket's buffer was cut short when this closed at once).
    eof: bool,
}

pub struct HttpConnections {
    table: ConnectionTable<Connection>,
    connection_rules: ConnectionRules,
    read_buffer: Box<[u8]>,
    backoff: AcceptBackoff,
    expired: Vec<(usize, ConnectionClose)>,
}

impl HttpConnections {
    pub fn new(settings: &EpollSettings, metrics: Arc<WorkerMetrics>) -> Self {
        HttpConnections {
            table: ConnectionTable::new(settings.http.clone(), metrics.clone()),
            connection_rules: settings.http.connection,
            read_buffer: vec![0; 16 * 1024].into_boxed_slice(),
            backoff: AcceptBackoff::new(metrics),
            expired: Vec::new(),
        }
    }

    /// Accepts every waiting connection, unless accepting is paused after running out of
    /// descriptors.
    pub fn accept(&mut self, listener: &TcpListener, registry: &Registry, now: Instant) {
        if self.backoff.is_paused(now) {
            return;
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let victim = match self.table.admit(peer, now) {
                        Ok(victim) => victim,
                        Err(_) => {
                            abort_socket(&stream);
                            continue;
                        }
                    };
                    if let Some(victim) = victim {
                        self.close(victim, ConnectionClose::Evicted, registry);
                    }
                    self.add(stream, peer, registry, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.backoff.failed(&e, now) {
                        return;
                    }
                }
            }
        }
    }

    fn add(
        &mut self,
        mut stream: TcpStream,
        peer: std::net::SocketAddr,
        registry: &Registry,
        now: Instant,
    ) {
        let key = self.table.next_key();
        if registry
            .register(
                &mut stream,
                Token(FIRST_CONNECTION + key),
                Interest::READABLE,
            )
            .is_err()
        {
            return;
        }
        let connection = Connection {
            stream,
            http: HttpConnection::new(peer, self.connection_rules),
            wants_writable: false,
            read_paused: false,
            eof: false,
        };
        let inserted = self.table.insert(connection, peer, now);
        debug_assert_eq!(inserted, key);
    }

    /// When a paused accept should be tried again (the poll waits no longer than that).
    pub fn accept_resumes_at(&self) -> Option<Instant> {
        self.backoff.resumes_at()
    }

    pub fn on_event(
        &mut self,
        key: usize,
        event: &Event,
        registry: &Registry,
        handler: &mut HttpHandler,
        now: Instant,
    ) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let mut answered = 0;
        let mut read = (event.is_readable() || event.is_read_closed()) && !conn.eof;
        let mut open = loop {
            if read && !read_all(conn, &mut self.read_buffer, handler, &mut answered) {
                break false;
            }
            if !flush(conn, handler, &mut answered) {
                break false;
            }
            if conn.eof {
                // Whatever input is left is a request that can never complete.
                break !conn.http.pending_output().is_empty();
            }
            // Answers went out and made room: read what waited meanwhile.
            read = conn.read_paused && conn.http.wants_input();
            if !read {
                break true;
            }
        };
        if open {
            open = update_interest(conn, key, registry);
        }
        if !open {
            let reason = if conn.http.overflowed() {
                ConnectionClose::InputLimit
            } else {
                ConnectionClose::Done
            };
            self.close(key, reason, registry);
            return;
        }
        let activity = Activity {
            answered,
            partial_input: conn.http.has_partial_input(),
            output_pending: !conn.http.pending_output().is_empty(),
        };
        self.table.note(key, now, activity);
    }

    /// Closes the connections whose time is up (once a second).
    pub fn close_expired(&mut self, registry: &Registry, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        self.table.expired(now, &mut expired);
        for &(key, reason) in &expired {
            self.close(key, reason, registry);
        }
        self.expired = expired;
    }

    fn close(&mut self, key: usize, reason: ConnectionClose, registry: &Registry) {
        self.table.close(key, reason);
        if let Some(mut conn) = self.table.remove(key) {
            if reason != ConnectionClose::Done {
                abort_socket(&conn.stream);
            }
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}

/// Reads until the socket is empty or the connection wants no more input for now; false when
/// the connection is over.
fn read_all(
    conn: &mut Connection,
    buffer: &mut [u8],
    handler: &mut HttpHandler,
    answered: &mut usize,
) -> bool {
    loop {
        if !conn.http.wants_input() {
            conn.read_paused = true;
            return true;
        }
        match conn.stream.read(buffer) {
            Ok(0) => {
                // The client is done sending: answer what it sent, then close.
                conn.eof = true;
                conn.read_paused = false;
                return true;
            }
            Ok(n) => *answered += conn.http.received(&buffer[..n], handler),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.read_paused = false;
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Writes pending output, answering held-back pipelined requests as room frees up; false when
/// the connection is over.
fn flush(conn: &mut Connection, handler: &mut HttpHandler, answered: &mut usize) -> bool {
    loop {
        while !conn.http.pending_output().is_empty() {
            match conn.stream.write(conn.http.pending_output()) {
                Ok(0) => return false,
                Ok(n) => conn.http.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if conn.http.is_finished() {
            return false;
        }
        if !conn.http.has_unprocessed_input() {
            return true;
        }
        *answered += conn.http.process(handler);
        if conn.http.pending_output().is_empty() {
            return true;
        }
    }
}

fn update_interest(conn: &mut Connection, key: usize, registry: &Registry) -> bool {
    let wants_writable = !conn.http.pending_output().is_empty();
    if wants_writable == conn.wants_writable {
        return true;
    }
    conn.wants_writable = wants_writable;
    let interest = if wants_writable {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    registry
        .reregister(&mut conn.stream, Token(FIRST_CONNECTION + key), interest)
        .is_ok()
}
