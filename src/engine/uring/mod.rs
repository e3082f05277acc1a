//! The io_uring engine: one ring per worker, multishot receives over provided-buffer rings,
//! sends queued as SQEs and submitted together with the next wait.

mod buf_ring;
mod http;
mod probe;
mod udp;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use io_uring::{IoUring, opcode, squeue, types};

use self::http::HttpConnections;
pub use self::probe::probe;
use self::udp::UdpSockets;
use super::sockets::WorkerSockets;
use super::{HttpLimits, Shutdown, Wake, prefetch_schedule};
use crate::handler::{Handlers, HttpHandler, UdpHandler};
use crate::swarm::PrefetchStep;

/// Ring and buffer sizes; from config.
#[derive(Clone, Debug)]
pub struct RingSettings {
    pub ring_entries: u32,
    pub udp_recv_buffers: u16,
    pub udp_send_slots: usize,
    pub http_recv_buffers: u16,
    pub http_recv_buffer_bytes: usize,
    pub defer_taskrun: bool,
    pub http: HttpLimits,
}

impl RingSettings {
    fn build(&self, entries: u32) -> io::Result<IoUring> {
        let mut builder = IoUring::builder();
        builder
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_cqsize(entries.saturating_mul(4));
        if self.defer_taskrun {
            builder.setup_defer_taskrun();
        }
        builder.build(entries)
    }
}

/// What a completion is for: the kind in the top byte of `user_data`, an index below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Wake = 1,
    UdpRecv,
    UdpSend,
    Accept,
    ConnRecv,
    ConnSend,
    Cancel,
}

impl Op {
    fn data(self, index: usize) -> u64 {
        (u64::from(self as u8) << 56) | index as u64
    }

    fn decode(user_data: u64) -> Option<(Op, usize)> {
        let index = (user_data & ((1 << 56) - 1)) as usize;
        let op = match (user_data >> 56) as u8 {
            1 => Op::Wake,
            2 => Op::UdpRecv,
            3 => Op::UdpSend,
            4 => Op::Accept,
            5 => Op::ConnRecv,
            6 => Op::ConnSend,
            7 => Op::Cancel,
            _ => return None,
        };
        Some((op, index))
    }
}

/// SQEs waiting to be pushed; pushed in order before each submit.
pub(super) struct Queue {
    entries: Vec<squeue::Entry>,
}

impl Queue {
    fn push(&mut self, entry: squeue::Entry) {
        self.entries.push(entry);
    }
}

/// Wakes a worker by writing its eventfd, which the ring has a read pending on.
struct EventFdWaker(Arc<OwnedFd>);

impl Wake for EventFdWaker {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// A worker's sockets and handlers, built on the supervisor's thread; the ring itself is made
/// on the worker's own thread in [`UringWorker::run`] (SINGLE_ISSUER ties it to its creator).
pub struct UringWorker {
    sockets: WorkerSockets,
    settings: RingSettings,
    handlers: Handlers,
    shutdown: Arc<Shutdown>,
    wake_fd: Arc<OwnedFd>,
}

impl UringWorker {
    pub fn new(
        sockets: WorkerSockets,
        handlers: Handlers,
        settings: RingSettings,
        shutdown: Arc<Shutdown>,
    ) -> anyhow::Result<Self> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("create eventfd");
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let wake_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        shutdown.register(Box::new(EventFdWaker(wake_fd.clone())));
        Ok(UringWorker {
            sockets,
            settings,
            handlers,
            shutdown,
            wake_fd,
        })
    }

    /// Sets up the ring, then serves until shutdown. `ready` is called once the ring is armed.
    pub fn run(self, ready: impl FnOnce(anyhow::Result<()>)) -> anyhow::Result<()> {
        let mut state = match Ring::new(self) {
            Ok(state) => {
                ready(Ok(()));
                state
            }
            Err(e) => {
                let message = format!("{e:#}");
                ready(Err(e));
                anyhow::bail!(message);
            }
        };
        state.serve()
    }
}

/// A worker's running state.
struct Ring {
    ring: IoUring,
    queue: Queue,
    udp: UdpSockets,
    http: HttpConnections,
    udp_handler: UdpHandler,
    http_handler: HttpHandler,
    shutdown: Arc<Shutdown>,
    wake_fd: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    /// Kept open for as long as the ring refers to them by registered index.
    _sockets: WorkerSockets,
}

impl Ring {
    fn new(worker: UringWorker) -> anyhow::Result<Ring> {
        let settings = &worker.settings;
        let ring = settings
            .build(settings.ring_entries)
            .context("io_uring setup")?;
        let sockets = worker.sockets;
        // Registered files: UDP sockets first, then listeners.
        let fds: Vec<i32> = sockets
            .udp
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(sockets.tcp.iter().map(AsRawFd::as_raw_fd))
            .collect();
        if !fds.is_empty() {
            ring.submitter()
                .register_files(&fds)
                .context("register socket descriptors")?;
        }
        let mut queue = Queue {
            entries: Vec::with_capacity(1024),
        };
        let udp = UdpSockets::new(&ring, settings, sockets.udp.len(), &mut queue)?;
        let http = HttpConnections::new(
            &ring,
            settings,
            sockets.udp.len(),
            sockets.tcp.len(),
            worker.handlers.metrics.clone(),
            &mut queue,
        )?;
        let mut state = Ring {
            ring,
            queue,
            udp,
            http,
            udp_handler: worker.handlers.udp,
            http_handler: worker.handlers.http,
            shutdown: worker.shutdown,
            wake_fd: worker.wake_fd,
            wake_buf: Box::new(0),
            _sockets: sockets,
        };
        state.arm_wake();
        state.submit(0, Duration::ZERO).context("first submit")?;
        Ok(state)
    }

    fn arm_wake(&mut self) {
        let read = opcode::Read::new(
            types::Fd(self.wake_fd.as_raw_fd()),
            (&raw mut *self.wake_buf).cast(),
            8,
        )
        .build()
        .user_data(Op::Wake.data(0));
        self.queue.push(read);
    }

    /// Pushes the queued SQEs (submitting early if the SQ fills) and submits, waiting for at
    /// least `want` completions or `wait`.
    fn submit(&mut self, want: usize, wait: Duration) -> io::Result<()> {
        let (submitter, mut sq, _) = self.ring.split();
        for entry in self.queue.entries.drain(..) {
            // SAFETY: every queued SQE points at memory owned by this worker that outlives its
            // completion (buffers in slots, connections, the wake buffer).
            while unsafe { sq.push(&entry) }.is_err() {
                sq.sync();
                submitter.submit()?;
                sq.sync();
            }
        }
        sq.sync();
        let timeout = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&timeout);
        match submitter.submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Starts fetching what a received datagram's answer will need (see
    /// [`UdpHandler::prefetch`]).
    fn prefetch(&self, step: PrefetchStep, (user_data, result, flags): (u64, i32, u32)) {
        if let Some((Op::UdpRecv, _)) = Op::decode(user_data) {
            self.udp.prefetch(step, result, flags, &self.udp_handler);
        }
    }

    fn serve(&mut self) -> anyhow::Result<()> {
        let mut last_sweep = Instant::now();
        let mut completions = Vec::with_capacity(4096);
        while !self.shutdown.is_requested() {
            let mut wait = Duration::from_secs(1);
            if let Some(at) = self.http.accept_resumes_at() {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            self.submit(1, wait).context("io_uring submit")?;
            // One clock read per batch: the connection deadlines are in seconds.
            let now = Instant::now();
            completions.clear();
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (i, &(user_data, result, flags)) in completions.iter().enumerate() {
                for (ahead, step) in prefetch_schedule(i, completions.len()) {
                    self.prefetch(step, completions[ahead]);
                }
                let Some((op, index)) = Op::decode(user_data) else {
                    continue;
                };
                match op {
                    Op::Wake => self.arm_wake(),
                    Op::UdpRecv => self.udp.on_recv(
                        index,
                        result,
                        flags,
                        &mut self.udp_handler,
                        &mut self.queue,
                    ),
                    Op::UdpSend => self.udp.on_send(index),
                    Op::Accept => self
                        .http
                        .on_accept(index, result, flags, &mut self.queue, now),
                    Op::ConnRecv => self.http.on_recv(
                        index,
                        result,
                        flags,
                        &mut self.http_handler,
                        &mut self.queue,
                        now,
                    ),
                    Op::ConnSend => self.http.on_send(
                        index,
                        result,
                        &mut self.http_handler,
                        &mut self.queue,
                        now,
                    ),
                    Op::Cancel => {}
                }
            }
            self.udp.publish();
            self.http.publish();
            self.http.resume_accepts(&mut self.queue, now);
            if now.duration_since(last_sweep) >= Duration::from_secs(1) {
                self.http.close_expired(&mut self.queue, now);
                last_sweep = now;
            }
        }
        Ok(())
    }
}
