// SPDX-License-Identifier: GPL-2.0

//! The job ioctls: SUBMIT and WAIT.

use kernel::{
    dma_fence::{
        Fence,
        SyncFile, //
    },
    dma_resv::{
        DmaResv,
        ResvSet,
        Usage, //
    },
    drm::{
        gem::BaseObject,
        syncobj::{
            ChainNode,
            SyncObj, //
        },
        Registered, //
    },
    fs::file::{
        flags,
        FileDescriptorReservation, //
    },
    prelude::*,
    sync::aref::ARef,
    time::{
        msecs_to_jiffies,
        Jiffies, //
    },
    transmute::FromBytes,
    uapi, //
};

use crate::{
    driver::{
        ConfluxDevice,
        DrmFile, //
    },
    engine::Command,
    file::JobState,
    gem::{
        moves,
        Bo, //
    },
    hw::DeviceData,
    vm::Access,
};

use super::{
    user_range,
    Call, //
};

/// A `drm_conflux_cmd` as read from userspace.
#[repr(transparent)]
struct RawCmd(uapi::drm_conflux_cmd);

// SAFETY: The structure has only integer fields and no padding, so any bytes are a valid value.
unsafe impl FromBytes for RawCmd {}

/// A command of SUBMIT, checked.
fn check_command(cmd: &uapi::drm_conflux_cmd) -> Option<Command> {
    let len_ok = cmd.len <= uapi::DRM_CONFLUX_MAX_CMD_LEN;
    let dst_end = user_range(cmd.dst, cmd.len).filter(|_| len_ok && cmd.pad == 0)?;
    match cmd.op {
        uapi::DRM_CONFLUX_CMD_COPY => {
            user_range(cmd.src, cmd.len)
                .filter(|&src_end| src_end <= cmd.dst || dst_end <= cmd.src)?;
            Some(Command::Copy {
                src: cmd.src,
                dst: cmd.dst,
                len: cmd.len,
            })
        }
        uapi::DRM_CONFLUX_CMD_FILL => Some(Command::Fill {
            dst: cmd.dst,
            len: cmd.len,
            pattern: cmd.src,
        }),
        _ => None,
    }
}

/// The ranges a checked command reads and writes, which [`check_command`] found to lie where
/// userspace binds.
fn accesses(cmd: &Command) -> impl Iterator<Item = Access> {
    let (src, dst, len) = match *cmd {
        Command::Copy { src, dst, len } => (Some(src), dst, len),
        Command::Fill { dst, len, .. } => (None, dst, len),
    };
    let read = src.map(|src| Access {
        range: src..src + len,
        write: false,
    });
    let write = Access {
        range: dst..dst + len,
        write: true,
    };
    Iterator::chain(read.into_iter(), core::iter::once(write))
}

/// A `drm_conflux_sync` as read from userspace.
#[repr(transparent)]
pub(super) struct RawSync(pub(super) uapi::drm_conflux_sync);

// SAFETY: The structure has only integer fields and no padding, so any bytes are a valid value.
unsafe impl FromBytes for RawSync {}

/// Where a call names the fences it waits for and the syncobjs that receive its fence.
pub(super) struct SyncArgs {
    pub(super) in_syncobj: u32,
    pub(super) out_syncobj: u32,
    pub(super) in_syncs: u64,
    pub(super) num_in_syncs: u32,
    pub(super) out_syncs: u64,
    pub(super) num_out_syncs: u32,
    /// A sync_file to wait for.
    pub(super) in_fence_fd: Option<i32>,
}

/// The fences a job waits for, and the syncobjs that receive its fence, looked up and
/// allocated before the job is queued.
pub(super) struct Syncs {
    pub(super) wait: KVec<ARef<Fence>>,
    /// Binary syncobjs, whose fence the job's replaces.
    replace: KVec<ARef<SyncObj>>,
    /// Timeline syncobjs, the point the job's fence takes, and the node it needs.
    points: KVec<(ARef<SyncObj>, u64, ChainNode)>,
}

impl SyncArgs {
    /// The numbers of in- and out-syncs, checked: at most `DRM_CONFLUX_MAX_SYNCS` each.
    pub(super) fn counts(&self, call: &Call<'_, '_>) -> Result<(usize, usize)> {
        let max = uapi::DRM_CONFLUX_MAX_SYNCS;
        let (n_in, n_out) = (self.num_in_syncs, self.num_out_syncs);
        if n_in > max || n_out > max {
            return Err(call.refuse(
                EINVAL,
                fmt!("num_in_syncs {n_in}, num_out_syncs {n_out}: at most {max} each"),
            ));
        }
        Ok((usize::try_from(n_in)?, usize::try_from(n_out)?))
    }

    /// The fence of `in_fence_fd`, if the call has one.
    pub(super) fn in_fence_fd(&self, call: &Call<'_, '_>) -> Result<Option<ARef<Fence>>> {
        self.in_fence_fd
            .map(|fd| {
                Fence::from_sync_file(fd)
                    .map_err(|e| call.refuse(e, fmt!("in_fence_fd {fd}: not a sync_file")))
            })
            .transpose()
    }
}

/// The fence of `in_syncs[i]`, `s`, of a call of `file`.
pub(super) fn in_sync(
    call: &Call<'_, '_>,
    file: &DrmFile,
    i: usize,
    s: &uapi::drm_conflux_sync,
) -> Result<ARef<Fence>> {
    if s.flags != 0 {
        return Err(call.refuse(EINVAL, fmt!("in_syncs[{i}]: flags {:#x}", s.flags)));
    }
    let (handle, point) = (s.handle, s.point);
    SyncObj::find_fence(file, handle, point).map_err(|e| {
        call.refuse(
            e,
            fmt!("in_syncs[{i}]: syncobj {handle}: no fence at {point}"),
        )
    })
}

/// The syncobj of `out_syncs[i]`, `s`, of a call of `file`.
pub(super) fn out_sync(
    call: &Call<'_, '_>,
    file: &DrmFile,
    i: usize,
    s: &uapi::drm_conflux_sync,
) -> Result<ARef<SyncObj>> {
    if s.flags != 0 {
        return Err(call.refuse(EINVAL, fmt!("out_syncs[{i}]: flags {:#x}", s.flags)));
    }
    SyncObj::lookup(file, s.handle)
        .map_err(|e| call.refuse(e, fmt!("out_syncs[{i}]: no syncobj {}", s.handle)))
}

impl Syncs {
    /// Reads and looks up the in- and out-fences of a call.
    pub(super) fn read(call: &Call<'_, '_>, args: &SyncArgs, file: &DrmFile) -> Result<Self> {
        let (n_in, n_out) = args.counts(call)?;
        let ins = call.read_array::<RawSync>(args.in_syncs, n_in)?;
        let outs = call.read_array::<RawSync>(args.out_syncs, n_out)?;
        let mut syncs = Self {
            wait: KVec::new(),
            replace: KVec::new(),
            points: KVec::new(),
        };
        if args.in_syncobj != 0 {
            let handle = args.in_syncobj;
            let fence = SyncObj::find_fence(file, handle, 0)
                .map_err(|e| call.refuse(e, fmt!("in_syncobj {handle}: no fence")))?;
            syncs.wait.push(fence, GFP_KERNEL_ACCOUNT)?;
        }
        for (i, RawSync(s)) in ins.iter().enumerate() {
            syncs
                .wait
                .push(in_sync(call, file, i, s)?, GFP_KERNEL_ACCOUNT)?;
        }
        if let Some(fence) = args.in_fence_fd(call)? {
            syncs.wait.push(fence, GFP_KERNEL_ACCOUNT)?;
        }
        if args.out_syncobj != 0 {
            let handle = args.out_syncobj;
            let syncobj = SyncObj::lookup(file, handle)
                .map_err(|e| call.refuse(e, fmt!("out_syncobj: no syncobj {handle}")))?;
            syncs.replace.push(syncobj, GFP_KERNEL_ACCOUNT)?;
        }
        for (i, RawSync(s)) in outs.iter().enumerate() {
            let syncobj = out_sync(call, file, i, s)?;
            match s.point {
                0 => syncs.replace.push(syncobj, GFP_KERNEL_ACCOUNT)?,
                point => {
                    let node = ChainNode::new(GFP_KERNEL_ACCOUNT)?;
                    syncs
                        .points
                        .push((syncobj, point, node), GFP_KERNEL_ACCOUNT)?;
                }
            }
        }
        Ok(syncs)
    }

    /// Puts `fence`, the job's, in every out-syncobj. Cannot fail.
    pub(super) fn signal(self, fence: &Fence) {
        for syncobj in self.replace.iter() {
            syncobj.replace_fence(Some(fence));
        }
        for (syncobj, point, node) in self.points {
            syncobj.add_point(node, fence, point);
        }
    }
}

/// The sync_file of a call's out-fence, with its descriptor, made before the call changes
/// anything.
pub(super) struct OutFenceFd(Option<(SyncFile, i32)>);

impl OutFenceFd {
    /// A sync_file and a descriptor for it, when `wanted`.
    pub(super) fn reserve(wanted: bool) -> Result<Self> {
        if !wanted {
            return Ok(Self(None));
        }
        let fd = FileDescriptorReservation::get_unused_fd_flags(flags::O_CLOEXEC)?;
        let sync_file = SyncFile::reserve(fd)?;
        let number = i32::try_from(sync_file.fd())?;
        Ok(Self(Some((sync_file, number))))
    }

    /// Installs the sync_file of `fence`, and gives its descriptor. Cannot fail.
    pub(super) fn install(self, fence: &Fence) -> Option<i32> {
        let (mut sync_file, fd) = self.0?;
        sync_file.set_fence(fence);
        sync_file.install();
        Some(fd)
    }
}

/// `DRM_IOCTL_CONFLUX_SUBMIT`.
pub(crate) fn submit(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_submit,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "SUBMIT");
    if data.engine.is_wedged() {
        return Err(call.refuse(
            ENODEV,
            fmt!("the device is wedged (a reset was not confirmed): it runs no more jobs"),
        ));
    }
    let flags = args.flags;
    let known = uapi::DRM_CONFLUX_SUBMIT_EXPLICIT_SYNC
        | uapi::DRM_CONFLUX_SUBMIT_IN_FENCE_FD
        | uapi::DRM_CONFLUX_SUBMIT_OUT_FENCE_FD;
    let out_fd = flags & uapi::DRM_CONFLUX_SUBMIT_OUT_FENCE_FD != 0;
    call.zero(&[
        ("unknown flags", (flags & !known).into()),
        ("pad", args.pad.into()),
        ("job", args.job),
        (
            "out_fence_fd",
            if out_fd {
                0
            } else {
                // CAST: only zero matters.
                args.out_fence_fd as u64
            },
        ),
    ])?;
    let count = call.count("num_cmds", args.num_cmds, uapi::DRM_CONFLUX_MAX_CMDS)?;
    call.vm_id(args.vm_id)?;
    let gives_fence = args.out_syncobj != 0 || args.num_out_syncs != 0 || out_fd;
    if gives_fence && file.inner().is_long_running() {
        return Err(call.refuse(
            EOPNOTSUPP,
            fmt!(
                "out_syncobj {}, num_out_syncs {}, out-fence fd {}: the VM is long-running, its \
                 jobs give no fence (DRM_IOCTL_CONFLUX_WAIT waits for them)",
                args.out_syncobj,
                args.num_out_syncs,
                out_fd
            ),
        ));
    }
    let mut commands = KVec::with_capacity(count, GFP_KERNEL_ACCOUNT)?;
    call.read_each(args.cmds, count, |i, RawCmd(cmd)| {
        let Some(command) = check_command(&cmd) else {
            return Err(call.refuse(
                EINVAL,
                fmt!(
                    "command {}: op {} pad {:#x} src {:#x} dst {:#x} len {:#x}: invalid",
                    i,
                    cmd.op,
                    cmd.pad,
                    cmd.src,
                    cmd.dst,
                    cmd.len
                ),
            ));
        };
        commands.push(command, GFP_KERNEL_ACCOUNT)?;
        Ok(())
    })?;
    let sync_args = SyncArgs {
        in_syncobj: args.in_syncobj,
        out_syncobj: args.out_syncobj,
        in_syncs: args.in_syncs,
        num_in_syncs: args.num_in_syncs,
        out_syncs: args.out_syncs,
        num_out_syncs: args.num_out_syncs,
        in_fence_fd: (flags & uapi::DRM_CONFLUX_SUBMIT_IN_FENCE_FD != 0)
            .then_some(args.in_fence_fd),
    };
    let syncs = Syncs::read(&call, &sync_args, file)?;
    // Made now, with its descriptor: nothing can fail once the job is queued.
    let out_sync_file = OutFenceFd::reserve(out_fd)?;
    let inner = file.inner();
    let slot = inner.reserve_job()?;
    let fence = inner.with_vm(dev, |vm| {
        let buffers = vm.buffers(commands.iter().flat_map(accesses), 2 * commands.len())?;
        let mut kept = KVec::with_capacity(buffers.len(), GFP_KERNEL_ACCOUNT)?;
        for used in buffers.iter() {
            kept.push(used.bo.clone(), GFP_KERNEL_ACCOUNT)?;
        }
        // Room in VRAM for the buffers that come back for the job, made before the locks.
        let need = moves::room_to_bring_back(data, &kept);
        if need > 0 {
            // Without room, or without system memory to evict to, the buffers stay where they
            // are for this job.
            match moves::make_room(data, need, &kept) {
                Err(e) if e == ERESTARTSYS => return Err(e),
                _ => {}
            }
        }
        // The importers of an exported buffer that comes back lose their mappings: its
        // dma-bufs stay while the device's list of them is locked, before the reservations.
        let exports = kept
            .iter()
            .any(|bo| bo.is_exported() && moves::returns(data, bo))
            .then(|| data.exports.lock());
        let mut locked = ResvSet::lock(
            buffers.iter().map(|u| u.bo.dma_resv()),
            true,
            GFP_KERNEL_ACCOUNT,
        )?;
        // The job's fence, and a move back to VRAM.
        locked.reserve_fences(2)?;
        // Movable buffers the job uses become the most recently used, and those evicted come
        // back to VRAM when it has room, behind a move the job depends on.
        for used in buffers.iter() {
            Bo::touch(&used.bo);
            moves::bring_back(data, &used.bo, exports.as_ref(), &locked)?;
        }
        // Buffers whose memory changed since they were bound are mapped again first.
        vm.revalidate(data, &buffers, &locked)?;
        let binds = vm.pending_states()?;
        let mut job = data
            .engine
            .prepare(vm.root(), commands, kept, Some(vm.kept_tables()))?;
        if let Some(job) = job.job_mut() {
            job.binds = binds;
        }
        for fence in syncs.wait.iter() {
            job.add_dependency(fence, GFP_KERNEL_ACCOUNT)?;
        }
        // Moves of the buffers, even with explicit synchronisation: a job never sees a buffer's
        // new memory before the engine copied its bytes there, and fails if the copy did.
        for used in buffers.iter() {
            used.bo
                .dma_resv()
                .for_each_fence(&locked, Usage::Kernel, |f| {
                    job.add_dependency(f, GFP_KERNEL_ACCOUNT)
                })?;
        }
        // Implicit synchronisation: a write waits for every job that uses the buffer, a read
        // for the ones that write it, moves and clears included.
        if flags & uapi::DRM_CONFLUX_SUBMIT_EXPLICIT_SYNC == 0 {
            for used in buffers.iter() {
                let resv = used.bo.dma_resv();
                resv.for_each_fence(&locked, crate::vm::usage(!used.write), |f| {
                    job.add_implicit_dependency(f, GFP_KERNEL_ACCOUNT)
                })?;
            }
        }
        // Written to the ring once the locks are released, below.
        let fence = data.engine.enqueue(job, true)?;
        let written = |resv: &DmaResv| {
            buffers
                .iter()
                .any(|u| u.write && core::ptr::eq(u.bo.dma_resv(), resv))
        };
        // Cannot fail: a slot was reserved on every object.
        locked.add_fence_with(&fence, |resv| crate::vm::usage(written(resv)))?;
        vm.set_last(fence.clone());
        Ok(fence)
    })?;
    data.engine.start();
    syncs.signal(&fence);
    if let Some(fd) = out_sync_file.install(&fence) {
        args.out_fence_fd = fd;
    }
    args.job = inner.add_job(slot, fence);
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_WAIT`.
pub(crate) fn wait(
    _dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_wait,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "WAIT");
    let inner = file.inner();
    let (job, flags, pad) = (args.job, args.flags, args.pad);
    let state = inner.job(job).filter(|_| flags == 0 && pad == 0);
    let fence =
        match state {
            None => {
                let last = inner.last_job();
                return Err(call.refuse(
                    EINVAL,
                    fmt!("job {job} (last {last}), flags {flags:#x}, pad {pad:#x} is not valid"),
                ));
            }
            Some(JobState::Done) => return Ok(0),
            Some(JobState::Forgotten) => return Err(call.refuse(
                ESTALE,
                fmt!("job {job} ended before the file's last 256 failed jobs: its result is gone"),
            )),
            Some(JobState::Fence(fence)) => fence,
        };
    // A negative timeout waits without limit; the engine's watchdog ends a job that does not
    // complete.
    let timeout = u64::try_from(args.timeout_ns).map_or(Jiffies::MAX, |ns| {
        msecs_to_jiffies(u32::try_from(ns.div_ceil(1_000_000)).unwrap_or(u32::MAX))
    });
    if !fence.wait_timeout(true, timeout)? {
        return Err(ETIME);
    }
    fence.status()?;
    Ok(0)
}
