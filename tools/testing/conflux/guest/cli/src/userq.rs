// SPDX-License-Identifier: GPL-2.0

//! A user queue of a long-running VM as `conflux bench --long-running` and `bench-suite` drive
//! it: command slots written to a ring through a mapping, the head to the doorbell page, and
//! a memory fence per job that the producer waits for when the ring is full.

use std::path::Path;

use conflux::{map_op, uapi, Device};
use conflux_device::ring::{Command, Op};

const MIB: u64 = 1 << 20;
const VA: u64 = 1 << 32;

fn e(err: conflux::Error) -> String {
    err.to_string()
}

/// A user queue of a long-running file, its ring and its memory fence mapped.
pub(crate) struct UserRing {
    pub(crate) dev: Device,
    id: u32,
    ring: conflux::Mapping,
    doorbell: conflux::Mapping,
    fence: conflux::Mapping,
    head: u32,
    slots: u32,
    /// The jobs run so far, the last one's number in the fence.
    jobs: u64,
}

/// Where [`UserRing`] binds its ring and its fence; the jobs' buffers go from `UQ_DATA` on.
const UQ_RING: u64 = 40 * VA;
const UQ_FENCE: u64 = 40 * VA + MIB;
pub(crate) const UQ_DATA: u64 = 40 * VA + 2 * MIB;
/// The ring: 1024 slots.
const UQ_RING_SIZE: u64 = 64 * 1024;

impl UserRing {
    /// A new long-running file on `path` with a user queue.
    pub(crate) fn new(path: &Path) -> Result<Self, String> {
        let dev = Device::open(path).map_err(e)?;
        dev.vm_create(true).map_err(e)?;
        let map = |va: u64, len: u64, placement: u32| -> Result<conflux::Mapping, String> {
            let bo = dev.bo_create_in(len, placement).map_err(e)?.into_handle();
            dev.vm_bind(&[map_op(bo, 0, va, len, false)]).map_err(e)?;
            dev.map(bo).map_err(e)
        };
        let ring = map(UQ_RING, UQ_RING_SIZE, uapi::DRM_CONFLUX_BO_VRAM)?;
        let fence = map(UQ_FENCE, 4096, uapi::DRM_CONFLUX_BO_SYSTEM)?;
        let q = dev.userq_create(UQ_RING, UQ_RING_SIZE).map_err(e)?;
        let doorbell = dev.map(q.doorbell).map_err(e)?;
        Ok(Self {
            dev,
            id: q.id,
            ring,
            doorbell,
            fence,
            head: 0,
            // CAST: 1024.
            slots: (UQ_RING_SIZE / 64) as u32,
            jobs: 0,
        })
    }

    /// Runs `ops` as the next job, followed by a WRITE_VALUE of the job's number to the
    /// memory fence, once the ring has room for it; returns the job's number.
    pub(crate) fn run(&mut self, ops: &[Op]) -> Result<u64, String> {
        let per_job = ops.len() as u64 + 1;
        let room = u64::from(self.slots) / per_job;
        if room == 0 {
            return Err(format!(
                "a job of {per_job} commands does not fit in the ring"
            ));
        }
        self.jobs += 1;
        let job = self.jobs;
        if job > room {
            self.wait(job - room)?;
        }
        let mut all = ops.to_vec();
        all.push(Op::WriteValue {
            dst: UQ_FENCE,
            value: job,
        });
        self.push(&all);
        Ok(job)
    }

    /// Writes `ops` to the ring, the last with IRQ, then the head to the doorbell page.
    fn push(&mut self, ops: &[Op]) {
        for (i, op) in ops.iter().enumerate() {
            let slot = Command {
                seqno: 0,
                irq: i + 1 == ops.len(),
                op: *op,
            }
            .encode();
            self.ring
                .write((self.head % self.slots) as usize * slot.len(), &slot);
            self.head = self.head.wrapping_add(1);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: The doorbell page is mapped while `self` lives; its first u32 is the head.
        unsafe { std::ptr::write_volatile(self.doorbell.as_ptr().cast::<u32>(), self.head) };
    }

    /// Waits until the memory fence is at least `value`.
    pub(crate) fn wait(&self, value: u64) -> Result<(), String> {
        self.dev
            .wait_user_fence(self.id, self.fence.as_ptr().cast::<u64>(), value, -1)
            .map_err(e)
    }
}
