// SPDX-License-Identifier: GPL-2.0

//! Drivers that Conflux did not write, on both sides of its dma-bufs: CPU access through a
//! Conflux dma-buf (`mmap()` of its file with `DMA_BUF_IOCTL_SYNC`, a kernel importer's
//! `dma_buf_vmap()`), `vgem` and the system dma-buf heap as exporters and importers, and
//! fences of other drivers (`sw_sync`, `vgem`) in the reservation objects of Conflux buffers.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering::SeqCst},
    time::Duration,
};

use conflux::{copy_cmd, fill_cmd, map_op, uapi, unmap_op, Device, Error, Mapping};

use crate::{
    common::{copy, first_diff, io_err, mapped, pattern, read_all, MIB, VA},
    evict::squeeze,
    static_import::{fnv1a, StaticImport},
    Tally,
};

/// `_IOC(dir, type, nr, size)`, as `include/uapi/asm-generic/ioctl.h` encodes requests.
const fn ioc(dir: u64, ty: u8, nr: u64, size: usize) -> u64 {
    dir << 30 | (size as u64) << 16 | (ty as u64) << 8 | nr
}
const W: u64 = 1;
const RW: u64 = 3;

/// `ioctl(fd, request, arg)`.
fn ioctl<T>(fd: BorrowedFd<'_>, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the structure `request` encodes, valid for reads and writes.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request as libc::Ioctl,
            std::ptr::from_mut(arg),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` reports `events` now, without waiting.
fn ready(fd: BorrowedFd<'_>, events: i16) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: One valid `pollfd`.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n == 1 && p.revents & events == events)
}

/// `DMA_BUF_SYNC_*` of `include/uapi/linux/dma-buf.h`.
const SYNC_READ: u64 = 1;
const SYNC_WRITE: u64 = 2;
const SYNC_END: u64 = 4;

/// `DMA_BUF_IOCTL_SYNC`: begins (or with [`SYNC_END`] ends) a CPU access.
fn dma_buf_sync(buf: BorrowedFd<'_>, flags: u64) -> io::Result<()> {
    let mut flags = flags;
    ioctl(buf, ioc(W, b'b', 0, 8), &mut flags)
}

/// `struct dma_buf_export_sync_file` and `struct dma_buf_import_sync_file`.
#[repr(C)]
struct SyncFileArgs {
    flags: u32,
    fd: i32,
}

/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`: a sync_file of the fences an access of `flags` waits for.
fn export_sync_file(buf: BorrowedFd<'_>, flags: u64) -> io::Result<OwnedFd> {
    let mut args = SyncFileArgs {
        flags: flags as u32,
        fd: -1,
    };
    ioctl(buf, ioc(RW, b'b', 2, 8), &mut args)?;
    // SAFETY: The kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(args.fd) })
}

/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`: adds the fence of `sync` to the buffer, as a write with
/// [`SYNC_WRITE`], else as a read.
fn import_sync_file(buf: BorrowedFd<'_>, flags: u64, sync: BorrowedFd<'_>) -> io::Result<()> {
    let mut args = SyncFileArgs {
        flags: flags as u32,
        fd: sync.as_raw_fd(),
    };
    ioctl(buf, ioc(W, b'b', 3, 8), &mut args)
}

const SW_SYNC: &str = "/sys/kernel/debug/sync/sw_sync";

/// A `sw_sync` timeline: fences that signal when the test says so.
struct Timeline(File);

/// `struct sw_sync_create_fence_data` of `drivers/dma-buf/sw_sync.c`.
#[repr(C)]
struct CreateFence {
    value: u32,
    name: [u8; 32],
    fence: i32,
}

impl Timeline {
    fn open() -> Result<Self, Error> {
        File::options()
            .read(true)
            .write(true)
            .open(SW_SYNC)
            .map(Self)
            .map_err(io_err(SW_SYNC, "open (CONFIG_SW_SYNC, debugfs mounted?)"))
    }

    /// A sync_file whose fence signals when the timeline reaches `value`.
    fn fence(&self, value: u32) -> Result<OwnedFd, Error> {
        let mut args = CreateFence {
            value,
            name: [0; 32],
            fence: -1,
        };
        ioctl(self.0.as_fd(), ioc(RW, b'W', 0, 40), &mut args)
            .map_err(io_err(SW_SYNC, "SW_SYNC_IOC_CREATE_FENCE"))?;
        // SAFETY: The kernel just gave us this descriptor.
        Ok(unsafe { OwnedFd::from_raw_fd(args.fence) })
    }

    /// Advances the timeline by one, signalling its next fence.
    fn step(&self) -> Result<(), Error> {
        let mut one = 1u32;
        ioctl(self.0.as_fd(), ioc(W, b'W', 1, 4), &mut one)
            .map_err(io_err(SW_SYNC, "SW_SYNC_IOC_INC"))
    }
}

/// The `vgem` device: GEM objects of shmem pages, and fences userspace signals.
struct Vgem {
    card: File,
    path: String,
}

/// `struct drm_mode_create_dumb`.
#[repr(C)]
#[derive(Default)]
struct CreateDumb {
    height: u32,
    width: u32,
    bpp: u32,
    flags: u32,
    handle: u32,
    pitch: u32,
    size: u64,
}

/// `struct drm_mode_map_dumb`.
#[repr(C)]
#[derive(Default)]
struct MapDumb {
    handle: u32,
    pad: u32,
    offset: u64,
}

/// `struct drm_prime_handle`.
#[repr(C)]
struct PrimeHandle {
    handle: u32,
    flags: u32,
    fd: i32,
}

/// `struct drm_vgem_fence_attach`.
#[repr(C)]
struct FenceAttach {
    handle: u32,
    flags: u32,
    out_fence: u32,
    pad: u32,
}

/// `struct drm_vgem_fence_signal`.
#[repr(C)]
struct FenceSignal {
    fence: u32,
    flags: u32,
}

impl Vgem {
    /// Opens the primary node of `vgem` (`/sys/devices/faux/vgem/drm/cardN`).
    fn open() -> Result<Self, Error> {
        let dir = "/sys/devices/faux/vgem/drm";
        let cards = std::fs::read_dir(dir).map_err(io_err(dir, "read_dir (CONFIG_DRM_VGEM?)"))?;
        let name = cards
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("card"))
            .ok_or_else(|| io_err(dir, "find a card node")(io::ErrorKind::NotFound.into()))?;
        let path = format!("/dev/dri/{name}");
        let card = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        Ok(Self { card, path })
    }

    fn call<T>(&self, what: &str, request: u64, arg: &mut T) -> Result<(), Error> {
        ioctl(self.card.as_fd(), request, arg).map_err(io_err(&self.path, what))
    }

    /// A new object of `len` bytes (a multiple of 4 KiB), zeroed.
    fn create(&self, len: u64) -> Result<u32, Error> {
        let mut args = CreateDumb {
            height: (len / 4096) as u32,
            width: 1024,
            bpp: 32,
            ..Default::default()
        };
        let req = ioc(RW, b'd', 0xb2, std::mem::size_of::<CreateDumb>());
        self.call("DRM_IOCTL_MODE_CREATE_DUMB", req, &mut args)?;
        Ok(args.handle)
    }

    /// Maps all `len` bytes of object `handle`.
    fn map(&self, handle: u32, len: u64) -> Result<Mapping, Error> {
        let mut args = MapDumb {
            handle,
            ..Default::default()
        };
        let req = ioc(RW, b'd', 0xb3, std::mem::size_of::<MapDumb>());
        self.call("DRM_IOCTL_MODE_MAP_DUMB", req, &mut args)?;
        Mapping::of_fd(self.card.as_fd(), args.offset, len as usize, &self.path)
    }

    /// Exports object `handle` as a dma-buf.
    fn export(&self, handle: u32) -> Result<OwnedFd, Error> {
        let mut args = PrimeHandle {
            handle,
            flags: (libc::O_CLOEXEC | libc::O_RDWR) as u32,
            fd: -1,
        };
        let req = ioc(RW, b'd', 0x2d, std::mem::size_of::<PrimeHandle>());
        self.call("DRM_IOCTL_PRIME_HANDLE_TO_FD", req, &mut args)?;
        // SAFETY: The kernel just gave us this descriptor.
        Ok(unsafe { OwnedFd::from_raw_fd(args.fd) })
    }

    /// Imports the dma-buf `buf` as an object of `vgem`.
    fn import(&self, buf: BorrowedFd<'_>) -> Result<u32, Error> {
        let mut args = PrimeHandle {
            handle: 0,
            flags: 0,
            fd: buf.as_raw_fd(),
        };
        let req = ioc(RW, b'd', 0x2e, std::mem::size_of::<PrimeHandle>());
        self.call("DRM_IOCTL_PRIME_FD_TO_HANDLE", req, &mut args)?;
        Ok(args.handle)
    }

    /// `DRM_IOCTL_VGEM_FENCE_ATTACH`: a fence of `vgem` on object `handle`, as a write; its id.
    fn fence_attach(&self, handle: u32) -> io::Result<u32> {
        let mut args = FenceAttach {
            handle,
            flags: 1, // VGEM_FENCE_WRITE
            out_fence: 0,
            pad: 0,
        };
        let req = ioc(RW, b'd', 0x41, std::mem::size_of::<FenceAttach>());
        ioctl(self.card.as_fd(), req, &mut args)?;
        Ok(args.out_fence)
    }

    /// `DRM_IOCTL_VGEM_FENCE_SIGNAL`.
    fn fence_signal(&self, fence: u32) -> Result<(), Error> {
        let mut args = FenceSignal { fence, flags: 0 };
        let req = ioc(W, b'd', 0x42, std::mem::size_of::<FenceSignal>());
        self.call("DRM_IOCTL_VGEM_FENCE_SIGNAL", req, &mut args)
    }
}

const HEAP: &str = "/dev/dma_heap/system";

/// `struct dma_heap_allocation_data`.
#[repr(C)]
struct HeapAlloc {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}

/// A dma-buf of `len` bytes from the system heap.
fn heap_alloc(len: u64) -> Result<OwnedFd, Error> {
    let heap = File::open(HEAP).map_err(io_err(HEAP, "open (CONFIG_DMABUF_HEAPS_SYSTEM?)"))?;
    let mut args = HeapAlloc {
        len,
        fd: 0,
        fd_flags: (libc::O_RDWR | libc::O_CLOEXEC) as u32,
        heap_flags: 0,
    };
    let req = ioc(RW, b'H', 0, std::mem::size_of::<HeapAlloc>());
    ioctl(heap.as_fd(), req, &mut args).map_err(io_err(HEAP, "DMA_HEAP_IOCTL_ALLOC"))?;
    // SAFETY: The kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(args.fd as i32) })
}

/// Writes `data` through `m`, a mapping of the dma-buf `buf`, between the `DMA_BUF_IOCTL_SYNC`
/// calls that bracket a CPU write.
fn write_synced(buf: BorrowedFd<'_>, m: &Mapping, data: &[u8]) -> Result<(), Error> {
    let sync = |flags| dma_buf_sync(buf, flags).map_err(io_err("dma-buf", "DMA_BUF_IOCTL_SYNC"));
    sync(SYNC_WRITE)?;
    m.write(0, data);
    sync(SYNC_WRITE | SYNC_END)
}

/// Reads all of `m`, a mapping of the dma-buf `buf`, between the `DMA_BUF_IOCTL_SYNC` calls
/// that bracket a CPU read.
fn read_synced(buf: BorrowedFd<'_>, m: &Mapping) -> Result<Vec<u8>, Error> {
    let sync = |flags| dma_buf_sync(buf, flags).map_err(io_err("dma-buf", "DMA_BUF_IOCTL_SYNC"));
    sync(SYNC_READ)?;
    let got = mapped(m);
    sync(SYNC_READ | SYNC_END)?;
    Ok(got)
}

/// Runs `f` on another thread and reports, with its result, whether it had returned after
/// `fence` let it (and not before): `fence` is called once `f` has had time to run.
fn blocked_until<T: Send>(
    f: impl FnOnce() -> T + Send,
    fence: impl FnOnce() -> Result<(), Error>,
) -> Result<(bool, T), Error> {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = f();
            done.store(true, SeqCst);
            r
        });
        std::thread::sleep(Duration::from_millis(300));
        let early = done.load(SeqCst);
        let signalled = fence();
        let r = h.join().map_err(|_| {
            io_err("thread", "join")(io::Error::other("the waiting thread panicked"))
        })?;
        signalled?;
        Ok((!early, r))
    })
}

/// `mmap()` of a Conflux dma-buf, with `DMA_BUF_IOCTL_SYNC`, for a movable buffer in VRAM and
/// for one in system memory: writes reach jobs, a job's writes are there after a SYNC that
/// waits for the job, and the mapping follows the buffer through eviction and return.
fn cpu_access(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let len = 4 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    for (placement, label) in [
        (both, "movable buffer in VRAM"),
        (uapi::DRM_CONFLUX_BO_SYSTEM, "buffer in system memory"),
    ] {
        let bo = dev.bo_create_in(len, placement)?;
        let dst = dev.bo_create(len)?;
        let fd = dev.export(bo.handle)?;
        let buf = fd.0.as_fd();
        let m = Mapping::of_fd(buf, 0, len as usize, &format!("{name}: dma-buf"))?;
        let a = pattern(len as usize, 81);
        write_synced(buf, &m, &a)?;
        copy(dev, bo.handle, dst.handle, len)?;
        let got = read_all(dev, dst.handle, len)?;
        t.check(
            &format!("{name}: writes through an mmap of a {label}'s dma-buf reach a job"),
            got == a,
            format!("first difference {:?}", first_diff(&got, &a)),
        );

        // A job that fills the buffer once a sw_sync fence signals: a read through the
        // mapping begins once the job is done, not before.
        let timeline = Timeline::open()?;
        let gate = dev.syncobj_create()?;
        dev.syncobj_import_sync_file(gate, timeline.fence(1)?.as_fd())?;
        dev.vm_bind(&[map_op(bo.handle, 0, VA, len, false)])?;
        let job = dev.submit(&[fill_cmd(VA, len, 0x3c3c_3c3c_3c3c_3c3c)], gate, 0)?;
        let polled = ready(buf, libc::POLLIN).map_err(io_err("dma-buf", "poll"))?;
        let (waited, (got, m)) =
            blocked_until(move || (read_synced(buf, &m), m), || timeline.step())?;
        let got = got?;
        dev.wait(job, -1)?;
        dev.vm_bind(&[unmap_op(VA, len)])?;
        dev.syncobj_destroy(gate)?;
        t.check(
            &format!(
                "{name}: a read through a {label}'s dma-buf mapping begins after the job that \
                 writes it (DMA_BUF_IOCTL_SYNC, poll)"
            ),
            !polled && waited && got.iter().all(|&b| b == 0x3c),
            format!(
                "poll before the job: {}; SYNC waited for it: {waited}; first other byte at {:?}",
                if polled { "ready" } else { "not ready" },
                got.iter().position(|&b| b != 0x3c)
            ),
        );
        if placement != both {
            continue;
        }
        // Eviction and return under the mapping.
        let c = pattern(len as usize, 83);
        write_synced(buf, &m, &c)?;
        let squeezed = squeeze(dev)?;
        let out = dev.bo_info(bo.handle)?;
        let seen = read_synced(buf, &m)?;
        let d = pattern(len as usize, 84);
        write_synced(buf, &m, &d)?;
        drop(squeezed);
        copy(dev, bo.handle, dst.handle, len)?;
        let back = dev.bo_info(bo.handle)?;
        let got = read_all(dev, dst.handle, len)?;
        let seen_back = read_synced(buf, &m)?;
        t.check(
            &format!("{name}: an mmap of a dma-buf follows its buffer to system memory and back"),
            out.placement == uapi::DRM_CONFLUX_BO_SYSTEM
                && back.placement == uapi::DRM_CONFLUX_BO_VRAM
                && seen == c
                && got == d
                && seen_back == d,
            format!(
                "placement {:#x} evicted, {:#x} after a job; the mapping differs at {:?} in \
                 system memory, {:?} back in VRAM; the job's copy at {:?}",
                out.placement,
                back.placement,
                first_diff(&seen, &c),
                first_diff(&seen_back, &d),
                first_diff(&got, &d)
            ),
        );
    }
    Ok(())
}

/// A kernel importer's `dma_buf_vmap()` of a Conflux buffer (`conflux_static_import.ko`'s
/// `vmap FD`): it reads what jobs wrote and its writes reach jobs, in VRAM (I/O memory) and in
/// system memory; while mapped, the buffer stays where it is.
fn kernel_map(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let len = 4 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = dev.bo_create_in(len, both)?;
    let dst = dev.bo_create(len)?;
    let data = pattern(len as usize, 91);
    dev.write(bo.handle, 0, &data)?;
    let fd = dev.export(bo.handle)?;
    // What keeps the buffer in system memory for the second round.
    let mut ballast = None;
    for round in ["VRAM", "system memory"] {
        let imp = StaticImport::open()?;
        imp.command(&format!("vmap {}", fd.0.as_raw_fd()))?;
        let r = imp.report()?;
        let get = |k: &str| r.get(k).copied().unwrap_or(u64::MAX);
        let want = read_all(dev, bo.handle, len)?;
        let squeezed = squeeze(dev);
        let info = dev.bo_info(bo.handle)?;
        let vram = round == "VRAM";
        t.check(
            &format!("{name}: a kernel importer's vmap of a buffer in {round} reads its bytes"),
            get("kernel_map") == 1
                && get("bytes") == len
                && get("iomem") == u64::from(vram)
                && get("fnv1a") == fnv1a(&want),
            format!(
                "importer's report {r:?}; hash of the buffer {:#x}",
                fnv1a(&want)
            ),
        );
        let stays = if vram {
            uapi::DRM_CONFLUX_BO_VRAM
        } else {
            uapi::DRM_CONFLUX_BO_SYSTEM
        };
        t.check(
            &format!("{name}: while a kernel importer maps it, the buffer stays in {round}"),
            info.placement == stays
                && (!vram || matches!(&squeezed, Err(e) if e.errno() == Some(libc::ENOSPC))),
            format!(
                "placement {:#x}; a VRAM-only buffer larger than what is left: {:?}",
                info.placement,
                squeezed.as_ref().map(|b| b.size)
            ),
        );
        drop(squeezed);
        let byte = if vram { 0x71 } else { 0x72 };
        imp.command(&format!("fill {byte}"))?;
        copy(dev, bo.handle, dst.handle, len)?;
        let got = read_all(dev, dst.handle, len)?;
        t.check(
            &format!("{name}: a kernel importer's writes through vmap in {round} reach a job"),
            got.iter().all(|&b| b == byte),
            format!(
                "first other byte at {:?}",
                got.iter().position(|&b| b != byte)
            ),
        );
        drop(imp);
        if vram {
            // Unmapped, it is evicted like any other; mapped again in system memory below.
            let squeezed = squeeze(dev)?;
            let out = dev.bo_info(bo.handle)?;
            t.check(
                &format!("{name}: once the kernel importer unmaps it, the buffer is evicted"),
                out.placement == uapi::DRM_CONFLUX_BO_SYSTEM,
                format!("placement {:#x}", out.placement),
            );
            ballast = Some(squeezed);
        }
    }
    drop(ballast);
    Ok(())
}

/// `vgem`, a driver of shmem objects: it imports Conflux buffers (a static attachment, which
/// a buffer only for VRAM refuses) and hands back the same dma-buf when it exports one again,
/// whose mapping then reads and writes the buffer; a `vgem` object imported by Conflux is
/// copied to and from, its bytes checked through `vgem`'s own mapping.
fn vgem(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let name = dev.path().display().to_string();
    let vgem = Vgem::open()?;
    let len = 2 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let only_vram = dev.bo_create_in(len, uapi::DRM_CONFLUX_BO_VRAM)?;
    let fd = dev.export(only_vram.handle)?;
    t.check(
        &format!("{name}: vgem's import of a buffer only for VRAM is refused"),
        matches!(vgem.import(fd.0.as_fd()), Err(e) if e.errno() == Some(libc::EOPNOTSUPP)),
        "vgem takes no peer-to-peer address",
    );
    for (placement, label) in [
        (both, "movable buffer"),
        (uapi::DRM_CONFLUX_BO_SYSTEM, "buffer in system memory"),
    ] {
        let bo = dev.bo_create_in(len, placement)?;
        let a = pattern(len as usize, 101);
        dev.write(bo.handle, 0, &a)?;
        let fd = dev.export(bo.handle)?;
        let handle = vgem.import(fd.0.as_fd())?;
        let again = vgem.export(handle)?;
        let inode = |f: BorrowedFd<'_>| {
            File::from(f.try_clone_to_owned()?)
                .metadata()
                .map(|m| m.ino())
        };
        let same = inode(fd.0.as_fd()).ok() == inode(again.as_fd()).ok();
        let m = Mapping::of_fd(again.as_fd(), 0, len as usize, &vgem.path)?;
        let seen = read_synced(again.as_fd(), &m)?;
        let b = pattern(len as usize, 102);
        write_synced(again.as_fd(), &m, &b)?;
        let got = read_all(dev, bo.handle, len)?;
        let info = dev.bo_info(bo.handle)?;
        t.check(
            &format!(
                "{name}: vgem imports a {label} and exports the same dma-buf, whose mapping \
                 reads the bytes and whose writes reach the buffer"
            ),
            same && seen == a && got == b,
            format!(
                "same dma-buf: {same}; placement {:#x}; the mapping differs at {:?}, the buffer \
                 at {:?}",
                info.placement,
                first_diff(&seen, &a),
                first_diff(&got, &b)
            ),
        );
    }

    let handle = vgem.create(len)?;
    let m = vgem.map(handle, len)?;
    let a = pattern(len as usize, 103);
    m.write(0, &a);
    let fd = vgem.export(handle)?;
    let imported = dev.import(fd.as_fd())?;
    let dst = dev.bo_create(len)?;
    copy(dev, imported.handle, dst.handle, len)?;
    let got = read_all(dev, dst.handle, len)?;
    let b = pattern(len as usize, 104);
    dev.write(dst.handle, 0, &b)?;
    copy(dev, dst.handle, imported.handle, len)?;
    let seen = mapped(&m);
    t.check(
        &format!("{name}: a vgem object imported: a job reads what vgem's mapping wrote"),
        got == a,
        format!("first difference {:?}", first_diff(&got, &a)),
    );
    t.check(
        &format!("{name}: a vgem object imported: vgem's mapping reads what a job wrote"),
        seen == b,
        format!("first difference {:?}", first_diff(&seen, &b)),
    );
    Ok(())
}

/// The system dma-buf heap, whose tables are chunks of up to 1 MiB whatever the importer's
/// limits: a heap buffer imported, copied to and from.
fn heap(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let len = 4 * MIB;
    let fd = heap_alloc(len)?;
    let m = Mapping::of_fd(fd.as_fd(), 0, len as usize, HEAP)?;
    let a = pattern(len as usize, 111);
    write_synced(fd.as_fd(), &m, &a)?;
    let imported = dev.import(fd.as_fd())?;
    let info = dev.bo_info(imported.handle)?;
    let dst = dev.bo_create(len)?;
    copy(dev, imported.handle, dst.handle, len)?;
    let got = read_all(dev, dst.handle, len)?;
    t.check(
        &format!("{name}: a system heap buffer imported: a job reads what the CPU wrote"),
        info.path == uapi::DRM_CONFLUX_PATH_EXTERNAL && got == a,
        format!(
            "path {}; first difference {:?}",
            conflux::path_name(info.path),
            first_diff(&got, &a)
        ),
    );
    let b = pattern(len as usize, 112);
    dev.write(dst.handle, 0, &b)?;
    copy(dev, dst.handle, imported.handle, len)?;
    let seen = read_synced(fd.as_fd(), &m)?;
    t.check(
        &format!("{name}: a system heap buffer imported: the CPU reads what a job wrote"),
        seen == b,
        format!("first difference {:?}", first_diff(&seen, &b)),
    );
    Ok(())
}

/// A system heap buffer, whose chunks of 1 MiB exceed the device's limit of 64 KiB segments
/// (the driver loaded with `max_segment=65536`): the import succeeds, the copy that maps it
/// fails with `EIO`, and the destination keeps its bytes.
pub(crate) fn heap_refused(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let len = 4 * MIB;
    let fd = heap_alloc(len)?;
    let imported = dev.import(fd.as_fd())?;
    let dst = dev.bo_create(len)?;
    let before = read_all(dev, dst.handle, len)?;
    let r = copy(dev, imported.handle, dst.handle, len);
    let after = read_all(dev, dst.handle, len)?;
    t.check(
        &format!(
            "{name}: a system heap buffer in 1 MiB chunks, beyond the limit of 64 KiB segments, \
             is refused with EIO"
        ),
        matches!(&r, Err(e) if e.errno() == Some(libc::EIO)) && after == before,
        format!("{r:?}; destination unchanged: {}", after == before),
    );
    Ok(())
}

/// Fences of other drivers in a Conflux buffer's reservation object, and Conflux's fences seen
/// by them: a `sw_sync` fence imported into the dma-buf holds back a job that uses the buffer;
/// a job's fence exported as a sync_file is polled, and `vgem`
/// refuses to fence the buffer while the job runs; a `vgem` fence holds back Conflux jobs.
fn foreign_fences(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let len = 2 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let src = dev.bo_create_in(len, both)?;
    // Movable: vgem, which takes no peer-to-peer address, imports it.
    let dst = dev.bo_create_in(len, both)?;
    let a = pattern(len as usize, 121);
    dev.write(src.handle, 0, &a)?;
    let src_fd = dev.export(src.handle)?;
    let dst_fd = dev.export(dst.handle)?;
    let dma = |call: &str| io_err(&name, call);

    // A sw_sync fence as a write of the source: the copy (implicitly synchronised) waits.
    let timeline = Timeline::open()?;
    import_sync_file(src_fd.0.as_fd(), SYNC_WRITE, timeline.fence(1)?.as_fd())
        .map_err(dma("DMA_BUF_IOCTL_IMPORT_SYNC_FILE"))?;
    dev.vm_bind(&[
        map_op(src.handle, 0, VA, len, false),
        map_op(dst.handle, 0, VA + len, len, false),
    ])?;
    let job = dev.submit(&[copy_cmd(VA, VA + len, len)], 0, 0)?;
    let held = dev.wait(job, 0);
    // The job's fence, as another driver sees it: a sync_file and the destination's dma-buf.
    let sync = export_sync_file(dst_fd.0.as_fd(), SYNC_WRITE)
        .map_err(dma("DMA_BUF_IOCTL_EXPORT_SYNC_FILE"))?;
    let polled = (
        ready(sync.as_fd(), libc::POLLIN).map_err(dma("poll"))?,
        ready(dst_fd.0.as_fd(), libc::POLLIN).map_err(dma("poll"))?,
    );
    let vgem = Vgem::open()?;
    let imported = vgem.import(dst_fd.0.as_fd())?;
    let refused = vgem.fence_attach(imported);
    timeline.step()?;
    dev.wait(job, -1)?;
    let after = (
        ready(sync.as_fd(), libc::POLLIN).map_err(dma("poll"))?,
        ready(dst_fd.0.as_fd(), libc::POLLIN).map_err(dma("poll"))?,
    );
    let got = read_all(dev, dst.handle, len)?;
    t.check(
        &format!("{name}: a sw_sync fence imported into a dma-buf holds back a job that reads it"),
        matches!(&held, Err(e) if e.errno() == Some(libc::ETIME)) && got == a,
        format!(
            "WAIT before the fence signalled: {held:?}; after, the copy differs at {:?}",
            first_diff(&got, &a)
        ),
    );
    t.check(
        &format!(
            "{name}: a job's fence exported with DMA_BUF_IOCTL_EXPORT_SYNC_FILE: poll() of it \
             and of the dma-buf waits for the job"
        ),
        polled == (false, false) && after == (true, true),
        format!("(sync_file, dma-buf) ready while held back {polled:?}, after {after:?}"),
    );
    t.check(
        &format!("{name}: vgem refuses to fence a Conflux buffer while a job writes it"),
        matches!(&refused, Err(e) if e.raw_os_error() == Some(libc::EBUSY)),
        format!("{refused:?}"),
    );

    // A vgem fence on the destination: a job that reads it waits for vgem.
    let fence = vgem
        .fence_attach(imported)
        .map_err(io_err(&vgem.path, "DRM_IOCTL_VGEM_FENCE_ATTACH"))?;
    let job = dev.submit(&[copy_cmd(VA + len, VA, len)], 0, 0)?;
    let held = dev.wait(job, 0);
    vgem.fence_signal(fence)?;
    let done = dev.wait(job, -1);
    t.check(
        &format!("{name}: a vgem fence on a Conflux buffer holds back a job that reads it"),
        matches!(&held, Err(e) if e.errno() == Some(libc::ETIME)) && done.is_ok(),
        format!("WAIT before vgem signalled: {held:?}; after: {done:?}"),
    );
    dev.vm_bind(&[unmap_op(VA, 2 * len)])?;
    Ok(())
}

/// A `sw_sync` fence imported into the dma-buf of a movable buffer, the device's only one in
/// VRAM: the eviction that VRAM pressure needs waits for it, and then moves the bytes.
fn eviction_waits(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let len = 2 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let src = dev.bo_create_in(len, both)?;
    let a = pattern(len as usize, 122);
    dev.write(src.handle, 0, &a)?;
    let src_fd = dev.export(src.handle)?;
    let dma = |call: &str| io_err(&name, call);
    let timeline = Timeline::open()?;
    import_sync_file(src_fd.0.as_fd(), SYNC_WRITE, timeline.fence(1)?.as_fd())
        .map_err(dma("DMA_BUF_IOCTL_IMPORT_SYNC_FILE"))?;
    let (waited, squeezed) =
        blocked_until(|| squeeze(dev).map(|b| b.into_handle()), || timeline.step())?;
    let out = dev.bo_info(src.handle)?;
    let got = read_all(dev, src.handle, len)?;
    t.check(
        &format!("{name}: a sw_sync fence on a buffer holds back its eviction"),
        waited
            && squeezed.is_ok()
            && out.placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && got[..] == a[..],
        format!(
            "eviction waited: {waited}; the evicting BO_CREATE {:?}; placement {:#x}, bytes \
             differ at {:?}",
            squeezed.as_ref().map(|_| ()),
            out.placement,
            first_diff(&got, &a)
        ),
    );
    if let Ok(h) = squeezed {
        dev.gem_close(h)?;
    }
    Ok(())
}

/// Every test of this module, on `dev`.
pub(crate) fn test_interop(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    cpu_access(t, dev)?;
    kernel_map(t, dev)?;
    vgem(t, dev)?;
    heap(t, dev)?;
    foreign_fences(t, dev)?;
    eviction_waits(t, dev)
}
