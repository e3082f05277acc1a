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
use io_uring::{IoUring, cqueue, opcode, squeue, types};

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

/// How long a stopping worker waits for the kernel to end its cancelled operations (they end
/// at once: every operation here waits on a socket or the eventfd, and is cancelled there).
const STOP_WAIT: Duration = Duration::from_millis(500);

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

    /// Kinds of operation, for arrays indexed by `Op as usize`.
    const KINDS: usize = 8;

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
        // SAFETY: write reads 8 bytes from the pointer, which is to `one`, a live u64. The
        // descriptor is the eventfd that this Arc keeps open, so it names no other file.
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
        // SAFETY: eventfd takes no pointers and touches no memory of ours; it returns a new
        // descriptor or -1 (checked below).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("create eventfd");
        }
        // SAFETY: fd is open (eventfd succeeded) and owned by nothing else: it is wrapped
        // once, here, and closed only by this OwnedFd.
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
        let served = state.serve();
        state.stop();
        served
    }
}

/// A worker's running state.
///
/// The kernel may use the memory an operation points to (buffers, addresses, the headers of
/// receives) until the operation's last completion, so that memory is freed only after it:
/// send slots and connection slots once their operations complete (udp.rs, http.rs), and all
/// of it only after [`Ring::stop`] has seen every operation end.
struct Ring {
    /// First, so that it is dropped first (fields drop in declaration order): once it is
    /// closed, no operation of this worker runs any more.
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
    /// Operations handed to the kernel whose last completion (the one without
    /// IORING_CQE_F_MORE) is not reaped yet, by kind.
    in_flight: [usize; Op::KINDS],
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
            in_flight: [0; Op::KINDS],
        };
        state.arm_wake();
        if let Err(e) = state.submit(0, Duration::ZERO) {
            state.stop();
            return Err(e).context("first submit");
        }
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
            // SAFETY: the kernel may use what an SQE points to until the operation's last
            // completion is reaped, and descriptors given by number until it is submitted.
            // Each queued here points into memory of this worker that lives that long:
            // - the wake read: `wake_buf`, boxed in this Ring;
            // - UDP receives: the `recv_header` boxed in UdpSockets, and the UDP buffer ring;
            // - a UDP Send: its send slot's bytes and address, not touched again until the
            //   Send's completion puts the slot back on the free list (udp.rs);
            // - HTTP receives: the HTTP buffer ring; an HTTP Send: `send_buf[sent..]` of its
            //   connection, a heap block that stays put when the slab moves the connection,
            //   neither written nor reallocated while `sending`; a connection's
            //   slot, and with it its descriptor, is freed only when neither `receiving` nor
            //   `sending` is set (http.rs), and those flags are set when the SQE is queued
            //   and cleared only by its last completion;
            // - cancels point to nothing;
            // and none of it is freed before `Ring::stop` has reaped the last completion of
            // every operation, or leaked if the kernel does not end them all.
            while unsafe { sq.push(&entry) }.is_err() {
                sq.sync();
                submitter.submit()?;
                sq.sync();
            }
            self.in_flight[kind(entry.get_user_data())] += 1;
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
            self.reap(&mut completions);
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
                if cfg!(debug_assertions) {
                    self.check_ownership();
                }
            }
        }
        if cfg!(debug_assertions) {
            self.check_ownership();
        }
        Ok(())
    }

    /// Moves the completions waiting in the CQ into `out` (cleared first): takes the receive
    /// buffers they hand over, and counts the operations that end.
    fn reap(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.clear();
        for cqe in self.ring.completion() {
            let (user_data, result, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            match Op::decode(user_data) {
                Some((Op::UdpRecv, _)) => self.udp.take_buffer(flags),
                Some((Op::ConnRecv, _)) => self.http.take_buffer(flags),
                _ => {}
            }
            if !cqueue::more(flags) {
                self.in_flight[kind(user_data)] -= 1;
            }
            out.push((user_data, result, flags));
        }
    }

    /// Debug builds: the flags that keep send slots and connection slots from being freed
    /// match the operations actually queued or in flight. A slot freed with an operation still
    /// in flight (which the kernel could then complete into memory reused for another) shows
    /// here as an operation that no slot claims (and when it completes, in `http::live`); a
    /// slot whose operation ended unnoticed as a claim without an operation; a connection
    /// left with no operation at all, which no completion will ever free, as one idle.
    fn check_ownership(&self) {
        let pending = |op: Op| {
            self.in_flight[op as usize]
                + self
                    .queue
                    .entries
                    .iter()
                    .filter(|e| kind(e.get_user_data()) == op as usize)
                    .count()
        };
        let (receiving, sending, idle) = self.http.operations_claimed();
        assert_eq!(
            (pending(Op::ConnRecv), pending(Op::ConnSend)),
            (receiving, sending),
            "HTTP receives and sends in flight vs connections that wait for them"
        );
        assert_eq!(idle, 0, "connections waiting for no operation: never freed");
        assert_eq!(
            pending(Op::UdpSend),
            self.udp.slots_in_use(),
            "UDP sends in flight vs send slots off the free list"
        );
    }

    /// Ends every operation before the memory they use is freed: cancels them all and reaps
    /// completions until the last one has ended. Should some not end within [`STOP_WAIT`],
    /// the ring is closed (the kernel cancels the rest) and their memory is leaked, never
    /// freed under them: the process is stopping anyway.
    fn stop(mut self) {
        // Queued entries never reached the kernel: nothing of theirs is in flight.
        self.queue.entries.clear();
        let cancel_all = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(Op::Cancel.data(0));
        self.queue.push(cancel_all);
        let deadline = Instant::now() + STOP_WAIT;
        let mut completions = Vec::new();
        while self.in_flight.iter().sum::<usize>() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.submit(1, left).is_err() {
                break;
            }
            // (Not handled: nothing is answered or armed again. Their buffers are not given
            // back either; the rings go with the worker.)
            self.reap(&mut completions);
        }
        let in_flight = self.in_flight;
        if in_flight.iter().sum::<usize>() > 0 {
            tracing::warn!(
                ?in_flight,
                "io_uring operations still in flight when stopping; leaking their memory"
            );
            let Ring {
                ring,
                udp,
                http,
                wake_buf,
                ..
            } = self;
            drop(ring);
            std::mem::forget((udp, http, wake_buf));
        }
    }
}

/// The kind of operation a `user_data` names, as an index into [`Op::KINDS`] (0: none).
fn kind(user_data: u64) -> usize {
    Op::decode(user_data).map_or(0, |(op, _)| op as usize)
}
