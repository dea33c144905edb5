// SPDX-License-Identifier: GPL-2.0

//! Conflux buffer objects: where their bytes are, and how page tables and the CPU reach them.
//!
//! A buffer of the device's own is in VRAM or in system memory ([`memory`]); one of another
//! device or exporter holds its attachment ([`import`]). A buffer created for VRAM or system
//! memory is movable: the engine moves it between the two ([`moves`]), for an importer that
//! cannot reach VRAM ([`move_to`]).

pub(crate) mod import;
pub(crate) mod lru;
pub(crate) mod memory;
pub(crate) mod moves;

use core::sync::atomic::{
    AtomicBool,
    AtomicU64,
    AtomicUsize,
    Ordering, //
};

use kernel::{
    dma_fence::Fence,
    dma_resv::{
        DmaResv,
        ResvLocked,
        Usage, //
    },
    dma_segments::DmaRange,
    drm::gem::{
        self,
        BaseObject, //
    },
    new_mutex,
    page::{
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    scatterlist::SGTable,
    sync::{
        aref::ARef,
        Arc,
        Mutex,
        MutexGuard, //
    },
    time::Jiffies,
    uapi, //
};

use crate::{
    driver::Object,
    hw::DeviceData,
    mmu::{
        address_space::AddressSpaces,
        MapRange,
        PageTables,
        Target, //
    },
    vram::Vram,
};

use import::Imported;
use lru::Lru;
use memory::Memory;

/// Pages a CPU fault maps at once, from the faulting one on.
const FAULT_AROUND: usize = 16;

/// What a new buffer object is made of.
pub(crate) struct Contents {
    memory: Memory,
    imported: Option<Imported>,
    lru: Option<Arc<Lru>>,
    spaces: Arc<AddressSpaces>,
    doorbell: u64,
}

impl Contents {
    /// The device's own `memory`; a buffer that may be in VRAM or in system memory is
    /// movable, and goes in the device's `lru`.
    pub(crate) fn local(memory: Memory, lru: Option<Arc<Lru>>) -> Result<Self> {
        Ok(Contents {
            memory,
            imported: None,
            lru,
            spaces: AddressSpaces::new()?,
            doorbell: 0,
        })
    }

    /// The doorbell page of a user queue, at physical address `phys`: a page of the device's
    /// registers that userspace maps, and nothing else.
    pub(crate) fn doorbell(phys: u64) -> Result<Self> {
        Ok(Contents {
            doorbell: phys,
            ..Self::local(Memory::None, None)?
        })
    }

    /// A buffer of another device or exporter, whose attachment clears the entries of the
    /// address spaces in `spaces` when the exporter invalidates it.
    pub(crate) fn imported(imported: Imported, spaces: Arc<AddressSpaces>) -> Self {
        Contents {
            memory: Memory::None,
            imported: Some(imported),
            lru: None,
            spaces,
            doorbell: 0,
        }
    }
}

/// The error of creating a GEM object, as the driver reports it.
///
/// `drm_gem_object_init()` backs every object with a file on the kernel's internal shmem
/// mount, which has no size or inode limit, and shmem reports an inode it could not allocate as
/// [`ENOSPC`]: that is memory running out, [`ENOMEM`], not device memory.
pub(crate) fn create_error(e: Error) -> Error {
    if e == ENOSPC {
        ENOMEM
    } else {
        e
    }
}

/// A Conflux buffer object.
///
/// # Invariants
///
/// The memory, when there is some, holds exactly the object's size: for VRAM, the object's byte
/// `n` is in the block that covers `n` when the blocks are laid end to end in their iteration
/// order; in system memory, it is byte `n % PAGE_SIZE` of page `n / PAGE_SIZE`. It is
/// [`Memory::None`] when `imported` is set. It changes only between VRAM and system memory,
/// when the buffer is movable (it has an `lru`), under the lock of the object's reservation
/// object, by a move whose fence is in the reservation object ([`moves`]), and every address
/// space that maps the buffer meanwhile is in `spaces`. A movable buffer is in `lru` until it
/// is dropped. `doorbell` is 0, or the physical address of a user queue's doorbell page, the
/// object's only page, that the queue holds until it revokes it.
#[pin_data(PinnedDrop)]
pub(crate) struct Bo {
    #[pin]
    memory: Mutex<Memory>,
    /// The attachment, for a buffer of another device or exporter.
    imported: Option<Imported>,
    /// The device's list of movable buffers, for a movable one.
    lru: Option<Arc<Lru>>,
    spaces: Arc<AddressSpaces>,
    /// The buffer was exported as a dma-buf: a move invalidates its importers' mappings, with
    /// the device's list of exported buffers locked.
    exported: AtomicBool,
    /// The system memory a buffer that came back to VRAM left, for its next eviction, which
    /// then copies without allocating and mapping pages; counted in the budget of `lru`.
    #[pin]
    spare: Mutex<Option<Memory>>,
    /// The size of the buffer, in bytes.
    size: u64,
    /// How many times the buffer moved.
    moves: AtomicU64,
    /// How many importers pinned the buffer where it is.
    pins: AtomicUsize,
    /// How many attached importers cannot reach VRAM: while there are any, the buffer is not
    /// brought back to VRAM.
    far: AtomicUsize,
    /// For a doorbell object: the page's physical address, 0 once its queue is gone. Changed
    /// with `memory` locked.
    doorbell: AtomicU64,
}

impl Bo {
    /// The initialiser of the driver's part of a new object of `size` bytes.
    pub(crate) fn new(contents: Contents, size: usize) -> impl PinInit<Self, Error> {
        try_pin_init!(Bo {
            memory <- new_mutex!(contents.memory),
            imported: contents.imported,
            lru: contents.lru,
            spaces: contents.spaces,
            exported: AtomicBool::new(false),
            spare <- new_mutex!(None),
            // CAST: `usize` fits in `u64`.
            size: size as u64,
            moves: AtomicU64::new(0),
            pins: AtomicUsize::new(0),
            far: AtomicUsize::new(0),
            doorbell: AtomicU64::new(contents.doorbell),
        })
    }

    /// How many times the buffer moved.
    pub(crate) fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// Counts a move of the buffer.
    pub(crate) fn count_move(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// The system memory the buffer left when it came back to VRAM, if it kept it.
    pub(crate) fn take_spare(&self) -> Option<Memory> {
        let spare = self.spare.lock().take();
        if let (Some(_), Some(lru)) = (&spare, &self.lru) {
            lru.spare.give(self.spare_size());
        }
        spare
    }

    /// Keeps `memory`, the system memory the buffer leaves for VRAM, for its next eviction,
    /// when the device's budget for such memory allows; gives it back otherwise.
    pub(crate) fn keep_spare(&self, memory: Memory) -> Option<Memory> {
        match &self.lru {
            Some(lru) if lru.spare.take(self.spare_size()) => {
                *self.spare.lock() = Some(memory);
                None
            }
            _ => Some(memory),
        }
    }

    /// The size of the buffer's spare system memory: the buffer's.
    fn spare_size(&self) -> u64 {
        self.size
    }

    /// Records that the buffer was exported as a dma-buf.
    pub(crate) fn set_exported(&self) {
        self.exported.store(true, Ordering::Relaxed);
    }

    /// Whether the buffer was exported as a dma-buf.
    pub(crate) fn is_exported(&self) -> bool {
        self.exported.load(Ordering::Relaxed)
    }

    /// Whether eviction and returns may move the buffer: a movable buffer that no importer
    /// pinned.
    pub(crate) fn evictable(&self) -> bool {
        self.lru.is_some() && self.pins.load(Ordering::Relaxed) == 0
    }

    /// The count of attached importers that cannot reach VRAM.
    pub(crate) fn far_importers(&self) -> &AtomicUsize {
        &self.far
    }

    /// Makes the buffer the device's most recently used, when it is movable. Without memory
    /// to add it, it keeps its place.
    pub(crate) fn touch(obj: &Object) {
        if let Some(lru) = &obj.lru {
            let _ = lru.touch(obj);
        }
    }

    /// How many importers pinned the buffer where it is; it moves for none of them.
    pub(crate) fn pins(&self) -> &AtomicUsize {
        &self.pins
    }

    /// The placement, as a `DRM_CONFLUX_BO_*` flag; 0 for the object of a VM.
    pub(crate) fn placement(&self) -> u32 {
        if self.imported.is_some() {
            return uapi::DRM_CONFLUX_BO_IMPORTED;
        }
        match *self.memory.lock() {
            Memory::None => 0,
            Memory::Vram(_) | Memory::Lent(..) => uapi::DRM_CONFLUX_BO_VRAM,
            Memory::System(..) => uapi::DRM_CONFLUX_BO_SYSTEM,
        }
    }

    /// How the device reaches its own memory, a `DRM_CONFLUX_PATH_*`; 0 for the object of a VM
    /// and for an imported buffer, whose path its exporter tells.
    pub(crate) fn local_path(&self) -> u32 {
        if self.imported.is_some() {
            return 0;
        }
        match *self.memory.lock() {
            Memory::None => 0,
            Memory::Vram(_) | Memory::Lent(..) => uapi::DRM_CONFLUX_PATH_LOCAL,
            Memory::System(..) => uapi::DRM_CONFLUX_PATH_SYSTEM,
        }
    }

    /// The device's own memory of the buffer, locked.
    pub(crate) fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock()
    }

    /// The attachment of a buffer of another device or exporter.
    pub(crate) fn imported(&self) -> Option<&Imported> {
        self.imported.as_ref()
    }

    /// Whether the buffer may be in VRAM and in system memory, and move between them.
    pub(crate) fn movable(&self) -> bool {
        self.lru.is_some()
    }

    /// Whether the memory can change under an address space that maps the buffer: an imported
    /// buffer's exporter can invalidate it, and a movable buffer can move. The address spaces
    /// that map such a buffer record where, and are in [`Bo::spaces`].
    pub(crate) fn may_change(&self) -> bool {
        self.movable() || self.imported.is_some()
    }

    /// The address spaces of the device that map the buffer, when [`Bo::may_change`].
    pub(crate) fn spaces(&self) -> &AddressSpaces {
        &self.spaces
    }

    /// An identifier of the buffer, unique while it lives, for the address spaces' records.
    pub(crate) fn id(&self) -> usize {
        self.spaces.id()
    }

    /// Maps `range` of the buffer in `tables`, with 2 MiB entries where the memory allows: VRAM
    /// offsets, or the bus addresses of system memory or of an imported buffer (from `table`,
    /// its mapping). Maps nothing when it fails; [`EINVAL`] when the buffer has no such bytes.
    pub(crate) fn map(
        &self,
        vram: &Vram<'_>,
        tables: &mut PageTables,
        table: Option<&SGTable>,
        range: &MapRange,
    ) -> Result {
        let mut done = 0u64;
        let mut map_piece = |target, piece| {
            tables.map(vram, range.va + done, target, piece, range.writable)?;
            done += piece;
            Ok(())
        };
        let mapped = match self.imported {
            Some(_) => {
                // The entries were checked when the table was mapped.
                let extents = table
                    .ok_or(EINVAL)?
                    .iter()
                    .filter_map(|e| DmaRange::of_entry(e).ok());
                memory::for_each_piece(extents, range.offset, range.len, |at, n| {
                    map_piece(Target::Bus(at), n)
                })
            }
            None => self
                .memory
                .lock()
                .for_each_piece(vram, range.offset, range.len, map_piece),
        };
        if mapped.is_err() {
            tables.unmap(vram, range.va, done);
        }
        mapped
    }

    /// Copies bytes `offset..offset + buf.len()` of the buffer into `buf`, or from `buf` when
    /// `write`, with the CPU.
    pub(crate) fn cpu_copy(
        &self,
        vram: &Vram<'_>,
        offset: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result {
        if self.imported.is_some() {
            return Err(EOPNOTSUPP);
        }
        // The caller holds the reservation lock and waited for the moves: the memory is the
        // buffer's and holds its bytes.
        self.memory.lock().cpu_copy(vram, offset, buf, write)
    }

    /// Fills a userspace mapping of a doorbell object at a fault, uncached; [`ENODEV`] once its
    /// queue is gone.
    pub(crate) fn fault_doorbell(&self, fault: &gem::Fault<'_>) -> Result {
        // Held while the page is inserted: `revoke_doorbell` empties the mappings after it.
        let _memory = self.memory.lock();
        let phys = self.doorbell.load(Ordering::Relaxed);
        if phys == 0 {
            return Err(ENODEV);
        }
        if fault.page() != 0 {
            return Err(EINVAL);
        }
        let pfn = usize::try_from(phys >> PAGE_SHIFT)?;
        // SAFETY: `pfn` is the doorbell page of the user queue that holds this object, in BAR2,
        // which stays until the device is unbound; `drm_dev_unplug()` empties the mappings
        // before that, and waits for this fault, which holds a registration guard. The queue
        // gives the page up with `revoke_doorbell()`, which empties the mappings after it took
        // the lock held here.
        unsafe { fault.insert_pfn(0, pfn, gem::Caching::Uncached) }
    }

    /// Whether the object is a user queue's doorbell page.
    pub(crate) fn is_doorbell(&self) -> bool {
        self.doorbell.load(Ordering::Relaxed) != 0
    }

    /// Fills a userspace mapping of the buffer, of `size` bytes and with reservation object
    /// `resv`, at a fault: the faulting page and up to [`FAULT_AROUND`] - 1 pages after it.
    pub(crate) fn fault_in(
        &self,
        size: usize,
        resv: &DmaResv,
        vram: &Vram<'_>,
        fault: &gem::Fault<'_>,
    ) -> Result {
        let first = fault.page();
        let pages = size >> PAGE_SHIFT;
        let end = (first + FAULT_AROUND).min(fault.pages().end).min(pages);
        if first >= end {
            return Err(EINVAL);
        }
        // CAST: `PAGE_SIZE` fits in `u64`.
        let page_size = PAGE_SIZE as u64;
        let offset = u64::try_from(first)? * page_size;
        let len = u64::try_from(end - first)? * page_size;
        if self.imported.is_some() {
            return Err(EINVAL);
        }
        // A move takes the mappings away under the reservation lock: held while the pages are
        // inserted, after the moves have copied the bytes. The engine's watchdog ends a move
        // that does not complete.
        let _locked = resv.lock();
        while !resv.wait_timeout(Usage::Kernel, false, Jiffies::MAX)? {}
        let memory = self.memory.lock();
        match &*memory {
            Memory::None => Err(EINVAL),
            Memory::Vram(_) | Memory::Lent(..) => {
                let vram_base = vram.phys_base()?;
                let mut page = first;
                memory.for_each_piece(vram, offset, len, |target, piece| {
                    let Target::Vram(at) = target else {
                        return Err(EINVAL);
                    };
                    for k in 0..piece / page_size {
                        let pfn = usize::try_from((vram_base + at + k * page_size) >> PAGE_SHIFT)?;
                        // SAFETY: `pfn` is VRAM of this buffer behind BAR2, which stays until the
                        // device is unbound; `drm_dev_unplug()` empties the mappings before that,
                        // and waits for this fault, which holds a registration guard. A move
                        // frees the VRAM after `unmap_userspace()`, which it calls under the
                        // reservation and memory locks, held here; lent VRAM does not move, and
                        // its pins go at the unbind.
                        let inserted =
                            unsafe { fault.insert_pfn(page, pfn, gem::Caching::WriteCombined) };
                        // Only the faulting page must be mapped; the others are a bonus.
                        if inserted.is_err() && page != first {
                            return Ok(());
                        }
                        inserted?;
                        page += 1;
                    }
                    Ok(())
                })
            }
            Memory::System(dma, _) => {
                let pages = dma.access(vram.device().as_ref())?.pages();
                for page in first..end {
                    let sys_page = pages.get(page).ok_or(EINVAL)?;
                    // SAFETY: The page belongs to the buffer. It is freed with the buffer, or
                    // when the device's unbind revokes the mapping that holds it, which happens
                    // after `drm_dev_unplug()` emptied the mappings and waited for this fault,
                    // which holds a registration guard.
                    let inserted = unsafe { fault.insert_page(page, sys_page) };
                    if inserted.is_err() && page != first {
                        break;
                    }
                    inserted?;
                }
                Ok(())
            }
        }
    }
}

#[pinned_drop]
impl PinnedDrop for Bo {
    fn drop(self: Pin<&mut Self>) {
        if let Some(lru) = &self.lru {
            lru.remove(&self);
            if self.spare.lock().is_some() {
                lru.spare.give(self.size);
            }
        }
    }
}

/// Takes the doorbell page of `obj`, a doorbell object, away from it, and empties its userspace
/// mappings: touching them raises `SIGBUS`.
pub(crate) fn revoke_doorbell(obj: &Object) {
    {
        let _memory = obj.memory.lock();
        obj.doorbell.store(0, Ordering::Relaxed);
    }
    obj.unmap_userspace();
}

/// System memory for `obj` to move to: the buffer's spare, else new pages.
pub(crate) fn system_for(obj: &Object, data: &DeviceData<'_>) -> Result<Memory> {
    match obj.take_spare() {
        Some(spare) => Ok(spare),
        // CAST: `usize` fits in `u64`.
        None => Memory::system(&data.vram, obj.size() as u64),
    }
}

/// Moves `obj`, one of the device's movable buffers, from VRAM to `system` with the engine, for
/// an importer that cannot reach VRAM. Returns the move's fence, added to the reservation
/// object.
///
/// The caller holds the buffer's reservation lock (`locked`) and waited for every job that uses
/// it; it tells the importers, and starts the engine once it has released the lock.
pub(crate) fn move_to(
    obj: &Object,
    data: &DeviceData<'_>,
    locked: &impl ResvLocked,
    system: Memory,
) -> Result<ARef<Fence>> {
    let resv = obj.dma_resv();
    resv.reserve_locked(locked, 1)?;
    let fence = moves::start(data, obj, system, locked)?;
    // Cannot fail: the slot is reserved.
    resv.add_fence_locked(locked, &fence, Usage::Kernel)?;
    Ok(fence)
}
