// SPDX-License-Identifier: GPL-2.0

//! Device model of the Conflux accelerator.
//!
//! The accelerator is QEMU's `ivshmem-doorbell` PCI device whose BAR2 is
//! shared with this model. `Documentation/accel/conflux/device.rst` is the
//! specification this crate implements, on top of the `conflux-device`
//! crate (its registers, ring slots, page tables and memory, which the
//! guest's `conflux-raw` uses too):
//!
//! - [`fabric`]: the PCIe topology and its peer-to-peer routing rule;
//! - [`engine`]: command execution against a [`Memory`];
//! - [`qmp`]: the fabric as QEMU reports it over QMP;
//! - [`server`]: the `conflux-emu serve` server (with [`sys`], its system
//!   calls, and [`bench`], the host `memcpy` yardstick).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(doc)]
use conflux_device::memory::Memory;

pub mod bench;
pub mod engine;
pub mod fabric;
pub mod qmp;
pub mod server;
pub mod sys;
