// SPDX-License-Identifier: GPL-2.0

//! A seeded ioctl fuzzer (`--fuzz SEED CALLS`): sequences of calls over several files of
//! several devices, with valid, boundary and garbage arguments.
//!
//! A sequence is a list of operations drawn from a generator seeded by the run's seed and the
//! sequence's number; an operation names its files, buffers and descriptors by index, resolved
//! against what the sequence holds when it runs, so that any sub-list of a sequence can be run
//! again. Operations: every Conflux ioctl, `GEM_CLOSE`, PRIME export and import between files
//! and devices, syncobjs and sync_files passed between files, `mmap`, faults on the mapping and
//! `munmap`, closing and reopening a file, `fork` with a child that goes on calling on the
//! inherited files, a fault switch of the device model (`faults.rs`) set for one operation,
//! and unbinding and binding a device under the sequence's files. Every call must return
//! success or an errno the uAPI documents.
//!
//! After each sequence, with everything closed: the VRAM available on every device is back to
//! what it was at the start (`GET_INFO`), and no dma-buf is left
//! (`/sys/kernel/debug/dma_buf/bufinfo`). Every minute, and at the end, kmemleak scans and
//! must find nothing (a scan takes seconds: one per sequence would divide the rate by ten);
//! when it finds something, the sequences since the last clean scan are replayed by halves,
//! each half followed by a scan, down to the one that leaks. A failure prints the seed, the
//! sequence's number and the shortest list of its operations found to fail the same way.
//! Other kernel reports (KASAN, lockdep...) fail the run through the rig's launcher.

use std::{
    fmt, fs,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use conflux::{uapi, BindOp, BoInfo, Cmd, Device, DmaBufFd, Error, Mapping};
use conflux_device::regs::ctrl;

use crate::{
    common::{io_err, MIB2, VA},
    faults::Switches,
    unbind::{driver_sysfs, node_of},
};

/// Operations per sequence.
const SEQUENCE: usize = 48;

/// Seconds between kmemleak scans.
const SCAN_EVERY: u64 = 60;

/// xorshift64*: small, fast, reproducible.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // SplitMix64 of the seed, so that nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        // CAST: slices here are short.
        from[self.below(from.len() as u64) as usize]
    }
}

/// Sizes and offsets at and around the boundaries the driver checks.
const SIZES: [u64; 14] = [
    0,
    1,
    4095,
    4096,
    4097,
    8192,
    65536,
    MIB2 - 4096,
    MIB2,
    MIB2 + 4096,
    4 * MIB2,
    1 << 32,
    u64::MAX - 4095,
    u64::MAX,
];

/// Virtual addresses: the test VA and its neighbours, 0, the top, and unaligned ones.
const VAS: [u64; 9] = [
    VA,
    VA + 4096,
    VA + MIB2,
    VA + 4 * MIB2,
    VA + 1,
    0,
    1 << 47,
    (1 << 48) - 4096,
    u64::MAX - 4095,
];

/// A value for an argument: one the sequence holds (by index), a boundary value or garbage.
#[derive(Clone, Copy, Debug)]
enum Arg {
    Held(u64),
    Boundary(u64),
    Garbage(u64),
}

impl Arg {
    fn draw(r: &mut Rng, boundaries: &[u64]) -> Self {
        match r.below(10) {
            0..=6 => Self::Held(r.next()),
            7 | 8 => Self::Boundary(r.pick(boundaries)),
            _ => Self::Garbage(r.next()),
        }
    }

    /// The value: for [`Arg::Held`], one of `held` (or `fallback` when there is none).
    fn value(self, held: &[u64], fallback: u64) -> u64 {
        match self {
            Self::Held(i) if held.is_empty() => fallback.wrapping_add(i % 3),
            // CAST: `held` is short.
            Self::Held(i) => held[(i % held.len() as u64) as usize],
            Self::Boundary(v) | Self::Garbage(v) => v,
        }
    }
}

/// One operation of a sequence; `file` and the like are indices into what the sequence holds.
#[derive(Clone, Copy, Debug)]
enum Op {
    Info {
        file: u64,
    },
    /// A user queue call: 0 USERQ_CREATE, 1 USERQ_DESTROY, 2 WAIT_USER_FENCE.
    Userq {
        file: u64,
        kind: u32,
        va: Arg,
        size: u64,
        queue: u32,
        op: u32,
        addr: u64,
    },
    VmCreate {
        file: u64,
        flags: u32,
    },
    Create {
        file: u64,
        size: Arg,
        flags: u32,
    },
    Close {
        file: u64,
        handle: Arg,
    },
    Bind {
        file: u64,
        ops: [BindSpec; 3],
        count: u32,
        flags: u32,
        /// 0: synchronous; 1: the file's bind queue, made at its first use; other: a queue
        /// that does not exist.
        queue: u32,
        /// With a queue: whether the bind waits for, and signals, one of the file's syncobjs.
        wait: bool,
        signal: bool,
    },
    Submit {
        file: u64,
        cmds: [CmdSpec; 3],
        count: u32,
        flags: u32,
        sync: u32,
    },
    Wait {
        file: u64,
        job: Arg,
        timeout_ns: i64,
    },
    Rw {
        file: u64,
        write: bool,
        handle: Arg,
        offset: Arg,
        size: u64,
        bad_ptr: bool,
    },
    BoInfo {
        file: u64,
        handle: Arg,
    },
    Join {
        file: u64,
        other: u64,
        garbage_fd: Option<i32>,
    },
    Path {
        file: u64,
        member: u32,
        va: Arg,
    },
    Export {
        file: u64,
        handle: Arg,
    },
    Import {
        file: u64,
        buf: u64,
    },
    Syncobj {
        file: u64,
        kind: u32,
        arg: u64,
    },
    Mmap {
        file: u64,
        handle: Arg,
        offset_delta: u64,
        touch: bool,
    },
    Munmap {
        map: u64,
    },
    Reopen {
        file: u64,
    },
    Fork {
        file: u64,
        calls: u32,
        seed: u64,
    },
    /// Sets fault switches of the file's device until the next operation ends.
    Fault {
        file: u64,
        bits: u32,
    },
    /// Unbinds the file's device from the driver and binds it again.
    Rebind {
        file: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct BindSpec {
    op: u32,
    flags: u32,
    handle: Arg,
    bo_offset: Arg,
    va: Arg,
    range: Arg,
}

#[derive(Clone, Copy, Debug)]
struct CmdSpec {
    op: u32,
    src: Arg,
    dst: Arg,
    len: Arg,
}

impl Op {
    fn draw(r: &mut Rng, files: u64) -> Self {
        let file = r.below(files);
        let small = |r: &mut Rng| match r.below(8) {
            0 => r.next() as u32,
            1 => 1 << r.below(32),
            _ => 0,
        };
        // Rare: a rebind takes a probe, and a stall or a bogus seqno a job timeout.
        if r.below(3000) == 0 {
            return Self::Rebind { file };
        }
        if r.below(300) == 0 {
            return Self::Fault {
                file,
                bits: r.pick(&[
                    ctrl::FAULT_DROP_COMPLETION,
                    ctrl::FAULT_DROP_COMPLETION,
                    ctrl::FAULT_TEAR_SEQNO,
                    ctrl::FAULT_TEAR_SEQNO,
                    ctrl::FAULT_FAIL_COMMAND,
                    ctrl::FAULT_FAIL_COMMAND,
                    ctrl::FAULT_FAIL_COMMAND,
                    ctrl::FAULT_BOGUS_SEQNO,
                    ctrl::FAULT_STALL,
                ]),
            };
        }
        match r.below(100) {
            0 => Self::Info { file },
            1 | 2 => Self::Userq {
                file,
                kind: r.below(3) as u32,
                va: Arg::draw(r, &VAS),
                size: r.pick(&[64, 4096, 4096, 96, 1 << 24, 1 << 25]),
                queue: r.pick(&[0, 1, 1, 2, 5]) as u32,
                op: r.pick(&[0, 1, 5, 6]) as u32,
                addr: r.pick(&[0, 8, 0x1000, u64::MAX - 7]),
            },
            3 => Self::VmCreate {
                file,
                flags: match r.below(4) {
                    0 => 0,
                    1 | 2 => uapi::DRM_CONFLUX_VM_CREATE_LONG_RUNNING,
                    _ => small(r),
                },
            },
            4..=17 => Self::Create {
                file,
                size: Arg::draw(r, &SIZES),
                flags: match r.below(6) {
                    0..=2 => uapi::DRM_CONFLUX_BO_VRAM,
                    3 => uapi::DRM_CONFLUX_BO_SYSTEM,
                    4 => uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM,
                    _ => small(r),
                },
            },
            18..=23 => Self::Close {
                file,
                handle: Arg::draw(r, &[0, 1, u32::MAX as u64]),
            },
            24..=37 => {
                let mut spec = || BindSpec {
                    op: match r.below(8) {
                        0..=4 => uapi::DRM_CONFLUX_BIND_MAP,
                        5 | 6 => uapi::DRM_CONFLUX_BIND_UNMAP,
                        _ => r.next() as u32,
                    },
                    flags: match r.below(8) {
                        0 => uapi::DRM_CONFLUX_BIND_READONLY,
                        1 => uapi::DRM_CONFLUX_BIND_NULL,
                        2 => small(r),
                        _ => 0,
                    },
                    handle: Arg::draw(r, &[0, u32::MAX as u64]),
                    bo_offset: Arg::draw(r, &SIZES),
                    va: Arg::draw(r, &VAS),
                    range: Arg::draw(r, &SIZES),
                };
                let ops = [spec(), spec(), spec()];
                Self::Bind {
                    file,
                    ops,
                    count: r.pick(&[0, 1, 1, 1, 2, 3, 1025]),
                    flags: if r.below(8) == 0 { small(r) } else { 0 },
                    queue: r.pick(&[0, 0, 0, 1, 1, 1, 7]) as u32,
                    wait: r.below(3) == 0,
                    signal: r.below(2) == 0,
                }
            }
            38..=53 => {
                let mut spec = || CmdSpec {
                    op: match r.below(8) {
                        0..=3 => uapi::DRM_CONFLUX_CMD_FILL,
                        4..=6 => uapi::DRM_CONFLUX_CMD_COPY,
                        _ => r.next() as u32,
                    },
                    src: Arg::draw(r, &VAS),
                    dst: Arg::draw(r, &VAS),
                    len: Arg::draw(r, &SIZES),
                };
                let cmds = [spec(), spec(), spec()];
                Self::Submit {
                    file,
                    cmds,
                    count: r.pick(&[0, 1, 1, 1, 2, 3, 65]),
                    flags: match r.below(8) {
                        0 => uapi::DRM_CONFLUX_SUBMIT_OUT_FENCE_FD,
                        1 => uapi::DRM_CONFLUX_SUBMIT_EXPLICIT_SYNC,
                        2 => uapi::DRM_CONFLUX_SUBMIT_IN_FENCE_FD,
                        3 => small(r),
                        _ => 0,
                    },
                    sync: r.next() as u32,
                }
            }
            54..=60 => Self::Wait {
                file,
                job: Arg::draw(r, &[0, 1, u64::MAX]),
                timeout_ns: r.pick(&[0, 0, 1_000_000, 50_000_000, -1, i64::MIN]),
            },
            61..=68 => Self::Rw {
                file,
                write: r.below(2) == 0,
                handle: Arg::draw(r, &[0, u32::MAX as u64]),
                offset: Arg::draw(r, &SIZES),
                size: r.pick(&[0, 1, 4096, 4097, 65536, 1 << 40]),
                bad_ptr: r.below(10) == 0,
            },
            69..=71 => Self::BoInfo {
                file,
                handle: Arg::draw(r, &[0, u32::MAX as u64]),
            },
            72..=75 => Self::Join {
                file,
                other: r.below(files),
                garbage_fd: (r.below(5) == 0).then(|| r.pick(&[-1, 0, 1, 1023, i32::MAX])),
            },
            76..=78 => Self::Path {
                file,
                member: r.pick(&[0, 0, 1, 3, 8, u32::MAX]),
                va: Arg::draw(r, &VAS),
            },
            79..=82 => Self::Export {
                file,
                handle: Arg::draw(r, &[0, u32::MAX as u64]),
            },
            83..=86 => Self::Import {
                file,
                buf: r.next(),
            },
            87..=89 => Self::Syncobj {
                file,
                kind: r.below(4) as u32,
                arg: r.next(),
            },
            90..=93 => Self::Mmap {
                file,
                handle: Arg::draw(r, &[0]),
                offset_delta: r.pick(&[0, 0, 0, 4096, 1 << 40]),
                touch: r.below(3) != 0,
            },
            94 | 95 => Self::Munmap { map: r.next() },
            96 | 97 => Self::Reopen { file },
            _ => Self::Fork {
                file,
                calls: r.pick(&[1, 4, 12]),
                seed: r.next(),
            },
        }
    }
}

/// What a sequence holds.
struct State {
    paths: Vec<PathBuf>,
    /// The PCI function of each file's device.
    pcis: Vec<String>,
    /// Fault switches set by this operation, cleared when dropped.
    armed: Option<Switches>,
    /// Fault switches set by the operation before, cleared once this one has run.
    clearing: Option<Switches>,
    files: Vec<Device>,
    /// Buffer handles per file.
    handles: Vec<Vec<u64>>,
    /// Jobs per file.
    jobs: Vec<Vec<u64>>,
    syncobjs: Vec<Vec<u64>>,
    /// Bind queues per file.
    queues: Vec<Vec<u32>>,
    bufs: Vec<DmaBufFd>,
    fences: Vec<OwnedFd>,
    maps: Vec<Mapping>,
    /// Errnos of the calls, for the summary.
    calls: u64,
}

/// A call failed with an errno the uAPI does not document, or an invariant broke.
#[derive(Debug)]
struct Broken(String);

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The errnos that the uAPI documents (`conflux_accel.h`, `uapi.rst`), for Conflux's ioctls
/// and the DRM core's PRIME and syncobj calls.
const DOCUMENTED: [i32; 19] = [
    libc::EAGAIN,
    libc::EBADF,
    libc::EBUSY,
    libc::ECANCELED,
    libc::EEXIST,
    libc::EFAULT,
    libc::EINTR,
    libc::EINVAL,
    libc::EIO,
    libc::EMFILE,
    libc::ENODEV,
    libc::ENOENT,
    libc::ENOMEM,
    libc::ENOSPC,
    libc::EOPNOTSUPP,
    libc::ESTALE,
    libc::ETIME,
    libc::ETIMEDOUT,
    libc::EXDEV,
];

impl State {
    /// Opens two files on the first device of `pcis`, one on each of the next two.
    fn open(pcis: &[String]) -> Result<Self, Error> {
        let mut chosen: Vec<String> = vec![pcis[0].clone()];
        chosen.extend(pcis.iter().take(3).cloned());
        let paths = nodes(&chosen)?;
        let mut files = Vec::new();
        for p in &paths {
            files.push(Device::open(p)?);
        }
        let n = files.len();
        Ok(Self {
            paths,
            pcis: chosen,
            armed: None,
            clearing: None,
            files,
            handles: vec![Vec::new(); n],
            jobs: vec![Vec::new(); n],
            syncobjs: vec![Vec::new(); n],
            queues: vec![Vec::new(); n],
            bufs: Vec::new(),
            fences: Vec::new(),
            maps: Vec::new(),
            calls: 0,
        })
    }

    /// Checks the result of a call: success, or a documented errno.
    fn check<T>(&mut self, what: &str, r: Result<T, Error>) -> Result<Option<T>, Broken> {
        self.calls += 1;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) => match e.errno() {
                Some(errno) if DOCUMENTED.contains(&errno) => Ok(None),
                _ => Err(Broken(format!("{what}: {e}: not an errno of the uAPI"))),
            },
        }
    }

    /// The bind queue of file `f`, made at the first call: 0 when it cannot be made.
    fn bind_queue(&mut self, f: usize) -> Result<u32, Broken> {
        if let Some(&q) = self.queues[f].first() {
            return Ok(q);
        }
        let r = self.files[f].bind_queue_create();
        Ok(match self.check("BIND_QUEUE_CREATE", r)? {
            Some(q) => {
                self.queues[f].push(q);
                q
            }
            None => 0,
        })
    }

    fn idx(&self, file: u64) -> usize {
        // CAST: a handful of files.
        (file % self.files.len() as u64) as usize
    }

    fn run(&mut self, op: &Op) -> Result<(), Broken> {
        match *op {
            Op::Info { file } => {
                let f = self.idx(file);
                let r = self.files[f].info();
                self.check("GET_INFO", r)?;
            }
            Op::Userq {
                file,
                kind,
                va,
                size,
                queue,
                op,
                addr,
            } => {
                let f = self.idx(file);
                match kind {
                    0 => {
                        let mut a = uapi::drm_conflux_userq_create {
                            ring_va: va.value(&[], 1 << 32),
                            ring_size: size,
                            ..Default::default()
                        };
                        let r = self.files[f].userq_create_raw(&mut a);
                        if self.check("USERQ_CREATE", r)?.is_some() {
                            // The doorbell object joins the file's buffers: the other calls
                            // get to refuse it.
                            self.handles[f].push(u64::from(a.doorbell_handle));
                        }
                    }
                    1 => {
                        let r = self.files[f].userq_destroy(queue);
                        self.check("USERQ_DESTROY", r)?;
                    }
                    _ => {
                        let mut a = uapi::drm_conflux_wait_user_fence {
                            addr,
                            value: 1,
                            mask: u64::MAX,
                            queue_id: queue,
                            op,
                            ..Default::default()
                        };
                        let r = self.files[f].wait_user_fence_raw(&mut a, true);
                        self.check("WAIT_USER_FENCE", r)?;
                    }
                }
            }
            Op::VmCreate { file, flags } => {
                let f = self.idx(file);
                let mut a = uapi::drm_conflux_vm_create { flags, vm_id: 0 };
                let r = self.files[f].vm_create_raw(&mut a);
                self.check("VM_CREATE", r)?;
            }
            Op::Create { file, size, flags } => {
                let f = self.idx(file);
                let mut a = uapi::drm_conflux_bo_create {
                    size: size.value(&[], 4096),
                    flags,
                    handle: 0,
                };
                let r = self.files[f].bo_create_raw(&mut a);
                if self.check("BO_CREATE", r)?.is_some() {
                    self.handles[f].push(u64::from(a.handle));
                }
            }
            Op::Close { file, handle } => {
                let f = self.idx(file);
                let h = handle.value(&self.handles[f], 1) as u32;
                let r = self.files[f].gem_close(h);
                if self.check("GEM_CLOSE", r)?.is_some() {
                    self.handles[f].retain(|&x| x != u64::from(h));
                }
            }
            Op::Bind {
                file,
                ops,
                count,
                flags,
                queue,
                wait,
                signal,
            } => {
                let f = self.idx(file);
                let queue = match queue {
                    1 => self.bind_queue(f)?,
                    q => q,
                };
                let held = &self.handles[f];
                // A count beyond the list only as 1025, which the uAPI's limit refuses before
                // the kernel reads the list.
                let list: Vec<BindOp> = ops
                    .iter()
                    .map(|s| BindOp {
                        op: s.op,
                        flags: s.flags,
                        handle: s.handle.value(held, 1) as u32,
                        pad: 0,
                        bo_offset: s.bo_offset.value(&[0, 0, 4096], 0),
                        va: s.va.value(&VAS[..4], VA),
                        range: s.range.value(&[4096, MIB2, 8192], 4096),
                    })
                    .collect();
                let syncobj = self.syncobjs[f].first().copied().unwrap_or(0) as u32;
                let ins = [conflux::sync(syncobj, 0)];
                let outs = ins;
                let mut a = uapi::drm_conflux_vm_bind {
                    num_ops: count,
                    ops: list.as_ptr() as u64,
                    flags,
                    queue,
                    num_in_syncs: u32::from(wait && queue != 0),
                    in_syncs: ins.as_ptr() as u64,
                    num_out_syncs: u32::from(signal && queue != 0),
                    out_syncs: outs.as_ptr() as u64,
                    ..Default::default()
                };
                let r = self.files[f].vm_bind_raw(&mut a);
                self.check("VM_BIND", r)?;
            }
            Op::Submit {
                file,
                cmds,
                count,
                flags,
                sync,
            } => {
                let f = self.idx(file);
                let list: Vec<Cmd> = cmds
                    .iter()
                    .map(|c| Cmd {
                        op: c.op,
                        pad: 0,
                        src: c.src.value(&VAS[..4], VA),
                        dst: c.dst.value(&VAS[..4], VA),
                        len: c.len.value(&[64, 4096, MIB2], 64),
                    })
                    .collect();
                let syncobj = |i: u64| Arg::Held(i).value(&self.syncobjs[f], 0) as u32;
                let in_fd = match self.fences.len() {
                    0 => -1,
                    n => self.fences[sync as usize % n].as_raw_fd(),
                };
                let mut a = uapi::drm_conflux_submit {
                    num_cmds: count,
                    cmds: list.as_ptr() as u64,
                    flags,
                    in_syncobj: if sync & 1 != 0 {
                        syncobj(u64::from(sync))
                    } else {
                        0
                    },
                    out_syncobj: if sync & 2 != 0 {
                        syncobj(u64::from(sync >> 2))
                    } else {
                        0
                    },
                    in_fence_fd: in_fd,
                    out_fence_fd: -1,
                    ..Default::default()
                };
                let r = self.files[f].submit_raw(&mut a);
                if self.check("SUBMIT", r)?.is_some() {
                    self.jobs[f].push(a.job);
                    if flags & uapi::DRM_CONFLUX_SUBMIT_OUT_FENCE_FD != 0 {
                        // SAFETY: SUBMIT returned this new descriptor, which nothing else owns.
                        self.fences.push(unsafe {
                            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(a.out_fence_fd)
                        });
                    }
                }
            }
            Op::Wait {
                file,
                job,
                timeout_ns,
            } => {
                let f = self.idx(file);
                let mut a = uapi::drm_conflux_wait {
                    job: job.value(&self.jobs[f], 1),
                    timeout_ns,
                    ..Default::default()
                };
                let r = self.files[f].wait_raw(&mut a);
                self.check("WAIT", r)?;
            }
            Op::Rw {
                file,
                write,
                handle,
                offset,
                size,
                bad_ptr,
            } => {
                let f = self.idx(file);
                let mut buf = vec![0x5au8; 65536];
                let mut a = uapi::drm_conflux_bo_rw {
                    handle: handle.value(&self.handles[f], 1) as u32,
                    offset: offset.value(&[0, 4096], 0),
                    // The buffer holds 64 KiB: larger sizes only with a pointer that faults.
                    size: if bad_ptr { size } else { size.min(65536) },
                    data: if bad_ptr { 8 } else { buf.as_mut_ptr() as u64 },
                    ..Default::default()
                };
                let r = self.files[f].bo_rw_raw(write, &mut a);
                self.check(if write { "BO_WRITE" } else { "BO_READ" }, r)?;
            }
            Op::BoInfo { file, handle } => {
                let f = self.idx(file);
                let mut a = BoInfo {
                    handle: handle.value(&self.handles[f], 1) as u32,
                    ..Default::default()
                };
                let r = self.files[f].bo_info_raw(&mut a);
                self.check("BO_INFO", r)?;
            }
            Op::Join {
                file,
                other,
                garbage_fd,
            } => {
                let (f, o) = (self.idx(file), self.idx(other));
                let fd = garbage_fd.unwrap_or_else(|| self.files[o].as_fd().as_raw_fd());
                let mut a = uapi::drm_conflux_vm_join {
                    fd,
                    ..Default::default()
                };
                let r = self.files[f].vm_join_raw(&mut a);
                self.check("VM_JOIN", r)?;
            }
            Op::Path { file, member, va } => {
                let f = self.idx(file);
                let mut a = uapi::drm_conflux_vm_path {
                    va: va.value(&VAS[..4], VA),
                    member,
                    ..Default::default()
                };
                let r = self.files[f].vm_path_raw(&mut a);
                self.check("VM_PATH", r)?;
            }
            Op::Export { file, handle } => {
                let f = self.idx(file);
                let h = handle.value(&self.handles[f], 1) as u32;
                let r = self.files[f].export(h);
                if let Some(buf) = self.check("PRIME export", r)? {
                    self.bufs.push(buf);
                }
            }
            Op::Import { file, buf } => {
                let f = self.idx(file);
                if self.bufs.is_empty() {
                    return Ok(());
                }
                let b = &self.bufs[buf as usize % self.bufs.len()];
                let fd: BorrowedFd<'_> = b.0.as_fd();
                let r = self.files[f].import(fd).map(|bo| bo.into_handle());
                if let Some(h) = self.check("PRIME import", r)? {
                    self.handles[f].push(u64::from(h));
                }
            }
            Op::Syncobj { file, kind, arg } => {
                let f = self.idx(file);
                let h = Arg::Held(arg).value(&self.syncobjs[f], 0) as u32;
                match kind {
                    0 => {
                        let r = self.files[f].syncobj_create();
                        if let Some(h) = self.check("SYNCOBJ_CREATE", r)? {
                            self.syncobjs[f].push(u64::from(h));
                        }
                    }
                    1 => {
                        // A syncobj passed to another file.
                        let to = self.idx(arg >> 8);
                        let r = self.files[f].syncobj_export(h);
                        if let Some(fd) = self.check("SYNCOBJ_HANDLE_TO_FD", r)? {
                            let r = self.files[to].syncobj_import(fd.as_fd());
                            if let Some(h) = self.check("SYNCOBJ_FD_TO_HANDLE", r)? {
                                self.syncobjs[to].push(u64::from(h));
                            }
                        }
                    }
                    2 => {
                        let r = self.files[f].syncobj_export_sync_file(h);
                        if let Some(fd) = self.check("SYNCOBJ export sync_file", r)? {
                            self.fences.push(fd);
                        }
                    }
                    _ => {
                        let r = self.files[f].syncobj_destroy(h);
                        if self.check("SYNCOBJ_DESTROY", r)?.is_some() {
                            self.syncobjs[f].retain(|&x| x != u64::from(h));
                        }
                    }
                }
            }
            Op::Mmap {
                file,
                handle,
                offset_delta,
                touch,
            } => {
                let f = self.idx(file);
                let h = handle.value(&self.handles[f], 1) as u32;
                let r = self.files[f].bo_info(h);
                let Some(info) = self.check("BO_INFO", r)? else {
                    return Ok(());
                };
                let len = usize::try_from(info.size.min(4 * MIB2)).unwrap_or(4096);
                let r = self.files[f].mmap_raw(
                    info.mmap_offset.wrapping_add(offset_delta),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                );
                if offset_delta != 0
                    && r.as_ref().err().and_then(Error::errno) == Some(libc::EACCES)
                {
                    // The offset lands in a buffer of another file, which this one may not map.
                    self.calls += 1;
                    return Ok(());
                }
                if let Some(m) = self.check("mmap", r)? {
                    if touch && offset_delta == 0 {
                        // A fault on the first and the last page: the buffer is still open.
                        m.write(0, &[1]);
                        let mut b = [0u8; 1];
                        m.read(len - 1, &mut b);
                    }
                    self.maps.push(m);
                }
            }
            Op::Munmap { map } => {
                if !self.maps.is_empty() {
                    let n = self.maps.len();
                    self.maps.swap_remove(map as usize % n);
                }
            }
            Op::Reopen { file } => {
                let f = self.idx(file);
                let dev =
                    Device::open(&self.paths[f]).map_err(|e| Broken(format!("reopen: {e}")))?;
                // The old file goes, with its buffers, jobs and syncobjs; its mappings and
                // dma-bufs stay, as they do for a process that closes a file.
                self.files[f] = dev;
                self.handles[f].clear();
                self.jobs[f].clear();
                self.syncobjs[f].clear();
                self.queues[f].clear();
            }
            Op::Fork { file, calls, seed } => {
                let f = self.idx(file);
                // SAFETY: The program is single-threaded; the child only makes calls and exits.
                let pid = unsafe { libc::fork() };
                if pid < 0 {
                    return Err(Broken(format!("fork: {}", std::io::Error::last_os_error())));
                }
                if pid == 0 {
                    // The child works on the inherited files, then exits without running
                    // destructors: what it holds goes with its descriptors.
                    let mut r = Rng::new(seed);
                    let mut ok = true;
                    for _ in 0..calls {
                        let op = Op::draw(&mut r, self.files.len() as u64);
                        if matches!(
                            op,
                            Op::Fork { .. }
                                | Op::Reopen { .. }
                                | Op::Fault { .. }
                                | Op::Rebind { .. }
                        ) {
                            continue;
                        }
                        ok &= self.run(&op).is_ok();
                    }
                    let _ = f;
                    // SAFETY: Ends the child at once.
                    unsafe { libc::_exit(if ok { 0 } else { 1 }) };
                }
                let mut status = 0;
                // SAFETY: `pid` is our child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                    return Err(Broken(format!(
                        "a forked child's calls failed (status {status:#x})"
                    )));
                }
            }
            Op::Fault { file, bits } => {
                let f = self.idx(file);
                let sw = Switches::open_pci(&self.pcis[f])
                    .map_err(|e| Broken(format!("fault switches: {e}")))?;
                sw.set(bits);
                self.armed = Some(sw);
            }
            Op::Rebind { file } => {
                let f = self.idx(file);
                let pci = self.pcis[f].clone();
                // The files stay open across the unbind: they see ENODEV, and the device's
                // node may come back under another minor while they are open.
                driver_sysfs(&pci, "unbind").map_err(|e| Broken(format!("unbind: {e}")))?;
                // With a fault switch set, the probe's first jobs may fail, and the probe with
                // EIO: then, the switches cleared, the device binds.
                let faulty = self.clearing.is_some();
                match driver_sysfs(&pci, "bind") {
                    Err(e) if faulty && e.errno() == Some(libc::EIO) => {
                        self.clearing = None;
                        driver_sysfs(&pci, "bind")
                    }
                    other => other,
                }
                .map_err(|e| Broken(format!("bind: {e}")))?;
                let node = node_of(&pci)
                    .ok_or_else(|| Broken(format!("{pci}: no accel node after the bind")))?;
                for (p, q) in self.paths.iter_mut().zip(&self.pcis) {
                    if *q == pci {
                        *p = node.clone();
                    }
                }
            }
        }
        Ok(())
    }
}

/// The accel node of each PCI function of `pcis`, found in sysfs without opening any.
fn nodes(pcis: &[String]) -> Result<Vec<PathBuf>, Error> {
    let in_sysfs = |pci: &str| -> Option<PathBuf> {
        let dir = fs::read_dir(format!("/sys/bus/pci/devices/{pci}/accel")).ok()?;
        dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n.starts_with("accel"))
            .map(|n| PathBuf::from("/dev/accel").join(n))
    };
    pcis.iter()
        .map(|pci| {
            in_sysfs(pci).or_else(|| node_of(pci)).ok_or_else(|| {
                io_err(pci, "find the accel node")(std::io::Error::from(
                    std::io::ErrorKind::NotFound,
                ))
            })
        })
        .collect()
}

/// What every device has available, and the dma-bufs that exist, between sequences.
#[derive(Clone, Debug, PartialEq)]
struct Baseline {
    vram: Vec<u64>,
    dmabufs: usize,
}

fn dmabufs() -> Result<usize, Error> {
    let path = "/sys/kernel/debug/dma_buf/bufinfo";
    let text = fs::read_to_string(path).map_err(io_err(path, "read"))?;
    // "Total N objects, M bytes".
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("Total ")?.split(' ').next()?.parse().ok())
        .unwrap_or(usize::MAX))
}

fn baseline(pcis: &[String]) -> Result<Baseline, Error> {
    let mut vram = Vec::new();
    for p in nodes(pcis)? {
        vram.push(Device::open(p)?.info()?.vram_avail);
    }
    Ok(Baseline {
        vram,
        dmabufs: dmabufs()?,
    })
}

/// Runs `ops` on fresh files; then, everything closed, checks the baseline (waiting up to 10 s
/// for jobs still running).
fn run_sequence(pcis: &[String], ops: &[Op], base: &Baseline) -> Result<u64, Broken> {
    let calls;
    {
        let mut s = State::open(pcis).map_err(|e| Broken(format!("open: {e}")))?;
        for (i, op) in ops.iter().enumerate() {
            s.clearing = s.armed.take();
            s.run(op)
                .map_err(|b| Broken(format!("operation {i}: {b}")))?;
            s.clearing = None;
        }
        calls = s.calls;
    }
    let start = Instant::now();
    loop {
        let now = baseline(pcis).map_err(|e| Broken(format!("baseline: {e}")))?;
        if now == *base {
            return Ok(calls);
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(Broken(format!(
                "with everything closed: {now:?}, {base:?} at the start"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The operations of sequence `n` of run `seed`.
fn sequence(seed: u64, n: u64, files: u64) -> Vec<Op> {
    let mut r = Rng::new(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (0..SEQUENCE).map(|_| Op::draw(&mut r, files)).collect()
}

/// Drops operations from `ops` one at a time while the sequence still fails.
fn shrink(pcis: &[String], mut ops: Vec<Op>, base: &Baseline) -> Vec<Op> {
    let mut i = ops.len();
    while i > 0 {
        i -= 1;
        let mut fewer = ops.clone();
        fewer.remove(i);
        if run_sequence(pcis, &fewer, base).is_err() {
            ops = fewer;
        }
    }
    ops
}

/// The PCI functions of the devices at `paths`, and what they have available at the start;
/// or a FAIL line.
fn setup(paths: &[PathBuf]) -> Option<(Vec<String>, Baseline)> {
    if paths.len() < 3 {
        println!("FAIL fuzz: needs 3 Conflux devices, found {}", paths.len());
        return None;
    }
    let pcis = paths
        .iter()
        .map(|p| Device::open(p).ok().and_then(|d| d.pci_address()))
        .collect::<Option<Vec<_>>>();
    let Some(pcis) = pcis else {
        println!("FAIL fuzz: the PCI function of a device is not in sysfs");
        return None;
    };
    match baseline(&pcis) {
        Ok(b) => Some((pcis, b)),
        Err(e) => {
            println!("FAIL fuzz: baseline: {e}");
            None
        }
    }
}

/// Has kmemleak scan now: the objects it reports, `None` when the kernel has no kmemleak.
/// Objects younger than its minimum age (5 s) are found by a later scan.
fn kmemleak() -> Option<Result<usize, String>> {
    let path = "/sys/kernel/debug/kmemleak";
    if fs::metadata(path).is_err() {
        return None;
    }
    Some(
        fs::write(path, "scan")
            .and_then(|()| fs::read_to_string(path))
            .map(|text| text.matches("unreferenced object 0x").count())
            .map_err(|e| format!("{path}: {e}")),
    )
}

/// Has kmemleak scan once the objects made until now are old enough for it to judge (its
/// minimum age is 5 s): the objects it reports, `None` when the kernel has no kmemleak.
fn kmemleak_settled() -> Option<Result<usize, String>> {
    std::thread::sleep(Duration::from_secs(6));
    kmemleak()
}

/// Has kmemleak forget the objects it reported until now: later scans report only new ones.
fn kmemleak_clear() -> Result<(), String> {
    let path = "/sys/kernel/debug/kmemleak";
    fs::write(path, "clear").map_err(|e| format!("{path}: {e}"))
}

/// The sequence of `from..to` that leaks, found by halves: `leaks(a, b)` runs sequences `a..b`
/// again and tells whether kmemleak then reports an object. `None` when the sequences do not
/// leak again, or only together: no half leaks on its own.
fn leaking_sequence(
    mut from: u64,
    mut to: u64,
    mut leaks: impl FnMut(u64, u64) -> Result<bool, String>,
) -> Result<Option<u64>, String> {
    if from >= to || !leaks(from, to)? {
        return Ok(None);
    }
    while to - from > 1 {
        let mid = from + (to - from) / 2;
        if leaks(from, mid)? {
            to = mid;
        } else if leaks(mid, to)? {
            from = mid;
        } else {
            return Ok(None);
        }
    }
    Ok(Some(from))
}

/// After a scan found leaks since sequence `from`, before `to`: names the sequence that
/// leaks on its own, with its operations, or says that none does.
fn report_leak(pcis: &[String], base: &Baseline, seed: u64, from: u64, to: u64) {
    println!("fuzz: replaying sequences {from}..{to} by halves, a kmemleak scan after each");
    let found = leaking_sequence(from, to, |a, b| {
        kmemleak_clear()?;
        for n in a..b {
            run_sequence(pcis, &sequence(seed, n, 4), base)
                .map_err(|e| format!("sequence {n} again: {e}"))?;
        }
        match kmemleak_settled() {
            Some(Ok(k)) => Ok(k > 0),
            Some(Err(e)) => Err(e),
            None => Err("kmemleak went away".into()),
        }
    });
    match found {
        Ok(Some(n)) => {
            println!("fuzz: sequence {n} leaks on its own:");
            for op in sequence(seed, n, 4) {
                println!("fuzz:     {op:?}");
            }
            println!("fuzz: replay with conflux-uapi-test --fuzz-one {seed} {n}");
        }
        Ok(None) => println!("fuzz: no sequence of {from}..{to} leaks again on its own"),
        Err(e) => println!("fuzz: replaying them: {e}"),
    }
}

/// `--fuzz SEED CALLS`: runs sequences until `CALLS` calls were made. Prints progress, and on
/// failure the seed, the sequence and its shortest failing list of operations.
pub(crate) fn fuzz(paths: &[PathBuf], seed: u64, calls: u64) -> bool {
    let Some((pcis, base)) = setup(paths) else {
        return false;
    };
    let files = 4;
    let (mut done, mut n, mut scans) = (0u64, 0u64, 0u64);
    // Sequences before `settled` were old enough for the last clean scan to judge them;
    // `aging` is the count that will be when the next scan runs.
    let (mut settled, mut aging) = (0u64, 0u64);
    let start = Instant::now();
    let (mut report, mut scan) = (Instant::now(), Instant::now());
    while done < calls {
        let ops = sequence(seed, n, files);
        match run_sequence(&pcis, &ops, &base) {
            Ok(c) => done += c,
            Err(b) => {
                println!("FAIL fuzz: seed {seed}, sequence {n}: {b}");
                let min = shrink(&pcis, ops, &base);
                println!("fuzz: shortest failing list ({} operations):", min.len());
                for op in &min {
                    println!("fuzz:     {op:?}");
                }
                println!("fuzz: replay with conflux-uapi-test --fuzz-one {seed} {n}");
                return false;
            }
        }
        n += 1;
        let last = done >= calls;
        if scan.elapsed() < Duration::from_secs(SCAN_EVERY - 6) {
            aging = n;
        }
        if last || scan.elapsed() > Duration::from_secs(SCAN_EVERY) {
            let took = Instant::now();
            let scanned_now = if last { kmemleak_settled() } else { kmemleak() };
            match scanned_now {
                None => {}
                Some(Ok(0)) => {
                    scans += 1;
                    println!(
                        "fuzz: kmemleak scan {scans} after {n} sequences: clean ({} ms)",
                        took.elapsed().as_millis()
                    );
                }
                Some(Ok(k)) => {
                    println!(
                        "FAIL fuzz: seed {seed}: kmemleak reports {k} objects after sequences \
                         {settled}..{n}"
                    );
                    report_leak(&pcis, &base, seed, settled, n);
                    return false;
                }
                Some(Err(e)) => {
                    println!("FAIL fuzz: kmemleak scan: {e}");
                    return false;
                }
            }
            settled = if last { n } else { aging };
            scan = Instant::now();
        }
        if report.elapsed() > Duration::from_secs(30) {
            println!(
                "fuzz: {done} calls in {n} sequences, {} s",
                start.elapsed().as_secs()
            );
            report = Instant::now();
        }
    }
    println!(
        "PASS fuzz: seed {seed}: {done} calls in {n} sequences of {SEQUENCE} operations, every \
         result documented, VRAM and dma-bufs back to the start after each, {scans} kmemleak \
         scans clean ({} s)",
        start.elapsed().as_secs()
    );
    true
}

/// `--fuzz-one SEED N`: runs sequence `N` of run `SEED` alone, and shrinks it if it fails;
/// then, where the kernel has kmemleak, scans for what the sequence leaked.
pub(crate) fn replay(paths: &[PathBuf], seed: u64, n: u64) -> bool {
    let Some((pcis, base)) = setup(paths) else {
        return false;
    };
    let ops = sequence(seed, n, 4);
    for (i, op) in ops.iter().enumerate() {
        println!("fuzz: {i:3} {op:?}");
    }
    let leak_check = kmemleak().is_some();
    if leak_check {
        if let Err(e) = kmemleak_clear() {
            println!("FAIL fuzz: {e}");
            return false;
        }
    }
    match run_sequence(&pcis, &ops, &base) {
        Ok(c) if !leak_check => {
            println!("PASS fuzz: seed {seed}, sequence {n}: {c} calls");
            true
        }
        Ok(c) => match kmemleak_settled() {
            Some(Ok(0)) => {
                println!("PASS fuzz: seed {seed}, sequence {n}: {c} calls, kmemleak clean");
                true
            }
            Some(Ok(k)) => {
                println!("FAIL fuzz: seed {seed}, sequence {n}: kmemleak reports {k} objects");
                false
            }
            Some(Err(e)) => {
                println!("FAIL fuzz: seed {seed}, sequence {n}: {e}");
                false
            }
            None => {
                println!("FAIL fuzz: seed {seed}, sequence {n}: kmemleak went away");
                false
            }
        },
        Err(b) => {
            println!("FAIL fuzz: seed {seed}, sequence {n}: {b}");
            for op in shrink(&pcis, ops, &base) {
                println!("fuzz:     {op:?}");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::leaking_sequence;

    /// `leaking_sequence` over sequences of which those in `leaky` leak: what it finds, and
    /// the ranges it replays.
    fn find(from: u64, to: u64, leaky: &[u64]) -> (Option<u64>, Vec<(u64, u64)>) {
        let mut runs = Vec::new();
        let found = leaking_sequence(from, to, |a, b| {
            runs.push((a, b));
            Ok(leaky.iter().any(|n| (a..b).contains(n)))
        });
        (found.ok().flatten(), runs)
    }

    #[test]
    fn finds_the_sequence_that_leaks() {
        for leak in 400..437 {
            let (found, runs) = find(400, 437, &[leak]);
            assert_eq!(found, Some(leak));
            // The whole range, then at most two halves per halving.
            assert!(runs.len() <= 1 + 2 * 6, "{runs:?}");
        }
        assert_eq!(find(7, 8, &[7]), (Some(7), vec![(7, 8)]));
    }

    #[test]
    fn of_two_that_leak_finds_the_first() {
        assert_eq!(find(0, 100, &[30, 70]).0, Some(30));
    }

    #[test]
    fn no_leak_again_is_none() {
        assert_eq!(find(0, 100, &[]), (None, vec![(0, 100)]));
        assert_eq!(find(5, 5, &[5]), (None, vec![]));
    }

    #[test]
    fn a_leak_of_two_sequences_together_is_none() {
        let mut runs = 0;
        let found = leaking_sequence(0, 8, |a, b| {
            runs += 1;
            // Only sequences 3 and 4 together leak.
            Ok(a <= 3 && b > 4)
        });
        assert_eq!(found, Ok(None));
        assert_eq!(runs, 3);
    }

    #[test]
    fn an_error_stops_the_search() {
        let found = leaking_sequence(0, 8, |a, _| {
            if a == 0 {
                Ok(true)
            } else {
                Err(format!("sequence {a} failed"))
            }
        });
        assert_eq!(found, Ok(Some(0)));
        let found = leaking_sequence(0, 8, |_, b| if b == 8 { Ok(true) } else { Err("x".into()) });
        assert_eq!(found, Err("x".into()));
    }
}
