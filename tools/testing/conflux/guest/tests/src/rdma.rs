// SPDX-License-Identifier: GPL-2.0

//! RDMA memory registrations of Conflux buffers, of the three kinds
//! `drivers/infiniband/core/umem_dmabuf.c` makes (`conflux_static_import.ko`'s `dynamic`, `pin`
//! and `revocable`, for a peer's PCI function): over peer-to-peer and in system memory, through
//! eviction and return, and through the unbind of the exporting device.

use std::{os::fd::AsRawFd, path::PathBuf};

use conflux::{fill_cmd, map_op, uapi, unmap_op, Device, Error};

use crate::{
    common::{pattern, prime_reach, MIB, VA},
    evict::squeeze,
    static_import::{fnv1a, StaticImport},
    unbind::driver_sysfs,
    Tally,
};

type Report = std::collections::HashMap<String, u64>;

/// A registration of kind `kind` of buffer `handle` of `exp` for the PCI function `bdf`.
fn register(exp: &Device, handle: u32, kind: &str, bdf: &str) -> Result<StaticImport, Error> {
    let fd = exp.export(handle)?;
    let imp = StaticImport::open()?;
    imp.command(&format!("{kind} {} {bdf}", fd.0.as_raw_fd()))?;
    Ok(imp)
}

/// Whether `r` maps `len` bytes whose hash is that of `want`, all in system RAM (`ram`) or none.
fn maps(r: &Report, len: u64, want: &[u8], ram: bool) -> bool {
    let get = |k: &str| r.get(k).copied();
    let segments = get("segments").unwrap_or(0);
    get("bytes") == Some(len)
        && get("fnv1a") == Some(fnv1a(want))
        && segments > 0
        && get("ram") == Some(if ram { segments } else { 0 })
}

/// Fills buffer `handle` of `exp` with `byte` by a job.
fn fill(exp: &Device, handle: u32, len: u64, byte: u8) -> Result<(), Error> {
    exp.vm_bind(&[map_op(handle, 0, VA, len, false)])?;
    let job = exp.submit(&[fill_cmd(VA, len, u64::from_ne_bytes([byte; 8]))], 0, 0);
    let done = job.and_then(|j| exp.wait(j, -1));
    exp.vm_bind(&[unmap_op(VA, len)])?;
    done
}

/// The registrations of a peer `near` with a peer-to-peer route to `exp`'s VRAM.
fn near_peer(t: &mut Tally, exp: &Device, bdf: &str) -> Result<(), Error> {
    let name = exp.path().display().to_string();
    let len = 4 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let a = pattern(len as usize, 131);

    // Dynamic: invalidated by each move, it maps again where the buffer is.
    let bo = exp.bo_create_in(len, both)?;
    exp.write(bo.handle, 0, &a)?;
    let dynamic = register(exp, bo.handle, "dynamic", bdf)?;
    let first = dynamic.report()?;
    let squeezed = squeeze(exp)?;
    let evicted = dynamic.report()?;
    let out = exp.bo_info(bo.handle)?.placement;
    drop(squeezed);
    fill(exp, bo.handle, len, 0x5c)?;
    let back = dynamic.report()?;
    let placement = exp.bo_info(bo.handle)?.placement;
    let filled = vec![0x5c; len as usize];
    t.check(
        &format!(
            "{name}: a dynamic RDMA registration for {bdf} maps VRAM over peer-to-peer, then \
             system memory after an eviction, then VRAM again after the return"
        ),
        maps(&first, len, &a, false)
            && maps(&evicted, len, &a, true)
            && maps(&back, len, &filled, false)
            && out == uapi::DRM_CONFLUX_BO_SYSTEM
            && placement == uapi::DRM_CONFLUX_BO_VRAM
            && evicted.get("invalidations") == Some(&1)
            && back.get("invalidations") == Some(&2),
        format!(
            "in VRAM {first:?}; evicted (placement {out:#x}) {evicted:?}; back (placement \
             {placement:#x}) {back:?}"
        ),
    );
    drop(dynamic);
    drop(bo);

    // Revocable and pinned: in VRAM, which it keeps under pressure.
    let bo = exp.bo_create_in(len, both)?;
    exp.write(bo.handle, 0, &a)?;
    let revocable = register(exp, bo.handle, "revocable", bdf)?;
    let squeezed = squeeze(exp);
    let r = revocable.report()?;
    let info = exp.bo_info(bo.handle)?;
    t.check(
        &format!(
            "{name}: a revocable pinned RDMA registration for {bdf} maps VRAM over \
             peer-to-peer, which it keeps under pressure"
        ),
        maps(&r, len, &a, false)
            && info.placement == uapi::DRM_CONFLUX_BO_VRAM
            && info.moves == 0
            && matches!(&squeezed, Err(e) if e.errno() == Some(libc::ENOSPC))
            && r.get("invalidations") == Some(&0),
        format!(
            "{r:?}; placement {:#x}, {} moves; a VRAM-only buffer larger than what is left: \
             {:?}",
            info.placement,
            info.moves,
            squeezed.as_ref().map(|b| b.size)
        ),
    );
    drop(squeezed);
    drop(revocable);
    drop(bo);

    // Pinned, not revocable: never VRAM. A movable buffer moves to system memory for it and
    // stays there; one only for VRAM is refused.
    let bo = exp.bo_create_in(len, both)?;
    exp.write(bo.handle, 0, &a)?;
    let pinned = register(exp, bo.handle, "pin", bdf)?;
    let r = pinned.report()?;
    let info = exp.bo_info(bo.handle)?;
    fill(exp, bo.handle, len, 0x6d)?;
    let after = pinned.report()?;
    let filled = vec![0x6d; len as usize];
    let still = exp.bo_info(bo.handle)?.placement;
    t.check(
        &format!(
            "{name}: a pinned RDMA registration for {bdf}, which cannot give VRAM back, gets \
             the buffer in system memory, where the exporter's jobs write it"
        ),
        maps(&r, len, &a, true)
            && maps(&after, len, &filled, true)
            && info.placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && still == uapi::DRM_CONFLUX_BO_SYSTEM,
        format!(
            "{r:?}, after a job's fill {after:?}; placement {:#x}, after the job {still:#x}",
            info.placement
        ),
    );
    drop(pinned);
    let only_vram = exp.bo_create(len)?;
    let r = register(exp, only_vram.handle, "pin", bdf);
    t.errno(
        &format!("{name}: a pinned RDMA registration of a buffer only for VRAM, for {bdf}"),
        r,
        libc::EOPNOTSUPP,
    );
    Ok(())
}

/// The registrations of a peer without a route to `exp`'s VRAM: the buffer goes to system
/// memory for each kind.
fn far_peer(t: &mut Tally, exp: &Device, bdf: &str) -> Result<(), Error> {
    let name = exp.path().display().to_string();
    let len = 2 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    for kind in ["dynamic", "pin", "revocable"] {
        let bo = exp.bo_create_in(len, both)?;
        let a = pattern(len as usize, 133);
        exp.write(bo.handle, 0, &a)?;
        let imp = register(exp, bo.handle, kind, bdf)?;
        let r = imp.report()?;
        let placement = exp.bo_info(bo.handle)?.placement;
        t.check(
            &format!(
                "{name}: a {kind} RDMA registration for {bdf}, without a peer-to-peer route, \
                 maps the buffer in system memory"
            ),
            maps(&r, len, &a, true) && placement == uapi::DRM_CONFLUX_BO_SYSTEM,
            format!("{r:?}; placement {placement:#x}"),
        );
    }
    Ok(())
}

/// The unbind of the exporting device under a registration of each kind: the revocable one is
/// revoked for good, the dynamic one's next access fails, and the pinned one keeps the system
/// memory it maps, with its bytes, until it lets go.
fn unbind(t: &mut Tally, exp_path: &PathBuf, bdf: &str) -> Result<(), Error> {
    let exp = Device::open(exp_path)?;
    let name = exp_path.display().to_string();
    let Some(pci) = exp.pci_address() else {
        t.check(&format!("{name}: PCI address"), false, "not found in sysfs");
        return Ok(());
    };
    let len = 2 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let mut regs = Vec::new();
    let a = pattern(len as usize, 135);
    for kind in ["dynamic", "pin", "revocable"] {
        let bo = exp.bo_create_in(len, both)?;
        exp.write(bo.handle, 0, &a)?;
        regs.push((kind, register(&exp, bo.handle, kind, bdf)?));
    }
    drop(exp);
    driver_sysfs(&pci, "unbind")?;
    for (kind, imp) in &regs {
        let r = imp.report();
        let filled = imp.command("fill 7");
        let (ok, what) = match *kind {
            "revocable" => (
                matches!(&r, Ok(r) if r.get("revoked") == Some(&1)
                    && r.get("invalidations") == Some(&1))
                    && matches!(&filled, Err(e) if e.errno() == Some(libc::EINVAL)),
                "is revoked for good",
            ),
            "dynamic" => (
                matches!(&r, Err(e) if e.errno() == Some(libc::ENODEV))
                    && matches!(&filled, Err(e) if e.errno() == Some(libc::ENODEV)),
                "cannot map the buffer again",
            ),
            _ => (
                matches!(&r, Ok(r) if maps(r, len, &a, true)) && filled.is_ok(),
                "keeps the system memory it maps, with its bytes",
            ),
        };
        t.check(
            &format!("{name}: when the exporting device is unbound, a {kind} registration {what}"),
            ok,
            format!("read {r:?}; fill {filled:?}"),
        );
    }
    drop(regs);
    driver_sysfs(&pci, "bind")?;
    let back = crate::unbind::node_of(&pci);
    t.check(
        &format!("{pci}: bound again after the unbind under RDMA registrations"),
        back.as_ref() == Some(exp_path),
        format!("accel node {back:?}"),
    );
    Ok(())
}

/// Every registration test, with the second device as the exporter, the first (on its switch)
/// as the near peer, and a device without a route to it, if the topology has one.
pub(crate) fn test_rdma(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    let [near_path, exp_path, ..] = paths else {
        return Ok(());
    };
    let exp = Device::open(exp_path)?;
    let near = Device::open(near_path)?;
    let Some(near_bdf) = near.pci_address() else {
        t.check("PCI address of the near peer", false, "not found in sysfs");
        return Ok(());
    };
    near_peer(t, &exp, &near_bdf)?;
    for other in &paths[2..] {
        let dev = Device::open(other)?;
        if prime_reach(&exp, &dev)? == Err(libc::EXDEV) {
            if let Some(bdf) = dev.pci_address() {
                far_peer(t, &exp, &bdf)?;
            }
            break;
        }
    }
    drop(exp);
    unbind(t, exp_path, &near_bdf)
}
