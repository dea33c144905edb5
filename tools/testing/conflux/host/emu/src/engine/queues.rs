// SPDX-License-Identifier: GPL-2.0

//! The user queues of a device (device.rst, "User queues"): their state,
//! their transitions on `Q_CONTROL`, and the slices of work the engine
//! gives them between the doorbells of the ring.

use std::time::{Duration, Instant};

use conflux_device::{
    fault::{Cause, Fault},
    memory::{Memory, MemoryError},
    mmu::Mmu,
    regs::{ctrl, doorbell_page, queue, queue_reg},
    ring::{Command, Op, Ring, Slot},
};

use super::{bus_fault, Engine, ErrorRecord, Step};

/// How long a queue runs before the engine turns to the next one, at most: it stops between
/// two pieces of a command.
pub const SLICE: Duration = Duration::from_millis(1);

/// What the device keeps of a user queue: the fields of its register block it owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserQueue {
    status: u32,
    tail: u32,
    progress: u64,
    events: u32,
    /// The ring, as validated when the queue was enabled.
    ring: Option<Ring>,
    error: Option<ErrorRecord>,
    /// Stopped at a `WAIT_VALUE` whose condition did not hold when last evaluated.
    blocked: bool,
}

/// A user queue as the device sees it, for tests and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// `Q_STATUS`.
    pub status: u32,
    /// `Q_TAIL`.
    pub tail: u32,
    /// `Q_PROGRESS`.
    pub progress: u64,
    /// `Q_EVENTS`.
    pub events: u32,
    /// The queue's error record, if it stopped on one.
    pub error: Option<ErrorRecord>,
    /// At a `WAIT_VALUE` whose condition did not hold.
    pub blocked: bool,
}

/// What one call of [`Engine::run_queues`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueOutcome {
    /// A queue counted an event: raise the completion vector.
    pub irq: bool,
    /// Commands completed.
    pub completed: u32,
    /// Some queue has work it could do now: call again without waiting.
    pub busy: bool,
    /// Some queue runs: its doorbell page, and the values it waits for, are to be looked at.
    pub active: bool,
    /// The errors the queues stopped on, by queue.
    pub errors: Vec<(u32, ErrorRecord)>,
}

/// The queue numbers, from 1.
fn numbers() -> impl Iterator<Item = u32> {
    1..=queue::COUNT
}

impl Engine {
    fn user_queue(&self, q: u32) -> Option<&UserQueue> {
        self.queues.get(q.checked_sub(1)? as usize)
    }

    fn user_queue_mut(&mut self, q: u32) -> Option<&mut UserQueue> {
        self.queues.get_mut(q.checked_sub(1)? as usize)
    }

    /// User queue `q` (from 1) as the device sees it.
    pub fn queue_state(&self, q: u32) -> Option<QueueState> {
        self.user_queue(q).map(|u| QueueState {
            status: u.status,
            tail: u.tail,
            progress: u.progress,
            events: u.events,
            error: u.error.clone(),
            blocked: u.blocked,
        })
    }

    fn has_queues(&self) -> bool {
        self.caps & ctrl::CAP_QUEUES != 0 && self.status != ctrl::STATUS_OFF
    }

    fn queue_reg32<M: Memory + ?Sized>(&self, mem: &M, q: u32, at: u64) -> Result<u32, Fault> {
        mem.read_u32(self.bar(), queue_reg(q, at))
            .map_err(|e| bus_fault("reading a queue's registers", e))
    }

    fn queue_reg64<M: Memory + ?Sized>(&self, mem: &M, q: u32, at: u64) -> Result<u64, Fault> {
        mem.read_u64(self.bar(), queue_reg(q, at))
            .map_err(|e| bus_fault("reading a queue's registers", e))
    }

    /// Writes the fields of queue `q` the device owns: `Q_TAIL` and `Q_PROGRESS` unless the
    /// queue is idle (the driver's then), the error record, `Q_STATUS`, and `Q_EVENTS` last.
    fn publish_queue<M: Memory + ?Sized>(&self, mem: &mut M, q: u32) -> Result<(), MemoryError> {
        let (bar, reg) = (self.bar(), |at| queue_reg(q, at));
        let Some(u) = self.user_queue(q) else {
            return Ok(());
        };
        if u.status != queue::STATUS_IDLE {
            mem.write_u32(bar, reg(queue::TAIL), u.tail)?;
            mem.write_u64(bar, reg(queue::PROGRESS), u.progress)?;
        }
        let e = u.error.as_ref();
        mem.write_u64(bar, reg(queue::ERR_VA), e.map_or(0, |e| e.va))?;
        mem.write_u32(bar, reg(queue::ERR_CAUSE), e.map_or(0, |e| e.cause.code()))?;
        mem.write_u32(bar, reg(queue::ERR_OPCODE), e.map_or(0, |e| e.opcode))?;
        mem.write_u32(bar, reg(queue::STATUS), u.status)?;
        mem.write_u32(bar, reg(queue::EVENTS), u.events)
    }

    /// Writes the fields the device owns of every queue.
    pub(super) fn publish_queues<M: Memory + ?Sized>(
        &self,
        mem: &mut M,
    ) -> Result<(), MemoryError> {
        if self.caps & ctrl::CAP_QUEUES == 0 {
            return Ok(());
        }
        numbers().try_for_each(|q| self.publish_queue(mem, q))
    }

    /// Moves queue `q` to `status` other than running, with its state as it is, and counts
    /// the event; writes `Q_TAIL` and `Q_PROGRESS` as they were saved.
    fn stop_queue<M: Memory + ?Sized>(
        &mut self,
        mem: &mut M,
        q: u32,
        status: u32,
    ) -> Result<(), MemoryError> {
        let Some(u) = self.user_queue_mut(q) else {
            return Ok(());
        };
        u.status = status;
        u.blocked = false;
        u.events = u.events.wrapping_add(1);
        let (tail, progress) = (u.tail, u.progress);
        let bar = self.bar();
        mem.write_u32(bar, queue_reg(q, queue::TAIL), tail)?;
        mem.write_u64(bar, queue_reg(q, queue::PROGRESS), progress)?;
        self.publish_queue(mem, q)
    }

    /// A reset: every queue that is not idle stops as a disabled one does, and `Q_CONTROL` of
    /// every queue is cleared.
    pub(super) fn stop_queues<M: Memory + ?Sized>(
        &mut self,
        mem: &mut M,
    ) -> Result<(), MemoryError> {
        if self.caps & ctrl::CAP_QUEUES == 0 {
            return Ok(());
        }
        for q in numbers() {
            mem.write_u32(self.bar(), queue_reg(q, queue::CONTROL), 0)?;
            if self
                .user_queue(q)
                .is_some_and(|u| u.status != queue::STATUS_IDLE)
            {
                self.stop_queue(mem, q, queue::STATUS_IDLE)?;
            }
        }
        Ok(())
    }

    /// Stops queue `q` on `e`, the error of its command at the tail.
    fn fail_queue<M: Memory + ?Sized>(
        &mut self,
        mem: &mut M,
        q: u32,
        e: ErrorRecord,
        out: &mut QueueOutcome,
    ) {
        self.counters.errors = self.counters.errors.wrapping_add(1);
        if let Some(u) = self.user_queue_mut(q) {
            u.error = Some(e.clone());
        }
        out.errors.push((q, e));
        out.irq = true;
        // A failed write leaves the registers as they were: the next publication retries.
        let _ = self.stop_queue(mem, q, queue::STATUS_ERROR);
    }

    /// Answers what the driver asks of each queue in `Q_CONTROL`: enable, preempt, resume,
    /// disable. Returns whether an event was counted.
    pub(super) fn update_queues<M: Memory + ?Sized>(&mut self, mem: &mut M) -> bool {
        if !self.has_queues() {
            return false;
        }
        let mut out = QueueOutcome::default();
        for q in numbers() {
            let Ok(control) = self.queue_reg32(mem, q, queue::CONTROL) else {
                continue;
            };
            let enable = control & queue::CONTROL_ENABLE != 0;
            let preempt = control & queue::CONTROL_PREEMPT != 0;
            let status = self.user_queue(q).map_or(queue::STATUS_IDLE, |u| u.status);
            match (status, enable, preempt) {
                (queue::STATUS_IDLE, true, _) => self.enable_queue(mem, q, preempt, &mut out),
                (queue::STATUS_IDLE, false, _) => {}
                (_, false, _) => {
                    out.irq |= self.stop_queue(mem, q, queue::STATUS_IDLE).is_ok();
                }
                (queue::STATUS_RUNNING, true, true) if !self.ignores_preemption(mem) => {
                    out.irq |= self.stop_queue(mem, q, queue::STATUS_PREEMPTED).is_ok();
                }
                (queue::STATUS_PREEMPTED, true, false) => {
                    if let Some(u) = self.user_queue_mut(q) {
                        u.status = queue::STATUS_RUNNING;
                    }
                    // A failed write leaves the registers as they were: the next publication
                    // retries.
                    let _ = self.publish_queue(mem, q);
                }
                _ => {}
            }
        }
        out.irq
    }

    /// Enables idle queue `q`: loads its ring, tail and progress from its registers; it starts
    /// preempted when `preempt` is set.
    fn enable_queue<M: Memory + ?Sized>(
        &mut self,
        mem: &mut M,
        q: u32,
        preempt: bool,
        out: &mut QueueOutcome,
    ) {
        let loaded = (|| {
            let ring = Ring::at_va(
                self.queue_reg64(mem, q, queue::RING_VA)?,
                self.queue_reg64(mem, q, queue::RING_SIZE)?,
            )?;
            let tail = self.queue_reg32(mem, q, queue::TAIL)?;
            let progress = self.queue_reg64(mem, q, queue::PROGRESS)?;
            Ok::<_, Fault>((ring, tail, progress))
        })();
        let Some(u) = self.user_queue_mut(q) else {
            return;
        };
        u.error = None;
        u.blocked = false;
        match loaded {
            Ok((ring, tail, progress)) => {
                u.ring = Some(ring);
                u.tail = tail;
                u.progress = progress;
                u.status = queue::STATUS_RUNNING;
                if preempt {
                    out.irq |= self.stop_queue(mem, q, queue::STATUS_PREEMPTED).is_ok();
                } else {
                    let _ = self.publish_queue(mem, q);
                }
            }
            Err(f) => {
                u.ring = None;
                self.fail_queue(mem, q, f.into(), out);
            }
        }
    }

    /// Whether a test set `FAULT_IGNORE_PREEMPT`.
    fn ignores_preemption<M: Memory + ?Sized>(&self, mem: &M) -> bool {
        self.faults(mem)
            .is_ok_and(|f| f & ctrl::FAULT_IGNORE_PREEMPT != 0)
    }

    /// Whether `Q_CONTROL` of running queue `q` asks for anything but running on.
    fn stop_asked<M: Memory + ?Sized>(&self, mem: &M, q: u32) -> Result<bool, Fault> {
        let mut control = self.queue_reg32(mem, q, queue::CONTROL)?;
        if self.ignores_preemption(mem) {
            control &= !queue::CONTROL_PREEMPT;
        }
        Ok(control != queue::CONTROL_ENABLE)
    }

    /// Whether the ring has work, or a reset waits: the ring goes first.
    fn ring_pending<M: Memory + ?Sized>(&self, mem: &M) -> bool {
        self.head_moved(mem) || self.reset_requested(mem).unwrap_or(false)
    }

    /// Runs the user queues: answers `Q_CONTROL`, then gives each running queue that has work
    /// a slice of [`SLICE`] in turn, starting with the one after the last round's first. A
    /// slice ends early when the ring has work, a reset is requested or the queue's
    /// `Q_CONTROL` changes. Publishes what changed. Never panics.
    pub fn run_queues<M: Memory + ?Sized>(&mut self, mem: &mut M) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        if !self.has_queues() {
            return out;
        }
        out.irq |= self.update_queues(mem);
        let stalled = self.faults(mem).is_ok_and(|f| f & ctrl::FAULT_STALL != 0);
        let count = queue::COUNT as usize;
        for i in 0..count {
            if stalled || self.ring_pending(mem) {
                break;
            }
            // CAST: below `queue::COUNT`.
            let q = 1 + ((self.next_queue + i) % count) as u32;
            if self
                .user_queue(q)
                .is_some_and(|u| u.status == queue::STATUS_RUNNING)
            {
                self.slice(mem, q, &mut out);
            }
        }
        self.next_queue = (self.next_queue + 1) % count;
        out.irq |= self.update_queues(mem);
        for u in &self.queues {
            if u.status == queue::STATUS_RUNNING {
                out.active = true;
                // What completed may be what a waiting queue waits for: it looks again at once.
                out.busy |= u.blocked && out.completed > 0;
            }
        }
        if self.ring_pending(mem) {
            out.busy = true;
        }
        if out.completed > 0 || !out.errors.is_empty() {
            // The counters; a failed write is retried by the next publication.
            let _ = self.publish(mem);
        }
        if self
            .faults(mem)
            .is_ok_and(|f| f & ctrl::FAULT_DROP_COMPLETION != 0)
        {
            out.irq = false;
        }
        out
    }

    /// Reads the slot of queue `q`'s ring that `tail` names, through `mmu`.
    fn fetch<M: Memory + ?Sized>(&self, mem: &M, mmu: &Mmu, va: u64) -> Result<Slot, Fault> {
        let mut slot: Slot = [0; 64];
        // A slot is 64-byte aligned, so it lies inside one page.
        if let (Some(at), _) = self.access(mem, mmu, va, false)? {
            mem.read(at.target, at.offset, &mut slot)
                .map_err(|e| bus_fault("reading a ring slot", e).at(va))?;
        }
        Ok(slot)
    }

    /// Runs queue `q` for a slice: its commands from its tail to the head in its doorbell
    /// page, in order.
    fn slice<M: Memory + ?Sized>(&mut self, mem: &mut M, q: u32, out: &mut QueueOutcome) {
        let Some(index) = (q as usize).checked_sub(1) else {
            return;
        };
        let Some(u) = self.queues.get(index) else {
            return;
        };
        let Some(ring) = u.ring else {
            return;
        };
        let head = match mem.read_u32(self.bar(), doorbell_page(q) + queue::DOORBELL_HEAD) {
            Ok(head) => head,
            Err(e) => {
                self.fail_queue(mem, q, bus_fault("reading the doorbell", e).into(), out);
                return;
            }
        };
        let root = match self.queue_reg64(mem, q, queue::MMU_ROOT) {
            Ok(root) => root,
            Err(f) => return self.fail_queue(mem, q, f.into(), out),
        };
        let mmu = self.mmu(root);
        let end = Instant::now() + SLICE;
        let mut blocked = false;
        loop {
            let Some(u) = self.user_queue(q) else {
                return;
            };
            let (tail, progress) = (u.tail, u.progress);
            if let Err(f) = ring.pending(head, tail) {
                return self.fail_queue(mem, q, f.into(), out);
            }
            if tail == head {
                break;
            }
            // The slot at the tail, checked before anything of it runs.
            let va = ring.slot_offset(tail);
            let cmd = self
                .fetch(mem, &mmu, va)
                .map_err(ErrorRecord::from)
                .and_then(|slot| {
                    let (opcode, seqno) = Command::header(&slot);
                    let cmd = Command::decode(&slot, self.caps)
                        .map_err(|f| ErrorRecord::new(f, seqno, opcode))?;
                    if cmd.op == Op::Fence {
                        let why =
                            "FENCE is a command of the ring: a user queue signals with WRITE_VALUE";
                        return Err(ErrorRecord::new(
                            Fault::new(Cause::Malformed, why),
                            seqno,
                            opcode,
                        ));
                    }
                    Ok(cmd)
                });
            let cmd = match cmd {
                Ok(cmd) => cmd,
                Err(e) => return self.fail_queue(mem, q, e, out),
            };
            let from = match cmd.op {
                Op::Copy { .. } | Op::Fill { .. } => progress,
                _ => 0,
            };
            let mut stop = |e: &Self, mem: &M| -> Result<bool, Fault> {
                Ok(Instant::now() >= end || e.ring_pending(mem) || e.stop_asked(mem, q)?)
            };
            let step = self.execute(mem, &mmu, &cmd, from, &mut stop);
            let Some(u) = self.queues.get_mut(index) else {
                return;
            };
            match step {
                Ok(Step::Done) => {
                    u.tail = tail.wrapping_add(1);
                    u.progress = 0;
                    if cmd.irq {
                        u.events = u.events.wrapping_add(1);
                        out.irq = true;
                    }
                    self.counters.commands = self.counters.commands.wrapping_add(1);
                    out.completed += 1;
                }
                Ok(Step::Stopped(done)) => {
                    u.progress = done;
                    out.busy = true;
                    break;
                }
                Ok(Step::Blocked) => {
                    blocked = true;
                    break;
                }
                Err(f) => {
                    let e = ErrorRecord::new(f, cmd.seqno, cmd.op.opcode());
                    return self.fail_queue(mem, q, e, out);
                }
            }
            let more = u.tail != head;
            if Instant::now() >= end
                || self.ring_pending(mem)
                || self.stop_asked(mem, q).unwrap_or(true)
            {
                out.busy |= more;
                break;
            }
        }
        if let Some(u) = self.user_queue_mut(q) {
            u.blocked = blocked;
        }
        let _ = self.publish_queue(mem, q);
    }
}
