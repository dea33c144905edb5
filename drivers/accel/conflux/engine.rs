// SPDX-License-Identifier: GPL-2.0

//! The command engine: the ring, job fences, the interrupt handlers and error recovery.
//!
//! A job is a list of `COPY` and `FILL` commands followed by a `FENCE` command whose seqno is
//! the job's fence seqno and which raises the completion vector. Jobs are written to the ring
//! in fence order under the ring lock, so `FENCE_SEQNO` names the last completed job and every
//! job up to it is done. The completion handler signals those jobs' fences.
//!
//! When the device stops on an error, the error handler (a threaded handler, it sleeps) fails
//! the job that contains the failing command with [`EIO`], resets the device, which discards
//! the commands still in the ring, and writes the later jobs to the ring again. A job that has
//! been the oldest in flight for [`job_timeout_ms()`] is failed with [`ETIMEDOUT`] the same way.

mod job;

use kernel::{
    device::Bound,
    dma_fence::{
        Fence,
        FenceContext,
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
        Arc,
        Mutex,
        SpinLockIrq, //
    },
    time::{
        msecs_to_jiffies,
        Delta,
        Instant,
        Monotonic, //
    },
};

use crate::regs::{
    self,
    Bar0,
    Bar2,
    State,
    CTL_BAR,
    SLOT_SIZE, //
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

/// The fence timeline of an engine.
pub(crate) struct Timeline;

impl FenceTimeline for Timeline {
    const DRIVER_NAME: &'static CStr = c"conflux";
    const TIMELINE_NAME: &'static CStr = c"engine";
}

/// What the submitters share: the ring head and the MMU root the driver last wrote.
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

/// The command engine of a bound device.
///
/// # Invariants
///
/// `ring_offset..ring_offset + ring_slots * SLOT_SIZE` lies inside `bar2`, `ring_slots` is a
/// power of two of at least 2 and `ring_mask` is `ring_slots - 1`.
#[pin_data(PinnedDrop)]
pub(crate) struct Engine<'bound> {
    pdev: &'bound pci::Device<Bound>,
    doorbell: Bar0<'bound>,
    bar2: Arc<Bar2<'bound>>,
    ring_offset: usize,
    ring_slots: u32,
    /// `ring_slots - 1`: a ring counter masked with it is a slot index.
    ring_mask: u32,
    fences: FenceContext<Timeline>,
    /// Serialises submission and recovery.
    #[pin]
    ring: Mutex<Ring>,
    /// Taken by the completion handler.
    #[pin]
    pending: SpinLockIrq<Pending>,
}

impl<'bound> Engine<'bound> {
    /// Takes over the device's doorbell and control block, resets it and checks its ring
    /// registers.
    pub(crate) fn new(
        pdev: &'bound pci::Device<Bound>,
        doorbell: Bar0<'bound>,
        bar2: Arc<Bar2<'bound>>,
    ) -> Result<Arc<Self>> {
        reset(pdev, &doorbell, &bar2)?;
        let ring_offset = regs::read64::<regs::RING_OFFSET>(&bar2)?.offset().get();
        let ring_size = regs::read64::<regs::RING_SIZE>(&bar2)?.bytes().get();
        let bar_len = pdev.resource_len(CTL_BAR)?;
        let slots = ring_size / SLOT_SIZE as u64;
        let fits = matches!(ring_offset.checked_add(ring_size), Some(end) if end <= bar_len);
        if !fits || !slots.is_power_of_two() || slots < 2 || slots > u64::from(u32::MAX) {
            dev_err!(
                pdev,
                "probe: ring at BAR2 + {:#x}, {:#x} bytes, does not fit BAR2 ({:#x} bytes)\n",
                ring_offset,
                ring_size,
                bar_len
            );
            return Err(EIO);
        }
        let head = bar2.read(regs::RING_HEAD).count().get();
        let root = regs::read64::<regs::MMU_ROOT>(&bar2)?.offset().get();
        Arc::pin_init(
            try_pin_init!(Self {
                pdev,
                doorbell,
                bar2,
                ring_offset: usize::try_from(ring_offset)?,
                ring_slots: u32::try_from(slots)?,
                ring_mask: u32::try_from(slots - 1)?,
                fences: FenceContext::new(),
                ring <- new_mutex!(Ring { head, root }),
                pending <- new_spinlock_irq!(Pending::new()?),
            }),
            GFP_KERNEL,
        )
    }

    /// The device's counters.
    pub(crate) fn counters(&self) -> Result<Counters> {
        let bar2 = &self.bar2;
        Ok(Counters {
            local_bytes: regs::read64::<regs::CNT_LOCAL_BYTES>(bar2)?.count().get(),
            p2p_bytes: regs::read64::<regs::CNT_P2P_BYTES>(bar2)?.count().get(),
            sysmem_bytes: regs::read64::<regs::CNT_SYSMEM_BYTES>(bar2)?.count().get(),
            commands: regs::read64::<regs::CNT_COMMANDS>(bar2)?.count().get(),
            errors: regs::read64::<regs::CNT_ERRORS>(bar2)?.count().get(),
        })
    }

    /// Submits a job of `commands` on the address space whose level-3 table is at VRAM offset
    /// `root`, and returns its fence.
    ///
    /// Waits, interruptibly, while the ring or the table of jobs in flight is full, and for the
    /// engine to go idle before it switches to another address space. Nothing is submitted when
    /// it fails.
    pub(crate) fn submit(&self, root: u64, commands: KVec<Command>) -> Result<ARef<Fence>> {
        if commands.is_empty() || commands.len() > MAX_JOB_COMMANDS {
            return Err(EINVAL);
        }
        // The commands and the fence.
        let need = commands.len() as u32 + 1;
        loop {
            let mut ring = self.ring.lock();
            let busy = {
                let tail = self.bar2.read(regs::RING_TAIL).count().get();
                let used = ring.head.wrapping_sub(tail);
                let pending = self.pending.lock();
                if pending.is_full() || used.saturating_add(need) > self.ring_slots {
                    pending.front().map(|job| job.fence.shared())
                } else if root != ring.root {
                    pending.back().map(|job| job.fence.shared())
                } else {
                    None
                }
            };
            if let Some(fence) = busy {
                drop(ring);
                self.wait(&fence, true)?;
                continue;
            }
            if root != ring.root {
                regs::write64(&self.bar2, regs::MMU_ROOT::zeroed().with_offset(root))?;
                ring.root = root;
            }
            let fence = self.fences.new_fence(GFP_KERNEL)?;
            let shared = fence.shared();
            let job = Job {
                seqno: shared.seqno(),
                fence,
                commands,
            };
            let head = self.write_job(ring.head, &job)?;
            if self.pending.lock().push(job).is_err() {
                // Not reached: the table was not full and only submitters, which hold the ring
                // lock, add jobs. The dropped job's fence signals `ECANCELED`.
                return Err(EBUSY);
            }
            ring.head = head;
            self.publish(head)?;
            return Ok(shared);
        }
    }

    /// Waits for `fence` of this engine, failing the job and resetting the engine when the job
    /// has not completed within [`job_timeout_ms()`].
    ///
    /// Returns [`ERESTARTSYS`] when an interruptible wait is interrupted by a signal.
    pub(crate) fn wait(&self, fence: &Fence, interruptible: bool) -> Result {
        self.wait_for(fence, interruptible, None).map(|_| ())
    }

    /// Waits at most `timeout_ms` milliseconds (without limit for `None`) for `fence` of this
    /// engine and returns whether it signalled. While it waits, a job that has been the oldest
    /// in flight for [`job_timeout_ms()`] is failed and the engine recovered.
    pub(crate) fn wait_for(
        &self,
        fence: &Fence,
        interruptible: bool,
        timeout_ms: Option<u64>,
    ) -> Result<bool> {
        let start = Instant::<Monotonic>::now();
        loop {
            let step = match timeout_ms {
                None => job_timeout_ms(),
                Some(limit) => {
                    let waited = u64::try_from(start.elapsed().as_millis()).unwrap_or(0);
                    let left = limit.saturating_sub(waited);
                    if left == 0 {
                        return Ok(fence.is_signaled());
                    }
                    u32::try_from(left)
                        .unwrap_or(u32::MAX)
                        .min(job_timeout_ms())
                }
            };
            if fence.wait_timeout(interruptible, msecs_to_jiffies(step))? {
                return Ok(true);
            }
            self.check_timeout();
        }
    }

    /// Fails the oldest job when it has been the oldest for [`job_timeout_ms()`].
    pub(crate) fn check_timeout(&self) {
        let expired = {
            let pending = self.pending.lock();
            let age = pending.front_age_ms();
            pending
                .front()
                .filter(|_| age >= i64::from(job_timeout_ms()))
                .map(|job| job.seqno)
        };
        if let Some(seqno) = expired {
            self.timed_out(seqno);
        }
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

    /// Publishes the ring head and rings the doorbell. MMIO writes are ordered, so the device
    /// sees the slots before the head and the head before the doorbell.
    fn publish(&self, head: u32) -> Result {
        self.bar2
            .write_reg(regs::RING_HEAD::zeroed().with_count(head));
        ring_doorbell(&self.doorbell);
        Ok(())
    }

    /// Signals the fences of the jobs that completed. Runs in the completion handler.
    fn complete(&self) {
        let Ok(done) = regs::read64::<regs::FENCE_SEQNO>(&self.bar2) else {
            return;
        };
        let done = done.seqno().get();
        let mut pending = self.pending.lock();
        while pending.front().is_some_and(|job| job.seqno <= done) {
            if let Some(job) = pending.pop() {
                job.fence.signal();
            }
        }
    }

    /// Fails the oldest job with `error`, resets the device and writes the later jobs to the
    /// ring again. The caller holds the ring lock.
    fn recover(&self, ring: &mut Ring, error: Error) -> Result {
        self.complete();
        let failed = self.pending.lock().pop();
        if let Some(job) = failed {
            job.fence.signal_error(error);
        }
        reset(self.pdev, &self.doorbell, &self.bar2)?;
        let mut head = self.bar2.read(regs::RING_TAIL).count().get();
        let pending = self.pending.lock();
        for job in pending.iter() {
            head = self.write_job(head, job)?;
        }
        drop(pending);
        ring.head = head;
        self.publish(head)
    }

    /// Handles the error vector: the device recorded an error and stopped.
    fn error(&self) {
        let mut ring = self.ring.lock();
        if self.bar2.read(regs::STATUS).state() != State::Error {
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
        if let Err(e) = self.recover(&mut ring, EIO) {
            dev_err!(self.pdev, "engine: recovery failed: {:?}\n", e);
        }
    }

    /// Called when job `seqno` did not complete within [`job_timeout_ms()`]: fails the oldest job
    /// in flight with [`ETIMEDOUT`] if it is that job or an earlier one, which has been in flight
    /// at least as long, and recovers the engine.
    fn timed_out(&self, seqno: u64) {
        let mut ring = self.ring.lock();
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
        if let Err(e) = self.recover(&mut ring, ETIMEDOUT) {
            dev_err!(self.pdev, "engine: recovery failed: {:?}\n", e);
        }
    }
}

#[pinned_drop]
impl PinnedDrop for Engine<'_> {
    fn drop(self: Pin<&mut Self>) {
        // Stop the device: the commands still in the ring are discarded, and the fences of the
        // jobs in flight signal `ECANCELED` when `pending` is dropped.
        if reset(self.pdev, &self.doorbell, &self.bar2).is_err() {
            dev_err!(self.pdev, "unbind: the engine did not reset\n");
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
