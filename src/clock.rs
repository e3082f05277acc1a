//! A coarse clock in UNIX seconds, read with one atomic load on the hot path.
//!
//! Real clocks are refreshed by the maintenance thread a few times a second; tests use a
//! stopped clock and move it by hand, so expiry tests are exact and take no time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<ClockInner>,
}

#[derive(Debug)]
struct ClockInner {
    now: AtomicU32,
    stopped: AtomicBool,
}

fn system_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

impl Clock {
    /// A clock that follows the system time (after each [`Clock::tick`]).
    pub fn real() -> Self {
        Self::with(system_now(), false)
    }

    /// A clock that stands at `unix_secs` until moved with [`Clock::advance`] or [`Clock::set`].
    pub fn stopped(unix_secs: u32) -> Self {
        Self::with(unix_secs, true)
    }

    fn with(now: u32, stopped: bool) -> Self {
        Clock {
            inner: Arc::new(ClockInner {
                now: AtomicU32::new(now),
                stopped: AtomicBool::new(stopped),
            }),
        }
    }

    #[inline]
    pub fn now(&self) -> u32 {
        self.inner.now.load(Ordering::Relaxed)
    }

    /// Reads the system time into the clock, unless it is stopped.
    pub fn tick(&self) {
        if !self.inner.stopped.load(Ordering::Relaxed) {
            self.inner.now.store(system_now(), Ordering::Relaxed);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Relaxed)
    }

    pub fn advance(&self, secs: u32) {
        self.inner.now.fetch_add(secs, Ordering::Relaxed);
    }

    pub fn set(&self, unix_secs: u32) {
        self.inner.now.store(unix_secs, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_clock_moves_only_when_told() {
        let clock = Clock::stopped(1000);
        clock.tick();
        assert_eq!(clock.now(), 1000);
        clock.advance(5);
        assert_eq!(clock.now(), 1005);
    }

    #[test]
    fn a_real_clock_follows_the_system_time() {
        let clock = Clock::real();
        clock.set(5);
        clock.tick();
        assert!(clock.now() > 1_700_000_000);
    }
}
