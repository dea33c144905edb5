// SPDX-License-Identifier: GPL-2.0

//! GPU virtual address spaces: a `drm_gpuvm` and the device's page tables, kept in step.
//!
//! VM_BIND applies its operations as one transaction. It checks every operation against the
//! mappings the operations before it leave, and allocates all it can need (the `drm_gpuva`s of
//! new and split mappings, page tables, a spare table per 2 MiB entry) before it changes
//! anything. The changes themselves cannot fail, so the VM is either changed as a whole or not
//! at all.

use kernel::{
    device::Bound,
    dma_fence::Fence,
    dma_resv::{
        DmaResv,
        ResvSet,
        Usage, //
    },
    drm::{
        gem,
        gpuvm::{
            DriverGpuVm,
            GpuVaAlloc,
            GpuVm,
            GpuVmBo,
            OpMap,
            OpMapRequest,
            OpMapped,
            OpRemap,
            OpRemapped,
            OpUnmap,
            OpUnmapped,
            UniqueRefGpuVm, //
        },
        Registered, //
    },
    new_mutex, pci,
    prelude::*,
    sizes::SZ_4K,
    sync::{
        aref::ARef,
        Arc,
        Mutex, //
    },
    time::msecs_to_jiffies,
};

use crate::{
    driver::{
        ConfluxDrm,
        Hw,
        KERNEL_VA_BASE,
        USER_VA_START, //
    },
    engine::job_timeout_ms,
    file::ConfluxDevice,
    gem::{
        Bo,
        Contents,
        Memory, //
    },
    mmu::{
        PageTables,
        Vram,
        VramIo, //
    },
    prime::IoctlDevice,
};

/// The GEM object type of the driver.
pub(crate) type Object = gem::Object<Bo>;

/// The driver's side of a `drm_gpuvm`.
pub(crate) struct VmData;

/// Where a VM maps part of a buffer whose memory can change under it: an imported buffer, or
/// one of the device's that may move to system memory.
#[derive(Clone, Copy)]
struct ImportRange {
    /// The buffer ([`Bo::id`]).
    id: usize,
    va: u64,
    len: u64,
    /// The offset in the buffer of the byte at `va`.
    offset: u64,
    writable: bool,
    /// Whether the page-table entries are in place; cleared when the exporter invalidates the
    /// buffer's mappings, or when the buffer moves.
    valid: bool,
}

/// What [`VmTables`] protects.
pub(crate) struct TablesState {
    /// `None` once the VM is gone.
    tables: Option<PageTables>,
    imports: KVec<ImportRange>,
}

/// Removes `start..end` from the records of `imports`, splitting a record that spans it; needs
/// one free slot per call.
fn cut(imports: &mut KVec<ImportRange>, start: u64, end: u64) {
    let mut i = 0;
    while i < imports.len() {
        let r = imports[i];
        let r_end = r.va + r.len;
        if r_end <= start || end <= r.va {
            i += 1;
            continue;
        }
        let _ = imports.remove(i);
        if r.va < start {
            let left = ImportRange {
                len: start - r.va,
                ..r
            };
            let _ = imports.push_within_capacity(left);
        }
        if end < r_end {
            let right = ImportRange {
                va: end,
                len: r_end - end,
                offset: r.offset + (end - r.va),
                ..r
            };
            let _ = imports.push_within_capacity(right);
        }
    }
}

/// The page tables of a VM, with their own lock so that an exporter's invalidation can clear
/// entries without the VM's lock: the lock order is the VM's lock, then reservation objects,
/// then this.
#[pin_data]
pub(crate) struct VmTables {
    #[pin]
    state: Mutex<TablesState>,
}

impl VmTables {
    /// Whether the VM still exists.
    pub(crate) fn is_alive(&self) -> bool {
        self.state.lock().tables.is_some()
    }

    /// Clears the entries that map buffer `id`, for its exporter's invalidation or its move.
    pub(crate) fn invalidate(&self, hw: &Hw<'_>, id: usize) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let Some(tables) = st.tables.as_mut() else {
            return;
        };
        let io = hw.vram_io();
        for r in st.imports.iter_mut().filter(|r| r.id == id && r.valid) {
            if let Ok(io) = &io {
                tables.unmap(&hw.vram, io, r.va, r.len);
            }
            r.valid = false;
        }
    }

    /// Records that imported buffer `id` was invalidated while the device was unbound.
    pub(crate) fn forget(&self, id: usize) {
        for r in self.state.lock().imports.iter_mut().filter(|r| r.id == id) {
            r.valid = false;
        }
    }
}

/// The VMs of a device that map a buffer whose memory can change: the ones to invalidate when
/// it does.
#[pin_data]
pub(crate) struct VmList {
    #[pin]
    vms: Mutex<KVec<Arc<VmTables>>>,
}

impl VmList {
    /// An empty list.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(VmList {
            vms <- new_mutex!(KVec::new()),
        })
    }

    /// Records that `vm` maps the buffer; forgets the VMs that are gone.
    pub(crate) fn add(&self, vm: &Arc<VmTables>) -> Result {
        let mut vms = self.vms.lock();
        vms.retain(|v| v.is_alive());
        if !vms.iter().any(|v| Arc::ptr_eq(v, vm)) {
            vms.push(vm.clone(), GFP_KERNEL)?;
        }
        Ok(())
    }

    /// The identifier of the buffer whose VMs these are, [`Bo::id`]: unique while it lives.
    pub(crate) fn id(&self) -> usize {
        core::ptr::from_ref(self) as usize
    }

    /// Clears the entries that map the buffer in every VM, with the device's `hw`; without it
    /// (the device is unbound, and its VMs' tables went with it) only records that they are
    /// gone.
    pub(crate) fn invalidate(&self, hw: Option<&Hw<'_>>) {
        let id = self.id();
        for vm in self.vms.lock().iter() {
            match hw {
                Some(hw) => vm.invalidate(hw, id),
                None => vm.forget(id),
            }
        }
    }
}

/// What the `drm_gpuvm` steps of one operation work with.
pub(crate) struct BindCtx<'a> {
    tables: &'a mut PageTables,
    /// Where imported buffers are mapped; room for the records the operation adds.
    imports: &'a mut KVec<ImportRange>,
    /// The reservation locks of the imported buffers the operations map.
    locked: Option<&'a ResvSet<'a>>,
    /// The device's VRAM and the CPU's access to it; `None` when the VM is torn down: only the
    /// tree changes then, and the tables are freed after.
    hw: Option<(&'a Vram, &'a VramIo<'a>, &'a pci::Device<Bound>)>,
    /// Preallocated `drm_gpuva`s.
    vas: &'a mut KVec<GpuVaAlloc<VmData>>,
    writable: bool,
}

impl BindCtx<'_> {
    fn va(&mut self) -> Result<GpuVaAlloc<VmData>> {
        // Not reached: `SharedVm::bind` allocates as many as the operations can take.
        self.vas.pop().ok_or(ENOMEM)
    }
}

impl DriverGpuVm for VmData {
    type Driver = ConfluxDrm;
    type Object = Object;
    type VaData = ();
    type VmBoData = ();
    type SmContext<'ctx> = BindCtx<'ctx>;

    fn sm_step_map<'op, 'ctx>(
        &mut self,
        op: OpMap<'op, Self>,
        ctx: &mut BindCtx<'ctx>,
    ) -> Result<OpMapped<'op, Self>> {
        let (vram, io, pdev) = ctx.hw.ok_or(EINVAL)?;
        let va = ctx.va()?;
        let obj = op.obj();
        let table = match (obj.imported(), ctx.locked) {
            (Some(imp), Some(locked)) => Some(imp.table(pdev, locked)?),
            (Some(_), None) => return Err(EINVAL),
            (None, _) => None,
        };
        obj.map(
            ctx.tables,
            vram,
            io,
            pdev,
            table,
            op.addr(),
            op.gem_offset(),
            op.length(),
            ctx.writable,
        )?;
        if obj.may_change() {
            let record = ImportRange {
                id: obj.id(),
                va: op.addr(),
                len: op.length(),
                offset: op.gem_offset(),
                writable: ctx.writable,
                valid: true,
            };
            ctx.imports
                .push_within_capacity(record)
                .map_err(|_| ENOMEM)?;
        }
        Ok(op.insert(va, ()))
    }

    fn sm_step_unmap<'op, 'ctx>(
        &mut self,
        op: OpUnmap<'op, Self>,
        ctx: &mut BindCtx<'ctx>,
    ) -> Result<OpUnmapped<'op, Self>> {
        if let Some((vram, io, _)) = ctx.hw {
            ctx.tables.unmap(vram, io, op.va().addr(), op.va().length());
        }
        cut(
            ctx.imports,
            op.va().addr(),
            op.va().addr() + op.va().length(),
        );
        let (done, _removed) = op.remove();
        Ok(done)
    }

    fn sm_step_remap<'op, 'ctx>(
        &mut self,
        op: OpRemap<'op, Self>,
        ctx: &mut BindCtx<'ctx>,
    ) -> Result<OpRemapped<'op, Self>> {
        let old = op.va_to_unmap().range();
        let from = op.prev().map_or(old.start, |p| p.addr() + p.length());
        let to = op.next().map_or(old.end, |n| n.addr());
        if let Some((vram, io, _)) = ctx.hw {
            ctx.tables.unmap(vram, io, from, to - from);
        }
        cut(ctx.imports, from, to);
        let vas = [ctx.va()?, ctx.va()?];
        let (done, ret) = op.remap(vas, (), ());
        if let Some(unused) = ret.unused_va {
            // Two were taken, so there is room for one.
            let _ = ctx.vas.push_within_capacity(unused);
        }
        Ok(done)
    }
}

/// One operation of a VM_BIND call, checked.
pub(crate) enum BindOp {
    /// Map `range` bytes of `bo` from `offset` on at `va`.
    Map {
        va: u64,
        range: u64,
        bo: ARef<Object>,
        offset: u64,
        writable: bool,
    },
    /// Unmap `va..va + range`.
    Unmap { va: u64, range: u64 },
}

impl BindOp {
    /// The operation as a member of a shared VM on device `to` does it, for a caller on `from`.
    fn for_device(&self, from: &IoctlDevice, to: &IoctlDevice) -> Result<Self> {
        Ok(match self {
            BindOp::Map {
                va,
                range,
                bo,
                offset,
                writable,
            } => BindOp::Map {
                va: *va,
                range: *range,
                bo: crate::prime::for_device(bo, from, to)?,
                offset: *offset,
                writable: *writable,
            },
            BindOp::Unmap { va, range } => BindOp::Unmap {
                va: *va,
                range: *range,
            },
        })
    }

    fn span(&self) -> (u64, u64) {
        match *self {
            BindOp::Map { va, range, .. } | BindOp::Unmap { va, range } => (va, va + range),
        }
    }
}

/// Whether `start..end` is covered by the union of `ranges`.
fn covered(start: u64, end: u64, ranges: &[(u64, u64)]) -> bool {
    let mut cur = start;
    while cur < end {
        match ranges.iter().find(|&&(a, b)| a <= cur && cur < b) {
            Some(&(_, b)) => cur = b,
            None => return false,
        }
    }
    true
}

/// The ranges of `ranges` without `start..end`.
fn subtract(ranges: &[(u64, u64)], start: u64, end: u64) -> Result<KVec<(u64, u64)>> {
    let mut out = KVec::with_capacity(ranges.len() + 1, GFP_KERNEL)?;
    for &(a, b) in ranges {
        if b <= start || end <= a {
            out.push((a, b), GFP_KERNEL)?;
            continue;
        }
        if a < start {
            out.push((a, start), GFP_KERNEL)?;
        }
        if end < b {
            out.push((end, b), GFP_KERNEL)?;
        }
    }
    Ok(out)
}

/// What a VM_BIND call allocated for a VM before it changed anything.
pub(crate) struct Prepared {
    vas: KVec<GpuVaAlloc<VmData>>,
    vm_bos: KVec<Option<ARef<GpuVmBo<VmData>>>>,
    /// The page tables the maps can need.
    tables: usize,
}

/// Adds the reservation objects of the imported buffers that `ops` map to `resvs`.
pub(crate) fn imported_resvs<'a>(ops: &'a [BindOp], resvs: &mut KVec<&'a DmaResv>) -> Result {
    for op in ops {
        if let BindOp::Map { bo, .. } = op {
            if let Some(imp) = bo.imported() {
                resvs.push(imp.resv(), GFP_KERNEL)?;
            }
        }
    }
    Ok(())
}

/// A GPU virtual address space of one device.
///
/// # Invariants
///
/// The tables of `shared` map exactly what `gpuvm` holds, each mapping to its buffer's memory,
/// but for the ranges of imported buffers recorded as invalid, which are unmapped; they keep a
/// spare table per 2 MiB entry. No job but the one of `last` and earlier ones uses the VM. The
/// tables are taken out of `shared` only in `drop`. `root` is their level-3 table.
pub(crate) struct Vm {
    gpuvm: UniqueRefGpuVm<VmData>,
    shared: Arc<VmTables>,
    root: u64,
    /// The fence of the last job submitted on the VM.
    last: Option<ARef<Fence>>,
}

impl Vm {
    /// A VM with nothing mapped, spanning [`USER_VA_START`] to [`KERNEL_VA_BASE`].
    pub(crate) fn new(dev: &ConfluxDevice<Registered>, hw: &Hw<'_>) -> Result<Self> {
        // The object that carries the VM's reservation object; it has no memory.
        let r_obj = Object::new(dev, SZ_4K, Contents::local(Memory::None, false)?)?;
        let gpuvm = GpuVm::new::<Error, _>(
            c"conflux",
            dev,
            &*r_obj,
            USER_VA_START..KERNEL_VA_BASE,
            0..0,
            VmData,
        )?;
        let io = hw.vram_io()?;
        let tables = PageTables::new(&hw.vram, &io)?;
        let root = tables.root();
        let shared = Arc::pin_init(
            pin_init!(VmTables {
                state <- new_mutex!(TablesState {
                    tables: Some(tables),
                    imports: KVec::new(),
                }),
            }),
            GFP_KERNEL,
        )?;
        Ok(Self {
            gpuvm,
            shared,
            root,
            last: None,
        })
    }

    /// The VRAM offset of the level-3 table, for jobs.
    pub(crate) fn root(&self) -> u64 {
        self.root
    }

    /// Records `fence` as the VM's last job.
    pub(crate) fn set_last(&mut self, fence: ARef<Fence>) {
        self.last = Some(fence);
    }

    /// Page-table entries in use: 2 MiB ones and 4 KiB ones, and the spare tables.
    pub(crate) fn pages(&self) -> (u64, u64, usize) {
        let st = self.shared.state.lock();
        st.tables
            .as_ref()
            .map_or((0, 0, 0), |t| (t.huge_pages, t.small_pages, t.spares()))
    }

    /// Maps again, in the tables, the ranges of the buffers among `buffers` that were
    /// invalidated since (by their exporters, or because they moved), for a job: `locked` holds
    /// their reservation locks.
    pub(crate) fn revalidate(
        &mut self,
        hw: &Hw<'_>,
        buffers: &[(ARef<Object>, bool)],
        locked: &ResvSet<'_>,
    ) -> Result {
        let io = hw.vram_io()?;
        for (bo, _) in buffers {
            let id = bo.id();
            let stale = bo.may_change() && {
                let st = self.shared.state.lock();
                st.imports.iter().any(|r| r.id == id && !r.valid)
            };
            if !stale {
                continue;
            }
            // Mapping an imported buffer can make its exporter move it and invalidate the tables
            // of its own VMs: not under the lock of these.
            let table = match bo.imported() {
                Some(imp) => Some(imp.table(hw.pdev, locked)?),
                None => None,
            };
            let mut guard = self.shared.state.lock();
            let st = &mut *guard;
            let tables = st.tables.as_mut().ok_or(ENODEV)?;
            for r in st.imports.iter_mut().filter(|r| r.id == id && !r.valid) {
                let need = PageTables::tables_for(r.va, r.len);
                let mapped = tables.reserve(&hw.vram, &io, need).and_then(|()| {
                    bo.map(
                        tables, &hw.vram, &io, hw.pdev, table, r.va, r.offset, r.len, r.writable,
                    )
                });
                // Keep no spare table beyond one per 2 MiB entry, on every path.
                tables.trim();
                mapped?;
                r.valid = true;
            }
        }
        Ok(())
    }

    /// Checks that every MAP finds its range free, given the operations before it.
    fn check(&self, hw: &Hw<'_>, ops: &[BindOp]) -> Result {
        let mut added = KVec::<(u64, u64)>::new();
        let mut removed = KVec::<(u64, u64)>::new();
        for (i, op) in ops.iter().enumerate() {
            let (start, end) = op.span();
            match op {
                BindOp::Unmap { .. } => {
                    added = subtract(&added, start, end)?;
                    removed.push((start, end), GFP_KERNEL)?;
                }
                BindOp::Map { .. } => {
                    let mut free = !added.iter().any(|&(a, b)| a < end && start < b);
                    let mut cur = start;
                    while free {
                        let Some(va) = self.gpuvm.find_first(cur..end) else {
                            break;
                        };
                        let r = va.range();
                        let (from, to) = (r.start.max(cur), r.end.min(end));
                        free = covered(from, to, &removed);
                        cur = to;
                    }
                    if !free {
                        dev_dbg!(
                            hw.pdev,
                            "VM_BIND: operation {}: {:#x}..{:#x} is not free\n",
                            i,
                            start,
                            end
                        );
                        return Err(ENOSPC);
                    }
                    added.push((start, end), GFP_KERNEL)?;
                }
            }
        }
        Ok(())
    }

    /// Whether nothing is mapped.
    pub(crate) fn is_empty(&self) -> bool {
        self.gpuvm.find_first(self.gpuvm.va_range()).is_none()
    }

    /// How the device reaches the buffer mapped at `va`, a `DRM_CONFLUX_PATH_*`, or 0.
    pub(crate) fn path_at(&self, va: u64) -> u32 {
        self.gpuvm
            .find_first(va..va.saturating_add(1))
            .map_or(0, |m| m.obj().path())
    }

    /// The first step of [`SharedVm::bind`] on a member: checks `ops`, waits for the VM's jobs
    /// when they unmap, and allocates the `drm_gpuva`s and `drm_gpuvm_bo`s. Changes nothing a job
    /// sees.
    pub(crate) fn prepare(&mut self, hw: &Hw<'_>, ops: &[BindOp]) -> Result<Prepared> {
        self.check(hw, ops)?;
        let unmaps = ops
            .iter()
            .filter(|op| matches!(op, BindOp::Unmap { .. }))
            .count();
        if unmaps > 0 {
            if let Some(last) = self.last.clone() {
                hw.engine.wait(&last, true)?;
            }
        }
        // A va per map, three per unmap (two split mappings, one freed by the first split and
        // taken again).
        let count = (ops.len() - unmaps) + 3 * unmaps;
        let mut vas = KVec::with_capacity(count, GFP_KERNEL)?;
        for _ in 0..count {
            vas.push(GpuVaAlloc::new(GFP_KERNEL)?, GFP_KERNEL)?;
        }
        let mut vm_bos = KVec::with_capacity(ops.len(), GFP_KERNEL)?;
        let mut tables = 0;
        for op in ops {
            let vm_bo = match op {
                BindOp::Map { bo, va, range, .. } => {
                    tables += PageTables::tables_for(*va, *range);
                    Some(self.gpuvm.obtain(bo, ())?)
                }
                BindOp::Unmap { .. } => None,
            };
            vm_bos.push(vm_bo, GFP_KERNEL)?;
        }
        Ok(Prepared {
            vas,
            vm_bos,
            tables,
        })
    }

    /// The second step of [`SharedVm::bind`] on a member: maps (and checks) the tables of the
    /// imported buffers among `ops` under their reservation locks, and reserves the page tables.
    /// On failure, the VM keeps no table it reserved.
    pub(crate) fn reserve(
        &self,
        hw: &Hw<'_>,
        ops: &[BindOp],
        prepared: &Prepared,
        locked: Option<&ResvSet<'_>>,
    ) -> Result {
        for op in ops {
            if let BindOp::Map { bo, .. } = op {
                if let Some(imp) = bo.imported() {
                    imp.table(hw.pdev, locked.ok_or(EINVAL)?)?;
                }
                if bo.may_change() {
                    bo.vms().add(&self.shared)?;
                }
            }
        }
        let io = hw.vram_io()?;
        let mut guard = self.shared.state.lock();
        let st = &mut *guard;
        let tables = st.tables.as_mut().ok_or(ENODEV)?;
        // Each operation adds at most one record: a map, or the split of one by an unmap.
        st.imports.reserve(ops.len(), GFP_KERNEL)?;
        tables
            .reserve(&hw.vram, &io, prepared.tables)
            .inspect_err(|e| {
                tables.trim();
                dev_dbg!(
                    hw.pdev,
                    "VM_BIND: {} page tables: {:?} ({:#x} bytes of VRAM available)\n",
                    prepared.tables,
                    e,
                    hw.vram.avail()
                );
            })
    }

    /// Gives back the page tables [`Vm::reserve`] took, when another member of the VM failed.
    pub(crate) fn unreserve(&self) {
        if let Some(tables) = self.shared.state.lock().tables.as_mut() {
            tables.trim();
        }
    }

    /// The last step of [`SharedVm::bind`] on a member, which cannot fail: applies `ops` in order
    /// with what the steps before prepared. `locked` holds the reservation locks of the imported
    /// buffers.
    pub(crate) fn commit(
        &mut self,
        hw: &Hw<'_>,
        ops: &[BindOp],
        prepared: &mut Prepared,
        locked: Option<&ResvSet<'_>>,
    ) -> Result {
        let io = hw.vram_io()?;
        let mut guard = self.shared.state.lock();
        let st = &mut *guard;
        let this_tables = st.tables.as_mut().ok_or(ENODEV)?;
        let mut result = Ok(());
        for (i, (op, vm_bo)) in ops.iter().zip(prepared.vm_bos.iter()).enumerate() {
            let writable = matches!(op, BindOp::Map { writable: true, .. });
            let mut ctx = BindCtx {
                tables: this_tables,
                imports: &mut st.imports,
                locked,
                hw: Some((&hw.vram, &io, hw.pdev)),
                vas: &mut prepared.vas,
                writable,
            };
            let done = match (op, vm_bo) {
                (
                    BindOp::Map {
                        va, range, offset, ..
                    },
                    Some(vm_bo),
                ) => self.gpuvm.sm_map(OpMapRequest {
                    addr: *va,
                    range: *range,
                    gem_offset: *offset,
                    vm_bo,
                    context: &mut ctx,
                }),
                (BindOp::Unmap { va, range }, _) => self.gpuvm.sm_unmap(*va, *range, &mut ctx),
                _ => Err(EINVAL),
            };
            if let Err(e) = done {
                // Not reached: the checks and allocations before leave nothing to fail.
                dev_err!(
                    hw.pdev,
                    "VM_BIND: operation {} failed after its checks: {:?}\n",
                    i,
                    e
                );
                result = Err(e);
                break;
            }
        }
        this_tables.trim();
        result
    }

    /// Drops what a bind prepared, once the reservation locks are released: the `drm_gpuvm_bo`s
    /// no mapping uses any more are freed under their objects' locks.
    pub(crate) fn finish(&self, prepared: Prepared) {
        drop(prepared);
        self.gpuvm.deferred_cleanup();
    }

    /// The buffers mapped in `start..end`, each once, with whether a job writes them.
    pub(crate) fn buffers(
        &self,
        ranges: &[(u64, u64, bool)],
    ) -> Result<KVec<(ARef<Object>, bool)>> {
        let mut out = KVec::<(ARef<Object>, bool)>::new();
        for &(start, end, write) in ranges {
            let mut cur = start;
            while let Some(va) = self.gpuvm.find_first(cur..end) {
                let obj = va.obj();
                match out.iter_mut().find(|(o, _)| core::ptr::eq(&**o, obj)) {
                    Some((_, w)) => *w |= write,
                    None => out.push((obj.into(), write), GFP_KERNEL)?,
                }
                cur = va.range().end;
            }
        }
        Ok(out)
    }
}

/// How jobs use a buffer in its reservation object.
pub(crate) fn usage(write: bool) -> Usage {
    if write {
        Usage::Write
    } else {
        Usage::Read
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // The VM's memory is freed below; no job may still use it. The file is closed, so
        // nobody waits on its jobs: give the engine twice its job timeout.
        if let Some(last) = self.last.take() {
            let timeout = msecs_to_jiffies(2 * job_timeout_ms());
            if !matches!(last.wait_timeout(false, timeout), Ok(true)) {
                // Keep the tables, and the buffers through their mappings, which the job may
                // still use: the mappings keep the `drm_gpuvm` alive too.
                pr_err!("conflux: a closed file's job did not complete; leaking its VM\n");
                return;
            }
        }
        let mut vas = KVec::new();
        let mut guard = self.shared.state.lock();
        let st = &mut *guard;
        let Some(mut tables) = st.tables.take() else {
            return;
        };
        st.imports.clear();
        let mut ctx = BindCtx {
            tables: &mut tables,
            imports: &mut st.imports,
            locked: None,
            hw: None,
            vas: &mut vas,
            writable: false,
        };
        let range = self.gpuvm.va_range();
        let _ = self
            .gpuvm
            .sm_unmap(range.start, range.end - range.start, &mut ctx);
        drop(guard);
        self.gpuvm.deferred_cleanup();
        drop(tables);
    }
}

/// A member of a [`SharedVm`]: the VM of one file, on the file's device.
struct Member {
    /// The file, by address ([`File::id`](crate::file::File::id)).
    file: usize,
    dev: ARef<IoctlDevice>,
    vm: KBox<Vm>,
}

/// A VM that the files of several devices share: one VM per member device, kept in lockstep, so
/// that a buffer bound at an address is at that address on every member. A file's VM is a
/// `SharedVm` of one member until another file joins it.
///
/// # Invariants
///
/// Every member maps the same ranges at the same addresses, each to the buffer as its device
/// reaches it, but members whose device was unbound, which binds skip.
#[pin_data]
pub(crate) struct SharedVm {
    #[pin]
    members: Mutex<KVec<Member>>,
}

/// Runs `f` with a device's registered DRM device and hardware; [`ENODEV`] once it is unbound.
pub(crate) fn with_dev<R>(
    dev: &IoctlDevice,
    f: impl FnOnce(&ConfluxDevice<Registered>, &Hw<'_>) -> Result<R>,
) -> Result<R> {
    let guard = dev.registration_guard().ok_or(ENODEV)?;
    guard.registration_data_with(|hw| f(&guard, hw))
}

impl SharedVm {
    /// A VM of one member, for `file` on `dev`.
    pub(crate) fn new(file: usize, dev: &IoctlDevice) -> Result<Arc<Self>> {
        let vm = with_dev(dev, Vm::new)?;
        let mut members = KVec::new();
        members.push(
            Member {
                file,
                dev: dev.into(),
                vm: KBox::new(vm, GFP_KERNEL)?,
            },
            GFP_KERNEL,
        )?;
        Arc::pin_init(
            pin_init!(Self {
                members <- new_mutex!(members),
            }),
            GFP_KERNEL,
        )
    }

    /// Runs `f` on the VM of `file`'s member.
    pub(crate) fn with_member<R>(
        &self,
        file: usize,
        f: impl FnOnce(&mut Vm) -> Result<R>,
    ) -> Result<R> {
        let mut members = self.members.lock();
        let member = members.iter_mut().find(|m| m.file == file).ok_or(ENOENT)?;
        f(&mut member.vm)
    }

    /// The number of members, and the index of `file`'s.
    pub(crate) fn position(&self, file: usize) -> (usize, Option<usize>) {
        let members = self.members.lock();
        (members.len(), members.iter().position(|m| m.file == file))
    }

    /// Whether the VM has a single member, `file`, with nothing mapped.
    pub(crate) fn is_unused_but_by(&self, file: usize) -> bool {
        let members = self.members.lock();
        members.iter().all(|m| m.file == file && m.vm.is_empty())
    }

    /// Adds `file` on `dev` as a member, if nothing is mapped; returns the number of members and
    /// the new member's index.
    pub(crate) fn join(&self, file: usize, dev: &IoctlDevice) -> Result<(usize, usize)> {
        let vm = with_dev(dev, Vm::new)?;
        let vm = KBox::new(vm, GFP_KERNEL)?;
        let mut members = self.members.lock();
        if let Some(i) = members.iter().position(|m| m.file == file) {
            return Ok((members.len(), i));
        }
        if members.iter().any(|m| !m.vm.is_empty()) {
            return Err(EBUSY);
        }
        members.push(
            Member {
                file,
                dev: dev.into(),
                vm,
            },
            GFP_KERNEL,
        )?;
        Ok((members.len(), members.len() - 1))
    }

    /// Removes `file`'s member; its VM goes once its jobs are done.
    pub(crate) fn leave(&self, file: usize) {
        let gone = {
            let mut members = self.members.lock();
            members
                .iter()
                .position(|m| m.file == file)
                .and_then(|i| members.remove(i).ok())
        };
        // The VM waits for its jobs as it drops, outside the lock.
        drop(gone);
    }

    /// For `DRM_IOCTL_CONFLUX_VM_PATH`: the path of `member` to what is mapped at `va`, and the
    /// number of members.
    pub(crate) fn path(&self, member: usize, va: u64) -> Result<(u32, usize)> {
        let members = self.members.lock();
        let m = members.get(member).ok_or(ENOENT)?;
        Ok((m.vm.path_at(va), members.len()))
    }

    /// Applies `ops`, operations of `file` on device `dev` (whose hardware is `hw`), on every
    /// member, all or nothing.
    pub(crate) fn bind(
        &self,
        file: usize,
        dev: &IoctlDevice,
        hw: &Hw<'_>,
        ops: KVec<BindOp>,
    ) -> Result {
        let mut members = self.members.lock();
        // The operations of each member, with the buffers as its device reaches them.
        let mine = members.iter().position(|m| m.file == file).ok_or(ENOENT)?;
        let mut plans = KVec::<(usize, KVec<BindOp>)>::with_capacity(members.len(), GFP_KERNEL)?;
        for (i, m) in members.iter().enumerate() {
            if i == mine {
                continue;
            }
            if m.dev.registration_guard().is_none() {
                // The device is unbound: its VM runs no job any more.
                continue;
            }
            let mut theirs = KVec::with_capacity(ops.len(), GFP_KERNEL)?;
            for (j, op) in ops.iter().enumerate() {
                let op = op.for_device(dev, &m.dev).inspect_err(|e| {
                    dev_info!(
                        hw.pdev,
                        "VM_BIND: operation {}: member {} cannot reach the buffer: {:?}\n",
                        j,
                        i,
                        e
                    );
                })?;
                theirs.push(op, GFP_KERNEL)?;
            }
            plans.push((i, theirs), GFP_KERNEL)?;
        }
        plans.push((mine, ops), GFP_KERNEL)?;
        // Check, wait and allocate on every member before anything changes.
        let mut prepared = KVec::with_capacity(plans.len(), GFP_KERNEL)?;
        let mut result = Ok(());
        for (i, ops) in plans.iter() {
            let m = &mut members[*i];
            match with_dev(&m.dev, |_, hw| m.vm.prepare(hw, ops)) {
                Ok(p) => prepared.push(p, GFP_KERNEL)?,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let mut resvs = KVec::new();
        if result.is_ok() {
            for (_, ops) in plans.iter() {
                imported_resvs(ops, &mut resvs)?;
            }
        }
        let locked = match (&result, resvs.is_empty()) {
            (Ok(()), false) => match ResvSet::lock(&resvs, true, GFP_KERNEL) {
                Ok(set) => Some(set),
                Err(e) => {
                    result = Err(e);
                    None
                }
            },
            _ => None,
        };
        // Map the imported buffers and reserve page tables on every member, then commit.
        let mut reserved = 0;
        if result.is_ok() {
            for ((i, ops), p) in plans.iter().zip(prepared.iter()) {
                let m = &members[*i];
                result = with_dev(&m.dev, |_, hw| m.vm.reserve(hw, ops, p, locked.as_ref()));
                if result.is_err() {
                    break;
                }
                reserved += 1;
            }
        }
        if result.is_ok() {
            for ((i, ops), p) in plans.iter().zip(prepared.iter_mut()) {
                let m = &mut members[*i];
                // A device unbound since is skipped, as above; nothing else can fail here.
                if let Err(e) = with_dev(&m.dev, |_, hw| m.vm.commit(hw, ops, p, locked.as_ref())) {
                    pr_err!("conflux: VM_BIND: member {} failed to commit: {:?}\n", i, e);
                }
            }
        } else {
            for (i, _) in plans.iter().take(reserved) {
                members[*i].vm.unreserve();
            }
        }
        drop(locked);
        for ((i, _), p) in plans.iter().zip(prepared) {
            members[*i].vm.finish(p);
        }
        result
    }
}
