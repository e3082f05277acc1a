//! HTTP connections of one worker: accept, read, write, close, idle timeouts, a connection cap.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::{EpollSettings, FIRST_CONNECTION};
use crate::handler::{ConnectionRules, HttpConnection, HttpHandler};

struct Connection {
    stream: TcpStream,
    http: HttpConnection,
    last_active: Instant,
    wants_writable: bool,
}

pub struct HttpConnections {
    slab: Slab<Connection>,
    max: usize,
    connection_rules: ConnectionRules,
    idle_timeout: Duration,
    read_buffer: Box<[u8]>,
}

impl HttpConnections {
    pub fn new(settings: &EpollSettings) -> Self {
        HttpConnections {
            slab: Slab::new(),
            max: settings.http.max_connections_per_worker,
            connection_rules: settings.http.connection,
            idle_timeout: settings.http.idle_timeout,
            read_buffer: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    pub fn accept(&mut self, listener: &TcpListener, registry: &Registry) {
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.slab.len() >= self.max {
                        // At the cap: close at once rather than queue without bound.
                        tracing::debug!(%peer, "connection limit reached; closing");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let entry = self.slab.vacant_entry();
                    let token = Token(FIRST_CONNECTION + entry.key());
                    if registry
                        .register(&mut stream, token, Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    entry.insert(Connection {
                        stream,
                        http: HttpConnection::new(peer, self.connection_rules),
                        last_active: Instant::now(),
                        wants_writable: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    pub fn on_event(
        &mut self,
        key: usize,
        event: &Event,
        registry: &Registry,
        handler: &mut HttpHandler,
    ) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        let mut open = true;
        if event.is_readable() || event.is_read_closed() {
            open = read_all(conn, &mut self.read_buffer, handler);
        }
        if open {
            open = flush(conn, handler);
        }
        if open {
            open = update_interest(conn, key, registry);
        }
        if !open {
            self.close(key, registry);
        }
    }

    pub fn close_idle(&mut self, registry: &Registry) {
        let now = Instant::now();
        let idle: Vec<usize> = self
            .slab
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_active) > self.idle_timeout)
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.close(key, registry);
        }
    }

    fn close(&mut self, key: usize, registry: &Registry) {
        if let Some(mut conn) = self.slab.try_remove(key) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}

/// Reads until the socket is empty; false when the connection is over.
fn read_all(conn: &mut Connection, buffer: &mut [u8], handler: &mut HttpHandler) -> bool {
    loop {
        match conn.stream.read(buffer) {
            Ok(0) => {
                // The client is done sending; answer what it sent, then close.
                let _ = flush(conn, handler);
                return false;
            }
            Ok(n) => {
                conn.last_active = Instant::now();
                conn.http.received(&buffer[..n], handler);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Writes pending output, answering held-back pipelined requests as room frees up; false when
/// the connection is over.
fn flush(conn: &mut Connection, handler: &mut HttpHandler) -> bool {
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
        conn.http.process(handler);
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
