// SPDX-License-Identifier: GPL-2.0

//! Sharing buffers between devices as dma-bufs (PRIME).
//!
//! A buffer in VRAM is exported as BAR memory: each importer gets the bus addresses of the
//! buffer's blocks where the PCIe topology has a peer-to-peer route to it (through switches, or
//! through the host bridge where the kernel allows it), in a table that honours the importer's
//! segment limits, and the attachment is refused where there is none. A buffer in system memory
//! is exported as its pages, mapped for each importer. When the device is unbound, every
//! exported buffer is revoked before its memory goes.
//!
//! An imported buffer is attached dynamically, with peer-to-peer allowed. It is mapped at its
//! first bind, under its reservation lock, and the table is kept: every VM that maps it records
//! where. When the exporter invalidates the mappings, the page-table entries are cleared in
//! every such VM before the callback returns; the next job that uses the buffer maps it again.

use core::sync::atomic::{
    AtomicUsize,
    Ordering, //
};

use kernel::{
    device::Bound,
    dma::DataDirection,
    dma_buf::{
        Attachment,
        DmaBuf,
        Exported,
        Exporter,
        ImportAttachment,
        Importer,
        Reserved, //
    },
    dma_resv::{
        DmaResv,
        Locked,
        Usage, //
    },
    dma_segments::{
        DmaRange,
        DmaSGTable,
        SegmentLimits,
        SegmentPlan, //
    },
    drm::{
        self,
        gem::{
            self,
            BaseObject, //
        },
    },
    pci::{
        self,
        p2pdma::{
            MapType,
            Provider, //
        },
    },
    prelude::*,
    scatterlist::SGTable,
    sync::{
        aref::ARef,
        Arc, //
    },
    time::msecs_to_jiffies,
    uapi,
};

use crate::{
    driver::{
        ConfluxDrm,
        Hw, //
    },
    engine::job_timeout_ms,
    gem::{
        Bo,
        Contents,
        Memory, //
    },
    mmu::Target,
    regs,
    vm::VmList,
};

/// The GEM object type of the driver.
type Object = gem::Object<Bo>;

/// This module, which exported buffers keep loaded.
const THIS_MODULE: &kernel::ThisModule =
    &<crate::LocalModule as kernel::ModuleMetadata>::THIS_MODULE;

/// The DRM device, as ioctls see it.
pub(crate) type IoctlDevice = drm::Device<ConfluxDrm, drm::Ioctl>;

/// Runs `f` with the device's hardware while the device is bound; [`ENODEV`] once it is not.
fn with_hw<R>(dev: &IoctlDevice, f: impl FnOnce(&Hw<'_>) -> Result<R>) -> Result<R> {
    crate::vm::with_dev(dev, |_, hw| f(hw))
}

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
    obj: ARef<Object>,
    dev: ARef<IoctlDevice>,
    /// How many attachments pinned the buffer where it is.
    pins: AtomicUsize,
}

impl Export {
    /// How the device `importer` reaches the buffer, as a `DRM_CONFLUX_PATH_*`; 0 when it
    /// cannot. A movable buffer in VRAM is reached in system memory by an importer without a
    /// route: it moves there at the importer's first map.
    pub(crate) fn path_for(&self, importer: &kernel::device::Device) -> Result<u32> {
        with_hw(&self.dev, |hw| match self.obj.placement() {
            uapi::DRM_CONFLUX_BO_VRAM => {
                let provider = Provider::of_bar(hw.pdev, regs::CTL_BAR)?;
                Ok(match provider.map_type(importer) {
                    MapType::NotSupported if self.obj.movable() => uapi::DRM_CONFLUX_PATH_SYSTEM,
                    route => path_of(route),
                })
            }
            uapi::DRM_CONFLUX_BO_SYSTEM => Ok(uapi::DRM_CONFLUX_PATH_SYSTEM),
            _ => Err(EINVAL),
        })
    }

    /// Moves the buffer to system memory if it is in VRAM and `attachment`'s device cannot reach
    /// VRAM (it takes no peer-to-peer address, or the topology has no route). [`EXDEV`] when the
    /// buffer may not move, [`EBUSY`] when another importer pinned it in VRAM.
    ///
    /// Every job that uses the buffer, on any device, finishes first; then the device's VMs and
    /// the other importers lose their mappings of the VRAM, which is freed last.
    fn place_for(&self, hw: &Hw<'_>, attachment: &Attachment, locked: &Reserved<'_>) -> Result {
        if !matches!(*self.obj.memory(), Memory::Vram(_)) {
            return Ok(());
        }
        let importer = attachment.device();
        let provider = Provider::of_bar(hw.pdev, regs::CTL_BAR)?;
        if attachment.peer2peer() && provider.map_type(importer) != MapType::NotSupported {
            return Ok(());
        }
        if !self.obj.movable() {
            // Refuses with the reason in the log.
            return provider.route(attachment).map(|_| ());
        }
        let pins = self.pins.load(Ordering::Relaxed);
        if pins > 0 {
            dev_info!(
                hw.pdev,
                "export: a buffer cannot move to system memory for {}: {} attachments pinned it in VRAM (-EBUSY)\n",
                importer.name(),
                pins
            );
            return Err(EBUSY);
        }
        let resv = self.obj.dma_resv();
        while !resv.wait_timeout(Usage::Bookkeep, true, msecs_to_jiffies(job_timeout_ms()))? {
            hw.engine.check_timeout();
        }
        let Some(vram) = crate::gem::move_to_system(&self.obj, hw)? else {
            return Ok(());
        };
        self.obj.vms().invalidate(Some(hw));
        locked.buf().invalidate_mappings(locked)?;
        drop(vram);
        dev_dbg!(
            hw.pdev,
            "export: moved a buffer of {:#x} bytes to system memory for {}\n",
            self.obj.size(),
            importer.name()
        );
        Ok(())
    }
}

impl Exporter for Export {
    const NAME: &'static CStr = c"conflux";

    fn resv(&self) -> Option<&DmaResv> {
        Some(self.obj.dma_resv())
    }

    fn attach(&self, attachment: &Attachment) -> Result {
        with_hw(&self.dev, |hw| match self.obj.placement() {
            // An importer that cannot reach VRAM gets the buffer in system memory.
            uapi::DRM_CONFLUX_BO_VRAM if self.obj.movable() => Ok(()),
            uapi::DRM_CONFLUX_BO_VRAM => {
                let provider = Provider::of_bar(hw.pdev, regs::CTL_BAR)?;
                provider.route(attachment).map(|_| ())
            }
            uapi::DRM_CONFLUX_BO_SYSTEM => Ok(()),
            placement => {
                dev_info!(
                    hw.pdev,
                    "export: buffer with placement {:#x} cannot be attached\n",
                    placement
                );
                Err(EOPNOTSUPP)
            }
        })
    }

    fn pin(&self, attachment: &Attachment, locked: &Reserved<'_>) -> Result {
        with_hw(&self.dev, |hw| self.place_for(hw, attachment, locked))?;
        self.pins.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn unpin(&self, _attachment: &Attachment) {
        self.pins.fetch_sub(1, Ordering::Relaxed);
    }

    fn map(
        &self,
        attachment: &Attachment,
        dir: DataDirection,
        locked: &Reserved<'_>,
    ) -> Result<DmaSGTable> {
        with_hw(&self.dev, |hw| {
            self.place_for(hw, attachment, locked)?;
            self.map_memory(hw, attachment, dir)
        })
    }
}

impl Export {
    /// Maps the memory that holds the buffer for `attachment`.
    fn map_memory(
        &self,
        hw: &Hw<'_>,
        attachment: &Attachment,
        dir: DataDirection,
    ) -> Result<DmaSGTable> {
        let memory = self.obj.memory();
        match &*memory {
            Memory::Vram(_) => {
                let base = hw.pdev.resource_start(regs::CTL_BAR)? + hw.info.vram_offset;
                let mut ranges = KVec::new();
                memory.for_each_piece(hw.pdev, 0, self.obj.size() as u64, |t, n| {
                    let Target::Vram(at) = t else {
                        return Err(EINVAL);
                    };
                    ranges.push(DmaRange::new(base + at, n)?, GFP_KERNEL)?;
                    Ok(())
                })?;
                let provider = Provider::of_bar(hw.pdev, regs::CTL_BAR)?;
                provider.map_attachment(&ranges, attachment, dir, GFP_KERNEL)
            }
            Memory::System(dma) => {
                let pages = dma.access(hw.pdev.as_ref())?.pages().clone();
                let mapping = attachment.map_pages(pages, dir, GFP_KERNEL)?;
                let plan = SegmentPlan::new(mapping.ranges(), attachment.limits()?)?;
                let table = DmaSGTable::new(plan, GFP_KERNEL)?;
                Ok(table.with_backing(KBox::new(mapping, GFP_KERNEL)?))
            }
            Memory::None => Err(EOPNOTSUPP),
        }
    }
}

/// Exports `obj`, a buffer of `dev`, for `DRM_IOCTL_PRIME_HANDLE_TO_FD`.
///
/// The core opens the buffer's file descriptor itself, with the flags of the request.
pub(crate) fn export(obj: &Object, dev: &IoctlDevice) -> Result<ARef<DmaBuf>> {
    with_hw(dev, |hw| {
        let placement = obj.placement();
        if placement != uapi::DRM_CONFLUX_BO_VRAM && placement != uapi::DRM_CONFLUX_BO_SYSTEM {
            dev_dbg!(
                hw.pdev,
                "PRIME export: buffer with placement {:#x}: only VRAM and system memory\n",
                placement
            );
            return Err(EOPNOTSUPP);
        }
        let exporter = Export {
            obj: obj.into(),
            dev: dev.into(),
            pins: AtomicUsize::new(0),
        };
        let exported =
            Exported::export_in(exporter, obj.size(), THIS_MODULE, &hw.exports, GFP_KERNEL)?;
        Ok(exported.buf())
    })
}

/// `obj`, a buffer of `from`, as device `to` reaches it: `obj` itself on the same device, else
/// a buffer of `to` imported from it (or the buffer of `to` that `obj` was imported from).
pub(crate) fn for_device(
    obj: &Object,
    from: &IoctlDevice,
    to: &IoctlDevice,
) -> Result<ARef<Object>> {
    let (a, b): (&drm::Device<ConfluxDrm>, &drm::Device<ConfluxDrm>) = (from, to);
    if core::ptr::eq(a, b) {
        return Ok(obj.into());
    }
    match obj.imported() {
        Some(imp) => import(to, imp.buf()),
        None => import(to, &*export(obj, from)?),
    }
}

/// The importer side of a buffer another device exported.
pub(crate) struct ImportNotify {
    dev: ARef<IoctlDevice>,
    /// The VMs that map the buffer, the object's [`Bo::vms`].
    vms: Arc<VmList>,
}

impl Importer for ImportNotify {
    const ALLOW_PEER2PEER: bool = true;

    fn invalidate_mappings(&self, _attachment: &Attachment) {
        let cleared = with_hw(&self.dev, |hw| {
            self.vms.invalidate(Some(hw));
            Ok(())
        });
        if cleared.is_err() {
            // The device is unbound: its engine runs no job any more, and its VMs' tables went
            // with it. Record the invalidation all the same.
            self.vms.invalidate(None);
        }
    }
}

/// What an imported buffer holds.
pub(crate) struct Imported {
    attachment: ImportAttachment<ImportNotify>,
}

impl Imported {
    /// How the device reaches the memory, a `DRM_CONFLUX_PATH_*`: asked of a Conflux exporter,
    /// as the buffer can move; 0 when the exporter is gone.
    pub(crate) fn path(&self) -> u32 {
        match Exported::<Export>::exporter_of(self.buf(), THIS_MODULE) {
            Some(export) => export
                .path_for(self.attachment.attachment().device())
                .unwrap_or(0),
            None => uapi::DRM_CONFLUX_PATH_EXTERNAL,
        }
    }

    /// The buffer's table for the device, mapped at the first call and kept until the exporter
    /// invalidates it. Checks that every entry honours the device's segment limits.
    pub(crate) fn table<'g>(
        &'g self,
        pdev: &pci::Device<Bound>,
        lock: &'g impl Locked,
    ) -> Result<&'g SGTable> {
        let fresh = !self.attachment.is_mapped();
        let table = self.attachment.held_mapping(lock).inspect_err(|e| {
            dev_info!(
                pdev,
                "PRIME import: exporter {} did not map a buffer of {:#x} bytes: error {}\n",
                self.buf().exporter_name(),
                self.buf().size(),
                e.to_errno()
            );
        })?;
        if fresh {
            let limits = SegmentLimits::of_device(pdev.as_ref())?;
            check_segments(pdev, table, limits)?;
        }
        Ok(table)
    }

    /// The dma-buf.
    pub(crate) fn buf(&self) -> &DmaBuf {
        self.attachment.buf()
    }

    /// The buffer's reservation object.
    pub(crate) fn resv(&self) -> &DmaResv {
        self.attachment.buf().resv()
    }
}

/// A DMA address as a `u64`: `dma_addr_t` is 32 or 64 bits wide depending on the configuration.
#[allow(clippy::useless_conversion)]
pub(crate) fn bus_addr(addr: kernel::dma::DmaAddress) -> u64 {
    u64::from(addr)
}

/// Checks that every entry of `table` is within `limits` and 4 KiB aligned, as the device's
/// page tables need; [`EIO`] with the offending entry in the log otherwise.
fn check_segments(pdev: &pci::Device<Bound>, table: &SGTable, limits: SegmentLimits) -> Result {
    let page = kernel::page::PAGE_SIZE as u64;
    for (i, sg) in table.iter().enumerate() {
        let addr = bus_addr(sg.dma_address());
        let len = sg.dma_len();
        let last = addr + len.saturating_sub(1);
        let mask = limits.seg_boundary_mask();
        let crosses = addr & !mask != last & !mask;
        if len == 0 || len > u64::from(limits.max_seg_size()) || crosses || (addr | len) % page != 0
        {
            dev_err!(
                pdev,
                "PRIME import: segment {} ({:#x}, {:#x} bytes) breaks the limits (max {:#x}, boundary {:#x}, 4 KiB pages)\n",
                i,
                addr,
                len,
                limits.max_seg_size(),
                mask
            );
            return Err(EIO);
        }
    }
    Ok(())
}

/// Imports `buf` into `dev`, for `DRM_IOCTL_PRIME_FD_TO_HANDLE`: the buffer itself when `dev`
/// exported it, else a new object attached to it.
pub(crate) fn import(dev: &IoctlDevice, buf: &DmaBuf) -> Result<ARef<Object>> {
    if let Some(export) = Exported::<Export>::exporter_of(buf, THIS_MODULE) {
        let (exporter, importer): (&drm::Device<ConfluxDrm>, &drm::Device<ConfluxDrm>) =
            (&export.dev, dev);
        if core::ptr::eq(exporter, importer) {
            return Ok(export.obj.clone());
        }
    }
    with_hw(dev, |hw| {
        let size = buf.size();
        if size == 0 || size % kernel::page::PAGE_SIZE != 0 {
            dev_dbg!(
                hw.pdev,
                "PRIME import: a dma-buf of {:#x} bytes is not in whole pages\n",
                size
            );
            return Err(EINVAL);
        }
        let vms = Arc::pin_init(VmList::new(), GFP_KERNEL)?;
        let notify = ImportNotify {
            dev: dev.into(),
            vms: vms.clone(),
        };
        let attachment =
            ImportAttachment::new_in(buf, hw.pdev.as_ref(), notify, &hw.imports, GFP_KERNEL)
                .inspect_err(|e| {
                    dev_info!(
                        hw.pdev,
                        "PRIME import: the exporter refused the attachment: {:?}\n",
                        e
                    );
                })?;
        let contents = Contents::imported(Imported { attachment }, vms);
        Object::new_imported(dev, buf, contents)
    })
}
