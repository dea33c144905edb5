// SPDX-License-Identifier: GPL-2.0

//! System-memory buffers, placements, BO_INFO and `mmap()`.

use conflux::{copy_cmd, fill_cmd, map_op, placement_name, uapi, unmap_op, BoInfo, Device, Error};

use crate::{
    common::{entries, first_diff, mapped, pattern, KIB4, MIB, VA},
    Tally,
};

/// System-memory buffers, placements, BO_INFO and mmap().
pub(crate) fn test_memory(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let system = uapi::DRM_CONFLUX_BO_SYSTEM;
    let vram = uapi::DRM_CONFLUX_BO_VRAM;

    // A system-memory buffer: zeroed, mapped, written by the engine over DMA.
    let vram_before = dev.info()?.vram_avail;
    let sys = dev.bo_create_in(4 * MIB + 1, system)?;
    let info = dev.bo_info(sys.handle)?;
    t.check(
        &format!("{name}: BO_CREATE in system memory"),
        info.placement == system
            && info.size == 4 * MIB + KIB4
            && sys.size == info.size
            && dev.info()?.vram_avail == vram_before,
        format!(
            "placement {}, {} bytes, VRAM available {} (was {vram_before})",
            placement_name(info.placement),
            info.size,
            dev.info()?.vram_avail
        ),
    );
    let sys_map = dev.map(sys.handle)?;
    let zero = mapped(&sys_map);
    t.check(
        &format!("{name}: a new system-memory buffer reads as zeros through mmap()"),
        zero.iter().all(|&b| b == 0),
        format!(
            "first non-zero byte {:?}",
            zero.iter().position(|&b| b != 0)
        ),
    );
    let vbo = dev.bo_create(4 * MIB)?;
    let vbo_map = dev.map(vbo.handle)?;
    let data = pattern(4 * MIB as usize, 0x5a);
    vbo_map.write(0, &data);
    let mut back = vec![0u8; data.len()];
    dev.read(vbo.handle, 0, &mut back)?;
    t.check(
        &format!("{name}: bytes written through an mmap() of VRAM read back with BO_READ"),
        back == data,
        format!("first difference at {:?}", first_diff(&back, &data)),
    );
    let (huge0, small0, _) = entries(dev)?;
    dev.vm_bind(&[
        map_op(vbo.handle, 0, VA, 4 * MIB, false),
        map_op(sys.handle, 0, 2 * VA, sys.size, false),
    ])?;
    let (huge1, small1, _) = entries(dev)?;
    let pages = (huge1 - huge0) * 512 + (small1 - small0);
    t.check(
        &format!("{name}: VM_BIND maps VRAM and system memory page for page"),
        pages == (4 * MIB + sys.size) / KIB4 && huge1 - huge0 >= 2,
        format!(
            "{} 2 MiB and {} 4 KiB entries for {} pages",
            huge1 - huge0,
            small1 - small0,
            (4 * MIB + sys.size) / KIB4
        ),
    );
    let before = dev.info()?;
    // VRAM to system memory at odd offsets, then a fill in system memory.
    let len = 3 * MIB + 12345;
    let job = dev.submit(
        &[
            copy_cmd(VA + 7, 2 * VA + 4093, len),
            fill_cmd(2 * VA + 4093 + len, 1000, 0x0102_0304_0506_0708),
        ],
        0,
        0,
    )?;
    dev.wait(job, -1)?;
    let after = dev.info()?;
    let got = mapped(&sys_map);
    let fill = 0x0102_0304_0506_0708u64.to_le_bytes();
    let (l, f) = (len as usize, 4093 + len as usize);
    let want: Vec<u8> = (0..got.len())
        .map(|i| match i {
            _ if (4093..f).contains(&i) => data[i - 4093 + 7],
            _ if (f..f + 1000).contains(&i) => fill[(i - f) % 8],
            _ => 0,
        })
        .collect();
    t.check(
        &format!("{name}: COPY from VRAM to system memory and FILL there, read through mmap()"),
        first_diff(&got, &want).is_none(),
        format!(
            "{l} + 1000 bytes; first difference at {:?}",
            first_diff(&got, &want)
        ),
    );
    let sysmem = after.sysmem_bytes - before.sysmem_bytes;
    t.check(
        &format!("{name}: the device counted those bytes as system-memory traffic"),
        sysmem == len + 1000,
        format!("CNT_SYSMEM_BYTES grew by {sysmem}, {} expected", len + 1000),
    );
    let mut ioctl_read = vec![0u8; got.len()];
    dev.read(sys.handle, 0, &mut ioctl_read)?;
    t.check(
        &format!("{name}: BO_READ of system memory sees the same bytes"),
        ioctl_read == got,
        format!("first difference at {:?}", first_diff(&ioctl_read, &got)),
    );
    // System memory back to VRAM, written by the CPU through BO_WRITE first.
    let host = pattern(8192, 0xc3);
    dev.write(sys.handle, 4 * MIB - 8192, &host)?;
    let job = dev.submit(&[copy_cmd(2 * VA + 4 * MIB - 8192, VA + MIB, 8192)], 0, 0)?;
    dev.wait(job, -1)?;
    let mut v = vec![0u8; 8192];
    vbo_map.read(MIB as usize, &mut v);
    t.check(
        &format!("{name}: COPY from system memory to VRAM, read through mmap()"),
        v == host,
        format!("first difference at {:?}", first_diff(&v, &host)),
    );
    dev.vm_bind(&[unmap_op(VA, 4 * MIB), unmap_op(2 * VA, sys.size)])?;

    // Placement "VRAM, else system memory".
    let any = dev.bo_create_in(MIB, vram | system)?;
    let where_any = dev.bo_info(any.handle)?.placement;
    let mut held = Vec::new();
    while let Ok(bo) = dev.bo_create(16 * MIB) {
        held.push(bo);
        if held.len() > 64 {
            break;
        }
    }
    while let Ok(bo) = dev.bo_create(MIB) {
        held.push(bo);
        if held.len() > 256 {
            break;
        }
    }
    let spill = dev.bo_create_in(16 * MIB, vram | system)?;
    let where_spill = dev.bo_info(spill.handle)?.placement;
    t.check(
        &format!("{name}: VRAM|SYSTEM goes to VRAM while it has room, then to system memory"),
        where_any == vram && where_spill == system,
        format!(
            "{}, then {} with VRAM full",
            placement_name(where_any),
            placement_name(where_spill)
        ),
    );
    t.errno(
        &format!("{name}: BO_CREATE in VRAM only, with VRAM full"),
        dev.bo_create_in(16 * MIB, vram),
        libc::ENOSPC,
    );
    drop((held, spill, any));

    // Bad input to BO_CREATE, BO_INFO and mmap().
    let max = u64::from(uapi::DRM_CONFLUX_MAX_SYSTEM_SIZE);
    t.errno(
        &format!(
            "{name}: BO_CREATE in system memory beyond {} MiB",
            max >> 20
        ),
        dev.bo_create_in(max + 1, system),
        libc::EINVAL,
    );
    for (what, mut bad, errno) in [
        (
            "flags 1",
            BoInfo {
                handle: sys.handle,
                flags: 1,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "path 1 on input",
            BoInfo {
                handle: sys.handle,
                path: 1,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "handle 12345",
            BoInfo {
                handle: 12345,
                ..Default::default()
            },
            libc::ENOENT,
        ),
    ] {
        t.errno(
            &format!("{name}: BO_INFO with {what}"),
            dev.bo_info_raw(&mut bad),
            errno,
        );
    }
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let len = sys.size as usize;
    for (what, offset, size, prot, flags) in [
        (
            "MAP_PRIVATE",
            info.mmap_offset,
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
        ),
        (
            "a page beyond the buffer",
            info.mmap_offset,
            len + 4096,
            rw,
            libc::MAP_SHARED,
        ),
        (
            "an offset no buffer has",
            1 << 40,
            4096,
            rw,
            libc::MAP_SHARED,
        ),
    ] {
        t.errno(
            &format!("{name}: mmap() of {what}"),
            dev.mmap_raw(offset, size, prot, flags),
            libc::EINVAL,
        );
    }
    // A mapping must start at the buffer's offset, and may cover only its first pages.
    t.errno(
        &format!("{name}: mmap() from the buffer's second page"),
        dev.mmap_raw(info.mmap_offset + 4096, 8192, rw, libc::MAP_SHARED),
        libc::EINVAL,
    );
    // Another file on the same device holds no handle of the buffer: it may not map it.
    let other = Device::open(dev.path())?;
    t.errno(
        &format!("{name}: mmap() of another file's buffer"),
        other.mmap_raw(info.mmap_offset, len, rw, libc::MAP_SHARED),
        libc::EACCES,
    );
    drop(other);
    let part = dev.mmap_raw(info.mmap_offset, 8192, rw, libc::MAP_SHARED)?;
    let mut first = vec![0u8; 8192];
    part.read(0, &mut first);
    t.check(
        &format!("{name}: mmap() of the buffer's first two pages"),
        first == want[..8192],
        format!(
            "first difference at {:?}",
            first_diff(&first, &want[..8192])
        ),
    );
    Ok(())
}
