// SPDX-License-Identifier: GPL-2.0

//! GET_INFO, buffers and their accounting, zeroing by the engine, and the error code of
//! every bad input, on each device.

use conflux::{uapi, Device, Error};

use crate::{common::MIB, Tally};

fn bo_args(size: u64, flags: u32, handle: u32) -> uapi::drm_conflux_bo_create {
    uapi::drm_conflux_bo_create {
        size,
        flags,
        handle,
    }
}

pub(crate) fn test_device(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let info = dev.info()?;
    t.check(
        &format!("{name}: GET_INFO version and capabilities"),
        info.version == 0x1_0003 && info.caps == 0xff,
        format!("version {:#x}, caps {:#x}", info.version, info.caps),
    );
    t.check(
        &format!("{name}: VRAM size and availability"),
        info.vram_size == 126 * MIB
            && info.vram_avail <= info.vram_size
            && info.vram_avail > 120 * MIB,
        format!("{} bytes, {} available", info.vram_size, info.vram_avail),
    );
    t.check(
        &format!("{name}: VA range"),
        info.va_start == 2 * MIB && info.va_end == 0xff80_0000_0000,
        format!("{:#x}..{:#x}", info.va_start, info.va_end),
    );
    t.check(
        &format!("{name}: the engine zeroed free VRAM at probe"),
        info.local_bytes >= info.vram_avail && info.errors == 0,
        format!("{} local bytes, {} errors", info.local_bytes, info.errors),
    );

    // Bad input to GET_INFO.
    for (what, mut bad) in [
        (
            "flags 1",
            uapi::drm_conflux_get_info {
                flags: 1,
                ..Default::default()
            },
        ),
        (
            "pad 7",
            uapi::drm_conflux_get_info {
                pad: 7,
                ..Default::default()
            },
        ),
    ] {
        t.errno(
            &format!("{name}: GET_INFO with {what}"),
            dev.ioctl(
                "GET_INFO",
                uapi::DRM_IOCTL_CONFLUX_GET_INFO as u64,
                &mut bad,
            ),
            libc::EINVAL,
        );
    }

    // Buffers: sizes round up to 4 KiB, VRAM is accounted and returned, the engine zeroes.
    for (size, want) in [
        (1, 4096),
        (4096, 4096),
        (4097, 8192),
        (2 * MIB, 2 * MIB),
        (64 * MIB + 1, 64 * MIB + 4096),
    ] {
        let before = dev.info()?;
        let bo = dev.bo_create(size)?;
        let during = dev.info()?;
        let zeroed = during.local_bytes.wrapping_sub(before.local_bytes);
        t.check(
            &format!("{name}: BO_CREATE {size} bytes"),
            bo.size == want
                && bo.handle != 0
                && before.vram_avail - during.vram_avail == want
                && zeroed == want,
            format!(
                "size {}, handle {}, VRAM taken {}, engine bytes {}",
                bo.size,
                bo.handle,
                before.vram_avail - during.vram_avail,
                zeroed
            ),
        );
        drop(bo);
        let after = dev.info()?;
        t.check(
            &format!("{name}: closing the {size}-byte buffer returns its VRAM"),
            after.vram_avail == before.vram_avail,
            format!(
                "{} available, {} before",
                after.vram_avail, before.vram_avail
            ),
        );
    }

    // Every documented error of BO_CREATE.
    let vram = uapi::DRM_CONFLUX_BO_VRAM;
    for (what, mut args, errno) in [
        ("size 0", bo_args(0, vram, 0), libc::EINVAL),
        ("no placement", bo_args(4096, 0, 0), libc::EINVAL),
        (
            "unknown flag 0x80",
            bo_args(4096, vram | 0x80, 0),
            libc::EINVAL,
        ),
        ("non-zero handle", bo_args(4096, vram, 5), libc::EINVAL),
        ("size u64::MAX", bo_args(u64::MAX, vram, 0), libc::EINVAL),
        (
            "size larger than VRAM",
            bo_args(info.vram_size + 4096, vram, 0),
            libc::ENOSPC,
        ),
    ] {
        t.errno(
            &format!("{name}: BO_CREATE {what}"),
            dev.bo_create_raw(&mut args),
            errno,
        );
    }

    // Without p2pmem_mib, the device publishes no peer-to-peer memory to lend.
    let mut p2p = uapi::drm_conflux_bo_p2pmem {
        addr: 1 << 30,
        size: 4096,
        ..Default::default()
    };
    t.errno(
        &format!("{name}: BO_P2PMEM without published peer-to-peer memory"),
        dev.bo_p2pmem_raw(&mut p2p),
        libc::EOPNOTSUPP,
    );

    // Fill VRAM: the last buffer that does not fit fails with ENOSPC, and nothing leaks.
    let before = dev.info()?;
    let mut held = Vec::new();
    let err = loop {
        match dev.bo_create(16 * MIB) {
            Ok(bo) => held.push(bo),
            Err(e) => break e,
        }
        if held.len() > 64 {
            break Error {
                device: name.clone(),
                call: "BO_CREATE".into(),
                error: std::io::Error::other("VRAM never ran out"),
            };
        }
    };
    t.check(
        &format!("{name}: BO_CREATE when VRAM is full"),
        err.errno() == Some(libc::ENOSPC) && held.len() as u64 == before.vram_avail / (16 * MIB),
        format!("{} buffers of 16 MiB, then: {err}", held.len()),
    );
    drop(held);
    let after = dev.info()?;
    t.check(
        &format!("{name}: all of it is available again"),
        after.vram_avail == before.vram_avail,
        format!(
            "{} available, {} before",
            after.vram_avail, before.vram_avail
        ),
    );
    Ok(())
}
