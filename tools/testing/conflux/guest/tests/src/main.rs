// SPDX-License-Identifier: GPL-2.0

//! `conflux-uapi-test`: runs in the rig's guest with the driver loaded and checks the uAPI of
//! every Conflux device: what GET_INFO reports, buffers and their accounting, zeroing by the
//! engine, and the error code of every documented bad input. Prints one `PASS ...` or
//! `FAIL ...` line per check and ends with `N passed, N failed`.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    process::ExitCode,
};

use conflux::{
    copy_cmd, devices, fill_cmd, map_op, placement_name, uapi, unmap_op, BindOp, BoInfo, Cmd,
    Device, Error, Mapping,
};

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

/// Makes an [`Error`] of a failed file or system call that names `device` (a node, a sysfs
/// file, a PCI address) and `call`: for `map_err`.
fn io_err(device: &str, call: &str) -> impl FnOnce(std::io::Error) -> Error {
    let (device, call) = (device.to_string(), call.to_string());
    move |error| Error {
        device,
        call,
        error,
    }
}

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

const VA: u64 = 1 << 32;
const KIB4: u64 = 4096;
const MIB2: u64 = 2 * MIB;

/// The file's VM's page-table entries: 2 MiB ones, 4 KiB ones, spare tables.
fn entries(dev: &Device) -> Result<(u64, u64, u64), Error> {
    let i = dev.info()?;
    Ok((i.vm_2m_entries, i.vm_4k_entries, i.vm_spare_tables))
}

/// VM_BIND: page sizes, splits, the transaction rules and every bad input.
fn test_bind(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let a = dev.bo_create(4 * MIB)?;
    let b = dev.bo_create(MIB2)?;
    let small = dev.bo_create(64 * 1024)?;
    let check = |t: &mut Tally, what: &str, want: (u64, u64, u64)| -> Result<(), Error> {
        let got = entries(dev)?;
        t.check(
            &format!("{name}: {what}"),
            got == want,
            format!("2 MiB entries, 4 KiB entries, spares {got:?}, expected {want:?}"),
        );
        Ok(())
    };
    dev.vm_bind(&[map_op(a.handle, 0, VA, 4 * MIB, false)])?;
    check(
        t,
        "4 MiB at a 2 MiB aligned VA: two 2 MiB entries, a spare table each",
        (2, 0, 2),
    )?;
    dev.vm_bind(&[unmap_op(VA + MIB, KIB4)])?;
    check(
        t,
        "unmapping 4 KiB in the middle splits one 2 MiB entry",
        (1, 511, 1),
    )?;
    dev.vm_bind(&[map_op(small.handle, 0, VA + MIB, KIB4, false)])?;
    check(t, "the hole takes a new 4 KiB mapping", (1, 512, 1))?;
    dev.vm_bind(&[unmap_op(VA, 4 * MIB)])?;
    check(t, "unmapping everything", (0, 0, 0))?;
    dev.vm_bind(&[map_op(a.handle, 0, VA + KIB4, 4 * MIB, false)])?;
    check(
        t,
        "4 MiB at a VA that is not 2 MiB aligned: 4 KiB entries",
        (0, 1024, 0),
    )?;
    dev.vm_bind(&[unmap_op(VA, 8 * MIB)])?;
    dev.vm_bind(&[map_op(a.handle, MIB2, VA, MIB2, true)])?;
    check(t, "the second half of a buffer at a 2 MiB VA", (1, 0, 1))?;
    // Overlaps: the call fails whole and changes nothing.
    t.errno(
        &format!("{name}: VM_BIND map over a mapping"),
        dev.vm_bind(&[map_op(b.handle, 0, VA + MIB, KIB4, false)]),
        libc::ENOSPC,
    );
    t.errno(
        &format!("{name}: VM_BIND whose second map overlaps its first"),
        dev.vm_bind(&[
            map_op(b.handle, 0, 3 * VA, MIB2, false),
            map_op(small.handle, 0, 3 * VA + KIB4, KIB4, false),
        ]),
        libc::ENOSPC,
    );
    check(t, "after the failed calls, the VM is as before", (1, 0, 1))?;
    t.errno(
        &format!("{name}: VM_BIND that unmaps, then fails a map"),
        dev.vm_bind(&[
            unmap_op(VA, MIB2),
            map_op(b.handle, 0, 3 * VA, MIB2, false),
            map_op(small.handle, 0, 3 * VA, KIB4, false),
        ]),
        libc::ENOSPC,
    );
    check(t, "a failed call's unmap is undone", (1, 0, 1))?;
    dev.vm_bind(&[unmap_op(VA, MIB2), map_op(b.handle, 0, VA, MIB2, false)])?;
    check(t, "unmap and map of the same range in one call", (1, 0, 1))?;
    dev.vm_bind(&[unmap_op(0x40_0000_0000, MIB2)])?;
    t.check(
        &format!("{name}: VM_BIND unmap of a free range"),
        true,
        "succeeded",
    );
    // Bad input.
    let bad_ops: [(&str, BindOp, i32); 12] = [
        (
            "va not 4 KiB aligned",
            map_op(b.handle, 0, VA + 1, KIB4, false),
            libc::EINVAL,
        ),
        (
            "range not 4 KiB aligned",
            map_op(b.handle, 0, 5 * VA, 100, false),
            libc::EINVAL,
        ),
        (
            "range 0",
            map_op(b.handle, 0, 5 * VA, 0, false),
            libc::EINVAL,
        ),
        (
            "bo_offset not aligned",
            map_op(b.handle, 8, 5 * VA, KIB4, false),
            libc::EINVAL,
        ),
        (
            "below the VA range",
            map_op(b.handle, 0, 0, KIB4, false),
            libc::EINVAL,
        ),
        (
            "beyond the VA range",
            map_op(b.handle, 0, 0xff80_0000_0000 - KIB4, MIB2, false),
            libc::EINVAL,
        ),
        (
            "va + range overflows",
            map_op(b.handle, 0, !0xfff_u64, MIB2, false),
            libc::EINVAL,
        ),
        (
            "bo_offset + range beyond the buffer",
            map_op(b.handle, KIB4, 5 * VA, MIB2, false),
            libc::EINVAL,
        ),
        (
            "bo_offset + range overflows",
            map_op(b.handle, !0xfff_u64, 5 * VA, MIB2, false),
            libc::EINVAL,
        ),
        (
            "unknown handle",
            map_op(0xdead, 0, 5 * VA, KIB4, false),
            libc::ENOENT,
        ),
        (
            "unknown op",
            BindOp {
                op: 7,
                ..map_op(b.handle, 0, 5 * VA, KIB4, false)
            },
            libc::EINVAL,
        ),
        (
            "unmap with a handle",
            BindOp {
                handle: b.handle,
                ..unmap_op(5 * VA, KIB4)
            },
            libc::EINVAL,
        ),
    ];
    for (what, op, errno) in bad_ops {
        t.errno(
            &format!("{name}: VM_BIND {what}"),
            dev.vm_bind(&[op]),
            errno,
        );
    }
    let op = map_op(b.handle, 0, 5 * VA, KIB4, false);
    for (what, mut args, errno) in [
        (
            "vm_id 1",
            uapi::drm_conflux_vm_bind {
                vm_id: 1,
                num_ops: 1,
                ops: &op as *const _ as u64,
                ..Default::default()
            },
            libc::ENOENT,
        ),
        (
            "num_ops 0",
            uapi::drm_conflux_vm_bind {
                num_ops: 0,
                ops: &op as *const _ as u64,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "num_ops 1025",
            uapi::drm_conflux_vm_bind {
                num_ops: 1025,
                ops: &op as *const _ as u64,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "flags 1",
            uapi::drm_conflux_vm_bind {
                num_ops: 1,
                ops: &op as *const _ as u64,
                flags: 1,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "ops pointer not readable",
            uapi::drm_conflux_vm_bind {
                num_ops: 1,
                ops: 8,
                ..Default::default()
            },
            libc::EFAULT,
        ),
    ] {
        t.errno(
            &format!("{name}: VM_BIND {what}"),
            dev.vm_bind_raw(&mut args),
            errno,
        );
    }
    check(t, "after the bad calls, the VM is as before", (1, 0, 1))?;
    dev.vm_bind(&[unmap_op(VA, MIB2)])?;
    Ok(())
}

/// Waits for `job` and returns the error the job's fence has, if any.
fn job_errno(dev: &Device, job: u64) -> Option<i32> {
    dev.wait(job, -1).err().and_then(|e| e.errno())
}

/// SUBMIT and WAIT: copies and fills, fences, device errors and bad input.
fn test_jobs(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let src = dev.bo_create(MIB2)?;
    let dst = dev.bo_create(MIB2)?;
    let data: Vec<u8> = (0..MIB2 as usize).map(|i| (i * 7 + 3) as u8).collect();
    dev.write(src.handle, 0, &data)?;
    dev.vm_bind(&[
        map_op(src.handle, 0, VA, MIB2, true),
        map_op(dst.handle, 0, 2 * VA, MIB2, false),
    ])?;
    // In- and out-fences through syncobjs: the fill must run before the copy.
    let s1 = dev.syncobj_create()?;
    let s2 = dev.syncobj_create()?;
    let j1 = dev.submit(&[fill_cmd(2 * VA + 5, 1000, 0x1122_3344_5566_7788)], 0, s1)?;
    let j2 = dev.submit(&[copy_cmd(VA + 11, 2 * VA + 100, 50)], s1, s2)?;
    t.check(
        &format!("{name}: SUBMIT returns job numbers in order"),
        j2 == j1 + 1,
        format!("{j1}, {j2}"),
    );
    // No WAIT: BO_READ waits for the jobs that write the buffer.
    let mut out = vec![0u8; 4096];
    dev.read(dst.handle, 0, &mut out)?;
    let pat = 0x1122_3344_5566_7788u64.to_le_bytes();
    let want = |i: usize| match i {
        100..150 => data[i - 100 + 11],
        5..1005 => pat[(i - 5) % 8],
        _ => 0,
    };
    let wrong = (0..out.len()).find(|&i| out[i] != want(i));
    t.check(
        &format!("{name}: fill then copy, ordered by a syncobj, read back without WAIT"),
        wrong.is_none(),
        format!("first wrong byte {wrong:?}"),
    );
    t.check(
        &format!("{name}: WAIT on completed jobs"),
        dev.wait(j1, 0).is_ok() && dev.wait(j2, -1).is_ok(),
        "0",
    );
    // A device error becomes the job's fence error; the engine runs the next job.
    let errors = dev.info()?.errors;
    let bad = dev.submit(&[copy_cmd(3 * VA, 2 * VA, 64)], 0, s1)?;
    t.check(
        &format!("{name}: a COPY from an unmapped VA fails its job with EIO"),
        job_errno(dev, bad) == Some(libc::EIO),
        format!("{:?}", job_errno(dev, bad)),
    );
    t.check(
        &format!("{name}: WAIT reports the failure again"),
        job_errno(dev, bad) == Some(libc::EIO),
        "EIO",
    );
    let ro = dev.submit(&[fill_cmd(VA, 8, 0)], 0, 0)?;
    t.check(
        &format!("{name}: a FILL through a read-only mapping fails with EIO"),
        job_errno(dev, ro) == Some(libc::EIO),
        format!("{:?}", job_errno(dev, ro)),
    );
    t.check(
        &format!("{name}: the device counted both errors"),
        dev.info()?.errors == errors + 2,
        dev.info()?.errors - errors,
    );
    t.errno(
        &format!("{name}: SUBMIT after a failed in-fence"),
        dev.submit(&[fill_cmd(2 * VA, 8, 0)], s1, 0),
        libc::EIO,
    );
    let ok = dev.submit(&[copy_cmd(VA, 2 * VA, MIB2)], 0, 0)?;
    dev.wait(ok, -1)?;
    let mut all = vec![0u8; MIB2 as usize];
    dev.read(dst.handle, 0, &mut all)?;
    t.check(
        &format!("{name}: after the errors, a 2 MiB copy runs and is exact"),
        all == data,
        "compared",
    );
    // WAIT that times out: a long job.
    let long: Vec<Cmd> = (0..64).map(|_| copy_cmd(VA, 2 * VA, MIB2)).collect();
    let mut lj = 0;
    for _ in 0..4 {
        lj = dev.submit(&long, 0, 0)?;
    }
    t.errno(
        &format!("{name}: WAIT with timeout 0 on a job behind 512 MiB of copies"),
        dev.wait(lj, 0),
        libc::ETIME,
    );
    dev.wait(lj, -1)?;
    // Bad input.
    let cmd = |c: Cmd| vec![c];
    for (what, cmds, errno) in [
        (
            "unknown op",
            cmd(Cmd {
                op: 9,
                ..fill_cmd(2 * VA, 8, 0)
            }),
            libc::EINVAL,
        ),
        ("len 0", cmd(fill_cmd(2 * VA, 0, 0)), libc::EINVAL),
        (
            "len above 4 GiB",
            cmd(fill_cmd(2 * VA, (1 << 32) + 1, 0)),
            libc::EINVAL,
        ),
        (
            "overlapping COPY",
            cmd(copy_cmd(2 * VA, 2 * VA + 8, 16)),
            libc::EINVAL,
        ),
        (
            "address below the VA range",
            cmd(fill_cmd(4096, 8, 0)),
            libc::EINVAL,
        ),
        (
            "address range overflows",
            cmd(fill_cmd(u64::MAX - 4, 8, 0)),
            libc::EINVAL,
        ),
        (
            "pad 1",
            cmd(Cmd {
                pad: 1,
                ..fill_cmd(2 * VA, 8, 0)
            }),
            libc::EINVAL,
        ),
        (
            "65 commands",
            (0..65).map(|_| fill_cmd(2 * VA, 8, 0)).collect(),
            libc::EINVAL,
        ),
    ] {
        t.errno(
            &format!("{name}: SUBMIT {what}"),
            dev.submit(&cmds, 0, 0),
            errno,
        );
    }
    t.errno(
        &format!("{name}: SUBMIT with no commands"),
        dev.submit(&[], 0, 0),
        libc::EINVAL,
    );
    let c = fill_cmd(2 * VA, 8, 0);
    for (what, mut args, errno) in [
        (
            "vm_id 1",
            uapi::drm_conflux_submit {
                vm_id: 1,
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                ..Default::default()
            },
            libc::ENOENT,
        ),
        (
            "unknown in-syncobj",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                in_syncobj: 999,
                ..Default::default()
            },
            libc::ENOENT,
        ),
        (
            "unknown out-syncobj",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                out_syncobj: 999,
                ..Default::default()
            },
            libc::ENOENT,
        ),
        (
            "flags 1",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                flags: 1,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "commands not readable",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: 8,
                ..Default::default()
            },
            libc::EFAULT,
        ),
    ] {
        t.errno(
            &format!("{name}: SUBMIT {what}"),
            dev.submit_raw(&mut args),
            errno,
        );
    }
    let empty = dev.syncobj_create()?;
    t.errno(
        &format!("{name}: SUBMIT with an in-syncobj without fence"),
        dev.submit(&[c], empty, 0),
        libc::EINVAL,
    );
    t.errno(&format!("{name}: WAIT job 0"), dev.wait(0, 0), libc::EINVAL);
    t.errno(
        &format!("{name}: WAIT on a job never submitted"),
        dev.wait(lj + 100, 0),
        libc::EINVAL,
    );
    let mut w = uapi::drm_conflux_wait {
        job: lj,
        flags: 1,
        ..Default::default()
    };
    t.errno(
        &format!("{name}: WAIT flags 1"),
        dev.wait_raw(&mut w),
        libc::EINVAL,
    );
    // BO_READ and BO_WRITE bad input.
    let mut buf = [0u8; 8];
    t.errno(
        &format!("{name}: BO_READ at an offset not a multiple of 4"),
        dev.read(dst.handle, 2, &mut buf),
        libc::EINVAL,
    );
    t.errno(
        &format!("{name}: BO_READ beyond the buffer"),
        dev.read(dst.handle, MIB2 - 4, &mut buf),
        libc::EINVAL,
    );
    t.errno(
        &format!("{name}: BO_WRITE to an unknown handle"),
        dev.write(0xdead, 0, &buf),
        libc::ENOENT,
    );
    let mut rw = uapi::drm_conflux_bo_rw {
        handle: dst.handle,
        size: 8,
        data: 8,
        ..Default::default()
    };
    t.errno(
        &format!("{name}: BO_READ to an unwritable pointer"),
        dev.bo_rw_raw(false, &mut rw),
        libc::EFAULT,
    );
    for s in [s1, s2, empty] {
        dev.syncobj_destroy(s)?;
    }
    dev.vm_bind(&[unmap_op(VA, MIB2), unmap_op(2 * VA, MIB2)])?;
    Ok(())
}

/// With the driver loaded with `job_timeout_ms=500`: a job of 256 GiB of copies (buffers of
/// 32 MiB mapped 128 times over 4 GiB) fails with ETIMEDOUT, the engine is reset, and the next
/// job runs.
fn test_timeout(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let size = 32 * MIB;
    let a = dev.bo_create(size)?;
    let b = dev.bo_create(size)?;
    let maps = |handle: u32, base: u64, readonly: bool| -> Vec<BindOp> {
        (0..128)
            .map(|i| map_op(handle, 0, base + i * size, size, readonly))
            .collect()
    };
    dev.vm_bind(&maps(a.handle, VA, true))?;
    dev.vm_bind(&maps(b.handle, 4 * VA, false))?;
    let long: Vec<Cmd> = (0..64).map(|_| copy_cmd(VA, 4 * VA, 1 << 32)).collect();
    let job = dev.submit(&long, 0, 0)?;
    t.errno(
        &format!("{name}: a job of 256 GiB of copies times out"),
        dev.wait(job, -1),
        libc::ETIMEDOUT,
    );
    let next = dev.submit(&[fill_cmd(4 * VA + 1, 10, 0x0807_0605_0403_0201)], 0, 0)?;
    t.check(
        &format!("{name}: after the reset, the next job runs"),
        dev.wait(next, -1).is_ok(),
        format!("job {next}"),
    );
    let mut out = [0u8; 12];
    dev.read(b.handle, 0, &mut out)?;
    t.check(
        &format!("{name}: and writes what it should"),
        out[1..11] == [1, 2, 3, 4, 5, 6, 7, 8, 1, 2],
        format!("{out:?}"),
    );
    Ok(())
}

/// Unbinds the device at `path` from the driver while a file of it is open with a buffer in
/// VRAM, mapped in its VM and used by jobs in flight, then binds it again: the file sees
/// ENODEV, closing it frees the buffer and the VM after the device is gone, and the device
/// comes back with all of its VRAM.
/// `len` bytes of a pattern that differs at every offset and with `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 9) as u8 ^ seed)
        .collect()
}

/// The first offset where `got` differs from `want`.
fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i))
}

/// Reads all of a mapping.
fn mapped(m: &Mapping) -> Vec<u8> {
    let mut out = vec![0u8; m.len()];
    m.read(0, &mut out);
    out
}

/// System-memory buffers, placements, BO_INFO and mmap().
fn test_memory(t: &mut Tally, dev: &Device) -> Result<(), Error> {
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

fn unbind_with_buffer(t: &mut Tally, path: &std::path::Path) -> Result<(), Error> {
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

/// The bytes the engine of `dev` moved: within its VRAM, to or from peers, to or from system
/// memory.
fn counters(dev: &Device) -> Result<[u64; 3], Error> {
    let i = dev.info()?;
    Ok([i.local_bytes, i.p2p_bytes, i.sysmem_bytes])
}

/// How `to` reaches a VRAM buffer of `from`, found by PRIME import: the path, or the errno of
/// the refusal.
fn prime_reach(from: &Device, to: &Device) -> Result<Result<u32, i32>, Error> {
    let bo = from.bo_create(MIB)?;
    let fd = from.export(bo.handle)?;
    Ok(match to.import(fd.0.as_fd()) {
        Ok(imported) => Ok(to.bo_info(imported.handle)?.path),
        Err(e) => Err(e.errno().unwrap_or(0)),
    })
}

/// What every member of the VM of `dev`, which has `members`, maps at `va`: each one's path.
fn paths_at(dev: &Device, members: usize, va: u64) -> Result<Vec<u32>, Error> {
    (0..members as u32).map(|m| dev.vm_path(m, va)).collect()
}

extern "C" fn on_alarm(_: libc::c_int) {}

/// Sends SIGALRM to the process every `usec` microseconds (0: stops), with a handler installed
/// without `SA_RESTART`, so that a blocking call it interrupts fails with `EINTR`.
fn alarms(usec: i64) {
    // SAFETY: `sigaction` and `setitimer` take valid, initialised structures; the handler does
    // nothing, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: usec as _,
        };
        let timer = libc::itimerval {
            it_interval: tv,
            it_value: tv,
        };
        libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut());
    }
}

/// The shared VM: joining, the path each member takes, a bind as one transaction across
/// devices, jobs on three devices through one VA space with fences between them, and a bind
/// interrupted by signals.
fn test_shared_vm(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    let files = paths
        .iter()
        .map(Device::open)
        .collect::<Result<Vec<_>, _>>()?;
    let n = files.len();
    let name0 = files[0].path().display().to_string();
    let mut reach = vec![Ok(uapi::DRM_CONFLUX_PATH_LOCAL)];
    for f in &files[1..] {
        reach.push(prime_reach(&files[0], f)?);
    }
    let join = |fd: i32, flags: u32| uapi::drm_conflux_vm_join {
        fd,
        flags,
        ..Default::default()
    };
    let null = std::fs::File::open("/dev/null").map_err(io_err("/dev/null", "open"))?;
    let f1 = &files[1];
    let name1 = f1.path().display().to_string();
    t.errno(
        &format!("{name1}: VM_JOIN of /dev/null"),
        f1.vm_join_raw(&mut join(null.as_raw_fd(), 0)),
        libc::EINVAL,
    );
    t.errno(
        &format!("{name1}: VM_JOIN of its own file"),
        f1.vm_join(f1),
        libc::EINVAL,
    );
    t.errno(
        &format!("{name1}: VM_JOIN of fd -1"),
        f1.vm_join_raw(&mut join(-1, 0)),
        libc::EBADF,
    );
    t.errno(
        &format!("{name1}: VM_JOIN with flags 1"),
        f1.vm_join_raw(&mut join(files[0].as_fd().as_raw_fd(), 1)),
        libc::EINVAL,
    );
    for (i, f) in files.iter().enumerate().skip(1) {
        let got = f.vm_join(&files[0])?;
        t.check(
            &format!("{}: VM_JOIN of {name0}'s VM", f.path().display()),
            got == (i as u32 + 1, i as u32),
            format!("{} members, member {}", got.0, got.1),
        );
    }
    let again = f1.vm_join(&files[0])?;
    t.check(
        &format!("{name1}: VM_JOIN of the VM it shares changes nothing"),
        again == (n as u32, 1),
        format!("{} members, member {}", again.0, again.1),
    );
    let lone = Device::open(&paths[0])?;
    let lone_bo = lone.bo_create(MIB)?;
    lone.vm_bind(&[map_op(lone_bo.handle, 0, VA, MIB, false)])?;
    t.errno(
        &format!("{name0}: a VM with a mapping joins another"),
        lone.vm_join(&files[0]),
        libc::EBUSY,
    );
    t.errno(
        &format!("{name0}: a VM joins one with a mapping"),
        Device::open(&paths[1])?.vm_join(&lone),
        libc::EBUSY,
    );
    let other = Device::open(&paths[0])?;
    t.errno(
        &format!("{name1}: a member of a shared VM joins another"),
        f1.vm_join(&other),
        libc::EBUSY,
    );
    t.errno(
        &format!("{name0}: VM_PATH of member {n} of {n}"),
        files[0].vm_path(n as u32, VA),
        libc::ENOENT,
    );
    let mut bad = uapi::drm_conflux_vm_path {
        va: VA,
        flags: 1,
        ..Default::default()
    };
    t.errno(
        &format!("{name0}: VM_PATH with flags 1"),
        files[0].vm_path_raw(&mut bad),
        libc::EINVAL,
    );

    // A VRAM buffer of device 0 binds on every member only if every device reaches it; else
    // the call fails and no member changes.
    let len = 4 * MIB;
    let a = files[0].bo_create(len)?;
    let before = files.iter().map(entries).collect::<Result<Vec<_>, _>>()?;
    let bound = files[0].vm_bind(&[map_op(a.handle, 0, VA, len, false)]);
    let want: Vec<u32> = reach.iter().map(|r| *r.as_ref().unwrap_or(&0)).collect();
    let shown = |v: &[u32]| {
        v.iter()
            .map(|&p| conflux::path_name(p))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(refused) = reach.iter().find_map(|r| r.err()) {
        t.errno(
            &format!("{name0}: VM_BIND of a VRAM buffer on {n} members, one of which has no route"),
            bound,
            refused,
        );
        let after = files.iter().map(entries).collect::<Result<Vec<_>, _>>()?;
        let now = paths_at(&files[0], n, VA)?;
        t.check(
            &format!("{name0}: the refused bind changed no member"),
            after == before && now.iter().all(|&p| p == 0),
            format!("page-table entries {after:?}, before {before:?}; paths {now:?}"),
        );
    } else {
        t.check(
            &format!("{name0}: VM_BIND of a VRAM buffer on {n} members"),
            bound.is_ok(),
            "every device reaches it",
        );
        let now = paths_at(&files[0], n, VA)?;
        t.check(
            &format!("{name0}: each member's path to the buffer is its PRIME import's"),
            now == want,
            format!("{}; PRIME import: {}", shown(&now), shown(&want)),
        );
        files[0].vm_bind(&[unmap_op(VA, len)])?;
    }
    // System memory of device 0 is reached by every member: the last device fills it through
    // the shared VM, and device 0 reads the fill back.
    let sys = files[0].bo_create_in(len, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    files[0].vm_bind(&[map_op(sys.handle, 0, 3 * VA, len, false)])?;
    let now = paths_at(&files[0], n, 3 * VA)?;
    t.check(
        &format!("{name0}: every member reaches a system-memory buffer through system memory"),
        now.iter().all(|&p| p == uapi::DRM_CONFLUX_PATH_SYSTEM),
        shown(&now),
    );
    let last = &files[n - 1];
    let c0 = counters(last)?;
    let job = last.submit(&[fill_cmd(3 * VA, len, 0x5a5a_5a5a_5a5a_5a5a)], 0, 0)?;
    last.wait(job, -1)?;
    let c1 = counters(last)?;
    let mut got = vec![0; len as usize];
    files[0].read(sys.handle, 0, &mut got)?;
    t.check(
        &format!(
            "{}: a fill through the shared VM lands in {name0}'s system memory",
            last.path().display()
        ),
        got.iter().all(|&b| b == 0x5a) && c1[2] - c0[2] == len,
        format!("system memory +{} bytes", c1[2] - c0[2]),
    );
    files[0].vm_bind(&[unmap_op(3 * VA, len)])?;
    let now = paths_at(&files[0], n, 3 * VA)?;
    t.check(
        &format!("{name0}: an unbind on the shared VM unmaps on every member"),
        now.iter().all(|&p| p == 0),
        format!("paths {now:?}"),
    );
    drop((sys, a));

    // Jobs on three devices that reach each other, through one VA space.
    let peers: Vec<usize> = (0..n).filter(|&i| reach[i].is_ok()).collect();
    if peers.len() < 3 {
        t.check(
            "three devices that reach each other by P2P",
            false,
            format!("only {peers:?}"),
        );
        return Ok(());
    }
    let mut g = peers[..3]
        .iter()
        .map(|&i| Device::open(&paths[i]))
        .collect::<Result<Vec<_>, _>>()?;
    g[1].vm_join(&g[0])?;
    g[2].vm_join(&g[0])?;
    let (a_va, b_va, c_va, a2_va) = (VA, 2 * VA, 3 * VA, 4 * VA);
    // The handles stay with the files, which close at the end.
    let a = g[0].bo_create(len)?.into_handle();
    let a2 = g[0].bo_create(len)?.into_handle();
    let b = g[1].bo_create(len)?.into_handle();
    let c = g[2].bo_create(len)?.into_handle();
    let data = pattern(len as usize, 11);
    g[0].write(a, 0, &data)?;
    g[0].vm_bind(&[
        map_op(a, 0, a_va, len, false),
        map_op(a2, 0, a2_va, len, false),
    ])?;
    g[1].vm_bind(&[map_op(b, 0, b_va, len, false)])?;
    g[2].vm_bind(&[map_op(c, 0, c_va, len, false)])?;
    let names: Vec<String> = g.iter().map(|d| d.path().display().to_string()).collect();
    let on_b = paths_at(&g[0], 3, b_va)?;
    let peer = |p: u32| p == uapi::DRM_CONFLUX_PATH_P2P || p == uapi::DRM_CONFLUX_PATH_HOST_BRIDGE;
    t.check(
        &format!(
            "{}: a buffer bound from member 1 is local there, P2P on the others",
            names[1]
        ),
        on_b[1] == uapi::DRM_CONFLUX_PATH_LOCAL && peer(on_b[0]) && peer(on_b[2]),
        shown(&on_b),
    );
    let before = g.iter().map(counters).collect::<Result<Vec<_>, _>>()?;
    // B copies A to B; A and C wait on B's fence and copy B on.
    let s1 = g[1].syncobj_create()?;
    let j1 = g[1].submit(&[copy_cmd(a_va, b_va, len)], 0, s1)?;
    let fence = g[1].syncobj_export(s1)?;
    let s0 = g[0].syncobj_import(fence.as_fd())?;
    let s2 = g[2].syncobj_import(fence.as_fd())?;
    let j0 = g[0].submit(&[copy_cmd(b_va, a2_va, len)], s0, 0)?;
    let j2 = g[2].submit(&[copy_cmd(b_va, c_va, len)], s2, 0)?;
    g[1].wait(j1, -1)?;
    g[0].wait(j0, -1)?;
    g[2].wait(j2, -1)?;
    let after = g.iter().map(counters).collect::<Result<Vec<_>, _>>()?;
    let mut got_a2 = vec![0; len as usize];
    let mut got_c = vec![0; len as usize];
    g[0].read(a2, 0, &mut got_a2)?;
    g[2].read(c, 0, &mut got_c)?;
    let p2p: Vec<u64> = (0..3).map(|i| after[i][1] - before[i][1]).collect();
    let sysmem: Vec<u64> = (0..3).map(|i| after[i][2] - before[i][2]).collect();
    t.check(
        &format!(
            "{} -> {} -> {} and {}: copies through the shared VM, after B's fence, data checked",
            names[0], names[1], names[0], names[2]
        ),
        got_a2 == data && got_c == data,
        format!(
            "first difference {:?} and {:?}",
            first_diff(&got_a2, &data),
            first_diff(&got_c, &data)
        ),
    );
    t.check(
        "each device's engine moved the copy over P2P, none through system memory",
        p2p.iter().all(|&b| b == len) && sysmem.iter().all(|&b| b == 0),
        format!("p2p +{p2p:?}, system memory +{sysmem:?}"),
    );

    // A bind that unmaps waits for every member's jobs; signals interrupt it with no effect.
    let long: Vec<Cmd> = (0..64)
        .map(|_| copy_cmd(c_va, c_va + len / 2, len / 2))
        .collect();
    let moved = [map_op(a2, 0, 5 * VA, len, false), unmap_op(a2_va, len)];
    let mut interrupted = false;
    for attempt in 0..4 {
        for _ in 0..(2 << attempt) {
            g[2].submit(&long, 0, 0)?;
        }
        let before = g.iter().map(entries).collect::<Result<Vec<_>, _>>()?;
        alarms(1000);
        let r = g[0].vm_bind_as(&moved, false);
        alarms(0);
        match r {
            Err(e) if e.errno() == Some(libc::EINTR) => {
                interrupted = true;
                let after = g.iter().map(entries).collect::<Result<Vec<_>, _>>()?;
                let old = paths_at(&g[0], 3, a2_va)?;
                let new = paths_at(&g[0], 3, 5 * VA)?;
                t.check(
                    &format!(
                        "{}: a bind interrupted while member 2's jobs run changed nothing",
                        names[0]
                    ),
                    after == before && old.iter().all(|&p| p != 0) && new.iter().all(|&p| p == 0),
                    format!(
                        "entries {after:?}, before {before:?}; old range {}, new range {new:?}",
                        shown(&old)
                    ),
                );
                let again = g[0].vm_bind(&moved);
                let old = paths_at(&g[0], 3, a2_va)?;
                let new = paths_at(&g[0], 3, 5 * VA)?;
                t.check(
                    &format!("{}: the same bind again succeeds on every member", names[0]),
                    again.is_ok() && old.iter().all(|&p| p == 0) && new.iter().all(|&p| p != 0),
                    format!("{again:?}; old range {old:?}, new range {}", shown(&new)),
                );
                break;
            }
            Ok(()) => {
                // The jobs were done before a signal came: move it back, with longer jobs.
                g[0].vm_bind(&[unmap_op(5 * VA, len), map_op(a2, 0, a2_va, len, false)])?;
            }
            Err(e) => return Err(e),
        }
    }
    t.check(
        &format!(
            "{}: signals interrupted a bind waiting for another member's jobs",
            names[0]
        ),
        interrupted,
        "with up to 16 jobs of 128 MiB of copies in flight",
    );

    // A member that closes its file leaves; the others keep the VM.
    let (bname, a_path) = (names[2].clone(), g[0].vm_path(0, a_va)?);
    let gone = g.pop();
    drop(gone);
    let mut args = uapi::drm_conflux_vm_path {
        va: a_va,
        ..Default::default()
    };
    g[0].vm_path_raw(&mut args)?;
    t.check(
        &format!("{bname}: closing a member's file leaves the VM to the others"),
        args.members == 2 && args.path == a_path,
        format!(
            "{} members, member 0 path {}",
            args.members,
            conflux::path_name(args.path)
        ),
    );
    Ok(())
}

/// Writes `pci` to the conflux driver's sysfs `file` (`bind` or `unbind`).
fn driver_sysfs(pci: &str, file: &str) -> Result<(), Error> {
    let path = format!("/sys/bus/pci/drivers/conflux/{file}");
    std::fs::write(&path, pci).map_err(io_err(pci, &format!("write {path}")))
}

/// Unbinds a device whose VRAM buffer two peers import while their jobs copy from it: the jobs
/// in flight complete with their data, later jobs on the buffer fail, the peers keep working,
/// and the device comes back with all of its VRAM.
fn revoke_while_peers_copy(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
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
fn udmabuf(len: u64) -> std::io::Result<(std::fs::File, std::fs::File)> {
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
/// Runs COPY `VA..VA + len` to `2 * VA` on `dev` and waits for it: the bytes each path carried
/// (local, P2P, system memory).
fn copy_at_va(dev: &Device, len: u64) -> Result<[u64; 3], Error> {
    let c0 = counters(dev)?;
    let job = dev.submit(&[copy_cmd(VA, 2 * VA, len)], 0, 0)?;
    dev.wait(job, -1)?;
    let c1 = counters(dev)?;
    Ok([c1[0] - c0[0], c1[1] - c0[1], c1[2] - c0[2]])
}

/// A buffer created for VRAM or system memory moves to system memory when a device without a
/// route to the exporter's VRAM maps it: its VRAM is freed, and the exporter's VM, a P2P
/// importer and a CPU mapping made before the move all reach the moved bytes.
fn test_migration(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    let files = paths
        .iter()
        .map(Device::open)
        .collect::<Result<Vec<_>, _>>()?;
    let x = &files[0];
    let name = x.path().display().to_string();
    let (mut far, mut near) = (None, None);
    for f in &files[1..] {
        match prime_reach(x, f)? {
            Err(e) if e == libc::EXDEV => far = far.or(Some(f)),
            Ok(_) => near = near.or(Some(f)),
            Err(_) => {}
        }
    }
    let (Some(y), Some(z)) = (far, near) else {
        println!("# {name}: no device both with and without a route to its VRAM: no move to test");
        return Ok(());
    };
    let (yn, zn) = (y.path().display(), z.path().display());
    let len = 4 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = x.bo_create_in(len, both)?.into_handle();
    let data = pattern(len as usize, 51);
    x.write(bo, 0, &data)?;
    let m = x.map(bo)?;
    let seen = mapped(&m);
    let info = x.bo_info(bo)?;
    t.check(
        &format!("{name}: a buffer for VRAM or system memory starts in VRAM"),
        info.placement == uapi::DRM_CONFLUX_BO_VRAM && seen == data,
        format!(
            "placement {}; mapping differs at {:?}",
            placement_name(info.placement),
            first_diff(&seen, &data)
        ),
    );
    let x_dst = x.bo_create(len)?.into_handle();
    x.vm_bind(&[
        map_op(bo, 0, VA, len, false),
        map_op(x_dst, 0, 2 * VA, len, false),
    ])?;
    let fd = x.export(bo)?;
    let z_bo = z.import(fd.0.as_fd())?.into_handle();
    let z_dst = z.bo_create(len)?.into_handle();
    z.vm_bind(&[
        map_op(z_bo, 0, VA, len, false),
        map_op(z_dst, 0, 2 * VA, len, false),
    ])?;
    let moved = copy_at_va(z, len)?;
    t.check(
        &format!("{zn}: reads {name}'s buffer by P2P while it is in VRAM"),
        moved[1] == len && moved[2] == 0,
        format!("P2P +{}, system memory +{} bytes", moved[1], moved[2]),
    );

    let y_bo = y.import(fd.0.as_fd())?.into_handle();
    let y_info = y.bo_info(y_bo)?;
    let still = x.bo_info(bo)?.placement;
    t.check(
        &format!("{yn}: imports {name}'s buffer, which it cannot reach in VRAM"),
        y_info.path == uapi::DRM_CONFLUX_PATH_SYSTEM && still == uapi::DRM_CONFLUX_BO_VRAM,
        format!(
            "path {}; the buffer stays in {} until the first map",
            conflux::path_name(y_info.path),
            placement_name(still)
        ),
    );
    let avail = x.info()?.vram_avail;
    let y_dst = y.bo_create(len)?.into_handle();

    // The exporter and the P2P importer still run jobs that read the buffer (256 MiB of copies
    // each) when the move starts: it waits for them, and they finish on the old addresses.
    let long: Vec<Cmd> = (0..64).map(|_| copy_cmd(VA, 2 * VA, len)).collect();
    let before = [counters(x)?, counters(z)?];
    let jobs = [x.submit(&long, 0, 0)?, z.submit(&long, 0, 0)?];
    let running = [x.wait(jobs[0], 0).is_err(), z.wait(jobs[1], 0).is_err()];
    y.vm_bind(&[
        map_op(y_bo, 0, VA, len, false),
        map_op(y_dst, 0, 2 * VA, len, false),
    ])?;
    let errors = [job_errno(x, jobs[0]), job_errno(z, jobs[1])];
    let after = [counters(x)?, counters(z)?];
    let mut copied = [vec![0; len as usize], vec![0; len as usize]];
    x.read(x_dst, 0, &mut copied[0])?;
    z.read(z_dst, 0, &mut copied[1])?;
    t.check(
        &format!("{name}, {zn}: jobs running when {yn}'s map moves the buffer finish first"),
        running.iter().any(|&r| r)
            && errors == [None, None]
            && after[0][0] - before[0][0] == 64 * len
            && after[1][1] - before[1][1] == 64 * len
            && after[0][2] == before[0][2]
            && after[1][2] == before[1][2]
            && copied[0] == data
            && copied[1] == data,
        format!(
            "still running at the bind: {running:?}; fence errors {errors:?}; \
             {name} local +{}, system memory +{}; {zn} P2P +{}, system memory +{}; \
             copies differ at {:?} and {:?}",
            after[0][0] - before[0][0],
            after[0][2] - before[0][2],
            after[1][1] - before[1][1],
            after[1][2] - before[1][2],
            first_diff(&copied[0], &data),
            first_diff(&copied[1], &data)
        ),
    );
    let info = x.bo_info(bo)?;
    let freed = x.info()?.vram_avail - avail;
    t.check(
        &format!("{name}: the buffer moved to system memory when {yn} mapped it"),
        info.placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && info.path == uapi::DRM_CONFLUX_PATH_SYSTEM
            && freed == len,
        format!(
            "placement {}, path {}; {freed} bytes of VRAM freed",
            placement_name(info.placement),
            conflux::path_name(info.path)
        ),
    );
    let z_path = z.bo_info(z_bo)?.path;
    t.check(
        &format!("{zn}: its import of the moved buffer reports system memory"),
        z_path == uapi::DRM_CONFLUX_PATH_SYSTEM,
        conflux::path_name(z_path),
    );
    let zero = vec![0; len as usize];
    for (dev, dst, who) in [
        (y, y_dst, "the importer that made it move"),
        (
            x,
            x_dst,
            "the exporter, through the VM it mapped the buffer in before",
        ),
        (
            z,
            z_dst,
            "the P2P importer, through its mapping from before",
        ),
    ] {
        dev.write(dst, 0, &zero)?;
        let moved = copy_at_va(dev, len)?;
        let mut got = vec![0; len as usize];
        dev.read(dst, 0, &mut got)?;
        t.check(
            &format!(
                "{}: copies the moved buffer from system memory: {who}",
                dev.path().display()
            ),
            got == data && moved[2] == len && moved[1] == 0,
            format!(
                "first difference {:?}; P2P +{}, system memory +{} bytes",
                first_diff(&got, &data),
                moved[1],
                moved[2]
            ),
        );
    }
    let seen = mapped(&m);
    let new = pattern(4 * 4096, 52);
    m.write(0, &new);
    let mut got = vec![0; new.len()];
    x.read(bo, 0, &mut got)?;
    t.check(
        &format!("{name}: a CPU mapping made before the move reaches the moved bytes"),
        seen == data && got == new,
        format!(
            "reads differ at {:?}, writes at {:?}",
            first_diff(&seen, &data),
            first_diff(&got, &new)
        ),
    );
    drop(m);
    for dev in [x, y, z] {
        dev.vm_bind(&[unmap_op(VA, len), unmap_op(2 * VA, len)])?;
    }

    // A shared VM of every device maps a movable buffer of device 0: the bind moves it, and
    // every member reaches it in system memory.
    let g = paths
        .iter()
        .map(Device::open)
        .collect::<Result<Vec<_>, _>>()?;
    for member in &g[1..] {
        member.vm_join(&g[0])?;
    }
    let n = g.len();
    let sbo = g[0].bo_create_in(len, both)?.into_handle();
    g[0].vm_bind(&[map_op(sbo, 0, VA, len, false)])?;
    let now = paths_at(&g[0], n, VA)?;
    let placement = g[0].bo_info(sbo)?.placement;
    t.check(
        &format!("{name}: a shared VM of {n} devices maps a movable buffer on every member"),
        placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && now.iter().all(|&p| p == uapi::DRM_CONFLUX_PATH_SYSTEM),
        format!("placement {}; paths {now:?}", placement_name(placement)),
    );
    let last = &g[n - 1];
    let job = last.submit(&[fill_cmd(VA, len, 0x6b6b_6b6b_6b6b_6b6b)], 0, 0)?;
    last.wait(job, -1)?;
    let mut got = vec![0; len as usize];
    g[0].read(sbo, 0, &mut got)?;
    t.check(
        &format!(
            "{}: a fill through the shared VM lands in the moved buffer",
            last.path().display()
        ),
        got.iter().all(|&b| b == 0x6b),
        format!(
            "first other byte at {:?}",
            got.iter().position(|&b| b != 0x6b)
        ),
    );
    g[0].vm_bind(&[unmap_op(VA, len)])?;
    Ok(())
}

/// `VFIO_*` ioctls of `include/uapi/linux/vfio.h`: `_IO(';', 100 + n)`.
const fn vfio_ioctl(n: u64) -> u64 {
    (b';' as u64) << 8 | (100 + n)
}
const VFIO_SET_IOMMU: u64 = vfio_ioctl(2);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_ioctl(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_ioctl(6);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_ioctl(8);
const VFIO_DEVICE_FEATURE: u64 = vfio_ioctl(17);
const VFIO_NOIOMMU_IOMMU: libc::c_ulong = 8;
const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
const VFIO_DEVICE_FEATURE_DMA_BUF: u32 = 11;
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
const PCI_COMMAND: u64 = 4;
const PCI_COMMAND_MEMORY: u16 = 2;

/// `struct vfio_region_info`, without capabilities.
#[repr(C)]
#[derive(Default)]
struct VfioRegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

/// `struct vfio_device_feature` carrying a `struct vfio_device_feature_dma_buf` with one range.
#[repr(C)]
struct VfioDmaBufFeature {
    argsz: u32,
    flags: u32,
    region_index: u32,
    open_flags: u32,
    dma_buf_flags: u32,
    nr_ranges: u32,
    offset: u64,
    length: u64,
}

/// A plain ivshmem function (the same PCI ID as Conflux devices, which Conflux declines) bound
/// to vfio-pci in no-IOMMU mode, opened through its group. Dropping it closes the device, then
/// gives the function back to no driver.
struct VfioPlain {
    device: std::fs::File,
    _group: std::fs::File,
    _container: std::fs::File,
    bdf: Unbind,
}

/// The address of a function bound to vfio-pci, which dropping unbinds. vfio-pci's unbind
/// waits for the device's files to close: drop it last.
struct Unbind(String);

impl Drop for Unbind {
    fn drop(&mut self) {
        let bdf = &self.0;
        let _ = std::fs::write("/sys/bus/pci/drivers/vfio-pci/unbind", bdf);
        let _ = std::fs::write(format!("/sys/bus/pci/devices/{bdf}/driver_override"), "\n");
    }
}

/// `ioctl(fd, request, arg)`, its non-negative result or the error.
fn ioctl_arg<T>(fd: &impl AsRawFd, request: u64, arg: T) -> std::io::Result<i32> {
    // SAFETY: The caller passes the argument the request encodes (a pointer to its structure,
    // or an integer).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl VfioPlain {
    /// The first ivshmem function without a driver, bound to vfio-pci; `None` when there is
    /// none.
    fn bind() -> Result<Option<Self>, Error> {
        let mut bdf = None;
        for entry in std::fs::read_dir("/sys/bus/pci/devices")
            .map_err(io_err("/sys/bus/pci/devices", "read_dir"))?
            .flatten()
        {
            let p = entry.path();
            let id = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            if id("vendor").trim() == "0x1af4"
                && id("device").trim() == "0x1110"
                && !p.join("driver").exists()
            {
                bdf = Some(entry.file_name().to_string_lossy().into_owned());
                break;
            }
        }
        let Some(bdf) = bdf else {
            return Ok(None);
        };
        let write = |path: &str, value: &str| {
            std::fs::write(path, value).map_err(io_err(path, &format!("write {value:?}")))
        };
        write(
            "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode",
            "1",
        )?;
        write(
            &format!("/sys/bus/pci/devices/{bdf}/driver_override"),
            "vfio-pci",
        )?;
        write("/sys/bus/pci/drivers/vfio-pci/bind", &bdf)?;
        let bdf = Unbind(bdf);
        let link = format!("/sys/bus/pci/devices/{}/iommu_group", bdf.0);
        let group = std::fs::read_link(&link).map_err(io_err(&link, "readlink"))?;
        let group = format!(
            "/dev/vfio/noiommu-{}",
            group.file_name().unwrap_or_default().to_string_lossy()
        );
        let rw = |path: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_err(path, "open"))
        };
        let container = rw("/dev/vfio/vfio")?;
        let group_file = rw(&group)?;
        let fd = container.as_raw_fd();
        ioctl_arg(&group_file, VFIO_GROUP_SET_CONTAINER, &fd as *const i32)
            .map_err(io_err(&group, "VFIO_GROUP_SET_CONTAINER"))?;
        ioctl_arg(&container, VFIO_SET_IOMMU, VFIO_NOIOMMU_IOMMU)
            .map_err(io_err("/dev/vfio/vfio", "VFIO_SET_IOMMU (no-IOMMU)"))?;
        let name = std::ffi::CString::new(bdf.0.clone()).unwrap_or_default();
        let fd = ioctl_arg(&group_file, VFIO_GROUP_GET_DEVICE_FD, name.as_ptr())
            .map_err(io_err(&group, "VFIO_GROUP_GET_DEVICE_FD"))?;
        // SAFETY: vfio just gave us this descriptor.
        let device = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Some(Self {
            device,
            _group: group_file,
            _container: container,
            bdf,
        }))
    }

    fn device(&self) -> &std::fs::File {
        &self.device
    }

    fn bdf(&self) -> &str {
        &self.bdf.0
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` of region `index`: its size and offset in the device file.
    fn region(&self, index: u32) -> Result<(u64, u64), Error> {
        let mut info = VfioRegionInfo {
            argsz: std::mem::size_of::<VfioRegionInfo>() as u32,
            index,
            ..Default::default()
        };
        ioctl_arg(
            self.device(),
            VFIO_DEVICE_GET_REGION_INFO,
            std::ptr::from_mut(&mut info),
        )
        .map_err(io_err(
            self.bdf(),
            &format!("VFIO_DEVICE_GET_REGION_INFO {index}"),
        ))?;
        Ok((info.size, info.offset))
    }

    /// Turns the function's memory decoding on or off (vfio-pci revokes its dma-bufs while it
    /// is off).
    fn set_memory(&self, on: bool) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let (_, config) = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let at = config + PCI_COMMAND;
        let mut cmd = [0u8; 2];
        let err = io_err(self.bdf(), "PCI_COMMAND through the config region");
        self.device().read_exact_at(&mut cmd, at).map_err(err)?;
        let mut v = u16::from_le_bytes(cmd) & !PCI_COMMAND_MEMORY;
        if on {
            v |= PCI_COMMAND_MEMORY;
        }
        let err = io_err(self.bdf(), "PCI_COMMAND through the config region");
        self.device()
            .write_all_at(&v.to_le_bytes(), at)
            .map_err(err)
    }

    /// Reads (`write` false) or writes BAR2 at `offset` through the BAR2 region.
    fn bar2(&self, offset: u64, buf: &mut [u8], write: bool) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let (_, at) = self.region(2)?;
        let r = if write {
            self.device().write_all_at(buf, at + offset)
        } else {
            self.device().read_exact_at(buf, at + offset)
        };
        r.map_err(io_err(self.bdf(), "BAR2 region access"))
    }

    /// A dma-buf of `len` bytes of BAR2 from `VFIO_DEVICE_FEATURE_DMA_BUF`.
    fn dma_buf(&self, len: u64) -> Result<std::fs::File, Error> {
        let mut f = VfioDmaBufFeature {
            argsz: std::mem::size_of::<VfioDmaBufFeature>() as u32,
            flags: VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
            region_index: 2,
            open_flags: (libc::O_RDWR | libc::O_CLOEXEC) as u32,
            dma_buf_flags: 0,
            nr_ranges: 1,
            offset: 0,
            length: len,
        };
        let fd = ioctl_arg(
            self.device(),
            VFIO_DEVICE_FEATURE,
            std::ptr::from_mut(&mut f),
        )
        .map_err(io_err(self.bdf(), "VFIO_DEVICE_FEATURE_DMA_BUF of BAR2"))?;
        // SAFETY: vfio just gave us this descriptor.
        Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    }
}

/// Imports a dma-buf that vfio-pci exports for a plain ivshmem function's BAR2 (peer-to-peer
/// memory that Conflux did not write) into every device, and copies to and from it where the
/// topology has a route; vfio-pci's revocation (memory decoding off) fails the jobs on it
/// until it is on again.
fn test_vfio(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    let Some(vfio) = VfioPlain::bind()? else {
        println!("# no plain ivshmem function without a driver: no vfio-pci dma-buf to import");
        return Ok(());
    };
    let name = format!("vfio-pci {}", vfio.bdf());
    let len = 4 * MIB;
    vfio.set_memory(true)?;
    let mut data = pattern(len as usize, 71);
    vfio.bar2(0, &mut data, true)?;
    let buf = vfio.dma_buf(len)?;
    let files = paths
        .iter()
        .map(Device::open)
        .collect::<Result<Vec<_>, _>>()?;
    let mut reached = Vec::new();
    for (i, dev) in files.iter().enumerate() {
        let dn = dev.path().display();
        let imported = dev.import(buf.as_fd())?.into_handle();
        let info = dev.bo_info(imported)?;
        let vram = dev.bo_create(len)?.into_handle();
        let bind = dev.vm_bind(&[
            map_op(imported, 0, VA, len, false),
            map_op(vram, 0, 2 * VA, len, false),
        ]);
        let Ok(()) = bind else {
            let e = bind.unwrap_err();
            let left = dev.vm_path(0, VA);
            t.check(
                &format!("{dn}: a bind of {name}'s BAR2 without a route fails and maps nothing"),
                e.errno() == Some(libc::EINVAL) && matches!(left, Ok(0)),
                format!("{e}; path at the VA afterwards: {left:?}"),
            );
            continue;
        };
        let moved = copy_at_va(dev, len)?;
        let mut got = vec![0; len as usize];
        dev.read(vram, 0, &mut got)?;
        t.check(
            &format!("{dn}: copies {name}'s BAR2 into VRAM over P2P"),
            info.path == uapi::DRM_CONFLUX_PATH_EXTERNAL
                && got == data
                && moved[1] == len
                && moved[2] == 0,
            format!(
                "path {}; first difference {:?}; P2P +{}, system memory +{} bytes",
                conflux::path_name(info.path),
                first_diff(&got, &data),
                moved[1],
                moved[2]
            ),
        );
        let back = pattern(len as usize, 72 + i as u8);
        dev.write(vram, 0, &back)?;
        let c0 = counters(dev)?;
        let job = dev.submit(&[copy_cmd(2 * VA, VA, len)], 0, 0)?;
        dev.wait(job, -1)?;
        let c1 = counters(dev)?;
        let mut seen = vec![0; len as usize];
        vfio.bar2(0, &mut seen, false)?;
        t.check(
            &format!("{dn}: copies VRAM into {name}'s BAR2 over P2P"),
            seen == back && c1[1] - c0[1] == len,
            format!(
                "first difference {:?}; P2P +{} bytes",
                first_diff(&seen, &back),
                c1[1] - c0[1]
            ),
        );
        data = back;
        reached.push((dev, vram));
    }

    // vfio-pci revokes its dma-bufs while the function's memory decoding is off.
    if let Some(&(dev, vram)) = reached.first() {
        let dn = dev.path().display();
        vfio.set_memory(false)?;
        let r = dev
            .submit(&[copy_cmd(VA, 2 * VA, len)], 0, 0)
            .and_then(|job| dev.wait(job, -1).map(|_| job));
        t.check(
            &format!("{dn}: no job reaches {name}'s BAR2 while vfio-pci revokes it"),
            r.as_ref().err().and_then(Error::errno) == Some(libc::ENODEV),
            match r {
                Ok(job) => format!("job {job} completed"),
                Err(e) => e.to_string(),
            },
        );
        vfio.set_memory(true)?;
        let moved = copy_at_va(dev, len)?;
        let mut got = vec![0; len as usize];
        dev.read(vram, 0, &mut got)?;
        t.check(
            &format!("{dn}: jobs reach {name}'s BAR2 again once vfio-pci allows it"),
            got == data && moved[1] == len,
            format!(
                "first difference {:?}; P2P +{} bytes",
                first_diff(&got, &data),
                moved[1]
            ),
        );
    }
    Ok(())
}

/// The debugfs file of `conflux_static_import.ko`: a static importer (no `move_notify`, no
/// peer-to-peer), as RDMA memory registrations are.
const STATIC_IMPORT: &str = "/sys/kernel/debug/conflux_static_import/import";

/// FNV-1a (64-bit) of `data`, as `conflux_static_import.ko` hashes the bytes it maps.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One open of [`STATIC_IMPORT`]: at most one attachment, detached when dropped.
struct StaticImport(std::fs::File);

impl StaticImport {
    fn open() -> Result<Self, Error> {
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

    /// Writes `cmd` (`attach FD`, `fill BYTE`).
    fn command(&self, cmd: &str) -> Result<(), Error> {
        use std::io::Write;
        (&self.0)
            .write_all(cmd.as_bytes())
            .map_err(io_err(STATIC_IMPORT, &format!("write {cmd:?}")))
    }

    /// The importer's account of its mapping: `segments`, `bytes`, `max_segment`, `limit`,
    /// `ram`, `boundary_crossings` and `fnv1a`.
    fn report(&self) -> Result<std::collections::HashMap<String, u64>, Error> {
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
fn test_static_import(t: &mut Tally, dev: &Device) -> Result<(), Error> {
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

fn test_udmabuf(t: &mut Tally, dev: &Device) -> Result<(), Error> {
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

fn main() -> ExitCode {
    let mut t = Tally {
        passed: 0,
        failed: 0,
    };
    let found = devices();
    if std::env::args().nth(1).as_deref() == Some("--timeout") {
        match found.first().map(Device::open) {
            Some(Ok(dev)) => {
                if let Err(e) = test_timeout(&mut t, &dev) {
                    t.check(&format!("{}: job timeout", dev.path().display()), false, e);
                }
            }
            Some(Err(e)) => t.check("open", false, e),
            None => t.check("Conflux accel devices found", false, 0),
        }
        println!("{} passed, {} failed", t.passed, t.failed);
        return if t.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
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
        match Device::open(path) {
            Ok(dev) => {
                let start = dev.info().map(|i| i.vram_avail).unwrap_or(0);
                if let Err(e) = test_bind(&mut t, &dev) {
                    t.check(&format!("{}: VM_BIND", path.display()), false, e);
                }
                if let Err(e) = test_jobs(&mut t, &dev) {
                    t.check(&format!("{}: jobs", path.display()), false, e);
                }
                if let Err(e) = test_memory(&mut t, &dev) {
                    t.check(&format!("{}: memory", path.display()), false, e);
                }
                if let Err(e) = test_udmabuf(&mut t, &dev) {
                    t.check(&format!("{}: udmabuf", path.display()), false, e);
                }
                if let Err(e) = test_static_import(&mut t, &dev) {
                    t.check(&format!("{}: static importer", path.display()), false, e);
                }
                let avail = dev.info().map(|i| i.vram_avail).unwrap_or(0);
                drop(dev);
                if let Ok(dev) = Device::open(path) {
                    let after = dev.info().map(|i| i.vram_avail).unwrap_or(0);
                    t.check(
                        &format!(
                            "{}: closing the file frees its VM's buffers and tables",
                            path.display()
                        ),
                        after > avail && after == start,
                        format!(
                            "{avail} bytes available before, {after} after, {start} at the start"
                        ),
                    );
                }
            }
            Err(e) => t.check(&format!("{}: open", path.display()), false, e),
        }
        if found.len() >= 2 {
            if let Err(e) = test_shared_vm(&mut t, &found) {
                t.check(&format!("{}: shared VM", path.display()), false, e);
            }
        }
        if found.len() >= 3 {
            if let Err(e) = test_migration(&mut t, &found) {
                t.check(
                    &format!("{}: move to system memory", path.display()),
                    false,
                    e,
                );
            }
            if let Err(e) = test_vfio(&mut t, &found) {
                t.check("vfio-pci dma-buf import", false, e);
            }
            if let Err(e) = revoke_while_peers_copy(&mut t, &found) {
                t.check(&format!("{}: revocation", found[1].display()), false, e);
            }
        }
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
