// SPDX-License-Identifier: GPL-2.0

//! Throughput of a 64 MiB `COPY` from one device's VRAM to a peer's, on
//! plain buffers and on shared memfd mappings, against host `memcpy`.
//! `cargo test --test throughput -- --nocapture` prints the figures; the
//! test checks that every copy completes. The comparison with the host's
//! memcpy is a figure of `make bench`, not a timed assertion.
//!
//! On shared memory a piece of a copy is one `memmove`, so with 2 MiB
//! pages the copy runs at about the speed of `memcpy`.

use std::{os::fd::AsFd, sync::Arc, time::Duration};

use conflux_device::{
    memory::{Buffers, Memory, Target},
    mmu::{Aperture, Mapper},
    regs::{ctrl, pte, VRAM_OFFSET},
    ring::{Command, Op},
    shm::{self, Mapping, SharedMemory},
};
use conflux_emu::{
    bench,
    engine::Engine,
    fabric::{Bar, Topology},
};

const MIB: u64 = 1 << 20;
const BAR_SIZE: u64 = 128 * MIB;
const LEN: u64 = 64 * MIB;
const BASES: [u64; 4] = [0x1_0000_0000, 0x1_0800_0000, 0x1_1000_0000, 0x1_1800_0000];
/// VA of 64 MiB of device 0's VRAM (2 MiB pages).
const SRC: u64 = 0x10_0000_0000;
/// VA of 64 MiB of device 1's VRAM through the bus (2 MiB pages).
const DST: u64 = 0x20_0000_0000;
/// The same as `DST` with 4 KiB pages.
const DST_4K: u64 = 0x30_0000_0000;

/// Bytes per second of the best of several 64 MiB copies from device 0 to
/// device 1, with 2 MiB and with 4 KiB destination pages.
fn engine_copy<M: Memory>(mem: &mut M) -> (f64, f64) {
    let bars = BASES.map(|base| Bar {
        base,
        size: BAR_SIZE,
    });
    let topology = Arc::new(Topology::rig("switch3+rp1", &bars, &[]).unwrap());
    let mut eng = Engine::new(topology, 0).unwrap();
    eng.power_on(mem).unwrap();
    let bar = Target::Bar(0);
    let mut map = Mapper::new(mem, bar, 0x1000, 2 * MIB).unwrap();
    let peer = BASES[1] + VRAM_OFFSET + 2 * MIB;
    map.map(mem, SRC, Aperture::Vram(2 * MIB), LEN, pte::PAGE_2M, false)
        .unwrap();
    map.map(mem, DST, Aperture::Bus(peer), LEN, pte::PAGE_2M, true)
        .unwrap();
    map.map(mem, DST_4K, Aperture::Bus(peer), LEN, pte::PAGE_4K, true)
        .unwrap();
    mem.write_u64(bar, ctrl::MMU_ROOT, map.root()).unwrap();
    mem.fill(
        bar,
        VRAM_OFFSET + 2 * MIB,
        LEN as usize,
        0x0123_4567_89ab_cdef,
    )
    .unwrap();
    let mut head = 0u32;
    let mut run = |mem: &mut M, dst: u64| {
        let c = Command {
            seqno: u64::from(head),
            irq: false,
            op: Op::Copy {
                src: SRC,
                dst,
                len: LEN,
            },
        };
        mem.write(bar, 0x1000 + u64::from(head % 1024) * 64, &c.encode())
            .unwrap();
        head += 1;
        mem.write_u32(bar, ctrl::RING_HEAD, head).unwrap();
        let out = eng.process(mem);
        assert_eq!((out.completed, out.error), (1, None));
    };
    // Once untimed, so that every destination page exists.
    run(mem, DST);
    let budget = Duration::from_millis(500);
    let big = bench::best_rate(LEN as usize, budget, || run(mem, DST));
    let small = bench::best_rate(LEN as usize, budget, || run(mem, DST_4K));
    (big, small)
}

#[test]
fn copy_between_devices_completes_beside_memcpy() {
    let host = bench::host_memcpy(LEN as usize);
    let size = BAR_SIZE as usize;
    let mut buffers = Buffers::new(&[size, size, 0, 0], 0);
    let (buf_2m, buf_4k) = engine_copy(&mut buffers);
    drop(buffers);
    let memfd = |i: usize| shm::memfd(&format!("throughput{i}"), BAR_SIZE).unwrap();
    let files = [memfd(0), memfd(1), memfd(2), memfd(3)];
    let maps = files
        .iter()
        .map(|f| Mapping::new(f.as_fd(), size).unwrap())
        .collect();
    let mut shm = SharedMemory::new(maps, None);
    let (shm_2m, shm_4k) = engine_copy(&mut shm);
    let mb = |r: f64| r / 1e6;
    println!("host memcpy 64 MiB:                  {:8.0} MB/s", mb(host));
    println!(
        "engine COPY 64 MiB, Buffers, 2 MiB:  {:8.0} MB/s",
        mb(buf_2m)
    );
    println!(
        "engine COPY 64 MiB, Buffers, 4 KiB:  {:8.0} MB/s",
        mb(buf_4k)
    );
    println!(
        "engine COPY 64 MiB, memfds, 2 MiB:   {:8.0} MB/s",
        mb(shm_2m)
    );
    println!(
        "engine COPY 64 MiB, memfds, 4 KiB:   {:8.0} MB/s",
        mb(shm_4k)
    );
}
