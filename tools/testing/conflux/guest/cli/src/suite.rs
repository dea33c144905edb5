// SPDX-License-Identifier: GPL-2.0

//! `conflux bench-suite` and `conflux render-bench`: the headline figures of `make bench`, each
//! the median of several runs with their spread, beside its reference measured in the same run.
//!
//! The guest measures what it can reach through the driver (copies, binds, jobs, several
//! devices at once) and prints one JSON document; the host adds the figures it measures itself
//! (the host's memcpy, the kernel's table-building benchmark) and renders the table, as text
//! and as a PNG chart, with `render-bench`.

use std::{
    os::fd::AsFd,
    path::Path,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use conflux::{fill_cmd, map_op, null_op, uapi, unmap_op, BindOp, BindSyncs, Bo, Device};
use conflux_device::ring::Op;
use serde_json::{json, Value};

use crate::{
    matrix::{bind_copy, run_copy, time_copy, unbind_copy},
    mbps,
    png::Canvas,
    random_bytes,
    userq::{UserRing, UQ_DATA},
    verify,
};

const MIB: u64 = 1 << 20;
const VA: u64 = 1 << 32;

/// The median of `samples`.
fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The median of the ratios `a[i] / b[i]` of runs that took turns.
fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}

/// The median, smallest and largest of `samples`.
fn stats(mut samples: Vec<f64>) -> Value {
    let median = median(&samples);
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    json!({
        "median": median,
        "min": samples.first().copied().unwrap_or(f64::NAN),
        "max": samples.last().copied().unwrap_or(f64::NAN),
        "runs": n,
    })
}

/// A figure of a row: its label and statistics, with `extra` fields.
fn figure(label: &str, samples: Vec<f64>, extra: Value) -> Value {
    let mut f = json!({"label": label, "value": stats(samples)});
    if let (Some(f), Value::Object(extra)) = (f.as_object_mut(), extra) {
        f.extend(extra);
    }
    f
}

fn e(err: conflux::Error) -> String {
    err.to_string()
}

/// Runs `f` `runs` times and collects what it returns.
fn repeat(runs: u32, mut f: impl FnMut() -> Result<f64, String>) -> Result<Vec<f64>, String> {
    (0..runs).map(|_| f()).collect()
}

/// 64 MiB copies: from the first device's VRAM to the second's peer to peer, the same staged
/// through system memory, and within the first device's VRAM. Checks the data of each.
fn copies(a: &Device, b: &Device, size: u64, runs: u32) -> Result<Value, String> {
    let data = random_bytes(size as usize, 0xbe9c_4a11);
    let src = a.bo_create(size).map_err(e)?;
    a.write(src.handle, 0, &data).map_err(e)?;

    // Peer to peer: b's buffer imported into a.
    let dst = b.bo_create(size).map_err(e)?;
    let fd = b.export(dst.handle).map_err(e)?;
    let peer = a.import(fd.0.as_fd()).map_err(e)?;
    let path = a.bo_info(peer.handle).map_err(e)?.path;
    if path != uapi::DRM_CONFLUX_PATH_P2P && path != uapi::DRM_CONFLUX_PATH_HOST_BRIDGE {
        return Err(format!(
            "bench-suite: {} has no peer-to-peer route to {} (path {path})",
            b.path().display(),
            a.path().display()
        ));
    }
    let p2p = repeat(runs, || Ok(mbps(size, run_copy(a, &src, &peer, size)?)))?;
    check(b, &dst, &data, "peer-to-peer copy")?;

    // Staged: a copies into its system memory, which b imports and copies from.
    let dst2 = b.bo_create(size).map_err(e)?;
    let sys = a
        .bo_create_in(size, uapi::DRM_CONFLUX_BO_SYSTEM)
        .map_err(e)?;
    let sys_fd = a.export(sys.handle).map_err(e)?;
    let on_b = b.import(sys_fd.0.as_fd()).map_err(e)?;
    let staged = repeat(runs, || {
        let secs = run_copy(a, &src, &sys, size)? + run_copy(b, &on_b, &dst2, size)?;
        Ok(mbps(size, secs))
    })?;
    check(b, &dst2, &data, "staged copy")?;

    // Local.
    let dst3 = a.bo_create(size).map_err(e)?;
    let local = repeat(runs, || Ok(mbps(size, run_copy(a, &src, &dst3, size)?)))?;
    check(a, &dst3, &data, "local copy")?;

    Ok(json!({
        "id": "copy",
        "title": format!("{} MiB copy", size / MIB),
        "unit": "MB/s",
        "higher_is_better": true,
        "figures": [
            figure("peer to peer", p2p, json!({})),
            figure("staged through system memory", staged, json!({})),
            figure("local VRAM", local, json!({})),
        ],
    }))
}

fn check(dev: &Device, bo: &Bo<'_>, data: &[u8], what: &str) -> Result<(), String> {
    let mut got = vec![0u8; data.len()];
    dev.read(bo.handle, 0, &mut got).map_err(e)?;
    verify(what, &got, |i| data[i])
}

/// Applies `ops` synchronously, or on bind queue `queue` and waits for its fence in `done`.
fn bind_now(dev: &Device, ops: &[BindOp], queue: Option<(u32, u32)>) -> Result<(), String> {
    match queue {
        None => dev.vm_bind(ops).map_err(e),
        Some((q, done)) => {
            let signal = [conflux::sync(done, 0)];
            let syncs = BindSyncs {
                signal: &signal,
                ..Default::default()
            };
            dev.vm_bind_queued(q, ops, &syncs).map_err(e)?;
            dev.syncobj_wait(done, Duration::from_secs(600)).map_err(e)
        }
    }
}

/// A bind of 1 GiB (a 512 MiB buffer mapped twice, back to back) at a 2 MiB-aligned address,
/// which takes 2 MiB entries, and at an address 4 KiB off, which takes 4 KiB entries: the
/// entries written, from GET_INFO, and the time of the VM_BIND call; on a bind queue, the time
/// from the call to the bind's fence.
fn binds(dev: &Device, runs: u32) -> Result<Value, String> {
    let half = 512 * MIB;
    let bo = dev.bo_create(2 * 256 * MIB).map_err(e)?;
    let queue = (
        dev.bind_queue_create().map_err(e)?,
        dev.syncobj_create().map_err(e)?,
    );
    let mut rows = Vec::new();
    let cases = [
        ("2 MiB pages", VA, None),
        ("4 KiB pages", VA + 4096, None),
        ("2 MiB pages, on a bind queue", VA, Some(queue)),
        ("4 KiB pages, on a bind queue", VA + 4096, Some(queue)),
    ];
    for (label, va, queue) in cases {
        let mut entries = (0, 0);
        let ms = repeat(runs, || {
            let start = Instant::now();
            bind_now(
                dev,
                &[
                    map_op(bo.handle, 0, va, half, false),
                    map_op(bo.handle, 0, va + half, half, false),
                ],
                queue,
            )?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let info = dev.info().map_err(e)?;
            entries = (info.vm_2m_entries, info.vm_4k_entries);
            dev.vm_bind(&[unmap_op(va, 2 * half)]).map_err(e)?;
            Ok(ms)
        })?;
        rows.push(figure(
            label,
            ms,
            json!({"entries_2m": entries.0, "entries_4k": entries.1,
                   "note": format!("{} entries of 2 MiB, {} of 4 KiB", entries.0, entries.1)}),
        ));
    }
    dev.bind_queue_destroy(queue.0).map_err(e)?;
    Ok(json!({
        "id": "bind",
        "title": "bind of 1 GiB",
        "unit": "ms",
        "higher_is_better": false,
        "figures": rows,
    }))
}

/// Makes the operation of one VM_BIND call from a buffer handle, an address and a length.
type MakeOp = fn(u32, u64, u64) -> BindOp;

/// VM_BIND calls of one operation each, per second, synchronous and on a bind queue (to the
/// fence of the last bind): maps of 4 KiB and of 2 MiB (one 2 MiB entry each) at fresh
/// addresses, maps of 4 KiB that replace a mapping, NULL maps of 4 KiB, beside the no-op ioctl.
/// The unmaps of each run are not timed.
fn bind_rates(dev: &Device, runs: u32) -> Result<Value, String> {
    const CALLS: u64 = 256;
    let bo = dev.bo_create(2 * MIB).map_err(e)?;
    let page = 4096;
    let kinds: [(&str, u64, MakeOp); 4] = [
        ("4 KiB map", page, |h, va, len| map_op(h, 0, va, len, false)),
        ("2 MiB map", 2 * MIB, |h, va, len| {
            map_op(h, 0, va, len, false)
        }),
        ("4 KiB map replacing a mapping", page, |h, va, len| {
            map_op(h, 4096, va, len, false)
        }),
        ("4 KiB NULL map", page, |_, va, len| null_op(va, len)),
    ];
    let mut figures = Vec::new();
    let mut noop = Vec::new();
    // Synchronous, then on a bind queue: the calls back to back, the last one's fence waited.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 2 * kinds.len()];
    let queue = dev.bind_queue_create().map_err(e)?;
    let done = dev.syncobj_create().map_err(e)?;
    for _ in 0..runs {
        for (i, (label, len, op)) in kinds.iter().enumerate() {
            for queued in [false, true] {
                if label.contains("replacing") {
                    dev.vm_bind(&[map_op(bo.handle, 0, VA, CALLS * len, false)])
                        .map_err(e)?;
                }
                let start = Instant::now();
                for k in 0..CALLS {
                    let ops = [op(bo.handle, VA + k * len, *len)];
                    match queued {
                        false => dev.vm_bind(&ops).map(drop),
                        true => {
                            let signal = [conflux::sync(done, 0)];
                            let syncs = BindSyncs {
                                signal: if k + 1 == CALLS { &signal } else { &[] },
                                ..Default::default()
                            };
                            dev.vm_bind_queued(queue, &ops, &syncs).map(drop)
                        }
                    }
                    .map_err(e)?;
                }
                if queued {
                    dev.syncobj_wait(done, Duration::from_secs(600))
                        .map_err(e)?;
                }
                rates[2 * i + usize::from(queued)]
                    .push(CALLS as f64 / start.elapsed().as_secs_f64());
                dev.vm_bind(&[unmap_op(VA, CALLS * len)]).map_err(e)?;
            }
        }
        noop.push(noop_rate(dev, 4096)?);
    }
    dev.bind_queue_destroy(queue).map_err(e)?;
    for (k, rate) in rates.into_iter().enumerate() {
        let (label, _, _) = kinds[k / 2];
        let label = match k % 2 {
            0 => label.to_string(),
            _ => format!("{label}, on a bind queue (to the last bind's fence)"),
        };
        let note = format!(
            "{:.1} % of the no-op rate, the median of the runs' ratios",
            100.0 * median_ratio(&rate, &noop)
        );
        figures.push(figure(
            &label,
            rate,
            json!({"calls_per_run": CALLS, "note": note}),
        ));
    }
    figures.push(figure("no-op ioctl (DRM_IOCTL_VERSION)", noop, json!({})));
    Ok(json!({
        "id": "bind-rate",
        "title": "VM_BIND calls of one operation, synchronous and on a bind queue",
        "unit": "per s",
        "higher_is_better": true,
        "figures": figures,
    }))
}

/// `DRM_IOCTL_VERSION`: the DRM core's cheapest ioctl, the reference for the rate of jobs.
fn noop_rate(dev: &Device, calls: u32) -> Result<f64, String> {
    let start = Instant::now();
    for _ in 0..calls {
        dev.version().map_err(e)?;
    }
    Ok(f64::from(calls) / start.elapsed().as_secs_f64())
}

/// Small jobs (one 4 KiB FILL each): jobs per second submitted back to back, beside the rate of
/// a no-op ioctl; and the time from the submission of one job to its completion seen by WAIT.
fn small_jobs(dev: &Device, runs: u32) -> Result<[Value; 2], String> {
    const JOBS: u32 = 512;
    const LATENCY_SAMPLES: u32 = 64;
    let bo = dev.bo_create(4096).map_err(e)?;
    dev.vm_bind(&[map_op(bo.handle, 0, VA, 4096, false)])
        .map_err(e)?;
    let cmd = [fill_cmd(VA, 4096, 0x5a5a_5a5a_5a5a_5a5a)];
    // The jobs and their reference take turns, so that both see the same machine.
    let (mut rate, mut noop) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        let mut last = 0;
        for _ in 0..JOBS {
            last = dev.submit(&cmd, 0, 0).map_err(e)?;
        }
        dev.wait(last, -1).map_err(e)?;
        rate.push(f64::from(JOBS) / start.elapsed().as_secs_f64());
        noop.push(noop_rate(dev, 4096)?);
    }
    let (mut latency, mut returned) = (Vec::new(), Vec::new());
    for _ in 0..runs * LATENCY_SAMPLES {
        let start = Instant::now();
        let job = dev.submit(&cmd, 0, 0).map_err(e)?;
        returned.push(start.elapsed().as_secs_f64() * 1e6);
        dev.wait(job, -1).map_err(e)?;
        latency.push(start.elapsed().as_secs_f64() * 1e6);
    }
    // The latency in no-op ioctls, a figure that machines of different speeds can compare.
    let in_noops = median(&latency) * median(&noop) / 1e6;
    let mut got = [0u8; 4096];
    dev.read(bo.handle, 0, &mut got).map_err(e)?;
    verify("the small jobs' buffer", &got, |_| 0x5a)?;
    dev.vm_bind(&[unmap_op(VA, 4096)]).map_err(e)?;
    Ok([
        json!({
            "id": "jobs",
            "title": "small jobs (4 KiB FILL)",
            "unit": "per s",
            "higher_is_better": true,
            "figures": [
                figure(
                    "jobs submitted back to back",
                    rate.clone(),
                    json!({
                        "jobs_per_run": JOBS,
                        "note": format!(
                            "{:.1} % of the no-op rate, the median of the runs' ratios",
                            100.0 * median_ratio(&rate, &noop)
                        ),
                    })
                ),
                figure("no-op ioctl (DRM_IOCTL_VERSION)", noop, json!({})),
            ],
        }),
        json!({
            "id": "latency",
            "title": "submit-to-signal latency (4 KiB FILL)",
            "unit": "us",
            "higher_is_better": false,
            "figures": [
                figure(
                    "SUBMIT to WAIT's return",
                    latency,
                    json!({
                        "note": format!(
                            "as long as {in_noops:.1} no-op ioctls (the medians of both)"
                        ),
                    })
                ),
                figure("SUBMIT's return (the job queued, not waited for)", returned, json!({})),
            ],
        }),
    ])
}

/// User queues: small jobs through a queue's doorbell page beside the same jobs through SUBMIT,
/// and the latency of a preemption (a VM_BIND on the queue's VM stops the queue, binds, maps the
/// VM again with a new preemption fence, and resumes it) beside the same VM_BIND on a
/// long-running VM without queues.
fn user_queues(path: &Path, runs: u32) -> Result<[Value; 2], String> {
    const JOBS: u32 = 500;
    const BINDS: u32 = 32;
    let mut q = UserRing::new(path)?;
    let data = q.dev.bo_create(4096).map_err(e)?.into_handle();
    q.dev
        .vm_bind(&[map_op(data, 0, UQ_DATA, 4096, false)])
        .map_err(e)?;
    let plain = Device::open(path).map_err(e)?;
    plain.vm_create(true).map_err(e)?;
    let bo = plain.bo_create(4096).map_err(e)?;
    plain
        .vm_bind(&[map_op(bo.handle, 0, UQ_DATA, 4096, false)])
        .map_err(e)?;
    let cmd = [fill_cmd(UQ_DATA, 4096, 0x5a5a_5a5a_5a5a_5a5a)];
    let (mut queued, mut submitted) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        let mut done = 0;
        for _ in 0..JOBS {
            done = q.run(&[Op::Fill {
                dst: UQ_DATA,
                len: 4096,
                pattern: 0x5a5a_5a5a_5a5a_5a5a,
            }])?;
        }
        q.wait(done)?;
        queued.push(f64::from(JOBS) / start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut last = 0;
        for _ in 0..JOBS {
            last = plain.submit(&cmd, 0, 0).map_err(e)?;
        }
        plain.wait(last, -1).map_err(e)?;
        submitted.push(f64::from(JOBS) / start.elapsed().as_secs_f64());
    }
    let preempted_before = q.dev.info().map_err(e)?.preemptions;
    let extra = q.dev.bo_create(4096).map_err(e)?;
    let other = plain.bo_create(4096).map_err(e)?;
    let (mut with_queue, mut without) = (Vec::new(), Vec::new());
    let time_bind = |dev: &Device, handle: u32| -> Result<f64, String> {
        let va = UQ_DATA + MIB;
        let start = Instant::now();
        dev.vm_bind(&[map_op(handle, 0, va, 4096, false)])
            .map_err(e)?;
        let t = start.elapsed().as_secs_f64() * 1e6;
        dev.vm_bind(&[unmap_op(va, 4096)]).map_err(e)?;
        Ok(t)
    };
    for _ in 0..runs * BINDS {
        with_queue.push(time_bind(&q.dev, extra.handle)?);
        without.push(time_bind(&plain, other.handle)?);
    }
    let preemptions = q.dev.info().map_err(e)?.preemptions - preempted_before;
    Ok([
        json!({
            "id": "user_queue_jobs",
            "title": "small jobs through a user queue (4 KiB FILL)",
            "unit": "per s",
            "higher_is_better": true,
            "figures": [
                figure(
                    "user queue (doorbell page, memory fence)",
                    queued.clone(),
                    json!({
                        "jobs_per_run": JOBS,
                        "note": format!(
                            "{:.1}x SUBMIT's rate, the median of the runs' ratios",
                            median_ratio(&queued, &submitted)
                        ),
                    })
                ),
                figure("SUBMIT, one ioctl per job", submitted, json!({})),
            ],
        }),
        json!({
            "id": "preemption",
            "title": "preemption to resume (a 4 KiB VM_BIND on a long-running VM)",
            "unit": "us",
            "higher_is_better": false,
            "figures": [
                figure(
                    "with a user queue: stop, bind, rearm, resume",
                    with_queue,
                    json!({ "note": format!("{preemptions} preemptions counted") })
                ),
                figure("without user queues", without, json!({})),
            ],
        }),
    ])
}

/// One device copying within its VRAM: buffers set up and mapped, so that only the copies are
/// timed.
struct LocalCopy<'a> {
    dev: &'a Device,
    size: u64,
    _src: Bo<'a>,
    _dst: Bo<'a>,
}

impl<'a> LocalCopy<'a> {
    fn new(dev: &'a Device, size: u64) -> Result<Self, String> {
        let src = dev.bo_create(size).map_err(e)?;
        let dst = dev.bo_create(size).map_err(e)?;
        bind_copy(dev, &src, &dst, size)?;
        Ok(Self {
            dev,
            size,
            _src: src,
            _dst: dst,
        })
    }

    /// The time of one copy of all of the buffer.
    fn run(&self) -> Result<f64, String> {
        time_copy(self.dev, self.size)
    }
}

impl Drop for LocalCopy<'_> {
    fn drop(&mut self) {
        if let Err(err) = unbind_copy(self.dev, self.size) {
            eprintln!("bench-suite: unmapping the copy buffers: {err}");
        }
    }
}

/// Every device copying within its VRAM at once: the aggregate bandwidth, beside one device
/// alone.
fn all_devices(devs: &[Device], size: u64, runs: u32) -> Result<Value, String> {
    let (mut alone, mut aggregate) = (Vec::new(), Vec::new());
    let copies = devs
        .iter()
        .map(|d| LocalCopy::new(d, size))
        .collect::<Result<Vec<_>, _>>()?;
    // One device alone and all at once take turns, so that both see the same machine.
    for _ in 0..runs {
        let first = copies.first().ok_or("no device")?;
        alone.push(mbps(size, first.run()?));
        let start = Arc::new(Barrier::new(copies.len() + 1));
        let secs = thread::scope(|s| {
            let handles: Vec<_> = copies
                .iter()
                .map(|c| {
                    let start = start.clone();
                    s.spawn(move || {
                        start.wait();
                        c.run()
                    })
                })
                .collect();
            start.wait();
            let began = Instant::now();
            for h in handles {
                h.join()
                    .unwrap_or_else(|_| Err("a copy thread panicked".into()))?;
            }
            Ok::<_, String>(began.elapsed().as_secs_f64())
        })?;
        aggregate.push(mbps(size * copies.len() as u64, secs));
    }
    Ok(json!({
        "id": "devices",
        "devices": devs.len(),
        "title": format!("{} devices copying {} MiB within their VRAM", devs.len(), size / MIB),
        "unit": "MB/s",
        "higher_is_better": true,
        "figures": [
            figure(
                &format!("all {} at once, aggregate", devs.len()),
                aggregate.clone(),
                json!({"note": format!(
                    "{:.2}x one alone, the median of the runs' ratios",
                    median_ratio(&aggregate, &alone)
                )})
            ),
            figure("one device alone", alone, json!({})),
        ],
    }))
}

/// Where [`eviction`] binds its two movable buffers.
const VA_MOVE: [u64; 2] = [VA, VA + (1 << 30)];

/// Runs `jobs` jobs that each fill all of one of the two buffers bound at [`VA_MOVE`], taking
/// turns, and waits for them: the seconds taken and the bytes the device moved meanwhile.
fn alternate(dev: &Device, size: u64, jobs: u32) -> Result<(f64, u64), String> {
    let before = dev.info().map_err(e)?.bytes_moved;
    let start = Instant::now();
    let mut last = 0;
    for n in 0..jobs {
        let va = VA_MOVE[(n % 2) as usize];
        last = dev
            .submit(&[fill_cmd(va, size, u64::from(n))], 0, 0)
            .map_err(e)?;
    }
    dev.wait(last, -1).map_err(e)?;
    let secs = start.elapsed().as_secs_f64();
    Ok((secs, dev.info().map_err(e)?.bytes_moved - before))
}

/// One eviction and one return, each timed from the call that causes it to its return: with
/// VRAM full (a VRAM-only buffer takes what the two movable buffers `bufs`, bound at
/// [`VA_MOVE`], leave), `BO_CREATE` of a 2 MiB VRAM-only buffer evicts one of them, and once
/// that buffer is gone, a job that writes 8 bytes of the evicted one brings it back. Returns
/// the bandwidth of the two moves together.
fn evict_and_return(dev: &Device, bufs: &[Bo<'_>; 2], size: u64) -> Result<f64, String> {
    let vram_only = uapi::DRM_CONFLUX_BO_VRAM;
    let avail = dev.info().map_err(e)?.vram_avail;
    let full = dev
        .bo_create_in(avail & !(2 * MIB - 1), vram_only)
        .map_err(e)?;
    let before = dev.info().map_err(e)?.bytes_moved;
    let start = Instant::now();
    let pusher = dev.bo_create_in(2 * MIB, vram_only).map_err(e)?;
    let out = start.elapsed().as_secs_f64();
    let evicted = bufs
        .iter()
        .position(|b| {
            dev.bo_info(b.handle)
                .is_ok_and(|i| i.placement == uapi::DRM_CONFLUX_BO_SYSTEM)
        })
        .ok_or("bench-suite: BO_CREATE in full VRAM evicted neither buffer")?;
    drop(pusher);
    let start = Instant::now();
    let job = dev
        .submit(&[fill_cmd(VA_MOVE[evicted], 8, 1)], 0, 0)
        .map_err(e)?;
    dev.wait(job, -1).map_err(e)?;
    let back = start.elapsed().as_secs_f64();
    let moved = dev.info().map_err(e)?.bytes_moved - before;
    drop(full);
    if moved != 2 * size {
        return Err(format!(
            "bench-suite: {moved} bytes moved by an eviction and a return of {size} bytes"
        ));
    }
    Ok(mbps(moved, out + back))
}

/// Eviction, with two movable buffers of `size` bytes. Rows: the bandwidth of an eviction and
/// a return timed alone ([`evict_and_return`]) beside a plain copy of the same size from VRAM
/// to system memory, and the first of each buffer, which allocates its system pages; and the
/// throughput of jobs that fill the buffers taking turns with room in VRAM for one only (the
/// rest taken by a VRAM-only buffer: each job evicts the other buffer and brings its own back)
/// beside the same jobs with room for both.
fn eviction(dev: &Device, size: u64, runs: u32) -> Result<[Value; 2], String> {
    const JOBS: u32 = 8;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    // The reference: the engine's copy from VRAM to system memory.
    let src = dev.bo_create(size).map_err(e)?;
    let sys = dev
        .bo_create_in(size, uapi::DRM_CONFLUX_BO_SYSTEM)
        .map_err(e)?;
    let plain = repeat(runs, || Ok(mbps(size, run_copy(dev, &src, &sys, size)?)))?;
    drop((src, sys));
    let bufs = [
        dev.bo_create_in(size, both).map_err(e)?,
        dev.bo_create_in(size, both).map_err(e)?,
    ];
    for (bo, va) in bufs.iter().zip(VA_MOVE) {
        dev.vm_bind(&[map_op(bo.handle, 0, va, size, false)])
            .map_err(e)?;
    }
    // Room for both, then for one.
    let fitting = repeat(runs, || {
        let (secs, moved) = alternate(dev, size, JOBS)?;
        if moved != 0 {
            return Err(format!(
                "bench-suite: {moved} bytes moved with room for both"
            ));
        }
        Ok(mbps(size * u64::from(JOBS), secs))
    })?;
    // The first eviction of each buffer allocates its system pages and maps them for the
    // device; they stay with it for its later evictions.
    let mut first = Vec::new();
    for _ in 0..bufs.len() {
        first.push(evict_and_return(dev, &bufs, size)?);
    }
    let mut moves = Vec::new();
    for _ in 0..runs {
        moves.push(evict_and_return(dev, &bufs, size)?);
    }
    let avail = dev.info().map_err(e)?.vram_avail;
    let ballast = dev
        .bo_create_in(
            (avail + size / 2) & !(2 * MIB - 1),
            uapi::DRM_CONFLUX_BO_VRAM,
        )
        .map_err(e)?;
    let mut over = Vec::new();
    for _ in 0..runs {
        let (secs, moved) = alternate(dev, size, JOBS)?;
        // Every job but the first moves one buffer out and the other in.
        if moved < 2 * size * u64::from(JOBS - 1) {
            return Err(format!(
                "bench-suite: {moved} bytes moved by {JOBS} jobs taking turns in room for one"
            ));
        }
        over.push(mbps(size * u64::from(JOBS), secs));
    }
    drop(ballast);
    dev.vm_bind(&[unmap_op(VA_MOVE[0], size), unmap_op(VA_MOVE[1], size)])
        .map_err(e)?;
    let ratio = median_ratio(&moves, &plain);
    Ok([
        json!({
            "id": "evict",
            "title": format!("eviction of {} MiB buffers", size / MIB),
            "unit": "MB/s",
            "higher_is_better": true,
            "figures": [
                figure(
                    "one eviction and one return, each timed alone",
                    moves,
                    json!({"note": format!("{ratio:.2}x the plain copy")}),
                ),
                figure("plain copy, VRAM to system memory", plain, json!({})),
                figure(
                    "the first of each buffer, its system pages allocated",
                    first,
                    json!({}),
                ),
            ],
        }),
        json!({
            "id": "oversubscribed",
            "title": format!("{JOBS} fills of two {} MiB buffers taking turns", size / MIB),
            "unit": "MB/s",
            "higher_is_better": true,
            "figures": [
                figure("room in VRAM for one", over.clone(), json!({"note": format!(
                    "{:.2}x fitting", median_ratio(&over, &fitting)
                )})),
                figure("room in VRAM for both", fitting, json!({})),
            ],
        }),
    ])
}

/// What [`Storage::run`] moves between the NVMe namespace and VRAM of a device, set up once
/// and reused from run to run, as an application keeps its buffers: the device's peer-to-peer
/// memory, a staging buffer of system memory (pages of a memfd, which direct I/O takes,
/// exported by udmabuf and imported by the device) and a VRAM buffer.
pub struct Storage<'a> {
    dev: &'a Device,
    disk: std::fs::File,
    p2p: conflux::Mapping,
    _memfd: std::fs::File,
    sys: conflux::Mapping,
    staging: Bo<'a>,
    bo: Bo<'a>,
    data: Vec<u8>,
}

impl<'a> Storage<'a> {
    /// Sets up `len` bytes of each between `dev` and the NVMe namespace `ns`.
    pub fn new(dev: &'a Device, ns: &Path, len: usize) -> Result<Self, String> {
        use conflux::storage::{open_direct, p2pmem, udmabuf};
        let pci = dev
            .pci_address()
            .ok_or("storage: the device's PCI address is not in sysfs")?;
        let disk = open_direct(ns).map_err(e)?;
        let p2p = p2pmem(&pci, len).map_err(e)?;
        let (memfd, buf) = udmabuf(len as u64).map_err(|err| format!("storage: {err}"))?;
        let sys = conflux::Mapping::of_fd(memfd.as_fd(), 0, len, "memfd").map_err(e)?;
        let staging = dev.import(buf.as_fd()).map_err(e)?;
        let bo = dev.bo_create(len as u64).map_err(e)?;
        Ok(Self {
            dev,
            disk,
            p2p,
            _memfd: memfd,
            sys,
            staging,
            bo,
            data: random_bytes(len, 0x5707_a6e0),
        })
    }

    /// One run of each way, with the data checked: into VRAM directly (`O_DIRECT` into the
    /// peer-to-peer memory) and staged (`O_DIRECT` into the staging buffer, then the engine's
    /// copy to the VRAM buffer), and out of VRAM directly and staged (the engine's copy, then
    /// `O_DIRECT` from the staging buffer). The bandwidths in MB/s, in that order.
    pub fn run(&self) -> Result<[f64; 4], String> {
        use conflux::storage::{read_into, write_from};
        let (dev, disk, p2p, sys) = (self.dev, &self.disk, &self.p2p, &self.sys);
        let len = self.data.len();
        let size = len as u64;
        let data = &self.data;
        let io = |call: &'static str| move |err: std::io::Error| format!("storage: {call}: {err}");
        let timed = |f: &mut dyn FnMut() -> Result<(), String>| -> Result<f64, String> {
            let t = Instant::now();
            f()?;
            Ok(mbps(size, t.elapsed().as_secs_f64()))
        };
        let mut got = vec![0u8; len];
        sys.write(0, data);
        write_from(disk, sys, 0).map_err(io("O_DIRECT write of the data"))?;
        sys.write(0, &got);
        p2p.write(0, &got);
        let direct_in = timed(&mut || read_into(disk, p2p, 0).map_err(io("O_DIRECT into VRAM")))?;
        p2p.read(0, &mut got);
        verify("storage: NVMe to VRAM directly", &got, |i| data[i])?;
        let staged_in = timed(&mut || {
            read_into(disk, sys, 0).map_err(io("O_DIRECT into system memory"))?;
            run_copy(dev, &self.staging, &self.bo, size).map(|_| ())
        })?;
        check(dev, &self.bo, data, "storage: NVMe to VRAM, staged")?;
        let direct_out =
            timed(&mut || write_from(disk, p2p, size).map_err(io("O_DIRECT from VRAM")))?;
        let staged_out = timed(&mut || {
            run_copy(dev, &self.bo, &self.staging, size)?;
            write_from(disk, sys, 2 * size).map_err(io("O_DIRECT from system memory"))
        })?;
        for (offset, what) in [
            (size, "storage: VRAM to NVMe directly"),
            (2 * size, "storage: VRAM to NVMe, staged"),
        ] {
            sys.write(0, &vec![0u8; len]);
            read_into(disk, sys, offset).map_err(io("O_DIRECT read back"))?;
            sys.read(0, &mut got);
            verify(what, &got, |i| data[i])?;
        }
        Ok([direct_in, staged_in, direct_out, staged_out])
    }
}

/// NVMe to and from VRAM, directly and staged through system memory ([`Storage::run`]): two
/// rows, with the device's peer-to-peer memory published (`p2pmem_mib`).
fn storage(dev: &Device, runs: u32) -> Result<[Value; 2], String> {
    const LEN: usize = 8 << 20;
    let ns = conflux::storage::nvme_namespace("cfxnvme0").map_err(e)?;
    let storage = Storage::new(dev, &ns, LEN)?;
    // A first run, not counted, touches every buffer.
    storage.run()?;
    let mut samples = [const { Vec::new() }; 4];
    for _ in 0..runs {
        for (s, v) in samples.iter_mut().zip(storage.run()?) {
            s.push(v);
        }
    }
    let [din, sin, dout, sout] = samples;
    let row = |id: &str, title: String, direct: Vec<f64>, staged: Vec<f64>, via: &str| {
        json!({
            "id": id,
            "title": title,
            "unit": "MB/s",
            "higher_is_better": true,
            "figures": [
                figure("directly (peer-to-peer memory)", direct.clone(), json!({"note": format!(
                    "{:.2}x staged", median_ratio(&direct, &staged)
                )})),
                figure(via, staged, json!({})),
            ],
        })
    };
    Ok([
        row(
            "storage-in",
            format!("{} MiB from NVMe into VRAM, O_DIRECT", LEN >> 20),
            din,
            sin,
            "staged: system memory, then the engine's copy",
        ),
        row(
            "storage-out",
            format!("{} MiB from VRAM to NVMe, O_DIRECT", LEN >> 20),
            dout,
            sout,
            "staged: the engine's copy, then system memory",
        ),
    ])
}

/// `conflux bench-suite [RUNS]`: every figure the guest measures, as one JSON document.
pub fn cmd_bench_suite(paths: &[std::path::PathBuf], runs: u32) -> Result<(), String> {
    if paths.len() < 2 {
        return Err("bench-suite: needs two devices behind one switch".into());
    }
    let devs = paths
        .iter()
        .map(|p| Device::open(p).map_err(e))
        .collect::<Result<Vec<_>, _>>()?;
    let (a, b) = (&devs[0], &devs[1]);
    let size = 64 * MIB;
    // Progress on standard error; the document alone on standard output.
    eprintln!("bench-suite: {} MiB copies, {runs} runs each", size / MIB);
    let mut rows = vec![copies(a, b, size, runs)?];
    eprintln!("bench-suite: binds of 1 GiB");
    rows.push(binds(a, runs)?);
    eprintln!("bench-suite: VM_BIND calls per second");
    rows.push(bind_rates(a, runs)?);
    eprintln!("bench-suite: small jobs, the no-op ioctl, the latency");
    rows.extend(small_jobs(a, runs)?);
    eprintln!("bench-suite: user queues and preemption");
    rows.extend(user_queues(&paths[0], runs)?);
    eprintln!("bench-suite: eviction of {} MiB buffers", size / MIB);
    rows.extend(eviction(a, size, runs)?);
    eprintln!("bench-suite: NVMe to and from VRAM");
    rows.extend(storage(a, runs)?);
    // A bandwidth: copies long enough that the four jobs starting one after another on the
    // guest's one CPU are a small part of the time.
    let size = 256 * MIB;
    eprintln!(
        "bench-suite: {} devices at once, {} MiB each",
        devs.len(),
        size / MIB
    );
    rows.push(all_devices(&devs, size, runs)?);
    println!("{}", json!({"runs": runs, "rows": rows}));
    Ok(())
}

/// A figure's median, formatted for its unit.
fn show(v: f64, unit: &str) -> String {
    match unit {
        "ms" | "us" | "ns/entry" if v < 10.0 => format!("{v:.2} {unit}"),
        _ => format!("{v:.0} {unit}"),
    }
}

/// The text table of a report that `make bench` completed.
fn table(report: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for row in report["rows"].as_array().into_iter().flatten() {
        let unit = row["unit"].as_str().unwrap_or("");
        out.push(format!(
            "{} ({unit}):",
            row["title"].as_str().unwrap_or("?")
        ));
        for f in row["figures"].as_array().into_iter().flatten() {
            let v = &f["value"];
            let (med, min, max) = (
                v["median"].as_f64().unwrap_or(f64::NAN),
                v["min"].as_f64().unwrap_or(f64::NAN),
                v["max"].as_f64().unwrap_or(f64::NAN),
            );
            let note = f["note"]
                .as_str()
                .map_or(String::new(), |n| format!("; {n}"));
            out.push(format!(
                "  {:<40} {:>14}   (min {}, max {}, {} runs){note}",
                f["label"].as_str().unwrap_or("?"),
                show(med, unit),
                show(min, unit),
                show(max, unit),
                v["runs"].as_u64().unwrap_or(0),
            ));
        }
    }
    out
}

/// Colours of the first figure of a row and of its references.
const COLOURS: [[u8; 3]; 4] = [
    [230, 120, 30],
    [60, 110, 200],
    [90, 170, 90],
    [150, 150, 150],
];

/// `conflux render-bench FILE [--png OUT]`: prints the table of the report `make bench` wrote
/// to FILE and, with `--png`, draws it as a chart: one panel per row, a bar per figure, each
/// scaled to the row's largest median, with its range.
pub fn cmd_render(file: &Path, png: Option<&Path>) -> Result<(), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| format!("render-bench: reading {}: {err}", file.display()))?;
    let report: Value = serde_json::from_str(&text)
        .map_err(|err| format!("render-bench: {}: {err}", file.display()))?;
    for line in table(&report) {
        println!("{line}");
    }
    let Some(out) = png else {
        return Ok(());
    };
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    let (width, bar_h, gap, title_h) = (900u32, 18u32, 6u32, 22u32);
    let height: u32 = 20
        + rows
            .iter()
            .map(|r| {
                let n = r["figures"].as_array().map_or(0, Vec::len) as u32;
                title_h + n * (bar_h + gap) + 14
            })
            .sum::<u32>();
    let mut c = Canvas::new(width, height, [255, 255, 255]);
    let (left, right) = (300u32, 140u32);
    let span = width - left - right;
    let mut y = 10;
    for row in &rows {
        let unit = row["unit"].as_str().unwrap_or("");
        c.text(10, y, 3, row["title"].as_str().unwrap_or("?"), [0, 0, 0]);
        y += title_h;
        let figs = row["figures"].as_array().cloned().unwrap_or_default();
        let top = figs
            .iter()
            .filter_map(|f| f["value"]["max"].as_f64())
            .fold(0.0f64, f64::max)
            .max(1e-12);
        for (i, f) in figs.iter().enumerate() {
            let v = &f["value"];
            let px = |x: f64| {
                (x / top * f64::from(span))
                    .round()
                    .clamp(0.0, f64::from(span)) as u32
            };
            let med = v["median"].as_f64().unwrap_or(0.0);
            let (lo, hi) = (
                v["min"].as_f64().unwrap_or(med),
                v["max"].as_f64().unwrap_or(med),
            );
            c.text(
                20,
                y + 4,
                2,
                f["label"].as_str().unwrap_or("?"),
                [40, 40, 40],
            );
            c.rect(
                left,
                y,
                px(med).max(1),
                bar_h,
                COLOURS[i.min(COLOURS.len() - 1)],
            );
            // The range of the runs, as a line across the bar's end.
            let (a, b) = (px(lo), px(hi));
            c.rect(left + a, y + bar_h / 2 - 1, (b - a).max(1), 3, [0, 0, 0]);
            c.text(left + span + 8, y + 4, 2, &show(med, unit), [0, 0, 0]);
            y += bar_h + gap;
        }
        y += 14;
    }
    c.save(out)
        .map_err(|err| format!("render-bench: writing {}: {err}", out.display()))?;
    println!("chart: {}", out.display());
    Ok(())
}
