//! A coarse clock in seconds, read with one atomic load on the hot path. Two readings:
//!
//! - [`Clock::now`], the tracker's own time, for everything that counts *durations*: peer
//!   expiry, cleaning, refresh epochs, per-source budgets. It starts at the UNIX time of the
//!   start and then follows the monotonic clock, so a step of the wall clock (an NTP jump, an
//!   operator's `date -s`) never empties the swarms: a forward jump of more than the peer
//!   lifetime used to expire every peer at the next cleaning pass.
//! - [`Clock::wall`], the system's UNIX time, for what must agree with other machines:
//!   connection ids (several nodes accept each other's) and JWT `exp`/`nbf` (the issuer's
//!   clock). A wall step still changes those, as it must: an id issued before a jump of more
//!   than its lifetime is refused, and the client connects again.
//!
//! Real clocks are refreshed by the maintenance thread a few times a second; tests use a
//! stopped clock and move it by hand, so expiry tests are exact and take no time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<ClockInner>,
}

#[derive(Debug)]
struct ClockInner {
    now: AtomicU32,
    wall: AtomicU32,
    stopped: AtomicBool,
    /// The monotonic clock and the UNIX time at the start: `now` is the one plus the time
    /// elapsed since the other.
    started: Instant,
    started_unix: u32,
}

fn system_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

impl Clock {
    /// A clock that follows the system (after each [`Clock::tick`]).
    pub fn real() -> Self {
        Self::with(system_now(), false)
    }

    /// A clock that stands at `unix_secs` until moved with [`Clock::advance`], [`Clock::set`]
    /// or [`Clock::step_wall`].
    pub fn stopped(unix_secs: u32) -> Self {
        Self::with(unix_secs, true)
    }

    fn with(now: u32, stopped: bool) -> Self {
        Clock {
            inner: Arc::new(ClockInner {
                now: AtomicU32::new(now),
                wall: AtomicU32::new(now),
                stopped: AtomicBool::new(stopped),
                started: Instant::now(),
                started_unix: now,
            }),
        }
    }

    /// The tracker's time: seconds that only ever move forward at the monotonic clock's pace.
    #[inline]
    pub fn now(&self) -> u32 {
        self.inner.now.load(Ordering::Relaxed)
    }

    /// The system's UNIX time, as of the last tick.
    #[inline]
    pub fn wall(&self) -> u32 {
        self.inner.wall.load(Ordering::Relaxed)
    }

    /// Reads the system's clocks into this one, unless it is stopped.
    pub fn tick(&self) {
        let inner = &self.inner;
        if inner.stopped.load(Ordering::Relaxed) {
            return;
        }
        let elapsed = u32::try_from(inner.started.elapsed().as_secs()).unwrap_or(u32::MAX);
        inner.now.store(
            inner.started_unix.saturating_add(elapsed),
            Ordering::Relaxed,
        );
        inner.wall.store(system_now(), Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Relaxed)
    }

    /// Time passes: both readings move.
    pub fn advance(&self, secs: u32) {
        self.inner.now.fetch_add(secs, Ordering::Relaxed);
        self.inner.wall.fetch_add(secs, Ordering::Relaxed);
    }

    /// Both readings to `unix_secs`.
    pub fn set(&self, unix_secs: u32) {
        self.inner.now.store(unix_secs, Ordering::Relaxed);
        self.inner.wall.store(unix_secs, Ordering::Relaxed);
    }

    /// The wall clock steps by `secs` (forward or back) while no time passes: what NTP or an
    /// operator does to a real one.
    pub fn step_wall(&self, secs: i64) {
        let wall = i64::from(self.wall()) + secs;
        let wall = u32::try_from(wall.max(0)).unwrap_or(u32::MAX);
        self.inner.wall.store(wall, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_clock_moves_only_when_told() {
        let clock = Clock::stopped(1000);
        clock.tick();
        assert_eq!((clock.now(), clock.wall()), (1000, 1000));
        clock.advance(5);
        assert_eq!((clock.now(), clock.wall()), (1005, 1005));
        clock.step_wall(-100);
        assert_eq!((clock.now(), clock.wall()), (1005, 905));
    }

    #[test]
    fn a_real_clock_follows_the_system_time_and_the_monotonic_clock() {
        let clock = Clock::real();
        clock.set(5);
        clock.tick();
        assert!(clock.wall() > 1_700_000_000);
        // `now` is the start's UNIX time plus the monotonic time since: a step of the wall
        // clock (here, `set`) does not move it.
        assert!(clock.now() >= clock.inner.started_unix);
        assert!(clock.now() <= clock.inner.started_unix + 1);
    }
}
