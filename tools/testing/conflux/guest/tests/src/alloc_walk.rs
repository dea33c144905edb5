// SPDX-License-Identifier: GPL-2.0

//! Allocation-failure walks over the ioctls (`Documentation/fault-injection`, `fail-nth`).
//!
//! For each call and each n from 1 on, the n-th allocation of the calling thread fails: writing
//! n to `/proc/thread-self/fail-nth` arms it, and reading 0 back afterwards says the call
//! reached it. Once the call no longer reaches its n-th allocation, the walk has gone through
//! every allocation of the call. A call whose allocation failed must fail with `ENOMEM` (or,
//! where the driver has another way, succeed whole) and leave what userspace sees as it was:
//! the VRAM available, the mappings of the VM, the contents of buffers, the members of a shared
//! VM, the open file descriptors. Between arming and the call the test allocates nothing, so
//! that the failure lands in the call. Failures are injected silently (`verbose` 0): any kernel
//! report is a failure of the run.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::fs::FileExt,
    },
    time::Duration,
};

use conflux::{
    copy_cmd, fill_cmd, map_op, sync, uapi, unmap_op, BindOp, BindSyncs, Device, Error, SyncPoint,
    DRM_IOCTL_PRIME_FD_TO_HANDLE, DRM_IOCTL_PRIME_HANDLE_TO_FD,
};

use crate::{
    common::{io_err, MIB2, VA},
    Tally,
};

/// Where the walks map: above what the other tests leave bound.
const AT: u64 = 12 * VA;
/// The most allocations a call is walked through.
const MOST: u32 = 400;

/// The `fail-nth` file of the calling thread.
struct FailNth(File);

impl FailNth {
    fn open() -> Result<Self, Error> {
        let path = "/proc/thread-self/fail-nth";
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path, "open"))?;
        Ok(Self(file))
    }

    /// Makes the thread's `n`-th allocation from now on fail.
    fn arm(&self, n: u32) -> Result<(), Error> {
        let text = n.to_string();
        (&self.0)
            .write_all(text.as_bytes())
            .map_err(io_err("fail-nth", "write"))
    }

    /// Whether the armed failure happened; disarms it.
    fn fired(&self) -> Result<bool, Error> {
        let mut buf = [0u8; 16];
        let n = self
            .0
            .read_at(&mut buf, 0)
            .map_err(io_err("fail-nth", "read"))?;
        let left = std::str::from_utf8(&buf[..n]).unwrap_or("?").trim() == "0";
        (&self.0)
            .write_all(b"0")
            .map_err(io_err("fail-nth", "write"))?;
        Ok(left)
    }
}

/// Makes every allocation fail-able, silently: `fail-nth` obeys these attributes too.
fn quiet_injection() -> Result<(), Error> {
    let debugfs = "/sys/kernel/debug";
    let mounted = fs::read_to_string("/proc/mounts")
        .map(|m| m.contains(" /sys/kernel/debug "))
        .unwrap_or(false);
    if !mounted {
        let status = std::process::Command::new("mount")
            .args(["-t", "debugfs", "none", debugfs])
            .status()
            .map_err(io_err(debugfs, "mount"))?;
        if !status.success() {
            return Err(io_err(debugfs, "mount")(std::io::Error::other(
                status.to_string(),
            )));
        }
    }
    for (file, value) in [
        ("failslab/ignore-gfp-wait", "N"),
        ("failslab/verbose", "0"),
        ("fail_page_alloc/ignore-gfp-wait", "N"),
        ("fail_page_alloc/ignore-gfp-highmem", "N"),
        ("fail_page_alloc/min-order", "0"),
        ("fail_page_alloc/verbose", "0"),
    ] {
        let path = format!("{debugfs}/{file}");
        fs::write(&path, value).map_err(io_err(&path, "write"))?;
    }
    Ok(())
}

/// What a walk found.
#[derive(Default)]
struct Walk {
    /// Allocations the call made when none failed.
    allocations: u32,
    /// Errors the failed calls returned, by errno.
    errors: BTreeMap<i32, u32>,
    /// Calls that succeeded though one of their allocations failed.
    absorbed: u32,
    /// What went wrong, first of all.
    wrong: Option<String>,
}

impl Walk {
    fn wrong(&mut self, what: String) {
        self.wrong.get_or_insert(what);
    }
}

/// Walks `call` through its allocations: for n from 1 on, fails the n-th, and checks with
/// `same` that a failed call changed nothing; `undo` undoes a call that succeeded.
/// `prepare` runs before each call, with nothing armed, and makes its arguments.
fn walk<A>(
    fail: &FailNth,
    mut prepare: impl FnMut() -> Result<A, Error>,
    mut call: impl FnMut(&mut A) -> Result<(), Error>,
    mut same: impl FnMut(&A) -> Result<Option<String>, Error>,
    mut undo: impl FnMut(&A) -> Result<(), Error>,
) -> Result<Walk, Error> {
    let mut w = Walk::default();
    for n in 1..=MOST {
        let mut args = prepare()?;
        fail.arm(n)?;
        let result = call(&mut args);
        let fired = fail.fired()?;
        match (fired, result) {
            (false, Ok(())) => {
                w.allocations = n - 1;
                undo(&args)?;
                return Ok(w);
            }
            (false, Err(e)) => {
                w.wrong(format!("with no failure injected: {e}"));
                return Ok(w);
            }
            (true, Ok(())) => {
                w.absorbed += 1;
                undo(&args)?;
            }
            (true, Err(e)) => {
                let errno = e.errno().unwrap_or(0);
                *w.errors.entry(errno).or_default() += 1;
                // Memory ran out, not device memory or address space: -ENOMEM, nothing else.
                if errno != libc::ENOMEM {
                    w.wrong(format!("allocation {n}: {e}"));
                }
                if let Some(changed) = same(&args)? {
                    w.wrong(format!("allocation {n} failed ({e}), yet {changed}"));
                }
            }
        }
    }
    w.wrong(format!("more than {MOST} allocations"));
    Ok(w)
}

/// [`walk`] for a call that changes nothing, made with a copy of `args` each time.
fn walk_query<A: Clone>(
    fail: &FailNth,
    args: A,
    call: impl FnMut(&mut A) -> Result<(), Error>,
) -> Result<Walk, Error> {
    walk(fail, || Ok(args.clone()), call, |_| Ok(None), |_| Ok(()))
}

/// The walk of `DRM_IOCTL_CONFLUX_BO_P2PMEM` on `dev`, lending the `len` bytes of its
/// peer-to-peer memory mapped at `addr`: a call whose allocation failed leaves no buffer and
/// drops the pins it took, else the driver's unbind after the walk would wait for them forever.
pub(crate) fn test_p2pmem_walk(
    t: &mut Tally,
    dev: &Device,
    addr: u64,
    len: u64,
) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    quiet_injection()?;
    let fail = FailNth::open()?;
    let args = uapi::drm_conflux_bo_p2pmem {
        addr,
        size: len,
        ..Default::default()
    };
    let w = walk(
        &fail,
        || Ok(args),
        |a| dev.bo_p2pmem_raw(a),
        |_| Ok(None),
        |a| dev.gem_close(a.handle),
    );
    report(t, &name, "BO_P2PMEM", w);
    Ok(())
}

/// Reports the walk of `what`.
fn report(t: &mut Tally, name: &str, what: &str, w: Result<Walk, Error>) {
    match w {
        Ok(w) => {
            let errors: Vec<String> = w
                .errors
                .iter()
                .map(|(errno, n)| {
                    let name = conflux::errno_name(*errno).unwrap_or("?");
                    format!("{name} x{n}")
                })
                .collect();
            t.check(
                &format!("{name}: {what}: every allocation failed in turn leaves it as it was"),
                w.wrong.is_none(),
                format!(
                    "{} allocations; failed with {}; succeeded anyway {} times{}",
                    w.allocations,
                    if errors.is_empty() {
                        "nothing".into()
                    } else {
                        errors.join(", ")
                    },
                    w.absorbed,
                    w.wrong.map(|s| format!("; {s}")).unwrap_or_default()
                ),
            );
        }
        Err(e) => t.check(&format!("{name}: {what}: allocation walk"), false, e),
    }
}

/// The path and member count of `va` in `dev`'s VM.
fn path_at(dev: &Device, va: u64) -> Result<(u32, u32), Error> {
    let mut args = uapi::drm_conflux_vm_path {
        va,
        ..Default::default()
    };
    dev.vm_path_raw(&mut args)?;
    Ok((args.path, args.members))
}

/// The open file descriptors of the process.
fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// A PRIME handle ioctl of `dev` with `args`.
fn prime(dev: &Device, request: u64, args: &mut uapi::drm_prime_handle) -> Result<(), Error> {
    dev.ioctl("DRM_IOCTL_PRIME", request, args)
}

/// Walks the allocations of every ioctl of the driver on `dev`, with `peer` (another device)
/// for the imports and the shared VM.
pub(crate) fn test_alloc_walks(t: &mut Tally, dev: &Device, peer: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    quiet_injection()?;
    let fail = FailNth::open()?;
    let vram = |d: &Device| d.info().map(|i| i.vram_avail);
    let buf = dev.bo_create(MIB2)?;
    dev.vm_bind(&[map_op(buf.handle, 0, AT, MIB2, false)])?;
    let other = dev.bo_create(MIB2)?;

    let w = walk_query(&fail, uapi::drm_conflux_get_info::default(), |a| {
        dev.ioctl("GET_INFO", uapi::DRM_IOCTL_CONFLUX_GET_INFO as u64, a)
    });
    report(t, &name, "GET_INFO", w);

    // A system buffer takes a page at a time: a small one.
    for (what, flags, size) in [
        ("BO_CREATE in VRAM", uapi::DRM_CONFLUX_BO_VRAM, MIB2),
        (
            "BO_CREATE in system memory",
            uapi::DRM_CONFLUX_BO_SYSTEM,
            16 * 4096,
        ),
    ] {
        let before = vram(dev)?;
        let w = walk(
            &fail,
            || {
                Ok(uapi::drm_conflux_bo_create {
                    size,
                    flags,
                    handle: 0,
                })
            },
            |a| dev.bo_create_raw(a),
            |_| {
                let now = vram(dev)?;
                Ok((now != before).then(|| format!("VRAM available {before} -> {now}")))
            },
            |a| dev.gem_close(a.handle),
        );
        report(t, &name, what, w);
    }

    let ops_map: [BindOp; 1] = [map_op(other.handle, 0, AT + MIB2, MIB2, false)];
    let ops_unmap: [BindOp; 1] = [unmap_op(AT + MIB2, MIB2)];
    // The map, then the unmap of what it mapped; each undoes the other after a call that
    // succeeded, and is done for real after its walk.
    for (what, ops, undo, maps) in [
        ("VM_BIND map", &ops_map, &ops_unmap, true),
        ("VM_BIND unmap", &ops_unmap, &ops_map, false),
    ] {
        let w = walk(
            &fail,
            || {
                Ok(uapi::drm_conflux_vm_bind {
                    num_ops: 1,
                    ops: ops.as_ptr() as u64,
                    ..Default::default()
                })
            },
            |a| dev.vm_bind_raw(a),
            |_| {
                let (path, _) = path_at(dev, AT + MIB2)?;
                Ok(((path != 0) == maps).then(|| match maps {
                    true => format!("the range is mapped (path {path})"),
                    false => "the range is unmapped".to_string(),
                }))
            },
            |_| dev.vm_bind(undo),
        );
        report(t, &name, what, w);
        dev.vm_bind(ops)?;
    }
    // The same on a bind queue, with an out-syncobj and a sync_file: a failed call queued
    // nothing, made no descriptor and changed no mapping.
    let queue = dev.bind_queue_create()?;
    let done = dev.syncobj_create()?;
    let signal = [conflux::sync(done, 0)];
    for (what, ops, undo, maps) in [
        ("VM_BIND map on a bind queue", &ops_map, &ops_unmap, true),
        ("VM_BIND unmap on a bind queue", &ops_unmap, &ops_map, false),
    ] {
        let w = walk(
            &fail,
            || {
                let args = uapi::drm_conflux_vm_bind {
                    num_ops: 1,
                    ops: ops.as_ptr() as u64,
                    queue,
                    flags: uapi::DRM_CONFLUX_VM_BIND_OUT_FENCE_FD,
                    num_out_syncs: 1,
                    out_syncs: signal.as_ptr() as u64,
                    ..Default::default()
                };
                Ok((args, open_fds()))
            },
            |(a, _)| dev.vm_bind_raw(a),
            |(_, fds)| {
                let (path, _) = path_at(dev, AT + MIB2)?;
                let n = open_fds();
                Ok((((path != 0) == maps) || n != *fds)
                    .then(|| format!("the range's path is {path}, descriptors {fds} -> {n}")))
            },
            |(a, _)| {
                // SAFETY: VM_BIND returned this new descriptor, which nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(a.out_fence_fd) });
                dev.syncobj_wait(done, Duration::from_secs(30))?;
                dev.vm_bind(undo)
            },
        );
        report(t, &name, what, w);
        dev.vm_bind(ops)?;
    }
    dev.bind_queue_destroy(queue)?;
    dev.syncobj_destroy(done)?;

    // SUBMIT with every kind of out-fence: a fill of a new pattern each time, which a failed
    // call must not have written, and no new descriptor.
    let sync = dev.syncobj_create()?;
    let outs = [uapi::drm_conflux_sync {
        handle: sync,
        flags: 0,
        point: 0,
    }];
    let mut round = 0u8;
    let w = walk(
        &fail,
        || {
            round = round.wrapping_add(1);
            let cmds = vec![fill_cmd(AT, 64, u64::from_ne_bytes([round; 8]))];
            let mut head = [0u8; 8];
            dev.read(buf.handle, 0, &mut head)?;
            let args = uapi::drm_conflux_submit {
                flags: uapi::DRM_CONFLUX_SUBMIT_OUT_FENCE_FD,
                num_cmds: 1,
                cmds: cmds.as_ptr() as u64,
                num_out_syncs: 1,
                out_syncs: outs.as_ptr() as u64,
                ..Default::default()
            };
            Ok((args, cmds, head, open_fds()))
        },
        |(a, ..)| dev.submit_raw(a),
        |(_, _, head, fds)| {
            let mut now = [0u8; 8];
            dev.read(buf.handle, 0, &mut now)?;
            let n = open_fds();
            Ok((now != *head || n != *fds)
                .then(|| format!("the buffer went {head:?} -> {now:?}, descriptors {fds} -> {n}")))
        },
        |(a, ..)| {
            // SAFETY: SUBMIT returned this new descriptor, which nothing else owns.
            drop(unsafe { OwnedFd::from_raw_fd(a.out_fence_fd) });
            dev.wait(a.job, -1)
        },
    );
    report(t, &name, "SUBMIT", w);
    dev.syncobj_destroy(sync)?;

    let job = dev.submit(&[fill_cmd(AT, 64, 0x0101_0101_0101_0101)], 0, 0)?;
    dev.wait(job, -1)?;
    let args = uapi::drm_conflux_wait {
        job,
        timeout_ns: -1,
        ..Default::default()
    };
    let w = walk_query(&fail, args, |a| dev.wait_raw(a));
    report(t, &name, "WAIT", w);

    let data = [0x5au8; 4096];
    let w = walk(
        &fail,
        || {
            let mut before = [0u8; 4096];
            dev.read(buf.handle, 0, &mut before)?;
            let args = uapi::drm_conflux_bo_rw {
                handle: buf.handle,
                size: data.len() as u64,
                data: data.as_ptr() as u64,
                ..Default::default()
            };
            Ok((args, before))
        },
        |(a, _)| dev.bo_rw_raw(true, a),
        |(_, before)| {
            let mut back = [0u8; 4096];
            dev.read(buf.handle, 0, &mut back)?;
            Ok((back != *before).then(|| "the buffer changed".to_string()))
        },
        |_| dev.write(buf.handle, 0, &[0u8; 4096]),
    );
    report(t, &name, "BO_WRITE", w);

    let mut back = [0u8; 4096];
    let args = uapi::drm_conflux_bo_rw {
        handle: buf.handle,
        size: back.len() as u64,
        data: back.as_mut_ptr() as u64,
        ..Default::default()
    };
    let w = walk_query(&fail, args, |a| dev.bo_rw_raw(false, a));
    report(t, &name, "BO_READ", w);

    let args = conflux::BoInfo {
        handle: buf.handle,
        ..Default::default()
    };
    let w = walk_query(&fail, args, |a| dev.bo_info_raw(a));
    report(t, &name, "BO_INFO", w);

    let args = uapi::drm_conflux_vm_path {
        va: AT,
        ..Default::default()
    };
    let w = walk_query(&fail, args, |a| dev.vm_path_raw(a));
    report(t, &name, "VM_PATH", w);

    let w = walk(
        &fail,
        || {
            let args = uapi::drm_prime_handle {
                handle: other.handle,
                // CAST: small positive flags.
                flags: (libc::O_CLOEXEC | libc::O_RDWR) as u32,
                fd: -1,
            };
            Ok((args, open_fds()))
        },
        |(a, _)| prime(dev, DRM_IOCTL_PRIME_HANDLE_TO_FD, a),
        |(_, fds)| {
            let n = open_fds();
            Ok((n != *fds).then(|| format!("descriptors {fds} -> {n}")))
        },
        |(a, _)| {
            // SAFETY: the ioctl returned this new descriptor, which nothing else owns.
            drop(unsafe { OwnedFd::from_raw_fd(a.fd) });
            Ok(())
        },
    );
    report(t, &name, "PRIME export", w);

    // An import of another device's buffer; a failed one leaves no handle, which closing it
    // would show.
    let theirs = peer.bo_create(MIB2)?;
    let exported = peer.export(theirs.handle)?;
    let w = walk(
        &fail,
        || {
            Ok(uapi::drm_prime_handle {
                handle: 0,
                flags: 0,
                fd: exported.0.as_raw_fd(),
            })
        },
        |a| prime(dev, DRM_IOCTL_PRIME_FD_TO_HANDLE, a),
        |_| Ok(None),
        |a| dev.gem_close(a.handle),
    );
    report(t, &name, "PRIME import of a peer's buffer", w);
    drop(exported);

    // VM_CREATE: a fresh file each time; a failed call leaves it without a VM, which a second
    // VM_CREATE shows by succeeding.
    let w = walk(
        &fail,
        || {
            let args = uapi::drm_conflux_vm_create {
                flags: uapi::DRM_CONFLUX_VM_CREATE_LONG_RUNNING,
                vm_id: 0,
            };
            Ok((args, Device::open(dev.path())?))
        },
        |(a, f)| f.vm_create_raw(a),
        |(_, f)| {
            Ok(match f.vm_create(true) {
                Ok(()) => None,
                Err(e) => Some(format!("a second VM_CREATE failed: {e}")),
            })
        },
        |_| Ok(()),
    );
    report(t, &name, "VM_CREATE in long-running mode", w);

    // USERQ_CREATE: a fresh long-running file each time, with its VM mapping a buffer, which
    // the queue's preemption fence goes in; a failed call leaves the file room for all its
    // queues, and gives its hardware queue back (the walk would run out of them otherwise).
    let w = walk(
        &fail,
        || {
            let f = Device::open(dev.path())?;
            f.vm_create(true)?;
            let ring = f.bo_create(MIB2)?.into_handle();
            f.vm_bind(&[map_op(ring, 0, AT, MIB2, false)])?;
            let args = uapi::drm_conflux_userq_create {
                ring_va: AT,
                ring_size: 4096,
                ..Default::default()
            };
            Ok((args, f))
        },
        |(a, f)| f.userq_create_raw(a),
        |(_, f)| {
            for k in 0..uapi::DRM_CONFLUX_MAX_USER_QUEUES {
                if let Err(e) = f.userq_create(AT, 4096) {
                    return Ok(Some(format!(
                        "queue {k} of the file cannot be created: {e}"
                    )));
                }
            }
            Ok(None)
        },
        |_| Ok(()),
    );
    report(t, &name, "USERQ_CREATE", w);

    // VM_JOIN: a fresh pair of files each time; a failed join leaves each VM to itself.
    let w = walk(
        &fail,
        || {
            let (a, b) = (Device::open(dev.path())?, Device::open(peer.path())?);
            // Each file's VM exists before the call.
            path_at(&a, AT)?;
            path_at(&b, AT)?;
            let args = uapi::drm_conflux_vm_join {
                fd: b.as_fd().as_raw_fd(),
                ..Default::default()
            };
            Ok((args, a, b))
        },
        |(args, a, _)| a.vm_join_raw(args),
        |(_, a, b)| {
            let (ma, mb) = (path_at(a, AT)?.1, path_at(b, AT)?.1);
            Ok((ma != 1 || mb != 1).then(|| format!("members {ma} and {mb}")))
        },
        |_| Ok(()),
    );
    report(t, &name, "VM_JOIN", w);

    // VM_BIND on a VM shared with a peer, whose member maps an import of the buffer: a failed
    // call leaves both members as they were.
    let (a, b) = (Device::open(dev.path())?, Device::open(peer.path())?);
    b.vm_join(&a)?;
    let sys = a.bo_create_in(MIB2, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let ops = [map_op(sys.handle, 0, AT, MIB2, false)];
    let undo = [unmap_op(AT, MIB2)];
    let w = walk(
        &fail,
        || {
            Ok(uapi::drm_conflux_vm_bind {
                num_ops: 1,
                ops: ops.as_ptr() as u64,
                ..Default::default()
            })
        },
        |args| a.vm_bind_raw(args),
        |_| {
            let paths = [a.vm_path(0, AT)?, a.vm_path(1, AT)?];
            Ok((paths != [0, 0]).then(|| format!("the members' paths are {paths:?}")))
        },
        |_| a.vm_bind(&undo),
    );
    report(t, &name, "VM_BIND map on a VM shared with a peer", w);
    drop(sys);
    drop((a, b));

    dev.vm_bind(&[unmap_op(AT, MIB2)])?;
    test_unmap_exhausted(t, dev, peer)
}

/// The kernel heap exhausted for the calling thread: every slab and page allocation of the
/// kernel fails (`failslab` and `fail_page_alloc` at probability 100 for the tasks that set
/// `make-it-fail`; pages for userspace, which carry `__GFP_HIGHMEM`, are spared).
struct Exhausted {
    make_it_fail: File,
    saved: Vec<(String, String)>,
}

impl Exhausted {
    /// Sets the attributes; nothing fails until [`Self::set`].
    fn new() -> Result<Self, Error> {
        let path = "/proc/thread-self/make-it-fail";
        let make_it_fail = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path, "open"))?;
        // Dropped on an error: what was set goes back.
        let mut ex = Self {
            make_it_fail,
            saved: Vec::new(),
        };
        // The task filter first, the probabilities last, and back in the reverse order: never
        // does every task fail.
        for (file, value) in [
            ("failslab/task-filter", "Y"),
            ("fail_page_alloc/task-filter", "Y"),
            ("fail_page_alloc/ignore-gfp-highmem", "Y"),
            ("failslab/interval", "1"),
            ("failslab/times", "-1"),
            ("failslab/space", "0"),
            ("fail_page_alloc/interval", "1"),
            ("fail_page_alloc/times", "-1"),
            ("fail_page_alloc/space", "0"),
            ("failslab/probability", "100"),
            ("fail_page_alloc/probability", "100"),
        ] {
            let path = format!("/sys/kernel/debug/{file}");
            let old = fs::read_to_string(&path).map_err(io_err(&path, "read"))?;
            fs::write(&path, value).map_err(io_err(&path, "write"))?;
            ex.saved.push((path, old.trim().to_string()));
        }
        Ok(ex)
    }

    /// Starts (`true`) or stops failing every allocation of the calling thread.
    fn set(&self, on: bool) -> Result<(), Error> {
        (&self.make_it_fail)
            .write_all(if on { b"1" } else { b"0" })
            .map_err(io_err("make-it-fail", "write"))
    }
}

impl Drop for Exhausted {
    fn drop(&mut self) {
        let _ = self.set(false);
        for (path, old) in self.saved.iter().rev() {
            let _ = fs::write(path, old);
        }
    }
}

/// VM_BIND with the heap exhausted: the raw ioctl, which allocates nothing in userspace either,
/// and its errno.
fn bind_exhausted(ex: &Exhausted, dev: &Device, ops: &[BindOp]) -> Result<i32, Error> {
    bind_queued_exhausted(ex, dev, 0, ops, &[], &[])
}

/// [`bind_exhausted`] on bind queue `queue` (0: synchronous), waiting for `wait` and signalling
/// `signal`.
fn bind_queued_exhausted(
    ex: &Exhausted,
    dev: &Device,
    queue: u32,
    ops: &[BindOp],
    wait: &[SyncPoint],
    signal: &[SyncPoint],
) -> Result<i32, Error> {
    // CAST: at most a few operations and syncs.
    let mut args = uapi::drm_conflux_vm_bind {
        num_ops: ops.len() as u32,
        ops: ops.as_ptr() as u64,
        queue,
        num_in_syncs: wait.len() as u32,
        in_syncs: wait.as_ptr() as u64,
        num_out_syncs: signal.len() as u32,
        out_syncs: signal.as_ptr() as u64,
        ..Default::default()
    };
    ex.set(true)?;
    // SAFETY: `args` and the operations it points to live across the call.
    let rc = unsafe {
        libc::ioctl(
            dev.as_fd().as_raw_fd(),
            uapi::DRM_IOCTL_CONFLUX_VM_BIND as _,
            &mut args,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    ex.set(false)?;
    Ok(if rc == 0 { 0 } else { errno })
}

/// UNMAPs of every shape succeed with the kernel heap exhausted, on a VM of one member and on a
/// shared one, and change what they should; a MAP meanwhile fails with `ENOMEM`, which shows
/// that the heap is exhausted indeed.
fn test_unmap_exhausted(t: &mut Tally, dev: &Device, peer: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let page = 4096;
    let lone = Device::open(dev.path())?;
    let shared = Device::open(dev.path())?;
    let member = Device::open(peer.path())?;
    member.vm_join(&shared)?;
    // A VRAM buffer in 2 MiB entries, a movable one (recorded for its moves) in 4 KiB entries,
    // and a system buffer on the shared VM.
    let a = lone.bo_create(2 * MIB2)?;
    let m = lone.bo_create_in(
        MIB2,
        uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM,
    )?;
    let s = shared.bo_create_in(MIB2, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let (va_a, va_m, va_s) = (AT, AT + 4 * MIB2 + page, AT + 8 * MIB2);
    lone.vm_bind(&[
        map_op(a.handle, 0, va_a, 2 * MIB2, false),
        map_op(m.handle, 0, va_m, MIB2, false),
    ])?;
    shared.vm_bind(&[map_op(s.handle, 0, va_s, MIB2, false)])?;
    let holes: Vec<BindOp> = (0..8)
        .map(|i| unmap_op(va_m + (32 * i + 16) * page, page))
        .collect();
    // Each call: what it unmaps, on which file, and addresses that must be mapped (true) or
    // not after it.
    type Step<'a> = (&'a str, &'a Device, Vec<BindOp>, Vec<(u64, bool)>);
    let half = MIB2 / 2;
    let steps: [Step<'_>; 5] = [
        (
            "4 KiB in the middle of a 2 MiB entry",
            &lone,
            vec![unmap_op(va_a + half, page)],
            vec![
                (va_a + half, false),
                (va_a + half - page, true),
                (va_a + half + page, true),
            ],
        ),
        (
            "the first 4 KiB of a movable buffer's mapping",
            &lone,
            vec![unmap_op(va_m, page)],
            vec![(va_m, false), (va_m + page, true)],
        ),
        (
            "eight holes in one call",
            &lone,
            holes,
            vec![
                (va_m + 16 * page, false),
                (va_m + 17 * page, true),
                (va_m + (32 * 7 + 16) * page, false),
            ],
        ),
        (
            "the whole second 2 MiB of a mapping",
            &lone,
            vec![unmap_op(va_a + MIB2, MIB2)],
            vec![(va_a + MIB2, false), (va_a + MIB2 - page, true)],
        ),
        (
            "the middle of a mapping of a VM shared with a peer",
            &shared,
            vec![unmap_op(va_s + half, 2 * page)],
            vec![(va_s + half, false), (va_s + half + 2 * page, true)],
        ),
    ];
    let ex = Exhausted::new()?;
    // The same call on a free range first, so that what the calls touch in userspace is
    // resident when they run. Before each step a call that can allocate fills the reserve.
    for d in [&lone, &shared] {
        bind_exhausted(&ex, d, &[unmap_op(AT + 20 * MIB2, page)])?;
    }
    for (what, d, ops, expect) in steps {
        // The reserve is full after any call that could allocate, as this one can.
        d.vm_bind(&[unmap_op(AT + 20 * MIB2, page)])?;
        let errno = bind_exhausted(&ex, d, &ops)?;
        let members = if std::ptr::eq(d, &shared) { 2 } else { 1 };
        let mut wrong = Vec::new();
        for (va, want) in expect {
            for i in 0..members {
                if (d.vm_path(i, va)? != 0) != want {
                    wrong.push(format!("member {i}: {va:#x} mapped {}", !want));
                }
            }
        }
        t.check(
            &format!("{name}: UNMAP with the kernel heap exhausted: {what}"),
            errno == 0 && wrong.is_empty(),
            format!("errno {errno}; {}", wrong.join(", ")),
        );
    }
    // Calls in a row without a refill, each splitting a mapping in the middle: the reserve
    // holds what eight of them take.
    lone.vm_bind(&[unmap_op(AT + 20 * MIB2, page)])?;
    let mut errnos = Vec::new();
    for i in 0..8 {
        errnos.push(bind_exhausted(
            &ex,
            &lone,
            &[unmap_op(va_a + (4 * i + 2) * page, page)],
        )?);
    }
    let holes = (0..8).all(|i| {
        lone.vm_path(0, va_a + (4 * i + 2) * page)
            .is_ok_and(|p| p == 0)
    });
    t.check(
        &format!("{name}: eight UNMAP calls in a row with the kernel heap exhausted"),
        errnos.iter().all(|&e| e == 0) && holes,
        format!("errnos {errnos:?}"),
    );
    // On a bind queue, after a bind queued with memory: partial UNMAPs, each splitting the
    // movable buffer's mapping, complete in the call, after their in-fence, and their
    // out-syncs (a binary syncobj and timeline points) receive a signalled fence.
    let queue = lone.bind_queue_create()?;
    let (ins, binary, timeline) = (
        lone.syncobj_create()?,
        lone.syncobj_create()?,
        lone.syncobj_create()?,
    );
    let job = lone.submit(&[fill_cmd(va_a, page, 0x5a)], 0, ins)?;
    lone.wait(job, -1)?;
    lone.vm_bind_queued(
        queue,
        &[unmap_op(AT + 20 * MIB2, page)],
        &BindSyncs::default(),
    )?;
    let mut queued = Vec::new();
    for (i, point) in [(64u64, 5u64), (96, 6)] {
        let errno = bind_queued_exhausted(
            &ex,
            &lone,
            queue,
            &[unmap_op(va_m + i * page, page)],
            &[sync(ins, 0)],
            &[sync(binary, 0), sync(timeline, point)],
        )?;
        let unmapped = lone.vm_path(0, va_m + i * page)? == 0;
        let around = lone.vm_path(0, va_m + (i - 1) * page)? != 0
            && lone.vm_path(0, va_m + (i + 1) * page)? != 0;
        let signalled = lone
            .syncobj_wait(binary, Duration::from_secs(5))
            .and_then(|()| lone.syncobj_point_wait(timeline, point, Duration::from_secs(5)));
        queued.push(format!(
            "errno {errno}, unmapped {unmapped}, neighbours mapped {around}, out-syncs \
             {signalled:?}"
        ));
        t.check(
            &format!(
                "{name}: UNMAP on a bind queue with the kernel heap exhausted, call {}",
                queued.len()
            ),
            errno == 0 && unmapped && around && signalled.is_ok(),
            queued.join("; "),
        );
    }
    lone.bind_queue_destroy(queue)?;
    let errno = bind_exhausted(
        &ex,
        &lone,
        &[map_op(a.handle, 0, AT + 24 * MIB2, page, false)],
    )?;
    t.check(
        &format!("{name}: a MAP with the kernel heap exhausted fails with ENOMEM"),
        errno == libc::ENOMEM && lone.vm_path(0, AT + 24 * MIB2)? == 0,
        format!("errno {errno}"),
    );
    drop(ex);
    // What is left mapped still works: a job copies through it, and the holes fault.
    let job = lone.submit(&[copy_cmd(va_a, va_m + page, page)], 0, 0)?;
    let copied = lone.wait(job, -1);
    let job = lone.submit(&[copy_cmd(va_a + half, va_m + page, page)], 0, 0)?;
    let faulted = lone.wait(job, -1).err().and_then(|e| e.errno());
    t.check(
        &format!("{name}: after UNMAPs with the heap exhausted, jobs see exactly what is left"),
        copied.is_ok() && faulted == Some(libc::EIO),
        format!("copy through mappings {copied:?}; through a hole {faulted:?}"),
    );
    Ok(())
}

/// Walks the move of a buffer of `x` to system memory, which the first bind by `y`, a device
/// without a route to `x`'s VRAM, makes: a failed allocation fails the bind with `ENOMEM` and
/// leaves the buffer with its bytes, in VRAM unmoved, or moved once to system memory when the
/// failure came after the move (the bind maps the buffer in its last step that can fail, and
/// the exporter maps the system memory before the move starts, but the dma-buf core's copy of
/// the table with `CONFIG_DMABUF_DEBUG` comes after). Once the buffers of the walk are gone, `x`
/// has all of the VRAM it had before: no failure leaked any.
pub(crate) fn test_move_walk(t: &mut Tally, x: &Device, y: &Device) -> Result<(), Error> {
    // Small, so that the walk stays within [`MOST`] allocations: a page takes one.
    const SIZE: u64 = 16 * 4096;
    let name = format!("{} by {}", x.path().display(), y.path().display());
    quiet_injection()?;
    let fail = FailNth::open()?;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let data: Vec<u8> = (0..SIZE as usize).map(|i| (i * 7 + 3) as u8).collect();
    let state = |bo: u32| -> Result<(uapi::drm_conflux_bo_info, bool), Error> {
        let mut got = vec![0u8; data.len()];
        x.read(bo, 0, &mut got)?;
        Ok((x.bo_info(bo)?, got == data))
    };
    let avail = x.info()?.vram_avail;
    let w = walk(
        &fail,
        || {
            let bo = x.bo_create_in(SIZE, both)?;
            x.write(bo.handle, 0, &data)?;
            let fd = x.export(bo.handle)?;
            let imported = y.import(fd.0.as_fd())?;
            let args = [map_op(imported.handle, 0, AT, SIZE, false)];
            Ok((bo, imported, args))
        },
        |(_, _, args)| y.vm_bind(args),
        |(bo, _, _)| {
            let (info, kept) = state(bo.handle)?;
            let unmoved = info.placement == uapi::DRM_CONFLUX_BO_VRAM && info.moves == 0;
            let moved = info.placement == uapi::DRM_CONFLUX_BO_SYSTEM && info.moves == 1;
            Ok((!(unmoved || moved) || !kept).then(|| {
                format!(
                    "placement {:#x}, {} moves, bytes {}",
                    info.placement,
                    info.moves,
                    if kept { "kept" } else { "changed" }
                )
            }))
        },
        |(bo, _, _)| {
            let (info, kept) = state(bo.handle)?;
            y.vm_bind(&[unmap_op(AT, SIZE)])?;
            if info.placement != uapi::DRM_CONFLUX_BO_SYSTEM || info.moves != 1 || !kept {
                return Err(io_err("move", "check")(std::io::Error::other(format!(
                    "after the move: placement {:#x}, {} moves, bytes {}",
                    info.placement,
                    info.moves,
                    if kept { "kept" } else { "changed" }
                ))));
            }
            Ok(())
        },
    );
    report(t, &name, "VM_BIND that moves a buffer to system memory", w);
    // A bind and unbind on `y` drops what its failed binds left for later.
    let spare = y.bo_create(SIZE)?;
    y.vm_bind(&[map_op(spare.handle, 0, AT, SIZE, false)])?;
    y.vm_bind(&[unmap_op(AT, SIZE)])?;
    drop(spare);
    let after = x.info()?.vram_avail;
    t.check(
        &format!("{name}: the walk of the move leaves all of the exporter's VRAM"),
        after == avail,
        format!("VRAM available {avail:#x} before, {after:#x} after"),
    );
    Ok(())
}
