// SPDX-License-Identifier: GPL-2.0

//! DMA segment planning: split DMA ranges into the segments an importer can take.
//!
//! C header: [`include/linux/dma-mapping.h`](srctree/include/linux/dma-mapping.h)
//!
//! A device that consumes a scatter-gather table states two limits through its `dma_parms`:
//! the largest segment it can take (`dma_get_max_seg_size()`) and a segment boundary mask
//! (`dma_get_seg_boundary()`): no segment may cross an address that is a multiple of
//! `mask + 1`. `dma_map_sg()` honours both for the tables it builds, but a table that an
//! exporter fills in with DMA addresses of its own (device memory shared through dma-buf, for
//! instance) has to be split by the exporter itself.
//!
//! [`SegmentPlan`] does that split. Given an ordered list of [`DmaRange`]s and the importer's
//! [`SegmentLimits`], it yields the **minimum** number of [`Segment`]s that
//!
//! - cover the input exactly and in order,
//! - are each at most [`SegmentLimits::max_seg_size`] bytes long,
//! - each have their first and last byte in the same `boundary + 1` window, and
//! - merge ranges that are contiguous (one starts right after the previous one ends) whenever
//!   the limits allow.
//!
//! The plan is an iterator: it allocates nothing and can be walked once to size a table
//! ([`SegmentPlan::count_segments`]) and once more to fill it.
//!
//! [`SegmentPlan::into_table`] makes the plan a [`SGTable<DmaOnly<B>>`](SGTable): an owned
//! `struct sg_table` that holds only DMA addresses, one entry per segment of the plan, for
//! exporters of memory that has no `struct page` (device memory behind a PCI BAR, for instance).
//!
//! # Examples
//!
//! ```
//! use kernel::dma_segments::{DmaRange, Segment, SegmentLimits, SegmentPlan};
//!
//! // An importer that takes at most 64 KiB per segment and cannot cross 1 MiB boundaries.
//! let limits = SegmentLimits::new(0x1_0000, 0xf_ffff)?;
//! // Two contiguous ranges that straddle a 1 MiB boundary, then one elsewhere.
//! let ranges = [
//!     DmaRange::new(0xf_c000, 0x2000)?,
//!     DmaRange::new(0xf_e000, 0x4000)?,
//!     DmaRange::new(0x4000_0000, 0x1000)?,
//! ];
//! let plan = SegmentPlan::new(ranges.iter().copied(), limits)?;
//! assert_eq!(plan.count_segments(), 3);
//!
//! let mut segments = plan;
//! assert_eq!(segments.next(), Some(Segment { addr: 0xf_c000, len: 0x4000 }));
//! assert_eq!(segments.next(), Some(Segment { addr: 0x10_0000, len: 0x2000 }));
//! assert_eq!(segments.next(), Some(Segment { addr: 0x4000_0000, len: 0x1000 }));
//! assert_eq!(segments.next(), None);
//! # Ok::<(), Error>(())
//! ```

use crate::{
    alloc::Flags,
    bindings,
    device::{
        Bound,
        Device,
        DeviceContext, //
    },
    devres::Devres,
    dma::{
        DataDirection,
        DmaAddress, //
    },
    page::{
        Page,
        PAGE_SIZE, //
    },
    prelude::*,
    scatterlist::{
        DmaOnly,
        SGEntry,
        SGTable, //
    },
    sync::{
        aref::ARef,
        Arc, //
    },
};
use core::iter::Peekable;

/// A contiguous range of DMA (bus) addresses.
///
/// # Invariants
///
/// - `len` is not zero;
/// - `addr + len - 1` does not overflow: the range ends at or below the last byte of the 64-bit
///   address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRange {
    addr: u64,
    len: u64,
}

impl DmaRange {
    /// Creates the range of `len` bytes starting at `addr`.
    ///
    /// Returns [`EINVAL`] for an empty range and [`EOVERFLOW`] for one that runs past the end
    /// of the 64-bit address space.
    pub fn new(addr: u64, len: u64) -> Result<Self> {
        if len == 0 {
            return Err(EINVAL);
        }
        addr.checked_add(len - 1).ok_or(EOVERFLOW)?;
        // INVARIANT: `len` is not zero and `addr + len - 1` was checked not to overflow.
        Ok(Self { addr, len })
    }

    /// The first address of the range.
    #[inline]
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The length of the range in bytes.
    #[inline]
    #[expect(clippy::len_without_is_empty, reason = "a `DmaRange` is never empty")]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The last address of the range (inclusive).
    #[inline]
    pub fn last(&self) -> u64 {
        // OVERFLOW: cannot overflow by the type invariants.
        self.addr + (self.len - 1)
    }

    /// The DMA range of a mapped scatter-gather entry.
    ///
    /// Returns [`EINVAL`] for an empty entry and [`EOVERFLOW`] for one that runs past the end of
    /// the 64-bit address space.
    // `ResourceSize` is 32 or 64 bits wide depending on the configuration.
    #[allow(clippy::useless_conversion)]
    pub fn of_entry(entry: &SGEntry) -> Result<Self> {
        Self::new(addr_u64(entry.dma_address()), u64::from(entry.dma_len()))
    }
}

/// One segment of a plan: what goes into a single scatter-gather entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The DMA address of the first byte.
    pub addr: u64,
    /// The length in bytes; never zero and never above the plan's maximum segment size.
    pub len: u32,
}

/// The DMA segment limits of an importing device.
///
/// # Invariants
///
/// - `max_seg_size >= PAGE_SIZE`;
/// - `seg_boundary` is of the form `2^n - 1` with `seg_boundary + 1 >= PAGE_SIZE`
///   (`u64::MAX` means no boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLimits {
    max_seg_size: u32,
    seg_boundary: u64,
}

impl SegmentLimits {
    /// Limits from a maximum segment size and a segment boundary mask, as
    /// `dma_get_max_seg_size()` and `dma_get_seg_boundary()` return them.
    ///
    /// Returns [`EINVAL`] when no table could satisfy them: a maximum segment size or a
    /// boundary window smaller than a page, or a boundary mask that is not `2^n - 1`.
    pub fn new(max_seg_size: u32, seg_boundary_mask: u64) -> Result<Self> {
        // CAST: `PAGE_SIZE` is far below `u32::MAX` on every architecture.
        if max_seg_size < PAGE_SIZE as u32 {
            return Err(EINVAL);
        }
        // A mask `2^n - 1` has no bit set above a clear one: adding one clears all of its bits.
        if seg_boundary_mask & seg_boundary_mask.wrapping_add(1) != 0 {
            return Err(EINVAL);
        }
        // CAST: `usize` is at most 64 bits wide.
        if seg_boundary_mask < PAGE_SIZE as u64 - 1 {
            return Err(EINVAL);
        }
        // INVARIANT: both limits were checked above.
        Ok(Self {
            max_seg_size,
            seg_boundary: seg_boundary_mask,
        })
    }

    /// The limits the kernel reports for `dev`: `dma_get_max_seg_size()` and
    /// `dma_get_seg_boundary()` (64 KiB and no boundary for a device without `dma_parms`).
    ///
    /// Returns [`EINVAL`] if the device's limits are impossible to satisfy (see [`Self::new`]).
    pub fn of_device<Ctx: DeviceContext>(dev: &Device<Ctx>) -> Result<Self> {
        // SAFETY: `dev.as_raw()` is a valid `struct device` by the type invariant of `Device`;
        // `dma_get_max_seg_size()` only reads its `dma_parms`.
        let max = unsafe { bindings::dma_get_max_seg_size(dev.as_raw()) };
        // SAFETY: As above; `dma_get_seg_boundary()` only reads the device's `dma_parms`.
        let boundary = unsafe { bindings::dma_get_seg_boundary(dev.as_raw()) };
        // CAST: `unsigned long` is at most 64 bits wide.
        Self::new(max, boundary as u64)
    }

    /// The largest segment the importer takes, in bytes.
    #[inline]
    pub fn max_seg_size(&self) -> u32 {
        self.max_seg_size
    }

    /// The segment boundary mask: no segment crosses a multiple of `mask + 1`.
    #[inline]
    pub fn seg_boundary_mask(&self) -> u64 {
        self.seg_boundary
    }

    /// Whether the importer takes `range` as one segment: it is at most
    /// [`Self::max_seg_size`] bytes long and does not cross a boundary.
    pub fn admits(&self, range: &DmaRange) -> bool {
        range.last() <= self.segment_last(range.addr())
    }

    /// The last address a segment starting at `addr` may cover.
    #[inline]
    fn segment_last(&self, addr: u64) -> u64 {
        // The last byte of `addr`'s boundary window; `u64::MAX` when there is no boundary.
        let window_last = addr | self.seg_boundary;
        // OVERFLOW: saturation is right: `addr + max - 1` beyond `u64::MAX` means the segment
        // may reach the end of the address space, and `max >= 1` by the type invariants.
        let size_last = addr.saturating_add(u64::from(self.max_seg_size) - 1);
        window_last.min(size_last)
    }
}

/// The part of the input that the plan is cutting into segments: a run of contiguous ranges.
#[derive(Clone, Copy)]
struct Run {
    /// The next address to emit.
    next: u64,
    /// The last address of the run so far (inclusive).
    last: u64,
}

/// A segmentation of DMA ranges under an importer's [`SegmentLimits`].
///
/// An [`Iterator`] over the [`Segment`]s, in input order. See the [module documentation](self).
///
/// # Invariants
///
/// Every range `ranges` yields satisfies the [`DmaRange`] invariants and, when `run` is `None`,
/// `ranges` has not yielded anything that was not emitted yet; `run.next <= run.last`.
#[derive(Clone)]
pub struct SegmentPlan<I: Iterator<Item = DmaRange>> {
    ranges: Peekable<I>,
    limits: SegmentLimits,
    run: Option<Run>,
}

impl<I: Iterator<Item = DmaRange>> SegmentPlan<I> {
    /// Plans the segmentation of `ranges` for an importer with `limits`.
    ///
    /// Returns [`EINVAL`] when `ranges` is empty.
    pub fn new(ranges: impl IntoIterator<IntoIter = I>, limits: SegmentLimits) -> Result<Self> {
        let mut ranges = ranges.into_iter().peekable();
        if ranges.peek().is_none() {
            return Err(EINVAL);
        }
        // INVARIANT: `DmaRange` values are valid by construction; nothing was consumed.
        Ok(Self {
            ranges,
            limits,
            run: None,
        })
    }

    /// The limits the plan honours.
    #[inline]
    pub fn limits(&self) -> SegmentLimits {
        self.limits
    }
}

impl<I: Iterator<Item = DmaRange> + Clone> SegmentPlan<I> {
    /// The number of segments the plan yields, without consuming it.
    ///
    /// Use it to size a table before filling it from the same plan.
    pub fn count_segments(&self) -> usize {
        Iterator::count(self.clone())
    }
}

impl<I: Iterator<Item = DmaRange>> Iterator for SegmentPlan<I> {
    type Item = Segment;

    fn next(&mut self) -> Option<Segment> {
        let mut run = match self.run {
            Some(run) => run,
            None => {
                let r = self.ranges.next()?;
                Run {
                    next: r.addr(),
                    last: r.last(),
                }
            }
        };
        let cap = self.limits.segment_last(run.next);
        // Grow the run with every following range that continues it, as long as the segment
        // being built could still use the bytes. A run ending at `u64::MAX` cannot continue.
        while run.last < cap {
            match self.ranges.peek() {
                Some(r) if run.last.checked_add(1) == Some(r.addr()) => {
                    run.last = r.last();
                    self.ranges.next();
                }
                _ => break,
            }
        }
        let seg_last = cap.min(run.last);
        // OVERFLOW: `seg_last >= run.next`, and `seg_last - run.next < max_seg_size <= u32::MAX`
        // by `SegmentLimits::segment_last()`.
        let len = (seg_last - run.next) as u32 + 1;
        let seg = Segment {
            addr: run.next,
            len,
        };
        // INVARIANT: the run goes on only if bytes remain after `seg_last`, so
        // `seg_last + 1 <= run.last`. Computed lazily: `seg_last` may be `u64::MAX`.
        self.run = (seg_last < run.last).then(|| Run {
            next: seg_last + 1,
            last: run.last,
        });
        Some(seg)
    }
}

impl<I: Iterator<Item = DmaRange> + Clone> SegmentPlan<I> {
    /// A table with one entry per segment of the plan, which owns `backing` (what keeps the
    /// addresses valid): a [`SGTable<DmaOnly<B>>`](SGTable), so it honours the importer's maximum
    /// segment size and segment boundary. As in the tables `dma_buf_phys_vec_to_sgt()` builds,
    /// `orig_nents` is 0, which tells importers that there is no CPU list to use.
    ///
    /// Returns [`ENOMEM`] if the table cannot be allocated, and [`EOVERFLOW`] if the plan has
    /// more than `u32::MAX` segments or an address that does not fit in a [`DmaAddress`].
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::dma_segments::{DmaRange, SegmentLimits, SegmentPlan};
    ///
    /// // 12 KiB followed by a contiguous 4 KiB, for an importer that takes 8 KiB segments.
    /// let ranges = [DmaRange::new(0x1_0000, 0x3000)?, DmaRange::new(0x1_3000, 0x1000)?];
    /// let limits = SegmentLimits::new(0x2000, u64::MAX)?;
    /// let plan = SegmentPlan::new(ranges.iter().copied(), limits)?;
    /// let table = plan.into_table((), GFP_KERNEL)?;
    ///
    /// assert!(table.iter().map(|e| e.dma_len()).eq([0x2000, 0x2000]));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn into_table<B>(self, backing: B, flags: Flags) -> Result<KBox<SGTable<DmaOnly<B>>>> {
        for seg in self.clone() {
            // OVERFLOW: `seg.len >= 1` and the segment ends inside the 64-bit address space.
            DmaAddress::try_from(seg.addr + u64::from(seg.len - 1)).map_err(|_| EOVERFLOW)?;
        }
        // CAST: every address fits in a `DmaAddress`, as checked above.
        let segments = self.map(|seg| (seg.addr as DmaAddress, seg.len));
        SGTable::new_dma(segments, backing, flags)
    }
}

/// Pages of system memory mapped for DMA by one device, page by page.
///
/// The pages are shared with their other users through an [`Arc`]; the mapping keeps them
/// allocated. Dropping it unmaps every page. A mapping never outlives the binding of its
/// device: [`PageMapping::new`] hands it out in a [`Devres`], which drops it at the latest when
/// the device is unbound. [`PageMapping::ranges`] gives the addresses, contiguous pages merged,
/// for a [`SegmentPlan`].
///
/// # Invariants
///
/// `addrs[i]` is the address `dma_map_page_attrs()` returned for all of `pages[i]` on `dev` in
/// direction `dir`, not unmapped yet; `addrs` has no more entries than `pages`; `dev` stays
/// bound while the mapping exists.
pub struct PageMapping {
    dev: ARef<Device>,
    pages: Arc<KVVec<Page>>,
    addrs: KVVec<DmaAddress>,
    dir: DataDirection,
}

impl PageMapping {
    /// Maps every page of `pages` for DMA by `dev` in direction `dir`; the mapping lives until
    /// the [`Devres`] is dropped or `dev` is unbound, whichever comes first.
    ///
    /// Maps nothing when it fails: [`ENOMEM`] when the addresses or the device resource cannot
    /// be stored, [`EIO`] when the DMA layer cannot map a page.
    pub fn new(
        dev: &Device<Bound>,
        pages: Arc<KVVec<Page>>,
        dir: DataDirection,
        flags: Flags,
    ) -> Result<Devres<Self>> {
        // SAFETY: `dev` is bound, and the `Devres` drops the mapping by the time it is unbound.
        let mapping = unsafe { Self::new_unchecked(dev, pages, dir, flags) }?;
        Devres::new(dev, mapping)
    }

    /// As [`PageMapping::new`], for a device whose binding the caller vouches for.
    ///
    /// # Safety
    ///
    /// `dev` is bound to a driver, and the mapping is dropped before `dev` is unbound.
    pub(crate) unsafe fn new_unchecked(
        dev: &Device,
        pages: Arc<KVVec<Page>>,
        dir: DataDirection,
        flags: Flags,
    ) -> Result<Self> {
        let addrs = KVVec::with_capacity(pages.len(), flags)?;
        // INVARIANT: nothing is mapped yet; the caller drops the mapping before `dev` is unbound.
        let mut this = Self {
            dev: dev.into(),
            pages,
            addrs,
            dir,
        };
        for i in 0..this.pages.len() {
            let page = this.pages.get(i).ok_or(EINVAL)?;
            // SAFETY: `dev` is a bound device (guaranteed by the caller) and `page` a valid page
            // of `PAGE_SIZE` bytes.
            let addr = unsafe {
                bindings::dma_map_page_attrs(
                    dev.as_raw(),
                    page.as_ptr(),
                    0,
                    PAGE_SIZE,
                    dir.into(),
                    0,
                )
            };
            // SAFETY: `addr` was just returned by `dma_map_page_attrs()` for `dev`.
            if unsafe { bindings::dma_mapping_error(dev.as_raw(), addr) } != 0 {
                // Dropping `this` unmaps the pages mapped so far.
                return Err(EIO);
            }
            // INVARIANT: `addrs` has room for one address per page, so the push cannot fail and
            // `addrs[i]` is the address of `pages[i]`.
            this.addrs.push_within_capacity(addr).map_err(|_| ENOMEM)?;
        }
        Ok(this)
    }

    /// The pages.
    pub fn pages(&self) -> &Arc<KVVec<Page>> {
        &self.pages
    }

    /// Makes what the device wrote to the pages visible to the CPU, before the CPU reads them.
    pub fn sync_for_cpu(&self) {
        for &addr in self.addrs.iter() {
            // SAFETY: By the type invariants `addr` maps a whole page on `dev`, bound, in
            // direction `dir`.
            unsafe {
                bindings::dma_sync_single_for_cpu(
                    self.dev.as_raw(),
                    addr,
                    PAGE_SIZE,
                    self.dir.into(),
                )
            };
        }
    }

    /// Makes what the CPU wrote to the pages visible to the device, before the device reads
    /// them.
    pub fn sync_for_device(&self) {
        for &addr in self.addrs.iter() {
            // SAFETY: As in `sync_for_cpu`.
            unsafe {
                bindings::dma_sync_single_for_device(
                    self.dev.as_raw(),
                    addr,
                    PAGE_SIZE,
                    self.dir.into(),
                )
            };
        }
    }

    /// The DMA address of page `index`.
    pub fn page_addr(&self, index: usize) -> Option<u64> {
        self.addrs.get(index).copied().map(addr_u64)
    }

    /// The DMA ranges of the pages in order, pages at contiguous addresses merged.
    pub fn ranges(&self) -> impl Iterator<Item = DmaRange> + Clone + '_ {
        // CAST: `PAGE_SIZE` fits in `u64`, and DMA addresses are at most 64 bits wide.
        let page = PAGE_SIZE as u64;
        let mut at = 0;
        core::iter::from_fn(move || {
            let first = addr_u64(*self.addrs.get(at)?);
            let mut len = page;
            at += 1;
            while self
                .addrs
                .get(at)
                .is_some_and(|&next| Some(addr_u64(next)) == first.checked_add(len))
            {
                len += page;
                at += 1;
            }
            DmaRange::new(first, len).ok()
        })
    }
}

/// A DMA address as a `u64`: `dma_addr_t` is 32 or 64 bits wide depending on the configuration.
#[allow(clippy::useless_conversion)]
fn addr_u64(addr: DmaAddress) -> u64 {
    u64::from(addr)
}

impl Drop for PageMapping {
    fn drop(&mut self) {
        for &addr in self.addrs.iter() {
            // SAFETY: By the type invariants `addr` was mapped on `dev` in direction `dir` for a
            // whole page and is unmapped exactly once, here.
            unsafe {
                bindings::dma_unmap_page_attrs(
                    self.dev.as_raw(),
                    addr,
                    PAGE_SIZE,
                    self.dir.into(),
                    0,
                )
            };
        }
    }
}

#[cfg(CONFIG_RUST_DMA_SEGMENTS_KUNIT_TEST)]
#[macros::kunit_tests(rust_dma_segments)]
mod tests {
    use super::*;
    use crate::{
        device::Bound,
        faux, //
    };

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const NO_BOUNDARY: u64 = u64::MAX;

    /// Fails the calling helper with `EINVAL` after logging why; the test that called it then
    /// fails on the error.
    macro_rules! ensure {
        ($cond:expr, $($arg:tt)+) => {
            if !$cond {
                pr_err!($($arg)+);
                return Err(EINVAL);
            }
        };
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment { addr, len }
    }

    fn limits(max: u64, boundary: u64) -> Result<SegmentLimits> {
        SegmentLimits::new(u32::try_from(max)?, boundary)
    }

    fn ranges(list: &[(u64, u64)]) -> Result<KVec<DmaRange>> {
        let mut v = KVec::with_capacity(list.len(), GFP_KERNEL)?;
        for &(addr, len) in list {
            v.push(DmaRange::new(addr, len)?, GFP_KERNEL)?;
        }
        Ok(v)
    }

    /// Checks that `segs` is a valid segmentation of `input` under `lim`: every segment
    /// respects the limits, the segments cover the input bytes exactly and in order, and a
    /// segment spans several ranges only where they are contiguous. Streams, so that plans of
    /// millions of segments need no memory. Returns the number of segments.
    fn check_valid(
        input: &[DmaRange],
        lim: SegmentLimits,
        mut segs: impl Iterator<Item = Segment>,
    ) -> Result<u64> {
        let mask = lim.seg_boundary_mask();
        let mut count = 0u64;
        // The next address the current segment covers, and how many of its bytes are left.
        let mut seg_at = 0u64;
        let mut seg_left = 0u64;
        for r in input {
            let mut at = r.addr();
            let mut left = r.len();
            while left > 0 {
                if seg_left == 0 {
                    let Some(g) = segs.next() else {
                        pr_err!("input bytes at {:#x} left after the last segment\n", at);
                        return Err(EINVAL);
                    };
                    count += 1;
                    ensure!(g.len > 0, "segment {} is empty\n", count);
                    ensure!(
                        g.len <= lim.max_seg_size(),
                        "segment {} of {:#x} bytes above the maximum {:#x}\n",
                        count,
                        g.len,
                        lim.max_seg_size()
                    );
                    let last = g.addr.checked_add(u64::from(g.len) - 1).ok_or(EINVAL)?;
                    ensure!(
                        g.addr & !mask == last & !mask,
                        "segment {:#x}+{:#x} crosses boundary mask {:#x}\n",
                        g.addr,
                        g.len,
                        mask
                    );
                    seg_at = g.addr;
                    seg_left = u64::from(g.len);
                }
                ensure!(
                    seg_at == at,
                    "segment {} at {:#x} where the input continues at {:#x}\n",
                    count,
                    seg_at,
                    at
                );
                let n = left.min(seg_left);
                left -= n;
                seg_left -= n;
                at = at.wrapping_add(n);
                seg_at = at;
            }
        }
        ensure!(seg_left == 0, "segment {} runs past the input\n", count);
        ensure!(
            segs.next().is_none(),
            "segments left after the input ends\n"
        );
        Ok(count)
    }

    /// The minimum number of segments by brute force: dynamic programming over every way of
    /// cutting the input into pieces of `unit` bytes. Every address, length and limit in the
    /// small cases is a multiple of `unit`, so every optimal cut falls on a unit.
    fn reference_min(input: &[DmaRange], lim: SegmentLimits, unit: u64) -> Result<u64> {
        let mask = lim.seg_boundary_mask();
        let mut units = KVec::new();
        for r in input {
            let mut a = r.addr();
            while a <= r.last() {
                units.push(a, GFP_KERNEL)?;
                a += unit;
            }
        }
        let n = units.len();
        let mut best = KVec::from_elem(u64::MAX, n + 1, GFP_KERNEL)?;
        best[0] = 0;
        for end in 1..=n {
            // Try every segment made of units `start..end`, longest last.
            for start in (0..end).rev() {
                if start + 1 < end && units[start] + unit != units[start + 1] {
                    break;
                }
                let len = (end - start) as u64 * unit;
                let (first, last) = (units[start], units[end - 1] + unit - 1);
                if len > u64::from(lim.max_seg_size()) || first & !mask != last & !mask {
                    break;
                }
                if best[start] != u64::MAX {
                    best[end] = best[end].min(best[start] + 1);
                }
            }
        }
        Ok(best[n])
    }

    /// The minimum number of segments in closed form: runs of contiguous ranges are split at
    /// every boundary window, and each window's share needs `ceil(share / max)` segments, a
    /// bound no valid segmentation can beat.
    fn closed_form(input: &[DmaRange], lim: SegmentLimits) -> u128 {
        let max = u128::from(lim.max_seg_size());
        let win = u128::from(lim.seg_boundary_mask()) + 1;
        let mut total = 0u128;
        let mut i = 0;
        while i < input.len() {
            let first = u128::from(input[i].addr());
            let mut last = u128::from(input[i].last());
            while i + 1 < input.len() && u128::from(input[i + 1].addr()) == last + 1 {
                i += 1;
                last = u128::from(input[i].last());
            }
            i += 1;
            let (w0, w1) = (first / win, last / win);
            if w0 == w1 {
                total += (last - first + 1).div_ceil(max);
            } else {
                total += ((w0 + 1) * win - first).div_ceil(max);
                total += (w1 - w0 - 1) * win.div_ceil(max);
                total += (last - w1 * win + 1).div_ceil(max);
            }
        }
        total
    }

    /// Plans `input`, checks that the plan is valid and minimal, and returns its segments.
    fn plan_checked(input: &[DmaRange], lim: SegmentLimits) -> Result<KVec<Segment>> {
        let plan = SegmentPlan::new(input.iter().copied(), lim)?;
        let mut segs = KVec::with_capacity(plan.count_segments(), GFP_KERNEL)?;
        for s in plan {
            segs.push(s, GFP_KERNEL)?;
        }
        let n = check_valid(input, lim, segs.iter().copied())?;
        let min = closed_form(input, lim);
        ensure!(
            u128::from(n) == min,
            "{} segments where {} suffice\n",
            n,
            min
        );
        Ok(segs)
    }

    /// Exhaustive small cases for one set of limits: one to three ranges, every combination of
    /// starts, gaps and lengths from small sets, checked against the brute-force reference.
    fn exhaustive(max: u64, boundary: u64) -> Result<u32> {
        const UNIT: u64 = 512;
        let lim = limits(max, boundary)?;
        // Starts and lengths in units; gaps: 0 = contiguous, 1 = a hole, -20 = backwards.
        let starts = [0u64, 1, 7, 8, 15, 31];
        let lens = [1u64, 3, 8, 9, 17];
        let gaps = [0i64, 1, -20];
        let mut cases = 0;
        for &s in &starts {
            for &l0 in &lens {
                for n in 1..=3usize {
                    for combo in 0..15usize.pow(n as u32 - 1) {
                        let mut list = [(0u64, 0u64); 3];
                        list[0] = ((1024 + s) * UNIT, l0 * UNIT);
                        let mut c = combo;
                        for k in 1..n {
                            let (gap, len) = (gaps[c % 3], lens[(c / 3) % 5]);
                            c /= 15;
                            let end = list[k - 1].0 + list[k - 1].1;
                            let addr = end.checked_add_signed(gap * UNIT as i64).ok_or(EINVAL)?;
                            list[k] = (addr, len * UNIT);
                        }
                        let input = ranges(&list[..n])?;
                        let plan = SegmentPlan::new(input.iter().copied(), lim)?;
                        let got = check_valid(&input, lim, plan)?;
                        let want = reference_min(&input, lim, UNIT)?;
                        ensure!(
                            got == want,
                            "{:x?} max {:#x} boundary {:#x}: {} segments, minimum {}\n",
                            &list[..n],
                            max,
                            boundary,
                            got,
                            want
                        );
                        ensure!(u128::from(got) == closed_form(&input, lim), "closed form\n");
                        cases += 1;
                    }
                }
            }
        }
        Ok(cases)
    }

    /// 6 starts x 5 lengths x (1 + 15 + 15^2) gap and length choices.
    const EXHAUSTIVE_CASES: u32 = 6 * 5 * (1 + 15 + 225);

    #[test]
    fn admits_exactly_the_ranges_within_both_limits() -> Result {
        // Every range of up to 40 KiB starting in the first 40 KiB, in steps of 1 KiB, against
        // the two limits spelt out: at most `max` bytes, first and last byte in one window.
        for (max, boundary) in [(4 * KIB, 8 * KIB - 1), (12 * KIB, 16 * KIB - 1)] {
            let lim = limits(max, boundary)?;
            for start in (0..40 * KIB).step_by(1024) {
                for len in (1024..=40 * KIB).step_by(1024) {
                    let r = DmaRange::new(start, len)?;
                    let within = len <= max && start / (boundary + 1) == r.last() / (boundary + 1);
                    assert_eq!(lim.admits(&r), within);
                }
            }
        }
        // No boundary, the largest segment: the whole address space is one window.
        let lim = limits(u64::from(u32::MAX), NO_BOUNDARY)?;
        assert!(lim.admits(&DmaRange::new(u64::MAX - 4095, 4096)?));
        assert!(!lim.admits(&DmaRange::new(0, u64::from(u32::MAX) + 1)?));
        Ok(())
    }

    #[test]
    fn exhaustive_page_max_no_boundary() -> Result {
        assert_eq!(exhaustive(4 * KIB, NO_BOUNDARY)?, EXHAUSTIVE_CASES);
        Ok(())
    }

    #[test]
    fn exhaustive_page_max_page_boundary() -> Result {
        assert_eq!(exhaustive(4 * KIB, 4 * KIB - 1)?, EXHAUSTIVE_CASES);
        Ok(())
    }

    #[test]
    fn exhaustive_odd_max_8k_boundary() -> Result {
        assert_eq!(exhaustive(5 * KIB, 8 * KIB - 1)?, EXHAUSTIVE_CASES);
        Ok(())
    }

    #[test]
    fn exhaustive_max_above_boundary() -> Result {
        assert_eq!(exhaustive(12 * KIB, 8 * KIB - 1)?, EXHAUSTIVE_CASES);
        Ok(())
    }

    #[test]
    fn exhaustive_max_equals_boundary() -> Result {
        assert_eq!(exhaustive(8 * KIB, 8 * KIB - 1)?, EXHAUSTIVE_CASES);
        Ok(())
    }

    #[test]
    fn exhaustive_unaligned_max_16k_boundary() -> Result {
        assert_eq!(exhaustive(6 * KIB + 512, 16 * KIB - 1)?, EXHAUSTIVE_CASES);
        Ok(())
    }

    /// A xorshift generator: deterministic, so that a failure names a reproducible seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// Log-uniform in `[2^lo, 2^hi)`.
        fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
            let base = 1u64 << (lo + self.below(hi - lo));
            base + self.below(base)
        }
    }

    /// Plans of up to 64 ranges of up to 4 GiB under random limits, checked for validity and
    /// against the closed-form minimum. Rounds whose plan would exceed 4M segments are drawn
    /// again so that the suite stays fast. Returns how many rounds ran.
    fn randomised(seed: u64, rounds: u32) -> Result<u32> {
        let mut rng = Rng(seed);
        let mut done = 0;
        while done < rounds {
            let max = rng.log_uniform(12, 32).min(u64::from(u32::MAX));
            let boundary = match rng.below(4) {
                0 => NO_BOUNDARY,
                _ => (1u64 << (12 + rng.below(40))) - 1,
            };
            let lim = limits(max, boundary)?;
            let n = 1 + rng.below(64) as usize;
            let mut list = KVec::with_capacity(n, GFP_KERNEL)?;
            let mut addr = rng.below(1 << 48);
            for _ in 0..n {
                let len = match rng.below(3) {
                    0 => 1 + rng.below(64 * KIB),
                    1 => PAGE_SIZE as u64 * (1 + rng.below(512)),
                    _ => 1 + rng.below(4 * GIB),
                };
                list.push(DmaRange::new(addr, len)?, GFP_KERNEL)?;
                addr = match rng.below(4) {
                    0 | 1 => addr + len,
                    2 => addr + len + rng.below(MIB),
                    _ => rng.below(1 << 48),
                };
            }
            let min = closed_form(&list, lim);
            if min > 4 << 20 {
                continue;
            }
            let plan = SegmentPlan::new(list.iter().copied(), lim)?;
            let got = check_valid(&list, lim, plan)?;
            ensure!(
                u128::from(got) == min,
                "seed {:#x} round {}: {} segments, minimum {}\n",
                seed,
                done,
                got,
                min
            );
            done += 1;
        }
        Ok(done)
    }

    #[test]
    fn randomised_seed_1() -> Result {
        assert_eq!(randomised(0x9e37_79b9_7f4a_7c15, 40)?, 40);
        Ok(())
    }

    #[test]
    fn randomised_seed_2() -> Result {
        assert_eq!(randomised(0xc2b2_ae3d_27d4_eb4f, 40)?, 40);
        Ok(())
    }

    #[test]
    fn randomised_seed_3() -> Result {
        assert_eq!(randomised(0x1656_67b1_9e37_79f9, 40)?, 40);
        Ok(())
    }

    #[test]
    fn page_max_64k_boundary_4g_range() -> Result {
        // 4 KiB segments, a 64 KiB - 1 boundary, a 4 GiB range: exactly 1M page segments.
        let lim = limits(4 * KIB, 64 * KIB - 1)?;
        let input = ranges(&[(0x1_0000_0000, 4 * GIB)])?;
        let plan = SegmentPlan::new(input.iter().copied(), lim)?;
        assert_eq!(plan.count_segments(), 1 << 20);
        let mut expect = 0x1_0000_0000u64;
        let mut aligned = true;
        for s in plan {
            aligned &= s.addr == expect && s.len == 4096;
            expect += 4 * KIB;
        }
        assert!(aligned);
        assert_eq!(expect, 0x2_0000_0000);
        Ok(())
    }

    #[test]
    fn unaligned_start_page_max_64k_boundary() -> Result {
        let lim = limits(4 * KIB, 64 * KIB - 1)?;
        let segs = plan_checked(&ranges(&[(0xfe00, 9 * KIB)])?, lim)?;
        // 512 bytes up to the 64 KiB boundary, then 4 KiB, 4 KiB and 512 bytes.
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[0], seg(0xfe00, 512));
        assert_eq!(segs[1], seg(0x1_0000, 4096));
        assert_eq!(segs[3], seg(0x1_2000, 512));
        Ok(())
    }

    #[test]
    fn four_gib_ranges_contiguous_merge_by_max() -> Result {
        // Two contiguous 4 GiB ranges under a 4 GiB - 4 KiB maximum: merged, then split by
        // the maximum only.
        let max = u64::from(u32::MAX) + 1 - 4 * KIB;
        let lim = limits(max, NO_BOUNDARY)?;
        let segs = plan_checked(&ranges(&[(0, 4 * GIB), (4 * GIB, 4 * GIB)])?, lim)?;
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[1].addr, max);
        Ok(())
    }

    #[test]
    fn four_gib_range_across_4g_boundary() -> Result {
        // 4 GiB + 1 MiB starting 1 MiB below a 4 GiB boundary: the boundary cuts after 1 MiB,
        // the maximum (4 GiB - 1) cuts the last byte off.
        let lim = limits(u64::from(u32::MAX), 4 * GIB - 1)?;
        let segs = plan_checked(&ranges(&[(4 * GIB - MIB, 4 * GIB + MIB)])?, lim)?;
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0], seg(4 * GIB - MIB, MIB as u32));
        assert_eq!(segs[1], seg(4 * GIB, u32::MAX));
        assert_eq!(segs[2], seg(8 * GIB - 1, 1));
        Ok(())
    }

    #[test]
    fn straddles_many_boundaries() -> Result {
        // 16 MiB + 12 KiB from an unaligned start over 64 KiB windows, maximum above the
        // window: one segment per window touched.
        let lim = limits(MIB, 64 * KIB - 1)?;
        let segs = plan_checked(&ranges(&[(0x1234_5800, 16 * MIB + 12 * KIB)])?, lim)?;
        assert_eq!(segs.len(), 257);
        assert!(segs[1..segs.len() - 1].iter().all(|s| s.len == 64 * 1024));
        Ok(())
    }

    #[test]
    fn importer_64k_max_1m_boundary_unaligned_buffer() -> Result {
        // 4 MiB + 12 KiB starting unaligned: 16 segments up to the first 1 MiB boundary
        // (the last one shortened by it), 3 x 16 in the full windows, 1 at the end.
        let lim = limits(64 * KIB, MIB - 1)?;
        let segs = plan_checked(&ranges(&[(0x8000_3000, 4 * MIB + 12 * KIB)])?, lim)?;
        assert_eq!(segs.len(), 65);
        assert_eq!(segs[15], seg(0x800f_3000, 0xd000));
        Ok(())
    }

    #[test]
    fn last_byte_of_address_space() -> Result {
        let lim = limits(64 * KIB, NO_BOUNDARY)?;
        let r = DmaRange::new(u64::MAX - (8 * KIB - 1), 8 * KIB)?;
        assert_eq!(r.last(), u64::MAX);
        let segs = plan_checked(&[r], lim)?;
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0], seg(u64::MAX - (8 * KIB - 1), 8 * 1024));
        Ok(())
    }

    #[test]
    fn last_byte_of_address_space_split() -> Result {
        // The top 256 KiB under 64 KiB segments and a 128 KiB boundary, in two ranges.
        let lim = limits(64 * KIB, 128 * KIB - 1)?;
        let base = u64::MAX - (256 * KIB - 1);
        let input = ranges(&[(base, 100 * KIB), (base + 100 * KIB, 156 * KIB)])?;
        let segs = plan_checked(&input, lim)?;
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[3], seg(u64::MAX - (64 * KIB - 1), 64 * 1024));
        Ok(())
    }

    #[test]
    fn single_byte_at_top() -> Result {
        let lim = limits(4 * KIB, 4 * KIB - 1)?;
        let segs = plan_checked(&ranges(&[(u64::MAX, 1)])?, lim)?;
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0], seg(u64::MAX, 1));
        Ok(())
    }

    #[test]
    fn wrap_is_not_contiguous() -> Result {
        // A range ending at the top followed by one at address 0 must not merge.
        let lim = limits(64 * KIB, NO_BOUNDARY)?;
        let segs = plan_checked(&ranges(&[(u64::MAX - 4095, 4096), (0, 4096)])?, lim)?;
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1], seg(0, 4096));
        Ok(())
    }

    #[test]
    fn overflow_is_an_error() {
        assert_eq!(DmaRange::new(u64::MAX, 2), Err(EOVERFLOW));
        assert_eq!(DmaRange::new(u64::MAX - 4095, 4097), Err(EOVERFLOW));
        assert_eq!(DmaRange::new(2, u64::MAX), Err(EOVERFLOW));
        // The largest ranges there are: all but one byte of the address space.
        assert!(DmaRange::new(0, u64::MAX).is_ok());
        assert!(DmaRange::new(1, u64::MAX).is_ok());
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(DmaRange::new(0x1000, 0), Err(EINVAL));
    }

    #[test]
    fn empty_input_is_an_error() -> Result {
        let lim = limits(64 * KIB, NO_BOUNDARY)?;
        let none: [DmaRange; 0] = [];
        assert!(matches!(SegmentPlan::new(none.iter().copied(), lim), Err(e) if e == EINVAL));
        Ok(())
    }

    #[test]
    fn impossible_limits_are_errors() {
        let page = PAGE_SIZE as u64;
        assert_eq!(SegmentLimits::new(0, NO_BOUNDARY), Err(EINVAL));
        assert_eq!(
            SegmentLimits::new(page as u32 - 1, NO_BOUNDARY),
            Err(EINVAL)
        );
        assert_eq!(SegmentLimits::new(64 * 1024, page / 2 - 1), Err(EINVAL));
        assert_eq!(SegmentLimits::new(64 * 1024, 0), Err(EINVAL));
        // Masks that are not of the form 2^n - 1.
        assert_eq!(SegmentLimits::new(64 * 1024, 0x1_0000), Err(EINVAL));
        assert_eq!(SegmentLimits::new(64 * 1024, 0xf_efff), Err(EINVAL));
        assert!(SegmentLimits::new(page as u32, page - 1).is_ok());
        assert!(SegmentLimits::new(u32::MAX, NO_BOUNDARY).is_ok());
    }

    #[test]
    fn contiguous_ranges_merge() -> Result {
        let lim = limits(64 * KIB, NO_BOUNDARY)?;
        let input = ranges(&[(0x10_0000, 4096), (0x10_1000, 4096), (0x10_2000, 8192)])?;
        let segs = plan_checked(&input, lim)?;
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0], seg(0x10_0000, 16384));
        Ok(())
    }

    #[test]
    fn contiguous_ranges_split_at_boundary() -> Result {
        // The ranges are contiguous, but the boundary between them forbids the merge.
        let lim = limits(64 * KIB, 64 * KIB - 1)?;
        let segs = plan_checked(&ranges(&[(0xf000, 4096), (0x1_0000, 4096)])?, lim)?;
        assert_eq!(segs.len(), 2);
        Ok(())
    }

    #[test]
    fn merge_then_split_by_max() -> Result {
        // Three contiguous 12 KiB ranges, 16 KiB segments: 3 segments, not 6.
        let lim = limits(16 * KIB, NO_BOUNDARY)?;
        let input = ranges(&[(0, 12 * KIB), (12 * KIB, 12 * KIB), (24 * KIB, 12 * KIB)])?;
        let segs = plan_checked(&input, lim)?;
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0].len, 16 * 1024);
        assert_eq!(segs[2].len, 4 * 1024);
        Ok(())
    }

    #[test]
    fn non_contiguous_ranges_stay_apart() -> Result {
        let lim = limits(64 * KIB, NO_BOUNDARY)?;
        let input = ranges(&[(0x1000, 4096), (0x3000, 4096), (0x2000, 4096)])?;
        let segs = plan_checked(&input, lim)?;
        assert_eq!(segs.len(), 3);
        // Order is kept even where addresses go backwards.
        assert_eq!(segs[2].addr, 0x2000);
        Ok(())
    }

    #[test]
    fn repeated_range_is_not_merged() -> Result {
        let lim = limits(64 * KIB, NO_BOUNDARY)?;
        let segs = plan_checked(&ranges(&[(0x1000, 4096), (0x1000, 4096)])?, lim)?;
        assert_eq!(segs.len(), 2);
        Ok(())
    }

    #[test]
    fn count_does_not_consume() -> Result {
        let lim = limits(4 * KIB, NO_BOUNDARY)?;
        let input = ranges(&[(0, 40 * KIB)])?;
        let mut plan = SegmentPlan::new(input.iter().copied(), lim)?;
        assert_eq!(plan.count_segments(), 10);
        assert_eq!(plan.count_segments(), 10);
        assert_eq!(plan.next(), Some(seg(0, 4096)));
        assert_eq!(plan.count_segments(), 9);
        Ok(())
    }

    #[test]
    fn max_u32_segments() -> Result {
        // The largest maximum the C API can express, over three times that length.
        let lim = limits(u64::from(u32::MAX), NO_BOUNDARY)?;
        let segs = plan_checked(&ranges(&[(0x1000, 3 * u64::from(u32::MAX))])?, lim)?;
        assert_eq!(segs.len(), 3);
        assert!(segs.iter().all(|s| s.len == u32::MAX));
        Ok(())
    }

    #[test]
    fn limits_of_device_without_dma_parms() -> Result {
        // A device without `dma_parms` gets the kernel's defaults: 64 KiB, no boundary.
        let reg = faux::Registration::new(c"rust-dma-segments-test", None)?;
        let fdev: &faux::Device<Bound> = reg.as_ref();
        let lim = SegmentLimits::of_device(fdev.as_ref())?;
        assert_eq!(lim.max_seg_size(), 64 * 1024);
        assert_eq!(lim.seg_boundary_mask(), u64::MAX);
        Ok(())
    }

    /// A table of `input` for `lim`, without backing.
    fn table(input: &[DmaRange], lim: SegmentLimits) -> Result<KBox<SGTable<DmaOnly<()>>>> {
        SegmentPlan::new(input.iter().copied(), lim)?.into_table((), GFP_KERNEL)
    }

    /// Checks a table's entries against `input` and `lim` like a plan's segments.
    fn check_table(input: &[DmaRange], lim: SegmentLimits, table: &SGTable) -> Result<u64> {
        let mut entries = table.iter().map(|e| Segment {
            addr: e.dma_address(),
            len: e.dma_len() as u32,
        });
        let n = check_valid(input, lim, entries.by_ref())?;
        // CAST: a borrowed `SGTable` is a `repr(transparent)` `struct sg_table`.
        let raw = core::ptr::from_ref(table).cast::<bindings::sg_table>();
        // SAFETY: `raw` is the valid table `table` borrows; only read here.
        let (nents, orig_nents) = unsafe { ((*raw).nents, (*raw).orig_nents) };
        ensure!(n == u64::from(nents), "{} entries, nents {}\n", n, nents);
        ensure!(
            orig_nents == 0,
            "orig_nents {} of a DMA-only table\n",
            orig_nents
        );
        Ok(n)
    }

    #[test]
    fn table_for_64k_1m_importer_unaligned_buffer() -> Result {
        // The conformance case: 4 MiB + 12 KiB, unaligned, 64 KiB max, 1 MiB boundary.
        let lim = limits(64 * KIB, MIB - 1)?;
        let input = ranges(&[(0x8000_3000, 4 * MIB + 12 * KIB)])?;
        let table = table(&input, lim)?;
        assert_eq!(check_table(&input, lim, &table)?, 65);
        Ok(())
    }

    /// 1 GiB of 2 MiB chunks, every other one contiguous with the previous.
    fn one_gib_in_2m_chunks() -> Result<KVec<DmaRange>> {
        let mut list = KVec::with_capacity(512, GFP_KERNEL)?;
        let mut addr = 0x1_0000_0000u64;
        for i in 0..512u64 {
            list.push(DmaRange::new(addr, 2 * MIB)?, GFP_KERNEL)?;
            addr += if i % 2 == 0 { 2 * MIB } else { 6 * MIB };
        }
        Ok(list)
    }

    #[test]
    fn table_chained_1g_in_2m_chunks() -> Result {
        // 64 KiB segments, 1 MiB boundary: 16384 entries, far more than one chunk of a chained
        // list.
        let lim = limits(64 * KIB, MIB - 1)?;
        let list = one_gib_in_2m_chunks()?;
        let table = table(&list, lim)?;
        assert_eq!(check_table(&list, lim, &table)?, 16384);
        Ok(())
    }

    #[cfg(all(CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS))]
    #[test]
    fn table_allocation_failures() -> Result {
        // The chained 1 GiB table: every chunk of the chain is an allocation that can fail, and
        // a failure part-way must free the chunks already allocated.
        let lim = limits(64 * KIB, MIB - 1)?;
        let list = one_gib_in_2m_chunks()?;
        let walk = crate::fault_inject::walk_allocations(
            1000,
            || table(&list, lim),
            |result, failed| {
                match result {
                    Err(e) => assert!(failed && e == ENOMEM),
                    Ok(table) => assert_eq!(check_table(&list, lim, &table)?, 16384),
                }
                Ok(())
            },
        )?;
        pr_info!(
            "rust_dma_segments: chained table: {} allocations failed in turn, {} recovered\n",
            walk.failed,
            walk.recovered
        );
        // Each chunk of the chain holds one entry less than a page of entries (the last one
        // links to the next chunk); the table also has its own box.
        let per_page = crate::page::PAGE_SIZE / core::mem::size_of::<bindings::scatterlist>();
        let chunks = 16383u32.div_ceil(u32::try_from(per_page)? - 1);
        assert_eq!(walk.failed, chunks + 1);
        Ok(())
    }

    #[test]
    fn table_round_trip_through_raw() -> Result {
        let lim = limits(4 * KIB, NO_BOUNDARY)?;
        let input = ranges(&[(0x2000, 40 * KIB)])?;
        let raw = SGTable::into_raw_table(table(&input, lim)?);
        // SAFETY: `raw` comes from `into_raw_table()` for the same backing and is not used
        // afterwards.
        let table = unsafe { SGTable::<DmaOnly<()>>::from_raw_table(raw) };
        assert_eq!(check_table(&input, lim, &table)?, 10);
        Ok(())
    }

    #[test]
    fn table_single_byte_at_top() -> Result {
        let lim = limits(4 * KIB, 4 * KIB - 1)?;
        let input = ranges(&[(u64::MAX, 1)])?;
        let table = table(&input, lim)?;
        assert_eq!(check_table(&input, lim, &table)?, 1);
        Ok(())
    }
}
