// SPDX-License-Identifier: GPL-2.0

//! PCI peer-to-peer DMA: BAR memory providers, the route from a provider to a client device, and
//! bus addresses.
//!
//! C header: [`include/linux/pci-p2pdma.h`](srctree/include/linux/pci-p2pdma.h)
//!
//! A device that shares memory behind one of its BARs gets a [`Provider`] for that BAR
//! ([`Provider::of_bar`]), valid while the device stays bound. The kernel decides from the PCI
//! topology how a client device reaches the provider's memory, a [`MapType`]
//! ([`Provider::map_type`]):
//!
//! - [`MapType::BusAddress`]: both sit below one PCI switch (a common upstream bridge); the
//!   client uses bus addresses ([`Provider::bus_address`]) and the traffic never reaches the host
//!   bridge;
//! - [`MapType::ThroughHostBridge`]: the host bridge forwards peer-to-peer traffic between its
//!   root ports (some AMD Zen and Intel parts); the client maps the MMIO with the DMA API;
//! - [`MapType::NotSupported`]: no peer-to-peer route; the exporter has to fall back (to system
//!   memory, say) or refuse.
//!
//! An exporter of BAR memory through a dma-buf maps it for each importer with
//! [`Attachment::map_bar`](crate::dma_buf::Attachment::map_bar). A driver that lends part of a BAR
//! to the block layer and to userspace gives it `struct page`s with [`publish_pages`].

use crate::{
    bindings,
    device::{
        self,
        Bound, //
    },
    dma::DmaAddress,
    dma_segments::DmaRange,
    page::PAGE_SIZE,
    pci,
    prelude::*,
    types::Opaque, //
};

/// How a client device reaches a provider's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    /// Through PCI switches, with bus addresses.
    BusAddress,
    /// Through the host bridge, with addresses the DMA API maps for the client.
    ThroughHostBridge,
    /// No peer-to-peer route.
    NotSupported,
}

impl MapType {
    #[cfg(CONFIG_PCI_P2PDMA)]
    fn from_raw(t: bindings::pci_p2pdma_map_type) -> Self {
        match t {
            bindings::pci_p2pdma_map_type_PCI_P2PDMA_MAP_BUS_ADDR => Self::BusAddress,
            bindings::pci_p2pdma_map_type_PCI_P2PDMA_MAP_THRU_HOST_BRIDGE => {
                Self::ThroughHostBridge
            }
            _ => Self::NotSupported,
        }
    }

    /// A short name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::BusAddress => "bus-address",
            Self::ThroughHostBridge => "host-bridge",
            Self::NotSupported => "not-supported",
        }
    }
}

/// The peer-to-peer provider of one memory BAR of a PCI device (`struct p2pdma_provider`).
///
/// # Invariants
///
/// The inner `struct p2pdma_provider` was returned by `pcim_p2pdma_provider()` for a memory BAR of
/// a bound device; it stays valid while the device is bound, which a reference to it never
/// outlives (it borrows the `&pci::Device<Bound>` it came from).
#[repr(transparent)]
pub struct Provider(Opaque<bindings::p2pdma_provider>);

impl Provider {
    /// Sets `pdev` up for peer-to-peer DMA (`pcim_p2pdma_init()`, undone when the driver unbinds)
    /// and returns the provider of its BAR `bar`.
    ///
    /// Returns [`EINVAL`] if `bar` is not one of the device's memory BARs, and [`EOPNOTSUPP`] if
    /// the kernel is built without `CONFIG_PCI_P2PDMA` or the device's BARs cannot be mapped.
    pub fn of_bar<'a>(pdev: &'a pci::Device<Bound>, bar: u32) -> Result<&'a Self> {
        if bar >= bindings::PCI_STD_NUM_BARS {
            return Err(EINVAL);
        }
        Self::of_valid_bar(pdev, bar)
    }

    #[cfg(CONFIG_PCI_P2PDMA)]
    fn of_valid_bar<'a>(pdev: &'a pci::Device<Bound>, bar: u32) -> Result<&'a Self> {
        // SAFETY: `pdev` is a valid, bound device: its device resources are released at unbind.
        crate::error::to_result(unsafe { bindings::pcim_p2pdma_init(pdev.as_raw()) })?;
        // SAFETY: `pdev` is valid and set up for P2P just above; `bar` is below
        // `PCI_STD_NUM_BARS`, so the cast cannot truncate.
        let p = unsafe { bindings::pcim_p2pdma_provider(pdev.as_raw(), bar as i32) };
        if p.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: `p` is valid while `pdev` stays bound, for at least `'a`; `Provider` is
        // `repr(transparent)`.
        // INVARIANT: returned by `pcim_p2pdma_provider()` for a bound device, borrowed for `'a`.
        Ok(unsafe { &*p.cast::<Self>() })
    }

    #[cfg(not(CONFIG_PCI_P2PDMA))]
    fn of_valid_bar<'a>(_pdev: &'a pci::Device<Bound>, _bar: u32) -> Result<&'a Self> {
        Err(EOPNOTSUPP)
    }

    /// The `struct p2pdma_provider` this wraps.
    #[cfg(CONFIG_PCI_P2PDMA)]
    pub fn as_raw(&self) -> *mut bindings::p2pdma_provider {
        self.0.get()
    }

    /// The device whose BAR this is.
    pub fn owner(&self) -> &device::Device {
        // SAFETY: The provider is valid (type invariants) and its owner is the bound device it
        // came from, alive for at least as long.
        unsafe { device::Device::from_raw((*self.0.get()).owner) }
    }

    /// The CPU physical addresses of this provider's BAR, or [`None`] if its owner is not a PCI
    /// device with such a BAR.
    // `resource_size_t` is 32 or 64 bits wide depending on the configuration.
    #[allow(clippy::useless_conversion)]
    pub fn bar(&self) -> Option<DmaRange> {
        #[cfg(CONFIG_PCI_P2PDMA)]
        {
            let pdev = <&pci::Device>::try_from(self.owner()).ok()?;
            (0..bindings::PCI_STD_NUM_BARS).find_map(|bar| {
                // Only memory BARs have a provider; asking for another one returns NULL.
                if pdev.resource_len(bar).ok()? == 0 {
                    return None;
                }
                // CAST: `bar` is below `PCI_STD_NUM_BARS`.
                // SAFETY: `pdev` is the bound owner of this provider (type invariants), set up
                // for peer-to-peer DMA when the provider was made; the function only looks up the
                // provider of `bar`.
                let p = unsafe { bindings::pcim_p2pdma_provider(pdev.as_raw(), bar as i32) };
                if p != self.as_raw() {
                    return None;
                }
                let start = pdev.resource_start(bar).ok()?;
                let len = pdev.resource_len(bar).ok()?;
                DmaRange::new(u64::from(start), u64::from(len)).ok()
            })
        }
        #[cfg(not(CONFIG_PCI_P2PDMA))]
        {
            None
        }
    }

    /// How `client` reaches this provider's memory.
    ///
    /// The kernel computes the route from the topology once per pair and caches it. It is
    /// computed here without the kernel's warnings, so that a client without a route, an expected
    /// case where the caller falls back, is reported by the caller alone.
    pub fn map_type(&self, client: &device::Device) -> MapType {
        #[cfg(CONFIG_PCI_P2PDMA)]
        {
            // Fills the kernel's cache quietly; the answer comes from it below.
            let _ = self.distance(&[client]);
            // SAFETY: Both are valid; the function only reads them.
            MapType::from_raw(unsafe {
                bindings::pci_p2pdma_map_type(self.as_raw(), client.as_raw())
            })
        }
        #[cfg(not(CONFIG_PCI_P2PDMA))]
        {
            let _ = client;
            MapType::NotSupported
        }
    }

    /// The peer-to-peer distance from this provider to every one of `clients`
    /// (`pci_p2pdma_distance_many()`, without its warnings): the sum of their distances, or
    /// [`None`] if one of them has no route or is not a PCI device, or if there are none or more
    /// than 8 of them.
    pub fn distance(&self, clients: &[&device::Device]) -> Option<u32> {
        #[cfg(CONFIG_PCI_P2PDMA)]
        {
            const MAX_CLIENTS: usize = 8;
            let mut raw = [core::ptr::null_mut(); MAX_CLIENTS];
            if clients.is_empty() || clients.len() > MAX_CLIENTS {
                return None;
            }
            for (slot, client) in raw.iter_mut().zip(clients) {
                *slot = client.as_raw();
            }
            let provider = <&pci::Device>::try_from(self.owner()).ok()?;
            // CAST: at most `MAX_CLIENTS` clients.
            // SAFETY: `provider` and every client are valid; `raw` holds that many pointers.
            let d = unsafe {
                bindings::pci_p2pdma_distance_many(
                    provider.as_raw(),
                    raw.as_mut_ptr(),
                    clients.len() as i32,
                    false,
                )
            };
            u32::try_from(d).ok()
        }
        #[cfg(not(CONFIG_PCI_P2PDMA))]
        {
            let _ = clients;
            None
        }
    }

    /// The bus address of the byte at CPU physical address `phys` of this BAR, for a client
    /// with [`MapType::BusAddress`] (`pci_p2pdma_bus_addr_map()`).
    pub fn bus_address(&self, phys: u64) -> DmaAddress {
        // SAFETY: The provider is valid (type invariants); `bus_offset` never changes.
        let offset = unsafe { (*self.0.get()).bus_offset };
        // The offset is a difference of two addresses, negative on some platforms: the sum wraps
        // exactly as in C.
        phys.wrapping_add(offset)
    }
}

/// Gives bytes `offset..offset + size` of BAR `bar` of `pdev` `struct page`s in the device's pool
/// of peer-to-peer memory (`pci_p2pdma_add_resource()`), and publishes the pool
/// (`pci_p2pmem_publish()`): the block layer then reads and writes the pages by direct I/O (a
/// block device whose queue takes peer-to-peer memory, NVMe), and userspace allocates them
/// through `p2pmem/allocate` in the device's sysfs directory. The pages stay until the driver
/// unbinds, which waits for every page still in use.
///
/// Returns [`EINVAL`] unless the range is in the BAR and starts and ends at 2 MiB boundaries of
/// the CPU's physical addresses (the kernel adds memory in such sections), and [`EOPNOTSUPP`] if
/// the kernel is built without `CONFIG_PCI_P2PDMA`.
// `resource_size_t` is 32 or 64 bits wide depending on the configuration.
#[allow(clippy::useless_conversion)]
pub fn publish_pages(
    pdev: &pci::Device<device::Core<'_>>,
    bar: u32,
    offset: u64,
    size: u64,
) -> Result {
    const SECTION: u64 = 2 << 20;
    if bar >= bindings::PCI_STD_NUM_BARS {
        return Err(EINVAL);
    }
    let start = u64::from(pdev.resource_start(bar)?);
    let len = u64::from(pdev.resource_len(bar)?);
    let end = offset.checked_add(size).ok_or(EINVAL)?;
    if size == 0 || end > len || (start + offset) % SECTION != 0 || size % SECTION != 0 {
        return Err(EINVAL);
    }
    publish_valid_pages(pdev, bar, offset, usize::try_from(size)?)
}

#[cfg(CONFIG_PCI_P2PDMA)]
fn publish_valid_pages(
    pdev: &pci::Device<device::Core<'_>>,
    bar: u32,
    offset: u64,
    size: usize,
) -> Result {
    // CAST: `bar` is below `PCI_STD_NUM_BARS`.
    // SAFETY: `pdev` is a valid device being probed, whose device resources (the pages) are
    // released when it unbinds; the range lies in its memory BAR `bar`, at section boundaries.
    crate::error::to_result(unsafe {
        bindings::pci_p2pdma_add_resource(pdev.as_raw(), bar as i32, size, offset)
    })?;
    // SAFETY: `pdev` is valid and has a pool of peer-to-peer memory, added just above.
    unsafe { bindings::pci_p2pmem_publish(pdev.as_raw(), true) };
    Ok(())
}

#[cfg(not(CONFIG_PCI_P2PDMA))]
fn publish_valid_pages(
    _pdev: &pci::Device<device::Core<'_>>,
    _bar: u32,
    _offset: u64,
    _size: usize,
) -> Result {
    Err(EOPNOTSUPP)
}

/// Pages of a user address space pinned for a device's DMA for as long as this lives
/// (`pin_user_pages_fast()`), which may be peer-to-peer memory (`FOLL_PCI_P2PDMA`): what
/// userspace mapped from a provider's `p2pmem/allocate`, say.
///
/// The pins are not long-term ones (`FOLL_LONGTERM`): the kernel refuses those of peer-to-peer
/// memory, whose provider may go at any time, and its unbind waits for every pinned page. A
/// driver that keeps pins of its own published pages ([`publish_pages`]) holds them in a
/// [`Devres`](crate::devres::Devres), which drops them when it unbinds.
///
/// # Invariants
///
/// Each entry of `pages` is a page pinned once by `pin_user_pages_fast()`, unpinned when this is
/// dropped.
pub struct UserPages {
    pages: KVVec<*mut bindings::page>,
}

// SAFETY: A pin is a reference to the page, which any thread may drop.
unsafe impl Send for UserPages {}

// SAFETY: The pages are only read through a shared reference, for their physical addresses.
unsafe impl Sync for UserPages {}

impl UserPages {
    /// Pins the `count` pages of the current task's address space from `addr` on, page
    /// aligned, for reads and, when `writable`, writes by a device.
    ///
    /// Returns [`EINVAL`] for an address that is not page aligned or a count of 0, and
    /// [`EFAULT`] when a page in the range is not mapped or not one that can be pinned (a
    /// `VM_PFNMAP` mapping, or a read-only one when `writable`).
    pub fn pin(addr: usize, count: usize, writable: bool) -> Result<Self> {
        // Pinned at most this many at a time: `pin_user_pages_fast()` counts in an `int`.
        const CHUNK: usize = 1 << 16;
        if addr % PAGE_SIZE != 0 || count == 0 {
            return Err(EINVAL);
        }
        let mut flags = bindings::FOLL_PCI_P2PDMA;
        if writable {
            flags |= bindings::FOLL_WRITE;
        }
        // INVARIANT: Only pages that `pin_user_pages_fast()` pinned enter `pages`; a failure
        // drops `this`, which unpins them.
        let mut this = Self {
            pages: KVVec::with_capacity(count, GFP_KERNEL_ACCOUNT)?,
        };
        while this.pages.len() < count {
            let want = (count - this.pages.len()).min(CHUNK);
            let start = this
                .pages
                .len()
                .checked_mul(PAGE_SIZE)
                .and_then(|off| addr.checked_add(off))
                .ok_or(EFAULT)?;
            let spare = this.pages.spare_capacity_mut();
            // SAFETY: `spare` has room for at least `want` page pointers (the vector has room
            // for `count`); the function writes at most `want` of them, the ones it pinned.
            let pinned = unsafe {
                bindings::pin_user_pages_fast(
                    // CAST: `usize` fits in `c_ulong`.
                    start as crate::ffi::c_ulong,
                    // CAST: `want` is at most `CHUNK`, which fits in `c_int`.
                    want as i32,
                    flags,
                    spare.as_mut_ptr().cast(),
                )
            };
            crate::error::to_result(pinned)?;
            let pinned = usize::try_from(pinned)?;
            // SAFETY: The function wrote the first `pinned` entries of the spare capacity, at
            // most `want`, which fit.
            unsafe { this.pages.inc_len(pinned) };
            if pinned < want {
                return Err(EFAULT);
            }
        }
        Ok(this)
    }

    /// The CPU physical address of each page, in order.
    pub fn phys_addrs(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.iter().map(|&page| {
            // SAFETY: `page` is pinned (type invariants), so it is a valid page.
            let pfn = unsafe { bindings::page_to_pfn(page) };
            // CAST: `c_ulong` fits in `u64`.
            (pfn as u64) << crate::page::PAGE_SHIFT
        })
    }

    /// The CPU physical addresses the pages cover when they are consecutive, first to last;
    /// [`None`] when they are not.
    pub fn phys_range(&self) -> Option<DmaRange> {
        // CAST: `PAGE_SIZE` fits in `u64`.
        let page_size = PAGE_SIZE as u64;
        let first = self.phys_addrs().next()?;
        let consecutive = self
            .phys_addrs()
            .zip(0u64..)
            .all(|(phys, k)| phys == first + k * page_size);
        let len = u64::try_from(self.pages.len()).ok()? * page_size;
        consecutive
            .then(|| DmaRange::new(first, len).ok())
            .flatten()
    }
}

impl Drop for UserPages {
    fn drop(&mut self) {
        if self.pages.is_empty() {
            return;
        }
        // CAST: `usize` fits in `c_ulong`.
        let count = self.pages.len() as crate::ffi::c_ulong;
        // SAFETY: Every entry is a page pinned once (type invariants), unpinned only here.
        unsafe { bindings::unpin_user_pages(self.pages.as_mut_ptr(), count) };
    }
}
