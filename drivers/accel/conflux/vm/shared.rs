// SPDX-License-Identifier: GPL-2.0

//! VMs shared by the files of several devices: one VM per member device, kept in lockstep.
//!
//! A buffer bound at an address is at that address on every member, each through its own path
//! to the buffer. A bind is one transaction across the members: every member checks and
//! allocates, the imported buffers of all of them are locked together, every member provisions
//! its page tables, and only then does any of them change.

use core::ops::Range;

use kernel::{
    dma_fence::Fence,
    dma_resv::ResvSet,
    drm::gem::BaseObject,
    new_mutex,
    prelude::*,
    sync::{
        aref::ARef,
        Arc,
        Mutex, //
    },
};

use crate::{
    driver::{
        IoctlDevice,
        Object, //
    },
    engine::{
        job_timeout_ms,
        QueueId, //
    },
    hw::DeviceData,
    userq::Preempt, //
};

use kernel::{
    dma_fence::demand::DemandSource,
    time::Delta, //
};

use super::{
    bind::{
        imported_resvs,
        only_unmaps,
        BindOp,
        Prepared, //
    },
    queue::{
        to_regions,
        BindQueue,
        BindState,
        MemberLog,
        PendingBind,
        Pushed,
        QueuedBind, //
    },
    Vm,
};

/// The job of a bind of a queue, prepared before the reservation locks are taken.
struct PreparedJob<'q> {
    queue: &'q BindQueue,
    job: QueuedBind<'q>,
    state: Arc<BindState>,
    logs: KVec<MemberLog>,
    regions: KVec<KVec<Range<u64>>>,
}

impl PreparedJob<'_> {
    /// Pins the buffers the bind keeps, whose reservation locks `locked` holds, and queues the
    /// job: it waits for the commit ([`Pushed::release`]).
    fn queue(self, locked: Option<&ResvSet<'_>>) -> Result<QueuedCommit> {
        // The buffers stay where they are until the entries are written: eviction passes the
        // movable ones by, and exporters move the imported ones for no one (but a revocation,
        // which writes the pending logs first).
        self.state.pin(locked)?;
        // Dropped on failure, the job releases the pins.
        let pushed = self.queue.push(self.job)?;
        Ok(QueuedCommit {
            pushed,
            state: self.state,
            logs: self.logs,
            regions: self.regions,
        })
    }
}

/// A bind of a queue between its push and its commit.
struct QueuedCommit {
    pushed: Pushed,
    state: Arc<BindState>,
    /// Room for the log of every member.
    logs: KVec<MemberLog>,
    /// The 2 MiB regions of each member's operations.
    regions: KVec<KVec<Range<u64>>>,
}

/// How a VM_BIND call applies its operations.
pub(crate) enum BindMode<'a> {
    /// Before the call returns.
    Sync,
    /// As a job of `queue`, once the fences of `wait` have signalled.
    Queued {
        queue: &'a BindQueue,
        wait: &'a [ARef<Fence>],
    },
}

/// A member of a [`SharedVm`]: the VM of one file, on the file's device.
struct Member {
    /// The file, by the identity it gives itself (its address).
    file: usize,
    dev: ARef<IoctlDevice>,
    vm: KBox<Vm>,
    /// The preemption of the file's user queues, while it has some.
    preempt: Option<Arc<DemandSource<Preempt>>>,
}

/// Where a file stands in a [`SharedVm`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Membership {
    /// The number of members.
    pub(crate) members: usize,
    /// The file's index among them.
    pub(crate) index: usize,
}

/// The path of a member of a [`SharedVm`] to an address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemberPath {
    /// A `DRM_CONFLUX_PATH_*`, or 0 when nothing is mapped there.
    pub(crate) path: u32,
    /// The number of members.
    pub(crate) members: usize,
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
    /// Bind queues destroyed while binds were queued on them, kept until those are done: their
    /// entries are written in order with the VM's other binds.
    #[pin]
    draining: Mutex<KVec<Arc<BindQueue>>>,
    /// Long-running mode (`DRM_CONFLUX_VM_CREATE_LONG_RUNNING`): the VM hands userspace no
    /// dma-fence. Set at creation, never changed.
    long_running: bool,
}

impl SharedVm {
    /// A VM of one member, for `file` on `dev`, in long-running mode if `long_running`.
    pub(crate) fn new(file: usize, dev: &IoctlDevice, long_running: bool) -> Result<Arc<Self>> {
        let vm = DeviceData::with(dev, Vm::new)?;
        let mut members = KVec::new();
        members.push(
            Member {
                file,
                dev: dev.into(),
                vm: KBox::new(vm, GFP_KERNEL_ACCOUNT)?,
                preempt: None,
            },
            GFP_KERNEL_ACCOUNT,
        )?;
        Arc::pin_init(
            pin_init!(Self {
                members <- new_mutex!(members),
                draining <- new_mutex!(KVec::new()),
                long_running,
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Whether the VM is in long-running mode.
    pub(crate) fn is_long_running(&self) -> bool {
        self.long_running
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

    /// Where `file` stands: the number of members, and the index of `file`'s.
    pub(crate) fn membership(&self, file: usize) -> Result<Membership> {
        let members = self.members.lock();
        let index = members.iter().position(|m| m.file == file).ok_or(ENOENT)?;
        Ok(Membership {
            members: members.len(),
            index,
        })
    }

    /// Whether the VM has a single member, `file`, with nothing mapped.
    pub(crate) fn is_unused_but_by(&self, file: usize) -> bool {
        let members = self.members.lock();
        members.iter().all(|m| m.file == file && m.vm.is_empty())
    }

    /// Adds `file` on `dev` as a member, if nothing is mapped.
    pub(crate) fn join(&self, file: usize, dev: &IoctlDevice) -> Result<Membership> {
        let vm = DeviceData::with(dev, Vm::new)?;
        let vm = KBox::new(vm, GFP_KERNEL_ACCOUNT)?;
        let mut members = self.members.lock();
        if let Some(index) = members.iter().position(|m| m.file == file) {
            return Ok(Membership {
                members: members.len(),
                index,
            });
        }
        if members.iter().any(|m| !m.vm.is_empty()) {
            return Err(EBUSY);
        }
        members.push(
            Member {
                file,
                dev: dev.into(),
                vm,
                preempt: None,
            },
            GFP_KERNEL_ACCOUNT,
        )?;
        Ok(Membership {
            members: members.len(),
            index: members.len() - 1,
        })
    }

    /// Removes `file`'s member; its VM goes at once, what its jobs use once they are done.
    pub(crate) fn leave(&self, file: usize) {
        let gone = {
            let mut members = self.members.lock();
            members
                .iter()
                .position(|m| m.file == file)
                .and_then(|i| members.remove(i).ok())
        };
        // The VM's tree goes outside the lock.
        drop(gone);
    }

    /// Keeps `queue`, destroyed, until its binds are done; forgets the queues kept so that are.
    pub(crate) fn drain(&self, queue: Arc<BindQueue>) {
        let mut draining = self.draining.lock();
        draining.retain(|q| !q.is_idle());
        if queue.is_idle() {
            return;
        }
        if let Err(kernel::alloc::AllocError) = draining.push(queue.clone(), GFP_KERNEL) {
            // Without memory to keep it, wait for its binds here: dropping the queue would
            // write their entries before their fences.
            drop(draining);
            while !queue.is_idle() {
                kernel::time::delay::fsleep(kernel::time::Delta::from_millis(10));
            }
        }
    }

    /// For `DRM_IOCTL_CONFLUX_VM_PATH`: the path of `member` to what is mapped at `va`, a
    /// `DRM_CONFLUX_PATH_*`, and the number of members.
    pub(crate) fn path(&self, member: usize, va: u64) -> Result<MemberPath> {
        let members = self.members.lock();
        let m = members.get(member).ok_or(ENOENT)?;
        Ok(MemberPath {
            path: m.vm.path_at(va),
            members: members.len(),
        })
    }

    /// Sets the preemption of `file`'s user queues, and returns the one it replaces.
    pub(crate) fn set_preempt(
        &self,
        file: usize,
        preempt: Option<Arc<DemandSource<Preempt>>>,
    ) -> Result<Option<Arc<DemandSource<Preempt>>>> {
        let mut members = self.members.lock();
        let member = members.iter_mut().find(|m| m.file == file).ok_or(ENOENT)?;
        Ok(core::mem::replace(&mut member.preempt, preempt))
    }

    /// After a preemption that holds the queues `qs` of `file`'s member, whose preemption is
    /// `source`, on `data`'s device: brings the member's tables up to date with the buffers'
    /// memory, arms a new preemption fence in every buffer the member maps, and resumes the
    /// queues. Kills them when the tables or the fence cannot be made.
    pub(crate) fn rearm(
        &self,
        file: usize,
        data: &DeviceData<'_>,
        source: &DemandSource<Preempt>,
        qs: &[QueueId],
    ) {
        if let Err(e) = self.rearm_member(file, data, source) {
            if e != ENOENT {
                dev_err!(
                    data.pdev,
                    "user queues: their memory could not be mapped again after a preemption \
                     ({:?}); killing them\n",
                    e
                );
                data.engine.kill_queues(qs);
            }
        }
        data.engine.resume_queues(qs);
    }

    /// Brings the tables of `file`'s member up to date and arms a new fence of `source` in every
    /// buffer it maps ([`Vm::rearm`]).
    pub(crate) fn rearm_member(
        &self,
        file: usize,
        data: &DeviceData<'_>,
        source: &DemandSource<Preempt>,
    ) -> Result {
        self.with_member(file, |vm| vm.rearm(data, source))
    }

    /// Runs `f`, a change of the VM, with the user queues of every member stopped: they run
    /// again once every member's tables are up to date and armed with a new preemption fence.
    fn preempted<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        if !self.long_running {
            return f();
        }
        let mut held = KVec::new();
        for m in self.members.lock().iter() {
            if let Some(source) = &m.preempt {
                held.push((m.file, source.clone()), GFP_KERNEL_ACCOUNT)?;
            }
        }
        let timeout = Delta::from_millis(i64::from(job_timeout_ms()));
        let mut sets = KVec::with_capacity(held.len(), GFP_KERNEL_ACCOUNT)?;
        for (_, source) in held.iter() {
            let set = source.handler().queues();
            let _ = DeviceData::with(source.handler().dev(), |_, data| {
                data.engine.preempt_queues(set.get(), timeout);
                Ok(())
            });
            // Cannot fail: room was made.
            let _ = sets.push_within_capacity(set);
        }
        let result = f();
        for ((file, source), set) in held.iter().zip(sets.iter()) {
            let _ = DeviceData::with(source.handler().dev(), |_, data| {
                self.rearm(*file, data, source, set.get());
                Ok(())
            });
        }
        result
    }

    /// Applies `ops`, operations of `file` on device `dev` (whose data is `data`), on every
    /// member, all or nothing, as `mode` says. A bind of a queue returns its fence. On a
    /// long-running VM, the user queues of every member are stopped meanwhile.
    pub(crate) fn bind(
        &self,
        file: usize,
        dev: &IoctlDevice,
        data: &DeviceData<'_>,
        ops: KVec<BindOp>,
        mode: BindMode<'_>,
    ) -> Result<Option<ARef<Fence>>> {
        self.preempted(|| self.bind_unpreempted(file, dev, data, ops, mode))
    }

    /// [`Self::bind`], with the user queues stopped.
    fn bind_unpreempted(
        &self,
        file: usize,
        dev: &IoctlDevice,
        data: &DeviceData<'_>,
        ops: KVec<BindOp>,
        mode: BindMode<'_>,
    ) -> Result<Option<ARef<Fence>>> {
        let queued = match mode {
            BindMode::Sync if only_unmaps(&ops) => {
                return self.unmap_unpreempted(file, &ops).map(|()| None)
            }
            BindMode::Sync => None,
            BindMode::Queued { queue, wait } => Some((queue, wait)),
        };
        self.draining.lock().retain(|q| !q.is_idle());
        let mut members = self.members.lock();
        // The operations of each member, with the buffers as its device reaches them.
        let mine = members.iter().position(|m| m.file == file).ok_or(ENOENT)?;
        if let Some((queue, _)) = queued {
            if !queue.has_room() {
                if data.log_allowed() {
                    dev_info!(
                        data.pdev,
                        "VM_BIND: the bind queue holds {} binds already\n",
                        super::queue::MAX_QUEUED_BINDS
                    );
                }
                return Err(EAGAIN);
            }
        }
        let mut plans =
            KVec::<(usize, KVec<BindOp>)>::with_capacity(members.len(), GFP_KERNEL_ACCOUNT)?;
        for (i, m) in members.iter().enumerate() {
            if i == mine {
                continue;
            }
            if m.dev.registration_guard().is_none() {
                // The device is unbound: its VM runs no job any more.
                continue;
            }
            let mut theirs = KVec::with_capacity(ops.len(), GFP_KERNEL_ACCOUNT)?;
            for (j, op) in ops.iter().enumerate() {
                let op = op.for_device(dev, &m.dev).inspect_err(|e| {
                    if data.log_allowed() {
                        dev_info!(
                            data.pdev,
                            "VM_BIND: operation {}: member {} cannot reach the buffer: {:?}\n",
                            j,
                            i,
                            e
                        );
                    }
                })?;
                theirs.push(op, GFP_KERNEL_ACCOUNT)?;
            }
            plans.push((i, theirs), GFP_KERNEL_ACCOUNT)?;
        }
        plans.push((mine, ops), GFP_KERNEL_ACCOUNT)?;
        // A bind tries once without moving any buffer; only when page tables do not fit does
        // it evict, and try again: a bind that fails for another reason moved nothing.
        let mut short = false;
        match Self::transaction(&mut members, &plans, queued, false, &mut short) {
            Err(e) if e == ENOSPC && short => {
                Self::transaction(&mut members, &plans, queued, true, &mut short)
            }
            result => result,
        }
    }

    /// One attempt at the transaction of [`SharedVm::bind`]: `plans` on every member of
    /// `members`, on `queued` or synchronously. Makes room in VRAM first when `evict` says;
    /// sets `short` when a member's page tables need more VRAM than it has available. A failed
    /// attempt leaves every member as before.
    ///
    /// The steps that can fail come in this order, so that as few as possible come after one
    /// that moves a buffer: the waits and every allocation but page tables, the evictions, the
    /// reservation locks (not interruptible once buffers were evicted), the page tables, the
    /// maps of imported buffers (those that move to system memory first) and the pins of a
    /// bind of a queue.
    fn transaction(
        members: &mut [Member],
        plans: &[(usize, KVec<BindOp>)],
        queued: Option<(&BindQueue, &[ARef<Fence>])>,
        evict: bool,
        short: &mut bool,
    ) -> Result<Option<ARef<Fence>>> {
        // Wait for the jobs of every member first, so that a signal ends the call before any
        // member allocated; then allocate on every member.
        if queued.is_none() {
            for (i, ops) in plans.iter() {
                members[*i].vm.wait_for_jobs(ops)?;
            }
        }
        let mut prepared = KVec::with_capacity(plans.len(), GFP_KERNEL_ACCOUNT)?;
        let mut result = Ok(());
        for (i, ops) in plans.iter() {
            let m = &mut members[*i];
            let wait = queued.is_none();
            match DeviceData::with(&m.dev, |_, data| m.vm.prepare(data, ops, wait)) {
                Ok(p) => prepared.push(p, GFP_KERNEL_ACCOUNT)?,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        for ((i, _), p) in plans.iter().zip(prepared.iter()) {
            let m = &members[*i];
            // An unbound member is skipped, as below.
            *short |=
                DeviceData::with(&m.dev, |_, data| Ok(m.vm.is_short(data, p))).unwrap_or(false);
        }
        if result.is_ok() {
            for ((i, ops), p) in plans.iter().zip(prepared.iter_mut()) {
                result = members[*i].vm.allocate(ops, p, queued.is_some());
                if result.is_err() {
                    break;
                }
            }
        }
        // The buffers the bind maps or unmaps: eviction passes them by, and a bind of a queue
        // keeps them, and pins them under their locks.
        let mut involved = KVec::new();
        if result.is_ok() && (queued.is_some() || evict) {
            for (i, ops) in plans.iter() {
                result = members[*i].vm.involved(ops, &mut involved);
                if result.is_err() {
                    break;
                }
            }
        }
        let mut job = None;
        if let (Ok(()), Some((queue, wait))) = (&result, queued) {
            match Self::prepare_job(queue, wait, members, plans, &involved) {
                Ok(j) => job = Some(j),
                Err(e) => result = Err(e),
            }
        }
        // Room in VRAM is made (the step that moves other buffers) only when `evict` says,
        // before any lock is taken.
        if result.is_ok() && evict {
            for ((i, _), p) in plans.iter().zip(prepared.iter()) {
                let m = &members[*i];
                result = DeviceData::with(&m.dev, |_, data| m.vm.make_room(data, p, &involved));
                if result.is_err() {
                    break;
                }
            }
        }
        let mut resvs = KVec::new();
        if result.is_ok() {
            result = (|| -> Result {
                for (_, ops) in plans.iter() {
                    imported_resvs(ops, &mut resvs)?;
                }
                if queued.is_some() {
                    for bo in involved.iter() {
                        match bo.imported() {
                            Some(imp) => resvs.push(imp.resv(), GFP_KERNEL_ACCOUNT)?,
                            None if bo.movable() => {
                                resvs.push(bo.dma_resv(), GFP_KERNEL_ACCOUNT)?
                            }
                            None => {}
                        }
                    }
                }
                Ok(())
            })();
        }
        // After evictions, a signal does not end the call: they were made for it.
        let locked = match (&result, resvs.is_empty()) {
            (Ok(()), false) => {
                match ResvSet::lock(resvs.iter().copied(), !evict, GFP_KERNEL_ACCOUNT) {
                    Ok(set) => Some(set),
                    Err(e) => {
                        result = Err(e);
                        None
                    }
                }
            }
            _ => None,
        };
        if result.is_ok() {
            result = Self::place(members, plans, &prepared, locked.as_ref());
        }
        // A bind of a queue: its buffers pinned, its job queued behind a gate that opens once
        // every member has committed; the last step that can fail.
        let mut commit_to = None;
        if let (Ok(()), Some(job)) = (&result, job) {
            match job.queue(locked.as_ref()) {
                Ok(q) => commit_to = Some(q),
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() {
            for ((i, ops), p) in plans.iter().zip(prepared.iter_mut()) {
                let m = &mut members[*i];
                // A device unbound since is skipped, as above; nothing else can fail here.
                let committed =
                    DeviceData::with(&m.dev, |_, data| m.vm.commit(data, ops, p, locked.as_ref()));
                if let Err(e) = committed {
                    pr_err!("VM_BIND: member {} failed to commit: {:?}\n", i, e);
                }
                if let (Some(log), Some(q)) = (p.log.take(), commit_to.as_mut()) {
                    // Cannot fail: room for every member was made.
                    let _ = q.logs.push_within_capacity(m.vm.member_log(&m.dev, log));
                }
            }
        } else {
            for (i, _) in plans.iter() {
                members[*i].vm.release_spares();
            }
        }
        let fence = commit_to.map(|q| {
            q.state.set_logs(q.logs);
            for ((i, _), regions) in plans.iter().zip(q.regions) {
                members[*i].vm.add_pending(PendingBind {
                    fence: q.pushed.fence.clone(),
                    regions,
                    state: q.state.clone(),
                });
            }
            let fence = q.pushed.fence.clone();
            q.pushed.release();
            fence
        });
        drop(locked);
        for ((i, _), p) in plans.iter().zip(prepared) {
            members[*i].vm.finish(p);
        }
        result.map(|()| fence)
    }

    /// The steps of [`SharedVm::transaction`] under the reservation locks, `locked`, that can
    /// fail: the page tables of every member, then the tables of the imported buffers, first
    /// those that move to system memory for a member without a route to their VRAM, and the
    /// page tables again for what such a move changed.
    fn place(
        members: &mut [Member],
        plans: &[(usize, KVec<BindOp>)],
        prepared: &[Prepared],
        locked: Option<&ResvSet<'_>>,
    ) -> Result {
        for ((i, ops), p) in plans.iter().zip(prepared.iter()) {
            let m = &mut members[*i];
            DeviceData::with(&m.dev, |_, data| m.vm.reserve_tables(data, ops, p))?;
        }
        let Some(locked) = locked else {
            return Ok(());
        };
        for moving in [true, false] {
            for (i, ops) in plans.iter() {
                let m = &members[*i];
                DeviceData::with(&m.dev, |_, data| {
                    m.vm.map_imports(data, ops, locked, moving)
                })?;
            }
        }
        for ((i, ops), p) in plans.iter().zip(prepared.iter()) {
            let m = &mut members[*i];
            DeviceData::with(&m.dev, |_, data| m.vm.reserve_tables(data, ops, p))?;
        }
        Ok(())
    }

    /// Prepares the job of a bind of `queue` that waits for `wait`, with the dependencies of
    /// each member's operations (`plans`), and that keeps `involved`; it is queued by
    /// [`PreparedJob::queue`], under the locks.
    fn prepare_job<'q>(
        queue: &'q BindQueue,
        wait: &[ARef<Fence>],
        members: &mut [Member],
        plans: &[(usize, KVec<BindOp>)],
        involved: &[ARef<Object>],
    ) -> Result<PreparedJob<'q>> {
        let mut regions = KVec::with_capacity(plans.len(), GFP_KERNEL_ACCOUNT)?;
        for (_, ops) in plans.iter() {
            let mut mine = KVec::with_capacity(ops.len(), GFP_KERNEL_ACCOUNT)?;
            for op in ops.iter() {
                mine.push(to_regions(&op.span()), GFP_KERNEL_ACCOUNT)?;
            }
            regions.push(mine, GFP_KERNEL_ACCOUNT)?;
        }
        let logs = KVec::with_capacity(plans.len(), GFP_KERNEL_ACCOUNT)?;
        let mut keep = KVec::with_capacity(involved.len(), GFP_KERNEL_ACCOUNT)?;
        for bo in involved {
            keep.push(bo.clone(), GFP_KERNEL_ACCOUNT)?;
        }
        let state = BindState::new(keep)?;
        let mut job = queue.prepare(state.clone())?;
        for fence in wait.iter() {
            job.add_dependency(fence)?;
        }
        for (i, ops) in plans.iter() {
            let vm = &mut members.get_mut(*i).ok_or(EINVAL)?.vm;
            vm.dependencies(ops, |f| job.add_dependency(f))?;
        }
        Ok(PreparedJob {
            queue,
            job,
            state,
            logs,
            regions,
        })
    }

    /// Applies `ops`, all UNMAPs of `file`, on every member, all or nothing, without
    /// allocating memory while the members' reserves hold what they take ([`Prepared::unmaps`]),
    /// but to stop the user queues of a long-running VM meanwhile.
    pub(crate) fn unmap(&self, file: usize, ops: &[BindOp]) -> Result {
        self.preempted(|| self.unmap_unpreempted(file, ops))
    }

    /// [`Self::unmap`], with the user queues stopped.
    fn unmap_unpreempted(&self, file: usize, ops: &[BindOp]) -> Result {
        let mut members = self.members.lock();
        members.iter().position(|m| m.file == file).ok_or(ENOENT)?;
        // Members whose device is unbound run no job any more, and are skipped.
        let live = |m: &Member| m.dev.registration_guard().is_some();
        // Wait for the jobs and check the reserves on every member before anything changes.
        for m in members.iter_mut().filter(|m| live(m)) {
            DeviceData::with(&m.dev, |_, data| {
                let mut p = m.vm.prepare(data, ops, true)?;
                m.vm.allocate(ops, &mut p, false)?;
                m.vm.reserve_tables(data, ops, &p)
            })?;
        }
        for (i, m) in members.iter_mut().enumerate() {
            let unmapped = DeviceData::with(&m.dev, |_, data| {
                m.vm.commit(data, ops, &mut Prepared::unmaps(), None)
            });
            if let Err(e) = unmapped {
                if live(m) {
                    pr_err!("VM_BIND: member {} failed to unmap: {:?}\n", i, e);
                }
            }
            m.vm.finish(Prepared::unmaps());
        }
        Ok(())
    }
}
