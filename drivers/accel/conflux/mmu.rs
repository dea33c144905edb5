// SPDX-License-Identifier: GPL-2.0

//! VRAM allocation and the device's page tables.
//!
//! VRAM is managed by the GPU buddy allocator in 4 KiB chunks. Page tables live in VRAM and are
//! written by the CPU through the BAR2 mapping; each table has a shadow copy in system memory,
//! so that the driver never reads VRAM to walk its own tables. Tables are four levels of 512
//! entries (`Documentation/accel/conflux/device.rst`, "MMU"); a range whose virtual address,
//! target and length allow it is mapped with 2 MiB entries at level 1.

use core::pin::Pin;

use kernel::{
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
};

use crate::regs;

/// The device's VRAM, managed by the GPU buddy allocator.
///
/// # Invariants
///
/// `reserved` holds VRAM offset 0, which no page table may use: `MMU_ROOT = 0` turns the MMU
/// off.
pub(crate) struct Vram {
    buddy: GpuBuddy,
    _reserved: Pin<KBox<AllocatedBlocks>>,
}

impl Vram {
    /// Manages `size` bytes of VRAM.
    pub(crate) fn new(size: u64) -> Result<Self> {
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
            buddy,
            _reserved: reserved,
        })
    }

    /// Bytes of VRAM not allocated.
    pub(crate) fn avail(&self) -> u64 {
        self.buddy.avail()
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
}

/// CPU access to VRAM through the BAR2 mapping.
pub(crate) struct VramIo<'a> {
    bar2: &'a pci::Bar<'a, { regs::CTL_SIZE }>,
    base: usize,
}

impl<'a> VramIo<'a> {
    /// VRAM that starts at BAR2 offset `vram_offset` of `bar2`.
    pub(crate) fn new(
        bar2: &'a pci::Bar<'a, { regs::CTL_SIZE }>,
        vram_offset: u64,
    ) -> Result<Self> {
        Ok(Self {
            bar2,
            base: usize::try_from(vram_offset)?,
        })
    }

    /// Reads the VRAM bytes at `offset`, a multiple of 4, into `out`, whose length is one.
    pub(crate) fn read(&self, offset: u64, out: &mut [u8]) -> Result {
        let mut at = self
            .base
            .checked_add(usize::try_from(offset)?)
            .ok_or(EINVAL)?;
        for word in out.chunks_exact_mut(4) {
            word.copy_from_slice(&self.bar2.try_read32(at)?.to_le_bytes());
            at = at.checked_add(4).ok_or(EINVAL)?;
        }
        Ok(())
    }

    /// Writes `data`, whose length is a multiple of 4, to VRAM at `offset`, a multiple of 4.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result {
        let mut at = self
            .base
            .checked_add(usize::try_from(offset)?)
            .ok_or(EINVAL)?;
        for word in data.chunks_exact(4) {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(word);
            self.bar2.try_write32(u32::from_le_bytes(bytes), at)?;
            at = at.checked_add(4).ok_or(EINVAL)?;
        }
        Ok(())
    }

    fn write32(&self, value: u32, offset: u64) -> Result {
        self.bar2.try_write32(
            value,
            self.base
                .checked_add(usize::try_from(offset)?)
                .ok_or(EINVAL)?,
        )
    }

    /// Writes page-table entry `index` of the table at `table`. A valid entry is written high
    /// half first, so the device never sees a valid low half with a stale high half; an
    /// invalid one low half first.
    fn write_entry(&self, table: u64, index: usize, entry: u64) -> Result {
        let offset = table + 8 * index as u64;
        // CAST: the two halves of `entry`.
        let (lo, hi) = (entry as u32, (entry >> 32) as u32);
        if entry & regs::PTE_VALID != 0 {
            self.write32(hi, offset + 4)?;
            self.write32(lo, offset)
        } else {
            self.write32(lo, offset)?;
            self.write32(hi, offset + 4)
        }
    }
}

/// The size of the page an entry at `level` maps: 4 KiB at level 0, 2 MiB at level 1.
const fn level_size(level: u32) -> u64 {
    1 << (12 + 9 * level)
}

/// The index of `va` in a table at `level`.
const fn level_index(va: u64, level: u32) -> usize {
    // CAST: masked to 9 bits.
    ((va >> (12 + 9 * level)) & 0x1ff) as usize
}

/// A page table in VRAM and its shadow.
///
/// # Invariants
///
/// `entries` and `children` have [`regs::TABLE_ENTRIES`] entries; `entries` is what the table
/// in VRAM holds; `children[i]` is `Some` exactly when `entries[i]` is a directory.
struct Table {
    _mem: Pin<KBox<AllocatedBlocks>>,
    offset: u64,
    entries: KVec<u64>,
    children: KVec<Option<KBox<Table>>>,
}

impl Table {
    /// Allocates a table and writes it empty.
    fn new(vram: &Vram, io: &VramIo<'_>) -> Result<KBox<Self>> {
        let mem = vram.alloc(regs::TABLE_SIZE, Alignment::new::<SZ_4K>())?;
        let offset = mem.iter().next().map(|b| b.offset()).ok_or(ENOMEM)?;
        let mut entries = KVec::with_capacity(regs::TABLE_ENTRIES, GFP_KERNEL)?;
        let mut children = KVec::with_capacity(regs::TABLE_ENTRIES, GFP_KERNEL)?;
        for _ in 0..regs::TABLE_ENTRIES {
            entries.push(0, GFP_KERNEL)?;
            children.push(None, GFP_KERNEL)?;
        }
        for i in 0..regs::TABLE_ENTRIES {
            io.write_entry(offset, i, 0)?;
        }
        Ok(KBox::new(
            Self {
                _mem: mem,
                offset,
                entries,
                children,
            },
            GFP_KERNEL,
        )?)
    }

    fn set(&mut self, io: &VramIo<'_>, index: usize, entry: u64) -> Result {
        io.write_entry(self.offset, index, entry)?;
        if let Some(e) = self.entries.get_mut(index) {
            *e = entry;
        }
        Ok(())
    }

    fn entry(&self, index: usize) -> u64 {
        self.entries.get(index).copied().unwrap_or(0)
    }
}

/// What a range maps to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// A VRAM offset of the device itself.
    Vram(u64),
    /// A PCIe bus address: system memory, or a peer's VRAM.
    Bus(u64),
}

/// A device address space: four levels of page tables in VRAM.
///
/// Tables are taken from `spare` before any is allocated. An owner that unmaps parts of 2 MiB
/// entries keeps at least one spare table per 2 MiB entry ([`Self::reserve`], [`Self::trim`]),
/// so that splitting one never allocates.
pub(crate) struct PageTables {
    root: KBox<Table>,
    spare: KVec<KBox<Table>>,
    /// Leaf entries mapped with 2 MiB pages, and with 4 KiB pages.
    pub(crate) huge_pages: u64,
    pub(crate) small_pages: u64,
}

/// The number of `1 << shift` aligned regions that `va..va + len` touches.
fn regions(va: u64, len: u64, shift: u32) -> usize {
    match len {
        0 => 0,
        // CAST: at most 2^27 regions of 2 MiB in the 48-bit space.
        _ => (((va + len - 1) >> shift) - (va >> shift) + 1) as usize,
    }
}

impl PageTables {
    /// An address space with nothing mapped.
    pub(crate) fn new(vram: &Vram, io: &VramIo<'_>) -> Result<Self> {
        Ok(Self {
            root: Table::new(vram, io)?,
            spare: KVec::new(),
            huge_pages: 0,
            small_pages: 0,
        })
    }

    /// The most tables that mapping `va..va + len` can take, counting for each 2 MiB region
    /// either its level-0 table or the spare that a 2 MiB entry keeps.
    pub(crate) fn tables_for(va: u64, len: u64) -> usize {
        regions(va, len, 21) + regions(va, len, 30) + regions(va, len, 39)
    }

    /// Allocates `count` more spare tables. On failure the spares allocated stay until
    /// [`Self::trim`].
    pub(crate) fn reserve(&mut self, vram: &Vram, io: &VramIo<'_>, count: usize) -> Result {
        self.spare.reserve(count, GFP_KERNEL)?;
        for _ in 0..count {
            let table = Table::new(vram, io)?;
            self.spare.push_within_capacity(table).map_err(|_| ENOMEM)?;
        }
        Ok(())
    }

    /// Frees the spare tables beyond one per 2 MiB entry.
    pub(crate) fn trim(&mut self) {
        while self.spare.len() as u64 > self.huge_pages {
            drop(self.spare.pop());
        }
    }

    /// Spare tables held, for [`Self::trim`]'s callers and tests.
    pub(crate) fn spares(&self) -> usize {
        self.spare.len()
    }

    /// The VRAM offset of the level-3 table, for `MMU_ROOT`.
    pub(crate) fn root(&self) -> u64 {
        self.root.offset
    }

    /// Maps `va..va + len` to `target`, 4 KiB aligned, with 2 MiB entries where the virtual
    /// address, the target and the length allow. Fails with [`EEXIST`] if part of the range is
    /// mapped, and leaves nothing of the range mapped when it fails.
    pub(crate) fn map(
        &mut self,
        vram: &Vram,
        io: &VramIo<'_>,
        va: u64,
        target: Target,
        len: u64,
        writable: bool,
    ) -> Result {
        let (base, aperture) = match target {
            Target::Vram(offset) => (offset, 0),
            Target::Bus(addr) => (addr, regs::PTE_BUS),
        };
        let page = SZ_4K as u64;
        let end = va.checked_add(len).ok_or(EINVAL)?;
        if len == 0
            || va % page != 0
            || len % page != 0
            || base % page != 0
            || !matches!(base.checked_add(len), Some(last) if last <= regs::PTE_ADDR_MASK + page)
            || end > 1 << regs::VA_BITS
        {
            return Err(EINVAL);
        }
        let flags = regs::PTE_VALID | aperture | if writable { regs::PTE_WRITABLE } else { 0 };
        let mut done = 0;
        while done < len {
            let huge = level_size(1);
            let (cur, addr) = (va + done, base + done);
            let level = if cur % huge == 0 && addr % huge == 0 && len - done >= huge {
                1
            } else {
                0
            };
            if let Err(e) =
                self.set_leaf(vram, io, cur, level, flags | (addr & regs::PTE_ADDR_MASK))
            {
                self.unmap(vram, io, va, done);
                return Err(e);
            }
            done += level_size(level);
        }
        Ok(())
    }

    /// Writes the leaf for `va` at `level` (1 or 0), creating the tables on the way.
    fn set_leaf(
        &mut self,
        vram: &Vram,
        io: &VramIo<'_>,
        va: u64,
        level: u32,
        entry: u64,
    ) -> Result {
        let spare = &mut self.spare;
        let mut table = &mut self.root;
        for l in (level + 1..=3).rev() {
            let i = level_index(va, l);
            if table.entry(i) & regs::PTE_VALID != 0 && table.entry(i) & regs::PTE_LEAF != 0 {
                return Err(EEXIST);
            }
            if table.children.get(i).is_some_and(Option::is_none) {
                let child = match spare.pop() {
                    Some(child) => child,
                    None => Table::new(vram, io)?,
                };
                let dir = regs::PTE_VALID | (child.offset & regs::PTE_ADDR_MASK);
                if let Some(slot) = table.children.get_mut(i) {
                    *slot = Some(child);
                }
                table.set(io, i, dir)?;
            }
            table = table
                .children
                .get_mut(i)
                .and_then(Option::as_mut)
                .ok_or(EINVAL)?;
        }
        let i = level_index(va, level);
        let empty_child = table
            .children
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(|child| child.entries.iter().all(|&e| e == 0));
        if empty_child {
            // A level-0 table left empty by unmaps gives way to a 2 MiB entry, and becomes a
            // spare. The directory entry is cleared first, so the device never walks a mix of
            // the two entries.
            table.set(io, i, 0)?;
            if let Some(child) = table.children.get_mut(i).and_then(Option::take) {
                // Without room in the pool, the table is freed.
                let _ = spare.push(child, GFP_KERNEL);
            }
        }
        if table.entry(i) & regs::PTE_VALID != 0
            || table.children.get(i).is_some_and(Option::is_some)
        {
            return Err(EEXIST);
        }
        let leaf = if level > 0 { regs::PTE_LEAF } else { 0 };
        table.set(io, i, entry | leaf)?;
        if level > 0 {
            self.huge_pages += 1;
        } else {
            self.small_pages += 1;
        }
        Ok(())
    }

    /// Unmaps `va..va + len`. A 2 MiB entry that the range covers only in part is split into
    /// 4 KiB entries first, in a spare table. Never fails; tables left empty stay allocated for
    /// later mappings. Only when no spare is left and VRAM is full, a 2 MiB entry is cleared
    /// whole, which [`Self::reserve`] prevents.
    pub(crate) fn unmap(&mut self, vram: &Vram, io: &VramIo<'_>, va: u64, len: u64) {
        let end = va.saturating_add(len);
        let mut cur = va;
        while cur < end {
            cur = self.clear(vram, io, cur, end);
        }
    }

    /// Clears the leaf that maps `cur`, splitting it if it extends outside `cur..end`, and
    /// returns the address where the next leaf may start.
    fn clear(&mut self, vram: &Vram, io: &VramIo<'_>, cur: u64, end: u64) -> u64 {
        let spare = &mut self.spare;
        let mut table = &mut self.root;
        for level in (0..=3).rev() {
            let size = level_size(level);
            let base = cur & !(size - 1);
            let next = base.saturating_add(size);
            let i = level_index(cur, level);
            let entry = table.entry(i);
            if entry & regs::PTE_VALID == 0 {
                // Nothing is mapped in this entry's range.
                return next;
            }
            if level == 0 || entry & regs::PTE_LEAF != 0 {
                if level == 1 && (base < cur || next > end) {
                    let child = match spare.pop() {
                        Some(child) => Some(child),
                        None => Table::new(vram, io).ok(),
                    };
                    if let Some(mut child) = child {
                        let kept = regs::PTE_WRITABLE | regs::PTE_APERTURE_MASK;
                        let flags = regs::PTE_VALID | (entry & kept);
                        let addr = entry & regs::PTE_ADDR_MASK;
                        for k in 0..regs::TABLE_ENTRIES {
                            let page = addr + k as u64 * level_size(0);
                            // A write to VRAM through the BAR only fails outside the BAR,
                            // which the table is not.
                            let _ = child.set(io, k, flags | page);
                        }
                        // The directory translates every page as the 2 MiB entry did, so the
                        // device may see either.
                        let _ = table.set(io, i, regs::PTE_VALID | child.offset);
                        if let Some(slot) = table.children.get_mut(i) {
                            *slot = Some(child);
                        }
                        self.huge_pages -= 1;
                        self.small_pages += regs::TABLE_ENTRIES as u64;
                        match table.children.get_mut(i).and_then(Option::as_mut) {
                            Some(child) => {
                                table = child;
                                continue;
                            }
                            None => return next,
                        }
                    }
                }
                let _ = table.set(io, i, 0);
                if level > 0 {
                    self.huge_pages -= 1;
                } else {
                    self.small_pages -= 1;
                }
                return next;
            }
            match table.children.get_mut(i).and_then(Option::as_mut) {
                Some(child) => table = child,
                None => return next,
            }
        }
        cur.saturating_add(level_size(0))
    }
}
