// SPDX-License-Identifier: GPL-2.0

//! The device's page tables: four levels in VRAM that map a 48-bit address space.
//!
//! Tables are four levels of 512 entries (`Documentation/accel/conflux/device.rst`, "MMU"),
//! written by the CPU through BAR2 ([`table`]). A range whose virtual address, target and length
//! allow it is mapped with 2 MiB entries at level 1; a 2 MiB entry that an unmap covers in part
//! is split into 4 KiB entries in a spare table, so that unmapping never allocates.

pub(crate) mod address_space;
mod table;

use core::sync::atomic::{
    AtomicUsize,
    Ordering, //
};

use kernel::{
    new_spinlock,
    prelude::*,
    sizes::SZ_4K,
    sync::{
        Arc,
        SpinLock, //
    },
};

use crate::{
    regs::{
        Aperture,
        Pte,
        PTE_ADDR_MASK,
        TABLE_ENTRIES,
        VA_BITS, //
    },
    vram::Vram,
};

use table::Table;
pub(crate) use table::WriteLog;

/// The size of the page an entry at `level` maps: 4 KiB at level 0, 2 MiB at level 1.
const fn level_size(level: u32) -> u64 {
    1 << (12 + 9 * level)
}

/// The index of `va` in a table at `level`.
const fn level_index(va: u64, level: u32) -> usize {
    // CAST: masked to 9 bits.
    ((va >> (12 + 9 * level)) & 0x1ff) as usize
}

/// What a range maps to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// A VRAM offset of the device itself.
    Vram(u64),
    /// A PCIe bus address: system memory, or a peer's VRAM.
    Bus(u64),
    /// No memory: NULL pages, which read as zeros and drop writes.
    Null,
}

impl Target {
    /// The target `n` bytes further on.
    pub(crate) fn add(self, n: u64) -> Self {
        match self {
            Target::Vram(at) => Target::Vram(at + n),
            Target::Bus(at) => Target::Bus(at + n),
            Target::Null => Target::Null,
        }
    }
}

/// Where an address space maps part of some memory: `len` bytes at `va`, from byte `offset`
/// of the memory on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MapRange {
    pub(crate) va: u64,
    pub(crate) len: u64,
    pub(crate) offset: u64,
    pub(crate) writable: bool,
}

/// What a [`PendingLog`] holds.
struct LogState {
    /// The log, but while the tables write to it.
    log: Option<WriteLog>,
    /// The log was taken from the tables, filled: it counts as pending.
    taken: bool,
    /// The log is written to VRAM, or its device is gone.
    done: bool,
}

/// A bind's log of the writes to the tables of one address space, pending until it is written:
/// by the bind's job once its fences have signalled, or earlier by an invalidation of the
/// address space that must not find VRAM behind the shadow, whichever comes first.
///
/// # Invariants
///
/// `pending` is the count of pending logs of the tables the log is for ([`PageTables::pending`]);
/// it was incremented for this log when the log was taken (`taken`), and is decremented once,
/// when `done` is set.
#[pin_data]
pub(crate) struct PendingLog {
    #[pin]
    state: SpinLock<LogState>,
    pending: Arc<AtomicUsize>,
    /// The buffers whose mappings the log adds or removes, by their address-space identifier.
    ids: KVec<usize>,
}

impl PendingLog {
    /// A log for `tables`, with room for `count` writes, of a bind that adds or removes the
    /// mappings of the buffers `ids`.
    pub(crate) fn new(tables: &PageTables, count: usize, ids: KVec<usize>) -> Result<Arc<Self>> {
        let log = WriteLog::with_capacity(count)?;
        Arc::pin_init(
            pin_init!(Self {
                state <- new_spinlock!(LogState {
                    log: Some(log),
                    taken: false,
                    done: false,
                }),
                pending: tables.pending(),
                ids,
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Sends the writes of `tables` to the log, until [`Self::finish`].
    pub(crate) fn start(&self, tables: &mut PageTables) {
        if let Some(log) = self.state.lock().log.take() {
            tables.start_log(log);
        }
    }

    /// Ends what [`Self::start`] began: the log is pending; gives the writes that did not fit.
    pub(crate) fn finish(&self, tables: &mut PageTables) -> usize {
        let log = tables.take_log();
        let mut st = self.state.lock();
        st.taken = log.is_some();
        let overflow = log.as_ref().map_or(0, WriteLog::overflow);
        st.log = log;
        overflow
    }

    /// Writes the log to VRAM, `vram`, once; without VRAM (the device is gone, its tables with
    /// it) only counts it written. Neither allocates nor sleeps.
    pub(crate) fn apply(&self, vram: Option<&Vram<'_>>) {
        let mut st = self.state.lock();
        if st.done || !st.taken {
            return;
        }
        if let (Some(vram), Some(log)) = (vram, st.log.as_ref()) {
            log.apply(vram);
        }
        // INVARIANT: decremented once, as `done` is set.
        st.done = true;
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the log adds or removes a mapping of buffer `id`.
    pub(crate) fn involves(&self, id: usize) -> bool {
        self.ids.contains(&id)
    }

    /// Whether the log needs no writing any more.
    pub(crate) fn is_done(&self) -> bool {
        let st = self.state.lock();
        st.done || !st.taken
    }
}

/// How many leaf entries and spare tables an address space holds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PageCounts {
    /// Leaf entries that map 2 MiB pages.
    pub(crate) huge: u64,
    /// Leaf entries that map 4 KiB pages.
    pub(crate) small: u64,
    /// Tables kept to split 2 MiB entries.
    pub(crate) spare: usize,
}

/// A device address space: four levels of page tables in VRAM.
///
/// Tables are taken from `spare` before any is allocated. An owner that unmaps parts of 2 MiB
/// entries keeps at least one spare table per 2 MiB entry ([`Self::add_spares`],
/// [`Self::trim`]), so that splitting one never allocates.
///
/// While a bind that waits for fences commits, the entries it changes go to its [`WriteLog`]
/// ([`Self::start_log`]), but for the directories of new level-2 and level-1 tables, which
/// translate nothing until entries below them do, and the entries of tables not yet linked.
///
/// # Invariants
///
/// `pending` counts the logs taken from the tables ([`Self::take_log`]) and not yet written to
/// VRAM. The tables in `retired` were unlinked by such a log: the device may walk them until it
/// is written, so they are neither reused nor freed while `pending` is not zero. The tables in
/// `spare` are linked nowhere in VRAM, and empty there.
pub(crate) struct PageTables {
    root: KBox<Table>,
    spare: KVec<KBox<Table>>,
    retired: KVec<KBox<Table>>,
    log: Option<WriteLog>,
    pending: Arc<AtomicUsize>,
    /// Leaf entries mapped with 2 MiB pages, and with 4 KiB pages.
    huge_pages: u64,
    small_pages: u64,
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
    pub(crate) fn new(vram: &Vram<'_>) -> Result<Self> {
        Ok(Self {
            root: Table::new(vram)?,
            spare: KVec::new(),
            retired: KVec::new(),
            log: None,
            pending: Arc::new(AtomicUsize::new(0), GFP_KERNEL_ACCOUNT)?,
            huge_pages: 0,
            small_pages: 0,
        })
    }

    /// The most tables that mapping `va..va + len` can take, counting for each 2 MiB region
    /// either its level-0 table or the spare that a 2 MiB entry keeps.
    pub(crate) fn tables_for(va: u64, len: u64) -> usize {
        regions(va, len, 21) + regions(va, len, 30) + regions(va, len, 39)
    }

    /// The tables that mapping `va..va + len` can take beyond those in place: one for each
    /// table of level 0, 1 or 2 that the range's walk needs and that does not exist (for a 2 MiB
    /// region, its level-0 table or the spare that a 2 MiB entry keeps). A 2 MiB region that a
    /// 2 MiB entry maps needs none: a split takes the spare the entry keeps, and a new 2 MiB
    /// entry keeps it. At most [`Self::tables_for`].
    pub(crate) fn missing(&self, va: u64, len: u64) -> usize {
        let end = va.saturating_add(len);
        let mut count = 0;
        let mut cur = va;
        while cur < end {
            // Down the tables in place, to the first missing one on the walk to `cur`.
            let mut table = &*self.root;
            let mut level = 3;
            let missing = loop {
                let i = level_index(cur, level);
                if level == 1 && table.entry(i).valid() && table.entry(i).huge() {
                    break None;
                }
                match table.children.get(i).and_then(Option::as_ref) {
                    Some(child) if level > 1 => {
                        table = child;
                        level -= 1;
                    }
                    // The level-0 table is in place.
                    Some(_) => break None,
                    None => break Some(level),
                }
            };
            // The region of the entry at `level` that leads to `cur`.
            let size = level_size(missing.unwrap_or(1));
            let next = (cur & !(size - 1)).saturating_add(size).min(end);
            if let Some(level) = missing {
                // Its table and every table below it that the part of the range needs.
                count += [21, 30, 39]
                    .iter()
                    .filter(|&&shift| shift <= 12 + 9 * level)
                    .map(|&shift| regions(cur, next - cur, shift))
                    .sum::<usize>();
            }
            cur = next;
        }
        count
    }

    /// Allocates `count` more spare tables. On failure the spares allocated stay until
    /// [`Self::trim`].
    pub(crate) fn add_spares(&mut self, vram: &Vram<'_>, count: usize) -> Result {
        self.spare.reserve(count, GFP_KERNEL_ACCOUNT)?;
        for _ in 0..count {
            let table = Table::new(vram)?;
            self.spare.push_within_capacity(table).map_err(|_| ENOMEM)?;
        }
        Ok(())
    }

    /// Makes sure that the spares hold `count` tables beyond the one kept per 2 MiB entry,
    /// allocating only the ones missing: what mapping a range that [`Self::tables_for`] counts
    /// `count` tables for may take. A range mapped again after an unmap finds the spares its
    /// 2 MiB entries left. On failure the spares allocated stay until [`Self::trim`].
    pub(crate) fn reserve_spares(&mut self, vram: &Vram<'_>, count: usize) -> Result {
        let want = usize::try_from(self.huge_pages)?.saturating_add(count);
        self.add_spares(vram, want.saturating_sub(self.spare.len()))
    }

    /// Frees the spare tables beyond one per 2 MiB entry, once no log is pending; the tables
    /// that logs retired become spares then.
    pub(crate) fn trim(&mut self) {
        if self.pending.load(Ordering::Acquire) != 0 {
            return;
        }
        while let Some(table) = self.retired.pop() {
            // Without room among the spares, it is freed: nothing links it any more.
            let _ = self.spare.push(table, GFP_KERNEL_ACCOUNT);
        }
        while self.spare.len() as u64 > self.huge_pages {
            drop(self.spare.pop());
        }
    }

    /// Makes room for `count` tables that a logged commit may retire, and for `count` more
    /// spares, so that neither needs memory then.
    pub(crate) fn reserve_retired(&mut self, count: usize) -> Result {
        self.retired.reserve(count, GFP_KERNEL_ACCOUNT)?;
        self.spare.reserve(count, GFP_KERNEL_ACCOUNT)?;
        Ok(())
    }

    /// Sends the writes of VRAM entries to `log` until [`Self::take_log`].
    pub(crate) fn start_log(&mut self, log: WriteLog) {
        self.log = Some(log);
    }

    /// Ends the log [`Self::start_log`] began, which counts as pending until the counter
    /// [`Self::pending`] gives is decremented, once it is written.
    pub(crate) fn take_log(&mut self) -> Option<WriteLog> {
        let log = self.log.take();
        if log.is_some() {
            self.pending.fetch_add(1, Ordering::AcqRel);
        }
        log
    }

    /// The count of logs taken and not yet written to VRAM.
    pub(crate) fn pending(&self) -> Arc<AtomicUsize> {
        self.pending.clone()
    }

    /// The leaf entries and spare tables in use.
    pub(crate) fn counts(&self) -> PageCounts {
        PageCounts {
            huge: self.huge_pages,
            small: self.small_pages,
            spare: self.spare.len(),
        }
    }

    /// The VRAM offset of the level-3 table, for `MMU_ROOT`.
    pub(crate) fn root(&self) -> u64 {
        self.root.offset()
    }

    /// Maps `va..va + len` to `target`, 4 KiB aligned, with 2 MiB entries where the virtual
    /// address, the target and the length allow. Fails with [`EEXIST`] if part of the range is
    /// mapped, and leaves nothing of the range mapped when it fails.
    pub(crate) fn map(
        &mut self,
        vram: &Vram<'_>,
        va: u64,
        target: Target,
        len: u64,
        writable: bool,
    ) -> Result {
        let (base, aperture) = match target {
            Target::Vram(offset) => (offset, Aperture::Vram),
            Target::Bus(addr) => (addr, Aperture::Bus),
            Target::Null => (0, Aperture::Null),
        };
        // Every NULL page has address 0.
        let step = if aperture == Aperture::Null { 0 } else { 1 };
        let page = SZ_4K as u64;
        let end = va.checked_add(len).ok_or(EINVAL)?;
        if len == 0
            || va % page != 0
            || len % page != 0
            || base % page != 0
            || !matches!(base.checked_add(len), Some(last) if last <= PTE_ADDR_MASK + page)
            || end > 1 << VA_BITS
        {
            return Err(EINVAL);
        }
        let mut done = 0;
        while done < len {
            let huge = level_size(1);
            let (cur, addr) = (va + done, base + done * step);
            let level = if cur % huge == 0 && addr % huge == 0 && len - done >= huge {
                1
            } else {
                0
            };
            let entry = Pte::page(addr, aperture, writable, level > 0);
            if let Err(e) = self.set_leaf(vram, cur, level, entry) {
                self.unmap(vram, va, done);
                return Err(e);
            }
            done += level_size(level);
        }
        Ok(())
    }

    /// Writes the leaf for `va` at `level` (1 or 0), creating the tables on the way.
    fn set_leaf(&mut self, vram: &Vram<'_>, va: u64, level: u32, entry: Pte) -> Result {
        let spare = &mut self.spare;
        let mut log = self.log.as_mut();
        let mut table = &mut self.root;
        for l in (level + 1..=3).rev() {
            let i = level_index(va, l);
            if table.entry(i).valid() && table.entry(i).huge() {
                return Err(EEXIST);
            }
            if table.children.get(i).is_some_and(Option::is_none) {
                let child = match spare.pop() {
                    Some(child) => child,
                    None => Table::new(vram)?,
                };
                let dir = Pte::directory(child.offset());
                if let Some(slot) = table.children.get_mut(i) {
                    *slot = Some(child);
                }
                // A new level-2 or level-1 table translates nothing: linked at once. A new
                // level-0 table takes the place of a 2 MiB entry that a log may still clear.
                let logged = if l > 1 { None } else { log.as_deref_mut() };
                table.set(vram, logged, i, dir)?;
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
            .is_some_and(|child| child.is_empty());
        if empty_child {
            // A level-0 table left empty by unmaps gives way to a 2 MiB entry, and becomes a
            // spare. The directory entry is cleared first, so the device never walks a mix of
            // the two entries.
            table.set(vram, log.as_deref_mut(), i, Pte::INVALID)?;
            if let Some(child) = table.children.get_mut(i).and_then(Option::take) {
                if log.is_some() {
                    // The device walks it until the log is written: in room reserved before.
                    if let Err(err) = self.retired.push_within_capacity(child) {
                        let _ = spare.push(err.0, GFP_KERNEL_ACCOUNT);
                    }
                } else {
                    // Without room in the pool, the table is freed.
                    let _ = spare.push(child, GFP_KERNEL_ACCOUNT);
                }
            }
        }
        if table.entry(i).valid() || table.children.get(i).is_some_and(Option::is_some) {
            return Err(EEXIST);
        }
        table.set(vram, log, i, entry)?;
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
    /// whole, which [`Self::add_spares`] prevents.
    pub(crate) fn unmap(&mut self, vram: &Vram<'_>, va: u64, len: u64) {
        let end = va.saturating_add(len);
        let mut cur = va;
        while cur < end {
            cur = self.clear(vram, cur, end);
        }
    }

    /// Clears the leaf that maps `cur`, splitting it if it extends outside `cur..end`, and
    /// returns the address where the next leaf may start.
    fn clear(&mut self, vram: &Vram<'_>, cur: u64, end: u64) -> u64 {
        let spare = &mut self.spare;
        let mut log = self.log.as_mut();
        let mut table = &mut self.root;
        for level in (0..=3).rev() {
            let size = level_size(level);
            let base = cur & !(size - 1);
            let next = base.saturating_add(size);
            let i = level_index(cur, level);
            let entry = table.entry(i);
            if !entry.valid() {
                // Nothing is mapped in this entry's range.
                return next;
            }
            if level == 0 || entry.huge() {
                if level == 1 && (base < cur || next > end) {
                    let child = match spare.pop() {
                        Some(child) => Some(child),
                        None => Table::new(vram).ok(),
                    };
                    if let Some(mut child) = child {
                        // NULL pages all have address 0.
                        let step = match entry.aperture() {
                            Aperture::Null => 0,
                            _ => level_size(0),
                        };
                        for k in 0..TABLE_ENTRIES {
                            let page = entry.addr() + k as u64 * step;
                            let small = Pte::page(page, entry.aperture(), entry.writable(), false);
                            // A write to VRAM through the BAR only fails outside the BAR,
                            // which the table is not. A spare is linked nowhere: written at
                            // once.
                            let _ = child.set(vram, None, k, small);
                        }
                        // The directory translates every page as the 2 MiB entry did, so the
                        // device may see either.
                        let dir = Pte::directory(child.offset());
                        let _ = table.set(vram, log.as_deref_mut(), i, dir);
                        if let Some(slot) = table.children.get_mut(i) {
                            *slot = Some(child);
                        }
                        self.huge_pages -= 1;
                        self.small_pages += TABLE_ENTRIES as u64;
                        match table.children.get_mut(i).and_then(Option::as_mut) {
                            Some(child) => {
                                table = child;
                                continue;
                            }
                            None => return next,
                        }
                    }
                }
                let _ = table.set(vram, log, i, Pte::INVALID);
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
