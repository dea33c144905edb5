// SPDX-License-Identifier: GPL-2.0

//! What a buffer imported from another device or exporter holds: its dynamic attachment.
//!
//! The attachment allows peer-to-peer addresses. It is mapped at the buffer's first bind, under
//! its reservation lock, and the table is kept; every address space that maps the buffer records
//! where. When the exporter invalidates the mappings, the page-table entries are cleared in
//! every such address space before the callback returns; the next job maps them again.

use kernel::{
    device::Device,
    dma_buf::{
        Attachment,
        DmaBuf,
        ImportAttachment,
        Importer, //
    },
    dma_resv::{
        DmaResv,
        ResvLocked, //
    },
    dma_segments::{
        DmaRange,
        SegmentLimits, //
    },
    page::PAGE_SIZE,
    prelude::*,
    scatterlist::SGTable,
    sync::{
        aref::ARef,
        Arc, //
    },
};

use crate::{
    driver::IoctlDevice,
    hw::DeviceData,
    mmu::address_space::AddressSpaces, //
};

/// The importer side of a buffer another device or exporter exported.
pub(crate) struct ImportNotify {
    dev: ARef<IoctlDevice>,
    /// The address spaces that map the buffer, the object's [`Bo::spaces`](super::Bo::spaces).
    spaces: Arc<AddressSpaces>,
}

impl Importer for ImportNotify {
    const ALLOW_PEER2PEER: bool = true;

    fn invalidate_mappings(&self, _attachment: &Attachment) {
        let cleared = DeviceData::with(&self.dev, |_, data| {
            self.spaces.invalidate(Some(&data.vram));
            Ok(())
        });
        if cleared.is_err() {
            // The device is unbound: its engine runs no job any more, and its tables went with
            // it. Record the invalidation all the same.
            self.spaces.invalidate(None);
        }
    }
}

/// The attachment of an imported buffer.
pub(crate) struct Imported {
    attachment: ImportAttachment<ImportNotify>,
}

impl Imported {
    /// Attaches `data`'s device, the bound device of `dev`, to `buf`; the entries of the
    /// address spaces in `spaces` are cleared when the exporter invalidates the mappings.
    pub(crate) fn attach(
        dev: &IoctlDevice,
        data: &DeviceData<'_>,
        buf: &DmaBuf,
        spaces: Arc<AddressSpaces>,
    ) -> Result<Self> {
        let notify = ImportNotify {
            dev: dev.into(),
            spaces,
        };
        let attachment = ImportAttachment::new_in(
            buf,
            data.pdev.as_ref(),
            notify,
            &data.imports,
            GFP_KERNEL_ACCOUNT,
        )?;
        Ok(Self { attachment })
    }

    /// The importing device.
    pub(crate) fn device(&self) -> &Device {
        self.attachment.attachment().device()
    }

    /// The buffer's table for `data`'s device, mapped at the first call and kept until the
    /// exporter invalidates it. A new table is checked: every entry must honour the device's
    /// segment limits and be whole pages, as the page tables need; [`EIO`] otherwise.
    pub(crate) fn table<'g>(
        &'g self,
        data: &DeviceData<'_>,
        lock: &'g impl ResvLocked,
    ) -> Result<&'g SGTable> {
        let fresh = !self.attachment.is_mapped();
        let table = self.attachment.held_mapping(lock).inspect_err(|e| {
            if data.log_allowed() {
                dev_info!(
                    data.pdev,
                    "PRIME import: exporter {} did not map a buffer of {:#x} bytes: {:?}\n",
                    self.buf().exporter_name(),
                    self.buf().size(),
                    e
                );
            }
        })?;
        if fresh {
            let limits = SegmentLimits::of_device(data.pdev.as_ref())?;
            check_segments(data, self.buf(), table, limits)?;
        }
        Ok(table)
    }

    /// Pins the buffer where it is for this device, under its reservation lock (held by
    /// `lock`): its exporter moves it for no one until [`Self::unpin`].
    pub(crate) fn pin(&self, lock: &impl ResvLocked) -> Result {
        self.attachment.pin(lock)
    }

    /// Unpins the buffer, under its reservation lock.
    pub(crate) fn unpin(&self, lock: &impl ResvLocked) -> Result {
        self.attachment.unpin(lock)
    }

    /// The dma-buf.
    pub(crate) fn buf(&self) -> &DmaBuf {
        self.attachment.buf()
    }

    /// The buffer's reservation object.
    pub(crate) fn resv(&self) -> &DmaResv {
        self.attachment.buf().resv()
    }
}

/// Checks that every entry of `table`, which the exporter of `buf` mapped, is within `limits`
/// and whole pages; [`EIO`] with the exporter and the offending entry in the log otherwise.
fn check_segments(
    data: &DeviceData<'_>,
    buf: &DmaBuf,
    table: &SGTable,
    limits: SegmentLimits,
) -> Result {
    // CAST: `PAGE_SIZE` fits in `u64`.
    let page = PAGE_SIZE as u64;
    for (i, sg) in table.iter().enumerate() {
        let ok = DmaRange::of_entry(sg)
            .is_ok_and(|r| limits.admits(&r) && (r.addr() | r.len()) % page == 0);
        if !ok {
            if !data.log_allowed() {
                return Err(EIO);
            }
            dev_err!(
                data.pdev,
                "PRIME import: exporter {} mapped segment {} ({:#x}, {:#x} bytes), \
                 not whole pages within {:?}\n",
                buf.exporter_name(),
                i,
                sg.dma_address(),
                sg.dma_len(),
                limits
            );
            return Err(EIO);
        }
    }
    Ok(())
}
