// SPDX-License-Identifier: GPL-2.0

//! The device's movable buffers, least recently used first: where eviction looks for VRAM.
//!
//! The list holds no reference: a buffer that userspace closed must not stay in VRAM for it. A
//! buffer leaves the list when it is dropped, under the list's lock, and eviction takes its
//! references with [`Object::try_get`], which fails for a buffer whose last reference is gone.

use core::{
    ptr::NonNull,
    sync::atomic::{
        AtomicU64,
        Ordering, //
    },
};

use kernel::{
    new_mutex,
    prelude::*,
    sync::{
        aref::ARef,
        Arc,
        Mutex, //
    },
};

use crate::{
    driver::Object,
    gem::Bo, //
};

/// A buffer in the list: the object, and its data, by which it leaves the list.
struct Entry {
    obj: NonNull<Object>,
    bo: *const Bo,
}

// SAFETY: An entry is only a pair of addresses; the objects it names are thread-safe, and the
// list dereferences `obj` only under its lock, while the object cannot be freed (type invariants
// of `Lru`).
unsafe impl Send for Entry {}

/// The movable buffers of a device, least recently used first.
///
/// # Invariants
///
/// Every entry names a live object: its data's drop removes the entry, under `entries`' lock,
/// before the object's memory is freed ([`Lru::remove`]).
#[pin_data]
pub(crate) struct Lru {
    #[pin]
    entries: Mutex<KVec<Entry>>,
    /// Bytes of system memory that buffers back in VRAM keep for their next eviction
    /// ([`Bo::keep_spare`]).
    pub(crate) spare: Budget,
    /// Bytes of the move window that system memory keeps mapped for its next move
    /// ([`WindowLease`](super::moves::WindowLease)).
    pub(crate) window: Budget,
}

/// A count of bytes that may not exceed a limit.
pub(crate) struct Budget {
    used: AtomicU64,
    limit: u64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Takes `size` bytes of the budget; whether they were left.
    pub(crate) fn take(&self, size: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(size).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    /// Gives `size` bytes back to the budget.
    pub(crate) fn give(&self, size: u64) {
        self.used.fetch_sub(size, Ordering::Relaxed);
    }
}

impl Lru {
    /// An empty list, whose buffers may keep up to `spare_limit` bytes of system memory for
    /// their next eviction, and up to `window_limit` bytes of the move window mapped.
    pub(crate) fn new(spare_limit: u64, window_limit: u64) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                entries <- new_mutex!(KVec::new()),
                spare: Budget::new(spare_limit),
                window: Budget::new(window_limit),
            }),
            GFP_KERNEL,
        )
    }

    /// Makes `obj`, whose data has this list, the most recently used buffer; adds it when it is
    /// not in the list yet, which alone can fail ([`ENOMEM`]).
    pub(crate) fn touch(&self, obj: &Object) -> Result {
        let bo: &Bo = obj;
        let mut entries = self.entries.lock();
        let entry = match entries.iter().position(|e| core::ptr::eq(e.bo, bo)) {
            Some(i) => entries.remove(i).map_err(|_| EINVAL)?,
            None => {
                entries.reserve(1, GFP_KERNEL_ACCOUNT)?;
                Entry {
                    obj: NonNull::from(obj),
                    bo,
                }
            }
        };
        // INVARIANT: `bo`'s drop removes the entry (`Bo`'s `PinnedDrop`).
        entries.push_within_capacity(entry).map_err(|_| ENOMEM)
    }

    /// Removes the entry of `bo`, when it is dropped.
    pub(crate) fn remove(&self, bo: &Bo) {
        let mut entries = self.entries.lock();
        if let Some(i) = entries.iter().position(|e| core::ptr::eq(e.bo, bo)) {
            let _ = entries.remove(i);
        }
    }

    /// References to the buffers of the list, least recently used first, but the ones being
    /// freed.
    pub(crate) fn buffers(&self) -> Result<KVec<ARef<Object>>> {
        let mut out = KVec::new();
        {
            let entries = self.entries.lock();
            out.reserve(entries.len(), GFP_KERNEL)?;
            for e in entries.iter() {
                // SAFETY: The object is live: its entry is in the list, whose lock is held, and
                // its drop removes the entry under that lock first (type invariants).
                if let Some(obj) = unsafe { Object::try_get(e.obj) } {
                    // Cannot fail: room was made for every entry.
                    let _ = out.push_within_capacity(obj);
                }
            }
        }
        // The references are dropped, when the caller is done, without the lock: the last one
        // frees its buffer, whose drop takes the lock.
        Ok(out)
    }
}
