// SPDX-License-Identifier: GPL-2.0

//! Conflux buffer objects, in VRAM or in system memory.

use core::pin::Pin;

use kernel::{
    device::Bound,
    devres::Devres,
    dma::DataDirection,
    dma_buf::DmaBuf,
    dma_segments::PageMapping,
    drm::{
        self,
        gem::{
            self,
            BaseObject, //
        },
    },
    gpu::buddy::AllocatedBlocks,
    new_mutex,
    page::{
        Page,
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    pci,
    prelude::*,
    scatterlist::SGTable,
    sync::{
        aref::ARef,
        Arc,
        Mutex,
        MutexGuard, //
    },
    uapi, //
};

use crate::{
    driver::{
        ConfluxDrm,
        Hw, //
    },
    mmu::{
        PageTables,
        Target,
        Vram,
        VramIo, //
    },
    prime::{
        self,
        Imported,
        IoctlDevice, //
    },
    regs,
    vm::VmList,
};

/// Bytes a move to system memory copies at once.
const MOVE_CHUNK: usize = 64 * 1024;

/// Pages a CPU fault maps at once, from the faulting one on.
const FAULT_AROUND: usize = 16;

/// What holds the bytes of one of the device's own buffers.
pub(crate) enum Memory {
    /// Nothing: the object that carries a VM's reservation object, or an imported buffer.
    None,
    /// VRAM blocks, zeroed by the engine before the object was created.
    Vram(Pin<KBox<AllocatedBlocks>>),
    /// Pages of system memory, zeroed by the page allocator, held by their mapping for the
    /// device's DMA; the device's unbind undoes the mapping and frees the pages.
    System(Devres<PageMapping>),
}

/// What a new buffer object is made of.
pub(crate) struct Contents {
    memory: Memory,
    imported: Option<Imported>,
    movable: bool,
    vms: Arc<VmList>,
}

impl Contents {
    /// The device's own `memory`; `movable` when the buffer may move from VRAM to system memory.
    pub(crate) fn local(memory: Memory, movable: bool) -> Result<Self> {
        Ok(Contents {
            memory,
            imported: None,
            movable,
            vms: Arc::pin_init(VmList::new(), GFP_KERNEL)?,
        })
    }

    /// A buffer of another device or exporter, whose importer records its VMs in `vms`.
    pub(crate) fn imported(imported: Imported, vms: Arc<VmList>) -> Self {
        Contents {
            memory: Memory::None,
            imported: Some(imported),
            movable: false,
            vms,
        }
    }
}

/// A Conflux buffer object.
///
/// # Invariants
///
/// The memory, when there is some, holds exactly the object's size: for VRAM, the object's byte
/// `n` is in the block that covers `n` when the blocks are laid end to end in their iteration
/// order; in system memory, it is byte `n % PAGE_SIZE` of page `n / PAGE_SIZE`. It is
/// [`Memory::None`] when `imported` is set. It changes only from VRAM to system memory, when
/// `movable`, under the lock of the object's reservation object, and every VM that maps the
/// buffer meanwhile is in `vms`.
#[pin_data]
pub(crate) struct Bo {
    #[pin]
    memory: Mutex<Memory>,
    /// The attachment, for a buffer of another device or exporter.
    imported: Option<Imported>,
    movable: bool,
    vms: Arc<VmList>,
}

impl gem::DriverObject for Bo {
    type Driver = ConfluxDrm;
    type Args = Contents;

    const MMAP: bool = true;

    fn new(
        _dev: &drm::Device<ConfluxDrm>,
        _size: usize,
        contents: Contents,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(Bo {
            memory <- new_mutex!(contents.memory),
            imported: contents.imported,
            movable: contents.movable,
            vms: contents.vms,
        })
    }

    fn fault(
        obj: &gem::Object<Self>,
        dev: &drm::Device<ConfluxDrm, drm::Ioctl>,
        fault: &gem::Fault<'_>,
    ) -> Result {
        // Once the device is unplugged, its mappings are emptied and stay empty.
        let guard = dev.registration_guard().ok_or(ENODEV)?;
        guard.registration_data_with(|hw| obj.fault_in(obj.size(), hw, fault))
    }

    const EXPORT: bool = true;

    fn export(obj: &gem::Object<Self>, dev: &IoctlDevice, _flags: u32) -> Result<ARef<DmaBuf>> {
        prime::export(obj, dev)
    }

    const IMPORT: bool = true;

    fn import(dev: &IoctlDevice, buf: &DmaBuf) -> Result<ARef<gem::Object<Self>>> {
        prime::import(dev, buf)
    }
}

/// Calls `f` with the parts of `extents`, laid end to end from byte 0 of a buffer, that hold
/// bytes `offset..offset + len`, in order: each as the extent, the offset in it and the length.
/// [`EINVAL`] when the extents do not hold them all.
fn for_each_part<T>(
    extents: impl Iterator<Item = (T, u64)>,
    offset: u64,
    len: u64,
    mut f: impl FnMut(T, u64, u64) -> Result,
) -> Result {
    let want_end = offset.checked_add(len).ok_or(EINVAL)?;
    let (mut start, mut done) = (0u64, 0u64);
    for (extent, size) in extents {
        let end = start + size;
        let from = offset + done;
        if end > from && from < want_end {
            let piece = want_end.min(end) - from;
            f(extent, from - start, piece)?;
            done += piece;
        }
        start = end;
    }
    if done != len {
        return Err(EINVAL);
    }
    Ok(())
}

/// Calls `f` with the pieces of bytes `offset..offset + len` of an imported buffer, as
/// [`Bo::for_each_piece`] does, from `table`, its mapping.
fn table_pieces(
    table: &SGTable,
    offset: u64,
    len: u64,
    mut f: impl FnMut(Target, u64) -> Result,
) -> Result {
    let extents = table
        .iter()
        .map(|sg| (prime::bus_addr(sg.dma_address()), sg.dma_len()));
    for_each_part(extents, offset, len, |addr, at, n| {
        f(Target::Bus(addr + at), n)
    })
}

impl Memory {
    /// Calls `f` with the pieces of bytes `offset..offset + len` of the memory, as
    /// [`Bo::for_each_piece`] does.
    pub(crate) fn for_each_piece(
        &self,
        pdev: &pci::Device<Bound>,
        offset: u64,
        len: u64,
        mut f: impl FnMut(Target, u64) -> Result,
    ) -> Result {
        let want_end = offset.checked_add(len).ok_or(EINVAL)?;
        let mut done = 0u64;
        match self {
            Memory::None => return Err(EINVAL),
            Memory::Vram(blocks) => {
                let extents = blocks.iter().map(|b| (b.offset(), b.size()));
                return for_each_part(extents, offset, len, |base, at, n| {
                    f(Target::Vram(base + at), n)
                });
            }
            Memory::System(dma) => {
                let dma = dma.access(pdev.as_ref())?;
                // CAST: `PAGE_SIZE` fits in `u64`.
                let page = PAGE_SIZE as u64;
                // A run of pages at contiguous bus addresses: its first address and length.
                let mut run: Option<(u64, u64)> = None;
                while offset + done < want_end {
                    let at = offset + done;
                    let index = usize::try_from(at / page)?;
                    let addr = dma.page_addr(index).ok_or(EINVAL)? + at % page;
                    let piece = (page - at % page).min(want_end - at);
                    run = match run {
                        Some((first, n)) if first + n == addr => Some((first, n + piece)),
                        Some((first, n)) => {
                            f(Target::Bus(first), n)?;
                            Some((addr, piece))
                        }
                        None => Some((addr, piece)),
                    };
                    done += piece;
                }
                if let Some((first, n)) = run {
                    f(Target::Bus(first), n)?;
                }
            }
        }
        if done != len {
            return Err(EINVAL);
        }
        Ok(())
    }

    /// Copies bytes `offset..offset + buf.len()` of the memory into `buf`, or from `buf` when
    /// `write`, with the CPU.
    fn cpu_copy(&self, hw: &Hw<'_>, offset: u64, buf: &mut [u8], write: bool) -> Result {
        let len = u64::try_from(buf.len())?;
        match self {
            Memory::None => Err(EINVAL),
            Memory::Vram(_) => {
                let io = hw.vram_io()?;
                let mut done = 0usize;
                self.for_each_piece(hw.pdev, offset, len, |target, piece| {
                    let Target::Vram(at) = target else {
                        return Err(EINVAL);
                    };
                    let piece = usize::try_from(piece)?;
                    let part = buf.get_mut(done..done + piece).ok_or(EINVAL)?;
                    if write {
                        io.write(at, part)?;
                    } else {
                        io.read(at, part)?;
                    }
                    done += piece;
                    Ok(())
                })
            }
            Memory::System(dma) => {
                let pages = dma.access(hw.pdev.as_ref())?.pages();
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

/// Moves `obj`, one of the device's buffers, from VRAM to system memory, for an importer that
/// cannot reach VRAM: takes the userspace mappings away and copies the bytes, under the memory's
/// lock. Returns the VRAM, for the caller to free once nothing can reach it any more (the VMs in
/// [`Bo::vms`], other importers); [`None`] when the buffer is not in VRAM.
///
/// The caller holds the buffer's reservation lock and waited for every job that uses it.
pub(crate) fn move_to_system(obj: &gem::Object<Bo>, hw: &Hw<'_>) -> Result<Option<Memory>> {
    if !obj.movable() {
        return Err(EINVAL);
    }
    if !matches!(*obj.memory(), Memory::Vram(_)) {
        return Ok(None);
    }
    // CAST: `usize` fits in `u64`.
    let size = obj.size() as u64;
    // Allocated before the lock, which faults and CPU copies wait for.
    let system = Bo::system_memory(hw.pdev, size)?;
    let mut bounce = KVec::from_elem(0u8, MOVE_CHUNK, GFP_KERNEL)?;
    let mut memory = obj.memory();
    obj.unmap_userspace();
    let mut at = 0u64;
    while at < size {
        let part = bounce
            .get_mut(..usize::try_from(size - at)?.min(MOVE_CHUNK))
            .ok_or(EINVAL)?;
        memory.cpu_copy(hw, at, part, false)?;
        system.cpu_copy(hw, at, part, true)?;
        at += u64::try_from(part.len())?;
    }
    Ok(Some(core::mem::replace(&mut *memory, system)))
}

impl Bo {
    /// Allocates `size` bytes of zeroed system memory, mapped for the DMA of `pdev`.
    pub(crate) fn system_memory(pdev: &pci::Device<Bound>, size: u64) -> Result<Memory> {
        // CAST: `PAGE_SIZE` fits in `u64`.
        let count = usize::try_from(size.div_ceil(PAGE_SIZE as u64))?;
        let mut pages = KVVec::with_capacity(count, GFP_KERNEL_ACCOUNT | __GFP_NOWARN)?;
        for _ in 0..count {
            pages.push(
                Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO | __GFP_NOWARN)?,
                GFP_KERNEL_ACCOUNT,
            )?;
        }
        let pages = Arc::new(pages, GFP_KERNEL)?;
        let mapping = PageMapping::new(
            pdev.as_ref(),
            pages,
            DataDirection::Bidirectional,
            GFP_KERNEL,
        )?;
        let dma = Devres::new(pdev.as_ref(), mapping)?;
        Ok(Memory::System(dma))
    }

    /// The placement, as a `DRM_CONFLUX_BO_*` flag; 0 for the object of a VM.
    pub(crate) fn placement(&self) -> u32 {
        if self.imported.is_some() {
            return uapi::DRM_CONFLUX_BO_IMPORTED;
        }
        match *self.memory.lock() {
            Memory::None => 0,
            Memory::Vram(_) => uapi::DRM_CONFLUX_BO_VRAM,
            Memory::System(_) => uapi::DRM_CONFLUX_BO_SYSTEM,
        }
    }

    /// How the device reaches the memory, a `DRM_CONFLUX_PATH_*`; 0 for the object of a VM.
    pub(crate) fn path(&self) -> u32 {
        if let Some(imp) = &self.imported {
            return imp.path();
        }
        match *self.memory.lock() {
            Memory::None => 0,
            Memory::Vram(_) => uapi::DRM_CONFLUX_PATH_LOCAL,
            Memory::System(_) => uapi::DRM_CONFLUX_PATH_SYSTEM,
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

    /// Whether the buffer may move from VRAM to system memory.
    pub(crate) fn movable(&self) -> bool {
        self.movable
    }

    /// Whether the memory can change under a VM that maps the buffer: an imported buffer's
    /// exporter can invalidate it, and a movable buffer can move. The VMs that map such a buffer
    /// record where, and are in [`Bo::vms`].
    pub(crate) fn may_change(&self) -> bool {
        self.movable || self.imported.is_some()
    }

    /// The VMs of the device that map the buffer, when [`Bo::may_change`].
    pub(crate) fn vms(&self) -> &VmList {
        &self.vms
    }

    /// An identifier of the buffer, unique while it lives, for the VMs' records.
    pub(crate) fn id(&self) -> usize {
        self.vms.id()
    }

    /// Calls `f` with the pieces, `(target, length)` in order, that hold bytes
    /// `offset..offset + len` of the buffer: VRAM offsets, or the bus addresses of system memory
    /// or of an imported buffer (from `table`, its mapping) as the device reaches it. Allocates
    /// nothing. [`EINVAL`] when the buffer has no such bytes.
    pub(crate) fn for_each_piece(
        &self,
        pdev: &pci::Device<Bound>,
        table: Option<&SGTable>,
        offset: u64,
        len: u64,
        f: impl FnMut(Target, u64) -> Result,
    ) -> Result {
        match self.imported {
            Some(_) => table_pieces(table.ok_or(EINVAL)?, offset, len, f),
            None => self.memory.lock().for_each_piece(pdev, offset, len, f),
        }
    }

    /// Maps bytes `offset..offset + len` of the buffer at `va` of `tables`, with 2 MiB entries
    /// where the memory allows. Maps nothing when it fails; [`EINVAL`] when the buffer has no
    /// such bytes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map(
        &self,
        tables: &mut PageTables,
        vram: &Vram,
        io: &VramIo<'_>,
        pdev: &pci::Device<Bound>,
        table: Option<&SGTable>,
        va: u64,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result {
        let mut done = 0u64;
        let mapped = self.for_each_piece(pdev, table, offset, len, |target, piece| {
            tables.map(vram, io, va + done, target, piece, writable)?;
            done += piece;
            Ok(())
        });
        if mapped.is_err() {
            tables.unmap(vram, io, va, done);
        }
        mapped
    }

    /// Copies bytes `offset..offset + buf.len()` of the buffer into `buf`, or from `buf` when
    /// `write`, with the CPU.
    pub(crate) fn cpu_copy(&self, hw: &Hw<'_>, offset: u64, buf: &mut [u8], write: bool) -> Result {
        if self.imported.is_some() {
            return Err(EOPNOTSUPP);
        }
        // Held across the copy, so that a move to system memory takes all of it along.
        self.memory.lock().cpu_copy(hw, offset, buf, write)
    }

    /// Fills a userspace mapping of the buffer, of `size` bytes, at a fault: the faulting page
    /// and up to [`FAULT_AROUND`] - 1 pages after it.
    fn fault_in(&self, size: usize, hw: &Hw<'_>, fault: &gem::Fault<'_>) -> Result {
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
        // Held while the pages are inserted: a move to system memory takes the mappings away
        // under it, before it copies.
        let memory = self.memory.lock();
        match &*memory {
            Memory::None => Err(EINVAL),
            Memory::Vram(_) => {
                let vram_base = hw.pdev.resource_start(regs::CTL_BAR)? + hw.info.vram_offset;
                let mut page = first;
                memory.for_each_piece(hw.pdev, offset, len, |target, piece| {
                    let Target::Vram(at) = target else {
                        return Err(EINVAL);
                    };
                    for k in 0..piece / page_size {
                        let pfn = usize::try_from((vram_base + at + k * page_size) >> PAGE_SHIFT)?;
                        // SAFETY: `pfn` is VRAM of this buffer behind BAR2, which stays until the
                        // device is unbound; `drm_dev_unplug()` empties the mappings before that,
                        // and waits for this fault, which holds a registration guard. A move to
                        // system memory frees the VRAM after `unmap_userspace()`, which it calls
                        // under the memory's lock, held here.
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
            Memory::System(dma) => {
                let pages = dma.access(hw.pdev.as_ref())?.pages();
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
