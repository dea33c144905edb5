// SPDX-License-Identifier: GPL-2.0

//! Sparse binding against a model: random MAP, replacing MAP, partial UNMAP and NULL maps on a
//! window of the VA space, with jobs reading through it after every step and the result
//! compared with what an in-test model says every page must read.

use conflux::{copy_cmd, fill_cmd, map_op, null_op, uapi, unmap_op, BindOp, Device, Error};

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

/// The path VM_PATH must report for `page`.
fn path_of(page: Page) -> u32 {
    match page {
        Page::Unmapped => 0,
        Page::Buf { src: 0, .. } => uapi::DRM_CONFLUX_PATH_LOCAL,
        Page::Buf { .. } => uapi::DRM_CONFLUX_PATH_SYSTEM,
        Page::Null => uapi::DRM_CONFLUX_PATH_NULL,
    }
}

/// One run of the model test from `seed`; an error names the step and the seed.
fn run(dev: &Device, seed: u64) -> Result<Result<usize, String>, Error> {
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
        if let Err(e) = dev.vm_bind(&ops) {
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
        if !cmds.is_empty() {
            let job = dev.submit(&cmds, 0, 0)?;
            if let Err(e) = dev.wait(job, -1) {
                return fail(step, format!("the job over pages {stretch:?} failed: {e}"));
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
                    "byte {:#x} of window page {page} ({:?}) reads {:#x}, expected {:#x}",
                    d as u64 % KIB4,
                    model[page as usize],
                    got[d],
                    want[d]
                ),
            );
        }
        // The path of a random page, as VM_PATH reports it.
        let page = rng.below(PAGES);
        let path = dev.vm_path(0, WINDOW + page * KIB4)?;
        if path != path_of(model[page as usize]) {
            return fail(
                step,
                format!(
                    "VM_PATH of window page {page} ({:?}) is {path}",
                    model[page as usize]
                ),
            );
        }
        // Now and then, a read of an unmapped page must fault.
        if step % 100 == 99 {
            if let Some(p) = model.iter().position(|&p| p == Page::Unmapped) {
                let job = dev.submit(&[copy_cmd(WINDOW + p as u64 * KIB4, OUT, 8)], 0, 0)?;
                let errno = dev.wait(job, -1).err().and_then(|e| e.errno());
                if errno != Some(libc::EIO) {
                    return fail(step, format!("reading unmapped page {p}: {errno:?}"));
                }
            }
        }
    }
    dev.vm_bind(&[unmap_op(WINDOW, 2 * MIB2), unmap_op(OUT, len)])?;
    Ok(Ok(ops_done))
}

/// The model test, with the seed of `CONFLUX_SEED` or the default one.
pub(crate) fn test_sparse(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let seed = std::env::var("CONFLUX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    match run(dev, seed)? {
        Ok(ops) => t.check(
            &format!("{name}: sparse binds against the model, {STEPS} steps"),
            true,
            format!("seed {seed}, {ops} operations, every read as the model says"),
        ),
        Err(e) => t.check(
            &format!("{name}: sparse binds against the model, {STEPS} steps"),
            false,
            e,
        ),
    }
    Ok(())
}
