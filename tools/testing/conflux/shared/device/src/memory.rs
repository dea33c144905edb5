// SPDX-License-Identifier: GPL-2.0

//! The memory the device model works on: every device's BAR2 and system
//! memory, behind the [`Memory`] trait.

use std::{fmt, ops::Range};

/// A memory the device can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The whole BAR2 of the device with this index in the topology
    /// (offsets are BAR2 offsets).
    Bar(usize),
    /// System memory (offsets are those of `RamRange::offset` in the
    /// device model's `fabric`).
    System,
    /// The BAR of the plain (not Conflux) function with this index in the
    /// topology (offsets are BAR offsets).
    Plain(usize),
}

/// An access outside the memory that backs a [`Target`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryError {
    /// The memory accessed.
    pub target: Target,
    /// Offset of the access.
    pub offset: u64,
    /// Length of the access.
    pub len: usize,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes at offset {:#x} of {:?} are not backed by memory",
            self.len, self.offset, self.target
        )
    }
}

impl std::error::Error for MemoryError {}

/// Byte access to the memories of the fabric.
///
/// Implementations bounds-check every access and report a [`MemoryError`]
/// instead of panicking.
pub trait Memory {
    /// Reads `buf.len()` bytes at `offset` of `target`.
    fn read(&self, target: Target, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// Writes `data` at `offset` of `target`.
    fn write(&mut self, target: Target, offset: u64, data: &[u8]) -> Result<(), MemoryError>;

    /// Reads a little-endian u32.
    fn read_u32(&self, target: Target, offset: u64) -> Result<u32, MemoryError> {
        let mut b = [0; 4];
        self.read(target, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian u64.
    fn read_u64(&self, target: Target, offset: u64) -> Result<u64, MemoryError> {
        let mut b = [0; 8];
        self.read(target, offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u32.
    fn write_u32(&mut self, target: Target, offset: u64, value: u32) -> Result<(), MemoryError> {
        self.write(target, offset, &value.to_le_bytes())
    }

    /// Writes a little-endian u64.
    fn write_u64(&mut self, target: Target, offset: u64, value: u64) -> Result<(), MemoryError> {
        self.write(target, offset, &value.to_le_bytes())
    }

    /// Copies `len` bytes at `src_offset` of `src` to `dst_offset` of
    /// `dst`. When both ranges are in the same memory and overlap, the
    /// destination gets the source as it was before the copy.
    ///
    /// The default implementation checks that the last byte of each range
    /// can be read, then goes through a bounce buffer in pieces of
    /// [`BOUNCE`] bytes. Implementations that address both memories directly
    /// copy without it.
    fn copy(
        &mut self,
        src: Target,
        src_offset: u64,
        dst: Target,
        dst_offset: u64,
        len: usize,
    ) -> Result<(), MemoryError> {
        if len == 0 {
            return Ok(());
        }
        last_byte(self, src, src_offset, len)?;
        last_byte(self, dst, dst_offset, len)?;
        let mut buf = vec![0; len.min(BOUNCE)];
        // Back to front when the destination overlaps the source from above.
        let backwards = src == dst && dst_offset > src_offset;
        let mut left = len;
        while left > 0 {
            let n = left.min(BOUNCE);
            let at = if backwards { left - n } else { len - left } as u64;
            let piece = &mut buf[..n];
            // Errors name the whole range, as the checks above do.
            self.read(src, src_offset + at, piece)
                .map_err(|_| MemoryError {
                    target: src,
                    offset: src_offset,
                    len,
                })?;
            self.write(dst, dst_offset + at, piece)
                .map_err(|_| MemoryError {
                    target: dst,
                    offset: dst_offset,
                    len,
                })?;
            left -= n;
        }
        Ok(())
    }

    /// Writes `len` bytes at `offset` of `target`: byte `i` of the range
    /// gets byte `i % 8` of `pattern` in little-endian order.
    ///
    /// The default implementation checks that the last byte of the range
    /// can be read, then writes pieces of [`BOUNCE`] bytes.
    fn fill(
        &mut self,
        target: Target,
        offset: u64,
        len: usize,
        pattern: u64,
    ) -> Result<(), MemoryError> {
        if len == 0 {
            return Ok(());
        }
        last_byte(self, target, offset, len)?;
        let p = pattern.to_le_bytes();
        let buf: Vec<u8> = p.iter().copied().cycle().take(len.min(BOUNCE)).collect();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BOUNCE);
            self.write(target, offset + done as u64, &buf[..n])?;
            done += n;
        }
        Ok(())
    }
}

/// Checks that the last of `len` (> 0) bytes at `offset` of `target` can
/// be read; the error names the whole range.
fn last_byte<M: Memory + ?Sized>(
    mem: &M,
    target: Target,
    offset: u64,
    len: usize,
) -> Result<(), MemoryError> {
    let err = MemoryError {
        target,
        offset,
        len,
    };
    let last = u64::try_from(len - 1)
        .ok()
        .and_then(|n| offset.checked_add(n))
        .ok_or_else(|| err.clone())?;
    mem.read(target, last, &mut [0]).map_err(|_| err)
}

/// Size of the pieces the default [`Memory::copy`] and [`Memory::fill`]
/// move at once (a multiple of 8, so that a fill pattern stays in phase).
pub const BOUNCE: usize = 64 << 10;

/// [`Memory`] on plain byte vectors: one per device's BAR2, one for system
/// memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buffers {
    /// BAR2 contents, indexed by device.
    pub bars: Vec<Vec<u8>>,
    /// System memory contents.
    pub system: Vec<u8>,
    /// BAR contents of the plain functions.
    pub plain: Vec<Vec<u8>>,
}

impl Buffers {
    /// Zeroed buffers of the given sizes.
    pub fn new(bar_sizes: &[usize], system_size: usize) -> Self {
        Self {
            bars: bar_sizes.iter().map(|&n| vec![0; n]).collect(),
            system: vec![0; system_size],
            plain: Vec::new(),
        }
    }

    fn bytes(&self, target: Target) -> &[u8] {
        match target {
            Target::Bar(i) => self.bars.get(i).map_or(&[], Vec::as_slice),
            Target::System => &self.system,
            Target::Plain(i) => self.plain.get(i).map_or(&[], Vec::as_slice),
        }
    }

    fn bytes_mut(&mut self, target: Target) -> &mut [u8] {
        match target {
            Target::Bar(i) => self.bars.get_mut(i).map_or(&mut [], Vec::as_mut_slice),
            Target::System => &mut self.system,
            Target::Plain(i) => self.plain.get_mut(i).map_or(&mut [], Vec::as_mut_slice),
        }
    }
}

/// The index range of `len` bytes at `offset` in a memory of `size` bytes.
fn span(size: usize, target: Target, offset: u64, len: usize) -> Result<Range<usize>, MemoryError> {
    usize::try_from(offset)
        .ok()
        .and_then(|start| Some(start..start.checked_add(len)?))
        .filter(|r| r.end <= size)
        .ok_or(MemoryError {
            target,
            offset,
            len,
        })
}

impl Memory for Buffers {
    fn read(&self, target: Target, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let bytes = self.bytes(target);
        buf.copy_from_slice(&bytes[span(bytes.len(), target, offset, buf.len())?]);
        Ok(())
    }

    fn write(&mut self, target: Target, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        let bytes = self.bytes_mut(target);
        let range = span(bytes.len(), target, offset, data.len())?;
        bytes[range].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_bounds_check() {
        let mut m = Buffers::new(&[16, 32], 8);
        m.write_u64(Target::Bar(1), 24, 0x1122_3344_5566_7788)
            .unwrap();
        assert_eq!(m.read_u32(Target::Bar(1), 24).unwrap(), 0x5566_7788);
        assert_eq!(m.bars[1][31], 0x11);
        let e = m.write_u64(Target::Bar(1), 25, 0).unwrap_err();
        assert_eq!(
            e,
            MemoryError {
                target: Target::Bar(1),
                offset: 25,
                len: 8
            }
        );
        assert!(m.read_u64(Target::Bar(2), 0).is_err());
        assert!(m.read_u64(Target::System, 1).is_err());
        assert!(m.read_u64(Target::System, u64::MAX).is_err());
        assert!(m.write(Target::System, 8, &[]).is_ok());
        assert!(e.to_string().contains("0x19"));
    }

    /// Memory through the default methods only, counting the calls.
    struct Counting(Buffers, usize);

    impl Memory for Counting {
        fn read(&self, target: Target, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            self.0.read(target, offset, buf)
        }

        fn write(&mut self, target: Target, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
            self.1 += 1;
            self.0.write(target, offset, data)
        }
    }

    fn ramp(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn default_copy_between_targets() {
        let n = 3 * BOUNCE + 5;
        let mut m = Buffers::new(&[n + 100, n + 100], 16);
        m.bars[0][..n].copy_from_slice(&ramp(n));
        m.copy(Target::Bar(0), 0, Target::Bar(1), 7, n).unwrap();
        assert_eq!(m.bars[1][7..7 + n], ramp(n)[..]);
        assert!(m.bars[1][..7].iter().all(|&b| b == 0));
        m.copy(Target::Bar(1), 8, Target::System, 3, 10).unwrap();
        assert_eq!(m.system[3..13], ramp(n)[1..11]);
        // Zero bytes, at the very end, is fine.
        m.copy(Target::System, 16, Target::Bar(0), 0, 0).unwrap();
        // Bounds: nothing is read or written past either end.
        let before = m.clone();
        let e = m
            .copy(Target::Bar(0), 101, Target::Bar(1), 0, n)
            .unwrap_err();
        assert_eq!(e.target, Target::Bar(0));
        assert!(m.copy(Target::Bar(0), 0, Target::Bar(2), 0, 1).is_err());
        assert!(m
            .copy(Target::Bar(0), u64::MAX, Target::System, 0, 2)
            .is_err());
        assert!(m
            .copy(Target::System, 0, Target::System, u64::MAX, 2)
            .is_err());
        let e = m
            .copy(Target::System, 0, Target::Bar(1), 0, 17)
            .unwrap_err();
        assert_eq!((e.target, e.len), (Target::System, 17));
        assert!(m == before);
    }

    #[test]
    fn default_copy_within_one_target_overlapping() {
        let n = 2 * BOUNCE + 3;
        let size = n + BOUNCE + 1;
        for (from, to) in [
            (0, 1000),
            (1000, 0),
            (5, 5),
            (0, BOUNCE + 1),
            (BOUNCE + 1, 0),
        ] {
            let mut m = Counting(Buffers::new(&[size], 0), 0);
            m.0.bars[0].copy_from_slice(&ramp(size));
            let mut want = m.0.bars[0].clone();
            want.copy_within(from..from + n, to);
            m.copy(Target::Bar(0), from as u64, Target::Bar(0), to as u64, n)
                .unwrap();
            assert!(m.0.bars[0] == want, "{from} -> {to}");
            assert_eq!(m.1, 3, "pieces of {BOUNCE} bytes");
        }
    }

    #[test]
    fn default_fill() {
        let mut m = Counting(Buffers::new(&[], 2 * BOUNCE + 20), 0);
        let p = 0x0807_0605_0403_0201;
        m.fill(Target::System, 3, 2 * BOUNCE + 10, p).unwrap();
        assert_eq!(m.1, 3);
        let s = &m.0.system;
        assert_eq!(s[..3], [0, 0, 0]);
        assert_eq!(s[3..14], [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3]);
        assert!(s[3..3 + 2 * BOUNCE + 10]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 8) as u8 + 1));
        assert!(s[3 + 2 * BOUNCE + 10..].iter().all(|&b| b == 0));
        assert!(m.fill(Target::System, 11, 2 * BOUNCE + 10, p).is_err());
        assert!(m.fill(Target::System, u64::MAX, 2, p).is_err());
        assert!(m.fill(Target::Bar(0), 0, 1, p).is_err());
        m.fill(Target::Bar(0), 0, 0, p).unwrap();
    }
}
