// SPDX-License-Identifier: GPL-2.0

//! A Conflux buffer as the exporter of its dma-buf.
//!
//! A buffer in VRAM is exported as BAR memory: each importer gets the bus addresses of the
//! buffer's blocks where the PCIe topology has a peer-to-peer route to it (through switches, or
//! through the host bridge where the kernel allows it), in a table that honours the importer's
//! segment limits. Where there is no route, a movable buffer moves to system memory at the
//! importer's first map, and any other is refused. A buffer in system memory is exported as its
//! pages, mapped for each importer.

use core::sync::atomic::{
    AtomicUsize,
    Ordering, //
};

use kernel::{
    device::Device,
    dma::DataDirection,
    dma_buf::{
        Attachment,
        Backing,
        Exporter,
        KernelMap,
        ResvHeld,
        Table, //
    },
    dma_resv::{
        DmaResv,
        Usage, //
    },
    dma_segments::{
        DmaRange,
        PageMapping, //
    },
    drm::gem::BaseObject,
    mm::virt::VmaNew,
    page::{
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    pci::p2pdma::{
        MapType,
        Provider, //
    },
    prelude::*,
    sync::aref::ARef,
    time::Jiffies,
    uapi,
};

use crate::{
    driver::{
        IoctlDevice,
        Object, //
    },
    gem::{
        self,
        memory::Memory, //
    },
    hw::DeviceData,
    mmu::Target,
    regs::CTL_BAR,
};

/// The path a [`MapType`] stands for, as a `DRM_CONFLUX_PATH_*`.
fn path_of(route: MapType) -> u32 {
    match route {
        MapType::BusAddress => uapi::DRM_CONFLUX_PATH_P2P,
        MapType::ThroughHostBridge => uapi::DRM_CONFLUX_PATH_HOST_BRIDGE,
        MapType::NotSupported => 0,
    }
}

/// A Conflux buffer as its dma-buf's exporter.
pub(crate) struct Export {
    pub(super) obj: ARef<Object>,
    pub(super) dev: ARef<IoctlDevice>,
    /// The tables importers hold, mapped and not unmapped yet.
    mapped: AtomicUsize,
}

impl Export {
    /// The exporter of `obj`, a buffer of `dev`.
    pub(super) fn new(obj: &Object, dev: &IoctlDevice) -> Self {
        Self {
            obj: obj.into(),
            dev: dev.into(),
            mapped: AtomicUsize::new(0),
        }
    }

    /// How the device `importer` reaches the buffer, as a `DRM_CONFLUX_PATH_*`; 0 when it
    /// cannot. A movable buffer in VRAM is reached in system memory by an importer without a
    /// route: it moves there at the importer's first map.
    pub(crate) fn path_for(&self, importer: &Device) -> Result<u32> {
        DeviceData::with(&self.dev, |_, data| match self.obj.placement() {
            uapi::DRM_CONFLUX_BO_VRAM => Ok(match map_type(data, importer)? {
                MapType::NotSupported if self.obj.movable() => uapi::DRM_CONFLUX_PATH_SYSTEM,
                route => path_of(route),
            }),
            uapi::DRM_CONFLUX_BO_SYSTEM => Ok(uapi::DRM_CONFLUX_PATH_SYSTEM),
            _ => Err(EINVAL),
        })
    }

    /// Moves the buffer to system memory if it is in VRAM and `attachment` cannot reach VRAM (it
    /// takes no peer-to-peer address, cannot give VRAM back, or the topology has no route; see
    /// [`can_reach`]). [`EXDEV`] or
    /// [`EOPNOTSUPP`] when the buffer may not move, [`EBUSY`] when another importer pinned it in
    /// VRAM.
    ///
    /// Every job that uses the buffer, on any device, finishes first; then the engine copies the
    /// buffer, the device's address spaces and the other importers lose their mappings of the
    /// VRAM, which is freed once the copy is done.
    ///
    /// With `map`, the buffer is also mapped for `attachment` in that direction when it moves:
    /// the table of the system memory, made before the move starts, so that a map that fails
    /// leaves the buffer where it was. [`None`] when it did not move.
    fn place_for(
        &self,
        data: &DeviceData<'_>,
        attachment: &Attachment,
        locked: &ResvHeld<'_>,
        map: Option<DataDirection>,
    ) -> Result<Option<Table>> {
        if !matches!(*self.obj.memory(), Memory::Vram(_)) {
            return Ok(None);
        }
        let importer = attachment.device();
        let Err(refusal) = reaches_vram(data, attachment) else {
            return Ok(None);
        };
        if !self.obj.movable() {
            return Err(refusal);
        }
        if self.obj.pins().load(Ordering::Relaxed) > 0 {
            self.refuse_pinned(data, attachment);
            return Err(EBUSY);
        }
        let resv = self.obj.dma_resv();
        // The engine's watchdog ends a job that does not complete.
        while !resv.wait_timeout(Usage::Bookkeep, true, Jiffies::MAX)? {}
        let system = gem::system_for(&self.obj, data)?;
        let table = match map {
            Some(dir) => Some(map_system(data, &system, attachment, dir)?),
            None => None,
        };
        let fence = gem::move_to(&self.obj, data, locked, system)?;
        // Importers holding a table of the VRAM map again. Without any, none is told: the one
        // this move is for is not mapped yet, and a revocable pinned importer takes
        // `invalidate_mappings` as a revocation for good.
        if self.mapped.load(Ordering::Relaxed) > 0 {
            locked.buf().invalidate_mappings(locked)?;
        }
        data.engine.start();
        // An importer that is not dynamic does not wait for the move's fence.
        if !attachment.is_dynamic() {
            fence.wait(false)?;
        }
        dev_dbg!(
            data.pdev,
            "export: moved a buffer of {:#x} bytes to system memory for {}\n",
            self.obj.size(),
            importer.name()
        );
        Ok(table)
    }

    /// Calls `sync` with the buffer's mapping for the device's DMA when it is in system memory.
    fn sync_system(&self, sync: fn(&PageMapping)) -> Result {
        DeviceData::with(&self.dev, |_, data| {
            if let Memory::System(dma, _) = &*self.obj.memory() {
                sync(dma.access(data.pdev.as_ref())?);
            }
            Ok(())
        })
    }

    /// Logs that the buffer cannot move to system memory for `attachment`: importers pinned it
    /// in VRAM.
    fn refuse_pinned(&self, data: &DeviceData<'_>, attachment: &Attachment) {
        if data.log_allowed() {
            dev_info!(
                data.pdev,
                "export: {} attachments pinned a buffer in VRAM: not moved for {} (-EBUSY)\n",
                self.obj.pins().load(Ordering::Relaxed),
                attachment.device().name()
            );
        }
    }

    /// Maps the memory that holds the buffer for `attachment`.
    fn map_memory(
        &self,
        data: &DeviceData<'_>,
        attachment: &Attachment,
        dir: DataDirection,
    ) -> Result<Table> {
        let memory = self.obj.memory();
        match &*memory {
            Memory::Vram(_) => {
                let base = data.vram.phys_base()?;
                let mut ranges = KVec::new();
                // CAST: `usize` fits in `u64`.
                let size = self.obj.size() as u64;
                memory.for_each_piece(&data.vram, 0, size, |t, n| {
                    let Target::Vram(at) = t else {
                        return Err(EINVAL);
                    };
                    ranges.push(DmaRange::new(base + at, n)?, GFP_KERNEL_ACCOUNT)?;
                    Ok(())
                })?;
                // `place_for()` found that the importer reaches VRAM, else the buffer is not here.
                let provider = Provider::of_bar(data.pdev, CTL_BAR)?;
                attachment.map_bar(provider, &ranges, dir, GFP_KERNEL_ACCOUNT)
            }
            system @ Memory::System(..) => map_system(data, system, attachment, dir),
            Memory::None | Memory::Lent(..) => Err(EOPNOTSUPP),
        }
    }
}

/// Maps `system`, system memory of `data`'s device, for `attachment`.
fn map_system(
    data: &DeviceData<'_>,
    system: &Memory,
    attachment: &Attachment,
    dir: DataDirection,
) -> Result<Table> {
    let Memory::System(dma, _) = system else {
        return Err(EINVAL);
    };
    let pages = dma.access(data.pdev.as_ref())?.pages().clone();
    attachment.map_pages(pages, dir, GFP_KERNEL_ACCOUNT)
}

/// How the device `importer` reaches the VRAM of `data`'s device.
fn map_type(data: &DeviceData<'_>, importer: &Device) -> Result<MapType> {
    Ok(Provider::of_bar(data.pdev, CTL_BAR)?.map_type(importer))
}

/// Whether `attachment`'s device takes peer-to-peer addresses, can give them back and has a
/// route to the VRAM of `data`'s device.
///
/// VRAM goes only to importers that can give it back (`invalidate_mappings`): the bus addresses
/// of a buffer's VRAM mean nothing once the buffer moved or the device is unbound, and an
/// importer that keeps them for good (a pinned RDMA registration that is not revocable) could
/// write to whatever uses the BAR next. Such an importer gets the buffer in system memory,
/// whose pages its mapping keeps.
fn can_reach(data: &DeviceData<'_>, attachment: &Attachment) -> bool {
    attachment.peer2peer()
        && attachment.is_revocable()
        && map_type(data, attachment.device()).is_ok_and(|route| route != MapType::NotSupported)
}

/// Whether `attachment`'s device can take the VRAM of `data`'s device: [`EOPNOTSUPP`] if the
/// importer does not accept peer-to-peer addresses, [`EXDEV`] if the topology has no
/// peer-to-peer route between the devices, each with its reason in the log once per importer.
fn reaches_vram(data: &DeviceData<'_>, attachment: &Attachment) -> Result {
    let importer = attachment.device();
    let refusal = if can_reach(data, attachment) {
        return Ok(());
    } else if !attachment.peer2peer() || !attachment.is_revocable() {
        EOPNOTSUPP
    } else {
        EXDEV
    };
    if data.first_refusal(importer) {
        let why = if refusal == EXDEV {
            "no peer-to-peer route between the devices"
        } else if !attachment.peer2peer() {
            "it takes no peer-to-peer address"
        } else {
            "it cannot give VRAM back: no invalidate_mappings"
        };
        dev_info!(
            data.pdev,
            "export: {} cannot reach VRAM ({}): its buffers go through system memory ({:?} for those that may only be in VRAM)\n",
            importer.name(),
            why,
            refusal
        );
    }
    Err(refusal)
}

#[vtable]
impl Exporter for Export {
    const NAME: &'static CStr = c"conflux";

    type Backing = Backing;

    fn resv(&self) -> Option<&DmaResv> {
        Some(self.obj.dma_resv())
    }

    fn attach(&self, attachment: &Attachment) -> Result {
        DeviceData::with(&self.dev, |_, data| {
            let far = self.obj.movable() && !can_reach(data, attachment);
            match self.obj.placement() {
                // An importer that cannot reach VRAM gets the buffer in system memory, unless an
                // importer pinned it in VRAM: it is refused here, since the dma-buf core takes
                // a refusal at the map of an importer that cannot move as an exporter's bug.
                uapi::DRM_CONFLUX_BO_VRAM if far && self.obj.pins().load(Ordering::Relaxed) > 0 => {
                    self.refuse_pinned(data, attachment);
                    return Err(EBUSY);
                }
                uapi::DRM_CONFLUX_BO_VRAM if self.obj.movable() => {}
                uapi::DRM_CONFLUX_BO_VRAM => reaches_vram(data, attachment)?,
                uapi::DRM_CONFLUX_BO_SYSTEM => {}
                placement => {
                    dev_info!(
                        data.pdev,
                        "export: buffer with placement {:#x} cannot be attached\n",
                        placement
                    );
                    return Err(EOPNOTSUPP);
                }
            }
            // While it is attached, a movable buffer stays in system memory once there.
            if far {
                self.obj.far_importers().fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    }

    fn detach(&self, attachment: &Attachment) {
        // Once the device is unbound, the buffer no longer moves.
        let _ = DeviceData::with(&self.dev, |_, data| {
            if self.obj.movable() && !can_reach(data, attachment) {
                self.obj.far_importers().fetch_sub(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }

    fn pin(&self, attachment: &Attachment, locked: &ResvHeld<'_>) -> Result {
        DeviceData::with(&self.dev, |_, data| {
            self.place_for(data, attachment, locked, None)
        })?;
        self.obj.pins().fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn unpin(&self, _attachment: &Attachment) {
        self.obj.pins().fetch_sub(1, Ordering::Relaxed);
    }

    fn map(
        &self,
        attachment: &Attachment,
        dir: DataDirection,
        locked: &ResvHeld<'_>,
    ) -> Result<Table> {
        let table = DeviceData::with(&self.dev, |_, data| {
            match self.place_for(data, attachment, locked, Some(dir))? {
                Some(table) => Ok(table),
                None => self.map_memory(data, attachment, dir),
            }
        })?;
        self.mapped.fetch_add(1, Ordering::Relaxed);
        Ok(table)
    }

    fn unmap(&self, _attachment: &Attachment, table: Table, _dir: DataDirection) {
        drop(table);
        self.mapped.fetch_sub(1, Ordering::Relaxed);
    }

    fn mmap(&self, vma: &VmaNew) -> Result {
        // Through the buffer's fault handler, as a mapping of the buffer's handle: it follows
        // the buffer when it moves.
        self.obj.mmap_dma_buf(vma)
    }

    fn vmap(&self, _locked: &ResvHeld<'_>) -> Result<KernelMap> {
        DeviceData::with(&self.dev, |_, data| {
            let memory = self.obj.memory();
            let map = match &*memory {
                Memory::Vram(_) => {
                    let base = data.vram.phys_base()?;
                    // CAST: `usize` fits in `u64`.
                    let (size, page) = (self.obj.size() as u64, PAGE_SIZE as u64);
                    let mut pfns = KVVec::with_capacity(self.obj.size() >> PAGE_SHIFT, GFP_KERNEL)?;
                    memory.for_each_piece(&data.vram, 0, size, |t, n| {
                        let Target::Vram(at) = t else {
                            return Err(EINVAL);
                        };
                        for k in 0..n >> PAGE_SHIFT {
                            let pfn = usize::try_from((base + at + k * page) >> PAGE_SHIFT)?;
                            pfns.push(pfn, GFP_KERNEL)?;
                        }
                        Ok(())
                    })?;
                    // SAFETY: The frames are the buffer's VRAM behind its BAR, device memory.
                    unsafe { KernelMap::of_io(&mut pfns) }?
                }
                Memory::System(dma, _) => {
                    KernelMap::of_pages(dma.access(data.pdev.as_ref())?.pages().clone())?
                }
                Memory::None | Memory::Lent(..) => return Err(EOPNOTSUPP),
            };
            // The buffer stays where it is, its memory with it, until the last user unmaps it.
            self.obj.pins().fetch_add(1, Ordering::Relaxed);
            Ok(map)
        })
    }

    fn vunmap(&self, _locked: &ResvHeld<'_>) {
        self.obj.pins().fetch_sub(1, Ordering::Relaxed);
    }

    fn begin_cpu_access(&self, dir: DataDirection) -> Result {
        // The jobs the access must follow end first: those that write the buffer before a read,
        // every one before a write (as the core waits, after this returns). VRAM is reached
        // uncached through the BAR; pages of system memory then take what the device wrote.
        let usage = match dir {
            DataDirection::FromDevice => Usage::Write,
            _ => Usage::Read,
        };
        let resv = self.obj.dma_resv();
        // The engine's watchdog ends a job that does not complete.
        while !resv.wait_timeout(usage, true, Jiffies::MAX)? {}
        self.sync_system(PageMapping::sync_for_cpu)
    }

    fn end_cpu_access(&self, _dir: DataDirection) -> Result {
        self.sync_system(PageMapping::sync_for_device)
    }
}
