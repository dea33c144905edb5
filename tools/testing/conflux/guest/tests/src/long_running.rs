// SPDX-License-Identifier: GPL-2.0

//! Long-running VMs (`DRM_IOCTL_CONFLUX_VM_CREATE`): creation and its refusals; SUBMIT
//! refusing every out-fence and VM_BIND every dma-fence, in or out, with nothing done; a bind
//! on a queue that binds in the call; VM_JOIN between modes.

use std::{os::fd::AsFd, path::Path};

use conflux::{fill_cmd, map_op, sync::SwSync, uapi, unmap_op, BindSyncs, Device, Error};

use crate::{
    common::{io_err, read_all, KIB4, MIB, VA},
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

/// VM_BIND on a long-running VM: out-fences and dma-fence in-fences refused with nothing
/// mapped or unmapped (`drm-vm-bind-async.rst`: a long-running VM's binds are not pipelined
/// behind dma-fences), and a bind on a queue without fences that has bound when it returns.
fn test_bind(t: &mut Tally, f: &Device, name: &str) -> Result<(), Error> {
    let (va, len) = (BASE + MIB, 16 * KIB4);
    let q = f.bind_queue_create()?;
    let bo = f.bo_create(len)?.into_handle();
    let ops = [map_op(bo, 0, va, len, false)];
    let s = f.syncobj_create()?;
    let signal = [conflux::sync(s, 0)];
    let tl = SwSync::open().map_err(io_err(name, "open sw_sync"))?;
    let gate = tl.fence(1).map_err(io_err(name, "sw_sync fence"))?;
    let cases = [
        (
            "out_syncs",
            BindSyncs {
                signal: &signal,
                ..Default::default()
            },
        ),
        (
            "an out-fence fd",
            BindSyncs {
                out_fence: true,
                ..Default::default()
            },
        ),
        (
            "in_syncs",
            BindSyncs {
                wait: &signal,
                ..Default::default()
            },
        ),
        (
            "an in-fence fd",
            BindSyncs {
                in_fence: Some(gate.as_fd()),
                ..Default::default()
            },
        ),
    ];
    for (what, syncs) in cases.iter() {
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
    let bound = f.vm_bind_queued(q, &ops, &BindSyncs::default());
    let path = f.vm_path(0, va)?;
    // A job submitted right after the call, with no fence, writes through the new mapping.
    let job = f.submit(&[fill_cmd(va, len, FILLED)], 0, 0)?;
    f.wait(job, -1)?;
    let filled = read_all(f, bo, len)?.iter().all(|&b| b == 0x5a);
    t.check(
        &format!(
            "{name}: VM_BIND on a queue of a long-running VM binds in the call: it has bound \
             when it returns"
        ),
        bound.is_ok() && path == uapi::DRM_CONFLUX_PATH_LOCAL && filled,
        format!(
            "{:?}; path {path}; a job filled the buffer: {filled}",
            bound.map(drop)
        ),
    );
    // An UNMAP with an in-fence is refused as well, and unmaps nothing.
    let unmap = [unmap_op(va, len)];
    let refused = f.vm_bind_queued(q, &unmap, &cases[3].1);
    let still = f.vm_path(0, va)?;
    let again = f.vm_bind_queued(q, &unmap, &BindSyncs::default());
    let gone = f.vm_path(0, va)?;
    t.check(
        &format!(
            "{name}: an UNMAP on a queue of a long-running VM with an in-fence is refused, \
             nothing changed; without it, it unmaps in the call"
        ),
        refused.as_ref().err().and_then(Error::errno) == Some(libc::EOPNOTSUPP)
            && still == uapi::DRM_CONFLUX_PATH_LOCAL
            && again.is_ok()
            && gone == 0,
        format!(
            "{:?}, path {still}; again {:?}, path {gone}",
            refused.map(drop),
            again.map(drop)
        ),
    );
    tl.advance(1).map_err(io_err(name, "sw_sync advance"))?;
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
