// SPDX-License-Identifier: GPL-2.0

//! Sharing buffers between devices as dma-bufs (PRIME): export, import, and the path by which a
//! device reaches a buffer.
//!
//! A buffer of the device's own is exported with [`export::Export`] as its exporter. Importing
//! a dma-buf gives back the buffer itself when this device exported it, and otherwise a new
//! object that holds a dynamic attachment ([`gem::import`]). When the device is unbound, every
//! exported buffer is revoked before its memory goes.

pub(crate) mod export;

use kernel::{
    dma_buf::{
        DmaBuf,
        Exported, //
    },
    drm::{
        self,
        gem::BaseObject, //
    },
    page::PAGE_SIZE,
    prelude::*,
    sync::aref::ARef,
    uapi,
};

use crate::{
    driver::{
        ConfluxDrm,
        IoctlDevice,
        Object, //
    },
    gem::{
        import::Imported,
        memory::Memory,
        Contents, //
    },
    hw::DeviceData,
    mmu::address_space::AddressSpaces,
};

use export::Export;

/// This module, which exported buffers keep loaded.
const THIS_MODULE: &kernel::ThisModule =
    &<crate::LocalModule as kernel::ModuleMetadata>::THIS_MODULE;

/// Whether `a` and `b` are the same accel device.
fn same_device(a: &IoctlDevice, b: &IoctlDevice) -> bool {
    let (a, b): (&drm::Device<ConfluxDrm>, &drm::Device<ConfluxDrm>) = (a, b);
    core::ptr::eq(a, b)
}

/// Exports `obj`, a buffer of `dev`, for `DRM_IOCTL_PRIME_HANDLE_TO_FD`.
///
/// The core opens the buffer's file descriptor itself, with the flags of the request.
pub(crate) fn export(obj: &Object, dev: &IoctlDevice) -> Result<ARef<DmaBuf>> {
    DeviceData::with(dev, |_, data| {
        let placement = obj.placement();
        if placement != uapi::DRM_CONFLUX_BO_VRAM && placement != uapi::DRM_CONFLUX_BO_SYSTEM {
            dev_dbg!(
                data.pdev,
                "PRIME export: buffer with placement {:#x}: only VRAM and system memory\n",
                placement
            );
            return Err(EOPNOTSUPP);
        }
        if matches!(*obj.memory(), Memory::Lent(..)) {
            dev_dbg!(
                data.pdev,
                "PRIME export: a buffer of lent peer-to-peer memory is not exported\n"
            );
            return Err(EOPNOTSUPP);
        }
        // From now on an importer may hold the memory: a move tells the importers. Set before
        // the first importer can map, which takes the reservation lock that moves hold.
        obj.set_exported();
        let exported = Exported::export_in(
            Export::new(obj, dev),
            obj.size(),
            THIS_MODULE,
            &data.exports,
            GFP_KERNEL_ACCOUNT,
        )?;
        let buf = exported.buf();
        // SAFETY: `buf` was just exported from `obj`; the core installs its file descriptor
        // after this returns, so no one has mapped it.
        unsafe { obj.share_mappings(&buf) };
        Ok(buf)
    })
}

/// Imports `buf` into `dev`, for `DRM_IOCTL_PRIME_FD_TO_HANDLE`: the buffer itself when `dev`
/// exported it, else a new object attached to it.
pub(crate) fn import(dev: &IoctlDevice, buf: &DmaBuf) -> Result<ARef<Object>> {
    if let Some(export) = Exported::<Export>::exporter_of(buf, THIS_MODULE) {
        if same_device(&export.dev, dev) {
            return Ok(export.obj.clone());
        }
    }
    DeviceData::with(dev, |_, data| {
        let size = buf.size();
        if size == 0 || size % PAGE_SIZE != 0 {
            dev_dbg!(
                data.pdev,
                "PRIME import: a dma-buf of {:#x} bytes is not in whole pages\n",
                size
            );
            return Err(EINVAL);
        }
        let spaces = AddressSpaces::new()?;
        let imported = Imported::attach(dev, data, buf, spaces.clone()).inspect_err(|e| {
            dev_dbg!(
                data.pdev,
                "PRIME import: exporter {} refused the attachment: {:?}\n",
                buf.exporter_name(),
                e
            );
        })?;
        Object::new_imported(dev, buf, Contents::imported(imported, spaces))
            .map_err(crate::gem::create_error)
    })
}

/// `obj`, a buffer of `from`, as device `to` reaches it: `obj` itself on the same device, else
/// a buffer of `to` imported from it (or the buffer of `to` that `obj` was imported from).
pub(crate) fn for_device(
    obj: &Object,
    from: &IoctlDevice,
    to: &IoctlDevice,
) -> Result<ARef<Object>> {
    if same_device(from, to) {
        return Ok(obj.into());
    }
    match obj.imported() {
        Some(imp) => import(to, imp.buf()),
        None => import(to, &*export(obj, from)?),
    }
}

/// How the device reaches `obj`, a `DRM_CONFLUX_PATH_*`: for an imported buffer, asked of a
/// Conflux exporter, as the buffer can move (0 when the exporter is gone), and
/// [`uapi::DRM_CONFLUX_PATH_EXTERNAL`] for a buffer of another exporter.
pub(crate) fn path(obj: &Object) -> u32 {
    let Some(imp) = obj.imported() else {
        return obj.local_path();
    };
    match Exported::<Export>::exporter_of(imp.buf(), THIS_MODULE) {
        Some(export) => export.path_for(imp.device()).unwrap_or(0),
        None => uapi::DRM_CONFLUX_PATH_EXTERNAL,
    }
}
