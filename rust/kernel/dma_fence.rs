// SPDX-License-Identifier: GPL-2.0

//! DMA fences: completion of work done by a device, shared between drivers.
//!
//! C header: [`include/linux/dma-fence.h`](srctree/include/linux/dma-fence.h)
//!
//! A driver allocates a [`FenceContext`] per timeline (an engine, a ring) and creates one
//! [`SignalFence`] per job from it, with sequence numbers in creation order. The
//! [`SignalFence`] is the driver's unique right to signal the fence; everybody else (other
//! drivers, reservation objects, sync files) holds reference-counted [`Fence`] handles, which can
//! be tested, waited on and given callbacks ([`FenceCallback`]).
//!
//! Signalling takes the fence's own spinlock with interrupts disabled and allocates nothing, so
//! it can be done from an interrupt handler. A [`SignalFence`] dropped without being signalled
//! signals its fence with [`ECANCELED`], so that no waiter waits forever.
//!
//! A [`queue::JobQueue`] runs a driver's jobs once their dependencies' fences have signalled,
//! and signals a fence of its own for each job.
//!
//! A [`demand::DemandSource`] arms fences that signal on demand: the first waiter runs the
//! driver's handler, which stops the work the fence guards and signals it (a preemption fence).
//!
//! # Examples
//!
//! ```
//! use kernel::dma_fence::{FenceContext, FenceTimeline};
//!
//! struct Ring;
//!
//! impl FenceTimeline for Ring {
//!     const DRIVER_NAME: &'static CStr = c"example";
//!     const TIMELINE_NAME: &'static CStr = c"ring0";
//! }
//!
//! let ctx = FenceContext::<Ring>::new();
//! let job = ctx.new_fence(GFP_KERNEL)?;
//! let shared = job.shared();
//! assert!(!shared.is_signaled());
//!
//! job.signal_error(EIO);
//! assert!(shared.is_signaled());
//! assert_eq!(shared.status(), Err(EIO));
//! # Ok::<(), Error>(())
//! ```

use crate::{
    alloc::Flags,
    bindings,
    ffi::{
        c_char,
        c_long, //
    },
    fs::{
        file::FileDescriptorReservation,
        File, //
    },
    prelude::*,
    sync::aref::{
        ARef,
        AlwaysRefCounted, //
    },
    time::Jiffies,
    types::Opaque, //
};
pub mod demand;
pub mod queue;

use core::{
    marker::{
        PhantomData,
        PhantomPinned, //
    },
    mem::ManuallyDrop,
    ptr::NonNull,
    sync::atomic::{
        AtomicU64,
        Ordering, //
    },
};

/// A DMA fence, shared and reference counted.
///
/// Everybody but the fence's signaller holds it through [`ARef<Fence>`]: it can be tested,
/// waited on and given callbacks, never signalled.
///
/// # Invariants
///
/// The inner `struct dma_fence` is initialised (`dma_fence_init()`) and its reference count is
/// non-zero for as long as a `&Fence` exists.
#[repr(transparent)]
pub struct Fence(Opaque<bindings::dma_fence>);

// SAFETY: `struct dma_fence` is designed to be shared between tasks and CPUs; every operation on
// it takes its lock or uses atomics.
unsafe impl Send for Fence {}

// SAFETY: As above; `&Fence` only gives access to operations that are safe concurrently.
unsafe impl Sync for Fence {}

// SAFETY: `dma_fence_get()` and `dma_fence_put()` manage the fence's reference count, and the
// fence is freed (after an RCU grace period) when it drops to zero.
unsafe impl AlwaysRefCounted for Fence {
    fn inc_ref(&self) {
        // SAFETY: The fence is valid by the type invariants.
        unsafe { bindings::dma_fence_get(self.as_raw()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller owns a reference to the fence (safety requirements of `dec_ref`).
        unsafe { bindings::dma_fence_put(obj.cast().as_ptr()) }
    }
}

impl Fence {
    /// The kernel's stub fence, signalled from the start: for an operation that completed in
    /// the call, where a fence is expected. Allocates nothing.
    pub fn stub() -> ARef<Self> {
        // SAFETY: `dma_fence_get_stub()` returns a new reference to a valid fence, which the
        // `ARef` takes over; `Fence` is `repr(transparent)` over the C struct.
        unsafe {
            ARef::from_raw(NonNull::new_unchecked(
                bindings::dma_fence_get_stub().cast::<Fence>(),
            ))
        }
    }

    /// Borrows a fence from a pointer to its `struct dma_fence`.
    ///
    /// # Safety
    ///
    /// `ptr` must point to an initialised `struct dma_fence` whose reference count stays non-zero
    /// for the lifetime `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::dma_fence) -> &'a Self {
        // SAFETY: `Fence` is `repr(transparent)` over the C struct; validity is guaranteed by the
        // caller.
        unsafe { &*ptr.cast() }
    }

    /// The `struct dma_fence` this wraps.
    pub fn as_raw(&self) -> *mut bindings::dma_fence {
        self.0.get()
    }

    /// The fence's context (its timeline).
    pub fn context(&self) -> u64 {
        // SAFETY: The fence is valid by the type invariants; `context` never changes after
        // initialisation.
        unsafe { (*self.as_raw()).context }
    }

    /// The fence's sequence number within its context.
    pub fn seqno(&self) -> u64 {
        // SAFETY: As in `context()`.
        unsafe { (*self.as_raw()).seqno }
    }

    /// The fence of the sync_file that file descriptor `fd` of the current task refers to.
    ///
    /// Fails with [`EINVAL`] when `fd` is not a sync_file.
    pub fn from_sync_file(fd: i32) -> Result<ARef<Fence>> {
        // SAFETY: FFI call without safety requirements: the fd is looked up and checked.
        let ptr = unsafe { bindings::sync_file_get_fence(fd) };
        let ptr = NonNull::new(ptr).ok_or(EINVAL)?;
        // SAFETY: `sync_file_get_fence()` returned a new reference to a valid fence, which the
        // `ARef` takes over.
        Ok(unsafe { ARef::from_raw(ptr.cast()) })
    }

    /// Whether the fence is later on its timeline than `other`, a fence of the same context.
    ///
    /// Follows the fence's `dma_fence_ops`, which may compare 32-bit sequence numbers with
    /// wrap-around. Meaningless for fences of different contexts.
    pub fn is_later(&self, other: &Fence) -> bool {
        // SAFETY: Both fences are valid by the type invariants.
        unsafe { bindings::dma_fence_is_later(self.as_raw(), other.as_raw()) }
    }

    /// Whether the fence has signalled.
    pub fn is_signaled(&self) -> bool {
        // SAFETY: The fence is valid by the type invariants.
        unsafe { bindings::dma_fence_is_signaled(self.as_raw()) }
    }

    /// `Ok(false)` while the fence is pending, `Ok(true)` once it has signalled without error,
    /// and the error it signalled with otherwise.
    ///
    /// Takes the fence's lock: not for a [`FenceCallbackHandler`], which gets the error as an
    /// argument.
    pub fn status(&self) -> Result<bool> {
        // SAFETY: The fence is valid by the type invariants.
        match unsafe { bindings::dma_fence_get_status(self.as_raw()) } {
            0 => Ok(false),
            1 => Ok(true),
            e => Err(Error::from_errno(e)),
        }
    }

    /// As [`Fence::status`], but from the fence's signalled flag alone, without its lock and
    /// without asking its ops whether it has signalled meanwhile: for code that runs often, or
    /// that holds a lock the fence's signalling path takes. Allowed in any context.
    pub fn result(&self) -> Result<bool> {
        // SAFETY: The fence is valid by the type invariants.
        match unsafe { bindings::dma_fence_result(self.as_raw()) } {
            1 => Ok(false),
            0 => Ok(true),
            e => Err(Error::from_errno(e)),
        }
    }

    /// Waits for the fence to signal, for at most `timeout` jiffies.
    ///
    /// Returns `Ok(true)` once the fence has signalled (whether with an error or not: see
    /// [`Fence::status`]), `Ok(false)` on timeout, and [`ERESTARTSYS`] when an interruptible
    /// wait is interrupted by a signal. Sleeps: not for atomic context.
    pub fn wait_timeout(&self, interruptible: bool, timeout: Jiffies) -> Result<bool> {
        let timeout = c_long::try_from(timeout).unwrap_or(c_long::MAX);
        // SAFETY: The fence is valid by the type invariants.
        let ret =
            unsafe { bindings::dma_fence_wait_timeout(self.as_raw(), interruptible, timeout) };
        match ret {
            0 => Ok(false),
            r if r > 0 => Ok(true),
            // CAST: a negative return is an errno.
            e => Err(Error::from_errno(e as i32)),
        }
    }

    /// Waits for the fence to signal, without a time limit.
    ///
    /// Returns [`ERESTARTSYS`] when an interruptible wait is interrupted by a signal.
    pub fn wait(&self, interruptible: bool) -> Result {
        // `MAX_SCHEDULE_TIMEOUT` (`LONG_MAX`) means no time limit.
        self.wait_timeout(interruptible, Jiffies::MAX).map(|_| ())
    }
}

/// Names of a fence timeline, as `dma_fence_ops` reports them (sync files, debugfs, traces).
pub trait FenceTimeline: Send + Sync + 'static {
    /// The driver's name.
    const DRIVER_NAME: &'static CStr;
    /// The timeline's name.
    const TIMELINE_NAME: &'static CStr;
}

/// The `dma_fence_ops` of the fences of timeline `T`.
struct Ops<T: FenceTimeline>(PhantomData<T>);

impl<T: FenceTimeline> Ops<T> {
    /// No `release`: `dma_fence_release()` then frees the fence with `kfree_rcu()`, which is
    /// right for a fence allocated with `kmalloc()` with nothing else in the allocation.
    const OPS: bindings::dma_fence_ops = bindings::dma_fence_ops {
        get_driver_name: Some(Self::driver_name),
        get_timeline_name: Some(Self::timeline_name),
        // SAFETY: All-zeroes (`None` for every callback) is a valid `dma_fence_ops`.
        ..unsafe { core::mem::zeroed() }
    };

    extern "C" fn driver_name(_fence: *mut bindings::dma_fence) -> *const c_char {
        T::DRIVER_NAME.as_char_ptr()
    }

    extern "C" fn timeline_name(_fence: *mut bindings::dma_fence) -> *const c_char {
        T::TIMELINE_NAME.as_char_ptr()
    }
}

/// A fence timeline: a fence context handing out sequence numbers in creation order.
///
/// The driver must signal the fences of one context in the order of their sequence numbers, as
/// `dma_fence` requires.
pub struct FenceContext<T: FenceTimeline> {
    id: u64,
    last_seqno: AtomicU64,
    _timeline: PhantomData<T>,
}

impl<T: FenceTimeline> FenceContext<T> {
    /// Allocates a new fence context.
    pub fn new() -> Self {
        Self {
            // SAFETY: FFI call without safety requirements.
            id: unsafe { bindings::dma_fence_context_alloc(1) },
            last_seqno: AtomicU64::new(0),
            _timeline: PhantomData,
        }
    }

    /// The context's identifier, shared by all its fences.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next sequence number of the timeline.
    fn next_seqno(&self) -> u64 {
        self.last_seqno.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Creates the next fence of the timeline, not signalled, with the next sequence number.
    pub fn new_fence(&self, flags: Flags) -> Result<SignalFence> {
        Ok(self.init_fence(FenceMemory::new(flags)?))
    }

    /// Makes `memory` the next fence of the timeline, with the next sequence number.
    ///
    /// Allocates nothing, so that a fence can take its place in the timeline under a lock (the
    /// order in which jobs reach the hardware) with its memory allocated before.
    pub fn init_fence(&self, memory: FenceMemory) -> SignalFence {
        let seqno = self.next_seqno();
        let raw = KBox::into_raw(memory.0).cast::<bindings::dma_fence>();
        // SAFETY: `raw` is a fresh `kmalloc()` allocation of a `struct dma_fence`, which the
        // fence's release frees with `kfree_rcu()` (see `Ops::OPS`); `Ops::<T>::OPS` is a
        // static; a NULL lock selects the fence's inline lock.
        unsafe {
            bindings::dma_fence_init(raw, &Ops::<T>::OPS, core::ptr::null_mut(), self.id, seqno)
        };
        // SAFETY: `raw` is non-null; `dma_fence_init()` set its reference count to one, which the
        // `ARef` takes over.
        let fence = unsafe { ARef::from_raw(NonNull::new_unchecked(raw.cast::<Fence>())) };
        // INVARIANT: the fence is new, nobody else can signal it.
        SignalFence { fence }
    }
}

/// The memory of a fence not yet initialised: see [`FenceContext::init_fence`].
pub struct FenceMemory(KBox<Opaque<bindings::dma_fence>>);

// SAFETY: The memory is not a fence yet: nothing else refers to it.
unsafe impl Send for FenceMemory {}

// SAFETY: As above; `&FenceMemory` allows nothing.
unsafe impl Sync for FenceMemory {}

impl FenceMemory {
    /// Allocates the memory of a fence.
    pub fn new(flags: Flags) -> Result<Self> {
        Ok(Self(KBox::new(Opaque::zeroed(), flags)?))
    }
}

impl<T: FenceTimeline> Default for FenceContext<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The right to signal a fence, owned by the driver that created it.
///
/// Signalling consumes it. Dropping it without signalling signals the fence with [`ECANCELED`].
///
/// # Invariants
///
/// `fence` has not been signalled through this value, and no other [`SignalFence`] exists for it.
pub struct SignalFence {
    fence: ARef<Fence>,
}

impl SignalFence {
    /// The fence.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// A new shared handle to the fence, for other drivers and waiters.
    pub fn shared(&self) -> ARef<Fence> {
        self.fence.clone()
    }

    fn complete(self, error: Option<Error>) {
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the `ARef` is moved out exactly once.
        let fence = unsafe { core::ptr::read(&this.fence) };
        // SAFETY: The fence is valid; by the type invariants it has not been signalled through
        // this (unique) signaller, so setting the error before signalling is allowed. Neither
        // call sleeps or allocates.
        unsafe {
            if let Some(e) = error {
                bindings::dma_fence_set_error(fence.as_raw(), e.to_errno());
            }
            bindings::dma_fence_signal(fence.as_raw());
        }
    }

    /// Signals the fence: its work completed. Allowed in any context, interrupt handlers included.
    pub fn signal(self) {
        self.complete(None)
    }

    /// Signals the fence with an error: its work failed (for example [`EIO`] for a device error,
    /// [`ETIME`] for a job that timed out). Allowed in any context.
    pub fn signal_error(self, error: Error) {
        self.complete(Some(error))
    }
}

impl Drop for SignalFence {
    fn drop(&mut self) {
        // SAFETY: As in `complete()`: not signalled through this signaller yet.
        unsafe {
            bindings::dma_fence_set_error(self.fence.as_raw(), ECANCELED.to_errno());
            bindings::dma_fence_signal(self.fence.as_raw());
        }
    }
}

/// What a [`FenceCallback`] runs when its fence signals.
pub trait FenceCallbackHandler: Send + Sync {
    /// Called once, when `fence` signals, with `error` the error it signalled with.
    ///
    /// Runs with the fence's lock held and interrupts disabled: it must not sleep, and must not
    /// call [`Fence`] methods that take the fence's lock ([`Fence::status`], the waits).
    fn signaled(&self, fence: &Fence, error: Option<Error>);
}

/// A callback on a fence's signalling.
///
/// Pinned, because the fence links to it. Dropping a registered callback unregisters it first;
/// once the drop has returned, the handler does not run.
///
/// # Invariants
///
/// While `fence` is `Some`, `cb` has been added to that fence's callbacks (it may have run
/// since) and `fence` holds a reference that keeps the fence alive.
#[pin_data(PinnedDrop)]
pub struct FenceCallback<T: FenceCallbackHandler> {
    #[pin]
    cb: Opaque<bindings::dma_fence_cb>,
    fence: Option<ARef<Fence>>,
    handler: T,
    #[pin]
    _pin: PhantomPinned,
}

impl<T: FenceCallbackHandler> FenceCallback<T> {
    /// A callback that runs `handler`, not yet registered on any fence.
    pub fn new(handler: T) -> impl PinInit<Self> {
        pin_init!(Self {
            cb: Opaque::zeroed(),
            fence: None,
            handler,
            _pin: PhantomPinned,
        })
    }

    /// The handler.
    pub fn handler(&self) -> &T {
        &self.handler
    }

    /// Registers the callback on `fence`.
    ///
    /// Returns `Ok(true)` when registered, `Ok(false)` when the fence had already signalled (the
    /// handler is not called), and [`EBUSY`] if the callback is already registered.
    pub fn register(self: Pin<&mut Self>, fence: &Fence) -> Result<bool> {
        // SAFETY: Only fields are written below; nothing is moved out of the pinned value.
        let this: *mut Self = unsafe { Pin::get_unchecked_mut(self) };
        // SAFETY: `this` is valid and exclusively ours (from the `Pin<&mut Self>`); the handler
        // can only run once the callback is added below.
        if unsafe { (*this).fence.is_some() } {
            return Err(EBUSY);
        }
        // SAFETY: As above. The reference is stored before the callback is added so that the
        // handler never races with this write.
        unsafe { (*this).fence = Some(fence.into()) };
        // SAFETY: `cb` is pinned inside `*this` and stays registered until it runs or `drop`
        // removes it; `Self::func` matches `dma_fence_func_t`.
        let ret = unsafe {
            bindings::dma_fence_add_callback(fence.as_raw(), (*this).cb.get(), Some(Self::func))
        };
        if ret == 0 {
            // INVARIANT: added, with the reference stored above.
            return Ok(true);
        }
        // SAFETY: Not added, so nothing else can access `*this`.
        unsafe { (*this).fence = None };
        if ret == ENOENT.to_errno() {
            Ok(false)
        } else {
            Err(Error::from_errno(ret))
        }
    }

    /// Unregisters the callback, if registered, so that it can be registered on another fence.
    ///
    /// Once this has returned the handler is not running and does not run, unless the callback
    /// is registered again.
    pub fn unregister(self: Pin<&mut Self>) {
        // SAFETY: Only fields are accessed; nothing is moved out of the pinned value.
        let this = unsafe { self.get_unchecked_mut() };
        if let Some(fence) = this.fence.take() {
            // SAFETY: By the type invariants `cb` was added to `fence`'s callbacks;
            // `dma_fence_remove_callback()` removes it unless it has already run, and serialises
            // with the handler on the fence's lock, so the handler is not running afterwards.
            unsafe { bindings::dma_fence_remove_callback(fence.as_raw(), this.cb.get()) };
        }
    }

    extern "C" fn func(fence: *mut bindings::dma_fence, cb: *mut bindings::dma_fence_cb) {
        // SAFETY: `cb` is the `cb` field of a registered `FenceCallback<T>` (only `register()`
        // adds `Self::func`); `Opaque` is `repr(transparent)`.
        let this =
            unsafe { crate::container_of!(cb.cast::<Opaque<bindings::dma_fence_cb>>(), Self, cb) };
        // SAFETY: `fence` is the signalling fence, alive during the call, whose lock the caller
        // holds: its `error` is stable.
        let error = unsafe { (*fence).error };
        let error = (error < 0).then(|| Error::from_errno(error));
        // SAFETY: The callback is registered, so `*this` is alive (drop removes it first) and its
        // handler is only ever shared; `fence` is alive during the call.
        unsafe { (*this).handler.signaled(Fence::from_raw(fence), error) };
    }
}

#[pinned_drop]
impl<T: FenceCallbackHandler> PinnedDrop for FenceCallback<T> {
    fn drop(self: Pin<&mut Self>) {
        self.unregister();
    }
}

/// A sync_file of a fence, with a file descriptor reserved for it in the current task.
///
/// [`SyncFile::install`] gives it the descriptor at the end of the call that hands it out.
/// Dropped uninstalled, it frees both. [`SyncFile::reserve`] makes one before its fence
/// exists, so that nothing is left to allocate once the fence's work has been queued.
///
/// # Invariants
///
/// `sync_file` is the sync_file whose file is `file`, which nobody else can reach until
/// [`SyncFile::install`].
pub struct SyncFile {
    fd: FileDescriptorReservation,
    file: ARef<File>,
    sync_file: NonNull<bindings::sync_file>,
}

impl SyncFile {
    /// A sync_file of `fence`, for descriptor `fd`, reserved before (so that a task out of
    /// descriptors is refused early).
    fn new(fence: &Fence, fd: FileDescriptorReservation) -> Result<Self> {
        // SAFETY: The fence is valid; the sync_file takes its own reference to it.
        let sync_file = unsafe { bindings::sync_file_create(fence.as_raw()) };
        let sync_file = NonNull::new(sync_file).ok_or(ENOMEM)?;
        // SAFETY: `sync_file` is valid; its `file` holds the only reference to the sync_file,
        // which the `ARef` takes over. `File` is a transparent wrapper of `struct file`, and a
        // sync_file's file has no `fdget_pos` users.
        let file =
            unsafe { ARef::from_raw(NonNull::new_unchecked((*sync_file.as_ptr()).file.cast())) };
        // INVARIANT: the file is new, and only this value holds it.
        Ok(Self {
            fd,
            file,
            sync_file,
        })
    }

    /// A sync_file for descriptor `fd` whose fence is set later, with [`Self::set_fence`];
    /// until then it holds the kernel's signalled stub fence.
    pub fn reserve(fd: FileDescriptorReservation) -> Result<Self> {
        Self::new(&Fence::stub(), fd)
    }

    /// Makes `fence` the fence of the sync_file, in place of the one it was made with.
    pub fn set_fence(&mut self, fence: &Fence) {
        let new = ARef::<Fence>::from(fence);
        // SAFETY: By the type invariants the sync_file is valid and nobody else can reach it,
        // so its `fence` field, a counted reference, can be replaced: the new reference is
        // handed to it, the old one dropped.
        unsafe {
            let slot = &raw mut (*self.sync_file.as_ptr()).fence;
            let old = core::mem::replace(&mut *slot, ARef::into_raw(new).as_ptr().cast());
            bindings::dma_fence_put(old);
        }
    }

    /// The descriptor the sync_file will have.
    pub fn fd(&self) -> u32 {
        self.fd.reserved_fd()
    }

    /// Installs the sync_file at its descriptor.
    pub fn install(self) {
        self.fd.fd_install(self.file);
    }
}

/// A section of a fence-signalling path: code that fences wait for, such as a job's submission
/// to the hardware, its completion handling and timeout recovery.
///
/// Such code must not allocate memory with reclaim or take a lock held by someone who does, nor
/// wait for a fence: [`dma_fence_begin_signalling()`] lets lockdep check it. Sections nest;
/// the section ends when the value is dropped.
///
/// [`dma_fence_begin_signalling()`]: srctree/drivers/dma-buf/dma-fence.c
pub struct SignallingSection {
    #[cfg(CONFIG_LOCKDEP)]
    cookie: bool,
}

impl SignallingSection {
    /// Starts a section.
    pub fn begin() -> Self {
        Self {
            // SAFETY: FFI call without safety requirements.
            #[cfg(CONFIG_LOCKDEP)]
            cookie: unsafe { bindings::dma_fence_begin_signalling() },
        }
    }
}

impl Drop for SignallingSection {
    fn drop(&mut self) {
        // SAFETY: `cookie` is what `dma_fence_begin_signalling()` returned for this section.
        #[cfg(CONFIG_LOCKDEP)]
        unsafe {
            bindings::dma_fence_end_signalling(self.cookie)
        };
    }
}

#[cfg(CONFIG_RUST_DMA_FENCE_KUNIT_TEST)]
#[macros::kunit_tests(rust_dma_fence)]
mod tests {
    use super::*;
    use crate::{
        sync::new_spinlock_irq,
        time::msecs_to_jiffies,
        workqueue, //
    };
    use core::sync::atomic::AtomicU32;

    struct Timeline;

    impl FenceTimeline for Timeline {
        const DRIVER_NAME: &'static CStr = c"rust-dma-fence-test";
        const TIMELINE_NAME: &'static CStr = c"test";
    }

    #[test]
    fn seqnos_in_creation_order() -> Result {
        let ctx = FenceContext::<Timeline>::new();
        let other = FenceContext::<Timeline>::new();
        assert!(ctx.id() != other.id());
        let a = ctx.new_fence(GFP_KERNEL)?;
        let b = ctx.new_fence(GFP_KERNEL)?;
        let c = other.new_fence(GFP_KERNEL)?;
        assert_eq!(a.fence().context(), ctx.id());
        assert_eq!(b.fence().context(), ctx.id());
        assert_eq!(c.fence().context(), other.id());
        assert_eq!(a.fence().seqno(), 1);
        assert_eq!(b.fence().seqno(), 2);
        assert_eq!(c.fence().seqno(), 1);
        a.signal();
        b.signal();
        c.signal();
        Ok(())
    }

    #[test]
    fn signal() -> Result {
        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        let shared = job.shared();
        assert!(!shared.is_signaled());
        assert_eq!(shared.status(), Ok(false));
        job.signal();
        assert!(shared.is_signaled());
        assert_eq!(shared.status(), Ok(true));
        // The shared handle outlives the signaller.
        assert_eq!(shared.wait_timeout(false, 0), Ok(true));
        Ok(())
    }

    #[test]
    fn signal_with_error() -> Result {
        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        let shared = job.shared();
        job.signal_error(EIO);
        assert!(shared.is_signaled());
        assert_eq!(shared.status(), Err(EIO));
        Ok(())
    }

    #[test]
    fn dropped_signaller_cancels() -> Result {
        let ctx = FenceContext::<Timeline>::new();
        let shared = ctx.new_fence(GFP_KERNEL)?.shared();
        assert!(shared.is_signaled());
        assert_eq!(shared.status(), Err(ECANCELED));
        Ok(())
    }

    #[test]
    fn signal_with_interrupts_disabled() -> Result {
        // Signalling takes only the fence's irq-safe lock and allocates nothing: doing it under
        // an irq-disabling spinlock is what an interrupt handler does, and lockdep checks it.
        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        let shared = job.shared();
        let lock = KBox::pin_init(new_spinlock_irq!(Some(job)), GFP_KERNEL)?;
        {
            let mut guard = lock.lock();
            if let Some(job) = guard.take() {
                job.signal_error(EIO);
            }
        }
        assert_eq!(shared.status(), Err(EIO));
        Ok(())
    }

    #[test]
    fn wait_times_out_then_completes() -> Result {
        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        let shared = job.shared();
        assert_eq!(shared.wait_timeout(true, msecs_to_jiffies(10)), Ok(false));
        // Signalled by a worker while this task sleeps in the wait.
        workqueue::system_highpri().try_spawn(GFP_KERNEL, move || job.signal())?;
        assert_eq!(
            shared.wait_timeout(true, msecs_to_jiffies(10_000)),
            Ok(true)
        );
        assert_eq!(shared.status(), Ok(true));
        assert_eq!(shared.wait(false), Ok(()));
        Ok(())
    }

    struct Count(AtomicU32);

    impl FenceCallbackHandler for Count {
        fn signaled(&self, _fence: &Fence, _error: Option<Error>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> Result<Pin<KBox<FenceCallback<Count>>>> {
        KBox::pin_init(FenceCallback::new(Count(AtomicU32::new(0))), GFP_KERNEL)
    }

    fn calls(cb: &FenceCallback<Count>) -> u32 {
        cb.handler().0.load(Ordering::Relaxed)
    }

    #[test]
    fn callback_runs_once_on_signal() -> Result {
        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        let mut cb = counter()?;
        assert_eq!(cb.as_mut().register(job.fence()), Ok(true));
        assert_eq!(cb.as_mut().register(job.fence()), Err(EBUSY));
        assert_eq!(calls(&cb), 0);
        job.signal();
        assert_eq!(calls(&cb), 1);
        Ok(())
    }

    #[test]
    fn callback_on_signalled_fence_is_not_registered() -> Result {
        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        let shared = job.shared();
        job.signal();
        let mut cb = counter()?;
        assert_eq!(cb.as_mut().register(&shared), Ok(false));
        assert_eq!(calls(&cb), 0);
        // Not registered, so it can be registered elsewhere.
        let other = ctx.new_fence(GFP_KERNEL)?;
        assert_eq!(cb.as_mut().register(other.fence()), Ok(true));
        other.signal();
        assert_eq!(calls(&cb), 1);
        Ok(())
    }

    #[test]
    fn dropped_callback_does_not_run() -> Result {
        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        let mut kept = counter()?;
        assert_eq!(kept.as_mut().register(job.fence()), Ok(true));
        {
            let mut dropped = counter()?;
            assert_eq!(dropped.as_mut().register(job.fence()), Ok(true));
        }
        // Signalling runs the remaining callback only; the dropped one's memory is gone.
        job.signal();
        assert_eq!(calls(&kept), 1);
        Ok(())
    }

    #[test]
    fn callback_sees_error() -> Result {
        struct Status(AtomicU32);

        impl FenceCallbackHandler for Status {
            fn signaled(&self, _fence: &Fence, error: Option<Error>) {
                let code = error.map_or(0, |e| e.to_errno().unsigned_abs());
                self.0.store(code, Ordering::Relaxed);
            }
        }

        let ctx = FenceContext::<Timeline>::new();
        let job = ctx.new_fence(GFP_KERNEL)?;
        let mut cb = KBox::pin_init(FenceCallback::new(Status(AtomicU32::new(0))), GFP_KERNEL)?;
        assert_eq!(cb.as_mut().register(job.fence()), Ok(true));
        job.signal_error(ETIME);
        assert_eq!(
            cb.handler().0.load(Ordering::Relaxed),
            ETIME.to_errno().unsigned_abs()
        );
        Ok(())
    }

    #[cfg(all(CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS))]
    #[test]
    fn signalling_never_allocates() -> Result {
        let ctx = FenceContext::<Timeline>::new();
        let walk = crate::fault_inject::walk_allocations(
            10,
            || ctx.new_fence(GFP_KERNEL),
            |result, failed| {
                if let Err(e) = result {
                    assert!(failed && e == ENOMEM);
                }
                Ok(())
            },
        )?;
        assert_eq!((walk.failed, walk.recovered), (1, 0));
        let job = ctx.new_fence(GFP_KERNEL)?;
        let mut cb = counter()?;
        assert_eq!(cb.as_mut().register(job.fence()), Ok(true));
        // With the very next allocation set to fail, signalling and its callback still run.
        let armed = crate::fault_inject::FailNth::arm(1)?;
        job.signal();
        assert!(!armed.fired());
        drop(armed);
        assert_eq!(calls(&cb), 1);
        Ok(())
    }
}
