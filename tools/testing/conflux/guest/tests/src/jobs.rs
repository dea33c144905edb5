// SPDX-License-Identifier: GPL-2.0

//! SUBMIT and WAIT: copies and fills, fences, device errors, bad input, and the job
//! timeout.

use conflux::{copy_cmd, fill_cmd, map_op, uapi, unmap_op, BindOp, Cmd, Device, Error};

use crate::{
    common::{job_errno, MIB, MIB2, VA},
    Tally,
};

/// SUBMIT and WAIT: copies and fills, fences, device errors and bad input.
pub(crate) fn test_jobs(t: &mut Tally, dev: &Device) -> Result<(), Error> {
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
pub(crate) fn test_timeout(t: &mut Tally, dev: &Device) -> Result<(), Error> {
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
