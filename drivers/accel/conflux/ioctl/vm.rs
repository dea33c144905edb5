// SPDX-License-Identifier: GPL-2.0

//! The VM ioctls: VM_BIND, VM_JOIN and VM_PATH.

use kernel::{
    dma_fence::Fence,
    drm::{
        gem::BaseObject,
        Registered, //
    },
    fs::LocalFile,
    prelude::*,
    sizes::SZ_4K,
    sync::Arc,
    transmute::FromBytes,
    uapi, //
};

use crate::{
    driver::{
        ConfluxDevice,
        DrmFile, //
    },
    hw::DeviceData,
    vm::{
        bind::{
            BindOp,
            RESERVED_UNMAPS, //
        },
        queue::BindQueue,
        shared::BindMode,
    },
};

use super::{
    job::{
        in_sync,
        out_sync,
        OutFenceFd,
        RawSync,
        SyncArgs,
        Syncs, //
    },
    user_range,
    Call, //
};

/// A `drm_conflux_vm_bind_op` as read from userspace.
#[repr(transparent)]
struct RawBindOp(uapi::drm_conflux_vm_bind_op);

// SAFETY: The structure has only integer fields and no padding, so any bytes are a valid value.
unsafe impl FromBytes for RawBindOp {}

/// Refuses operation `i`, `op`, unless it is well formed (`uapi.rst`); [`EINVAL`] otherwise.
fn check_op(call: &Call<'_, '_>, i: usize, op: &uapi::drm_conflux_vm_bind_op) -> Result {
    let page = SZ_4K as u64;
    let aligned = (op.va | op.range | op.bo_offset) % page == 0;
    let in_range = user_range(op.va, op.range).is_some();
    let known = match op.op {
        uapi::DRM_CONFLUX_BIND_MAP if op.flags == uapi::DRM_CONFLUX_BIND_NULL => {
            op.handle == 0 && op.bo_offset == 0
        }
        uapi::DRM_CONFLUX_BIND_MAP => op.flags & !uapi::DRM_CONFLUX_BIND_READONLY == 0,
        uapi::DRM_CONFLUX_BIND_UNMAP => (op.flags | op.handle) == 0 && op.bo_offset == 0,
        _ => false,
    };
    if aligned && in_range && known && op.pad == 0 {
        return Ok(());
    }
    Err(call.refuse(
        EINVAL,
        fmt!(
            "operation {}: op {} flags {:#x} handle {} pad {:#x} bo_offset {:#x} va {:#x} \
             range {:#x} is not valid",
            i,
            op.op,
            op.flags,
            op.handle,
            op.pad,
            op.bo_offset,
            op.va,
            op.range
        ),
    ))
}

/// `DRM_IOCTL_CONFLUX_VM_BIND`.
pub(crate) fn bind(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_vm_bind,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "VM_BIND");
    let flags = args.flags;
    let known = uapi::DRM_CONFLUX_VM_BIND_IN_FENCE_FD | uapi::DRM_CONFLUX_VM_BIND_OUT_FENCE_FD;
    let out_fd = flags & uapi::DRM_CONFLUX_VM_BIND_OUT_FENCE_FD != 0;
    call.zero(&[
        ("unknown flags", (flags & !known).into()),
        ("pad", args.pad.into()),
        ("pad2", args.pad2.into()),
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
    if args.queue == 0 {
        call.zero(&[
            ("flags without a queue", flags.into()),
            ("num_in_syncs without a queue", args.num_in_syncs.into()),
            ("num_out_syncs without a queue", args.num_out_syncs.into()),
        ])?;
    }
    let count = call.count("num_ops", args.num_ops, uapi::DRM_CONFLUX_MAX_BIND_OPS)?;
    call.vm_id(args.vm_id)?;
    let inner = file.inner();
    // A long-running VM hands out no fence and is not pipelined behind dma-fences
    // (drm-vm-bind-async.rst): a call on a queue binds in the call as a synchronous one does,
    // once the queue's earlier binds are done.
    let long_running = inner.is_long_running();
    let in_fd = flags & uapi::DRM_CONFLUX_VM_BIND_IN_FENCE_FD != 0;
    let fenced = args.num_out_syncs != 0 || out_fd || args.num_in_syncs != 0 || in_fd;
    if long_running && fenced {
        return Err(call.refuse(
            EOPNOTSUPP,
            fmt!(
                "num_in_syncs {}, in-fence fd {}, num_out_syncs {}, out-fence fd {}: the VM is \
                 long-running, its binds take and give no dma-fence",
                args.num_in_syncs,
                in_fd,
                args.num_out_syncs,
                out_fd
            ),
        ));
    }
    // A call of a few UNMAPs is read and applied without allocating memory: synchronous, or on
    // a queue when the kernel has no memory for its job.
    if count <= RESERVED_UNMAPS {
        let mut unmaps: [BindOp; RESERVED_UNMAPS] =
            core::array::from_fn(|_| BindOp::Unmap { va: 0, range: 0 });
        let mut only_unmaps = true;
        call.read_each(args.ops, count, |i, RawBindOp(op)| {
            check_op(&call, i, &op)?;
            only_unmaps &= op.op == uapi::DRM_CONFLUX_BIND_UNMAP;
            if let Some(slot) = unmaps.get_mut(i) {
                *slot = BindOp::Unmap {
                    va: op.va,
                    range: op.range,
                };
            }
            Ok(())
        })?;
        let unmaps = unmaps.get(..count).ok_or(EINVAL)?;
        if only_unmaps && (args.queue == 0 || long_running) {
            if args.queue != 0 {
                wait_in_call(&call, args, file, &*find_queue(&call, file, args.queue)?)?;
            }
            inner.on_current_vm(|vm| vm.unmap(inner.id(), unmaps))?;
            return Ok(0);
        }
        if only_unmaps {
            let queue = find_queue(&call, file, args.queue)?;
            queue.refill_reserve();
            let queued = (|| {
                let mut ops = KVec::with_capacity(count, GFP_KERNEL_ACCOUNT)?;
                for op in unmaps {
                    if let BindOp::Unmap { va, range } = *op {
                        ops.push(BindOp::Unmap { va, range }, GFP_KERNEL_ACCOUNT)?;
                    }
                }
                bind_queued(dev, data, args, file, &call, &queue, ops)
            })();
            return match queued {
                Err(e) if e == ENOMEM => unmap_in_call(&call, args, file, &queue, unmaps),
                result => result,
            };
        }
    }
    let raw = call.read_array::<RawBindOp>(args.ops, count)?;
    let mut ops = KVec::with_capacity(raw.len(), GFP_KERNEL_ACCOUNT)?;
    for (i, RawBindOp(op)) in raw.iter().enumerate() {
        check_op(&call, i, op)?;
        let checked = match op.op {
            uapi::DRM_CONFLUX_BIND_UNMAP => BindOp::Unmap {
                va: op.va,
                range: op.range,
            },
            _ if op.flags == uapi::DRM_CONFLUX_BIND_NULL => BindOp::MapNull {
                va: op.va,
                range: op.range,
            },
            _ => {
                let bo = call.bo(file, fmt!("operation {i}: "), op.handle)?;
                if bo.placement() == 0 {
                    return Err(call.refuse(
                        EINVAL,
                        fmt!(
                            "operation {}: buffer {} has no memory to map (a doorbell page)",
                            i,
                            op.handle
                        ),
                    ));
                }
                let fits = op
                    .bo_offset
                    .checked_add(op.range)
                    .is_some_and(|end| end <= bo.size() as u64);
                if !fits {
                    return Err(call.refuse(
                        EINVAL,
                        fmt!(
                            "operation {}: {:#x} bytes at offset {:#x} exceed buffer {} of \
                             {:#x} bytes",
                            i,
                            op.range,
                            op.bo_offset,
                            op.handle,
                            bo.size()
                        ),
                    ));
                }
                BindOp::Map {
                    va: op.va,
                    range: op.range,
                    bo,
                    offset: op.bo_offset,
                    writable: op.flags & uapi::DRM_CONFLUX_BIND_READONLY == 0,
                }
            }
        };
        ops.push(checked, GFP_KERNEL_ACCOUNT)?;
    }
    if args.queue == 0 || long_running {
        if args.queue != 0 {
            wait_in_call(&call, args, file, &*find_queue(&call, file, args.queue)?)?;
        }
        inner.on_vm(dev.as_ioctl(), |vm| {
            vm.bind(inner.id(), dev.as_ioctl(), data, ops, BindMode::Sync)
        })?;
        return Ok(0);
    }
    let queue = find_queue(&call, file, args.queue)?;
    queue.refill_reserve();
    bind_queued(dev, data, args, file, &call, &queue, ops)
}

/// Bind queue `number` of `file`; [`ENOENT`] for an unknown one.
fn find_queue(call: &Call<'_, '_>, file: &DrmFile, number: u32) -> Result<Arc<BindQueue>> {
    file.inner()
        .queue(number)
        .ok_or_else(|| call.refuse(ENOENT, fmt!("no bind queue {number}")))
}

/// The fences of a VM_BIND call on a queue, as [`SyncArgs`].
fn sync_args(args: &uapi::drm_conflux_vm_bind) -> SyncArgs {
    SyncArgs {
        in_syncobj: 0,
        out_syncobj: 0,
        in_syncs: args.in_syncs,
        num_in_syncs: args.num_in_syncs,
        out_syncs: args.out_syncs,
        num_out_syncs: args.num_out_syncs,
        in_fence_fd: (args.flags & uapi::DRM_CONFLUX_VM_BIND_IN_FENCE_FD != 0)
            .then_some(args.in_fence_fd),
    }
}

/// Applies `ops`, checked, as a bind of `queue`: returns once its job is queued.
fn bind_queued(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_vm_bind,
    file: &DrmFile,
    call: &Call<'_, '_>,
    queue: &BindQueue,
    ops: KVec<BindOp>,
) -> Result<u32> {
    let inner = file.inner();
    let syncs = Syncs::read(call, &sync_args(args), file)?;
    let out_fd = args.flags & uapi::DRM_CONFLUX_VM_BIND_OUT_FENCE_FD != 0;
    let out_sync_file = OutFenceFd::reserve(out_fd)?;
    let mode = BindMode::Queued {
        queue,
        wait: &syncs.wait,
    };
    let fence = inner
        .on_vm(dev.as_ioctl(), |vm| {
            // The file took a long-running VM by VM_JOIN since the call looked.
            if vm.is_long_running() {
                return Err(EOPNOTSUPP);
            }
            vm.bind(inner.id(), dev.as_ioctl(), data, ops, mode)
        })?
        .ok_or(EINVAL)?;
    syncs.signal(&fence);
    if let Some(fd) = out_sync_file.install(&fence) {
        args.out_fence_fd = fd;
    }
    Ok(0)
}

/// Waits on the CPU, interruptibly ([`ERESTARTSYS`]), for the in-fences of `args`, a call of
/// `file` on `queue` (a long-running VM's have none), and for the queue's earlier binds.
fn wait_in_call(
    call: &Call<'_, '_>,
    args: &uapi::drm_conflux_vm_bind,
    file: &DrmFile,
    queue: &BindQueue,
) -> Result {
    let sync_args = sync_args(args);
    let (n_in, _) = sync_args.counts(call)?;
    if let Some(fence) = sync_args.in_fence_fd(call)? {
        fence.wait(true)?;
    }
    call.read_each(args.in_syncs, n_in, |i, RawSync(s)| {
        in_sync(call, file, i, &s)?.wait(true)
    })?;
    if let Some(last) = queue.last() {
        last.wait(true)?;
    }
    Ok(())
}

/// Applies `unmaps`, the UNMAPs of a call on `queue` that the kernel has no memory to queue, in
/// the call: after its in-fences and the queue's earlier binds, on the CPU (interruptible,
/// [`ERESTARTSYS`]), then as a synchronous call does. Its out-syncs receive a signalled fence,
/// with what the queue's reserve holds for them. Allocates nothing but an out-fence's sync_file.
fn unmap_in_call(
    call: &Call<'_, '_>,
    args: &mut uapi::drm_conflux_vm_bind,
    file: &DrmFile,
    queue: &BindQueue,
    unmaps: &[BindOp],
) -> Result<u32> {
    let inner = file.inner();
    let sync_args = sync_args(args);
    let (_, n_out) = sync_args.counts(call)?;
    // Held to the end: one such call at a time on the queue.
    let mut reserve = queue.reserve();
    let reserve = &mut *reserve;
    reserve.outs.clear();
    // The out-syncobjs first, so that a wrong one fails the call before it waits.
    let looked_up = call.read_each(args.out_syncs, n_out, |i, RawSync(s)| {
        let syncobj = out_sync(call, file, i, &s)?;
        // Not reached: room for the most out-syncs a call has.
        reserve
            .outs
            .push_within_capacity((syncobj, s.point))
            .map_err(|_| ENOMEM)
    });
    let points = reserve.outs.iter().filter(|(_, p)| *p != 0).count();
    let result = looked_up
        .and_then(|()| match points > reserve.nodes.len() {
            // Not reached: the reserve holds a node for the most out-syncs a call has, and is
            // filled again before any call that can allocate.
            true => Err(ENOMEM),
            false => OutFenceFd::reserve(args.flags & uapi::DRM_CONFLUX_VM_BIND_OUT_FENCE_FD != 0),
        })
        .and_then(|out_sync_file| {
            wait_in_call(call, args, file, queue)?;
            inner.on_current_vm(|vm| vm.unmap(inner.id(), unmaps))?;
            Ok(out_sync_file)
        });
    let out_sync_file = match result {
        Ok(f) => f,
        Err(e) => {
            reserve.outs.clear();
            return Err(e);
        }
    };
    let done = Fence::stub();
    while let Some((syncobj, point)) = reserve.outs.pop() {
        if point == 0 {
            syncobj.replace_fence(Some(&done));
        } else if let Some(node) = reserve.nodes.pop() {
            // Always: a node for each point was counted above.
            syncobj.add_point(node, &done, point);
        }
    }
    if let Some(fd) = out_sync_file.install(&done) {
        args.out_fence_fd = fd;
    }
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_BIND_QUEUE_CREATE`.
pub(crate) fn queue_create(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_bind_queue_create,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "BIND_QUEUE_CREATE");
    call.zero(&[
        ("flags", args.flags.into()),
        ("queue", args.queue.into()),
        ("pad", args.pad.into()),
    ])?;
    call.vm_id(args.vm_id)?;
    args.queue = file
        .inner()
        .create_queue(dev.as_ioctl())
        .map_err(|e| match e {
            e if e == EMFILE => call.refuse(
                e,
                fmt!(
                    "the file has {} bind queues already",
                    uapi::DRM_CONFLUX_MAX_BIND_QUEUES
                ),
            ),
            e => e,
        })?;
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_BIND_QUEUE_DESTROY`.
pub(crate) fn queue_destroy(
    _dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_bind_queue_destroy,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "BIND_QUEUE_DESTROY");
    call.zero(&[("pad", args.pad.into())])?;
    let number = args.queue;
    file.inner()
        .destroy_queue(number)
        .map_err(|e| call.refuse(e, fmt!("no bind queue {number}")))?;
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_VM_JOIN`.
pub(crate) fn join(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_vm_join,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "VM_JOIN");
    call.zero(&[("flags", args.flags.into())])?;
    let fd = args.fd;
    let not_open = || call.refuse(EBADF, fmt!("fd {fd} is not open"));
    let other =
        LocalFile::fget(u32::try_from(fd).map_err(|_| not_open())?).map_err(|_| not_open())?;
    let Some(other) = DrmFile::from_file(&other, dev) else {
        return Err(call.refuse(EINVAL, fmt!("fd {fd} is not a Conflux accel file")));
    };
    let me = file.inner();
    let them = other.inner();
    if me.id() == them.id() {
        return Err(call.refuse(EINVAL, fmt!("fd {fd} is the caller's own file")));
    }
    let target = them.shared_vm(other.device())?;
    let mut slot = me.vm_slot();
    let same = slot
        .as_ref()
        .is_some_and(|current| Arc::ptr_eq(current, &target));
    if !same && me.has_user_queues() {
        return Err(call.refuse(
            EBUSY,
            fmt!("the caller has user queues, which run on its VM"),
        ));
    }
    if let Some(mine) = &*slot {
        if mine.is_long_running() != target.is_long_running() {
            let mode = |lr| if lr { "long-running" } else { "default" };
            return Err(call.refuse(
                EINVAL,
                fmt!(
                    "the caller's VM is in {} mode, fd {}'s in {} mode",
                    mode(mine.is_long_running()),
                    fd,
                    mode(target.is_long_running())
                ),
            ));
        }
    }
    let joined = match &*slot {
        Some(current) if Arc::ptr_eq(current, &target) => target.membership(me.id())?,
        Some(current) if !current.is_unused_but_by(me.id()) => {
            return Err(call.refuse(
                EBUSY,
                fmt!("the caller's VM has mappings or is shared already"),
            ));
        }
        _ => {
            let joined = target
                .join(me.id(), dev.as_ioctl())
                .map_err(|e| call.refuse(e, fmt!("cannot join fd {fd}'s VM: {e:?}")))?;
            let old = slot.replace(target);
            drop(slot);
            if let Some(old) = old {
                old.leave(me.id());
            }
            joined
        }
    };
    args.members = u32::try_from(joined.members)?;
    args.member = u32::try_from(joined.index)?;
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_VM_CREATE`.
pub(crate) fn create(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_vm_create,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "VM_CREATE");
    let known = uapi::DRM_CONFLUX_VM_CREATE_LONG_RUNNING;
    call.zero(&[
        ("unknown flags", (args.flags & !known).into()),
        ("vm_id", args.vm_id.into()),
    ])?;
    let long_running = args.flags & uapi::DRM_CONFLUX_VM_CREATE_LONG_RUNNING != 0;
    file.inner()
        .create_vm(dev.as_ioctl(), long_running)
        .map_err(|e| match e {
            e if e == EEXIST => call.refuse(
                e,
                fmt!("the file has its VM already (it used it, joined one or created it)"),
            ),
            e => e,
        })?;
    args.vm_id = 0;
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_VM_PATH`.
pub(crate) fn path(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_vm_path,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "VM_PATH");
    call.zero(&[
        ("flags", args.flags.into()),
        ("path", args.path.into()),
        ("members", args.members.into()),
    ])?;
    let shared = file.inner().shared_vm(dev.as_ioctl())?;
    let member = args.member;
    let found = shared
        .path(usize::try_from(member)?, args.va)
        .map_err(|e| call.refuse(e, fmt!("no member {member}")))?;
    args.path = found.path;
    args.members = u32::try_from(found.members)?;
    Ok(0)
}
