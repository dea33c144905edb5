// SPDX-License-Identifier: GPL-2.0

//! The command engine: a job queue in front of the ring, the interrupt handlers and error
//! recovery.
//!
//! A submission prepares a job (which allocates everything it needs), adds the fences it
//! depends on and pushes it to the engine's [`JobQueue`], which returns the job's finished
//! fence without waiting. The queue's worker writes the job to the ring once its dependencies
//! have signalled and the ring has room ([`Hw::run`]): its `COPY` and `FILL` commands followed
//! by a `FENCE` command which raises the completion vector. The jobs are numbered in the order
//! they are written, under the ring lock, and each command carries its job's number as its
//! seqno, so `FENCE_SEQNO` names the last completed job and every job up to it is done. The
//! completion handler tells the queue so ([`JobQueue::ended`]), which signals their finished
//! fences: a job needs no hardware fence.
//!
//! When the device stops on an error, the error handler (a threaded handler, it sleeps) resets
//! the device, which discards the commands still in the ring, fails the job that contains the
//! failing command with [`EIO`], and writes the later jobs to the ring again. The queue's
//! watchdog fails a job that has been the oldest in flight for [`job_timeout_ms()`] with
//! [`ETIMEDOUT`] the same way, whether or not anybody waits for it.

mod job;
mod userq;

use core::sync::atomic::{
    AtomicBool,
    AtomicU64,
    Ordering, //
};

use kernel::{
    device::Bound,
    dma_fence::{
        queue::{
            Ended,
            JobQueue,
            PreparedJob,
            QueueOps,
            Reservation,
            Run,
            Running, //
        },
        Fence,
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
    ratelimit::RateLimit,
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
    gem::moves::MoveKeep,
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
    vm::queue::BindState,
};

pub(crate) use job::Command;
use job::{
    Job,
    Pending, //
};
use userq::UserQueues;
pub(crate) use userq::{
    QueueId,
    Woken, //
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
    /// The job was written to the ring.
    ran: bool,
    /// The buffers the job uses.
    _buffers: KVec<ARef<Object>>,
    /// The page tables of the job's VM, which may be gone before the job.
    _tables: Option<Arc<KeptTables>>,
    /// For the last job of a move: the memory the buffer left, and the window's addresses.
    pub(crate) moved: Option<MoveKeep>,
    /// What the binds of queues whose entries were not all in VRAM at the submission keep: the
    /// job may walk the entries they replace.
    pub(crate) binds: KVec<Arc<BindState>>,
}

/// What the worker and recovery share: the ring head and the MMU root the driver last wrote,
/// and the number of the next job written.
struct Ring {
    head: u32,
    root: u64,
    next: u64,
    /// A recovery wrote the jobs it did not end to the ring again, and the queue has not yet
    /// learnt how the others ended: the head is published only then ([`Hw::restart`]), so that
    /// no later job can be reported complete before the failed one is reported failed.
    held: bool,
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
    /// The last bogus `FENCE_SEQNO` logged.
    bogus: AtomicU64,
    /// The device failed to confirm a reset. Set with the ring lock held, and never cleared.
    wedged: AtomicBool,
    /// The last read of `FENCE_SEQNO` found it torn (logged once until a read succeeds).
    torn: AtomicBool,
    /// Limits the lines about failed and hung jobs, which userspace can cause at will.
    #[pin]
    log_limit: RateLimit,
    /// Serialises writing jobs to the ring and recovery.
    #[pin]
    ring: Mutex<Ring>,
    /// Taken by the completion handler.
    #[pin]
    pending: SpinLockIrq<Pending>,
    /// The user queues.
    #[pin]
    queues: UserQueues,
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
    /// offset `vram_offset`, and holds the largest job. A device with `CAP_QUEUES` in `caps`
    /// has user queues too.
    pub(crate) fn new(
        pdev: &'bound pci::Device<Bound>,
        doorbell: Bar0<'bound>,
        bar2: Arc<Bar2<'bound>>,
        vram_offset: u64,
        caps: u32,
    ) -> Result<Arc<Self>> {
        reset(pdev, &doorbell, &bar2)?;
        let queues = UserQueues::new(&bar2, caps, vram_offset)?;
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
        // The device keeps `FENCE_SEQNO` across resets, and so across bindings: the jobs are
        // numbered on from it, so that a value an earlier binding left is never taken for the
        // completion of a job of this one. Half of the range is left to count in.
        let last = regs::read64::<regs::FENCE_SEQNO>(&bar2)?.seqno().get();
        if last > u64::MAX / 2 {
            dev_err!(
                pdev,
                "probe: FENCE_SEQNO {:#x} leaves no room to count jobs\n",
                last
            );
            return Err(EIO);
        }
        let ring_slots = u32::try_from(slots)?;
        let ring_mask = ring_slots - 1;
        let hw = try_pin_init!(Hw {
            pdev,
            doorbell,
            bar2,
            ring_offset: usize::try_from(ring_offset)?,
            ring_slots,
            ring_mask,
            bogus: AtomicU64::new(0),
            wedged: AtomicBool::new(false),
            torn: AtomicBool::new(false),
            log_limit <- RateLimit::log_lines(),
            ring <- new_mutex!(Ring {
                head,
                root,
                next: last + 1,
                held: false,
            }),
            pending <- new_spinlock_irq!(Pending::new(last)?),
            queues <- queues,
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
    /// finished.
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
            ran: false,
            _buffers: buffers,
            _tables: tables,
            moved: None,
            binds: KVec::new(),
        };
        self.queue.prepare(job, credits, GFP_KERNEL_ACCOUNT)
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

    /// Room for `n` jobs that [`Self::enqueue_reserved`] queues without allocating.
    pub(crate) fn reserve(&self, n: usize) -> Result<Reservation<'_, Hw<'bound>, EngineJob, Jobs>> {
        self.queue.reserve(n)
    }

    /// As [`Self::enqueue`], not interruptibly, in room of `reservation`: fails only when the
    /// queue is stopped, with [`ESHUTDOWN`], as it is when the device goes away.
    pub(crate) fn enqueue_reserved(
        &self,
        job: PreparedJob<'_, Hw<'bound>, EngineJob, Jobs>,
        reservation: &mut Reservation<'_, Hw<'bound>, EngineJob, Jobs>,
    ) -> Result<ARef<Fence>> {
        self.queue.enqueue_reserved(job, reservation, false)
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

    /// Handles the error vector: the device recorded an error and stopped. The queue learns how
    /// the jobs ended before the device runs the later ones.
    fn error(&self) {
        if let Some(ended) = self.hw().error() {
            self.queue.ended(ended);
            self.hw().restart();
        }
    }

    /// Tells the queue which jobs completed, and wakes the waiters of user queues that counted
    /// events.
    fn complete(&self) {
        self.scan_queues();
        if let Some(through) = self.hw().complete() {
            self.queue.ended(Ended {
                through,
                failed: None,
            });
        }
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
            // The queue fails every job when dropped: this one's end need not reach it.
            let _ = hw.wedge(&mut ring);
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
        job.ran = true;
        let seqno = ring.next;
        let job = Job {
            seqno,
            commands: core::mem::take(&mut job.commands),
        };
        let head = match self.write_job(ring.head, &job) {
            Ok(head) => head,
            Err(e) => return Run::Failed(e),
        };
        if pending.push(job).is_err() {
            // Not reached: the table was not full and only this worker adds jobs.
            return Run::Failed(EBUSY);
        }
        drop(pending);
        ring.next += 1;
        ring.head = head;
        if !ring.held {
            self.publish(head);
        }
        Run::Numbered(seqno)
    }

    fn timed_out(&self, job: Running<'_>) -> Ended {
        match job {
            Running::Numbered(seqno) => self.timed_out(seqno),
            Running::Fence(_) => Ended::default(),
        }
    }

    fn timeout(&self) -> Delta {
        Delta::from_millis(i64::from(job_timeout_ms()))
    }

    /// Publishes the ring's head that a recovery held back ([`Ring::held`]).
    fn restart(&self) {
        let mut ring = self.ring.lock();
        if ring.held && !self.is_wedged() {
            ring.held = false;
            self.publish(ring.head);
        }
    }

    /// A job that ran on a device that then failed to confirm its reset may still be using its
    /// memory: it is never given back.
    fn finished(&self, job: EngineJob, _result: Result) {
        if job.ran && self.is_wedged() {
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

    /// Drops the jobs that completed from the table of jobs in flight, and returns the number
    /// of the last, which the queue is to learn ([`JobQueue::ended`]). Runs in the completion
    /// handler.
    ///
    /// `FENCE_SEQNO` must lie between the last value taken and the newest job written: it
    /// stays below jobs that failed (it may then name no job in flight), and any other value is
    /// not one the device could have reached, and is ignored (the watchdog then recovers the
    /// device). A value whose high half changes under each of the reads of [`regs::read64`] is
    /// left to the watchdog as well.
    fn complete(&self) -> Option<u64> {
        let Ok(done) = regs::read64::<regs::FENCE_SEQNO>(&self.bar2) else {
            // Its high half changed under every read: the watchdog looks again later.
            if !self.torn.swap(true, Ordering::Relaxed) {
                dev_err!(
                    self.pdev,
                    "engine: FENCE_SEQNO changed under each of its reads; left to the watchdog\n"
                );
            }
            return None;
        };
        self.torn.store(false, Ordering::Relaxed);
        let done = done.seqno().get();
        let mut pending = self.pending.lock();
        let newest = pending.back()?.seqno;
        if done > newest || done < pending.reached {
            let reached = pending.reached;
            drop(pending);
            // Once per bogus value: the device may keep it for many interrupts.
            if self.bogus.swap(done, Ordering::Relaxed) != done {
                dev_err!(
                    self.pdev,
                    "engine: FENCE_SEQNO {} is not a job in flight (it was {}, the newest job is \
                     {}); ignored\n",
                    done,
                    reached,
                    newest
                );
            }
            return None;
        }
        while pending.front().is_some_and(|job| job.seqno <= done) {
            pending.pop();
        }
        pending.reached = done;
        Some(done)
    }

    /// Resets the device, then returns how the jobs ended for the queue: the ones it completed,
    /// and the oldest job left, failed with `error` if it is job `culprit`, or with
    /// [`ECANCELED`] (the reset interrupted it) if it is not. Writes the later jobs to the ring
    /// again, but holds the head back until the queue has learnt how the others ended
    /// ([`QueueOps::restart`]): a later job that completed first would otherwise be reported
    /// before the failure, and the failed job's fence would signal success. No job runs twice,
    /// and no job is reported ended before the device has confirmed that it stopped: if it does
    /// not, the device is wedged. The caller holds the ring lock.
    fn recover(&self, ring: &mut Ring, error: Error, culprit: u64) -> Ended {
        self.queues_before_reset();
        if reset(self.pdev, &self.doorbell, &self.bar2).is_err() {
            return self.wedge(ring);
        }
        self.queues_after_reset();
        ring_doorbell(&self.doorbell);
        let mut ended = Ended {
            through: self.complete().unwrap_or(0),
            failed: None,
        };
        let failed = self.pending.lock().pop();
        if let Some(job) = failed {
            let error = if job.seqno == culprit {
                error
            } else {
                ECANCELED
            };
            ended.failed = Some((job.seqno..=job.seqno, error));
        }
        let mut head = self.bar2.read(regs::RING_TAIL).count().get();
        let pending = self.pending.lock();
        for job in pending.iter() {
            match self.write_job(head, job) {
                Ok(next) => head = next,
                Err(e) => {
                    // The jobs left never complete: the watchdog fails them.
                    dev_err!(self.pdev, "engine: recovery failed: {:?}\n", e);
                    break;
                }
            }
        }
        drop(pending);
        ring.head = head;
        ring.held = true;
        ended
    }

    /// Handles the error vector: the device recorded an error and stopped. Returns how the jobs
    /// ended, for the queue.
    fn error(&self) -> Option<Ended> {
        let mut ring = self.ring.lock();
        if self.is_wedged() || self.bar2.read(regs::STATUS).state() != State::Error {
            return None;
        }
        let cause = self.bar2.read(regs::ERR_CAUSE);
        let opcode = self.bar2.read(regs::ERR_OPCODE).opcode().get();
        let va = regs::read64::<regs::ERR_VA>(&self.bar2).map_or(0, |r| r.va().get());
        let seqno = regs::read64::<regs::ERR_SEQNO>(&self.bar2).map_or(0, |r| r.seqno().get());
        if self.log_limit.allow(c"conflux engine") {
            dev_err!(
                self.pdev,
                "engine: job {} failed: cause {} ({}), opcode {}, VA {:#x}; resetting\n",
                seqno,
                cause.into_raw(),
                cause.cause().name(),
                opcode,
                va
            );
        }
        Some(self.recover(&mut ring, EIO, seqno))
    }

    /// Called when job `seqno` did not complete within [`job_timeout_ms()`]: fails the oldest job
    /// in flight with [`ETIMEDOUT`] if it is that job or an earlier one, which has been in flight
    /// at least as long, and recovers the engine. Returns how the jobs ended, for the queue.
    fn timed_out(&self, seqno: u64) -> Ended {
        let mut ring = self.ring.lock();
        if self.is_wedged() {
            return Ended::default();
        }
        let done = Ended {
            through: self.complete().unwrap_or(0),
            failed: None,
        };
        let Some(oldest) = self.pending.lock().front().map(|job| job.seqno) else {
            return done;
        };
        if oldest > seqno {
            // Job `seqno` completed meanwhile.
            return done;
        }
        if self.log_limit.allow(c"conflux engine") {
            dev_err!(
                self.pdev,
                "engine: job {} did not complete in {} ms; resetting\n",
                oldest,
                job_timeout_ms()
            );
        }
        let mut ended = self.recover(&mut ring, ETIMEDOUT, oldest);
        ended.through = ended.through.max(done.through);
        ended
    }

    /// The device did not confirm a reset: it may still be running, so the memory of its jobs
    /// in flight is never given back ([`QueueOps::finished`]). Returns their end for the queue:
    /// they fail with [`ENODEV`], as every later job does.
    fn wedge(&self, _ring: &mut Ring) -> Ended {
        self.wedged.store(true, Ordering::Release);
        dev_err!(
            self.pdev,
            "engine: reset not confirmed: the device is wedged, its jobs fail with -ENODEV\n"
        );
        let mut pending = self.pending.lock();
        let first = pending.front().map(|job| job.seqno);
        let mut last = first;
        while let Some(job) = pending.pop() {
            last = Some(job.seqno);
        }
        Ended {
            through: 0,
            failed: first.zip(last).map(|(first, last)| (first..=last, ENODEV)),
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
