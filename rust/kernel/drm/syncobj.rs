// SPDX-License-Identifier: GPL-2.0

//! DRM synchronisation objects.
//!
//! A synchronisation object ("syncobj") is a container for a [`Fence`] that userspace names by a
//! handle of its DRM file. Drivers take the fence out of a syncobj to wait for it before a job
//! (an in-fence), and put the fence of a job into one (an out-fence).
//!
//! C header: [`include/drm/drm_syncobj.h`](srctree/include/drm/drm_syncobj.h)

use crate::{
    bindings,
    dma_fence::Fence,
    drm,
    error::to_result,
    prelude::*,
    sync::aref::{
        ARef,
        AlwaysRefCounted, //
    },
    types::Opaque, //
};
use core::{
    mem::ManuallyDrop,
    ptr::{
        self,
        NonNull, //
    },
};

/// The memory of a timeline point, allocated before the point is added
/// ([`SyncObj::add_point`]).
///
/// # Invariants
///
/// `0` is an unused `kmalloc()` allocation of a `struct dma_fence_chain`.
pub struct ChainNode(NonNull<bindings::dma_fence_chain>);

// SAFETY: The allocation is unused memory, owned by this value alone.
unsafe impl Send for ChainNode {}

impl ChainNode {
    /// Allocates a node.
    pub fn new(flags: crate::alloc::Flags) -> Result<Self> {
        let node = KBox::<core::mem::MaybeUninit<bindings::dma_fence_chain>>::new_uninit(flags)?;
        // SAFETY: `KBox::into_raw()` never returns NULL.
        Ok(Self(unsafe {
            NonNull::new_unchecked(KBox::into_raw(node).cast())
        }))
    }
}

impl Drop for ChainNode {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the node is an unused allocation of a `KBox` of this
        // type (`dma_fence_chain_free()` is `kfree()`).
        drop(unsafe {
            KBox::from_raw(
                self.0
                    .as_ptr()
                    .cast::<core::mem::MaybeUninit<bindings::dma_fence_chain>>(),
            )
        });
    }
}

/// A DRM synchronisation object.
///
/// # Invariants
///
/// The inner `struct drm_syncobj` is initialised and its reference count is non-zero for as long
/// as a `&SyncObj` exists.
#[repr(transparent)]
pub struct SyncObj(Opaque<bindings::drm_syncobj>);

// SAFETY: `struct drm_syncobj` is reference counted with atomics and its fence is replaced under
// its own lock, so it may be used and dropped from any task.
unsafe impl Send for SyncObj {}

// SAFETY: As above; every operation `&SyncObj` allows takes the syncobj's lock or uses RCU.
unsafe impl Sync for SyncObj {}

// SAFETY: `drm_syncobj_get()` and `drm_syncobj_put()` manage the syncobj's reference count, and
// the syncobj is freed when it drops to zero.
unsafe impl AlwaysRefCounted for SyncObj {
    fn inc_ref(&self) {
        // SAFETY: The syncobj is valid by the type invariants.
        unsafe { bindings::drm_syncobj_get(self.0.get()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller owns a reference to the syncobj (safety requirements of `dec_ref`).
        unsafe { bindings::drm_syncobj_put(obj.cast().as_ptr()) }
    }
}

impl SyncObj {
    /// Looks up the syncobj that `handle` names in `file`.
    ///
    /// Fails with [`ENOENT`] when the file has no syncobj of that handle.
    pub fn lookup<T: drm::file::DriverFile>(
        file: &drm::File<T>,
        handle: u32,
    ) -> Result<ARef<Self>> {
        // SAFETY: `file.as_raw()` is a valid `struct drm_file` for the duration of the call.
        let ptr = unsafe { bindings::drm_syncobj_find(file.as_raw(), handle) };
        let ptr = NonNull::new(ptr).ok_or(ENOENT)?;
        // SAFETY: `drm_syncobj_find()` returned a new reference to a valid syncobj, which the
        // `ARef` now owns. `SyncObj` is a transparent wrapper of `struct drm_syncobj`.
        Ok(unsafe { ARef::from_raw(ptr.cast()) })
    }

    /// The fence at timeline point `point` of the syncobj that `handle` names in `file`, or its
    /// current fence for point 0.
    ///
    /// Fails with [`ENOENT`] for an unknown handle, and [`EINVAL`] when there is no fence (yet)
    /// at that point.
    pub fn find_fence<T: drm::file::DriverFile>(
        file: &drm::File<T>,
        handle: u32,
        point: u64,
    ) -> Result<ARef<Fence>> {
        let mut fence = ptr::null_mut();
        // SAFETY: `file.as_raw()` is a valid `struct drm_file` for the duration of the call;
        // `fence` is valid to write.
        to_result(unsafe {
            bindings::drm_syncobj_find_fence(file.as_raw(), handle, point, 0, &mut fence)
        })?;
        let fence = NonNull::new(fence).ok_or(EINVAL)?;
        // SAFETY: `drm_syncobj_find_fence()` returned a new reference to a valid fence.
        Ok(unsafe { ARef::from_raw(fence.cast()) })
    }

    /// Adds `fence` to the syncobj's timeline at `point`, with the node `chain` allocated
    /// before.
    pub fn add_point(&self, chain: ChainNode, fence: &Fence, point: u64) {
        let chain = ManuallyDrop::new(chain);
        // SAFETY: The syncobj is valid by the type invariants; `chain.0` is an unused
        // `kmalloc()` allocation of a `struct dma_fence_chain`, which the timeline takes over
        // (it is freed as a fence from now on); `fence` is valid and gets a new reference.
        unsafe {
            bindings::drm_syncobj_add_point(
                self.0.get(),
                chain.0.as_ptr().cast(),
                fence.as_raw(),
                point,
            )
        };
    }

    /// The fence the syncobj holds now, if any.
    pub fn fence(&self) -> Option<ARef<Fence>> {
        // SAFETY: The syncobj is valid by the type invariants.
        let ptr = unsafe { bindings::drm_syncobj_fence_get(self.0.get()) };
        // SAFETY: `drm_syncobj_fence_get()` returned a new reference to a valid fence, or NULL.
        // `Fence` is a transparent wrapper of `struct dma_fence`.
        NonNull::new(ptr).map(|p| unsafe { ARef::from_raw(p.cast()) })
    }

    /// Replaces the syncobj's fence with `fence`, or empties it.
    pub fn replace_fence(&self, fence: Option<&Fence>) {
        let fence = fence.map_or(ptr::null_mut(), Fence::as_raw);
        // SAFETY: The syncobj is valid by the type invariants, and `fence` is NULL or a valid
        // fence, which the syncobj takes its own reference to.
        unsafe { bindings::drm_syncobj_replace_fence(self.0.get(), fence) };
    }
}
