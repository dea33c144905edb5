// SPDX-License-Identifier: GPL-2.0

//! KUnit suite of the PCI P2PDMA abstractions and of the dma-buf mapping of BAR memory, on the
//! Conflux rig's devices.
//!
//! The cases need real PCI devices in a known topology: the rig's accelerators at 0000:03:00.0,
//! 04:00.0 and 05:00.0 behind one switch and at 06:00.0 on another root port (`make rig-kunit`,
//! which loads this module in the rig's guest with `kunit.enable=1`, so that the suite runs at
//! load). Each case registers a PCI driver for the accelerators and runs in the probe of
//! 03:00.0, the provider, then fails that probe, so that nothing stays bound or set up. One of
//! them benchmarks `Attachment::map_bar()` against upstream's `dma_buf_phys_vec_to_sgt()`, which
//! `make bench` reports.

use kernel::prelude::*;

module! {
    type: P2pdmaTest,
    name: "conflux_p2pdma_test",
    authors: ["The Conflux developers"],
    description: "KUnit suite of the PCI P2PDMA abstractions on the Conflux rig",
    license: "GPL v2",
    imports_ns: ["DMA_BUF"],
}

/// The module: nothing but its KUnit suite, which runs when it is loaded.
struct P2pdmaTest;

impl kernel::Module for P2pdmaTest {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(Self)
    }
}

#[kunit_tests(rust_pci_p2pdma)]
mod tests {
    use core::{
        ptr::NonNull,
        sync::atomic::{
            AtomicI32,
            AtomicU32,
            Ordering, //
        },
    };
    use kernel::{
        bindings,
        device::{
            self,
            Bound,
            Core, //
        },
        device_id::IdArray,
        dma::DataDirection,
        dma_buf::{
            Attachment,
            Backing,
            Exported,
            Exporter,
            ImportAttachment,
            Importer,
            ResvHeld,
            Table, //
        },
        dma_segments::{
            DmaRange,
            SegmentLimits,
            SegmentPlan, //
        },
        driver,
        error::to_result,
        faux,
        pci::{
            self,
            p2pdma::{
                MapType,
                Provider, //
            },
        },
        prelude::*,
        scatterlist::SGTable,
        sync::aref::ARef,
        time::{
            Instant,
            Monotonic, //
        },
        ThisModule,
    };

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    const PROVIDER: u16 = 0x0300;
    const SWITCH_PEER: u16 = 0x0400;
    const SWITCH_PEER_2: u16 = 0x0500;
    const OTHER_PORT: u16 = 0x0600;
    const VRAM_BAR: u32 = 2;
    /// The importers' limits: 64 KiB segments that do not cross 1 MiB boundaries.
    const SEG: u32 = 64 * 1024;
    const BOUNDARY: u64 = MIB - 1;

    /// Fails the probe body with a message naming the check.
    macro_rules! check {
        ($cond:expr, $what:literal) => {
            if !$cond {
                pr_err!(
                    "rust_pci_p2pdma: {}: failed: {}\n",
                    $what,
                    stringify!($cond)
                );
                return Err(EBADMSG);
            }
        };
    }

    /// This module, which registers the test drivers and exports the test buffers.
    const MODULE: &ThisModule = &<crate::LocalModule as kernel::ModuleMetadata>::THIS_MODULE;

    const NOT_RUN: i32 = 1;
    static OUTCOME: AtomicI32 = AtomicI32::new(NOT_RUN);

    /// The accelerators' PCI ID (an ivshmem-doorbell function).
    static IDS: IdArray<pci::DeviceId, (), 1> = IdArray::new([(
        pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1110),
        &(),
    )]);

    /// A driver for the rig's accelerators that runs case `CASE` in the probe of the provider.
    struct Probe<const CASE: u32>;

    impl<const CASE: u32> pci::Driver for Probe<CASE> {
        type IdInfo = ();
        type Data<'bound> = Self;
        const ID_TABLE: pci::IdTable<()> = &IDS;

        fn probe<'bound>(
            pdev: &'bound pci::Device<Core<'_>>,
            _info: Option<&'bound ()>,
        ) -> impl PinInit<Self, Error> + 'bound {
            if pdev.dev_id() == PROVIDER && OUTCOME.load(Ordering::Relaxed) == NOT_RUN {
                let r = match CASE {
                    0 => routes(pdev),
                    1 => importers(pdev),
                    2 => benchmark(pdev),
                    3 => bad_bars(pdev),
                    #[cfg(all(CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS))]
                    4 => allocation_failures(pdev),
                    _ => Err(EINVAL),
                };
                OUTCOME.store(r.map_or_else(|e| e.to_errno(), |()| 0), Ordering::Relaxed);
            }
            Err(ENODEV)
        }
    }

    fn run<const CASE: u32>() -> Result {
        OUTCOME.store(NOT_RUN, Ordering::Relaxed);
        let reg = KBox::pin_init(
            driver::Registration::<pci::Adapter<Probe<CASE>>>::new(c"rust-p2pdma-test", MODULE),
            GFP_KERNEL,
        )?;
        drop(reg);
        match OUTCOME.load(Ordering::Relaxed) {
            NOT_RUN => {
                pr_err!("rust_pci_p2pdma: no accelerator probed at 0000:03:00.0\n");
                Err(ENODEV)
            }
            0 => Ok(()),
            e => Err(Error::from_errno(e)),
        }
    }

    /// A device of the rig, by bus/device/function.
    fn pci_dev(devid: u16) -> Result<ARef<pci::Device>> {
        // SAFETY: FFI call without safety requirements; it returns a new reference or NULL.
        let p = unsafe {
            bindings::pci_get_domain_bus_and_slot(0, u32::from(devid >> 8), u32::from(devid & 0xff))
        };
        let Some(p) = NonNull::new(p.cast::<pci::Device>()) else {
            pr_err!("rust_pci_p2pdma: no PCI device at 0000:{:04x}.0\n", devid);
            return Err(ENODEV);
        };
        // SAFETY: `p` carries the reference taken for us; `pci::Device` is `repr(transparent)`.
        Ok(unsafe { ARef::from_raw(p) })
    }

    fn dev(p: &pci::Device) -> &device::Device {
        p.as_ref()
    }

    /// The `struct device` behind `dev`, whose DMA parameters the cases set as an importer's.
    fn raw_device(dev: &device::Device) -> *mut bindings::device {
        // CAST: `device::Device` is a `repr(transparent)` wrapper of `struct device`.
        core::ptr::from_ref(dev)
            .cast::<bindings::device>()
            .cast_mut()
    }

    /// Importer-side DMA limits and a 64-bit DMA mask set on a device for the duration of a case,
    /// restored on drop.
    struct Limits {
        dev: ARef<device::Device>,
        own: Option<KBox<bindings::device_dma_parameters>>,
        saved: (u32, kernel::ffi::c_ulong, u64),
    }

    impl Limits {
        fn set(dev: &device::Device, max_seg: u32, boundary: u64) -> Result<Self> {
            let raw = raw_device(dev);
            let mut own = None;
            // SAFETY: `raw` is a valid device; the test is the only user of its DMA parameters and
            // mask while it runs (nothing is bound to it).
            unsafe {
                if (*raw).dma_parms.is_null() {
                    // SAFETY: All-zeroes is a valid `struct device_dma_parameters`.
                    let mut p: KBox<bindings::device_dma_parameters> =
                        KBox::new(core::mem::zeroed(), GFP_KERNEL)?;
                    (*raw).dma_parms = &mut *p;
                    own = Some(p);
                }
                let parms = (*raw).dma_parms;
                let mask = if (*raw).dma_mask.is_null() {
                    0
                } else {
                    *(*raw).dma_mask
                };
                let saved = (
                    (*parms).max_segment_size,
                    (*parms).segment_boundary_mask,
                    mask,
                );
                (*parms).max_segment_size = max_seg;
                (*parms).segment_boundary_mask = kernel::ffi::c_ulong::try_from(boundary)?;
                if !(*raw).dma_mask.is_null() {
                    to_result(bindings::dma_set_mask(raw, u64::MAX))?;
                }
                Ok(Self {
                    dev: dev.into(),
                    own,
                    saved,
                })
            }
        }
    }

    impl Drop for Limits {
        fn drop(&mut self) {
            let raw = raw_device(&self.dev);
            // SAFETY: As in `set`; `own`, if any, is what `dma_parms` points to until reset here.
            unsafe {
                if self.own.is_some() {
                    (*raw).dma_parms = core::ptr::null_mut();
                } else {
                    (*(*raw).dma_parms).max_segment_size = self.saved.0;
                    (*(*raw).dma_parms).segment_boundary_mask = self.saved.1;
                }
                if !(*raw).dma_mask.is_null() {
                    *(*raw).dma_mask = self.saved.2;
                }
            }
        }
    }

    /// Whether an entry honours the importer's limits.
    fn conforms(addr: u64, len: u64, limits: SegmentLimits) -> bool {
        DmaRange::new(addr, len).is_ok_and(|r| limits.admits(&r))
    }

    /// Checks that `table`'s entries honour `limits` and tile `expect` exactly, in order.
    fn tiles(table: &SGTable, expect: &[DmaRange], limits: SegmentLimits) -> Result<u32> {
        let (mut i, mut next, mut left, mut entries) = (0usize, 0u64, 0u64, 0u32);
        for e in table.iter() {
            let (addr, len) = (e.dma_address(), e.dma_len());
            if left == 0 {
                check!(i < expect.len(), "entries beyond the expected ranges");
                (next, left) = (expect[i].addr(), expect[i].len());
                i += 1;
            }
            check!(
                addr == next && len <= left,
                "entries tile the expected ranges"
            );
            check!(
                conforms(addr, len, limits),
                "entry within the maximum segment size and segment boundary"
            );
            (next, left) = (addr + len, left - len);
            entries += 1;
        }
        check!(
            i == expect.len() && left == 0,
            "entries cover every expected range"
        );
        Ok(entries)
    }

    /// 4 MiB + 12 KiB of VRAM, in two pieces, the first starting unaligned.
    fn bar_ranges(pdev: &pci::Device<Bound>) -> Result<[DmaRange; 2]> {
        let bar = pdev.resource_start(VRAM_BAR)?;
        Ok([
            DmaRange::new(bar + 0x40_3000, 3 * MIB)?,
            DmaRange::new(bar + 0x80_0000, MIB + 12 * KIB)?,
        ])
    }

    /// Where the exporter's fallback puts the buffer: system memory (addresses for the check).
    const SYSMEM: u64 = 0x1_2340_0000;

    /// Exports BAR memory through the provider, and falls back to system memory where the
    /// provider refuses.
    struct BarExporter {
        provider: *const Provider,
        ranges: [DmaRange; 2],
        fallbacks: AtomicU32,
        refusal: AtomicI32,
    }

    // SAFETY: The provider is only read, and outlives every buffer of the cases (they are gone
    // before the probe that owns it returns).
    unsafe impl Send for BarExporter {}

    // SAFETY: As above.
    unsafe impl Sync for BarExporter {}

    impl BarExporter {
        fn size(&self) -> u64 {
            self.ranges.iter().map(|r| r.len()).sum()
        }

        /// Exports `ranges` of the provider's BAR as one buffer.
        fn export(provider: &Provider, ranges: [DmaRange; 2]) -> Result<Exported<Self>> {
            let exporter = Self {
                provider: core::ptr::from_ref(provider),
                ranges,
                fallbacks: AtomicU32::new(0),
                refusal: AtomicI32::new(0),
            };
            let size = usize::try_from(exporter.size())?;
            Exported::export(exporter, size, MODULE, GFP_KERNEL)
        }
    }

    #[vtable]
    impl Exporter for BarExporter {
        const NAME: &'static CStr = c"rust-p2pdma-test";

        type Backing = Backing;

        fn map(&self, a: &Attachment, dir: DataDirection, _locked: &ResvHeld<'_>) -> Result<Table> {
            // SAFETY: See the `Send` implementation.
            let provider = unsafe { &*self.provider };
            match a.map_bar(provider, &self.ranges, dir, GFP_KERNEL) {
                Err(e) if e == EXDEV || e == EOPNOTSUPP => {
                    self.refusal.store(e.to_errno(), Ordering::Relaxed);
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    let sys = [DmaRange::new(SYSMEM, self.size())?];
                    SegmentPlan::new(sys.iter().copied(), a.limits()?)?
                        .into_table(Backing::Bus, GFP_KERNEL)
                }
                r => r,
            }
        }
    }

    struct TestImporter<const P2P: bool>;

    impl<const P2P: bool> Importer for TestImporter<P2P> {
        const ALLOW_PEER2PEER: bool = P2P;

        fn invalidate_mappings(&self, _a: &Attachment) {}
    }

    fn routes(pdev: &pci::Device<Bound>) -> Result {
        let provider = Provider::of_bar(pdev, VRAM_BAR)?;
        check!(
            core::ptr::eq(provider.owner(), dev(pdev)),
            "the provider belongs to the device"
        );
        let peer = pci_dev(SWITCH_PEER)?;
        let peer2 = pci_dev(SWITCH_PEER_2)?;
        let other = pci_dev(OTHER_PORT)?;
        let fx = faux::Registration::new(c"rust-p2pdma-nonpci", None)?;
        let fdev: &faux::Device<Bound> = fx.as_ref();
        let fdev: &device::Device<Bound> = fdev.as_ref();

        check!(
            provider.map_type(dev(&peer)) == MapType::BusAddress,
            "a device behind the same switch uses bus addresses"
        );
        check!(
            provider.map_type(dev(&peer2)) == MapType::BusAddress,
            "so does the third device behind the switch"
        );
        check!(
            provider.map_type(fdev) == MapType::NotSupported,
            "a device that is not PCI has no route"
        );
        let far = provider.map_type(dev(&other));
        pr_info!(
            "rust_pci_p2pdma: route 0000:03:00.0 -> 0000:06:00.0: {}\n",
            far.name()
        );
        check!(
            far != MapType::BusAddress,
            "a device on another root port never uses bus addresses"
        );

        let near = provider.distance(&[dev(&peer), dev(&peer2)]);
        check!(
            near.is_some_and(|d| d > 0),
            "the switch peers have a distance"
        );
        let farther = provider.distance(&[dev(&peer), dev(&other)]);
        check!(
            farther.is_some() == (far == MapType::ThroughHostBridge),
            "a distance exists across root ports exactly when the host bridge routes"
        );
        if let (Some(n), Some(f)) = (near, farther) {
            check!(f > n, "the host-bridge route is longer");
        }

        let bar = pdev.resource_start(VRAM_BAR)?;
        // The rig's host bridge does not translate: bus and CPU addresses are the same.
        check!(
            provider.bus_address(bar + 0x1234) == bar + 0x1234,
            "bus addresses of the rig's BARs"
        );
        Ok(())
    }

    fn importers(pdev: &pci::Device<Bound>) -> Result {
        let provider = Provider::of_bar(pdev, VRAM_BAR)?;
        let ranges = bar_ranges(pdev)?;
        let peer = pci_dev(SWITCH_PEER)?;
        let peer2 = pci_dev(SWITCH_PEER_2)?;
        let other = pci_dev(OTHER_PORT)?;
        let fx = faux::Registration::new(c"rust-p2pdma-importer", None)?;
        let fdev: &faux::Device<Bound> = fx.as_ref();
        let fdev: &device::Device<Bound> = fdev.as_ref();
        let fdev: &device::Device = fdev;
        let limits = SegmentLimits::new(SEG, BOUNDARY)?;
        let _l = [
            Limits::set(dev(&peer), SEG, BOUNDARY)?,
            Limits::set(dev(&peer2), SEG, BOUNDARY)?,
            Limits::set(dev(&other), SEG, BOUNDARY)?,
            Limits::set(fdev, SEG, BOUNDARY)?,
        ];
        let buf = BarExporter::export(provider, ranges)?;
        let fallbacks = || buf.exporter().fallbacks.load(Ordering::Relaxed);
        let refusal = || buf.exporter().refusal.load(Ordering::Relaxed);
        let dir = DataDirection::Bidirectional;

        // Behind the switch: bus addresses, split for the importer.
        let bus = [
            DmaRange::new(provider.bus_address(ranges[0].addr()), ranges[0].len())?,
            DmaRange::new(provider.bus_address(ranges[1].addr()), ranges[1].len())?,
        ];
        {
            let att = ImportAttachment::new(&buf, dev(&peer), TestImporter::<true>, GFP_KERNEL)?;
            let guard = buf.resv().lock();
            let map = att.map(&guard, dir)?;
            let n = tiles(&map, &bus, limits)?;
            pr_info!(
                "rust_pci_p2pdma: 0000:04:00.0 (64 KiB / 1 MiB): {} bus-address entries\n",
                n
            );
            // 3 MiB from 0x...403000 and 1 MiB + 12 KiB from a 1 MiB boundary, in 64 KiB pieces
            // that also stop at every 1 MiB boundary.
            check!(n == 49 + 17, "the minimum number of entries");
            check!(fallbacks() == 0, "no fallback for a switch peer");
        }

        // On the other root port: through the host bridge if the platform allows it.
        {
            let att = ImportAttachment::new(&buf, dev(&other), TestImporter::<true>, GFP_KERNEL)?;
            let guard = buf.resv().lock();
            let map = att.map(&guard, dir)?;
            if provider.map_type(dev(&other)) == MapType::ThroughHostBridge {
                // Without an IOMMU the DMA API maps MMIO one to one.
                tiles(&map, &ranges, limits)?;
                check!(fallbacks() == 0, "no fallback through the host bridge");
            } else {
                tiles(&map, &[DmaRange::new(SYSMEM, exporter_size(&buf))?], limits)?;
                check!(fallbacks() == 1, "fallback when there is no route");
                check!(refusal() == EXDEV.to_errno(), "no route is -EXDEV");
            }
        }
        let before = fallbacks();

        // Not a PCI device: refused, the exporter falls back to system memory.
        {
            let att = ImportAttachment::new(&buf, fdev, TestImporter::<true>, GFP_KERNEL)?;
            let guard = buf.resv().lock();
            let direct = att.attachment().map_bar(provider, &ranges, dir, GFP_KERNEL);
            check!(
                matches!(direct, Err(e) if e == EXDEV),
                "a non-PCI importer is refused with -EXDEV"
            );
            let map = att.map(&guard, dir)?;
            tiles(&map, &[DmaRange::new(SYSMEM, exporter_size(&buf))?], limits)?;
            check!(
                fallbacks() == before + 1,
                "the fallback ran for the non-PCI importer"
            );
            check!(refusal() == EXDEV.to_errno(), "and was told -EXDEV");
        }

        // An importer that does not take peer-to-peer addresses, although it could.
        {
            let att = ImportAttachment::new(&buf, dev(&peer2), TestImporter::<false>, GFP_KERNEL)?;
            check!(
                !att.attachment().peer2peer(),
                "the attachment is not peer2peer"
            );
            let guard = buf.resv().lock();
            let map = att.map(&guard, dir)?;
            tiles(&map, &[DmaRange::new(SYSMEM, exporter_size(&buf))?], limits)?;
            check!(
                fallbacks() == before + 2,
                "the fallback ran for the non-P2P importer"
            );
            check!(
                refusal() == EOPNOTSUPP.to_errno(),
                "and was told -EOPNOTSUPP"
            );
        }

        // Revoked: every map fails with -ENODEV, whatever the route.
        {
            let att = ImportAttachment::new(&buf, dev(&peer), TestImporter::<true>, GFP_KERNEL)?;
            let guard = buf.resv().lock();
            buf.revoke(&guard)?;
            check!(
                matches!(att.map(&guard, dir), Err(e) if e == ENODEV),
                "maps fail with -ENODEV after revoke"
            );
        }
        drop(buf);
        // SAFETY: FFI call without safety requirements.
        unsafe { bindings::flush_delayed_fput() };
        Ok(())
    }

    fn exporter_size(buf: &Exported<BarExporter>) -> u64 {
        buf.exporter().size()
    }

    /// Counts the entries of `table` and those that break `limits`.
    fn violations(table: &SGTable, limits: SegmentLimits) -> (u64, u64) {
        let (mut n, mut bad) = (0, 0);
        for e in table.iter() {
            n += 1;
            if !conforms(e.dma_address(), e.dma_len(), limits) {
                bad += 1;
            }
        }
        (n, bad)
    }

    fn benchmark(pdev: &pci::Device<Bound>) -> Result {
        const CHUNK: u64 = 2 * MIB;
        const CHUNKS: u64 = GIB / CHUNK;
        const ROUNDS: usize = 7;
        let provider = Provider::of_bar(pdev, VRAM_BAR)?;
        let bar = pdev.resource_start(VRAM_BAR)?;
        let bar_len = pdev.resource_len(VRAM_BAR)?;
        check!(
            bar_len >= GIB,
            "a VRAM BAR of at least 1 GiB (boot the rig with --bar-size 1G)"
        );
        // 1 GiB in 2 MiB chunks, scattered over the BAR as a VRAM allocator leaves them.
        let mut ranges = KVec::with_capacity(CHUNKS as usize, GFP_KERNEL)?;
        let mut phys = KVec::with_capacity(CHUNKS as usize, GFP_KERNEL)?;
        for i in 0..CHUNKS {
            let addr = bar + (i * 7 % CHUNKS) * CHUNK;
            ranges.push(DmaRange::new(addr, CHUNK)?, GFP_KERNEL)?;
            phys.push(
                bindings::phys_vec {
                    paddr: addr,
                    len: CHUNK as usize,
                },
                GFP_KERNEL,
            )?;
        }
        let peer = pci_dev(SWITCH_PEER)?;
        let _l = Limits::set(dev(&peer), SEG, BOUNDARY)?;
        let limits = SegmentLimits::new(SEG, BOUNDARY)?;
        // The buffer only provides the attachment: both builders map the 1 GiB below.
        let buf = BarExporter::export(
            provider,
            [
                DmaRange::new(bar, CHUNK)?,
                DmaRange::new(bar + CHUNK, CHUNK)?,
            ],
        )?;
        let dir = DataDirection::Bidirectional;
        // Entries and violating entries of each builder, and the time of each round.
        let (mut ours, mut theirs) = ((0, 0), (0, 0));
        let (mut ours_ns, mut theirs_ns) = ([0i64; ROUNDS], [0i64; ROUNDS]);
        {
            let att = ImportAttachment::new(&buf, dev(&peer), TestImporter::<true>, GFP_KERNEL)?;
            // Held throughout: `dma_buf_phys_vec_to_sgt()` asserts it, as the core does for
            // `map_attachment()` when it runs as the exporter's map.
            let _guard = buf.resv().lock();
            for round in 0..ROUNDS {
                let start = Instant::<Monotonic>::now();
                let table = att
                    .attachment()
                    .map_bar(provider, &ranges, dir, GFP_KERNEL)?;
                let ns = start.elapsed().as_nanos();
                ours = violations(&table, limits);
                ours_ns[round] = ns;
                drop(table);

                let start = Instant::<Monotonic>::now();
                // SAFETY: The attachment is valid and its buffer's lock is held (`_guard`); the
                // provider is valid; `phys` holds `CHUNKS` ranges covering `GIB` bytes.
                let sgt = unsafe {
                    bindings::dma_buf_phys_vec_to_sgt(
                        att.attachment().as_raw(),
                        provider.as_raw(),
                        phys.as_mut_ptr(),
                        phys.len(),
                        GIB as usize,
                        dir.into(),
                    )
                };
                let ns = start.elapsed().as_nanos();
                let sgt = kernel::error::from_err_ptr(sgt)?;
                // SAFETY: `sgt` is a valid table until freed below.
                theirs = violations(unsafe { SGTable::from_raw(sgt) }, limits);
                theirs_ns[round] = ns;
                // `dma_buf_free_sgt()` frees the table with `sg_free_table()`, which frees
                // `orig_nents` entries: 0 in the tables it builds, so it would leak their chained
                // chunks. Give it the count first.
                // SAFETY: `sgt` came from `dma_buf_phys_vec_to_sgt()` for this attachment, under
                // the same lock, and is freed once.
                unsafe {
                    (*sgt).orig_nents = (*sgt).nents;
                    bindings::dma_buf_free_sgt(att.attachment().as_raw(), sgt, dir.into());
                }
            }
        }
        drop(buf);
        // SAFETY: FFI call without safety requirements.
        unsafe { bindings::flush_delayed_fput() };
        // Nanoseconds per entry of the rounds: median, fastest, slowest.
        let per = |entries: u64, ns: &mut [i64; ROUNDS]| {
            let n = i64::try_from(entries.max(1)).unwrap_or(i64::MAX);
            ns.sort_unstable();
            (ns[ROUNDS / 2] / n, ns[0] / n, ns[ROUNDS - 1] / n)
        };
        let (o, t) = (per(ours.0, &mut ours_ns), per(theirs.0, &mut theirs_ns));
        pr_info!(
            "rust_pci_p2pdma: bench 1 GiB in 2 MiB chunks for a 64 KiB / 1 MiB importer, {} rounds: conflux {} entries, {} violating, {} ns/entry (min {}, max {}); upstream dma_buf_phys_vec_to_sgt {} entries, {} violating, {} ns/entry (min {}, max {})\n",
            ROUNDS,
            ours.0,
            ours.1,
            o.0,
            o.1,
            o.2,
            theirs.0,
            theirs.1,
            t.0,
            t.1,
            t.2
        );
        check!(ours.1 == 0, "no violating entry from Conflux");
        check!(
            ours.0 == GIB / u64::from(SEG),
            "the minimum number of entries"
        );
        check!(theirs.0 == CHUNKS, "upstream emits one entry per chunk");
        Ok(())
    }

    fn bad_bars(pdev: &pci::Device<Bound>) -> Result {
        check!(
            matches!(Provider::of_bar(pdev, 6), Err(e) if e == EINVAL),
            "BAR 6 does not exist"
        );
        // BAR 2 is 64-bit: BAR 3 is its upper half, not a BAR of its own.
        check!(
            matches!(Provider::of_bar(pdev, 3), Err(e) if e == EINVAL),
            "BAR 3 is not a memory BAR"
        );
        let provider = Provider::of_bar(pdev, VRAM_BAR)?;
        let (start, len) = (pdev.resource_start(VRAM_BAR)?, pdev.resource_len(VRAM_BAR)?);
        check!(
            provider.bar() == Some(DmaRange::new(start, len)?),
            "the provider knows its BAR's addresses"
        );

        // Ranges that leave the BAR, at either end: the exporter's bug must not become the
        // importer's route to whatever lies there.
        let peer = pci_dev(SWITCH_PEER)?;
        let inside = DmaRange::new(start, 4 * KIB)?;
        let refused = |stray: DmaRange| -> Result<bool> {
            let buf = BarExporter::export(provider, [inside, stray])?;
            let att = ImportAttachment::new(&buf, dev(&peer), TestImporter::<true>, GFP_KERNEL)?;
            let guard = buf.resv().lock();
            let r = att.map(&guard, DataDirection::Bidirectional);
            Ok(matches!(r, Err(e) if e == ERANGE))
        };
        check!(
            refused(DmaRange::new(start - 4 * KIB, 8 * KIB)?)?,
            "a range that starts before the BAR is refused with ERANGE"
        );
        check!(
            refused(DmaRange::new(start + len - 4 * KIB, 8 * KIB)?)?,
            "a range that runs past the BAR's end is refused with ERANGE"
        );
        Ok(())
    }

    /// Every allocation of `map_bar()` fails in turn, for the switch peer (bus addresses)
    /// and the device on the other root port (the host bridge, or no route).
    #[cfg(all(CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS))]
    fn allocation_failures(pdev: &pci::Device<Bound>) -> Result {
        use kernel::fault_inject::{
            debugfs_file_data,
            walk_allocations, //
        };

        let provider = Provider::of_bar(pdev, VRAM_BAR)?;
        let ranges = bar_ranges(pdev)?;
        let peer = pci_dev(SWITCH_PEER)?;
        let other = pci_dev(OTHER_PORT)?;
        let limits = SegmentLimits::new(SEG, BOUNDARY)?;
        let _l = [
            Limits::set(dev(&peer), SEG, BOUNDARY)?,
            Limits::set(dev(&other), SEG, BOUNDARY)?,
        ];
        let buf = BarExporter::export(provider, ranges)?;
        // DMA-API debugging tracks every mapping: entries in use = total - free.
        let total = debugfs_file_data(c"dma-api", c"nr_total_entries")?.cast::<u32>();
        let free = debugfs_file_data(c"dma-api", c"num_free_entries")?.cast::<u32>();
        // SAFETY: `kernel/dma/debug.c` created these files over its static counters, which live
        // as long as the kernel; a racy read is enough while this case is the only DMA user.
        let in_use = || unsafe {
            core::ptr::read_volatile(total).wrapping_sub(core::ptr::read_volatile(free))
        };
        let dir = DataDirection::Bidirectional;
        let bus = [
            DmaRange::new(provider.bus_address(ranges[0].addr()), ranges[0].len())?,
            DmaRange::new(provider.bus_address(ranges[1].addr()), ranges[1].len())?,
        ];
        for importer in [&peer, &other] {
            let att = ImportAttachment::new(&buf, dev(importer), TestImporter::<true>, GFP_KERNEL)?;
            let route = provider.map_type(dev(importer));
            let before = in_use();
            let walk = walk_allocations(
                1000,
                || att.attachment().map_bar(provider, &ranges, dir, GFP_KERNEL),
                |result, failed| {
                    // A table that was built is checked and dropped in its arm.
                    match (result, route) {
                        (Err(e), MapType::NotSupported) => {
                            check!(e == EXDEV, "no route stays -EXDEV")
                        }
                        (Err(e), _) => check!(failed && e == ENOMEM, "a failure is -ENOMEM"),
                        (Ok(table), MapType::BusAddress) => {
                            check!(tiles(&table, &bus, limits)? == 66, "bus-address table")
                        }
                        (Ok(table), _) => {
                            check!(tiles(&table, &ranges, limits)? == 66, "host-bridge table");
                            check!(in_use() > before, "the table holds its mappings");
                        }
                    }
                    check!(in_use() == before, "no DMA mapping is left behind");
                    Ok(())
                },
            )?;
            pr_info!(
                "rust_pci_p2pdma: {}: route {}: {} allocations failed in turn, each undone\n",
                dev(importer).name(),
                route.name(),
                walk.failed
            );
            if route != MapType::NotSupported {
                check!(walk.failed >= 2, "the table and its box can fail");
            }
        }
        drop(buf);
        // SAFETY: FFI call without safety requirements.
        unsafe { bindings::flush_delayed_fput() };
        Ok(())
    }

    #[cfg(all(CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS))]
    #[test]
    fn allocation_failures_undo_every_mapping() -> Result {
        run::<4>()
    }

    #[test]
    fn routes_follow_the_topology() -> Result {
        run::<0>()
    }

    #[test]
    fn bar_memory_reaches_each_importer_by_its_route() -> Result {
        run::<1>()
    }

    #[test]
    fn benchmark_against_dma_buf_phys_vec_to_sgt() -> Result {
        run::<2>()
    }

    #[test]
    fn bad_bars_are_refused() -> Result {
        run::<3>()
    }
}
