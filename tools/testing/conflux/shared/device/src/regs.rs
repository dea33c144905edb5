// SPDX-License-Identifier: GPL-2.0

//! Register-level definitions of the device, as given in
//! `Documentation/accel/conflux/device.rst`.
//!
//! Every multi-byte value in BAR2 is little-endian.

use crate::fault::ConfigError;

/// PCI vendor ID (QEMU's `ivshmem-doorbell`).
pub const PCI_VENDOR_ID: u16 = 0x1af4;
/// PCI device ID (QEMU's `ivshmem-doorbell`).
pub const PCI_DEVICE_ID: u16 = 0x1110;

/// BAR0: the `ivshmem-doorbell` register block.
pub mod bar0 {
    /// Interrupt mask (INTx only; unused with MSI-X).
    pub const INTR_MASK: u64 = 0x0;
    /// Interrupt status (INTx only; unused with MSI-X).
    pub const INTR_STATUS: u64 = 0x4;
    /// Read: the peer id of this device.
    pub const IV_POSITION: u64 = 0x8;
    /// Write: `peer << 16 | vector` rings that peer's vector.
    pub const DOORBELL: u64 = 0xc;
    /// Peer id of the engine (the device model).
    pub const ENGINE_PEER: u16 = 0;
    /// Peer id of the guest-visible device.
    pub const DEVICE_PEER: u16 = 1;
    /// Number of MSI-X vectors.
    pub const NUM_VECTORS: u16 = 2;
    /// MSI-X vector raised when a command flagged `IRQ` completes.
    pub const VECTOR_COMPLETION: u16 = 0;
    /// MSI-X vector raised when the device records an error.
    pub const VECTOR_ERROR: u16 = 1;

    /// The value written to [`DOORBELL`] to ring `vector` of `peer`.
    pub const fn doorbell(peer: u16, vector: u16) -> u32 {
        (peer as u32) << 16 | vector as u32
    }
}

/// BAR2 control block: offsets of its fields.
pub mod ctrl {
    /// Size of the control block.
    pub const SIZE: u64 = 0x1000;
    /// u64, device: ASCII `CNFXACCL`.
    pub const SIGNATURE: u64 = 0x000;
    /// u32, device: `major << 16 | minor`.
    pub const VERSION: u64 = 0x008;
    /// u32, device: capability bits (`CAP_*`).
    pub const CAPS: u64 = 0x00c;
    /// u64, device: size of BAR2.
    pub const BAR_SIZE: u64 = 0x010;
    /// u64, device: BAR2 offset of VRAM.
    pub const VRAM_OFFSET: u64 = 0x018;
    /// u64, device: size of VRAM.
    pub const VRAM_SIZE: u64 = 0x020;
    /// u64, device: BAR2 offset of the device-private region.
    pub const PRIV_OFFSET: u64 = 0x028;
    /// u64, device: size of the device-private region.
    pub const PRIV_SIZE: u64 = 0x030;
    /// u64, driver (device sets the default): BAR2 offset of the ring.
    pub const RING_OFFSET: u64 = 0x038;
    /// u64, driver (device sets the default): size of the ring in bytes.
    pub const RING_SIZE: u64 = 0x040;
    /// u32, driver: free-running counter of the next slot the driver fills.
    pub const RING_HEAD: u64 = 0x048;
    /// u32, device: free-running counter of the next slot the device executes.
    pub const RING_TAIL: u64 = 0x04c;
    /// u64, device: seqno of the last completed `FENCE`.
    pub const FENCE_SEQNO: u64 = 0x050;
    /// u64, driver: VRAM offset of the top-level page table, 0 = MMU off.
    pub const MMU_ROOT: u64 = 0x058;
    /// u32, device: `STATUS_*`.
    pub const STATUS: u64 = 0x060;
    /// u32, driver: `CONTROL_*`.
    pub const CONTROL: u64 = 0x064;
    /// u32, device: `RING_POLL_*`.
    pub const RING_POLL: u64 = 0x068;
    /// u64, device: virtual address of the failing access.
    pub const ERR_VA: u64 = 0x080;
    /// u32, device: `CAUSE_*` of the recorded error, 0 = none.
    pub const ERR_CAUSE: u64 = 0x088;
    /// u32, device: opcode field of the failing command.
    pub const ERR_OPCODE: u64 = 0x08c;
    /// u64, device: seqno field of the failing command.
    pub const ERR_SEQNO: u64 = 0x090;
    /// u64, device: bytes moved with every operand in local VRAM.
    pub const CNT_LOCAL_BYTES: u64 = 0x0c0;
    /// u64, device: bytes read from or written to peers.
    pub const CNT_P2P_BYTES: u64 = 0x0c8;
    /// u64, device: bytes read from or written to system memory.
    pub const CNT_SYSMEM_BYTES: u64 = 0x0d0;
    /// u64, device: commands completed.
    pub const CNT_COMMANDS: u64 = 0x0d8;
    /// u64, device: errors recorded.
    pub const CNT_ERRORS: u64 = 0x0e0;
    /// u32, test: fault switches that make the device misbehave on purpose.
    pub const FAULTS: u64 = 0x0f0;

    /// Fault: the engine executes no command until a reset (which clears the switch).
    pub const FAULT_STALL: u32 = 1 << 0;
    /// Fault: the completion vector is not raised.
    pub const FAULT_DROP_COMPLETION: u32 = 1 << 1;
    /// Fault: `FENCE` writes a seqno 2^40 beyond its own, until a reset (which clears the
    /// switch).
    pub const FAULT_BOGUS_SEQNO: u32 = 1 << 2;
    /// Fault: reset requests are never acknowledged.
    pub const FAULT_IGNORE_RESET: u32 = 1 << 3;
    /// Fault: the process that implements the device dies at the device's next doorbell, as if
    /// it had been killed: every device it serves stops.
    pub const FAULT_EXIT: u32 = 1 << 4;
    /// Fault: after raising the completion vector, the device keeps rewriting the high half of
    /// `FENCE_SEQNO` with its value plus one, and back, for 20 ms: a driver that reads the
    /// register in two halves sees it torn.
    pub const FAULT_TEAR_SEQNO: u32 = 1 << 5;
    /// Fault: the next `COPY` or `FILL` fails with a bus error before it writes anything, and
    /// the device clears the switch as it fails the command: one failed command per setting.
    pub const FAULT_FAIL_COMMAND: u32 = 1 << 6;
    /// The fault switches a reset clears.
    pub const FAULTS_CLEARED_BY_RESET: u32 = FAULT_STALL | FAULT_BOGUS_SEQNO;

    /// Value of [`SIGNATURE`].
    pub const SIGNATURE_VALUE: [u8; 8] = *b"CNFXACCL";
    /// Value of [`VERSION`]: 1.2.
    pub const VERSION_VALUE: u32 = 1 << 16 | 2;

    /// Capability: `COPY` command.
    pub const CAP_COPY: u32 = 1 << 0;
    /// Capability: `FILL` command.
    pub const CAP_FILL: u32 = 1 << 1;
    /// Capability: `FENCE` command.
    pub const CAP_FENCE: u32 = 1 << 2;
    /// Capability: `TIMESTAMP` command.
    pub const CAP_TIMESTAMP: u32 = 1 << 3;
    /// Capability: 2 MiB leaf entries at level 1.
    pub const CAP_MMU_2M: u32 = 1 << 4;
    /// Capability: peer-to-peer accesses to other devices' VRAM.
    pub const CAP_PEER_P2P: u32 = 1 << 5;
    /// Capability: NULL leaf entries (aperture 2), version 1.2.
    pub const CAP_MMU_NULL: u32 = 1 << 6;
    /// Every capability of version 1.2.
    pub const CAP_ALL: u32 = 0x7f;

    /// Status: not initialised.
    pub const STATUS_OFF: u32 = 0;
    /// Status: executing commands.
    pub const STATUS_READY: u32 = 1;
    /// Status: stopped on an error until reset.
    pub const STATUS_ERROR: u32 = 2;
    /// Status: a reset is in progress.
    pub const STATUS_RESETTING: u32 = 3;

    /// Control: request a reset.
    pub const CONTROL_RESET: u32 = 1 << 0;

    /// Ring poll: the engine reads `RING_HEAD` on its own, without waiting for a doorbell.
    pub const RING_POLL_AWAKE: u32 = 1 << 0;
}

/// Ring command slots.
pub mod slot {
    /// Size of a command slot.
    pub const SIZE: u64 = 64;
    /// u32: opcode.
    pub const OPCODE: usize = 0x00;
    /// u32: flags.
    pub const FLAGS: usize = 0x04;
    /// u64: seqno.
    pub const SEQNO: usize = 0x08;
    /// u64: first operand.
    pub const OPERAND0: usize = 0x10;
    /// u64: second operand.
    pub const OPERAND1: usize = 0x18;
    /// u64: third operand.
    pub const OPERAND2: usize = 0x20;
    /// Start of the reserved tail of the slot (must be zero).
    pub const RESERVED: usize = 0x28;

    /// Opcode: copy `len` bytes from `src_va` to `dst_va`.
    pub const OP_COPY: u32 = 1;
    /// Opcode: fill `len` bytes at `dst_va` with an 8-byte pattern.
    pub const OP_FILL: u32 = 2;
    /// Opcode: write the seqno to `FENCE_SEQNO`.
    pub const OP_FENCE: u32 = 3;
    /// Opcode: write a nanosecond timestamp at `dst_va`.
    pub const OP_TIMESTAMP: u32 = 4;

    /// Flag: raise the completion vector once the command completes.
    pub const FLAG_IRQ: u32 = 1 << 0;

    /// Largest `len` of a `COPY` or `FILL`.
    pub const MAX_LEN: u64 = 1 << 32;
    /// Smallest ring size in bytes (one slot).
    pub const MIN_RING_SIZE: u64 = SIZE;
    /// Largest ring size in bytes (2^31 slots).
    pub const MAX_RING_SIZE: u64 = SIZE << 31;
}

/// Page-table entries.
pub mod pte {
    /// The entry is valid.
    pub const VALID: u64 = 1 << 0;
    /// Leaf: the page may be written.
    pub const WRITABLE: u64 = 1 << 1;
    /// Leaf entry (allowed at level 1, implied at level 0).
    pub const LEAF: u64 = 1 << 2;
    /// Shift of the aperture field.
    pub const APERTURE_SHIFT: u32 = 3;
    /// Mask of the aperture field.
    pub const APERTURE_MASK: u64 = 3 << APERTURE_SHIFT;
    /// Aperture: the address is a VRAM offset.
    pub const APERTURE_VRAM: u64 = 0;
    /// Aperture: the address is a PCIe bus address.
    pub const APERTURE_BUS: u64 = 1;
    /// Aperture: a NULL page, which reads as zeros and drops writes
    /// (`CAP_MMU_NULL`); its address must be 0.
    pub const APERTURE_NULL: u64 = 2;
    /// Mask of the address field (bits 12..51).
    pub const ADDR_MASK: u64 = ((1 << 52) - 1) & !0xfff;
    /// Bits that must be zero in every entry.
    pub const RESERVED_MASK: u64 = !(VALID | WRITABLE | LEAF | APERTURE_MASK | ADDR_MASK);
    /// Number of entries per table.
    pub const ENTRIES: u64 = 512;
    /// Size of a table (and alignment of its VRAM offset).
    pub const TABLE_SIZE: u64 = 4096;
    /// Number of translated virtual-address bits.
    pub const VA_BITS: u32 = 48;
    /// Size of a level-0 page.
    pub const PAGE_4K: u64 = 1 << 12;
    /// Size of a level-1 leaf page.
    pub const PAGE_2M: u64 = 1 << 21;
}

/// BAR2 offset of the default ring.
pub const DEFAULT_RING_OFFSET: u64 = ctrl::SIZE;
/// Size of the default ring: 1024 slots.
pub const DEFAULT_RING_SIZE: u64 = 0x1_0000;
/// BAR2 offset of the device-private region.
pub const PRIV_OFFSET: u64 = DEFAULT_RING_OFFSET + DEFAULT_RING_SIZE;
/// BAR2 offset of VRAM.
pub const VRAM_OFFSET: u64 = 2 << 20;
/// Smallest BAR2 size.
pub const MIN_BAR_SIZE: u64 = 4 << 20;
/// Largest BAR2 size (the PTE address field is 52 bits wide).
pub const MAX_BAR_SIZE: u64 = 1 << 51;

// The regions follow each other in this order, suitably aligned.
const _: () = {
    assert!(DEFAULT_RING_OFFSET >= ctrl::SIZE && DEFAULT_RING_SIZE.is_power_of_two());
    assert!(PRIV_OFFSET >= DEFAULT_RING_OFFSET + DEFAULT_RING_SIZE && VRAM_OFFSET > PRIV_OFFSET);
    assert!(VRAM_OFFSET.is_multiple_of(pte::PAGE_2M) && MIN_BAR_SIZE > VRAM_OFFSET);
    assert!(ctrl::CNT_ERRORS + 8 <= ctrl::SIZE);
};

/// The BAR2 layout of a device, derived from the size of BAR2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Size of BAR2: a power of two from [`MIN_BAR_SIZE`] to [`MAX_BAR_SIZE`].
    pub bar_size: u64,
}

impl Layout {
    /// The layout of a BAR2 of `bar_size` bytes.
    pub fn new(bar_size: u64) -> Result<Self, ConfigError> {
        if !bar_size.is_power_of_two() || !(MIN_BAR_SIZE..=MAX_BAR_SIZE).contains(&bar_size) {
            return Err(ConfigError(format!(
                "BAR2 size {bar_size:#x} is not a power of two from {MIN_BAR_SIZE:#x} to {MAX_BAR_SIZE:#x}"
            )));
        }
        Ok(Self { bar_size })
    }

    /// Size of VRAM, which runs from [`VRAM_OFFSET`] to the end of BAR2.
    pub const fn vram_size(&self) -> u64 {
        self.bar_size - VRAM_OFFSET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vram_runs_to_the_end_of_bar2() {
        let l = Layout::new(64 << 20).unwrap();
        assert_eq!(l.vram_size(), 62 << 20);
    }

    #[test]
    fn layout_rejects_bad_sizes() {
        for size in [0, 3 << 20, 2 << 20, (4 << 20) + 4096, 1 << 52] {
            let err = Layout::new(size).unwrap_err();
            assert!(err.to_string().contains(&format!("{size:#x}")), "{err}");
        }
        assert!(Layout::new(MIN_BAR_SIZE).is_ok());
        assert!(Layout::new(MAX_BAR_SIZE).is_ok());
    }

    #[test]
    fn doorbell_value() {
        assert_eq!(bar0::doorbell(bar0::ENGINE_PEER, 0), 0);
        assert_eq!(bar0::doorbell(1, bar0::VECTOR_ERROR), 0x1_0001);
    }

    #[test]
    fn pte_masks_partition_the_entry() {
        let parts = [
            pte::VALID,
            pte::WRITABLE,
            pte::LEAF,
            pte::APERTURE_MASK,
            pte::ADDR_MASK,
            pte::RESERVED_MASK,
        ];
        assert_eq!(parts.iter().fold(0, |a, p| a | p), u64::MAX);
        assert_eq!(parts.iter().map(|p| p.count_ones()).sum::<u32>(), 64);
        assert_eq!(pte::ADDR_MASK.trailing_zeros(), 12);
        assert_eq!(64 - pte::ADDR_MASK.leading_zeros(), 52);
    }
}
