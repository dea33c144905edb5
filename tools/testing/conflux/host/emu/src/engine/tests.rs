// SPDX-License-Identifier: GPL-2.0

use super::*;
use conflux_device::{
    memory::Buffers,
    mmu::{leaf_entry, table_entry, Mapper},
    regs::{bar0, pte, slot},
};

use crate::fabric::{Bar, RamRange, RIGS};

const MIB: u64 = 1 << 20;
const BAR_SIZE: u64 = 16 * MIB;
const BASES: [u64; 4] = [0xf400_0000, 0xf000_0000, 0xf800_0000, 0xe000_0000];
const RAM: RamRange = RamRange {
    bus: 0x20_0000,
    len: 16 * MIB,
    offset: 0,
};
/// VRAM offset of the data area (below it: page tables).
const DATA: u64 = 2 * MIB;
/// Size of the data area.
const DATA_LEN: u64 = 12 * MIB;
/// VA window on the data area with 4 KiB pages.
const W4K: u64 = 0x10_0000_0000;
/// VA window on the data area with 2 MiB pages.
const W2M: u64 = 0x20_0000_0000;
/// VA window on system memory (2 MiB pages).
const WSYS: u64 = 0x40_0000_0000;

/// VA window on the data area of device `dev`'s VRAM through its bus address.
const fn wbus(dev: usize) -> u64 {
    0x30_0000_0000 + (dev as u64) * 0x1_0000_0000
}

/// Deterministic pseudo-random numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        buf.iter_mut().for_each(|b| *b = self.next() as u8);
    }
}

/// One engine on a rig topology, with page tables and helpers.
struct Dev {
    mem: Buffers,
    eng: Engine,
    map: Mapper,
    head: u32,
}

fn topology(name: &str) -> Arc<Topology> {
    Arc::new(
        Topology::rig(
            name,
            &BASES.map(|base| Bar {
                base,
                size: BAR_SIZE,
            }),
            &[RAM],
        )
        .unwrap(),
    )
}

fn copy(src: u64, dst: u64, len: u64) -> Command {
    Command {
        seqno: 0xc0,
        irq: false,
        op: Op::Copy { src, dst, len },
    }
}

fn fill(dst: u64, len: u64, pattern: u64) -> Command {
    Command {
        seqno: 0xf1,
        irq: false,
        op: Op::Fill { dst, len, pattern },
    }
}

/// An 8-byte pattern of `b`.
const fn rep(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

fn fence(seqno: u64, irq: bool) -> Command {
    Command {
        seqno,
        irq,
        op: Op::Fence,
    }
}

impl Dev {
    /// Device `dev` of rig `name`, powered on, with the standard windows.
    fn new(name: &str, dev: usize) -> Self {
        Self::with(Engine::new(topology(name), dev).unwrap())
    }

    fn with(mut eng: Engine) -> Self {
        let mut mem = Buffers::new(&[BAR_SIZE as usize; 4], RAM.len as usize);
        eng.power_on(&mut mem).unwrap();
        let dev = eng.dev;
        let mut map = Mapper::new(&mut mem, Target::Bar(dev), 0x1000, DATA).unwrap();
        map.map(
            &mut mem,
            W4K,
            Aperture::Vram(DATA),
            DATA_LEN,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
        map.map(
            &mut mem,
            W2M,
            Aperture::Vram(DATA),
            DATA_LEN,
            pte::PAGE_2M,
            true,
        )
        .unwrap();
        for (i, base) in BASES.iter().enumerate() {
            map.map(
                &mut mem,
                wbus(i),
                Aperture::Bus(base + VRAM_OFFSET + DATA),
                DATA_LEN,
                pte::PAGE_2M,
                true,
            )
            .unwrap();
        }
        map.map(
            &mut mem,
            WSYS,
            Aperture::Bus(RAM.bus),
            RAM.len,
            pte::PAGE_2M,
            true,
        )
        .unwrap();
        let root = map.root();
        let mut d = Self {
            mem,
            eng,
            map,
            head: 0,
        };
        d.set64(ctrl::MMU_ROOT, root);
        d
    }

    fn bar(&self) -> Target {
        self.eng.bar()
    }

    fn reg32(&self, at: u64) -> u32 {
        self.mem.read_u32(self.bar(), at).unwrap()
    }

    fn reg64(&self, at: u64) -> u64 {
        self.mem.read_u64(self.bar(), at).unwrap()
    }

    fn set32(&mut self, at: u64, v: u32) {
        self.mem.write_u32(self.bar(), at, v).unwrap();
    }

    fn set64(&mut self, at: u64, v: u64) {
        self.mem.write_u64(self.bar(), at, v).unwrap();
    }

    /// Writes `s` into the slot the head names and advances the head
    /// (without publishing it).
    fn push_slot(&mut self, s: &Slot) {
        let ring = Ring::new(
            self.reg64(ctrl::RING_OFFSET),
            self.reg64(ctrl::RING_SIZE),
            BAR_SIZE,
        )
        .unwrap();
        self.mem
            .write(self.bar(), ring.slot_offset(self.head), s)
            .unwrap();
        self.head = self.head.wrapping_add(1);
    }

    /// Publishes the head and rings the doorbell.
    fn doorbell(&mut self) -> Outcome {
        self.set32(ctrl::RING_HEAD, self.head);
        self.eng.process(&mut self.mem)
    }

    fn run(&mut self, cmds: &[Command]) -> Outcome {
        cmds.iter().for_each(|c| self.push_slot(&c.encode()));
        self.doorbell()
    }

    fn reset(&mut self) -> Outcome {
        self.set32(ctrl::CONTROL, ctrl::CONTROL_RESET);
        let out = self.doorbell();
        assert!(out.reset);
        out
    }

    /// Bytes of device `dev`'s data area.
    fn data(&self, dev: usize) -> &[u8] {
        &self.mem.bars[dev][(VRAM_OFFSET + DATA) as usize..][..DATA_LEN as usize]
    }

    fn data_mut(&mut self, dev: usize) -> &mut [u8] {
        &mut self.mem.bars[dev][(VRAM_OFFSET + DATA) as usize..][..DATA_LEN as usize]
    }

    /// The counters as published.
    fn published_counters(&self) -> Counters {
        Counters {
            local_bytes: self.reg64(ctrl::CNT_LOCAL_BYTES),
            p2p_bytes: self.reg64(ctrl::CNT_P2P_BYTES),
            sysmem_bytes: self.reg64(ctrl::CNT_SYSMEM_BYTES),
            commands: self.reg64(ctrl::CNT_COMMANDS),
            errors: self.reg64(ctrl::CNT_ERRORS),
        }
    }

    /// The error record as published.
    fn published_error(&self) -> (u32, u64, u64, u32) {
        (
            self.reg32(ctrl::ERR_CAUSE),
            self.reg64(ctrl::ERR_VA),
            self.reg64(ctrl::ERR_SEQNO),
            self.reg32(ctrl::ERR_OPCODE),
        )
    }

    /// Runs `cmd`, which must fail with `cause` at `va`.
    fn expect_error(&mut self, cmd: Command, cause: Cause, va: u64) -> ErrorRecord {
        let out = self.run(&[cmd]);
        let e = out
            .error
            .clone()
            .unwrap_or_else(|| panic!("{cmd:?} did not fail"));
        assert_eq!(
            (e.cause, e.va, e.seqno, e.opcode),
            (cause, va, cmd.seqno, cmd.op.opcode()),
            "{e}"
        );
        assert_eq!(
            self.published_error(),
            (cause.code(), va, cmd.seqno, cmd.op.opcode())
        );
        assert_eq!(self.reg32(ctrl::STATUS), ctrl::STATUS_ERROR);
        assert_eq!(out.vectors().collect::<Vec<_>>(), [bar0::VECTOR_ERROR]);
        self.reset();
        e
    }
}

mod queues;

#[test]
fn power_on_writes_the_control_block() {
    let d = Dev::new("switch3+rp1", 2);
    assert_eq!(d.mem.bars[2][..8], *b"CNFXACCL");
    assert_eq!(d.reg32(ctrl::VERSION), 0x0001_0003);
    assert_eq!(d.reg32(ctrl::CAPS), 0xff);
    assert_eq!(d.reg32(ctrl::QUEUES), 15);
    let regs = [
        (ctrl::BAR_SIZE, BAR_SIZE),
        (ctrl::VRAM_OFFSET, 0x20_0000),
        (ctrl::VRAM_SIZE, BAR_SIZE - 0x20_0000),
        (ctrl::DOORBELL_OFFSET, 0x1_1000),
        (ctrl::PRIV_OFFSET, 0x2_1000),
        (ctrl::PRIV_SIZE, 0x20_0000 - 0x2_1000),
        (ctrl::RING_OFFSET, 0x1000),
        (ctrl::RING_SIZE, 0x1_0000),
        (ctrl::FENCE_SEQNO, 0),
    ];
    for (at, v) in regs {
        assert_eq!(d.reg64(at), v, "register {at:#x}");
    }
    assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_READY);
    assert_eq!(
        (
            d.reg32(ctrl::RING_HEAD),
            d.reg32(ctrl::RING_TAIL),
            d.reg32(ctrl::CONTROL)
        ),
        (0, 0, 0)
    );
    assert_eq!(d.published_error(), (0, 0, 0, 0));
    assert_eq!(d.published_counters(), Counters::default());
    assert!(
        d.mem.bars[0][..8].iter().all(|&b| b == 0),
        "another device's BAR was written"
    );
}

#[test]
fn nothing_runs_before_power_on() {
    let mut mem = Buffers::new(&[BAR_SIZE as usize; 4], 0);
    let mut eng = Engine::new(topology("switch3+rp1"), 0).unwrap();
    mem.write_u32(Target::Bar(0), ctrl::RING_HEAD, 1).unwrap();
    mem.write_u32(Target::Bar(0), ctrl::CONTROL, ctrl::CONTROL_RESET)
        .unwrap();
    mem.write_u32(Target::Bar(0), ctrl::STATUS, 0xdead).unwrap();
    let before = mem.clone();
    assert_eq!(eng.process(&mut mem), Outcome::default());
    assert_eq!(eng.status(), ctrl::STATUS_OFF);
    assert!(mem == before, "memory was written");
}

#[test]
fn engine_configuration_errors() {
    let e = Engine::new(topology("switch3+rp1"), 4).unwrap_err();
    assert!(e.0.contains("no device 4"), "{e}");
    let mut mem = Buffers::new(&[0x800], 0);
    let mut eng = Engine::new(topology("switch3+rp1"), 0).unwrap();
    assert!(eng.power_on(&mut mem).is_err());
}

#[test]
fn short_backing_memory_is_a_bus_error_not_a_panic() {
    let mut mem = Buffers::new(&[0x40], 0);
    let mut eng = Engine::new(topology("switch3+rp1"), 0).unwrap();
    let _ = eng.power_on(&mut mem);
    let out = eng.process(&mut mem);
    assert_eq!(out.error.map(|e| e.cause), Some(Cause::Bus));
    assert_eq!(eng.status(), ctrl::STATUS_ERROR);
}

#[test]
fn copy_and_fill_at_unaligned_offsets_and_lengths() {
    let mut d = Dev::new("switch3+rp1", 0);
    let mut rng = Rng(1);
    rng.fill(d.data_mut(0));
    let lens = [
        1,
        2,
        7,
        8,
        9,
        63,
        4095,
        4096,
        4097,
        8191,
        65535,
        65536,
        65537,
        200_000,
        2 * MIB - 1,
        2 * MIB + 3,
        3 * MIB + 5,
    ];
    for (i, &len) in lens.iter().enumerate() {
        let src = 0x123 + i as u64 * 7;
        let dst = 5 * MIB + 0x1001 + i as u64 * 13;
        for (sw, dw) in [(W4K, W2M), (W2M, W4K), (W4K, W4K), (W2M, W2M)] {
            rng.fill(&mut d.data_mut(0)[(dst - 16) as usize..(dst + len + 16) as usize]);
            let before = d.data(0).to_vec();
            let out = d.run(&[copy(sw + src, dw + dst, len)]);
            assert_eq!((out.completed, out.error), (1, None));
            let mut want = before;
            want.copy_within(src as usize..(src + len) as usize, dst as usize);
            assert!(
                d.data(0) == want,
                "COPY of {len} bytes from window {sw:#x} to {dw:#x}"
            );

            let pattern = rng.next();
            let out = d.run(&[fill(dw + dst + 1, len, pattern)]);
            assert_eq!((out.completed, out.error), (1, None));
            let bytes = pattern.to_le_bytes();
            for (k, b) in want[(dst + 1) as usize..][..len as usize]
                .iter_mut()
                .enumerate()
            {
                *b = bytes[k % 8];
            }
            assert!(d.data(0) == want, "FILL of {len} bytes in window {dw:#x}");
        }
    }
}

#[test]
fn fill_pattern_is_relative_to_the_start() {
    let mut d = Dev::new("switch3+rp1", 0);
    d.run(&[fill(W4K + 4093, 13, 0x0807_0605_0403_0201)]);
    assert_eq!(
        d.data(0)[4092..4107],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 0]
    );
}

#[test]
fn accesses_split_per_page_across_4k_and_2m_boundaries() {
    let mut d = Dev::new("switch3+rp1", 0);
    let mut rng = Rng(2);
    rng.fill(d.data_mut(0));
    // A 2 MiB page followed by eight 4 KiB pages in scrambled VRAM order.
    let base = 0x60_0000_0000;
    d.map
        .map(
            &mut d.mem,
            base - 2 * MIB,
            Aperture::Vram(DATA + 6 * MIB),
            2 * MIB,
            pte::PAGE_2M,
            true,
        )
        .unwrap();
    let order = [5, 2, 7, 0, 3, 6, 1, 4];
    for (i, p) in order.iter().enumerate() {
        let (va, pa) = (base + i as u64 * 4096, DATA + 0x1000 * p);
        d.map
            .map(&mut d.mem, va, Aperture::Vram(pa), 4096, pte::PAGE_4K, true)
            .unwrap();
    }
    let (start, len) = (base - 100, 100 + 8 * 4096 - 50);
    let mut want = d.data(0)[(8 * MIB - 100) as usize..(8 * MIB) as usize].to_vec();
    for p in order {
        want.extend_from_slice(&d.data(0)[(0x1000 * p) as usize..][..4096]);
    }
    want.truncate(len as usize);
    let dst = 9 * MIB + 3;
    assert_eq!(d.run(&[copy(start, W2M + dst, len)]).error, None);
    assert!(d.data(0)[dst as usize..][..len as usize] == want[..]);
    // And in the other direction, as destination.
    let src = 10 * MIB + 5;
    assert_eq!(d.run(&[copy(W4K + src, start, len)]).error, None);
    let data = d.data(0).to_vec();
    assert_eq!(
        data[(8 * MIB - 100) as usize..(8 * MIB) as usize],
        data[src as usize..][..100]
    );
    for (i, p) in order.iter().enumerate() {
        let got = &data[(0x1000 * p) as usize..][..4096];
        let off = src as usize + 100 + i * 4096;
        let n = if i == 7 { 4096 - 50 } else { 4096 };
        assert_eq!(got[..n], data[off..off + n], "page {i}");
    }
}

#[test]
fn counters_per_path() {
    let mut d = Dev::new("switch3+rp1-zen", 0);
    let ts = Command {
        seqno: 9,
        irq: false,
        op: Op::Timestamp { dst: W4K + 3 * MIB },
    };
    let cmds = [
        (copy(W4K, W2M + MIB, 1000), [1000, 0, 0]),
        (copy(W4K, wbus(1) + 64, 2000), [0, 2000, 0]),
        (copy(wbus(3) + 5, WSYS + 0x10, 3000), [0, 3000, 3000]),
        (fill(WSYS + 7, 4000, rep(0xaa)), [0, 0, 4000]),
        (fill(wbus(2), 5000, rep(0xbb)), [0, 5000, 0]),
        (ts, [8, 0, 0]),
        (copy(wbus(1), wbus(2) + MIB, 6000), [0, 12_000, 0]),
        (copy(wbus(0), W4K + MIB, 7000), [7000, 0, 0]),
        (copy(WSYS, wbus(0) + 2 * MIB, 8000), [0, 0, 8000]),
        (fence(1, false), [0, 0, 0]),
    ];
    let mut want = Counters::default();
    for (cmd, [local, p2p, sys]) in cmds {
        let out = d.run(&[cmd]);
        assert_eq!((out.completed, out.error), (1, None), "{cmd:?}");
        want.local_bytes += local;
        want.p2p_bytes += p2p;
        want.sysmem_bytes += sys;
        want.commands += 1;
        assert_eq!(d.eng.counters(), want, "{cmd:?}");
        assert_eq!(d.published_counters(), want, "{cmd:?}");
    }
    assert!(d.data(1)[64..2064] == d.data(0)[..2000]);
    assert!(d.data(2)[..5000].iter().all(|&b| b == 0xbb));
    assert!(d.mem.system[7..4007].iter().all(|&b| b == 0xaa));
}

#[test]
fn peer_routing_in_both_rigs() {
    for (name, dev, peer, reachable) in [
        ("switch3+rp1", 0, 1, true),
        ("switch3+rp1", 2, 0, true),
        ("switch3+rp1", 0, 3, false),
        ("switch3+rp1", 3, 1, false),
        ("switch3+rp1-zen", 0, 3, true),
        ("switch3+rp1-zen", 3, 2, true),
    ] {
        let mut d = Dev::new(name, dev);
        d.data_mut(dev)[..4].copy_from_slice(b"abcd");
        let out = d.run(&[copy(W4K, wbus(peer) + 0x100, 4)]);
        if reachable {
            assert_eq!(out.error, None, "{name}: {dev} -> {peer}");
            assert_eq!(&d.data(peer)[0x100..0x104], b"abcd");
        } else {
            let e = out.error.unwrap();
            assert_eq!(
                (e.cause, e.va),
                (Cause::PeerUnreachable, wbus(peer) + 0x100),
                "{e}"
            );
            assert_eq!(&d.data(peer)[0x100..0x104], [0; 4]);
            d.reset();
            d.expect_error(
                copy(wbus(peer) + 0x30, W4K, 4),
                Cause::PeerUnreachable,
                wbus(peer) + 0x30,
            );
        }
        // System memory is always reachable.
        assert_eq!(d.run(&[copy(W4K, WSYS + 0x200, 4)]).error, None);
        assert_eq!(&d.mem.system[0x200..0x204], b"abcd");
    }
}

#[test]
fn own_bar_through_the_bus_is_local_vram() {
    let mut d = Dev::new("switch3+rp1", 1);
    assert_eq!(d.run(&[fill(wbus(1) + 0x10, 4, 0x5a5a_5a5a)]).error, None);
    assert_eq!(d.data(1)[0x10..0x14], [0x5a; 4]);
    assert_eq!(d.eng.counters().local_bytes, 4);
    assert_eq!(d.eng.counters().p2p_bytes, 0);
}

#[test]
fn bus_errors() {
    let mut d = Dev::new("switch3+rp1", 0);
    let cases = [
        (0x70_0000_0000, Aperture::Bus(0x9000_0000)),
        (0x70_0020_0000, Aperture::Bus(BASES[1])),
        (0x70_0040_0000, Aperture::Bus(BASES[0])),
        (0x70_0060_0000, Aperture::Bus(RAM.bus + RAM.len)),
        (0x70_0080_0000, Aperture::Vram(BAR_SIZE - VRAM_OFFSET)),
        (0x70_00a0_0000, Aperture::Vram(1 << 40)),
    ];
    for (va, addr) in cases {
        d.map
            .map(&mut d.mem, va, addr, 2 * MIB, pte::PAGE_2M, true)
            .unwrap();
        d.expect_error(fill(va + 0x1234, 10, 1), Cause::Bus, va + 0x1234);
    }
    // The last page of system memory is fine.
    d.map
        .map(
            &mut d.mem,
            0x71_0000_0000,
            Aperture::Bus(RAM.bus + RAM.len - 0x1000),
            0x1000,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
    assert_eq!(d.run(&[fill(0x71_0000_0000, 0x1000, rep(1))]).error, None);
    assert!(d.mem.system[(RAM.len - 0x1000) as usize..]
        .iter()
        .all(|&b| b == 1));
}

#[test]
fn translation_and_permission_faults_stop_mid_command() {
    let mut d = Dev::new("switch3+rp1", 0);
    let va = 0x50_0000_0000;
    d.map
        .map(
            &mut d.mem,
            va,
            Aperture::Vram(DATA),
            0x1000,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
    d.map
        .map(
            &mut d.mem,
            va + 0x1000,
            Aperture::Vram(DATA + 0x1000),
            0x1000,
            pte::PAGE_4K,
            false,
        )
        .unwrap();
    // Read-only pages can be read.
    assert_eq!(d.run(&[copy(va + 0x1000, W4K + MIB, 0x1000)]).error, None);
    let before = d.eng.counters();
    d.expect_error(
        fill(va + 4000, 200, rep(0x77)),
        Cause::Permission,
        va + 0x1000,
    );
    assert!(d.data(0)[4000..4096].iter().all(|&b| b == 0x77));
    assert_eq!(d.data(0)[4096], 0);
    assert_eq!(d.eng.counters().local_bytes - before.local_bytes, 96);
    // Unmapped page after the mapped ones, as source and as destination.
    d.expect_error(
        copy(va + 0x1ff0, W4K + MIB, 0x20),
        Cause::Translation,
        va + 0x2000,
    );
    d.expect_error(
        copy(W4K + MIB, va + 0xff0, 0x2000),
        Cause::Permission,
        va + 0x1000,
    );
    d.expect_error(
        copy(W4K + MIB, va + 0x1ff8, 8),
        Cause::Permission,
        va + 0x1ff8,
    );
    d.expect_error(fill(va + 0xfff, 0x2000, 0), Cause::Permission, va + 0x1000);
    // Past the 48-bit limit.
    d.map
        .map(
            &mut d.mem,
            (1 << 48) - 0x1000,
            Aperture::Vram(DATA),
            0x1000,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
    d.expect_error(fill((1 << 48) - 0x10, 0x20, 0), Cause::Translation, 1 << 48);
    d.expect_error(
        fill(u64::MAX - 0x10, 0x10, 0),
        Cause::Translation,
        u64::MAX - 0x10,
    );
    // MMU off.
    d.set64(ctrl::MMU_ROOT, 0);
    let e = d.expect_error(fill(W4K, 1, 0), Cause::Translation, W4K);
    assert!(e.detail.contains("disabled"), "{e}");
}

#[test]
fn fences_and_interrupts() {
    let mut d = Dev::new("switch3+rp1", 0);
    let out = d.run(&[fence(5, false)]);
    assert_eq!((out.completed, out.vectors().count()), (1, 0));
    assert_eq!((d.eng.fence_seqno(), d.reg64(ctrl::FENCE_SEQNO)), (5, 5));
    let out = d.run(&[fill(W4K, 8, 1), fence(6, true), fill(W4K, 8, 2)]);
    assert_eq!(out.completed, 3);
    assert_eq!(out.vectors().collect::<Vec<_>>(), [bar0::VECTOR_COMPLETION]);
    assert_eq!(d.reg64(ctrl::FENCE_SEQNO), 6);
    let out = d.run(&[Command {
        irq: true,
        ..fill(W4K, 8, 3)
    }]);
    assert!(out.completion_irq);
    assert_eq!(
        d.reg64(ctrl::FENCE_SEQNO),
        6,
        "only FENCE writes FENCE_SEQNO"
    );
    // A completion and an error in one doorbell raise both vectors; the
    // failing command's IRQ flag does not count.
    let out = d.run(&[
        fence(7, true),
        Command {
            irq: true,
            ..fill(0x1234_0000, 8, 0)
        },
    ]);
    assert_eq!(
        out.vectors().collect::<Vec<_>>(),
        [bar0::VECTOR_COMPLETION, bar0::VECTOR_ERROR]
    );
    assert_eq!((out.completed, d.reg64(ctrl::FENCE_SEQNO)), (1, 7));
    let out = d.run(&[Command {
        irq: true,
        ..fence(8, true)
    }]);
    assert_eq!((out.completed, out.vectors().count()), (0, 0));
}

#[test]
fn timestamps() {
    let mut t = 0x1122_3344_5566_7700;
    let eng = Engine::new(topology("switch3+rp1"), 0)
        .unwrap()
        .with_clock(move || {
            t += 1;
            t
        });
    let mut d = Dev::with(eng);
    let ts = |dst, seqno| Command {
        seqno,
        irq: false,
        op: Op::Timestamp { dst },
    };
    assert_eq!(d.run(&[ts(W4K + 8, 1), ts(WSYS + 0x18, 2)]).error, None);
    assert_eq!(d.data(0)[8..16], 0x1122_3344_5566_7701u64.to_le_bytes());
    assert_eq!(
        d.mem.system[0x18..0x20],
        0x1122_3344_5566_7702u64.to_le_bytes()
    );
    d.expect_error(ts(W4K + 4, 3), Cause::Malformed, 0);
    let default_clock = Dev::new("switch3+rp1", 0).eng.clock.as_mut()();
    assert!(
        default_clock < 60_000_000_000,
        "timestamps count from the engine's start"
    );
}

#[test]
fn error_record_and_stop_until_reset() {
    let mut d = Dev::new("switch3+rp1", 0);
    let bad = Command {
        seqno: 0xbad,
        irq: false,
        op: Op::Fill {
            dst: 0x7777_0000,
            len: 4,
            pattern: 0,
        },
    };
    let out = d.run(&[fill(W4K, 4, 0x1111_1111), bad, fence(3, true)]);
    assert_eq!(out.completed, 1);
    assert!(!out.completion_irq);
    let e = out.error.unwrap();
    assert_eq!(
        (e.cause, e.va, e.seqno, e.opcode),
        (Cause::Translation, 0x7777_0000, 0xbad, slot::OP_FILL)
    );
    assert_eq!(d.published_error(), (1, 0x7777_0000, 0xbad, slot::OP_FILL));
    assert_eq!((d.eng.tail(), d.reg32(ctrl::RING_TAIL)), (1, 1));
    assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_ERROR);
    assert_eq!(d.eng.error(), Some(&e));
    assert_eq!(d.published_counters().errors, 1);
    // Stopped: further doorbells execute nothing and raise nothing.
    for _ in 0..2 {
        let out = d.run(&[fence(4, true)]);
        assert_eq!(out, Outcome::default());
        assert_eq!((d.eng.tail(), d.eng.fence_seqno()), (1, 0));
        assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_ERROR);
    }
    // A driver cannot clear the error by writing the device's registers.
    d.set32(ctrl::STATUS, ctrl::STATUS_READY);
    d.set32(ctrl::ERR_CAUSE, 0);
    assert_eq!(d.doorbell(), Outcome::default());
    assert_eq!(d.published_error().0, 1);
    assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_ERROR);
    // Reset: pending commands discarded, error cleared, the rest kept.
    let counters = d.eng.counters();
    let out = d.reset();
    assert_eq!(
        (out.completed, out.vectors().count(), out.error),
        (0, 0, None)
    );
    assert_eq!((d.eng.tail(), d.reg32(ctrl::RING_TAIL)), (5, 5));
    assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_READY);
    assert_eq!(d.reg32(ctrl::CONTROL), 0);
    assert_eq!(d.published_error(), (0, 0, 0, 0));
    assert_eq!(d.published_counters(), counters);
    assert_eq!(d.data(0)[..4], [0x11; 4]);
    assert_ne!(d.reg64(ctrl::MMU_ROOT), 0);
    let out = d.run(&[fence(9, true)]);
    assert_eq!((out.completed, d.reg64(ctrl::FENCE_SEQNO)), (1, 9));
}

#[test]
fn reset_discards_commands_submitted_with_it_and_restores_identification() {
    let mut d = Dev::new("switch3+rp1", 0);
    d.set64(ctrl::SIGNATURE, 0);
    d.set32(ctrl::RING_TAIL, 77);
    (0..3).for_each(|i| d.push_slot(&fence(i + 1, true).encode()));
    let out = d.reset();
    assert_eq!(
        (out.completed, d.eng.fence_seqno(), d.eng.tail()),
        (0, 0, 3)
    );
    assert_eq!(d.reg32(ctrl::RING_TAIL), 3);
    assert_eq!(d.mem.bars[0][..8], *b"CNFXACCL");
    // Reserved CONTROL bits do not reset.
    d.set32(ctrl::CONTROL, !ctrl::CONTROL_RESET);
    let out = d.run(&[fence(4, false)]);
    assert!(!out.reset);
    assert_eq!(out.completed, 1);
}

#[test]
fn ring_state_invalid() {
    let mut d = Dev::new("switch3+rp1", 0);
    let check = |d: &mut Dev, out: Outcome| {
        let e = out.error.unwrap();
        assert_eq!(
            (e.cause, e.va, e.seqno, e.opcode),
            (Cause::RingState, 0, 0, 0),
            "{e}"
        );
        assert_eq!(d.published_error(), (6, 0, 0, 0));
        assert_eq!(out.completed, 0);
        assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_ERROR);
    };
    // Head more than the ring's 1024 slots ahead of the tail, or behind it.
    for head in [1025, u32::MAX] {
        d.set32(ctrl::RING_HEAD, head);
        let out = d.eng.process(&mut d.mem);
        check(&mut d, out);
        assert_eq!(d.eng.tail(), 0);
        d.head = 0;
        d.set32(ctrl::RING_HEAD, 0);
        d.reset();
    }
    for (offset, size) in [
        (0x1000, 0x3000),
        (0x1000, 0),
        (0x0, 0x1000),
        (0x1010, 0x1000),
        (BAR_SIZE - 0x800, 0x1000),
    ] {
        d.set64(ctrl::RING_OFFSET, offset);
        d.set64(ctrl::RING_SIZE, size);
        let out = d.run(&[]);
        check(&mut d, out);
        // A reset alone does not help while the ring registers stay bad.
        d.set32(ctrl::CONTROL, ctrl::CONTROL_RESET);
        let out = d.run(&[]);
        assert!(out.reset);
        check(&mut d, out);
        d.set64(ctrl::RING_OFFSET, 0x1000);
        d.set64(ctrl::RING_SIZE, 0x1_0000);
        assert_eq!(d.reset().error, None);
    }
}

#[test]
fn small_ring_wraps_free_running_counters() {
    let mut d = Dev::new("switch3+rp1", 0);
    d.set64(ctrl::RING_OFFSET, PRIV_OFFSET);
    d.set64(ctrl::RING_SIZE, 4 * slot::SIZE);
    d.head = u32::MAX - 5;
    d.reset();
    assert_eq!(d.eng.tail(), u32::MAX - 5);
    let mut seqno = 0;
    for batch in [1, 4, 3, 4, 2, 4] {
        let cmds: Vec<_> = (0..batch)
            .map(|_| {
                seqno += 1;
                fence(seqno, false)
            })
            .collect();
        let out = d.run(&cmds);
        assert_eq!((out.completed, out.error), (batch, None));
        assert_eq!((d.eng.tail(), d.eng.fence_seqno()), (d.head, seqno));
    }
    assert!(d.head < 100, "the counters wrapped");
    // The default ring area was never used: it holds only zeros.
    assert!(d.mem.bars[0][0x1000..0x1_1000].iter().all(|&b| b == 0));
    // Five commands do not fit in four slots.
    d.head = d.head.wrapping_add(5);
    let out = d.doorbell();
    assert_eq!(out.error.map(|e| e.cause), Some(Cause::RingState));
}

#[test]
fn malformed_commands_in_the_ring() {
    let mut d = Dev::new("switch3+rp1", 0);
    let mut s = fence(0x42, false).encode();
    s[0] = 9;
    d.push_slot(&s);
    let e = d.doorbell().error.unwrap();
    assert_eq!(
        (e.cause, e.va, e.seqno, e.opcode),
        (Cause::Malformed, 0, 0x42, 9)
    );
    assert!(e.detail.contains("unknown opcode"), "{e}");
    d.reset();
    d.expect_error(copy(W4K, W4K + 8, 16), Cause::Malformed, 0);
    d.expect_error(fill(W4K, 0, 1), Cause::Malformed, 0);
    let mut s = fill(W4K, 8, 1).encode();
    s[0x30] = 1;
    d.push_slot(&s);
    assert_eq!(d.doorbell().error.map(|e| e.cause), Some(Cause::Malformed));
}

#[test]
fn null_pages_read_zeros_and_drop_writes() {
    const WNULL: u64 = 0x50_0000_0000;
    let mut d = Dev::new("switch3+rp1", 0);
    // 4 KiB NULL pages (one read-only) then a 2 MiB one.
    d.map
        .map(
            &mut d.mem,
            WNULL,
            Aperture::Null,
            0x1000,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
    d.map
        .map(
            &mut d.mem,
            WNULL + 0x1000,
            Aperture::Null,
            0x1000,
            pte::PAGE_4K,
            false,
        )
        .unwrap();
    d.map
        .map(
            &mut d.mem,
            WNULL + 0x20_0000,
            Aperture::Null,
            0x20_0000,
            pte::PAGE_2M,
            true,
        )
        .unwrap();
    d.data_mut(0)[..0x3000].fill(0xa5);
    let before = d.eng.counters();
    // Writes to NULL pages vanish, whatever WRITABLE says, and fault nothing.
    let out = d.run(&[
        copy(W4K, WNULL + 0x800, 0x1000),
        fill(WNULL + 0x20_0100, 0x100, rep(0x11)),
    ]);
    assert_eq!(out.error, None);
    assert!(d.data(0)[..0x3000].iter().all(|&b| b == 0xa5));
    let c = d.eng.counters();
    assert_eq!(c.local_bytes, before.local_bytes);
    assert_eq!(
        c.p2p_bytes + c.sysmem_bytes,
        before.p2p_bytes + before.sysmem_bytes
    );
    // Reads of NULL pages return zeros, across two 4 KiB pages too.
    let out = d.run(&[
        copy(WNULL + 0xf00, W4K + 0x100, 0x200),
        copy(WNULL + 0x3f_f800, W4K + 0x2000, 0x800),
    ]);
    assert_eq!(out.error, None);
    let data = d.data(0);
    assert!(data[..0x100].iter().all(|&b| b == 0xa5));
    assert!(data[0x100..0x300].iter().all(|&b| b == 0));
    assert!(data[0x300..0x2000].iter().all(|&b| b == 0xa5));
    assert!(data[0x2000..0x2800].iter().all(|&b| b == 0));
    assert!(data[0x2800..0x3000].iter().all(|&b| b == 0xa5));
    // 0x2000..0x20_0000 of the window is unmapped: the copy faults there.
    d.reset();
    d.expect_error(
        copy(WNULL + 0x1f00, W4K, 0x200),
        Cause::Translation,
        WNULL + 0x2000,
    );
    // Without the capability aperture 2 is reserved.
    let mut d = Dev::with(
        Engine::new(topology("switch3+rp1"), 0)
            .unwrap()
            .with_caps(ctrl::CAP_ALL & !ctrl::CAP_MMU_NULL),
    );
    d.map
        .map(
            &mut d.mem,
            WNULL,
            Aperture::Null,
            0x1000,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
    let e = d.expect_error(copy(W4K, WNULL, 8), Cause::Translation, WNULL);
    assert!(e.detail.contains("reserved aperture"), "{e:?}");
}

#[test]
fn capabilities_are_advertised_and_honoured() {
    let caps = ctrl::CAP_ALL & !(ctrl::CAP_PEER_P2P | ctrl::CAP_MMU_2M | ctrl::CAP_FILL);
    let mut d = Dev::with(
        Engine::new(topology("switch3+rp1"), 0)
            .unwrap()
            .with_caps(caps | 0x100),
    );
    assert_eq!(d.reg32(ctrl::CAPS), caps);
    d.expect_error(copy(W4K, wbus(1), 8), Cause::Translation, wbus(1));
    d.map
        .map(
            &mut d.mem,
            0x80_0000_0000,
            Aperture::Bus(BASES[1] + VRAM_OFFSET),
            0x1000,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
    let e = d.expect_error(
        copy(W4K, 0x80_0000_0000, 8),
        Cause::PeerUnreachable,
        0x80_0000_0000,
    );
    assert!(e.detail.contains("CAP_PEER_P2P"));
    d.expect_error(copy(W2M, W4K + MIB, 8), Cause::Translation, W2M);
    d.expect_error(fill(W4K, 8, 0), Cause::Malformed, 0);
    assert_eq!(d.run(&[copy(W4K, W4K + MIB, 8)]).error, None);
}

/// Random command slots on random page tables: the engine must neither
/// panic nor break its invariants, and must hit every error cause.
#[test]
fn fuzz_random_slots_and_page_tables() {
    // Sixteen tables at VRAM 0x180000..0x190000 that random entries link,
    // next to the windows of `Dev`, whose tables start at VRAM 0x1000.
    let tables: [u64; 16] = std::array::from_fn(|i| 0x18_0000 + i as u64 * 0x1000);
    const VRAM_ADDRS: [u64; 5] = [
        DATA,
        DATA + 0x20_0000,
        BAR_SIZE - VRAM_OFFSET - 0x1000,
        BAR_SIZE,
        1 << 40,
    ];
    const BUS_ADDRS: [u64; 8] = [
        BASES[0] + VRAM_OFFSET + DATA,
        BASES[1] + VRAM_OFFSET + 0x40_0000,
        BASES[2],
        BASES[3] + VRAM_OFFSET,
        BASES[3] + BAR_SIZE - 0x1000,
        RAM.bus,
        RAM.bus + RAM.len - 0x1000,
        0x9000_0000,
    ];
    let pick = |rng: &mut Rng, a: &[u64]| a[rng.below(a.len() as u64) as usize];
    let entry = |rng: &mut Rng| match rng.below(10) {
        0..=3 => table_entry(pick(rng, &tables)),
        4..=7 => {
            let off = rng.below(3) * 0x1000;
            let addr = match rng.below(2) {
                0 => Aperture::Vram(pick(rng, &VRAM_ADDRS) + off),
                _ => Aperture::Bus(pick(rng, &BUS_ADDRS) + off),
            };
            leaf_entry(addr, rng.below(4) > 0)
        }
        8 => rng.next(),
        _ => table_entry(pick(rng, &tables)) ^ 1 << rng.below(64),
    };
    // Virtual addresses: in the windows of `Dev`, or with table indexes
    // among the first four, or anything.
    let windows = [W4K, W2M, wbus(0), wbus(1), wbus(2), wbus(3), WSYS];
    let va = |rng: &mut Rng| match rng.below(10) {
        0 => rng.next(),
        1 => (1 << 48) - rng.below(0x3000),
        2..=4 => {
            (rng.below(2) << 39)
                | (rng.below(2) << 30)
                | (rng.below(4) << 21)
                | (rng.below(4) << 12)
                | rng.below(0x1000)
        }
        _ => pick(rng, &windows) + rng.below(DATA_LEN),
    };
    let mut rng = Rng(0x5eed);
    let mut causes = std::collections::HashSet::new();
    let mut completed = 0u64;
    let mut moved = [0; 3];
    for (name, dev) in RIGS.iter().flat_map(|n| [(*n, 0), (*n, 3)]) {
        let mut d = Dev::new(name, dev);
        let bar = d.bar();
        for t in tables {
            d.mem.write(bar, VRAM_OFFSET + t, &[0; 4096]).unwrap();
        }
        let roots = [d.map.root(), tables[0]];
        for _ in 0..1500 {
            if d.eng.status() == ctrl::STATUS_ERROR && rng.below(4) > 0 {
                // Recover as a driver would.
                d.head = d.eng.tail();
                d.set64(ctrl::RING_OFFSET, 0x1000);
                d.set64(ctrl::RING_SIZE, 0x1_0000);
                assert_eq!(d.reset().error, None);
            }
            for _ in 0..rng.below(8) {
                let at = pick(&mut rng, &tables) + rng.below(4) * 8;
                let e = entry(&mut rng);
                d.mem.write_u64(bar, VRAM_OFFSET + at, e).unwrap();
            }
            match rng.below(60) {
                0 => d.set64(ctrl::MMU_ROOT, rng.next() & 0x1f_f000),
                5..=30 => d.set64(ctrl::MMU_ROOT, pick(&mut rng, &roots)),
                1 => d.set64(ctrl::RING_SIZE, 1 << rng.below(20)),
                2 => d.set64(ctrl::RING_OFFSET, rng.below(2 * BAR_SIZE) & !0x3f),
                3 => d.head = rng.next() as u32,
                4 => d.set32(ctrl::CONTROL, rng.next() as u32),
                _ => {}
            }
            let ring = Ring::new(
                d.reg64(ctrl::RING_OFFSET),
                d.reg64(ctrl::RING_SIZE),
                BAR_SIZE,
            );
            for _ in 0..rng.below(6) {
                let len = match rng.below(10) {
                    0 => rng.next(),
                    1 => rng.below(3 * MIB),
                    2..=4 => rng.below(0x2_0000),
                    _ => rng.below(0x2000),
                };
                let op = match rng.below(4) {
                    0 => Op::Copy {
                        src: va(&mut rng),
                        dst: va(&mut rng),
                        len,
                    },
                    1 => Op::Fill {
                        dst: va(&mut rng),
                        len,
                        pattern: rng.next(),
                    },
                    2 => Op::Fence,
                    _ => Op::Timestamp {
                        dst: va(&mut rng) & !(7 * u64::from(rng.below(8) > 0)),
                    },
                };
                let mut s = Command {
                    seqno: rng.next(),
                    irq: rng.below(2) == 0,
                    op,
                }
                .encode();
                if rng.below(10) == 0 {
                    s[rng.below(64) as usize] = rng.next() as u8;
                }
                if let Ok(r) = ring {
                    d.mem.write(bar, r.slot_offset(d.head), &s).unwrap();
                }
                d.head = d.head.wrapping_add(1);
            }

            let (before, was_stopped) = (d.eng.counters(), d.eng.status() == ctrl::STATUS_ERROR);
            let reset_requested = d.reg32(ctrl::CONTROL) & ctrl::CONTROL_RESET != 0;
            let out = d.doorbell();
            let c = d.eng.counters();
            assert_eq!(d.published_counters(), c);
            assert_eq!(c.commands - before.commands, u64::from(out.completed));
            assert_eq!(c.errors - before.errors, u64::from(out.error.is_some()));
            assert!(c.local_bytes >= before.local_bytes && c.p2p_bytes >= before.p2p_bytes);
            assert_eq!(out.reset, reset_requested);
            assert_eq!(d.reg32(ctrl::RING_TAIL), d.eng.tail());
            assert_eq!(d.reg32(ctrl::STATUS), d.eng.status());
            assert_eq!(d.reg64(ctrl::FENCE_SEQNO), d.eng.fence_seqno());
            let stays_stopped = was_stopped && !out.reset;
            if stays_stopped {
                assert_eq!(out, Outcome::default());
            }
            match &out.error {
                Some(e) => {
                    assert_eq!(
                        d.published_error(),
                        (e.cause.code(), e.va, e.seqno, e.opcode)
                    );
                    causes.insert(e.cause);
                }
                None if stays_stopped => assert_eq!(d.eng.status(), ctrl::STATUS_ERROR),
                None => assert_eq!((d.eng.status(), d.eng.tail()), (ctrl::STATUS_READY, d.head)),
            }
            if d.eng.status() == ctrl::STATUS_ERROR {
                assert_eq!(
                    d.published_error().0,
                    d.eng.error().map_or(0, |e| e.cause.code())
                );
            }
            completed += u64::from(out.completed);
        }
        let c = d.eng.counters();
        moved = [
            moved[0] + c.local_bytes,
            moved[1] + c.p2p_bytes,
            moved[2] + c.sysmem_bytes,
        ];
    }
    assert!(completed > 1000, "only {completed} commands completed");
    assert!(
        moved.iter().all(|&n| n > MIB),
        "bytes moved (local, p2p, system): {moved:?}"
    );
    for cause in Cause::ALL {
        assert!(causes.contains(&cause), "no {cause} seen");
    }
}

#[test]
fn set_topology_keeps_the_state_and_changes_the_routes() {
    let mut d = Dev::new("switch3+rp1", 0);
    assert_eq!(
        d.run(&[fill(W4K, 100, rep(7)), fence(5, false)]).error,
        None
    );
    // Device 3 is unreachable, until the host bridge routes P2P.
    d.expect_error(copy(W4K, wbus(3), 8), Cause::PeerUnreachable, wbus(3));
    let before = (d.eng.tail(), d.eng.fence_seqno(), d.eng.counters());
    d.eng.set_topology(topology("switch3+rp1-zen")).unwrap();
    assert_eq!(
        (d.eng.tail(), d.eng.fence_seqno(), d.eng.counters()),
        before
    );
    assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_READY);
    assert_eq!(d.run(&[copy(W4K, wbus(3), 8)]).error, None);
    assert_eq!(d.mem.bars[3][(VRAM_OFFSET + DATA) as usize..][..8], [7; 8]);
    // The device must be there, with a BAR2 of the same size.
    let small = Arc::new(
        Topology::rig(
            "switch3+rp1",
            &BASES.map(|base| Bar {
                base,
                size: BAR_SIZE / 2,
            }),
            &[RAM],
        )
        .unwrap(),
    );
    let e = d.eng.set_topology(small).unwrap_err();
    assert!(e.0.contains("device 0"), "{e}");
    let mut one = Topology::new(false);
    let rp = one.add_root_port();
    let mut eng = Engine::new(topology("switch3+rp1"), 2).unwrap();
    one.add_device(
        rp,
        Bar {
            base: 0,
            size: BAR_SIZE,
        },
    )
    .unwrap();
    let e = eng.set_topology(Arc::new(one)).unwrap_err();
    assert!(e.0.contains("no device 2"), "{e}");
}

/// Memory that runs `before` on the backing memory ahead of each piece, fill or copy: what a
/// driver on another CPU does meanwhile.
struct BeforePiece<'a, F: FnMut(&mut Buffers) -> Result<(), MemoryError>> {
    inner: &'a mut Buffers,
    before: F,
}

impl<F: FnMut(&mut Buffers) -> Result<(), MemoryError>> Memory for BeforePiece<'_, F> {
    fn read(&self, target: Target, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.inner.read(target, offset, buf)
    }

    fn write(&mut self, target: Target, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.inner.write(target, offset, data)
    }

    fn copy(
        &mut self,
        src: Target,
        src_offset: u64,
        dst: Target,
        dst_offset: u64,
        len: usize,
    ) -> Result<(), MemoryError> {
        (self.before)(self.inner)?;
        self.inner.copy(src, src_offset, dst, dst_offset, len)
    }

    fn fill(
        &mut self,
        target: Target,
        offset: u64,
        len: usize,
        pattern: u64,
    ) -> Result<(), MemoryError> {
        (self.before)(self.inner)?;
        self.inner.fill(target, offset, len, pattern)
    }
}

#[test]
fn a_reset_requested_during_a_command_stops_it_before_its_next_piece() {
    let mut d = Dev::new("switch3+rp1", 0);
    // A FILL of sixteen 4 KiB pages and a fence; the reset comes while the
    // fifth piece is written.
    d.push_slot(&fill(W4K, 16 * 4096, u64::MAX).encode());
    d.push_slot(&fence(7, true).encode());
    d.set32(ctrl::RING_HEAD, d.head);
    let bar = d.bar();
    let mut after = 4_u32;
    let out = d.eng.process(&mut BeforePiece {
        inner: &mut d.mem,
        before: |mem| {
            if after == 0 {
                mem.write_u32(bar, ctrl::CONTROL, ctrl::CONTROL_RESET)?;
            }
            after = after.saturating_sub(1);
            Ok(())
        },
    });
    assert!(out.reset);
    assert!(out.error.is_none());
    assert_eq!(out.completed, 0);
    assert_eq!(d.reg32(ctrl::CONTROL), 0);
    assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_READY);
    assert_eq!(d.reg32(ctrl::RING_TAIL), d.head);
    assert_eq!(d.reg64(ctrl::FENCE_SEQNO), 0);
    // Five pieces were written; the rest of the command never ran.
    assert!(d.data(0)[..5 * 4096].iter().all(|&b| b == 0xff));
    assert!(d.data(0)[5 * 4096..16 * 4096].iter().all(|&b| b == 0));
}

#[test]
fn fence_seqno_is_written_as_each_fence_executes() {
    let mut d = Dev::new("switch3+rp1", 0);
    for c in [
        fence(3, false),
        fill(W4K, 8, 1),
        fence(4, false),
        fill(W4K, 8, 2),
    ] {
        d.push_slot(&c.encode());
    }
    d.set32(ctrl::RING_HEAD, d.head);
    let bar = d.bar();
    // FENCE_SEQNO as a driver on another CPU reads it whenever a fill starts.
    let mut seen = Vec::new();
    d.eng.process(&mut BeforePiece {
        inner: &mut d.mem,
        before: |mem| {
            seen.push(mem.read_u64(bar, ctrl::FENCE_SEQNO)?);
            Ok(())
        },
    });
    // Each fill saw the fence before it, in the middle of one doorbell.
    assert_eq!(seen, [3, 4]);
}

#[test]
fn an_awake_engine_looks_for_heads_it_has_not_read() {
    let mut d = Dev::new("switch3+rp1", 0);
    assert!(!d.eng.head_moved(&d.mem), "nothing written yet");
    d.eng.set_awake(&mut d.mem, true);
    assert_eq!(d.reg32(ctrl::RING_POLL), ctrl::RING_POLL_AWAKE);
    d.push_slot(&fill(W4K, 8, 0x11).encode());
    d.set32(ctrl::RING_HEAD, d.head);
    assert!(d.eng.head_moved(&d.mem), "a new head");
    assert_eq!(d.eng.process(&mut d.mem).completed, 1);
    assert!(!d.eng.head_moved(&d.mem), "read by the doorbell's work");
    assert_eq!(
        d.reg32(ctrl::RING_POLL),
        ctrl::RING_POLL_AWAKE,
        "published with the other device registers"
    );
    // A stalled engine read the head: it does not spin on it.
    d.set32(ctrl::FAULTS, ctrl::FAULT_STALL);
    assert_eq!(d.run(&[fill(W4K, 8, 0x22)]).completed, 0);
    assert!(!d.eng.head_moved(&d.mem));
    // A reset takes the head as its tail.
    d.push_slot(&fill(W4K, 8, 0x33).encode());
    d.set32(ctrl::RING_HEAD, d.head);
    d.reset();
    assert!(!d.eng.head_moved(&d.mem));
    // An engine stopped on an error executes nothing: no head is new to it.
    assert!(d.run(&[fill(W4K, 0, 1)]).error.is_some());
    assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_ERROR);
    d.set32(ctrl::RING_HEAD, d.head.wrapping_add(1));
    assert!(!d.eng.head_moved(&d.mem));
    d.eng.set_awake(&mut d.mem, false);
    assert_eq!(d.reg32(ctrl::RING_POLL), 0);
}

#[test]
fn fault_stall_holds_the_engine_until_a_reset() {
    let mut d = Dev::new("switch3+rp1", 0);
    d.set32(ctrl::FAULTS, ctrl::FAULT_STALL);
    let out = d.run(&[fill(W4K, 8, 0x11), fence(1, true)]);
    assert_eq!((out.completed, out.vectors().count()), (0, 0));
    assert_eq!(d.reg64(ctrl::FENCE_SEQNO), 0);
    // Doorbells change nothing while it stalls.
    assert_eq!(d.doorbell().completed, 0);
    d.reset();
    assert_eq!(d.reg32(ctrl::FAULTS), 0, "a reset clears the stall");
    let out = d.run(&[fill(W4K, 8, 0x22), fence(2, true)]);
    assert_eq!(out.completed, 2);
    assert_eq!(d.reg64(ctrl::FENCE_SEQNO), 2);
}

#[test]
fn fault_drop_completion_keeps_the_vector_quiet() {
    let mut d = Dev::new("switch3+rp1", 0);
    d.set32(ctrl::FAULTS, ctrl::FAULT_DROP_COMPLETION);
    let out = d.run(&[fill(W4K, 8, 1), fence(4, true)]);
    assert_eq!((out.completed, out.vectors().count()), (2, 0));
    assert_eq!(d.reg64(ctrl::FENCE_SEQNO), 4, "the job still completes");
    d.reset();
    assert_eq!(d.reg32(ctrl::FAULTS), ctrl::FAULT_DROP_COMPLETION);
    d.set32(ctrl::FAULTS, 0);
    assert!(d.run(&[fence(5, true)]).completion_irq);
}

#[test]
fn fault_bogus_seqno_until_a_reset() {
    let mut d = Dev::new("switch3+rp1", 0);
    d.set32(ctrl::FAULTS, ctrl::FAULT_BOGUS_SEQNO);
    d.run(&[fence(6, true)]);
    assert_eq!(d.reg64(ctrl::FENCE_SEQNO), 6 + (1 << 40));
    d.reset();
    d.run(&[fence(7, true)]);
    assert_eq!(d.reg64(ctrl::FENCE_SEQNO), 7);
}

#[test]
fn fault_ignore_reset_never_acknowledges() {
    let mut d = Dev::new("switch3+rp1", 0);
    d.set32(ctrl::FAULTS, ctrl::FAULT_IGNORE_RESET);
    d.set32(ctrl::CONTROL, ctrl::CONTROL_RESET);
    let out = d.doorbell();
    assert!(!out.reset);
    assert_eq!(d.reg32(ctrl::CONTROL), ctrl::CONTROL_RESET);
    d.set32(ctrl::FAULTS, 0);
    assert!(d.doorbell().reset);
    assert_eq!(d.reg32(ctrl::CONTROL), 0);
}

#[test]
fn fault_exit_is_asked_of_the_server_and_survives_a_reset() {
    let mut d = Dev::new("switch3+rp1", 0);
    assert!(!d.eng.exit_requested(&d.mem));
    d.set32(ctrl::FAULTS, ctrl::FAULT_EXIT);
    assert!(d.eng.exit_requested(&d.mem));
    d.reset();
    assert!(d.eng.exit_requested(&d.mem));
}

#[test]
fn fault_tear_seqno_leaves_fence_seqno_as_it_was() {
    let mut d = Dev::new("switch3+rp1", 0);
    d.run(&[fence(6, true)]);
    assert!(!d.eng.tear_requested(&d.mem));
    d.set32(ctrl::FAULTS, ctrl::FAULT_TEAR_SEQNO);
    assert!(d.eng.tear_requested(&d.mem));
    d.eng.tear_fence_seqno(&mut d.mem, 3);
    assert_eq!(d.reg64(ctrl::FENCE_SEQNO), 6);
}

#[test]
fn fault_fail_command_fails_one_command_and_clears_itself() {
    let mut d = Dev::new("switch3+rp1", 0);
    d.run(&[fill(W4K, 4, rep(0x11))]);
    d.set32(
        ctrl::FAULTS,
        ctrl::FAULT_FAIL_COMMAND | ctrl::FAULT_DROP_COMPLETION,
    );
    // A FENCE is neither a COPY nor a FILL: it runs.
    d.run(&[fence(2, false)]);
    assert_eq!(d.reg64(ctrl::FENCE_SEQNO), 2);
    d.expect_error(fill(W4K, 4, rep(0x22)), Cause::Bus, W4K);
    assert_eq!(d.data(0)[..4], [0x11; 4]);
    assert_eq!(d.reg32(ctrl::FAULTS), ctrl::FAULT_DROP_COMPLETION);
    let out = d.run(&[fill(W4K, 4, rep(0x33))]);
    assert_eq!((out.completed, out.error), (1, None));
    assert_eq!(d.data(0)[..4], [0x33; 4]);
}
