// SPDX-License-Identifier: GPL-2.0

//! A udmabuf, system memory that another driver exports, imported and copied to and from.

use std::os::fd::{AsFd, AsRawFd};

use conflux::{copy_cmd, map_op, uapi, unmap_op, Device, Error};

use crate::{
    common::{counters, first_diff, io_err, pattern, MIB, VA},
    Tally,
};

/// `struct udmabuf_create` of `include/uapi/linux/udmabuf.h`.
#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

/// `UDMABUF_CREATE`: `_IOW('u', 0x42, struct udmabuf_create)`.
const UDMABUF_CREATE: u64 = 1 << 30 | 24 << 16 | (b'u' as u64) << 8 | 0x42;

/// A dma-buf of `len` bytes of a sealed memfd, made by udmabuf: memory that a driver other
/// than Conflux exports. Returns the memfd and the dma-buf.
pub(crate) fn udmabuf(len: u64) -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let last = std::io::Error::last_os_error;
    // SAFETY: A valid NUL-terminated name; the descriptor returned is owned by the File.
    let memfd = unsafe { libc::memfd_create(c"conflux-udmabuf".as_ptr(), libc::MFD_ALLOW_SEALING) };
    if memfd < 0 {
        return Err(last());
    }
    // SAFETY: `memfd` was just opened and nothing else owns it.
    let memfd = unsafe { std::fs::File::from_raw_fd(memfd) };
    memfd.set_len(len)?;
    // SAFETY: Plain fcntl on a descriptor we own.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } < 0 {
        return Err(last());
    }
    let dev = std::fs::File::open("/dev/udmabuf")?;
    let mut args = UdmabufCreate {
        memfd: memfd.as_raw_fd() as u32,
        flags: 0x01, // UDMABUF_FLAGS_CLOEXEC
        offset: 0,
        size: len,
    };
    // SAFETY: `args` is the structure the request encodes.
    let fd = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            UDMABUF_CREATE as libc::Ioctl,
            std::ptr::from_mut(&mut args),
        )
    };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: udmabuf just gave us this descriptor.
    Ok((memfd, unsafe { std::fs::File::from_raw_fd(fd) }))
}

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
