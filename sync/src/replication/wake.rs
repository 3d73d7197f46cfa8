//! How a table change wakes the session that sends it: only when the session waits for one.
//!
//! The change feed calls the listener each time a key becomes pending for a session, which
//! under load is once per new key. Waking the session each time cost more than sending the
//! change: a busy session (sending, or with its window full) was polled once per key to find
//! nothing it could do, and the writer paid for a thread wake-up. So a session arms its waker
//! when it is about to look for changes, and the first change after that disarms it and wakes
//! the session; later changes only read the flag.
//!
//! No change is missed. The session arms before it takes changes, and it goes to sleep only
//! after a take that found nothing, which locked every shard of every table on the way. For
//! the shard a writer pushed to, either the writer's critical section came first, and the
//! take found the change, or the take's came first, so the arming happened before the writer
//! locked the shard and the writer sees the flag set. A spurious wake-up (a stale permit)
//! costs one empty turn.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// One session slot's waker.
#[derive(Debug, Default)]
pub(crate) struct FeedWaker {
    armed: AtomicBool,
    notify: Notify,
}

impl FeedWaker {
    /// Asks to be woken by the next change. Call before looking for changes.
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Stops waking this slot (its session ended).
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// A change is pending: wakes the session if it is armed. Costs one load when it is not.
    pub(crate) fn wake(&self) {
        if self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    /// Completes once a change has woken the slot since it was last armed (or at once, if a
    /// wake-up is already stored).
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }
}
