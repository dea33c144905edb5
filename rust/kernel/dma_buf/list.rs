// SPDX-License-Identifier: GPL-2.0

//! Lists of the dma-bufs a device exported or attached to, released together when the device
//! goes away.
//!
//! An exporter registers every buffer it exports in an [`ExportList`]
//! ([`Exported::export_in`](super::Exported::export_in)), an importer every attachment it makes
//! in an [`ImportList`] ([`ImportAttachment::new_in`](super::ImportAttachment::new_in)). When the
//! device is unbound, [`List::release_all`] waits for the work on each buffer and, under the
//! buffer's reservation lock, revokes the exported buffers or unmaps the attachments, so that
//! neither the memory nor a DMA mapping of the device outlives its driver.

use crate::{
    alloc::Flags,
    bindings,
    dma_resv::{
        DmaResv,
        ResvGuard,
        Usage, //
    },
    new_mutex,
    prelude::*,
    sync::{
        Mutex,
        MutexGuard, //
    },
    time::Jiffies,
};

use super::DmaBuf;

/// What a [`List`] holds and how it releases it: exported buffers or attachments.
pub trait Kind: private::Sealed {
    /// An entry: one buffer or attachment, registered until its owner removes it.
    #[doc(hidden)]
    type Entry;

    /// The buffer of `entry`.
    #[doc(hidden)]
    fn buf(entry: &Self::Entry) -> *mut bindings::dma_buf;

    /// Called when the list closes, before the wait for the buffer's work.
    #[doc(hidden)]
    fn close(entry: &Self::Entry);

    /// Releases `entry` under its buffer's reservation lock; returns whether there was
    /// something to release.
    #[doc(hidden)]
    fn release(entry: &Self::Entry, buf: &DmaBuf, guard: &ResvGuard<'_>) -> bool;
}

pub(super) mod private {
    pub trait Sealed {}
}

/// The entries of a [`List`], under its lock: entries are added until the list is closed, and
/// each is removed by its owner before what it points to goes.
struct Registry<T> {
    entries: KVec<T>,
    closed: bool,
}

/// Buffers or attachments of one device, released together ([`List::release_all`]).
///
/// # Invariants
///
/// Every entry points to a buffer (and what the kind's entry names with it) that is not freed
/// while the entry is in the list: its owner removes the entry, under the list's lock, first.
#[pin_data]
pub struct List<K: Kind> {
    #[pin]
    inner: Mutex<Registry<K::Entry>>,
}

/// The buffers a device exported, revoked together when it is unbound.
pub type ExportList = List<super::export::Exports>;

/// An [`ExportList`], locked.
pub type ExportsGuard<'a> = ListGuard<'a, super::export::Exports>;

/// The attachments of a device to imported buffers, unmapped together when it is unbound.
pub type ImportList = List<super::import::Imports>;

// SAFETY: The raw pointers of the entries are only dereferenced under the lock, while what they
// point to cannot be freed (type invariants).
unsafe impl<K: Kind> Send for List<K> {}

// SAFETY: As above.
unsafe impl<K: Kind> Sync for List<K> {}

impl<K: Kind> List<K> {
    /// An empty list, open for entries.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            inner <- new_mutex!(Registry {
                entries: KVec::new(),
                closed: false,
            }),
        })
    }

    /// Releases every entry and closes the list: a later entry fails with [`ENODEV`].
    ///
    /// For each buffer, waits up to `timeout` jiffies for the fences in its reservation object,
    /// so that no job still uses the memory or the mapping, then takes its reservation lock and
    /// releases it: an exported buffer is revoked (its importers' mappings are invalidated and
    /// later maps fail with [`ENODEV`]); an attachment's kept mapping is unmapped and later maps
    /// fail with [`ENODEV`]. Returns how many entries had something to release: every exported
    /// buffer, the attachments that had a mapping.
    ///
    /// An importer must not drop its last reference to a buffer from its
    /// [`Importer::invalidate_mappings`](super::Importer::invalidate_mappings), which runs here
    /// with the list locked.
    pub fn release_all(&self, timeout: Jiffies) -> usize {
        let mut inner = self.inner.lock();
        inner.closed = true;
        let mut released = 0;
        for entry in inner.entries.iter() {
            K::close(entry);
            // SAFETY: The buffer is not freed while its entry is in the list, which the lock
            // held here keeps it in (type invariants).
            let buf = unsafe { DmaBuf::from_raw(K::buf(entry)) };
            let _ = buf.resv().wait_timeout(Usage::Bookkeep, false, timeout);
            let guard = buf.resv().lock();
            if K::release(entry, buf, &guard) {
                released += 1;
            }
        }
        released
    }

    /// Locks the list: no buffer in it is freed while the returned guard lives.
    ///
    /// For an exporter that moves the memory of a buffer and must invalidate the mappings of
    /// every dma-buf it exported for it. The list's lock comes before the buffers' reservation
    /// locks, as in [`Self::release_all`]: a caller that holds a reservation lock may only try
    /// to take this one.
    pub fn lock(&self) -> ListGuard<'_, K> {
        ListGuard(self.inner.lock())
    }

    /// Adds `entry`, unless the list is closed ([`ENODEV`]).
    ///
    /// The caller guarantees that what `entry` points to stays valid until it removes the entry
    /// with [`Self::remove`].
    pub(super) fn add(&self, entry: K::Entry, flags: Flags) -> Result {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(ENODEV);
        }
        inner.entries.push(entry, flags)?;
        Ok(())
    }

    /// Whether the list has no entry.
    #[cfg(CONFIG_RUST_DMA_BUF_KUNIT_TEST)]
    pub(super) fn is_empty(&self) -> bool {
        self.inner.lock().entries.is_empty()
    }

    /// Removes the first entry `is_it` picks, if any.
    pub(super) fn remove(&self, is_it: impl Fn(&K::Entry) -> bool) {
        let mut inner = self.inner.lock();
        if let Some(i) = inner.entries.iter().position(is_it) {
            let _ = inner.entries.remove(i);
        }
    }
}

/// A locked [`List`] ([`List::lock`]).
///
/// # Invariants
///
/// The guard holds the list's lock: no buffer of the list is freed while it lives.
pub struct ListGuard<'a, K: Kind>(MutexGuard<'a, Registry<K::Entry>>);

impl<K: Kind> ListGuard<'_, K> {
    /// The buffers of the list whose reservation object is `resv`: the dma-bufs an exporter
    /// made for one object, which share its reservation object.
    ///
    /// A buffer whose last reference went may still be listed until its release removes it,
    /// which waits for this lock; it has no attachment left.
    pub fn buffers_sharing<'g>(&'g self, resv: &'g DmaResv) -> impl Iterator<Item = &'g DmaBuf> {
        self.0.entries.iter().filter_map(move |entry| {
            // SAFETY: The buffer is not freed while its entry is in the list, which the lock that
            // `self` holds keeps it in (type invariants of `List` and of `Self`).
            let buf = unsafe { DmaBuf::from_raw(K::buf(entry)) };
            core::ptr::eq(buf.resv(), resv).then_some(buf)
        })
    }
}
