// SPDX-License-Identifier: GPL-2.0

//! `conflux-uapi-test`: runs in the rig's guest with the driver loaded and checks the uAPI of
//! every Conflux device: what GET_INFO reports, buffers and their accounting, zeroing by the
//! engine, and the error code of every documented bad input. Prints one `PASS ...` or
//! `FAIL ...` line per check and ends with `N passed, N failed`.

use std::process::ExitCode;

use conflux::{devices, uapi, Device, Error};

struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    fn check(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            self.passed += 1;
            println!("PASS {what}: {detail}");
        } else {
            self.failed += 1;
            println!("FAIL {what}: {detail}");
        }
    }

    /// Checks that `r` failed with `errno`.
    fn errno<T>(&mut self, what: &str, r: Result<T, Error>, errno: i32) {
        match r {
            Ok(_) => self.check(what, false, "succeeded"),
            Err(e) => self.check(what, e.errno() == Some(errno), e),
        }
    }
}

const MIB: u64 = 1 << 20;

fn bo_args(size: u64, flags: u32, handle: u32) -> uapi::drm_conflux_bo_create {
    uapi::drm_conflux_bo_create {
        size,
        flags,
        handle,
    }
}

fn test_device(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let info = dev.info()?;
    t.check(
        &format!("{name}: GET_INFO version and capabilities"),
        info.version == 0x1_0000 && info.caps == 0x3f,
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

/// Unbinds the device at `path` from the driver while a file of it is open with a buffer in
/// VRAM, then binds it again: the file sees ENODEV, closing it frees the buffer after the
/// device is gone, and the device comes back with all of its VRAM.
fn unbind_with_buffer(t: &mut Tally, path: &std::path::Path) -> Result<(), Error> {
    let dev = Device::open(path)?;
    let name = path.display().to_string();
    let Some(pci) = dev.pci_address() else {
        t.check(&format!("{name}: PCI address"), false, "not found in sysfs");
        return Ok(());
    };
    let avail = dev.info()?.vram_avail;
    let handle = dev.bo_create(8 * MIB)?.into_handle();
    let sysfs = |file: &str| {
        std::fs::write(format!("/sys/bus/pci/drivers/conflux/{file}"), &pci).map_err(|e| Error {
            device: pci.clone(),
            call: format!("write /sys/bus/pci/drivers/conflux/{file}"),
            error: e,
        })
    };
    sysfs("unbind")?;
    t.errno(
        &format!("{name}: GET_INFO after its device was unbound, with buffer {handle} open"),
        dev.info(),
        libc::ENODEV,
    );
    // Closing the file frees the buffer's VRAM into the allocator of a device that is gone.
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

fn main() -> ExitCode {
    let mut t = Tally {
        passed: 0,
        failed: 0,
    };
    let found = devices();
    t.check(
        "Conflux accel devices found",
        !found.is_empty(),
        found.len(),
    );
    for path in found.iter() {
        match Device::open(path) {
            Ok(dev) => {
                if let Err(e) = test_device(&mut t, &dev) {
                    t.check(&format!("{}: uAPI calls", path.display()), false, e);
                }
            }
            Err(e) => t.check(&format!("{}: open", path.display()), false, e),
        }
    }
    if let Some(path) = found.first() {
        if let Err(e) = unbind_with_buffer(&mut t, path) {
            t.check(
                &format!("{}: unbind with a buffer", path.display()),
                false,
                e,
            );
        }
    }
    println!("{} passed, {} failed", t.passed, t.failed);
    if t.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
