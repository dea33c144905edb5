// SPDX-License-Identifier: GPL-2.0

//! The exporter side of a dma-buf: the [`Exporter`] callbacks and the [`Exported`] buffer.
//!
//! An exporter implements [`Exporter`] and calls [`Exported::export`]; the dma-buf core calls back
//! into it for every attachment: attach, pin, map (returning a table whose entries honour the
//! importing device's segment limits, [`Attachment::limits`], such as the tables of
//! [`super::mapping`] are), unmap, unpin, detach, and release when the last reference goes.
//! [`Exported::revoke`] takes the memory away from every importer: their mappings are invalidated
//! and later maps fail with [`ENODEV`].

use crate::{
    alloc::Flags,
    bindings,
    dma::DataDirection,
    dma_resv::{
        DmaResv,
        ResvGuard,
        ResvLocked, //
    },
    error::from_err_ptr,
    mm::virt::VmaNew,
    prelude::*,
    scatterlist::{
        DmaOnly,
        SGTable, //
    },
    sync::{
        aref::ARef,
        Arc, //
    },
    ThisModule,
};
use core::{
    cell::UnsafeCell,
    marker::PhantomData,
    ops::Deref,
    ptr::NonNull,
    sync::atomic::{
        AtomicBool,
        Ordering, //
    },
};

use super::{
    direction,
    list,
    vmap::KernelMap,
    Attachment,
    DmaBuf,
    ExportList,
    Table, //
};

/// The buffer of an exporter callback that runs with the buffer's reservation lock held
/// ([`Exporter::pin`] and [`Exporter::map`]), as proof of that lock: an exporter that moves the
/// buffer there tells the other importers with [`DmaBuf::invalidate_mappings`].
///
/// # Invariants
///
/// The current task holds the reservation lock of `buf` for as long as this exists.
pub struct ResvHeld<'a> {
    buf: &'a DmaBuf,
}

impl ResvHeld<'_> {
    /// The buffer.
    pub fn buf(&self) -> &DmaBuf {
        self.buf
    }
}

// SAFETY: The current task holds the lock of the buffer's reservation object for as long as a
// `ResvHeld` lives (type invariants), and `holds` is true for that object only.
unsafe impl ResvLocked for ResvHeld<'_> {
    fn holds(&self, resv: &DmaResv) -> bool {
        self.buf.resv().as_raw() == resv.as_raw()
    }
}

/// What an exported buffer's `priv` points to: the exporter, its revocation state, the list
/// it is registered in and its kernel mapping.
///
/// # Invariants
///
/// `vmapping` is only accessed with the buffer's reservation lock held; it holds the mapping
/// [`Exporter::vmap`] made while the core counts users of it.
struct Private<E> {
    exporter: E,
    revoked: AtomicBool,
    list: Option<Arc<ExportList>>,
    vmapping: UnsafeCell<Option<KernelMap>>,
}

/// The [`list::Kind`] of an [`ExportList`]: exported buffers, revoked when it is released.
pub struct Exports;

/// A buffer of an [`ExportList`]: the buffer, and the revocation state of its `Private<_>`.
pub struct ExportEntry {
    buf: *mut bindings::dma_buf,
    revoked: *const AtomicBool,
}

impl list::private::Sealed for Exports {}

impl list::Kind for Exports {
    type Entry = ExportEntry;

    fn buf(entry: &ExportEntry) -> *mut bindings::dma_buf {
        entry.buf
    }

    fn close(entry: &ExportEntry) {
        // SAFETY: The `Private<_>` that holds `revoked` is freed only after the entry left the
        // list (type invariants of `List`), which the caller's lock prevents.
        unsafe { &*entry.revoked }.store(true, Ordering::Release);
    }

    fn release(_entry: &ExportEntry, buf: &DmaBuf, guard: &ResvGuard<'_>) -> bool {
        let _ = buf.invalidate_mappings(guard);
        true
    }
}

/// A buffer as its exporter holds it: a [`DmaBuf`] reference that can also revoke the buffer.
///
/// # Invariants
///
/// `buf` was exported by [`Exported::export`] with `ExporterOps::<E>::OPS`, so its `priv` is a
/// `Private<E>`.
pub struct Exported<E: Exporter> {
    buf: ARef<DmaBuf>,
    _exporter: PhantomData<E>,
}

impl<E: Exporter> Exported<E> {
    /// Exports a buffer of `size` bytes backed by `exporter`, with the reservation object
    /// [`Exporter::resv`] gives, or its own.
    ///
    /// `module` (the exporter's `THIS_MODULE`) is kept loaded while the buffer exists.
    pub fn export(
        exporter: E,
        size: usize,
        module: &'static ThisModule,
        flags: Flags,
    ) -> Result<Self> {
        Self::export_with(exporter, size, module, None, flags)
    }

    /// As [`Exported::export`], and adds the buffer to `list`, which revokes it with the others
    /// ([`List::release_all`](super::List::release_all)). Fails with [`ENODEV`] when the list was
    /// released already.
    pub fn export_in(
        exporter: E,
        size: usize,
        module: &'static ThisModule,
        list: &Arc<ExportList>,
        flags: Flags,
    ) -> Result<Self> {
        let this = Self::export_with(exporter, size, module, Some(list.clone()), flags)?;
        // INVARIANT (of `List`): the buffer was just exported with a `Private<E>` that names
        // `list`, so its `release` removes the entry before it frees anything. On failure,
        // dropping `this` releases the buffer.
        list.add(
            ExportEntry {
                buf: this.buf.as_raw(),
                revoked: &this.private().revoked,
            },
            flags,
        )?;
        Ok(this)
    }

    fn export_with(
        exporter: E,
        size: usize,
        module: &'static ThisModule,
        list: Option<Arc<ExportList>>,
        flags: Flags,
    ) -> Result<Self> {
        let private = KBox::into_raw(KBox::new(
            Private {
                exporter,
                revoked: AtomicBool::new(false),
                list,
                vmapping: UnsafeCell::new(None),
            },
            flags,
        )?);
        // SAFETY: `private` is valid and stays so until `release`, which frees it.
        let resv = unsafe { &(*private).exporter }
            .resv()
            .map_or(core::ptr::null_mut(), |r| r.as_raw());
        let info = bindings::dma_buf_export_info {
            exp_name: E::NAME.as_char_ptr(),
            owner: module.as_ptr(),
            ops: &ExporterOps::<E>::OPS,
            size,
            // CAST: `O_RDWR` fits in an `int`.
            flags: bindings::O_RDWR as i32,
            // The exporter owns `resv` and outlives the buffer: it is dropped by `release`.
            resv,
            priv_: private.cast(),
        };
        // SAFETY: `info` is a valid export description; `OPS` is a static vtable whose callbacks
        // find the `Private<E>` through `priv`.
        match from_err_ptr(unsafe { bindings::dma_buf_export(&info) }) {
            Ok(buf) => {
                // SAFETY: The new buffer holds one reference (its file's), which the `ARef`
                // takes; `buf` is not null.
                let buf = unsafe { ARef::from_raw(NonNull::new_unchecked(buf.cast())) };
                // INVARIANT: exported with `ExporterOps::<E>::OPS` and a `Private<E>`.
                Ok(Self {
                    buf,
                    _exporter: PhantomData,
                })
            }
            Err(e) => {
                // SAFETY: Not exported, so `release` will never run: the box is still ours.
                drop(unsafe { KBox::from_raw(private) });
                Err(e)
            }
        }
    }

    /// The exporter of `buf` when `module` exported it with an `E` through [`Exported::export`];
    /// [`None`] for any other buffer.
    pub fn exporter_of<'a>(buf: &'a DmaBuf, module: &'static ThisModule) -> Option<&'a E> {
        let raw = buf.as_raw();
        // SAFETY: `buf` is a valid, exported buffer; `owner` and `ops` do not change after export.
        let (owner, ops) = unsafe { ((*raw).owner, (*raw).ops) };
        if owner != module.as_ptr() || !core::ptr::eq(ops, &ExporterOps::<E>::OPS) {
            return None;
        }
        // SAFETY: Exported with `ExporterOps::<E>::OPS`, so `priv` is a `Private<E>`, freed only
        // at release, which the reference behind `buf` prevents while `'a` lasts.
        Some(unsafe { &(*(*raw).priv_.cast::<Private<E>>()).exporter })
    }

    fn private(&self) -> &Private<E> {
        // SAFETY: `priv` is a `Private<E>` (type invariants), freed only when the buffer is
        // released, which the reference in `self.buf` prevents.
        unsafe { &*(*self.buf.as_raw()).priv_.cast::<Private<E>>() }
    }

    /// The exporter.
    pub fn exporter(&self) -> &E {
        &self.private().exporter
    }

    /// Another reference to the buffer, for importers and file descriptors.
    pub fn buf(&self) -> ARef<DmaBuf> {
        self.buf.clone()
    }

    /// Revokes the buffer (its memory is going away, for example because the device is being
    /// unbound): every importer's mappings are invalidated before this returns, and every later
    /// pin or map fails with [`ENODEV`]. Needs the buffer's reservation lock.
    pub fn revoke(&self, guard: &ResvGuard<'_>) -> Result {
        self.buf.is_locked_by(guard)?;
        self.private().revoked.store(true, Ordering::Release);
        self.buf.invalidate_mappings(guard)
    }

    /// Whether the buffer has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.private().revoked.load(Ordering::Acquire)
    }
}

impl<E: Exporter> Deref for Exported<E> {
    type Target = DmaBuf;

    fn deref(&self) -> &DmaBuf {
        &self.buf
    }
}

/// The exporter side of a dma-buf.
///
/// `pin`, `unpin`, `map`, `unmap`, `vmap` and `vunmap` run with the buffer's reservation lock
/// held; the others without it.
///
/// CPU access is optional: an exporter that implements [`Exporter::mmap`] lets userspace map the
/// dma-buf's file, one that implements [`Exporter::vmap`] lets kernel importers map the buffer
/// with `dma_buf_vmap()`. Before [`Exporter::begin_cpu_access`], the core waits for the fences
/// of the buffer's reservation object that the access must follow.
#[vtable]
pub trait Exporter: Send + Sync + Sized + 'static {
    /// The exporter's name, shown in debugfs.
    const NAME: &'static CStr;

    /// What keeps the addresses of a mapped table valid, owned by the table
    /// ([`Backing`](super::Backing) for the tables of [`super::mapping`], `()` for none).
    type Backing: Send + Sync + 'static;

    /// The reservation object the buffer shares with the exporter's own object (for example a
    /// GEM object's), so that fences of both are in one place; [`None`] gives the buffer its own.
    fn resv(&self) -> Option<&DmaResv> {
        None
    }

    /// A new attachment; an error refuses it.
    fn attach(&self, _attachment: &Attachment) -> Result {
        Ok(())
    }

    /// An attachment goes away.
    fn detach(&self, _attachment: &Attachment) {}

    /// Keeps the buffer where it is while the attachment is pinned (after moving it where the
    /// attachment's device can reach it, if need be).
    fn pin(&self, _attachment: &Attachment, _locked: &ResvHeld<'_>) -> Result {
        Ok(())
    }

    /// Undoes a [`Exporter::pin`].
    fn unpin(&self, _attachment: &Attachment) {}

    /// Maps the buffer for the attachment's device: its entries must honour
    /// [`Attachment::limits`].
    fn map(
        &self,
        attachment: &Attachment,
        dir: DataDirection,
        locked: &ResvHeld<'_>,
    ) -> Result<Table<Self::Backing>>;

    /// Unmaps a table [`Exporter::map`] returned; dropping it frees it, then its backing.
    fn unmap(&self, _attachment: &Attachment, table: Table<Self::Backing>, _dir: DataDirection) {
        drop(table);
    }

    /// Maps the buffer into `vma`, a new userspace mapping of the dma-buf's file whose range the
    /// core checked against the buffer's size (`vm_pgoff` counts pages from the buffer's start).
    fn mmap(&self, _vma: &VmaNew) -> Result {
        build_error!(crate::error::VTABLE_DEFAULT_ERROR)
    }

    /// Maps the whole buffer into the kernel's address space for `dma_buf_vmap()`. The core
    /// counts its users: this runs for the first, and [`Exporter::vunmap`] after the last. The
    /// mapping must stay valid, the buffer in place, until then.
    fn vmap(&self, _locked: &ResvHeld<'_>) -> Result<KernelMap> {
        build_error!(crate::error::VTABLE_DEFAULT_ERROR)
    }

    /// The last user of the mapping [`Exporter::vmap`] made is gone; it was dropped just before.
    fn vunmap(&self, _locked: &ResvHeld<'_>) {}

    /// The CPU is about to access the buffer in direction `dir` (`DMA_BUF_IOCTL_SYNC` or
    /// `dma_buf_begin_cpu_access()`): the bytes devices wrote must become visible to it.
    fn begin_cpu_access(&self, _dir: DataDirection) -> Result {
        Ok(())
    }

    /// The CPU is done with an access [`Exporter::begin_cpu_access`] began: the bytes it wrote
    /// must become visible to devices.
    fn end_cpu_access(&self, _dir: DataDirection) -> Result {
        Ok(())
    }
}

struct ExporterOps<E: Exporter>(PhantomData<E>);

impl<E: Exporter> ExporterOps<E> {
    const OPS: bindings::dma_buf_ops = bindings::dma_buf_ops {
        attach: Some(Self::attach),
        detach: Some(Self::detach),
        pin: Some(Self::pin),
        unpin: Some(Self::unpin),
        map_dma_buf: Some(Self::map),
        unmap_dma_buf: Some(Self::unmap),
        release: Some(Self::release),
        mmap: if E::HAS_MMAP { Some(Self::mmap) } else { None },
        vmap: if E::HAS_VMAP { Some(Self::vmap) } else { None },
        vunmap: if E::HAS_VMAP {
            Some(Self::vunmap)
        } else {
            None
        },
        begin_cpu_access: Some(Self::begin_cpu_access),
        end_cpu_access: Some(Self::end_cpu_access),
    };

    /// # Safety
    ///
    /// `buf` must be a buffer exported by [`Exported::<E>::export`], not yet released.
    unsafe fn private<'a>(buf: *mut bindings::dma_buf) -> &'a Private<E> {
        // SAFETY: `priv` is the `KBox<Private<E>>` that `export()` leaked, freed only by
        // `release`.
        unsafe { &*(*buf).priv_.cast::<Private<E>>() }
    }

    /// # Safety
    ///
    /// As for [`Self::private`].
    unsafe fn exporter<'a>(buf: *mut bindings::dma_buf) -> &'a E {
        // SAFETY: Guaranteed by the caller.
        unsafe { &Self::private(buf).exporter }
    }

    extern "C" fn attach(
        buf: *mut bindings::dma_buf,
        att: *mut bindings::dma_buf_attachment,
    ) -> i32 {
        // SAFETY: The core calls with our buffer and a valid attachment.
        let (e, a) = unsafe { (Self::exporter(buf), Attachment::from_raw(att)) };
        match e.attach(a) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }

    extern "C" fn detach(buf: *mut bindings::dma_buf, att: *mut bindings::dma_buf_attachment) {
        // SAFETY: As in `attach`.
        let (e, a) = unsafe { (Self::exporter(buf), Attachment::from_raw(att)) };
        e.detach(a);
    }

    extern "C" fn pin(att: *mut bindings::dma_buf_attachment) -> i32 {
        // SAFETY: The attachment is valid and its buffer is ours.
        let (p, a) = unsafe { (Self::private((*att).dmabuf), Attachment::from_raw(att)) };
        if p.revoked.load(Ordering::Acquire) {
            return ENODEV.to_errno();
        }
        // SAFETY: The attachment's buffer is referenced while it is attached.
        let buf = unsafe { DmaBuf::from_raw((*att).dmabuf) };
        // INVARIANT: The core pins with the buffer's reservation lock held.
        let locked = ResvHeld { buf };
        match p.exporter.pin(a, &locked) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }

    extern "C" fn unpin(att: *mut bindings::dma_buf_attachment) {
        // SAFETY: As in `pin`.
        let (e, a) = unsafe { (Self::exporter((*att).dmabuf), Attachment::from_raw(att)) };
        e.unpin(a);
    }

    extern "C" fn map(
        att: *mut bindings::dma_buf_attachment,
        dir: bindings::dma_data_direction,
    ) -> *mut bindings::sg_table {
        // SAFETY: As in `pin`.
        let (p, a) = unsafe { (Self::private((*att).dmabuf), Attachment::from_raw(att)) };
        if p.revoked.load(Ordering::Acquire) {
            return ENODEV.to_ptr();
        }
        // SAFETY: The attachment's buffer is referenced while it is attached.
        let buf = unsafe { DmaBuf::from_raw((*att).dmabuf) };
        // INVARIANT: The core maps with the buffer's reservation lock held.
        let locked = ResvHeld { buf };
        match p.exporter.map(a, direction(dir), &locked) {
            Ok(table) => SGTable::into_raw_table(table),
            Err(err) => err.to_ptr(),
        }
    }

    extern "C" fn unmap(
        att: *mut bindings::dma_buf_attachment,
        sgt: *mut bindings::sg_table,
        dir: bindings::dma_data_direction,
    ) {
        // SAFETY: As in `pin`; `sgt` is a table `map` returned with `into_raw()`, given back once.
        let (e, a, t) = unsafe {
            (
                Self::exporter((*att).dmabuf),
                Attachment::from_raw(att),
                SGTable::<DmaOnly<E::Backing>>::from_raw_table(sgt),
            )
        };
        e.unmap(a, t, direction(dir));
    }

    extern "C" fn mmap(buf: *mut bindings::dma_buf, vma: *mut bindings::vm_area_struct) -> i32 {
        // SAFETY: The core calls with our buffer, whose file it holds, and a new VMA that is not
        // yet visible to anyone else.
        let (p, vma) = unsafe { (Self::private(buf), VmaNew::from_raw(vma)) };
        if p.revoked.load(Ordering::Acquire) {
            return ENODEV.to_errno();
        }
        match p.exporter.mmap(vma) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }

    extern "C" fn vmap(buf: *mut bindings::dma_buf, map: *mut bindings::iosys_map) -> i32 {
        // SAFETY: The core calls with our buffer and a map to fill.
        let p = unsafe { Self::private(buf) };
        if p.revoked.load(Ordering::Acquire) {
            return ENODEV.to_errno();
        }
        // SAFETY: The core holds a reference to the buffer for the whole call.
        let held = unsafe { DmaBuf::from_raw(buf) };
        // INVARIANT: The core maps with the buffer's reservation lock held.
        let locked = ResvHeld { buf: held };
        match p.exporter.vmap(&locked) {
            Ok(kmap) => {
                // SAFETY: `map` is valid for writes.
                unsafe { *map = kmap.as_iosys_map() };
                // SAFETY: The reservation lock is held, which serialises `vmapping`.
                unsafe { *p.vmapping.get() = Some(kmap) };
                0
            }
            Err(err) => err.to_errno(),
        }
    }

    extern "C" fn vunmap(buf: *mut bindings::dma_buf, _map: *mut bindings::iosys_map) {
        // SAFETY: The core calls with our buffer, which it holds.
        let (p, held) = unsafe { (Self::private(buf), DmaBuf::from_raw(buf)) };
        // SAFETY: The core unmaps with the reservation lock held, which serialises `vmapping`.
        drop(unsafe { (*p.vmapping.get()).take() });
        // INVARIANT: As in `vmap`.
        p.exporter.vunmap(&ResvHeld { buf: held });
    }

    extern "C" fn begin_cpu_access(
        buf: *mut bindings::dma_buf,
        dir: bindings::dma_data_direction,
    ) -> i32 {
        // SAFETY: The core calls with our buffer, which it holds.
        let p = unsafe { Self::private(buf) };
        if p.revoked.load(Ordering::Acquire) {
            return ENODEV.to_errno();
        }
        match p.exporter.begin_cpu_access(direction(dir)) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }

    extern "C" fn end_cpu_access(
        buf: *mut bindings::dma_buf,
        dir: bindings::dma_data_direction,
    ) -> i32 {
        // SAFETY: The core calls with our buffer, which it holds.
        let p = unsafe { Self::private(buf) };
        match p.exporter.end_cpu_access(direction(dir)) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }

    extern "C" fn release(buf: *mut bindings::dma_buf) {
        // SAFETY: The last reference is gone: nothing uses the exporter any more, and `priv` is
        // the box `export()` leaked.
        let private = unsafe { KBox::from_raw((*buf).priv_.cast::<Private<E>>()) };
        // Leave the list before anything is freed (type invariants of `List`).
        if let Some(list) = &private.list {
            list.remove(|e| e.buf == buf);
        }
        drop(private);
    }
}
