// SPDX-License-Identifier: GPL-2.0

//! Rate limits: at most a burst of events in each interval, for log lines that userspace or a
//! device can cause at will.
//!
//! C header: [`include/linux/ratelimit.h`](srctree/include/linux/ratelimit.h)
//!
//! A driver keeps one [`RateLimit`] per source of such lines (a device, say), so that a noisy
//! source does not silence the others, and logs only when [`RateLimit::allow`] says so. When an
//! interval ends with lines suppressed, the kernel logs how many.

use crate::{
    bindings,
    prelude::*,
    time::{
        msecs_to_jiffies,
        Msecs, //
    },
    types::Opaque,
};

/// At most `burst` events in each interval (`struct ratelimit_state`).
///
/// # Invariants
///
/// `inner` was initialised by `ratelimit_state_init()` with a positive interval and burst.
#[pin_data]
pub struct RateLimit {
    #[pin]
    inner: Opaque<bindings::ratelimit_state>,
}

// SAFETY: The state is only changed by `___ratelimit()`, under its own raw spinlock or with
// atomics; it may be used from any thread.
unsafe impl Send for RateLimit {}

// SAFETY: As above: every method takes `&self` and `___ratelimit()` serialises itself.
unsafe impl Sync for RateLimit {}

impl RateLimit {
    /// The kernel's default for log lines: at most `DEFAULT_RATELIMIT_BURST` (10) lines every
    /// 5 s (`DEFAULT_RATELIMIT_INTERVAL`).
    pub fn log_lines() -> impl PinInit<Self, Error> {
        Self::new(5000, bindings::DEFAULT_RATELIMIT_BURST)
    }

    /// At most `burst` events every `interval_ms` milliseconds.
    ///
    /// Returns [`EINVAL`] for a zero interval or burst, or one that does not fit the kernel's.
    pub fn new(interval_ms: Msecs, burst: u32) -> impl PinInit<Self, Error> {
        let limits = match (
            i32::try_from(msecs_to_jiffies(interval_ms)),
            i32::try_from(burst),
        ) {
            (Ok(interval), Ok(burst)) if interval > 0 && burst > 0 => Ok((interval, burst)),
            _ => Err(EINVAL),
        };
        try_pin_init!(Self {
            inner <- {
                let (interval, burst) = limits?;
                // SAFETY: `slot` is valid for writes of a `struct ratelimit_state`, which
                // `ratelimit_state_init()` initialises whole.
                // INVARIANT: initialised with a positive interval and burst.
                Opaque::ffi_init(move |slot| unsafe {
                    bindings::ratelimit_state_init(slot, interval, burst)
                })
            },
        }? Error)
    }

    /// Whether one more event fits in the current interval; counts it either way. `what`
    /// names the events in the kernel's line about the ones suppressed.
    pub fn allow(&self, what: &CStr) -> bool {
        // SAFETY: `inner` is initialised (type invariants); `what` is a valid C string, which
        // `___ratelimit()` only reads while it runs.
        unsafe { bindings::___ratelimit(self.inner.get(), what.as_char_ptr()) != 0 }
    }
}
