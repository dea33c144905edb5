// SPDX-License-Identifier: GPL-2.0

//! The GPU virtual address space of one device: a `drm_gpuvm` and the device's page tables,
//! kept in step.
//!
//! A file's VM is a [`SharedVm`](shared::SharedVm), of one member until files of other devices
//! join it ([`shared`]). Binds change it as one transaction ([`bind`]). A job maps again the
//! ranges of its buffers whose memory changed since they were bound ([`Vm::revalidate`]).

pub(crate) mod bind;
pub(crate) mod queue;
pub(crate) mod shared;

use core::{
    ops::Range,
    ptr, //
};

use kernel::{
    dma_fence::{
        demand::{
            DemandHandler,
            DemandSource, //
        },
        Fence,
    },
    dma_resv::{
        DmaResv,
        ResvSet,
        Usage, //
    },
    drm::{
        gem::BaseObject,
        gpuvm::{
            GpuVaAlloc,
            GpuVm,
            UniqueRefGpuVm, //
        },
        Registered,
    },
    prelude::*,
    sizes::SZ_4K,
    sync::{
        aref::ARef,
        Arc, //
    },
    time::Jiffies,
    uapi,
};

use crate::{
    driver::{
        ConfluxDevice,
        Object, //
    },
    gem::{
        memory::Memory,
        Contents, //
    },
    hw::{
        DeviceData,
        KERNEL_VA_BASE,
        USER_VA_START, //
    },
    mmu::{
        address_space::{
            AddressSpace,
            KeptTables, //
        },
        PageCounts,
        PageTables,
        PendingLog, //
    },
    prime,
};

use bind::{
    BindCtx,
    VmData,
    RESERVED_UNMAPS, //
};
use queue::{
    BindState,
    MemberLog,
    PendingBind, //
};

/// A range of virtual addresses that a job reads, or writes.
#[derive(Clone, Debug)]
pub(crate) struct Access {
    pub(crate) range: Range<u64>,
    pub(crate) write: bool,
}

/// A buffer that a job uses, and whether it writes it.
pub(crate) struct Used {
    pub(crate) bo: ARef<Object>,
    pub(crate) write: bool,
}

/// How jobs use a buffer in its reservation object.
pub(crate) fn usage(write: bool) -> Usage {
    if write {
        Usage::Write
    } else {
        Usage::Read
    }
}

/// A GPU virtual address space of one device.
///
/// # Invariants
///
/// The tables of `space` map exactly what `gpuvm` holds, each mapping to its buffer's memory,
/// but for the ranges of imported buffers recorded as invalid, which are unmapped; they keep a
/// spare table per 2 MiB entry. No job but the one of `last` and earlier ones uses the VM, and
/// each holds `kept`. The tables are taken out of `space` only in `drop`, and handed to `kept`.
/// `root` is their level-3 table. `null` has no memory; the ranges mapped to it are NULL pages.
/// Between calls, `reserve` holds [`bind::RESERVED_VAS`] `drm_gpuva`s, and the records of
/// `space` room for [`RESERVED_UNMAPS`] more, unless a call of UNMAPs took them when memory ran
/// out. `pending` holds the binds of bind queues whose entries may not be in VRAM yet, in the
/// order of their calls.
pub(crate) struct Vm {
    gpuvm: UniqueRefGpuVm<VmData>,
    /// `drm_gpuva`s for the new mappings of a bind, and for the splits of UNMAPs that cannot
    /// allocate.
    reserve: KVec<GpuVaAlloc<VmData>>,
    /// The object that carries the VM's reservation object, and that NULL mappings map.
    null: ARef<Object>,
    space: Arc<AddressSpace>,
    root: u64,
    /// The fence of the last job submitted on the VM.
    last: Option<ARef<Fence>>,
    kept: Arc<KeptTables>,
    pending: KVec<PendingBind>,
}

impl Vm {
    /// A VM with nothing mapped, spanning [`USER_VA_START`] to [`KERNEL_VA_BASE`].
    pub(crate) fn new(dev: &ConfluxDevice<Registered>, data: &DeviceData<'_>) -> Result<Self> {
        // The object that carries the VM's reservation object; it has no memory.
        let null = Object::new(dev, SZ_4K, Contents::local(Memory::None, None)?)
            .map_err(crate::gem::create_error)?;
        let gpuvm = GpuVm::new::<Error, _>(
            c"conflux",
            dev,
            &*null,
            USER_VA_START..KERNEL_VA_BASE,
            0..0,
            VmData,
        )?;
        let tables = PageTables::new(&data.vram)?;
        let root = tables.root();
        let mut reserve = KVec::with_capacity(bind::RESERVED_VAS, GFP_KERNEL_ACCOUNT)?;
        for _ in 0..bind::RESERVED_VAS {
            reserve.push(GpuVaAlloc::new(GFP_KERNEL_ACCOUNT)?, GFP_KERNEL_ACCOUNT)?;
        }
        Ok(Self {
            gpuvm,
            reserve,
            null,
            space: AddressSpace::new(tables, RESERVED_UNMAPS)?,
            root,
            last: None,
            kept: KeptTables::new()?,
            pending: KVec::new(),
        })
    }

    /// The VRAM offset of the level-3 table, for jobs.
    pub(crate) fn root(&self) -> u64 {
        self.root
    }

    /// What a job on the VM holds until it is dropped: the tables outlive the VM until then.
    pub(crate) fn kept_tables(&self) -> Arc<KeptTables> {
        self.kept.clone()
    }

    /// The log of this member for a bind of a queue, on `dev`, once it committed.
    fn member_log(&self, dev: &crate::driver::IoctlDevice, log: Arc<PendingLog>) -> MemberLog {
        MemberLog::new(dev, log, self.kept.clone())
    }

    /// Forgets the pending binds whose fences have signalled: their entries are in VRAM.
    fn prune_pending(&mut self) {
        self.pending.retain(|p| !p.fence.is_signaled());
    }

    /// What the binds whose entries may not be in VRAM yet keep, for a job submitted meanwhile,
    /// which may walk the entries they replace.
    pub(crate) fn pending_states(&mut self) -> Result<KVec<Arc<BindState>>> {
        self.prune_pending();
        let mut states = KVec::with_capacity(self.pending.len(), GFP_KERNEL_ACCOUNT)?;
        for p in self.pending.iter() {
            states.push(p.state.clone(), GFP_KERNEL_ACCOUNT)?;
        }
        Ok(states)
    }

    /// Records `fence` as the VM's last job.
    pub(crate) fn set_last(&mut self, fence: ARef<Fence>) {
        self.last = Some(fence);
    }

    /// The page-table entries and spare tables in use.
    pub(crate) fn pages(&self) -> PageCounts {
        self.space
            .lock()
            .tables
            .as_ref()
            .map_or(PageCounts::default(), PageTables::counts)
    }

    /// Maps again, in the tables, the ranges of the buffers among `buffers` whose memory changed
    /// since (their exporters invalidated them, or they moved), for a job: `locked` holds their
    /// reservation locks.
    pub(crate) fn revalidate(
        &mut self,
        data: &DeviceData<'_>,
        buffers: &[Used],
        locked: &ResvSet<'_>,
    ) -> Result {
        for Used { bo, .. } in buffers {
            let id = bo.id();
            if !bo.may_change() || !self.space.lock().movable.is_stale(id) {
                continue;
            }
            // Mapping an imported buffer can make its exporter move it and invalidate the tables
            // of its own VMs: not under the lock of these.
            let table = match bo.imported() {
                Some(imp) => Some(imp.table(data, locked)?),
                None => None,
            };
            let mut guard = self.space.lock();
            let st = &mut *guard;
            let tables = st.tables.as_mut().ok_or(ENODEV)?;
            for r in st.movable.stale(id) {
                let need = tables.missing(r.range.va, r.range.len);
                let mapped = tables
                    .reserve_spares(&data.vram, need)
                    .and_then(|()| bo.map(&data.vram, tables, table, &r.range));
                // Keep no spare table beyond one per 2 MiB entry, on every path.
                tables.trim();
                mapped?;
                r.valid = true;
            }
        }
        Ok(())
    }

    /// For the user queues of a long-running VM, stopped by a preemption that `source` holds:
    /// waits for the moves of every buffer the VM maps, maps again the ranges whose memory
    /// changed, and arms a new preemption fence of `source` in every buffer's reservation
    /// object (bookkeeping usage), which a move waits for. All under the buffers' reservation
    /// locks, so that nothing moves between the mapping and the fence.
    pub(crate) fn rearm<T: DemandHandler>(
        &mut self,
        data: &DeviceData<'_>,
        source: &DemandSource<T>,
    ) -> Result {
        let everything = Access {
            range: self.gpuvm.va_range(),
            write: false,
        };
        let buffers = self.buffers(core::iter::once(everything), 16)?;
        let mut resvs = KVec::<&DmaResv>::with_capacity(buffers.len(), GFP_KERNEL_ACCOUNT)?;
        for Used { bo, .. } in buffers.iter() {
            let resv = match bo.imported() {
                Some(imp) => imp.resv(),
                None => bo.dma_resv(),
            };
            if !resvs.iter().any(|r| ptr::eq(*r, resv)) {
                resvs.push(resv, GFP_KERNEL_ACCOUNT)?;
            }
        }
        let locked = ResvSet::lock(resvs.iter().copied(), false, GFP_KERNEL_ACCOUNT)?;
        for resv in resvs.iter() {
            while !resv.wait_timeout(Usage::Kernel, false, Jiffies::MAX)? {}
        }
        self.revalidate(data, &buffers, &locked)?;
        for resv in resvs.iter() {
            resv.reserve_locked(&locked, 1)?;
        }
        let fence = source.arm()?;
        for resv in resvs.iter() {
            // Cannot fail: a slot is reserved.
            resv.add_fence_locked(&locked, &fence, Usage::Bookkeep)?;
        }
        Ok(())
    }

    /// Whether nothing is mapped.
    pub(crate) fn is_empty(&self) -> bool {
        self.gpuvm.find_first(self.gpuvm.va_range()).is_none()
    }

    /// How the device reaches the buffer mapped at `va`, a `DRM_CONFLUX_PATH_*`
    /// (`DRM_CONFLUX_PATH_NULL` for NULL pages), or 0.
    pub(crate) fn path_at(&self, va: u64) -> u32 {
        match self.gpuvm.find_first(va..va.saturating_add(1)) {
            None => 0,
            Some(m) if ptr::eq(m.obj(), &*self.null) => uapi::DRM_CONFLUX_PATH_NULL,
            Some(m) => prime::path(m.obj()),
        }
    }

    /// The buffers mapped in the ranges of `accesses`, each once, with whether a job writes
    /// them (NULL pages are no buffer); room is made for `expected` of them at once.
    pub(crate) fn buffers(
        &self,
        accesses: impl Iterator<Item = Access>,
        expected: usize,
    ) -> Result<KVec<Used>> {
        let mut out = KVec::<Used>::with_capacity(expected, GFP_KERNEL_ACCOUNT)?;
        for access in accesses {
            let mut cur = access.range.start;
            while let Some(va) = self.gpuvm.find_first(cur..access.range.end) {
                let obj = va.obj();
                cur = va.range().end;
                if ptr::eq(obj, &*self.null) {
                    continue;
                }
                match out.iter_mut().find(|u| core::ptr::eq(&*u.bo, obj)) {
                    Some(used) => used.write |= access.write,
                    None => out.push(
                        Used {
                            bo: obj.into(),
                            write: access.write,
                        },
                        GFP_KERNEL_ACCOUNT,
                    )?,
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Jobs may still run on the VM: only the tree goes now. The buffers stay with the jobs
        // that use them, and the tables with `kept`, which every job holds until the engine
        // drops it once the device has finished or stopped it.
        let mut vas = KVec::new();
        let mut guard = self.space.lock();
        let st = &mut *guard;
        let Some(mut tables) = st.tables.take() else {
            return;
        };
        st.movable.clear();
        let mut ctx = BindCtx {
            tables: &mut tables,
            movable: &mut st.movable,
            locked: None,
            data: None,
            vas: &mut vas,
            writable: false,
            null: &self.null,
        };
        let range = self.gpuvm.va_range();
        let _ = self
            .gpuvm
            .sm_unmap(range.start, range.end - range.start, &mut ctx);
        drop(guard);
        self.gpuvm.deferred_cleanup();
        self.kept.keep(tables);
    }
}
