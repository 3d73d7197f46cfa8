//! Time as the engine sees it. The engine never reads a clock: callers pass a monotonic
//! [`Tick`] and wall-clock milliseconds, so tests drive time explicitly.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic milliseconds on the node's own clock, wrapping at 2^32 (49.7 days). Intervals are
/// compared with wrapping arithmetic, exact below 2^31 ms; the schema caps periods and expiry at
/// 24 days, and the sweeper refreshes every tick stored in a table well within that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Tick(pub u32);

impl Tick {
    /// Milliseconds from `earlier` to `self`; zero if `earlier` is in the future.
    pub fn since(self, earlier: Tick) -> u32 {
        let d = self.0.wrapping_sub(earlier.0);
        if d > i32::MAX as u32 { 0 } else { d }
    }

    /// The tick `ms` milliseconds before this one.
    pub fn minus(self, ms: u32) -> Tick {
        Tick(self.0.wrapping_sub(ms))
    }

    /// The tick `ms` milliseconds after this one.
    pub fn plus(self, ms: u32) -> Tick {
        Tick(self.0.wrapping_add(ms))
    }
}

/// A hybrid logical clock: 48 bits of wall-clock milliseconds and 16 bits of logical counter.
/// Stamps from one node strictly increase, and a node that has seen a stamp issues only larger
/// ones, so a write made after another was observed always wins, whatever the wall clocks say.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

/// A hybrid logical clock value; zero means "never".
pub type Stamp = u64;

const LOGICAL_BITS: u32 = 16;

impl Hlc {
    /// A clock that has seen nothing.
    pub fn new() -> Hlc {
        Hlc::default()
    }

    /// A new stamp for a local write at wall-clock time `wall_ms`.
    pub fn stamp(&self, wall_ms: u64) -> Stamp {
        let physical = wall_ms << LOGICAL_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = physical.max(prev + 1);
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Records a stamp seen from a peer, so later local stamps exceed it.
    pub fn observe(&self, remote: Stamp) {
        self.last.fetch_max(remote, Ordering::Relaxed);
    }

    /// The wall-clock milliseconds of a stamp.
    pub fn wall_ms(stamp: Stamp) -> u64 {
        stamp >> LOGICAL_BITS
    }
}

/// The node's clocks: the one place outside tests that reads time for the engine. Ticks count
/// from the clock's creation on tokio's monotonic clock (so `tokio::time::pause` drives them);
/// wall-clock milliseconds feed the hybrid logical clock.
#[derive(Clone, Copy, Debug)]
pub struct NodeClock {
    base: tokio::time::Instant,
}

impl NodeClock {
    /// A clock whose tick 0 is now.
    pub fn new() -> NodeClock {
        NodeClock {
            base: tokio::time::Instant::now(),
        }
    }

    /// Monotonic milliseconds since the clock was created, wrapping.
    pub fn tick(&self) -> Tick {
        // Truncation is the wrap-around that `Tick` arithmetic expects.
        Tick(self.base.elapsed().as_millis() as u32)
    }

    /// Wall-clock milliseconds since the Unix epoch.
    pub fn wall_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

impl Default for NodeClock {
    fn default() -> Self {
        NodeClock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_arithmetic_wraps() {
        let a = Tick(u32::MAX - 5);
        let b = a.plus(10);
        assert_eq!(b, Tick(4));
        assert_eq!(b.since(a), 10);
        assert_eq!(a.since(b), 0, "a tick in the future is zero time ago");
        assert_eq!(b.minus(10), a);
    }

    #[test]
    fn hlc_is_monotonic_and_follows_observed_stamps() {
        let hlc = Hlc::new();
        let s1 = hlc.stamp(1000);
        let s2 = hlc.stamp(1000);
        assert!(s2 > s1, "same millisecond still increases");
        let s3 = hlc.stamp(999);
        assert!(
            s3 > s2,
            "a wall clock stepping back does not reorder stamps"
        );
        let remote = hlc.stamp(5000) + 7;
        hlc.observe(remote);
        assert!(hlc.stamp(1001) > remote);
        assert_eq!(Hlc::wall_ms(s1), 1000);
    }
}
