// SPDX-License-Identifier: GPL-2.0

//! Moves of a buffer between VRAM and system memory, as jobs of the engine.
//!
//! A move maps both sides into the window of the kernel's address space and copies the buffer
//! with `COPY` commands. The buffer takes its new memory at once: the address spaces that map
//! it, its importers and its userspace mappings lose the old memory, and what uses the buffer
//! next waits for the move's fence, which the caller adds to the buffer's reservation object
//! with [`Usage::Kernel`]: jobs depend on it, the CPU waits for it. The memory the buffer left
//! goes with the move's last job, once the engine is done with it.

use core::{
    pin::Pin,
    sync::atomic::Ordering, //
};

use kernel::{
    dma_fence::Fence,
    dma_resv::{
        ResvLocked,
        Usage, //
    },
    drm::gem::BaseObject,
    gpu::buddy::AllocatedBlocks,
    prelude::*,
    sync::aref::ARef,
};

use crate::{
    driver::Object,
    engine::{
        Command,
        MAX_JOB_COMMANDS, //
    },
    hw::DeviceData,
    regs::MAX_COMMAND_LEN,
};

use super::memory::Memory;

/// What the last job of a move keeps until the engine is done with it: the memory the buffer
/// left, and the window's addresses of both sides.
pub(crate) struct MoveKeep {
    _old: Memory,
    _leases: [Pin<KBox<AllocatedBlocks>>; 2],
}

/// The `COPY` commands from the ranges `src` to the ranges `dst`, each laid end to end, in jobs
/// of at most [`MAX_JOB_COMMANDS`]; [`EINVAL`] unless both hold `size` bytes.
fn copy_jobs(
    src: impl Iterator<Item = (u64, u64)>,
    dst: impl Iterator<Item = (u64, u64)>,
    size: u64,
) -> Result<KVec<KVec<Command>>> {
    let (mut src, mut dst) = (src.peekable(), dst.peekable());
    let (mut in_src, mut in_dst, mut done) = (0u64, 0u64, 0u64);
    let mut jobs = KVec::new();
    let mut cur = KVec::new();
    while let (Some(&(s, s_len)), Some(&(d, d_len))) = (src.peek(), dst.peek()) {
        let n = (s_len - in_src).min(d_len - in_dst).min(MAX_COMMAND_LEN);
        let copy = Command::Copy {
            src: s + in_src,
            dst: d + in_dst,
            len: n,
        };
        cur.push(copy, GFP_KERNEL_ACCOUNT)?;
        (in_src, in_dst, done) = (in_src + n, in_dst + n, done + n);
        if in_src == s_len {
            src.next();
            in_src = 0;
        }
        if in_dst == d_len {
            dst.next();
            in_dst = 0;
        }
        if cur.len() == MAX_JOB_COMMANDS {
            jobs.push(core::mem::take(&mut cur), GFP_KERNEL_ACCOUNT)?;
        }
    }
    if !cur.is_empty() {
        jobs.push(cur, GFP_KERNEL_ACCOUNT)?;
    }
    if done != size {
        return Err(EINVAL);
    }
    Ok(jobs)
}

/// Moves `obj`, a buffer of `data`'s device, to `to`, and returns the fence of the move, for
/// the caller to add to the buffer's reservation object with [`Usage::Kernel`].
///
/// The caller holds the reservation lock (`locked`) and reserved a fence slot, and waited for
/// every job that uses the buffer, or that job still has the old memory mapped: the entries of
/// the device's address spaces are cleared here, and the next job maps the new memory. The copy
/// itself waits, on the engine, for the fences in the reservation object: earlier moves. The
/// caller tells the importers and starts the engine once it has released the lock. Nothing
/// changes when this fails.
pub(crate) fn start(
    data: &DeviceData<'_>,
    obj: &Object,
    to: Memory,
    locked: &impl ResvLocked,
) -> Result<ARef<Fence>> {
    // CAST: `usize` fits in `u64`.
    let size = obj.size() as u64;
    let mut memory = obj.memory();
    let src = map_window(data, &memory, size)?;
    let dst = map_window(data, &to, size)?;
    let commands = copy_jobs(
        DeviceData::window_ranges(&src),
        DeviceData::window_ranges(&dst),
        size,
    )?;
    let mut jobs = KVec::with_capacity(commands.len(), GFP_KERNEL_ACCOUNT)?;
    for job in commands {
        let job = data
            .engine
            .prepare(data.kernel_root(), job, KVec::new(), None)?;
        jobs.push(job, GFP_KERNEL_ACCOUNT)?;
    }
    if let Some(first) = jobs.first_mut() {
        obj.dma_resv()
            .for_each_fence(locked, Usage::Bookkeep, |f| {
                first.add_implicit_dependency(f, GFP_KERNEL_ACCOUNT)
            })?;
    }
    // Nothing fails from here on but a queue that refuses jobs, which a device going away does.
    obj.unmap_userspace();
    let old = core::mem::replace(&mut *memory, to);
    if let Some(last) = jobs.last_mut().and_then(|j| j.job_mut()) {
        last.moved = Some(MoveKeep {
            _old: old,
            _leases: [src, dst],
        });
    }
    drop(memory);
    obj.spaces().invalidate(Some(&data.vram));
    let mut fence: Option<ARef<Fence>> = None;
    for mut job in jobs {
        if let Some(prev) = &fence {
            // A part of the move fails the parts after it, and so the move's fence. Without
            // memory for the link, the engine still runs the parts in order.
            let _ = job.add_dependency(prev, GFP_KERNEL_ACCOUNT);
        }
        fence = Some(data.engine.enqueue(job, false)?);
    }
    obj.count_move();
    data.moves.bytes.fetch_add(size, Ordering::Relaxed);
    fence.ok_or(EINVAL)
}

/// Maps `memory` into the move window; when the window is full of moves in flight, drops the
/// ones that ended and tries again.
fn map_window(
    data: &DeviceData<'_>,
    memory: &Memory,
    size: u64,
) -> Result<Pin<KBox<AllocatedBlocks>>> {
    data.map_window(memory, size).or_else(|e| {
        if e != ENOSPC {
            return Err(e);
        }
        data.engine.retire_finished();
        data.map_window(memory, size)
    })
}
