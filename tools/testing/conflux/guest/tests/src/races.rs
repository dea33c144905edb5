// SPDX-License-Identifier: GPL-2.0

//! Races on purpose (`--races SEED`): each a stress test of many rounds in which two or more
//! threads, or a thread and a sysfs write, race on the same objects, at offsets drawn from
//! `SEED`, with the data checked after every round.
//!
//! - [`close_versus_jobs`]: a file is closed while its jobs run;
//! - [`join_versus_bind`]: VM_JOIN and VM_BIND on the same file;
//! - [`bind_versus_move`]: a peer binds and reads a buffer while another device's map moves
//!   it to system memory;
//! - [`reset_versus_submission`]: files submit good jobs while another file's jobs fault, or
//!   the engine stalls, and the device resets under them;
//! - [`unbind_versus_peers`]: peers import, bind and read an exporter's buffer while the
//!   exporter is unbound, which revokes it.
//!
//! Run in a boot of its own with the driver loaded with `job_timeout_ms=500`, on a topology
//! with three devices behind one switch and one that reaches them only through system memory.

use std::{
    os::fd::{AsFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Barrier,
    },
    thread,
    time::{Duration, Instant},
};

use conflux::{copy_cmd, fill_cmd, map_op, sync::sync_file_status, uapi, unmap_op, Device, Error};
use conflux_device::regs::ctrl;

use crate::{
    common::{counters, first_diff, job_errno, pattern, prime_reach, MIB, VA},
    faults::Switches,
    fuzz::Rng,
    unbind::{driver_sysfs, node_of},
    Tally,
};

/// One race: its checks, on the devices at `paths`, with timings drawn from `r`.
type Race = fn(&mut Tally, &[PathBuf], &mut Rng) -> Result<(), Error>;

/// Where the readers of the races copy to.
const DST: u64 = 2 * VA;

/// Every race, on the devices at `paths`.
pub(crate) fn test_races(t: &mut Tally, paths: &[PathBuf], seed: u64) {
    println!("# races: seed {seed}");
    let mut r = Rng::new(seed);
    if paths.len() < 4 {
        t.check("races: four Conflux devices", false, paths.len());
        return;
    }
    let runs: [(&str, Race); 5] = [
        ("close versus jobs", close_versus_jobs),
        ("VM_JOIN versus VM_BIND", join_versus_bind),
        ("bind versus move", bind_versus_move),
        ("reset versus submission", reset_versus_submission),
        ("unbind of an exporter versus peers", unbind_versus_peers),
    ];
    for (what, run) in runs {
        let start = Instant::now();
        if let Err(e) = run(t, paths, &mut r) {
            t.check(&format!("races: {what}"), false, e);
        }
        println!("# races: {what}: {} s", start.elapsed().as_secs());
    }
}

/// Waits up to `limit` for every device at `paths` to have `want` bytes of VRAM available
/// again (jobs of closed files give theirs back shortly after they end); what they have.
fn vram_back(paths: &[PathBuf], want: &[u64], limit: Duration) -> Result<Vec<u64>, Error> {
    let start = Instant::now();
    loop {
        let now = paths
            .iter()
            .map(|p| Device::open(p)?.info().map(|i| i.vram_avail))
            .collect::<Result<Vec<_>, _>>()?;
        if now == want || start.elapsed() > limit {
            return Ok(now);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn avail(paths: &[PathBuf]) -> Result<Vec<u64>, Error> {
    vram_back(paths, &[], Duration::ZERO)
}

/// Waits for sync_file `fd` to signal: its status (1, or a negative errno).
fn fence_status(fd: &OwnedFd) -> i32 {
    let start = Instant::now();
    loop {
        match sync_file_status(fd.as_fd()) {
            Ok(0) if start.elapsed() < Duration::from_secs(60) => {
                thread::sleep(Duration::from_millis(1))
            }
            Ok(s) => return s,
            Err(e) => return -e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// A file closed while its jobs run, at a random point: 48 rounds. Each round's file copies a
/// pattern into a buffer that another file holds through PRIME, in 1 to 4 jobs of 8 to 64
/// copies of 4 MiB; the last job's sync_file, which outlives the file, signals success and the
/// other file reads the pattern. With every file closed, the device's VRAM is back.
fn close_versus_jobs(t: &mut Tally, paths: &[PathBuf], r: &mut Rng) -> Result<(), Error> {
    let name = paths[0].display().to_string();
    let start = avail(&paths[..1])?;
    let keeper = Device::open(&paths[0])?;
    let len = 4 * MIB;
    let data = pattern(len as usize, 61);
    let (mut bad, mut early) = (Vec::new(), 0);
    for round in 0..48 {
        let a = Device::open(&paths[0])?;
        let src = a.bo_create(len)?.into_handle();
        let dst = a.bo_create(len)?.into_handle();
        a.write(src, 0, &data)?;
        a.vm_bind(&[
            map_op(src, 0, VA, len, true),
            map_op(dst, 0, DST, len, false),
        ])?;
        let fd = a.export(dst)?;
        let kept = keeper.import(fd.0.as_fd())?;
        drop(fd);
        let jobs = 1 + r.below(4);
        let mut last = None;
        for _ in 0..jobs {
            let copies = (0..8 + r.below(57))
                .map(|_| copy_cmd(VA, DST, len))
                .collect::<Vec<_>>();
            let mut args = uapi::drm_conflux_submit {
                flags: uapi::DRM_CONFLUX_SUBMIT_OUT_FENCE_FD,
                ..Default::default()
            };
            a.submit_with(&copies, &mut args)?;
            // SAFETY: SUBMIT returned this new descriptor, which nothing else owns.
            last = Some(unsafe { OwnedFd::from_raw_fd(args.out_fence_fd) });
        }
        thread::sleep(Duration::from_micros(r.below(5_000)));
        let Some(last) = last else { continue };
        early += i32::from(sync_file_status(last.as_fd()).is_ok_and(|s| s == 0));
        drop(a);
        let status = fence_status(&last);
        let mut got = vec![0u8; len as usize];
        keeper.read(kept.handle, 0, &mut got)?;
        if status != 1 || got != data {
            bad.push(format!(
                "round {round}: fence {status}, data differs at {:?}",
                first_diff(&got, &data)
            ));
        }
    }
    drop(keeper);
    let end = vram_back(&paths[..1], &start, Duration::from_secs(5))?;
    t.check(
        &format!("{name}: 48 files closed while their jobs run: every job completes its copy"),
        bad.is_empty() && early > 0,
        format!("{early} closed before their last job ended; failures {bad:?}"),
    );
    t.check(
        &format!("{name}: with the files closed, their VRAM is back"),
        end == start,
        format!("{end:?} bytes available, {start:?} at the start"),
    );
    Ok(())
}

/// VM_JOIN and VM_BIND on the same file at once: 100 rounds. One thread maps and unmaps a
/// buffer of the file's device 12 times and leaves it mapped; another has the same file join
/// a fresh file of a second device's VM until it succeeds or the binder is done. A join
/// fails with EBUSY while the buffer is mapped; once joined, every later bind maps it on both
/// members, and the second device's job reads the pattern through the shared address.
fn join_versus_bind(t: &mut Tally, paths: &[PathBuf], r: &mut Rng) -> Result<(), Error> {
    let name = paths[0].display().to_string();
    let len = MIB;
    let data = pattern(len as usize, 73);
    let (mut joined, mut busy, mut bad) = (0, 0u32, Vec::new());
    for round in 0..100 {
        let f = Device::open(&paths[0])?;
        let g = Device::open(&paths[1])?;
        let bo = f.bo_create(len)?.into_handle();
        f.write(bo, 0, &data)?;
        let delay = Duration::from_micros(r.below(30_000));
        let barrier = Barrier::new(2);
        let done = AtomicBool::new(false);
        let busy_here = AtomicU32::new(0);
        let (binds, join) = thread::scope(|s| {
            let binder = s.spawn(|| {
                barrier.wait();
                let mut out = Ok(());
                for _ in 0..12 {
                    out = f
                        .vm_bind(&[map_op(bo, 0, VA, len, true)])
                        .and_then(|()| f.vm_bind(&[unmap_op(VA, len)]));
                    if out.is_err() {
                        break;
                    }
                }
                let out = out.and_then(|()| f.vm_bind(&[map_op(bo, 0, VA, len, true)]));
                done.store(true, Ordering::Release);
                out
            });
            barrier.wait();
            thread::sleep(delay);
            let join = loop {
                let finished = done.load(Ordering::Acquire);
                match f.vm_join(&g) {
                    Err(e) if e.errno() == Some(libc::EBUSY) && !finished => {
                        busy_here.fetch_add(1, Ordering::Relaxed);
                    }
                    other => break other,
                }
            };
            (binder.join(), join)
        });
        let binds = binds.unwrap_or_else(|_| {
            Err(Error {
                device: name.clone(),
                call: "the binder thread".into(),
                error: std::io::Error::other("panicked"),
            })
        });
        busy += busy_here.load(Ordering::Relaxed);
        if let Err(e) = binds {
            bad.push(format!("round {round}: VM_BIND: {e}"));
            continue;
        }
        match join {
            Ok((2, 1)) => {
                joined += 1;
                // The shared VM maps the buffer on both members (the second device's file
                // is member 0); the second device's own buffer, bound from it, too.
                let dst = g.bo_create(len)?.into_handle();
                g.vm_bind(&[map_op(dst, 0, DST, len, false)])?;
                let p = (f.vm_path(0, VA)?, f.vm_path(1, VA)?);
                let job = g.submit(&[copy_cmd(VA, DST, len)], 0, 0)?;
                let err = job_errno(&g, job);
                let mut got = vec![0u8; len as usize];
                g.read(dst, 0, &mut got)?;
                if p.1 != uapi::DRM_CONFLUX_PATH_LOCAL || p.0 == 0 || err.is_some() || got != data {
                    bad.push(format!(
                        "round {round}: joined; paths {p:?}, job {err:?}, data differs at {:?}",
                        first_diff(&got, &data)
                    ));
                }
            }
            Err(e) if e.errno() == Some(libc::EBUSY) => {
                let alone = f.vm_path(1, VA).err().and_then(|e| e.errno());
                if alone != Some(libc::ENOENT) || f.vm_path(0, VA)? == 0 {
                    bad.push(format!("round {round}: EBUSY, yet member 1: {alone:?}"));
                }
            }
            other => bad.push(format!("round {round}: VM_JOIN: {other:?}")),
        }
    }
    t.check(
        &format!(
            "{name}: VM_JOIN racing VM_BIND on one file, 100 rounds: EBUSY while mapped, and \
             after a join every bind maps on both members"
        ),
        bad.is_empty() && joined > 0,
        format!("{joined} joins, {busy} EBUSY; failures {bad:?}"),
    );
    Ok(())
}

/// The devices of `paths[..3]` that reach `paths[0]`'s VRAM and that do not: `(near, far)`.
fn near_and_far(paths: &[PathBuf]) -> Result<(Option<PathBuf>, Option<PathBuf>), Error> {
    let x = Device::open(&paths[0])?;
    let (mut near, mut far) = (None, None);
    for p in &paths[1..] {
        match prime_reach(&x, &Device::open(p)?)? {
            Ok(_) => near = near.or(Some(p.clone())),
            Err(e) if e == libc::EXDEV => far = far.or(Some(p.clone())),
            Err(_) => {}
        }
    }
    Ok((near, far))
}

/// A peer binds and reads a movable buffer while a device without a route to VRAM maps it,
/// which moves it to system memory: 24 rounds, a fresh buffer each. The peer maps, copies and
/// unmaps 10 times; every copy reads the pattern, before and after the move, and the mapping
/// device reads it too.
fn bind_versus_move(t: &mut Tally, paths: &[PathBuf], r: &mut Rng) -> Result<(), Error> {
    let (Some(near), Some(far)) = near_and_far(paths)? else {
        t.check("bind versus move: a device near and one far", false, "none");
        return Ok(());
    };
    let name = paths[0].display().to_string();
    let x = Device::open(&paths[0])?;
    let z = Device::open(&near)?;
    let len = MIB;
    let data = pattern(len as usize, 89);
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let start = avail(&paths[..1])?;
    let (mut moved, mut bad) = (0, Vec::new());
    let z_dst = z.bo_create(len)?.into_handle();
    z.vm_bind(&[map_op(z_dst, 0, DST, len, false)])?;
    for round in 0..24 {
        let y = Device::open(&far)?;
        let bo = x.bo_create_in(len, both)?;
        x.write(bo.handle, 0, &data)?;
        let fd = x.export(bo.handle)?;
        let z_bo = z.import(fd.0.as_fd())?;
        let y_bo = y.import(fd.0.as_fd())?.into_handle();
        let y_dst = y.bo_create(len)?.into_handle();
        let delay = Duration::from_micros(r.below(40_000));
        let (reads, moving) = thread::scope(|s| {
            let reader = s.spawn(|| -> Result<Vec<String>, Error> {
                let mut wrong = Vec::new();
                for i in 0..10 {
                    z.vm_bind(&[map_op(z_bo.handle, 0, VA, len, true)])?;
                    let job = z.submit(&[copy_cmd(VA, DST, len)], 0, 0)?;
                    let err = job_errno(&z, job);
                    let mut got = vec![0u8; len as usize];
                    z.read(z_dst, 0, &mut got)?;
                    z.write(z_dst, 0, &[0; 64])?;
                    if err.is_some() || got != data {
                        wrong.push(format!(
                            "read {i}: job {err:?}, data differs at {:?}",
                            first_diff(&got, &data)
                        ));
                    }
                    z.vm_bind(&[unmap_op(VA, len)])?;
                }
                Ok(wrong)
            });
            thread::sleep(delay);
            let moving = y.vm_bind(&[
                map_op(y_bo, 0, VA, len, true),
                map_op(y_dst, 0, DST, len, false),
            ]);
            (reader.join(), moving)
        });
        match reads {
            Ok(Ok(wrong)) => bad.extend(wrong.into_iter().map(|w| format!("round {round}: {w}"))),
            Ok(Err(e)) => bad.push(format!("round {round}: {e}")),
            Err(_) => bad.push(format!("round {round}: the reader panicked")),
        }
        if let Err(e) = moving {
            bad.push(format!("round {round}: the moving bind: {e}"));
            continue;
        }
        let job = y.submit(&[copy_cmd(VA, DST, len)], 0, 0)?;
        let err = job_errno(&y, job);
        let mut got = vec![0u8; len as usize];
        y.read(y_dst, 0, &mut got)?;
        let placement = x.bo_info(bo.handle)?.placement;
        moved += i32::from(placement == uapi::DRM_CONFLUX_BO_SYSTEM);
        if err.is_some() || got != data || placement != uapi::DRM_CONFLUX_BO_SYSTEM {
            bad.push(format!(
                "round {round}: after the move: placement {placement}, job {err:?}, \
                 data differs at {:?}",
                first_diff(&got, &data)
            ));
        }
    }
    drop((x, z));
    let end = vram_back(&paths[..1], &start, Duration::from_secs(5))?;
    t.check(
        &format!(
            "{name}: a peer binding and reading while {} moves the buffer, 24 rounds: every \
             copy reads the data, and the buffer is in system memory after",
            far.display()
        ),
        bad.is_empty() && moved == 24,
        format!("{moved} moved; failures {bad:?}"),
    );
    t.check(
        &format!("{name}: after the moves, its VRAM is back"),
        end == start,
        format!("{end:?} bytes available, {start:?} at the start"),
    );
    Ok(())
}

/// A file that submits good jobs: each fills its own 4 KiB of a buffer with its own value.
struct Good {
    dev: Device,
    dst: u32,
}

impl Good {
    fn open(path: &PathBuf, jobs: u64) -> Result<Self, Error> {
        let dev = Device::open(path)?;
        let dst = dev.bo_create(jobs * 4096)?.into_handle();
        dev.vm_bind(&[map_op(dst, 0, DST, jobs * 4096, false)])?;
        Ok(Self { dev, dst })
    }

    fn value(k: u64, salt: u64) -> u64 {
        0x0101_0101_0101_0101u64.wrapping_mul((k + salt) % 251 + 1)
    }

    /// Submits job `k`; its number.
    fn submit(&self, k: u64, salt: u64) -> Result<u64, Error> {
        let cmd = fill_cmd(DST + k * 4096, 4096, Self::value(k, salt));
        self.dev.submit(&[cmd], 0, 0)
    }

    /// Whether job `k`'s 4 KiB hold its value.
    fn landed(&self, k: u64, salt: u64) -> Result<bool, Error> {
        let mut got = vec![0u8; 4096];
        self.dev.read(self.dst, k * 4096, &mut got)?;
        let want = Self::value(k, salt).to_le_bytes();
        Ok(got.chunks(8).all(|c| c == want))
    }
}

/// Good jobs per file in [`reset_versus_submission`].
const GOOD_JOBS: u64 = 200;

/// What each good job of each file ended with, or why the file could not tell.
type Outcomes = Vec<Result<Vec<Option<i32>>, String>>;

/// The files of `goods` each submit [`GOOD_JOBS`] jobs with `salt`, pausing after job `k` for
/// `gaps[k]` microseconds, and wait for all of them, while `meanwhile` runs on this thread.
fn submit_goods(goods: &[Good], salt: u64, gaps: &[u64], meanwhile: impl FnOnce()) -> Outcomes {
    thread::scope(|s| {
        let submitters: Vec<_> = goods
            .iter()
            .enumerate()
            .map(|(i, g)| {
                s.spawn(move || -> Result<Vec<Option<i32>>, Error> {
                    let mut jobs = Vec::new();
                    for k in 0..GOOD_JOBS {
                        jobs.push(g.submit(k, salt + i as u64)?);
                        thread::sleep(Duration::from_micros(gaps[k as usize]));
                    }
                    Ok(jobs.iter().map(|&j| job_errno(&g.dev, j)).collect())
                })
            })
            .collect();
        meanwhile();
        submitters
            .into_iter()
            .map(|s| match s.join() {
                Ok(Ok(errs)) => Ok(errs),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the submitter panicked".into()),
            })
            .collect()
    })
}

/// Two files submit 200 good jobs each, spread over time, while a third file's jobs fault (an
/// address nothing maps): every fault resets the engine, and every good job still runs once,
/// with its data (the device's byte counter grows by exactly theirs), and never fails. Then
/// the same while the engine stalls (`FAULT_STALL`) three times at random points: the
/// watchdog resets it, a good job may time out or be cancelled by the reset, and one that
/// succeeds has its data. The log line of each fault is rate limited.
fn reset_versus_submission(t: &mut Tally, paths: &[PathBuf], r: &mut Rng) -> Result<(), Error> {
    let name = paths[0].display().to_string();
    let bad = Device::open(&paths[0])?;

    // Two faulting jobs in a row: FENCE_SEQNO stays below the first, which is no longer in
    // flight when the second fails. That is the device's count, not a bogus value to log.
    let stale_before = log_lines(" is not a job in flight");
    let first = bad.submit(&[fill_cmd(7 * VA, 64, 0)], 0, 0)?;
    let second = bad.submit(&[fill_cmd(7 * VA, 64, 0)], 0, 0)?;
    let both = [job_errno(&bad, first), job_errno(&bad, second)];
    let stale = log_lines(" is not a job in flight").saturating_sub(stale_before);
    t.check(
        &format!(
            "{name}: two faulting jobs in a row both fail with EIO, and FENCE_SEQNO below them \
             is not logged as bogus"
        ),
        both == [Some(libc::EIO); 2] && stale == 0,
        format!("errnos {both:?}, {stale} lines of a bogus FENCE_SEQNO"),
    );

    let log_before = log_lines(FAULT_LINE);
    let started = Instant::now();
    let goods = [
        Good::open(&paths[0], GOOD_JOBS)?,
        Good::open(&paths[0], GOOD_JOBS)?,
    ];
    let c0 = counters(&goods[0].dev)?;
    let gaps: Vec<u64> = (0..GOOD_JOBS).map(|_| r.below(2000)).collect();
    let fault_gaps: Vec<u64> = (0..100).map(|_| r.below(3000)).collect();
    let mut faults = Vec::new();
    let results = submit_goods(&goods, 0, &gaps, || {
        for gap in &fault_gaps {
            thread::sleep(Duration::from_micros(*gap));
            faults.push(
                bad.submit(&[fill_cmd(7 * VA, 64, 0)], 0, 0)
                    .map(|j| job_errno(&bad, j)),
            );
        }
    });
    let c1 = counters(&goods[0].dev)?;
    let mut wrong = Vec::new();
    for (i, res) in results.into_iter().enumerate() {
        match res {
            Ok(errs) => {
                for (k, e) in errs.iter().enumerate() {
                    if e.is_some() || !goods[i].landed(k as u64, i as u64)? {
                        wrong.push(format!("file {i} job {k}: {e:?}"));
                    }
                }
            }
            Err(e) => wrong.push(format!("file {i}: {e}")),
        }
    }
    let eio = faults
        .iter()
        .filter(|f| matches!(f, Ok(Some(e)) if *e == libc::EIO))
        .count();
    let filled = c1[0] - c0[0];
    t.check(
        &format!(
            "{name}: 400 good jobs of two files against 100 faulting jobs of a third: each runs \
             once, with its data"
        ),
        wrong.is_empty() && eio == faults.len() && filled == 2 * GOOD_JOBS * 4096,
        format!(
            "{eio} of {} faulting jobs failed with EIO; {filled} bytes filled, {} expected \
             ({} s); failures {wrong:?}",
            faults.len(),
            2 * GOOD_JOBS * 4096,
            started.elapsed().as_secs()
        ),
    );
    let lines = log_lines(FAULT_LINE).saturating_sub(log_before);
    // 10 lines per 5 s, plus the burst at each end of the window.
    let allowed = 10 * (started.elapsed().as_secs() / 5 + 2);
    t.check(
        &format!("{name}: the faults' log lines are rate limited"),
        lines > 0 && lines <= allowed as usize,
        format!(
            "{lines} lines for {eio} faults in {} s, at most {allowed}",
            started.elapsed().as_secs()
        ),
    );

    // The engine stalled three times while the jobs come: each time the watchdog resets it,
    // which clears the switch.
    let sw = Switches::open_pci(&goods[0].dev.pci_address().unwrap_or_default())?;
    let gaps: Vec<u64> = (0..GOOD_JOBS).map(|_| r.below(20_000)).collect();
    let stall_gaps: Vec<u64> = (0..3).map(|_| r.below(300_000)).collect();
    let mut stalls = 0;
    let results = submit_goods(&goods, 7, &gaps, || {
        for gap in &stall_gaps {
            thread::sleep(Duration::from_micros(*gap));
            sw.set(ctrl::FAULT_STALL);
            let set = Instant::now();
            while sw.get() & ctrl::FAULT_STALL != 0 && set.elapsed() < Duration::from_secs(5) {
                thread::sleep(Duration::from_millis(5));
            }
            stalls += i32::from(sw.get() & ctrl::FAULT_STALL == 0);
        }
    });
    sw.set(0);
    let (mut ok, mut failed, mut wrong) = (0, 0, Vec::new());
    for (i, res) in results.into_iter().enumerate() {
        match res {
            Ok(errs) => {
                for (k, e) in errs.iter().enumerate() {
                    match e {
                        None if goods[i].landed(k as u64, 7 + i as u64)? => ok += 1,
                        Some(libc::ETIMEDOUT | libc::ECANCELED) => failed += 1,
                        other => wrong.push(format!("file {i} job {k}: {other:?}")),
                    }
                }
            }
            Err(e) => wrong.push(format!("file {i}: {e}")),
        }
    }
    let after = goods[0].submit(0, 99).map(|j| job_errno(&goods[0].dev, j));
    t.check(
        &format!(
            "{name}: 400 good jobs while the engine stalls 3 times: each completes with its \
             data or fails with ETIMEDOUT or ECANCELED; the device runs the next job"
        ),
        wrong.is_empty() && failed > 0 && stalls == 3 && matches!(after, Ok(None)),
        format!(
            "{stalls} stalls ended by a reset; {ok} jobs completed, {failed} failed; next job \
             {after:?}; failures {wrong:?}"
        ),
    );
    Ok(())
}

/// What the kernel log's line for a job that faulted contains.
const FAULT_LINE: &str = " failed: cause ";

/// The kernel log's lines that contain `what`.
fn log_lines(what: &str) -> usize {
    let out = std::process::Command::new("dmesg").output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains(what))
            .count()
    })
    .unwrap_or(0)
}

/// Peers import, bind, read and close an exporter's buffer in a loop while the exporter is
/// unbound at a random point, which revokes the buffer: 10 rounds. Before the revocation every
/// copy reads the pattern; after it, binds fail with ENODEV and jobs fail, and a copy that
/// succeeds still reads the pattern, never other memory. The exporter then binds again with
/// all of its VRAM.
fn unbind_versus_peers(t: &mut Tally, paths: &[PathBuf], r: &mut Rng) -> Result<(), Error> {
    let exporter = Device::open(&paths[1])?;
    let Some(pci) = exporter.pci_address() else {
        t.check(
            "unbind versus peers: the exporter's PCI address",
            false,
            "none",
        );
        return Ok(());
    };
    drop(exporter);
    let peers = [paths[0].clone(), paths[2].clone()];
    let len = MIB;
    let data = pattern(len as usize, 97);
    let (mut bad, mut refused, mut copies) = (Vec::new(), 0, 0);
    let mut start_vram = None;
    for round in 0..10 {
        let Some(node) = node_of(&pci) else {
            bad.push(format!("round {round}: {pci} has no accel node"));
            break;
        };
        let exporter = Device::open(&node)?;
        let vram = exporter.info()?.vram_avail;
        if *start_vram.get_or_insert(vram) != vram {
            bad.push(format!(
                "round {round}: {vram} bytes available, not {start_vram:?}"
            ));
        }
        let x = exporter.bo_create(len)?.into_handle();
        exporter.write(x, 0, &data)?;
        let fd = exporter.export(x)?;
        let delay = Duration::from_micros(r.below(200_000));
        let stop = AtomicBool::new(false);
        let outcomes = thread::scope(|s| {
            let workers: Vec<_> = peers
                .iter()
                .map(|p| {
                    let (fd, stop, data) = (&fd, &stop, &data);
                    s.spawn(move || -> Result<(u32, u32, Vec<String>), Error> {
                        let dev = Device::open(p)?;
                        let dst = dev.bo_create(len)?.into_handle();
                        dev.vm_bind(&[map_op(dst, 0, DST, len, false)])?;
                        let (mut n, mut no, mut wrong) = (0, 0, Vec::new());
                        // Until the exporter is gone, and then a few times more.
                        let mut after = 0;
                        while after < 3 {
                            after += u32::from(stop.load(Ordering::Acquire));
                            let bo = match dev.import(fd.0.as_fd()) {
                                Ok(bo) => bo,
                                Err(e) if e.errno() == Some(libc::ENODEV) => {
                                    no += 1;
                                    continue;
                                }
                                Err(e) => return Err(e),
                            };
                            match dev.vm_bind(&[map_op(bo.handle, 0, VA, len, true)]) {
                                Ok(()) => {}
                                Err(e) if e.errno() == Some(libc::ENODEV) => {
                                    no += 1;
                                    continue;
                                }
                                Err(e) => return Err(e),
                            }
                            dev.write(dst, 0, &[0; 64])?;
                            let err = match dev.submit(&[copy_cmd(VA, DST, len)], 0, 0) {
                                Ok(job) => job_errno(&dev, job),
                                Err(e) => Some(e.errno().unwrap_or(0)),
                            };
                            let mut got = vec![0u8; len as usize];
                            dev.read(dst, 0, &mut got)?;
                            match err {
                                None if got == *data => n += 1,
                                Some(libc::EIO | libc::ENODEV | libc::ECANCELED) => no += 1,
                                e => wrong.push(format!(
                                    "{}: job {e:?}, data differs at {:?}",
                                    p.display(),
                                    first_diff(&got, data)
                                )),
                            }
                            dev.vm_bind(&[unmap_op(VA, len)])?;
                        }
                        Ok((n, no, wrong))
                    })
                })
                .collect();
            thread::sleep(delay);
            let unbound = driver_sysfs(&pci, "unbind");
            stop.store(true, Ordering::Release);
            let outcomes: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
            (unbound, outcomes)
        });
        drop(exporter);
        let (unbound, outcomes) = outcomes;
        unbound?;
        for o in outcomes {
            match o {
                Ok(Ok((n, no, wrong))) => {
                    copies += n;
                    refused += no;
                    bad.extend(wrong.into_iter().map(|w| format!("round {round}: {w}")));
                }
                Ok(Err(e)) => bad.push(format!("round {round}: {e}")),
                Err(_) => bad.push(format!("round {round}: a peer panicked")),
            }
        }
        drop(fd);
        driver_sysfs(&pci, "bind")?;
    }
    let back = node_of(&pci).map(|n| Device::open(n).and_then(|d| d.info()));
    let vram = match back {
        Some(Ok(i)) => Some(i.vram_avail),
        _ => None,
    };
    t.check(
        &format!(
            "{pci}: unbound 10 times while two peers import, bind and read its buffer: copies \
             read the data, later calls fail, nothing else"
        ),
        bad.is_empty() && copies > 0 && refused > 0,
        format!("{copies} copies read the data, {refused} calls refused; failures {bad:?}"),
    );
    t.check(
        &format!("{pci}: bound again with all of its VRAM"),
        vram.is_some() && vram == start_vram,
        format!("{vram:?} bytes available, {start_vram:?} before"),
    );
    Ok(())
}
