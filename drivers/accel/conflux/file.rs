// SPDX-License-Identifier: GPL-2.0

//! An open file of a Conflux accel device, and its ioctls.

use kernel::{
    drm::{
        self,
        gem::{
            self,
            BaseObject, //
        },
        Registered, //
    },
    prelude::*,
    sizes::SZ_4K,
    uapi, //
};

use crate::{
    driver::{
        ConfluxDrm,
        Hw,
        KERNEL_VA_BASE,
        USER_VA_START, //
    },
    gem::Bo,
};

/// The accel device of a Conflux device.
pub(crate) type ConfluxDevice<Ctx = drm::Normal> = drm::Device<ConfluxDrm, Ctx>;

/// A client of the accel device.
pub(crate) struct File;

/// A DRM file of a Conflux accel device.
pub(crate) type DrmFile = drm::File<File>;

// The uAPI structures have the sizes the header documents, on both sides: userspace checks
// the same numbers.
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_get_info>() == 88);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bo_create>() == 16);

impl drm::file::DriverFile for File {
    type Driver = ConfluxDrm;

    fn open(_dev: &drm::Device<ConfluxDrm>) -> Result<Pin<KBox<Self>>> {
        Ok(KBox::new(Self, GFP_KERNEL)?.into())
    }
}

impl File {
    /// `DRM_IOCTL_CONFLUX_GET_INFO`.
    pub(crate) fn get_info(
        _dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_get_info,
        _file: &DrmFile,
    ) -> Result<u32> {
        if args.flags != 0 || args.pad != 0 {
            dev_dbg!(
                hw.pdev,
                "GET_INFO: flags {:#x}, pad {:#x}: must be 0\n",
                args.flags,
                args.pad
            );
            return Err(EINVAL);
        }
        let counters = hw.engine.counters()?;
        *args = uapi::drm_conflux_get_info {
            flags: 0,
            version: hw.info.version,
            caps: hw.info.caps,
            pad: 0,
            vram_size: hw.info.vram_size,
            vram_avail: hw.vram.avail(),
            va_start: USER_VA_START,
            va_end: KERNEL_VA_BASE,
            local_bytes: counters.local_bytes,
            p2p_bytes: counters.p2p_bytes,
            sysmem_bytes: counters.sysmem_bytes,
            commands: counters.commands,
            errors: counters.errors,
        };
        Ok(0)
    }

    /// `DRM_IOCTL_CONFLUX_BO_CREATE`.
    pub(crate) fn bo_create(
        dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_bo_create,
        file: &DrmFile,
    ) -> Result<u32> {
        let known = uapi::DRM_CONFLUX_BO_VRAM;
        if args.flags & !known != 0 || args.flags & uapi::DRM_CONFLUX_BO_VRAM == 0 {
            dev_dbg!(
                hw.pdev,
                "BO_CREATE: flags {:#x}: unknown or no placement\n",
                args.flags
            );
            return Err(EINVAL);
        }
        if args.handle != 0 {
            dev_dbg!(hw.pdev, "BO_CREATE: handle {}: must be 0\n", args.handle);
            return Err(EINVAL);
        }
        let page = SZ_4K as u64;
        let size = match args.size.checked_add(page - 1) {
            Some(s) if args.size != 0 => s & !(page - 1),
            _ => {
                dev_dbg!(hw.pdev, "BO_CREATE: size {:#x} is not valid\n", args.size);
                return Err(EINVAL);
            }
        };
        if size > hw.info.vram_size {
            dev_dbg!(hw.pdev, "BO_CREATE: size {:#x} exceeds VRAM\n", size);
            return Err(ENOSPC);
        }
        let vram = hw.vram.alloc_buffer(size).inspect_err(|e| {
            dev_dbg!(
                hw.pdev,
                "BO_CREATE: size {:#x}: {:?} ({:#x} bytes of VRAM available)\n",
                size,
                e,
                hw.vram.avail()
            );
        })?;
        hw.scrub(vram.iter().map(|b| (b.offset(), b.size())))?;
        let obj = gem::Object::<Bo>::new(dev, usize::try_from(size)?, vram)?;
        args.handle = obj.create_handle(file)?;
        args.size = size;
        Ok(0)
    }
}
