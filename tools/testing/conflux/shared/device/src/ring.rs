// SPDX-License-Identifier: GPL-2.0

//! The command ring: its geometry and the format of its 64-byte slots.

use crate::{
    fault::{Cause, Fault},
    overlaps,
    regs::{ctrl, slot},
};

/// A command slot's raw bytes.
pub type Slot = [u8; slot::SIZE as usize];

/// The operation of a command, with its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Copy `len` bytes from `src` to `dst` (virtual addresses).
    Copy {
        /// Source virtual address.
        src: u64,
        /// Destination virtual address.
        dst: u64,
        /// Number of bytes.
        len: u64,
    },
    /// Fill `len` bytes at `dst`: byte `i` gets byte `i % 8` of the
    /// little-endian `pattern`.
    Fill {
        /// Destination virtual address.
        dst: u64,
        /// Number of bytes.
        len: u64,
        /// The 8-byte pattern.
        pattern: u64,
    },
    /// Write the command's seqno to `FENCE_SEQNO`.
    Fence,
    /// Write a u64 nanosecond timestamp at `dst` (8-byte aligned).
    Timestamp {
        /// Destination virtual address.
        dst: u64,
    },
    /// Write `value`, a u64, at `dst` (8-byte aligned) in one access: a memory fence.
    WriteValue {
        /// Destination virtual address.
        dst: u64,
        /// The value.
        value: u64,
    },
    /// Wait until the u64 at `va` (8-byte aligned), masked with `mask`, compares true with
    /// `value`; user queues only.
    WaitValue {
        /// The virtual address of the u64.
        va: u64,
        /// The value it is compared with.
        value: u64,
        /// The mask applied to it first.
        mask: u64,
        /// The comparison.
        compare: Compare,
    },
}

/// The comparison of a `WAIT_VALUE`, of the masked memory value `m` with the command's value
/// `v`, both unsigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// `m >= v` (0).
    Gte,
    /// `m == v` (1).
    Eq,
    /// `m != v` (2).
    Neq,
    /// `m > v` (3).
    Gt,
    /// `m < v` (4).
    Lt,
    /// `m <= v` (5).
    Lte,
}

impl Compare {
    /// Every comparison, in the order of its code.
    pub const ALL: [Self; 6] = [
        Self::Gte,
        Self::Eq,
        Self::Neq,
        Self::Gt,
        Self::Lt,
        Self::Lte,
    ];

    /// The code of the comparison in the flags' comparison field.
    pub const fn code(self) -> u32 {
        match self {
            Self::Gte => 0,
            Self::Eq => 1,
            Self::Neq => 2,
            Self::Gt => 3,
            Self::Lt => 4,
            Self::Lte => 5,
        }
    }

    /// Whether `m` compares true with `v`.
    pub const fn holds(self, m: u64, v: u64) -> bool {
        match self {
            Self::Gte => m >= v,
            Self::Eq => m == v,
            Self::Neq => m != v,
            Self::Gt => m > v,
            Self::Lt => m < v,
            Self::Lte => m <= v,
        }
    }
}

impl Op {
    /// The opcode of this operation.
    pub const fn opcode(&self) -> u32 {
        match self {
            Self::Copy { .. } => slot::OP_COPY,
            Self::Fill { .. } => slot::OP_FILL,
            Self::Fence => slot::OP_FENCE,
            Self::Timestamp { .. } => slot::OP_TIMESTAMP,
            Self::WriteValue { .. } => slot::OP_WRITE_VALUE,
            Self::WaitValue { .. } => slot::OP_WAIT_VALUE,
        }
    }

    fn operands(&self) -> [u64; 3] {
        match *self {
            Self::Copy { src, dst, len } => [src, dst, len],
            Self::Fill { dst, len, pattern } => [dst, len, pattern],
            Self::Fence => [0; 3],
            Self::Timestamp { dst } => [dst, 0, 0],
            Self::WriteValue { dst, value } => [dst, value, 0],
            Self::WaitValue {
                va, value, mask, ..
            } => [va, value, mask],
        }
    }

    /// The flags bits of the operation besides `IRQ`.
    const fn flags(&self) -> u32 {
        match self {
            Self::WaitValue { compare, .. } => compare.code() << slot::COMPARE_SHIFT,
            _ => 0,
        }
    }
}

/// Name, capability bit and number of operands of an opcode.
fn opcode_info(opcode: u32) -> Option<(&'static str, u32, usize)> {
    Some(match opcode {
        slot::OP_COPY => ("COPY", ctrl::CAP_COPY, 3),
        slot::OP_FILL => ("FILL", ctrl::CAP_FILL, 3),
        slot::OP_FENCE => ("FENCE", ctrl::CAP_FENCE, 0),
        slot::OP_TIMESTAMP => ("TIMESTAMP", ctrl::CAP_TIMESTAMP, 1),
        slot::OP_WRITE_VALUE => ("WRITE_VALUE", ctrl::CAP_QUEUES, 2),
        slot::OP_WAIT_VALUE => ("WAIT_VALUE", ctrl::CAP_QUEUES, 3),
        _ => return None,
    })
}

fn le32(s: &Slot, at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&s[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le64(s: &Slot, at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(b)
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The seqno field.
    pub seqno: u64,
    /// Raise the completion vector once the command completes.
    pub irq: bool,
    /// The operation.
    pub op: Op,
}

impl Command {
    /// The opcode and seqno fields of a slot, whether or not it is valid.
    pub fn header(s: &Slot) -> (u32, u64) {
        (le32(s, slot::OPCODE), le64(s, slot::SEQNO))
    }

    /// The slot that holds this command.
    pub fn encode(&self) -> Slot {
        let mut s = [0; slot::SIZE as usize];
        s[slot::OPCODE..][..4].copy_from_slice(&self.op.opcode().to_le_bytes());
        let flags = if self.irq { slot::FLAG_IRQ } else { 0 } | self.op.flags();
        s[slot::FLAGS..][..4].copy_from_slice(&flags.to_le_bytes());
        s[slot::SEQNO..][..8].copy_from_slice(&self.seqno.to_le_bytes());
        for (i, v) in self.op.operands().iter().enumerate() {
            s[slot::OPERAND0 + 8 * i..][..8].copy_from_slice(&v.to_le_bytes());
        }
        s
    }

    /// Decodes a slot for a device with capabilities `caps`; every
    /// rejection is a [`Cause::Malformed`] fault.
    pub fn decode(s: &Slot, caps: u32) -> Result<Self, Fault> {
        let bad = |detail: String| Err(Fault::new(Cause::Malformed, detail));
        let (opcode, seqno) = Self::header(s);
        let Some((name, cap, used)) = opcode_info(opcode) else {
            return bad(format!("unknown opcode {opcode:#x}"));
        };
        if caps & cap == 0 {
            return bad(format!("{name} is not a capability of this device"));
        }
        let flags = le32(s, slot::FLAGS);
        let allowed = match opcode {
            slot::OP_WAIT_VALUE => slot::FLAG_IRQ | slot::COMPARE_MASK,
            _ => slot::FLAG_IRQ,
        };
        if flags & !allowed != 0 {
            return bad(format!("{name}: reserved flag bits {flags:#x}"));
        }
        if let Some(i) = (slot::RESERVED..s.len()).find(|&i| s[i] != 0) {
            return bad(format!(
                "{name}: reserved byte {i:#x} of the slot is not zero"
            ));
        }
        let o = [0, 1, 2].map(|i| le64(s, slot::OPERAND0 + 8 * i));
        if let Some(i) = (used..3).find(|&i| o[i] != 0) {
            return bad(format!("{name}: reserved operand {i} is {:#x}", o[i]));
        }
        let op = match opcode {
            slot::OP_COPY => Op::Copy {
                src: o[0],
                dst: o[1],
                len: o[2],
            },
            slot::OP_FILL => Op::Fill {
                dst: o[0],
                len: o[1],
                pattern: o[2],
            },
            slot::OP_FENCE => Op::Fence,
            slot::OP_WRITE_VALUE => Op::WriteValue {
                dst: o[0],
                value: o[1],
            },
            slot::OP_WAIT_VALUE => {
                let code = (flags & slot::COMPARE_MASK) >> slot::COMPARE_SHIFT;
                let Some(&compare) = Compare::ALL.iter().find(|c| c.code() == code) else {
                    return bad(format!("WAIT_VALUE: comparison {code} is not one of 0..=5"));
                };
                Op::WaitValue {
                    va: o[0],
                    value: o[1],
                    mask: o[2],
                    compare,
                }
            }
            _ => Op::Timestamp { dst: o[0] },
        };
        match op {
            Op::Copy { len, .. } | Op::Fill { len, .. } if !(1..=slot::MAX_LEN).contains(&len) => {
                return bad(format!(
                    "{name}: length {len:#x} is not in 1..={:#x}",
                    slot::MAX_LEN
                ));
            }
            Op::Copy { src, dst, len } if overlaps(src, len, dst, len) => {
                return bad(format!(
                    "COPY: source {src:#x} and destination {dst:#x} overlap"
                ));
            }
            Op::Timestamp { dst } | Op::WriteValue { dst, .. } | Op::WaitValue { va: dst, .. }
                if dst % 8 != 0 =>
            {
                return bad(format!("{name}: address {dst:#x} is not 8-byte aligned"));
            }
            _ => {}
        }
        Ok(Self {
            seqno,
            irq: flags & slot::FLAG_IRQ != 0,
            op,
        })
    }
}

/// The geometry of a ring, validated against the size of BAR2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    /// BAR2 offset of slot 0.
    pub offset: u64,
    /// Number of slots, a power of two.
    pub slots: u32,
}

impl Ring {
    /// The ring at `offset` of `size` bytes; a [`Cause::RingState`] fault
    /// unless the size is a power of two from one slot to 2^31 slots, the
    /// offset is slot-aligned and the ring lies in BAR2 after the control
    /// block.
    pub fn new(offset: u64, size: u64, bar_size: u64) -> Result<Self, Fault> {
        let fits = offset >= ctrl::SIZE && offset.checked_add(size).is_some_and(|e| e <= bar_size);
        if !size.is_power_of_two()
            || !(slot::MIN_RING_SIZE..=slot::MAX_RING_SIZE).contains(&size)
            || !offset.is_multiple_of(slot::SIZE)
            || !fits
        {
            return Err(Fault::new(
                Cause::RingState,
                format!(
                    "ring of {size:#x} bytes at BAR2 offset {offset:#x} \
                     is invalid for a BAR2 of {bar_size:#x} bytes"
                ),
            ));
        }
        let slots = u32::try_from(size / slot::SIZE).map_err(|_| {
            Fault::new(
                Cause::RingState,
                format!("ring of {size:#x} bytes has too many slots"),
            )
        })?;
        Ok(Self { offset, slots })
    }

    /// A user queue's ring of `size` bytes at virtual address `va`; a [`Cause::RingState`]
    /// fault unless the size is a power of two from one slot to 2^31 slots and the ring is
    /// slot-aligned and inside the 48-bit address space. `offset` is then the ring's virtual
    /// address.
    pub fn at_va(va: u64, size: u64) -> Result<Self, Fault> {
        let fits = va
            .checked_add(size)
            .is_some_and(|e| e <= 1 << crate::regs::pte::VA_BITS);
        if !size.is_power_of_two()
            || !(slot::MIN_RING_SIZE..=slot::MAX_RING_SIZE).contains(&size)
            || !va.is_multiple_of(slot::SIZE)
            || !fits
        {
            return Err(Fault::new(
                Cause::RingState,
                format!("ring of {size:#x} bytes at VA {va:#x} is invalid"),
            ));
        }
        Ok(Self {
            offset: va,
            // CAST: at most 2^31 slots, checked above.
            slots: (size / slot::SIZE) as u32,
        })
    }

    /// Number of commands between `tail` and `head`; a [`Cause::RingState`]
    /// fault when `head` is more than the ring's size ahead of `tail`.
    pub fn pending(&self, head: u32, tail: u32) -> Result<u32, Fault> {
        let n = head.wrapping_sub(tail);
        if n > self.slots {
            return Err(Fault::new(
                Cause::RingState,
                format!(
                    "head {head} is {n} slots ahead of tail {tail} in a ring of {} slots",
                    self.slots
                ),
            ));
        }
        Ok(n)
    }

    /// BAR2 offset of the slot that free-running counter `counter` names.
    pub fn slot_offset(&self, counter: u32) -> u64 {
        self.offset + u64::from(counter % self.slots) * slot::SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAR: u64 = 4 << 20;

    fn ring(slots: u32) -> Ring {
        Ring::new(0x1000, u64::from(slots) * 64, BAR).unwrap()
    }

    fn cmd(op: Op) -> Command {
        Command {
            seqno: 0x5eed,
            irq: true,
            op,
        }
    }

    /// A valid COPY slot with `f` applied to its bytes.
    fn patched(f: impl FnOnce(&mut Slot)) -> Result<Command, Fault> {
        let mut s = cmd(Op::Copy {
            src: 0x1000,
            dst: 0x3000,
            len: 0x2000,
        })
        .encode();
        f(&mut s);
        Command::decode(&s, ctrl::CAP_ALL)
    }

    fn assert_malformed(r: Result<Command, Fault>, needle: &str) {
        let f = r.unwrap_err();
        assert_eq!(f.cause, Cause::Malformed, "{f}");
        assert!(f.detail.contains(needle), "{f}");
    }

    #[test]
    fn empty_full_and_wrapping_counters() {
        let r = ring(16);
        assert_eq!(r.pending(7, 7).unwrap(), 0);
        assert_eq!(r.pending(23, 7).unwrap(), 16);
        assert_eq!(r.pending(3, u32::MAX - 2).unwrap(), 6);
        assert_eq!(r.pending(12, u32::MAX - 3).unwrap(), 16);
        assert_eq!(r.slot_offset(u32::MAX), 0x1000 + 15 * 64);
        assert_eq!(r.slot_offset(0), 0x1000);
        assert_eq!(r.slot_offset(17), 0x1000 + 64);
    }

    #[test]
    fn head_too_far_ahead_or_behind() {
        let r = ring(16);
        for (head, tail) in [(24, 7), (6, 7), (13, u32::MAX - 3), (0, 1 << 31)] {
            let f = r.pending(head, tail).unwrap_err();
            assert_eq!(f.cause, Cause::RingState);
            assert!(f.detail.contains(&format!("head {head} ")), "{f}");
        }
        let big = Ring {
            offset: 0x1000,
            slots: 1 << 31,
        };
        assert_eq!(big.pending(1 << 31, 0).unwrap(), 1 << 31);
        assert!(big.pending((1 << 31) + 1, 0).is_err());
    }

    #[test]
    fn ring_geometry_is_validated() {
        assert_eq!(Ring::new(0x1000, 64, BAR).unwrap().slots, 1);
        assert_eq!(Ring::new(BAR - 0x1000, 0x1000, BAR).unwrap().slots, 64);
        let bad = [
            (0x1000, 0),
            (0x1000, 32),
            (0x1000, 96),
            (0x1000, 0x3000),
            (0x0, 0x1000),
            (0xfc0, 0x40),
            (0x1020, 0x1000),
            (BAR - 0x800, 0x1000),
            (u64::MAX - 63, 64),
            (0x1000, 1 << 40),
        ];
        for (off, size) in bad {
            let f = Ring::new(off, size, BAR).unwrap_err();
            assert_eq!(f.cause, Cause::RingState, "{off:#x} {size:#x}");
        }
        assert_eq!(
            Ring::new(0x1000, slot::MAX_RING_SIZE, 1 << 40)
                .unwrap()
                .slots,
            1 << 31
        );
        assert!(Ring::new(0x1000, slot::MAX_RING_SIZE * 2, 1 << 40).is_err());
    }

    #[test]
    fn commands_round_trip() {
        for op in [
            Op::Copy {
                src: 1,
                dst: 0x1_0000,
                len: 0xffff,
            },
            Op::Copy {
                src: 0x2000,
                dst: 0x1000,
                len: 0x1000,
            },
            Op::Fill {
                dst: 3,
                len: slot::MAX_LEN,
                pattern: u64::MAX,
            },
            Op::Fence,
            Op::Timestamp { dst: 0xfff8 },
            Op::WriteValue {
                dst: 0x8,
                value: u64::MAX,
            },
        ]
        .into_iter()
        .chain(Compare::ALL.map(|compare| Op::WaitValue {
            va: 0xfff8,
            value: 0x1234,
            mask: u64::MAX >> 1,
            compare,
        })) {
            for irq in [false, true] {
                let c = Command {
                    seqno: u64::MAX - 1,
                    irq,
                    op,
                };
                assert_eq!(Command::decode(&c.encode(), ctrl::CAP_ALL), Ok(c));
                assert_eq!(Command::header(&c.encode()), (op.opcode(), u64::MAX - 1));
            }
        }
    }

    #[test]
    fn slot_layout_matches_the_specification() {
        let s = Command {
            seqno: 0x0807_0605_0403_0201,
            irq: true,
            op: Op::Fill {
                dst: 0xa,
                len: 0xb,
                pattern: 0xc,
            },
        }
        .encode();
        assert_eq!(s[0..4], [2, 0, 0, 0]);
        assert_eq!(s[4..8], [1, 0, 0, 0]);
        assert_eq!(s[8..16], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((s[0x10], s[0x18], s[0x20]), (0xa, 0xb, 0xc));
        assert!(s[0x28..].iter().all(|&b| b == 0));
    }

    #[test]
    fn unknown_opcodes() {
        for op in [0, 7, 0x100, u32::MAX] {
            assert_malformed(
                patched(|s| s[..4].copy_from_slice(&op.to_le_bytes())),
                "unknown opcode",
            );
        }
    }

    #[test]
    fn missing_capability() {
        let s = cmd(Op::Timestamp { dst: 0 }).encode();
        assert_malformed(
            Command::decode(&s, ctrl::CAP_ALL & !ctrl::CAP_TIMESTAMP),
            "capability",
        );
        assert!(Command::decode(&s, ctrl::CAP_TIMESTAMP).is_ok());
    }

    #[test]
    fn reserved_flags() {
        for bit in 1..32 {
            assert_malformed(
                patched(|s| s[4 + bit / 8] |= 1 << (bit % 8)),
                "reserved flag",
            );
        }
    }

    #[test]
    fn reserved_slot_bytes() {
        for i in slot::RESERVED..64 {
            assert_malformed(patched(|s| s[i] = 0x80), &format!("reserved byte {i:#x}"));
        }
    }

    #[test]
    fn reserved_operands() {
        let cases = [
            (Op::Fence, 0),
            (Op::Timestamp { dst: 8 }, 1),
            (Op::WriteValue { dst: 8, value: 1 }, 2),
        ];
        for (op, first_unused) in cases {
            for i in first_unused..3 {
                let mut s = cmd(op).encode();
                s[slot::OPERAND0 + 8 * i + 7] = 1;
                assert_malformed(
                    Command::decode(&s, ctrl::CAP_ALL),
                    &format!("reserved operand {i}"),
                );
            }
        }
    }

    #[test]
    fn lengths_and_alignment() {
        for len in [0, slot::MAX_LEN + 1, u64::MAX] {
            assert_malformed(
                Command::decode(
                    &cmd(Op::Copy {
                        src: 0,
                        dst: 1 << 40,
                        len,
                    })
                    .encode(),
                    ctrl::CAP_ALL,
                ),
                "length",
            );
            assert_malformed(
                Command::decode(
                    &cmd(Op::Fill {
                        dst: 0,
                        len,
                        pattern: 1,
                    })
                    .encode(),
                    ctrl::CAP_ALL,
                ),
                "length",
            );
        }
        for dst in [1, 4, 7, 0xfffc] {
            let wait = Op::WaitValue {
                va: dst,
                value: 1,
                mask: 1,
                compare: Compare::Eq,
            };
            for op in [
                Op::Timestamp { dst },
                Op::WriteValue { dst, value: 1 },
                wait,
            ] {
                assert_malformed(Command::decode(&cmd(op).encode(), ctrl::CAP_ALL), "aligned");
            }
        }
    }

    #[test]
    fn memory_fence_commands() {
        let wait = cmd(Op::WaitValue {
            va: 0x1000,
            value: 7,
            mask: 0xff,
            compare: Compare::Lte,
        });
        let s = wait.encode();
        assert_eq!(s[0..4], [6, 0, 0, 0]);
        // IRQ, and comparison 5 in bits 6..4.
        assert_eq!(s[4..8], [0x51, 0, 0, 0]);
        assert_eq!((s[0x11], s[0x18], s[0x20]), (0x10, 7, 0xff));
        for code in [6u32, 7] {
            let mut bad = s;
            bad[4..8].copy_from_slice(&(1 | code << slot::COMPARE_SHIFT).to_le_bytes());
            assert_malformed(Command::decode(&bad, ctrl::CAP_ALL), "comparison");
        }
        let mut bad = s;
        bad[5] = 1;
        assert_malformed(Command::decode(&bad, ctrl::CAP_ALL), "reserved flag");
        // The comparison field is WAIT_VALUE's only.
        let mut write = cmd(Op::WriteValue { dst: 8, value: 1 }).encode();
        write[4] |= 1 << slot::COMPARE_SHIFT;
        assert_malformed(Command::decode(&write, ctrl::CAP_ALL), "reserved flag");
        for op in [wait.op, Op::WriteValue { dst: 8, value: 1 }] {
            assert_malformed(
                Command::decode(&cmd(op).encode(), ctrl::CAP_ALL & !ctrl::CAP_QUEUES),
                "capability",
            );
        }
    }

    #[test]
    fn comparisons() {
        let table = [
            (Compare::Gte, [false, true, true]),
            (Compare::Eq, [false, true, false]),
            (Compare::Neq, [true, false, true]),
            (Compare::Gt, [false, false, true]),
            (Compare::Lt, [true, false, false]),
            (Compare::Lte, [true, true, false]),
        ];
        for (c, expect) in table {
            assert_eq!([4, 5, 6].map(|m| c.holds(m, 5)), expect, "{c:?}");
        }
        assert!(Compare::Gt.holds(u64::MAX, u64::MAX - 1));
        for (i, c) in Compare::ALL.iter().enumerate() {
            assert_eq!(c.code() as usize, i);
        }
    }

    #[test]
    fn ring_at_a_va() {
        let r = Ring::at_va(0x7000_0000, 0x1000).unwrap();
        assert_eq!((r.offset, r.slots), (0x7000_0000, 64));
        assert_eq!(r.slot_offset(65), 0x7000_0040);
        assert_eq!(Ring::at_va((1 << 48) - 64, 64).unwrap().slots, 1);
        for (va, size) in [
            (0x1000, 0),
            (0x1000, 96),
            (0x1020, 0x1000),
            ((1 << 48) - 64, 128),
            (u64::MAX - 63, 64),
            (0, slot::MAX_RING_SIZE * 2),
        ] {
            let f = Ring::at_va(va, size).unwrap_err();
            assert_eq!(f.cause, Cause::RingState, "{va:#x} {size:#x}");
        }
    }

    #[test]
    fn overlapping_copies() {
        let check = |src: u64, dst: u64, len: u64| {
            Command::decode(&cmd(Op::Copy { src, dst, len }).encode(), ctrl::CAP_ALL)
        };
        assert_malformed(check(0x1000, 0x1fff, 0x1000), "overlap");
        assert_malformed(check(0x1fff, 0x1000, 0x1000), "overlap");
        assert_malformed(check(0x1000, 0x1000, 1), "overlap");
        assert_malformed(check(u64::MAX - 1, u64::MAX, 2), "overlap");
        assert!(check(0x1000, 0x2000, 0x1000).is_ok());
        assert!(check(0x2000, 0x1000, 0x1000).is_ok());
        assert!(check(u64::MAX, 0, 1).is_ok());
    }
}
