// SPDX-License-Identifier: GPL-2.0

//! A udmabuf, system memory that another driver exports, imported and copied to and from.

use std::os::fd::AsFd;

use conflux::{copy_cmd, map_op, storage::udmabuf, uapi, unmap_op, Device, Error};

use crate::{
    common::{counters, first_diff, io_err, pattern, MIB, VA},
    Tally,
};

/// Imports a udmabuf (system memory that another driver exports) and copies to and from it.
pub(crate) fn test_udmabuf(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    let name = dev.path().display().to_string();
    let len = 4 * MIB;
    let io = |call: &str| io_err("/dev/udmabuf", call);
    let (memfd, buf) = udmabuf(len).map_err(io("UDMABUF_CREATE of a 4 MiB memfd"))?;
    let data = pattern(len as usize, 41);
    memfd
        .write_all_at(&data, 0)
        .map_err(io("write to the memfd"))?;
    let imported = dev.import(buf.as_fd())?.into_handle();
    let info = dev.bo_info(imported)?;
    t.check(
        &format!("{name}: PRIME import of a udmabuf"),
        info.placement == uapi::DRM_CONFLUX_BO_IMPORTED
            && info.path == uapi::DRM_CONFLUX_PATH_EXTERNAL
            && info.size == len
            && info.mmap_offset == 0,
        format!(
            "placement {:#x}, path {}, {} bytes",
            info.placement,
            conflux::path_name(info.path),
            info.size
        ),
    );
    let vram = dev.bo_create(len)?.into_handle();
    dev.vm_bind(&[
        map_op(imported, 0, VA, len, false),
        map_op(vram, 0, 2 * VA, len, false),
    ])?;
    let c0 = counters(dev)?;
    let job = dev.submit(&[copy_cmd(VA, 2 * VA, len)], 0, 0)?;
    dev.wait(job, -1)?;
    let c1 = counters(dev)?;
    let mut got = vec![0; len as usize];
    dev.read(vram, 0, &mut got)?;
    t.check(
        &format!("{name}: COPY from a udmabuf to VRAM"),
        got == data && c1[2] - c0[2] == len,
        format!(
            "first difference {:?}; system memory +{} bytes",
            first_diff(&got, &data),
            c1[2] - c0[2]
        ),
    );
    let back = pattern(len as usize, 42);
    dev.write(vram, 0, &back)?;
    let job = dev.submit(&[copy_cmd(2 * VA, VA + 4096, len - 8192)], 0, 0)?;
    dev.wait(job, -1)?;
    memfd
        .read_exact_at(&mut got, 0)
        .map_err(io("read the memfd"))?;
    let mut want = data.clone();
    want[4096..(len - 4096) as usize].copy_from_slice(&back[..(len - 8192) as usize]);
    t.check(
        &format!("{name}: COPY from VRAM into a udmabuf, read through its memfd"),
        got == want,
        format!("first difference {:?}", first_diff(&got, &want)),
    );
    dev.vm_bind(&[unmap_op(VA, 2 * VA)])?;
    Ok(())
}
