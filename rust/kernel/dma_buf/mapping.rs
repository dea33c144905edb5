// SPDX-License-Identifier: GPL-2.0

//! The tables an exporter maps for an importer: memory behind a PCI BAR, and pages of system
//! memory.
//!
//! C header: [`include/linux/dma-buf-mapping.h`](srctree/include/linux/dma-buf-mapping.h)
//!
//! [`Attachment::map_bar`] maps BAR memory of a peer-to-peer
//! [`Provider`](crate::pci::p2pdma::Provider) by the route the PCIe
//! topology gives the importing device: bus addresses through switches, or DMA-API mappings of
//! the MMIO through the host bridge. [`Attachment::map_pages`] maps pages of system memory. Both
//! return a [`Table`] whose every entry honours the importer's maximum segment size **and**
//! segment boundary ([`Attachment::limits`]), unlike `dma_buf_phys_vec_to_sgt()`, which emits one
//! entry per physical range however large. Dropping the table undoes the mappings made for it;
//! so does every error path.

use crate::{
    alloc::Flags,
    bindings,
    device::Device,
    dma::{
        DataDirection,
        DmaAddress, //
    },
    dma_segments::{
        DmaRange,
        PageMapping,
        SegmentPlan, //
    },
    page::Page,
    prelude::*,
    scatterlist::{
        DmaOnly,
        SGTable, //
    },
    sync::{
        aref::ARef,
        Arc, //
    },
};

use super::Attachment;

#[cfg(CONFIG_PCI)]
use crate::pci::p2pdma::{
    MapType,
    Provider, //
};

/// A table an exporter maps for an importer, owning what keeps its addresses valid `B`.
pub type Table<B = Backing> = KBox<SGTable<DmaOnly<B>>>;

/// What keeps the addresses of a [`Table`] of this module valid.
pub enum Backing {
    /// Nothing: bus addresses of BAR memory behind a switch.
    Bus,
    /// The MMIO ranges mapped through the host bridge.
    HostBridge(MmioMapping),
    /// The pages of system memory, mapped for the importing device.
    Pages(PageMapping),
}

impl Attachment {
    /// Maps the BAR memory at CPU physical addresses `ranges` of `provider` for the importing
    /// device, by the route the topology gives it ([`Provider::map_type`]).
    ///
    /// Returns [`EOPNOTSUPP`] if the importer does not take peer-to-peer addresses
    /// ([`Attachment::peer2peer`]) and [`EXDEV`] if there is no peer-to-peer route between the
    /// devices, so that the exporter can fall back (to system memory, say) or refuse;
    /// [`EINVAL`] for no range, [`ERANGE`] for a range that is not all inside the provider's BAR
    /// ([`Provider::bar`]), and [`EIO`] if the DMA API cannot map a range through the host bridge.
    #[cfg(CONFIG_PCI)]
    pub fn map_bar(
        &self,
        provider: &Provider,
        ranges: &[DmaRange],
        dir: DataDirection,
        flags: Flags,
    ) -> Result<Table> {
        if ranges.is_empty() {
            return Err(EINVAL);
        }
        // Only the BAR's own memory: anything else would hand the importer a route to whatever
        // lies at those addresses.
        let bar = provider.bar().ok_or(ERANGE)?;
        if !ranges
            .iter()
            .all(|r| r.addr() >= bar.addr() && r.last() <= bar.last())
        {
            return Err(ERANGE);
        }
        if !self.peer2peer() {
            return Err(EOPNOTSUPP);
        }
        let limits = self.limits()?;
        match provider.map_type(self.device()) {
            MapType::NotSupported => Err(EXDEV),
            MapType::BusAddress => {
                let mut bus = KVec::with_capacity(ranges.len(), flags)?;
                for r in ranges {
                    bus.push(
                        DmaRange::new(provider.bus_address(r.addr()), r.len())?,
                        flags,
                    )?;
                }
                SegmentPlan::new(bus.iter().copied(), limits)?.into_table(Backing::Bus, flags)
            }
            MapType::ThroughHostBridge => {
                // SAFETY: An importer keeps its device bound while it is attached, and unmaps
                // its tables, which own the mapping, before it detaches.
                let mut mapping =
                    unsafe { MmioMapping::new(self.device(), dir, ranges.len(), flags) }?;
                for r in ranges {
                    mapping.map(*r)?;
                }
                // The plan walks the mapped ranges, which the table then owns: copy them first.
                let mut mapped = KVec::with_capacity(ranges.len(), flags)?;
                mapped.extend_from_slice(mapping.ranges(), flags)?;
                SegmentPlan::new(mapped.iter().copied(), limits)?
                    .into_table(Backing::HostBridge(mapping), flags)
            }
        }
    }

    /// Maps `pages` of system memory for DMA by the importing device.
    ///
    /// Returns [`ENOMEM`] when memory runs out and [`EIO`] when the DMA layer cannot map a page.
    pub fn map_pages(
        &self,
        pages: Arc<KVVec<Page>>,
        dir: DataDirection,
        flags: Flags,
    ) -> Result<Table> {
        // SAFETY: An importer keeps its device bound while it is attached, and unmaps its tables
        // before it detaches: the mapping, backing such a table, is undone while the device is
        // bound.
        let mapping = unsafe { PageMapping::new_unchecked(self.device(), pages, dir, flags) }?;
        // The plan walks the ranges of the mapping, which the table then owns: copy them first.
        let mut ranges = KVec::new();
        for r in mapping.ranges() {
            ranges.push(r, flags)?;
        }
        SegmentPlan::new(ranges.iter().copied(), self.limits()?)?
            .into_table(Backing::Pages(mapping), flags)
    }
}

/// MMIO ranges mapped for DMA by one device, through the host bridge (`dma_map_resource()`);
/// dropping it unmaps every one.
///
/// Only [`Attachment::map_bar`] makes one, for the importing device of an attachment: an
/// importer detaches from a dma-buf before it unbinds, and unmaps its tables before it detaches.
///
/// # Invariants
///
/// Every entry of `mapped` is a DMA range that `dma_map_resource(dev, _, len, dir, 0)` returned
/// and that has not been unmapped; `mapped` never grows beyond the capacity reserved at creation;
/// `dev` stays bound while the mapping exists.
pub struct MmioMapping {
    dev: ARef<Device>,
    dir: DataDirection,
    mapped: KVec<DmaRange>,
}

impl MmioMapping {
    /// A mapping for `dev`, with room for `capacity` ranges, empty.
    ///
    /// # Safety
    ///
    /// `dev` is bound to a driver, and the mapping is dropped before `dev` is unbound.
    unsafe fn new(dev: &Device, dir: DataDirection, capacity: usize, flags: Flags) -> Result<Self> {
        // INVARIANT: nothing is mapped yet; the caller keeps `dev` bound (safety requirements).
        Ok(Self {
            dev: dev.into(),
            dir,
            mapped: KVec::with_capacity(capacity, flags)?,
        })
    }

    /// Maps the MMIO range at CPU physical addresses `phys` and returns its DMA range.
    ///
    /// Returns [`ENOSPC`] beyond the capacity given at creation, [`EOVERFLOW`] if `phys` does not
    /// fit the platform's addresses, and [`EIO`] if the DMA API cannot map it for the device.
    fn map(&mut self, phys: DmaRange) -> Result<DmaRange> {
        if self.mapped.len() == self.mapped.capacity() {
            return Err(ENOSPC);
        }
        let addr = bindings::phys_addr_t::try_from(phys.addr()).map_err(|_| EOVERFLOW)?;
        let len = usize::try_from(phys.len()).map_err(|_| EOVERFLOW)?;
        let dev = self.dev.as_raw();
        // SAFETY: `dev` is a valid device (it holds a reference); the range is MMIO.
        let dma = unsafe { bindings::dma_map_resource(dev, addr, len, self.dir.into(), 0) };
        // SAFETY: `dma` was just returned for `dev`.
        if unsafe { bindings::dma_mapping_error(dev, dma) } != 0 {
            return Err(EIO);
        }
        let range = match DmaRange::new(dma, phys.len()) {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: `dma` was mapped just above with these arguments, and is not kept.
                unsafe { bindings::dma_unmap_resource(dev, dma, len, self.dir.into(), 0) };
                return Err(e);
            }
        };
        // INVARIANT: room was checked above, so the push cannot fail and lose the mapping.
        self.mapped.push(range, GFP_NOWAIT)?;
        Ok(range)
    }

    /// The DMA ranges mapped so far, in order.
    pub fn ranges(&self) -> &[DmaRange] {
        &self.mapped
    }
}

impl Drop for MmioMapping {
    fn drop(&mut self) {
        for r in self.mapped.iter().rev() {
            // CAST: every mapped range was created from a `usize` length and a `dma_addr_t`.
            // SAFETY: `r` is mapped for `dev` with these arguments (type invariants) and is
            // unmapped once, here.
            unsafe {
                bindings::dma_unmap_resource(
                    self.dev.as_raw(),
                    r.addr() as DmaAddress,
                    r.len() as usize,
                    self.dir.into(),
                    0,
                )
            };
        }
    }
}
