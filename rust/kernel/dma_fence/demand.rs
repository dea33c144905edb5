// SPDX-License-Identifier: GPL-2.0

//! Fences that signal on demand: nothing makes them signal until somebody needs them to.
//!
//! A driver whose work has no end of its own (a long-running queue that userspace feeds)
//! cannot give other parties a fence that signals when the work is done. What it can give is a
//! fence that signals once the work has been *stopped*: a preemption fence, in the reservation
//! objects of the memory the work uses. Whoever needs that memory waits for the fence (or adds
//! a callback to it, as a job that depends on it does); the first such waiter enables the
//! fence's signalling, which queues the source's work item, and [`DemandHandler::requested`]
//! runs in process context: it stops the work and signals the fence ([`DemandSource::signal`]),
//! then typically arms a new fence ([`DemandSource::arm`]) and lets the work go on.
//!
//! A [`DemandSource`] outlives every fence it armed that has not signalled: dropping it
//! signals its pending fence with [`ECANCELED`] and waits for its work item. Its fences keep no
//! reference to it, and once signalled no reference to the module either (they have no
//! `release` callback), so they may stay in other drivers' reservation objects for as long as
//! those like.

use crate::{
    bindings,
    prelude::*,
    sync::{
        aref::ARef,
        new_spinlock_irq,
        SpinLockIrq, //
    },
    types::Opaque,
};

use core::{
    marker::{
        PhantomData,
        PhantomPinned, //
    },
    ptr::NonNull,
};

use super::{
    Fence,
    FenceContext,
    FenceTimeline,
    SignalFence, //
};

/// What a [`DemandSource`] does when one of its fences is needed.
pub trait DemandHandler: Send + Sync + Sized + 'static {
    /// The timeline of the source's fences.
    type Timeline: FenceTimeline;

    /// Runs in the source's work item, in process context, after a waiter enabled the signalling
    /// of the pending fence: stops what the fence guards and signals it. It may sleep and
    /// allocate; the source is alive while it runs.
    fn requested(source: &DemandSource<Self>);
}

/// A fence of a [`DemandSource`]: the `struct dma_fence` first, so that `dma_fence_free()`
/// frees the whole allocation, and the source, which no drop needs to release.
#[repr(C)]
struct DemandFence {
    fence: Opaque<bindings::dma_fence>,
    /// The `work` item of the source that armed the fence.
    work: *mut bindings::work_struct,
}

/// The `dma_fence_ops` of the fences of a source with handler `T`.
struct DemandOps<T: DemandHandler>(PhantomData<T>);

impl<T: DemandHandler> DemandOps<T> {
    /// No `release` and no `wait`: the core frees a fence with `kfree_rcu()` and forgets these
    /// operations once it has signalled.
    const OPS: bindings::dma_fence_ops = bindings::dma_fence_ops {
        get_driver_name: Some(Self::driver_name),
        get_timeline_name: Some(Self::timeline_name),
        enable_signaling: Some(Self::enable_signaling),
        // SAFETY: All-zeroes (`None` for every callback) is a valid `dma_fence_ops`.
        ..unsafe { core::mem::zeroed() }
    };

    extern "C" fn driver_name(_fence: *mut bindings::dma_fence) -> *const crate::ffi::c_char {
        T::Timeline::DRIVER_NAME.as_char_ptr()
    }

    extern "C" fn timeline_name(_fence: *mut bindings::dma_fence) -> *const crate::ffi::c_char {
        T::Timeline::TIMELINE_NAME.as_char_ptr()
    }

    /// Called once, with the fence's lock held, when the first waiter or callback needs the
    /// fence to signal, and only while it has not signalled.
    extern "C" fn enable_signaling(fence: *mut bindings::dma_fence) -> bool {
        // SAFETY: Every fence with these operations is the first field of a `DemandFence`
        // (`DemandSource::arm`).
        let work = unsafe { (*fence.cast::<DemandFence>()).work };
        // SAFETY: The fence has not signalled, so the source that armed it is alive: dropping a
        // source signals its pending fence first, under the fence's lock, which is held here.
        // `queue_work_on()` may be called in any context.
        unsafe {
            bindings::queue_work_on(
                bindings::wq_misc_consts_WORK_CPU_UNBOUND as i32,
                bindings::system_wq,
                work,
            )
        };
        true
    }
}

/// A source of fences that signal on demand, and the handler that makes them signal.
///
/// # Invariants
///
/// `work` is initialised, and runs [`DemandHandler::requested`] on this source. `pending` is
/// the only fence of the source that may be unsignalled, and its `DemandFence::work` points to
/// `work`.
#[pin_data(PinnedDrop)]
pub struct DemandSource<T: DemandHandler> {
    handler: T,
    fences: FenceContext<T::Timeline>,
    #[pin]
    pending: SpinLockIrq<Option<SignalFence>>,
    #[pin]
    work: Opaque<bindings::work_struct>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: The work item is only queued and cancelled, which may be done from any task; the
// rest is `Send` and `Sync` itself.
unsafe impl<T: DemandHandler> Send for DemandSource<T> {}

// SAFETY: As above.
unsafe impl<T: DemandHandler> Sync for DemandSource<T> {}

impl<T: DemandHandler> DemandSource<T> {
    /// A source with `handler` and no fence armed.
    pub fn new(handler: T) -> impl PinInit<Self> {
        pin_init!(Self {
            handler,
            fences: FenceContext::new(),
            pending <- new_spinlock_irq!(None),
            work <- Opaque::ffi_init(|work: *mut bindings::work_struct| {
                // SAFETY: `work` is valid for writes; `run_work` takes the work item of a
                // source with handler `T`.
                unsafe {
                    bindings::init_work_with_key(
                        work,
                        Some(Self::run_work),
                        false,
                        c"DemandSource::work".as_char_ptr(),
                        crate::static_lock_class!().as_ptr(),
                    )
                }
            }),
            _pin: PhantomPinned,
        })
    }

    /// The handler.
    pub fn handler(&self) -> &T {
        &self.handler
    }

    /// The pending fence, if one is armed and has not been signalled.
    pub fn pending(&self) -> Option<ARef<Fence>> {
        self.pending.lock().as_ref().map(SignalFence::shared)
    }

    /// The pending fence; a new one, armed, when there is none. Allocates.
    pub fn arm(&self) -> Result<ARef<Fence>> {
        if let Some(fence) = self.pending() {
            return Ok(fence);
        }
        let memory = KBox::new(
            DemandFence {
                fence: Opaque::zeroed(),
                work: self.work.get(),
            },
            GFP_KERNEL,
        )?;
        let mut pending = self.pending.lock();
        if let Some(fence) = pending.as_ref() {
            return Ok(fence.shared());
        }
        let raw = KBox::into_raw(memory).cast::<bindings::dma_fence>();
        let seqno = self.fences.next_seqno();
        // SAFETY: `raw` is a fresh `kmalloc()` allocation whose first field is a
        // `struct dma_fence`, which the core frees with `kfree_rcu()` (the operations have no
        // `release`); the operations are static; a NULL lock selects the fence's inline lock.
        unsafe {
            bindings::dma_fence_init(
                raw,
                &DemandOps::<T>::OPS,
                core::ptr::null_mut(),
                self.fences.id(),
                seqno,
            )
        };
        // SAFETY: `raw` is non-null; `dma_fence_init()` set its reference count to one, which
        // the `ARef` takes over.
        let fence = unsafe { ARef::from_raw(NonNull::new_unchecked(raw.cast::<Fence>())) };
        // INVARIANT: the fence is new, and points to `work`; it is the pending one.
        let signal = SignalFence { fence };
        let shared = signal.shared();
        *pending = Some(signal);
        Ok(shared)
    }

    /// Signals the pending fence, if there is one: what it guards is stopped.
    pub fn signal(&self) {
        let pending = self.pending.lock().take();
        if let Some(fence) = pending {
            fence.signal();
        }
    }

    /// Waits until [`DemandHandler::requested`] has returned, if it runs.
    pub fn flush(&self) {
        // SAFETY: `work` is initialised, by the type invariants.
        unsafe { bindings::flush_work(self.work.get()) };
    }

    extern "C" fn run_work(work: *mut bindings::work_struct) {
        // SAFETY: By the type invariants, `work` is the `work` field of a live source;
        // `Opaque` is `repr(transparent)`.
        let this = unsafe {
            &*crate::container_of!(work.cast::<Opaque<bindings::work_struct>>(), Self, work)
        };
        T::requested(this);
    }
}

#[pinned_drop]
impl<T: DemandHandler> PinnedDrop for DemandSource<T> {
    fn drop(self: Pin<&mut Self>) {
        // Once the pending fence has signalled (`ECANCELED`), its signalling cannot be enabled
        // any more, so nothing queues the work item again; then the work item is waited for.
        let pending = self.pending.lock().take();
        drop(pending);
        // SAFETY: `work` is initialised, by the type invariants.
        unsafe { bindings::cancel_work_sync(self.work.get()) };
    }
}

#[cfg(CONFIG_RUST_DMA_FENCE_KUNIT_TEST)]
#[macros::kunit_tests(rust_dma_fence_demand)]
mod tests {
    use super::*;
    use crate::{
        sync::Arc,
        time::msecs_to_jiffies, //
    };
    use core::sync::atomic::{
        AtomicU32,
        Ordering, //
    };

    struct Timeline;

    impl FenceTimeline for Timeline {
        const DRIVER_NAME: &'static CStr = c"rust-dma-fence-test";
        const TIMELINE_NAME: &'static CStr = c"demand";
    }

    /// Counts the requests, and signals at each.
    struct Stopper {
        requests: AtomicU32,
    }

    impl DemandHandler for Stopper {
        type Timeline = Timeline;

        fn requested(source: &DemandSource<Self>) {
            source.handler().requests.fetch_add(1, Ordering::Relaxed);
            source.signal();
        }
    }

    fn source() -> Result<Arc<DemandSource<Stopper>>> {
        Arc::pin_init(
            DemandSource::new(Stopper {
                requests: AtomicU32::new(0),
            }),
            GFP_KERNEL,
        )
    }

    fn requests(source: &DemandSource<Stopper>) -> u32 {
        source.handler().requests.load(Ordering::Relaxed)
    }

    #[test]
    fn a_fence_nobody_waits_for_does_not_signal() -> Result {
        let source = source()?;
        let fence = source.arm()?;
        assert!(!fence.is_signaled());
        // Arming again gives the pending fence.
        assert_eq!(source.arm()?.seqno(), fence.seqno());
        assert_eq!(requests(&source), 0);
        source.signal();
        assert!(fence.is_signaled());
        assert_eq!(fence.status(), Ok(true));
        Ok(())
    }

    #[test]
    fn a_wait_requests_the_signal() -> Result {
        let source = source()?;
        let fence = source.arm()?;
        assert_eq!(fence.wait_timeout(false, msecs_to_jiffies(5000)), Ok(true));
        assert_eq!(requests(&source), 1);
        assert!(source.pending().is_none());
        // The next fence is a new one, later on the timeline.
        let next = source.arm()?;
        assert!(next.is_later(&fence));
        assert_eq!(next.wait_timeout(false, msecs_to_jiffies(5000)), Ok(true));
        assert_eq!(requests(&source), 2);
        Ok(())
    }

    #[test]
    fn dropping_the_source_cancels_its_fence() -> Result {
        let source = source()?;
        let fence = source.arm()?;
        drop(source);
        assert!(fence.is_signaled());
        assert_eq!(fence.status(), Err(ECANCELED));
        Ok(())
    }
}
