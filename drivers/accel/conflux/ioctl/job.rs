// SPDX-License-Identifier: GPL-2.0

//! The job ioctls: SUBMIT and WAIT.

use kernel::{
    dma_resv::{
        DmaResv,
        ResvSet, //
    },
    drm::{
        gem::BaseObject,
        syncobj::SyncObj,
        Registered, //
    },
    prelude::*,
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

/// A command of SUBMIT, checked, with the ranges it reads and writes.
fn check_command(cmd: &uapi::drm_conflux_cmd) -> Option<(Command, Option<Access>, Access)> {
    let len_ok = cmd.len <= uapi::DRM_CONFLUX_MAX_CMD_LEN;
    let dst_end = user_range(cmd.dst, cmd.len).filter(|_| len_ok && cmd.pad == 0)?;
    let dst = Access {
        range: cmd.dst..dst_end,
        write: true,
    };
    match cmd.op {
        uapi::DRM_CONFLUX_CMD_COPY => {
            let src_end = user_range(cmd.src, cmd.len)
                .filter(|&src_end| src_end <= cmd.dst || dst_end <= cmd.src)?;
            let copy = Command::Copy {
                src: cmd.src,
                dst: cmd.dst,
                len: cmd.len,
            };
            let src = Access {
                range: cmd.src..src_end,
                write: false,
            };
            Some((copy, Some(src), dst))
        }
        uapi::DRM_CONFLUX_CMD_FILL => {
            let fill = Command::Fill {
                dst: cmd.dst,
                len: cmd.len,
                pattern: cmd.src,
            };
            Some((fill, None, dst))
        }
        _ => None,
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
    call.zero(&[
        ("flags", args.flags.into()),
        ("pad", args.pad.into()),
        ("job", args.job),
    ])?;
    let count = call.count("num_cmds", args.num_cmds, uapi::DRM_CONFLUX_MAX_CMDS)?;
    call.vm_id(args.vm_id)?;
    let raw = call.read_array::<RawCmd>(args.cmds, count)?;
    let mut commands = KVec::with_capacity(raw.len(), GFP_KERNEL)?;
    // The ranges the commands read and write.
    let mut accesses = KVec::with_capacity(2 * raw.len(), GFP_KERNEL)?;
    for (i, RawCmd(cmd)) in raw.iter().enumerate() {
        let Some((command, src, dst)) = check_command(cmd) else {
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
        commands.push(command, GFP_KERNEL)?;
        if let Some(src) = src {
            accesses.push(src, GFP_KERNEL)?;
        }
        accesses.push(dst, GFP_KERNEL)?;
    }
    let out = match args.out_syncobj {
        0 => None,
        handle => Some(
            SyncObj::lookup(file, handle)
                .map_err(|e| call.refuse(e, fmt!("no out-syncobj {handle}")))?,
        ),
    };
    if args.in_syncobj != 0 {
        let handle = args.in_syncobj;
        let syncobj = SyncObj::lookup(file, handle)
            .map_err(|e| call.refuse(e, fmt!("no in-syncobj {handle}")))?;
        let fence = syncobj
            .fence()
            .ok_or_else(|| call.refuse(EINVAL, fmt!("in-syncobj {handle} has no fence")))?;
        fence.wait(true)?;
        fence
            .status()
            .map_err(|e| call.refuse(e, fmt!("the in-fence failed: {e:?}")))?;
    }
    let inner = file.inner();
    let fence = inner.with_vm(dev, |vm| {
        let buffers = vm.buffers(&accesses)?;
        let mut resvs = KVec::with_capacity(buffers.len(), GFP_KERNEL)?;
        for used in buffers.iter() {
            resvs.push(used.bo.dma_resv(), GFP_KERNEL)?;
        }
        let mut locked = ResvSet::lock(&resvs, true, GFP_KERNEL)?;
        locked.reserve_fences(1)?;
        // Buffers whose memory changed since they were bound are mapped again first.
        vm.revalidate(data, &buffers, &locked)?;
        let fence = data.engine.submit(vm.root(), commands)?;
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
    if let Some(out) = out {
        out.replace_fence(Some(&fence));
    }
    args.job = inner.add_job(fence);
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
    let fence = match state {
        None => {
            let last = inner.last_job();
            return Err(call.refuse(
                EINVAL,
                fmt!("job {job} (last {last}), flags {flags:#x}, pad {pad:#x} is not valid"),
            ));
        }
        Some(JobState::Done) => return Ok(0),
        Some(JobState::Fence(fence)) => fence,
    };
    let timeout_ms = u64::try_from(args.timeout_ns)
        .ok()
        .map(|ns| ns.div_ceil(1_000_000));
    if !data.engine.wait_for(&fence, true, timeout_ms)? {
        return Err(ETIME);
    }
    fence.status()?;
    Ok(0)
}
