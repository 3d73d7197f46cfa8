//! HAProxy's sliding-window rate: events are counted in the current period and the previous
//! one, and the rate is `curr + prev × (P − elapsed_in_curr) / P`. Two counters and a period
//! start per origin, exact at period edges, no history kept.

use crate::clock::Tick;

/// One origin's rate state on the local clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Window {
    /// Start of the current period.
    pub(crate) start: Tick,
    /// Events in the current period.
    pub(crate) curr: u64,
    /// Events in the previous period.
    pub(crate) prev: u64,
}

impl Window {
    /// Moves the window to the period containing `now`, as HAProxy's `update_freq_ctr_period`
    /// does: one period later, `curr` becomes `prev`; two or more, both are zero and the period
    /// restarts at `now`.
    pub(crate) fn rotate(&mut self, now: Tick, period: u32) {
        let elapsed = now.since(self.start);
        if elapsed < period {
            return;
        }
        if elapsed < 2 * period {
            self.prev = self.curr;
            self.start = self.start.plus(period);
        } else {
            self.prev = 0;
            self.start = now;
        }
        self.curr = 0;
    }

    /// Counts `n` events at `now`.
    pub(crate) fn add(&mut self, now: Tick, period: u32, n: u64) {
        self.rotate(now, period);
        self.curr = self.curr.saturating_add(n);
    }

    /// The rate at `now`, in events per period.
    pub(crate) fn read(&self, now: Tick, period: u32) -> u64 {
        let elapsed = u64::from(now.since(self.start));
        let p = u64::from(period);
        let (curr, past, remain) = if elapsed < p {
            (self.curr, self.prev, p - elapsed)
        } else if elapsed < 2 * p {
            // The current period ended unobserved: its count is now the previous period's.
            (0, self.curr, 2 * p - elapsed)
        } else {
            return 0;
        };
        // u128: past may be a byte count near u64::MAX.
        curr.saturating_add((u128::from(past) * u128::from(remain) / u128::from(p)) as u64)
    }

    /// Time elapsed in the current period, after rotating to `now`: what travels on the wire so
    /// the receiver rebuilds the period start on its own clock.
    pub(crate) fn age(&self, now: Tick) -> u32 {
        now.since(self.start)
    }

    /// Whether the window holds nothing at `now`.
    pub(crate) fn is_idle(&self, now: Tick, period: u32) -> bool {
        self.curr == 0 && self.prev == 0 || now.since(self.start) >= 2 * period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u32 = 10_000;

    #[test]
    fn within_first_period_rate_is_the_count() {
        let mut w = Window {
            start: Tick(0),
            ..Window::default()
        };
        for i in 0..150 {
            w.add(Tick(i * 10), P, 1);
        }
        assert_eq!(w.read(Tick(1500), P), 150);
    }

    #[test]
    fn previous_period_is_interpolated() {
        let mut w = Window {
            start: Tick(0),
            ..Window::default()
        };
        w.add(Tick(5_000), P, 100);
        // Exactly at the edge the whole previous period counts.
        assert_eq!(w.read(Tick(10_000), P), 100);
        // A quarter into the next period three quarters of it count.
        assert_eq!(w.read(Tick(12_500), P), 75);
        w.add(Tick(12_500), P, 10);
        assert_eq!(
            w,
            Window {
                start: Tick(10_000),
                curr: 10,
                prev: 100
            }
        );
        assert_eq!(w.read(Tick(12_500), P), 10 + 75);
        // One millisecond before the previous period stops counting.
        assert_eq!(w.read(Tick(19_999), P), 10);
        assert_eq!(
            w.read(Tick(20_000), P),
            10,
            "curr becomes prev, fully weighted"
        );
        assert_eq!(w.read(Tick(25_000), P), 5);
        assert_eq!(w.read(Tick(30_000), P), 0);
    }

    #[test]
    fn two_idle_periods_reset_the_window() {
        let mut w = Window {
            start: Tick(0),
            ..Window::default()
        };
        w.add(Tick(1), P, 50);
        w.add(Tick(25_000), P, 1);
        assert_eq!(
            w,
            Window {
                start: Tick(25_000),
                curr: 1,
                prev: 0
            }
        );
        assert_eq!(w.read(Tick(25_000), P), 1);
    }

    #[test]
    fn one_period_late_rotation_keeps_alignment() {
        let mut w = Window {
            start: Tick(0),
            ..Window::default()
        };
        w.add(Tick(9_999), P, 4);
        w.add(Tick(10_000), P, 2);
        assert_eq!(
            w,
            Window {
                start: Tick(10_000),
                curr: 2,
                prev: 4
            }
        );
        assert_eq!(w.age(Tick(10_003)), 3);
        assert!(!w.is_idle(Tick(10_003), P));
        assert!(w.is_idle(Tick(30_000), P));
    }

    #[test]
    fn huge_byte_counts_do_not_overflow() {
        let w = Window {
            start: Tick(0),
            curr: 1,
            prev: u64::MAX,
        };
        assert_eq!(w.read(Tick(0), P), u64::MAX);
        assert!(w.read(Tick(P / 2), P) < u64::MAX);
    }
}
