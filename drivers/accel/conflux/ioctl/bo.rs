// SPDX-License-Identifier: GPL-2.0

//! The buffer ioctls: BO_CREATE, BO_P2PMEM, BO_INFO, BO_READ and BO_WRITE.

use kernel::{
    devres::Devres,
    dma_segments::DmaRange,
    drm::{
        gem::{
            self,
            BaseObject, //
        },
        Registered, //
    },
    pci::p2pdma::UserPages,
    prelude::*,
    sizes::SZ_4K,
    time::Jiffies,
    uaccess::{
        UserPtr,
        UserSlice, //
    },
    uapi, //
};

use crate::{
    driver::{
        ConfluxDevice,
        DrmFile, //
    },
    gem::{
        memory::Memory,
        moves,
        Bo,
        Contents, //
    },
    hw::DeviceData,
    prime,
    vm, //
};

use super::Call;

/// `DRM_IOCTL_CONFLUX_BO_CREATE`.
pub(crate) fn create(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_bo_create,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "BO_CREATE");
    let known = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    if args.flags & !known != 0 || args.flags == 0 {
        let flags = args.flags;
        return Err(call.refuse(EINVAL, fmt!("flags {flags:#x}: unknown or no placement")));
    }
    call.zero(&[("handle", args.handle.into())])?;
    let page = SZ_4K as u64;
    let size = match args.size.checked_add(page - 1) {
        Some(s) if args.size != 0 => s & !(page - 1),
        _ => {
            let size = args.size;
            return Err(call.refuse(EINVAL, fmt!("size {size:#x} is not valid")));
        }
    };
    let system = args.flags & uapi::DRM_CONFLUX_BO_SYSTEM != 0;
    let memory = if args.flags & uapi::DRM_CONFLUX_BO_VRAM == 0 {
        Err(ENOSPC)
    } else if size > data.vram.size() {
        Err(call.refuse(ENOSPC, fmt!("size {size:#x} exceeds VRAM")))
    } else {
        moves::alloc_vram(data, size, &[]).map_err(|e| {
            let avail = data.vram.avail();
            call.refuse(
                e,
                fmt!("size {size:#x}: {e:?} ({avail:#x} bytes of VRAM available)"),
            )
        })
    };
    let memory = match memory {
        Ok(vram) => {
            data.scrub(vram.iter().map(|b| (b.offset(), b.size())))
                .map_err(|e| call.refuse(e, fmt!("size {size:#x}: zeroing its VRAM: {e:?}")))?;
            Memory::Vram(vram)
        }
        Err(e) if e == ENOSPC && system => {
            let max = uapi::DRM_CONFLUX_MAX_SYSTEM_SIZE;
            if size > u64::from(max) {
                return Err(call.refuse(
                    EINVAL,
                    fmt!("size {size:#x} exceeds the system-memory limit {max:#x}"),
                ));
            }
            Memory::system(&data.vram, size)
                .map_err(|e| call.refuse(e, fmt!("size {size:#x} in system memory: {e:?}")))?
        }
        Err(e) => return Err(e),
    };
    // A buffer that may be in either place moves between them: it is evicted when VRAM is
    // short, comes back for a job, and moves to system memory for an importer that cannot
    // reach the device's VRAM.
    let movable = system && args.flags & uapi::DRM_CONFLUX_BO_VRAM != 0;
    let contents = Contents::local(memory, movable.then(|| data.lru.clone()))?;
    let obj = gem::Object::<Bo>::new(dev, usize::try_from(size)?, contents)
        .map_err(crate::gem::create_error)?;
    Bo::touch(&obj);
    args.handle = obj.create_handle(file)?;
    args.size = size;
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_BO_P2PMEM`: a buffer of the VRAM behind the caller's mapping of the
/// device's published peer-to-peer memory, with its bytes.
pub(crate) fn p2pmem(
    dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_bo_p2pmem,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "BO_P2PMEM");
    let (addr, size, flags) = (args.addr, args.size, args.flags);
    if flags != 0 {
        return Err(call.refuse(EINVAL, fmt!("flags {flags:#x}: unknown")));
    }
    call.zero(&[("handle", args.handle.into())])?;
    let page = SZ_4K as u64;
    if size == 0 || (addr | size) % page != 0 {
        return Err(call.refuse(
            EINVAL,
            fmt!("addr {addr:#x}, size {size:#x}: not 4 KiB aligned, or empty"),
        ));
    }
    let Some(window) = data.p2pmem() else {
        return Err(call.refuse(
            EOPNOTSUPP,
            fmt!("no peer-to-peer memory is published (module parameter p2pmem_mib is 0)"),
        ));
    };
    if size > window.len() {
        let max = window.len();
        return Err(call.refuse(
            EINVAL,
            fmt!("size {size:#x} exceeds the {max:#x} bytes of peer-to-peer memory"),
        ));
    }
    let count = usize::try_from(size / page)?;
    let pins = UserPages::pin(usize::try_from(addr)?, count, true).map_err(|e| {
        call.refuse(
            e,
            fmt!("{size:#x} bytes at {addr:#x}: {e:?}: unmapped, read-only or without pages"),
        )
    })?;
    // The pages are this device's when their physical addresses are in its window of VRAM.
    let base = data.vram.phys_base()?;
    let foreign = pins.phys_addrs().find(|&phys| {
        !phys
            .checked_sub(base)
            .is_some_and(|at| at >= window.addr() && at <= window.last())
    });
    if let Some(at) = foreign {
        return Err(call.refuse(
            EXDEV,
            fmt!("{size:#x} bytes at {addr:#x}: physical {at:#x} is not this device's p2pmem"),
        ));
    }
    let Some(phys) = pins.phys_range() else {
        return Err(call.refuse(
            EINVAL,
            fmt!("{size:#x} bytes at {addr:#x}: the pages are not consecutive"),
        ));
    };
    let first = phys.addr().checked_sub(base).ok_or(EINVAL)?;
    let vram = DmaRange::new(first, size)?;
    let pins = Devres::new(data.pdev.as_ref(), pins)?;
    let contents = Contents::local(Memory::Lent(pins, vram), None)?;
    let obj = gem::Object::<Bo>::new(dev, usize::try_from(size)?, contents)
        .map_err(crate::gem::create_error)?;
    args.handle = obj.create_handle(file)?;
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_BO_INFO`.
pub(crate) fn info(
    _dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_bo_info,
    file: &DrmFile,
) -> Result<u32> {
    let call = Call::new(data, "BO_INFO");
    call.zero(&[
        ("flags", args.flags.into()),
        ("path", args.path.into()),
        ("moves", args.moves),
    ])?;
    let bo = call.bo(file, fmt!(""), args.handle)?;
    args.mmap_offset = match bo.imported() {
        Some(_) => 0,
        None => bo.create_mmap_offset()?,
    };
    args.size = bo.size() as u64;
    args.placement = bo.placement();
    args.path = prime::path(&bo);
    args.moves = bo.moves();
    Ok(0)
}

/// `DRM_IOCTL_CONFLUX_BO_READ`.
pub(crate) fn read(
    _dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_bo_rw,
    file: &DrmFile,
) -> Result<u32> {
    copy(&Call::new(data, "BO_READ"), args, file, false)
}

/// `DRM_IOCTL_CONFLUX_BO_WRITE`.
pub(crate) fn write(
    _dev: &ConfluxDevice<Registered>,
    data: &DeviceData<'_>,
    args: &mut uapi::drm_conflux_bo_rw,
    file: &DrmFile,
) -> Result<u32> {
    copy(&Call::new(data, "BO_WRITE"), args, file, true)
}

/// Copies between a buffer and user memory, for BO_READ and BO_WRITE.
fn copy(
    call: &Call<'_, '_>,
    args: &uapi::drm_conflux_bo_rw,
    file: &DrmFile,
    write: bool,
) -> Result<u32> {
    const CHUNK: usize = 64 * 1024;
    let data = call.data();
    let (flags, offset, size) = (args.flags, args.offset, args.size);
    if flags != 0 || size == 0 || (offset | size) % 4 != 0 {
        return Err(call.refuse(
            EINVAL,
            fmt!("flags {flags:#x}, offset {offset:#x}, size {size:#x} are not valid"),
        ));
    }
    let bo = call.bo(file, fmt!(""), args.handle)?;
    let fits = offset
        .checked_add(size)
        .is_some_and(|end| end <= bo.size() as u64);
    if !fits {
        let (handle, bo_size) = (args.handle, bo.size());
        return Err(call.refuse(
            EINVAL,
            fmt!("{size:#x} bytes at {offset:#x} exceed buffer {handle} of {bo_size:#x} bytes"),
        ));
    }
    // A write waits for readers and writers, a read for writers.
    let usage = vm::usage(!write);
    // The engine's watchdog ends a job that does not complete.
    while !bo.dma_resv().wait_timeout(usage, true, Jiffies::MAX)? {}
    let user = UserSlice::new(
        UserPtr::from_addr(usize::try_from(args.data)?),
        usize::try_from(size)?,
    );
    let (mut reader, mut writer) = user.reader_writer();
    let mut buf = KVec::from_elem(0u8, CHUNK, GFP_KERNEL_ACCOUNT)?;
    let mut done = 0u64;
    while done < size {
        let n = usize::try_from(size - done)?.min(CHUNK);
        let chunk = buf.get_mut(..n).ok_or(EINVAL)?;
        if write {
            reader.read_slice(chunk)?;
        }
        {
            // A move cannot start while the lock is held, and one that started is waited for:
            // the copy reaches the buffer's memory when it holds the buffer's bytes.
            let _locked = bo.dma_resv().lock();
            while !bo.dma_resv().wait_timeout(usage, true, Jiffies::MAX)? {}
            bo.cpu_copy(&data.vram, offset + done, chunk, write)?;
        }
        if !write {
            writer.write_slice(chunk)?;
        }
        done += n as u64;
    }
    Ok(0)
}
