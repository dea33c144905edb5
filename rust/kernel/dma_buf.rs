// SPDX-License-Identifier: GPL-2.0

//! DMA buffers shared between devices and drivers (dma-buf), exporter and importer sides.
//!
//! C header: [`include/linux/dma-buf.h`](srctree/include/linux/dma-buf.h)
//!
//! An exporter implements [`Exporter`] and calls [`Exported::export`]; the dma-buf core calls back
//! into it for every attachment: attach, pin, map (returning a [`DmaSGTable`] whose entries honour
//! the importing device's segment limits, [`Attachment::limits`]), unmap, unpin, detach, and
//! release when the last reference goes. [`Exported::revoke`] takes the memory away from every
//! importer: their mappings are invalidated and later maps fail with [`ENODEV`].
//!
//! An importer implements [`Importer`] and attaches dynamically with [`ImportAttachment::new`].
//! Mapping and pinning need the buffer's reservation lock, which a [`ResvGuard`] proves: a
//! [`Mapping`] borrows the guard, so it is unmapped before the lock is released. The exporter
//! calls every importer's [`Importer::invalidate_mappings`] (with the lock held) when the
//! buffer moves ([`DmaBuf::invalidate_mappings`]).

use crate::{
    alloc::Flags,
    bindings,
    device::Device,
    dma::DataDirection,
    dma_resv::{
        DmaResv,
        Locked,
        ResvGuard, //
    },
    dma_segments::{
        DmaSGTable,
        PageMapping,
        SegmentLimits, //
    },
    error::{
        from_err_ptr,
        to_result, //
    },
    new_mutex,
    page::Page,
    prelude::*,
    scatterlist::SGTable,
    sync::{
        aref::{
            ARef,
            AlwaysRefCounted, //
        },
        Arc,
        Mutex, //
    },
    types::Opaque, //
    ThisModule,
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

/// A dma-buf, reference counted through its file.
///
/// # Invariants
///
/// The inner `struct dma_buf` is exported and its file's reference count is non-zero for as long
/// as a `&DmaBuf` exists.
#[repr(transparent)]
pub struct DmaBuf(Opaque<bindings::dma_buf>);

// SAFETY: A dma-buf is shared between tasks by design; its state is protected by its
// reservation lock and the core's locks.
unsafe impl Send for DmaBuf {}

// SAFETY: As above.
unsafe impl Sync for DmaBuf {}

// SAFETY: `get_dma_buf()` and `dma_buf_put()` take and drop references to the buffer's file,
// which releases the buffer when the last one goes.
unsafe impl AlwaysRefCounted for DmaBuf {
    fn inc_ref(&self) {
        // SAFETY: The buffer is valid by the type invariants.
        unsafe { bindings::get_dma_buf(self.as_raw()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller owns a reference (safety requirements of `dec_ref`).
        unsafe { bindings::dma_buf_put(obj.cast().as_ptr()) };
    }
}

/// Casts the C direction the core passes to a [`DataDirection`].
fn direction(dir: bindings::dma_data_direction) -> DataDirection {
    match dir {
        bindings::dma_data_direction::DMA_TO_DEVICE => DataDirection::ToDevice,
        bindings::dma_data_direction::DMA_FROM_DEVICE => DataDirection::FromDevice,
        bindings::dma_data_direction::DMA_NONE => DataDirection::None,
        _ => DataDirection::Bidirectional,
    }
}

impl DmaBuf {
    /// Takes a reference to the buffer behind file descriptor `fd` (an importer's entry point).
    pub fn get(fd: i32) -> Result<ARef<Self>> {
        // SAFETY: `dma_buf_get()` checks that `fd` is a dma-buf and takes a reference.
        let buf = from_err_ptr(unsafe { bindings::dma_buf_get(fd) })?;
        // SAFETY: The reference taken just above is handed to the `ARef`.
        Ok(unsafe { ARef::from_raw(NonNull::new_unchecked(buf.cast())) })
    }

    /// The buffer at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must point to an exported `struct dma_buf` that stays referenced for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::dma_buf) -> &'a Self {
        // SAFETY: `repr(transparent)`; validity is guaranteed by the caller.
        unsafe { &*ptr.cast() }
    }

    /// The `struct dma_buf` this wraps.
    pub fn as_raw(&self) -> *mut bindings::dma_buf {
        self.0.get()
    }

    /// The buffer's size in bytes.
    pub fn size(&self) -> usize {
        // SAFETY: The buffer is valid; `size` never changes.
        unsafe { (*self.as_raw()).size }
    }

    /// The name its exporter gave the buffer (`exp_name`, usually the exporter's module name),
    /// for messages.
    pub fn exporter_name(&self) -> &CStr {
        // SAFETY: The buffer is valid; `exp_name` is set once at export.
        let name = unsafe { (*self.as_raw()).exp_name };
        if name.is_null() {
            return c"(unnamed)";
        }
        // SAFETY: `exp_name` is a NUL-terminated string of the exporter, which the buffer keeps
        // a reference to (`owner`) until it is released, so it outlives `&self`.
        unsafe { CStr::from_char_ptr(name) }
    }

    /// The buffer's reservation object.
    pub fn resv(&self) -> &DmaResv {
        // SAFETY: A buffer's reservation object lives as long as the buffer.
        unsafe { DmaResv::from_raw((*self.as_raw()).resv) }
    }

    /// Installs a new file descriptor for the buffer in the current task, taking a reference.
    pub fn fd(&self, flags: u32) -> Result<i32> {
        self.inc_ref();
        // CAST: `O_*` flags fit in an `int`.
        // SAFETY: The reference taken above goes to the file descriptor on success.
        let fd = unsafe { bindings::dma_buf_fd(self.as_raw(), flags as i32) };
        if fd < 0 {
            // SAFETY: Undoes the reference taken above, which the failed call did not consume.
            unsafe { Self::dec_ref(NonNull::from(self)) };
            return Err(Error::from_errno(fd));
        }
        Ok(fd)
    }

    fn is_locked_by(&self, lock: &impl Locked) -> Result {
        if lock.holds(self.resv()) {
            Ok(())
        } else {
            Err(EINVAL)
        }
    }

    /// Tells every dynamic importer that its mappings are stale (the buffer is moving): each
    /// importer's [`Importer::invalidate_mappings`] has run when this returns. Needs the
    /// buffer's reservation lock (a [`ResvGuard`], or the [`Reserved`] of an exporter callback);
    /// returns [`EINVAL`] for a lock of another object.
    pub fn invalidate_mappings(&self, lock: &impl Locked) -> Result {
        self.is_locked_by(lock)?;
        // SAFETY: The buffer is valid and its reservation lock is held (checked above).
        unsafe { bindings::dma_buf_invalidate_mappings(self.as_raw()) };
        Ok(())
    }
}

/// The buffer of an exporter callback that runs with the buffer's reservation lock held
/// ([`Exporter::pin`] and [`Exporter::map`]), as proof of that lock: an exporter that moves the
/// buffer there tells the other importers with [`DmaBuf::invalidate_mappings`].
///
/// # Invariants
///
/// The current task holds the reservation lock of `buf` for as long as this exists.
pub struct Reserved<'a> {
    buf: &'a DmaBuf,
}

impl Reserved<'_> {
    /// The buffer.
    pub fn buf(&self) -> &DmaBuf {
        self.buf
    }
}

// SAFETY: The current task holds the lock of the buffer's reservation object for as long as a
// `Reserved` lives (type invariants), and `holds` is true for that object only.
unsafe impl Locked for Reserved<'_> {
    fn holds(&self, resv: &DmaResv) -> bool {
        self.buf.resv().as_raw() == resv.as_raw()
    }
}

/// What an exported buffer's `priv` points to: the exporter, its revocation state and the list
/// it is registered in.
struct Private<E> {
    exporter: E,
    revoked: AtomicBool,
    list: Option<Arc<ExportList>>,
}

/// A buffer of an [`ExportList`].
///
/// # Invariants
///
/// `buf` is an exported buffer whose `priv` is a `Private<_>` with `revoked` at `revoked`,
/// registered in the list; its `release` removes this entry, under the list's lock, before it
/// frees anything.
struct Entry {
    buf: *mut bindings::dma_buf,
    revoked: *const AtomicBool,
}

/// The entries of an [`ExportList`] or an [`ImportList`], under its lock: entries are added
/// until the list is closed, and each is removed by its owner before what it points to goes.
struct Registry<T> {
    entries: KVec<T>,
    closed: bool,
}

impl<T> Registry<T> {
    fn new() -> Self {
        Self {
            entries: KVec::new(),
            closed: false,
        }
    }

    /// Makes room for one more entry.
    fn reserve(&mut self, flags: Flags) -> Result {
        self.entries.reserve(1, flags)?;
        Ok(())
    }

    /// Adds `entry` in the room made by [`Self::reserve`], unless the list is closed.
    fn add(&mut self, entry: T) -> Result {
        if self.closed {
            return Err(ENODEV);
        }
        self.entries.push_within_capacity(entry).map_err(|_| ENOMEM)
    }

    /// Removes the first entry that `is_it` picks, if any.
    fn remove(&mut self, is_it: impl Fn(&T) -> bool) {
        if let Some(i) = self.entries.iter().position(is_it) {
            let _ = self.entries.remove(i);
        }
    }

    /// Closes the list: later adds fail with [`ENODEV`]. Returns the entries.
    fn close(&mut self) -> &[T] {
        self.closed = true;
        &self.entries
    }
}

/// Exported buffers revoked together, for instance every buffer of a device when it is
/// unbound. A buffer joins the list when it is exported with [`Exported::export_in`] and leaves
/// it when it is released.
#[pin_data]
pub struct ExportList {
    #[pin]
    inner: Mutex<Registry<Entry>>,
}

// SAFETY: The raw pointers of the entries are only dereferenced under the lock, while the
// buffers they point to cannot be freed (type invariants of `Entry`).
unsafe impl Send for ExportList {}

// SAFETY: As above.
unsafe impl Sync for ExportList {}

impl ExportList {
    /// An empty list, open for exports.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            inner <- new_mutex!(Registry::new()),
        })
    }

    /// Revokes every buffer of the list, as [`Exported::revoke`] does, and closes the list: a
    /// later [`Exported::export_in`] into it fails with [`ENODEV`]. Before revoking a buffer,
    /// waits up to `timeout` jiffies for the fences in its reservation object, so that no job of
    /// an importer still uses the memory. Returns how many buffers were revoked.
    ///
    /// An importer must not drop its last reference to a buffer from its
    /// [`Importer::invalidate_mappings`], which runs here with the list locked.
    pub fn revoke_all(&self, timeout: crate::time::Jiffies) -> usize {
        let mut inner = self.inner.lock();
        let entries = inner.close();
        for entry in entries {
            // SAFETY: The buffer is not freed while its entry is in the list, which the lock held
            // here keeps it in (type invariants of `Entry`); nor is its `Private`, which owns
            // the reservation object when the exporter provides it.
            let (buf, revoked) = unsafe { (DmaBuf::from_raw(entry.buf), &*entry.revoked) };
            revoked.store(true, Ordering::Release);
            let _ = buf
                .resv()
                .wait_timeout(crate::dma_resv::Usage::Bookkeep, false, timeout);
            let guard = buf.resv().lock();
            let _ = buf.invalidate_mappings(&guard);
        }
        entries.len()
    }

    /// Adds an entry, unless the list is closed.
    fn add(&self, entry: Entry) -> Result {
        self.inner.lock().add(entry)
    }

    /// Makes room for one more entry.
    fn reserve(&self, flags: Flags) -> Result {
        self.inner.lock().reserve(flags)
    }

    /// Removes the entry of `buf`, if it is there.
    fn remove(&self, buf: *mut bindings::dma_buf) {
        self.inner.lock().remove(|e| e.buf == buf);
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
    /// ([`ExportList::revoke_all`]). Fails with [`ENODEV`] when the list was revoked already.
    pub fn export_in(
        exporter: E,
        size: usize,
        module: &'static ThisModule,
        list: &Arc<ExportList>,
        flags: Flags,
    ) -> Result<Self> {
        list.reserve(flags)?;
        let this = Self::export_with(exporter, size, module, Some(list.clone()), flags)?;
        // INVARIANT (of `Entry`): the buffer was just exported with a `Private<E>` that names
        // `list`, so its `release` removes the entry.
        list.add(Entry {
            buf: this.buf.as_raw(),
            revoked: &this.private().revoked,
        })?;
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

/// An attachment of a device to a dma-buf, as the exporter's callbacks see it.
///
/// # Invariants
///
/// The inner `struct dma_buf_attachment` is attached, to a valid buffer and device.
#[repr(transparent)]
pub struct Attachment(Opaque<bindings::dma_buf_attachment>);

impl Attachment {
    /// # Safety
    ///
    /// `ptr` must point to an attached `struct dma_buf_attachment` valid for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::dma_buf_attachment) -> &'a Self {
        // SAFETY: `repr(transparent)`; validity is guaranteed by the caller.
        unsafe { &*ptr.cast() }
    }

    pub(crate) fn as_raw(&self) -> *mut bindings::dma_buf_attachment {
        self.0.get()
    }

    /// The importing device.
    pub fn device(&self) -> &Device {
        // SAFETY: An attachment's device is valid while attached (type invariants).
        unsafe { Device::from_raw((*self.as_raw()).dev) }
    }

    /// Whether the importer attached dynamically (it handles invalidation).
    pub fn is_dynamic(&self) -> bool {
        // SAFETY: The attachment is valid.
        unsafe { !(*self.as_raw()).importer_ops.is_null() }
    }

    /// Whether the importer accepts peer-to-peer (PCI BAR) addresses.
    pub fn peer2peer(&self) -> bool {
        // SAFETY: The attachment is valid.
        unsafe { (*self.as_raw()).peer2peer }
    }

    /// The importing device's DMA segment limits, for the tables mapped for it.
    pub fn limits(&self) -> Result<SegmentLimits> {
        SegmentLimits::of_device(self.device())
    }

    /// Maps `pages` of system memory for DMA by the importing device, for a table of
    /// [`Exporter::map`]: keep the mapping as the table's backing
    /// ([`DmaSGTable::with_backing`]) so that unmapping the table unmaps the pages.
    pub fn map_pages(
        &self,
        pages: Arc<KVVec<Page>>,
        dir: DataDirection,
        flags: Flags,
    ) -> Result<PageMapping> {
        // SAFETY: An importer keeps its device bound while it is attached, and unmaps its tables
        // before it detaches: the mapping, backing such a table, is undone while the device is
        // bound.
        unsafe { PageMapping::new_unchecked(self.device(), pages, dir, flags) }
    }
}

/// The exporter side of a dma-buf.
///
/// Callbacks other than `attach` and `detach` run with the buffer's reservation lock held.
pub trait Exporter: Send + Sync + Sized + 'static {
    /// The exporter's name, shown in debugfs.
    const NAME: &'static CStr;

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
    fn pin(&self, _attachment: &Attachment, _locked: &Reserved<'_>) -> Result {
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
        locked: &Reserved<'_>,
    ) -> Result<DmaSGTable>;

    /// Unmaps a table [`Exporter::map`] returned; dropping it frees it.
    fn unmap(&self, _attachment: &Attachment, table: DmaSGTable, _dir: DataDirection) {
        drop(table);
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
        // SAFETY: All-zeroes (`None`) is valid for the remaining callbacks.
        ..unsafe { core::mem::zeroed() }
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
        let locked = Reserved { buf };
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
        let locked = Reserved { buf };
        match p.exporter.map(a, direction(dir), &locked) {
            Ok(table) => table.into_raw(),
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
                DmaSGTable::from_raw(sgt),
            )
        };
        e.unmap(a, t, direction(dir));
    }

    extern "C" fn release(buf: *mut bindings::dma_buf) {
        // SAFETY: The last reference is gone: nothing uses the exporter any more, and `priv` is
        // the box `export()` leaked.
        let private = unsafe { KBox::from_raw((*buf).priv_.cast::<Private<E>>()) };
        // Leave the list before anything is freed (type invariants of `Entry`).
        if let Some(list) = &private.list {
            list.remove(buf);
        }
        drop(private);
    }
}

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

/// An attachment of an [`ImportList`].
///
/// # Invariants
///
/// `att` is attached to `buf` and `kept` is its [`Kept`]; the [`ImportAttachment`] that owns
/// them removes this entry, under the list's lock, before it detaches or frees anything.
struct ImportEntry {
    att: *mut bindings::dma_buf_attachment,
    buf: *mut bindings::dma_buf,
    kept: *const Kept,
}

/// The attachments of one importing device, released together when the device goes away: their
/// kept mappings are unmapped, so that no DMA mapping of the device outlives its driver, and
/// they cannot be mapped again. An attachment joins the list when made with
/// [`ImportAttachment::new_in`] and leaves it when dropped; the buffers stay attached until then.
#[pin_data]
pub struct ImportList {
    #[pin]
    inner: Mutex<Registry<ImportEntry>>,
}

// SAFETY: The raw pointers of the entries are only dereferenced under the lock, while what they
// point to cannot be freed (type invariants of `ImportEntry`).
unsafe impl Send for ImportList {}

// SAFETY: As above.
unsafe impl Sync for ImportList {}

impl ImportList {
    /// An empty list, open for attachments.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            inner <- new_mutex!(Registry::new()),
        })
    }

    /// Unmaps the kept mapping of every attachment of the list, makes their later maps fail with
    /// [`ENODEV`], and closes the list: a later [`ImportAttachment::new_in`] into it fails with
    /// [`ENODEV`]. Before unmapping a buffer, waits up to `timeout` jiffies for the fences in
    /// its reservation object, so that no job still uses the mapping. Takes each buffer's
    /// reservation lock. Returns how many attachments had a mapping.
    pub fn release_all(&self, timeout: crate::time::Jiffies) -> usize {
        let mut inner = self.inner.lock();
        let mut unmapped = 0;
        for entry in inner.close() {
            // SAFETY: The buffer and the `Kept` are not freed while the entry is in the list,
            // which the lock held here keeps it in (type invariants of `ImportEntry`).
            let (buf, kept) = unsafe { (DmaBuf::from_raw(entry.buf), &*entry.kept) };
            let _ = buf
                .resv()
                .wait_timeout(crate::dma_resv::Usage::Bookkeep, false, timeout);
            let _guard = buf.resv().lock();
            kept.released.store(true, Ordering::Release);
            if !kept.sgt.load(Ordering::Acquire).is_null() {
                unmapped += 1;
            }
            // SAFETY: `att` is the attachment of `kept`, and the buffer's lock is held.
            unsafe { kept.unmap(entry.att) };
        }
        unmapped
    }

    /// Adds an entry, unless the list is closed.
    fn add(&self, entry: ImportEntry, flags: Flags) -> Result {
        let mut inner = self.inner.lock();
        inner.reserve(flags)?;
        inner.add(entry)
    }

    /// Removes the entry of `att`, if it is there.
    fn remove(&self, att: *mut bindings::dma_buf_attachment) {
        self.inner.lock().remove(|e| e.att == att);
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
    pub fn held_mapping<'g>(&'g self, lock: &'g impl Locked) -> Result<&'g SGTable> {
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

    /// Pins the buffer for this attachment. Needs the buffer's reservation lock.
    pub fn pin(&self, guard: &ResvGuard<'_>) -> Result {
        self.buf.is_locked_by(guard)?;
        // SAFETY: Attached, and the buffer's lock is held (checked above).
        to_result(unsafe { bindings::dma_buf_pin(self.attachment.as_ptr()) })
    }

    /// Unpins the buffer. Needs the buffer's reservation lock.
    pub fn unpin(&self, guard: &ResvGuard<'_>) -> Result {
        self.buf.is_locked_by(guard)?;
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
            list.remove(self.attachment.as_ptr());
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

#[cfg(CONFIG_RUST_DMA_BUF_KUNIT_TEST)]
#[macros::kunit_tests(rust_dma_buf)]
mod tests {
    use super::*;
    use crate::{
        device::Bound,
        dma_segments::{
            DmaRange,
            SegmentPlan, //
        },
        faux,
        sync::Arc, //
    };
    use core::sync::atomic::{
        AtomicU32,
        Ordering, //
    };

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    #[derive(Default)]
    struct Calls {
        attach: AtomicU32,
        detach: AtomicU32,
        pin: AtomicU32,
        unpin: AtomicU32,
        map: AtomicU32,
        unmap: AtomicU32,
        release: AtomicU32,
    }

    fn n(c: &AtomicU32) -> u32 {
        c.load(Ordering::Relaxed)
    }

    fn inc(c: &AtomicU32) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Device memory at a fixed bus address, 4 MiB + 12 KiB starting unaligned, mapped for each
    /// importer under its own segment limits.
    struct TestExporter {
        calls: Arc<Calls>,
    }

    const BASE: u64 = 0x8000_3000;
    const SIZE: u64 = 4 * MIB + 12 * KIB;

    impl Exporter for TestExporter {
        const NAME: &'static CStr = c"rust-dma-buf-test";

        fn attach(&self, _a: &Attachment) -> Result {
            inc(&self.calls.attach);
            Ok(())
        }

        fn detach(&self, _a: &Attachment) {
            inc(&self.calls.detach);
        }

        fn pin(&self, _a: &Attachment, _locked: &Reserved<'_>) -> Result {
            inc(&self.calls.pin);
            Ok(())
        }

        fn unpin(&self, _a: &Attachment) {
            inc(&self.calls.unpin);
        }

        fn map(
            &self,
            a: &Attachment,
            _dir: DataDirection,
            _locked: &Reserved<'_>,
        ) -> Result<DmaSGTable> {
            let ranges = [DmaRange::new(BASE, SIZE)?];
            let table = DmaSGTable::new(
                SegmentPlan::new(ranges.iter().copied(), a.limits()?)?,
                GFP_KERNEL,
            )?;
            // Counts the tables handed out, which `unmap` must all get back.
            inc(&self.calls.map);
            Ok(table)
        }

        fn unmap(&self, _a: &Attachment, table: DmaSGTable, _dir: DataDirection) {
            inc(&self.calls.unmap);
            drop(table);
        }
    }

    impl Drop for TestExporter {
        fn drop(&mut self) {
            inc(&self.calls.release);
        }
    }

    struct TestImporter {
        invalidations: AtomicU32,
    }

    impl Importer for TestImporter {
        const ALLOW_PEER2PEER: bool = true;

        fn invalidate_mappings(&self, _a: &Attachment) {
            inc(&self.invalidations);
        }
    }

    fn importer() -> TestImporter {
        TestImporter {
            invalidations: AtomicU32::new(0),
        }
    }

    /// A faux device with DMA parameters chosen by the test.
    struct ImportingDevice {
        reg: faux::Registration,
        parms: KBox<bindings::device_dma_parameters>,
    }

    impl ImportingDevice {
        fn new(max_seg: u32, boundary: u64) -> Result<Self> {
            let reg = faux::Registration::new(c"rust-dma-buf-importer", None)?;
            // SAFETY: All-zeroes is a valid `struct device_dma_parameters`.
            let mut parms: KBox<bindings::device_dma_parameters> =
                KBox::new(unsafe { core::mem::zeroed() }, GFP_KERNEL)?;
            parms.max_segment_size = max_seg;
            parms.segment_boundary_mask = crate::ffi::c_ulong::try_from(boundary)?;
            let dev: &faux::Device<Bound> = reg.as_ref();
            let dev: &Device<Bound> = dev.as_ref();
            // SAFETY: The device is valid; `parms` outlives its use (reset in `drop`).
            unsafe { (*dev.as_raw()).dma_parms = &mut *parms };
            Ok(Self { reg, parms })
        }

        fn device(&self) -> &Device {
            let dev: &faux::Device<Bound> = self.reg.as_ref();
            let dev: &Device<Bound> = dev.as_ref();
            dev
        }
    }

    impl Drop for ImportingDevice {
        fn drop(&mut self) {
            // SAFETY: The device is valid; nobody else uses its `dma_parms`.
            unsafe { (*self.device().as_raw()).dma_parms = core::ptr::null_mut() };
            let _ = &self.parms;
        }
    }

    // SAFETY: A null module pointer stands for code built into the kernel, as these tests are.
    static BUILTIN: ThisModule = unsafe { ThisModule::from_ptr(core::ptr::null_mut()) };

    fn export() -> Result<(Exported<TestExporter>, Arc<Calls>)> {
        let calls = Arc::new(Calls::default(), GFP_KERNEL)?;
        let exporter = TestExporter {
            calls: calls.clone(),
        };
        let buf = Exported::export(exporter, SIZE as usize, &BUILTIN, GFP_KERNEL)?;
        Ok((buf, calls))
    }

    #[test]
    fn lifecycle() -> Result {
        let dev = ImportingDevice::new(64 * 1024, u64::MAX)?;
        let (buf, calls) = export()?;
        assert_eq!(buf.size(), SIZE as usize);
        {
            let att = ImportAttachment::new(&buf, dev.device(), importer(), GFP_KERNEL)?;
            assert_eq!(n(&calls.attach), 1);
            assert!(att.attachment().is_dynamic());
            assert!(att.attachment().peer2peer());
            let guard = buf.resv().lock();
            att.pin(&guard)?;
            {
                let map = att.map(&guard, DataDirection::Bidirectional)?;
                assert_eq!(n(&calls.map), 1);
                assert!(map.iter().count() > 0);
            }
            assert_eq!(n(&calls.unmap), 1);
            att.unpin(&guard)?;
            assert_eq!((n(&calls.pin), n(&calls.unpin)), (1, 1));
        }
        assert_eq!(n(&calls.detach), 1);
        assert_eq!(n(&calls.release), 0);
        drop(buf);
        // The last reference went with the file: the core releases the buffer once its final
        // fput runs.
        // SAFETY: FFI call without safety requirements.
        unsafe { bindings::flush_delayed_fput() };
        assert_eq!(n(&calls.release), 1);
        Ok(())
    }

    #[test]
    fn importer_with_64k_segments_1m_boundary_gets_conforming_entries() -> Result {
        let dev = ImportingDevice::new(64 * 1024, MIB - 1)?;
        let (buf, _calls) = export()?;
        let att = ImportAttachment::new(&buf, dev.device(), importer(), GFP_KERNEL)?;
        let guard = buf.resv().lock();
        let map = att.map(&guard, DataDirection::Bidirectional)?;
        let (mut entries, mut next, mut bad) = (0u32, BASE, 0u32);
        for e in map.iter() {
            let (addr, len) = (e.dma_address(), e.dma_len());
            let last = addr + len - 1;
            if len > 64 * KIB || addr / MIB != last / MIB || addr != next {
                bad += 1;
            }
            next = addr + len;
            entries += 1;
        }
        assert_eq!(bad, 0);
        assert_eq!(entries, 65);
        assert_eq!(next, BASE + SIZE);
        Ok(())
    }

    #[test]
    fn import_list_unmaps_its_attachments_once_released() -> Result {
        let dev = ImportingDevice::new(64 * 1024, u64::MAX)?;
        let (buf, calls) = export()?;
        let list = Arc::pin_init(ImportList::new(), GFP_KERNEL)?;
        let mapped = ImportAttachment::new_in(&buf, dev.device(), importer(), &list, GFP_KERNEL)?;
        let idle = ImportAttachment::new_in(&buf, dev.device(), importer(), &list, GFP_KERNEL)?;
        let outside = ImportAttachment::new(&buf, dev.device(), importer(), GFP_KERNEL)?;
        {
            let guard = buf.resv().lock();
            mapped.held_mapping(&guard)?;
            outside.held_mapping(&guard)?;
        }
        assert_eq!(n(&calls.map), 2);
        assert_eq!(list.release_all(crate::time::msecs_to_jiffies(1000)), 1);
        // Only the list's mapped attachment was unmapped, without telling its importer.
        assert_eq!(n(&calls.unmap), 1);
        assert!(!mapped.is_mapped() && outside.is_mapped());
        assert_eq!(n(&mapped.importer().invalidations), 0);
        {
            let guard = buf.resv().lock();
            assert_eq!(mapped.held_mapping(&guard).err(), Some(ENODEV));
            assert_eq!(
                idle.map(&guard, DataDirection::Bidirectional).err(),
                Some(ENODEV)
            );
            assert!(outside.held_mapping(&guard).is_ok());
        }
        // The list is closed; its attachments detach when dropped, and leave it.
        let late = ImportAttachment::new_in(&buf, dev.device(), importer(), &list, GFP_KERNEL);
        assert_eq!(late.err(), Some(ENODEV));
        drop((mapped, idle));
        assert_eq!(n(&calls.detach), 3);
        assert_eq!(list.inner.lock().entries.len(), 0);
        drop(outside);
        assert_eq!(n(&calls.unmap), 2);
        Ok(())
    }

    #[test]
    fn invalidate_reaches_every_dynamic_importer() -> Result {
        let dev = ImportingDevice::new(64 * 1024, u64::MAX)?;
        let (buf, _calls) = export()?;
        let a = ImportAttachment::new(&buf, dev.device(), importer(), GFP_KERNEL)?;
        let b = ImportAttachment::new(&buf, dev.device(), importer(), GFP_KERNEL)?;
        {
            let guard = buf.resv().lock();
            buf.invalidate_mappings(&guard)?;
            // Both ran before the call returned, with the lock held.
            assert_eq!(n(&a.importer().invalidations), 1);
            assert_eq!(n(&b.importer().invalidations), 1);
        }
        // A guard of another object is refused.
        let other = KBox::pin_init(DmaResv::new(), GFP_KERNEL)?;
        assert_eq!(buf.invalidate_mappings(&other.lock()), Err(EINVAL));
        Ok(())
    }

    #[test]
    fn revoked_buffer_refuses_maps() -> Result {
        let dev = ImportingDevice::new(64 * 1024, u64::MAX)?;
        let (buf, calls) = export()?;
        let att = ImportAttachment::new(&buf, dev.device(), importer(), GFP_KERNEL)?;
        let guard = buf.resv().lock();
        drop(att.map(&guard, DataDirection::ToDevice)?);
        assert!(!buf.is_revoked());
        buf.revoke(&guard)?;
        assert!(buf.is_revoked());
        // The importer was told before `revoke()` returned.
        assert_eq!(n(&att.importer().invalidations), 1);
        assert!(matches!(att.map(&guard, DataDirection::ToDevice), Err(e) if e == ENODEV));
        assert_eq!(att.pin(&guard), Err(ENODEV));
        // The exporter's own map and pin were not reached.
        assert_eq!((n(&calls.map), n(&calls.pin)), (1, 0));
        Ok(())
    }

    /// Export, attach, pin, map, unmap, unpin, detach and release once; returns the number of
    /// entries mapped.
    fn lifecycle_once(dev: &ImportingDevice, calls: &Arc<Calls>) -> Result<usize> {
        let exporter = TestExporter {
            calls: calls.clone(),
        };
        let buf = Exported::export(exporter, SIZE as usize, &BUILTIN, GFP_KERNEL)?;
        let att = ImportAttachment::new(&buf, dev.device(), importer(), GFP_KERNEL)?;
        let guard = buf.resv().lock();
        att.pin(&guard)?;
        let entries = att
            .map(&guard, DataDirection::Bidirectional)
            .map(|m| m.iter().count());
        att.unpin(&guard)?;
        entries
    }

    #[cfg(all(CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS))]
    #[test]
    fn allocation_failures_leave_nothing_behind() -> Result {
        let dev = ImportingDevice::new(64 * 1024, MIB - 1)?;
        let calls = Arc::new(Calls::default(), GFP_KERNEL)?;
        let mut runs = 0;
        let walk = crate::fault_inject::walk_allocations(
            1000,
            || lifecycle_once(&dev, &calls),
            |result, failed| {
                runs += 1;
                // SAFETY: FFI call without safety requirements.
                unsafe { bindings::flush_delayed_fput() };
                // Whichever allocation failed, everything that was set up was torn down.
                assert_eq!(n(&calls.release), runs);
                assert_eq!(n(&calls.attach), n(&calls.detach));
                assert_eq!(n(&calls.pin), n(&calls.unpin));
                assert_eq!(n(&calls.map), n(&calls.unmap));
                match result {
                    Err(e) => assert!(failed && e == ENOMEM),
                    Ok(entries) => assert_eq!(entries, 65),
                }
                Ok(())
            },
        )?;
        pr_info!(
            "rust_dma_buf: {} allocations failed in turn, {} recovered, each undone\n",
            walk.failed,
            walk.recovered
        );
        // Export, attach and map allocate at least once each.
        assert!(walk.failed >= 3);
        Ok(())
    }

    #[test]
    fn map_with_another_objects_lock_is_refused() -> Result {
        let dev = ImportingDevice::new(64 * 1024, u64::MAX)?;
        let (buf, calls) = export()?;
        let att = ImportAttachment::new(&buf, dev.device(), importer(), GFP_KERNEL)?;
        let other = KBox::pin_init(DmaResv::new(), GFP_KERNEL)?;
        let guard = other.lock();
        assert!(matches!(att.map(&guard, DataDirection::ToDevice), Err(e) if e == EINVAL));
        assert_eq!(n(&calls.map), 0);
        Ok(())
    }
}
