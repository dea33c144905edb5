// SPDX-License-Identifier: GPL-2.0

//! Registers, command slots and page-table entries of the Conflux device, version 1.3.
//!
//! The layout is specified in `Documentation/accel/conflux/device.rst`. BAR0 is the
//! ivshmem-doorbell function's register block, of which the driver only rings the doorbell;
//! BAR2 starts with the control block, then holds the command ring and VRAM.
//!
//! The kernel's I/O regions are accessed 32 bits at a time here, as the device model serves
//! them, so the 64-bit registers are read and written as two halves ([`read64`], [`write64`]).

use kernel::{
    bitfield,
    io::{
        register,
        register::Register,
        Io, //
    },
    num::Bounded,
    pci,
    prelude::*,
};

/// BAR0: the doorbell registers of the ivshmem-doorbell function.
pub(crate) const DOORBELL_BAR: u32 = 0;
/// Size of the doorbell register block.
pub(crate) const DOORBELL_BAR_SIZE: usize = 0x100;
/// BAR2: control block, ring and VRAM.
pub(crate) const CTL_BAR: u32 = 2;
/// The part of BAR2 that holds the control block.
pub(crate) const CTL_SIZE: usize = 0x100;

/// The mapping of BAR0.
pub(crate) type Bar0<'a> = pci::Bar<'a, DOORBELL_BAR_SIZE>;
/// The mapping of BAR2; the control block is checked at build time, the rest at run time.
pub(crate) type Bar2<'a> = pci::Bar<'a, CTL_SIZE>;

register! {
    /// `Doorbell` (BAR0): rings `vector` of `peer`; the engine is peer 0, vector 0.
    pub(crate) DOORBELL(u32) @ 0x00c {
        31:16 peer;
        15:0 vector;
    }
}

register! {
    /// `SIGNATURE`: ASCII `CNFXACCL`.
    pub(crate) SIGNATURE(u64) @ 0x000 {
        63:0 value;
    }

    /// `VERSION`: the interface version.
    pub(crate) VERSION(u32) @ 0x008 {
        31:16 major;
        15:0 minor;
    }

    /// `CAPS`: what the device implements.
    pub(crate) CAPS(u32) @ 0x00c {
        31:0 bits;
    }

    /// `BAR_SIZE`: the size of BAR2.
    pub(crate) BAR_SIZE(u64) @ 0x010 {
        63:0 bytes;
    }

    /// `VRAM_OFFSET`: where VRAM starts in BAR2.
    pub(crate) VRAM_OFFSET(u64) @ 0x018 {
        63:0 offset;
    }

    /// `VRAM_SIZE`: the size of VRAM.
    pub(crate) VRAM_SIZE(u64) @ 0x020 {
        63:0 bytes;
    }

    /// `RING_OFFSET`: where the command ring starts in BAR2.
    pub(crate) RING_OFFSET(u64) @ 0x038 {
        63:0 offset;
    }

    /// `RING_SIZE`: the size of the command ring in bytes.
    pub(crate) RING_SIZE(u64) @ 0x040 {
        63:0 bytes;
    }

    /// `RING_HEAD`: free-running count of slots the driver filled.
    pub(crate) RING_HEAD(u32) @ 0x048 {
        31:0 count;
    }

    /// `RING_TAIL`: free-running count of slots the device consumed.
    pub(crate) RING_TAIL(u32) @ 0x04c {
        31:0 count;
    }

    /// `FENCE_SEQNO`: the seqno of the last completed `FENCE` command.
    pub(crate) FENCE_SEQNO(u64) @ 0x050 {
        63:0 seqno;
    }

    /// `MMU_ROOT`: VRAM offset of the level-3 table; 0 turns the MMU off.
    pub(crate) MMU_ROOT(u64) @ 0x058 {
        63:0 offset;
    }

    /// `STATUS`: the state of the engine.
    pub(crate) STATUS(u32) @ 0x060 {
        31:0 state => State;
    }

    /// `CONTROL`: requests to the device.
    pub(crate) CONTROL(u32) @ 0x064 {
        /// Requests a reset; the device clears the bit when the reset is done.
        0:0 reset => bool;
    }

    /// `RING_POLL`: whether the engine reads `RING_HEAD` without a doorbell.
    pub(crate) RING_POLL(u32) @ 0x068 {
        /// The engine is awake: a `RING_HEAD` written before this bit is read set needs no
        /// doorbell.
        0:0 awake => bool;
    }

    /// `QUEUES`: the number of user queues, numbered from 1 (version 1.3).
    pub(crate) QUEUES(u32) @ 0x070 {
        31:0 count;
    }

    /// `DOORBELL_OFFSET`: BAR2 offset of the doorbell pages, page `q` for user queue `q`.
    pub(crate) DOORBELL_OFFSET(u64) @ 0x078 {
        63:0 offset;
    }

    /// `ERR_VA`: the virtual address of the failing access.
    pub(crate) ERR_VA(u64) @ 0x080 {
        63:0 va;
    }

    /// `ERR_CAUSE`: the cause of the recorded error.
    pub(crate) ERR_CAUSE(u32) @ 0x088 {
        31:0 cause => FaultCause;
    }

    /// `ERR_OPCODE`: the opcode field of the failing command.
    pub(crate) ERR_OPCODE(u32) @ 0x08c {
        31:0 opcode;
    }

    /// `ERR_SEQNO`: the seqno field of the failing command.
    pub(crate) ERR_SEQNO(u64) @ 0x090 {
        63:0 seqno;
    }

    /// `CNT_LOCAL_BYTES`: bytes moved with every operand in local VRAM.
    pub(crate) CNT_LOCAL_BYTES(u64) @ 0x0c0 {
        63:0 count;
    }

    /// `CNT_P2P_BYTES`: bytes read from or written to peers.
    pub(crate) CNT_P2P_BYTES(u64) @ 0x0c8 {
        63:0 count;
    }

    /// `CNT_SYSMEM_BYTES`: bytes read from or written to system memory.
    pub(crate) CNT_SYSMEM_BYTES(u64) @ 0x0d0 {
        63:0 count;
    }

    /// `CNT_COMMANDS`: commands completed.
    pub(crate) CNT_COMMANDS(u64) @ 0x0d8 {
        63:0 count;
    }

    /// `CNT_ERRORS`: errors recorded.
    pub(crate) CNT_ERRORS(u64) @ 0x0e0 {
        63:0 count;
    }
}

/// The signature value, as the 64-bit little-endian read of `CNFXACCL`.
pub(crate) const SIGNATURE_VALUE: u64 = u64::from_le_bytes(*b"CNFXACCL");
/// The major version this driver implements.
pub(crate) const VERSION_MAJOR: u32 = 1;
/// The capabilities of a version 1.0 device: COPY, FILL, FENCE, TIMESTAMP, MMU_2M, PEER_P2P.
pub(crate) const CAPS_V1: u32 = 0x3f;
/// The capability of version 1.2 to map NULL pages (aperture 2), which read as zeros and drop
/// writes.
pub(crate) const CAP_MMU_NULL: u32 = 1 << 6;
/// The capability of version 1.3 to run user queues, with `WRITE_VALUE`, `WAIT_VALUE` and
/// preemption.
pub(crate) const CAP_QUEUES: u32 = 1 << 7;
/// The capabilities this driver uses, the ones `GET_INFO` reports.
pub(crate) const CAPS_DRIVER: u32 = CAPS_V1 | CAP_MMU_NULL | CAP_QUEUES;

/// The registers of user queue `q` (`device.rst`, "Queue registers"): at control block
/// offset [`queue::BLOCKS`] + [`queue::BLOCK_SIZE`] * `q`, beyond the part of BAR2 that
/// [`Bar2`] checks at build time, so accessed with run-time checks.
pub(crate) mod queue {
    /// The control block offset of queue 0's block, which does not exist.
    const BLOCKS: usize = 0x400;
    /// Size of a queue's register block.
    const BLOCK_SIZE: usize = 0x40;
    /// The most user queues a device has: 1 to 15.
    pub(crate) const MAX: u32 = 15;
    /// Size of a doorbell page.
    pub(crate) const DOORBELL_PAGE: usize = 4096;

    /// `Q_RING_VA` (u64, driver): the ring's virtual address.
    pub(crate) const RING_VA: usize = 0x00;
    /// `Q_RING_SIZE` (u64, driver): the ring's size in bytes.
    pub(crate) const RING_SIZE: usize = 0x08;
    /// `Q_MMU_ROOT` (u64, driver): VRAM offset of the queue's level-3 table.
    pub(crate) const MMU_ROOT: usize = 0x10;
    /// `Q_CONTROL` (u32, driver): [`ENABLE`] and [`PREEMPT`].
    pub(crate) const CONTROL: usize = 0x18;
    /// `Q_STATUS` (u32, device): a [`QueueState`](super::QueueState).
    pub(crate) const STATUS: usize = 0x1c;
    /// `Q_TAIL` (u32, driver, then device): slots consumed.
    pub(crate) const TAIL: usize = 0x20;
    /// `Q_EVENTS` (u32, device): the queue's events.
    pub(crate) const EVENTS: usize = 0x24;
    /// `Q_PROGRESS` (u64, driver, then device): bytes of the command at the tail done.
    pub(crate) const PROGRESS: usize = 0x28;
    /// `Q_ERR_VA` (u64, device): the failing access.
    pub(crate) const ERR_VA: usize = 0x30;
    /// `Q_ERR_CAUSE` (u32, device): a [`FaultCause`](super::FaultCause).
    pub(crate) const ERR_CAUSE: usize = 0x38;
    /// `Q_ERR_OPCODE` (u32, device): the failing command's opcode field.
    pub(crate) const ERR_OPCODE: usize = 0x3c;

    /// `Q_CONTROL` bit: run the queue.
    pub(crate) const ENABLE: u32 = 1 << 0;
    /// `Q_CONTROL` bit: stop it where it is, its state saved.
    pub(crate) const PREEMPT: u32 = 1 << 1;

    /// The BAR2 offset of register `reg` of queue `q`.
    pub(crate) const fn at(q: u32, reg: usize) -> usize {
        BLOCKS + BLOCK_SIZE * q as usize + reg
    }
}

/// What `Q_STATUS` says of a user queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueState {
    /// Not running; the driver owns its state.
    Idle,
    /// Running, or waiting for work.
    Running,
    /// Stopped on the driver's request, its state saved.
    Preempted,
    /// Stopped on an error, which its `Q_ERR_*` registers describe.
    Error,
    /// A value the specification does not define.
    Unknown(u32),
}

impl From<u32> for QueueState {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::Idle,
            1 => Self::Running,
            2 => Self::Preempted,
            3 => Self::Error,
            n => Self::Unknown(n),
        }
    }
}

/// What `STATUS` says of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Not started.
    Off,
    /// Executing commands.
    Ready,
    /// Stopped on an error, which the `ERR_*` registers describe.
    Error,
    /// Resetting.
    Resetting,
    /// A value the specification does not define.
    Unknown(u32),
}

impl From<Bounded<u32, 32>> for State {
    fn from(v: Bounded<u32, 32>) -> Self {
        match v.get() {
            0 => Self::Off,
            1 => Self::Ready,
            2 => Self::Error,
            3 => Self::Resetting,
            n => Self::Unknown(n),
        }
    }
}

impl From<State> for Bounded<u32, 32> {
    fn from(s: State) -> Self {
        Bounded::from(match s {
            State::Off => 0u32,
            State::Ready => 1,
            State::Error => 2,
            State::Resetting => 3,
            State::Unknown(n) => n,
        })
    }
}

/// Why the device stopped (`ERR_CAUSE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultCause {
    /// No error is recorded.
    None,
    /// A virtual address has no valid page-table entry.
    Translation,
    /// A write through a read-only entry.
    Permission,
    /// A bus address that the PCIe topology does not route to.
    PeerUnreachable,
    /// An access outside any memory.
    BusError,
    /// A command with an unknown opcode, bad flags or operands.
    MalformedCommand,
    /// Ring registers that do not describe a valid ring.
    RingStateInvalid,
    /// A value the specification does not define.
    Unknown(u32),
}

impl FaultCause {
    /// The name the specification gives the cause.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Translation => "translation fault",
            Self::Permission => "permission fault",
            Self::PeerUnreachable => "peer unreachable",
            Self::BusError => "bus error",
            Self::MalformedCommand => "malformed command",
            Self::RingStateInvalid => "ring state invalid",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl From<Bounded<u32, 32>> for FaultCause {
    fn from(v: Bounded<u32, 32>) -> Self {
        match v.get() {
            0 => Self::None,
            1 => Self::Translation,
            2 => Self::Permission,
            3 => Self::PeerUnreachable,
            4 => Self::BusError,
            5 => Self::MalformedCommand,
            6 => Self::RingStateInvalid,
            n => Self::Unknown(n),
        }
    }
}

impl From<FaultCause> for Bounded<u32, 32> {
    fn from(c: FaultCause) -> Self {
        Bounded::from(match c {
            FaultCause::None => 0u32,
            FaultCause::Translation => 1,
            FaultCause::Permission => 2,
            FaultCause::PeerUnreachable => 3,
            FaultCause::BusError => 4,
            FaultCause::MalformedCommand => 5,
            FaultCause::RingStateInvalid => 6,
            FaultCause::Unknown(n) => n,
        })
    }
}

/// How often [`read64_at`] reads a 64-bit field whose high half keeps changing before it gives
/// up: a device that changes it that fast is broken.
const READ64_TRIES: usize = 4;

/// Reads the 64-bit register `R` of `bar2` as two 32-bit halves. The high half is read again
/// until it did not change, so that the halves of a value the device updates belong together;
/// [`EIO`] after [`READ64_TRIES`] tries.
pub(crate) fn read64<R: Register + From<u64>>(bar2: &Bar2<'_>) -> Result<R> {
    read64_at(bar2, R::OFFSET).map(R::from)
}

/// Reads the 64-bit field at byte `offset` of `bar2`, as [`read64`] does.
pub(crate) fn read64_at(bar2: &Bar2<'_>, offset: usize) -> Result<u64> {
    for _ in 0..READ64_TRIES {
        let hi = bar2.try_read32(offset + 4)?;
        let lo = bar2.try_read32(offset)?;
        if bar2.try_read32(offset + 4)? == hi {
            return Ok(u64::from(hi) << 32 | u64::from(lo));
        }
    }
    Err(EIO)
}

/// Writes `value` to the 64-bit field at byte `offset` of `bar2`, which the device does not
/// read at the moment, as two 32-bit halves.
pub(crate) fn write64_at(bar2: &Bar2<'_>, offset: usize, value: u64) -> Result {
    // CAST: the two halves of `value`.
    bar2.try_write32(value as u32, offset)?;
    bar2.try_write32((value >> 32) as u32, offset + 4)
}

/// Writes the 64-bit register `value` to `bar2`, as [`write64_at`] does.
pub(crate) fn write64<R: Register + Into<u64>>(bar2: &Bar2<'_>, value: R) -> Result {
    write64_at(bar2, R::OFFSET, value.into())
}

/// A command slot of the ring, 64 bytes (`device.rst`, "Commands").
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slot {
    /// The command.
    pub(crate) opcode: Opcode,
    /// Raise the completion vector when the command completes.
    pub(crate) irq: bool,
    /// The job the command belongs to.
    pub(crate) seqno: u64,
    /// The operands; their meaning depends on the opcode.
    pub(crate) operands: [u64; 3],
}

/// Size of a command slot.
pub(crate) const SLOT_SIZE: usize = 64;
/// Slot flag `IRQ`.
const SLOT_FLAG_IRQ: u32 = 1;
/// The most bytes one `COPY` or `FILL` moves.
pub(crate) const MAX_COMMAND_LEN: u64 = 1 << 32;

/// The opcode of a command slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Opcode {
    /// `COPY`: `src_va`, `dst_va`, `len`.
    #[default]
    Copy = 1,
    /// `FILL`: `dst_va`, `len`, `pattern`.
    Fill = 2,
    /// `FENCE`: writes the slot's seqno to `FENCE_SEQNO`.
    Fence = 3,
}

impl Slot {
    /// Writes the slot at byte `offset` of `bar2`, reserved fields zero.
    pub(crate) fn write(&self, bar2: &Bar2<'_>, offset: usize) -> Result {
        let flags = if self.irq { SLOT_FLAG_IRQ } else { 0 };
        bar2.try_write32(self.opcode as u32, offset)?;
        bar2.try_write32(flags, offset + 0x04)?;
        write64_at(bar2, offset + 0x08, self.seqno)?;
        for (i, operand) in self.operands.iter().enumerate() {
            write64_at(bar2, offset + 0x10 + 8 * i, *operand)?;
        }
        // The reserved area, 0x28..0x40, must be zero.
        for at in (0x28..SLOT_SIZE).step_by(4) {
            bar2.try_write32(0, offset + at)?;
        }
        Ok(())
    }
}

/// MSI-X vector raised when a command with `IRQ` completed.
pub(crate) const VECTOR_COMPLETION: usize = 0;
/// MSI-X vector raised when the device recorded an error and stopped.
pub(crate) const VECTOR_ERROR: usize = 1;

/// Where a leaf entry points (`Aperture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Aperture {
    /// A VRAM offset of the device itself.
    Vram,
    /// A PCIe bus address: system memory, or a peer's memory.
    Bus,
    /// No memory: the page reads as zeros and drops writes (`CAP_MMU_NULL`).
    Null,
    /// An aperture the specification reserves.
    Reserved(u8),
}

impl From<Bounded<u64, 2>> for Aperture {
    fn from(v: Bounded<u64, 2>) -> Self {
        match v.get() {
            0 => Self::Vram,
            1 => Self::Bus,
            2 => Self::Null,
            // CAST: two bits.
            n => Self::Reserved(n as u8),
        }
    }
}

impl From<Aperture> for Bounded<u64, 2> {
    fn from(a: Aperture) -> Self {
        Bounded::from_expr(
            match a {
                Aperture::Vram => 0,
                Aperture::Bus => 1,
                Aperture::Null => 2,
                Aperture::Reserved(n) => u64::from(n),
            } & 3,
        )
    }
}

bitfield! {
    /// A page-table entry (`device.rst`, "MMU"): a directory entry pointing to the table of the
    /// level below, or a leaf that maps a 4 KiB page (level 0) or a 2 MiB page (level 1).
    pub(crate) struct Pte(u64) {
        /// The entry is in use.
        0:0 valid => bool;
        /// The page may be written.
        1:1 writable => bool;
        /// At level 1, the entry maps a 2 MiB page rather than pointing to a table.
        2:2 huge => bool;
        /// What the address of a leaf is.
        4:3 aperture => Aperture;
        /// Bits 51..12 of the address: of the page, or of the table below.
        51:12 frame;
    }
}

/// Bits of an address a [`Pte`] holds.
pub(crate) const PTE_ADDR_MASK: u64 = Pte::FRAME_MASK;

impl Pte {
    /// The entry of nothing.
    pub(crate) const INVALID: Self = Self::from_raw(0);

    /// A directory entry pointing to the table at VRAM offset `table`.
    pub(crate) fn directory(table: u64) -> Self {
        Self::from_raw(table & PTE_ADDR_MASK).with_valid(true)
    }

    /// A leaf that maps the 4 KiB-aligned `addr` in `aperture`, as a 2 MiB page when `huge`.
    pub(crate) fn page(addr: u64, aperture: Aperture, writable: bool, huge: bool) -> Self {
        Self::from_raw(addr & PTE_ADDR_MASK)
            .with_valid(true)
            .with_writable(writable)
            .with_huge(huge)
            .with_aperture(aperture)
    }

    /// The address the entry holds: of the page, or of the table below.
    pub(crate) fn addr(self) -> u64 {
        self.into_raw() & PTE_ADDR_MASK
    }
}

/// Size of a page table: 512 entries of 8 bytes.
pub(crate) const TABLE_SIZE: u64 = 4096;
/// Entries per table.
pub(crate) const TABLE_ENTRIES: usize = 512;
/// Virtual addresses are 48 bits wide.
pub(crate) const VA_BITS: u32 = 48;
