// SPDX-License-Identifier: GPL-2.0

//! PCI and DRM accel driver for the Conflux accelerator.
//!
//! The device is a QEMU ivshmem-doorbell function (`1af4:1110`). Probe reads the signature and
//! version in the control block at BAR2 offset 0, declines any other ivshmem device with
//! `-ENODEV`, resets the device and registers an accel device, `/dev/accel/accelN`.

use kernel::{
    device::{
        Bound,
        Core,
        DeviceContext, //
    },
    dma::Device as _,
    dma_buf::{ExportList, ImportList},
    drm::{
        self,
        gem,
        ioctl, //
    },
    io::Io,
    irq,
    pci::{
        self,
        p2pdma::Provider, //
    },
    prelude::*,
    ptr::Alignment,
    sizes::{
        SZ_2M,
        SZ_4K, //
    },
    sync::Arc,
    time::msecs_to_jiffies, //
};

use crate::{
    engine::{
        job_timeout_ms,
        Command,
        CompletionIrq,
        Engine,
        ErrorIrq,
        MAX_JOB_COMMANDS, //
    },
    file::File,
    gem::Bo,
    mmu::{
        PageTables,
        Target,
        Vram,
        VramIo, //
    },
    regs, //
};

/// Where the kernel's own address space maps VRAM: the last level-3 entry, above every address
/// userspace can use.
pub(crate) const KERNEL_VA_BASE: u64 = 511 << 39;
/// The lowest virtual address userspace can bind a buffer at.
pub(crate) const USER_VA_START: u64 = SZ_2M as u64;

/// The Conflux PCI driver.
pub(crate) struct ConfluxDriver;

/// The Conflux DRM accel driver.
pub(crate) struct ConfluxDrm;

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

/// A bound device: its engine, its VRAM and the kernel's address space, which maps all of VRAM
/// at [`KERNEL_VA_BASE`] so that the engine can scrub it.
pub(crate) struct Hw<'bound> {
    pub(crate) pdev: &'bound pci::Device<Bound>,
    pub(crate) engine: Arc<Engine<'bound>>,
    pub(crate) info: DeviceInfo,
    pub(crate) vram: Vram,
    kernel_vm: PageTables,
    /// The buffers exported as dma-bufs, revoked when the device is unbound.
    pub(crate) exports: Arc<ExportList>,
    /// The device's attachments to imported dma-bufs, unmapped when it is unbound.
    pub(crate) imports: Arc<ImportList>,
}

impl Drop for Hw<'_> {
    fn drop(&mut self) {
        // Importers lose the memory before it is freed: wait for their jobs, then clear their
        // mappings.
        let timeout = msecs_to_jiffies(2 * job_timeout_ms());
        let n = self.exports.revoke_all(timeout);
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

/// What the PCI driver keeps while bound.
///
/// Fields drop in declaration order: the accel device goes first, so no ioctl runs any more;
/// then the interrupt handlers; the vectors they borrow go last.
#[pin_data]
pub(crate) struct Probed<'bound> {
    _reg: drm::Registration<'bound, ConfluxDrm>,
    #[pin]
    _completion: irq::Registration<'bound, CompletionIrq<'bound>>,
    #[pin]
    _error: irq::ThreadedRegistration<'bound, ErrorIrq<'bound>>,
    vectors: pci::IrqVectorRegistration<'bound>,
    engine: Arc<Engine<'bound>>,
}

kernel::pci_device_table!(
    PCI_TABLE,
    <ConfluxDriver as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1110),
        ()
    )]
);

/// Reads the 64-bit identification or layout field at `OFFSET` of the control block.
///
/// The kernel's I/O regions allow accesses of at most 4-byte alignment, so the field is read as
/// two 32-bit halves. These fields only change in a reset, which this driver alone requests and
/// does not run concurrently, so both halves belong to the same value.
fn read_ident64<const OFFSET: usize>(ctl: &pci::Bar<'_, { regs::CTL_SIZE }>) -> u64 {
    u64::from(ctl.read32(OFFSET + 4)) << 32 | u64::from(ctl.read32(OFFSET))
}

/// Maps the BARs, checks that the function is a Conflux device this driver supports and
/// returns its engine, reset.
/// Sets the DMA segment limits of a Conflux device from the module parameters. The page tables
/// take segments of any size and alignment; the parameters can lower what exporters give the
/// device, to test that they honour them.
fn set_segment_limits(pdev: &pci::Device<Core<'_>>) -> Result {
    let max_segment = match crate::module_parameters::max_segment.value() {
        0 => u32::MAX,
        n => n.max(SZ_4K as u32),
    };
    // SAFETY: Nothing maps memory for the device's DMA before its probe is done.
    unsafe { pdev.dma_set_max_seg_size(max_segment) };
    // Likewise for the boundary no segment may cross (the PCI default is 4 GiB).
    let boundary = crate::module_parameters::seg_boundary.value();
    if boundary == 0 {
        return Ok(());
    }
    if boundary < SZ_4K as u64 - 1 {
        dev_err!(
            pdev,
            "seg_boundary {:#x}: below a page (4 KiB - 1)\n",
            boundary
        );
        return Err(EINVAL);
    }
    // SAFETY: As above.
    unsafe { pdev.dma_set_seg_boundary(boundary) }.inspect_err(|_| {
        dev_err!(
            pdev,
            "seg_boundary {:#x}: not of the form 2^n - 1\n",
            boundary
        );
    })
}

fn identify<'bound>(pdev: &'bound pci::Device<Bound>) -> Result<Arc<Engine<'bound>>> {
    let ctl = pdev.iomap_region_sized::<{ regs::CTL_SIZE }>(regs::CTL_BAR, c"conflux/ctl")?;
    let signature = read_ident64::<{ regs::SIGNATURE }>(&ctl);
    if signature != regs::SIGNATURE_VALUE {
        dev_info!(
            pdev,
            "probe: BAR2 signature {:#018x} is not \"CNFXACCL\": \
             a plain ivshmem device, not binding\n",
            signature
        );
        return Err(ENODEV);
    }
    let version = ctl.read32(regs::VERSION);
    if version >> 16 != regs::VERSION_MAJOR {
        dev_err!(
            pdev,
            "probe: device interface version {}.{} is not supported (needs {}.x)\n",
            version >> 16,
            version & 0xffff,
            regs::VERSION_MAJOR
        );
        return Err(ENODEV);
    }
    let info = DeviceInfo {
        version,
        caps: ctl.read32(regs::CAPS),
        vram_offset: read_ident64::<{ regs::VRAM_OFFSET }>(&ctl),
        vram_size: read_ident64::<{ regs::VRAM_SIZE }>(&ctl),
    };
    let bar_size = read_ident64::<{ regs::BAR_SIZE }>(&ctl);
    let bar_len = pdev.resource_len(regs::CTL_BAR)?;
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
    let doorbell = pdev.iomap_region_sized::<{ regs::DOORBELL_BAR_SIZE }>(
        regs::DOORBELL_BAR,
        c"conflux/doorbell",
    )?;
    Engine::new(pdev, doorbell, ctl, info)
}

impl<'bound> Hw<'bound> {
    /// CPU access to VRAM, to write page tables.
    pub(crate) fn vram_io(&self) -> Result<VramIo<'_>> {
        VramIo::new(self.engine.bar2(), self.info.vram_offset)
    }

    /// Zeroes all of VRAM that is not allocated.
    fn scrub_free(&self) -> Result {
        let free = self
            .vram
            .alloc(self.vram.avail(), Alignment::new::<SZ_4K>())?;
        self.scrub(free.iter().map(|b| (b.offset(), b.size())))
    }

    /// Sets up VRAM and the kernel's address space on a reset engine.
    fn new(pdev: &'bound pci::Device<Bound>, engine: Arc<Engine<'bound>>) -> Result<Self> {
        let info = engine.info();
        let vram = Vram::new(info.vram_size)?;
        let io = VramIo::new(engine.bar2(), info.vram_offset)?;
        let mut kernel_vm = PageTables::new(&vram, &io)?;
        kernel_vm.map(
            &vram,
            &io,
            KERNEL_VA_BASE,
            Target::Vram(0),
            info.vram_size,
            true,
        )?;
        // Set the device up as a peer-to-peer provider now, so that a failure shows at probe.
        Provider::of_bar(pdev, regs::CTL_BAR)?;
        Ok(Self {
            pdev,
            engine,
            info,
            vram,
            kernel_vm,
            exports: Arc::pin_init(ExportList::new(), GFP_KERNEL)?,
            imports: Arc::pin_init(ImportList::new(), GFP_KERNEL)?,
        })
    }

    /// Zeroes the VRAM ranges `(offset, len)` with the engine and waits for it.
    ///
    /// The wait is not interruptible: the memory is freed or handed out only after the engine
    /// wrote it, so that a late fill never overwrites data of its next user.
    pub(crate) fn scrub(&self, ranges: impl Iterator<Item = (u64, u64)>) -> Result {
        let mut commands = KVec::new();
        let mut last = None;
        let submitted = (|| -> Result {
            for (offset, len) in ranges {
                let mut done = 0;
                while done < len {
                    let piece = (len - done).min(regs::MAX_COMMAND_LEN);
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
                        last = Some(self.engine.submit(self.kernel_vm.root(), job)?);
                    }
                }
            }
            if !commands.is_empty() {
                let job = core::mem::take(&mut commands);
                last = Some(self.engine.submit(self.kernel_vm.root(), job)?);
            }
            Ok(())
        })();
        // Jobs complete in order: the last one's fence covers the others. It is waited for even
        // when a later submission failed, so that no fill outlives this call.
        if let Some(fence) = last {
            self.engine.wait(&fence, false)?;
            fence.status()?;
        }
        submitted
    }
}

impl pci::Driver for ConfluxDriver {
    type IdInfo = ();
    type Data<'bound> = Probed<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        try_pin_init!(Probed {
            engine: {
                pdev.enable_device_mem()?;
                pdev.set_master();
                let engine = identify(pdev)?;
                set_segment_limits(pdev)?;
                engine
            },
            vectors: pdev.alloc_irq_vectors(
                2,
                2,
                pci::IrqTypes::default().with(pci::IrqType::MsiX),
            )?,
            _completion <- {
                // SAFETY: `vectors` is initialised and pinned with the rest of `Probed`, which
                // lives until unbind; the handlers that borrow it are declared before it, so
                // they are dropped first.
                let vectors: &'bound pci::IrqVectorRegistration<'bound> =
                    unsafe { &*core::ptr::from_mut(vectors) };
                let request = vectors.index(regs::VECTOR_COMPLETION)?.into();
                // SAFETY: The registration is kept in the driver's bound data, never forgotten.
                unsafe {
                    irq::Registration::new(
                        request,
                        irq::Flags::TRIGGER_NONE,
                        c"conflux-completion",
                        Ok::<_, Error>(CompletionIrq(engine.clone())),
                    )
                }
            },
            _error <- {
                // SAFETY: As for `_completion`.
                let vectors: &'bound pci::IrqVectorRegistration<'bound> =
                    unsafe { &*core::ptr::from_mut(vectors) };
                let request = vectors.index(regs::VECTOR_ERROR)?.into();
                // SAFETY: The registration is kept in the driver's bound data, never forgotten.
                unsafe {
                    irq::ThreadedRegistration::new(
                        request,
                        irq::Flags::ONESHOT,
                        c"conflux-error",
                        Ok::<_, Error>(ErrorIrq(engine.clone())),
                    )
                }
            },
            _reg: {
                let hw = Hw::new(pdev, engine.clone())?;
                let info = hw.info;
                // Zero what an earlier driver or user left in VRAM; this also proves that the
                // engine runs jobs and signals their fences from the completion interrupt.
                hw.scrub_free()?;
                let drm = drm::UnregisteredDevice::<ConfluxDrm>::new(pdev, Ok(()))?;
                // SAFETY: The registration is kept in the driver's bound data and dropped at
                // unbind; it is never forgotten.
                let reg = unsafe { drm::Registration::new(pdev.as_ref(), drm, hw, 0)? };
                dev_info!(
                    pdev,
                    "Conflux {}.{}, {} MiB of VRAM at BAR2 + {:#x}, capabilities {:#x}\n",
                    info.version >> 16,
                    info.version & 0xffff,
                    info.vram_size >> 20,
                    info.vram_offset,
                    info.caps
                );
                reg
            },
        })
    }
}

const INFO: drm::DriverInfo = drm::DriverInfo {
    major: 0,
    minor: 1,
    patchlevel: 0,
    name: c"conflux",
    desc: c"Conflux accelerator",
};

#[vtable]
impl drm::Driver for ConfluxDrm {
    type Data = ();
    type RegistrationData<'a> = Hw<'a>;
    type File = File;
    type Object = gem::Object<Bo>;
    type ParentDevice<Ctx: DeviceContext> = pci::Device<Ctx>;

    const INFO: drm::DriverInfo = INFO;
    const FEAT_COMPUTE_ACCEL: bool = true;
    const FEAT_SYNCOBJ: bool = true;

    kernel::declare_drm_ioctls! {
        (CONFLUX_GET_INFO, drm_conflux_get_info, ioctl::RENDER_ALLOW, File::get_info),
        (CONFLUX_BO_CREATE, drm_conflux_bo_create, ioctl::RENDER_ALLOW, File::bo_create),
        (CONFLUX_VM_BIND, drm_conflux_vm_bind, ioctl::RENDER_ALLOW, File::vm_bind),
        (CONFLUX_SUBMIT, drm_conflux_submit, ioctl::RENDER_ALLOW, File::submit),
        (CONFLUX_WAIT, drm_conflux_wait, ioctl::RENDER_ALLOW, File::wait),
        (CONFLUX_BO_READ, drm_conflux_bo_rw, ioctl::RENDER_ALLOW, File::bo_read),
        (CONFLUX_BO_WRITE, drm_conflux_bo_rw, ioctl::RENDER_ALLOW, File::bo_write),
        (CONFLUX_BO_INFO, drm_conflux_bo_info, ioctl::RENDER_ALLOW, File::bo_info),
        (CONFLUX_VM_JOIN, drm_conflux_vm_join, ioctl::RENDER_ALLOW, File::vm_join),
        (CONFLUX_VM_PATH, drm_conflux_vm_path, ioctl::RENDER_ALLOW, File::vm_path),
    }
}
