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
/// `RING_OFFSET`: BAR2 offset of the ring.
pub(crate) const RING_OFFSET: usize = 0x038;
/// `RING_SIZE`: size of the ring in bytes.
pub(crate) const RING_SIZE: usize = 0x040;
/// `RING_HEAD`: free-running count of slots the driver filled.
pub(crate) const RING_HEAD: usize = 0x048;
/// `RING_TAIL`: free-running count of slots the device consumed.
pub(crate) const RING_TAIL: usize = 0x04c;
/// `FENCE_SEQNO`: seqno of the last completed `FENCE` command.
pub(crate) const FENCE_SEQNO: usize = 0x050;
/// `MMU_ROOT`: VRAM offset of the level-3 table; 0 turns the MMU off.
pub(crate) const MMU_ROOT: usize = 0x058;
/// `STATUS`: 0 OFF, 1 READY, 2 ERROR, 3 RESETTING.
pub(crate) const STATUS: usize = 0x060;
/// `CONTROL`: bit 0 requests a reset; the device clears it when the reset is done.
pub(crate) const CONTROL: usize = 0x064;
/// `ERR_VA`: virtual address of the failing access.
pub(crate) const ERR_VA: usize = 0x080;
/// `ERR_CAUSE`: cause of the recorded error, 0 for none.
pub(crate) const ERR_CAUSE: usize = 0x088;
/// `ERR_OPCODE`: opcode field of the failing command.
pub(crate) const ERR_OPCODE: usize = 0x08c;
/// `ERR_SEQNO`: seqno field of the failing command.
pub(crate) const ERR_SEQNO: usize = 0x090;
/// `CNT_LOCAL_BYTES`: bytes moved with every operand in local VRAM.
pub(crate) const CNT_LOCAL_BYTES: usize = 0x0c0;
/// `CNT_P2P_BYTES`: bytes read from or written to peers.
pub(crate) const CNT_P2P_BYTES: usize = 0x0c8;
/// `CNT_SYSMEM_BYTES`: bytes read from or written to system memory.
pub(crate) const CNT_SYSMEM_BYTES: usize = 0x0d0;
/// `CNT_COMMANDS`: commands completed.
pub(crate) const CNT_COMMANDS: usize = 0x0d8;
/// `CNT_ERRORS`: errors recorded.
pub(crate) const CNT_ERRORS: usize = 0x0e0;

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
/// `STATUS` of a device that recorded an error and stopped.
pub(crate) const STATUS_ERROR: u32 = 2;

/// Size of a command slot.
pub(crate) const SLOT_SIZE: usize = 64;
/// Slot field `opcode` (u32).
pub(crate) const SLOT_OPCODE: usize = 0x00;
/// Slot field `flags` (u32).
pub(crate) const SLOT_FLAGS: usize = 0x04;
/// Slot field `seqno` (u64).
pub(crate) const SLOT_SEQNO: usize = 0x08;
/// Slot field `operand0` (u64); `operand1` and `operand2` follow.
pub(crate) const SLOT_OPERANDS: usize = 0x10;
/// Slot flag: raise the completion vector when the command completes.
pub(crate) const SLOT_FLAG_IRQ: u32 = 1;

/// Opcode `COPY`: `src_va`, `dst_va`, `len`.
pub(crate) const OP_COPY: u32 = 1;
/// Opcode `FILL`: `dst_va`, `len`, `pattern`.
pub(crate) const OP_FILL: u32 = 2;
/// Opcode `FENCE`: writes the slot's seqno to `FENCE_SEQNO`.
pub(crate) const OP_FENCE: u32 = 3;

/// The largest `len` of a `COPY` or `FILL`.
pub(crate) const MAX_COMMAND_LEN: u64 = 1 << 32;

/// MSI-X vector raised when a command with `IRQ` completed.
pub(crate) const VECTOR_COMPLETION: usize = 0;
/// MSI-X vector raised when the device recorded an error and stopped.
pub(crate) const VECTOR_ERROR: usize = 1;

/// Page-table entry bit: valid.
pub(crate) const PTE_VALID: u64 = 1 << 0;
/// Page-table entry bit: the page may be written.
pub(crate) const PTE_WRITABLE: u64 = 1 << 1;
/// Page-table entry bit: the entry maps a page (level 1 and 0).
pub(crate) const PTE_LEAF: u64 = 1 << 2;
/// Leaf entry: the address is a PCIe bus address (aperture 1), not a VRAM offset.
pub(crate) const PTE_BUS: u64 = 1 << 3;
/// The aperture field of an entry.
pub(crate) const PTE_APERTURE_MASK: u64 = 3 << 3;
/// Page-table entry address bits 51..12.
pub(crate) const PTE_ADDR_MASK: u64 = ((1 << 52) - 1) & !0xfff;

/// Size of a page table: 512 entries of 8 bytes.
pub(crate) const TABLE_SIZE: u64 = 4096;
/// Entries per table.
pub(crate) const TABLE_ENTRIES: usize = 512;
/// Virtual addresses are 48 bits wide.
pub(crate) const VA_BITS: u32 = 48;
