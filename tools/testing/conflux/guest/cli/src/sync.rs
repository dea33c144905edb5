// SPDX-License-Identifier: GPL-2.0

//! Fences from outside Conflux: `sw_sync` timelines that a test signals by hand, the status
//! of a sync_file, and fences attached to a dma-buf (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE`).

use std::{
    fs::{File, OpenOptions},
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// `struct sw_sync_create_fence_data` of `drivers/dma-buf/sw_sync.c`.
#[repr(C)]
struct CreateFence {
    value: u32,
    name: [u8; 32],
    fence: i32,
}

/// `SW_SYNC_IOC_CREATE_FENCE`: `_IOWR('W', 0, struct sw_sync_create_fence_data)`.
const SW_SYNC_IOC_CREATE_FENCE: u64 =
    3 << 30 | (std::mem::size_of::<CreateFence>() as u64) << 16 | (b'W' as u64) << 8;
/// `SW_SYNC_IOC_INC`: `_IOW('W', 1, __u32)`.
const SW_SYNC_IOC_INC: u64 = 1 << 30 | 4 << 16 | (b'W' as u64) << 8 | 1;

/// `struct sync_file_info` of `<linux/sync_file.h>`.
#[repr(C)]
#[derive(Default)]
struct SyncFileInfo {
    name: [u8; 32],
    status: i32,
    flags: u32,
    num_fences: u32,
    pad: u32,
    sync_fence_info: u64,
}

/// `SYNC_IOC_FILE_INFO`: `_IOWR('>', 4, struct sync_file_info)`.
const SYNC_IOC_FILE_INFO: u64 =
    3 << 30 | (std::mem::size_of::<SyncFileInfo>() as u64) << 16 | (b'>' as u64) << 8 | 4;

/// `struct dma_buf_import_sync_file` of `<linux/dma-buf.h>`.
#[repr(C)]
struct ImportSyncFile {
    flags: u32,
    fd: i32,
}

/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`: `_IOW('b', 3, struct dma_buf_import_sync_file)`.
const DMA_BUF_IOCTL_IMPORT_SYNC_FILE: u64 =
    1 << 30 | (std::mem::size_of::<ImportSyncFile>() as u64) << 16 | (b'b' as u64) << 8 | 3;
/// `DMA_BUF_SYNC_WRITE`: the imported fence is a write.
const DMA_BUF_SYNC_WRITE: u32 = 2;

fn ioctl<T>(fd: i32, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a valid, exclusively borrowed `T`, the structure `request` encodes.
    let ret = unsafe { libc::ioctl(fd, request as libc::Ioctl, std::ptr::from_mut(arg)) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A `sw_sync` timeline: fences at points the test chooses, signalled when the test advances
/// the timeline. Closing it signals what is left with an error.
pub struct SwSync(File);

impl SwSync {
    /// Opens a new timeline at 0 (debugfs mounted, `CONFIG_SW_SYNC`).
    pub fn open() -> io::Result<Self> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/sys/kernel/debug/sync/sw_sync")
            .map(Self)
    }

    /// A sync_file of a fence that signals when the timeline reaches `point`.
    pub fn fence(&self, point: u32) -> io::Result<OwnedFd> {
        let mut args = CreateFence {
            value: point,
            name: [0; 32],
            fence: -1,
        };
        args.name[..4].copy_from_slice(b"test");
        ioctl(self.0.as_raw_fd(), SW_SYNC_IOC_CREATE_FENCE, &mut args)?;
        // SAFETY: The kernel just gave us this descriptor, which nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(args.fence) })
    }

    /// Advances the timeline by `by`, signalling the fences it reaches.
    pub fn advance(&self, by: u32) -> io::Result<()> {
        let mut by = by;
        ioctl(self.0.as_raw_fd(), SW_SYNC_IOC_INC, &mut by)
    }
}

/// The status of sync_file `fd`: 0 while pending, 1 once signalled, a negative errno when it
/// signalled an error.
pub fn sync_file_status(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut info = SyncFileInfo::default();
    ioctl(fd.as_raw_fd(), SYNC_IOC_FILE_INFO, &mut info)?;
    Ok(info.status)
}

/// Attaches the fence of sync_file `fence` to dma-buf `dmabuf` as a write: implicit
/// synchronisation then makes every later user of the buffer wait for it.
pub fn attach_write_fence(dmabuf: BorrowedFd<'_>, fence: BorrowedFd<'_>) -> io::Result<()> {
    let mut args = ImportSyncFile {
        flags: DMA_BUF_SYNC_WRITE,
        fd: fence.as_raw_fd(),
    };
    ioctl(
        dmabuf.as_raw_fd(),
        DMA_BUF_IOCTL_IMPORT_SYNC_FILE,
        &mut args,
    )
}
