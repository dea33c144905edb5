// SPDX-License-Identifier: GPL-2.0

//! Bind queues: VM_BINDs that wait for in-fences and signal out-fences, in order on a queue and
//! unordered across queues but for binds in the same 2 MiB region; what jobs see before and
//! after a bind's fence; an unbind that waits for the jobs using the old mapping; a failed
//! in-fence; a queue destroyed with a bind still held; and on a VM two devices share, jobs on
//! each member that wait for the bind's fence.

use std::{
    os::fd::{AsFd, OwnedFd},
    time::Duration,
};

use conflux::{
    copy_cmd, fill_cmd, map_op, null_op,
    sync::{sync_file_status, SwSync},
    uapi, unmap_op, BindOp, BindSyncs, Device, Error,
};

use crate::{
    common::{io_err, job_errno, pattern, read_all, KIB4, MIB2, VA},
    Tally,
};

/// Where these tests bind: away from the other tests' addresses.
const BASE: u64 = 40 * VA;
/// A short wait, to see that a fence has not signalled.
const BRIEFLY: Duration = Duration::from_millis(200);
/// A wait long enough for a fence that must signal.
const LONG: Duration = Duration::from_secs(30);

/// An error of `call` on `dev` with `errno`, for what the kernel did not report.
fn error(dev: &Device, call: &str, errno: i32) -> Error {
    Error {
        device: dev.path().display().to_string(),
        call: call.into(),
        error: std::io::Error::from_raw_os_error(errno),
    }
}

/// A sw_sync timeline, with the device's name in its errors.
fn timeline(dev: &Device) -> Result<SwSync, Error> {
    SwSync::open().map_err(io_err(&dev.path().display().to_string(), "open sw_sync"))
}

/// A fence of `tl` at `point`.
fn held(dev: &Device, tl: &SwSync, point: u32) -> Result<OwnedFd, Error> {
    tl.fence(point)
        .map_err(io_err(&dev.path().display().to_string(), "sw_sync fence"))
}

/// Advances `tl` by one.
fn release(dev: &Device, tl: &SwSync) -> Result<(), Error> {
    tl.advance(1)
        .map_err(io_err(&dev.path().display().to_string(), "sw_sync advance"))
}

/// Binds `ops` on `queue`, after sync_file `after` if given, signalling binary syncobj `out`.
fn bind_on(
    dev: &Device,
    queue: u32,
    ops: &[BindOp],
    after: Option<&OwnedFd>,
    out: u32,
) -> Result<(), Error> {
    let signal = [conflux::sync(out, 0)];
    let syncs = BindSyncs {
        signal: &signal,
        in_fence: after.map(|f| f.as_fd()),
        ..Default::default()
    };
    dev.vm_bind_queued(queue, ops, &syncs).map(drop)
}

/// Whether syncobj `s` has a fence that signals within `within`.
fn signals(dev: &Device, s: u32, within: Duration) -> Result<bool, Error> {
    match dev.syncobj_wait(s, within) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ETIME) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The checks of the new fields and of the queue ioctls.
fn test_refusals(t: &mut Tally, dev: &Device, name: &str) -> Result<(), Error> {
    let mut args = uapi::drm_conflux_bind_queue_create {
        flags: 1,
        ..Default::default()
    };
    t.errno(
        &format!("{name}: BIND_QUEUE_CREATE with unknown flags"),
        dev.bind_queue_create_raw(&mut args),
        libc::EINVAL,
    );
    let mut queues = Vec::new();
    let created = loop {
        match dev.bind_queue_create() {
            Ok(q) => queues.push(q),
            Err(e) => break e,
        }
        if queues.len() > uapi::DRM_CONFLUX_MAX_BIND_QUEUES as usize {
            break error(dev, "BIND_QUEUE_CREATE", libc::E2BIG);
        }
    };
    t.check(
        &format!("{name}: a file has at most DRM_CONFLUX_MAX_BIND_QUEUES bind queues"),
        queues.len() == uapi::DRM_CONFLUX_MAX_BIND_QUEUES as usize
            && created.errno() == Some(libc::EMFILE),
        format!("{} created, then {created}", queues.len()),
    );
    for q in queues {
        dev.bind_queue_destroy(q)?;
    }
    t.errno(
        &format!("{name}: BIND_QUEUE_DESTROY of an unknown queue"),
        dev.bind_queue_destroy(999),
        libc::ENOENT,
    );
    let ops = [null_op(BASE, KIB4)];
    t.errno(
        &format!("{name}: VM_BIND on an unknown queue"),
        dev.vm_bind_queued(999, &ops, &BindSyncs::default()),
        libc::ENOENT,
    );
    let s = dev.syncobj_create()?;
    let wait = [conflux::sync(s, 0)];
    let mut args = uapi::drm_conflux_vm_bind {
        num_ops: 1,
        ops: ops.as_ptr() as u64,
        num_in_syncs: 1,
        in_syncs: wait.as_ptr() as u64,
        ..Default::default()
    };
    t.errno(
        &format!("{name}: VM_BIND with in-syncs but no queue"),
        dev.vm_bind_raw(&mut args),
        libc::EINVAL,
    );
    let q = dev.bind_queue_create()?;
    let mut args = uapi::drm_conflux_vm_bind {
        num_ops: 1,
        ops: ops.as_ptr() as u64,
        queue: q,
        flags: 1 << 7,
        ..Default::default()
    };
    t.errno(
        &format!("{name}: VM_BIND with unknown flags"),
        dev.vm_bind_raw(&mut args),
        libc::EINVAL,
    );
    // A syncobj without a fence is no in-fence.
    t.errno(
        &format!("{name}: VM_BIND waiting for a syncobj without fence"),
        dev.vm_bind_queued(
            q,
            &ops,
            &BindSyncs {
                wait: &wait,
                ..Default::default()
            },
        ),
        libc::EINVAL,
    );
    t.check(
        &format!("{name}: refused queued binds change nothing"),
        dev.vm_path(0, BASE)? == 0,
        "nothing mapped",
    );
    dev.bind_queue_destroy(q)?;
    dev.syncobj_destroy(s)?;
    Ok(())
}

/// A bind held by an in-fence: the call returns, the tree shows the mapping, the device does
/// not until the fence signals; a job that waits for the bind's fence reads the buffer.
fn test_held(t: &mut Tally, dev: &Device, name: &str, q: u32) -> Result<(), Error> {
    let len = MIB2;
    let src = dev.bo_create(len)?;
    let dst = dev.bo_create_in(len, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let data = pattern(len as usize, 0x61);
    dev.write(src.handle, 0, &data)?;
    let (v, d) = (BASE, BASE + 4 * MIB2);
    dev.vm_bind(&[map_op(dst.handle, 0, d, len, false)])?;
    let tl = timeline(dev)?;
    let gate = held(dev, &tl, 1)?;
    let s = dev.syncobj_create()?;
    let signal = [conflux::sync(s, 0)];
    let out = dev.vm_bind_queued(
        q,
        &[map_op(src.handle, 0, v, len, false)],
        &BindSyncs {
            signal: &signal,
            in_fence: Some(gate.as_fd()),
            out_fence: true,
            ..Default::default()
        },
    )?;
    let out = out.ok_or_else(|| error(dev, "VM_BIND: no out_fence_fd", libc::EINVAL))?;
    let pending = !signals(dev, s, BRIEFLY)?
        && sync_file_status(out.as_fd()).map_err(io_err(name, "SYNC_IOC_FILE_INFO"))? == 0;
    t.check(
        &format!("{name}: a bind held by an in-fence returns at once, its fences pending"),
        pending,
        format!("syncobj and sync_file pending: {pending}"),
    );
    t.check(
        &format!("{name}: the VM shows a queued bind's mapping at once"),
        dev.vm_path(0, v)? == uapi::DRM_CONFLUX_PATH_LOCAL,
        format!("path {}", dev.vm_path(0, v)?),
    );
    // A job that does not wait for the bind finds the tables as they were.
    let early = dev.submit(&[copy_cmd(v, d, KIB4)], 0, 0)?;
    let errno = job_errno(dev, early);
    t.check(
        &format!("{name}: a job that does not wait for a held bind faults on its range"),
        errno == Some(libc::EIO),
        format!("{errno:?}"),
    );
    let job = dev.submit(&[copy_cmd(v, d, len)], s, 0)?;
    let waiting = dev.wait(job, 0).err().and_then(|e| e.errno()) == Some(libc::ETIME);
    release(dev, &tl)?;
    let done = signals(dev, s, LONG)?;
    let result = dev.wait(job, -1);
    let got = read_all(dev, dst.handle, len)?;
    let status = sync_file_status(out.as_fd()).map_err(io_err(name, "SYNC_IOC_FILE_INFO"))?;
    t.check(
        &format!("{name}: a job that waits for the bind's fence reads the buffer once it signals"),
        waiting && done && result.is_ok() && got == data && status == 1,
        format!(
            "job waited: {waiting}, bind signalled: {done}, job: {result:?}, data {}, \
             sync_file status {status}",
            if got == data { "matches" } else { "differs" }
        ),
    );
    dev.vm_bind(&[unmap_op(v, len), unmap_op(d, len)])?;
    dev.syncobj_destroy(s)?;
    Ok(())
}

/// Order: binds on one queue in call order; another queue's binds go on, but for those in a
/// held bind's 2 MiB region.
fn test_order(t: &mut Tally, dev: &Device, name: &str, q1: u32, q2: u32) -> Result<(), Error> {
    let tl = timeline(dev)?;
    let gate = held(dev, &tl, 1)?;
    let r = |i: u64| BASE + 16 * MIB2 + i * MIB2;
    let s: Vec<u32> = (0..4)
        .map(|_| dev.syncobj_create())
        .collect::<Result<_, _>>()?;
    bind_on(dev, q1, &[null_op(r(0), KIB4)], Some(&gate), s[0])?;
    bind_on(dev, q1, &[null_op(r(2), KIB4)], None, s[1])?;
    bind_on(dev, q2, &[null_op(r(4), KIB4)], None, s[2])?;
    bind_on(dev, q2, &[null_op(r(0) + KIB4, KIB4)], None, s[3])?;
    let state: Vec<bool> = s
        .iter()
        .map(|&h| signals(dev, h, BRIEFLY))
        .collect::<Result<_, _>>()?;
    // The other queue's bind in another region signals even while the first is held.
    let other = signals(dev, s[2], LONG)?;
    t.check(
        &format!("{name}: binds on one queue wait for the ones before them"),
        !state[0] && !state[1],
        format!("held bind signalled: {}, the next: {}", state[0], state[1]),
    );
    t.check(
        &format!("{name}: a bind on another queue does not wait for a held bind"),
        other,
        format!("signalled: {other}"),
    );
    t.check(
        &format!("{name}: a bind in a held bind's 2 MiB region waits for it, on any queue"),
        !state[3],
        format!("signalled: {}", state[3]),
    );
    // A synchronous bind elsewhere goes on; one in the held bind's region waits for it, and a
    // signal ends the wait with nothing changed.
    dev.vm_bind(&[null_op(r(6), KIB4)])?;
    crate::shared_vm::alarms(20_000);
    let waited = dev.vm_bind_as(&[null_op(r(0) + 2 * KIB4, KIB4)], false);
    crate::shared_vm::alarms(0);
    let path = dev.vm_path(0, r(0) + 2 * KIB4)?;
    t.check(
        &format!(
            "{name}: a synchronous bind in a held bind's region waits; a signal ends it, nothing \
             changed"
        ),
        waited.as_ref().err().and_then(|e| e.errno()) == Some(libc::EINTR) && path == 0,
        format!("{waited:?}, path {path}"),
    );
    release(dev, &tl)?;
    let all = s
        .iter()
        .map(|&h| signals(dev, h, LONG))
        .collect::<Result<Vec<_>, _>>()?;
    let out = dev.bo_create_in(4 * KIB4, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let o = BASE + 30 * MIB2;
    dev.vm_bind(&[map_op(out.handle, 0, o, 4 * KIB4, false)])?;
    dev.write(out.handle, 0, &[0xee; 2 * KIB4 as usize])?;
    let job = dev.submit(
        &[
            copy_cmd(r(0), o, KIB4),
            copy_cmd(r(0) + KIB4, o + KIB4, KIB4),
        ],
        0,
        0,
    )?;
    let result = dev.wait(job, -1);
    let got = read_all(dev, out.handle, 2 * KIB4)?;
    t.check(
        &format!("{name}: released, every bind signals and its NULL pages read as zeros"),
        all.iter().all(|&b| b) && result.is_ok() && got.iter().all(|&b| b == 0),
        format!("signalled {all:?}, job {result:?}"),
    );
    dev.vm_bind(&[unmap_op(r(0), 8 * MIB2), unmap_op(o, 4 * KIB4)])?;
    for h in s {
        dev.syncobj_destroy(h)?;
    }
    Ok(())
}

/// An UNMAP waits, as a dependency, for the jobs that use the old mapping; a bind whose
/// in-fence failed still changes the tables, and its fence carries the error.
fn test_dependencies(t: &mut Tally, dev: &Device, name: &str, q: u32) -> Result<(), Error> {
    let len = 64 * KIB4;
    let src = dev.bo_create(len)?;
    let dst = dev.bo_create_in(len, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let data = pattern(len as usize, 0x17);
    dev.write(src.handle, 0, &data)?;
    let (v, d) = (BASE + 40 * MIB2, BASE + 42 * MIB2);
    dev.vm_bind(&[
        map_op(src.handle, 0, v, len, false),
        map_op(dst.handle, 0, d, len, false),
    ])?;
    // A job held back by a sw_sync fence reads through the mapping.
    let tl = timeline(dev)?;
    let gate = held(dev, &tl, 1)?;
    let mut args = uapi::drm_conflux_submit {
        flags: uapi::DRM_CONFLUX_SUBMIT_IN_FENCE_FD,
        in_fence_fd: std::os::fd::AsRawFd::as_raw_fd(&gate),
        ..Default::default()
    };
    let job = dev.submit_with(&[copy_cmd(v, d, len)], &mut args)?;
    let s = dev.syncobj_create()?;
    bind_on(dev, q, &[unmap_op(v, len)], None, s)?;
    let waited = !signals(dev, s, BRIEFLY)?;
    release(dev, &tl)?;
    let result = dev.wait(job, -1);
    let unmapped = signals(dev, s, LONG)?;
    let got = read_all(dev, dst.handle, len)?;
    t.check(
        &format!("{name}: a queued UNMAP waits for the job that uses the mapping"),
        waited && unmapped && result.is_ok() && got == data,
        format!(
            "unmap waited: {waited}, signalled: {unmapped}, job: {result:?}, data {}",
            if got == data { "read" } else { "differs" }
        ),
    );
    let after = dev.submit(&[copy_cmd(v, d, KIB4)], 0, 0)?;
    let errno = job_errno(dev, after);
    t.check(
        &format!("{name}: after a queued UNMAP's fence, the range faults"),
        errno == Some(libc::EIO),
        format!("{errno:?}"),
    );
    // A failed in-fence: a job that faults.
    let bad = dev.syncobj_create()?;
    let failing = dev.submit(&[copy_cmd(BASE + 60 * MIB2, d, 8)], 0, bad)?;
    let failed = job_errno(dev, failing);
    let s2 = dev.syncobj_create()?;
    let wait = [conflux::sync(bad, 0)];
    let signal = [conflux::sync(s2, 0)];
    let out = dev.vm_bind_queued(
        q,
        &[map_op(src.handle, 0, v, len, false)],
        &BindSyncs {
            wait: &wait,
            signal: &signal,
            out_fence: true,
            ..Default::default()
        },
    )?;
    let done = signals(dev, s2, LONG)?;
    let status = match &out {
        Some(fd) => sync_file_status(fd.as_fd()).map_err(io_err(name, "SYNC_IOC_FILE_INFO"))?,
        None => 0,
    };
    dev.write(dst.handle, 0, &vec![0; len as usize])?;
    let job = dev.submit(&[copy_cmd(v, d, len)], 0, 0)?;
    let result = dev.wait(job, -1);
    let got = read_all(dev, dst.handle, len)?;
    t.check(
        &format!("{name}: a bind whose in-fence failed maps all the same, its fence failed"),
        failed == Some(libc::EIO) && done && status == -libc::EIO && result.is_ok() && got == data,
        format!("in-fence {failed:?}, out-fence status {status}, job after {result:?}"),
    );
    dev.vm_bind(&[unmap_op(v, len), unmap_op(d, len)])?;
    for h in [s, bad, s2] {
        dev.syncobj_destroy(h)?;
    }
    Ok(())
}

/// A queue destroyed while a bind waits on it: the bind still happens once released.
fn test_destroyed(t: &mut Tally, dev: &Device, name: &str) -> Result<(), Error> {
    let q = dev.bind_queue_create()?;
    let tl = timeline(dev)?;
    let gate = held(dev, &tl, 1)?;
    let s = dev.syncobj_create()?;
    let v = BASE + 50 * MIB2;
    bind_on(dev, q, &[null_op(v, KIB4)], Some(&gate), s)?;
    dev.bind_queue_destroy(q)?;
    let before = signals(dev, s, BRIEFLY)?;
    release(dev, &tl)?;
    let after = signals(dev, s, LONG)?;
    let out = dev.bo_create_in(KIB4, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let o = BASE + 52 * MIB2;
    dev.vm_bind(&[map_op(out.handle, 0, o, KIB4, false)])?;
    dev.write(out.handle, 0, &[0xee; KIB4 as usize])?;
    let job = dev.submit(&[copy_cmd(v, o, KIB4)], 0, 0)?;
    let result = dev.wait(job, -1);
    let got = read_all(dev, out.handle, KIB4)?;
    t.check(
        &format!("{name}: a destroyed queue's held bind happens once released"),
        !before && after && result.is_ok() && got.iter().all(|&b| b == 0),
        format!("signalled before release: {before}, after: {after}, job {result:?}"),
    );
    dev.vm_bind(&[unmap_op(v, KIB4), unmap_op(o, KIB4)])?;
    dev.syncobj_destroy(s)?;
    Ok(())
}

/// A movable buffer whose bind is held stays where it is while VRAM is squeezed; once the bind
/// is done, eviction moves it and jobs through the mapping follow it.
fn test_eviction(t: &mut Tally, dev: &Device, name: &str, q: u32) -> Result<(), Error> {
    let len = 4 * MIB2;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = dev.bo_create_in(len, both)?;
    let data = pattern(len as usize, 0x2b);
    dev.write(bo.handle, 0, &data)?;
    let out = dev.bo_create_in(len, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let (v, o) = (BASE + 64 * MIB2, BASE + 72 * MIB2);
    dev.vm_bind(&[map_op(out.handle, 0, o, len, false)])?;
    let tl = timeline(dev)?;
    let gate = held(dev, &tl, 1)?;
    let s = dev.syncobj_create()?;
    bind_on(
        dev,
        q,
        &[map_op(bo.handle, 0, v, len, false)],
        Some(&gate),
        s,
    )?;
    let squeezed = crate::evict::squeeze(dev);
    let held_info = dev.bo_info(bo.handle)?;
    drop(squeezed);
    release(dev, &tl)?;
    let done = signals(dev, s, LONG)?;
    let squeezed = crate::evict::squeeze(dev);
    let moved = dev.bo_info(bo.handle)?;
    drop(squeezed);
    let job = dev.submit(&[copy_cmd(v, o, len)], 0, 0)?;
    let result = dev.wait(job, -1);
    let got = read_all(dev, out.handle, len)?;
    t.check(
        &format!("{name}: eviction passes a buffer by while its bind is held, moves it after"),
        held_info.placement == uapi::DRM_CONFLUX_BO_VRAM
            && held_info.moves == 0
            && done
            && moved.placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && result.is_ok()
            && got == data,
        format!(
            "held: placement {:#x}, {} moves; after: {:#x}, {} moves; job {result:?}, data {}",
            held_info.placement,
            held_info.moves,
            moved.placement,
            moved.moves,
            if got == data { "read" } else { "differs" }
        ),
    );
    dev.vm_bind(&[unmap_op(v, len), unmap_op(o, len)])?;
    dev.syncobj_destroy(s)?;
    Ok(())
}

/// Bind queues on the VM of one device.
pub(crate) fn test_bind_queues(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    test_refusals(t, dev, &name)?;
    let (q1, q2) = (dev.bind_queue_create()?, dev.bind_queue_create()?);
    test_held(t, dev, &name, q1)?;
    test_order(t, dev, &name, q1, q2)?;
    test_dependencies(t, dev, &name, q2)?;
    test_destroyed(t, dev, &name)?;
    test_eviction(t, dev, &name, q1)?;
    dev.bind_queue_destroy(q1)?;
    dev.bind_queue_destroy(q2)?;
    Ok(())
}

/// Bind queues on a VM that `a` and `b` share: one fence for both members, each mapping the
/// buffer through its own route (on `b`, an import), which jobs on each wait for.
pub(crate) fn test_shared_bind_queues(t: &mut Tally, a: &Device, b: &Device) -> Result<(), Error> {
    let name = format!("{} + {}", a.path().display(), b.path().display());
    b.vm_join(a)?;
    let q = a.bind_queue_create()?;
    let len = 64 * KIB4;
    let buf = a.bo_create(len)?;
    let data = pattern(len as usize, 0x4d);
    a.write(buf.handle, 0, &data)?;
    let v = BASE;
    // Where each member copies what it reads.
    let outs = [
        a.bo_create_in(len, uapi::DRM_CONFLUX_BO_SYSTEM)?,
        a.bo_create_in(len, uapi::DRM_CONFLUX_BO_SYSTEM)?,
    ];
    let o = |m: u64| BASE + 8 * MIB2 + m * MIB2;
    a.vm_bind(&[
        map_op(outs[0].handle, 0, o(0), len, false),
        map_op(outs[1].handle, 0, o(1), len, false),
    ])?;
    let tl = timeline(a)?;
    let gate = held(a, &tl, 1)?;
    let s = a.syncobj_create()?;
    bind_on(
        a,
        q,
        &[map_op(buf.handle, 0, v, len, false)],
        Some(&gate),
        s,
    )?;
    let sb = b.syncobj_import(a.syncobj_export(s)?.as_fd())?;
    // First, as the engine runs jobs in order: one that does not wait.
    let early = b.submit(&[copy_cmd(v, o(1), 8)], 0, 0)?;
    let early_errno = job_errno(b, early);
    let job_a = a.submit(&[copy_cmd(v, o(0), len)], s, 0)?;
    let job_b = b.submit(&[copy_cmd(v, o(1), len)], sb, 0)?;
    let waiting = [a.wait(job_a, 0), b.wait(job_b, 0)]
        .iter()
        .all(|r| r.as_ref().err().and_then(|e| e.errno()) == Some(libc::ETIME));
    release(a, &tl)?;
    let results = [a.wait(job_a, -1), b.wait(job_b, -1)];
    let got: Vec<Vec<u8>> = outs
        .iter()
        .map(|out| read_all(a, out.handle, len))
        .collect::<Result<_, _>>()?;
    let paths = [a.vm_path(0, v)?, a.vm_path(1, v)?];
    t.check(
        &format!(
            "{name}: a queued MAP on a shared VM: jobs on both members that wait for its fence \
             read the buffer, each through its route"
        ),
        early_errno == Some(libc::EIO)
            && waiting
            && results.iter().all(Result::is_ok)
            && got.iter().all(|g| *g == data)
            && paths.iter().all(|&p| p != 0),
        format!(
            "member 1 without waiting: {early_errno:?}; jobs waited: {waiting}; after: \
             {results:?}; paths {paths:?}"
        ),
    );
    // A queued UNMAP on both members (the import on member 1 included), behind one fence.
    let s2 = a.syncobj_create()?;
    bind_on(a, q, &[unmap_op(v, len)], None, s2)?;
    let sb2 = b.syncobj_import(a.syncobj_export(s2)?.as_fd())?;
    let ja = a.submit(&[copy_cmd(v, o(0), 8)], s2, 0)?;
    let jb = b.submit(&[copy_cmd(v, o(1), 8)], sb2, 0)?;
    let errnos = [job_errno(a, ja), job_errno(b, jb)];
    t.check(
        &format!("{name}: after a queued UNMAP's fence, the range faults on both members"),
        errnos.iter().all(|&e| e == Some(libc::EIO)),
        format!("{errnos:?}"),
    );
    // NULL pages on both members.
    let s3 = a.syncobj_create()?;
    bind_on(a, q, &[null_op(v, KIB4)], None, s3)?;
    let sb3 = b.syncobj_import(a.syncobj_export(s3)?.as_fd())?;
    let cmds = |m: u64| [fill_cmd(v, KIB4, 0x5a5a), copy_cmd(v, o(m), KIB4)];
    let ja = a.submit(&cmds(0), s3, 0)?;
    let jb = b.submit(&cmds(1), sb3, 0)?;
    let results = [a.wait(ja, -1), b.wait(jb, -1)];
    let got: Vec<Vec<u8>> = outs
        .iter()
        .map(|out| read_all(a, out.handle, KIB4))
        .collect::<Result<_, _>>()?;
    t.check(
        &format!("{name}: a queued NULL map on a shared VM reads zeros on both members"),
        results.iter().all(Result::is_ok) && got.iter().all(|g| g.iter().all(|&x| x == 0)),
        format!("{results:?}"),
    );
    a.bind_queue_destroy(q)?;
    a.vm_bind(&[unmap_op(v, KIB4), unmap_op(o(0), 2 * MIB2)])?;
    Ok(())
}
