// SPDX-License-Identifier: GPL-2.0

//! SUBMIT and WAIT: copies and fills, fences, device errors, bad input, and the job
//! timeout.

use std::{
    os::fd::{AsFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use conflux::{
    copy_cmd, fill_cmd, map_op,
    sync::{attach_write_fence, sync_file_status, SwSync},
    uapi, unmap_op, BindOp, Cmd, Device, Error,
};

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
    // A job whose in-fence failed does not run: its own fence fails with the same error.
    let mut before = [0u8; 8];
    dev.read(dst.handle, 0, &mut before)?;
    let skipped = dev.submit(&[fill_cmd(2 * VA, 8, 0x5555_5555_5555_5555)], s1, 0)?;
    let mut after = [0u8; 8];
    dev.read(dst.handle, 0, &mut after)?;
    t.check(
        &format!("{name}: a job after a failed in-fence fails with its error and does not run"),
        job_errno(dev, skipped) == Some(libc::EIO) && before == after,
        format!("{:?}, {before:?} -> {after:?}", job_errno(dev, skipped)),
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
    // WAIT that times out: a long job, behind enough copies (a few tenths of a second for the
    // model) that a guest thread the host leaves waiting for a while still finds it running.
    let long: Vec<Cmd> = (0..64).map(|_| copy_cmd(VA, 2 * VA, MIB2)).collect();
    let mut lj = 0;
    for _ in 0..16 {
        lj = dev.submit(&long, 0, 0)?;
    }
    t.errno(
        &format!("{name}: WAIT with timeout 0 on a job behind 2 GiB of copies"),
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
    let bad_sync = [uapi::drm_conflux_sync {
        handle: 1,
        flags: 1,
        point: 0,
    }; 65];
    let unknown_sync = [uapi::drm_conflux_sync {
        handle: 999,
        flags: 0,
        point: 0,
    }];
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
            "an unknown flag",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                flags: 8,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "65 in-syncs",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                num_in_syncs: 65,
                in_syncs: bad_sync.as_ptr() as u64,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "in-syncs not readable",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                num_in_syncs: 1,
                in_syncs: 8,
                ..Default::default()
            },
            libc::EFAULT,
        ),
        (
            "an in-sync with flags",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                num_in_syncs: 1,
                in_syncs: bad_sync.as_ptr() as u64,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "an out-sync of an unknown syncobj",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                num_out_syncs: 1,
                out_syncs: unknown_sync.as_ptr() as u64,
                ..Default::default()
            },
            libc::ENOENT,
        ),
        (
            "an in_fence_fd that is not a sync_file",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                flags: uapi::DRM_CONFLUX_SUBMIT_IN_FENCE_FD,
                in_fence_fd: 0,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "an out_fence_fd without its flag",
            uapi::drm_conflux_submit {
                num_cmds: 1,
                cmds: &c as *const _ as u64,
                out_fence_fd: 3,
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
    let out = dev.syncobj_create()?;
    let job = dev.submit(&long, 0, out)?;
    // Nobody calls WAIT: the watchdog fails the job, and the syncobj's fence signals.
    let waited = dev.syncobj_wait(out, Duration::from_secs(60));
    let status = sync_file_status(dev.syncobj_export_sync_file(out)?.as_fd());
    t.check(
        &format!("{name}: a hung job's out-syncobj signals ETIMEDOUT with no WAIT"),
        waited.is_ok() && matches!(status, Ok(s) if s == -libc::ETIMEDOUT),
        format!("{waited:?}, status {status:?}"),
    );
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
    // Recovery is exact. J1 fills X with 0x11, J2 copies X to Y, J3 fills X with 0x22, then
    // J4 times out: the jobs before it completed, so none of them fails or runs again (a
    // second J2 would copy 0x22).
    let c = dev.bo_create(MIB2)?;
    dev.vm_bind(&[map_op(c.handle, 0, 2 * VA, MIB2, false)])?;
    let (x, y) = (2 * VA, 2 * VA + 4096);
    let j1 = dev.submit(&[fill_cmd(x, 64, 0x1111_1111_1111_1111)], 0, 0)?;
    let j2 = dev.submit(&[copy_cmd(x, y, 64)], 0, 0)?;
    let j3 = dev.submit(&[fill_cmd(x, 64, 0x2222_2222_2222_2222)], 0, 0)?;
    let j4 = dev.submit(&long, 0, 0)?;
    let results = [j1, j2, j3, j4].map(|j| job_errno(dev, j));
    let (mut xs, mut ys) = ([0u8; 64], [0u8; 64]);
    dev.read(c.handle, 0, &mut xs)?;
    dev.read(c.handle, 4096, &mut ys)?;
    t.check(
        &format!(
            "{name}: after a timeout, the jobs that completed before it neither fail nor run again"
        ),
        results == [None, None, None, Some(libc::ETIMEDOUT)]
            && ys == [0x11; 64]
            && xs == [0x22; 64],
        format!("results {results:?}, X {:#x}, Y {:#x}", xs[0], ys[0]),
    );
    dev.vm_bind(&[unmap_op(2 * VA, MIB2)])?;
    Ok(())
}

/// A file keeps the results of its 256 most recent failed jobs: WAIT on a failure older than
/// those says that its result is gone, never that it succeeded.
pub(crate) fn test_forgotten_failures(t: &mut Tally, path: &std::path::Path) -> Result<(), Error> {
    let name = path.display().to_string();
    let dev = &Device::open(path)?;
    let dst = dev.bo_create(MIB2)?;
    dev.vm_bind(&[map_op(dst.handle, 0, 2 * VA, MIB2, false)])?;
    let first = dev.submit(&[copy_cmd(3 * VA, 2 * VA, 64)], 0, 0)?;
    let mut last = first;
    for _ in 0..256 {
        last = dev.submit(&[copy_cmd(3 * VA, 2 * VA, 64)], 0, 0)?;
    }
    let ok = dev.submit(&[fill_cmd(2 * VA, 64, 0)], 0, 0)?;
    dev.wait(ok, -1)?;
    // With 257 failures, the next submission makes the file drop the oldest.
    let after = dev.submit(&[fill_cmd(2 * VA, 64, 0)], 0, 0)?;
    dev.wait(after, -1)?;
    t.errno(
        &format!("{name}: WAIT on a failure older than the 256 kept"),
        dev.wait(first, 0),
        libc::ESTALE,
    );
    t.check(
        &format!("{name}: WAIT on the newest failures still reports them"),
        job_errno(dev, last) == Some(libc::EIO) && dev.wait(ok, 0).is_ok(),
        format!("{:?}", job_errno(dev, last)),
    );
    dev.vm_bind(&[unmap_op(2 * VA, MIB2)])?;
    Ok(())
}

/// Fences from outside: an in-fence of a `sw_sync` timeline, a foreign fence attached to a
/// buffer, and a sync_file out-fence.
pub(crate) fn test_fences(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let sw = |e: std::io::Error| Error {
        device: "sw_sync".into(),
        call: "sw_sync".into(),
        error: e,
    };
    let src = dev.bo_create(MIB2)?;
    let dst = dev.bo_create(MIB2)?;
    dev.vm_bind(&[
        map_op(src.handle, 0, VA, MIB2, false),
        map_op(dst.handle, 0, 2 * VA, MIB2, false),
    ])?;
    // An in-fence that a thread signals two seconds later: SUBMIT returns before.
    let timeline = Arc::new(SwSync::open().map_err(sw)?);
    let in_sync = dev.syncobj_create()?;
    let out_sync = dev.syncobj_create()?;
    dev.syncobj_import_sync_file(in_sync, timeline.fence(1).map_err(sw)?.as_fd())?;
    let signalled = Arc::new(AtomicBool::new(false));
    let signaller = {
        let (timeline, signalled) = (timeline.clone(), signalled.clone());
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(2));
            signalled.store(true, Ordering::SeqCst);
            timeline.advance(1)
        })
    };
    let job = dev.submit(
        &[fill_cmd(2 * VA, 64, 0x0101_0101_0101_0101)],
        in_sync,
        out_sync,
    )?;
    let returned_first = !signalled.load(Ordering::SeqCst);
    let pending = dev.syncobj_wait(out_sync, Duration::ZERO);
    t.check(
        &format!("{name}: SUBMIT with an unsignalled sw_sync in-fence returns at once"),
        returned_first && pending.as_ref().err().and_then(Error::errno) == Some(libc::ETIME),
        format!("returned before the signal: {returned_first}, out-fence {pending:?}"),
    );
    let _ = signaller.join();
    let out_file = dev.syncobj_export_sync_file(out_sync)?;
    dev.wait(job, -1)?;
    let mut out = [0u8; 64];
    dev.read(dst.handle, 0, &mut out)?;
    t.check(
        &format!("{name}: the job runs once the in-fence signals"),
        out == [1u8; 64],
        format!("{:?}", &out[..8]),
    );
    t.check(
        &format!("{name}: its sync_file out-fence signals with it"),
        matches!(sync_file_status(out_file.as_fd()), Ok(1)),
        format!("{:?}", sync_file_status(out_file.as_fd())),
    );
    // A foreign write fence on the source buffer delays a copy from it.
    let buf = dev.export(src.handle)?;
    attach_write_fence(buf.0.as_fd(), timeline.fence(2).map_err(sw)?.as_fd()).map_err(sw)?;
    let copy = dev.submit(&[copy_cmd(VA, 2 * VA, 64)], 0, out_sync)?;
    let held = dev.syncobj_wait(out_sync, Duration::from_millis(200));
    t.check(
        &format!("{name}: a foreign fence on a buffer holds a job that reads it"),
        held.as_ref().err().and_then(Error::errno) == Some(libc::ETIME),
        format!("{held:?}"),
    );
    timeline.advance(1).map_err(sw)?;
    dev.wait(copy, -1)?;
    dev.read(dst.handle, 0, &mut out)?;
    t.check(
        &format!("{name}: and runs once it signals"),
        out == [0u8; 64],
        format!("{:?}", &out[..8]),
    );
    // With EXPLICIT_SYNC, a foreign fence on the buffer does not hold the job.
    attach_write_fence(buf.0.as_fd(), timeline.fence(3).map_err(sw)?.as_fd()).map_err(sw)?;
    let explicit = dev.submit_with(
        &[copy_cmd(VA, 2 * VA + 64, 64)],
        &mut uapi::drm_conflux_submit {
            flags: uapi::DRM_CONFLUX_SUBMIT_EXPLICIT_SYNC,
            ..Default::default()
        },
    )?;
    t.check(
        &format!("{name}: with EXPLICIT_SYNC, a foreign fence on a buffer does not hold the job"),
        dev.wait(explicit, 10_000_000_000).is_ok(),
        "WAIT",
    );
    timeline.advance(1).map_err(sw)?;
    // Timeline points: a fill signals point 7 of a syncobj, a copy waits for it, and the
    // copy's fence comes back as a sync_file.
    let points = dev.syncobj_create()?;
    let point = |point| {
        [uapi::drm_conflux_sync {
            handle: points,
            flags: 0,
            point,
        }]
    };
    let (point7, point9) = (point(7), point(9));
    dev.submit_with(
        &[fill_cmd(VA, 64, 0x0909_0909_0909_0909)],
        &mut uapi::drm_conflux_submit {
            flags: uapi::DRM_CONFLUX_SUBMIT_EXPLICIT_SYNC,
            num_out_syncs: 1,
            out_syncs: point7.as_ptr() as u64,
            ..Default::default()
        },
    )?;
    let mut args = uapi::drm_conflux_submit {
        flags: uapi::DRM_CONFLUX_SUBMIT_EXPLICIT_SYNC | uapi::DRM_CONFLUX_SUBMIT_OUT_FENCE_FD,
        num_in_syncs: 1,
        in_syncs: point7.as_ptr() as u64,
        ..Default::default()
    };
    let copy = dev.submit_with(&[copy_cmd(VA, 2 * VA + 128, 64)], &mut args)?;
    // SAFETY: SUBMIT returned this new descriptor, which nothing else owns.
    let fence_fd = unsafe { OwnedFd::from_raw_fd(args.out_fence_fd) };
    dev.wait(copy, -1)?;
    dev.read(dst.handle, 128, &mut out)?;
    t.check(
        &format!("{name}: a job waits for a timeline point another job signals"),
        out == [9u8; 64],
        format!("{:?}", &out[..8]),
    );
    t.check(
        &format!("{name}: OUT_FENCE_FD returns a sync_file of the job's fence"),
        matches!(sync_file_status(fence_fd.as_fd()), Ok(1)),
        format!("{:?}", sync_file_status(fence_fd.as_fd())),
    );
    t.errno(
        &format!("{name}: SUBMIT waiting for a timeline point nobody signalled"),
        dev.submit_with(
            &[copy_cmd(VA, 2 * VA, 8)],
            &mut uapi::drm_conflux_submit {
                num_in_syncs: 1,
                in_syncs: point9.as_ptr() as u64,
                ..Default::default()
            },
        ),
        libc::EINVAL,
    );
    for s in [in_sync, out_sync, points] {
        dev.syncobj_destroy(s)?;
    }
    dev.vm_bind(&[unmap_op(VA, MIB2), unmap_op(2 * VA, MIB2)])?;
    Ok(())
}

/// Closing a file whose jobs still run: close returns at once, and the file's VRAM (buffers
/// and page tables) stays allocated, as another file of the device sees, until the jobs have
/// ended; the jobs' fences, which outlive the file, say so.
pub(crate) fn test_close_with_running_jobs(
    t: &mut Tally,
    path: &std::path::Path,
) -> Result<(), Error> {
    let name = path.display().to_string();
    let a = Device::open(path)?;
    let c = Device::open(path)?;
    let before = c.info()?.vram_avail;
    let size = 32 * MIB;
    let src = a.bo_create(size)?;
    let dst = a.bo_create(size)?;
    a.vm_bind(&[
        map_op(src.handle, 0, VA, size, false),
        map_op(dst.handle, 0, 2 * VA, size, false),
    ])?;
    let long: Vec<Cmd> = (0..64).map(|_| copy_cmd(VA, 2 * VA, size)).collect();
    let mut args = uapi::drm_conflux_submit {
        flags: uapi::DRM_CONFLUX_SUBMIT_OUT_FENCE_FD,
        ..Default::default()
    };
    a.submit(&long, 0, 0)?;
    a.submit(&long, 0, 0)?;
    a.submit_with(&long, &mut args)?;
    // SAFETY: SUBMIT returned this new descriptor, which nothing else owns.
    let last = unsafe { OwnedFd::from_raw_fd(args.out_fence_fd) };
    // The buffers go with the file: closing it is what this tests.
    std::mem::forget(src);
    std::mem::forget(dst);
    let closer = thread::spawn(move || drop(a));
    // While the jobs run, the file's buffers stay allocated.
    let mut samples = 0;
    let mut freed_early = None;
    // Whether close returned while the jobs still ran: it does not wait for them.
    let mut closed_first = false;
    loop {
        let closed = closer.is_finished();
        let avail = c.info()?.vram_avail;
        let done = matches!(sync_file_status(last.as_fd()), Ok(1));
        if done {
            break;
        }
        samples += 1;
        closed_first |= closed;
        if avail >= before {
            freed_early = Some(avail);
        }
        thread::sleep(Duration::from_millis(2));
    }
    let _ = closer.join();
    t.check(
        &format!("{name}: closing a file returns while its jobs still run"),
        closed_first,
        format!("{samples} samples while the jobs ran, after close returned: {closed_first}"),
    );
    // The engine drops finished jobs, and the buffers they hold, shortly after their fences
    // signal: the memory comes back then.
    let ended = Instant::now();
    let mut after = c.info()?.vram_avail;
    // At least as much as before: finished jobs of earlier tests may give theirs back too.
    while after < before && ended.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(2));
        after = c.info()?.vram_avail;
    }
    t.check(
        &format!("{name}: closing a file with running jobs frees its VRAM only after they end"),
        freed_early.is_none() && samples > 0 && after >= before,
        format!(
            "{samples} samples, freed early: {freed_early:?}, VRAM {before} -> {after} \
             {} ms after the last job ended",
            ended.elapsed().as_millis()
        ),
    );
    Ok(())
}
