// SPDX-License-Identifier: GPL-2.0

//! [`Memory`] on shared mappings: the BAR2 memfds of the devices and the
//! guest's RAM file, which the guest reads and writes while the model does,
//! or, in the guest, the sysfs files of the devices' BARs.
//!
//! Because another process writes these pages at any time, no Rust
//! reference into them is ever created: every access goes through raw
//! pointers after a bounds check, whole aligned registers with volatile
//! loads and stores, bulk data with `ptr::copy`.

#![allow(unsafe_code)]

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd},
    ptr::{self, NonNull},
};

use crate::memory::{Memory, MemoryError, Target};

/// An anonymous memory file (`memfd_create`) of `size` bytes, zeroed.
pub fn memfd(name: &str, size: u64) -> io::Result<File> {
    let name =
        std::ffi::CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// A shared, read-write mapping of a file (`MAP_SHARED`), unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is only
// accessed through raw pointers with bounds checks, from any thread.
unsafe impl Send for Mapping {}

// SAFETY: as for `Send`: `&Mapping` hands out raw pointers only. Several
// threads writing the same shared memory is what several devices (and the
// guest, in another process) do to it; no Rust reference to its bytes is
// ever made.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map 0 bytes",
            ));
        }
        // SAFETY: a new mapping chosen by the kernel; nothing aliases it yet.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Self { ptr, len })
    }

    /// Maps the whole of `file`, which must be `len` bytes long or longer
    /// (a shorter file would fault past its end).
    pub fn of_file(file: &File, len: u64) -> io::Result<Self> {
        let size = file.metadata()?.len();
        if size < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the file has {size} bytes, {len} are needed"),
            ));
        }
        let len =
            usize::try_from(len).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Self::new(file.as_fd(), len)
    }

    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mappings have at least a byte).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A pointer to `len` bytes at `offset`, if they lie inside.
    fn span(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let start = usize::try_from(offset).ok()?;
        (start.checked_add(len)? <= self.len).then(|| {
            // SAFETY: start <= self.len: the result stays in (or one past)
            // the mapping.
            unsafe { self.ptr.as_ptr().add(start) }
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no pointer
        // into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// [`Memory`] on shared mappings: one per device's BAR2 (indexed by
/// device), optionally system memory, and the BARs of plain functions.
#[derive(Debug, Default)]
pub struct SharedMemory {
    bars: Vec<Mapping>,
    system: Option<Mapping>,
    plain: Vec<Mapping>,
}

impl SharedMemory {
    /// Memory made of these mappings.
    pub fn new(bars: Vec<Mapping>, system: Option<Mapping>) -> Self {
        Self {
            bars,
            system,
            plain: Vec::new(),
        }
    }

    /// The same memory with the BARs of plain functions, indexed as
    /// [`Target::Plain`].
    pub fn with_plain(self, plain: Vec<Mapping>) -> Self {
        Self { plain, ..self }
    }

    /// The mapping behind `target`.
    pub fn mapping(&self, target: Target) -> Option<&Mapping> {
        match target {
            Target::Bar(i) => self.bars.get(i),
            Target::System => self.system.as_ref(),
            Target::Plain(i) => self.plain.get(i),
        }
    }

    /// A pointer to `len` bytes at `offset` of `target`, bounds-checked.
    fn span(&self, target: Target, offset: u64, len: usize) -> Result<*mut u8, MemoryError> {
        self.mapping(target)
            .and_then(|m| m.span(offset, len))
            .ok_or(MemoryError {
                target,
                offset,
                len,
            })
    }
}

/// A shared reference accesses the memory as an owner does: the devices of
/// one server, each on its own thread, share it.
impl Memory for &SharedMemory {
    fn read(&self, target: Target, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let src = self.span(target, offset, buf.len())?;
        // SAFETY: `src` has `buf.len()` bytes inside the mapping, which
        // cannot overlap `buf` (a Rust buffer, never a shared mapping).
        unsafe { ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&mut self, target: Target, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        let dst = self.span(target, offset, data.len())?;
        // SAFETY: as in `read`, the other way.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    fn read_u32(&self, target: Target, offset: u64) -> Result<u32, MemoryError> {
        let p = self.span(target, offset, 4)?;
        let v = if p.align_offset(4) == 0 {
            // SAFETY: 4 aligned bytes inside the mapping: one load.
            unsafe { ptr::read_volatile(p.cast::<u32>()) }
        } else {
            // SAFETY: 4 bytes inside the mapping.
            unsafe { ptr::read_unaligned(p.cast::<u32>()) }
        };
        Ok(u32::from_le(v))
    }

    fn read_u64(&self, target: Target, offset: u64) -> Result<u64, MemoryError> {
        let p = self.span(target, offset, 8)?;
        let v = if p.align_offset(8) == 0 {
            // SAFETY: 8 aligned bytes inside the mapping: one load.
            unsafe { ptr::read_volatile(p.cast::<u64>()) }
        } else {
            // SAFETY: 8 bytes inside the mapping.
            unsafe { ptr::read_unaligned(p.cast::<u64>()) }
        };
        Ok(u64::from_le(v))
    }

    fn write_u32(&mut self, target: Target, offset: u64, value: u32) -> Result<(), MemoryError> {
        let p = self.span(target, offset, 4)?;
        if p.align_offset(4) == 0 {
            // SAFETY: 4 aligned bytes inside the mapping: one store.
            unsafe { ptr::write_volatile(p.cast::<u32>(), value.to_le()) };
        } else {
            // SAFETY: 4 bytes inside the mapping.
            unsafe { ptr::write_unaligned(p.cast::<u32>(), value.to_le()) };
        }
        Ok(())
    }

    fn write_u64(&mut self, target: Target, offset: u64, value: u64) -> Result<(), MemoryError> {
        let p = self.span(target, offset, 8)?;
        if p.align_offset(8) == 0 {
            // SAFETY: 8 aligned bytes inside the mapping: one store.
            unsafe { ptr::write_volatile(p.cast::<u64>(), value.to_le()) };
        } else {
            // SAFETY: 8 bytes inside the mapping.
            unsafe { ptr::write_unaligned(p.cast::<u64>(), value.to_le()) };
        }
        Ok(())
    }

    /// One `ptr::copy` (memmove) between the two mappings.
    fn copy(
        &mut self,
        src: Target,
        src_offset: u64,
        dst: Target,
        dst_offset: u64,
        len: usize,
    ) -> Result<(), MemoryError> {
        let from = self.span(src, src_offset, len)?;
        let to = self.span(dst, dst_offset, len)?;
        // SAFETY: both ranges lie inside live mappings; `ptr::copy` allows
        // them to overlap (the same memory, or one file mapped twice).
        unsafe { ptr::copy(from, to, len) };
        Ok(())
    }

    /// One `ptr::write_bytes` when the pattern repeats one byte; otherwise
    /// copies of a 4 KiB block of the pattern.
    fn fill(
        &mut self,
        target: Target,
        offset: u64,
        len: usize,
        pattern: u64,
    ) -> Result<(), MemoryError> {
        let dst = self.span(target, offset, len)?;
        let bytes = pattern.to_le_bytes();
        if bytes.iter().all(|&b| b == bytes[0]) {
            // SAFETY: `len` bytes inside the mapping.
            unsafe { ptr::write_bytes(dst, bytes[0], len) };
            return Ok(());
        }
        // A block of the pattern in our own memory, copied repeatedly.
        const BLOCK: usize = 4096;
        let block: Vec<u8> = bytes.iter().copied().cycle().take(BLOCK).collect();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BLOCK);
            // SAFETY: `done + n <= len` bytes inside the mapping; `block` is
            // ours. BLOCK is a multiple of 8, so the pattern stays in phase.
            unsafe { ptr::copy_nonoverlapping(block.as_ptr(), dst.add(done), n) };
            done += n;
        }
        Ok(())
    }
}

/// The owner accesses the memory as any holder of a shared reference does.
impl Memory for SharedMemory {
    fn read(&self, target: Target, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        <&SharedMemory as Memory>::read(&self, target, offset, buf)
    }

    fn write(&mut self, target: Target, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        <&SharedMemory as Memory>::write(&mut &*self, target, offset, data)
    }

    fn read_u32(&self, target: Target, offset: u64) -> Result<u32, MemoryError> {
        <&SharedMemory as Memory>::read_u32(&self, target, offset)
    }

    fn read_u64(&self, target: Target, offset: u64) -> Result<u64, MemoryError> {
        <&SharedMemory as Memory>::read_u64(&self, target, offset)
    }

    fn write_u32(&mut self, target: Target, offset: u64, value: u32) -> Result<(), MemoryError> {
        <&SharedMemory as Memory>::write_u32(&mut &*self, target, offset, value)
    }

    fn write_u64(&mut self, target: Target, offset: u64, value: u64) -> Result<(), MemoryError> {
        <&SharedMemory as Memory>::write_u64(&mut &*self, target, offset, value)
    }

    fn copy(
        &mut self,
        src: Target,
        src_offset: u64,
        dst: Target,
        dst_offset: u64,
        len: usize,
    ) -> Result<(), MemoryError> {
        <&SharedMemory as Memory>::copy(&mut &*self, src, src_offset, dst, dst_offset, len)
    }

    fn fill(
        &mut self,
        target: Target,
        offset: u64,
        len: usize,
        pattern: u64,
    ) -> Result<(), MemoryError> {
        <&SharedMemory as Memory>::fill(&mut &*self, target, offset, len, pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Buffers;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn memfd_has_its_size_and_is_zeroed() {
        let mut f = memfd("test", 4096).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4096);
        f.write_all(b"abc").unwrap();
        f.seek(SeekFrom::Start(4090)).unwrap();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        assert_eq!(b, [0; 6]);
    }

    fn map(size: usize) -> (File, Mapping) {
        let f = memfd("shm-test", size as u64).unwrap();
        let m = Mapping::new(f.as_fd(), size).unwrap();
        (f, m)
    }

    fn two_bars(size: usize) -> SharedMemory {
        SharedMemory::new(vec![map(size).1, map(size).1], Some(map(size / 2).1))
    }

    #[test]
    fn bounds_checks() {
        let mut m = two_bars(8192);
        m.write_u64(Target::Bar(1), 8184, 0x1122_3344_5566_7788)
            .unwrap();
        assert_eq!(m.read_u32(Target::Bar(1), 8188).unwrap(), 0x1122_3344);
        // Unaligned registers work too.
        m.write_u32(Target::Bar(0), 3, 0xaabb_ccdd).unwrap();
        assert_eq!(m.read_u64(Target::Bar(0), 3).unwrap(), 0xaabb_ccdd);
        let mut b = [0; 5];
        m.read(Target::Bar(0), 2, &mut b).unwrap();
        assert_eq!(b, [0, 0xdd, 0xcc, 0xbb, 0xaa]);
        let e = m.write_u64(Target::Bar(1), 8185, 0).unwrap_err();
        assert_eq!(
            e,
            MemoryError {
                target: Target::Bar(1),
                offset: 8185,
                len: 8
            }
        );
        assert!(m.read_u32(Target::Bar(2), 0).is_err());
        assert!(m.read_u32(Target::System, 4093).is_err());
        assert!(m.read_u64(Target::System, u64::MAX).is_err());
        assert!(m.write(Target::System, 4096, &[]).is_ok());
        assert!(m.write(Target::System, 4097, &[]).is_err());
        assert!(m.fill(Target::System, 4000, 97, 1).is_err());
        assert!(m
            .copy(Target::Bar(0), 8000, Target::Bar(1), 0, 193)
            .is_err());
        assert!(m
            .copy(Target::Bar(0), 0, Target::Bar(1), 8000, 193)
            .is_err());
        assert!(m
            .copy(Target::Bar(0), 0, Target::System, u64::MAX, 1)
            .is_err());
        assert!(SharedMemory::default().read_u32(Target::System, 0).is_err());
        let f = memfd("short", 100).unwrap();
        assert!(Mapping::of_file(&f, 4096).is_err());
        assert!(Mapping::new(f.as_fd(), 0).is_err());
    }

    #[test]
    fn copy_between_two_memfds_and_within_one() {
        let size = 1 << 20;
        let mut m = two_bars(size);
        let data: Vec<u8> = (0..size).map(|i| (i * 13 + i / 509) as u8).collect();
        m.write(Target::Bar(0), 0, &data).unwrap();
        m.copy(Target::Bar(0), 5, Target::Bar(1), 100, size - 200)
            .unwrap();
        let mut got = vec![0; size];
        m.read(Target::Bar(1), 0, &mut got).unwrap();
        assert!(got[..100].iter().all(|&b| b == 0));
        assert!(got[100..size - 100] == data[5..size - 195]);
        assert!(got[size - 100..].iter().all(|&b| b == 0));
        // To system memory.
        m.copy(Target::Bar(1), 100, Target::System, 1, 1000)
            .unwrap();
        let mut s = [0; 1001];
        m.read(Target::System, 0, &mut s).unwrap();
        assert!(s[1..] == data[5..1005]);
        // Overlapping, within one memory: like copy_within.
        let mut want = data.clone();
        want.copy_within(0..size - 4096, 4093);
        m.copy(Target::Bar(0), 0, Target::Bar(0), 4093, size - 4096)
            .unwrap();
        m.read(Target::Bar(0), 0, &mut got).unwrap();
        assert!(got == want);
    }

    #[test]
    fn fill_matches_the_default_implementation() {
        let size = 3 * 4096 + 77;
        let mut shm = two_bars(size + 100);
        let mut buf = Buffers::new(&[size + 100, size + 100], 0);
        for (i, (len, pattern)) in [
            (size, 0x0807_0605_0403_0201u64),
            (13, 0xabab_abab_abab_abab),
            (4096 * 2 + 1, 0x1122_3344_5566_7788),
            (1, 0xff),
        ]
        .into_iter()
        .enumerate()
        {
            let off = 3 + i as u64 * 5;
            shm.fill(Target::Bar(1), off, len, pattern).unwrap();
            buf.fill(Target::Bar(1), off, len, pattern).unwrap();
        }
        let mut got = vec![0; size + 100];
        shm.read(Target::Bar(1), 0, &mut got).unwrap();
        assert!(got == buf.bars[1]);
    }

    #[test]
    fn another_mapping_of_the_same_file_sees_the_writes() {
        let (f, a) = map(4096);
        let mut m = SharedMemory::new(vec![a], None);
        m.write_u64(Target::Bar(0), 64, 0x0102_0304_0506_0708)
            .unwrap();
        let other = SharedMemory::new(vec![Mapping::of_file(&f, 4096).unwrap()], None);
        assert_eq!(
            other.read_u64(Target::Bar(0), 64).unwrap(),
            0x0102_0304_0506_0708
        );
        assert_eq!(other.mapping(Target::Bar(0)).map(Mapping::len), Some(4096));
    }
}
