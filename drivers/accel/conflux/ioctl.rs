// SPDX-License-Identifier: GPL-2.0

//! The accel device's ioctls (`include/uapi/drm/conflux_accel.h`) and the checks of their
//! arguments.
//!
//! Every ioctl checks its arguments before it changes anything, through one [`Call`]: a bad
//! argument gets its specific error code and a debug line that names the device, the call and
//! the value. The handlers live by subject: buffers ([`bo`]), VMs ([`vm`]) and jobs ([`job`]).

pub(crate) mod bo;
pub(crate) mod job;
pub(crate) mod userq;
pub(crate) mod vm;

use core::sync::atomic::Ordering;

use kernel::{
    drm::{
        gem::BaseObject,
        Registered, //
    },
    fmt,
    prelude::*,
    sync::aref::ARef,
    transmute::FromBytes,
    uaccess::{
        UserPtr,
        UserSlice, //
    },
    uapi, //
};

use crate::{
    driver::{
        ConfluxDevice,
        DrmFile,
        Object, //
    },
    engine::MAX_JOB_COMMANDS,
    hw::{
        DeviceData,
        KERNEL_VA_BASE,
        USER_VA_START, //
    },
};

// The uAPI structures have the sizes the header documents, on both sides: userspace checks
// the same numbers.
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_get_info>() == 152);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bo_create>() == 16);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_vm_bind_op>() == 40);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_vm_bind>() == 64);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_cmd>() == 32);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_submit>() == 72);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_wait>() == 24);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bo_rw>() == 32);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bo_info>() == 40);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_vm_join>() == 16);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_vm_path>() == 24);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bind_queue_create>() == 16);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bind_queue_destroy>() == 8);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bo_p2pmem>() == 24);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_vm_create>() == 8);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_userq_create>() == 32);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_userq_destroy>() == 8);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_wait_user_fence>() == 48);
const _: () = assert!(uapi::DRM_CONFLUX_MAX_CMDS as usize == MAX_JOB_COMMANDS);

/// Argument fields and their values, printed as `name 0x..., name 0x...`.
struct Fields<'a>(&'a [(&'a str, u64)]);

impl fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name} {value:#x}")?;
        }
        Ok(())
    }
}

/// One ioctl call on a bound device: the checks of its arguments.
pub(crate) struct Call<'a, 'bound> {
    data: &'a DeviceData<'bound>,
    name: &'static str,
}

impl<'a, 'bound> Call<'a, 'bound> {
    /// The call `name` (as the uAPI names it, `VM_BIND` say) on `data`'s device.
    pub(crate) fn new(data: &'a DeviceData<'bound>, name: &'static str) -> Self {
        Self { data, name }
    }

    /// Refuses the call with `err`, logging `what` and why.
    pub(crate) fn refuse(&self, err: Error, what: fmt::Arguments<'_>) -> Error {
        dev_dbg!(self.data.pdev, "{}: {}\n", self.name, what);
        err
    }

    /// Checks that `fields`, flags and padding this version defines no value for, are zero;
    /// [`EINVAL`] otherwise.
    pub(crate) fn zero(&self, fields: &[(&str, u64)]) -> Result {
        if fields.iter().all(|&(_, v)| v == 0) {
            return Ok(());
        }
        Err(self.refuse(EINVAL, fmt!("{}: must be 0", Fields(fields))))
    }

    /// Checks that the count `what` is `n`, between 1 and `max`; [`EINVAL`] otherwise.
    pub(crate) fn count(&self, what: &str, n: u32, max: u32) -> Result<usize> {
        if n == 0 || n > max {
            return Err(self.refuse(EINVAL, fmt!("{what} {n} is not valid (1 to {max})")));
        }
        Ok(usize::try_from(n)?)
    }

    /// Checks that `vm_id` names the file's VM, 0, the only one a file has; [`ENOENT`]
    /// otherwise.
    pub(crate) fn vm_id(&self, vm_id: u32) -> Result {
        if vm_id != 0 {
            return Err(self.refuse(ENOENT, fmt!("vm_id {vm_id}: no such VM")));
        }
        Ok(())
    }

    /// The buffer `handle` of `file`; [`ENOENT`] when there is none.
    pub(crate) fn bo(
        &self,
        file: &DrmFile,
        what: fmt::Arguments<'_>,
        handle: u32,
    ) -> Result<ARef<Object>> {
        Object::lookup_handle(file, handle)
            .map_err(|e| self.refuse(e, fmt!("{what}no buffer {handle}")))
    }

    /// Reads `count` elements of `T` from the user array at `addr`.
    pub(crate) fn read_array<T: FromBytes>(&self, addr: u64, count: usize) -> Result<KVec<T>> {
        let mut out = KVec::with_capacity(count, GFP_KERNEL_ACCOUNT)?;
        self.read_each(addr, count, |_, item: T| {
            out.push(item, GFP_KERNEL_ACCOUNT)?;
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads the `count` elements of `T` of the user array at `addr` one by one, and hands
    /// each to `f` with its index, as long as `f` succeeds.
    pub(crate) fn read_each<T: FromBytes>(
        &self,
        addr: u64,
        count: usize,
        mut f: impl FnMut(usize, T) -> Result,
    ) -> Result {
        let len = count.checked_mul(core::mem::size_of::<T>()).ok_or(EINVAL)?;
        let mut reader = UserSlice::new(UserPtr::from_addr(usize::try_from(addr)?), len).reader();
        for i in 0..count {
            f(i, reader.read::<T>()?)?;
        }
        Ok(())
    }

    /// The device's data.
    pub(crate) fn data(&self) -> &'a DeviceData<'bound> {
        self.data
    }
}

/// Checks that `va..va + len` lies in the range userspace can bind, and returns its end.
pub(crate) fn user_range(va: u64, len: u64) -> Option<u64> {
    let end = va.checked_add(len)?;
    (len != 0 && va >= USER_VA_START && end <= KERNEL_VA_BASE).then_some(end)
}

/// `DRM_IOCTL_CONFLUX_GET_INFO`.
pub(crate) fn get_info(
    _dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_get_info,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "GET_INFO");
    call.zero(&[("flags", args.flags.into()), ("pad", args.pad.into())])?;
    // The memory of the jobs that have finished counts as available: it is, once they are
    // dropped, which the queue otherwise does a little later.
    data.engine.retire_finished();
    let counters = data.engine.counters()?;
    let inner = file.inner();
    let pages = inner
        .current_vm()
        .and_then(|s| s.with_member(inner.id(), |vm| Ok(vm.pages())).ok())
        .unwrap_or_default();
    *args = uapi::drm_conflux_get_info {
        flags: 0,
        version: data.info.version,
        caps: data.info.caps,
        pad: 0,
        vram_size: data.vram.size(),
        vram_avail: data.vram.avail(),
        va_start: USER_VA_START,
        va_end: KERNEL_VA_BASE,
        local_bytes: counters.local_bytes,
        p2p_bytes: counters.p2p_bytes,
        sysmem_bytes: counters.sysmem_bytes,
        commands: counters.commands,
        errors: counters.errors,
        vm_2m_entries: pages.huge,
        vm_4k_entries: pages.small,
        vm_spare_tables: pages.spare as u64,
        evictions: data.moves.evictions.load(Ordering::Relaxed),
        returns: data.moves.returns.load(Ordering::Relaxed),
        bytes_moved: data.moves.bytes.load(Ordering::Relaxed),
        preemptions: data.engine.preemptions(),
        queues_killed: data.engine.queues_killed(),
    };
    Ok(0)
}
