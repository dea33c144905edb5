// SPDX-License-Identifier: GPL-2.0

//! Long-running VMs (`DRM_IOCTL_CONFLUX_VM_CREATE`): creation and its refusals; SUBMIT and
//! VM_BIND refusing every out-fence, with nothing done; a bind on a queue that waits for its
//! in-fence in the call and has bound when it returns; a signal during that wait; VM_JOIN
//! between modes.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use conflux::{fill_cmd, map_op, sync::SwSync, uapi, unmap_op, BindSyncs, Device, Error};

use crate::{
    common::{io_err, read_all, KIB4, MIB, VA},
    shared_vm::alarms,
    Tally,
};

/// Where these tests bind.
const BASE: u64 = 48 * VA;
/// What the buffers hold once a job filled them.
const FILLED: u64 = 0x5a5a_5a5a_5a5a_5a5a;

/// Creation, the refusals of a long-running VM, and its binds that wait in the call.
pub(crate) fn test_long_running(t: &mut Tally, path: &Path) -> Result<(), Error> {
    let name = path.display().to_string();
    let f = Device::open(path)?;
    let create = |flags, vm_id| uapi::drm_conflux_vm_create { flags, vm_id };
    t.errno(
        &format!("{name}: VM_CREATE with unknown flags"),
        f.vm_create_raw(&mut create(2, 0)),
        libc::EINVAL,
    );
    t.errno(
        &format!("{name}: VM_CREATE with a vm_id"),
        f.vm_create_raw(&mut create(0, 1)),
        libc::EINVAL,
    );
    let mut args = create(uapi::DRM_CONFLUX_VM_CREATE_LONG_RUNNING, 0);
    let created = f.vm_create_raw(&mut args);
    t.check(
        &format!("{name}: VM_CREATE in long-running mode"),
        created.is_ok() && args.vm_id == 0,
        format!("{created:?}, vm_id {}", args.vm_id),
    );
    t.errno(
        &format!("{name}: VM_CREATE of a file that has created its VM"),
        f.vm_create(false),
        libc::EEXIST,
    );
    let used = Device::open(path)?;
    let other = used.bo_create(KIB4)?.into_handle();
    used.vm_bind(&[map_op(other, 0, BASE, KIB4, false)])?;
    t.errno(
        &format!("{name}: VM_CREATE after the file used its VM"),
        used.vm_create(true),
        libc::EEXIST,
    );
    test_submit(t, &f, &name)?;
    test_bind(t, &f, &name)?;
    test_join(t, path, &name)
}

/// SUBMIT on a long-running VM refuses every out-fence before it queues anything.
fn test_submit(t: &mut Tally, f: &Device, name: &str) -> Result<(), Error> {
    let len = 16 * KIB4;
    let bo = f.bo_create(len)?.into_handle();
    f.vm_bind(&[map_op(bo, 0, BASE, len, false)])?;
    let fill = [fill_cmd(BASE, len, FILLED)];
    let s = f.syncobj_create()?;
    let outs = [conflux::sync(s, 1)];
    let refused = [
        ("an out_syncobj", f.submit(&fill, 0, s)),
        (
            "an out-fence fd",
            f.submit_with(
                &fill,
                &mut uapi::drm_conflux_submit {
                    flags: uapi::DRM_CONFLUX_SUBMIT_OUT_FENCE_FD,
                    ..Default::default()
                },
            ),
        ),
        (
            "an out_syncs timeline point",
            f.submit_with(
                &fill,
                &mut uapi::drm_conflux_submit {
                    num_out_syncs: 1,
                    out_syncs: outs.as_ptr() as u64,
                    ..Default::default()
                },
            ),
        ),
    ];
    for (what, r) in refused {
        t.errno(
            &format!("{name}: SUBMIT with {what} on a long-running VM"),
            r,
            libc::EOPNOTSUPP,
        );
    }
    let untouched = read_all(f, bo, len)?.iter().all(|&b| b == 0);
    let job = f.submit(&fill, 0, 0)?;
    f.wait(job, -1)?;
    let filled = read_all(f, bo, len)?.iter().all(|&b| b == 0x5a);
    t.check(
        &format!(
            "{name}: the refused SUBMITs ran nothing; one without out-fences runs, and WAIT \
             waits for it"
        ),
        untouched && filled,
        format!("untouched before: {untouched}, filled after: {filled}"),
    );
    Ok(())
}

/// VM_BIND on a long-running VM: out-fences refused with nothing mapped, a bind on a queue
/// that waits for its in-fence in the call, and a signal during that wait.
fn test_bind(t: &mut Tally, f: &Device, name: &str) -> Result<(), Error> {
    let (va, len) = (BASE + MIB, 16 * KIB4);
    let q = f.bind_queue_create()?;
    let bo = f.bo_create(len)?.into_handle();
    let ops = [map_op(bo, 0, va, len, false)];
    let s = f.syncobj_create()?;
    let signal = [conflux::sync(s, 0)];
    let with_out = BindSyncs {
        signal: &signal,
        ..Default::default()
    };
    let with_fd = BindSyncs {
        out_fence: true,
        ..Default::default()
    };
    for (what, syncs) in [("out_syncs", &with_out), ("an out-fence fd", &with_fd)] {
        t.errno(
            &format!("{name}: VM_BIND on a queue with {what} on a long-running VM"),
            f.vm_bind_queued(q, &ops, syncs),
            libc::EOPNOTSUPP,
        );
    }
    t.check(
        &format!("{name}: the refused binds mapped nothing"),
        f.vm_path(0, va)? == 0,
        format!("path {}", f.vm_path(0, va)?),
    );
    let tl = SwSync::open().map_err(io_err(name, "open sw_sync"))?;
    let gate = tl.fence(1).map_err(io_err(name, "sw_sync fence"))?;
    let released = AtomicBool::new(false);
    let bound = thread::scope(|s| {
        s.spawn(|| {
            // Some time for the call to start waiting; the check does not depend on it.
            thread::sleep(Duration::from_millis(200));
            released.store(true, Ordering::SeqCst);
            tl.advance(1)
        });
        let syncs = BindSyncs {
            in_fence: Some(gate.as_fd()),
            ..Default::default()
        };
        f.vm_bind_queued(q, &ops, &syncs)
    });
    let after_release = released.load(Ordering::SeqCst);
    let path = f.vm_path(0, va)?;
    // A job submitted right after the call, with no fence, writes through the new mapping.
    let job = f.submit(&[fill_cmd(va, len, FILLED)], 0, 0)?;
    f.wait(job, -1)?;
    let filled = read_all(f, bo, len)?.iter().all(|&b| b == 0x5a);
    t.check(
        &format!(
            "{name}: VM_BIND on a queue of a long-running VM waits for its in-fence in the \
             call, and has bound when it returns"
        ),
        bound.is_ok() && after_release && path == uapi::DRM_CONFLUX_PATH_LOCAL && filled,
        format!(
            "{:?}; returned after the fence signalled: {after_release}; path {path}; a job \
             filled the buffer: {filled}",
            bound.map(drop)
        ),
    );
    // A signal while the call waits: EINTR, still mapped.
    let gate = tl.fence(2).map_err(io_err(name, "sw_sync fence"))?;
    let unmap = [unmap_op(va, len)];
    let mut args = uapi::drm_conflux_vm_bind {
        num_ops: 1,
        ops: unmap.as_ptr() as u64,
        flags: uapi::DRM_CONFLUX_VM_BIND_IN_FENCE_FD,
        queue: q,
        in_fence_fd: gate.as_raw_fd(),
        ..Default::default()
    };
    alarms(1000);
    let r = f.ioctl_as(
        "DRM_IOCTL_CONFLUX_VM_BIND",
        uapi::DRM_IOCTL_CONFLUX_VM_BIND as u64,
        &mut args,
        false,
    );
    alarms(0);
    let still = f.vm_path(0, va)?;
    tl.advance(1).map_err(io_err(name, "sw_sync advance"))?;
    let again = f.ioctl(
        "DRM_IOCTL_CONFLUX_VM_BIND",
        uapi::DRM_IOCTL_CONFLUX_VM_BIND as u64,
        &mut args,
    );
    let gone = f.vm_path(0, va)?;
    t.check(
        &format!(
            "{name}: a signal ends the in-call wait of a long-running VM's bind with EINTR, \
             nothing changed; the same call again unmaps"
        ),
        r.as_ref().err().and_then(Error::errno) == Some(libc::EINTR)
            && still == uapi::DRM_CONFLUX_PATH_LOCAL
            && again.is_ok()
            && gone == 0,
        format!("{r:?}, path {still}; again {again:?}, path {gone}"),
    );
    Ok(())
}

/// VM_JOIN between modes: refused both ways; a file without a VM takes the long-running mode.
fn test_join(t: &mut Tally, path: &Path, name: &str) -> Result<(), Error> {
    let lr = Device::open(path)?;
    lr.vm_create(true)?;
    let plain = Device::open(path)?;
    plain.vm_create(false)?;
    t.errno(
        &format!("{name}: VM_JOIN of a long-running VM by a default one"),
        plain.vm_join(&lr),
        libc::EINVAL,
    );
    t.errno(
        &format!("{name}: VM_JOIN of a default VM by a long-running one"),
        lr.vm_join(&plain),
        libc::EINVAL,
    );
    let fresh = Device::open(path)?;
    let joined = fresh.vm_join(&lr);
    let s = fresh.syncobj_create()?;
    let bo = fresh.bo_create(KIB4)?.into_handle();
    fresh.vm_bind(&[map_op(bo, 0, BASE + 2 * MIB, KIB4, false)])?;
    let refused = fresh.submit(&[fill_cmd(BASE + 2 * MIB, KIB4, FILLED)], 0, s);
    t.check(
        &format!("{name}: a file without a VM that joins a long-running one is long-running"),
        joined.is_ok() && refused.as_ref().err().and_then(Error::errno) == Some(libc::EOPNOTSUPP),
        format!(
            "join {joined:?}, SUBMIT with an out_syncobj {:?}",
            refused.map(drop)
        ),
    );
    Ok(())
}
