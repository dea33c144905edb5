// SPDX-License-Identifier: GPL-2.0

//! The command engine: a job queue in front of the ring, the hardware fences, the interrupt
//! handlers and error recovery.
//!
//! A submission prepares a job (which allocates everything it needs, its hardware fence
//! included), adds the fences it depends on and pushes it to the engine's [`JobQueue`], which
//! returns the job's finished fence without waiting. The queue's worker writes the job to the
//! ring once its dependencies have signalled and the ring has room ([`Hw::run`]): its `COPY`
//! and `FILL` commands followed by a `FENCE` command whose seqno is the hardware fence's and
//! which raises the completion vector. Jobs are written in fence order under the ring lock, so
//! `FENCE_SEQNO` names the last completed job and every job up to it is done. The completion
//! handler signals those jobs' hardware fences, and the queue their finished fences.
//!
//! When the device stops on an error, the error handler (a threaded handler, it sleeps) fails
//! the job that contains the failing command with [`EIO`], resets the device, which discards
//! the commands still in the ring, and writes the later jobs to the ring again. The queue's
//! watchdog fails a job that has been the oldest in flight for [`job_timeout_ms()`] with
//! [`ETIMEDOUT`] the same way, whether or not anybody waits for it.

mod job;

use core::sync::atomic::{
    AtomicBool,
    AtomicU64,
    Ordering, //
};

use kernel::{
    device::Bound,
    dma_fence::{
        queue::{
            JobQueue,
            PreparedJob,
            QueueOps,
            Run, //
        },
        Fence,
        FenceContext,
        FenceMemory,
        FenceTimeline, //
    },
    io::{
        poll::read_poll_timeout,
        Io, //
    },
    irq::{
        self,
        IrqReturn, //
    },
    new_mutex, new_spinlock_irq, pci,
    prelude::*,
    sync::{
        aref::ARef,
        barrier::{
            mb,
            Full, //
        },
        Arc,
        Mutex,
        SpinLockIrq, //
    },
    time::Delta,
};

use crate::{
    driver::Object,
    mmu::address_space::KeptTables,
    regs::{
        self,
        Bar0,
        Bar2,
        State,
        CTL_BAR,
        CTL_SIZE,
        SLOT_SIZE, //
    },
};

pub(crate) use job::Command;
use job::{
    Job,
    Pending, //
};

/// How long a reset may take. The device model may run under an emulator without
/// acceleration, where a doorbell takes milliseconds.
const RESET_TIMEOUT: Delta = Delta::from_secs(5);

/// How long a job may be the oldest in flight, in milliseconds: the `job_timeout_ms` module
/// parameter, 10 seconds by default.
pub(crate) fn job_timeout_ms() -> u32 {
    crate::module_parameters::job_timeout_ms
        .value()
        .clamp(1, 600_000)
}

/// The most commands in one job.
pub(crate) const MAX_JOB_COMMANDS: usize = 64;

/// The most jobs an engine's queue holds, waiting or in flight.
const MAX_QUEUED: usize = 1024;

/// The hardware fence timeline of an engine.
pub(crate) struct Timeline;

impl FenceTimeline for Timeline {
    const DRIVER_NAME: &'static CStr = c"conflux";
    const TIMELINE_NAME: &'static CStr = c"engine";
}

/// The timeline of the finished fences, the ones userspace and other drivers see.
pub(crate) struct Jobs;

impl FenceTimeline for Jobs {
    const DRIVER_NAME: &'static CStr = c"conflux";
    const TIMELINE_NAME: &'static CStr = c"jobs";
}

/// A job of the engine's queue: what it runs, and what it keeps alive until it has finished.
pub(crate) struct EngineJob {
    root: u64,
    commands: KVec<Command>,
    /// The memory of the hardware fence, taken when the job is written to the ring.
    hw: Option<FenceMemory>,
    /// The buffers the job uses.
    _buffers: KVec<ARef<Object>>,
    /// The page tables of the job's VM, which may be gone before the job.
    _tables: Option<Arc<KeptTables>>,
}

/// What the worker and recovery share: the ring head and the MMU root the driver last wrote.
struct Ring {
    head: u32,
    root: u64,
}

/// Counters of the device, in bytes and commands.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) local_bytes: u64,
    pub(crate) p2p_bytes: u64,
    pub(crate) sysmem_bytes: u64,
    pub(crate) commands: u64,
    pub(crate) errors: u64,
}

/// The ring of a bound device: what the engine's queue runs jobs on.
///
/// # Invariants
///
/// `ring_offset..ring_offset + ring_slots * SLOT_SIZE` lies inside `bar2`, `ring_slots` is a
/// power of two of at least [`MAX_JOB_COMMANDS`] + 1 and `ring_mask` is `ring_slots - 1`.
#[pin_data]
pub(crate) struct Hw<'bound> {
    pdev: &'bound pci::Device<Bound>,
    doorbell: Bar0<'bound>,
    bar2: Arc<Bar2<'bound>>,
    ring_offset: usize,
    ring_slots: u32,
    /// `ring_slots - 1`: a ring counter masked with it is a slot index.
    ring_mask: u32,
    fences: FenceContext<Timeline>,
    /// The last bogus `FENCE_SEQNO` logged.
    bogus: AtomicU64,
    /// The device failed to confirm a reset. Set with the ring lock held, and never cleared.
    wedged: AtomicBool,
    /// The last read of `FENCE_SEQNO` found it torn (logged once until a read succeeds).
    torn: AtomicBool,
    /// Serialises writing jobs to the ring and recovery.
    #[pin]
    ring: Mutex<Ring>,
    /// Taken by the completion handler.
    #[pin]
    pending: SpinLockIrq<Pending>,
}

/// The command engine of a bound device: its queue, and the ring behind it.
#[pin_data(PinnedDrop)]
pub(crate) struct Engine<'bound> {
    #[pin]
    queue: JobQueue<Hw<'bound>, EngineJob, Jobs>,
}

impl<'bound> Engine<'bound> {
    /// Takes over the device's doorbell and control block, resets it and checks its ring
    /// registers: the ring lies between the control block and VRAM, which starts at BAR2
    /// offset `vram_offset`, and holds the largest job.
    pub(crate) fn new(
        pdev: &'bound pci::Device<Bound>,
        doorbell: Bar0<'bound>,
        bar2: Arc<Bar2<'bound>>,
        vram_offset: u64,
    ) -> Result<Arc<Self>> {
        reset(pdev, &doorbell, &bar2)?;
        let ring_offset = regs::read64::<regs::RING_OFFSET>(&bar2)?.offset().get();
        let ring_size = regs::read64::<regs::RING_SIZE>(&bar2)?.bytes().get();
        let bar_len = pdev.resource_len(CTL_BAR)?.min(vram_offset);
        let slots = ring_size / SLOT_SIZE as u64;
        let fits = ring_offset >= CTL_SIZE as u64
            && matches!(ring_offset.checked_add(ring_size), Some(end) if end <= bar_len);
        let min_slots = MAX_JOB_COMMANDS as u64 + 1;
        if !fits || !slots.is_power_of_two() || slots < min_slots || slots > u64::from(u32::MAX) {
            dev_err!(
                pdev,
                "probe: ring at {:#x}, {:#x} bytes: not {}..{} slots of {} bytes in {:#x}..{:#x}\n",
                ring_offset,
                ring_size,
                min_slots,
                u32::MAX,
                SLOT_SIZE,
                CTL_SIZE,
                bar_len
            );
            return Err(EIO);
        }
        let head = bar2.read(regs::RING_HEAD).count().get();
        let root = regs::read64::<regs::MMU_ROOT>(&bar2)?.offset().get();
        let ring_slots = u32::try_from(slots)?;
        let ring_mask = ring_slots - 1;
        let hw = try_pin_init!(Hw {
            pdev,
            doorbell,
            bar2,
            ring_offset: usize::try_from(ring_offset)?,
            ring_slots,
            ring_mask,
            fences: FenceContext::new(),
            bogus: AtomicU64::new(0),
            wedged: AtomicBool::new(false),
            torn: AtomicBool::new(false),
            ring <- new_mutex!(Ring { head, root }),
            pending <- new_spinlock_irq!(Pending::new()?),
        }? Error);
        Arc::pin_init(
            try_pin_init!(Self {
                queue <- JobQueue::new(hw, ring_slots, MAX_QUEUED),
            }),
            GFP_KERNEL,
        )
    }

    fn hw(&self) -> &Hw<'bound> {
        self.queue.ops()
    }

    /// The device's counters.
    pub(crate) fn counters(&self) -> Result<Counters> {
        let bar2 = &self.hw().bar2;
        Ok(Counters {
            local_bytes: regs::read64::<regs::CNT_LOCAL_BYTES>(bar2)?.count().get(),
            p2p_bytes: regs::read64::<regs::CNT_P2P_BYTES>(bar2)?.count().get(),
            sysmem_bytes: regs::read64::<regs::CNT_SYSMEM_BYTES>(bar2)?.count().get(),
            commands: regs::read64::<regs::CNT_COMMANDS>(bar2)?.count().get(),
            errors: regs::read64::<regs::CNT_ERRORS>(bar2)?.count().get(),
        })
    }

    /// Prepares a job of `commands` on the address space whose level-3 table is at VRAM offset
    /// `root`, which keeps `buffers` and the tables of its VM, `tables`, alive until it has
    /// finished. Allocates all the job needs.
    pub(crate) fn prepare(
        &self,
        root: u64,
        commands: KVec<Command>,
        buffers: KVec<ARef<Object>>,
        tables: Option<Arc<KeptTables>>,
    ) -> Result<PreparedJob<'_, Hw<'bound>, EngineJob, Jobs>> {
        if commands.is_empty() || commands.len() > MAX_JOB_COMMANDS {
            return Err(EINVAL);
        }
        // The commands and the fence.
        let credits = commands.len() as u32 + 1;
        let job = EngineJob {
            root,
            commands,
            hw: Some(FenceMemory::new(GFP_KERNEL)?),
            _buffers: buffers,
            _tables: tables,
        };
        self.queue.prepare(job, credits, GFP_KERNEL)
    }

    /// Queues `job` and returns its finished fence. Waits while the queue is full:
    /// [`ERESTARTSYS`] when `interruptible` and a signal comes first.
    pub(crate) fn push(
        &self,
        job: PreparedJob<'_, Hw<'bound>, EngineJob, Jobs>,
        interruptible: bool,
    ) -> Result<ARef<Fence>> {
        self.queue.push(job, interruptible)
    }

    /// As [`Self::push`], but the job waits for [`Self::start`] (or the queue's worker): for a
    /// caller that holds the reservation locks of the job's buffers, which writing the job to
    /// the ring need not hold.
    pub(crate) fn enqueue(
        &self,
        job: PreparedJob<'_, Hw<'bound>, EngineJob, Jobs>,
        interruptible: bool,
    ) -> Result<ARef<Fence>> {
        self.queue.enqueue(job, interruptible)
    }

    /// Starts the queued jobs that nothing holds back.
    pub(crate) fn start(&self) {
        self.queue.start();
    }

    /// Submits a job of `commands` on the address space at `root`, without dependencies, and
    /// returns its finished fence. Waits, not interruptibly, while the queue is full.
    pub(crate) fn submit(&self, root: u64, commands: KVec<Command>) -> Result<ARef<Fence>> {
        let job = self.prepare(root, commands, KVec::new(), None)?;
        self.push(job, false)
    }

    /// Drops the jobs whose fences have signalled, and with them the buffers they hold, before
    /// returning; the queue otherwise does it a little later. Sleeps.
    pub(crate) fn retire_finished(&self) {
        self.queue.flush();
    }

    /// Whether the device failed to confirm a reset: it runs no more jobs.
    pub(crate) fn is_wedged(&self) -> bool {
        self.hw().is_wedged()
    }

    /// Handles the error vector: the device recorded an error and stopped.
    fn error(&self) {
        self.hw().error();
        self.queue.signal_done();
    }

    /// Signals the hardware fences of the jobs that completed.
    fn complete(&self) {
        self.hw().complete();
        self.queue.signal_done();
    }
}

#[pinned_drop]
impl PinnedDrop for Engine<'_> {
    fn drop(self: Pin<&mut Self>) {
        // Stop the device first: the commands still in the ring are discarded. The queue then
        // cancels its jobs: their fences signal `ECANCELED`.
        let hw = self.hw();
        let mut ring = hw.ring.lock();
        if !hw.is_wedged() && reset(hw.pdev, &hw.doorbell, &hw.bar2).is_err() {
            hw.wedge(&mut ring);
        }
    }
}

impl QueueOps for Hw<'_> {
    type Job = EngineJob;
    type Timeline = Jobs;
    const IN_ORDER: bool = true;
    const SIGNALS_DONE: bool = true;

    /// Writes `job` to the ring. Waits for the engine to go idle before it switches to another
    /// address space, and for room in the ring and in the table of jobs in flight.
    fn run(&self, job: &mut EngineJob, idle: bool) -> Run {
        let mut ring = self.ring.lock();
        if self.is_wedged() {
            return Run::Failed(ENODEV);
        }
        let need = job.commands.len() as u32 + 1;
        let tail = self.bar2.read(regs::RING_TAIL).count().get();
        let used = ring.head.wrapping_sub(tail);
        // Held until the job is in the table: only the completion handler takes it meanwhile.
        let mut pending = self.pending.lock();
        let full = pending.is_full() || used.saturating_add(need) > self.ring_slots;
        if (job.root != ring.root || full) && !idle {
            return Run::Later;
        }
        if job.root != ring.root {
            let root = regs::MMU_ROOT::zeroed().with_offset(job.root);
            if let Err(e) = regs::write64(&self.bar2, root) {
                return Run::Failed(e);
            }
            ring.root = job.root;
        }
        let Some(memory) = job.hw.take() else {
            return Run::Failed(EINVAL);
        };
        let fence = self.fences.init_fence(memory);
        let shared = fence.shared();
        let job = Job {
            seqno: shared.seqno(),
            fence,
            commands: core::mem::take(&mut job.commands),
        };
        let head = match self.write_job(ring.head, &job) {
            Ok(head) => head,
            Err(e) => return Run::Failed(e),
        };
        if pending.push(job).is_err() {
            // Not reached: the table was not full and only this worker adds jobs. The dropped
            // job's fence signals `ECANCELED`.
            return Run::Failed(EBUSY);
        }
        drop(pending);
        ring.head = head;
        self.publish(head);
        Run::Started(shared)
    }

    fn timed_out(&self, hw: &Fence) {
        self.timed_out(hw.seqno());
    }

    fn timeout(&self) -> Delta {
        Delta::from_millis(i64::from(job_timeout_ms()))
    }

    /// A job that ran on a device that then failed to confirm its reset may still be using its
    /// memory: it is never given back.
    fn finished(&self, job: EngineJob, _result: Result) {
        if job.hw.is_none() && self.is_wedged() {
            core::mem::forget(job);
        }
    }
}

impl Hw<'_> {
    fn is_wedged(&self) -> bool {
        self.wedged.load(Ordering::Acquire)
    }

    /// Writes the slots of `job` from ring counter `head` on and returns the new head.
    fn write_job(&self, mut head: u32, job: &Job) -> Result<u32> {
        for slot in job.slots() {
            let offset = self.ring_offset + (head & self.ring_mask) as usize * SLOT_SIZE;
            slot.write(&self.bar2, offset)?;
            head = head.wrapping_add(1);
        }
        Ok(head)
    }

    /// Publishes the ring head and rings the doorbell, unless the engine is awake: it then
    /// reads the head without one (device.rst, "Skipping the doorbell"). MMIO writes are
    /// ordered, so the device sees the slots before the head and the head before the doorbell;
    /// the full barrier orders the head before the read of `RING_POLL`, so that an engine that
    /// goes to sleep after that read looks at the head once more.
    fn publish(&self, head: u32) {
        self.bar2
            .write_reg(regs::RING_HEAD::zeroed().with_count(head));
        mb(Full);
        if !self.bar2.read(regs::RING_POLL).awake() {
            ring_doorbell(&self.doorbell);
        }
    }

    /// Signals the fences of the jobs that completed. Runs in the completion handler.
    ///
    /// `FENCE_SEQNO` must name a job between the one before the oldest in flight and the newest
    /// written: any other value is not one the device could have reached, and is ignored (the
    /// watchdog then recovers the device). A value whose high half changes under each of the
    /// reads of [`regs::read64`] is left to the watchdog as well.
    fn complete(&self) {
        let Ok(done) = regs::read64::<regs::FENCE_SEQNO>(&self.bar2) else {
            // Its high half changed under every read: the watchdog looks again later.
            if !self.torn.swap(true, Ordering::Relaxed) {
                dev_err!(
                    self.pdev,
                    "engine: FENCE_SEQNO changed under each of its reads; left to the watchdog\n"
                );
            }
            return;
        };
        self.torn.store(false, Ordering::Relaxed);
        let done = done.seqno().get();
        let mut pending = self.pending.lock();
        let (Some(oldest), Some(newest)) = (
            pending.front().map(|job| job.seqno),
            pending.back().map(|job| job.seqno),
        ) else {
            return;
        };
        if done > newest || done.saturating_add(1) < oldest {
            drop(pending);
            // Once per bogus value: the device may keep it for many interrupts.
            if self.bogus.swap(done, Ordering::Relaxed) != done {
                dev_err!(
                    self.pdev,
                    "engine: FENCE_SEQNO {} is not a job in flight ({} to {}); ignored\n",
                    done,
                    oldest,
                    newest
                );
            }
            return;
        }
        while pending.front().is_some_and(|job| job.seqno <= done) {
            if let Some(job) = pending.pop() {
                job.fence.signal();
            }
        }
    }

    /// Resets the device, then signals the jobs it completed, fails the oldest job left with
    /// `error` if it is job `culprit`, or with [`ECANCELED`] (the reset interrupted it) if it is
    /// not, and writes the later jobs to the ring again. No job runs twice, and no fence
    /// signals before the device has confirmed that it stopped: if it does not, the device is
    /// wedged. The caller holds the ring lock.
    fn recover(&self, ring: &mut Ring, error: Error, culprit: u64) -> Result {
        if let Err(e) = reset(self.pdev, &self.doorbell, &self.bar2) {
            self.wedge(ring);
            return Err(e);
        }
        self.complete();
        let failed = self.pending.lock().pop();
        if let Some(job) = failed {
            job.fence.signal_error(if job.seqno == culprit {
                error
            } else {
                ECANCELED
            });
        }
        let mut head = self.bar2.read(regs::RING_TAIL).count().get();
        let pending = self.pending.lock();
        for job in pending.iter() {
            head = self.write_job(head, job)?;
        }
        drop(pending);
        ring.head = head;
        self.publish(head);
        Ok(())
    }

    /// Handles the error vector: the device recorded an error and stopped.
    fn error(&self) {
        let mut ring = self.ring.lock();
        if self.is_wedged() || self.bar2.read(regs::STATUS).state() != State::Error {
            return;
        }
        let cause = self.bar2.read(regs::ERR_CAUSE);
        let opcode = self.bar2.read(regs::ERR_OPCODE).opcode().get();
        let va = regs::read64::<regs::ERR_VA>(&self.bar2).map_or(0, |r| r.va().get());
        let seqno = regs::read64::<regs::ERR_SEQNO>(&self.bar2).map_or(0, |r| r.seqno().get());
        dev_err!(
            self.pdev,
            "engine: job {} failed: cause {} ({}), opcode {}, VA {:#x}; resetting\n",
            seqno,
            cause.into_raw(),
            cause.cause().name(),
            opcode,
            va
        );
        if let Err(e) = self.recover(&mut ring, EIO, seqno) {
            dev_err!(self.pdev, "engine: recovery failed: {:?}\n", e);
        }
    }

    /// Called when job `seqno` did not complete within [`job_timeout_ms()`]: fails the oldest job
    /// in flight with [`ETIMEDOUT`] if it is that job or an earlier one, which has been in flight
    /// at least as long, and recovers the engine.
    fn timed_out(&self, seqno: u64) {
        let mut ring = self.ring.lock();
        if self.is_wedged() {
            return;
        }
        self.complete();
        let Some(oldest) = self.pending.lock().front().map(|job| job.seqno) else {
            return;
        };
        if oldest > seqno {
            // Job `seqno` completed meanwhile.
            return;
        }
        dev_err!(
            self.pdev,
            "engine: job {} did not complete in {} ms; resetting\n",
            oldest,
            job_timeout_ms()
        );
        if let Err(e) = self.recover(&mut ring, ETIMEDOUT, oldest) {
            dev_err!(self.pdev, "engine: recovery failed: {:?}\n", e);
        }
    }

    /// The device did not confirm a reset: it may still be running, so the memory of its jobs
    /// in flight is never given back ([`QueueOps::finished`]). Their fences, and the ones of
    /// every later job, fail with [`ENODEV`].
    fn wedge(&self, _ring: &mut Ring) {
        self.wedged.store(true, Ordering::Release);
        dev_err!(
            self.pdev,
            "engine: reset not confirmed: the device is wedged, its jobs fail with -ENODEV\n"
        );
        loop {
            let job = self.pending.lock().pop();
            match job {
                Some(job) => job.fence.signal_error(ENODEV),
                None => break,
            }
        }
    }
}

/// Rings the engine's doorbell: vector 0 of peer 0.
fn ring_doorbell(doorbell: &Bar0<'_>) {
    doorbell.write_reg(regs::DOORBELL::zeroed());
}

/// Resets the device: every queued command is discarded and the error record cleared.
fn reset(pdev: &pci::Device<Bound>, doorbell: &Bar0<'_>, bar2: &Bar2<'_>) -> Result {
    bar2.write_reg(regs::CONTROL::zeroed().with_reset(true));
    ring_doorbell(doorbell);
    read_poll_timeout(
        || Ok((bar2.read(regs::CONTROL), bar2.read(regs::STATUS))),
        |(control, status)| !control.reset() && status.state() == State::Ready,
        Delta::from_millis(1),
        RESET_TIMEOUT,
    )
    .map(|_| ())
    .inspect_err(|_| {
        dev_err!(
            pdev,
            "reset: not done after {} ms (CONTROL {:#x}, STATUS {:?})\n",
            RESET_TIMEOUT.as_millis(),
            bar2.read(regs::CONTROL).into_raw(),
            bar2.read(regs::STATUS).state()
        );
    })
}

/// The handler of the completion vector.
pub(crate) struct CompletionIrq<'bound>(pub(crate) Arc<Engine<'bound>>);

impl irq::Handler for CompletionIrq<'_> {
    fn handle(&self) -> IrqReturn {
        self.0.complete();
        IrqReturn::Handled
    }
}

/// The handler of the error vector; recovery sleeps, so it runs in the handler's thread.
pub(crate) struct ErrorIrq<'bound>(pub(crate) Arc<Engine<'bound>>);

impl irq::ThreadedHandler for ErrorIrq<'_> {
    fn handle_threaded(&self) -> IrqReturn {
        self.0.error();
        IrqReturn::Handled
    }
}
