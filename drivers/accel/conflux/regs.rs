// SPDX-License-Identifier: GPL-2.0

//! Register layout of the Conflux device, version 1.0 (`Documentation/accel/conflux/device.rst`).

/// BAR0: the doorbell registers of the ivshmem-doorbell function.
pub(crate) const DOORBELL_BAR: u32 = 0;
/// Size of the doorbell register block.
pub(crate) const DOORBELL_BAR_SIZE: usize = 0x100;
/// `Doorbell`: `peer << 16 | vector`; the engine is peer 0, vector 0.
pub(crate) const DOORBELL: usize = 0xc;

/// BAR2: control block, ring and VRAM.
pub(crate) const CTL_BAR: u32 = 2;
/// The part of BAR2 that holds the control block.
pub(crate) const CTL_SIZE: usize = 0x100;

/// `SIGNATURE`: ASCII `CNFXACCL`.
pub(crate) const SIGNATURE: usize = 0x000;
/// `VERSION`: `major << 16 | minor`.
pub(crate) const VERSION: usize = 0x008;
/// `CAPS`: capability bits.
pub(crate) const CAPS: usize = 0x00c;
/// `BAR_SIZE`: size of BAR2.
pub(crate) const BAR_SIZE: usize = 0x010;
/// `VRAM_OFFSET`: BAR2 offset of VRAM.
pub(crate) const VRAM_OFFSET: usize = 0x018;
/// `VRAM_SIZE`: size of VRAM.
pub(crate) const VRAM_SIZE: usize = 0x020;
/// `STATUS`: 0 OFF, 1 READY, 2 ERROR, 3 RESETTING.
pub(crate) const STATUS: usize = 0x060;
/// `CONTROL`: bit 0 requests a reset; the device clears it when the reset is done.
pub(crate) const CONTROL: usize = 0x064;
/// `CONTROL` bit 0.
pub(crate) const CONTROL_RESET: u32 = 1;

/// The signature value, as the 64-bit little-endian read of `CNFXACCL`.
pub(crate) const SIGNATURE_VALUE: u64 = u64::from_le_bytes(*b"CNFXACCL");
/// The major version this driver implements.
pub(crate) const VERSION_MAJOR: u32 = 1;
/// The capabilities of a version 1.0 device: COPY, FILL, FENCE, TIMESTAMP, MMU_2M, PEER_P2P.
pub(crate) const CAPS_V1: u32 = 0x3f;

/// `STATUS` of a device that executes commands.
pub(crate) const STATUS_READY: u32 = 1;
