// SPDX-License-Identifier: GPL-2.0

//! An open file of a Conflux accel device: its VM, and the jobs WAIT may ask about.

use kernel::{
    dma_fence::{
        demand::DemandSource,
        Fence, //
    },
    drm::{
        self,
        Registered, //
    },
    new_mutex,
    prelude::*,
    sync::{
        aref::ARef,
        Arc,
        Mutex,
        MutexGuard, //
    },
};

use crate::{
    driver::{
        ConfluxDevice,
        ConfluxDrm,
        IoctlDevice, //
    },
    hw::DeviceData,
    userq::{
        Preempt,
        UserQueue,
        MAX_USER_QUEUES, //
    },
    vm::{
        queue::BindQueue,
        shared::SharedVm,
        Vm, //
    },
};

/// The most bind queues of a file.
const MAX_BIND_QUEUES: usize = kernel::uapi::DRM_CONFLUX_MAX_BIND_QUEUES as usize;

/// The bind queues of a file, by number.
struct BindQueues {
    /// The number of the last queue created.
    last: u32,
    queues: KVec<(u32, Arc<BindQueue>)>,
}

/// The user queues of a file, by number.
struct UserQueues {
    /// The number of the last queue created.
    last: u32,
    queues: KVec<(u32, Arc<UserQueue>)>,
    /// Their preemption, from the first queue on; the file's member of its VM holds it too.
    preempt: Option<Arc<DemandSource<Preempt>>>,
}

/// The most failed jobs whose result a file keeps for WAIT.
const KEPT_FAILURES: usize = 256;

/// The jobs of a file that WAIT may ask about.
///
/// # Invariants
///
/// `jobs` holds, in job order, every job up to `last` that has not completed successfully, but
/// failed jobs up to `forgotten`, beyond the [`KEPT_FAILURES`] most recent. Its capacity leaves
/// room for `reserved` more.
struct Jobs {
    last: u64,
    forgotten: u64,
    reserved: usize,
    jobs: KVec<(u64, ARef<Fence>)>,
}

/// What WAIT finds of a job.
pub(crate) enum JobState {
    /// The job completed successfully.
    Done,
    /// The job runs, or failed: its fence tells.
    Fence(ARef<Fence>),
    /// The job ended before the [`KEPT_FAILURES`] most recent failures: whether it failed is
    /// no longer known.
    Forgotten,
}

/// Room for one job in a file's records, taken before the job is submitted, so that
/// recording it cannot fail. Given back when dropped unused.
pub(crate) struct JobSlot<'a>(&'a File);

impl Drop for JobSlot<'_> {
    fn drop(&mut self) {
        let mut jobs = self.0.jobs.lock();
        jobs.reserved = jobs.reserved.saturating_sub(1);
    }
}

/// A client of the accel device.
#[pin_data(PinnedDrop)]
pub(crate) struct File {
    /// The file's VM, created at its first use, which the file may share with others.
    #[pin]
    vm: Mutex<Option<Arc<SharedVm>>>,
    #[pin]
    jobs: Mutex<Jobs>,
    #[pin]
    queues: Mutex<BindQueues>,
    /// Taken after the VM's slot when both are.
    #[pin]
    user_queues: Mutex<UserQueues>,
}

impl drm::file::DriverFile for File {
    type Driver = ConfluxDrm;

    fn open(_dev: &drm::Device<ConfluxDrm>) -> Result<Pin<KBox<Self>>> {
        KBox::try_pin_init(
            try_pin_init!(Self {
                vm <- new_mutex!(None),
                jobs <- new_mutex!(Jobs {
                    last: 0,
                    forgotten: 0,
                    reserved: 0,
                    jobs: KVec::new(),
                }),
                queues <- new_mutex!(BindQueues {
                    last: 0,
                    queues: KVec::new(),
                }),
                user_queues <- new_mutex!(UserQueues {
                    last: 0,
                    queues: KVec::new(),
                    preempt: None,
                }),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }
}

#[pinned_drop]
impl PinnedDrop for File {
    fn drop(self: Pin<&mut Self>) {
        let id = self.id();
        // The user queues stop before the VM they run on goes, and their preemption with them.
        let (queues, preempt) = {
            let mut user = self.user_queues.lock();
            (core::mem::take(&mut user.queues), user.preempt.take())
        };
        if let Some(source) = &preempt {
            for (_, queue) in queues.iter() {
                source.handler().remove(queue.hw());
            }
            source.flush();
        }
        for (_, queue) in queues {
            queue.stop();
        }
        if let Some(shared) = self.vm.lock().as_ref() {
            let _ = shared.set_preempt(id, None);
        }
        drop(preempt);
        let queues = core::mem::take(&mut self.queues.lock().queues);
        let shared = self.vm.lock().take();
        if let Some(shared) = shared {
            // Their binds go on, in order with the VM's others.
            for (_, queue) in queues {
                shared.drain(queue);
            }
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
    pub(crate) fn shared_vm(&self, dev: &IoctlDevice) -> Result<Arc<SharedVm>> {
        self.on_vm(dev, |shared| Ok(shared.clone()))
    }

    /// The VM of the file if it has one yet.
    pub(crate) fn current_vm(&self) -> Option<Arc<SharedVm>> {
        self.vm.lock().clone()
    }

    /// Runs `f` on the file's VM, which it creates at the first call. The VM stays the file's
    /// while `f` runs: a VM_JOIN of the file waits, so that what `f` does is not left behind
    /// on a VM the file has left.
    pub(crate) fn on_vm<R>(
        &self,
        dev: &IoctlDevice,
        f: impl FnOnce(&Arc<SharedVm>) -> Result<R>,
    ) -> Result<R> {
        let mut slot = self.vm.lock();
        let shared = match &*slot {
            Some(shared) => shared.clone(),
            None => slot.insert(SharedVm::new(self.id(), dev, false)?).clone(),
        };
        f(&shared)
    }

    /// Creates the file's VM, in long-running mode if `long_running`; [`EEXIST`] when the file
    /// has its VM already.
    pub(crate) fn create_vm(&self, dev: &IoctlDevice, long_running: bool) -> Result {
        let mut slot = self.vm.lock();
        if slot.is_some() {
            return Err(EEXIST);
        }
        *slot = Some(SharedVm::new(self.id(), dev, long_running)?);
        Ok(())
    }

    /// Whether the file's VM is in long-running mode (a file without a VM is not).
    pub(crate) fn is_long_running(&self) -> bool {
        self.vm
            .lock()
            .as_ref()
            .is_some_and(|vm| vm.is_long_running())
    }

    /// Runs `f` on the file's VM if it has one, as [`File::on_vm`] does; a file without a VM
    /// has nothing mapped, and `f` does not run.
    pub(crate) fn on_current_vm(&self, f: impl FnOnce(&SharedVm) -> Result) -> Result {
        match &*self.vm.lock() {
            Some(shared) => f(shared),
            None => Ok(()),
        }
    }

    /// Runs `f` on the file's member of its VM, which it creates at the first call.
    pub(crate) fn with_vm<R>(
        &self,
        dev: &ConfluxDevice<Registered>,
        f: impl FnOnce(&mut Vm) -> Result<R>,
    ) -> Result<R> {
        self.on_vm(dev.as_ioctl(), |shared| shared.with_member(self.id(), f))
    }

    /// The slot of the file's VM, locked, for VM_JOIN to replace.
    pub(crate) fn vm_slot(&self) -> MutexGuard<'_, Option<Arc<SharedVm>>> {
        self.vm.lock()
    }

    /// Creates a bind queue on the file's VM, created if need be; gives its number, or
    /// [`EMFILE`] when the file has [`MAX_BIND_QUEUES`].
    pub(crate) fn create_queue(&self, dev: &IoctlDevice) -> Result<u32> {
        self.shared_vm(dev)?;
        let queue = BindQueue::new()?;
        let mut queues = self.queues.lock();
        if queues.queues.len() >= MAX_BIND_QUEUES {
            return Err(EMFILE);
        }
        let number = queues.last.checked_add(1).ok_or(EMFILE)?;
        queues.queues.push((number, queue), GFP_KERNEL_ACCOUNT)?;
        queues.last = number;
        Ok(number)
    }

    /// Bind queue `number`.
    pub(crate) fn queue(&self, number: u32) -> Option<Arc<BindQueue>> {
        let queues = self.queues.lock();
        queues
            .queues
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, q)| q.clone())
    }

    /// Destroys bind queue `number`: its binds go on. [`ENOENT`] for an unknown one.
    pub(crate) fn destroy_queue(&self, number: u32) -> Result {
        let queue = {
            let mut queues = self.queues.lock();
            let i = queues
                .queues
                .iter()
                .position(|(n, _)| *n == number)
                .ok_or(ENOENT)?;
            queues.queues.remove(i)?.1
        };
        match self.current_vm() {
            Some(shared) => shared.drain(queue),
            None => drop(queue),
        }
        Ok(())
    }

    /// Creates a user queue on the file's VM, which must be long-running, with
    /// `create(vm)` ([`UserQueue::new`]), and runs it once its buffers carry the preemption
    /// fence of the file's queues; gives its number, with the queue. [`EINVAL`] for a VM that
    /// is not long-running, [`EMFILE`] when the file has [`MAX_USER_QUEUES`].
    pub(crate) fn create_user_queue(
        &self,
        dev: &IoctlDevice,
        create: impl FnOnce(&Vm) -> Result<Arc<UserQueue>>,
    ) -> Result<(u32, Arc<UserQueue>)> {
        // The VM's slot is held: the file cannot join another VM meanwhile.
        self.on_vm(dev, |shared| {
            if !shared.is_long_running() {
                return Err(EINVAL);
            }
            let mut queues = self.user_queues.lock();
            if queues.queues.len() >= MAX_USER_QUEUES {
                return Err(EMFILE);
            }
            let number = queues.last.checked_add(1).ok_or(EMFILE)?;
            queues.queues.reserve(1, GFP_KERNEL_ACCOUNT)?;
            let source = match &queues.preempt {
                Some(source) => source.clone(),
                None => Arc::pin_init(
                    DemandSource::new(Preempt::new(dev, shared.clone(), self.id())),
                    GFP_KERNEL_ACCOUNT,
                )?,
            };
            // Enabled, but held preempted until its memory carries the fence.
            let queue = shared.with_member(self.id(), |vm| create(vm))?;
            let hw = queue.hw();
            let started = (|| -> Result {
                source.handler().add(hw)?;
                if queues.preempt.is_none() {
                    shared.set_preempt(self.id(), Some(source.clone()))?;
                    queues.preempt = Some(source.clone());
                }
                DeviceData::with(dev, |_, data| {
                    shared.rearm_member(self.id(), data, &source)?;
                    data.engine.resume_queues(&[hw]);
                    Ok(())
                })
            })();
            if let Err(e) = started {
                source.handler().remove(hw);
                queue.stop();
                return Err(e);
            }
            // Cannot fail: room was made.
            let _ = queues.queues.push_within_capacity((number, queue.clone()));
            queues.last = number;
            Ok((number, queue))
        })
    }

    /// User queue `number`.
    pub(crate) fn user_queue(&self, number: u32) -> Option<Arc<UserQueue>> {
        let queues = self.user_queues.lock();
        queues
            .queues
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, q)| q.clone())
    }

    /// Destroys user queue `number`: it stops now, and the calls that wait on it return.
    /// [`ENOENT`] for an unknown one.
    pub(crate) fn destroy_user_queue(&self, number: u32) -> Result {
        let (queue, source) = {
            let mut queues = self.user_queues.lock();
            let i = queues
                .queues
                .iter()
                .position(|(n, _)| *n == number)
                .ok_or(ENOENT)?;
            let queue = queues.queues.remove(i)?.1;
            // The last queue takes the preemption with it.
            let source = match queues.queues.is_empty() {
                true => queues.preempt.take(),
                false => queues.preempt.clone(),
            };
            (queue, source)
        };
        if let Some(source) = &source {
            source.handler().remove(queue.hw());
            // A preemption that took the queue's number is over.
            source.flush();
        }
        queue.stop();
        if source
            .as_ref()
            .is_some_and(|s| s.handler().queues().get().is_empty())
        {
            if let Some(shared) = self.current_vm() {
                let _ = shared.set_preempt(self.id(), None);
            }
        }
        drop(source);
        Ok(())
    }

    /// Whether the file has user queues, which run on its VM.
    pub(crate) fn has_user_queues(&self) -> bool {
        !self.user_queues.lock().queues.is_empty()
    }

    /// Makes room to record one more job, before it is submitted.
    pub(crate) fn reserve_job(&self) -> Result<JobSlot<'_>> {
        let mut jobs = self.jobs.lock();
        // The jobs of a file end in order, so the ones that have ended come first: forget
        // those that completed successfully, and the oldest failures. The signalled flag
        // alone, which the queue's finished fences set when they signal.
        let ended = jobs
            .jobs
            .iter()
            .position(|(_, f)| matches!(f.result(), Ok(false)))
            .unwrap_or(jobs.jobs.len());
        let failed = jobs
            .jobs
            .iter()
            .take(ended)
            .filter(|(_, f)| f.result().is_err())
            .count();
        let excess = failed.saturating_sub(KEPT_FAILURES);
        if failed < ended || excess > 0 {
            let (mut i, mut seen, mut forgotten) = (0, 0, jobs.forgotten);
            jobs.jobs.retain(|(job, f)| {
                i += 1;
                if i > ended {
                    return true;
                }
                if f.result().is_ok() {
                    return false;
                }
                seen += 1;
                if seen <= excess {
                    forgotten = forgotten.max(*job);
                    return false;
                }
                true
            });
            jobs.forgotten = forgotten;
        }
        let more = jobs.reserved + 1;
        jobs.jobs.reserve(more, GFP_KERNEL_ACCOUNT)?;
        jobs.reserved = more;
        Ok(JobSlot(self))
    }

    /// Records `fence` as the file's next job, in the room `slot` holds, and returns the
    /// job's number, for WAIT.
    pub(crate) fn add_job(&self, slot: JobSlot<'_>, fence: ARef<Fence>) -> u64 {
        let mut jobs = self.jobs.lock();
        jobs.last += 1;
        let job = jobs.last;
        // Cannot fail: `slot` holds room for the entry, which it gives up here.
        let _ = jobs.jobs.push_within_capacity((job, fence));
        jobs.reserved = jobs.reserved.saturating_sub(1);
        core::mem::forget(slot);
        job
    }

    /// What the file knows of job number `job`; [`None`] for a number it never gave.
    pub(crate) fn job(&self, job: u64) -> Option<JobState> {
        let jobs = self.jobs.lock();
        if job == 0 || job > jobs.last {
            return None;
        }
        // In job order: a binary search.
        Some(match jobs.jobs.binary_search_by_key(&job, |(j, _)| *j) {
            Ok(i) => match jobs.jobs.get(i) {
                Some((_, fence)) => JobState::Fence(fence.clone()),
                None => JobState::Done,
            },
            Err(_) if job <= jobs.forgotten => JobState::Forgotten,
            Err(_) => JobState::Done,
        })
    }

    /// The number of the file's last job.
    pub(crate) fn last_job(&self) -> u64 {
        self.jobs.lock().last
    }
}
