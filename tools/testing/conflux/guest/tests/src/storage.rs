// SPDX-License-Identifier: GPL-2.0

//! Storage straight into accelerator memory: with the driver loaded with `p2pmem_mib`, each
//! device publishes part of its VRAM as peer-to-peer memory with `struct page`s; userspace maps
//! it through `p2pmem/allocate` in sysfs, and `O_DIRECT` reads and writes of the rig's NVMe
//! namespace go through the kernel's block layer straight into and out of it, where the PCIe
//! topology has a route. The NVMe controller with a controller memory buffer is the control:
//! its own peer-to-peer memory, which the kernel publishes without Conflux.

use conflux::{
    storage::{
        nvme_namespace, nvme_pci, open_direct, p2pmem, p2pmem_attr, read_into, system_buffer,
        write_from,
    },
    Device, Error,
};

use crate::{
    common::{first_diff, io_err, mapped, pattern, MIB},
    Tally,
};

/// Bytes each test moves.
const LEN: usize = 4 * MIB as usize;

/// Direct I/O between the NVMe namespace `ns` and the peer-to-peer memory of `pci`: a write
/// from it and a read into it, checked against system memory, or the error where there is no
/// route (`route` false).
fn direct_io(
    t: &mut Tally,
    what: &str,
    ns: &std::path::Path,
    pci: &str,
    route: bool,
    seed: u8,
) -> Result<(), Error> {
    let disk = open_direct(ns)?;
    let nsname = ns.display().to_string();
    let p2p = p2pmem(pci, LEN)?;
    let sys = system_buffer(LEN)?;
    let a = pattern(LEN, seed);
    p2p.write(0, &a);
    let wrote = write_from(&disk, &p2p, 0);
    let b = pattern(LEN, seed.wrapping_add(1));
    sys.write(0, &b);
    write_from(&disk, &sys, LEN as u64).map_err(io_err(&nsname, "pwrite (O_DIRECT)"))?;
    let read = read_into(&disk, &p2p, LEN as u64);
    if !route {
        t.check(
            &format!("{what}: without a peer-to-peer route, direct I/O is refused with EINVAL"),
            matches!(&wrote, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
                && matches!(&read, Err(e) if e.raw_os_error() == Some(libc::EINVAL)),
            format!("write {wrote:?}, read {read:?}"),
        );
        return Ok(());
    }
    read_into(&disk, &sys, 0).map_err(io_err(&nsname, "pread (O_DIRECT)"))?;
    let on_disk = mapped(&sys);
    let in_p2p = mapped(&p2p);
    t.check(
        &format!("{what}: O_DIRECT writes from peer-to-peer memory and reads into it"),
        wrote.is_ok() && read.is_ok() && on_disk == a && in_p2p == b,
        format!(
            "write {wrote:?}, read {read:?}; the disk differs at {:?}, the memory at {:?}",
            first_diff(&on_disk, &a),
            first_diff(&in_p2p, &b)
        ),
    );
    Ok(())
}

/// Every storage test: `zen` for the rig whose host bridge routes peer-to-peer traffic.
pub(crate) fn test_storage(t: &mut Tally, zen: bool) -> Result<(), Error> {
    let nvme0 = nvme_namespace("cfxnvme0")?;
    let nvme1 = nvme_namespace("cfxnvme1")?;
    let devices: Vec<Device> = conflux::devices()
        .iter()
        .map(Device::open)
        .collect::<Result<_, _>>()?;
    for (i, dev) in devices.iter().enumerate() {
        let name = dev.path().display().to_string();
        let Some(pci) = dev.pci_address() else {
            t.check(&format!("{name}: PCI address"), false, "not found in sysfs");
            continue;
        };
        let size = p2pmem_attr(&pci, "size");
        let published = p2pmem_attr(&pci, "published");
        t.check(
            &format!("{name}: 16 MiB of VRAM published as peer-to-peer memory"),
            size == Some(16 * MIB) && published == Some(1),
            format!("p2pmem size {size:?}, published {published:?}"),
        );
        // The first three devices share the switch with nvme0; the fourth is on a root port,
        // reached through the host bridge on the Zen rig only.
        let route = i < 3 || zen;
        direct_io(
            t,
            &format!("{} and {name}", nvme0.display()),
            &nvme0,
            &pci,
            route,
            141 + i as u8,
        )?;
    }
    // The control: the NVMe controller's own memory buffer, which Conflux plays no part in.
    let cmb = nvme_pci(&nvme1)?;
    direct_io(
        t,
        &format!("{} and its controller memory buffer", nvme1.display()),
        &nvme1,
        &cmb,
        true,
        151,
    )?;
    direct_io(
        t,
        &format!(
            "{} and the controller memory buffer of {}",
            nvme0.display(),
            nvme1.display()
        ),
        &nvme0,
        &cmb,
        zen,
        153,
    )?;
    Ok(())
}
