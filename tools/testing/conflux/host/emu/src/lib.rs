// SPDX-License-Identifier: GPL-2.0

//! Device model of the Conflux accelerator.
//!
//! The accelerator is QEMU's `ivshmem-doorbell` PCI device whose BAR2 is
//! shared with this model. `Documentation/accel/conflux/device.rst` is the
//! specification this crate implements:
//!
//! - [`regs`]: register offsets and values;
//! - [`ring`]: the command ring and its slots;
//! - [`mmu`]: the four-level page-table walk;
//! - [`fabric`]: the PCIe topology and its peer-to-peer routing rule;
//! - [`engine`]: command execution against a [`memory::Memory`];
//! - [`shm`]: that memory on the shared mappings of QEMU's devices;
//! - [`qmp`]: the fabric as QEMU reports it over QMP;
//! - [`server`]: the `conflux-emu serve` server (with [`sys`], its system
//!   calls, and [`bench`], the host `memcpy` yardstick).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod bench;
pub mod engine;
pub mod fabric;
pub mod fault;
pub mod memory;
pub mod mmu;
pub mod qmp;
pub mod regs;
pub mod ring;
pub mod server;
pub mod shm;
pub mod sys;

/// Whether `a_len` bytes at `a` and `b_len` bytes at `b` share a byte
/// (computed without overflow).
fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    u128::from(a) < u128::from(b) + u128::from(b_len)
        && u128::from(b) < u128::from(a) + u128::from(a_len)
}
