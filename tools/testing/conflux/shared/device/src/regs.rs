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
    /// u32, device: number of user queues, numbered from 1 (0 before version 1.3).
    pub const QUEUES: u64 = 0x070;
    /// u64, device: BAR2 offset of the doorbell region: one page per queue, page `q` for
    /// queue `q` (page 0 unused).
    pub const DOORBELL_OFFSET: u64 = 0x078;
    /// BAR2 offset of the register block of queue 0, which does not exist: queue `q`'s is at
    /// `QUEUE_BLOCKS + q * QUEUE_BLOCK_SIZE`.
    pub const QUEUE_BLOCKS: u64 = 0x400;
    /// Size of a queue's register block.
    pub const QUEUE_BLOCK_SIZE: u64 = 0x40;

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
    /// Fault: user queues do not honour a preemption request (`Q_CONTROL`'s `PREEMPT`); they
    /// still stop when disabled.
    pub const FAULT_IGNORE_PREEMPT: u32 = 1 << 7;
    /// The fault switches a reset clears.
    pub const FAULTS_CLEARED_BY_RESET: u32 = FAULT_STALL | FAULT_BOGUS_SEQNO;

    /// Value of [`SIGNATURE`].
    pub const SIGNATURE_VALUE: [u8; 8] = *b"CNFXACCL";
    /// Value of [`VERSION`]: 1.3.
    pub const VERSION_VALUE: u32 = 1 << 16 | 3;

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
    /// Capability: user queues, memory fences (`WRITE_VALUE`, `WAIT_VALUE`) and preemption,
    /// version 1.3.
    pub const CAP_QUEUES: u32 = 1 << 7;
    /// Every capability of version 1.3.
    pub const CAP_ALL: u32 = 0xff;

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

/// The register block of a user queue, at [`ctrl::QUEUE_BLOCKS`]` + q * `[`ctrl::QUEUE_BLOCK_SIZE`]
/// in BAR2, and its doorbell page: offsets of their fields.
pub mod queue {
    /// u64, driver: virtual address of the queue's ring, in the queue's address space.
    pub const RING_VA: u64 = 0x00;
    /// u64, driver: size of the ring in bytes.
    pub const RING_SIZE: u64 = 0x08;
    /// u64, driver: VRAM offset of the level-3 table of the queue's address space.
    pub const MMU_ROOT: u64 = 0x10;
    /// u32, driver: [`CONTROL_ENABLE`], [`CONTROL_PREEMPT`].
    pub const CONTROL: u64 = 0x18;
    /// u32, device: `STATUS_*`.
    pub const STATUS: u64 = 0x1c;
    /// u32, driver while the queue is idle, device otherwise: free-running count of slots
    /// consumed.
    pub const TAIL: u64 = 0x20;
    /// u32, device: free-running count of the queue's events (a command with `IRQ` completed,
    /// the queue stopped, preempted or failed).
    pub const EVENTS: u64 = 0x24;
    /// u64, driver while the queue is idle, device otherwise: bytes of the command at the tail
    /// already done.
    pub const PROGRESS: u64 = 0x28;
    /// u64, device: virtual address of the failing access of the queue's error.
    pub const ERR_VA: u64 = 0x30;
    /// u32, device: cause of the queue's error; 0 = none.
    pub const ERR_CAUSE: u64 = 0x38;
    /// u32, device: opcode field of the queue's failing command.
    pub const ERR_OPCODE: u64 = 0x3c;

    /// Control: the queue runs.
    pub const CONTROL_ENABLE: u32 = 1 << 0;
    /// Control: the queue stops where it is, its state saved, until the bit is cleared.
    pub const CONTROL_PREEMPT: u32 = 1 << 1;

    /// Status: the queue does not run (disabled, or never enabled).
    pub const STATUS_IDLE: u32 = 0;
    /// Status: the queue runs, or waits for work.
    pub const STATUS_RUNNING: u32 = 1;
    /// Status: the queue is preempted, its state saved in `TAIL` and `PROGRESS`.
    pub const STATUS_PREEMPTED: u32 = 2;
    /// Status: the queue stopped on an error, recorded in its `ERR_*` fields.
    pub const STATUS_ERROR: u32 = 3;

    /// Doorbell page, u32, written by whoever submits: free-running count of slots filled.
    pub const DOORBELL_HEAD: u64 = 0x0;
    /// Size of a doorbell page.
    pub const DOORBELL_PAGE: u64 = 0x1000;
    /// Number of user queues of a version 1.3 device.
    pub const COUNT: u32 = 15;
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
    /// Opcode: write a 64-bit value at `dst_va` (a memory fence), version 1.3.
    pub const OP_WRITE_VALUE: u32 = 5;
    /// Opcode: wait until the 64-bit value at `va`, masked, compares true with a value (user
    /// queues only), version 1.3.
    pub const OP_WAIT_VALUE: u32 = 6;

    /// Flag: raise the completion vector once the command completes.
    pub const FLAG_IRQ: u32 = 1 << 0;
    /// Shift of the comparison field of `WAIT_VALUE`'s flags.
    pub const COMPARE_SHIFT: u32 = 4;
    /// Mask of the comparison field of `WAIT_VALUE`'s flags.
    pub const COMPARE_MASK: u32 = 7 << COMPARE_SHIFT;

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
/// BAR2 offset of the doorbell region: a page per queue, page `q` for queue `q`.
pub const DOORBELL_OFFSET: u64 = DEFAULT_RING_OFFSET + DEFAULT_RING_SIZE;
/// Size of the doorbell region.
pub const DOORBELL_SIZE: u64 = (queue::COUNT as u64 + 1) * queue::DOORBELL_PAGE;
/// BAR2 offset of the device-private region.
pub const PRIV_OFFSET: u64 = DOORBELL_OFFSET + DOORBELL_SIZE;
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
    assert!(DOORBELL_OFFSET.is_multiple_of(queue::DOORBELL_PAGE));
    let last = ctrl::QUEUE_BLOCKS + queue::COUNT as u64 * ctrl::QUEUE_BLOCK_SIZE;
    assert!(last + ctrl::QUEUE_BLOCK_SIZE <= ctrl::SIZE);
    assert!(queue::ERR_OPCODE + 4 <= ctrl::QUEUE_BLOCK_SIZE);
};

/// BAR2 offset of field `at` (a `queue::*` offset) of queue `q`'s register block.
pub const fn queue_reg(q: u32, at: u64) -> u64 {
    ctrl::QUEUE_BLOCKS + q as u64 * ctrl::QUEUE_BLOCK_SIZE + at
}

/// BAR2 offset of queue `q`'s doorbell page.
pub const fn doorbell_page(q: u32) -> u64 {
    DOORBELL_OFFSET + q as u64 * queue::DOORBELL_PAGE
}

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
