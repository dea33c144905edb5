// SPDX-License-Identifier: GPL-2.0

//! The Conflux device as `Documentation/accel/conflux/device.rst` specifies
//! it, for both sides of it: the device model on the host (`conflux-emu`)
//! and the programs that drive the devices from the rig's guest
//! (`conflux-raw`).
//!
//! - [`regs`]: register offsets and values;
//! - [`ring`]: the command ring and its slots;
//! - [`mmu`]: the four-level page-table walk, and a [`mmu::Mapper`] that
//!   builds tables;
//! - [`memory`]: the memory a device reaches, behind the
//!   [`memory::Memory`] trait;
//! - [`shm`]: that memory on shared mappings (memfds, sysfs BAR files);
//! - [`fault`]: device faults and configuration errors.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod fault;
pub mod memory;
pub mod mmu;
pub mod regs;
pub mod ring;
pub mod shm;

/// Whether `a_len` bytes at `a` and `b_len` bytes at `b` share a byte
/// (computed without overflow).
pub fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    u128::from(a) < u128::from(b) + u128::from(b_len)
        && u128::from(b) < u128::from(a) + u128::from(a_len)
}
