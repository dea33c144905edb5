// SPDX-License-Identifier: GPL-2.0

//! User queues (`DRM_IOCTL_CONFLUX_USERQ_CREATE`) and memory fences
//! (`DRM_IOCTL_CONFLUX_WAIT_USER_FENCE`): a process writes commands to a ring in its
//! long-running VM through its own mapping and rings the queue's doorbell page, without system
//! calls, and waits for the values the device writes. Covered: the refusals of both calls; a
//! long chain of jobs, more than the ring holds, with the producer held back by its memory
//! fences; a queue that waits for a value the CPU writes; a queue that keeps running across a
//! reset of the device for another file's failed job; bogus heads and slots that fail their
//! queue only; the limits per file and per device; a wait that a signal interrupts; destroy.
//! Preemption: a long chain of jobs on buffers larger than VRAM that another file evicts again
//! and again ([`test_preemption`]), an imported buffer that its exporter evicts
//! ([`test_import_preemption`]), a buffer exported to a device that cannot reach VRAM, which
//! moves it to system memory ([`test_export_preemption`]), and a queue that ignores a
//! preemption and is killed ([`test_kill`]).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{fence, AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use conflux::{map_op, uapi, Device, Error, Mapping, UserQueue};
use conflux_device::{
    regs::ctrl,
    ring::{Command, Compare, Op},
};

use crate::{
    common::{io_err, KIB4, MIB, VA},
    shared_vm::alarms,
    Tally,
};

/// Where these tests bind.
const BASE: u64 = 52 * VA;
/// The ring of the main queue: 64 slots.
const RING_VA: u64 = BASE;
const RING_SIZE: u64 = 64 * 64;
/// The memory fences, one u64 per queue, in system memory.
const FENCES_VA: u64 = BASE + MIB;
/// The buffers the jobs fill and copy.
const DATA_VA: u64 = BASE + 2 * MIB;
/// Each buffer's size.
const DATA_LEN: u64 = 64 * KIB4;
/// The most jobs of three commands the 64-slot ring holds at once.
const IN_FLIGHT: u64 = 64 / 3;
/// Ten seconds, in nanoseconds: the longest a test waits for a fence the device writes.
const LONG: i64 = 10_000_000_000;

/// A user queue of the tests: its ring, written through a mapping, and its doorbell page.
struct Queue {
    q: UserQueue,
    ring: Mapping,
    slots: u32,
    head: u32,
    doorbell: Mapping,
}

impl Queue {
    /// Creates a queue whose ring is the buffer mapped at `ring_va`, mapped in `ring`.
    fn new(f: &Device, ring: Mapping, ring_va: u64, ring_size: u64) -> Result<Self, Error> {
        let q = f.userq_create(ring_va, ring_size)?;
        let doorbell = f.map(q.doorbell)?;
        Ok(Self {
            q,
            ring,
            slots: (ring_size / 64) as u32,
            head: 0,
            doorbell,
        })
    }

    /// Writes `ops` to the ring, the last with `IRQ`, and publishes the new head in the
    /// doorbell page.
    fn push(&mut self, ops: &[Op]) {
        for (i, op) in ops.iter().enumerate() {
            let slot = Command {
                seqno: u64::from(self.head),
                irq: i + 1 == ops.len(),
                op: *op,
            }
            .encode();
            let at = (self.head % self.slots) as usize * slot.len();
            self.ring.write(at, &slot);
            self.head = self.head.wrapping_add(1);
        }
        self.ring_doorbell(self.head);
    }

    /// Writes `head` to the doorbell page, after every slot written before.
    fn ring_doorbell(&self, head: u32) {
        fence(Ordering::SeqCst);
        // SAFETY: The doorbell mapping is 4 KiB, mapped while `self` lives; its first u32 is
        // the queue's head.
        unsafe { std::ptr::write_volatile(self.doorbell.as_ptr().cast::<u32>(), head) };
        fence(Ordering::SeqCst);
    }
}

/// The address of fence `i` in the mapping of the fences.
fn fence_ptr(fences: &Mapping, i: usize) -> *const u64 {
    // SAFETY: The fences' buffer is 4 KiB: 512 u64s.
    unsafe { fences.as_ptr().cast::<u64>().add(i) }
}

/// Fence `i`, as the CPU reads it.
fn fence_value(fences: &Mapping, i: usize) -> u64 {
    // SAFETY: As in `fence_ptr`; the device writes the u64 in one access.
    unsafe { std::ptr::read_volatile(fence_ptr(fences, i)) }
}

/// A buffer of `len` bytes in `placement` bound at `va`, and its mapping.
fn mapped_bo(f: &Device, va: u64, len: u64, placement: u32) -> Result<(u32, Mapping), Error> {
    let bo = f.bo_create_in(len, placement)?.into_handle();
    f.vm_bind(&[map_op(bo, 0, va, len, false)])?;
    let map = f.map(bo)?;
    Ok((bo, map))
}

/// User queues and memory fences on the device at `path`.
pub(crate) fn test_user_queues(t: &mut Tally, path: &Path) -> Result<(), Error> {
    let name = path.display().to_string();
    let info = Device::open(path)?.info()?;
    if info.caps & uapi::DRM_CONFLUX_CAP_QUEUES == 0 {
        t.check(
            &format!("{name}: the device has user queues (DRM_CONFLUX_CAP_QUEUES)"),
            false,
            format!("capabilities {:#x}", info.caps),
        );
        return Ok(());
    }
    test_create_refusals(t, path, &name)?;
    let f = Device::open(path)?;
    f.vm_create(true)?;
    let (ring_bo, ring) = mapped_bo(&f, RING_VA, 16 * KIB4, uapi::DRM_CONFLUX_BO_VRAM)?;
    let (_, fences) = mapped_bo(&f, FENCES_VA, KIB4, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let src = DATA_VA;
    let dst = DATA_VA + DATA_LEN;
    let (data_bo, _) = mapped_bo(&f, DATA_VA, 2 * DATA_LEN, uapi::DRM_CONFLUX_BO_VRAM)?;
    let mut main = Queue::new(&f, ring, RING_VA, RING_SIZE)?;
    t.check(
        &format!("{name}: USERQ_CREATE on a long-running VM"),
        main.q.id == 1 && main.q.doorbell != 0,
        format!("queue {}, doorbell handle {}", main.q.id, main.q.doorbell),
    );
    test_doorbell_object(t, &f, &main, &name);
    test_chain(t, &f, &mut main, &fences, src, dst, data_bo, &name)?;
    test_wait_refusals(t, &f, &main, &fences, &name);
    test_wait_value(t, &f, &fences, ring_bo, &name)?;
    test_abuse(t, &f, &mut main, &fences, ring_bo, &name)?;
    test_reset(t, path, &f, &mut main, &fences, &name)?;
    test_limits(t, path, &f, &name)?;
    let other = Device::open(path)?;
    t.errno(
        &format!("{name}: VM_JOIN of a file with user queues"),
        f.vm_join(&other),
        libc::EBUSY,
    );
    let id = main.q.id;
    let destroyed = f.userq_destroy(id);
    t.check(
        &format!("{name}: USERQ_DESTROY"),
        destroyed.is_ok(),
        format!("{destroyed:?}"),
    );
    t.errno(
        &format!("{name}: USERQ_DESTROY of a destroyed queue"),
        f.userq_destroy(id),
        libc::ENOENT,
    );
    t.errno(
        &format!("{name}: WAIT_USER_FENCE on a destroyed queue"),
        f.wait_user_fence(id, fence_ptr(&fences, 0), u64::MAX, 0),
        libc::ENOENT,
    );
    Ok(())
}

/// The refusals of USERQ_CREATE.
fn test_create_refusals(t: &mut Tally, path: &Path, name: &str) -> Result<(), Error> {
    let plain = Device::open(path)?;
    t.errno(
        &format!("{name}: USERQ_CREATE on a VM that is not long-running"),
        plain.userq_create(RING_VA, RING_SIZE),
        libc::EINVAL,
    );
    let f = Device::open(path)?;
    f.vm_create(true)?;
    let args = |ring_va, ring_size| uapi::drm_conflux_userq_create {
        ring_va,
        ring_size,
        ..Default::default()
    };
    let cases = [
        (
            "unknown flags",
            uapi::drm_conflux_userq_create {
                flags: 1,
                ..args(RING_VA, RING_SIZE)
            },
            libc::EINVAL,
        ),
        (
            "a vm_id",
            uapi::drm_conflux_userq_create {
                vm_id: 1,
                ..args(RING_VA, RING_SIZE)
            },
            libc::ENOENT,
        ),
        (
            "a queue_id set",
            uapi::drm_conflux_userq_create {
                queue_id: 1,
                ..args(RING_VA, RING_SIZE)
            },
            libc::EINVAL,
        ),
        ("a ring of 32 bytes", args(RING_VA, 32), libc::EINVAL),
        ("a ring of 96 bytes", args(RING_VA, 96), libc::EINVAL),
        ("a ring of 32 MiB", args(RING_VA, 32 * MIB), libc::EINVAL),
        (
            "a ring at a VA not a multiple of 64",
            args(RING_VA + 8, RING_SIZE),
            libc::EINVAL,
        ),
        (
            "a ring below the bindable range",
            args(0, RING_SIZE),
            libc::EINVAL,
        ),
        (
            "a ring beyond the bindable range",
            args((1 << 48) - 64, RING_SIZE),
            libc::EINVAL,
        ),
    ];
    for (what, mut a, errno) in cases {
        t.errno(
            &format!("{name}: USERQ_CREATE with {what}"),
            f.userq_create_raw(&mut a),
            errno,
        );
    }
    Ok(())
}

/// The doorbell object maps the doorbell page and is nothing else.
fn test_doorbell_object(t: &mut Tally, f: &Device, main: &Queue, name: &str) {
    let db = main.q.doorbell;
    t.errno(
        &format!("{name}: VM_BIND of a doorbell object"),
        f.vm_bind(&[map_op(db, 0, BASE + 64 * MIB, KIB4, false)]),
        libc::EINVAL,
    );
    let mut byte = [0u8; 4];
    t.errno(
        &format!("{name}: BO_READ of a doorbell object"),
        f.read(db, 0, &mut byte),
        libc::EINVAL,
    );
    t.errno(
        &format!("{name}: PRIME export of a doorbell object"),
        f.export(db),
        libc::EOPNOTSUPP,
    );
}

/// A chain of jobs, each a FILL of the source with the job's pattern, a COPY to the
/// destination and a WRITE_VALUE of the job's number, many more than the ring holds: the
/// producer waits for the fence of the job `IN_FLIGHT` back before it writes the next.
#[allow(clippy::too_many_arguments)]
fn test_chain(
    t: &mut Tally,
    f: &Device,
    main: &mut Queue,
    fences: &Mapping,
    src: u64,
    dst: u64,
    data_bo: u32,
    name: &str,
) -> Result<(), Error> {
    let jobs = 200u64;
    let fence0 = FENCES_VA;
    let mut waits = 0;
    for job in 1..=jobs {
        if job > IN_FLIGHT {
            f.wait_user_fence(main.q.id, fence_ptr(fences, 0), job - IN_FLIGHT, LONG)?;
            waits += 1;
        }
        let pattern = 0x0101_0101_0101_0101u64.wrapping_mul(job & 0xff);
        main.push(&[
            Op::Fill {
                dst: src,
                len: DATA_LEN,
                pattern,
            },
            Op::Copy {
                src,
                dst,
                len: DATA_LEN,
            },
            Op::WriteValue {
                dst: fence0,
                value: job,
            },
        ]);
    }
    let done = f.wait_user_fence(main.q.id, fence_ptr(fences, 0), jobs, LONG);
    let value = fence_value(fences, 0);
    let mut got = vec![0u8; DATA_LEN as usize];
    f.read(data_bo, DATA_LEN, &mut got)?;
    let want = (jobs & 0xff) as u8;
    t.check(
        &format!(
            "{name}: a user queue runs {jobs} jobs through a ring of {} slots, fed through its \
             doorbell page, the producer held back by its memory fences",
            RING_SIZE / 64
        ),
        done.is_ok() && value == jobs && got.iter().all(|&b| b == want),
        format!(
            "{done:?}, fence {value}, {waits} waits, last copy holds {:#x} (want {want:#x})",
            got[0]
        ),
    );
    Ok(())
}

/// The refusals of WAIT_USER_FENCE, and its timeouts.
fn test_wait_refusals(t: &mut Tally, f: &Device, main: &Queue, fences: &Mapping, name: &str) {
    let base = uapi::drm_conflux_wait_user_fence {
        addr: fence_ptr(fences, 0) as u64,
        value: u64::MAX,
        mask: u64::MAX,
        timeout_ns: 0,
        queue_id: main.q.id,
        op: uapi::DRM_CONFLUX_WAIT_GTE,
        ..Default::default()
    };
    let cases = [
        (
            "unknown flags",
            uapi::drm_conflux_wait_user_fence { flags: 1, ..base },
            libc::EINVAL,
        ),
        (
            "a pad",
            uapi::drm_conflux_wait_user_fence { pad: 1, ..base },
            libc::EINVAL,
        ),
        (
            "an unknown comparison",
            uapi::drm_conflux_wait_user_fence { op: 6, ..base },
            libc::EINVAL,
        ),
        (
            "an address not a multiple of 8",
            uapi::drm_conflux_wait_user_fence {
                addr: base.addr + 4,
                ..base
            },
            libc::EINVAL,
        ),
        (
            "an unknown queue",
            uapi::drm_conflux_wait_user_fence {
                queue_id: 99,
                ..base
            },
            libc::ENOENT,
        ),
        (
            "an address it cannot read",
            uapi::drm_conflux_wait_user_fence { addr: 8, ..base },
            libc::EFAULT,
        ),
        ("a fence not reached and no time", base, libc::ETIME),
        (
            "a fence not reached in 20 ms",
            uapi::drm_conflux_wait_user_fence {
                timeout_ns: 20_000_000,
                ..base
            },
            libc::ETIME,
        ),
    ];
    for (what, mut a, errno) in cases {
        t.errno(
            &format!("{name}: WAIT_USER_FENCE with {what}"),
            f.wait_user_fence_raw(&mut a, true),
            errno,
        );
    }
    let reached = |op, value, mask| {
        f.wait_user_fence_raw(
            &mut uapi::drm_conflux_wait_user_fence {
                op,
                value,
                mask,
                ..base
            },
            true,
        )
    };
    let value = fence_value(fences, 0);
    let held = [
        ("==", reached(uapi::DRM_CONFLUX_WAIT_EQ, value, u64::MAX)),
        (
            "!=",
            reached(uapi::DRM_CONFLUX_WAIT_NEQ, value + 1, u64::MAX),
        ),
        (">", reached(uapi::DRM_CONFLUX_WAIT_GT, value - 1, u64::MAX)),
        ("<", reached(uapi::DRM_CONFLUX_WAIT_LT, value + 1, u64::MAX)),
        ("<=", reached(uapi::DRM_CONFLUX_WAIT_LTE, value, u64::MAX)),
        (
            "masked ==",
            reached(uapi::DRM_CONFLUX_WAIT_EQ, value & 0xf, 0xf),
        ),
    ];
    let failed: Vec<_> = held
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(op, r)| format!("{op}: {r:?}"))
        .collect();
    t.check(
        &format!("{name}: WAIT_USER_FENCE returns at once for each comparison that holds"),
        failed.is_empty(),
        format!("fence {value}; {failed:?}"),
    );
    // A signal interrupts the wait: the call returns EINTR and leaves what is left of the time
    // for its restart.
    alarms(1000);
    let mut a = uapi::drm_conflux_wait_user_fence {
        timeout_ns: 2_000_000_000,
        ..base
    };
    let interrupted = f.wait_user_fence_raw(&mut a, false);
    alarms(0);
    let left = a.timeout_ns;
    t.check(
        &format!("{name}: WAIT_USER_FENCE interrupted by a signal"),
        interrupted.as_ref().err().and_then(Error::errno) == Some(libc::EINTR)
            && left > 0
            && left < 2_000_000_000,
        format!("{interrupted:?}, timeout_ns left {left}"),
    );
}

/// A queue whose WAIT_VALUE waits for a value the CPU writes, then signals.
fn test_wait_value(
    t: &mut Tally,
    f: &Device,
    fences: &Mapping,
    ring_bo: u32,
    name: &str,
) -> Result<(), Error> {
    // The second 4 KiB of the ring buffer is this queue's ring.
    let ring = f.map(ring_bo)?;
    let mut q = Queue::new(f, ring, RING_VA + KIB4, 64 * 16)?;
    // Its slots are written by hand, at the ring's offset in the buffer.
    let flag = FENCES_VA + 8;
    let out = FENCES_VA + 16;
    let mut slots = Vec::new();
    for (i, op) in [
        Op::WaitValue {
            va: flag,
            value: 1,
            mask: u64::MAX,
            compare: Compare::Eq,
        },
        Op::WriteValue {
            dst: out,
            value: 77,
        },
    ]
    .iter()
    .enumerate()
    {
        slots.push(
            Command {
                seqno: i as u64,
                irq: i == 1,
                op: *op,
            }
            .encode(),
        );
    }
    for (i, s) in slots.iter().enumerate() {
        q.ring.write(KIB4 as usize + i * s.len(), s);
    }
    q.head = 2;
    q.ring_doorbell(2);
    let early = f.wait_user_fence(q.q.id, fence_ptr(fences, 2), 77, 50_000_000);
    // SAFETY: The fences' buffer holds u64 1, written by nobody else now.
    unsafe { std::ptr::write_volatile(fences.as_ptr().cast::<u64>().add(1), 1) };
    fence(Ordering::SeqCst);
    let late = f.wait_user_fence(q.q.id, fence_ptr(fences, 2), 77, LONG);
    t.check(
        &format!(
            "{name}: a user queue's WAIT_VALUE holds it until the CPU writes the value, then \
             its memory fence wakes WAIT_USER_FENCE"
        ),
        early.as_ref().err().and_then(Error::errno) == Some(libc::ETIME) && late.is_ok(),
        format!("before the write: {early:?}; after: {late:?}"),
    );
    f.userq_destroy(q.q.id)
}

/// A bogus head and a bogus slot each stop their own queue, which WAIT_USER_FENCE reports with
/// EIO, and nothing else.
fn test_abuse(
    t: &mut Tally,
    f: &Device,
    main: &mut Queue,
    fences: &Mapping,
    ring_bo: u32,
    name: &str,
) -> Result<(), Error> {
    let bad_head = Queue::new(f, f.map(ring_bo)?, RING_VA + 2 * KIB4, 64 * 16)?;
    bad_head.ring_doorbell(1000);
    let head_err = f.wait_user_fence(bad_head.q.id, fence_ptr(fences, 3), 1, LONG);
    let bogus = Queue::new(f, f.map(ring_bo)?, RING_VA + 3 * KIB4, 64 * 16)?;
    let mut slot = Command {
        seqno: 0,
        irq: true,
        op: Op::WriteValue {
            dst: FENCES_VA + 24,
            value: 1,
        },
    }
    .encode();
    slot[0..4].copy_from_slice(&0x77u32.to_le_bytes());
    bogus.ring.write(3 * KIB4 as usize, &slot);
    bogus.ring_doorbell(1);
    let slot_err = f.wait_user_fence(bogus.q.id, fence_ptr(fences, 3), 1, LONG);
    let before = fence_value(fences, 0);
    main.push(&[Op::WriteValue {
        dst: FENCES_VA,
        value: before + 1,
    }]);
    let still = f.wait_user_fence(main.q.id, fence_ptr(fences, 0), before + 1, LONG);
    let eio = |r: &Result<(), Error>| r.as_ref().err().and_then(Error::errno) == Some(libc::EIO);
    t.check(
        &format!(
            "{name}: a head beyond the ring and a slot with an unknown opcode each stop their \
             queue (WAIT_USER_FENCE: EIO); another queue runs on"
        ),
        eio(&head_err) && eio(&slot_err) && still.is_ok(),
        format!("bogus head: {head_err:?}; bogus slot: {slot_err:?}; other queue: {still:?}"),
    );
    f.userq_destroy(bad_head.q.id)?;
    f.userq_destroy(bogus.q.id)
}

/// A job of another file fails and the device is reset: the user queue is enabled again and
/// runs on.
fn test_reset(
    t: &mut Tally,
    path: &Path,
    f: &Device,
    main: &mut Queue,
    fences: &Mapping,
    name: &str,
) -> Result<(), Error> {
    let other = Device::open(path)?;
    // Nothing is mapped at the destination: the device faults and is reset.
    let job = other.submit(&[conflux::fill_cmd(BASE, KIB4, 1)], 0, 0)?;
    let failed = other.wait(job, LONG);
    let before = fence_value(fences, 0);
    main.push(&[Op::WriteValue {
        dst: FENCES_VA,
        value: before + 1,
    }]);
    let after = f.wait_user_fence(main.q.id, fence_ptr(fences, 0), before + 1, LONG);
    t.check(
        &format!(
            "{name}: a user queue runs on after a reset of the device for another file's \
             failed job"
        ),
        failed.as_ref().err().and_then(Error::errno) == Some(libc::EIO) && after.is_ok(),
        format!("the other job: {failed:?}; the queue: {after:?}"),
    );
    Ok(())
}

/// The most queues of a file, and of the device.
fn test_limits(t: &mut Tally, path: &Path, f: &Device, name: &str) -> Result<(), Error> {
    // `f` has one queue: three more, then the limit.
    let mut mine = Vec::new();
    for k in 0..3 {
        mine.push(f.userq_create(BASE + 8 * MIB + k * KIB4, 64)?);
    }
    t.errno(
        &format!(
            "{name}: USERQ_CREATE beyond {} queues of a file",
            uapi::DRM_CONFLUX_MAX_USER_QUEUES
        ),
        f.userq_create(BASE + 9 * MIB, 64),
        libc::EMFILE,
    );
    // The device's queues: 15, four of them `f`'s.
    let mut files = Vec::new();
    let mut taken = 4;
    let refused = 'fill: loop {
        let g = Device::open(path)?;
        g.vm_create(true)?;
        for _ in 0..uapi::DRM_CONFLUX_MAX_USER_QUEUES {
            match g.userq_create(BASE, 64) {
                Ok(_) => taken += 1,
                Err(e) => break 'fill Some(e),
            }
        }
        files.push(g);
        if files.len() > 4 {
            break None;
        }
    };
    t.check(
        &format!("{name}: USERQ_CREATE when every queue of the device is taken"),
        refused.as_ref().and_then(Error::errno) == Some(libc::EBUSY) && taken == 15,
        format!("{taken} queues taken, then {refused:?}"),
    );
    drop(files);
    let freed = mine
        .iter()
        .map(|q| f.userq_destroy(q.id))
        .collect::<Result<Vec<_>, _>>();
    let more = Device::open(path)?;
    more.vm_create(true)?;
    let reused = more.userq_create(BASE, 64);
    t.check(
        &format!("{name}: the queues of a closed file and destroyed ones are given out again"),
        freed.is_ok() && reused.is_ok(),
        format!("{freed:?}, then {reused:?}"),
    );
    Ok(())
}

/// Where the preemption tests bind.
const PRE_BASE: u64 = 56 * VA;
/// The buffers of the preemption test: together larger than VRAM.
const PRE_BUFFERS: u64 = 6;
const PRE_BUFFER_LEN: u64 = 24 * MIB;
/// The bytes each job fills and copies.
const PRE_CHUNK: u64 = 16 * KIB4;
/// The regions the jobs take turns on: a hundred in each buffer.
const PRE_REGIONS: u64 = 100 * PRE_BUFFERS;
/// The fewest and most jobs of the chain, which runs until the other file has evicted
/// `PRE_SQUEEZES` times.
const PRE_MIN_JOBS: u64 = 240;
const PRE_MAX_JOBS: u64 = 8_000;
const PRE_SQUEEZES: u64 = 8;

/// Runs a chain of jobs on `q`, each pushed by `job(q, j)` for `j` from 1 and ending with a
/// WRITE_VALUE of `j` to the fence at `fences`, at most `in_flight` at a time, while `press`
/// runs again and again in another thread: at least [`PRE_MIN_JOBS`] jobs, and until `press`
/// has run [`PRE_SQUEEZES`] times (at most [`PRE_MAX_JOBS`]). Returns the number of jobs and
/// of presses.
fn chain_under_pressure(
    f: &Device,
    q: &mut Queue,
    fences: &Mapping,
    in_flight: u64,
    mut job: impl FnMut(&mut Queue, u64),
    press: impl Fn() -> Result<(), Error> + Sync,
) -> Result<(u64, u64), Error> {
    let stop = AtomicBool::new(false);
    let pressed = AtomicU64::new(0);
    let jobs = std::thread::scope(|s| -> Result<u64, Error> {
        let pressure = s.spawn(|| -> Result<(), Error> {
            while !stop.load(Ordering::Relaxed) {
                press()?;
                pressed.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });
        let run = (|| -> Result<u64, Error> {
            let mut j = 0;
            while j < PRE_MIN_JOBS
                || (pressed.load(Ordering::Relaxed) < PRE_SQUEEZES && j < PRE_MAX_JOBS)
            {
                j += 1;
                if j > in_flight {
                    f.wait_user_fence(q.q.id, fence_ptr(fences, 0), j - in_flight, LONG)?;
                }
                job(q, j);
            }
            f.wait_user_fence(q.q.id, fence_ptr(fences, 0), j, LONG)?;
            Ok(j)
        })();
        stop.store(true, Ordering::Relaxed);
        let pressure = pressure.join().unwrap_or(Ok(()));
        let jobs = run?;
        pressure.map(|()| jobs)
    })?;
    Ok((jobs, pressed.load(Ordering::Relaxed)))
}

/// A long chain of user-queue jobs on buffers that add up to more than VRAM while another
/// process (`conflux alloc`) evicts them again and again: each eviction preempts the queue,
/// the buffer moves, the VM maps it again and the queue resumes. Every result is checked, and
/// the jobs' timestamps show that none ran twice or out of order.
pub(crate) fn test_preemption(t: &mut Tally, path: &Path) -> Result<(), Error> {
    let name = path.display().to_string();
    let f = Device::open(path)?;
    f.vm_create(true)?;
    let movable = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let ring_va = PRE_BASE;
    let fences_va = PRE_BASE + MIB;
    let data_va = |i: u64| PRE_BASE + 32 * MIB * (i + 1);
    let (_, ring) = mapped_bo(&f, ring_va, 16 * KIB4, movable)?;
    let (_, fences) = mapped_bo(&f, fences_va, 32 * KIB4, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let mut data = Vec::new();
    for i in 0..PRE_BUFFERS {
        let bo = f.bo_create_in(PRE_BUFFER_LEN, movable)?.into_handle();
        f.vm_bind(&[map_op(bo, 0, data_va(i), PRE_BUFFER_LEN, false)])?;
        data.push(bo);
    }
    let scratch_va = PRE_BASE + 4 * MIB;
    mapped_bo(&f, scratch_va, KIB4, uapi::DRM_CONFLUX_BO_VRAM)?;
    let mut q = Queue::new(&f, ring, ring_va, RING_SIZE)?;
    let before = f.info()?;
    let ts_va = fences_va + 16 * KIB4;
    let pattern = |j: u64| 0x0101_0101_0101_0101u64.wrapping_mul((j % 251) + 1);
    // The jobs take turns on PRE_REGIONS regions, spread over the buffers.
    let region = |j: u64| j % PRE_REGIONS;
    let src = |j: u64| data_va(region(j) % PRE_BUFFERS) + (region(j) / PRE_BUFFERS) * PRE_CHUNK;
    let dst = |j: u64| {
        data_va((region(j) + 1) % PRE_BUFFERS) + 12 * MIB + (region(j) / PRE_BUFFERS) * PRE_CHUNK
    };
    let press = || -> Result<(), Error> {
        // Another process takes a buffer that may only be in VRAM, larger than what is left:
        // the movable buffers make room, the queue's among them.
        let size = (f.info()?.vram_avail + 2 * MIB) & !(2 * MIB - 1);
        let alloc = std::process::Command::new("conflux")
            .arg("--device")
            .arg(path)
            .args(["alloc", &size.to_string()])
            .output()
            .map_err(io_err(&name, "run conflux alloc"))?;
        if !alloc.status.success() {
            let why = String::from_utf8_lossy(&alloc.stderr).into_owned();
            return Err(io_err(&name, "conflux alloc")(std::io::Error::other(why)));
        }
        // Jobs of the queue's file that read each buffer bring them back to VRAM, preempting
        // the queue again, for the next eviction.
        for i in 0..PRE_BUFFERS {
            let copy = conflux::copy_cmd(data_va(i), scratch_va, KIB4);
            let job = f.submit(&[copy], 0, 0)?;
            f.wait(job, LONG)?;
        }
        Ok(())
    };
    let job = |q: &mut Queue, j: u64| {
        q.push(&[
            Op::Fill {
                dst: src(j),
                len: PRE_CHUNK,
                pattern: pattern(j),
            },
            Op::Copy {
                src: src(j),
                dst: dst(j),
                len: PRE_CHUNK,
            },
            Op::Timestamp { dst: ts_va + 8 * j },
            Op::WriteValue {
                dst: fences_va,
                value: j,
            },
        ])
    };
    // Four slots a job: sixteen jobs fill the ring.
    let (jobs, squeezes) = chain_under_pressure(&f, &mut q, &fences, 15, job, press)?;
    let after = f.info()?;
    let mut wrong = Vec::new();
    let mut chunk = vec![0u8; PRE_CHUNK as usize];
    // The last job of each region holds it.
    for j in jobs.saturating_sub(PRE_REGIONS - 1).max(1)..=jobs {
        let d = dst(j);
        let i = ((d - PRE_BASE) / (32 * MIB)) - 1;
        let offset = d - data_va(i);
        f.read(data[i as usize], offset, &mut chunk)?;
        let want = pattern(j).to_le_bytes()[0];
        if chunk.iter().any(|&b| b != want) {
            wrong.push(j);
        }
    }
    let stamps: Vec<u64> = (1..=jobs)
        // SAFETY: The fences' buffer is 128 KiB: the stamps lie in its second half.
        .map(|j| unsafe {
            std::ptr::read_volatile(
                fences
                    .as_ptr()
                    .add((16 * KIB4 + 8 * j) as usize)
                    .cast::<u64>(),
            )
        })
        .collect();
    let ordered = stamps.windows(2).all(|w| w[0] < w[1]) && stamps.first() != Some(&0);
    let preemptions = after.preemptions - before.preemptions;
    let evictions = after.evictions - before.evictions;
    t.check(
        &format!(
            "{name}: {jobs} user-queue jobs on {} MiB of buffers, evicted again and again by \
             another process: every result right, each job once and in order, the queue \
             preempted and resumed",
            PRE_BUFFERS * PRE_BUFFER_LEN / MIB
        ),
        wrong.is_empty()
            && ordered
            && preemptions > 0
            && evictions > 0
            && after.queues_killed == before.queues_killed,
        format!(
            "{} wrong results (first {:?}), timestamps in order: {ordered}, {squeezes} \
             squeezes, {evictions} evictions, {preemptions} preemptions, {} queues killed",
            wrong.len(),
            wrong.first(),
            after.queues_killed - before.queues_killed
        ),
    );
    f.userq_destroy(q.q.id)?;
    Ok(())
}

/// A queue that does not answer a preemption (the device's `FAULT_IGNORE_PREEMPT`) is killed
/// within the job timeout, for the driver loaded with `job_timeout_ms=500`: the call that
/// needed it stopped goes on, its waiters get `ECANCELED`, GET_INFO counts it, and a new queue
/// runs.
pub(crate) fn test_kill(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let f = Device::open(dev.path())?;
    f.vm_create(true)?;
    let ring_va = PRE_BASE;
    let fences_va = PRE_BASE + MIB;
    let (_, ring) = mapped_bo(&f, ring_va, 16 * KIB4, uapi::DRM_CONFLUX_BO_VRAM)?;
    let (_, fences) = mapped_bo(&f, fences_va, KIB4, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let mut q = Queue::new(&f, ring, ring_va, RING_SIZE)?;
    q.push(&[Op::WriteValue {
        dst: fences_va,
        value: 1,
    }]);
    f.wait_user_fence(q.q.id, fence_ptr(&fences, 0), 1, LONG)?;
    let before = f.info()?;
    let sw = crate::faults::Switches::open(dev)?;
    sw.set(ctrl::FAULT_IGNORE_PREEMPT);
    // A bind on the VM stops its queues: this one does not stop, and is killed.
    let extra = f.bo_create(KIB4)?.into_handle();
    let bound = f.vm_bind(&[map_op(extra, 0, PRE_BASE + 4 * MIB, KIB4, false)]);
    let waited = f.wait_user_fence(q.q.id, fence_ptr(&fences, 0), 2, LONG);
    drop(sw);
    let after = f.info()?;
    t.check(
        &format!(
            "{name}: a user queue that ignores a preemption is killed within the job timeout: \
             the bind that stopped it goes on, WAIT_USER_FENCE returns ECANCELED"
        ),
        bound.is_ok()
            && waited.as_ref().err().and_then(Error::errno) == Some(libc::ECANCELED)
            && after.queues_killed == before.queues_killed + 1,
        format!(
            "bind {bound:?}, wait {waited:?}, {} queues killed",
            after.queues_killed - before.queues_killed
        ),
    );
    f.userq_destroy(q.q.id)?;
    let (_, ring) = mapped_bo(&f, PRE_BASE + 8 * MIB, 16 * KIB4, uapi::DRM_CONFLUX_BO_VRAM)?;
    let mut again = Queue::new(&f, ring, PRE_BASE + 8 * MIB, RING_SIZE)?;
    again.push(&[Op::WriteValue {
        dst: fences_va,
        value: 7,
    }]);
    let ran = f.wait_user_fence(again.q.id, fence_ptr(&fences, 0), 7, LONG);
    t.check(
        &format!("{name}: a new user queue runs after one was killed"),
        ran.is_ok(),
        format!("{ran:?}"),
    );
    Ok(())
}

/// Pushes job `j` to `q`: a FILL of `len` bytes at `local` with `pattern`, a COPY of them to
/// `shared`, and a WRITE_VALUE of `j` to the fence at `fence`.
fn fill_copy_signal(
    q: &mut Queue,
    j: u64,
    local: u64,
    shared: u64,
    len: u64,
    pattern: u64,
    fence: u64,
) {
    q.push(&[
        Op::Fill {
            dst: local,
            len,
            pattern,
        },
        Op::Copy {
            src: local,
            dst: shared,
            len,
        },
        Op::WriteValue {
            dst: fence,
            value: j,
        },
    ]);
}

/// A buffer of another device, imported and bound in a long-running VM whose queue writes it
/// job after job, while its exporter evicts it again and again: the exporter's eviction waits
/// for the importer's preemption fence, which stops the queue; the buffer moves, the importer's
/// mapping is invalidated and made again, and the queue resumes. Every result is checked.
pub(crate) fn test_import_preemption(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    let (Some(a), Some(b)) = (paths.first(), paths.get(1)) else {
        return Ok(());
    };
    let name = format!("{} importing from {}", a.display(), b.display());
    let exp = Device::open(b)?;
    let f = Device::open(a)?;
    f.vm_create(true)?;
    let movable = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let len = 4 * MIB;
    let theirs = exp.bo_create_in(len, movable)?;
    let scratch = exp.bo_create(KIB4)?;
    exp.vm_bind(&[
        map_op(theirs.handle, 0, PRE_BASE, len, false),
        map_op(scratch.handle, 0, PRE_BASE + len, KIB4, false),
    ])?;
    let fd = exp.export(theirs.handle)?;
    let imported = f.import(std::os::fd::AsFd::as_fd(&fd.0))?.into_handle();
    let ring_va = PRE_BASE;
    let fences_va = PRE_BASE + MIB;
    let local_va = PRE_BASE + 2 * MIB;
    let shared_va = PRE_BASE + 8 * MIB;
    let (_, ring) = mapped_bo(&f, ring_va, 16 * KIB4, uapi::DRM_CONFLUX_BO_VRAM)?;
    let (_, fences) = mapped_bo(&f, fences_va, KIB4, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    mapped_bo(&f, local_va, len, uapi::DRM_CONFLUX_BO_VRAM)?;
    f.vm_bind(&[map_op(imported, 0, shared_va, len, false)])?;
    let mut q = Queue::new(&f, ring, ring_va, RING_SIZE)?;
    let before = f.info()?;
    let exp_before = exp.info()?;
    let chunk = 32 * KIB4;
    let slots = len / chunk;
    let pattern = |j: u64| 0x0101_0101_0101_0101u64.wrapping_mul((j % 253) + 1);
    let g = Device::open(b)?;
    let press = || -> Result<(), Error> {
        let squeeze = crate::evict::squeeze(&g)?;
        std::thread::sleep(Duration::from_millis(10));
        drop(squeeze);
        // A job of the exporter that reads the buffer brings it back to VRAM.
        let job = exp.submit(&[conflux::copy_cmd(PRE_BASE, PRE_BASE + len, KIB4)], 0, 0)?;
        exp.wait(job, LONG)
    };
    let job = |q: &mut Queue, j: u64| {
        let at = (j % slots) * chunk;
        fill_copy_signal(
            q,
            j,
            local_va + at,
            shared_va + at,
            chunk,
            pattern(j),
            fences_va,
        );
    };
    // Three slots a job: twenty-one jobs fill the ring.
    let (jobs, squeezes) = chain_under_pressure(&f, &mut q, &fences, 15, job, press)?;
    let after = f.info()?;
    let exp_after = exp.info()?;
    let mut wrong = 0;
    let mut got = vec![0u8; chunk as usize];
    for j in (jobs - slots + 1)..=jobs {
        let at = (j % slots) * chunk;
        exp.read(theirs.handle, at, &mut got)?;
        if got.iter().any(|&x| x != pattern(j).to_le_bytes()[0]) {
            wrong += 1;
        }
    }
    let preemptions = after.preemptions - before.preemptions;
    let evictions = exp_after.evictions - exp_before.evictions;
    t.check(
        &format!(
            "{name}: a user queue writes an imported buffer in {jobs} jobs while its exporter \
             evicts it again and again: the queue is preempted and resumed, every result right"
        ),
        wrong == 0
            && preemptions > 0
            && evictions > 0
            && after.queues_killed == before.queues_killed,
        format!(
            "{wrong} wrong chunks, {squeezes} squeezes, {evictions} evictions on the exporter, \
             {preemptions} preemptions, {} queues killed",
            after.queues_killed - before.queues_killed
        ),
    );
    f.userq_destroy(q.q.id)
}

/// A buffer of a long-running VM, written by its user queue, exported to a device that cannot
/// reach VRAM: the importer's map moves it to system memory, which stops the queue with jobs in
/// flight; the VM maps it again and the queue resumes. Every result is checked.
pub(crate) fn test_export_preemption(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    let Some(a) = paths.first() else {
        return Ok(());
    };
    let probe = Device::open(a)?;
    let mut far = None;
    for p in paths.iter().skip(1) {
        let d = Device::open(p)?;
        let reach = crate::common::prime_reach(&probe, &d)?;
        if reach != Ok(uapi::DRM_CONFLUX_PATH_P2P)
            && reach != Ok(uapi::DRM_CONFLUX_PATH_HOST_BRIDGE)
        {
            far = Some(d);
            break;
        }
    }
    let Some(far) = far else {
        // Every device reaches the first one's VRAM: nothing moves for an importer.
        return Ok(());
    };
    let name = format!("{} exporting to {}", a.display(), far.path().display());
    let f = Device::open(a)?;
    f.vm_create(true)?;
    let movable = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let len = 4 * MIB;
    let (ring_va, fences_va, local_va, shared_va) = (
        PRE_BASE,
        PRE_BASE + MIB,
        PRE_BASE + 2 * MIB,
        PRE_BASE + 8 * MIB,
    );
    let (_, ring) = mapped_bo(&f, ring_va, 16 * KIB4, uapi::DRM_CONFLUX_BO_VRAM)?;
    let (_, fences) = mapped_bo(&f, fences_va, KIB4, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    mapped_bo(&f, local_va, len, uapi::DRM_CONFLUX_BO_VRAM)?;
    let (shared, _) = mapped_bo(&f, shared_va, len, movable)?;
    let mut q = Queue::new(&f, ring, ring_va, RING_SIZE)?;
    let before = f.info()?;
    let chunk = 32 * KIB4;
    let slots = len / chunk;
    let pattern = |j: u64| 0x0101_0101_0101_0101u64.wrapping_mul((j % 241) + 1);
    let jobs = 4 * slots;
    let mut imported = None;
    for j in 1..=jobs {
        if j > 15 {
            f.wait_user_fence(q.q.id, fence_ptr(&fences, 0), j - 15, LONG)?;
        }
        let at = (j % slots) * chunk;
        fill_copy_signal(
            &mut q,
            j,
            local_va + at,
            shared_va + at,
            chunk,
            pattern(j),
            fences_va,
        );
        if j == jobs / 2 {
            // With jobs in flight: the importer's bind maps the buffer, which moves.
            let fd = f.export(shared)?;
            let theirs = far.import(std::os::fd::AsFd::as_fd(&fd.0))?.into_handle();
            far.vm_bind(&[map_op(theirs, 0, PRE_BASE, len, true)])?;
            imported = Some(theirs);
        }
    }
    f.wait_user_fence(q.q.id, fence_ptr(&fences, 0), jobs, LONG)?;
    let after = f.info()?;
    let placement = f.bo_info(shared)?.placement;
    let mut wrong = 0;
    let mut got = vec![0u8; chunk as usize];
    for j in (jobs - slots + 1)..=jobs {
        let at = (j % slots) * chunk;
        f.read(shared, at, &mut got)?;
        if got.iter().any(|&x| x != pattern(j).to_le_bytes()[0]) {
            wrong += 1;
        }
    }
    let preemptions = after.preemptions - before.preemptions;
    t.check(
        &format!(
            "{name}: a buffer a user queue writes moves to system memory for an importer that \
             cannot reach VRAM: the queue is preempted with jobs in flight and resumed, every \
             result right"
        ),
        wrong == 0
            && placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && imported.is_some()
            && preemptions > 0
            && after.queues_killed == before.queues_killed,
        format!(
            "{wrong} wrong chunks, placement {}, {preemptions} preemptions, {} queues killed",
            conflux::placement_name(placement),
            after.queues_killed - before.queues_killed
        ),
    );
    f.userq_destroy(q.q.id)
}
