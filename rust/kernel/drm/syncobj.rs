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
    prelude::*,
    sync::aref::{
        ARef,
        AlwaysRefCounted, //
    },
    types::Opaque, //
};
use core::ptr::{
    self,
    NonNull, //
};

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
