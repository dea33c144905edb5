// SPDX-License-Identifier: GPL-2.0

//! VM_BIND as a transaction on one device's VM: allocate, then change.
//!
//! A bind allocates all its operations can need (the `drm_gpuva`s of new and split mappings,
//! page tables, a spare table per 2 MiB entry) before it changes anything. A MAP replaces what
//! it overlaps, as `drm_gpuvm_sm_map()` splits and removes it; a NULL map maps the VM's own
//! memoryless object, whose pages the device reads as zeros. The changes themselves cannot fail,
//! so the VM is either changed as a whole or not at all. The steps, [`Vm::prepare`],
//! [`Vm::allocate`], [`Vm::reserve_tables`], [`Vm::map_imports`], [`Vm::commit`] and
//! [`Vm::finish`], are taken in turn on every member of a shared VM by
//! [`SharedVm::bind`](super::shared::SharedVm::bind).

use core::{
    ops::Range,
    ptr, //
};

use kernel::{
    dma_fence::Fence,
    dma_resv::{
        DmaResv,
        ResvSet, //
    },
    drm::gpuvm::{
        DriverGpuVm,
        GpuVaAlloc,
        GpuVmBo,
        OpMap,
        OpMapRequest,
        OpMapped,
        OpRemap,
        OpRemapped,
        OpUnmap,
        OpUnmapped, //
    },
    prelude::*,
    sizes::SZ_4K,
    sync::{
        aref::ARef,
        Arc, //
    },
    uapi,
};

use crate::{
    driver::{
        ConfluxDrm,
        IoctlDevice,
        Object, //
    },
    gem::moves,
    hw::DeviceData,
    mmu::{
        address_space::{
            Movable,
            MovableRange, //
        },
        MapRange,
        PageTables,
        PendingLog,
        Target, //
    },
    prime,
    regs::{
        CAP_MMU_NULL,
        TABLE_ENTRIES,
        TABLE_SIZE, //
    },
};

use super::{
    queue::PendingBind,
    Vm, //
};

/// The driver's side of a `drm_gpuvm`.
pub(crate) struct VmData;

/// What the `drm_gpuvm` steps of one operation work with.
pub(crate) struct BindCtx<'a> {
    pub(super) tables: &'a mut PageTables,
    /// Where buffers whose memory can change are mapped; room for the records the operation
    /// adds.
    pub(super) movable: &'a mut Movable,
    /// The reservation locks of the imported buffers the operations map.
    pub(super) locked: Option<&'a ResvSet<'a>>,
    /// The device; `None` when the VM is torn down: only the tree changes then, and the tables
    /// are freed after.
    pub(super) data: Option<&'a DeviceData<'a>>,
    /// Preallocated `drm_gpuva`s.
    pub(super) vas: &'a mut KVec<GpuVaAlloc<VmData>>,
    pub(super) writable: bool,
    /// The VM's memoryless object: what NULL mappings map.
    pub(super) null: &'a Object,
}

impl BindCtx<'_> {
    fn va(&mut self) -> Result<GpuVaAlloc<VmData>> {
        // Not reached: `Vm::prepare` allocates as many as the operations can take.
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
        let data = ctx.data.ok_or(EINVAL)?;
        let va = ctx.va()?;
        let obj = op.obj();
        if ptr::eq(obj, ctx.null) {
            ctx.tables.map(
                &data.vram,
                op.addr(),
                Target::Null,
                op.length(),
                ctx.writable,
            )?;
            return Ok(op.insert(va, ()));
        }
        let table = match (obj.imported(), ctx.locked) {
            (Some(imp), Some(locked)) => Some(imp.table(data, locked)?),
            (Some(_), None) => return Err(EINVAL),
            (None, _) => None,
        };
        let range = MapRange {
            va: op.addr(),
            len: op.length(),
            offset: op.gem_offset(),
            writable: ctx.writable,
        };
        obj.map(&data.vram, ctx.tables, table, &range)?;
        if obj.may_change() {
            ctx.movable.push(MovableRange {
                id: obj.id(),
                range,
                valid: true,
            })?;
        }
        Ok(op.insert(va, ()))
    }

    fn sm_step_unmap<'op, 'ctx>(
        &mut self,
        op: OpUnmap<'op, Self>,
        ctx: &mut BindCtx<'ctx>,
    ) -> Result<OpUnmapped<'op, Self>> {
        let r = op.va().range();
        if let Some(data) = ctx.data {
            ctx.tables.unmap(&data.vram, r.start, r.end - r.start);
        }
        ctx.movable.cut(r.start, r.end);
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
        if let Some(data) = ctx.data {
            ctx.tables.unmap(&data.vram, from, to - from);
        }
        ctx.movable.cut(from, to);
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
    /// Map `range` bytes of NULL pages at `va`: reads return zeros, writes are dropped.
    MapNull { va: u64, range: u64 },
    /// Unmap `va..va + range`.
    Unmap { va: u64, range: u64 },
}

impl BindOp {
    /// The operation as a member of a shared VM on device `to` does it, for a caller on `from`.
    pub(super) fn for_device(&self, from: &IoctlDevice, to: &IoctlDevice) -> Result<Self> {
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
                bo: prime::for_device(bo, from, to)?,
                offset: *offset,
                writable: *writable,
            },
            BindOp::MapNull { va, range } => BindOp::MapNull {
                va: *va,
                range: *range,
            },
            BindOp::Unmap { va, range } => BindOp::Unmap {
                va: *va,
                range: *range,
            },
        })
    }

    /// The virtual addresses the operation covers.
    pub(super) fn span(&self) -> Range<u64> {
        match *self {
            BindOp::Map { va, range, .. }
            | BindOp::MapNull { va, range }
            | BindOp::Unmap { va, range } => va..va + range,
        }
    }
}

/// What a VM_BIND call allocated for a VM before it changed anything, besides the `drm_gpuva`s
/// it put in the VM's reserve.
pub(crate) struct Prepared {
    /// A `drm_gpuvm_bo` per map, in order.
    vm_bos: KVec<ARef<GpuVmBo<VmData>>>,
    /// The page tables the maps can need.
    tables: usize,
    /// For a bind of a queue: the log of the entries it changes in VRAM, allocated by
    /// [`Vm::allocate`], then filled by [`Vm::commit`].
    pub(super) log: Option<Arc<PendingLog>>,
}

impl Prepared {
    /// What a call of UNMAPs needs: nothing.
    pub(super) fn unmaps() -> Self {
        Self {
            vm_bos: KVec::new(),
            tables: 0,
            log: None,
        }
    }
}

/// The most entries that applying `ops` writes to VRAM, which their log holds: for each
/// operation, every 4 KiB page it unmaps and maps, the directory and the 2 MiB entry of each
/// 2 MiB region it maps, and the directories of the two 2 MiB entries it may split.
fn log_writes(ops: &[BindOp]) -> usize {
    ops.iter()
        .map(|op| {
            let span = op.span();
            let len = span.end - span.start;
            // CAST: at most 2^36 pages in the 48-bit space.
            let pages = (len / SZ_4K as u64) as usize;
            let regions = ((span.end - 1) >> 21) - (span.start >> 21) + 1;
            let unmap = pages + 2 * 2 + 2;
            match op {
                BindOp::Unmap { .. } => unmap,
                // CAST: as above.
                _ => unmap + pages + 2 * regions as usize,
            }
        })
        .fold(TABLE_ENTRIES, usize::saturating_add)
}

/// The most UNMAP operations of one call that need no memory: the VM keeps in reserve the
/// `drm_gpuva`s and address-space records that this many splits in the middle of a mapping take.
pub(crate) const RESERVED_UNMAPS: usize = uapi::DRM_CONFLUX_UNMAP_RESERVED_OPS as usize;

/// The `drm_gpuva`s a VM keeps in reserve between calls: two per reserved UNMAP (the halves of
/// a mapping split in the middle), and one that a split takes before it gives one back.
pub(super) const RESERVED_VAS: usize = 2 * RESERVED_UNMAPS + 1;

/// The most `drm_gpuva`s that applying `ops` takes: a MAP its own and two halves of a mapping
/// it splits, an UNMAP the two halves, and one more that a split takes before it gives one
/// back. The reserve holds them all for [`RESERVED_UNMAPS`] UNMAPs.
fn vas_needed(ops: &[BindOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            BindOp::Unmap { .. } => 2,
            _ => 3,
        })
        .sum::<usize>()
        + 1
}

/// The page tables that the maps among `ops` can take beyond those `tables` has.
fn missing_tables(tables: &PageTables, ops: &[BindOp]) -> usize {
    ops.iter()
        .filter(|op| !matches!(op, BindOp::Unmap { .. }))
        .map(|op| {
            let span = op.span();
            tables.missing(span.start, span.end - span.start)
        })
        .sum()
}

/// Whether every operation of `ops` is an UNMAP: a call that must not fail for lack of memory.
pub(crate) fn only_unmaps(ops: &[BindOp]) -> bool {
    ops.iter().all(|op| matches!(op, BindOp::Unmap { .. }))
}

/// Adds the reservation objects of the imported buffers that `ops` map to `resvs`.
pub(super) fn imported_resvs<'a>(ops: &'a [BindOp], resvs: &mut KVec<&'a DmaResv>) -> Result {
    for op in ops {
        if let BindOp::Map { bo, .. } = op {
            if let Some(imp) = bo.imported() {
                resvs.push(imp.resv(), GFP_KERNEL_ACCOUNT)?;
            }
        }
    }
    Ok(())
}

impl Vm {
    /// The first step of a bind: waits for the VM's jobs when `ops` change mappings that exist,
    /// and allocates the `drm_gpuva`s and `drm_gpuvm_bo`s. Changes nothing a job sees.
    /// A bind of a queue (`wait` false) waits for nothing here: [`Vm::dependencies`] gives what
    /// its job waits for.
    pub(super) fn prepare(
        &mut self,
        data: &DeviceData<'_>,
        ops: &[BindOp],
        wait: bool,
    ) -> Result<Prepared> {
        let null_op = ops
            .iter()
            .position(|op| matches!(op, BindOp::MapNull { .. }));
        if let (Some(i), 0) = (null_op, data.info.caps & CAP_MMU_NULL) {
            dev_dbg!(
                data.pdev,
                "VM_BIND: operation {}: the device has no NULL pages (CAPS {:#x})\n",
                i,
                data.info.caps
            );
            return Err(EOPNOTSUPP);
        }
        if wait {
            self.wait_for_jobs(ops)?;
        }
        // The reserve of `drm_gpuva`s, refilled for this call and the reserved UNMAPs after it.
        // UNMAPs go on without the refill while the reserve holds what they take.
        let need = vas_needed(ops);
        if let Err(e) = self.refill(need + RESERVED_VAS) {
            if !only_unmaps(ops) || self.reserve.len() < need {
                return Err(e);
            }
        }
        let mut vm_bos = KVec::new();
        for op in ops {
            let obj = match op {
                BindOp::Map { bo, .. } => bo,
                BindOp::MapNull { .. } => &self.null,
                BindOp::Unmap { .. } => continue,
            };
            vm_bos.push(self.gpuvm.obtain(obj, ())?, GFP_KERNEL_ACCOUNT)?;
        }
        let tables = self
            .space
            .lock()
            .tables
            .as_ref()
            .map_or(0, |t| missing_tables(t, ops));
        Ok(Prepared {
            vm_bos,
            tables,
            log: None,
        })
    }

    /// Whether `ops` replace or remove a mapping that a job may use.
    fn changes_mappings(&self, ops: &[BindOp]) -> bool {
        ops.iter().any(|op| {
            let span = op.span();
            matches!(op, BindOp::Unmap { .. }) || self.gpuvm.find_first(span).is_some()
        })
    }

    /// Waits for the binds of queues in the 2 MiB regions of `ops` whose entries may not be in
    /// VRAM yet, and for the VM's jobs when `ops` replace or remove a mapping that a job may
    /// use; [`ERESTARTSYS`] when a signal comes first.
    pub(super) fn wait_for_jobs(&mut self, ops: &[BindOp]) -> Result {
        self.prune_pending();
        for p in self.pending.iter() {
            if ops.iter().any(|op| p.overlaps(&op.span())) {
                p.fence.wait(true)?;
            }
        }
        match &self.last {
            Some(last) if self.changes_mappings(ops) => last.wait(true),
            _ => Ok(()),
        }
    }

    /// What the job of a bind of `ops` on a queue waits for, given to `add`: the binds of other
    /// queues in the same 2 MiB regions whose entries may not be in VRAM yet, and the VM's last
    /// job when `ops` replace or remove a mapping that a job may use.
    pub(super) fn dependencies(
        &mut self,
        ops: &[BindOp],
        mut add: impl FnMut(&Fence) -> Result,
    ) -> Result {
        self.prune_pending();
        for p in self.pending.iter() {
            if ops.iter().any(|op| p.overlaps(&op.span())) {
                add(&p.fence)?;
            }
        }
        match &self.last {
            Some(last) if self.changes_mappings(ops) => add(last),
            _ => Ok(()),
        }
    }

    /// The buffers that `ops` map, and those mapped in their ranges, each once: what a bind of
    /// a queue keeps until its entries are in VRAM.
    pub(super) fn involved(&self, ops: &[BindOp], out: &mut KVec<ARef<Object>>) -> Result {
        let mut add = |obj: &Object| -> Result {
            if ptr::eq(obj, &*self.null) || out.iter().any(|o| ptr::eq(&**o, obj)) {
                return Ok(());
            }
            out.push(obj.into(), GFP_KERNEL_ACCOUNT)?;
            Ok(())
        };
        for op in ops {
            if let BindOp::Map { bo, .. } = op {
                add(bo)?;
            }
            let span = op.span();
            let mut cur = span.start;
            while let Some(va) = self.gpuvm.find_first(cur..span.end) {
                add(va.obj())?;
                cur = va.range().end;
            }
        }
        Ok(())
    }

    /// Records a bind of a queue, in the room [`Vm::allocate`] made.
    pub(super) fn add_pending(&mut self, bind: PendingBind) {
        // Cannot fail: room for one was made.
        let _ = self.pending.push_within_capacity(bind);
    }

    /// Whether the page tables of a bind that [`Vm::prepare`] counted need more VRAM than is
    /// available.
    pub(super) fn is_short(&self, data: &DeviceData<'_>, prepared: &Prepared) -> bool {
        // CAST: `usize` fits in `u64`.
        prepared.tables as u64 * TABLE_SIZE > data.vram.avail()
    }

    /// Makes room in VRAM for the page tables of a bind that [`Vm::prepare`] counted, by
    /// eviction of buffers other than `keep`, before any reservation lock is taken: the one
    /// step of a bind that moves other buffers, taken once every member has allocated all but
    /// its tables, and only when a first attempt found VRAM short ([`Vm::is_short`]). When the
    /// buffers it could evict do not add up to the shortage, it moves none: [`ENOSPC`]. A signal
    /// ends it before anything moved, [`ERESTARTSYS`]; other failures leave the shortage to the
    /// tables' allocation.
    pub(super) fn make_room(
        &self,
        data: &DeviceData<'_>,
        prepared: &Prepared,
        keep: &[ARef<Object>],
    ) -> Result {
        // Finished jobs may still hold buffers that are gone.
        data.engine.retire_finished();
        if !self.is_short(data, prepared) {
            return Ok(());
        }
        // CAST: `usize` fits in `u64`.
        let need = prepared.tables as u64 * TABLE_SIZE;
        let short = need.saturating_sub(data.vram.avail());
        let could = moves::evictable_bytes(data, keep)?;
        if could < short {
            dev_dbg!(
                data.pdev,
                "VM_BIND: {} page tables need {:#x} bytes more VRAM, eviction frees {:#x}\n",
                prepared.tables,
                short,
                could
            );
            return Err(ENOSPC);
        }
        match moves::make_room(data, need, keep) {
            Err(e) if e == ERESTARTSYS => Err(e),
            _ => Ok(()),
        }
    }

    /// Fills the reserve of `drm_gpuva`s up to `count`.
    fn refill(&mut self, count: usize) -> Result {
        self.reserve
            .reserve(count.saturating_sub(self.reserve.len()), GFP_KERNEL_ACCOUNT)?;
        while self.reserve.len() < count {
            let va = GpuVaAlloc::new(GFP_KERNEL_ACCOUNT)?;
            self.reserve.push_within_capacity(va).map_err(|_| ENOMEM)?;
        }
        Ok(())
    }

    /// The second step of a bind, before any reservation lock is taken: allocates what the
    /// operations need but page tables and the tables of imported buffers. A failure leaves
    /// nothing a job or another call sees.
    ///
    /// For a bind of a queue (`queued`), it also allocates the log of the entries the bind
    /// writes, and room for the bind in the VM's pending binds and for the tables it retires.
    pub(super) fn allocate(
        &mut self,
        ops: &[BindOp],
        prepared: &mut Prepared,
        queued: bool,
    ) -> Result {
        let ids = match queued {
            true => {
                self.pending.reserve(1, GFP_KERNEL_ACCOUNT)?;
                let mut objs = KVec::new();
                self.involved(ops, &mut objs)?;
                let mut ids = KVec::with_capacity(objs.len(), GFP_KERNEL_ACCOUNT)?;
                for obj in objs.iter() {
                    ids.push(obj.id(), GFP_KERNEL_ACCOUNT)?;
                }
                Some(ids)
            }
            false => None,
        };
        for op in ops {
            if let BindOp::Map { bo, .. } = op {
                if bo.may_change() {
                    bo.spaces().add(&self.space)?;
                }
            }
        }
        let mut guard = self.space.lock();
        let st = &mut *guard;
        let tables = st.tables.as_mut().ok_or(ENODEV)?;
        // Each operation adds at most two records: its map, and the split of one it cuts in the
        // middle; room for the reserved UNMAPs stays after them. UNMAPs go on without more
        // room while there is one free record each.
        if let Err(e) = st.movable.reserve(2 * ops.len() + RESERVED_UNMAPS) {
            if !only_unmaps(ops) || st.movable.room() < ops.len() {
                return Err(e);
            }
        }
        if let Some(ids) = ids {
            // Room to record the log among the address space's pending ones.
            st.logs.reserve(1, GFP_KERNEL_ACCOUNT)?;
            prepared.log = Some(PendingLog::new(tables, log_writes(ops), ids)?);
            // A 2 MiB entry can retire the level-0 table of each 2 MiB region a map covers.
            let regions = ops
                .iter()
                .filter(|op| !matches!(op, BindOp::Unmap { .. }))
                .map(|op| {
                    let span = op.span();
                    PageTables::tables_for(span.start, span.end - span.start)
                })
                .fold(0, usize::saturating_add);
            tables.reserve_retired(regions)?;
        }
        Ok(())
    }

    /// The third step of a bind, under the reservation locks: allocates the page tables the
    /// maps among `ops` can take, in VRAM ([`ENOSPC`] without room). On failure, the VM keeps
    /// no table it allocated. Taken again after [`Vm::map_imports`], it allocates what a move
    /// that mapping made changed.
    pub(super) fn reserve_tables(
        &mut self,
        data: &DeviceData<'_>,
        ops: &[BindOp],
        prepared: &Prepared,
    ) -> Result {
        let mut guard = self.space.lock();
        let tables = guard.tables.as_mut().ok_or(ENODEV)?;
        // Counted again: the tables in place are the same, but for one that an import's
        // revalidation made a spare, which the count then finds missing.
        let need = missing_tables(tables, ops);
        tables.reserve_spares(&data.vram, need).inspect_err(|e| {
            tables.trim();
            dev_dbg!(
                data.pdev,
                "VM_BIND: {} page tables ({} counted before): {:?} ({:#x} bytes of VRAM \
                 available)\n",
                need,
                prepared.tables,
                e,
                data.vram.avail()
            );
        })
    }

    /// The last step of a bind that can fail: maps (and checks) the tables of the imported
    /// buffers among `ops` that `moving` selects, under their reservation locks, `locked`.
    ///
    /// A buffer of a Conflux exporter moves to system memory at the map of an importer that has
    /// no route to its VRAM; those are `moving`, and are mapped first, so that the maps of the
    /// other members, after, find the buffer where it stays, and nothing that can fail comes
    /// after a move but the other maps.
    pub(super) fn map_imports(
        &self,
        data: &DeviceData<'_>,
        ops: &[BindOp],
        locked: &ResvSet<'_>,
        moving: bool,
    ) -> Result {
        for op in ops {
            if let BindOp::Map { bo, .. } = op {
                if let Some(imp) = bo.imported() {
                    if moving == (prime::path(bo) == uapi::DRM_CONFLUX_PATH_SYSTEM) {
                        imp.table(data, locked)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives back the page tables [`Vm::reserve_tables`] took, when another member of the VM
    /// failed.
    pub(super) fn release_spares(&self) {
        if let Some(tables) = self.space.lock().tables.as_mut() {
            tables.trim();
        }
    }

    /// The last step of a bind, which cannot fail: applies `ops` in order with what the steps
    /// before prepared. `locked` holds the reservation locks of the imported buffers.
    ///
    /// With a log ([`Vm::allocate`]), the entries go to it rather than to VRAM, and it is
    /// handed back in `prepared`, pending.
    pub(super) fn commit(
        &mut self,
        data: &DeviceData<'_>,
        ops: &[BindOp],
        prepared: &mut Prepared,
        locked: Option<&ResvSet<'_>>,
    ) -> Result {
        let mut guard = self.space.lock();
        let st = &mut *guard;
        let this_tables = st.tables.as_mut().ok_or(ENODEV)?;
        if let Some(log) = &prepared.log {
            log.start(this_tables);
        }
        let mut result = Ok(());
        let mut vm_bos = prepared.vm_bos.iter();
        for (i, op) in ops.iter().enumerate() {
            let writable = matches!(
                op,
                BindOp::Map { writable: true, .. } | BindOp::MapNull { .. }
            );
            let mut ctx = BindCtx {
                tables: this_tables,
                movable: &mut st.movable,
                locked,
                data: Some(data),
                vas: &mut self.reserve,
                writable,
                null: &self.null,
            };
            let vm_bo = match op {
                BindOp::Unmap { .. } => None,
                _ => vm_bos.next(),
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
                (BindOp::MapNull { va, range }, Some(vm_bo)) => self.gpuvm.sm_map(OpMapRequest {
                    addr: *va,
                    range: *range,
                    gem_offset: 0,
                    vm_bo,
                    context: &mut ctx,
                }),
                (BindOp::Unmap { va, range }, _) => self.gpuvm.sm_unmap(*va, *range, &mut ctx),
                _ => Err(EINVAL),
            };
            if let Err(e) = done {
                // Not reached: the checks and allocations before leave nothing to fail.
                dev_err!(
                    data.pdev,
                    "VM_BIND: operation {} failed after its checks: {:?}\n",
                    i,
                    e
                );
                result = Err(e);
                break;
            }
        }
        if let Some(log) = &prepared.log {
            let overflow = log.finish(this_tables);
            if overflow > 0 {
                // Not reached: the log holds what `log_writes` counts.
                dev_err!(
                    data.pdev,
                    "VM_BIND: {} entries did not fit in the bind's log\n",
                    overflow
                );
            }
        }
        this_tables.trim();
        if let Some(log) = &prepared.log {
            st.add_log(log.clone());
        }
        result
    }

    /// Drops what a bind prepared, once the reservation locks are released: the `drm_gpuvm_bo`s
    /// no mapping uses any more are freed under their objects' locks, and the reserve of
    /// `drm_gpuva`s keeps what the reserved UNMAPs need.
    pub(super) fn finish(&mut self, prepared: Prepared) {
        drop(prepared);
        self.gpuvm.deferred_cleanup();
        self.reserve.truncate(RESERVED_VAS);
    }
}
