// SPDX-License-Identifier: GPL-2.0

//! One VM shared by the files of several devices.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
};

use conflux::{copy_cmd, fill_cmd, map_op, null_op, sync::SwSync, uapi, unmap_op, Device, Error};

use crate::{
    common::{counters, entries, first_diff, io_err, paths_at, pattern, prime_reach, MIB, VA},
    Tally,
};

extern "C" fn on_alarm(_: libc::c_int) {}

/// Sends SIGALRM to the process every `usec` microseconds (0: stops), with a handler installed
/// without `SA_RESTART`, so that a blocking call it interrupts fails with `EINTR`.
pub(crate) fn alarms(usec: i64) {
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
pub(crate) fn test_shared_vm(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
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
    // NULL pages replace the second half on every member: the last device's fill of them is
    // dropped, and its copy of them into the first half writes zeros.
    let half = len / 2;
    files[0].vm_bind(&[null_op(3 * VA + half, half)])?;
    let now = paths_at(&files[0], n, 3 * VA + half)?;
    let job = last.submit(
        &[
            fill_cmd(3 * VA + half, half, 0x6b6b_6b6b_6b6b_6b6b),
            copy_cmd(3 * VA + half, 3 * VA, half),
        ],
        0,
        0,
    )?;
    last.wait(job, -1)?;
    files[0].read(sys.handle, 0, &mut got)?;
    let (lo, hi) = got.split_at(half as usize);
    t.check(
        &format!(
            "{name0}: NULL pages on a shared VM: every member maps them, {} reads zeros and \
             its writes vanish",
            last.path().display()
        ),
        now.iter().all(|&p| p == uapi::DRM_CONFLUX_PATH_NULL)
            && lo.iter().all(|&b| b == 0)
            && hi.iter().all(|&b| b == 0x5a),
        format!(
            "paths {}; first half nonzero at {:?}, second half not 0x5a at {:?}",
            shown(&now),
            lo.iter().position(|&b| b != 0),
            hi.iter().position(|&b| b != 0x5a)
        ),
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
    // Member 2's job waits for a sw_sync fence that only the test signals, so the bind waits
    // until a signal comes.
    let timeline = SwSync::open().map_err(io_err(&names[2], "open sw_sync"))?;
    let gate = timeline
        .fence(1)
        .map_err(io_err(&names[2], "sw_sync fence"))?;
    let mut args = uapi::drm_conflux_submit {
        flags: uapi::DRM_CONFLUX_SUBMIT_IN_FENCE_FD,
        in_fence_fd: gate.as_raw_fd(),
        ..Default::default()
    };
    let held = g[2].submit_with(&[copy_cmd(c_va, c_va + len / 2, len / 2)], &mut args)?;
    let moved = [map_op(a2, 0, 5 * VA, len, false), unmap_op(a2_va, len)];
    let before = g.iter().map(entries).collect::<Result<Vec<_>, _>>()?;
    alarms(1000);
    let r = g[0].vm_bind_as(&moved, false);
    alarms(0);
    let after = g.iter().map(entries).collect::<Result<Vec<_>, _>>()?;
    let old = paths_at(&g[0], 3, a2_va)?;
    let new = paths_at(&g[0], 3, 5 * VA)?;
    timeline
        .advance(1)
        .map_err(io_err(&names[2], "sw_sync advance"))?;
    g[2].wait(held, -1)?;
    t.check(
        &format!(
            "{}: a signal interrupts a bind waiting for member 2's job, which changed nothing",
            names[0]
        ),
        r.as_ref().err().and_then(|e| e.errno()) == Some(libc::EINTR)
            && after == before
            && old.iter().all(|&p| p != 0)
            && new.iter().all(|&p| p == 0),
        format!(
            "{r:?}; entries {after:?}, before {before:?}; old range {}, new range {new:?}",
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
