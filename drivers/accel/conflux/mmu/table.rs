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
            write_entry(vram, offset + 8 * i as u64, Pte::INVALID)?;
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

    /// Writes entry `index` in the shadow, and in VRAM or, when `log` is given, in the log that
    /// writes it to VRAM later.
    pub(super) fn set(
        &mut self,
        vram: &Vram<'_>,
        log: Option<&mut WriteLog>,
        index: usize,
        entry: Pte,
    ) -> Result {
        let offset = self.offset + 8 * index as u64;
        match log {
            Some(log) => log.push(vram, offset, entry)?,
            None => write_entry(vram, offset, entry)?,
        }
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

/// Page-table writes kept for later, in order: what a bind that waits for fences changes in
/// VRAM once they have signalled, while the shadow shows it at once.
///
/// # Invariants
///
/// Every entry is a VRAM offset of a page-table entry and the value to write there.
pub(crate) struct WriteLog {
    writes: KVVec<(u64, Pte)>,
    /// Writes that did not fit and went to VRAM at once.
    overflow: usize,
}

impl WriteLog {
    /// A log with room for `count` writes.
    pub(crate) fn with_capacity(count: usize) -> Result<Self> {
        Ok(Self {
            writes: KVVec::with_capacity(count, GFP_KERNEL_ACCOUNT)?,
            overflow: 0,
        })
    }

    /// Logs the write of `entry` at VRAM offset `offset`. Past the room made, which the caller
    /// counts to hold every write, the entry goes to VRAM at once.
    fn push(&mut self, vram: &Vram<'_>, offset: u64, entry: Pte) -> Result {
        if self.writes.push_within_capacity((offset, entry)).is_err() {
            self.overflow += 1;
            return write_entry(vram, offset, entry);
        }
        Ok(())
    }

    /// The writes that did not fit, and went to VRAM at once.
    pub(crate) fn overflow(&self) -> usize {
        self.overflow
    }

    /// Writes the logged entries to VRAM, in order. Neither allocates nor sleeps.
    pub(crate) fn apply(&self, vram: &Vram<'_>) {
        for &(offset, entry) in self.writes.iter() {
            // A write to VRAM through the BAR only fails outside the BAR, which tables are not.
            let _ = write_entry(vram, offset, entry);
        }
    }
}

/// Writes the page-table entry at VRAM offset `offset`. A valid entry is written high half
/// first, so the device never sees a valid low half with a stale high half; an invalid one low
/// half first.
fn write_entry(vram: &Vram<'_>, offset: u64, entry: Pte) -> Result {
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
