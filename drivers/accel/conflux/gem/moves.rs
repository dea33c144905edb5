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
    dma_buf::ExportsGuard,
    dma_fence::Fence,
    dma_resv::{
        ResvLocked,
        Usage, //
    },
    drm::gem::BaseObject,
    gpu::buddy::AllocatedBlocks,
    prelude::*,
    sync::{
        aref::ARef,
        Arc, //
    },
    time::{
        delay::fsleep,
        Delta,
        Jiffies, //
    },
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

use super::{
    lru::Lru,
    memory::Memory, //
};

/// What the last job of a move keeps until the engine is done with it: the memory the buffer
/// left, and the window's addresses of the sides that do not keep their own.
pub(crate) struct MoveKeep {
    _old: Option<Memory>,
    _leases: [Option<Lease>; 2],
}

/// Window addresses that system memory keeps mapped for its next move: a buffer that goes back
/// and forth between VRAM and the same pages (its spare, [`Bo::keep_spare`](super::Bo)) then
/// maps them once. Counted in the device's budget ([`Lru::window`](super::lru::Lru)), which it
/// gives back when dropped.
///
/// # Invariants
///
/// `size` bytes of `lru.window` are taken for the lease.
pub(crate) struct WindowLease {
    blocks: Lease,
    lru: Arc<Lru>,
    size: u64,
}

impl Drop for WindowLease {
    fn drop(&mut self) {
        // By the type invariants, the bytes were taken.
        self.lru.window.give(self.size);
    }
}

/// A lease of window addresses.
type Lease = Pin<KBox<AllocatedBlocks>>;

/// The window's addresses of one side of a move.
struct Window {
    /// The addresses, laid end to end.
    ranges: KVec<(u64, u64)>,
    /// A lease that the memory does not keep: the move keeps it until the engine is done.
    keep: Option<Lease>,
}

/// The window's addresses of the first `size` bytes of `memory`, laid end to end: the lease
/// system memory keeps, or a new lease. System memory keeps the new lease when the budget
/// allows; otherwise it is returned, for the move to keep until the engine is done with it.
fn window_of(data: &DeviceData<'_>, memory: &mut Memory, size: u64, drain: bool) -> Result<Window> {
    let ranges = |blocks: &AllocatedBlocks| -> Result<KVec<(u64, u64)>> {
        let mut out = KVec::new();
        for range in DeviceData::window_ranges(blocks) {
            out.push(range, GFP_KERNEL_ACCOUNT)?;
        }
        Ok(out)
    };
    if let Memory::System(_, Some(lease)) = memory {
        return Ok(Window {
            ranges: ranges(&lease.blocks)?,
            keep: None,
        });
    }
    let blocks = map_window(data, &*memory, size, drain)?;
    let out = ranges(&blocks)?;
    match memory {
        Memory::System(_, cached) if data.lru.window.take(size) => {
            // INVARIANT: `size` bytes of the budget were just taken.
            *cached = Some(WindowLease {
                blocks,
                lru: data.lru.clone(),
                size,
            });
            Ok(Window {
                ranges: out,
                keep: None,
            })
        }
        _ => Ok(Window {
            ranges: out,
            keep: Some(blocks),
        }),
    }
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
    mut to: Memory,
    locked: &impl ResvLocked,
) -> Result<ARef<Fence>> {
    // CAST: `usize` fits in `u64`.
    let size = obj.size() as u64;
    let mut memory = obj.memory();
    // The move of an exported buffer may run with the device's list of exported buffers
    // locked, which the engine's worker may wait for when it drops an import: the window is
    // not drained for it.
    let drain = !obj.is_exported();
    let src = window_of(data, &mut memory, size, drain)?;
    let dst = window_of(data, &mut to, size, drain)?;
    let commands = copy_jobs(src.ranges.into_iter(), dst.ranges.into_iter(), size)?;
    let mut jobs = KVec::with_capacity(commands.len(), GFP_KERNEL_ACCOUNT)?;
    for job in commands {
        let job = data
            .engine
            .prepare(data.kernel_root(), job, kept_buffer(obj)?, None)?;
        jobs.push(job, GFP_KERNEL_ACCOUNT)?;
    }
    if let Some(first) = jobs.first_mut() {
        obj.dma_resv()
            .for_each_fence(locked, Usage::Bookkeep, |f| {
                first.add_implicit_dependency(f, GFP_KERNEL_ACCOUNT)
            })?;
    }
    // Room in the engine's queue for every part, so that queueing them allocates nothing.
    let mut room = data.engine.reserve(jobs.len())?;
    // Nothing fails from here on but a queue that refuses jobs, which a device going away does.
    obj.unmap_userspace();
    let old = core::mem::replace(&mut *memory, to);
    // A buffer that comes back to VRAM keeps its system memory for its next eviction: the
    // jobs keep the buffer until the copy has read it, and the next move that writes it runs
    // after this one.
    let old = match old {
        old @ Memory::System(..) if matches!(*memory, Memory::Vram(_)) => obj.keep_spare(old),
        old => Some(old),
    };
    if let Some(last) = jobs.last_mut().and_then(|j| j.job_mut()) {
        last.moved = Some(MoveKeep {
            _old: old,
            _leases: [src.keep, dst.keep],
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
        fence = Some(data.engine.enqueue_reserved(job, &mut room)?);
    }
    obj.count_move();
    data.moves.bytes.fetch_add(size, Ordering::Relaxed);
    fence.ok_or(EINVAL)
}

/// Maps `memory` into the move window; when the window is full of moves in flight and `drain`
/// allows, drops the ones that ended and tries again.
fn map_window(
    data: &DeviceData<'_>,
    memory: &Memory,
    size: u64,
    drain: bool,
) -> Result<Pin<KBox<AllocatedBlocks>>> {
    data.map_window(memory, size).or_else(|e| {
        if e != ENOSPC || !drain {
            return Err(e);
        }
        data.engine.retire_finished();
        data.map_window(memory, size)
    })
}

/// Evicts buffers of the device to system memory, least recently used first and idle ones
/// before busy ones, until VRAM has `need` bytes available or no buffer is left to evict; the
/// buffers of `keep` (a job's) stay. Waits for the copies, and for the engine's worker to drop
/// them, so that the VRAM is free on return: the caller holds no reservation lock, which the
/// worker may wait for. Returns whether anything was evicted.
///
/// Only buffers that may be in either place and that no importer pinned move
/// ([`Bo::evictable`](super::Bo::evictable)). The importers of an exported buffer lose their
/// mappings first, once their jobs that use the buffer have finished.
///
/// The caller holds no reservation lock but may hold a VM's lock, which the holder of a
/// buffer's reservation lock may be waiting for: a buffer whose lock someone holds is passed
/// by, and when that leaves VRAM short the candidates are tried again, up to
/// [`CONTENDED_RETRIES`] times a millisecond apart. Such a holder is brief (a CPU fault that
/// waits for a move, a job's submission, another eviction): without the retries, a buffer
/// written through a CPU mapping would be all but impossible to evict.
pub(crate) fn make_room(data: &DeviceData<'_>, need: u64, keep: &[ARef<Object>]) -> Result<bool> {
    data.engine.retire_finished();
    let want = need.saturating_sub(data.vram.avail());
    if want == 0 {
        return Ok(false);
    }
    let mut fences = KVec::new();
    let mut freed = 0u64;
    let mut retries = 0;
    let evicted = (|| -> Result {
        loop {
            let contended = evict_some(data, want, keep, &mut freed, &mut fences)?;
            if freed >= want || !contended || retries == CONTENDED_RETRIES {
                return Ok(());
            }
            retries += 1;
            fsleep(Delta::from_millis(1));
        }
    })();
    // The moves queued before a failure run all the same.
    data.engine.start();
    for fence in fences.iter() {
        // The VRAM is freed with the move's last job; a failed copy fails the jobs that use the
        // buffer next, as any move's does.
        fence.wait(false)?;
    }
    data.engine.retire_finished();
    match evicted {
        Err(e) if fences.is_empty() => Err(e),
        _ => Ok(!fences.is_empty()),
    }
}

/// The bytes of VRAM that [`make_room`] could free by evicting buffers other than `keep`: the
/// movable buffers in VRAM that nothing pins, whether someone holds their lock or not.
pub(crate) fn evictable_bytes(data: &DeviceData<'_>, keep: &[ARef<Object>]) -> Result<u64> {
    let candidates = data.lru.buffers()?;
    Ok(candidates
        .iter()
        .filter(|obj| matches!(*obj.memory(), Memory::Vram(_)) && obj.evictable())
        .filter(|obj| !keep.iter().any(|k| core::ptr::eq::<Object>(&**k, &***obj)))
        // CAST: `usize` fits in `u64`.
        .map(|obj| obj.size() as u64)
        .fold(0, u64::saturating_add))
}

/// How many times [`make_room`] tries its candidates again when buffers it could evict were
/// locked by someone else.
const CONTENDED_RETRIES: u32 = 200;

/// One pass of [`make_room`] over the device's movable buffers: starts the evictions that free
/// `want` bytes (`freed` counts them, `fences` takes their fences). Returns whether a buffer was
/// passed by because someone held its reservation lock.
fn evict_some(
    data: &DeviceData<'_>,
    want: u64,
    keep: &[ARef<Object>],
    freed: &mut u64,
    fences: &mut KVec<ARef<Fence>>,
) -> Result<bool> {
    let candidates = data.lru.buffers()?;
    let mut contended = false;
    for idle_only in [true, false] {
        for obj in candidates.iter() {
            if *freed >= want {
                break;
            }
            let resv = obj.dma_resv();
            let in_vram = matches!(*obj.memory(), Memory::Vram(_));
            let kept = keep.iter().any(|k| core::ptr::eq::<Object>(&**k, &**obj));
            if !in_vram || kept || !obj.evictable() {
                continue;
            }
            if idle_only != resv.test_signaled(Usage::Bookkeep) {
                continue;
            }
            // The dma-bufs of an exported buffer stay while the list is locked, which comes
            // before the reservation lock.
            let exports = obj.is_exported().then(|| data.exports.lock());
            let Some(mut guard) = resv.try_lock() else {
                contended = true;
                continue;
            };
            // The page-table entries of the VRAM go: the jobs that use them finish first. The
            // engine's watchdog ends a job that does not complete.
            while !resv.wait_timeout(Usage::Bookkeep, true, Jiffies::MAX)? {}
            // Exported since: the list is needed to tell its importers.
            if !matches!(*obj.memory(), Memory::Vram(_))
                || !obj.evictable()
                || (obj.is_exported() && exports.is_none())
            {
                continue;
            }
            // CAST: `usize` fits in `u64`.
            let size = obj.size() as u64;
            let system = match obj.take_spare() {
                Some(spare) => spare,
                None => Memory::system(&data.vram, size)?,
            };
            guard.reserve_fences(1)?;
            fences.reserve(1, GFP_KERNEL_ACCOUNT)?;
            if let Some(exports) = &exports {
                invalidate_importers(obj, exports, &guard)?;
            }
            let fence = match start(data, obj, system, &guard) {
                Ok(fence) => fence,
                // The window is full of moves in flight: a smaller buffer may still move.
                Err(e) if e == ENOSPC => continue,
                Err(e) => return Err(e),
            };
            // Cannot fail: a slot is reserved, and room in `fences` made.
            guard.add_fence(&fence, Usage::Kernel)?;
            fences.push(fence, GFP_KERNEL_ACCOUNT)?;
            data.moves.evictions.fetch_add(1, Ordering::Relaxed);
            *freed += size;
        }
    }
    Ok(contended)
}

/// The bytes of VRAM that the buffers of `used` which [`bring_back`] would move need.
pub(crate) fn room_to_bring_back(data: &DeviceData<'_>, used: &[ARef<Object>]) -> u64 {
    used.iter()
        .filter(|obj| returns(data, obj))
        // CAST: `usize` fits in `u64`.
        .map(|obj| obj.size() as u64)
        .sum()
}

/// Invalidates the mappings of the importers of `obj`, an exported buffer whose memory is about
/// to change: those of every dma-buf made for it, which `exports` holds. Their next map, under
/// the reservation lock that `locked` holds until the move's fence is in, waits for the move.
fn invalidate_importers(
    obj: &Object,
    exports: &ExportsGuard<'_>,
    locked: &impl ResvLocked,
) -> Result {
    for buf in exports.buffers_sharing(obj.dma_resv()) {
        buf.invalidate_mappings(locked)?;
    }
    Ok(())
}

/// Whether `obj` is a buffer that [`bring_back`] moves: in system memory, evictable, attached
/// to no importer that cannot reach VRAM, and not so large that it would push out half of VRAM
/// each time.
pub(crate) fn returns(data: &DeviceData<'_>, obj: &Object) -> bool {
    obj.evictable()
        && obj.far_importers().load(Ordering::Relaxed) == 0
        && matches!(*obj.memory(), Memory::System(..))
        // CAST: `usize` fits in `u64`.
        && obj.size() as u64 <= data.vram.size() / 2
}

/// Moves `obj`, a movable buffer of `data`'s device in system memory, back to VRAM for a job
/// that uses it, when VRAM has room for it: the caller made room first, before it took the
/// locks ([`room_to_bring_back`], [`make_room`]). An exported buffer moves only when the caller
/// locked the device's list of exported buffers (`exports`) before the reservation locks: its
/// importers' mappings are invalidated. Returns the move's fence, in the reservation object,
/// which `locked` holds with a fence slot reserved; [`None`] when the buffer stays where it is.
pub(crate) fn bring_back(
    data: &DeviceData<'_>,
    obj: &Object,
    exports: Option<&ExportsGuard<'_>>,
    locked: &impl ResvLocked,
) -> Result<Option<ARef<Fence>>> {
    if !returns(data, obj) || (obj.is_exported() && exports.is_none()) {
        return Ok(None);
    }
    // CAST: `usize` fits in `u64`.
    let size = obj.size() as u64;
    // Eviction waits for the engine's worker to drop the moves, which must not wait for the
    // locks held here: room was made before they were taken ([`make_room`]).
    let vram = match data.vram.alloc_buffer(size) {
        Ok(vram) => vram,
        Err(e) if e == ENOSPC => return Ok(None),
        Err(e) => return Err(e),
    };
    let resv = obj.dma_resv();
    // The page-table entries of the system memory go: the jobs that use them finish first.
    while !resv.wait_timeout(Usage::Bookkeep, true, Jiffies::MAX)? {}
    resv.reserve_locked(locked, 1)?;
    if let Some(exports) = exports.filter(|_| obj.is_exported()) {
        invalidate_importers(obj, exports, locked)?;
    }
    let fence = match start(data, obj, Memory::Vram(vram), locked) {
        Ok(fence) => fence,
        // The move window is full of moves in flight: the buffer stays for this job.
        Err(e) if e == ENOSPC => return Ok(None),
        Err(e) => return Err(e),
    };
    // Cannot fail: the slot is reserved.
    resv.add_fence_locked(locked, &fence, Usage::Kernel)?;
    data.moves.returns.fetch_add(1, Ordering::Relaxed);
    Ok(Some(fence))
}

/// Allocates `size` bytes of VRAM for a buffer ([`Vram::alloc_buffer`]), evicting buffers that
/// are not in `keep` when VRAM is short; [`ENOSPC`] when no eviction makes room.
///
/// [`Vram::alloc_buffer`]: crate::vram::Vram::alloc_buffer
pub(crate) fn alloc_vram(
    data: &DeviceData<'_>,
    size: u64,
    keep: &[ARef<Object>],
) -> Result<Pin<KBox<AllocatedBlocks>>> {
    loop {
        match data.vram.alloc_buffer(size) {
            Err(e) if e == ENOSPC => {}
            blocks => return blocks,
        }
        // Jobs that have finished keep their buffers until the engine drops them, shortly
        // after their fences signal: that is done first.
        if !make_room(data, size, keep)? {
            return data.vram.alloc_buffer(size);
        }
    }
}

/// The buffer a job of a move keeps alive until the engine is done with it: it holds the
/// system memory a return leaves behind.
fn kept_buffer(obj: &Object) -> Result<KVec<ARef<Object>>> {
    let mut kept = KVec::with_capacity(1, GFP_KERNEL_ACCOUNT)?;
    kept.push(obj.into(), GFP_KERNEL_ACCOUNT)?;
    Ok(kept)
}
