// SPDX-License-Identifier: GPL-2.0

//! The PCI and DRM accel driver: probe, the accel device's ioctls and object hooks, and the
//! aliases the driver's files share.

use kernel::{
    device::{
        Core,
        DeviceContext, //
    },
    dma::Device as _,
    dma_buf::DmaBuf,
    drm::{
        self,
        gem::{
            self,
            BaseObject, //
        },
        ioctl, //
    },
    irq,
    pci::{
        self,
        p2pdma, //
    },
    prelude::*,
    sizes::SZ_4K,
    sync::aref::ARef,
};

use crate::{
    engine::{
        CompletionIrq,
        ErrorIrq, //
    },
    file::File,
    gem::{
        Bo,
        Contents, //
    },
    hw::{
        identify,
        DeviceData,
        Identified, //
    },
    ioctl::{
        self as uapi_ioctl,
        bo,
        job,
        userq,
        vm, //
    },
    prime,
    regs, //
};

/// The Conflux PCI driver.
pub(crate) struct ConfluxDriver;

/// The Conflux DRM accel driver.
pub(crate) struct ConfluxDrm;

/// The accel device of a Conflux device.
pub(crate) type ConfluxDevice<Ctx = drm::Normal> = drm::Device<ConfluxDrm, Ctx>;
/// The accel device, as ioctls and object hooks see it.
pub(crate) type IoctlDevice = drm::Device<ConfluxDrm, drm::Ioctl>;
/// A DRM file of a Conflux accel device.
pub(crate) type DrmFile = drm::File<File>;
/// The GEM object type of the driver.
pub(crate) type Object = gem::Object<Bo>;

/// What the PCI driver keeps while bound.
///
/// Fields drop in declaration order: the accel device goes first, so no ioctl runs any more;
/// then the interrupt handlers; the vectors they borrow go last, and the engine after them.
#[pin_data]
pub(crate) struct Probed<'bound> {
    _reg: drm::Registration<'bound, ConfluxDrm>,
    #[pin]
    _completion: irq::Registration<'bound, CompletionIrq<'bound>>,
    #[pin]
    _error: irq::ThreadedRegistration<'bound, ErrorIrq<'bound>>,
    vectors: pci::IrqVectorRegistration<'bound>,
    hw: Identified<'bound>,
}

kernel::pci_device_table!(
    PCI_TABLE,
    <ConfluxDriver as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1110),
        ()
    )]
);

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

impl pci::Driver for ConfluxDriver {
    type IdInfo = ();
    type Data<'bound> = Probed<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        try_pin_init!(Probed {
            hw: {
                pdev.enable_device_mem()?;
                pdev.set_master();
                let hw = identify(pdev)?;
                set_segment_limits(pdev)?;
                hw
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
                        Ok::<_, Error>(CompletionIrq(hw.engine.clone())),
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
                        Ok::<_, Error>(ErrorIrq(hw.engine.clone())),
                    )
                }
            },
            _reg: {
                // Zeroing VRAM proves that the engine runs jobs and signals their fences from
                // the completion interrupt, which is registered now.
                let mut data = DeviceData::new(pdev, hw)?;
                let info = data.info;
                let p2pmem = crate::module_parameters::p2pmem_mib.value();
                if p2pmem > 0 {
                    let offset = data.take_p2pmem(p2pmem)?;
                    let size = u64::from(p2pmem) << 20;
                    p2pdma::publish_pages(pdev, regs::CTL_BAR, offset, size).inspect_err(|e| {
                        dev_err!(
                            pdev,
                            "p2pmem_mib {}: publishing BAR2 {:#x}..{:#x} failed: {:?}\n",
                            p2pmem,
                            offset,
                            offset + size,
                            e
                        );
                    })?;
                    dev_info!(
                        pdev,
                        "{} MiB of VRAM published as peer-to-peer memory at BAR2 + {:#x}\n",
                        p2pmem,
                        offset
                    );
                }
                data.add_window_tables()?;
                let drm = drm::UnregisteredDevice::<ConfluxDrm>::new(pdev, Ok(()))?;
                // SAFETY: The registration is kept in the driver's bound data and dropped at
                // unbind; it is never forgotten.
                let reg = unsafe { drm::Registration::new(pdev.as_ref(), drm, data, 0)? };
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

    fn unbind<'bound>(_pdev: &'bound pci::Device<Core<'_>>, this: Pin<&Probed<'bound>>) {
        // The unbind waits for the calls in flight: the waits for user queues end now.
        this.hw.engine.close_queues();
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
    type RegistrationData<'a> = DeviceData<'a>;
    type File = File;
    type Object = Object;
    type ParentDevice<Ctx: DeviceContext> = pci::Device<Ctx>;

    const INFO: drm::DriverInfo = INFO;
    const FEAT_COMPUTE_ACCEL: bool = true;
    const FEAT_SYNCOBJ: bool = true;
    const FEAT_SYNCOBJ_TIMELINE: bool = true;

    kernel::declare_drm_ioctls! {
        (CONFLUX_GET_INFO, drm_conflux_get_info, ioctl::RENDER_ALLOW, uapi_ioctl::get_info),
        (CONFLUX_BO_CREATE, drm_conflux_bo_create, ioctl::RENDER_ALLOW, bo::create),
        (CONFLUX_VM_BIND, drm_conflux_vm_bind, ioctl::RENDER_ALLOW, vm::bind),
        (CONFLUX_SUBMIT, drm_conflux_submit, ioctl::RENDER_ALLOW, job::submit),
        (CONFLUX_WAIT, drm_conflux_wait, ioctl::RENDER_ALLOW, job::wait),
        (CONFLUX_BO_READ, drm_conflux_bo_rw, ioctl::RENDER_ALLOW, bo::read),
        (CONFLUX_BO_WRITE, drm_conflux_bo_rw, ioctl::RENDER_ALLOW, bo::write),
        (CONFLUX_BO_INFO, drm_conflux_bo_info, ioctl::RENDER_ALLOW, bo::info),
        (CONFLUX_VM_JOIN, drm_conflux_vm_join, ioctl::RENDER_ALLOW, vm::join),
        (CONFLUX_VM_PATH, drm_conflux_vm_path, ioctl::RENDER_ALLOW, vm::path),
        (CONFLUX_BO_P2PMEM, drm_conflux_bo_p2pmem, ioctl::RENDER_ALLOW, bo::p2pmem),
        (CONFLUX_BIND_QUEUE_CREATE, drm_conflux_bind_queue_create, ioctl::RENDER_ALLOW,
            vm::queue_create),
        (CONFLUX_BIND_QUEUE_DESTROY, drm_conflux_bind_queue_destroy, ioctl::RENDER_ALLOW,
            vm::queue_destroy),
        (CONFLUX_VM_CREATE, drm_conflux_vm_create, ioctl::RENDER_ALLOW, vm::create),
        (CONFLUX_USERQ_CREATE, drm_conflux_userq_create, ioctl::RENDER_ALLOW, userq::create),
        (CONFLUX_USERQ_DESTROY, drm_conflux_userq_destroy, ioctl::RENDER_ALLOW,
            userq::destroy),
        (CONFLUX_WAIT_USER_FENCE, drm_conflux_wait_user_fence, ioctl::RENDER_ALLOW,
            userq::wait_user_fence),
    }
}

#[vtable]
impl gem::DriverObject for Bo {
    type Driver = ConfluxDrm;
    type Args = Contents;

    fn new(
        _dev: &drm::Device<ConfluxDrm>,
        size: usize,
        contents: Contents,
    ) -> impl PinInit<Self, Error> {
        Bo::new(contents, size)
    }

    fn fault(obj: &Object, dev: &IoctlDevice, fault: &gem::Fault<'_>) -> Result {
        // Once the device is unplugged, its mappings are emptied and stay empty.
        DeviceData::with(dev, |_, data| {
            if obj.is_doorbell() {
                return obj.fault_doorbell(fault);
            }
            obj.fault_in(obj.size(), obj.dma_resv(), &data.vram, fault)
        })
    }

    fn export(obj: &Object, dev: &IoctlDevice, _flags: u32) -> Result<ARef<DmaBuf>> {
        prime::export(obj, dev)
    }

    fn import(dev: &IoctlDevice, buf: &DmaBuf) -> Result<ARef<Object>> {
        prime::import(dev, buf)
    }
}
