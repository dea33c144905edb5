// SPDX-License-Identifier: GPL-2.0

//! User queues (device.rst, "User queues"): rings in an address space with
//! a doorbell page, memory fences, preemption with the state saved, errors
//! of one queue, reset, and a randomised comparison of preempted runs with
//! straight ones.

use super::*;
use crate::engine::{QueueOutcome, QueueState};
use conflux_device::{
    regs::{doorbell_page, queue, queue_reg},
    ring::Compare,
};

/// A user queue of a test device: its ring of `slots` slots at `va`, a VA of the 4 KiB window
/// on the data area, and the head it has published.
struct Uq {
    q: u32,
    va: u64,
    slots: u32,
    head: u32,
}

impl Uq {
    /// Sets up queue `q` with its ring at `va` in the device's address space and enables it.
    fn enable(d: &mut Dev, q: u32, va: u64, slots: u32) -> Self {
        let root = d.reg64(ctrl::MMU_ROOT);
        d.set64(queue_reg(q, queue::RING_VA), va);
        d.set64(queue_reg(q, queue::RING_SIZE), u64::from(slots) * 64);
        d.set64(queue_reg(q, queue::MMU_ROOT), root);
        d.set32(queue_reg(q, queue::TAIL), 0);
        d.set64(queue_reg(q, queue::PROGRESS), 0);
        d.set32(doorbell_page(q), 0);
        d.set32(queue_reg(q, queue::CONTROL), queue::CONTROL_ENABLE);
        d.doorbell();
        assert_eq!(status(d, q), queue::STATUS_RUNNING);
        Self {
            q,
            va,
            slots,
            head: 0,
        }
    }

    /// Writes `cmds` into the ring, then the head into the doorbell page.
    fn submit(&mut self, d: &mut Dev, cmds: &[Command]) {
        let dev = d.eng.dev;
        for c in cmds {
            let at = (self.va - W4K + u64::from(self.head % self.slots) * 64) as usize;
            d.data_mut(dev)[at..at + 64].copy_from_slice(&c.encode());
            self.head = self.head.wrapping_add(1);
        }
        d.set32(doorbell_page(self.q), self.head);
    }
}

fn status(d: &Dev, q: u32) -> u32 {
    d.reg32(queue_reg(q, queue::STATUS))
}

fn control(d: &mut Dev, q: u32, c: u32) {
    d.set32(queue_reg(q, queue::CONTROL), c);
    d.doorbell();
}

/// The state of queue `q` as published.
fn published(d: &Dev, q: u32) -> (u32, u32, u64, u32) {
    (
        status(d, q),
        d.reg32(queue_reg(q, queue::TAIL)),
        d.reg64(queue_reg(q, queue::PROGRESS)),
        d.reg32(queue_reg(q, queue::EVENTS)),
    )
}

/// Runs the queues until none has work it can do now; the outcomes merged.
fn settle(d: &mut Dev) -> QueueOutcome {
    let mut all = QueueOutcome::default();
    for _ in 0..100_000 {
        let out = d.eng.run_queues(&mut d.mem);
        all.irq |= out.irq;
        all.completed += out.completed;
        all.active = out.active;
        all.errors.extend(out.errors);
        if !out.busy {
            return all;
        }
    }
    panic!("the queues never settled: {:?}", d.eng);
}

fn write_value(dst: u64, value: u64, irq: bool) -> Command {
    Command {
        seqno: 0x77,
        irq,
        op: Op::WriteValue { dst, value },
    }
}

fn wait_value(va: u64, value: u64, compare: Compare) -> Command {
    Command {
        seqno: 0x33,
        irq: false,
        op: Op::WaitValue {
            va,
            value,
            mask: u64::MAX,
            compare,
        },
    }
}

fn u64_at(d: &Dev, off: u64) -> u64 {
    let b = &d.data(d.eng.dev)[off as usize..][..8];
    u64::from_le_bytes(b.try_into().unwrap())
}

/// Rings at the start of the data area, data from 1 MiB on.
const RING1: u64 = W4K;
const RING2: u64 = W4K + 0x1_0000;
const RING3: u64 = W4K + 0x2_0000;
const AT: u64 = MIB;

#[test]
fn a_queue_runs_its_ring_from_its_doorbell_page() {
    let mut d = Dev::new("switch3+rp1", 0);
    let mut u = Uq::enable(&mut d, 3, RING1, 16);
    // Nothing happens before the head moves.
    assert_eq!(settle(&mut d).completed, 0);
    u.submit(
        &mut d,
        &[
            fill(W4K + AT, 0x3000, rep(0xab)),
            copy(W4K + AT, W2M + AT + 0x10_0000, 0x3000),
            write_value(W4K + AT + 0x8000, 0x1122_3344_5566_7788, true),
        ],
    );
    let out = settle(&mut d);
    assert_eq!((out.completed, out.irq, out.errors.len()), (3, true, 0));
    let dev = d.eng.dev;
    let data = d.data(dev);
    assert!(data[(AT + 0x10_0000) as usize..][..0x3000]
        .iter()
        .all(|&b| b == 0xab));
    assert_eq!(u64_at(&d, AT + 0x8000), 0x1122_3344_5566_7788);
    // One event, for the IRQ; tail and status published; the ring untouched.
    assert_eq!(published(&d, 3), (queue::STATUS_RUNNING, 3, 0, 1));
    assert_eq!(d.reg32(ctrl::RING_TAIL), 0);
    assert_eq!(d.reg64(ctrl::CNT_COMMANDS), 3);
    // Commands complete in order across a wrap of the ring.
    for i in 0..40u64 {
        u.submit(&mut d, &[write_value(W4K + AT + 0x9000, i, false)]);
        if i % 7 == 0 {
            settle(&mut d);
            assert_eq!(u64_at(&d, AT + 0x9000), i);
        }
    }
    settle(&mut d);
    assert_eq!(u64_at(&d, AT + 0x9000), 39);
    assert_eq!(published(&d, 3).1, 43);
}

#[test]
fn write_value_is_one_store_and_drops_on_null() {
    let mut d = Dev::new("switch3+rp1", 1);
    let mut u = Uq::enable(&mut d, 1, RING1, 4);
    d.map
        .map(
            &mut d.mem,
            0x50_0000_0000,
            Aperture::Null,
            pte::PAGE_4K,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
    let before = d.eng.counters();
    u.submit(
        &mut d,
        &[
            write_value(0x50_0000_0008, 5, false),
            write_value(WSYS + 0x1000, u64::MAX, false),
        ],
    );
    assert_eq!(settle(&mut d).completed, 2);
    let after = d.eng.counters();
    // The NULL page takes nothing and charges nothing; system memory is charged 8 bytes.
    assert_eq!(after.sysmem_bytes - before.sysmem_bytes, 8);
    assert_eq!(after.local_bytes, before.local_bytes);
    assert_eq!(d.mem.system[0x1000..0x1008], [0xff; 8]);
}

#[test]
fn wait_value_blocks_its_queue_only() {
    let mut d = Dev::new("switch3+rp1-zen", 2);
    let flag = W4K + AT;
    let mut a = Uq::enable(&mut d, 1, RING1, 16);
    let mut b = Uq::enable(&mut d, 2, RING2, 16);
    a.submit(
        &mut d,
        &[
            wait_value(flag, 5, Compare::Gte),
            fill(W4K + AT + 0x1000, 8, rep(0x11)),
        ],
    );
    b.submit(&mut d, &[fill(W4K + AT + 0x2000, 8, rep(0x22))]);
    let out = settle(&mut d);
    assert_eq!((out.completed, out.active), (1, true));
    assert!(d.eng.queue_state(1).unwrap().blocked);
    assert_eq!(published(&d, 1), (queue::STATUS_RUNNING, 0, 0, 0));
    // Another queue's memory fence below the value does not release it; one at it does.
    b.submit(&mut d, &[write_value(flag, 4, false)]);
    settle(&mut d);
    assert_eq!(published(&d, 1).1, 0);
    b.submit(&mut d, &[write_value(flag, 5, false)]);
    settle(&mut d);
    assert_eq!(published(&d, 1).1, 2);
    let dev = d.eng.dev;
    assert_eq!(d.data(dev)[(AT + 0x1000) as usize], 0x11);
    // A CPU write releases a wait too, when the device looks again.
    a.submit(&mut d, &[wait_value(flag, 9, Compare::Eq)]);
    settle(&mut d);
    assert_eq!(published(&d, 1).1, 2);
    d.data_mut(dev)[AT as usize..][..8].copy_from_slice(&9u64.to_le_bytes());
    settle(&mut d);
    assert_eq!(published(&d, 1).1, 3);
    assert!(!d.eng.queue_state(1).unwrap().blocked);
    // The ring never waited.
    assert_eq!(d.run(&[fence(1, true)]).completed, 1);
}

/// Runs the queues with `Q_CONTROL` of `q` set to `control` after `after` pieces, until they
/// have nothing to do now or that many pieces were moved; the outcomes merged.
fn run_interrupted(d: &mut Dev, q: u32, control: u32, after: u32) -> QueueOutcome {
    let bar = d.bar();
    let pieces = std::cell::Cell::new(0);
    let mut mem = BeforePiece {
        inner: &mut d.mem,
        // Written as piece `after` starts: the queue stops before the next one.
        before: |m: &mut Buffers| {
            pieces.set(pieces.get() + 1);
            if pieces.get() == after {
                m.write_u32(bar, queue_reg(q, queue::CONTROL), control)?;
            }
            Ok(())
        },
    };
    let mut all = QueueOutcome::default();
    loop {
        let out = d.eng.run_queues(&mut mem);
        all.irq |= out.irq;
        all.completed += out.completed;
        all.errors.extend(out.errors);
        if !out.busy || pieces.get() >= after {
            return all;
        }
    }
}

#[test]
fn a_preempted_copy_continues_where_it_stopped_after_its_source_moved() {
    let mut d = Dev::new("switch3+rp1", 0);
    let dev = d.eng.dev;
    let (src, dst, len) = (AT, AT + 0x20_0000, 0x10_0000u64);
    let mut rng = Rng(7);
    let mut want = vec![0; len as usize];
    rng.fill(&mut want);
    d.data_mut(dev)[src as usize..][..len as usize].copy_from_slice(&want);
    let mut u = Uq::enable(&mut d, 5, RING1, 8);
    u.submit(
        &mut d,
        &[
            copy(W4K + src, W4K + dst, len),
            write_value(W4K + AT + 0x40_0000, 1, true),
        ],
    );
    let bytes_before = d.eng.counters().local_bytes;
    // Preempted after 100 of its 256 pieces: 100 pieces done, state saved, one event.
    let preempt = queue::CONTROL_ENABLE | queue::CONTROL_PREEMPT;
    let out = run_interrupted(&mut d, 5, preempt, 100);
    assert!(out.irq);
    assert_eq!(
        published(&d, 5),
        (queue::STATUS_PREEMPTED, 0, 100 * 4096, 1)
    );
    // Preempted, it does nothing, however often it is asked.
    assert_eq!(settle(&mut d).completed, 0);
    assert_eq!(d.eng.counters().local_bytes - bytes_before, 100 * 4096);
    // Move the source: copy it elsewhere, point its pages there, scribble on the old place.
    let moved = AT + 0x60_0000;
    d.data_mut(dev)
        .copy_within(src as usize..(src + len) as usize, moved as usize);
    d.map
        .map(
            &mut d.mem,
            W4K + src,
            Aperture::Vram(DATA + moved),
            len,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
    d.data_mut(dev)[src as usize..][..len as usize].fill(0xee);
    // Resume: the copy ends from the new place, each byte moved once, then the fence.
    control(&mut d, 5, queue::CONTROL_ENABLE);
    let out = settle(&mut d);
    assert_eq!(out.completed, 2);
    assert!(d.data(dev)[dst as usize..][..len as usize] == want[..]);
    assert_eq!(d.eng.counters().local_bytes - bytes_before, len + 8);
    assert_eq!(u64_at(&d, AT + 0x40_0000), 1);
    assert_eq!(published(&d, 5), (queue::STATUS_RUNNING, 2, 0, 2));
}

#[test]
fn disable_saves_the_state_and_enable_continues_it() {
    let mut d = Dev::new("switch3+rp1", 3);
    let dev = d.eng.dev;
    let mut u = Uq::enable(&mut d, 15, RING3, 4);
    u.submit(&mut d, &[fill(W4K + AT, 0x8_0000, rep(0x5a))]);
    let out = run_interrupted(&mut d, 15, 0, 10);
    assert!(out.irq);
    assert_eq!(published(&d, 15), (queue::STATUS_IDLE, 0, 10 * 4096, 1));
    assert_eq!(d.data(dev)[(AT + 10 * 4096) as usize], 0);
    // Idle, the saved state is the driver's: enabling with it as it is continues.
    d.set32(queue_reg(15, queue::CONTROL), queue::CONTROL_ENABLE);
    d.doorbell();
    settle(&mut d);
    assert!(d.data(dev)[AT as usize..][..0x8_0000]
        .iter()
        .all(|&b| b == 0x5a));
    assert_eq!(published(&d, 15), (queue::STATUS_RUNNING, 1, 0, 1));
    // A queue waiting is disabled at once, its wait at the tail.
    u.submit(&mut d, &[wait_value(W4K + AT + 0x10_0000, 1, Compare::Eq)]);
    settle(&mut d);
    control(&mut d, 15, 0);
    assert_eq!(published(&d, 15), (queue::STATUS_IDLE, 1, 0, 2));
    // Enabled with PREEMPT set, it starts preempted.
    control(&mut d, 15, queue::CONTROL_ENABLE | queue::CONTROL_PREEMPT);
    assert_eq!(published(&d, 15), (queue::STATUS_PREEMPTED, 1, 0, 3));
}

#[test]
fn a_queue_that_ignores_preemption_runs_on_and_still_disables() {
    let mut d = Dev::new("switch3+rp1", 0);
    let dev = d.eng.dev;
    d.set32(ctrl::FAULTS, ctrl::FAULT_IGNORE_PREEMPT);
    let mut u = Uq::enable(&mut d, 2, RING1, 4);
    u.submit(&mut d, &[fill(W4K + AT, 0x4_0000, rep(1))]);
    let preempt = queue::CONTROL_ENABLE | queue::CONTROL_PREEMPT;
    run_interrupted(&mut d, 2, preempt, 3);
    settle(&mut d);
    assert_eq!(published(&d, 2), (queue::STATUS_RUNNING, 1, 0, 0));
    u.submit(&mut d, &[fill(W4K + AT, 0x4_0000, rep(2))]);
    run_interrupted(&mut d, 2, 0, 3);
    assert_eq!(published(&d, 2), (queue::STATUS_IDLE, 1, 3 * 4096, 1));
    assert_eq!(d.data(dev)[AT as usize + 3 * 4096], 1);
}

#[test]
fn a_queue_error_stops_that_queue_only() {
    let mut d = Dev::new("switch3+rp1", 1);
    let mut good = Uq::enable(&mut d, 1, RING1, 8);
    let mut bad = Uq::enable(&mut d, 2, RING2, 8);
    let unmapped = 0x7000_0000_0000u64;
    let cases: [(Command, Cause, u64); 4] = [
        (fill(unmapped, 8, 0), Cause::Translation, unmapped),
        (fence(9, false), Cause::Malformed, 0),
        (
            Command {
                seqno: 4,
                irq: false,
                op: Op::WriteValue {
                    dst: 0x10,
                    value: 1,
                },
            },
            Cause::Translation,
            0x10,
        ),
        (
            wait_value(unmapped + 8, 0, Compare::Gte),
            Cause::Translation,
            unmapped + 8,
        ),
    ];
    for (i, (cmd, cause, va)) in cases.into_iter().enumerate() {
        let errors = d.reg64(ctrl::CNT_ERRORS);
        bad.submit(&mut d, &[cmd, fill(W4K + AT, 8, rep(3))]);
        good.submit(&mut d, &[write_value(W4K + AT + 0x100, i as u64, false)]);
        let out = settle(&mut d);
        assert_eq!(out.errors.len(), 1, "{cmd:?}");
        let (q, e) = &out.errors[0];
        assert_eq!(
            (*q, e.cause, e.va, e.opcode),
            (2, cause, va, cmd.op.opcode()),
            "{e}"
        );
        assert_eq!(d.reg32(queue_reg(2, queue::ERR_CAUSE)), cause.code());
        assert_eq!(d.reg64(queue_reg(2, queue::ERR_VA)), va);
        assert_eq!(d.reg32(queue_reg(2, queue::ERR_OPCODE)), cmd.op.opcode());
        let tail = (2 * i) as u32;
        assert_eq!(published(&d, 2).0, queue::STATUS_ERROR);
        assert_eq!(published(&d, 2).1, tail);
        assert_eq!(d.reg64(ctrl::CNT_ERRORS), errors + 1);
        // The device, its ring and the other queue go on.
        assert_eq!(d.reg32(ctrl::STATUS), ctrl::STATUS_READY);
        assert_eq!(d.reg32(ctrl::ERR_CAUSE), 0);
        assert_eq!(u64_at(&d, AT + 0x100), i as u64);
        // Disabled, it is idle with the error kept; enabled past the failing command, it
        // runs the next one and the record is cleared.
        control(&mut d, 2, 0);
        assert_eq!(status(&d, 2), queue::STATUS_IDLE);
        assert_eq!(d.reg32(queue_reg(2, queue::ERR_CAUSE)), cause.code());
        d.set32(queue_reg(2, queue::TAIL), tail + 1);
        control(&mut d, 2, queue::CONTROL_ENABLE);
        assert!(settle(&mut d).errors.is_empty());
        assert_eq!(published(&d, 2).0, queue::STATUS_RUNNING);
        assert_eq!(published(&d, 2).1, tail + 2);
        assert_eq!(d.reg32(queue_reg(2, queue::ERR_CAUSE)), 0);
    }
    // The ring refuses WAIT_VALUE.
    d.expect_error(wait_value(W4K, 0, Compare::Gte), Cause::Malformed, 0);
}

#[test]
fn ring_state_errors_of_a_queue() {
    let mut d = Dev::new("switch3+rp1", 0);
    // A geometry that is not valid fails at enable.
    d.set64(queue_reg(4, queue::RING_VA), RING1 + 32);
    d.set64(queue_reg(4, queue::RING_SIZE), 0x1000);
    control(&mut d, 4, queue::CONTROL_ENABLE);
    assert_eq!(status(&d, 4), queue::STATUS_ERROR);
    assert_eq!(
        d.reg32(queue_reg(4, queue::ERR_CAUSE)),
        Cause::RingState.code()
    );
    control(&mut d, 4, 0);
    // A head more than the ring's size ahead fails when the device looks at it.
    let mut u = Uq::enable(&mut d, 4, RING1, 4);
    u.head = 5;
    u.submit(&mut d, &[]);
    let out = settle(&mut d);
    assert_eq!(out.errors[0].1.cause, Cause::RingState);
    // A ring in unmapped memory: a translation fault at the slot.
    control(&mut d, 4, 0);
    Uq::enable(&mut d, 4, 0x6000_0000_0000, 4);
    d.set32(doorbell_page(4), 1);
    let out = settle(&mut d);
    assert_eq!(
        (out.errors[0].1.cause, out.errors[0].1.va),
        (Cause::Translation, 0x6000_0000_0000)
    );
}

#[test]
fn the_ring_goes_first_and_a_reset_stops_every_queue() {
    let mut d = Dev::new("switch3+rp1", 2);
    let mut a = Uq::enable(&mut d, 1, RING1, 8);
    let mut b = Uq::enable(&mut d, 9, RING2, 8);
    a.submit(&mut d, &[fill(W4K + AT, 0x1000, 1)]);
    b.submit(&mut d, &[wait_value(W4K + AT + 0x2000, 1, Compare::Eq)]);
    // With the ring's head moved, the queues wait for it.
    d.push_slot(&fence(5, false).encode());
    d.set32(ctrl::RING_HEAD, d.head);
    let out = d.eng.run_queues(&mut d.mem);
    assert_eq!((out.completed, out.busy), (0, true));
    d.doorbell();
    assert_eq!(settle(&mut d).completed, 1);
    let events = [1, 9].map(|q| published(&d, q).3);
    d.reset();
    for (q, e) in [1, 9].into_iter().zip(events) {
        assert_eq!(
            published(&d, q),
            (queue::STATUS_IDLE, if q == 1 { 1 } else { 0 }, 0, e + 1)
        );
        assert_eq!(d.reg32(queue_reg(q, queue::CONTROL)), 0);
    }
    assert_eq!(settle(&mut d), QueueOutcome::default());
}

#[test]
fn a_device_without_queues_ignores_their_registers() {
    let eng = Engine::new(topology("switch3+rp1"), 0)
        .unwrap()
        .with_caps(ctrl::CAP_ALL & !ctrl::CAP_QUEUES);
    let mut d = Dev::with(eng);
    assert_eq!(
        (d.reg32(ctrl::QUEUES), d.reg64(ctrl::DOORBELL_OFFSET)),
        (0, 0)
    );
    d.set64(queue_reg(1, queue::RING_SIZE), 0x1000);
    control(&mut d, 1, queue::CONTROL_ENABLE);
    assert_eq!(status(&d, 1), 0);
    assert_eq!(d.eng.run_queues(&mut d.mem), QueueOutcome::default());
    d.expect_error(write_value(W4K, 1, false), Cause::Malformed, 0);
}

/// One random command of a queue for the comparison below: only COPY, FILL and WRITE_VALUE
/// in a region of its own, so that queues do not depend on each other.
fn random_command(rng: &mut Rng, region: u64) -> Command {
    let at = |rng: &mut Rng, len: u64| W4K + region + rng.below(0x8_0000 - len);
    match rng.below(3) {
        // From the lower half of the region, through 2 MiB pages, to the upper half.
        0 => {
            let len = 1 + rng.below(0x2_0000);
            let src = W2M + region + rng.below(0x4_0000 - len);
            let dst = W4K + region + 0x4_0000 + rng.below(0x4_0000 - len);
            copy(src, dst, len)
        }
        1 => {
            let len = 1 + rng.below(0x2_0000);
            fill(at(rng, len), len, rng.next())
        }
        _ => write_value(at(rng, 8) & !7, rng.next(), rng.below(2) == 0),
    }
}

#[test]
fn random_preemptions_change_nothing_but_timing() {
    for seed in 0..6 {
        let mut rng = Rng(seed);
        let queues = [(1, RING1), (7, RING2), (12, RING3)];
        let plans: Vec<Vec<Command>> = (0..3)
            .map(|i| {
                (0..80)
                    .map(|_| random_command(&mut rng, 0x10_0000 * (2 + i)))
                    .collect()
            })
            .collect();
        let mut start = vec![0; (DATA_LEN / 2) as usize];
        rng.fill(&mut start);
        let run = |preempt: bool| {
            let mut d = Dev::new("switch3+rp1", 1);
            let dev = d.eng.dev;
            d.data_mut(dev)[..start.len()].copy_from_slice(&start);
            let mut us: Vec<Uq> = queues
                .iter()
                .map(|&(q, va)| Uq::enable(&mut d, q, va, 128))
                .collect();
            let mut rng = Rng(seed ^ 0xabc);
            for (u, plan) in us.iter_mut().zip(&plans) {
                u.submit(&mut d, plan);
            }
            let mut stops = 0;
            for _ in 0..10_000 {
                let pick = rng.below(3) as usize;
                let q = queues[pick].0;
                if preempt && rng.below(4) != 0 {
                    let how =
                        [queue::CONTROL_ENABLE | queue::CONTROL_PREEMPT, 0][rng.below(2) as usize];
                    run_interrupted(&mut d, q, how, 1 + rng.below(10) as u32);
                    let (status, _, progress, _) = published(&d, q);
                    if status != queue::STATUS_RUNNING && progress > 0 {
                        stops += 1;
                    }
                    control(&mut d, q, queue::CONTROL_ENABLE);
                } else if !d.eng.run_queues(&mut d.mem).busy {
                    break;
                }
            }
            settle(&mut d);
            for &(q, _) in &queues {
                assert_eq!(published(&d, q).1, 80, "seed {seed}, queue {q}");
            }
            (d.data(dev).to_vec(), stops, d.eng.counters())
        };
        let (straight, _, c0) = run(false);
        let (preempted, stops, c1) = run(true);
        // Stops inside a command, not only between commands.
        assert!(
            stops >= 10,
            "seed {seed}: only {stops} stops inside a command"
        );
        assert!(straight == preempted, "seed {seed}: the data differ");
        // Each byte moved once, however often its command stopped.
        assert_eq!(c0.local_bytes, c1.local_bytes, "seed {seed}");
    }
}

#[test]
fn a_queue_state_is_visible_to_tests() {
    let mut d = Dev::new("switch3+rp1", 0);
    Uq::enable(&mut d, 6, RING1, 2);
    assert_eq!(
        d.eng.queue_state(6),
        Some(QueueState {
            status: queue::STATUS_RUNNING,
            tail: 0,
            progress: 0,
            events: 0,
            error: None,
            blocked: false,
        })
    );
    assert_eq!(d.eng.queue_state(0), None);
    assert_eq!(d.eng.queue_state(16), None);
}
