// SPDX-License-Identifier: GPL-2.0

//! One page table: 512 entries in VRAM, and their shadow in system memory.
//!
//! The driver never reads VRAM to walk its own tables: every entry it writes is also kept in the
//! shadow, with the table of the level below when the entry is a directory.

use core::pin::Pin;

use kernel::{
    gpu::buddy::AllocatedBlocks,
    prelude::*,
    ptr::Alignment,
    sizes::SZ_4K, //
};

use crate::{
    regs::{
        Pte,
        TABLE_ENTRIES,
        TABLE_SIZE, //
    },
    vram::Vram,
};

/// A page table in VRAM and its shadow.
///
/// # Invariants
///
/// `entries` and `children` have [`TABLE_ENTRIES`] entries; `entries` is what the table in VRAM
/// at `offset` holds; `children[i]` is `Some` exactly when `entries[i]` is a directory.
pub(super) struct Table {
    _mem: Pin<KBox<AllocatedBlocks>>,
    offset: u64,
    entries: KVec<Pte>,
    pub(super) children: KVec<Option<KBox<Table>>>,
}

impl Table {
    /// Allocates a table and writes it empty.
    pub(super) fn new(vram: &Vram<'_>) -> Result<KBox<Self>> {
        let mem = vram.alloc(TABLE_SIZE, Alignment::new::<SZ_4K>())?;
        let offset = mem.iter().next().map(|b| b.offset()).ok_or(ENOMEM)?;
        let mut entries = KVec::with_capacity(TABLE_ENTRIES, GFP_KERNEL_ACCOUNT)?;
        let mut children = KVec::with_capacity(TABLE_ENTRIES, GFP_KERNEL_ACCOUNT)?;
        for _ in 0..TABLE_ENTRIES {
            entries.push(Pte::INVALID, GFP_KERNEL_ACCOUNT)?;
            children.push(None, GFP_KERNEL_ACCOUNT)?;
        }
        for i in 0..TABLE_ENTRIES {
            write_entry(vram, offset, i, Pte::INVALID)?;
        }
        Ok(KBox::new(
            Self {
                _mem: mem,
                offset,
                entries,
                children,
            },
            GFP_KERNEL_ACCOUNT,
        )?)
    }

    /// The VRAM offset of the table.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// Writes entry `index`, in VRAM and in the shadow.
    pub(super) fn set(&mut self, vram: &Vram<'_>, index: usize, entry: Pte) -> Result {
        write_entry(vram, self.offset, index, entry)?;
        if let Some(e) = self.entries.get_mut(index) {
            *e = entry;
        }
        Ok(())
    }

    /// Entry `index`, from the shadow.
    pub(super) fn entry(&self, index: usize) -> Pte {
        self.entries.get(index).copied().unwrap_or(Pte::INVALID)
    }

    /// Whether no entry is valid.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.iter().all(|e| !e.valid())
    }
}

/// Writes entry `index` of the table at VRAM offset `table`. A valid entry is written high half
/// first, so the device never sees a valid low half with a stale high half; an invalid one low
/// half first.
fn write_entry(vram: &Vram<'_>, table: u64, index: usize, entry: Pte) -> Result {
    let offset = table + 8 * index as u64;
    let raw = entry.into_raw();
    // CAST: the two halves of the entry.
    let (lo, hi) = (raw as u32, (raw >> 32) as u32);
    if entry.valid() {
        vram.write32(offset + 4, hi)?;
        vram.write32(offset, lo)
    } else {
        vram.write32(offset, lo)?;
        vram.write32(offset + 4, hi)
    }
}
