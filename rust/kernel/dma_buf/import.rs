// SPDX-License-Identifier: GPL-2.0

//! The importer side of a dma-buf: dynamic attachments and their mappings.
//!
//! An importer implements [`Importer`] and attaches dynamically with [`ImportAttachment::new`].
//! Mapping and pinning need the buffer's reservation lock, which a [`ResvGuard`] proves: a
//! [`Mapping`] borrows the guard, so it is unmapped before the lock is released. The exporter
//! calls every importer's [`Importer::invalidate_mappings`] (with the lock held) when the buffer
//! moves ([`DmaBuf::invalidate_mappings`]).

use crate::{
    alloc::Flags,
    bindings,
    device::Device,
    dma::DataDirection,
    dma_resv::{
        ResvGuard,
        ResvLocked, //
    },
    error::{
        from_err_ptr,
        to_result, //
    },
    prelude::*,
    scatterlist::SGTable,
    sync::{
        aref::ARef,
        Arc, //
    },
};
use core::{
    marker::PhantomData,
    ops::Deref,
    ptr::NonNull,
    sync::atomic::{
        AtomicBool,
        AtomicPtr,
        Ordering, //
    },
};

use super::{
    list,
    Attachment,
    DmaBuf,
    ImportList, //
};

/// The importer side of a dynamic attachment.
pub trait Importer: Send + Sync + 'static {
    /// Whether the importer accepts peer-to-peer (PCI BAR) addresses in its tables.
    const ALLOW_PEER2PEER: bool;

    /// The buffer is moving: the importer must stop using its mappings (and unmap them) before
    /// returning. Called with the buffer's reservation lock held. The mapping
    /// [`ImportAttachment::held_mapping`] keeps is unmapped right after this returns.
    fn invalidate_mappings(&self, attachment: &Attachment);
}

struct ImporterOps<I: Importer>(PhantomData<I>);

impl<I: Importer> ImporterOps<I> {
    const OPS: bindings::dma_buf_attach_ops = bindings::dma_buf_attach_ops {
        allow_peer2peer: I::ALLOW_PEER2PEER,
        invalidate_mappings: Some(Self::invalidate),
    };

    extern "C" fn invalidate(att: *mut bindings::dma_buf_attachment) {
        // SAFETY: `importer_priv` is the pinned `Held<I>` of the `ImportAttachment` that owns
        // this attachment, alive until it detaches.
        let (h, a) = unsafe {
            (
                &*(*att).importer_priv.cast::<Held<I>>(),
                Attachment::from_raw(att),
            )
        };
        h.importer.invalidate_mappings(a);
        // SAFETY: The core calls this with the buffer's reservation lock held.
        unsafe { h.kept.unmap(att) };
    }
}

/// An importer and the mapping its attachment keeps.
struct Held<I> {
    importer: I,
    kept: Kept,
}

/// The mapping an attachment keeps, and whether its [`ImportList`] released it.
///
/// # Invariants
///
/// `sgt` is null or the table `dma_buf_map_attachment()` returned for the attachment in both
/// directions, not unmapped yet; it changes only under the buffer's reservation lock. Once
/// `released` is set (under that lock) nothing maps the attachment any more.
struct Kept {
    sgt: AtomicPtr<bindings::sg_table>,
    released: AtomicBool,
}

impl Kept {
    /// [`ENODEV`] once the attachment's list released it.
    fn check(&self) -> Result {
        if self.released.load(Ordering::Acquire) {
            Err(ENODEV)
        } else {
            Ok(())
        }
    }

    /// Unmaps the kept table, if any.
    ///
    /// # Safety
    ///
    /// `att` is the attachment this belongs to, and the buffer's reservation lock is held.
    unsafe fn unmap(&self, att: *mut bindings::dma_buf_attachment) {
        let sgt = self.sgt.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !sgt.is_null() {
            // SAFETY: `sgt` was mapped for `att` in both directions (type invariants), taken out
            // above so it is unmapped once; the lock is held (guaranteed by the caller).
            unsafe {
                bindings::dma_buf_unmap_attachment(att, sgt, DataDirection::Bidirectional.into())
            };
        }
    }
}

/// A device's dynamic attachment to a dma-buf; detaches when dropped.
///
/// Dropping it takes the buffer's reservation lock: do not drop it while holding that lock.
///
/// # Invariants
///
/// `attachment` is attached to `buf` with `ImporterOps::<I>::OPS` and `importer` as its private
/// data. When `list` is set, the attachment has an entry in it until it is dropped.
pub struct ImportAttachment<I: Importer> {
    attachment: NonNull<bindings::dma_buf_attachment>,
    buf: ARef<DmaBuf>,
    held: Pin<KBox<Held<I>>>,
    list: Option<Arc<ImportList>>,
}

/// The [`list::Kind`] of an [`ImportList`]: attachments, unmapped when it is released.
pub struct Imports;

/// An attachment of an [`ImportList`]: the attachment, its buffer and its [`Kept`] mapping.
pub struct ImportEntry {
    att: *mut bindings::dma_buf_attachment,
    buf: *mut bindings::dma_buf,
    kept: *const Kept,
}

impl list::private::Sealed for Imports {}

impl list::Kind for Imports {
    type Entry = ImportEntry;

    fn buf(entry: &ImportEntry) -> *mut bindings::dma_buf {
        entry.buf
    }

    fn close(_entry: &ImportEntry) {}

    fn release(entry: &ImportEntry, _buf: &DmaBuf, _guard: &ResvGuard<'_>) -> bool {
        // SAFETY: The `Kept` is freed only after the entry left the list (type invariants of
        // `List`), which the caller's lock prevents.
        let kept = unsafe { &*entry.kept };
        kept.released.store(true, Ordering::Release);
        let mapped = !kept.sgt.load(Ordering::Acquire).is_null();
        // SAFETY: `att` is the attachment of `kept`, and the buffer's lock is held (`_guard`).
        unsafe { kept.unmap(entry.att) };
        mapped
    }
}

// SAFETY: The attachment is owned by this value; the core serialises its use with the
// reservation lock.
unsafe impl<I: Importer> Send for ImportAttachment<I> {}

// SAFETY: `&ImportAttachment` only allows operations that take or require the lock.
unsafe impl<I: Importer> Sync for ImportAttachment<I> {}

impl<I: Importer> ImportAttachment<I> {
    /// Attaches `dev` to `buf` dynamically, with `importer` handling invalidation.
    pub fn new(buf: &DmaBuf, dev: &Device, importer: I, flags: Flags) -> Result<Self> {
        let held = KBox::pin(
            Held {
                importer,
                kept: Kept {
                    sgt: AtomicPtr::new(core::ptr::null_mut()),
                    released: AtomicBool::new(false),
                },
            },
            flags,
        )?;
        let private: *const Held<I> = &*held;
        // SAFETY: `buf` and `dev` are valid; the ops are static and `private` stays valid (and
        // pinned) until the attachment is detached in `drop`.
        let att = from_err_ptr(unsafe {
            bindings::dma_buf_dynamic_attach(
                buf.as_raw(),
                dev.as_raw(),
                &ImporterOps::<I>::OPS,
                private.cast_mut().cast(),
            )
        })?;
        Ok(Self {
            // SAFETY: `from_err_ptr` returned a valid pointer.
            attachment: unsafe { NonNull::new_unchecked(att) },
            buf: buf.into(),
            held,
            list: None,
        })
    }

    /// As [`Self::new`], and joins `list`, which releases the attachment with the others of
    /// its device; [`ENODEV`] when the list is already released.
    pub fn new_in(
        buf: &DmaBuf,
        dev: &Device,
        importer: I,
        list: &Arc<ImportList>,
        flags: Flags,
    ) -> Result<Self> {
        let mut this = Self::new(buf, dev, importer, flags)?;
        let entry = ImportEntry {
            att: this.attachment.as_ptr(),
            buf: this.buf.as_raw(),
            kept: &this.held.kept,
        };
        // On failure, dropping `this` detaches.
        list.add(entry, flags)?;
        // INVARIANT: the entry is in `list`; `drop` removes it.
        this.list = Some(list.clone());
        Ok(this)
    }

    /// The attachment, as the exporter sees it.
    pub fn attachment(&self) -> &Attachment {
        // SAFETY: Attached while `self` lives (type invariants).
        unsafe { Attachment::from_raw(self.attachment.as_ptr()) }
    }

    /// The buffer.
    pub fn buf(&self) -> &DmaBuf {
        &self.buf
    }

    /// The importer.
    pub fn importer(&self) -> &I {
        &self.held.importer
    }

    /// The table of the buffer for the device, mapped in both directions at the first call and
    /// kept until the exporter invalidates the mappings (right after
    /// [`Importer::invalidate_mappings`] returned) or the attachment is dropped. Needs the
    /// buffer's reservation lock; the table is valid while it is held.
    pub fn held_mapping<'g>(&'g self, lock: &'g impl ResvLocked) -> Result<&'g SGTable> {
        self.buf.is_locked_by(lock)?;
        self.held.kept.check()?;
        let mut sgt = self.held.kept.sgt.load(Ordering::Acquire);
        if sgt.is_null() {
            // SAFETY: Attached, and the buffer's lock is held (checked above).
            sgt = from_err_ptr(unsafe {
                bindings::dma_buf_map_attachment(
                    self.attachment.as_ptr(),
                    DataDirection::Bidirectional.into(),
                )
            })?;
            // INVARIANT: mapped in both directions, stored under the lock.
            self.held.kept.sgt.store(sgt, Ordering::Release);
        }
        // SAFETY: The table stays mapped until the lock is released at the earliest: it is
        // unmapped only under the lock, which `lock` holds for `'g`.
        Ok(unsafe { SGTable::from_raw(sgt) })
    }

    /// Whether a table is kept ([`Self::held_mapping`]) and not invalidated since.
    pub fn is_mapped(&self) -> bool {
        !self.held.kept.sgt.load(Ordering::Acquire).is_null()
    }

    /// Pins the buffer for this attachment. Needs the buffer's reservation lock (a
    /// [`ResvGuard`], or a set of locks that holds it).
    pub fn pin(&self, lock: &impl ResvLocked) -> Result {
        self.buf.is_locked_by(lock)?;
        // SAFETY: Attached, and the buffer's lock is held (checked above).
        to_result(unsafe { bindings::dma_buf_pin(self.attachment.as_ptr()) })
    }

    /// Unpins the buffer. Needs the buffer's reservation lock.
    pub fn unpin(&self, lock: &impl ResvLocked) -> Result {
        self.buf.is_locked_by(lock)?;
        // SAFETY: As in `pin`.
        unsafe { bindings::dma_buf_unpin(self.attachment.as_ptr()) };
        Ok(())
    }

    /// Maps the buffer for the device. Needs the buffer's reservation lock, which the returned
    /// [`Mapping`] borrows: it is unmapped before the lock can be released.
    pub fn map<'g>(&'g self, guard: &'g ResvGuard<'_>, dir: DataDirection) -> Result<Mapping<'g>> {
        self.buf.is_locked_by(guard)?;
        self.held.kept.check()?;
        // SAFETY: Attached, and the buffer's lock is held (checked above).
        let sgt = from_err_ptr(unsafe {
            bindings::dma_buf_map_attachment(self.attachment.as_ptr(), dir.into())
        })?;
        Ok(Mapping {
            attachment: self.attachment,
            sgt,
            dir,
            _guard: PhantomData,
        })
    }
}

impl<I: Importer> Drop for ImportAttachment<I> {
    fn drop(&mut self) {
        if let Some(list) = &self.list {
            list.remove(|e| e.att == self.attachment.as_ptr());
        }
        if self.is_mapped() {
            let _guard = self.buf.resv().lock();
            // SAFETY: The attachment is ours and the lock is held.
            unsafe { self.held.kept.unmap(self.attachment.as_ptr()) };
        }
        // SAFETY: Attached to `buf` (type invariants); detached exactly once, here. The importer
        // box outlives the call.
        unsafe { bindings::dma_buf_detach(self.buf.as_raw(), self.attachment.as_ptr()) };
    }
}

/// A mapped table of an [`ImportAttachment`], valid while the reservation lock is held;
/// unmapped when dropped.
///
/// # Invariants
///
/// `sgt` is the table `dma_buf_map_attachment()` returned for `attachment` and `dir`, and the
/// buffer's reservation lock is held for `'g`.
pub struct Mapping<'g> {
    attachment: NonNull<bindings::dma_buf_attachment>,
    sgt: *mut bindings::sg_table,
    dir: DataDirection,
    _guard: PhantomData<&'g ()>,
}

impl Deref for Mapping<'_> {
    type Target = SGTable;

    fn deref(&self) -> &SGTable {
        // SAFETY: The table is valid until unmapped in `drop` (type invariants).
        unsafe { SGTable::from_raw(self.sgt) }
    }
}

impl Drop for Mapping<'_> {
    fn drop(&mut self) {
        // SAFETY: Mapped for this attachment and direction, with the lock held (type invariants);
        // unmapped exactly once, here.
        unsafe {
            bindings::dma_buf_unmap_attachment(self.attachment.as_ptr(), self.sgt, self.dir.into())
        };
    }
}
