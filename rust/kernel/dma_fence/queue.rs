// SPDX-License-Identifier: GPL-2.0

//! A job queue: jobs wait for the fences they depend on, run in submission order, and each
//! signals a fence of its own when the hardware is done with it.
//!
//! A driver implements [`QueueOps`] for its hardware ring and owns a pinned [`JobQueue`]. A
//! submission [`prepare`](JobQueue::prepare)s a job, which allocates everything the job will
//! need, adds the fences it depends on ([`PreparedJob::add_dependency`], deduplicated per fence
//! context, keeping the latest), and [`push`](JobQueue::push)es it, which gives the job's
//! *finished* fence, the one userspace and other drivers see. The submission never waits for a
//! dependency.
//!
//! A job starts once its dependencies have signalled and the ring has room for it (its
//! *credits*): [`push`](JobQueue::push) starts it right away when nothing holds it back, and the
//! queue's worker otherwise, when a dependency signals or a job ends. A caller that holds locks
//! which starting a job need not hold [`enqueue`](JobQueue::enqueue)s it instead, and
//! [`start`](JobQueue::start)s it once it has released them. Starting calls
//! [`QueueOps::run`], which writes the job to the hardware and returns the job's hardware fence.
//! When that signals, the finished fence signals with the same result and the credits go back;
//! the worker later drops the job, and with it everything the job kept alive. Finished fences
//! signal in submission order. A job whose dependency failed does not run: its finished fence
//! signals the dependency's error (unless [`QueueOps::RUNS_AFTER_FAILED_DEPENDENCY`]: it runs
//! once every dependency has signalled, and its finished fence signals the error after).
//!
//! A driver whose completion handler calls [`JobQueue::signal_done`] once it has signalled
//! hardware fences ([`QueueOps::SIGNALS_DONE`]) has the finished fences signalled right there,
//! in the handler; the worker then retires jobs a few at a time, shortly after. For other
//! drivers a callback on each hardware fence wakes the worker, which signals. A driver whose
//! hardware completes jobs in order can do without hardware fences: it numbers the jobs it
//! starts ([`Run::Numbered`]) and tells the queue which have ended ([`JobQueue::ended`]), which
//! spares a fence per job.
//!
//! A watchdog fires when the oldest running job has been running for the queue's timeout,
//! whether or not anybody waits for it, and calls [`QueueOps::timed_out`]: the driver stops the
//! hardware and signals the job's hardware fence with an error.
//!
//! Fence callbacks only wake the worker, so that no fence's lock is taken inside another's.
//! Starting jobs, [`JobQueue::signal_done`], the worker and the watchdog run as
//! fence-signalling sections ([`SignallingSection`]), so lockdep reports an allocation or a wait
//! on their path. Dropping the queue cancels the jobs that have not finished: their finished
//! fences signal [`ECANCELED`]. The driver stops its hardware before it drops the queue.
//!
//! This is a dependency queue, not a scheduler: one queue per hardware ring, no entities and no
//! priorities.

use crate::{
    alloc::Flags,
    bindings,
    dma_fence::{
        Fence,
        FenceCallback,
        FenceCallbackHandler,
        FenceContext,
        FenceMemory,
        FenceTimeline,
        SignalFence,
        SignallingSection, //
    },
    new_spinlock_irq,
    prelude::*,
    sync::{
        aref::ARef,
        SpinLockIrq,
        SpinLockIrqGuard, //
    },
    time::{
        msecs_to_jiffies,
        Delta,
        Instant,
        Monotonic, //
    },
    types::Opaque, //
};
use core::ops::RangeInclusive;

/// How long the worker waits before it retires jobs whose finished fences signalled from the
/// driver's completion handler, so that it retires several at a time.
const RETIRE_DELAY_MS: u32 = 2;

/// How many jobs the worker takes off the queue at a time.
const RETIRE_BATCH: usize = 16;

/// What [`QueueOps::run`] did with a job.
pub enum Run {
    /// The job is on the hardware; the fence signals when the hardware is done with it.
    Started(ARef<Fence>),
    /// The job is on the hardware as number `n`, greater than the number of every job started
    /// before it: the driver reports its end with [`JobQueue::ended`]. Only for drivers with
    /// [`QueueOps::SIGNALS_DONE`].
    Numbered(u64),
    /// The hardware cannot take the job before a running job finishes (another address space,
    /// a full table): the queue retries then. Only allowed while a job runs.
    Later,
    /// The job cannot run (for example the device is wedged): its finished fence signals the
    /// error, in order.
    Failed(Error),
}

/// A job on the hardware, as [`QueueOps::run`] started it.
pub enum Running<'a> {
    /// [`Run::Started`]: its hardware fence.
    Fence(&'a Fence),
    /// [`Run::Numbered`]: its number.
    Numbered(u64),
}

/// How the jobs of a driver that numbers them ([`Run::Numbered`]) ended.
#[derive(Clone, Default)]
pub struct Ended {
    /// Every job up to this number has ended: successfully, unless `failed` names it.
    pub through: u64,
    /// The jobs whose numbers lie in the range failed with the error. The hardware must be done
    /// with them.
    pub failed: Option<(RangeInclusive<u64>, Error)>,
}

/// A driver's hardware ring, fed by a [`JobQueue`].
pub trait QueueOps: Send + Sync {
    /// A job: its work and everything it keeps alive until its finished fence has signalled.
    type Job: Send;
    /// The names of the finished fences.
    type Timeline: FenceTimeline;

    /// Whether the hardware completes the jobs it started in the order they started. Then a
    /// job does not wait for the queue's own earlier jobs: they end before it does.
    const IN_ORDER: bool;

    /// Whether the driver calls [`JobQueue::signal_done`] each time it has signalled hardware
    /// fences, or [`JobQueue::ended`] each time numbered jobs ([`Run::Numbered`]) ended: in its
    /// completion handler, and after a recovery that [`QueueOps::timed_out`] did not do. The
    /// queue then puts no callback on hardware fences; finished fences signal right in the
    /// driver's handler, and the worker retires jobs a few at a time.
    const SIGNALS_DONE: bool = false;

    /// Whether a job whose dependency failed still runs, once every dependency has signalled,
    /// and then signals its finished fence with the first dependency's error. For jobs that must
    /// happen whatever came before them, such as page-table updates that the driver's own state
    /// already shows; other jobs do not run, and their finished fences signal the error at once.
    const RUNS_AFTER_FAILED_DEPENDENCY: bool = false;

    /// Writes `job` to the hardware. `idle` tells whether no job of the queue is running.
    ///
    /// Called from [`JobQueue::push`] or the queue's worker, one job at a time, in submission
    /// order, in a fence-signalling section: it must not allocate memory or wait for a fence.
    fn run(&self, job: &mut Self::Job, idle: bool) -> Run;

    /// The oldest running job, `job`, has run for [`QueueOps::timeout`].
    ///
    /// Called from the watchdog in a fence-signalling section. The driver stops the hardware
    /// and signals the job's hardware fence with an error, or lets the job go on for another
    /// timeout. A driver that numbers its jobs returns how they ended instead, which the queue
    /// applies as [`JobQueue::ended`] does; others return [`Ended::default()`].
    fn timed_out(&self, job: Running<'_>) -> Ended;

    /// The queue has applied what [`QueueOps::timed_out`] returned.
    ///
    /// A driver that numbers its jobs and restarts its hardware after a recovery lets the
    /// hardware go on here, not in [`QueueOps::timed_out`]: a later job that completed, and was
    /// reported ended, before the queue learnt of the failure would signal the failed job's
    /// finished fence with success. Called from the watchdog, outside the fence-signalling
    /// section. Does nothing unless the driver overrides it.
    fn restart(&self) {}

    /// How long the oldest running job may run.
    fn timeout(&self) -> Delta;

    /// `job` has finished with `result`, which its finished fence has signalled: the queue is
    /// done with it. Called from the worker, outside the fence-signalling section.
    ///
    /// Dropping the job releases what it kept alive, which is what this does unless the
    /// driver overrides it (for instance to keep the memory of a job that a device which can no
    /// longer be stopped may still use).
    fn finished(&self, job: Self::Job, result: Result) {
        let _ = result;
        drop(job);
    }
}

/// Wakes the queue's worker when a fence signals.
///
/// # Invariants
///
/// `work` is the `run` work item of a [`JobQueue`] that outlives every callback that holds
/// this handler: the queue drops its jobs, and with them their callbacks, before it is freed.
struct Wake {
    work: *mut bindings::work_struct,
}

// SAFETY: `work` is only passed to `queue_work_on()`, which may be called from any context.
unsafe impl Send for Wake {}

// SAFETY: As above.
unsafe impl Sync for Wake {}

impl FenceCallbackHandler for Wake {
    fn signaled(&self, _fence: &Fence, _error: Option<Error>) {
        // SAFETY: By the type invariants, `work` is an initialised work item that outlives the
        // callback.
        unsafe { queue_run(self.work) };
    }
}

/// Queues the worker of a [`JobQueue`].
///
/// # Safety
///
/// `work` is the initialised `run` work item of a live [`JobQueue`].
unsafe fn queue_run(work: *mut bindings::work_struct) {
    // SAFETY: `work` is initialised and alive (safety requirements); `system_highpri_wq` is
    // always available.
    unsafe {
        bindings::queue_work_on(
            bindings::wq_misc_consts_WORK_CPU_UNBOUND as i32,
            bindings::system_highpri_wq,
            work,
        )
    };
}

/// A job in the queue, with everything the queue needs for it.
#[pin_data]
struct Node<J> {
    /// Taken when the job has finished.
    job: Option<J>,
    credits: u32,
    /// The dependencies not yet seen signalled; the worker waits for the last first.
    deps: KVec<ARef<Fence>>,
    /// The finished fence's memory until the job is pushed.
    memory: Option<FenceMemory>,
    finished: Option<SignalFence>,
    /// The hardware fence, once started with [`Run::Started`].
    hw: Option<ARef<Fence>>,
    /// The job's number, once started with [`Run::Numbered`]; 0 otherwise.
    number: u64,
    /// The error the driver reported for a numbered job ([`JobQueue::ended`]).
    hw_error: Option<Error>,
    /// Why the job ends without running: a failed dependency, or [`Run::Failed`].
    error: Option<Error>,
    /// The first failed dependency of a job that runs all the same
    /// ([`QueueOps::RUNS_AFTER_FAILED_DEPENDENCY`]).
    dep_error: Option<Error>,
    /// Registered on the dependency waited for, then on the hardware fence (unless
    /// [`QueueOps::SIGNALS_DONE`]).
    #[pin]
    wake: FenceCallback<Wake>,
}

impl<J> Node<J> {
    /// Whether the job has started and the hardware is done with it, when every numbered job up
    /// to `through` has ended.
    fn done(&self, through: u64) -> bool {
        match &self.hw {
            Some(hw) => hw.is_signaled(),
            None => self.number <= through || self.hw_error.is_some(),
        }
    }

    /// The error the job ended with: why it did not run, the error the driver reported, or its
    /// hardware fence's error.
    fn failure(&self) -> Option<Error> {
        self.error
            .or(self.hw_error)
            .or_else(|| self.hw.as_ref().and_then(|hw| hw.result().err()))
            .or(self.dep_error)
    }
}

/// A job ready to be pushed: its memory is allocated and its dependencies known.
pub struct PreparedJob<'a, T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
    queue: &'a JobQueue<T, J, L>,
    node: Pin<KBox<Node<J>>>,
}

impl<T, J, L> PreparedJob<'_, T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
    /// Makes the job wait for `fence`, and fail with its error if it fails.
    ///
    /// Fences signalled without an error are not kept; of the fences of one context only the
    /// latest is.
    pub fn add_dependency(&mut self, fence: &Fence, flags: Flags) -> Result {
        // Lockless: a fence whose flag is not set yet is kept, and looked at again when the job
        // may start.
        if matches!(fence.result(), Ok(true)) {
            return Ok(());
        }
        // SAFETY: `deps` is not structurally pinned.
        let node = unsafe { self.node.as_mut().get_unchecked_mut() };
        match node
            .deps
            .iter_mut()
            .find(|d| d.context() == fence.context())
        {
            Some(kept) => {
                if fence.is_later(kept) {
                    *kept = fence.into();
                }
                Ok(())
            }
            None => Ok(node.deps.push(fence.into(), flags)?),
        }
    }

    /// Makes the job run after the work of `fence`, whose result does not concern it (implicit
    /// synchronisation through a buffer).
    ///
    /// As [`Self::add_dependency`], but with [`QueueOps::IN_ORDER`] the queue's own fences are
    /// not kept: the hardware ends those jobs before this one.
    pub fn add_implicit_dependency(&mut self, fence: &Fence, flags: Flags) -> Result {
        if T::IN_ORDER && fence.context() == self.queue.fences.id() {
            return Ok(());
        }
        self.add_dependency(fence, flags)
    }

    /// The number of fences the job waits for.
    pub fn dependencies(&self) -> usize {
        self.node.deps.len()
    }

    /// The job, to complete it once every fallible step of the submission is done.
    pub fn job_mut(&mut self) -> Option<&mut J> {
        // SAFETY: `job` is not structurally pinned.
        let node = unsafe { self.node.as_mut().get_unchecked_mut() };
        node.job.as_mut()
    }
}

/// The jobs of a queue, oldest first: a ring of `slots.len()` entries.
///
/// # Invariants
///
/// The `len` entries from `first` on (modulo the ring's size) are the queue's jobs in
/// submission order; the first `running` of them have started, and the finished fences of the
/// first `signalled` of those have signalled (finished fences signal in order). Each is `Some`,
/// but the one at `running` while `starting`, which the starting task holds. The others are
/// `None`.
struct State<J> {
    slots: KVec<Option<Pin<KBox<Node<J>>>>>,
    first: usize,
    len: usize,
    running: usize,
    signalled: usize,
    starting: bool,
    /// Another task wanted to start jobs, or jobs ended, while one was at it: that one looks
    /// again before it stops.
    rekick: bool,
    /// Credits not used by a job the hardware works on.
    credits: u32,
    /// Every numbered job up to this number has ended ([`JobQueue::ended`]).
    through: u64,
    /// A failure [`JobQueue::ended`] reported while a job was starting, for that job.
    stray: Option<(RangeInclusive<u64>, Error)>,
    /// When the oldest running job whose finished fence has not signalled became the oldest.
    front_since: Instant<Monotonic>,
    /// New jobs are refused.
    stopped: bool,
    /// The queue is being dropped: the worker and the watchdog do nothing.
    dead: bool,
    /// Slots that [`Reservation`]s hold: `len + reserved <= slots.len()`.
    reserved: usize,
}

impl<J> State<J> {
    /// The slot of the `i`-th job, for `i` up to the ring's size.
    fn index(&self, i: usize) -> usize {
        let j = self.first + i;
        j.checked_sub(self.slots.len()).unwrap_or(j)
    }

    fn get(&self, i: usize) -> Option<&Pin<KBox<Node<J>>>> {
        if i >= self.len {
            return None;
        }
        self.slots.get(self.index(i)).and_then(Option::as_ref)
    }

    fn slot(&mut self, i: usize) -> Option<&mut Option<Pin<KBox<Node<J>>>>> {
        let index = self.index(i);
        self.slots.get_mut(index)
    }

    /// Removes the oldest job.
    fn pop(&mut self) -> Option<Pin<KBox<Node<J>>>> {
        if self.len == 0 {
            return None;
        }
        let node = self.slot(0).and_then(Option::take);
        self.first = self.index(1);
        self.len -= 1;
        self.running = self.running.saturating_sub(1);
        self.signalled = self.signalled.saturating_sub(1);
        node
    }

    /// Moves the jobs to `bigger`, which has more room, all of it `None`.
    fn grow(&mut self, mut bigger: KVec<Option<Pin<KBox<Node<J>>>>>) {
        for i in 0..self.len {
            let node = self.slot(i).and_then(Option::take);
            if let Some(slot) = bigger.get_mut(i) {
                *slot = node;
            }
        }
        self.slots = bigger;
        self.first = 0;
    }
}

/// A queue of jobs for one hardware ring. See the [module documentation](self).
///
/// # Invariants
///
/// `run`, `later` and `watchdog` are initialised work items whose functions are
/// [`JobQueue::run_work`], [`JobQueue::later_work`] and [`JobQueue::watchdog_work`] of this
/// queue. They are not queued or running once [`PinnedDrop::drop`] has returned.
#[pin_data(PinnedDrop)]
pub struct JobQueue<T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
    #[pin]
    ops: T,
    fences: FenceContext<L>,
    capacity: u32,
    max_jobs: usize,
    #[pin]
    state: SpinLockIrq<State<J>>,
    #[pin]
    run: Opaque<bindings::work_struct>,
    /// The worker, a little later: it retires the jobs whose fences signalled meanwhile in one
    /// go.
    #[pin]
    later: Opaque<bindings::delayed_work>,
    #[pin]
    watchdog: Opaque<bindings::delayed_work>,
}

// SAFETY: The work items are only queued, cancelled and run through the queue, which synchronises
// on `state`; the rest is `Send` when `T` is.
unsafe impl<T, J, L> Send for JobQueue<T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
}

// SAFETY: As above; `&JobQueue` allows only operations that lock `state`.
unsafe impl<T, J, L> Sync for JobQueue<T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
}

/// Room in a [`JobQueue`] for jobs queued without allocating, from [`JobQueue::reserve`].
///
/// # Invariants
///
/// `n` of the queue's `State::reserved` slots are this reservation's.
pub struct Reservation<'a, T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
    queue: &'a JobQueue<T, J, L>,
    n: usize,
}

impl<T, J, L> Reservation<'_, T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
    /// How many jobs the reservation still has room for.
    pub fn room(&self) -> usize {
        self.n
    }
}

impl<T, J, L> Drop for Reservation<'_, T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
    fn drop(&mut self) {
        // By the type invariants, the queue holds `n` slots for this reservation.
        let mut state = self.queue.state.lock();
        state.reserved = state.reserved.saturating_sub(self.n);
    }
}

/// A ring of `n` empty slots.
fn empty_slots<N>(n: usize, flags: Flags) -> Result<KVec<Option<N>>> {
    let mut slots = KVec::with_capacity(n, flags)?;
    for _ in 0..n {
        slots.push(None, flags)?;
    }
    Ok(slots)
}

/// Initialises the delayed work item at `dwork`, which runs `f`, and whose timer runs in
/// irq-safe context as the timer of every delayed work item must.
///
/// # Safety
///
/// `dwork` is valid for writes; `f` may run as the function of this work item.
unsafe fn init_delayed_work(
    dwork: *mut bindings::delayed_work,
    f: unsafe extern "C" fn(*mut bindings::work_struct),
    name: &'static CStr,
    work_key: Pin<&'static crate::sync::LockClassKey>,
    timer_key: Pin<&'static crate::sync::LockClassKey>,
) {
    // SAFETY: `dwork` is valid for writes (safety requirements); the names and keys are static;
    // `delayed_work_timer_fn` is the timer function of delayed work items.
    unsafe {
        bindings::init_work_with_key(
            &raw mut (*dwork).work,
            Some(f),
            false,
            name.as_char_ptr(),
            work_key.as_ptr(),
        );
        bindings::timer_init_key(
            &raw mut (*dwork).timer,
            Some(bindings::delayed_work_timer_fn),
            bindings::TIMER_IRQSAFE,
            name.as_char_ptr(),
            timer_key.as_ptr(),
        );
    }
}

impl<T, J, L> JobQueue<T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
    /// A queue for a ring of `capacity` credits that holds at most `max_jobs` jobs whose
    /// finished fences have not signalled, queued or running.
    pub fn new(
        ops: impl PinInit<T, Error>,
        capacity: u32,
        max_jobs: usize,
    ) -> impl PinInit<Self, Error> {
        let credits = capacity;
        let max_jobs = max_jobs.max(1);
        // Room for as many jobs again that have finished and wait to be retired.
        let ring = 2 * max_jobs;
        try_pin_init!(Self {
            ops <- ops,
            fences: FenceContext::new(),
            capacity,
            max_jobs,
            state <- new_spinlock_irq!(State {
                slots: empty_slots(ring, GFP_KERNEL)?,
                first: 0,
                len: 0,
                running: 0,
                signalled: 0,
                starting: false,
                rekick: false,
                credits,
                through: 0,
                stray: None,
                front_since: Instant::now(),
                stopped: false,
                dead: false,
                reserved: 0,
            }),
            run <- Opaque::ffi_init(|work: *mut bindings::work_struct| {
                // SAFETY: `work` is valid for writes; `run_work` takes a work item of a queue.
                unsafe {
                    bindings::init_work_with_key(
                        work,
                        Some(Self::run_work),
                        false,
                        c"JobQueue::run".as_char_ptr(),
                        crate::static_lock_class!().as_ptr(),
                    )
                }
            }),
            later <- Opaque::ffi_init(|dwork: *mut bindings::delayed_work| {
                // SAFETY: `dwork` is valid for writes; `later_work` takes the work item of a
                // queue's `later`.
                unsafe {
                    init_delayed_work(
                        dwork,
                        Self::later_work,
                        c"JobQueue::later",
                        crate::static_lock_class!(),
                        crate::static_lock_class!(),
                    )
                }
            }),
            watchdog <- Opaque::ffi_init(|dwork: *mut bindings::delayed_work| {
                // SAFETY: `dwork` is valid for writes; `watchdog_work` takes the work item of a
                // queue's watchdog.
                unsafe {
                    init_delayed_work(
                        dwork,
                        Self::watchdog_work,
                        c"JobQueue::watchdog",
                        crate::static_lock_class!(),
                        crate::static_lock_class!(),
                    )
                }
            }),
        })
    }

    /// The driver's side of the queue.
    pub fn ops(&self) -> &T {
        &self.ops
    }

    /// The fence context of the finished fences.
    pub fn context(&self) -> u64 {
        self.fences.id()
    }

    /// Allocates a job that uses `credits` of the ring.
    ///
    /// Fails with [`EINVAL`] when the ring could never hold the job.
    pub fn prepare(&self, job: J, credits: u32, flags: Flags) -> Result<PreparedJob<'_, T, J, L>> {
        if credits > self.capacity {
            return Err(EINVAL);
        }
        let memory = FenceMemory::new(flags)?;
        let node = KBox::pin_init(
            pin_init!(Node::<J> {
                job: Some(job),
                credits,
                deps: KVec::new(),
                memory: Some(memory),
                finished: None,
                hw: None,
                number: 0,
                hw_error: None,
                error: None,
                dep_error: None,
                wake <- FenceCallback::new(Wake {
                    work: self.run.get(),
                }),
            }),
            flags,
        )?;
        Ok(PreparedJob { queue: self, node })
    }

    /// Queues `job` and returns its finished fence, and starts it if nothing holds it back.
    ///
    /// The fence gets its sequence number here, in queue order. While the queue holds as many
    /// unfinished jobs as it can, waits for the oldest to finish; [`ERESTARTSYS`] when
    /// `interruptible` and a signal comes first. Fails with [`ESHUTDOWN`] once the queue is
    /// stopped, and with [`ENOMEM`] when the queue needs more room for finished jobs that the
    /// worker has not retired yet and cannot get it. The job is dropped on failure.
    pub fn push(&self, job: PreparedJob<'_, T, J, L>, interruptible: bool) -> Result<ARef<Fence>> {
        let (state, fence) = self.insert(job, interruptible)?;
        // Started here when nothing holds it back, which spares a trip through the worker.
        self.start_locked(state);
        Ok(fence)
    }

    /// As [`Self::push`], but leaves the job for [`Self::start`]: for a caller that holds locks
    /// (reservation objects, say) which starting the job need not hold. Until the caller
    /// starts it, the worker may.
    pub fn enqueue(
        &self,
        job: PreparedJob<'_, T, J, L>,
        interruptible: bool,
    ) -> Result<ARef<Fence>> {
        let (state, fence) = self.insert(job, interruptible)?;
        drop(state);
        Ok(fence)
    }

    /// Sets aside room for `n` more jobs, which [`Self::enqueue_reserved`] queues without
    /// allocating: for a caller that must not fail once it has started to change things. The
    /// room goes back when the reservation is dropped.
    pub fn reserve(&self, n: usize) -> Result<Reservation<'_, T, J, L>> {
        loop {
            let mut state = self.state.lock();
            let need = state.len + state.reserved + n;
            if need <= state.slots.len() {
                state.reserved += n;
                return Ok(Reservation { queue: self, n });
            }
            let more = need.max(2 * state.slots.len());
            drop(state);
            let bigger = empty_slots(more, GFP_KERNEL)?;
            let mut state = self.state.lock();
            if more > state.slots.len() {
                state.grow(bigger);
            }
        }
    }

    /// As [`Self::enqueue`], in room that `reservation` holds: fails only with [`ESHUTDOWN`]
    /// once the queue is stopped, or with [`ERESTARTSYS`] when `interruptible` (see
    /// [`Self::push`]). [`EINVAL`] when the reservation is used up or of another queue.
    pub fn enqueue_reserved(
        &self,
        job: PreparedJob<'_, T, J, L>,
        reservation: &mut Reservation<'_, T, J, L>,
        interruptible: bool,
    ) -> Result<ARef<Fence>> {
        if !core::ptr::eq(reservation.queue, self) || reservation.n == 0 {
            return Err(EINVAL);
        }
        let (mut state, fence) = self.insert_in(job, interruptible, true)?;
        state.reserved -= 1;
        reservation.n -= 1;
        drop(state);
        Ok(fence)
    }

    /// Puts `job` at the end of the queue and gives its finished fence, with the queue's lock
    /// still held. See [`Self::push`].
    fn insert(
        &self,
        job: PreparedJob<'_, T, J, L>,
        interruptible: bool,
    ) -> Result<(SpinLockIrqGuard<'_, State<J>>, ARef<Fence>)> {
        self.insert_in(job, interruptible, false)
    }

    /// As [`Self::insert`]; `reserved` when the caller holds a slot of `State::reserved`, which
    /// it gives back once the job is in.
    fn insert_in(
        &self,
        job: PreparedJob<'_, T, J, L>,
        interruptible: bool,
        reserved: bool,
    ) -> Result<(SpinLockIrqGuard<'_, State<J>>, ARef<Fence>)> {
        if !core::ptr::eq(job.queue, self) {
            return Err(EINVAL);
        }
        let mut node = job.node;
        loop {
            let mut state = self.state.lock();
            if state.stopped {
                return Err(ESHUTDOWN);
            }
            if state.len - state.signalled >= self.max_jobs {
                // The oldest unfinished job, unless it is being started.
                let oldest = (state.signalled..state.len)
                    .find_map(|i| state.get(i).and_then(|n| n.finished.as_ref()))
                    .map(SignalFence::shared);
                drop(state);
                if let Some(oldest) = oldest {
                    oldest.wait(interruptible)?;
                }
                continue;
            }
            // A reserved job takes a slot of its own reservation, which is there; others leave
            // the reservations theirs.
            let taken = state.len + if reserved { 0 } else { state.reserved };
            if taken >= state.slots.len() {
                // Finished jobs wait for the worker: more room, rather than a wait for the
                // worker, which may need a lock the caller holds to drop them.
                let more = state.slots.len() * 2;
                drop(state);
                let bigger = empty_slots(more, GFP_KERNEL)?;
                let mut state = self.state.lock();
                if more > state.slots.len() {
                    state.grow(bigger);
                }
                continue;
            }
            // SAFETY: `memory` and `finished` are not structurally pinned.
            let fields = unsafe { node.as_mut().get_unchecked_mut() };
            let memory = fields.memory.take().ok_or(EINVAL)?;
            let finished = self.fences.init_fence(memory);
            let shared = finished.shared();
            fields.finished = Some(finished);
            let i = state.len;
            if let Some(slot) = state.slot(i) {
                *slot = Some(node);
            }
            state.len += 1;
            return Ok((state, shared));
        }
    }

    /// How many jobs the queue holds, and how many of them have started.
    pub fn jobs(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.len, state.running)
    }

    /// Wakes the worker.
    pub fn wake(&self) {
        // SAFETY: By the type invariants `run` is initialised, and `self` is alive.
        unsafe { queue_run(self.run.get()) };
    }

    /// Wakes the worker a little later, unless it is woken already: to retire jobs in batches.
    fn wake_later(&self) {
        let cpu = bindings::wq_misc_consts_WORK_CPU_UNBOUND as i32;
        // SAFETY: By the type invariants `later` is initialised, and `self` is alive;
        // `system_dfl_wq` is always available.
        unsafe {
            bindings::queue_delayed_work_on(
                cpu,
                bindings::system_dfl_wq,
                self.later.get(),
                msecs_to_jiffies(RETIRE_DELAY_MS),
            )
        };
    }

    /// Waits until the worker has gone through the queue once more.
    pub fn flush(&self) {
        self.wake();
        // SAFETY: By the type invariants the work items are initialised.
        unsafe {
            bindings::flush_work(self.run.get());
            bindings::flush_delayed_work(self.later.get());
        }
    }

    /// Stops the queue: jobs not started never will be, and new jobs are refused with
    /// [`ESHUTDOWN`]. The finished fences of the jobs still in the queue signal `error`, in
    /// order, once the running ones have ended or been cancelled. Allocates nothing.
    pub fn stop(&self, error: Error) {
        self.state.lock().stopped = true;
        self.cancel_where(|_| true, error);
    }

    /// Fails the jobs not started yet for which `f` is true with `error`: they will not run.
    /// Their finished fences signal in order. Allocates nothing.
    pub fn cancel_where(&self, f: impl Fn(&J) -> bool, error: Error) {
        let mut state = self.state.lock();
        for i in state.running..state.len {
            if let Some(Some(node)) = state.slot(i) {
                if node.job.as_ref().is_some_and(&f) {
                    // SAFETY: `error` is not structurally pinned.
                    unsafe { node.as_mut().get_unchecked_mut().error = Some(error) };
                }
            }
        }
        drop(state);
        self.wake();
    }

    /// Signals the finished fences of the jobs the hardware is done with, oldest first, at
    /// once, and gives their credits back.
    ///
    /// For the driver's completion handler, once it has signalled hardware fences (see
    /// [`QueueOps::SIGNALS_DONE`]): their finished fences signal without a trip through the
    /// worker, which retires the jobs later, several at a time. Any context, hard interrupts
    /// included, but not a fence callback, nor with a fence's lock held. Allocates nothing.
    ///
    /// The fences signal under the queue's lock, which keeps them in order: callbacks on
    /// finished fences must not call into the queue.
    pub fn signal_done(&self) {
        self.finish(None);
    }

    /// Records how numbered jobs ([`Run::Numbered`]) ended, then does what
    /// [`Self::signal_done`] does: their finished fences signal, in order.
    ///
    /// For the driver's completion and error handlers. `ended.through` only counts when it is
    /// greater than the one of an earlier call. Any context, hard interrupts included, but not a
    /// fence callback, nor with a fence's lock held. Allocates nothing.
    pub fn ended(&self, ended: Ended) {
        self.finish(Some(ended));
    }

    /// [`Self::signal_done`], after recording `ended`.
    fn finish(&self, ended: Option<Ended>) {
        let (signalled, waiting, retire_now) = {
            let _section = SignallingSection::begin();
            let mut state = self.state.lock();
            if state.dead {
                return;
            }
            if let Some(ended) = ended {
                Self::record(&mut state, ended);
            }
            let signalled = self.signal_due(&mut state);
            // A task that is starting a job looks at the queue again before it stops: the
            // worker is not needed for the jobs after that one, nor to retry it.
            let waiting = state.len > state.running && !state.starting;
            state.rekick |= state.starting;
            (
                signalled,
                waiting,
                2 * (state.signalled + 1) > self.max_jobs,
            )
        };
        if waiting || retire_now {
            self.wake();
        } else if signalled {
            self.wake_later();
        }
    }

    /// Records how numbered jobs ended: the ones running, and the one being started.
    fn record(state: &mut State<J>, ended: Ended) {
        state.through = state.through.max(ended.through);
        let Some((range, error)) = ended.failed else {
            return;
        };
        for i in state.signalled..state.running {
            if let Some(Some(node)) = state.slot(i) {
                if node.number != 0 && range.contains(&node.number) && node.hw_error.is_none() {
                    // SAFETY: `hw_error` is not structurally pinned.
                    unsafe { node.as_mut().get_unchecked_mut().hw_error = Some(error) };
                }
            }
        }
        if state.starting {
            state.stray = Some((range, error));
        }
    }

    /// Signals the finished fences that are due, in order, and gives their credits back;
    /// returns whether any signalled.
    fn signal_due(&self, state: &mut State<J>) -> bool {
        if state.dead {
            return false;
        }
        let before = state.signalled;
        let through = state.through;
        while state.signalled < state.running {
            let i = state.signalled;
            let Some(Some(node)) = state.slot(i) else {
                break;
            };
            if !node.done(through) {
                break;
            }
            let error = node.failure();
            // SAFETY: `finished` and `credits` are not structurally pinned.
            let fields = unsafe { node.as_mut().get_unchecked_mut() };
            let credits = core::mem::take(&mut fields.credits);
            match (fields.finished.take(), error) {
                (Some(f), Some(e)) => f.signal_error(e),
                (Some(f), None) => f.signal(),
                (None, _) => {}
            }
            state.credits = state.credits.saturating_add(credits);
            state.signalled += 1;
        }
        if state.signalled == before {
            return false;
        }
        state.front_since = Instant::now();
        true
    }

    extern "C" fn run_work(work: *mut bindings::work_struct) {
        // SAFETY: By the type invariants, `work` is the `run` field of a live queue; `Opaque` is
        // `repr(transparent)`.
        let this = unsafe {
            &*crate::container_of!(work.cast::<Opaque<bindings::work_struct>>(), Self, run)
        };
        this.retire();
        this.start();
    }

    extern "C" fn later_work(work: *mut bindings::work_struct) {
        // SAFETY: By the type invariants, `work` is the work item of the `later` field of a live
        // queue; `Opaque` is `repr(transparent)`.
        let this = unsafe {
            let dwork = crate::container_of!(work, bindings::delayed_work, work);
            &*crate::container_of!(dwork.cast::<Opaque<bindings::delayed_work>>(), Self, later)
        };
        this.retire();
        this.start();
    }

    extern "C" fn watchdog_work(work: *mut bindings::work_struct) {
        // SAFETY: By the type invariants, `work` is the work item of the `watchdog` field of a
        // live queue; `Opaque` is `repr(transparent)`.
        let this = unsafe {
            let dwork = crate::container_of!(work, bindings::delayed_work, work);
            &*crate::container_of!(
                dwork.cast::<Opaque<bindings::delayed_work>>(),
                Self,
                watchdog
            )
        };
        this.check_timeout();
    }

    /// Arms the watchdog to fire in `delay`, or sooner if it is armed already.
    fn arm_watchdog(&self, delay: Delta, rearm: bool) {
        let ms = u32::try_from(delay.as_millis().max(1)).unwrap_or(u32::MAX);
        let cpu = bindings::wq_misc_consts_WORK_CPU_UNBOUND as i32;
        // SAFETY: By the type invariants `watchdog` is initialised, and `self` is alive;
        // `system_dfl_wq` is always available.
        unsafe {
            let wq = bindings::system_dfl_wq;
            if rearm {
                bindings::mod_delayed_work_on(cpu, wq, self.watchdog.get(), msecs_to_jiffies(ms));
            } else {
                bindings::queue_delayed_work_on(cpu, wq, self.watchdog.get(), msecs_to_jiffies(ms));
            }
        }
    }

    /// Signals the finished fences that are due, then takes the jobs whose finished fences
    /// have signalled off the queue and drops them.
    fn retire(&self) {
        let mut first = true;
        loop {
            let mut batch: [Option<Pin<KBox<Node<J>>>>; RETIRE_BATCH] =
                [const { None }; RETIRE_BATCH];
            {
                let _section = first.then(SignallingSection::begin);
                let mut state = self.state.lock();
                if first {
                    self.signal_due(&mut state);
                    first = false;
                }
                for slot in batch.iter_mut() {
                    if state.dead || state.signalled == 0 {
                        break;
                    }
                    *slot = state.pop();
                }
            }
            if batch[0].is_none() {
                return;
            }
            for mut node in batch.into_iter().flatten() {
                let error = node.failure();
                // The job's resources go outside the signalling section: freeing them may take
                // locks that allocating paths hold.
                // SAFETY: `job` is not structurally pinned.
                let job = unsafe { node.as_mut().get_unchecked_mut().job.take() };
                drop(node);
                if let Some(job) = job {
                    self.ops.finished(job, error.map_or(Ok(()), Err));
                }
            }
        }
    }

    /// Starts the queued jobs whose dependencies have signalled, in order, while the ring has
    /// room. One task at a time starts jobs (`starting`); the others leave it to that one,
    /// which looks at the queue again before it stops.
    pub fn start(&self) {
        self.start_locked(self.state.lock());
    }

    /// [`Self::start`] with the queue's lock held.
    fn start_locked<'a>(&'a self, mut state: SpinLockIrqGuard<'a, State<J>>) {
        loop {
            if state.starting {
                state.rekick = true;
                return;
            }
            let i = state.running;
            if state.dead || i >= state.len {
                return;
            }
            let free = state.credits;
            let Some(Some(node)) = state.slot(i) else {
                return;
            };
            if node.error.is_none() && !Self::dependencies_done(node.as_mut()) {
                return;
            }
            if node.error.is_none() && node.credits > free {
                return;
            }
            let idle = state.running == state.signalled;
            let Some(mut node) = state.slot(i).and_then(Option::take) else {
                return;
            };
            state.starting = true;
            state.rekick = false;
            drop(state);
            let outcome = match node.error {
                Some(e) => Run::Failed(e),
                None => {
                    let _section = SignallingSection::begin();
                    // SAFETY: `job` is not structurally pinned.
                    match unsafe { &mut node.as_mut().get_unchecked_mut().job } {
                        Some(job) => self.ops.run(job, idle),
                        None => Run::Failed(EINVAL),
                    }
                }
            };
            // SAFETY: `hw`, `error` and `credits` are not structurally pinned.
            let fields = unsafe { node.as_mut().get_unchecked_mut() };
            let started = match outcome {
                Run::Later => {
                    state = self.state.lock();
                    state.starting = false;
                    let i = state.running;
                    if let Some(slot) = state.slot(i) {
                        *slot = Some(node);
                    }
                    // The jobs it waited for may have ended meanwhile, and the task that
                    // learned it found this one starting.
                    if core::mem::take(&mut state.rekick) {
                        continue;
                    }
                    return;
                }
                Run::Started(hw) => {
                    fields.hw = Some(hw);
                    true
                }
                // The queue would never learn that the job ended.
                Run::Numbered(n) if !T::SIGNALS_DONE || n == 0 => {
                    fields.error = Some(EINVAL);
                    fields.credits = 0;
                    false
                }
                Run::Numbered(n) => {
                    fields.number = n;
                    true
                }
                Run::Failed(e) => {
                    fields.error = Some(e);
                    fields.credits = 0;
                    false
                }
            };
            let hw = node.hw.clone();
            // SAFETY: `wake` is structurally pinned and projected as such.
            let mut wake = unsafe { node.as_mut().map_unchecked_mut(|n| &mut n.wake) };
            wake.as_mut().unregister();
            // Without a callback the driver calls `signal_done()` once the hardware fence has
            // signalled.
            if let Some(hw) = hw.as_ref().filter(|_| !T::SIGNALS_DONE) {
                // Not registered: the fence has signalled, which is looked at below.
                let _ = wake.register(hw);
            }
            state = self.state.lock();
            state.starting = false;
            if started {
                state.credits = state.credits.saturating_sub(node.credits);
            }
            // A failure reported while the job was out of the queue.
            if let Some((range, error)) = state.stray.take() {
                if node.number != 0 && range.contains(&node.number) {
                    // SAFETY: `hw_error` is not structurally pinned.
                    unsafe { node.as_mut().get_unchecked_mut().hw_error = Some(error) };
                }
            }
            // A hardware fence that signalled, or a numbered job that ended, before the job was
            // back in the queue found nothing to signal: its finished fence is due now. One
            // that ends later finds the job, since `signal_done()` takes the lock.
            let done = node.done(state.through);
            let i = state.running;
            if let Some(slot) = state.slot(i) {
                *slot = Some(node);
            }
            state.running += 1;
            if state.running == state.signalled + 1 {
                state.front_since = Instant::now();
                if started {
                    self.arm_watchdog(self.ops.timeout(), false);
                }
            }
            if done {
                drop(state);
                self.signal_done();
                state = self.state.lock();
            }
        }
    }

    /// Drops the dependencies of `node` that have signalled and registers its callback on the
    /// next one; returns whether none is left. A failed dependency fails the job.
    fn dependencies_done(mut node: Pin<&mut Node<J>>) -> bool {
        loop {
            let Some(dep) = node.deps.last().cloned() else {
                return true;
            };
            // Lockless: a fence done but not flagged yet is caught by the callback's
            // registration, which then fails.
            match dep.result() {
                Ok(true) => {
                    // SAFETY: `deps` is not structurally pinned.
                    unsafe { node.as_mut().get_unchecked_mut() }.deps.pop();
                }
                Err(e) if T::RUNS_AFTER_FAILED_DEPENDENCY => {
                    // SAFETY: `deps` and `dep_error` are not structurally pinned.
                    let fields = unsafe { node.as_mut().get_unchecked_mut() };
                    fields.dep_error = fields.dep_error.or(Some(e));
                    fields.deps.pop();
                }
                Err(e) => {
                    // SAFETY: `deps` and `error` are not structurally pinned.
                    let fields = unsafe { node.as_mut().get_unchecked_mut() };
                    fields.error = Some(e);
                    fields.deps.clear();
                    return true;
                }
                Ok(false) => {
                    // SAFETY: `wake` is structurally pinned and projected as such.
                    let mut wake = unsafe { node.as_mut().map_unchecked_mut(|n| &mut n.wake) };
                    wake.as_mut().unregister();
                    // Registered: the callback wakes the worker. Not registered: the fence
                    // signalled meanwhile, look again.
                    if !matches!(wake.register(&dep), Ok(false)) {
                        return false;
                    }
                }
            }
        }
    }

    /// The watchdog: calls the driver's handler when the oldest running job has run for the
    /// timeout, and arms itself again while jobs run.
    fn check_timeout(&self) {
        let timeout = self.ops.timeout();
        let (oldest, age) = {
            let state = self.state.lock();
            if state.dead || state.running == state.signalled {
                return;
            }
            let oldest = state
                .get(state.signalled)
                .filter(|n| !n.done(state.through))
                .map(|n| (n.hw.clone(), n.number));
            (oldest, state.front_since.elapsed())
        };
        match oldest {
            // The oldest ended without running, or the hardware is done with it: its finished
            // fence is due.
            None => self.signal_done(),
            Some((hw, number)) if age.as_nanos() >= timeout.as_nanos() => {
                let ended = {
                    let _section = SignallingSection::begin();
                    self.ops.timed_out(match &hw {
                        Some(hw) => Running::Fence(hw),
                        None => Running::Numbered(number),
                    })
                };
                self.ended(ended);
                self.ops.restart();
                self.arm_watchdog(timeout, true);
            }
            Some(_) => {
                let left = Delta::from_nanos(timeout.as_nanos() - age.as_nanos());
                self.arm_watchdog(left, true);
            }
        }
        // Armed again while jobs run, in case the ones that signalled are not the last.
        let running = {
            let state = self.state.lock();
            !state.dead && state.running > state.signalled
        };
        if running {
            self.arm_watchdog(timeout, false);
        }
    }
}

#[pinned_drop]
impl<T, J, L> PinnedDrop for JobQueue<T, J, L>
where
    T: QueueOps<Job = J, Timeline = L>,
    J: Send,
    L: FenceTimeline,
{
    fn drop(self: Pin<&mut Self>) {
        {
            let mut state = self.state.lock();
            state.stopped = true;
            state.dead = true;
        }
        // SAFETY: By the type invariants the work items are initialised.
        unsafe {
            bindings::cancel_work_sync(self.run.get());
            bindings::cancel_delayed_work_sync(self.later.get());
            bindings::cancel_delayed_work_sync(self.watchdog.get());
        }
        // Nothing but fence callbacks can queue the worker now. Dropping a job unregisters its
        // callback, and signals its finished fence `ECANCELED` unless it has signalled.
        loop {
            let node = self.state.lock().pop();
            let Some(mut node) = node else {
                break;
            };
            // A job whose finished fence has signalled keeps its result.
            let error = match node.finished {
                Some(_) => Some(ECANCELED),
                None => node.failure(),
            };
            // SAFETY: `job` is not structurally pinned.
            let job = unsafe { node.as_mut().get_unchecked_mut().job.take() };
            drop(node);
            if let Some(job) = job {
                self.ops.finished(job, error.map_or(Ok(()), Err));
            }
        }
        // INVARIANT: no callback is left to queue the worker, which a callback may have queued
        // before its job was dropped; the watchdog is only armed by the worker and by itself,
        // which do nothing once the queue is dead.
        // SAFETY: By the type invariants the work items are initialised.
        unsafe {
            bindings::cancel_work_sync(self.run.get());
            bindings::cancel_delayed_work_sync(self.later.get());
            bindings::cancel_delayed_work_sync(self.watchdog.get());
        }
    }
}

#[cfg(CONFIG_RUST_DMA_FENCE_KUNIT_TEST)]
#[macros::kunit_tests(rust_dma_fence_queue)]
mod tests {
    use super::*;
    use crate::time::delay::fsleep;
    use core::sync::atomic::{
        AtomicU32,
        Ordering, //
    };

    struct Finished;

    impl FenceTimeline for Finished {
        const DRIVER_NAME: &'static CStr = c"rust-job-queue-test";
        const TIMELINE_NAME: &'static CStr = c"finished";
    }

    struct Hardware;

    impl FenceTimeline for Hardware {
        const DRIVER_NAME: &'static CStr = c"rust-job-queue-test";
        const TIMELINE_NAME: &'static CStr = c"hardware";
    }

    /// The most jobs a test starts.
    const MAX_STARTED: usize = 16;

    /// Jobs on the fake hardware, with their hardware fences.
    type Started = KVec<(u32, SignalFence)>;

    /// A fake engine: it starts jobs by recording them, and the test ends them.
    struct Fake {
        hw: FenceContext<Hardware>,
        /// The jobs started and not yet ended, with their hardware fences.
        started: Pin<KBox<SpinLockIrq<Started>>>,
        /// Every job started, in order.
        order: Pin<KBox<SpinLockIrq<KVec<u32>>>>,
        timeouts: AtomicU32,
        timeout_ms: i64,
    }

    struct FakeJob {
        id: u32,
        hw: Option<FenceMemory>,
    }

    impl QueueOps for Fake {
        type Job = FakeJob;
        type Timeline = Finished;
        const IN_ORDER: bool = true;

        fn run(&self, job: &mut FakeJob, _idle: bool) -> Run {
            let Some(memory) = job.hw.take() else {
                return Run::Failed(EINVAL);
            };
            let fence = self.hw.init_fence(memory);
            let shared = fence.shared();
            // Within the capacity reserved by the test: no allocation.
            let _ = self.order.lock().push_within_capacity(job.id);
            match self.started.lock().push_within_capacity((job.id, fence)) {
                Ok(()) => Run::Started(shared),
                Err(_) => Run::Failed(ENOSPC),
            }
        }

        fn timed_out(&self, job: Running<'_>) -> Ended {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
            let Running::Fence(hw) = job else {
                return Ended::default();
            };
            let mut started = self.started.lock();
            if let Some(i) = started
                .iter()
                .position(|(_, f)| f.fence().seqno() == hw.seqno())
            {
                if let Ok((_, fence)) = started.remove(i) {
                    fence.signal_error(ETIMEDOUT);
                }
            }
            Ended::default()
        }

        fn timeout(&self) -> Delta {
            Delta::from_millis(self.timeout_ms)
        }
    }

    /// The fake engine of a driver whose completion handler calls `signal_done()`.
    struct Direct(Fake);

    impl QueueOps for Direct {
        type Job = FakeJob;
        type Timeline = Finished;
        const IN_ORDER: bool = true;
        const SIGNALS_DONE: bool = true;

        fn run(&self, job: &mut FakeJob, idle: bool) -> Run {
            self.0.run(job, idle)
        }

        fn timed_out(&self, job: Running<'_>) -> Ended {
            self.0.timed_out(job)
        }

        fn timeout(&self) -> Delta {
            self.0.timeout()
        }
    }

    /// The fake engine of a driver whose jobs run even after a dependency failed.
    struct Stubborn(Fake);

    impl QueueOps for Stubborn {
        type Job = FakeJob;
        type Timeline = Finished;
        const IN_ORDER: bool = true;
        const RUNS_AFTER_FAILED_DEPENDENCY: bool = true;

        fn run(&self, job: &mut FakeJob, idle: bool) -> Run {
            self.0.run(job, idle)
        }

        fn timed_out(&self, job: Running<'_>) -> Ended {
            self.0.timed_out(job)
        }

        fn timeout(&self) -> Delta {
            self.0.timeout()
        }
    }

    /// The fake engine of a driver that numbers its jobs (with their ids) and reports which
    /// ended, without hardware fences.
    struct Numbered(Fake);

    impl QueueOps for Numbered {
        type Job = FakeJob;
        type Timeline = Finished;
        const IN_ORDER: bool = true;
        const SIGNALS_DONE: bool = true;

        fn run(&self, job: &mut FakeJob, _idle: bool) -> Run {
            let _ = self.0.order.lock().push_within_capacity(job.id);
            Run::Numbered(u64::from(job.id))
        }

        /// Fails the job that timed out, and only it.
        fn timed_out(&self, job: Running<'_>) -> Ended {
            self.0.timeouts.fetch_add(1, Ordering::Relaxed);
            match job {
                Running::Numbered(n) => Ended {
                    through: n - 1,
                    failed: Some((n..=n, ETIMEDOUT)),
                },
                Running::Fence(_) => Ended::default(),
            }
        }

        fn timeout(&self) -> Delta {
            self.0.timeout()
        }
    }

    type NumberedQueue = Pin<KBox<JobQueue<Numbered, FakeJob, Finished>>>;

    /// A queue on a [`Numbered`] engine, with jobs `1..=n` pushed; their finished fences.
    fn numbered(n: u32, timeout_ms: i64) -> Result<(NumberedQueue, KVec<ARef<Fence>>)> {
        let q = KBox::pin_init(
            JobQueue::new(Ok::<_, Error>(Numbered(fake(timeout_ms)?)), 64, 8),
            GFP_KERNEL,
        )?;
        let mut done = KVec::new();
        for id in 1..=n {
            let job = FakeJob { id, hw: None };
            done.push(q.push(q.prepare(job, 1, GFP_KERNEL)?, false)?, GFP_KERNEL)?;
        }
        Ok((q, done))
    }

    type Queue = Pin<KBox<JobQueue<Fake, FakeJob, Finished>>>;

    fn queue(credits: u32, max_jobs: usize, timeout_ms: i64) -> Result<Queue> {
        KBox::pin_init(
            JobQueue::new(Ok::<_, Error>(fake(timeout_ms)?), credits, max_jobs),
            GFP_KERNEL,
        )
    }

    fn fake(timeout_ms: i64) -> Result<Fake> {
        Ok(Fake {
            hw: FenceContext::new(),
            started: KBox::pin_init(
                new_spinlock_irq!(KVec::with_capacity(MAX_STARTED, GFP_KERNEL)?),
                GFP_KERNEL,
            )?,
            order: KBox::pin_init(
                new_spinlock_irq!(KVec::with_capacity(MAX_STARTED, GFP_KERNEL)?),
                GFP_KERNEL,
            )?,
            timeouts: AtomicU32::new(0),
            timeout_ms,
        })
    }

    fn prepare(
        q: &Queue,
        id: u32,
        credits: u32,
    ) -> Result<PreparedJob<'_, Fake, FakeJob, Finished>> {
        let job = FakeJob {
            id,
            hw: Some(FenceMemory::new(GFP_KERNEL)?),
        };
        q.prepare(job, credits, GFP_KERNEL)
    }

    fn push(q: &Queue, id: u32, deps: &[&Fence]) -> Result<ARef<Fence>> {
        let mut job = prepare(q, id, 1)?;
        for dep in deps {
            job.add_dependency(dep, GFP_KERNEL)?;
        }
        q.push(job, false)
    }

    /// The jobs started so far, in order, once the worker has gone through the queue.
    fn started(q: &Queue) -> Result<KVec<u32>> {
        q.flush();
        // Allocated before the lock, which the queue's signalling path takes.
        let mut ids = KVec::with_capacity(MAX_STARTED, GFP_KERNEL)?;
        for id in q.ops().order.lock().iter() {
            ids.push_within_capacity(*id).map_err(|_| ENOSPC)?;
        }
        Ok(ids)
    }

    /// Ends job `id` on the fake hardware.
    fn end(q: &Queue, id: u32) {
        end_on(q.ops(), id)
    }

    /// Ends job `id` on `fake`.
    fn end_on(fake: &Fake, id: u32) {
        let fence = {
            let mut started = fake.started.lock();
            let i = started.iter().position(|(j, _)| *j == id);
            i.and_then(|i| started.remove(i).ok())
        };
        if let Some((_, fence)) = fence {
            fence.signal();
        }
    }

    /// Looks at `fence` every 10 ms, for at most 5 s, until it has signalled: nobody waits on
    /// it.
    fn poll_signalled(fence: &Fence) {
        for _ in 0..500 {
            if fence.is_signaled() {
                break;
            }
            fsleep(Delta::from_millis(10));
        }
    }

    fn finishes(fence: &Fence) -> Result<bool> {
        fence.wait_timeout(false, msecs_to_jiffies(5_000))
    }

    fn external() -> FenceContext<Hardware> {
        FenceContext::new()
    }

    #[test]
    fn an_enqueued_job_waits_for_start() -> Result {
        let q = queue(64, 8, 10_000)?;
        let one = q.enqueue(prepare(&q, 1, 1)?, false)?;
        // Nothing holds it back, but nothing started it either: not even the worker.
        assert!(q.ops().order.lock().is_empty());
        assert_eq!(q.jobs(), (1, 0));
        q.start();
        assert_eq!(q.jobs(), (1, 1));
        assert_eq!(&*started(&q)?, &[1]);
        end(&q, 1);
        assert_eq!(finishes(&one), Ok(true));
        Ok(())
    }

    #[test]
    fn runs_once_dependencies_of_several_contexts_signal() -> Result {
        let q = queue(64, 8, 10_000)?;
        let (a, b) = (external(), external());
        let (fa, fb) = (a.new_fence(GFP_KERNEL)?, b.new_fence(GFP_KERNEL)?);
        let done = push(&q, 1, &[fa.fence(), fb.fence()])?;
        assert_eq!(done.context(), q.context());
        assert!(started(&q)?.is_empty());
        fa.signal();
        assert!(started(&q)?.is_empty());
        fb.signal();
        assert_eq!(&*started(&q)?, &[1]);
        assert!(!done.is_signaled());
        end(&q, 1);
        assert_eq!(finishes(&done), Ok(true));
        assert_eq!(done.status(), Ok(true));
        Ok(())
    }

    #[test]
    fn keeps_the_latest_fence_of_each_context() -> Result {
        let q = queue(64, 8, 10_000)?;
        let (a, b) = (external(), external());
        let (a1, a2, b1) = (
            a.new_fence(GFP_KERNEL)?,
            a.new_fence(GFP_KERNEL)?,
            b.new_fence(GFP_KERNEL)?,
        );
        let first = push(&q, 1, &[])?;
        let mut job = prepare(&q, 2, 1)?;
        for dep in [a1.fence(), a2.fence(), b1.fence(), a1.fence()] {
            job.add_dependency(dep, GFP_KERNEL)?;
        }
        // One fence per context.
        assert_eq!(job.dependencies(), 2);
        // An implicit dependency on the queue's own job is not kept: its hardware runs in
        // order. An explicit one is.
        job.add_implicit_dependency(&first, GFP_KERNEL)?;
        assert_eq!(job.dependencies(), 2);
        job.add_dependency(&first, GFP_KERNEL)?;
        assert_eq!(job.dependencies(), 3);
        let done = q.push(job, false)?;
        b1.signal();
        a1.signal();
        // The later fence of context a is still pending.
        assert_eq!(&*started(&q)?, &[1]);
        a2.signal();
        // Job 1 still runs.
        assert_eq!(&*started(&q)?, &[1]);
        end(&q, 1);
        assert_eq!(&*started(&q)?, &[1, 2]);
        end(&q, 2);
        assert_eq!(finishes(&done), Ok(true));
        assert_eq!(finishes(&first), Ok(true));
        Ok(())
    }

    #[test]
    fn finished_fences_signal_in_order() -> Result {
        let q = queue(64, 8, 10_000)?;
        let one = push(&q, 1, &[])?;
        let two = push(&q, 2, &[])?;
        let three = push(&q, 3, &[])?;
        assert!(one.seqno() < two.seqno() && two.seqno() < three.seqno());
        assert_eq!(&*started(&q)?, &[1, 2, 3]);
        // The hardware ends job 2 first; its finished fence waits for job 1's.
        end(&q, 2);
        started(&q)?;
        assert!(!two.is_signaled());
        end(&q, 1);
        assert_eq!(finishes(&two), Ok(true));
        assert!(one.is_signaled());
        assert!(!three.is_signaled());
        end(&q, 3);
        assert_eq!(finishes(&three), Ok(true));
        Ok(())
    }

    #[test]
    fn credits_limit_what_runs() -> Result {
        let q = queue(4, 8, 10_000)?;
        assert!(matches!(prepare(&q, 9, 5), Err(e) if e == EINVAL));
        let one = q.push(prepare(&q, 1, 3)?, false)?;
        let two = q.push(prepare(&q, 2, 3)?, false)?;
        assert_eq!(&*started(&q)?, &[1]);
        end(&q, 1);
        assert_eq!(finishes(&one), Ok(true));
        assert_eq!(&*started(&q)?, &[1, 2]);
        end(&q, 2);
        assert_eq!(finishes(&two), Ok(true));
        Ok(())
    }

    #[test]
    fn a_failed_dependency_fails_the_job_without_running_it() -> Result {
        let q = queue(64, 8, 10_000)?;
        let a = external();
        let fa = a.new_fence(GFP_KERNEL)?;
        let failed = push(&q, 1, &[fa.fence()])?;
        let after = push(&q, 2, &[])?;
        fa.signal_error(EIO);
        assert_eq!(finishes(&failed), Ok(true));
        assert_eq!(failed.status(), Err(EIO));
        assert_eq!(&*started(&q)?, &[2]);
        end(&q, 2);
        assert_eq!(finishes(&after), Ok(true));
        assert_eq!(after.status(), Ok(true));
        Ok(())
    }

    #[test]
    fn a_job_that_must_run_waits_for_every_dependency_and_reports_the_failure() -> Result {
        let q = KBox::pin_init(
            JobQueue::new(Ok::<_, Error>(Stubborn(fake(10_000)?)), 64, 8),
            GFP_KERNEL,
        )?;
        let (a, b) = (external(), external());
        let (fa, fb) = (a.new_fence(GFP_KERNEL)?, b.new_fence(GFP_KERNEL)?);
        let mut job = q.prepare(
            FakeJob {
                id: 1,
                hw: Some(FenceMemory::new(GFP_KERNEL)?),
            },
            1,
            GFP_KERNEL,
        )?;
        job.add_dependency(fa.fence(), GFP_KERNEL)?;
        job.add_dependency(fb.fence(), GFP_KERNEL)?;
        let done = q.push(job, false)?;
        fa.signal_error(EIO);
        q.flush();
        // Still waiting for the other dependency.
        assert!(q.ops().0.order.lock().is_empty());
        assert!(!done.is_signaled());
        fb.signal();
        q.flush();
        assert_eq!(q.ops().0.order.lock().len(), 1);
        assert!(!done.is_signaled());
        end_on(&q.ops().0, 1);
        assert_eq!(finishes(&done), Ok(true));
        assert_eq!(done.status(), Err(EIO));
        Ok(())
    }

    #[test]
    fn the_watchdog_fires_with_no_waiter() -> Result {
        let q = queue(64, 8, 20)?;
        let hung = push(&q, 1, &[])?;
        let next = push(&q, 2, &[])?;
        poll_signalled(&hung);
        assert_eq!(hung.status(), Err(ETIMEDOUT));
        assert!(q.ops().timeouts.load(Ordering::Relaxed) >= 1);
        // The watchdog goes on with the next job.
        poll_signalled(&next);
        assert_eq!(next.status(), Err(ETIMEDOUT));
        Ok(())
    }

    #[test]
    fn stop_fails_the_queued_jobs() -> Result {
        let q = queue(64, 8, 10_000)?;
        let a = external();
        let fa = a.new_fence(GFP_KERNEL)?;
        let running = push(&q, 1, &[])?;
        let queued = push(&q, 2, &[fa.fence()])?;
        assert_eq!(&*started(&q)?, &[1]);
        q.stop(ENODEV);
        assert!(matches!(push(&q, 3, &[]), Err(e) if e == ESHUTDOWN));
        end(&q, 1);
        assert_eq!(finishes(&queued), Ok(true));
        assert_eq!(running.status(), Ok(true));
        assert_eq!(queued.status(), Err(ENODEV));
        assert_eq!(&*started(&q)?, &[1]);
        fa.signal();
        Ok(())
    }

    #[test]
    fn dropping_the_queue_cancels_its_jobs() -> Result {
        let a = external();
        let fa = a.new_fence(GFP_KERNEL)?;
        let q = queue(64, 8, 10_000)?;
        let waiting = push(&q, 1, &[fa.fence()])?;
        drop(q);
        assert_eq!(waiting.status(), Err(ECANCELED));
        // The job's callback went with it.
        fa.signal();
        Ok(())
    }

    #[test]
    fn a_driver_that_signals_done_needs_no_worker() -> Result {
        let q = KBox::pin_init(
            JobQueue::new(Ok::<_, Error>(Direct(fake(10_000)?)), 64, 8),
            GFP_KERNEL,
        )?;
        let mut done = KVec::new();
        for id in 1..=2 {
            let job = FakeJob {
                id,
                hw: Some(FenceMemory::new(GFP_KERNEL)?),
            };
            done.push(q.push(q.prepare(job, 1, GFP_KERNEL)?, false)?, GFP_KERNEL)?;
        }
        let (Some(one), Some(two)) = (done.first(), done.get(1)) else {
            return Err(EINVAL);
        };
        // Started by `push()` itself, with no worker.
        assert_eq!(q.ops().0.order.lock().len(), 2);
        assert_eq!(q.jobs(), (2, 2));
        // The completion handler: the hardware ends job 2 first. Nothing else wakes the worker,
        // so whatever signals here signals from `signal_done()`.
        end_on(&q.ops().0, 2);
        q.signal_done();
        assert!(!one.is_signaled() && !two.is_signaled());
        end_on(&q.ops().0, 1);
        q.signal_done();
        assert_eq!(one.result(), Ok(true));
        assert_eq!(two.result(), Ok(true));
        // The worker retires them later, together.
        q.flush();
        assert_eq!(q.jobs(), (0, 0));
        Ok(())
    }

    #[test]
    fn a_driver_that_numbers_its_jobs_reports_how_they_ended() -> Result {
        let (q, done) = numbered(3, 10_000)?;
        let (Some(one), Some(two), Some(three)) = (done.first(), done.get(1), done.get(2)) else {
            return Err(EINVAL);
        };
        assert_eq!(q.jobs(), (3, 3));
        q.ended(Ended {
            through: 1,
            failed: None,
        });
        assert_eq!(one.result(), Ok(true));
        assert!(!two.is_signaled() && !three.is_signaled());
        // Job 2 fails; job 3 still runs.
        q.ended(Ended {
            through: 1,
            failed: Some((2..=2, EIO)),
        });
        assert_eq!(two.result(), Err(EIO));
        assert!(!three.is_signaled());
        // An older report changes nothing; job 3 then ends, and job 2 keeps its error.
        q.ended(Ended {
            through: 0,
            failed: None,
        });
        assert!(!three.is_signaled());
        q.ended(Ended {
            through: 3,
            failed: None,
        });
        assert_eq!(three.result(), Ok(true));
        assert_eq!(two.result(), Err(EIO));
        q.flush();
        assert_eq!(q.jobs(), (0, 0));
        Ok(())
    }

    #[test]
    fn the_watchdog_fails_a_numbered_job_with_no_waiter() -> Result {
        let (q, done) = numbered(2, 20)?;
        let (Some(hung), Some(next)) = (done.first(), done.get(1)) else {
            return Err(EINVAL);
        };
        poll_signalled(hung);
        assert_eq!(hung.status(), Err(ETIMEDOUT));
        assert!(q.ops().0.timeouts.load(Ordering::Relaxed) >= 1);
        // The watchdog goes on with the next job.
        poll_signalled(next);
        assert_eq!(next.status(), Err(ETIMEDOUT));
        Ok(())
    }

    #[test]
    fn the_ring_of_jobs_grows_without_reordering_them() -> Result {
        // One credit, and a ring of four slots.
        let q = queue(1, 2, 10_000)?;
        // Three jobs through, so that the ring does not start at its first slot.
        for id in 1..=3 {
            let done = push(&q, id, &[])?;
            end(&q, id);
            assert_eq!(finishes(&done), Ok(true));
            q.flush();
        }
        let running = push(&q, 4, &[])?;
        let waiting = push(&q, 5, &[])?;
        // What `push()` does when finished jobs fill the ring.
        let bigger = empty_slots(16, GFP_KERNEL)?;
        {
            let mut state = q.state.lock();
            state.grow(bigger);
            assert_eq!((state.len, state.running, state.slots.len()), (2, 1, 16));
        }
        end(&q, 4);
        assert_eq!(finishes(&running), Ok(true));
        assert_eq!(&*started(&q)?, &[1, 2, 3, 4, 5]);
        end(&q, 5);
        assert_eq!(finishes(&waiting), Ok(true));
        Ok(())
    }

    #[test]
    fn a_full_queue_waits_for_its_oldest_job() -> Result {
        let q = queue(64, 2, 10_000)?;
        let one = push(&q, 1, &[])?;
        push(&q, 2, &[])?;
        let ender = core::ptr::from_ref(q.ops()) as usize;
        // Ends job 1 from a worker while this task waits in `push()`.
        crate::workqueue::system_highpri().try_spawn(GFP_KERNEL, move || {
            fsleep(Delta::from_millis(20));
            // SAFETY: The queue outlives the wait below, which ends only when this signals.
            let fake = unsafe { &*(ender as *const Fake) };
            let fence = fake.started.lock().remove(0).ok();
            if let Some((_, fence)) = fence {
                fence.signal();
            }
        })?;
        let three = push(&q, 3, &[])?;
        assert!(one.is_signaled());
        assert_eq!(&*started(&q)?, &[1, 2, 3]);
        end(&q, 2);
        end(&q, 3);
        assert_eq!(finishes(&three), Ok(true));
        Ok(())
    }

    #[cfg(all(CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS))]
    #[test]
    fn reserved_jobs_are_queued_without_allocating() -> Result {
        // A ring of 8 slots, 7 of them reserved: the second job of others needs more room.
        let q = queue(64, 4, 10_000)?;
        let mut room = q.reserve(7)?;
        let (one, two) = (push(&q, 1, &[])?, push(&q, 2, &[])?);
        end(&q, 1);
        end(&q, 2);
        assert_eq!((finishes(&one), finishes(&two)), (Ok(true), Ok(true)));
        let mut jobs = KVec::with_capacity(4, GFP_KERNEL)?;
        for id in 3..7 {
            jobs.push(prepare(&q, id, 1)?, GFP_KERNEL)?;
        }
        let mut fences = KVec::with_capacity(3, GFP_KERNEL)?;
        let mut last = None;
        {
            // Every allocation would fail: the reserved jobs need none.
            let armed = crate::fault_inject::FailNth::arm(1)?;
            for _ in 0..3 {
                if let Some(job) = jobs.pop() {
                    let fence = q.enqueue_reserved(job, &mut room, false)?;
                    fences.push_within_capacity(fence).map_err(|_| ENOMEM)?;
                }
            }
            assert!(!armed.fired());
            assert_eq!(room.room(), 4);
            if let Some(job) = jobs.pop() {
                last = Some(q.enqueue_reserved(job, &mut room, false));
            }
        }
        // The reservation had room for 7 jobs; the fourth takes a fourth.
        assert!(last.is_some_and(|r| r.is_ok()));
        drop(room);
        q.start();
        for id in 3..7 {
            end(&q, id);
        }
        for f in fences.iter() {
            assert_eq!(finishes(f), Ok(true));
        }
        // Used up or of another queue: refused.
        let other = queue(64, 4, 10_000)?;
        let mut theirs = other.reserve(1)?;
        assert_eq!(
            q.enqueue_reserved(prepare(&q, 9, 1)?, &mut theirs, false)
                .err(),
            Some(EINVAL)
        );
        let mut none = q.reserve(0)?;
        assert_eq!(
            q.enqueue_reserved(prepare(&q, 9, 1)?, &mut none, false)
                .err(),
            Some(EINVAL)
        );
        Ok(())
    }

    #[cfg(all(CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS))]
    #[test]
    fn submission_allocation_failures() -> Result {
        let q = queue(64, 8, 10_000)?;
        let (a, b) = (external(), external());
        let (fa, fb) = (a.new_fence(GFP_KERNEL)?, b.new_fence(GFP_KERNEL)?);
        let mut id = 0;
        let walk = crate::fault_inject::walk_allocations(
            20,
            || {
                id += 1;
                push(&q, id, &[fa.fence(), fb.fence()])
            },
            |result, failed| {
                // A failed submission leaves nothing in the queue.
                match result {
                    Err(e) => assert!(failed && e == ENOMEM && q.jobs().0 == 0),
                    Ok(done) => assert!(!done.is_signaled() && q.jobs().0 == 1),
                }
                Ok(())
            },
        )?;
        assert!(walk.failed >= 4 && walk.recovered == 0);
        let done = q.push(prepare(&q, 100, 1)?, false)?;
        fa.signal();
        fb.signal();
        assert_eq!(&*started(&q)?, &[id, 100]);
        end(&q, id);
        end(&q, 100);
        assert_eq!(finishes(&done), Ok(true));
        Ok(())
    }
}
