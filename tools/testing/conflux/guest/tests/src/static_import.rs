// SPDX-License-Identifier: GPL-2.0

//! `conflux_static_import.ko`: a static importer of Conflux buffers, as RDMA memory
//! registrations are.

use std::os::fd::AsRawFd;

use conflux::{fill_cmd, map_op, placement_name, uapi, unmap_op, Device, Error};

use crate::{
    common::{io_err, pattern, MIB, VA},
    evict::squeeze,
    Tally,
};

/// The debugfs file of `conflux_static_import.ko`: a static importer (no `move_notify`, no
/// peer-to-peer), as RDMA memory registrations are.
const STATIC_IMPORT: &str = "/sys/kernel/debug/conflux_static_import/import";

/// FNV-1a (64-bit) of `data`, as `conflux_static_import.ko` hashes the bytes it maps.
pub(crate) fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One open of [`STATIC_IMPORT`]: at most one attachment, detached when dropped.
pub(crate) struct StaticImport(std::fs::File);

impl StaticImport {
    pub(crate) fn open() -> Result<Self, Error> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(STATIC_IMPORT)
            .map(Self)
            .map_err(io_err(
                STATIC_IMPORT,
                "open (is conflux_static_import.ko loaded, debugfs mounted?)",
            ))
    }

    /// Writes `cmd` (`attach FD`, `pin FD BDF`, `vmap FD`, `fill BYTE`).
    pub(crate) fn command(&self, cmd: &str) -> Result<(), Error> {
        use std::io::Write;
        (&self.0)
            .write_all(cmd.as_bytes())
            .map_err(io_err(STATIC_IMPORT, &format!("write {cmd:?}")))
    }

    /// The importer's account of its mapping: `segments`, `bytes`, `max_segment`, `limit`,
    /// `ram`, `boundary_crossings` and `fnv1a`.
    pub(crate) fn report(&self) -> Result<std::collections::HashMap<String, u64>, Error> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 256];
        let n = self
            .0
            .read_at(&mut buf, 0)
            .map_err(io_err(STATIC_IMPORT, "read"))?;
        let text = String::from_utf8_lossy(&buf[..n]);
        let words: Vec<&str> = text.split_whitespace().collect();
        Ok(words
            .chunks(2)
            .filter_map(|kv| {
                let radix = if kv[0] == "fnv1a" { 16 } else { 10 };
                Some((
                    kv[0].to_string(),
                    u64::from_str_radix(kv.get(1)?, radix).ok()?,
                ))
            })
            .collect())
    }
}

/// A static importer (no peer-to-peer, keeps its mapping) gets a movable VRAM buffer in
/// system memory, with the data, in segments within its DMA limits; jobs and the importer
/// then share the bytes. A buffer that may only be in VRAM is refused at attach.
pub(crate) fn test_static_import(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let len = 4 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = dev.bo_create_in(len, both)?.into_handle();
    let data = pattern(len as usize, 61);
    dev.write(bo, 0, &data)?;
    let avail = dev.info()?.vram_avail;
    let fd = dev.export(bo)?;
    let imp = StaticImport::open()?;
    imp.command(&format!("attach {}", fd.0.as_raw_fd()))?;
    let r = imp.report()?;
    let info = dev.bo_info(bo)?;
    let freed = dev.info()?.vram_avail - avail;
    let get = |k: &str| r.get(k).copied().unwrap_or(u64::MAX);
    t.check(
        &format!("{name}: a static importer's map moves the buffer to system memory"),
        info.placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && freed == len
            && get("bytes") == len
            && get("ram") == get("segments")
            && get("fnv1a") == fnv1a(&data),
        format!(
            "placement {}, {freed} bytes of VRAM freed; importer: {} bytes in {} segments, \
             {} in system RAM, hash {:#x} (data {:#x})",
            placement_name(info.placement),
            get("bytes"),
            get("segments"),
            get("ram"),
            get("fnv1a"),
            fnv1a(&data)
        ),
    );
    t.check(
        &format!("{name}: the static importer's segments respect its DMA limits"),
        get("max_segment") <= get("limit") && get("boundary_crossings") == 0,
        format!(
            "longest segment {} bytes, limit {}; {} segments cross a boundary",
            get("max_segment"),
            get("limit"),
            get("boundary_crossings")
        ),
    );

    dev.vm_bind(&[map_op(bo, 0, VA, len, false)])?;
    let job = dev.submit(&[fill_cmd(VA, len, 0x5a5a_5a5a_5a5a_5a5a)], 0, 0)?;
    dev.wait(job, -1)?;
    let seen = imp.report()?.get("fnv1a").copied();
    let filled = fnv1a(&vec![0x5a; len as usize]);
    t.check(
        &format!("{name}: a job's fill reaches the static importer's mapping"),
        seen == Some(filled),
        format!("importer's hash {seen:x?}, of the fill {filled:#x}"),
    );
    imp.command("fill 165")?;
    let mut got = vec![0; len as usize];
    dev.read(bo, 0, &mut got)?;
    t.check(
        &format!("{name}: the static importer's writes reach the buffer"),
        got.iter().all(|&b| b == 0xa5),
        format!(
            "first other byte at {:?}",
            got.iter().position(|&b| b != 0xa5)
        ),
    );
    dev.vm_bind(&[unmap_op(VA, len)])?;
    drop(imp);

    let vram = dev.bo_create(len)?.into_handle();
    let fd = dev.export(vram)?;
    let imp = StaticImport::open()?;
    let r = imp.command(&format!("attach {}", fd.0.as_raw_fd()));
    let placement = dev.bo_info(vram)?.placement;
    t.errno(
        &format!("{name}: a static importer of a buffer only for VRAM is refused"),
        r,
        libc::EOPNOTSUPP,
    );
    t.check(
        &format!("{name}: the refused buffer stays in VRAM"),
        placement == uapi::DRM_CONFLUX_BO_VRAM,
        placement_name(placement),
    );
    Ok(())
}

/// The PCI address (`0000:04:00.0`) of the device at `path`, `/dev/accel/accelN`, from sysfs.
fn pci_address(path: &std::path::Path) -> Result<String, Error> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let link = format!("/sys/class/accel/{name}/device");
    let target = std::fs::read_link(&link).map_err(io_err(&link, "readlink"))?;
    Ok(target
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned())
}

/// Pins. An importer that pins a movable buffer over peer-to-peer and can give it back (a
/// revocable RDMA registration, here for the PCI device `peer`) keeps it in VRAM: eviction
/// leaves it,
/// and the move a static importer would need fails with `EBUSY`. Unpinned, it is evicted like
/// any other. A static importer's pin keeps it in system memory, where the importer reads the
/// bytes the exporter's jobs write, through VRAM pressure.
pub(crate) fn test_pins(t: &mut Tally, exp: &Device, peer: &Device) -> Result<(), Error> {
    let name = exp.path().display().to_string();
    let len = 2 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = exp.bo_create_in(len, both)?;
    let want = pattern(len as usize, 55);
    exp.write(bo.handle, 0, &want)?;
    let fd = exp.export(bo.handle)?;
    let bdf = pci_address(peer.path())?;
    let pin = StaticImport::open()?;
    pin.command(&format!("revocable {} {bdf}", fd.0.as_raw_fd()))?;
    let report = pin.report()?;
    let squeezed = squeeze(exp);
    let info = exp.bo_info(bo.handle)?;
    t.check(
        &format!(
            "{name}: a buffer pinned over peer-to-peer for {bdf} (revocably) stays in VRAM under \
             pressure"
        ),
        report.get("ram") == Some(&0)
            && report.get("bytes") == Some(&len)
            && matches!(&squeezed, Err(e) if e.errno() == Some(libc::ENOSPC))
            && info.placement == uapi::DRM_CONFLUX_BO_VRAM
            && info.moves == 0,
        format!(
            "importer's mapping {report:?}; a VRAM-only buffer larger than what is left: {:?}; \
             placement {:#x}, {} moves",
            squeezed.as_ref().map(|b| b.size),
            info.placement,
            info.moves
        ),
    );
    drop(squeezed);
    let other = StaticImport::open()?;
    t.errno(
        &format!("{name}: a static importer of a buffer pinned in VRAM"),
        other.command(&format!("attach {}", fd.0.as_raw_fd())),
        libc::EBUSY,
    );
    drop(other);
    let mut got = vec![0u8; len as usize];
    exp.read(bo.handle, 0, &mut got)?;
    drop(pin);
    let squeezed = squeeze(exp);
    let unpinned = exp.bo_info(bo.handle)?;
    drop(squeezed);
    t.check(
        &format!("{name}: unpinned, the buffer keeps its bytes and is evicted"),
        got == want && unpinned.placement == uapi::DRM_CONFLUX_BO_SYSTEM && unpinned.moves == 1,
        format!(
            "bytes equal: {}; placement {:#x}, {} moves",
            got == want,
            unpinned.placement,
            unpinned.moves
        ),
    );
    // A static importer pins it in system memory: the exporter's jobs write it there.
    let stat = StaticImport::open()?;
    stat.command(&format!("attach {}", fd.0.as_raw_fd()))?;
    exp.vm_bind(&[map_op(bo.handle, 0, VA, len, false)])?;
    let job = exp.submit(&[fill_cmd(VA, len, 0x5a5a_5a5a_5a5a_5a5a)], 0, 0)?;
    exp.wait(job, -1)?;
    exp.vm_bind(&[unmap_op(VA, len)])?;
    let squeezed = squeeze(exp);
    let report = stat.report()?;
    let info = exp.bo_info(bo.handle)?;
    drop(squeezed);
    t.check(
        &format!(
            "{name}: a static importer's pin keeps the buffer in system memory, where it reads \
             what the exporter's jobs wrote"
        ),
        report.get("fnv1a") == Some(&fnv1a(&vec![0x5a; len as usize]))
            && report.get("ram").is_some_and(|&n| n > 0)
            && info.placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && info.moves == 1,
        format!(
            "importer's mapping {report:?}; placement {}, {} moves",
            placement_name(info.placement),
            info.moves
        ),
    );
    Ok(())
}
