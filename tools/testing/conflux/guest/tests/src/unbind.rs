// SPDX-License-Identifier: GPL-2.0

//! Unbinding a device in use: with a buffer of its own file in VRAM, and with a buffer
//! peers import; and binding a device whose ring registers are wrong.

use std::{os::fd::AsFd, path::PathBuf};

use conflux::{copy_cmd, fill_cmd, map_op, storage::udmabuf, uapi, Cmd, Device, Error, Mapping};
use conflux_device::regs::{ctrl, slot};

use crate::{
    common::{first_diff, io_err, pattern, prime_reach, MIB, VA},
    faults::Switches,
    Tally,
};

/// Writes `pci` to the conflux driver's sysfs `file` (`bind` or `unbind`).
pub(crate) fn driver_sysfs(pci: &str, file: &str) -> Result<(), Error> {
    let path = format!("/sys/bus/pci/drivers/conflux/{file}");
    std::fs::write(&path, pci).map_err(io_err(pci, &format!("write {path}")))
}

/// Whether touching the first byte of `m` in a child process raises SIGBUS.
fn touch_raises_sigbus(m: &Mapping) -> bool {
    // SAFETY: The child only reads one byte and exits; the test process has one thread.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: The mapping is still mapped in the child, whatever its pages are.
            let _ = unsafe { std::ptr::read_volatile(m.as_ptr()) };
            // SAFETY: Exits the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => {
            let mut status = 0;
            // SAFETY: Waits for the child just forked.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS
        }
        _ => false,
    }
}

/// Unbinds the device at `path` from the driver while a file of it is open with a buffer in
/// VRAM, mapped in its VM and used by jobs in flight, then binds it again: the file sees
/// ENODEV, closing it frees the buffer and the VM after the device is gone, and the device
/// comes back with all of its VRAM.
pub(crate) fn unbind_with_buffer(t: &mut Tally, path: &std::path::Path) -> Result<(), Error> {
    let dev = Device::open(path)?;
    let name = path.display().to_string();
    let Some(pci) = dev.pci_address() else {
        t.check(&format!("{name}: PCI address"), false, "not found in sysfs");
        return Ok(());
    };
    let avail = dev.info()?.vram_avail;
    let handle = dev.bo_create(8 * MIB)?.into_handle();
    let sys_handle = dev
        .bo_create_in(MIB, uapi::DRM_CONFLUX_BO_SYSTEM)?
        .into_handle();
    let vram_map = dev.map(handle)?;
    let sys_map = dev.map(sys_handle)?;
    sys_map.write(0, &[1, 2, 3, 4]);
    // The file also has a VM with the buffer mapped twice, an imported udmabuf mapped for the
    // device, and a job of 512 MiB of copies in flight: unbinding cancels or completes it, and
    // nothing of it stays (no DMA mapping of the device is left behind: the rig's kernel
    // checks that at the unbind).
    let (_memfd, udmabuf) =
        udmabuf(MIB).map_err(io_err("/dev/udmabuf", "UDMABUF_CREATE of a 1 MiB memfd"))?;
    let imported = dev.import(udmabuf.as_fd())?.into_handle();
    dev.vm_bind(&[
        map_op(handle, 0, VA, 4 * MIB, false),
        map_op(handle, 4 * MIB, 2 * VA, 4 * MIB, false),
        map_op(imported, 0, 4 * VA, MIB, false),
    ])?;
    let job = dev.submit(&[copy_cmd(4 * VA, VA, MIB)], 0, 0)?;
    dev.wait(job, -1)?;
    let long: Vec<Cmd> = (0..64).map(|_| copy_cmd(VA, 2 * VA, 4 * MIB)).collect();
    let mut job = 0;
    for _ in 0..2 {
        job = dev.submit(&long, 0, 0)?;
    }
    let sysfs = |file: &str| driver_sysfs(&pci, file);
    sysfs("unbind")?;
    t.errno(
        &format!("{name}: GET_INFO after its device was unbound, with buffer {handle} open"),
        dev.info(),
        libc::ENODEV,
    );
    t.errno(
        &format!("{name}: WAIT on job {job} after the unbind"),
        dev.wait(job, -1),
        libc::ENODEV,
    );
    t.check(
        &format!("{name}: touching an mmap() of VRAM after the unbind raises SIGBUS"),
        touch_raises_sigbus(&vram_map),
        "in a child process",
    );
    t.check(
        &format!("{name}: touching an mmap() of system memory after the unbind raises SIGBUS"),
        touch_raises_sigbus(&sys_map),
        "in a child process",
    );
    drop((vram_map, sys_map));
    // Closing the file frees the buffer's VRAM and the VM's tables into the allocator of a
    // device that is gone.
    drop(dev);
    sysfs("bind")?;
    let back = conflux::devices()
        .into_iter()
        .filter_map(|p| Device::open(p).ok())
        .find(|d| d.pci_address().as_deref() == Some(pci.as_str()));
    match back {
        Some(d) => {
            let info = d.info()?;
            t.check(
                &format!("{pci}: bound again, with all of its VRAM available"),
                info.vram_avail == avail,
                format!("{} available, {} before", info.vram_avail, avail),
            );
        }
        None => t.check(&format!("{pci}: bound again"), false, "no accel node"),
    }
    Ok(())
}

/// Unbinds a device whose VRAM buffer two peers import while their jobs copy from it: the jobs
/// in flight complete with their data, later jobs on the buffer fail, the peers keep working,
/// and the device comes back with all of its VRAM.
pub(crate) fn revoke_while_peers_copy(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    let exporter = Device::open(&paths[1])?;
    let ename = exporter.path().display().to_string();
    let Some(pci) = exporter.pci_address() else {
        t.check(
            &format!("{ename}: PCI address"),
            false,
            "not found in sysfs",
        );
        return Ok(());
    };
    let avail = exporter.info()?.vram_avail;
    let peers = [Device::open(&paths[0])?, Device::open(&paths[2])?];
    for p in &peers {
        if let Err(errno) = prime_reach(&exporter, p)? {
            t.check(
                &format!("{}: reaches {ename} by P2P", p.path().display()),
                false,
                format!("errno {errno}"),
            );
            return Ok(());
        }
    }
    let len = 4 * MIB;
    let data = pattern(len as usize, 23);
    let x = exporter.bo_create(len)?.into_handle();
    exporter.write(x, 0, &data)?;
    let fd = exporter.export(x)?;
    let long: Vec<Cmd> = (0..64).map(|_| copy_cmd(VA, 2 * VA, len)).collect();
    let mut jobs = Vec::new();
    let mut dsts = Vec::new();
    for p in &peers {
        let imported = p.import(fd.0.as_fd())?.into_handle();
        let dst = p.bo_create(len)?.into_handle();
        p.vm_bind(&[
            map_op(imported, 0, VA, len, true),
            map_op(dst, 0, 2 * VA, len, false),
        ])?;
        let mut mine = Vec::new();
        for _ in 0..2 {
            mine.push(p.submit(&long, 0, 0)?);
        }
        jobs.push(mine);
        dsts.push(dst);
    }
    drop(fd);
    // The jobs are in flight: unbinding waits for them before it revokes the buffer.
    driver_sysfs(&pci, "unbind")?;
    for (i, p) in peers.iter().enumerate() {
        let name = p.path().display().to_string();
        let done: Result<Vec<()>, Error> = jobs[i].iter().map(|&j| p.wait(j, -1)).collect();
        let mut got = vec![0; len as usize];
        p.read(dsts[i], 0, &mut got)?;
        t.check(
            &format!("{name}: jobs copying from {ename}'s VRAM when it was unbound complete"),
            done.is_ok() && got == data,
            format!(
                "{:?}; first difference {:?}",
                done.err(),
                first_diff(&got, &data)
            ),
        );
        let later = p
            .submit(&[copy_cmd(VA, 2 * VA, len)], 0, 0)
            .and_then(|j| p.wait(j, -1));
        t.check(
            &format!("{name}: a job reading the revoked buffer fails"),
            later.is_err(),
            match &later {
                Ok(()) => "succeeded".to_string(),
                Err(e) => e.to_string(),
            },
        );
        let fill = p
            .submit(&[fill_cmd(2 * VA, len, 0x7777_7777_7777_7777)], 0, 0)
            .and_then(|j| p.wait(j, -1));
        p.read(dsts[i], 0, &mut got)?;
        t.check(
            &format!("{name}: keeps working after {ename} was unbound"),
            fill.is_ok() && got.iter().all(|&b| b == 0x77),
            format!("{fill:?}"),
        );
    }
    drop(peers);
    drop(exporter);
    driver_sysfs(&pci, "bind")?;
    let back = conflux::devices()
        .into_iter()
        .filter_map(|p| Device::open(p).ok())
        .find(|d| d.pci_address().as_deref() == Some(pci.as_str()));
    match back {
        Some(d) => {
            let info = d.info()?;
            t.check(
                &format!("{pci}: bound again after the revocation, with all of its VRAM"),
                info.vram_avail == avail && d.path() == paths[1],
                format!(
                    "{} as {}, {} bytes available, {} before",
                    pci,
                    d.path().display(),
                    info.vram_avail,
                    avail
                ),
            );
        }
        None => t.check(&format!("{pci}: bound again"), false, "no accel node"),
    }
    Ok(())
}

/// A device whose ring registers are wrong is refused at probe with EIO: a ring too small for
/// the largest job (two slots), and a ring inside VRAM. The registers are rewritten
/// through the BAR2 resource file while the device is unbound, and put back afterwards: the
/// device then binds again. Last, a probe whose zeroing of VRAM fails is refused too, whatever
/// `FENCE_SEQNO` the binding before left.
pub(crate) fn bad_ring_fails_the_probe(t: &mut Tally, path: &std::path::Path) -> Result<(), Error> {
    let dev = Device::open(path)?;
    let name = path.display().to_string();
    let Some(pci) = dev.pci_address() else {
        t.check(&format!("{name}: PCI address"), false, "not found in sysfs");
        return Ok(());
    };
    drop(dev);
    let ctl = Switches::open_pci(&pci)?;
    let (offset, size) = (ctl.read64(ctrl::RING_OFFSET), ctl.read64(ctrl::RING_SIZE));
    driver_sysfs(&pci, "unbind")?;
    for (what, bad_offset, bad_size) in [
        ("a ring of 2 slots", offset, 2 * slot::SIZE),
        ("a ring inside VRAM", ctl.read64(ctrl::VRAM_OFFSET), size),
    ] {
        ctl.write64(ctrl::RING_OFFSET, bad_offset);
        ctl.write64(ctrl::RING_SIZE, bad_size);
        let bound = driver_sysfs(&pci, "bind");
        let node = node_of(&pci);
        let regs = format!("RING_OFFSET {bad_offset:#x}, RING_SIZE {bad_size:#x}");
        t.check(
            &format!("{pci}: probe refuses {what} ({regs}) with EIO"),
            bound.as_ref().err().and_then(Error::errno) == Some(libc::EIO) && node.is_none(),
            format!("bind: {bound:?}, accel node: {node:?}"),
        );
    }
    ctl.write64(ctrl::RING_OFFSET, offset);
    ctl.write64(ctrl::RING_SIZE, size);
    driver_sysfs(&pci, "bind")?;
    let node = node_of(&pci);
    t.check(
        &format!("{pci}: bound again once its ring registers are right"),
        node.is_some(),
        format!("accel node: {node:?}"),
    );

    // The device keeps FENCE_SEQNO across bindings: after one whose only jobs were the
    // probe's zeroing of VRAM, it names the last of them, a number the next binding's first
    // jobs would have too. That binding's zeroing fails on its first command: the value left
    // must not pass for its completion, and the probe fails rather than hand out VRAM that
    // was not zeroed.
    driver_sysfs(&pci, "unbind")?;
    let left = ctl.read64(ctrl::FENCE_SEQNO);
    ctl.set(ctrl::FAULT_FAIL_COMMAND);
    let bound = driver_sysfs(&pci, "bind");
    let node = node_of(&pci);
    ctl.set(0);
    t.check(
        &format!(
            "{pci}: a probe whose zeroing of VRAM fails is refused with EIO, with FENCE_SEQNO \
             {left} left by the binding before"
        ),
        bound.as_ref().err().and_then(Error::errno) == Some(libc::EIO) && node.is_none(),
        format!("bind: {bound:?}, accel node: {node:?}"),
    );
    if bound.is_ok() {
        driver_sysfs(&pci, "unbind")?;
    }
    driver_sysfs(&pci, "bind")?;
    let node = node_of(&pci);
    t.check(
        &format!("{pci}: bound again once its zeroing works"),
        node.is_some(),
        format!("accel node: {node:?}"),
    );
    Ok(())
}

/// The accel node of the PCI function `pci`, if it has one.
pub(crate) fn node_of(pci: &str) -> Option<PathBuf> {
    conflux::devices()
        .into_iter()
        .find(|p| Device::open(p).is_ok_and(|d| d.pci_address().as_deref() == Some(pci)))
}
