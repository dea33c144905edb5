// SPDX-License-Identifier: GPL-2.0

//! DMA buffers shared between devices and drivers (dma-buf), exporter and importer sides.
//!
//! C header: [`include/linux/dma-buf.h`](srctree/include/linux/dma-buf.h)
//!
//! - [`export`]: an exporter implements [`Exporter`] and exports with [`Exported::export`]; the
//!   dma-buf core calls back into it for every attachment, and [`Exported::revoke`] takes the
//!   memory away from every importer.
//! - [`mapping`]: the tables an exporter maps for an importer, of BAR memory
//!   ([`Attachment::map_bar`]) or of system pages ([`Attachment::map_pages`]), which honour the
//!   importer's segment limits.
//! - [`import`]: an importer implements [`Importer`] and attaches dynamically with
//!   [`ImportAttachment::new`]; it maps under the buffer's reservation lock and is told when the
//!   buffer moves ([`DmaBuf::invalidate_mappings`]).
//! - [`vmap`]: the kernel mapping of a whole buffer an exporter gives `dma_buf_vmap()`.
//! - [`list`]: the buffers a device exported ([`ExportList`]) or attached to ([`ImportList`]),
//!   released together when it is unbound.

pub mod export;
pub mod import;
pub mod list;
pub mod mapping;
pub mod vmap;

pub use export::{
    Exported,
    Exporter,
    ResvHeld, //
};
pub use import::{
    ImportAttachment,
    Importer,
    Mapping, //
};
pub use list::{
    ExportList,
    ExportsGuard,
    ImportList,
    List,
    ListGuard, //
};
pub use mapping::{
    Backing,
    Table, //
};
pub use vmap::KernelMap;

use crate::{
    bindings,
    device::Device,
    dma::DataDirection,
    dma_resv::{
        DmaResv,
        ResvLocked, //
    },
    dma_segments::SegmentLimits,
    error::from_err_ptr,
    prelude::*,
    sync::aref::{
        ARef,
        AlwaysRefCounted, //
    },
    types::Opaque, //
};
use core::ptr::NonNull;

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
pub(crate) fn direction(dir: bindings::dma_data_direction) -> DataDirection {
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

    pub(crate) fn is_locked_by(&self, lock: &impl ResvLocked) -> Result {
        if lock.holds(self.resv()) {
            Ok(())
        } else {
            Err(EINVAL)
        }
    }

    /// Tells every dynamic importer that its mappings are stale (the buffer is moving): each
    /// importer's [`Importer::invalidate_mappings`] has run when this returns. Needs the
    /// buffer's reservation lock (a [`ResvGuard`](crate::dma_resv::ResvGuard), or the
    /// [`ResvHeld`] of an exporter callback);
    /// returns [`EINVAL`] for a lock of another object.
    pub fn invalidate_mappings(&self, lock: &impl ResvLocked) -> Result {
        self.is_locked_by(lock)?;
        // SAFETY: The buffer is valid and its reservation lock is held (checked above).
        unsafe { bindings::dma_buf_invalidate_mappings(self.as_raw()) };
        Ok(())
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

    /// The `struct dma_buf_attachment` this wraps.
    pub fn as_raw(&self) -> *mut bindings::dma_buf_attachment {
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

    /// Whether the importer can give the memory back: it takes `invalidate_mappings`
    /// (`dma_buf_attach_revocable()`), so the exporter can take its mapping away when the buffer
    /// moves or is revoked, pinned or not.
    pub fn is_revocable(&self) -> bool {
        // SAFETY: The attachment is valid.
        unsafe { bindings::dma_buf_attach_revocable(self.as_raw()) }
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
        scatterlist::{
            DmaOnly,
            SGTable, //
        },
        sync::Arc,
        ThisModule, //
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

    #[vtable]
    impl Exporter for TestExporter {
        const NAME: &'static CStr = c"rust-dma-buf-test";

        type Backing = ();

        fn attach(&self, _a: &Attachment) -> Result {
            inc(&self.calls.attach);
            Ok(())
        }

        fn detach(&self, _a: &Attachment) {
            inc(&self.calls.detach);
        }

        fn pin(&self, _a: &Attachment, _locked: &ResvHeld<'_>) -> Result {
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
            _locked: &ResvHeld<'_>,
        ) -> Result<Table<()>> {
            let ranges = [DmaRange::new(BASE, SIZE)?];
            let plan = SegmentPlan::new(ranges.iter().copied(), a.limits()?)?;
            let table = plan.into_table((), GFP_KERNEL)?;
            // Counts the tables handed out, which `unmap` must all get back.
            inc(&self.calls.map);
            Ok(table)
        }

        fn unmap(&self, _a: &Attachment, table: KBox<SGTable<DmaOnly<()>>>, _dir: DataDirection) {
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
        let limits = SegmentLimits::new(64 * 1024, MIB - 1)?;
        let (mut entries, mut next, mut bad) = (0u32, BASE, 0u32);
        for e in map.iter() {
            let range = DmaRange::of_entry(e)?;
            if !limits.admits(&range) || range.addr() != next {
                bad += 1;
            }
            next = range.addr() + range.len();
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
        assert!(list.is_empty());
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
