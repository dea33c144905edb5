// SPDX-License-Identifier: GPL-2.0

//! The device's user queues, as the engine sees them: which ones are given out, their
//! registers, their events, and what a reset does to them (`device.rst`, "User queues").
//!
//! A user queue is taken for a file's queue ([`Engine::take_queue`]), programmed and enabled;
//! from then on the process feeds it through its doorbell page, and the driver only watches its
//! events. The completion handler reads the `Q_EVENTS` of every queue given out: a queue whose
//! count changed completed a command with `IRQ` or stopped, and the waiters of
//! `WAIT_USER_FENCE` wake ([`Engine::wait_queue_event`]). A queue that stopped on an error
//! keeps its record here, read once, for the waiters and the log.
//!
//! A reset of the device (recovery from a job's error or timeout) stops every user queue with
//! its state saved and clears `Q_CONTROL`: the queues that were running are enabled again
//! afterwards, and continue where they stopped.

use core::sync::atomic::{
    AtomicBool,
    AtomicU64,
    Ordering, //
};

use kernel::{
    io::{
        poll::read_poll_timeout,
        Io, //
    },
    new_condvar, new_spinlock_irq,
    num::Bounded,
    prelude::*,
    sync::{
        CondVar,
        SpinLockIrq, //
    },
    time::{
        Delta,
        Jiffies, //
    },
};

use crate::regs::{
    self,
    queue,
    Bar2,
    FaultCause,
    QueueState, //
};

use super::{
    ring_doorbell,
    Engine,
    Hw,
    RESET_TIMEOUT, //
};

/// Room for the records of queues 0 to [`queue::MAX`]; queue 0 is the ring, never given out.
const SLOTS: usize = queue::MAX as usize + 1;

/// Why a user queue stopped on an error, from its `Q_ERR_*` registers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueError {
    pub(crate) cause: FaultCause,
    pub(crate) va: u64,
    pub(crate) opcode: u32,
}

/// The driver's record of one of the device's user queues.
#[derive(Clone, Copy, Default)]
struct Record {
    /// Given to a file's queue.
    taken: bool,
    /// Counts the times the queue was given out: with its number, the [`QueueId`] of the file's
    /// queue that has it.
    gen: u32,
    /// Enabled by the driver: a reset's recovery enables it again.
    enabled: bool,
    /// How many preemptions hold the queue stopped; it runs when none does.
    holds: u32,
    /// Disabled for good because it did not stop when preempted.
    killed: bool,
    /// The last `Q_EVENTS` the completion handler read.
    events: u32,
    /// How many times the handler found the count changed: what waiters compare.
    seen: u64,
    /// The error the queue stopped on.
    error: Option<QueueError>,
}

/// The user queues of a device.
///
/// # Invariants
///
/// `count` is at most [`queue::MAX`], and 0 on a device without `CAP_QUEUES`; the doorbell
/// pages of queues `1..=count`, from BAR2 offset `doorbell_offset` + 4 KiB each, lie in BAR2.
#[pin_data]
pub(crate) struct UserQueues {
    count: u32,
    doorbell_offset: usize,
    /// The device is being unbound: waiters return.
    closing: AtomicBool,
    /// Running queues stopped by preemptions.
    preemptions: AtomicU64,
    /// Queues killed.
    killed: AtomicU64,
    /// Taken by the completion handler.
    #[pin]
    records: SpinLockIrq<[Record; SLOTS]>,
    /// Where `WAIT_USER_FENCE` sleeps; notified when a queue counts events.
    #[pin]
    events: CondVar,
}

impl UserQueues {
    /// The user queues of a device whose capabilities are `caps`: none without `CAP_QUEUES`.
    /// Checks that the doorbell pages lie in BAR2 below `vram_offset`.
    pub(super) fn new(bar2: &Bar2<'_>, caps: u32, vram_offset: u64) -> Result<impl PinInit<Self>> {
        let (count, doorbell_offset) = if caps & regs::CAP_QUEUES != 0 {
            let count = bar2.read(regs::QUEUES).count().get().min(queue::MAX);
            let offset = regs::read64::<regs::DOORBELL_OFFSET>(bar2)?.offset().get();
            let end = u64::from(count + 1)
                .checked_mul(queue::DOORBELL_PAGE as u64)
                .and_then(|len| offset.checked_add(len));
            let page = queue::DOORBELL_PAGE as u64;
            if offset % page != 0 || offset < regs::CTL_SIZE as u64 || end > Some(vram_offset) {
                pr_err!(
                    "conflux: probe: doorbell pages at BAR2 {:#x} for {} queues do not lie \
                     below VRAM at {:#x}\n",
                    offset,
                    count,
                    vram_offset
                );
                return Err(EIO);
            }
            (count, usize::try_from(offset)?)
        } else {
            (0, 0)
        };
        Ok(pin_init!(Self {
            count,
            doorbell_offset,
            closing: AtomicBool::new(false),
            preemptions: AtomicU64::new(0),
            killed: AtomicU64::new(0),
            records <- new_spinlock_irq!([Record::default(); SLOTS]),
            events <- new_condvar!("conflux user queue events"),
        }))
    }

    /// The BAR2 offset of queue `q`'s doorbell page.
    pub(crate) fn doorbell_offset(&self, q: u32) -> usize {
        self.doorbell_offset + queue::DOORBELL_PAGE * q as usize
    }
}

/// The user queue `q` of `bar2`: reads and writes of its registers.
struct Regs<'a, 'bound> {
    bar2: &'a Bar2<'bound>,
    q: u32,
}

impl<'a, 'bound> Regs<'a, 'bound> {
    /// The registers of the queue whose record is at index `q` of the records.
    fn of(bar2: &'a Bar2<'bound>, q: usize) -> Self {
        // CAST: a record's index is at most `queue::MAX`.
        Self { bar2, q: q as u32 }
    }

    fn read32(&self, reg: usize) -> Result<u32> {
        self.bar2.try_read32(queue::at(self.q, reg))
    }

    fn write32(&self, reg: usize, value: u32) -> Result {
        self.bar2.try_write32(value, queue::at(self.q, reg))
    }

    fn read64(&self, reg: usize) -> Result<u64> {
        regs::read64_at(self.bar2, queue::at(self.q, reg))
    }

    fn write64(&self, reg: usize, value: u64) -> Result {
        regs::write64_at(self.bar2, queue::at(self.q, reg), value)
    }

    fn state(&self) -> Result<QueueState> {
        self.read32(queue::STATUS).map(QueueState::from)
    }

    /// The queue's error record.
    fn error(&self) -> Result<QueueError> {
        Ok(QueueError {
            cause: FaultCause::from(Bounded::from(self.read32(queue::ERR_CAUSE)?)),
            va: self.read64(queue::ERR_VA)?,
            opcode: self.read32(queue::ERR_OPCODE)?,
        })
    }
}

/// A hardware queue as given to one file's queue: its number and how many times it had been
/// given out then, so that a queue given out again is not taken for the earlier one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueId {
    q: u32,
    gen: u32,
}

impl QueueId {
    /// The id as one number, never 0.
    pub(crate) fn to_raw(self) -> u64 {
        u64::from(self.gen) << 32 | u64::from(self.q)
    }

    /// The id [`Self::to_raw`] gave.
    pub(crate) fn from_raw(raw: u64) -> Self {
        // CAST: the halves of `raw`.
        Self {
            q: raw as u32,
            gen: (raw >> 32) as u32,
        }
    }
}

/// The record of `id` among `records`, while it is given to that queue.
fn record(records: &mut [Record; SLOTS], id: QueueId) -> Option<&mut Record> {
    records
        .get_mut(id.q as usize)
        .filter(|r| r.taken && r.gen == id.gen)
}

/// What the driver knows of a user queue, for the waiters of its memory fences.
#[derive(Clone, Copy, Default)]
pub(crate) struct QueueStatus {
    /// How many times the completion handler found its event count changed.
    pub(crate) seen: u64,
    /// The error it stopped on.
    pub(crate) error: Option<QueueError>,
    /// It was killed for not stopping when preempted.
    pub(crate) killed: bool,
}

/// What a wait for a queue's events found.
pub(crate) enum Woken {
    /// The queue counted an event: the count to wait past next.
    Event(u64),
    /// The time ran out.
    Timeout,
    /// A signal is pending.
    Signal,
}

impl<'bound> Engine<'bound> {
    fn queues(&self) -> &UserQueues {
        &self.hw().queues
    }

    /// How many user queues the device has; 0 without `CAP_QUEUES`.
    pub(crate) fn queue_count(&self) -> u32 {
        self.queues().count
    }

    /// The BAR2 offset of the doorbell page of user queue `id`.
    pub(crate) fn doorbell_offset(&self, id: QueueId) -> usize {
        self.queues().doorbell_offset(id.q)
    }

    /// Takes a free user queue and enables it, empty and preempted (held once: see
    /// [`Self::resume_queues`]), on the ring of `ring_size` bytes at `ring_va` of the address
    /// space whose level-3 table is at VRAM offset `root`. Returns its number; [`EBUSY`] when
    /// none is free, [`ENODEV`] when the device is wedged.
    pub(crate) fn take_queue(&self, ring_va: u64, ring_size: u64, root: u64) -> Result<QueueId> {
        let hw = self.hw();
        let id = {
            let mut records = hw.queues.records.lock();
            let q = (1..=hw.queues.count)
                .find(|&q| records.get(q as usize).is_some_and(|r| !r.taken))
                .ok_or(EBUSY)?;
            let r = records.get_mut(q as usize).ok_or(EBUSY)?;
            // Generation 0 is never given: a raw id is never 0.
            let gen = r.gen.wrapping_add(1).max(1);
            *r = Record {
                taken: true,
                gen,
                ..Record::default()
            };
            QueueId { q, gen }
        };
        let enabled = self.enable_queue(id, ring_va, ring_size, root);
        if enabled.is_err() {
            let mut records = hw.queues.records.lock();
            if let Some(r) = record(&mut records, id) {
                r.taken = false;
            }
        }
        enabled.map(|()| id)
    }

    /// Programs queue `q`, idle, and enables it. The ring lock orders this with recovery,
    /// which enables again the queues that a reset stopped.
    fn enable_queue(&self, id: QueueId, ring_va: u64, ring_size: u64, root: u64) -> Result {
        let hw = self.hw();
        let _ring = hw.ring.lock();
        if hw.is_wedged() {
            return Err(ENODEV);
        }
        let q = id.q;
        let regs = Regs { bar2: &hw.bar2, q };
        // An earlier owner's queue was disabled and seen idle before it was given back.
        regs.write64(queue::RING_VA, ring_va)?;
        regs.write64(queue::RING_SIZE, ring_size)?;
        regs.write64(queue::MMU_ROOT, root)?;
        regs.write32(queue::TAIL, 0)?;
        regs.write64(queue::PROGRESS, 0)?;
        hw.bar2.try_write32(0, hw.queues.doorbell_offset(q))?;
        let events = regs.read32(queue::EVENTS)?;
        {
            let mut records = hw.queues.records.lock();
            let r = record(&mut records, id).ok_or(EINVAL)?;
            r.events = events;
            r.enabled = true;
            r.holds = 1;
        }
        regs.write32(queue::CONTROL, queue::ENABLE | queue::PREEMPT)?;
        ring_doorbell(&hw.doorbell);
        Ok(())
    }

    /// Disables queue `q` and gives it back once the device says it is idle: whatever it had
    /// not run never runs. [`ETIMEDOUT`] when the device does not confirm within the reset
    /// timeout: the queue is then never given out again, and the caller keeps what the queue
    /// may still use.
    pub(crate) fn release_queue(&self, id: QueueId) -> Result {
        let hw = self.hw();
        let q = id.q;
        {
            let _ring = hw.ring.lock();
            let mut records = hw.queues.records.lock();
            let Some(r) = record(&mut records, id) else {
                return Ok(());
            };
            r.enabled = false;
            drop(records);
            if !hw.is_wedged() {
                Regs { bar2: &hw.bar2, q }.write32(queue::CONTROL, 0)?;
                ring_doorbell(&hw.doorbell);
            }
        }
        if hw.is_wedged() {
            // The device may run on: the queue stays taken.
            return Err(ETIMEDOUT);
        }
        let regs = Regs { bar2: &hw.bar2, q };
        read_poll_timeout(
            || regs.state(),
            |state| *state == QueueState::Idle,
            Delta::from_micros(100),
            RESET_TIMEOUT,
        )
        .inspect_err(|_| {
            dev_err!(
                hw.pdev,
                "user queue {}: not idle {} ms after it was disabled; never used again\n",
                q,
                RESET_TIMEOUT.as_millis()
            );
        })?;
        let mut records = hw.queues.records.lock();
        if let Some(r) = record(&mut records, id) {
            *r = Record {
                gen: r.gen,
                ..Record::default()
            };
        }
        drop(records);
        // Its waiters learn that it is gone.
        hw.queues.events.notify_all();
        Ok(())
    }

    /// Wakes the waiters of every queue for good, before the device is unbound: the
    /// unbind waits for the calls in flight.
    pub(crate) fn close_queues(&self) {
        let queues = self.queues();
        queues.closing.store(true, Ordering::Release);
        // Under the lock, so that a waiter that looked before the store is asleep now.
        drop(queues.records.lock());
        queues.events.notify_all();
    }

    /// How many times a running user queue was preempted.
    pub(crate) fn preemptions(&self) -> u64 {
        self.queues().preemptions.load(Ordering::Relaxed)
    }

    /// How many user queues were killed.
    pub(crate) fn queues_killed(&self) -> u64 {
        self.queues().killed.load(Ordering::Relaxed)
    }

    /// Whether the device is being unbound.
    pub(crate) fn queues_closing(&self) -> bool {
        self.queues().closing.load(Ordering::Acquire)
    }

    /// What the driver knows of queue `q`.
    pub(crate) fn queue_status(&self, id: QueueId) -> QueueStatus {
        let mut records = self.queues().records.lock();
        record(&mut records, id).map_or(QueueStatus::default(), |r| QueueStatus {
            seen: r.seen,
            error: r.error,
            killed: r.killed,
        })
    }

    /// Stops the queues `qs` where they are, their state saved, and waits until the device says
    /// each has stopped; holds them stopped until [`Self::resume_queues`]. A queue that does not
    /// stop within `timeout` is killed: disabled for good, reported to its waiters. Returns how
    /// many were killed. Sleeps.
    pub(crate) fn preempt_queues(&self, qs: &[QueueId], timeout: Delta) -> usize {
        let hw = self.hw();
        let stopped = self.change_holds(qs, true);
        hw.queues.preemptions.fetch_add(stopped, Ordering::Relaxed);
        let start = kernel::time::Instant::<kernel::time::Monotonic>::now();
        let mut killed = 0;
        for &id in qs {
            if !self.queue_running(id) {
                continue;
            }
            let left = timeout - start.elapsed();
            let regs = Regs {
                bar2: &hw.bar2,
                q: id.q,
            };
            let stopped = read_poll_timeout(
                || regs.state(),
                |state| *state != QueueState::Running,
                Delta::from_micros(50),
                if left.as_nanos() > 0 {
                    left
                } else {
                    Delta::ZERO
                },
            );
            if stopped.is_err() && self.kill_queue(id) {
                dev_err!(
                    hw.pdev,
                    "user queue {}: did not stop within {} ms of a preemption request; killed\n",
                    id.q,
                    timeout.as_millis()
                );
                killed += 1;
            }
        }
        killed
    }

    /// Whether queue `q` is enabled and may still be running.
    fn queue_running(&self, id: QueueId) -> bool {
        let mut records = self.queues().records.lock();
        record(&mut records, id).is_some_and(|r| r.enabled)
    }

    /// Disables queue `q` for good, and tells its waiters. Returns whether it was killed now.
    fn kill_queue(&self, id: QueueId) -> bool {
        let hw = self.hw();
        let q = id.q;
        {
            let _ring = hw.ring.lock();
            let mut records = hw.queues.records.lock();
            let Some(r) = record(&mut records, id).filter(|r| r.enabled) else {
                return false;
            };
            r.enabled = false;
            r.killed = true;
            drop(records);
            hw.queues.killed.fetch_add(1, Ordering::Relaxed);
            let _ = Regs { bar2: &hw.bar2, q }.write32(queue::CONTROL, 0);
            ring_doorbell(&hw.doorbell);
        }
        let regs = Regs { bar2: &hw.bar2, q };
        if read_poll_timeout(
            || regs.state(),
            |state| *state == QueueState::Idle,
            Delta::from_micros(100),
            RESET_TIMEOUT,
        )
        .is_err()
        {
            dev_err!(
                hw.pdev,
                "user queue {}: not idle after it was disabled\n",
                q
            );
        }
        hw.queues.events.notify_all();
        true
    }

    /// Kills the queues `qs` at once: disables them for good.
    pub(crate) fn kill_queues(&self, qs: &[QueueId]) {
        for &id in qs {
            self.kill_queue(id);
        }
    }

    /// Gives up a hold of [`Self::preempt_queues`] on each of the queues `qs`; those that no
    /// preemption holds any more run again, from where they stopped.
    pub(crate) fn resume_queues(&self, qs: &[QueueId]) {
        self.change_holds(qs, false);
    }

    /// Takes a hold on each queue of `qs` (`preempt`), or gives one up, under the ring lock;
    /// writes `Q_CONTROL` of each enabled queue whose count moved from or to zero, `PREEMPT`
    /// set or cleared, and rings the doorbell once. Returns how many it wrote.
    fn change_holds(&self, qs: &[QueueId], preempt: bool) -> u64 {
        let hw = self.hw();
        let _ring = hw.ring.lock();
        let mut records = hw.queues.records.lock();
        let mut written = 0;
        for &id in qs {
            let Some(r) = record(&mut records, id) else {
                continue;
            };
            let edge = if preempt {
                r.holds += 1;
                r.holds == 1
            } else {
                r.holds = r.holds.saturating_sub(1);
                r.holds == 0
            };
            if edge && r.enabled && !hw.is_wedged() {
                let control = if preempt {
                    queue::ENABLE | queue::PREEMPT
                } else {
                    queue::ENABLE
                };
                let regs = Regs {
                    bar2: &hw.bar2,
                    q: id.q,
                };
                let _ = regs.write32(queue::CONTROL, control);
                written += 1;
            }
        }
        drop(records);
        if written > 0 {
            ring_doorbell(&hw.doorbell);
        }
        written
    }

    /// Sleeps until queue `q` counts an event past `seen`, or `timeout` runs out (never when
    /// [`None`]), or a signal comes.
    pub(crate) fn wait_queue_event(
        &self,
        id: QueueId,
        seen: u64,
        timeout: Option<Jiffies>,
    ) -> Woken {
        let queues = self.queues();
        let mut records = queues.records.lock();
        let current = |records: &mut [Record; SLOTS]| record(records, id).map_or(0, |r| r.seen);
        if current(&mut records) != seen || queues.closing.load(Ordering::Acquire) {
            return Woken::Event(current(&mut records));
        }
        match timeout {
            Some(jiffies) => match queues
                .events
                .wait_interruptible_timeout(&mut records, jiffies)
            {
                kernel::sync::CondVarTimeoutResult::Timeout => Woken::Timeout,
                kernel::sync::CondVarTimeoutResult::Woken { .. } => {
                    Woken::Event(current(&mut records))
                }
                kernel::sync::CondVarTimeoutResult::Signal { .. } => Woken::Signal,
            },
            None => {
                if queues.events.wait_interruptible(&mut records) {
                    Woken::Signal
                } else {
                    Woken::Event(current(&mut records))
                }
            }
        }
    }

    /// Reads the events of the queues given out, from the completion handler, and wakes the
    /// waiters when some queue counted one.
    pub(super) fn scan_queues(&self) {
        let hw = self.hw();
        if hw.queues.count == 0 {
            return;
        }
        let mut woke = false;
        let mut records = hw.queues.records.lock();
        for (q, r) in records.iter_mut().enumerate().skip(1) {
            if !r.taken {
                continue;
            }
            let regs = Regs::of(&hw.bar2, q);
            let Ok(events) = regs.read32(queue::EVENTS) else {
                continue;
            };
            if events == r.events {
                continue;
            }
            r.events = events;
            r.seen += 1;
            woke = true;
            if r.error.is_none() && matches!(regs.state(), Ok(QueueState::Error)) {
                if let Ok(error) = regs.error() {
                    r.error = Some(error);
                    if hw.log_limit.allow(c"conflux user queue") {
                        dev_err!(
                            hw.pdev,
                            "user queue {}: stopped on {} ({}), opcode {}, VA {:#x}\n",
                            q,
                            error.cause.name(),
                            u32::from(Bounded::<u32, 32>::from(error.cause)),
                            error.opcode,
                            error.va
                        );
                    }
                }
            }
        }
        drop(records);
        if woke {
            hw.queues.events.notify_all();
        }
    }
}

impl Hw<'_> {
    /// Before a reset: records the errors of the queues that stopped on one, which the reset
    /// clears, and stops enabling them.
    pub(super) fn queues_before_reset(&self) {
        let mut records = self.queues.records.lock();
        for (q, r) in records.iter_mut().enumerate().skip(1) {
            if !r.enabled {
                continue;
            }
            let regs = Regs::of(&self.bar2, q);
            if matches!(regs.state(), Ok(QueueState::Error)) {
                r.enabled = false;
                if r.error.is_none() {
                    r.error = regs.error().ok();
                }
            }
        }
    }

    /// After a reset, which stopped every queue with its state saved: enables again the ones
    /// the driver runs. The caller rings the doorbell.
    pub(super) fn queues_after_reset(&self) {
        let records = self.queues.records.lock();
        for (q, r) in records.iter().enumerate().skip(1) {
            if r.enabled {
                let regs = Regs::of(&self.bar2, q);
                let preempt = if r.holds > 0 { queue::PREEMPT } else { 0 };
                let _ = regs.write32(queue::CONTROL, queue::ENABLE | preempt);
            }
        }
        drop(records);
        // Waiters look again: an error the reset cleared is now recorded.
        self.queues.events.notify_all();
    }
}
