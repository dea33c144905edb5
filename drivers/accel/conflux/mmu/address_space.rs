// SPDX-License-Identifier: GPL-2.0

//! The address space of a VM: its page tables, and where they map memory that can change.
//!
//! The memory of an imported buffer changes when its exporter invalidates its mappings, and
//! the memory of a movable buffer when it moves to system memory. Every address space that maps
//! such a buffer records where ([`Movable`]) and is in the buffer's [`AddressSpaces`], so that
//! the entries can be cleared before the memory goes; the next job maps them again.

use kernel::{
    new_mutex,
    prelude::*,
    sync::{
        Arc,
        Mutex,
        MutexGuard, //
    },
};

use crate::{
    mmu::{
        MapRange,
        PageTables,
        PendingLog, //
    },
    vram::Vram, //
};

/// Where an address space maps part of a buffer whose memory can change.
#[derive(Clone, Copy)]
pub(crate) struct MovableRange {
    /// The buffer ([`AddressSpaces::id`]).
    pub(crate) id: usize,
    pub(crate) range: MapRange,
    /// Whether the page-table entries are in place; cleared when the memory changes.
    pub(crate) valid: bool,
}

/// The ranges of an address space that map memory which can change.
pub(crate) struct Movable(KVec<MovableRange>);

impl Movable {
    /// Makes room for `count` more records, so that [`Self::push`] and [`Self::cut`] cannot
    /// fail for lack of memory.
    pub(crate) fn reserve(&mut self, count: usize) -> Result {
        self.0.reserve(count, GFP_KERNEL_ACCOUNT)?;
        Ok(())
    }

    /// How many records fit without more memory.
    pub(crate) fn room(&self) -> usize {
        self.0.capacity() - self.0.len()
    }

    /// Records `range`, in room [`Self::reserve`] made.
    pub(crate) fn push(&mut self, range: MovableRange) -> Result {
        self.0.push_within_capacity(range).map_err(|_| ENOMEM)
    }

    /// Removes `start..end` from the records, splitting a record that spans it; needs one free
    /// slot per call.
    pub(crate) fn cut(&mut self, start: u64, end: u64) {
        let mut i = 0;
        while i < self.0.len() {
            let r = self.0[i];
            let (va, r_end) = (r.range.va, r.range.va + r.range.len);
            if r_end <= start || end <= va {
                i += 1;
                continue;
            }
            let _ = self.0.remove(i);
            if va < start {
                let mut left = r;
                left.range.len = start - va;
                let _ = self.0.push_within_capacity(left);
            }
            if end < r_end {
                let mut right = r;
                right.range = MapRange {
                    va: end,
                    len: r_end - end,
                    offset: r.range.offset + (end - va),
                    ..r.range
                };
                let _ = self.0.push_within_capacity(right);
            }
        }
    }

    /// Whether a range of buffer `id` is unmapped since its memory changed.
    pub(crate) fn is_stale(&self, id: usize) -> bool {
        self.0.iter().any(|r| r.id == id && !r.valid)
    }

    /// The ranges of buffer `id` unmapped since its memory changed.
    pub(crate) fn stale(&mut self, id: usize) -> impl Iterator<Item = &mut MovableRange> {
        self.0.iter_mut().filter(move |r| r.id == id && !r.valid)
    }

    /// Forgets every record.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// Where a VM leaves its page tables when it goes, for the jobs that may still walk them.
///
/// Every job on the VM holds a reference; the tables are freed with the last one, when the
/// engine drops a job whose fence has signalled: the device finished or stopped it. A job that
/// ran on a wedged device is never dropped, and its tables never freed.
#[pin_data]
pub(crate) struct KeptTables {
    #[pin]
    tables: Mutex<Option<PageTables>>,
}

impl KeptTables {
    /// An empty holder.
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                tables <- new_mutex!(None),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Keeps `tables` until the last reference goes.
    pub(crate) fn keep(&self, tables: PageTables) {
        *self.tables.lock() = Some(tables);
    }
}

/// What [`AddressSpace`] protects.
pub(crate) struct State {
    /// `None` once the VM is gone.
    pub(crate) tables: Option<PageTables>,
    pub(crate) movable: Movable,
    /// The logs of binds of bind queues that may not be written yet, in the order of the binds.
    pub(crate) logs: KVec<Arc<PendingLog>>,
}

impl State {
    /// Records `log`, pending, in room the caller made in `logs`; forgets the logs done.
    pub(crate) fn add_log(&mut self, log: Arc<PendingLog>) {
        self.logs.retain(|l| !l.is_done());
        // Cannot fail: room was made.
        let _ = self.logs.push_within_capacity(log);
    }
}

/// The page tables of a VM, with their own lock so that an exporter's invalidation can clear
/// entries without the VM's lock: the lock order is the VM's lock, then reservation objects,
/// then this.
#[pin_data]
pub(crate) struct AddressSpace {
    #[pin]
    state: Mutex<State>,
}

impl AddressSpace {
    /// An address space of `tables`, which map nothing that can change, with room for `room`
    /// records.
    pub(crate) fn new(tables: PageTables, room: usize) -> Result<Arc<Self>> {
        let records = KVec::with_capacity(room, GFP_KERNEL_ACCOUNT)?;
        Arc::pin_init(
            pin_init!(Self {
                state <- new_mutex!(State {
                    tables: Some(tables),
                    movable: Movable(records),
                    logs: KVec::new(),
                }),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// The tables and the records, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Whether the VM still exists.
    pub(crate) fn is_alive(&self) -> bool {
        self.lock().tables.is_some()
    }

    /// Clears the entries that map buffer `id`, for its exporter's invalidation or its move.
    ///
    /// A bind whose log is pending pins the buffers it maps or unmaps, so only a revocation
    /// invalidates one of them: then the pending logs are written first, out of turn and in
    /// order, so that the entries cleared do not come back when they would have been.
    fn invalidate(&self, vram: &Vram<'_>, id: usize) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.logs.iter().any(|l| !l.is_done() && l.involves(id)) {
            for log in st.logs.iter() {
                log.apply(Some(vram));
            }
            st.logs.clear();
        }
        let Some(tables) = st.tables.as_mut() else {
            return;
        };
        for r in st.movable.0.iter_mut().filter(|r| r.id == id && r.valid) {
            tables.unmap(vram, r.range.va, r.range.len);
            r.valid = false;
        }
    }

    /// Records that buffer `id` was invalidated while the device was unbound.
    fn forget(&self, id: usize) {
        for r in self.lock().movable.0.iter_mut().filter(|r| r.id == id) {
            r.valid = false;
        }
    }
}

/// The address spaces of a device that map a buffer whose memory can change: the ones to
/// invalidate when it does.
#[pin_data]
pub(crate) struct AddressSpaces {
    #[pin]
    spaces: Mutex<KVec<Arc<AddressSpace>>>,
}

impl AddressSpaces {
    /// An empty list.
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                spaces <- new_mutex!(KVec::new()),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Records that `space` maps the buffer; forgets the address spaces that are gone.
    pub(crate) fn add(&self, space: &Arc<AddressSpace>) -> Result {
        let mut spaces = self.spaces.lock();
        spaces.retain(|s| s.is_alive());
        if !spaces.iter().any(|s| Arc::ptr_eq(s, space)) {
            spaces.push(space.clone(), GFP_KERNEL_ACCOUNT)?;
        }
        Ok(())
    }

    /// The identifier of the buffer whose address spaces these are: unique while it lives.
    pub(crate) fn id(&self) -> usize {
        core::ptr::from_ref(self) as usize
    }

    /// Clears the entries that map the buffer in every address space, with the device's
    /// `vram`; without it (the device is unbound, and its tables went with it) only records
    /// that they are gone.
    pub(crate) fn invalidate(&self, vram: Option<&Vram<'_>>) {
        let id = self.id();
        for space in self.spaces.lock().iter() {
            match vram {
                Some(vram) => space.invalidate(vram, id),
                None => space.forget(id),
            }
        }
    }
}
