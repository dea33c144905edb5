// SPDX-License-Identifier: GPL-2.0

//! The device's VRAM: its allocator, and the CPU's access to it through BAR2.
//!
//! VRAM is managed by the GPU buddy allocator in 4 KiB chunks. The CPU reaches it through the
//! mapping of BAR2, 32 bits at a time; the engine reaches it by VRAM offset. [`Vram`] is the
//! one value the layers above pass around to allocate, read and write device memory.

use core::pin::Pin;

use kernel::{
    device::Bound,
    gpu::buddy::{
        AllocatedBlocks,
        GpuBuddy,
        GpuBuddyAllocFlags,
        GpuBuddyAllocMode,
        GpuBuddyParams, //
    },
    io::Io,
    pci,
    prelude::*,
    ptr::Alignment,
    sizes::{
        SZ_2M,
        SZ_4K, //
    },
    sync::Arc,
};

use crate::regs::{
    Bar2,
    CTL_BAR, //
};

/// The VRAM of a bound device.
///
/// # Invariants
///
/// `_reserved` holds VRAM offset 0, which no page table may use: `MMU_ROOT = 0` turns the MMU
/// off. VRAM is `size` bytes at BAR2 offset `base` of `bar2`.
pub(crate) struct Vram<'bound> {
    pdev: &'bound pci::Device<Bound>,
    bar2: Arc<Bar2<'bound>>,
    base: usize,
    size: u64,
    buddy: GpuBuddy,
    _reserved: Pin<KBox<AllocatedBlocks>>,
}

impl<'bound> Vram<'bound> {
    /// Manages the `size` bytes of VRAM at BAR2 offset `offset` of `pdev`.
    pub(crate) fn new(
        pdev: &'bound pci::Device<Bound>,
        bar2: Arc<Bar2<'bound>>,
        offset: u64,
        size: u64,
    ) -> Result<Self> {
        let buddy = GpuBuddy::new(GpuBuddyParams {
            base_offset: 0,
            size,
            chunk_size: Alignment::new::<SZ_4K>(),
        })?;
        let reserved = KBox::pin_init(
            buddy.alloc_blocks(
                GpuBuddyAllocMode::Range(0..SZ_4K as u64),
                SZ_4K as u64,
                Alignment::new::<SZ_4K>(),
                GpuBuddyAllocFlags::default(),
            ),
            GFP_KERNEL,
        )?;
        Ok(Self {
            pdev,
            bar2,
            base: usize::try_from(offset)?,
            size,
            buddy,
            _reserved: reserved,
        })
    }

    /// The device the VRAM belongs to, which also maps system memory for its jobs.
    pub(crate) fn device(&self) -> &'bound pci::Device<Bound> {
        self.pdev
    }

    /// Size of VRAM in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of VRAM not allocated.
    pub(crate) fn avail(&self) -> u64 {
        self.buddy.avail()
    }

    /// The CPU physical address of VRAM offset 0, through BAR2.
    pub(crate) fn phys_base(&self) -> Result<u64> {
        // CAST: `usize` fits in `u64`.
        Ok(self.pdev.resource_start(CTL_BAR)? + self.base as u64)
    }

    /// Allocates `size` bytes, a multiple of 4 KiB, in blocks of at least `min_block` bytes.
    pub(crate) fn alloc(
        &self,
        size: u64,
        min_block: Alignment,
    ) -> Result<Pin<KBox<AllocatedBlocks>>> {
        KBox::pin_init(
            self.buddy.alloc_blocks(
                GpuBuddyAllocMode::Simple,
                size,
                min_block,
                GpuBuddyAllocFlags::default(),
            ),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Allocates bytes `start..start + size` of VRAM, multiples of 4 KiB, exactly.
    pub(crate) fn alloc_range(&self, start: u64, size: u64) -> Result<Pin<KBox<AllocatedBlocks>>> {
        let end = start.checked_add(size).ok_or(EINVAL)?;
        KBox::pin_init(
            self.buddy.alloc_blocks(
                GpuBuddyAllocMode::Range(start..end),
                size,
                Alignment::new::<SZ_4K>(),
                GpuBuddyAllocFlags::default(),
            ),
            GFP_KERNEL,
        )
    }

    /// Allocates `size` bytes, preferring blocks of 2 MiB so that they can be mapped with
    /// 2 MiB entries, and falling back to 4 KiB blocks when VRAM is fragmented.
    pub(crate) fn alloc_buffer(&self, size: u64) -> Result<Pin<KBox<AllocatedBlocks>>> {
        if size >= SZ_2M as u64 && size % SZ_2M as u64 == 0 {
            if let Ok(blocks) = self.alloc(size, Alignment::new::<SZ_2M>()) {
                return Ok(blocks);
            }
        }
        self.alloc(size, Alignment::new::<SZ_4K>())
    }

    /// The BAR2 offset of VRAM offset `offset`.
    fn at(&self, offset: u64) -> Result<usize> {
        self.base
            .checked_add(usize::try_from(offset)?)
            .ok_or(EINVAL)
    }

    /// Reads the VRAM bytes at `offset`, a multiple of 4, into `out`, whose length is one.
    pub(crate) fn read(&self, offset: u64, out: &mut [u8]) -> Result {
        let mut at = self.at(offset)?;
        for word in out.chunks_exact_mut(4) {
            word.copy_from_slice(&self.bar2.try_read32(at)?.to_le_bytes());
            at = at.checked_add(4).ok_or(EINVAL)?;
        }
        Ok(())
    }

    /// Writes `data`, whose length is a multiple of 4, to VRAM at `offset`, a multiple of 4.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result {
        let mut at = self.at(offset)?;
        for word in data.chunks_exact(4) {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(word);
            self.bar2.try_write32(u32::from_le_bytes(bytes), at)?;
            at = at.checked_add(4).ok_or(EINVAL)?;
        }
        Ok(())
    }

    /// Writes the 32-bit `value` at VRAM offset `offset`.
    pub(crate) fn write32(&self, offset: u64, value: u32) -> Result {
        self.bar2.try_write32(value, self.at(offset)?)
    }
}
