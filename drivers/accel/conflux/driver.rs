// SPDX-License-Identifier: GPL-2.0

//! PCI driver for the Conflux accelerator.
//!
//! The device is exposed through QEMU's ivshmem-doorbell function (`1af4:1110`). Until the
//! device interface is specified, probe only reports what it found and declines to bind, so
//! that plain ivshmem devices stay free for other drivers.

use kernel::{
    device::Core,
    pci,
    prelude::*, //
};

/// The Conflux PCI driver.
pub(crate) struct ConfluxDriver;

kernel::pci_device_table!(
    PCI_TABLE,
    <ConfluxDriver as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1110),
        ()
    )]
);

impl pci::Driver for ConfluxDriver {
    type IdInfo = ();
    type Data<'bound> = ();

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        dev_info!(
            pdev,
            "ivshmem-doorbell device ({}, {:#06x}): no Conflux interface yet, not binding\n",
            pdev.vendor_id(),
            pdev.device_id()
        );
        Err::<(), Error>(ENODEV)
    }
}
