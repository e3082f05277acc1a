//! How the supervisor tells workers to stop: a flag, and a way to wake each worker's loop.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// Wakes one worker out of its wait.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

#[derive(Default)]
pub struct Shutdown {
    requested: AtomicBool,
    wakers: Mutex<Vec<Box<dyn Wake>>>,
}

impl Shutdown {
    pub fn register(&self, waker: Box<dyn Wake>) {
        self.wakers.lock().push(waker);
    }

    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
        self.wakers.lock().iter().for_each(|w| w.wake());
    }

    #[inline]
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}
