// SPDX-License-Identifier: GPL-2.0

//! Storage straight into accelerator memory: with the driver loaded with `p2pmem_mib`, each
//! device publishes part of its VRAM as peer-to-peer memory with `struct page`s; userspace maps
//! it through `p2pmem/allocate` in sysfs, and `O_DIRECT` reads and writes of the rig's NVMe
//! namespace go through the kernel's block layer straight into and out of it, where the PCIe
//! topology has a route. `DRM_IOCTL_CONFLUX_BO_P2PMEM` makes a buffer of such a mapping, and the
//! device's jobs check what the block layer put there and write what goes back to the disk.
//! The NVMe controller with a controller memory buffer is the control: its own peer-to-peer
//! memory, which the kernel publishes without Conflux.

use std::fs::File;

use conflux::{
    storage::{
        nvme_namespace, nvme_pci, open_direct, p2pmem, p2pmem_attr, read_into, system_buffer,
        write_from,
    },
    uapi, Device, Error, Mapping,
};

use crate::{
    alloc_walk::test_p2pmem_walk,
    common::{copy, first_diff, io_err, mapped, pattern, read_all, MIB},
    unbind::{driver_sysfs, node_of},
    Tally,
};

/// Bytes each test moves.
const LEN: usize = 4 * MIB as usize;

/// Direct I/O between the NVMe namespace `ns` and the peer-to-peer memory of `pci`: a write
/// from it and a read into it, checked against system memory, or the error where there is no
/// route (`route` false). When the memory is the VRAM of Conflux device `dev`, its jobs check it
/// too ([`jobs_see_the_disk`]).
fn direct_io(
    t: &mut Tally,
    what: &str,
    ns: &std::path::Path,
    (pci, dev): (&str, Option<&Device>),
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
    match dev {
        Some(dev) => jobs_see_the_disk(t, what, dev, (&disk, &nsname), (&p2p, &sys), &b, seed),
        None => Ok(()),
    }
}

/// Checks with jobs of `dev` that its peer-to-peer memory `p2p` holds `b`, what the disk's last
/// direct read put there, and that what a job writes there goes to the disk by direct I/O (read
/// back through `sys`).
fn jobs_see_the_disk(
    t: &mut Tally,
    what: &str,
    dev: &Device,
    (disk, nsname): (&File, &str),
    (p2p, sys): (&Mapping, &Mapping),
    b: &[u8],
    seed: u8,
) -> Result<(), Error> {
    let len = LEN as u64;
    let lent = dev.bo_p2pmem(p2p.as_ptr(), LEN)?;
    let info = dev.bo_info(lent.handle)?;
    t.check(
        &format!("{what}: a buffer of the mapping is in VRAM, reached locally"),
        info.placement == uapi::DRM_CONFLUX_BO_VRAM && info.path == uapi::DRM_CONFLUX_PATH_LOCAL,
        format!("placement {:#x}, path {}", info.placement, info.path),
    );
    let out = dev.bo_create(len)?;
    copy(dev, lent.handle, out.handle, len)?;
    let got = read_all(dev, out.handle, len)?;
    t.check(
        &format!("{what}: a job copies what the NVMe read put in VRAM"),
        got == b,
        format!("the copy differs at {:?}", first_diff(&got, b)),
    );
    // A job writes the memory; the disk takes it from there.
    let c = pattern(LEN, seed.wrapping_add(2));
    dev.write(out.handle, 0, &c)?;
    copy(dev, out.handle, lent.handle, len)?;
    write_from(disk, p2p, 2 * len).map_err(io_err(nsname, "pwrite (O_DIRECT)"))?;
    read_into(disk, sys, 2 * len).map_err(io_err(nsname, "pread (O_DIRECT)"))?;
    let on_disk = mapped(sys);
    t.check(
        &format!("{what}: what a job wrote in VRAM goes to the disk by O_DIRECT"),
        on_disk == c,
        format!("the disk differs at {:?}", first_diff(&on_disk, &c)),
    );
    Ok(())
}

/// Every documented error of `DRM_IOCTL_CONFLUX_BO_P2PMEM` on `dev` (PCI address `pci`), whose
/// peer-to-peer memory is 16 MiB; `other` is another device's PCI address.
fn bo_p2pmem_errors(t: &mut Tally, dev: &Device, pci: &str, other: &str) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let p2p = p2pmem(pci, 2 * MIB as usize)?;
    let theirs = p2pmem(other, 2 * MIB as usize)?;
    let sys = system_buffer(2 * MIB as usize)?;
    let vram = dev.bo_create(2 * MIB)?;
    let bo_map = dev.map(vram.handle)?;
    let addr = p2p.as_ptr() as u64;
    let args = |addr: u64, size: u64, flags: u32, handle: u32| uapi::drm_conflux_bo_p2pmem {
        addr,
        size,
        flags,
        handle,
    };
    for (what, mut a, errno) in [
        ("unknown flag 0x1", args(addr, 4096, 1, 0), libc::EINVAL),
        ("a non-zero handle", args(addr, 4096, 0, 7), libc::EINVAL),
        (
            "an unaligned address",
            args(addr + 8, 4096, 0, 0),
            libc::EINVAL,
        ),
        ("size 0", args(addr, 0, 0, 0), libc::EINVAL),
        ("an unaligned size", args(addr, 4097, 0, 0), libc::EINVAL),
        (
            "more than is published",
            args(addr, 32 * MIB, 0, 0),
            libc::EINVAL,
        ),
        ("an unmapped address", args(4096, 4096, 0, 0), libc::EFAULT),
        (
            "a Conflux buffer's mmap (PFNMAP)",
            args(bo_map.as_ptr() as u64, 4096, 0, 0),
            libc::EFAULT,
        ),
        (
            "system memory",
            args(sys.as_ptr() as u64, 2 * MIB, 0, 0),
            libc::EXDEV,
        ),
        (
            "another device's peer-to-peer memory",
            args(theirs.as_ptr() as u64, 2 * MIB, 0, 0),
            libc::EXDEV,
        ),
    ] {
        t.errno(
            &format!("{name}: BO_P2PMEM of {what}"),
            dev.bo_p2pmem_raw(&mut a),
            errno,
        );
    }
    // A lent buffer is not exported: its VRAM is userspace's, not the driver's to move.
    let lent = dev.bo_p2pmem(p2p.as_ptr(), 2 * MIB as usize)?;
    t.errno(
        &format!("{name}: PRIME export of a buffer of lent peer-to-peer memory"),
        dev.export(lent.handle),
        libc::EOPNOTSUPP,
    );
    // The pins keep the memory the buffer's once the mapping is gone: a job still reads it.
    let a = pattern(2 * MIB as usize, 77);
    p2p.write(0, &a);
    drop(p2p);
    let again = p2pmem(pci, 2 * MIB as usize)?;
    again.write(0, &pattern(2 * MIB as usize, 78));
    let out = dev.bo_create(2 * MIB)?;
    copy(dev, lent.handle, out.handle, 2 * MIB)?;
    let got = read_all(dev, out.handle, 2 * MIB)?;
    t.check(
        &format!("{name}: BO_P2PMEM: the buffer keeps its memory after munmap, not lent again"),
        got == a,
        format!("the copy differs at {:?}", first_diff(&got, &a)),
    );
    test_p2pmem_walk(t, dev, again.as_ptr() as u64, 2 * MIB)
}

/// The unbind of the device `path` (PCI address `pci`) while a buffer holds pins of its
/// peer-to-peer memory and a process maps it: the unbind drops the pins and completes, the
/// buffer's calls fail, and the device binds again with its memory published.
fn unbind_with_lent_buffer(t: &mut Tally, path: &std::path::Path, pci: &str) -> Result<(), Error> {
    let name = path.display().to_string();
    let dev = Device::open(path)?;
    let p2p = p2pmem(pci, 2 * MIB as usize)?;
    let lent = dev.bo_p2pmem(p2p.as_ptr(), 2 * MIB as usize)?;
    driver_sysfs(pci, "unbind")?;
    let mut buf = vec![0u8; 4096];
    let read = dev.read(lent.handle, 0, &mut buf);
    t.check(
        &format!("{name}: unbound while a buffer holds its peer-to-peer memory; reads then fail"),
        read.as_ref()
            .is_err_and(|e| e.errno() == Some(libc::ENODEV)),
        format!("BO_READ after the unbind: {read:?}"),
    );
    // The handle goes with the file: GEM_CLOSE of an unbound device fails.
    lent.into_handle();
    drop(p2p);
    drop(dev);
    driver_sysfs(pci, "bind")?;
    let size = p2pmem_attr(pci, "size");
    t.check(
        &format!("{name}: bound again, with its peer-to-peer memory published"),
        node_of(pci).is_some() && size == Some(16 * MIB),
        format!("node {:?}, p2pmem size {size:?}", node_of(pci)),
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
            (&pci, Some(dev)),
            route,
            141 + i as u8,
        )?;
    }
    let pcis: Vec<String> = devices.iter().filter_map(Device::pci_address).collect();
    if let ([first, second, ..], [dev, ..]) = (pcis.as_slice(), devices.as_slice()) {
        bo_p2pmem_errors(t, dev, first, second)?;
    }
    if let (Some(pci), Some(dev)) = (pcis.last(), devices.last()) {
        let path = dev.path().to_path_buf();
        drop(devices);
        unbind_with_lent_buffer(t, &path, pci)?;
    }
    // The control: the NVMe controller's own memory buffer, which Conflux plays no part in.
    let cmb = nvme_pci(&nvme1)?;
    direct_io(
        t,
        &format!("{} and its controller memory buffer", nvme1.display()),
        &nvme1,
        (&cmb, None),
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
        (&cmb, None),
        zen,
        153,
    )?;
    Ok(())
}
