// SPDX-License-Identifier: GPL-2.0

//! An open file of a Conflux accel device, and its ioctls.

use kernel::{
    dma_fence::Fence,
    dma_resv::{
        DmaResv,
        ResvSet, //
    },
    drm::{
        self,
        gem::{
            self,
            BaseObject, //
        },
        syncobj::SyncObj,
        Registered, //
    },
    fs::LocalFile,
    new_mutex,
    prelude::*,
    sizes::SZ_4K,
    sync::{
        aref::ARef,
        Arc,
        Mutex, //
    },
    time::msecs_to_jiffies,
    transmute::FromBytes,
    uaccess::{
        UserPtr,
        UserSlice, //
    },
    uapi, //
};

use crate::{
    driver::{
        ConfluxDrm,
        Hw,
        KERNEL_VA_BASE,
        USER_VA_START, //
    },
    engine::{
        job_timeout_ms,
        Command,
        MAX_JOB_COMMANDS, //
    },
    gem::{
        Bo,
        Contents,
        Memory, //
    },
    prime::IoctlDevice,
    vm::{
        self,
        BindOp,
        Object,
        SharedVm,
        Vm, //
    },
};

/// The accel device of a Conflux device.
pub(crate) type ConfluxDevice<Ctx = drm::Normal> = drm::Device<ConfluxDrm, Ctx>;

/// The most failed jobs whose result a file keeps for WAIT.
const KEPT_FAILURES: usize = 256;

/// The jobs of a file that WAIT may ask about.
///
/// # Invariants
///
/// `jobs` holds, in job order, every job up to `last` that has not completed successfully, but
/// for failed jobs beyond the [`KEPT_FAILURES`] most recent.
struct Jobs {
    last: u64,
    jobs: KVec<(u64, ARef<Fence>)>,
}

/// A client of the accel device.
#[pin_data(PinnedDrop)]
pub(crate) struct File {
    /// The file's VM, created at its first use, which the file may share with others.
    #[pin]
    vm: Mutex<Option<Arc<SharedVm>>>,
    #[pin]
    jobs: Mutex<Jobs>,
}

/// A `drm_conflux_vm_bind_op` as read from userspace.
#[repr(transparent)]
struct RawBindOp(uapi::drm_conflux_vm_bind_op);

// SAFETY: The structure has only integer fields and no padding, so any bytes are a valid value.
unsafe impl FromBytes for RawBindOp {}

/// A `drm_conflux_cmd` as read from userspace.
#[repr(transparent)]
struct RawCmd(uapi::drm_conflux_cmd);

// SAFETY: The structure has only integer fields and no padding, so any bytes are a valid value.
unsafe impl FromBytes for RawCmd {}

/// Reads `count` elements of `T` from the user array at `addr`.
fn read_array<T: FromBytes>(addr: u64, count: u32) -> Result<KVec<T>> {
    let count = usize::try_from(count)?;
    let len = count.checked_mul(core::mem::size_of::<T>()).ok_or(EINVAL)?;
    let mut reader = UserSlice::new(UserPtr::from_addr(usize::try_from(addr)?), len).reader();
    let mut out = KVec::with_capacity(count, GFP_KERNEL)?;
    for _ in 0..count {
        out.push(reader.read::<T>()?, GFP_KERNEL)?;
    }
    Ok(out)
}

/// Checks that `va..va + len` lies in the range userspace can bind, and returns its end.
fn user_range(va: u64, len: u64) -> Option<u64> {
    let end = va.checked_add(len)?;
    (len != 0 && va >= USER_VA_START && end <= KERNEL_VA_BASE).then_some(end)
}

/// A DRM file of a Conflux accel device.
pub(crate) type DrmFile = drm::File<File>;

// The uAPI structures have the sizes the header documents, on both sides: userspace checks
// the same numbers.
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_get_info>() == 112);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bo_create>() == 16);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_vm_bind_op>() == 40);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_vm_bind>() == 24);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_cmd>() == 32);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_submit>() == 40);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_wait>() == 24);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bo_rw>() == 32);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_bo_info>() == 32);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_vm_join>() == 16);
const _: () = assert!(core::mem::size_of::<uapi::drm_conflux_vm_path>() == 24);
const _: () = assert!(uapi::DRM_CONFLUX_MAX_CMDS as usize == MAX_JOB_COMMANDS);

impl drm::file::DriverFile for File {
    type Driver = ConfluxDrm;

    fn open(_dev: &drm::Device<ConfluxDrm>) -> Result<Pin<KBox<Self>>> {
        KBox::try_pin_init(
            try_pin_init!(Self {
                vm <- new_mutex!(None),
                jobs <- new_mutex!(Jobs {
                    last: 0,
                    jobs: KVec::new(),
                }),
            }),
            GFP_KERNEL,
        )
    }
}

#[pinned_drop]
impl PinnedDrop for File {
    fn drop(self: Pin<&mut Self>) {
        let id = self.id();
        let shared = self.vm.lock().take();
        if let Some(shared) = shared {
            shared.leave(id);
        }
    }
}

impl File {
    /// The identity of the file among the members of a shared VM: its pinned address.
    pub(crate) fn id(&self) -> usize {
        core::ptr::from_ref(self) as usize
    }

    /// The VM of the file, created at the first call.
    fn shared_vm(&self, dev: &IoctlDevice) -> Result<Arc<SharedVm>> {
        let mut slot = self.vm.lock();
        match &*slot {
            Some(shared) => Ok(shared.clone()),
            None => Ok(slot.insert(SharedVm::new(self.id(), dev)?).clone()),
        }
    }

    /// `DRM_IOCTL_CONFLUX_GET_INFO`.
    pub(crate) fn get_info(
        _dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_get_info,
        file: &DrmFile,
    ) -> Result<u32> {
        if args.flags != 0 || args.pad != 0 {
            dev_dbg!(
                hw.pdev,
                "GET_INFO: flags {:#x}, pad {:#x}: must be 0\n",
                args.flags,
                args.pad
            );
            return Err(EINVAL);
        }
        let counters = hw.engine.counters()?;
        let inner = file.inner();
        let shared = inner.vm.lock().clone();
        let (vm_2m_entries, vm_4k_entries, spares) = shared
            .and_then(|s| s.with_member(inner.id(), |vm| Ok(vm.pages())).ok())
            .unwrap_or((0, 0, 0));
        *args = uapi::drm_conflux_get_info {
            flags: 0,
            version: hw.info.version,
            caps: hw.info.caps,
            pad: 0,
            vram_size: hw.info.vram_size,
            vram_avail: hw.vram.avail(),
            va_start: USER_VA_START,
            va_end: KERNEL_VA_BASE,
            local_bytes: counters.local_bytes,
            p2p_bytes: counters.p2p_bytes,
            sysmem_bytes: counters.sysmem_bytes,
            commands: counters.commands,
            errors: counters.errors,
            vm_2m_entries,
            vm_4k_entries,
            vm_spare_tables: spares as u64,
        };
        Ok(0)
    }

    /// `DRM_IOCTL_CONFLUX_BO_CREATE`.
    pub(crate) fn bo_create(
        dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_bo_create,
        file: &DrmFile,
    ) -> Result<u32> {
        let known = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
        if args.flags & !known != 0 || args.flags == 0 {
            dev_dbg!(
                hw.pdev,
                "BO_CREATE: flags {:#x}: unknown or no placement\n",
                args.flags
            );
            return Err(EINVAL);
        }
        if args.handle != 0 {
            dev_dbg!(hw.pdev, "BO_CREATE: handle {}: must be 0\n", args.handle);
            return Err(EINVAL);
        }
        let page = SZ_4K as u64;
        let size = match args.size.checked_add(page - 1) {
            Some(s) if args.size != 0 => s & !(page - 1),
            _ => {
                dev_dbg!(hw.pdev, "BO_CREATE: size {:#x} is not valid\n", args.size);
                return Err(EINVAL);
            }
        };
        let system = args.flags & uapi::DRM_CONFLUX_BO_SYSTEM != 0;
        let memory = if args.flags & uapi::DRM_CONFLUX_BO_VRAM == 0 {
            Err(ENOSPC)
        } else if size > hw.info.vram_size {
            dev_dbg!(hw.pdev, "BO_CREATE: size {:#x} exceeds VRAM\n", size);
            Err(ENOSPC)
        } else {
            hw.vram.alloc_buffer(size).inspect_err(|e| {
                dev_dbg!(
                    hw.pdev,
                    "BO_CREATE: size {:#x}: {:?} ({:#x} bytes of VRAM available)\n",
                    size,
                    e,
                    hw.vram.avail()
                );
            })
        };
        let memory = match memory {
            Ok(vram) => {
                hw.scrub(vram.iter().map(|b| (b.offset(), b.size())))?;
                Memory::Vram(vram)
            }
            Err(e) if e == ENOSPC && system => {
                if size > u64::from(uapi::DRM_CONFLUX_MAX_SYSTEM_SIZE) {
                    dev_dbg!(
                        hw.pdev,
                        "BO_CREATE: size {:#x} exceeds the system-memory limit {:#x}\n",
                        size,
                        uapi::DRM_CONFLUX_MAX_SYSTEM_SIZE
                    );
                    return Err(EINVAL);
                }
                Bo::system_memory(hw.pdev, size).inspect_err(|e| {
                    dev_dbg!(
                        hw.pdev,
                        "BO_CREATE: size {:#x} in system memory: {:?}\n",
                        size,
                        e
                    );
                })?
            }
            Err(e) => return Err(e),
        };
        // A buffer that may be in either place moves to system memory for an importer that
        // cannot reach the device's VRAM.
        let movable = system && matches!(memory, Memory::Vram(_));
        let contents = Contents::local(memory, movable)?;
        let obj = gem::Object::<Bo>::new(dev, usize::try_from(size)?, contents)?;
        args.handle = obj.create_handle(file)?;
        args.size = size;
        Ok(0)
    }

    /// `DRM_IOCTL_CONFLUX_BO_INFO`.
    pub(crate) fn bo_info(
        _dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_bo_info,
        file: &DrmFile,
    ) -> Result<u32> {
        if args.flags != 0 || args.path != 0 {
            dev_dbg!(
                hw.pdev,
                "BO_INFO: flags {:#x}, path {:#x}: must be 0\n",
                args.flags,
                args.path
            );
            return Err(EINVAL);
        }
        let bo = Object::lookup_handle(file, args.handle).inspect_err(|_| {
            dev_dbg!(hw.pdev, "BO_INFO: no buffer {}\n", args.handle);
        })?;
        args.mmap_offset = match bo.imported() {
            Some(_) => 0,
            None => bo.create_mmap_offset()?,
        };
        args.size = bo.size() as u64;
        args.placement = bo.placement();
        args.path = bo.path();
        Ok(0)
    }

    /// Runs `f` on the file's VM, which it creates at the first call.
    fn with_vm<R>(
        &self,
        dev: &ConfluxDevice<Registered>,
        f: impl FnOnce(&mut Vm) -> Result<R>,
    ) -> Result<R> {
        self.shared_vm(dev.as_ioctl())?.with_member(self.id(), f)
    }

    /// `DRM_IOCTL_CONFLUX_VM_BIND`.
    pub(crate) fn vm_bind(
        dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_vm_bind,
        file: &DrmFile,
    ) -> Result<u32> {
        if args.flags != 0 || args.pad != 0 {
            dev_dbg!(
                hw.pdev,
                "VM_BIND: flags {:#x}, pad {:#x}: must be 0\n",
                args.flags,
                args.pad
            );
            return Err(EINVAL);
        }
        if args.num_ops == 0 || args.num_ops > uapi::DRM_CONFLUX_MAX_BIND_OPS {
            dev_dbg!(hw.pdev, "VM_BIND: num_ops {} is not valid\n", args.num_ops);
            return Err(EINVAL);
        }
        if args.vm_id != 0 {
            dev_dbg!(hw.pdev, "VM_BIND: vm_id {}: no such VM\n", args.vm_id);
            return Err(ENOENT);
        }
        let raw = read_array::<RawBindOp>(args.ops, args.num_ops)?;
        let mut ops = KVec::with_capacity(raw.len(), GFP_KERNEL)?;
        let page = SZ_4K as u64;
        for (i, RawBindOp(op)) in raw.iter().enumerate() {
            let aligned = (op.va | op.range | op.bo_offset) % page == 0;
            let in_range = user_range(op.va, op.range).is_some();
            let known = match op.op {
                uapi::DRM_CONFLUX_BIND_MAP => op.flags & !uapi::DRM_CONFLUX_BIND_READONLY == 0,
                uapi::DRM_CONFLUX_BIND_UNMAP => (op.flags | op.handle) == 0 && op.bo_offset == 0,
                _ => false,
            };
            if !aligned || !in_range || !known || op.pad != 0 {
                dev_dbg!(
                    hw.pdev,
                    "VM_BIND: operation {}: op {} flags {:#x} handle {} pad {:#x} \
                     bo_offset {:#x} va {:#x} range {:#x} is not valid\n",
                    i,
                    op.op,
                    op.flags,
                    op.handle,
                    op.pad,
                    op.bo_offset,
                    op.va,
                    op.range
                );
                return Err(EINVAL);
            }
            let checked = if op.op == uapi::DRM_CONFLUX_BIND_MAP {
                let bo = Object::lookup_handle(file, op.handle).inspect_err(|_| {
                    dev_dbg!(
                        hw.pdev,
                        "VM_BIND: operation {}: no buffer {}\n",
                        i,
                        op.handle
                    );
                })?;
                let fits = op
                    .bo_offset
                    .checked_add(op.range)
                    .is_some_and(|end| end <= bo.size() as u64);
                if !fits {
                    dev_dbg!(
                        hw.pdev,
                        "VM_BIND: operation {}: {:#x} bytes at offset {:#x} exceed buffer {} \
                         of {:#x} bytes\n",
                        i,
                        op.range,
                        op.bo_offset,
                        op.handle,
                        bo.size()
                    );
                    return Err(EINVAL);
                }
                BindOp::Map {
                    va: op.va,
                    range: op.range,
                    bo,
                    offset: op.bo_offset,
                    writable: op.flags & uapi::DRM_CONFLUX_BIND_READONLY == 0,
                }
            } else {
                BindOp::Unmap {
                    va: op.va,
                    range: op.range,
                }
            };
            ops.push(checked, GFP_KERNEL)?;
        }
        let inner = file.inner();
        inner
            .shared_vm(dev.as_ioctl())?
            .bind(inner.id(), dev.as_ioctl(), hw, ops)?;
        Ok(0)
    }

    /// `DRM_IOCTL_CONFLUX_SUBMIT`.
    pub(crate) fn submit(
        dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_submit,
        file: &DrmFile,
    ) -> Result<u32> {
        if args.flags != 0 || args.pad != 0 || args.job != 0 {
            dev_dbg!(
                hw.pdev,
                "SUBMIT: flags {:#x}, pad {:#x}, job {}: must be 0\n",
                args.flags,
                args.pad,
                args.job
            );
            return Err(EINVAL);
        }
        if args.num_cmds == 0 || args.num_cmds > uapi::DRM_CONFLUX_MAX_CMDS {
            dev_dbg!(hw.pdev, "SUBMIT: num_cmds {} is not valid\n", args.num_cmds);
            return Err(EINVAL);
        }
        if args.vm_id != 0 {
            dev_dbg!(hw.pdev, "SUBMIT: vm_id {}: no such VM\n", args.vm_id);
            return Err(ENOENT);
        }
        let raw = read_array::<RawCmd>(args.cmds, args.num_cmds)?;
        let mut commands = KVec::with_capacity(raw.len(), GFP_KERNEL)?;
        // The ranges the commands read and write.
        let mut ranges = KVec::with_capacity(2 * raw.len(), GFP_KERNEL)?;
        for (i, RawCmd(cmd)) in raw.iter().enumerate() {
            let len_ok = cmd.len <= uapi::DRM_CONFLUX_MAX_CMD_LEN;
            let dst_end = user_range(cmd.dst, cmd.len).filter(|_| len_ok);
            let command = match (cmd.op, dst_end) {
                (uapi::DRM_CONFLUX_CMD_COPY, Some(dst_end)) => user_range(cmd.src, cmd.len)
                    .filter(|&src_end| src_end <= cmd.dst || dst_end <= cmd.src)
                    .map(|src_end| {
                        (
                            Command::Copy {
                                src: cmd.src,
                                dst: cmd.dst,
                                len: cmd.len,
                            },
                            Some((cmd.src, src_end, false)),
                            (cmd.dst, dst_end, true),
                        )
                    }),
                (uapi::DRM_CONFLUX_CMD_FILL, Some(dst_end)) => Some((
                    Command::Fill {
                        dst: cmd.dst,
                        len: cmd.len,
                        pattern: cmd.src,
                    },
                    None,
                    (cmd.dst, dst_end, true),
                )),
                _ => None,
            };
            let Some((command, src, dst)) = command.filter(|_| cmd.pad == 0) else {
                dev_dbg!(
                    hw.pdev,
                    "SUBMIT: command {}: op {} pad {:#x} src {:#x} dst {:#x} len {:#x}: invalid\n",
                    i,
                    cmd.op,
                    cmd.pad,
                    cmd.src,
                    cmd.dst,
                    cmd.len
                );
                return Err(EINVAL);
            };
            commands.push(command, GFP_KERNEL)?;
            if let Some(src) = src {
                ranges.push(src, GFP_KERNEL)?;
            }
            ranges.push(dst, GFP_KERNEL)?;
        }
        let out = match args.out_syncobj {
            0 => None,
            handle => Some(SyncObj::lookup(file, handle).inspect_err(|_| {
                dev_dbg!(hw.pdev, "SUBMIT: no out-syncobj {}\n", handle);
            })?),
        };
        if args.in_syncobj != 0 {
            let handle = args.in_syncobj;
            let syncobj = SyncObj::lookup(file, handle).inspect_err(|_| {
                dev_dbg!(hw.pdev, "SUBMIT: no in-syncobj {}\n", handle);
            })?;
            let fence = syncobj.fence().ok_or_else(|| {
                dev_dbg!(hw.pdev, "SUBMIT: in-syncobj {} has no fence\n", handle);
                EINVAL
            })?;
            fence.wait(true)?;
            fence.status().inspect_err(|e| {
                dev_dbg!(hw.pdev, "SUBMIT: the in-fence failed: {:?}\n", e);
            })?;
        }
        let fence = file.inner().with_vm(dev, |vm| {
            let buffers = vm.buffers(&ranges)?;
            let mut resvs = KVec::with_capacity(buffers.len(), GFP_KERNEL)?;
            for (bo, _) in buffers.iter() {
                resvs.push(bo.dma_resv(), GFP_KERNEL)?;
            }
            let mut locked = ResvSet::lock(&resvs, true, GFP_KERNEL)?;
            locked.reserve_fences(1)?;
            // Imported buffers whose exporter invalidated them are mapped again first.
            vm.revalidate(hw, &buffers, &locked)?;
            let fence = hw.engine.submit(vm.root(), commands)?;
            let written = |resv: &DmaResv| {
                buffers
                    .iter()
                    .any(|(bo, w)| *w && core::ptr::eq(bo.dma_resv(), resv))
            };
            // Cannot fail: a slot was reserved on every object.
            locked.add_fence_with(&fence, |resv| vm::usage(written(resv)))?;
            vm.set_last(fence.clone());
            Ok(fence)
        })?;
        if let Some(out) = out {
            out.replace_fence(Some(&fence));
        }
        let inner = file.inner();
        let mut jobs = inner.jobs.lock();
        jobs.last += 1;
        let job = jobs.last;
        // Forget the jobs that completed successfully, and the oldest failures.
        jobs.jobs.retain(|(_, f)| !matches!(f.status(), Ok(true)));
        let failed = jobs.jobs.iter().filter(|(_, f)| f.is_signaled()).count();
        if failed >= KEPT_FAILURES {
            if let Some(i) = jobs.jobs.iter().position(|(_, f)| f.is_signaled()) {
                let _ = jobs.jobs.remove(i);
            }
        }
        // Without memory for the entry, WAIT reports the job as complete when it is.
        let _ = jobs.jobs.push((job, fence), GFP_KERNEL);
        args.job = job;
        Ok(0)
    }

    /// `DRM_IOCTL_CONFLUX_WAIT`.
    pub(crate) fn wait(
        _dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_wait,
        file: &DrmFile,
    ) -> Result<u32> {
        let inner = file.inner();
        let fence = {
            let jobs = inner.jobs.lock();
            if args.flags != 0 || args.pad != 0 || args.job == 0 || args.job > jobs.last {
                dev_dbg!(
                    hw.pdev,
                    "WAIT: job {} (last {}), flags {:#x}, pad {:#x} is not valid\n",
                    args.job,
                    jobs.last,
                    args.flags,
                    args.pad
                );
                return Err(EINVAL);
            }
            match jobs.jobs.iter().find(|(job, _)| *job == args.job) {
                Some((_, fence)) => fence.clone(),
                // It completed successfully.
                None => return Ok(0),
            }
        };
        let timeout_ms = u64::try_from(args.timeout_ns)
            .ok()
            .map(|ns| ns.div_ceil(1_000_000));
        if !hw.engine.wait_for(&fence, true, timeout_ms)? {
            return Err(ETIME);
        }
        fence.status()?;
        Ok(0)
    }

    /// `DRM_IOCTL_CONFLUX_VM_JOIN`.
    pub(crate) fn vm_join(
        dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_vm_join,
        file: &DrmFile,
    ) -> Result<u32> {
        if args.flags != 0 {
            dev_dbg!(hw.pdev, "VM_JOIN: flags {:#x}: must be 0\n", args.flags);
            return Err(EINVAL);
        }
        let fd = u32::try_from(args.fd).map_err(|_| EBADF)?;
        let other = LocalFile::fget(fd).map_err(|_| {
            dev_dbg!(hw.pdev, "VM_JOIN: fd {} is not open\n", args.fd);
            EBADF
        })?;
        let Some(other) = DrmFile::from_file(&other, dev) else {
            dev_dbg!(
                hw.pdev,
                "VM_JOIN: fd {} is not a Conflux accel file\n",
                args.fd
            );
            return Err(EINVAL);
        };
        let me = file.inner();
        let them = other.inner();
        if me.id() == them.id() {
            dev_dbg!(
                hw.pdev,
                "VM_JOIN: fd {} is the caller's own file\n",
                args.fd
            );
            return Err(EINVAL);
        }
        let target = them.shared_vm(other.device())?;
        let mut slot = me.vm.lock();
        if let Some(current) = &*slot {
            if Arc::ptr_eq(current, &target) {
                let (members, member) = target.position(me.id());
                args.members = u32::try_from(members)?;
                args.member = u32::try_from(member.ok_or(ENOENT)?)?;
                return Ok(0);
            }
            if !current.is_unused_but_by(me.id()) {
                dev_dbg!(
                    hw.pdev,
                    "VM_JOIN: the caller's VM has mappings or is shared already\n"
                );
                return Err(EBUSY);
            }
        }
        let (members, member) = target.join(me.id(), dev.as_ioctl()).inspect_err(|e| {
            dev_dbg!(
                hw.pdev,
                "VM_JOIN: cannot join fd {}'s VM: {:?}\n",
                args.fd,
                e
            );
        })?;
        let old = slot.replace(target);
        drop(slot);
        if let Some(old) = old {
            old.leave(me.id());
        }
        args.members = u32::try_from(members)?;
        args.member = u32::try_from(member)?;
        Ok(0)
    }

    /// `DRM_IOCTL_CONFLUX_VM_PATH`.
    pub(crate) fn vm_path(
        dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_vm_path,
        file: &DrmFile,
    ) -> Result<u32> {
        if args.flags != 0 || args.path != 0 || args.members != 0 {
            dev_dbg!(
                hw.pdev,
                "VM_PATH: flags {:#x}, path {}, members {}: must be 0\n",
                args.flags,
                args.path,
                args.members
            );
            return Err(EINVAL);
        }
        let shared = file.inner().shared_vm(dev.as_ioctl())?;
        let (path, members) = shared
            .path(usize::try_from(args.member)?, args.va)
            .inspect_err(|_| {
                dev_dbg!(hw.pdev, "VM_PATH: no member {}\n", args.member);
            })?;
        args.path = path;
        args.members = u32::try_from(members)?;
        Ok(0)
    }

    /// `DRM_IOCTL_CONFLUX_BO_READ`.
    pub(crate) fn bo_read(
        _dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_bo_rw,
        file: &DrmFile,
    ) -> Result<u32> {
        bo_rw(hw, args, file, false)
    }

    /// `DRM_IOCTL_CONFLUX_BO_WRITE`.
    pub(crate) fn bo_write(
        _dev: &ConfluxDevice<Registered>,
        hw: &Hw<'_>,
        args: &mut uapi::drm_conflux_bo_rw,
        file: &DrmFile,
    ) -> Result<u32> {
        bo_rw(hw, args, file, true)
    }
}

/// Copies between a buffer and user memory, for BO_READ and BO_WRITE.
fn bo_rw(hw: &Hw<'_>, args: &uapi::drm_conflux_bo_rw, file: &DrmFile, write: bool) -> Result<u32> {
    const CHUNK: usize = 64 * 1024;
    let call = if write { "BO_WRITE" } else { "BO_READ" };
    if args.flags != 0 || args.size == 0 || (args.offset | args.size) % 4 != 0 {
        dev_dbg!(
            hw.pdev,
            "{}: flags {:#x}, offset {:#x}, size {:#x} are not valid\n",
            call,
            args.flags,
            args.offset,
            args.size
        );
        return Err(EINVAL);
    }
    let bo = Object::lookup_handle(file, args.handle).inspect_err(|_| {
        dev_dbg!(hw.pdev, "{}: no buffer {}\n", call, args.handle);
    })?;
    let fits = args
        .offset
        .checked_add(args.size)
        .is_some_and(|end| end <= bo.size() as u64);
    if !fits {
        dev_dbg!(
            hw.pdev,
            "{}: {:#x} bytes at {:#x} exceed buffer {} of {:#x} bytes\n",
            call,
            args.size,
            args.offset,
            args.handle,
            bo.size()
        );
        return Err(EINVAL);
    }
    // A write waits for readers and writers, a read for writers.
    let usage = vm::usage(!write);
    while !bo
        .dma_resv()
        .wait_timeout(usage, true, msecs_to_jiffies(job_timeout_ms()))?
    {
        hw.engine.check_timeout();
    }
    let user = UserSlice::new(
        UserPtr::from_addr(usize::try_from(args.data)?),
        usize::try_from(args.size)?,
    );
    let (mut reader, mut writer) = user.reader_writer();
    let mut buf = KVec::from_elem(0u8, CHUNK, GFP_KERNEL)?;
    let mut done = 0u64;
    while done < args.size {
        let n = usize::try_from(args.size - done)?.min(CHUNK);
        let chunk = buf.get_mut(..n).ok_or(EINVAL)?;
        if write {
            reader.read_slice(chunk)?;
            bo.cpu_copy(hw, args.offset + done, chunk, true)?;
        } else {
            bo.cpu_copy(hw, args.offset + done, chunk, false)?;
            writer.write_slice(chunk)?;
        }
        done += n as u64;
    }
    Ok(0)
}
