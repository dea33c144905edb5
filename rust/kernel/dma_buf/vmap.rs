// SPDX-License-Identifier: GPL-2.0

//! Kernel mappings of a whole buffer, which an exporter hands to `dma_buf_vmap()`.
//!
//! A [`KernelMap`] maps system pages ([`KernelMap::of_pages`]) or BAR memory
//! ([`KernelMap::of_io`]) at contiguous kernel addresses, and unmaps them when dropped.

use crate::{
    bindings,
    page::{
        Page,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::Arc,
};
use core::ptr::NonNull;

/// A whole buffer mapped at contiguous kernel addresses.
///
/// # Invariants
///
/// `addr` is the address `vmap()` or `vmap_pfn()` returned for `pages` pages, not unmapped yet:
/// `vmap_pfn()` for BAR memory when `iomem`, else `vmap()` for the pages `_held` keeps allocated.
pub struct KernelMap {
    addr: NonNull<u8>,
    pages: usize,
    iomem: bool,
    _held: Option<Arc<KVVec<Page>>>,
}

// SAFETY: The mapping is plain kernel memory, valid on any CPU and from any task; `vunmap()` may
// be called from any task that may sleep.
unsafe impl Send for KernelMap {}
// SAFETY: `&KernelMap` only gives the address.
unsafe impl Sync for KernelMap {}

impl KernelMap {
    /// Maps `pages`, in order, at contiguous addresses with the kernel's ordinary caching.
    ///
    /// [`EINVAL`] for no page, [`ENOMEM`] when no address range or memory is left.
    pub fn of_pages(pages: Arc<KVVec<Page>>) -> Result<Self> {
        let count = u32::try_from(pages.len())?;
        if count == 0 {
            return Err(EINVAL);
        }
        let mut raw = KVVec::with_capacity(pages.len(), GFP_KERNEL)?;
        for page in pages.iter() {
            raw.push(page.as_ptr(), GFP_KERNEL)?;
        }
        // CAST: The flag fits in an `unsigned long`.
        let flags = bindings::VM_MAP as usize;
        // SAFETY: `raw` holds `count` valid pages, which `pages` keeps allocated for as long as
        // the mapping: it is moved into it below.
        let addr = unsafe {
            bindings::vmap(
                raw.as_mut_ptr(),
                count,
                flags,
                bindings::dma_buf_pgprot_kernel(),
            )
        };
        // INVARIANT: `vmap()` mapped `count` pages, which the mapping holds.
        Ok(Self {
            addr: NonNull::new(addr.cast()).ok_or(ENOMEM)?,
            pages: pages.len(),
            iomem: false,
            _held: Some(pages),
        })
    }

    /// Maps the page frames `pfns` of BAR memory, in order, at contiguous addresses, uncached
    /// (UC-), as `ioremap()` maps BARs: the mapping does not alias the BAR's own with another
    /// caching mode.
    ///
    /// [`EINVAL`] for no page, [`ENOMEM`] when no address range or memory is left.
    ///
    /// # Safety
    ///
    /// Every frame of `pfns` is memory of a BAR that its driver owns, not RAM, and stays so
    /// until the mapping is dropped.
    #[cfg(CONFIG_VMAP_PFN)]
    pub unsafe fn of_io(pfns: &mut [usize]) -> Result<Self> {
        let count = u32::try_from(pfns.len())?;
        if count == 0 {
            return Err(EINVAL);
        }
        // SAFETY: `pfns` holds `count` frames of device memory (guaranteed by the caller), which
        // `vmap_pfn()` only reads.
        let addr =
            unsafe { bindings::vmap_pfn(pfns.as_mut_ptr(), count, bindings::dma_buf_pgprot_io()) };
        // INVARIANT: `vmap_pfn()` mapped `count` frames.
        Ok(Self {
            addr: NonNull::new(addr.cast()).ok_or(ENOMEM)?,
            pages: pfns.len(),
            iomem: true,
            _held: None,
        })
    }

    /// The size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// Whether the mapping is empty: never, a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The mapping as the core describes it: its address, and whether it is I/O memory.
    pub(super) fn as_iosys_map(&self) -> bindings::iosys_map {
        // SAFETY: All-zeroes is a valid `iosys_map`; the address is set below.
        let mut map: bindings::iosys_map = unsafe { core::mem::zeroed() };
        if self.iomem {
            map.__bindgen_anon_1.vaddr_iomem = self.addr.as_ptr().cast();
        } else {
            map.__bindgen_anon_1.vaddr = self.addr.as_ptr().cast();
        }
        map.is_iomem = self.iomem;
        map
    }
}

impl Drop for KernelMap {
    fn drop(&mut self) {
        // SAFETY: By the type invariants `addr` is a live mapping of `vmap()` or `vmap_pfn()`,
        // unmapped exactly once, here; the pages it maps are still held.
        unsafe { bindings::vunmap(self.addr.as_ptr().cast()) };
    }
}
