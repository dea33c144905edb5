// SPDX-License-Identifier: GPL-2.0

//! The user queues of a file (`DRM_IOCTL_CONFLUX_USERQ_CREATE`): a hardware queue of the
//! device that runs on the file's long-running VM, fed by the process through a ring in that VM
//! and a doorbell page it maps, without system calls.
//!
//! A [`UserQueue`] holds its hardware queue ([`Engine::take_queue`](crate::engine::Engine)),
//! the GEM object through which the process maps the queue's doorbell page, and the page
//! tables the queue walks, which outlive the VM until the queue is stopped. Stopping it
//! ([`UserQueue::stop`], at `USERQ_DESTROY` or when the file closes) takes the doorbell page
//! away from the process's mappings, disables the hardware queue and waits until the device
//! says it is idle; the waiters of its memory fences wake and find it stopped.

use core::sync::atomic::{
    AtomicU64,
    Ordering, //
};

use kernel::{
    dma_fence::{
        demand::{
            DemandHandler,
            DemandSource, //
        },
        FenceTimeline,
        SignallingSection, //
    },
    new_mutex,
    prelude::*,
    sizes::SZ_4K,
    sync::{
        aref::ARef,
        Arc,
        Mutex, //
    },
    time::Delta,
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
    gem::{
        self,
        Contents, //
    },
    hw::DeviceData,
    mmu::address_space::KeptTables,
    regs::CTL_BAR,
    vm::{
        shared::SharedVm,
        Vm, //
    },
};

/// The most user queues of a file.
pub(crate) const MAX_USER_QUEUES: usize = kernel::uapi::DRM_CONFLUX_MAX_USER_QUEUES as usize;

/// A user queue of a file.
///
/// # Invariants
///
/// Until `tables` is [`None`], `hw` is a hardware queue of `dev`'s device taken for this queue,
/// running on the tables that `tables` keeps, and `doorbell` maps its doorbell page.
#[pin_data(PinnedDrop)]
pub(crate) struct UserQueue {
    dev: ARef<IoctlDevice>,
    hw: QueueId,
    doorbell: ARef<Object>,
    #[pin]
    tables: Mutex<Option<Arc<KeptTables>>>,
}

impl UserQueue {
    /// Takes a hardware queue of `data`'s device and runs it on the ring of `ring_size` bytes at
    /// `ring_va` of `vm`, the file's member of its long-running VM.
    pub(crate) fn new(
        dev: &IoctlDevice,
        data: &DeviceData<'_>,
        vm: &Vm,
        ring_va: u64,
        ring_size: u64,
    ) -> Result<Arc<Self>> {
        let hw = data.engine.take_queue(ring_va, ring_size, vm.root())?;
        let doorbell = data
            .pdev
            .resource_start(CTL_BAR)
            // CAST: `usize` fits in `u64`.
            .map(|bar| bar + data.engine.doorbell_offset(hw) as u64)
            .and_then(|phys| {
                Object::new(dev, SZ_4K, Contents::doorbell(phys)?).map_err(gem::create_error)
            });
        let doorbell = match doorbell {
            Ok(doorbell) => doorbell,
            Err(e) => {
                if data.engine.release_queue(hw).is_err() {
                    // The device may still walk the tables: they are never given back.
                    core::mem::forget(vm.kept_tables());
                }
                return Err(e);
            }
        };
        let tables = vm.kept_tables();
        let kept = tables.clone();
        let queue = Arc::pin_init(
            pin_init!(Self {
                dev: dev.into(),
                hw,
                doorbell,
                tables <- new_mutex!(Some(kept)),
            }),
            GFP_KERNEL_ACCOUNT,
        );
        if queue.is_err() && data.engine.release_queue(hw).is_err() {
            core::mem::forget(tables);
        }
        queue
    }

    /// The hardware queue.
    pub(crate) fn hw(&self) -> QueueId {
        self.hw
    }

    /// The object that maps the queue's doorbell page.
    pub(crate) fn doorbell(&self) -> &Object {
        &self.doorbell
    }
}

impl UserQueue {
    /// Stops the queue, once: takes the doorbell page away, disables the hardware queue and
    /// waits until it is idle, and gives back what it used.
    pub(crate) fn stop(&self) {
        let Some(tables) = self.tables.lock().take() else {
            return;
        };
        gem::revoke_doorbell(&self.doorbell);
        let released = DeviceData::with(&self.dev, |_, data| data.engine.release_queue(self.hw));
        match released {
            // The device is idle, or it was unbound: its reset stopped the queue.
            Ok(()) | Err(ENODEV) => drop(tables),
            // The device may still walk the tables: they are never given back.
            Err(_) => core::mem::forget(tables),
        }
    }

    /// Whether the queue was stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.tables.lock().is_none()
    }
}

#[pinned_drop]
impl PinnedDrop for UserQueue {
    fn drop(self: Pin<&mut Self>) {
        self.stop();
    }
}

/// The names of the preemption fences.
pub(crate) struct Preemptions;

impl FenceTimeline for Preemptions {
    const DRIVER_NAME: &'static CStr = c"conflux";
    const TIMELINE_NAME: &'static CStr = c"preempt";
}

/// The preemption of the user queues of a file: the handler of the file's [`DemandSource`],
/// whose pending fence is in the reservation object of every buffer the file's member of its
/// long-running VM maps.
///
/// When something needs one of those buffers (an eviction, an exporter's move for an
/// importer), it waits for the fence, which runs [`Preempt::requested`]: the queues stop, their
/// state saved, and the fence signals; the memory moves; then the member's tables are brought
/// up to date, a new fence armed in every buffer, and the queues resumed
/// ([`SharedVm::rearm`]). A queue that does not stop within the job timeout is killed.
pub(crate) struct Preempt {
    dev: ARef<IoctlDevice>,
    vm: Arc<SharedVm>,
    file: usize,
    /// The hardware queues of the file ([`QueueId::to_raw`]); 0 for none.
    queues: [AtomicU64; MAX_USER_QUEUES],
}

/// The hardware queues of a file, as a [`Preempt`] holds them.
pub(crate) struct QueueSet {
    qs: [QueueId; MAX_USER_QUEUES],
    n: usize,
}

impl QueueSet {
    /// The queues.
    pub(crate) fn get(&self) -> &[QueueId] {
        self.qs.get(..self.n).unwrap_or(&[])
    }
}

impl Preempt {
    /// The preemption of the queues of `file`, on `dev`, whose VM is `vm`.
    pub(crate) fn new(dev: &IoctlDevice, vm: Arc<SharedVm>, file: usize) -> Self {
        Self {
            dev: dev.into(),
            vm,
            file,
            queues: [const { AtomicU64::new(0) }; MAX_USER_QUEUES],
        }
    }

    /// The device of the queues.
    pub(crate) fn dev(&self) -> &IoctlDevice {
        &self.dev
    }

    /// The queues a preemption stops now.
    pub(crate) fn queues(&self) -> QueueSet {
        let mut set = QueueSet {
            qs: [QueueId::default(); MAX_USER_QUEUES],
            n: 0,
        };
        for q in self.queues.iter() {
            let raw = q.load(Ordering::Acquire);
            if raw != 0 {
                if let Some(slot) = set.qs.get_mut(set.n) {
                    *slot = QueueId::from_raw(raw);
                    set.n += 1;
                }
            }
        }
        set
    }

    /// Adds hardware queue `hw`; [`EMFILE`] when the file has its most queues.
    pub(crate) fn add(&self, hw: QueueId) -> Result {
        let raw = hw.to_raw();
        for q in self.queues.iter() {
            if q.compare_exchange(0, raw, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(EMFILE)
    }

    /// Removes hardware queue `hw`.
    pub(crate) fn remove(&self, hw: QueueId) {
        let raw = hw.to_raw();
        for q in self.queues.iter() {
            let _ = q.compare_exchange(raw, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

impl DemandHandler for Preempt {
    type Timeline = Preemptions;

    fn requested(source: &DemandSource<Self>) {
        let p = source.handler();
        let set = p.queues();
        let stopped = DeviceData::with(&p.dev, |_, data| {
            {
                // Nothing on the way to the signal allocates or waits for a fence.
                let _section = SignallingSection::begin();
                let timeout = Delta::from_millis(i64::from(job_timeout_ms()));
                data.engine.preempt_queues(set.get(), timeout);
                source.signal();
            }
            p.vm.rearm(p.file, data, source, set.get());
            Ok(())
        });
        if stopped.is_err() {
            // The device is unbound: its reset stopped the queues.
            source.signal();
        }
    }
}
