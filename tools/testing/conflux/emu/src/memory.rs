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
    /// System memory (offsets are those of [`crate::fabric::RamRange::offset`]).
    System,
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
}

/// [`Memory`] on plain byte vectors: one per device's BAR2, one for system
/// memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buffers {
    /// BAR2 contents, indexed by device.
    pub bars: Vec<Vec<u8>>,
    /// System memory contents.
    pub system: Vec<u8>,
}

impl Buffers {
    /// Zeroed buffers of the given sizes.
    pub fn new(bar_sizes: &[usize], system_size: usize) -> Self {
        Self {
            bars: bar_sizes.iter().map(|&n| vec![0; n]).collect(),
            system: vec![0; system_size],
        }
    }

    fn bytes(&self, target: Target) -> &[u8] {
        match target {
            Target::Bar(i) => self.bars.get(i).map_or(&[], Vec::as_slice),
            Target::System => &self.system,
        }
    }

    fn bytes_mut(&mut self, target: Target) -> &mut [u8] {
        match target {
            Target::Bar(i) => self.bars.get_mut(i).map_or(&mut [], Vec::as_mut_slice),
            Target::System => &mut self.system,
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
}
