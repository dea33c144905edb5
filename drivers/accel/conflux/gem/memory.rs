// SPDX-License-Identifier: GPL-2.0

//! The memory that holds a buffer's bytes: VRAM blocks or pages of system memory.
//!
//! Every way of reaching a buffer, by the engine through the page tables or by the CPU, walks
//! the buffer's extents laid end to end ([`for_each_piece`]).

use core::pin::Pin;

use kernel::{
    devres::Devres,
    dma::DataDirection,
    dma_segments::{
        DmaRange,
        PageMapping, //
    },
    gpu::buddy::AllocatedBlocks,
    page::{
        Page,
        PAGE_SIZE, //
    },
    pci::p2pdma::UserPages,
    prelude::*,
    sync::Arc,
};

use crate::{
    mmu::Target,
    vram::Vram, //
};

use super::moves::WindowLease;

/// What holds the bytes of one of the device's own buffers.
pub(crate) enum Memory {
    /// Nothing: the object that carries a VM's reservation object, or an imported buffer.
    None,
    /// VRAM blocks, zeroed by the engine before the object was created.
    Vram(Pin<KBox<AllocatedBlocks>>),
    /// Pages of system memory, zeroed by the page allocator, held by their mapping for the
    /// device's DMA; the device's unbind undoes the mapping and frees the pages. With the lease
    /// of the move window that maps them, once a move mapped them and the budget allowed it to
    /// stay.
    System(Devres<PageMapping>, Option<WindowLease>),
    /// VRAM of the range the device publishes as peer-to-peer memory, which userspace mapped
    /// and lent to the buffer: the pins of its pages, dropped at the device's unbind, and its
    /// VRAM offsets. It holds what userspace or another device put there, and never moves.
    Lent(Devres<UserPages>, DmaRange),
}

/// Calls `f` with the pieces of `extents`, laid end to end from byte 0 of a buffer, that hold
/// bytes `offset..offset + len`, in order: each as the extent's start plus the offset in it, and
/// the length. [`EINVAL`] when the extents do not hold them all.
pub(crate) fn for_each_piece(
    extents: impl Iterator<Item = DmaRange>,
    offset: u64,
    len: u64,
    mut f: impl FnMut(u64, u64) -> Result,
) -> Result {
    let want_end = offset.checked_add(len).ok_or(EINVAL)?;
    let (mut start, mut done) = (0u64, 0u64);
    for extent in extents {
        let end = start + extent.len();
        let from = offset + done;
        if end > from && from < want_end {
            let piece = want_end.min(end) - from;
            f(extent.addr() + (from - start), piece)?;
            done += piece;
        }
        start = end;
    }
    if done != len {
        return Err(EINVAL);
    }
    Ok(())
}

impl Memory {
    /// Allocates `size` bytes of zeroed system memory, mapped for the DMA of `vram`'s device.
    ///
    /// The memory is charged to the caller's memory cgroup; beyond its limit the allocation
    /// fails with [`ENOMEM`], and the OOM killer is left alone.
    pub(crate) fn system(vram: &Vram<'_>, size: u64) -> Result<Self> {
        // The pages, and the array of them, which may be large.
        let gfp = GFP_KERNEL_ACCOUNT | __GFP_NOWARN | __GFP_RETRY_MAYFAIL;
        // CAST: `PAGE_SIZE` fits in `u64`.
        let count = usize::try_from(size.div_ceil(PAGE_SIZE as u64))?;
        let mut pages = KVVec::with_capacity(count, gfp)?;
        for _ in 0..count {
            pages.push(Page::alloc_page(gfp | __GFP_ZERO)?, gfp)?;
        }
        let pages = Arc::new(pages, GFP_KERNEL_ACCOUNT)?;
        let dev = vram.device().as_ref();
        let mapping =
            PageMapping::new(dev, pages, DataDirection::Bidirectional, GFP_KERNEL_ACCOUNT)?;
        Ok(Memory::System(mapping, None))
    }

    /// Calls `f` with the pieces, `(target, length)` in order, that hold bytes
    /// `offset..offset + len` of the memory: VRAM offsets, or the bus addresses of system
    /// memory, pages at contiguous addresses merged. Allocates nothing.
    pub(crate) fn for_each_piece(
        &self,
        vram: &Vram<'_>,
        offset: u64,
        len: u64,
        mut f: impl FnMut(Target, u64) -> Result,
    ) -> Result {
        match self {
            Memory::None => Err(EINVAL),
            Memory::Vram(blocks) => {
                let extents = blocks
                    .iter()
                    .filter_map(|b| DmaRange::new(b.offset(), b.size()).ok());
                for_each_piece(extents, offset, len, |at, n| f(Target::Vram(at), n))
            }
            Memory::System(dma, _) => {
                let dma = dma.access(vram.device().as_ref())?;
                for_each_piece(dma.ranges(), offset, len, |at, n| f(Target::Bus(at), n))
            }
            Memory::Lent(pins, range) => {
                // The VRAM is the buffer's while the pages are pinned, until the unbind.
                pins.access(vram.device().as_ref())?;
                let extents = core::iter::once(*range);
                for_each_piece(extents, offset, len, |at, n| f(Target::Vram(at), n))
            }
        }
    }

    /// Copies bytes `offset..offset + buf.len()` of the memory into `buf`, or from `buf` when
    /// `write`, with the CPU.
    pub(crate) fn cpu_copy(
        &self,
        vram: &Vram<'_>,
        offset: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result {
        let len = u64::try_from(buf.len())?;
        match self {
            Memory::None => Err(EINVAL),
            Memory::Vram(_) | Memory::Lent(..) => {
                let mut done = 0usize;
                self.for_each_piece(vram, offset, len, |target, piece| {
                    let Target::Vram(at) = target else {
                        return Err(EINVAL);
                    };
                    let piece = usize::try_from(piece)?;
                    let part = buf.get_mut(done..done + piece).ok_or(EINVAL)?;
                    if write {
                        vram.write(at, part)?;
                    } else {
                        vram.read(at, part)?;
                    }
                    done += piece;
                    Ok(())
                })
            }
            Memory::System(dma, _) => {
                let pages = dma.access(vram.device().as_ref())?.pages();
                let mut at = usize::try_from(offset)?;
                let mut done = 0usize;
                while done < buf.len() {
                    let page = pages.get(at / PAGE_SIZE).ok_or(EINVAL)?;
                    let in_page = at % PAGE_SIZE;
                    let n = (PAGE_SIZE - in_page).min(buf.len() - done);
                    let part = buf.get_mut(done..done + n).ok_or(EINVAL)?;
                    // SAFETY: `part` is valid for `n` bytes and `in_page + n <= PAGE_SIZE`. The
                    // caller waited for the jobs that use the memory (new memory has none yet); a
                    // job submitted since then reaches the page by DMA, outside the CPU's accesses.
                    unsafe {
                        if write {
                            page.write_raw(part.as_ptr(), in_page, n)?;
                        } else {
                            page.read_raw(part.as_mut_ptr(), in_page, n)?;
                        }
                    }
                    at += n;
                    done += n;
                }
                Ok(())
            }
        }
    }
}
