// SPDX-License-Identifier: GPL-2.0

//! Allocation-failure injection for tests.
//!
//! C header: [`include/linux/fault-inject.h`](srctree/include/linux/fault-inject.h)
//!
//! [`FailNth`] makes the n-th allocation of the current task fail, as writing n to
//! `/proc/self/fail-nth` does for a user task (see [fault injection]).
//! [`walk_allocations`] walks n from 1 upwards over an operation until the operation runs
//! without reaching its n-th allocation; after each injected failure the test checks that
//! nothing leaked, and the walk that no lock is left held.
//!
//! # Examples
//!
//! ```
//! use kernel::fault_inject::walk_allocations;
//!
//! // One allocation: the first run fails it, the second completes.
//! let walk = walk_allocations(
//!     10,
//!     || Ok(KVec::<u8>::with_capacity(64, GFP_KERNEL)?),
//!     |result, failed| {
//!         assert_eq!(result.is_err(), failed);
//!         Ok(())
//!     },
//! )?;
//! assert_eq!((walk.failed, walk.recovered), (1, 0));
//! # Ok::<(), Error>(())
//! ```
//!
//! [fault injection]: srctree/Documentation/fault-injection/fault-injection.rst

use crate::{
    bindings,
    ffi::{
        c_ulong,
        c_void, //
    },
    prelude::*,
    task::Task,
    types::NotThreadSafe, //
};

/// Returns the data pointer that the debugfs file `dir/name` (both in the debugfs root's tree)
/// was created with: the address of the variable behind a file of `debugfs_create_bool()`,
/// `debugfs_create_u32()`, `debugfs_create_ulong()` and the like.
///
/// Returns `ENOENT` if there is no such file.
pub fn debugfs_file_data(dir: &CStr, name: &CStr) -> Result<*mut c_void> {
    // SAFETY: `dir` is NUL-terminated; a null parent looks in the debugfs root.
    let parent = unsafe { bindings::debugfs_lookup(dir.as_char_ptr(), core::ptr::null_mut()) };
    if parent.is_null() {
        return Err(ENOENT);
    }
    // SAFETY: `name` is NUL-terminated; `parent` is a referenced debugfs dentry.
    let dentry = unsafe { bindings::debugfs_lookup(name.as_char_ptr(), parent) };
    // SAFETY: Drops the reference `debugfs_lookup()` took.
    unsafe { bindings::dput(parent) };
    if dentry.is_null() {
        return Err(ENOENT);
    }
    // SAFETY: `debugfs_lookup()` returned a referenced, positive dentry; the debugfs file
    // helpers keep the address of the variable behind the file in the inode's `i_private`.
    let data = unsafe { (*(*dentry).d_inode).i_private };
    // SAFETY: Drops the reference `debugfs_lookup()` took.
    unsafe { bindings::dput(dentry) };
    Ok(data)
}

/// The settings of one fault injector (`failslab`, `fail_page_alloc`) that [`FailNth`] changes
/// while armed.
///
/// # Invariants
///
/// The pointers point to the injector's static settings behind its debugfs files.
struct Quieted {
    ignore_reclaim: *mut bool,
    saved_ignore_reclaim: bool,
    verbose: *mut c_ulong,
    saved_verbose: c_ulong,
    min_order: Option<(*mut u32, u32)>,
}

impl Quieted {
    /// Makes the injector named `name` count every allocation, of any order, including those
    /// that may reclaim, and fail them without a stack trace. `Ok(None)` if it is not built in.
    fn new(name: &CStr) -> Result<Option<Self>> {
        let ignore_reclaim = match debugfs_file_data(name, c"ignore-gfp-wait") {
            Err(e) if e == ENOENT => return Ok(None),
            r => r?.cast::<bool>(),
        };
        let verbose = debugfs_file_data(name, c"verbose")?.cast::<c_ulong>();
        // Only `fail_page_alloc` has the file.
        let min_order = debugfs_file_data(name, c"min-order")
            .ok()
            .map(|p| p.cast::<u32>());
        // SAFETY: `mm/failslab.c` and `mm/fail_page_alloc.c` create these files over their
        // static `ignore_gfp_reclaim` flag, `min_order` and the `verbose` field of their static
        // fault attributes, which live as long as the kernel. Tests are their only writers.
        let quieted = unsafe {
            let quieted = Self {
                ignore_reclaim,
                saved_ignore_reclaim: *ignore_reclaim,
                verbose,
                saved_verbose: *verbose,
                min_order: min_order.map(|p| (p, *p)),
            };
            *ignore_reclaim = false;
            *verbose = 0;
            if let Some(p) = min_order {
                *p = 0;
            }
            quieted
        };
        Ok(Some(quieted))
    }
}

impl Drop for Quieted {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the pointers point to the injector's static settings.
        unsafe {
            *self.ignore_reclaim = self.saved_ignore_reclaim;
            *self.verbose = self.saved_verbose;
            if let Some((p, saved)) = self.min_order {
                *p = saved;
            }
        }
    }
}

/// Fails the n-th memory allocation of the current task: slab allocations, and page
/// allocations when `CONFIG_FAIL_PAGE_ALLOC` is set.
///
/// While armed, the injectors also count allocations that may enter direct reclaim (they skip
/// them by default, which would leave `GFP_KERNEL` paths untested) and single pages, and do not
/// print a stack trace for the injected failure. Dropping the guard disarms the countdown and
/// restores these settings.
///
/// # Invariants
///
/// The guard stays on the task that armed it, whose `fail_nth` it owns until dropped.
pub struct FailNth {
    _slab: Quieted,
    _page: Option<Quieted>,
    _not_send: NotThreadSafe,
}

impl FailNth {
    /// Arms the countdown so that the `nth` allocation from now on fails.
    ///
    /// Returns `EINVAL` for `nth == 0` and `ENOENT` when failslab's debugfs files are absent.
    pub fn arm(nth: u32) -> Result<Self> {
        if nth == 0 {
            return Err(EINVAL);
        }
        let armed = Self {
            _slab: Quieted::new(c"failslab")?.ok_or(ENOENT)?,
            _page: Quieted::new(c"fail_page_alloc")?,
            _not_send: NotThreadSafe,
        };
        armed.set_countdown(nth);
        Ok(armed)
    }

    fn set_countdown(&self, nth: u32) {
        // SAFETY: FFI call without safety requirements; only the current task consumes its
        // `fail_nth` (`should_fail_ex()` runs in its allocations).
        unsafe { bindings::set_current_fail_nth(nth) };
    }

    /// Whether the countdown reached its allocation, which then failed.
    pub fn fired(&self) -> bool {
        // SAFETY: FFI call without safety requirements.
        unsafe { bindings::current_fail_nth() == 0 }
    }
}

impl Drop for FailNth {
    fn drop(&mut self) {
        // Disarmed before the settings are restored (the fields drop after this).
        self.set_countdown(0);
    }
}

/// What [`walk_allocations`] saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Walk {
    /// Runs in which an allocation failed and the operation returned an error.
    pub failed: u32,
    /// Runs in which an allocation failed and the operation succeeded all the same (the code
    /// that allocated has a fallback).
    pub recovered: u32,
}

/// Runs `op` with its first, second, third... allocation failing until it completes without
/// reaching the allocation meant to fail, and passes each run's result to `check` with whether
/// an allocation failed in it.
///
/// Returns `EBUSY` if a run returned holding more locks than before it, `ELOOP` after `max_runs`
/// runs, and the first error of `check`.
pub fn walk_allocations<T>(
    max_runs: u32,
    mut op: impl FnMut() -> Result<T>,
    mut check: impl FnMut(Result<T>, bool) -> Result,
) -> Result<Walk> {
    let held = locks_held();
    let mut walk = Walk::default();
    for nth in 1..=max_runs {
        let armed = FailNth::arm(nth)?;
        let result = op();
        let fired = armed.fired();
        drop(armed);
        if locks_held() != held {
            return Err(EBUSY);
        }
        if fired {
            match result {
                Ok(_) => walk.recovered += 1,
                Err(_) => walk.failed += 1,
            }
        }
        check(result, fired)?;
        if !fired {
            return Ok(walk);
        }
    }
    Err(ELOOP)
}

/// The number of locks the current task holds, as lockdep counts them (0 without lockdep).
///
/// A test checks it after each injected failure: an error path that returns with a lock held
/// leaves it above the count from before the operation.
pub fn locks_held() -> i32 {
    // SAFETY: `current` is a valid task.
    unsafe { bindings::lockdep_depth(Task::current_raw()) }
}
