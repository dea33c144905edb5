// SPDX-License-Identifier: GPL-2.0

//! Reservation objects: the fences that guard a buffer, and the lock that protects them.
//!
//! C header: [`include/linux/dma-resv.h`](srctree/include/linux/dma-resv.h)
//!
//! A [`DmaResv`] holds the fences of the work that reads or writes a buffer, each with a
//! [`Usage`]. Adding fences requires the reservation lock, which only a [`ResvGuard`] (one
//! object) or a [`ResvSet`] (several objects, locked together with a wound/wait acquire
//! context and the standard back-off) proves. Testing and waiting need no lock.
//!
//! # Examples
//!
//! ```
//! use kernel::dma_fence::{FenceContext, FenceTimeline};
//! use kernel::dma_resv::{DmaResv, Usage};
//!
//! struct Engine;
//!
//! impl FenceTimeline for Engine {
//!     const DRIVER_NAME: &'static CStr = c"example";
//!     const TIMELINE_NAME: &'static CStr = c"engine";
//! }
//!
//! let resv = KBox::pin_init(DmaResv::new(), GFP_KERNEL)?;
//! let ctx = FenceContext::<Engine>::new();
//! let job = ctx.new_fence(GFP_KERNEL)?;
//! {
//!     let mut guard = resv.lock();
//!     guard.reserve_fences(1)?;
//!     guard.add_fence(job.fence(), Usage::Write)?;
//! }
//! assert!(!resv.test_signaled(Usage::Read));
//! job.signal();
//! assert!(resv.test_signaled(Usage::Bookkeep));
//! # Ok::<(), Error>(())
//! ```

use crate::{
    alloc::Flags,
    bindings,
    dma_fence::Fence,
    error::to_result,
    prelude::*,
    time::Jiffies,
    types::{
        NotThreadSafe,
        Opaque, //
    },
};
use core::marker::PhantomPinned;

/// How the work behind a fence uses the buffer; each usage includes the ones before it when
/// testing and waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// Kernel-internal work (moves, clears) that everybody must wait for.
    Kernel,
    /// Work that writes the buffer.
    Write,
    /// Work that reads the buffer.
    Read,
    /// Bookkeeping: fences nobody waits for implicitly (preemption, page-table updates).
    Bookkeep,
}

impl Usage {
    fn as_raw(self) -> bindings::dma_resv_usage {
        match self {
            Usage::Kernel => bindings::dma_resv_usage_DMA_RESV_USAGE_KERNEL,
            Usage::Write => bindings::dma_resv_usage_DMA_RESV_USAGE_WRITE,
            Usage::Read => bindings::dma_resv_usage_DMA_RESV_USAGE_READ,
            Usage::Bookkeep => bindings::dma_resv_usage_DMA_RESV_USAGE_BOOKKEEP,
        }
    }
}

/// A reservation object.
///
/// Owned ones come from [`DmaResv::new`]; the ones embedded in C objects (a GEM object, a
/// dma-buf) are borrowed with [`DmaResv::from_raw`].
///
/// # Invariants
///
/// The inner `struct dma_resv` is initialised (`dma_resv_init()`).
#[pin_data(PinnedDrop)]
#[repr(transparent)]
pub struct DmaResv {
    #[pin]
    inner: Opaque<bindings::dma_resv>,
}

// SAFETY: A `struct dma_resv` is shared between tasks by design; its fences are protected by its
// lock and RCU.
unsafe impl Send for DmaResv {}

// SAFETY: As above: every operation on `&DmaResv` either takes the lock or is RCU-safe.
unsafe impl Sync for DmaResv {}

impl DmaResv {
    /// A new, empty reservation object.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            inner <- Opaque::ffi_init(|slot: *mut bindings::dma_resv| {
                // SAFETY: `slot` is the object's memory; `dma_resv_init()` initialises it.
                unsafe { bindings::dma_resv_init(slot) }
            }),
        })
    }

    /// Borrows a reservation object from a pointer to its `struct dma_resv`.
    ///
    /// # Safety
    ///
    /// `ptr` must point to an initialised `struct dma_resv` that stays valid for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::dma_resv) -> &'a Self {
        // SAFETY: `DmaResv` is `repr(transparent)` over the C struct; validity is guaranteed by
        // the caller.
        unsafe { &*ptr.cast() }
    }

    /// The `struct dma_resv` this wraps.
    pub fn as_raw(&self) -> *mut bindings::dma_resv {
        self.inner.get()
    }

    /// Locks the object, waiting uninterruptibly.
    pub fn lock(&self) -> ResvGuard<'_> {
        // SAFETY: The object is valid; without an acquire context the lock cannot fail.
        unsafe { bindings::dma_resv_lock(self.as_raw(), core::ptr::null_mut()) };
        // INVARIANT: locked just above.
        ResvGuard {
            resv: self,
            reserved: 0,
            _not_send: NotThreadSafe,
        }
    }

    /// Locks the object if nobody holds it, without waiting: for a caller that may already hold
    /// other reservation objects, outside their acquire context.
    pub fn try_lock(&self) -> Option<ResvGuard<'_>> {
        // SAFETY: The object is valid; `dma_resv_trylock()` is `ww_mutex_trylock()` on its lock
        // without an acquire context.
        let locked = unsafe {
            bindings::ww_mutex_trylock(&raw mut (*self.as_raw()).lock, core::ptr::null_mut())
        };
        // INVARIANT: locked just above when `locked` is not 0.
        (locked != 0).then(|| ResvGuard {
            resv: self,
            reserved: 0,
            _not_send: NotThreadSafe,
        })
    }

    /// Calls `f` on every fence of the object of `usage` or a usage before it, as long as `f`
    /// succeeds.
    ///
    /// `locked` holds the object locked, so that its fences stay as they are; [`EINVAL`] when
    /// it does not.
    pub fn for_each_fence(
        &self,
        locked: &impl ResvLocked,
        usage: Usage,
        mut f: impl FnMut(&Fence) -> Result,
    ) -> Result {
        if !locked.holds(self) {
            return Err(EINVAL);
        }
        // SAFETY: All-zeroes is a valid `struct dma_resv_iter`; the fields set below are what
        // `dma_resv_iter_begin()` sets.
        let mut cursor: bindings::dma_resv_iter = unsafe { core::mem::zeroed() };
        cursor.obj = self.as_raw();
        cursor.usage = usage.as_raw();
        // SAFETY: The object is valid and locked (`locked`) for the whole walk.
        let mut fence = unsafe { bindings::dma_resv_iter_first(&mut cursor) };
        while !fence.is_null() {
            // SAFETY: The object holds a reference to `fence`, which it keeps while locked.
            f(unsafe { Fence::from_raw(fence) })?;
            // SAFETY: As for `dma_resv_iter_first()`.
            fence = unsafe { bindings::dma_resv_iter_next(&mut cursor) };
        }
        Ok(())
    }

    /// Adds `fence` with `usage`, for a holder of the lock (`locked`) that has no guard to
    /// reserve slots with: makes room for it first, so it fails only with [`ENOMEM`], before
    /// anything changes, or [`EINVAL`] when `locked` does not hold the object. Room made
    /// earlier under the same lock ([`Self::reserve_locked`]) is used without allocating.
    pub fn add_fence_locked(
        &self,
        locked: &impl ResvLocked,
        fence: &Fence,
        usage: Usage,
    ) -> Result {
        self.reserve_locked(locked, 1)?;
        let mut reserved = 1;
        add(self, &mut reserved, fence, usage)
    }

    /// Makes room for `num` more fences, for [`Self::add_fence_locked`] under the same lock.
    pub fn reserve_locked(&self, locked: &impl ResvLocked, num: u32) -> Result {
        if !locked.holds(self) {
            return Err(EINVAL);
        }
        let mut reserved = 0;
        reserve(self, &mut reserved, num)
    }

    /// Whether every fence of `usage` (and the usages before it) has signalled.
    pub fn test_signaled(&self, usage: Usage) -> bool {
        // SAFETY: The object is valid; the test takes RCU, not the lock.
        unsafe { bindings::dma_resv_test_signaled(self.as_raw(), usage.as_raw()) }
    }

    /// Waits, for at most `timeout` jiffies, for every fence of `usage` (and the usages before
    /// it). Returns `Ok(true)` when they have all signalled, `Ok(false)` on timeout, and
    /// [`ERESTARTSYS`] when an interruptible wait is interrupted. Sleeps.
    pub fn wait_timeout(
        &self,
        usage: Usage,
        interruptible: bool,
        timeout: Jiffies,
    ) -> Result<bool> {
        // `MAX_SCHEDULE_TIMEOUT` (`LONG_MAX`) means no time limit; a longer timeout would turn
        // negative in the fence waits.
        // CAST: `LONG_MAX` is positive.
        let timeout = timeout.min(crate::ffi::c_long::MAX as Jiffies);
        // SAFETY: The object is valid; the wait takes references to the fences under RCU.
        let ret = unsafe {
            bindings::dma_resv_wait_timeout(self.as_raw(), usage.as_raw(), interruptible, timeout)
        };
        match ret {
            0 => Ok(false),
            r if r > 0 => Ok(true),
            // CAST: a negative return is an errno.
            e => Err(Error::from_errno(e as i32)),
        }
    }
}

#[pinned_drop]
impl PinnedDrop for DmaResv {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: Only owned objects from `new()` are dropped; nobody can hold the lock or a
        // borrow any more, so the object can be torn down.
        unsafe { bindings::dma_resv_fini(self.as_raw()) };
    }
}

/// Fence slots reserved on one locked object, and the adding of fences to them.
fn reserve(resv: &DmaResv, reserved: &mut u32, num: u32) -> Result {
    // SAFETY: The caller holds the object's lock.
    to_result(unsafe { bindings::dma_resv_reserve_fences(resv.as_raw(), num) })?;
    *reserved = reserved.saturating_add(num);
    Ok(())
}

fn add(resv: &DmaResv, reserved: &mut u32, fence: &Fence, usage: Usage) -> Result {
    if *reserved == 0 {
        return Err(ENOSPC);
    }
    // SAFETY: The caller holds the object's lock and a slot was reserved for this fence; the
    // object takes its own reference to the fence.
    unsafe { bindings::dma_resv_add_fence(resv.as_raw(), fence.as_raw(), usage.as_raw()) };
    *reserved -= 1;
    Ok(())
}

/// Proof that one reservation object is locked; unlocks it when dropped.
///
/// # Invariants
///
/// `resv` is locked by this guard. `reserved` fence slots were reserved under this lock and not
/// used yet.
pub struct ResvGuard<'a> {
    resv: &'a DmaResv,
    reserved: u32,
    _not_send: NotThreadSafe,
}

impl ResvGuard<'_> {
    /// The locked object.
    pub fn resv(&self) -> &DmaResv {
        self.resv
    }

    /// Makes room for `num` more fences. Returns [`ENOMEM`] when that fails.
    pub fn reserve_fences(&mut self, num: u32) -> Result {
        reserve(self.resv, &mut self.reserved, num)
    }

    /// Adds `fence` with `usage`, into a slot reserved with [`Self::reserve_fences`]; returns
    /// [`ENOSPC`] when no slot is left.
    pub fn add_fence(&mut self, fence: &Fence, usage: Usage) -> Result {
        add(self.resv, &mut self.reserved, fence, usage)
    }
}

impl Drop for ResvGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: Locked by this guard (type invariants).
        unsafe { bindings::dma_resv_unlock(self.resv.as_raw()) };
    }
}

/// A wound/wait acquire context of the reservation class.
///
/// # Invariants
///
/// `ctx` was initialised with `ww_acquire_init()` on `reservation_ww_class` and is finalised on
/// drop.
#[pin_data(PinnedDrop)]
struct AcquireCtx {
    #[pin]
    ctx: Opaque<bindings::ww_acquire_ctx>,
    #[pin]
    _pin: PhantomPinned,
}

impl AcquireCtx {
    fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            ctx <- Opaque::ffi_init(|slot: *mut bindings::ww_acquire_ctx| {
                // SAFETY: `slot` is the context's pinned memory, which `ww_acquire_init()`
                // initialises; the class is a static.
                unsafe { bindings::ww_acquire_init(slot, &raw mut bindings::reservation_ww_class) }
            }),
            _pin: PhantomPinned,
        })
    }
}

#[pinned_drop]
impl PinnedDrop for AcquireCtx {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: Initialised by `new()`; every lock taken with it has been dropped before (see
        // `ResvSet`'s field order and `Drop`).
        unsafe { bindings::ww_acquire_fini(self.ctx.get()) };
    }
}

/// Proof that reservation objects are locked by the current task: a [`ResvGuard`] or a
/// [`ResvSet`] (or, in the callbacks of a dma-buf exporter, the core's
/// [`ResvHeld`](crate::dma_buf::ResvHeld)).
///
/// # Safety
///
/// [`ResvLocked::holds`] returns `true` only for an object whose lock the current task holds for as
/// long as the implementer lives: code that maps or unmaps under the lock relies on it.
pub unsafe trait ResvLocked {
    /// Whether `resv` is one of the objects this holds locked.
    fn holds(&self, resv: &DmaResv) -> bool;
}

// SAFETY: A guard holds the lock of `resv` for as long as it lives (type invariants).
unsafe impl ResvLocked for ResvGuard<'_> {
    fn holds(&self, resv: &DmaResv) -> bool {
        self.resv.as_raw() == resv.as_raw()
    }
}

// SAFETY: A set holds the locks of every object of `locked` for as long as it lives (type
// invariants).
unsafe impl ResvLocked for ResvSet<'_> {
    fn holds(&self, resv: &DmaResv) -> bool {
        self.locked.iter().any(|(l, _)| l.as_raw() == resv.as_raw())
    }
}

/// How many objects a [`ResvSet`] records without allocating.
const INLINE: usize = 4;

/// The objects of a [`ResvSet`], in the order they were locked, each with the number of fence
/// slots reserved on it: the first [`INLINE`] in place, the others in a vector, so that locking
/// a few objects allocates nothing for them.
///
/// # Invariants
///
/// The `Some` entries of `first` come before its `None` ones, and `rest` is empty unless
/// `first` is full.
struct Locked<'a> {
    first: [Option<(&'a DmaResv, u32)>; INLINE],
    rest: KVec<(&'a DmaResv, u32)>,
}

impl<'a> Locked<'a> {
    /// Room for `n` objects.
    fn with_capacity(n: usize, flags: Flags) -> Result<Self> {
        Ok(Self {
            first: [None; INLINE],
            rest: KVec::with_capacity(n.saturating_sub(INLINE), flags)?,
        })
    }

    /// Adds an object; allocates only beyond the capacity asked for.
    fn push(&mut self, entry: (&'a DmaResv, u32), flags: Flags) -> Result {
        match self.first.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(entry),
            None => self.rest.push(entry, flags)?,
        }
        Ok(())
    }

    /// Removes the object added last.
    fn pop(&mut self) -> Option<(&'a DmaResv, u32)> {
        self.rest
            .pop()
            .or_else(|| self.first.iter_mut().rev().find_map(Option::take))
    }

    fn iter(&self) -> impl Iterator<Item = &(&'a DmaResv, u32)> {
        Iterator::chain(self.first.iter().flatten(), self.rest.iter())
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut (&'a DmaResv, u32)> {
        Iterator::chain(self.first.iter_mut().flatten(), self.rest.iter_mut())
    }
}

/// Several reservation objects locked together; unlocks them all when dropped.
///
/// [`ResvSet::lock`] takes the locks with a wound/wait acquire context and backs off on
/// contention the standard way (drop every lock, sleep on the contended one, start again), so
/// that tasks locking overlapping sets in different orders never deadlock.
///
/// # Invariants
///
/// Every object in `locked` is locked with `ctx`, once, beside the number of fence slots
/// reserved on it and not used yet.
pub struct ResvSet<'a> {
    locked: Locked<'a>,
    backoffs: u32,
    // Dropped after `locked` is unlocked (in `Drop`).
    ctx: Pin<KBox<AcquireCtx>>,
    _not_send: NotThreadSafe,
}

impl<'a> ResvSet<'a> {
    /// Locks every object of `objs` (duplicates are locked once). An interruptible lock returns
    /// [`EINTR`] when a signal interrupts a wait; nothing stays locked then.
    pub fn lock<I>(objs: I, interruptible: bool, flags: Flags) -> Result<Self>
    where
        I: IntoIterator<Item = &'a DmaResv>,
        I::IntoIter: Clone,
    {
        let objs = objs.into_iter();
        let ctx = KBox::pin_init(AcquireCtx::new(), flags)?;
        let mut set = ResvSet {
            locked: Locked::with_capacity(objs.clone().count(), flags)?,
            backoffs: 0,
            ctx,
            _not_send: NotThreadSafe,
        };
        'retry: loop {
            for obj in objs.clone() {
                let raw = obj.as_raw();
                if set.locked.iter().any(|(l, _)| l.as_raw() == raw) {
                    continue;
                }
                // SAFETY: `obj` is valid and `ctx` is initialised; the lock is recorded in
                // `locked` right after, so it is released on every path.
                let ret = unsafe {
                    if interruptible {
                        bindings::dma_resv_lock_interruptible(raw, set.ctx.ctx.get())
                    } else {
                        bindings::dma_resv_lock(raw, set.ctx.ctx.get())
                    }
                };
                if ret == 0 {
                    set.locked.push((obj, 0), flags)?;
                    continue;
                }
                set.unlock_all();
                if ret != EDEADLK.to_errno() {
                    return Err(Error::from_errno(ret));
                }
                // Contended by an older context: with no lock held, sleep on this one.
                set.backoffs += 1;
                // SAFETY: `ctx` holds no lock now, as `dma_resv_lock_slow()` requires.
                let ret = unsafe {
                    if interruptible {
                        bindings::dma_resv_lock_slow_interruptible(raw, set.ctx.ctx.get())
                    } else {
                        bindings::dma_resv_lock_slow(raw, set.ctx.ctx.get());
                        0
                    }
                };
                to_result(ret)?;
                set.locked.push((obj, 0), flags)?;
                continue 'retry;
            }
            break;
        }
        // SAFETY: `ctx` is initialised; no more locks will be taken with it.
        unsafe { bindings::ww_acquire_done(set.ctx.ctx.get()) };
        // INVARIANT: every object is locked with `ctx`, once; nothing reserved yet.
        Ok(set)
    }

    fn unlock_all(&mut self) {
        while let Some((obj, _)) = self.locked.pop() {
            // SAFETY: Locked with this set's context (type invariants).
            unsafe { bindings::dma_resv_unlock(obj.as_raw()) };
        }
    }

    /// The locked objects, duplicates removed.
    pub fn objects(&self) -> impl Iterator<Item = &'a DmaResv> + '_ {
        self.locked.iter().map(|&(obj, _)| obj)
    }

    /// How many times locking backed off because an older context held an object.
    pub fn backoffs(&self) -> u32 {
        self.backoffs
    }

    /// Makes room for `num` more fences on every object.
    pub fn reserve_fences(&mut self, num: u32) -> Result {
        for (obj, r) in self.locked.iter_mut() {
            reserve(obj, r, num)?;
        }
        Ok(())
    }

    /// Adds `fence` with `usage` to every object, into slots reserved with
    /// [`Self::reserve_fences`]; returns [`ENOSPC`], adding nothing, when an object has no slot.
    pub fn add_fence(&mut self, fence: &Fence, usage: Usage) -> Result {
        if self.locked.iter().any(|&(_, r)| r == 0) {
            return Err(ENOSPC);
        }
        for (obj, r) in self.locked.iter_mut() {
            add(obj, r, fence, usage)?;
        }
        Ok(())
    }

    /// Adds `fence` to every object, with the usage `usage` gives for it, into slots reserved
    /// with [`Self::reserve_fences`]; returns [`ENOSPC`], adding nothing, when an object has no
    /// slot.
    pub fn add_fence_with(&mut self, fence: &Fence, usage: impl Fn(&DmaResv) -> Usage) -> Result {
        if self.locked.iter().any(|&(_, r)| r == 0) {
            return Err(ENOSPC);
        }
        for (obj, r) in self.locked.iter_mut() {
            add(obj, r, fence, usage(obj))?;
        }
        Ok(())
    }
}

impl Drop for ResvSet<'_> {
    fn drop(&mut self) {
        // The locks go before the context (dropped with the fields, after this).
        self.unlock_all();
    }
}

#[cfg(CONFIG_RUST_DMA_RESV_KUNIT_TEST)]
#[macros::kunit_tests(rust_dma_resv)]
mod tests {
    use super::*;
    use crate::{
        dma_fence::{
            FenceContext,
            FenceTimeline, //
        },
        sync::{
            Arc,
            Completion, //
        },
        time::{
            delay::fsleep,
            msecs_to_jiffies,
            Delta, //
        },
        workqueue, //
    };
    use core::sync::atomic::{
        AtomicU32,
        Ordering, //
    };

    struct Timeline;

    impl FenceTimeline for Timeline {
        const DRIVER_NAME: &'static CStr = c"rust-dma-resv-test";
        const TIMELINE_NAME: &'static CStr = c"test";
    }

    #[test]
    fn add_test_and_wait() -> Result {
        let resv = Arc::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let ctx = FenceContext::<Timeline>::new();
        let write = ctx.new_fence(GFP_KERNEL)?;
        let read = ctx.new_fence(GFP_KERNEL)?;
        {
            let mut g = resv.lock();
            g.reserve_fences(2)?;
            g.add_fence(write.fence(), Usage::Write)?;
            g.add_fence(read.fence(), Usage::Read)?;
        }
        assert!(!resv.test_signaled(Usage::Write));
        write.signal();
        // Writers done: a new writer would still wait for the reader.
        assert!(resv.test_signaled(Usage::Write));
        assert!(!resv.test_signaled(Usage::Read));
        assert_eq!(
            resv.wait_timeout(Usage::Read, true, msecs_to_jiffies(10)),
            Ok(false)
        );
        workqueue::system_highpri().try_spawn(GFP_KERNEL, move || read.signal())?;
        assert_eq!(
            resv.wait_timeout(Usage::Read, true, msecs_to_jiffies(10_000)),
            Ok(true)
        );
        assert!(resv.test_signaled(Usage::Bookkeep));
        Ok(())
    }

    #[test]
    fn add_needs_a_reserved_slot() -> Result {
        let resv = KBox::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        let mut g = resv.lock();
        assert_eq!(g.add_fence(job.fence(), Usage::Write), Err(ENOSPC));
        g.reserve_fences(1)?;
        assert_eq!(g.add_fence(job.fence(), Usage::Write), Ok(()));
        assert_eq!(g.add_fence(job.fence(), Usage::Read), Err(ENOSPC));
        Ok(())
    }

    #[test]
    fn lock_several_with_duplicates() -> Result {
        let a = KBox::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let b = KBox::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let c = KBox::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        {
            let mut set = ResvSet::lock([&*a, &*b, &*a, &*c], true, GFP_KERNEL)?;
            assert_eq!(set.objects().count(), 3);
            assert_eq!(set.backoffs(), 0);
            assert_eq!(set.add_fence(job.fence(), Usage::Write), Err(ENOSPC));
            set.reserve_fences(1)?;
            set.add_fence(job.fence(), Usage::Write)?;
        }
        // Unlocked again: a plain lock works.
        drop(b.lock());
        for r in [&a, &b, &c] {
            assert!(!r.test_signaled(Usage::Write));
        }
        job.signal();
        for r in [&a, &b, &c] {
            assert!(r.test_signaled(Usage::Write));
        }
        Ok(())
    }

    #[test]
    fn younger_set_backs_off_and_gets_every_lock() -> Result {
        let r1 = Arc::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let r2 = Arc::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let done = Arc::pin_init(Completion::new(), GFP_KERNEL)?;
        let started = Arc::new(AtomicU32::new(0), GFP_KERNEL)?;
        let backoffs = Arc::new(AtomicU32::new(u32::MAX), GFP_KERNEL)?;
        // The older context holds r2.
        let older = ResvSet::lock([&*r2], false, GFP_KERNEL)?;
        let (w1, w2, wdone) = (r1.clone(), r2.clone(), done.clone());
        let (wstarted, wback) = (started.clone(), backoffs.clone());
        workqueue::system_highpri().try_spawn(GFP_KERNEL, move || {
            wstarted.store(1, Ordering::Relaxed);
            // Younger: takes r1, finds r2 held by the older context, must back off (drop r1),
            // sleep on r2, and then take r1 again.
            if let Ok(set) = ResvSet::lock([&*w1, &*w2], false, GFP_KERNEL) {
                if set.objects().count() == 2 {
                    wback.store(set.backoffs(), Ordering::Relaxed);
                }
            }
            wdone.complete_all();
        })?;
        // Once the worker runs it does not block before sleeping on r2.
        let mut waited = 0;
        while started.load(Ordering::Relaxed) == 0 && waited < 5000 {
            fsleep(Delta::from_millis(1));
            waited += 1;
        }
        fsleep(Delta::from_millis(50));
        drop(older);
        done.wait_for_completion();
        assert_eq!(backoffs.load(Ordering::Relaxed), 1);
        Ok(())
    }

    #[cfg(all(CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS))]
    #[test]
    fn allocation_failures_add_no_fence_and_hold_no_lock() -> Result {
        let a = KBox::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let b = KBox::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let ctx = FenceContext::<Timeline>::new();
        let walk = crate::fault_inject::walk_allocations(
            100,
            || {
                let job = ctx.new_fence(GFP_KERNEL)?;
                let mut set = ResvSet::lock([&*a, &*b], true, GFP_KERNEL)?;
                set.reserve_fences(2)?;
                set.add_fence(job.fence(), Usage::Write)?;
                Ok(job)
            },
            |result, failed| {
                // The walk checked that the set's locks were dropped.
                match result {
                    Err(e) => {
                        assert!(failed && e == ENOMEM);
                        // No fence was added to either object.
                        assert!(a.test_signaled(Usage::Bookkeep));
                        assert!(b.test_signaled(Usage::Bookkeep));
                    }
                    Ok(job) => {
                        assert!(!a.test_signaled(Usage::Write));
                        assert!(!b.test_signaled(Usage::Write));
                        job.signal();
                    }
                }
                Ok(())
            },
        )?;
        // The fence, the acquire set and both objects' fence arrays allocate.
        assert!(walk.failed >= 3);
        Ok(())
    }
}
