// SPDX-License-Identifier: GPL-2.0

//! Sparse binding against a model: random MAP, replacing MAP, partial UNMAP and NULL maps on a
//! window of the VA space, with jobs reading through it after every step and the result
//! compared with what an in-test model says every page must read; on one device's VM, and on a
//! VM that two devices share, whose jobs run on either member. Each runs again with most binds
//! on two bind queues, with fence chains between them: binds in the same 2 MiB region apply in
//! the order of the calls whatever queue they are on, so the model holds once a job waits for
//! the last bind of each queue.

use std::os::fd::AsFd;

use conflux::{
    copy_cmd, fill_cmd, map_op, null_op, sync, uapi, unmap_op, BindOp, BindSyncs, Device, Error,
    SyncPoint,
};

use crate::{
    common::{first_diff, pattern, KIB4, MIB2, VA},
    fuzz::Rng,
    Tally,
};

/// The window the operations change: 4 MiB, two 2 MiB regions.
const WINDOW: u64 = 8 * VA;
const PAGES: u64 = 1024;
/// Where the jobs copy what they read through the window.
const OUT: u64 = 9 * VA;
/// Steps of one run, each of one to three operations in one VM_BIND.
const STEPS: usize = 1500;
/// The seed unless `CONFLUX_SEED` names another.
const DEFAULT_SEED: u64 = 20261206;

/// What a page of the window must read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    /// Nothing: an access faults.
    Unmapped,
    /// Page `page` of source buffer `src`.
    Buf { src: usize, page: u64 },
    /// NULL: reads zeros, drops writes.
    Null,
}

/// A random operation on the window and the model's pages after it.
fn random_op(rng: &mut Rng, model: &mut [Page], handles: &[u32; 2]) -> BindOp {
    // Half the operations are 2 MiB aligned, so that 2 MiB entries are made and split.
    let (first, count) = if rng.below(2) == 0 {
        let first = rng.below(PAGES);
        (first, 1 + rng.below(PAGES - first))
    } else {
        let region = rng.below(2) * 512;
        let n = if rng.below(3) == 0 {
            1024 - region
        } else {
            512
        };
        (region, n)
    };
    let (va, range) = (WINDOW + first * KIB4, count * KIB4);
    let pages = &mut model[first as usize..(first + count) as usize];
    match rng.below(5) {
        0 | 1 => {
            let src = rng.below(2) as usize;
            // Source pages at the same 2 MiB phase half of the time, so that 2 MiB entries fit.
            let start = if rng.below(2) == 0 {
                first % 512 + rng.below(2) * 512
            } else {
                rng.below(PAGES - count + 1)
            };
            let start = start.min(PAGES - count);
            for (i, p) in pages.iter_mut().enumerate() {
                *p = Page::Buf {
                    src,
                    page: start + i as u64,
                };
            }
            map_op(handles[src], start * KIB4, va, range, false)
        }
        2 | 3 => {
            pages.fill(Page::Null);
            null_op(va, range)
        }
        _ => {
            pages.fill(Page::Unmapped);
            unmap_op(va, range)
        }
    }
}

/// Whether VM_PATH's `path` for member `member` fits `page`: member 0 owns the buffers, one in
/// its VRAM and one in system memory; another member reaches the VRAM one by some route.
fn path_fits(page: Page, member: u32, path: u32) -> bool {
    match page {
        Page::Unmapped => path == 0,
        Page::Buf { src: 0, .. } if member == 0 => path == uapi::DRM_CONFLUX_PATH_LOCAL,
        Page::Buf { src: 0, .. } => !matches!(
            path,
            0 | uapi::DRM_CONFLUX_PATH_LOCAL | uapi::DRM_CONFLUX_PATH_NULL
        ),
        Page::Buf { .. } => path == uapi::DRM_CONFLUX_PATH_SYSTEM,
        Page::Null => path == uapi::DRM_CONFLUX_PATH_NULL,
    }
}

/// Two bind queues of the first member's file, each with a timeline syncobj whose points its
/// binds signal, imported in every member's file.
struct Queues {
    queues: [u32; 2],
    /// Per member, the handles of the two timelines.
    timelines: Vec<[u32; 2]>,
    /// The last point of each timeline.
    points: [u64; 2],
    binds: usize,
}

impl Queues {
    fn new(devs: &[&Device]) -> Result<Self, Error> {
        let dev = devs[0];
        let queues = [dev.bind_queue_create()?, dev.bind_queue_create()?];
        let mine = [dev.syncobj_create()?, dev.syncobj_create()?];
        let mut timelines = vec![mine];
        for other in &devs[1..] {
            let mut theirs = [0; 2];
            for (t, h) in theirs.iter_mut().zip(mine) {
                *t = other.syncobj_import(dev.syncobj_export(h)?.as_fd())?;
            }
            timelines.push(theirs);
        }
        Ok(Self {
            queues,
            timelines,
            points: [0; 2],
            binds: 0,
        })
    }

    /// What a job of member `m` waits for: the last bind of each queue.
    fn waits(&self, m: usize) -> Vec<SyncPoint> {
        (0..2)
            .filter(|&q| self.points[q] > 0)
            .map(|q| sync(self.timelines[m][q], self.points[q]))
            .collect()
    }

    /// Binds `ops` on queue `q`, after the last bind of the other queue when `chain`.
    fn bind(&mut self, dev: &Device, q: usize, chain: bool, ops: &[BindOp]) -> Result<(), Error> {
        let other = 1 - q;
        let wait: Vec<SyncPoint> = (chain && self.points[other] > 0)
            .then(|| sync(self.timelines[0][other], self.points[other]))
            .into_iter()
            .collect();
        let signal = [sync(self.timelines[0][q], self.points[q] + 1)];
        let syncs = BindSyncs {
            wait: &wait,
            signal: &signal,
            ..Default::default()
        };
        dev.vm_bind_queued(self.queues[q], ops, &syncs)?;
        self.points[q] += 1;
        self.binds += 1;
        Ok(())
    }
}

/// Runs `cmds` on `dev`, member `m`, after the last bind of each of `queues`, and waits.
fn run_job(
    dev: &Device,
    m: usize,
    queues: Option<&Queues>,
    cmds: &[conflux::Cmd],
) -> Result<(), Error> {
    let waits = queues.map(|q| q.waits(m)).unwrap_or_default();
    let mut args = uapi::drm_conflux_submit {
        in_syncs: waits.as_ptr() as u64,
        num_in_syncs: waits.len() as u32,
        ..Default::default()
    };
    let job = dev.submit_with(cmds, &mut args)?;
    dev.wait(job, -1)
}

/// One run of the model test from `seed` on the VM of `devs[0]`, which the others join; each
/// step's job runs on a random member. With `queued`, most binds go to two bind queues. An
/// error names the step and the seed.
fn run(devs: &[&Device], seed: u64, queued: bool) -> Result<Result<usize, String>, Error> {
    let dev = devs[0];
    for other in &devs[1..] {
        other.vm_join(dev)?;
    }
    let mut queues = if queued {
        Some(Queues::new(devs)?)
    } else {
        None
    };
    let len = PAGES * KIB4;
    let vram = dev.bo_create(len)?;
    let sys = dev.bo_create_in(len, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let out = dev.bo_create_in(len, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let sources = [pattern(len as usize, 0x3c), pattern(len as usize, 0xa7)];
    dev.write(vram.handle, 0, &sources[0])?;
    dev.write(sys.handle, 0, &sources[1])?;
    dev.vm_bind(&[map_op(out.handle, 0, OUT, len, false)])?;
    let handles = [vram.handle, sys.handle];
    let mut model = vec![Page::Unmapped; PAGES as usize];
    let mut rng = Rng::new(seed);
    let mut ops_done = 0;
    let fail = |step: usize, what: String| Ok(Err(format!("seed {seed}, step {step}: {what}")));
    for step in 0..STEPS {
        let ops: Vec<BindOp> = (0..1 + rng.below(3))
            .map(|_| random_op(&mut rng, &mut model, &handles))
            .collect();
        let mode = rng.below(4);
        let bound = match queues.as_mut() {
            Some(q) if mode > 0 => {
                let chain = rng.below(2) == 0;
                q.bind(dev, usize::from(mode == 3), chain, &ops)
            }
            _ => dev.vm_bind(&ops),
        };
        if let Err(e) = bound {
            return fail(step, format!("VM_BIND {ops:?}: {e}"));
        }
        ops_done += ops.len();
        // A random stretch of up to 64 pages, read by a job: each run of mapped or NULL pages
        // is copied to OUT at the same offset, after a FILL of its NULL pages that must vanish.
        let first = rng.below(PAGES);
        let count = (1 + rng.below(64)).min(PAGES - first);
        let stretch = first..first + count;
        let mut cmds = Vec::new();
        let mut p = stretch.start;
        while p < stretch.end {
            let kind = model[p as usize];
            let class = |page: Page| std::mem::discriminant(&page);
            let mut end = p + 1;
            while end < stretch.end && class(model[end as usize]) == class(kind) {
                end += 1;
            }
            let (at, n) = (p * KIB4, (end - p) * KIB4);
            match kind {
                Page::Unmapped => {}
                Page::Null => {
                    cmds.push(fill_cmd(WINDOW + at, n, 0x5a5a_5a5a_5a5a_5a5a));
                    cmds.push(copy_cmd(WINDOW + at, OUT + at, n));
                }
                Page::Buf { .. } => cmds.push(copy_cmd(WINDOW + at, OUT + at, n)),
            }
            p = end;
        }
        let (at, n) = ((first * KIB4) as usize, (count * KIB4) as usize);
        dev.write(out.handle, at as u64, &vec![0xee; n])?;
        // CAST: a handful of members.
        let member = rng.below(devs.len() as u64) as usize;
        if !cmds.is_empty() {
            let runner = devs[member];
            if let Err(e) = run_job(runner, member, queues.as_ref(), &cmds) {
                return fail(
                    step,
                    format!("the job of member {member} over pages {stretch:?} failed: {e}"),
                );
            }
        }
        let mut got = vec![0u8; n];
        dev.read(out.handle, at as u64, &mut got)?;
        let want: Vec<u8> = stretch
            .clone()
            .flat_map(|p| match model[p as usize] {
                Page::Unmapped => vec![0xee; KIB4 as usize],
                Page::Null => vec![0; KIB4 as usize],
                Page::Buf { src, page } => {
                    let o = (page * KIB4) as usize;
                    sources[src][o..o + KIB4 as usize].to_vec()
                }
            })
            .collect();
        if let Some(d) = first_diff(&got, &want) {
            let page = first + d as u64 / KIB4;
            return fail(
                step,
                format!(
                    "member {member}: byte {:#x} of window page {page} ({:?}) reads {:#x}, \
                     expected {:#x}",
                    d as u64 % KIB4,
                    model[page as usize],
                    got[d],
                    want[d]
                ),
            );
        }
        // The path of a random page for every member, as VM_PATH reports it.
        let page = rng.below(PAGES);
        for m in 0..devs.len() as u32 {
            let path = dev.vm_path(m, WINDOW + page * KIB4)?;
            if !path_fits(model[page as usize], m, path) {
                return fail(
                    step,
                    format!(
                        "VM_PATH of window page {page} ({:?}) for member {m} is {path}",
                        model[page as usize]
                    ),
                );
            }
        }
        // Now and then, a read of an unmapped page must fault.
        if step % 100 == 99 {
            if let Some(p) = model.iter().position(|&p| p == Page::Unmapped) {
                let cmds = [copy_cmd(WINDOW + p as u64 * KIB4, OUT, 8)];
                let errno = run_job(dev, 0, queues.as_ref(), &cmds)
                    .err()
                    .and_then(|e| e.errno());
                if errno != Some(libc::EIO) {
                    return fail(step, format!("reading unmapped page {p}: {errno:?}"));
                }
            }
        }
    }
    dev.vm_bind(&[unmap_op(WINDOW, 2 * MIB2), unmap_op(OUT, len)])?;
    if let Some(q) = &queues {
        for queue in q.queues {
            dev.bind_queue_destroy(queue)?;
        }
        if q.binds < STEPS / 2 {
            return fail(STEPS, format!("only {} binds went to the queues", q.binds));
        }
    }
    Ok(Ok(ops_done))
}

/// The model test on the VM of `devs[0]`, shared with the other devices, with the seed of
/// `CONFLUX_SEED` or the default one; with `queued`, on two bind queues.
pub(crate) fn test_sparse(t: &mut Tally, devs: &[&Device], queued: bool) -> Result<(), Error> {
    let names: Vec<String> = devs
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    let what = match names.len() {
        1 => format!(
            "{}: sparse binds against the model, {STEPS} steps",
            names[0]
        ),
        _ => format!(
            "{}: sparse binds against the model on a VM shared with {}, {STEPS} steps",
            names[0],
            names[1..].join(", ")
        ),
    };
    let seed = std::env::var("CONFLUX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let what = match queued {
        true => format!("{what}, on two bind queues"),
        false => what,
    };
    match run(devs, seed, queued)? {
        Ok(ops) => t.check(
            &what,
            true,
            format!("seed {seed}, {ops} operations, every read as the model says"),
        ),
        Err(e) => t.check(&what, false, e),
    }
    Ok(())
}
