// SPDX-License-Identifier: GPL-2.0

//! Conflux buffer objects.

use core::pin::Pin;

use kernel::{
    drm::{
        self,
        gem, //
    },
    gpu::buddy::AllocatedBlocks,
    prelude::*, //
};

use crate::{
    driver::ConfluxDrm,
    mmu::{
        PageTables,
        Target,
        Vram,
        VramIo, //
    },
};

/// A Conflux buffer object in VRAM, or the memoryless object that carries a VM's reservation
/// object.
///
/// # Invariants
///
/// When present, `vram` holds exactly the object's size, and was zeroed by the engine before
/// the object was created. The object's byte `n` is in the block that covers `n` when the blocks
/// are laid end to end in their iteration order.
#[pin_data]
pub(crate) struct Bo {
    vram: Option<Pin<KBox<AllocatedBlocks>>>,
}

impl gem::DriverObject for Bo {
    type Driver = ConfluxDrm;
    type Args = Option<Pin<KBox<AllocatedBlocks>>>;

    fn new(
        _dev: &drm::Device<ConfluxDrm>,
        _size: usize,
        vram: Self::Args,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(Bo { vram })
    }
}

impl Bo {
    /// The VRAM pieces, `(VRAM offset, length)` in order, that hold bytes `offset..offset + len`
    /// of the buffer; [`EINVAL`] when it has no such bytes.
    pub(crate) fn segments(&self, offset: u64, len: u64) -> Result<KVec<(u64, u64)>> {
        let blocks = self.vram.as_ref().ok_or(EINVAL)?;
        let want_end = offset.checked_add(len).ok_or(EINVAL)?;
        let mut out = KVec::new();
        let mut start = 0u64;
        let mut done = 0u64;
        for block in blocks.iter() {
            let end = start + block.size();
            let from = offset + done;
            if end > from && from < want_end {
                let piece = want_end.min(end) - from;
                out.push((block.offset() + (from - start), piece), GFP_KERNEL)?;
                done += piece;
            }
            start = end;
        }
        if done != len {
            return Err(EINVAL);
        }
        Ok(out)
    }

    /// Maps bytes `offset..offset + len` of the buffer at `va` of `tables`, with 2 MiB entries
    /// where the blocks allow. Maps nothing when it fails; [`EINVAL`] when the buffer has no
    /// such bytes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map(
        &self,
        tables: &mut PageTables,
        vram: &Vram,
        io: &VramIo<'_>,
        va: u64,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result {
        let mut done = 0u64;
        for (at, piece) in self.segments(offset, len)? {
            if let Err(e) = tables.map(vram, io, va + done, Target::Vram(at), piece, writable) {
                tables.unmap(vram, io, va, done);
                return Err(e);
            }
            done += piece;
        }
        Ok(())
    }
}
