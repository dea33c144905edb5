// SPDX-License-Identifier: GPL-2.0

//! Bind queues: VM_BIND calls that wait for fences, as jobs of a queue on the CPU.
//!
//! An asynchronous bind changes the VM's tree, shadow tables and records in the call, as a
//! synchronous one does, so that the calls after it (SUBMIT included) see the new mappings. The
//! entries it changes in VRAM go to a [`WriteLog`] per member, which the bind's job writes once
//! its dependencies have signalled: its in-fences, the jobs that use what it replaces, and the
//! pending binds of other queues in the same 2 MiB regions. The job runs in a fence-signalling
//! section and only writes VRAM; its fence, which the out-fences receive, signals once every
//! member's entries are written. Binds on one queue run in the order of the calls.
//!
//! Until its entries are written, a bind keeps a reference to every buffer it maps or unmaps,
//! and pins the movable ones, so that no eviction moves a buffer whose entries are about to
//! be written or are still in VRAM. The references stay with the jobs submitted meanwhile.

use core::{
    ops::Range,
    sync::atomic::{
        AtomicBool,
        Ordering, //
    },
};

use kernel::{
    dma_fence::{
        queue::{
            Ended,
            JobQueue,
            PreparedJob,
            QueueOps,
            Run,
            Running, //
        },
        Fence,
        FenceContext,
        FenceMemory,
        FenceTimeline,
        SignalFence, //
    },
    dma_resv::ResvSet,
    drm::syncobj::{
        ChainNode,
        SyncObj, //
    },
    new_mutex, new_spinlock,
    prelude::*,
    sync::{
        aref::ARef,
        Arc,
        Mutex,
        MutexGuard,
        SpinLock, //
    },
    time::Delta,
    workqueue::{
        self,
        impl_has_work,
        new_work,
        Work,
        WorkItem, //
    },
};

use crate::{
    driver::{
        IoctlDevice,
        Object, //
    },
    hw::DeviceData,
    mmu::{
        address_space::KeptTables,
        PendingLog, //
    },
};

/// The most binds of a queue that wait for their dependencies.
pub(crate) const MAX_QUEUED_BINDS: usize = kernel::uapi::DRM_CONFLUX_MAX_QUEUED_BINDS as usize;

/// The timeline of bind fences, the ones the out-fences receive.
pub(crate) struct Binds;

impl FenceTimeline for Binds {
    const DRIVER_NAME: &'static CStr = c"conflux";
    const TIMELINE_NAME: &'static CStr = c"binds";
}

/// The timeline of the fences a bind's job signals when it has written its entries, and of the
/// gates that hold a job back until its call committed.
struct BindWrites;

impl FenceTimeline for BindWrites {
    const DRIVER_NAME: &'static CStr = c"conflux";
    const TIMELINE_NAME: &'static CStr = c"bind-writes";
}

/// The log of one member of the VM, written by the bind's job.
pub(crate) struct MemberLog {
    dev: ARef<IoctlDevice>,
    log: Arc<PendingLog>,
    /// The member's tables, which the VM may leave before the job has written them.
    _tables: Arc<KeptTables>,
}

impl MemberLog {
    /// The log of the member on `dev`, taken from its tables, which `tables` keeps when the VM
    /// goes.
    pub(crate) fn new(dev: &IoctlDevice, log: Arc<PendingLog>, tables: Arc<KeptTables>) -> Self {
        Self {
            dev: dev.into(),
            log,
            _tables: tables,
        }
    }
}

/// The buffers a bind keeps and pins, released in work items: unpinning an imported buffer
/// takes its reservation lock, and so may freeing one, which neither the bind's job nor a caller
/// that holds reservation locks can take.
///
/// # Invariants
///
/// Until [`Release::pin`], nothing is pinned, and `local_unpinned` and `unpinned` are set. Once
/// it succeeded, every movable buffer of `buffers` was pinned once, and is unpinned once, by
/// [`Release::unpin_local`]; every imported one was pinned once through its attachment, and is
/// unpinned once, by whichever work item sets `unpinned` first.
#[pin_data]
pub(crate) struct Release {
    buffers: KVec<ARef<Object>>,
    local_unpinned: AtomicBool,
    unpinned: AtomicBool,
    /// Unpins the imported buffers once the entries are written.
    #[pin]
    unpin: Work<Release, 1>,
    /// Unpins them if that did not happen, and drops the buffers, when the bind goes.
    #[pin]
    release: Work<Release, 2>,
}

impl_has_work! {
    impl HasWork<Self, 1> for Release { self.unpin }
    impl HasWork<Self, 2> for Release { self.release }
}

impl WorkItem<1> for Release {
    type Pointer = Arc<Release>;

    fn run(this: Arc<Release>) {
        this.unpin_imports();
    }
}

impl WorkItem<2> for Release {
    type Pointer = Arc<Release>;

    fn run(this: Arc<Release>) {
        this.unpin_local();
        this.unpin_imports();
        // The buffers go with the last reference, here or in the other work item.
        drop(this);
    }
}

impl Release {
    /// Keeps `buffers`, pinning none of them yet.
    fn new(buffers: KVec<ARef<Object>>) -> Result<Arc<Self>> {
        // INVARIANT: nothing is pinned, and both flags say so.
        Arc::pin_init(
            pin_init!(Self {
                buffers,
                local_unpinned: AtomicBool::new(true),
                unpinned: AtomicBool::new(true),
                unpin <- new_work!("Release::unpin"),
                release <- new_work!("Release::release"),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Pins the buffers, once, before the bind is queued: the caller holds their reservation
    /// locks, `locked`, under which eviction checks the pins of movable buffers and attachments
    /// are pinned. On failure, nothing stays pinned.
    fn pin(&self, locked: Option<&ResvSet<'_>>) -> Result {
        let mut pinned = 0;
        let result: Result = self.imports().try_for_each(|imp| {
            imp.pin(locked.ok_or(EINVAL)?)?;
            pinned += 1;
            Ok(())
        });
        if let (Err(_), Some(locked)) = (&result, locked) {
            for imp in self.imports().take(pinned) {
                let _ = imp.unpin(locked);
            }
        }
        result?;
        for bo in self.buffers.iter().filter(|bo| bo.movable()) {
            bo.pins().fetch_add(1, Ordering::Relaxed);
        }
        // INVARIANT: pinned once each; `unpin_local` unpins the movable ones, and the imported
        // ones are unpinned by whichever work item finds `unpinned` clear first.
        self.local_unpinned.store(false, Ordering::Release);
        self.unpinned.store(pinned == 0, Ordering::Release);
        Ok(())
    }

    fn imports(&self) -> impl Iterator<Item = &crate::gem::import::Imported> {
        self.buffers.iter().filter_map(|bo| bo.imported())
    }

    /// Unpins the movable buffers, once. Neither sleeps nor allocates.
    fn unpin_local(&self) {
        if !self.local_unpinned.swap(true, Ordering::AcqRel) {
            for bo in self.buffers.iter().filter(|bo| bo.movable()) {
                bo.pins().fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Unpins the imported buffers, once, each under its reservation lock.
    fn unpin_imports(&self) {
        if !self.unpinned.swap(true, Ordering::AcqRel) {
            for imp in self.imports() {
                let guard = imp.resv().lock();
                // Cannot fail: the lock is the buffer's.
                let _ = imp.unpin(&guard);
            }
        }
    }
}

/// What an asynchronous bind keeps until its entries are in VRAM, and after, for the jobs
/// submitted meanwhile.
///
/// # Invariants
///
/// `release` holds the buffers the bind keeps, pinned by [`BindState::pin`] before the bind's
/// job is queued; their pins go once `applied` is set (the movable ones at once, the imported
/// ones in a work item) or when this goes, whose release work item then drops them. `logs` is
/// written once, before the bind's job may run; `applied` is set once the logs are written to
/// VRAM.
#[pin_data(PinnedDrop)]
pub(crate) struct BindState {
    /// `Some` until this goes, when the work item that releases the buffers takes it: the last
    /// reference must not go with this, which a caller holding reservation locks may drop.
    release: Option<Arc<Release>>,
    /// The members' logs.
    #[pin]
    logs: SpinLock<KVec<MemberLog>>,
    applied: AtomicBool,
}

impl BindState {
    /// The state of a bind that keeps `buffers`; [`BindState::pin`] pins them until its
    /// entries are written.
    pub(crate) fn new(buffers: KVec<ARef<Object>>) -> Result<Arc<Self>> {
        let release = Release::new(buffers)?;
        Arc::pin_init(
            pin_init!(Self {
                release: Some(release),
                logs <- new_spinlock!(KVec::new()),
                applied: AtomicBool::new(false),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Pins the buffers the bind keeps, once, before its job is queued: the caller holds their
    /// reservation locks, `locked`. Pinning an imported buffer can move it (its exporter places
    /// it where every importer that pinned it reaches it).
    pub(crate) fn pin(&self, locked: Option<&ResvSet<'_>>) -> Result {
        match &self.release {
            Some(release) => release.pin(locked),
            None => Err(EINVAL),
        }
    }

    /// Hands over the logs of the members, once the call committed.
    pub(crate) fn set_logs(&self, logs: KVec<MemberLog>) {
        let old = core::mem::replace(&mut *self.logs.lock(), logs);
        // Outside the lock: the empty vector of a new state.
        drop(old);
    }

    /// Writes the logs to VRAM, once (an invalidation may have written some already). Neither
    /// allocates nor sleeps; a member whose device is unbound is skipped, its tables went with
    /// it.
    fn apply(&self) {
        let logs = self.logs.lock();
        if self.applied.load(Ordering::Acquire) {
            return;
        }
        for m in logs.iter() {
            let written = DeviceData::with(&m.dev, |_, data| {
                m.log.apply(Some(&data.vram));
                Ok(())
            });
            if written.is_err() {
                m.log.apply(None);
            }
        }
        // The entries are in VRAM: the buffers may move again, the engine runs their moves
        // after the jobs that may still use the entries replaced.
        if let Some(release) = &self.release {
            release.unpin_local();
            if !release.unpinned.load(Ordering::Acquire) {
                // Another reference, for the work item; not the last one, which this keeps
                // until its own work item takes it.
                let _ = workqueue::system_long().enqueue::<_, 1>(release.clone());
            }
        }
        self.applied.store(true, Ordering::Release);
    }
}

#[pinned_drop]
impl PinnedDrop for BindState {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `release` is not structurally pinned.
        let this = unsafe { self.get_unchecked_mut() };
        // The buffers go in a work item, which unpins what is still pinned.
        if let Some(release) = this.release.take() {
            // Queued once: nothing else queues this item.
            let _ = workqueue::system_long().enqueue::<_, 2>(release);
        }
    }
}

/// A bind of a queue: its state, and the memory of the fence its job signals.
pub(crate) struct BindJob {
    state: Arc<BindState>,
    written: Option<FenceMemory>,
}

impl Drop for BindJob {
    fn drop(&mut self) {
        // A job that did not run (its queue went first) still writes its entries: the tree
        // and the shadow tables show them already.
        self.state.apply();
    }
}

/// The CPU side of a bind queue.
pub(crate) struct BindOps {
    written: FenceContext<BindWrites>,
}

impl QueueOps for BindOps {
    type Job = BindJob;
    type Timeline = Binds;
    const IN_ORDER: bool = true;
    // The call changed the tree already: its entries are written whatever its in-fences say.
    const RUNS_AFTER_FAILED_DEPENDENCY: bool = true;

    fn run(&self, job: &mut BindJob, _idle: bool) -> Run {
        job.state.apply();
        let Some(memory) = job.written.take() else {
            return Run::Failed(EINVAL);
        };
        let fence = self.written.init_fence(memory);
        let shared = fence.shared();
        fence.signal();
        Run::Started(shared)
    }

    fn timed_out(&self, _job: Running<'_>) -> Ended {
        // Not reached: a bind's fence has signalled when its job started.
        Ended::default()
    }

    fn timeout(&self) -> Delta {
        Delta::from_secs(60)
    }
}

/// What a call of UNMAPs on a bind queue needs to complete in the call when the kernel has no
/// memory for its job: a chain node for each timeline point among its out-syncs, and room for
/// its out-syncobjs. Made with the queue, and filled again by each call that can allocate.
///
/// # Invariants
///
/// `outs` has room for [`MAX_SYNCS`] entries; it is empty but in a call that holds the lock of
/// the reserve.
pub(crate) struct UnmapReserve {
    /// Chain nodes, up to [`MAX_SYNCS`].
    pub(crate) nodes: KVec<ChainNode>,
    /// Room for [`MAX_SYNCS`] out-syncobjs and their points; empty between calls.
    pub(crate) outs: KVec<(ARef<SyncObj>, u64)>,
}

/// The most out-syncs of a call.
const MAX_SYNCS: usize = kernel::uapi::DRM_CONFLUX_MAX_SYNCS as usize;

impl UnmapReserve {
    /// A full reserve.
    fn new() -> Result<Self> {
        let mut reserve = Self {
            nodes: KVec::new(),
            outs: KVec::with_capacity(MAX_SYNCS, GFP_KERNEL_ACCOUNT)?,
        };
        reserve.refill()?;
        Ok(reserve)
    }

    /// Fills the chain nodes up to [`MAX_SYNCS`].
    fn refill(&mut self) -> Result {
        let missing = MAX_SYNCS.saturating_sub(self.nodes.len());
        if missing == 0 {
            return Ok(());
        }
        self.nodes.reserve(missing, GFP_KERNEL_ACCOUNT)?;
        while self.nodes.len() < MAX_SYNCS {
            let node = ChainNode::new(GFP_KERNEL_ACCOUNT)?;
            self.nodes.push_within_capacity(node).map_err(|_| ENOMEM)?;
        }
        Ok(())
    }
}

/// A bind queue: binds on it run in the order of the calls.
#[pin_data]
pub(crate) struct BindQueue {
    #[pin]
    queue: JobQueue<BindOps, BindJob, Binds>,
    /// The gates that hold a bind's job back until its call has committed.
    gates: FenceContext<BindWrites>,
    /// The fence of the last bind queued.
    #[pin]
    last: SpinLock<Option<ARef<Fence>>>,
    /// What a call of UNMAPs needs to complete in the call.
    #[pin]
    reserve: Mutex<UnmapReserve>,
}

/// A bind's job, prepared before its call changes anything, and the gate that holds it back
/// until the call committed.
pub(crate) struct QueuedBind<'a> {
    job: PreparedJob<'a, BindOps, BindJob, Binds>,
    gate: SignalFence,
}

impl QueuedBind<'_> {
    /// Makes the bind wait for `fence`.
    pub(crate) fn add_dependency(&mut self, fence: &Fence) -> Result {
        self.job.add_implicit_dependency(fence, GFP_KERNEL_ACCOUNT)
    }
}

/// A bind pushed to its queue, whose job waits for [`Pushed::release`].
pub(crate) struct Pushed {
    pub(crate) fence: ARef<Fence>,
    gate: SignalFence,
}

impl Pushed {
    /// Lets the job run once its dependencies have signalled: the call has committed.
    pub(crate) fn release(self) {
        self.gate.signal();
    }
}

impl BindQueue {
    /// A queue with nothing queued.
    pub(crate) fn new() -> Result<Arc<Self>> {
        let reserve = UnmapReserve::new()?;
        Arc::pin_init(
            try_pin_init!(Self {
                queue <- JobQueue::new(
                    Ok::<_, Error>(BindOps {
                        written: FenceContext::new(),
                    }),
                    1,
                    // Room for the binds that wait, and for those done that the worker has
                    // not retired yet.
                    2 * MAX_QUEUED_BINDS,
                ),
                gates: FenceContext::new(),
                last <- new_spinlock!(None),
                reserve <- new_mutex!(reserve),
            }? Error),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Whether fewer than [`MAX_QUEUED_BINDS`] binds of the queue wait for their dependencies.
    pub(crate) fn has_room(&self) -> bool {
        let (len, started) = self.queue.jobs();
        len - started < MAX_QUEUED_BINDS
    }

    /// The fence of the last bind queued: once it signals, every bind of the queue is done.
    pub(crate) fn last(&self) -> Option<ARef<Fence>> {
        self.last.lock().clone()
    }

    /// The reserve of a call of UNMAPs that completes in the call; holding it keeps other such
    /// calls on the queue out.
    pub(crate) fn reserve(&self) -> MutexGuard<'_, UnmapReserve> {
        self.reserve.lock()
    }

    /// Fills the reserve of calls of UNMAPs again, when memory allows; a call that can allocate
    /// does, before it allocates anything else.
    pub(crate) fn refill_reserve(&self) {
        // Without memory, the reserve stays as it is: the next call fills it.
        let _ = self.reserve.lock().refill();
    }

    /// Whether every bind of the queue has finished.
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.jobs().0 == 0
    }

    /// Prepares the job of a bind that keeps `state`.
    pub(crate) fn prepare(&self, state: Arc<BindState>) -> Result<QueuedBind<'_>> {
        let job = BindJob {
            state,
            written: Some(FenceMemory::new(GFP_KERNEL_ACCOUNT)?),
        };
        let mut job = self.queue.prepare(job, 1, GFP_KERNEL_ACCOUNT)?;
        let gate = self.gates.new_fence(GFP_KERNEL_ACCOUNT)?;
        job.add_dependency(gate.fence(), GFP_KERNEL_ACCOUNT)?;
        Ok(QueuedBind { job, gate })
    }

    /// Queues `bind`, which waits for [`Pushed::release`], and gives its fence; waits while the
    /// queue is full, [`ERESTARTSYS`] when a signal comes first.
    pub(crate) fn push(&self, bind: QueuedBind<'_>) -> Result<Pushed> {
        let fence = self.queue.push(bind.job, true)?;
        let old = self.last.lock().replace(fence.clone());
        // Outside the lock.
        drop(old);
        Ok(Pushed {
            fence,
            gate: bind.gate,
        })
    }
}

/// A bind of a queue whose entries may not be in VRAM yet, as its VM keeps it: later binds in
/// its regions wait for it, and jobs submitted meanwhile keep what it keeps.
pub(crate) struct PendingBind {
    pub(crate) fence: ARef<Fence>,
    /// The 2 MiB regions its operations touch, as ranges of addresses.
    pub(crate) regions: KVec<Range<u64>>,
    pub(crate) state: Arc<BindState>,
}

impl PendingBind {
    /// Whether the bind touches a 2 MiB region of `span`.
    pub(crate) fn overlaps(&self, span: &Range<u64>) -> bool {
        let span = to_regions(span);
        self.regions
            .iter()
            .any(|r| r.start < span.end && span.start < r.end)
    }
}

/// `span`, widened to the 2 MiB regions it touches.
pub(crate) fn to_regions(span: &Range<u64>) -> Range<u64> {
    const REGION: u64 = 1 << 21;
    let start = span.start & !(REGION - 1);
    let end = span.end.saturating_add(REGION - 1) & !(REGION - 1);
    start..end
}
