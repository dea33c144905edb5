// SPDX-License-Identifier: GPL-2.0

//! Jobs: their commands, and the table of jobs in flight, oldest first.

use kernel::prelude::*;

use crate::regs::{
    Opcode,
    Slot, //
};

/// The most jobs in flight at once.
pub(super) const MAX_JOBS: usize = 256;

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
    /// The command's slot in job `seqno`.
    pub(super) fn slot(&self, seqno: u64) -> Slot {
        let (opcode, operands) = match *self {
            Command::Copy { src, dst, len } => (Opcode::Copy, [src, dst, len]),
            Command::Fill { dst, len, pattern } => (Opcode::Fill, [dst, len, pattern]),
        };
        Slot {
            opcode,
            irq: false,
            seqno,
            operands,
        }
    }
}

/// A job in flight: its number, in the order the jobs were written, and its commands.
pub(super) struct Job {
    pub(super) seqno: u64,
    pub(super) commands: KVec<Command>,
}

impl Job {
    /// The slots of the job: its commands, then the `FENCE` that signals it.
    pub(super) fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        let fence = Slot {
            opcode: Opcode::Fence,
            irq: true,
            seqno: self.seqno,
            operands: [0; 3],
        };
        let commands = self.commands.iter().map(|c| c.slot(self.seqno));
        Iterator::chain(commands, core::iter::once(fence))
    }
}

/// The jobs in flight, oldest first: a ring buffer of [`MAX_JOBS`] entries.
///
/// # Invariants
///
/// `jobs` has [`MAX_JOBS`] entries; the `len` entries from `first` on (modulo [`MAX_JOBS`]) are
/// `Some` and in seqno order, the others `None`.
pub(super) struct Pending {
    jobs: KVec<Option<Job>>,
    first: usize,
    len: usize,
    /// The last value of `FENCE_SEQNO` taken for the device's: it only grows, and it stays
    /// below jobs that failed, which leave the table without completing.
    pub(super) reached: u64,
}

impl Pending {
    /// An empty table, for a device whose `FENCE_SEQNO` is `reached`.
    pub(super) fn new(reached: u64) -> Result<Self> {
        let mut jobs = KVec::with_capacity(MAX_JOBS, GFP_KERNEL_ACCOUNT)?;
        for _ in 0..MAX_JOBS {
            jobs.push(None, GFP_KERNEL_ACCOUNT)?;
        }
        Ok(Self {
            jobs,
            first: 0,
            len: 0,
            reached,
        })
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == MAX_JOBS
    }

    /// The jobs in flight, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Job> {
        (0..self.len).filter_map(|i| self.get(i))
    }

    fn get(&self, i: usize) -> Option<&Job> {
        if i >= self.len {
            return None;
        }
        self.jobs
            .get((self.first + i) % MAX_JOBS)
            .and_then(Option::as_ref)
    }

    pub(super) fn front(&self) -> Option<&Job> {
        self.get(0)
    }

    pub(super) fn back(&self) -> Option<&Job> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    /// Appends `job`, giving it back when [`MAX_JOBS`] are in flight.
    pub(super) fn push(&mut self, job: Job) -> core::result::Result<(), Job> {
        if self.is_full() {
            return Err(job);
        }
        match self.jobs.get_mut((self.first + self.len) % MAX_JOBS) {
            Some(slot) => {
                *slot = Some(job);
                self.len += 1;
                Ok(())
            }
            None => Err(job),
        }
    }

    pub(super) fn pop(&mut self) -> Option<Job> {
        if self.len == 0 {
            return None;
        }
        let job = self.jobs.get_mut(self.first).and_then(Option::take);
        self.first = (self.first + 1) % MAX_JOBS;
        self.len -= 1;
        job
    }
}
