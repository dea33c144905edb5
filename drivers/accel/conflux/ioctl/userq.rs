// SPDX-License-Identifier: GPL-2.0

//! The ioctls of user queues and memory fences: `USERQ_CREATE`, `USERQ_DESTROY` and
//! `WAIT_USER_FENCE`.

use kernel::{
    drm::{
        gem::BaseObject,
        Registered, //
    },
    prelude::*,
    time::{
        msecs_to_jiffies,
        Delta,
        Instant,
        Monotonic, //
    },
    uaccess::{
        UserPtr,
        UserSlice, //
    },
    uapi, //
};

use crate::{
    driver::{
        ConfluxDevice,
        DrmFile, //
    },
    engine::Woken,
    hw::DeviceData,
    userq::UserQueue,
};

use super::{
    user_range,
    Call, //
};

/// `DRM_IOCTL_CONFLUX_USERQ_CREATE`.
pub(crate) fn create(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_userq_create,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "USERQ_CREATE");
    call.zero(&[
        ("flags", args.flags.into()),
        ("queue_id", args.queue_id.into()),
        ("doorbell_handle", args.doorbell_handle.into()),
    ])?;
    call.vm_id(args.vm_id)?;
    if data.engine.queue_count() == 0 {
        return Err(call.refuse(
            EOPNOTSUPP,
            fmt!(
                "the device has no user queues (capabilities {:#x})",
                data.info.caps
            ),
        ));
    }
    let (va, size) = (args.ring_va, args.ring_size);
    let (min, max) = (
        u64::from(uapi::DRM_CONFLUX_USERQ_MIN_RING),
        u64::from(uapi::DRM_CONFLUX_USERQ_MAX_RING),
    );
    let sized = size.is_power_of_two() && (min..=max).contains(&size);
    if !sized || va % 64 != 0 || user_range(va, size).is_none() {
        return Err(call.refuse(
            EINVAL,
            fmt!(
                "ring_va {va:#x}, ring_size {size:#x}: not a power of two from {min:#x} to \
                 {max:#x} at a multiple of 64 in the bindable range"
            ),
        ));
    }
    let inner = file.inner();
    let (number, queue) = inner
        .create_user_queue(dev.as_ioctl(), |vm| {
            UserQueue::new(dev.as_ioctl(), data, vm, va, size)
        })
        .map_err(|e| {
            let why = match e {
                EINVAL => "the file's VM is not long-running",
                EMFILE => "the file has the most user queues it may",
                EBUSY => "every user queue of the device is taken",
                _ => "the queue could not be created",
            };
            call.refuse(e, fmt!("{why} ({e:?})"))
        })?;
    let handle = match queue.doorbell().create_handle(file) {
        Ok(handle) => handle,
        Err(e) => {
            // Nothing is left of the call.
            let _ = inner.destroy_user_queue(number);
            return Err(e);
        }
    };
    args.queue_id = number;
    args.doorbell_handle = handle;
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_USERQ_DESTROY`.
pub(crate) fn destroy(
    _dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_userq_destroy,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "USERQ_DESTROY");
    call.zero(&[("flags", args.flags.into())])?;
    let id = args.queue_id;
    file.inner()
        .destroy_user_queue(id)
        .map_err(|e| call.refuse(e, fmt!("queue_id {id}: no such user queue")))?;
    Ok(0)
}

/// Whether `m` compares true with `v` by `DRM_CONFLUX_WAIT_*` comparison `op`, unsigned; [`None`]
/// for an unknown comparison. The codes are the device's for `WAIT_VALUE`.
fn holds(op: u32, m: u64, v: u64) -> Option<bool> {
    Some(match op {
        uapi::DRM_CONFLUX_WAIT_GTE => m >= v,
        uapi::DRM_CONFLUX_WAIT_EQ => m == v,
        uapi::DRM_CONFLUX_WAIT_NEQ => m != v,
        uapi::DRM_CONFLUX_WAIT_GT => m > v,
        uapi::DRM_CONFLUX_WAIT_LT => m < v,
        uapi::DRM_CONFLUX_WAIT_LTE => m <= v,
        _ => return None,
    })
}

/// The jiffies of the time left until `deadline`, rounded up; [`None`] once it has passed.
fn left(deadline: Instant<Monotonic>) -> Option<(Delta, kernel::time::Jiffies)> {
    let left = deadline - Instant::<Monotonic>::now();
    if left.as_nanos() <= 0 {
        return None;
    }
    let ms = u64::try_from(left.as_nanos()).ok()?.div_ceil(1_000_000);
    Some((
        left,
        msecs_to_jiffies(u32::try_from(ms).unwrap_or(u32::MAX)),
    ))
}

/// `DRM_IOCTL_CONFLUX_WAIT_USER_FENCE`.
pub(crate) fn wait_user_fence(
    _dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_wait_user_fence,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "WAIT_USER_FENCE");
    call.zero(&[("flags", args.flags.into()), ("pad", args.pad.into())])?;
    let (addr, value, mask, op) = (args.addr, args.value, args.mask, args.op);
    if holds(op, 0, 0).is_none() || addr % 8 != 0 {
        return Err(call.refuse(
            EINVAL,
            fmt!("op {op}, addr {addr:#x}: not a DRM_CONFLUX_WAIT_* comparison at 8 bytes"),
        ));
    }
    let id = args.queue_id;
    let queue = file
        .inner()
        .user_queue(id)
        .ok_or_else(|| call.refuse(ENOENT, fmt!("queue_id {id}: no such user queue")))?;
    let deadline = u64::try_from(args.timeout_ns).ok().map(|ns| {
        Instant::<Monotonic>::now() + Delta::from_nanos(i64::try_from(ns).unwrap_or(i64::MAX))
    });
    let engine = &data.engine;
    let hw = queue.hw();
    let user = UserPtr::from_addr(usize::try_from(addr)?);
    // The events counted before the fence is read: one counted after wakes the wait.
    let mut seen = engine.queue_status(hw).seen;
    loop {
        if queue.is_stopped() {
            return Err(call.refuse(ENOENT, fmt!("queue_id {id}: destroyed during the wait")));
        }
        if engine.queues_closing() {
            return Err(ENODEV);
        }
        let m = UserSlice::new(user, 8).reader().read::<u64>()?;
        if holds(op, m & mask, value) == Some(true) {
            return Ok(0);
        }
        let status = engine.queue_status(hw);
        if status.killed {
            return Err(call.refuse(
                ECANCELED,
                fmt!("queue_id {id} was killed: it did not stop when preempted"),
            ));
        }
        if let Some(error) = status.error {
            return Err(call.refuse(
                EIO,
                fmt!(
                    "queue_id {id} stopped on {} at VA {:#x}, opcode {}",
                    error.cause.name(),
                    error.va,
                    error.opcode
                ),
            ));
        }
        let timeout = match deadline {
            None => None,
            Some(deadline) => match left(deadline) {
                Some((_, jiffies)) => Some(jiffies),
                None => return Err(ETIME),
            },
        };
        match engine.wait_queue_event(hw, seen, timeout) {
            Woken::Event(count) => seen = count,
            // The fence is read once more, then the deadline has passed.
            Woken::Timeout => {}
            Woken::Signal => {
                if let Some(deadline) = deadline {
                    // A restarted call waits for what is left.
                    args.timeout_ns = left(deadline).map_or(0, |(left, _)| left.as_nanos());
                }
                return Err(ERESTARTSYS);
            }
        }
    }
}
