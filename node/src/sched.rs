//! What the node asks of the kernel's scheduler: short turns for replication's thread.
//!
//! Linux's fair scheduler (EEVDF, 6.6 and later) runs, of the threads owed CPU time, the one
//! whose turn would end first; since 6.12 a thread may ask for a shorter turn (a *custom
//! slice*). The thread gets no larger share of the CPU for it — its weight, the nice value, is
//! unchanged — but it is picked sooner when it wakes, and it yields the core sooner when others
//! wait. That is replication's thread exactly: it wakes for short bursts of work that the
//! fleet's limits and sticky sessions wait on (a change to send, a peer's message to apply),
//! and its long runs (a snapshot) should not hold a core that requests need. With the default
//! turn, a sticky assignment written while a worker waited for the server often left only
//! after the worker had answered, and a peer applied it later still, because each thread on
//! the core took a whole turn first (docs/benchmarks.md, "Propagation").
//!
//! This is the crate's only `unsafe`: the two system calls, which neither the standard library
//! nor rustix wraps.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

/// The shortest turn the kernel grants; it clamps requests to 0.1–100 ms.
pub(crate) const SHORT_SLICE: Duration = Duration::from_micros(100);

/// The calling thread's scheduling attributes.
#[cfg(target_os = "linux")]
fn current() -> io::Result<libc::sched_attr> {
    let mut attr = libc::sched_attr {
        size: 0,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    };
    let size = std::mem::size_of::<libc::sched_attr>() as libc::c_uint;
    // SAFETY: `attr` is a valid, writable `sched_attr` of `size` bytes for the call's
    // duration; pid 0 is the calling thread; flags must be 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &raw mut attr,
            size,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr)
}

/// Asks for turns of `slice` on the calling thread, keeping its policy and nice value. Returns
/// the turn the kernel reports afterwards, in nanoseconds: `slice` where custom slices exist,
/// 0 on kernels before 6.12, which accept and ignore the request. A thread under a real-time
/// policy (an operator's choice) is left alone and reports 0.
#[cfg(target_os = "linux")]
pub(crate) fn request_slice(slice: Duration) -> io::Result<u64> {
    let mut attr = current()?;
    let policy = attr.sched_policy as libc::c_int;
    if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
        return Ok(0);
    }
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    // Keep only reset-on-fork: the other flags ask to change or keep fields this call sets.
    attr.sched_flags &= libc::SCHED_FLAG_RESET_ON_FORK as u64;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a valid `sched_attr` whose `size` is its own; pid 0 is the calling
    // thread; flags must be 0. The kernel only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &raw const attr,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(current()?.sched_runtime)
}

/// Elsewhere there is nothing to ask.
#[cfg(not(target_os = "linux"))]
pub(crate) fn request_slice(_slice: Duration) -> io::Result<u64> {
    Ok(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_short_slice_keeps_the_threads_policy_and_nice_value() {
        std::thread::spawn(|| {
            let before = current().expect("sched_getattr");
            let got = request_slice(SHORT_SLICE).expect("sched_setattr");
            let after = current().expect("sched_getattr");
            assert_eq!(after.sched_policy, before.sched_policy);
            assert_eq!(after.sched_nice, before.sched_nice);
            // Kernels with custom slices (6.12+) report the default turn, a few hundred
            // microseconds or more, before the request, and the requested one after.
            if before.sched_runtime != 0 {
                assert_eq!(got, 100_000);
                assert_eq!(after.sched_runtime, 100_000);
            } else {
                assert_eq!(got, 0);
            }
        })
        .join()
        .expect("the thread ran the checks");
    }
}
