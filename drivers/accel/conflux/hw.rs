// SPDX-License-Identifier: GPL-2.0

//! A bound Conflux device: how probe identifies it, and what its accel device holds.
//!
//! The device is a QEMU ivshmem-doorbell function (`1af4:1110`). [`identify`] reads the
//! signature and version in the control block at BAR2 offset 0, declines any other ivshmem
//! device with `-ENODEV`, checks the layout and capabilities and takes over the engine, reset.
//! [`DeviceData`] is what the registered accel device then holds: the engine, VRAM, the
//! kernel's own address space, which maps all of VRAM so that the engine can scrub it and, in a
//! window above it, the memory of buffers that move, and the dma-bufs exported and imported,
//! which the unbind revokes and unmaps.

use core::{
    pin::Pin,
    sync::atomic::AtomicU64, //
};

use kernel::{
    device::{
        Bound,
        Device, //
    },
    dma_buf::{
        ExportList,
        ImportList, //
    },
    dma_segments::DmaRange,
    drm::Registered,
    gpu::buddy::{
        AllocatedBlocks,
        GpuBuddy,
        GpuBuddyAllocFlag,
        GpuBuddyAllocFlags,
        GpuBuddyAllocMode,
        GpuBuddyParams, //
    },
    io::Io,
    new_mutex,
    pci::{
        self,
        p2pdma::Provider, //
    },
    prelude::*,
    ptr::Alignment,
    ratelimit::RateLimit,
    sizes::{
        SZ_2M,
        SZ_4K, //
    },
    sync::{
        aref::ARef,
        Arc,
        Mutex, //
    },
    time::msecs_to_jiffies,
};

use crate::{
    driver::{
        ConfluxDevice,
        IoctlDevice, //
    },
    engine::{
        job_timeout_ms,
        Command,
        Engine,
        MAX_JOB_COMMANDS, //
    },
    gem::{
        lru::Lru,
        memory::Memory, //
    },
    mmu::{
        PageTables,
        Target, //
    },
    regs::{
        self,
        Bar2,
        CTL_BAR,
        CTL_SIZE,
        DOORBELL_BAR,
        DOORBELL_BAR_SIZE,
        MAX_COMMAND_LEN, //
    },
    vram::Vram,
};

/// Where the kernel's own address space maps VRAM: the last level-3 entry, above every address
/// userspace can use.
pub(crate) const KERNEL_VA_BASE: u64 = 511 << 39;
/// The lowest virtual address userspace can bind a buffer at.
pub(crate) const USER_VA_START: u64 = SZ_2M as u64;
/// Where the kernel's address space maps the system memory of buffers that move, for the
/// engine's copies: above VRAM's mapping, in the same level-3 entry.
const WINDOW_OFFSET: u64 = 256 << 30;

/// What the device's moves did, for `GET_INFO`.
#[derive(Default)]
pub(crate) struct MoveStats {
    /// Buffers moved out of VRAM to make room.
    pub(crate) evictions: AtomicU64,
    /// Buffers moved back to VRAM.
    pub(crate) returns: AtomicU64,
    /// Bytes the engine copied for moves.
    pub(crate) bytes: AtomicU64,
}

/// What a device reports about itself at probe.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceInfo {
    /// `major << 16 | minor`.
    pub(crate) version: u32,
    /// Capability bits.
    pub(crate) caps: u32,
    /// BAR2 offset of VRAM.
    pub(crate) vram_offset: u64,
    /// Size of VRAM in bytes.
    pub(crate) vram_size: u64,
}

/// A Conflux device that probe identified: what it reports, its control block and its engine.
pub(crate) struct Identified<'bound> {
    pub(crate) info: DeviceInfo,
    bar2: Arc<Bar2<'bound>>,
    pub(crate) engine: Arc<Engine<'bound>>,
}

/// Maps the BARs, checks that the function is a Conflux device this driver supports and takes
/// over its engine, reset.
pub(crate) fn identify<'bound>(pdev: &'bound pci::Device<Bound>) -> Result<Identified<'bound>> {
    let bar2 = pdev.iomap_region_sized::<CTL_SIZE>(CTL_BAR, c"conflux/ctl")?;
    let signature = regs::read64::<regs::SIGNATURE>(&bar2)?.value().get();
    if signature != regs::SIGNATURE_VALUE {
        dev_info!(
            pdev,
            "probe: BAR2 signature {:#018x} is not \"CNFXACCL\": \
             a plain ivshmem device, not binding\n",
            signature
        );
        return Err(ENODEV);
    }
    let version = bar2.read(regs::VERSION);
    if version.major().get() != regs::VERSION_MAJOR {
        dev_err!(
            pdev,
            "probe: device interface version {}.{} is not supported (needs {}.x)\n",
            version.major().get(),
            version.minor().get(),
            regs::VERSION_MAJOR
        );
        return Err(ENODEV);
    }
    let info = DeviceInfo {
        version: version.into_raw(),
        caps: bar2.read(regs::CAPS).bits().get() & regs::CAPS_DRIVER,
        vram_offset: regs::read64::<regs::VRAM_OFFSET>(&bar2)?.offset().get(),
        vram_size: regs::read64::<regs::VRAM_SIZE>(&bar2)?.bytes().get(),
    };
    let bar_size = regs::read64::<regs::BAR_SIZE>(&bar2)?.bytes().get();
    let bar_len = pdev.resource_len(CTL_BAR)?;
    let vram_fits = match info.vram_offset.checked_add(info.vram_size) {
        Some(end) => end <= bar_len,
        None => false,
    };
    let aligned = info.vram_offset % SZ_2M as u64 == 0 && info.vram_size % SZ_2M as u64 == 0;
    if bar_size != bar_len || !vram_fits || !aligned {
        dev_err!(
            pdev,
            "probe: inconsistent layout: BAR_SIZE {:#x}, BAR2 length {:#x}, VRAM {:#x}+{:#x}\n",
            bar_size,
            bar_len,
            info.vram_offset,
            info.vram_size
        );
        return Err(EIO);
    }
    if info.caps & regs::CAPS_V1 != regs::CAPS_V1 {
        dev_err!(
            pdev,
            "probe: capabilities {:#x} lack some of version 1.0's {:#x}\n",
            info.caps,
            regs::CAPS_V1
        );
        return Err(ENODEV);
    }
    let doorbell =
        pdev.iomap_region_sized::<DOORBELL_BAR_SIZE>(DOORBELL_BAR, c"conflux/doorbell")?;
    let bar2 = Arc::new(bar2, GFP_KERNEL)?;
    let engine = Engine::new(pdev, doorbell, bar2.clone(), info.vram_offset, info.caps)?;
    Ok(Identified { info, bar2, engine })
}

/// What the accel device of a bound Conflux device holds: the DRM registration data.
///
/// Dropped at unbind, after the accel device is unregistered: every buffer it exported is
/// revoked and every buffer it imported unmapped, once the jobs that use them are done.
pub(crate) struct DeviceData<'bound> {
    pub(crate) pdev: &'bound pci::Device<Bound>,
    pub(crate) engine: Arc<Engine<'bound>>,
    pub(crate) info: DeviceInfo,
    pub(crate) vram: Vram<'bound>,
    /// Maps all of VRAM at [`KERNEL_VA_BASE`], for scrubbing and moves, and the system memory
    /// of moves in the window above it.
    kernel_vm: Pin<KBox<Mutex<PageTables>>>,
    /// The level-3 table of `kernel_vm`.
    kernel_root: u64,
    /// The virtual addresses of the window, handed to moves: twice VRAM. Its tables are
    /// allocated at probe.
    window: GpuBuddy,
    /// What the moves did.
    pub(crate) moves: MoveStats,
    /// The movable buffers, least recently used first.
    pub(crate) lru: Arc<Lru>,
    /// The buffers exported as dma-bufs, revoked when the device is unbound.
    pub(crate) exports: Arc<ExportList>,
    /// The device's attachments to imported dma-bufs, unmapped when it is unbound.
    pub(crate) imports: Arc<ImportList>,
    /// The importers told that they cannot reach VRAM.
    refused: Pin<KBox<Mutex<KVec<ARef<Device>>>>>,
    /// Limits the log lines that userspace can cause ([`DeviceData::log_allowed`]).
    log_limit: Pin<KBox<RateLimit>>,
    /// The VRAM published as peer-to-peer memory with `struct page`s, at the top of VRAM, zeroed,
    /// and its range of VRAM offsets; returned to the allocator at unbind, after the pages are
    /// gone.
    p2pmem: Option<(DmaRange, Pin<KBox<AllocatedBlocks>>)>,
}

impl Drop for DeviceData<'_> {
    fn drop(&mut self) {
        // Importers lose the memory before it is freed: wait for their jobs, then clear their
        // mappings.
        let timeout = msecs_to_jiffies(2 * job_timeout_ms());
        let n = self.exports.release_all(timeout);
        if n > 0 {
            dev_info!(self.pdev, "unbind: revoked {} exported buffer(s)\n", n);
        }
        // No DMA mapping of the device outlives the driver, even for a buffer a file still
        // holds: once the jobs that use them are done, the imports are unmapped.
        let n = self.imports.release_all(timeout);
        if n > 0 {
            dev_info!(self.pdev, "unbind: unmapped {} imported buffer(s)\n", n);
        }
    }
}

impl<'bound> DeviceData<'bound> {
    /// Sets up VRAM and the kernel's address space of an identified device, and zeroes all of
    /// VRAM: what an earlier driver or user left there goes, and the engine proves that it
    /// runs jobs and signals their fences from the completion interrupt.
    pub(crate) fn new(pdev: &'bound pci::Device<Bound>, hw: &Identified<'bound>) -> Result<Self> {
        let info = hw.info;
        let vram = Vram::new(pdev, hw.bar2.clone(), info.vram_offset, info.vram_size)?;
        let mut kernel_vm = PageTables::new(&vram)?;
        kernel_vm.map(&vram, KERNEL_VA_BASE, Target::Vram(0), info.vram_size, true)?;
        // Both sides of a move, of at most all of VRAM.
        let window = GpuBuddy::new(GpuBuddyParams {
            base_offset: 0,
            size: 2 * info.vram_size,
            chunk_size: Alignment::new::<SZ_4K>(),
        })?;
        // Set the device up as a peer-to-peer provider now, so that a failure shows at probe.
        Provider::of_bar(pdev, CTL_BAR)?;
        let data = Self {
            pdev,
            engine: hw.engine.clone(),
            info,
            vram,
            kernel_root: kernel_vm.root(),
            kernel_vm: KBox::pin_init(new_mutex!(kernel_vm), GFP_KERNEL)?,
            window,
            moves: MoveStats::default(),
            // Buffers back in VRAM keep system memory for a quarter of VRAM.
            lru: Lru::new(info.vram_size / 4, info.vram_size / 2)?,
            exports: Arc::pin_init(ExportList::new(), GFP_KERNEL)?,
            imports: Arc::pin_init(ImportList::new(), GFP_KERNEL)?,
            refused: KBox::pin_init(new_mutex!(KVec::new()), GFP_KERNEL)?,
            log_limit: KBox::pin_init(RateLimit::log_lines(), GFP_KERNEL)?,
            p2pmem: None,
        };
        data.scrub_free()?;
        Ok(data)
    }

    /// Allocates the page tables of all of the move window (1/256 of VRAM), once the probe has
    /// taken the VRAM it places ([`Self::take_p2pmem`]): no move then needs VRAM for tables.
    /// Eviction runs when VRAM is full, and the system memory that buffers keep mapped in the
    /// window may hold any part of it.
    pub(crate) fn add_window_tables(&self) -> Result {
        self.kernel_vm.lock().add_spares(
            &self.vram,
            PageTables::tables_for(KERNEL_VA_BASE + WINDOW_OFFSET, 2 * self.info.vram_size),
        )
    }

    /// Takes the top `mib` MiB of VRAM, zeroed, for peer-to-peer memory with `struct page`s:
    /// returns the range's BAR2 offset, which the caller publishes. [`EINVAL`] with the reason in
    /// the log for an odd size or one above half of VRAM.
    pub(crate) fn take_p2pmem(&mut self, mib: u32) -> Result<u64> {
        let size = u64::from(mib) << 20;
        if mib % 2 != 0 || size > self.info.vram_size / 2 {
            dev_err!(
                self.pdev,
                "p2pmem_mib {}: an even number of MiB, at most half of VRAM ({} MiB)\n",
                mib,
                self.info.vram_size >> 21
            );
            return Err(EINVAL);
        }
        // At a 2 MiB boundary of VRAM, which BAR2 places at one of the CPU's.
        // CAST: `SZ_2M` fits in `u64`.
        let start = (self.info.vram_size - size) & !(SZ_2M as u64 - 1);
        let range = DmaRange::new(start, size)?;
        self.p2pmem = Some((range, self.vram.alloc_range(start, size)?));
        Ok(self.info.vram_offset + start)
    }

    /// The VRAM offsets of the range published as peer-to-peer memory, if there is one.
    pub(crate) fn p2pmem(&self) -> Option<DmaRange> {
        self.p2pmem.as_ref().map(|(range, _)| *range)
    }

    /// Whether a log line that userspace can cause at will may go out now: at most 10 of them
    /// every 5 s for the device; the kernel counts the ones suppressed.
    pub(crate) fn log_allowed(&self) -> bool {
        self.log_limit.allow(c"conflux")
    }

    /// Runs `f` with the registered accel device behind `dev` and its data while the device is
    /// bound; [`ENODEV`] once it is not.
    pub(crate) fn with<R>(
        dev: &IoctlDevice,
        f: impl FnOnce(&ConfluxDevice<Registered>, &DeviceData<'_>) -> Result<R>,
    ) -> Result<R> {
        let guard = dev.registration_guard().ok_or(ENODEV)?;
        guard.registration_data_with(|data| f(&guard, data))
    }

    /// Whether `importer` is refused VRAM for the first time, so that the refusal, an expected
    /// path where the topology has no peer-to-peer route, is logged once per importer.
    pub(crate) fn first_refusal(&self, importer: &Device) -> bool {
        let mut refused = self.refused.lock();
        if refused.iter().any(|d| core::ptr::eq(&**d, importer)) {
            return false;
        }
        // Without memory to remember it, the refusal is logged again next time.
        let _ = refused.push(importer.into(), GFP_KERNEL);
        true
    }

    /// Zeroes all of VRAM that is not allocated.
    fn scrub_free(&self) -> Result {
        let free = self
            .vram
            .alloc(self.vram.avail(), Alignment::new::<SZ_4K>())?;
        self.scrub(free.iter().map(|b| (b.offset(), b.size())))
    }

    /// The level-3 table of the kernel's address space, for its jobs.
    pub(crate) fn kernel_root(&self) -> u64 {
        self.kernel_root
    }

    /// Maps the first `size` bytes of `memory` into the move window, for the engine's copies,
    /// and returns the window's addresses: the lease, whose blocks laid end to end hold the
    /// bytes. They stay mapped while the lease lives, which the last job of the move keeps until
    /// the engine is done with it. [`ENOSPC`] when the window is full of moves in flight.
    pub(crate) fn map_window(
        &self,
        memory: &Memory,
        size: u64,
    ) -> Result<Pin<KBox<AllocatedBlocks>>> {
        let alloc = |mode, flags| {
            KBox::pin_init(
                self.window
                    .alloc_blocks(mode, size, Alignment::new::<SZ_4K>(), flags),
                GFP_KERNEL_ACCOUNT,
            )
        };
        let contiguous = GpuBuddyAllocFlags::from(GpuBuddyAllocFlag::Contiguous);
        // In one block if it can (one command per 4 GiB), else in several.
        let lease = alloc(GpuBuddyAllocMode::Simple, contiguous)
            .or_else(|_| alloc(GpuBuddyAllocMode::Simple, Default::default()))?;
        let mut vm = self.kernel_vm.lock();
        // An earlier move left its entries there: no job uses them since its lease went.
        for (va, len) in Self::window_ranges(&lease) {
            vm.unmap(&self.vram, va, len);
        }
        let mut blocks = Self::window_ranges(&lease).peekable();
        let mut in_block = 0u64;
        let mapped = memory.for_each_piece(&self.vram, 0, size, |target, len| {
            let mut done = 0;
            while done < len {
                let (va, block_len) = *blocks.peek().ok_or(EINVAL)?;
                let n = (len - done).min(block_len - in_block);
                vm.map(&self.vram, va + in_block, target.add(done), n, true)?;
                (done, in_block) = (done + n, in_block + n);
                if in_block == block_len {
                    blocks.next();
                    in_block = 0;
                }
            }
            Ok(())
        });
        drop(blocks);
        mapped.map(|()| lease)
    }

    /// The virtual addresses of a lease of the move window, laid end to end.
    pub(crate) fn window_ranges(lease: &AllocatedBlocks) -> impl Iterator<Item = (u64, u64)> + '_ {
        let base = KERNEL_VA_BASE + WINDOW_OFFSET;
        lease.iter().map(move |b| (base + b.offset(), b.size()))
    }

    /// Zeroes the VRAM ranges `(offset, len)` with the engine and waits for it.
    ///
    /// The wait is not interruptible: the memory is freed or handed out only after the engine
    /// wrote it, so that a late fill never overwrites data of its next user.
    pub(crate) fn scrub(&self, ranges: impl Iterator<Item = (u64, u64)>) -> Result {
        let mut commands = KVec::new();
        let mut jobs = KVec::new();
        let submitted = (|| -> Result {
            for (offset, len) in ranges {
                let mut done = 0;
                while done < len {
                    let piece = (len - done).min(MAX_COMMAND_LEN);
                    commands.push(
                        Command::Fill {
                            dst: KERNEL_VA_BASE + offset + done,
                            len: piece,
                            pattern: 0,
                        },
                        GFP_KERNEL,
                    )?;
                    done += piece;
                    if commands.len() == MAX_JOB_COMMANDS {
                        let job = core::mem::take(&mut commands);
                        jobs.reserve(1, GFP_KERNEL)?;
                        jobs.push(self.engine.submit(self.kernel_root, job)?, GFP_KERNEL)?;
                    }
                }
            }
            if !commands.is_empty() {
                let job = core::mem::take(&mut commands);
                jobs.reserve(1, GFP_KERNEL)?;
                jobs.push(self.engine.submit(self.kernel_root, job)?, GFP_KERNEL)?;
            }
            Ok(())
        })();
        // Every job is waited for, even when a later submission failed, so that no fill
        // outlives this call; each must have succeeded.
        let mut failed = Ok(());
        for fence in jobs.iter() {
            fence.wait(false)?;
            if let Err(e) = fence.status() {
                failed = Err(e);
            }
        }
        submitted.and(failed)
    }
}
