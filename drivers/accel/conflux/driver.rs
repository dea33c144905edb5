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
    drm::{
        self,
        gem, //
    },
    io::Io,
    pci,
    prelude::*,
    time::{
        delay::fsleep,
        Delta,
        Instant,
        Monotonic, //
    },
};

use crate::{
    file::File,
    gem::Bo,
    regs, //
};

/// How long a reset may take. The device model may run under an emulator without
/// acceleration, where a doorbell takes milliseconds.
const RESET_TIMEOUT: Delta = Delta::from_secs(5);

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

/// A bound device's hardware: its mapped BARs.
pub(crate) struct Hw<'bound> {
    pdev: &'bound pci::Device<Bound>,
    doorbell: pci::Bar<'bound, { regs::DOORBELL_BAR_SIZE }>,
    ctl: pci::Bar<'bound, { regs::CTL_SIZE }>,
    info: DeviceInfo,
}

/// What the PCI driver keeps while bound: the accel device's registration.
pub(crate) struct Probed<'bound> {
    _reg: drm::Registration<'bound, ConfluxDrm>,
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

impl<'bound> Hw<'bound> {
    /// Maps the BARs and checks that the function is a Conflux device this driver supports.
    fn new(pdev: &'bound pci::Device<Bound>) -> Result<Self> {
        let ctl = pdev.iomap_region_sized::<{ regs::CTL_SIZE }>(regs::CTL_BAR, c"conflux/ctl")?;
        let signature = read_ident64::<{ regs::SIGNATURE }>(&ctl);
        if signature != regs::SIGNATURE_VALUE {
            dev_info!(
                pdev,
                "probe: BAR2 signature {:#018x} is not \"CNFXACCL\": a plain ivshmem device, not binding\n",
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
        if bar_size != bar_len || !vram_fits {
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
        Ok(Self {
            pdev,
            doorbell,
            ctl,
            info,
        })
    }

    /// Resets the device: every queued command is discarded and the error record cleared.
    fn reset(&self) -> Result {
        self.ctl.write32(regs::CONTROL_RESET, regs::CONTROL);
        self.doorbell.write32(0, regs::DOORBELL);
        let start = Instant::<Monotonic>::now();
        loop {
            let control = self.ctl.read32(regs::CONTROL);
            let status = self.ctl.read32(regs::STATUS);
            if control == 0 && status == regs::STATUS_READY {
                return Ok(());
            }
            if start.elapsed() > RESET_TIMEOUT {
                dev_err!(
                    self.pdev,
                    "reset: not done after {} ms (CONTROL {:#x}, STATUS {})\n",
                    RESET_TIMEOUT.as_millis(),
                    control,
                    status
                );
                return Err(ETIMEDOUT);
            }
            fsleep(Delta::from_millis(1));
        }
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
        pdev.enable_device_mem()?;
        pdev.set_master();
        let hw = Hw::new(pdev)?;
        hw.reset()?;
        let info = hw.info;
        let drm = drm::UnregisteredDevice::<ConfluxDrm>::new(pdev, Ok(()))?;
        // SAFETY: The registration is kept in the driver's bound data and dropped at unbind; it
        // is never forgotten.
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
        Ok(Probed { _reg: reg })
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
    const IOCTLS: &'static [drm::ioctl::DrmIoctlDescriptor] = &[];
    const FEAT_COMPUTE_ACCEL: bool = true;
}
