//! The epoll engine (through mio): readiness events, UDP in recvmmsg/sendmmsg batches, HTTP
//! connections in a slab. Runs everywhere Linux does.

mod http;
mod udp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};

use self::http::HttpConnections;
use self::udp::MmsgBatch;
use super::sockets::WorkerSockets;
use super::{HttpLimits, Shutdown, Wake};
use crate::handler::{Handlers, HttpHandler, UdpHandler};
use crate::metrics::WorkerMetrics;

/// Engine settings a worker needs.
#[derive(Clone, Debug)]
pub struct EpollSettings {
    pub udp_batch_size: usize,
    pub http: HttpLimits,
}

const WAKER: Token = Token(usize::MAX);
const FIRST_CONNECTION: usize = 1 << 16;

struct MioWaker(Waker);

impl Wake for MioWaker {
    fn wake(&self) {
        let _ = self.0.wake();
    }
}

/// A worker ready to run on its own thread: its poll, sockets and handlers.
pub struct EpollWorker {
    poll: Poll,
    udp: Vec<UdpSocket>,
    listeners: Vec<TcpListener>,
    settings: EpollSettings,
    udp_handler: UdpHandler,
    http_handler: HttpHandler,
    metrics: Arc<WorkerMetrics>,
    shutdown: Arc<Shutdown>,
}

impl EpollWorker {
    /// Registers the sockets; call on the supervisor's thread, then [`EpollWorker::run`] on the
    /// worker's.
    pub fn new(
        sockets: WorkerSockets,
        handlers: Handlers,
        settings: EpollSettings,
        shutdown: Arc<Shutdown>,
    ) -> anyhow::Result<Self> {
        let poll = Poll::new().context("create epoll instance")?;
        let waker = Waker::new(poll.registry(), WAKER).context("create waker")?;
        shutdown.register(Box::new(MioWaker(waker)));
        let mut udp: Vec<UdpSocket> = sockets.udp.into_iter().map(UdpSocket::from_std).collect();
        let mut listeners: Vec<TcpListener> =
            sockets.tcp.into_iter().map(TcpListener::from_std).collect();
        for (i, socket) in udp.iter_mut().enumerate() {
            poll.registry()
                .register(socket, Token(i), Interest::READABLE)?;
        }
        for (i, listener) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(listener, Token(udp.len() + i), Interest::READABLE)?;
        }
        Ok(EpollWorker {
            poll,
            udp,
            listeners,
            settings,
            udp_handler: handlers.udp,
            http_handler: handlers.http,
            metrics: handlers.metrics,
            shutdown,
        })
    }

    pub fn run(mut self) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut batch = MmsgBatch::new(self.settings.udp_batch_size);
        let mut connections = HttpConnections::new(&self.settings, self.metrics.clone());
        let mut last_sweep = Instant::now();
        let udp_count = self.udp.len();
        let listener_count = self.listeners.len();

        while !self.shutdown.is_requested() {
            let mut timeout = Duration::from_millis(500);
            if let Some(at) = connections.accept_resumes_at() {
                timeout = timeout.min(at.saturating_duration_since(Instant::now()));
            }
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("epoll wait"),
            }
            // One clock read per wake-up: the deadlines are in seconds.
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(i) if i < udp_count => {
                        batch
                            .drain(&self.udp[i], &mut self.udp_handler)
                            .context("UDP receive")?;
                    }
                    Token(i) if i < udp_count + listener_count => {
                        connections.accept(
                            &self.listeners[i - udp_count],
                            self.poll.registry(),
                            now,
                        );
                    }
                    Token(i) if i >= FIRST_CONNECTION => {
                        connections.on_event(
                            i - FIRST_CONNECTION,
                            event,
                            self.poll.registry(),
                            &mut self.http_handler,
                            now,
                        );
                    }
                    Token(_) => {}
                }
            }
            // Accepting paused on EMFILE: connections that waited meanwhile raise no new
            // edge, so try the listeners again once the pause is over.
            if connections.accept_resumes_at().is_some_and(|at| now >= at) {
                for listener in &self.listeners {
                    connections.accept(listener, self.poll.registry(), now);
                }
            }
            if now.duration_since(last_sweep) >= Duration::from_secs(1) {
                connections.close_expired(self.poll.registry(), now);
                last_sweep = now;
            }
        }
        Ok(())
    }
}
