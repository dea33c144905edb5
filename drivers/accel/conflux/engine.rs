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
//! the commands still in the ring, and writes the later jobs to the ring again. A job that does
//! not complete within [`JOB_TIMEOUT`] is failed with [`ETIMEDOUT`] the same way.

use kernel::{
    device::Bound,
    dma_fence::{
        Fence,
        FenceContext,
        FenceTimeline,
        SignalFence, //
    },
    io::Io,
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
        delay::fsleep,
        msecs_to_jiffies,
        Delta,
        Instant,
        Monotonic, //
    },
};

use crate::{
    driver::DeviceInfo,
    regs, //
};

/// How long a reset may take. The device model may run under an emulator without
/// acceleration, where a doorbell takes milliseconds.
const RESET_TIMEOUT: Delta = Delta::from_secs(5);

/// How long a job may run before it is failed with [`ETIMEDOUT`] and the engine reset.
/// How long a job may be the oldest in flight, in milliseconds: the `job_timeout_ms` module
/// parameter, 10 seconds by default.
pub(crate) fn job_timeout_ms() -> u32 {
    crate::module_parameters::job_timeout_ms
        .value()
        .clamp(1, 600_000)
}

/// The most jobs in flight at once.
const MAX_JOBS: usize = 256;

/// The most commands in one job.
pub(crate) const MAX_JOB_COMMANDS: usize = 64;

/// The fence timeline of an engine.
pub(crate) struct Timeline;

impl FenceTimeline for Timeline {
    const DRIVER_NAME: &'static CStr = c"conflux";
    const TIMELINE_NAME: &'static CStr = c"engine";
}

/// A command of a job, on virtual addresses of the job's address space.
///
/// Jobs of userspace (`COPY` and `FILL`) come with the submission ioctl; the driver itself only
/// fills.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Command {
    /// Copies `len` bytes from `src` to `dst`; the two ranges do not overlap.
    Copy { src: u64, dst: u64, len: u64 },
    /// Writes `len` bytes at `dst`, repeating the little-endian bytes of `pattern`.
    Fill { dst: u64, len: u64, pattern: u64 },
}

impl Command {
    /// The slot's opcode and operands.
    fn encode(&self) -> (u32, [u64; 3]) {
        match *self {
            Command::Copy { src, dst, len } => (regs::OP_COPY, [src, dst, len]),
            Command::Fill { dst, len, pattern } => (regs::OP_FILL, [dst, len, pattern]),
        }
    }
}

/// A job in flight.
struct Job {
    seqno: u64,
    fence: SignalFence,
    commands: KVec<Command>,
}

/// The jobs in flight, oldest first: a ring buffer of [`MAX_JOBS`] entries.
///
/// # Invariants
///
/// `jobs` has [`MAX_JOBS`] entries; the `len` entries from `first` on (modulo [`MAX_JOBS`]) are
/// `Some` and in seqno order, the others `None`.
struct Pending {
    jobs: KVec<Option<Job>>,
    first: usize,
    len: usize,
    /// When the oldest job became the oldest: the time the engine has had for it.
    front_since: Instant<Monotonic>,
}

impl Pending {
    fn new() -> Result<Self> {
        let mut jobs = KVec::with_capacity(MAX_JOBS, GFP_KERNEL)?;
        for _ in 0..MAX_JOBS {
            jobs.push(None, GFP_KERNEL)?;
        }
        Ok(Self {
            jobs,
            first: 0,
            len: 0,
            front_since: Instant::now(),
        })
    }

    fn is_full(&self) -> bool {
        self.len == MAX_JOBS
    }

    fn get(&self, i: usize) -> Option<&Job> {
        if i >= self.len {
            return None;
        }
        self.jobs
            .get((self.first + i) % MAX_JOBS)
            .and_then(Option::as_ref)
    }

    fn front(&self) -> Option<&Job> {
        self.get(0)
    }

    fn back(&self) -> Option<&Job> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    /// Appends `job`, giving it back when [`MAX_JOBS`] are in flight.
    fn push(&mut self, job: Job) -> core::result::Result<(), Job> {
        if self.is_full() {
            return Err(job);
        }
        match self.jobs.get_mut((self.first + self.len) % MAX_JOBS) {
            Some(slot) => {
                *slot = Some(job);
                if self.len == 0 {
                    self.front_since = Instant::now();
                }
                self.len += 1;
                Ok(())
            }
            None => Err(job),
        }
    }

    fn pop(&mut self) -> Option<Job> {
        if self.len == 0 {
            return None;
        }
        let job = self.jobs.get_mut(self.first).and_then(Option::take);
        self.first = (self.first + 1) % MAX_JOBS;
        self.len -= 1;
        self.front_since = Instant::now();
        job
    }
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
    doorbell: pci::Bar<'bound, { regs::DOORBELL_BAR_SIZE }>,
    bar2: pci::Bar<'bound, { regs::CTL_SIZE }>,
    info: DeviceInfo,
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

/// Reads the device-written 64-bit field at `offset` of `bar2`, which the kernel's I/O regions
/// only allow as two 32-bit halves: the high half is read again until it did not change, so the
/// halves belong to one value.
fn read64(bar2: &pci::Bar<'_, { regs::CTL_SIZE }>, offset: usize) -> Result<u64> {
    loop {
        let hi = bar2.try_read32(offset + 4)?;
        let lo = bar2.try_read32(offset)?;
        if bar2.try_read32(offset + 4)? == hi {
            return Ok(u64::from(hi) << 32 | u64::from(lo));
        }
    }
}

/// Writes a driver-owned 64-bit field that the device does not read at the moment, as two
/// 32-bit halves.
fn write64(bar2: &pci::Bar<'_, { regs::CTL_SIZE }>, value: u64, offset: usize) -> Result {
    // CAST: the two halves of `value`.
    bar2.try_write32(value as u32, offset)?;
    bar2.try_write32((value >> 32) as u32, offset + 4)
}

impl<'bound> Engine<'bound> {
    /// Takes over the device's BARs, resets it and checks its ring registers.
    pub(crate) fn new(
        pdev: &'bound pci::Device<Bound>,
        doorbell: pci::Bar<'bound, { regs::DOORBELL_BAR_SIZE }>,
        bar2: pci::Bar<'bound, { regs::CTL_SIZE }>,
        info: DeviceInfo,
    ) -> Result<Arc<Self>> {
        reset(pdev, &doorbell, &bar2)?;
        let ring_offset = read64(&bar2, regs::RING_OFFSET)?;
        let ring_size = read64(&bar2, regs::RING_SIZE)?;
        let bar_len = pdev.resource_len(regs::CTL_BAR)?;
        let slots = ring_size / regs::SLOT_SIZE as u64;
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
        let head = bar2.try_read32(regs::RING_HEAD)?;
        let root = read64(&bar2, regs::MMU_ROOT)?;
        Arc::pin_init(
            try_pin_init!(Self {
                pdev,
                doorbell,
                bar2,
                info,
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

    /// What the device reported at probe.
    pub(crate) fn info(&self) -> DeviceInfo {
        self.info
    }

    /// The device's counters.
    pub(crate) fn counters(&self) -> Result<Counters> {
        Ok(Counters {
            local_bytes: read64(&self.bar2, regs::CNT_LOCAL_BYTES)?,
            p2p_bytes: read64(&self.bar2, regs::CNT_P2P_BYTES)?,
            sysmem_bytes: read64(&self.bar2, regs::CNT_SYSMEM_BYTES)?,
            commands: read64(&self.bar2, regs::CNT_COMMANDS)?,
            errors: read64(&self.bar2, regs::CNT_ERRORS)?,
        })
    }

    /// The mapping of BAR2, for the page tables in VRAM.
    pub(crate) fn bar2(&self) -> &pci::Bar<'bound, { regs::CTL_SIZE }> {
        &self.bar2
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
                let tail = self.bar2.try_read32(regs::RING_TAIL)?;
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
                write64(&self.bar2, root, regs::MMU_ROOT)?;
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
            let age = pending.front_since.elapsed().as_millis();
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
        for command in job.commands.iter() {
            let (opcode, operands) = command.encode();
            self.write_slot(head, opcode, 0, job.seqno, operands)?;
            head = head.wrapping_add(1);
        }
        self.write_slot(head, regs::OP_FENCE, regs::SLOT_FLAG_IRQ, job.seqno, [0; 3])?;
        Ok(head.wrapping_add(1))
    }

    fn write_slot(
        &self,
        counter: u32,
        opcode: u32,
        flags: u32,
        seqno: u64,
        operands: [u64; 3],
    ) -> Result {
        let base = self.ring_offset + (counter & self.ring_mask) as usize * regs::SLOT_SIZE;
        self.bar2.try_write32(opcode, base + regs::SLOT_OPCODE)?;
        self.bar2.try_write32(flags, base + regs::SLOT_FLAGS)?;
        write64(&self.bar2, seqno, base + regs::SLOT_SEQNO)?;
        for (i, operand) in operands.iter().enumerate() {
            write64(&self.bar2, *operand, base + regs::SLOT_OPERANDS + 8 * i)?;
        }
        // The reserved area, 0x28..0x40, must be zero.
        for offset in (regs::SLOT_OPERANDS + 24..regs::SLOT_SIZE).step_by(4) {
            self.bar2.try_write32(0, base + offset)?;
        }
        Ok(())
    }

    /// Publishes the ring head and rings the doorbell. MMIO writes are ordered, so the device
    /// sees the slots before the head and the head before the doorbell.
    fn publish(&self, head: u32) -> Result {
        self.bar2.try_write32(head, regs::RING_HEAD)?;
        self.doorbell.try_write32(0, regs::DOORBELL)
    }

    /// Signals the fences of the jobs that completed. Runs in the completion handler.
    fn complete(&self) {
        let Ok(done) = read64(&self.bar2, regs::FENCE_SEQNO) else {
            return;
        };
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
        let mut head = self.bar2.try_read32(regs::RING_TAIL)?;
        let pending = self.pending.lock();
        for i in 0..pending.len {
            if let Some(job) = pending.get(i) {
                head = self.write_job(head, job)?;
            }
        }
        drop(pending);
        ring.head = head;
        self.publish(head)
    }

    /// Handles the error vector: the device recorded an error and stopped.
    fn error(&self) {
        let mut ring = self.ring.lock();
        let Ok(status) = self.bar2.try_read32(regs::STATUS) else {
            return;
        };
        if status != regs::STATUS_ERROR {
            return;
        }
        let cause = self.bar2.try_read32(regs::ERR_CAUSE).unwrap_or(0);
        let opcode = self.bar2.try_read32(regs::ERR_OPCODE).unwrap_or(0);
        let va = read64(&self.bar2, regs::ERR_VA).unwrap_or(0);
        let seqno = read64(&self.bar2, regs::ERR_SEQNO).unwrap_or(0);
        dev_err!(
            self.pdev,
            "engine: job {} failed: cause {} ({}), opcode {}, VA {:#x}; resetting\n",
            seqno,
            cause,
            cause_name(cause),
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

/// The name of a device error cause (`ERR_CAUSE`).
pub(crate) fn cause_name(cause: u32) -> &'static str {
    match cause {
        1 => "translation fault",
        2 => "permission fault",
        3 => "peer unreachable",
        4 => "bus error",
        5 => "malformed command",
        6 => "ring state invalid",
        _ => "unknown",
    }
}

/// Resets the device: every queued command is discarded and the error record cleared.
fn reset(
    pdev: &pci::Device<Bound>,
    doorbell: &pci::Bar<'_, { regs::DOORBELL_BAR_SIZE }>,
    bar2: &pci::Bar<'_, { regs::CTL_SIZE }>,
) -> Result {
    bar2.try_write32(regs::CONTROL_RESET, regs::CONTROL)?;
    doorbell.try_write32(0, regs::DOORBELL)?;
    let start = Instant::<Monotonic>::now();
    loop {
        let control = bar2.try_read32(regs::CONTROL)?;
        let status = bar2.try_read32(regs::STATUS)?;
        if control == 0 && status == regs::STATUS_READY {
            return Ok(());
        }
        if start.elapsed() > RESET_TIMEOUT {
            dev_err!(
                pdev,
                "reset: not done after {} ms (CONTROL {:#x}, STATUS {})\n",
                RESET_TIMEOUT.as_millis(),
                control,
                status
            );
            return Err(ETIMEDOUT);
        }
        fsleep(Delta::from_millis(1));
    }
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
