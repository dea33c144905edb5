// SPDX-License-Identifier: GPL-2.0

//! `conflux`: the command-line tool for Conflux accel devices.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use conflux::{
    copy_cmd, devices, fill_cmd, map_op, parse_size, placement_name, uapi, unmap_op, Bo, Cmd,
    Device, Info,
};
use conflux_device::ring::Op;
use serde_json::{json, Value};

mod matrix;
mod png;
mod suite;
mod userq;

const HELP: &str = "\
usage: conflux [--device PATH] [--json] COMMAND [ARGS]

Commands:
  info          describe the device (every Conflux device without --device)
  alloc SIZE    create a zeroed VRAM buffer of SIZE bytes (K, M, G suffixes),
                report the VRAM and engine bytes it took, and free it
  copy SIZE [SRC_OFFSET [DST_OFFSET]]
                copy SIZE bytes of a random pattern between two new buffers
                with the engine, at the byte offsets given (default 0), and
                check every byte of the destination buffer
  fill SIZE [OFFSET [PATTERN]]
                fill SIZE bytes of a new buffer from OFFSET with the 8-byte
                PATTERN (hex, default 0x0807060504030201) and check every byte
  bench [SIZE [ITERATIONS]]
                measure the engine's copy bandwidth (within VRAM unless
                --src-in or --dst-in say otherwise) with
                ITERATIONS (default 8) copies of SIZE bytes (default 32M);
                with --long-running, through a user queue and through SUBMIT
  matrix [SIZE]  copy SIZE bytes (default 16M) from each device's VRAM to
                every device's VRAM, run by the source device: through its
                own VRAM, peer to peer (switch or host bridge), or, where the
                topology has no route, staged through system memory; check
                the data and the devices' byte counters, print the matrix of
                path and bandwidth (--png FILE: also as a heatmap picture)
  render-matrix FILE
                print (and with --png, draw) the matrix that --json matrix
                wrote to FILE, without any device
  bench-suite [RUNS]
                the figures of `make bench` that the devices give, each the
                median of RUNS runs (default 5) with its range, as one JSON
                document: 64 MiB copies (peer to peer, staged through system
                memory, local), a bind of 1 GiB with 2 MiB and 4 KiB pages,
                small jobs beside a no-op ioctl, the submit-to-signal
                latency, small jobs through a user queue beside SUBMIT, the
                preemption-to-resume latency, and every device copying at
                once beside one alone
  render-bench FILE
                print (and with --png, draw as a chart) the report of
                `make bench` in FILE, without any device
  storage-bench [SIZE]
                move SIZE bytes (default 8M) between the rig's NVMe namespace
                (serial cfxnvme0) and the device's VRAM with O_DIRECT, both
                ways: directly through the device's peer-to-peer memory
                (the driver loaded with p2pmem_mib) and staged through
                system memory, in the same run, with the data checked
  p2p-bench [SIZE]
                copy SIZE bytes (default 64M) from the first device's VRAM to
                the second's peer to peer, and the same staged through system
                memory, and print both bandwidths

Options:
  --device PATH  the accel node, for instance /dev/accel/accel0
  --json         print one JSON document instead of text
  --src-in MEM, --dst-in MEM
                 copy, fill, bench: put the source or the destination buffer
                 in MEM: vram (the default), system (system memory), or any
                 (VRAM when it has room, else system memory)
  --mmap         copy, fill: write the source and check the result through
                 mmap() of the buffers instead of BO_WRITE and BO_READ
  --png FILE     matrix: write the matrix as a PNG heatmap; render-bench: draw
                 the report as a PNG chart
  --host-memcpy MBPS
                 bench: the host's memcpy bandwidth, measured in the same run
                 (conflux-emu memcpy-bench), printed beside the device's
  --long-running bench: run the copies through a user queue of a
                 long-running VM (command slots in a ring, a doorbell page,
                 a memory fence per copy; no system call per job), beside
                 the same copies through SUBMIT on that VM
  --help         this text

Errors name the device and the failing call; the exit status is 1 when a
call fails and 2 for a usage error.";

struct Options {
    device: Option<PathBuf>,
    json: bool,
    host_memcpy: Option<f64>,
    src_in: u32,
    dst_in: u32,
    mmap: bool,
    long_running: bool,
    png: Option<PathBuf>,
    command: Vec<String>,
}

fn placement_arg(option: &str, v: Option<&String>) -> Result<u32, String> {
    match v.map(String::as_str) {
        Some("vram") => Ok(uapi::DRM_CONFLUX_BO_VRAM),
        Some("system") => Ok(uapi::DRM_CONFLUX_BO_SYSTEM),
        Some("any") => Ok(uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM),
        Some(other) => Err(format!("{option}: {other:?} is not vram, system or any")),
        None => Err(format!("{option} needs vram, system or any")),
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        device: None,
        json: false,
        host_memcpy: None,
        src_in: uapi::DRM_CONFLUX_BO_VRAM,
        dst_in: uapi::DRM_CONFLUX_BO_VRAM,
        mmap: false,
        long_running: false,
        png: None,
        command: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" | "-d" => {
                let v = it.next().ok_or("--device needs a path")?;
                o.device = Some(PathBuf::from(v));
            }
            "--json" => o.json = true,
            "--mmap" => o.mmap = true,
            "--long-running" => o.long_running = true,
            "--png" => o.png = Some(PathBuf::from(it.next().ok_or("--png needs a file")?)),
            "--src-in" => o.src_in = placement_arg(a, it.next())?,
            "--dst-in" => o.dst_in = placement_arg(a, it.next())?,
            "--host-memcpy" => {
                let v = it.next().ok_or("--host-memcpy needs a bandwidth in MB/s")?;
                let mbps = v.parse::<f64>().ok().filter(|m| *m > 0.0);
                o.host_memcpy =
                    Some(mbps.ok_or(format!("--host-memcpy: {v:?} is not a bandwidth"))?);
            }
            s if s.starts_with('-') && o.command.is_empty() => {
                return Err(format!("unknown option {s}"))
            }
            s => o.command.push(s.to_string()),
        }
    }
    Ok(o)
}

const CAPS: [&str; 8] = [
    "copy",
    "fill",
    "fence",
    "timestamp",
    "mmu-2m",
    "peer-p2p",
    "mmu-null",
    "queues",
];

fn caps_names(caps: u32) -> Vec<&'static str> {
    CAPS.iter()
        .enumerate()
        .filter(|(i, _)| caps & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn info_json(dev: &Device, i: &Info) -> Value {
    json!({
        "device": dev.path().display().to_string(),
        "pci": dev.pci_address(),
        "version": format!("{}.{}", i.version >> 16, i.version & 0xffff),
        "caps": i.caps,
        "caps_names": caps_names(i.caps),
        "vram_size": i.vram_size,
        "vram_avail": i.vram_avail,
        "va_start": i.va_start,
        "va_end": i.va_end,
        "counters": {
            "local_bytes": i.local_bytes,
            "p2p_bytes": i.p2p_bytes,
            "sysmem_bytes": i.sysmem_bytes,
            "commands": i.commands,
            "errors": i.errors,
        },
        "moves": {
            "evictions": i.evictions,
            "returns": i.returns,
            "bytes_moved": i.bytes_moved,
        },
        "user_queues": {
            "preemptions": i.preemptions,
            "killed": i.queues_killed,
        },
    })
}

fn info_text(dev: &Device, i: &Info) -> String {
    format!(
        "{} ({}): Conflux {}.{}, capabilities {:#x} ({})\n  \
         VRAM {} MiB, {} KiB available\n  \
         VA range {:#x}..{:#x}\n  \
         engine: {} commands, {} errors; local {} bytes, p2p {} bytes, system memory {} bytes\n  \
         moves: {} evictions, {} returns, {} bytes moved\n  \
         user queues: {} preemptions, {} killed",
        dev.path().display(),
        dev.pci_address().unwrap_or_else(|| "?".into()),
        i.version >> 16,
        i.version & 0xffff,
        i.caps,
        caps_names(i.caps).join(" "),
        i.vram_size >> 20,
        i.vram_avail >> 10,
        i.va_start,
        i.va_end,
        i.commands,
        i.errors,
        i.local_bytes,
        i.p2p_bytes,
        i.sysmem_bytes,
        i.evictions,
        i.returns,
        i.bytes_moved,
        i.preemptions,
        i.queues_killed
    )
}

fn targets(o: &Options) -> Result<Vec<PathBuf>, String> {
    match &o.device {
        Some(p) => Ok(vec![p.clone()]),
        None => {
            let found = devices();
            if found.is_empty() {
                Err("no Conflux device: /sys/class/accel has no device bound to conflux".into())
            } else {
                Ok(found)
            }
        }
    }
}

fn open(path: &Path) -> Result<Device, String> {
    Device::open(path).map_err(|e| e.to_string())
}

/// `conflux storage-bench [SIZE]`: SIZE bytes between the rig's first NVMe namespace and the
/// device's VRAM, directly and staged through system memory, both ways, with the data checked.
fn cmd_storage_bench(o: &Options, size: u64) -> Result<(), String> {
    let (_, dev) = first_device(o)?;
    let ns = conflux::storage::nvme_namespace("cfxnvme0").map_err(|e| e.to_string())?;
    let len = usize::try_from(size).map_err(|e| e.to_string())?;
    let storage = suite::Storage::new(&dev, &ns, len)?;
    // A first run, not counted, touches every buffer.
    storage.run()?;
    let [din, sin, dout, sout] = storage.run()?;
    if o.json {
        println!(
            "{}",
            json!({"size": size, "nvme_to_vram": {"direct": din, "staged": sin},
                   "vram_to_nvme": {"direct": dout, "staged": sout}})
        );
    } else {
        let mib = size >> 20;
        println!("{mib} MiB, {} and {}:", ns.display(), dev.path().display());
        for (way, direct, staged) in [("NVMe to VRAM", din, sin), ("VRAM to NVMe", dout, sout)] {
            println!(
                "  {way}: directly {direct:.0} MB/s, staged through system memory {staged:.0} \
                 MB/s ({:.2}x)",
                direct / staged
            );
        }
    }
    Ok(())
}

fn cmd_info(o: &Options) -> Result<(), String> {
    let mut all = Vec::new();
    for path in targets(o)? {
        let dev = open(&path)?;
        let info = dev.info().map_err(|e| e.to_string())?;
        if o.json {
            all.push(info_json(&dev, &info));
        } else {
            println!("{}", info_text(&dev, &info));
        }
    }
    if o.json {
        println!("{}", Value::Array(all));
    }
    Ok(())
}

fn cmd_alloc(o: &Options, size: &str) -> Result<(), String> {
    let size = parse_size(size).ok_or_else(|| format!("alloc: size {size:?} is not a size"))?;
    let path = targets(o)?.into_iter().next().ok_or("no device")?;
    let dev = open(&path)?;
    let before = dev.info().map_err(|e| e.to_string())?;
    let bo = dev.bo_create(size).map_err(|e| e.to_string())?;
    let during = dev.info().map_err(|e| e.to_string())?;
    let (handle, bo_size) = (bo.handle, bo.size);
    drop(bo);
    let after = dev.info().map_err(|e| e.to_string())?;
    let taken = before.vram_avail - during.vram_avail;
    let scrubbed = during.local_bytes.wrapping_sub(before.local_bytes);
    if o.json {
        println!(
            "{}",
            json!({
                "device": path.display().to_string(),
                "requested": size,
                "size": bo_size,
                "handle": handle,
                "vram_taken": taken,
                "engine_bytes": scrubbed,
                "vram_avail_before": before.vram_avail,
                "vram_avail_after_free": after.vram_avail,
            })
        );
    } else {
        println!(
            "{}: buffer {handle}, {bo_size} bytes (asked {size}): took {taken} bytes of VRAM, \
             zeroed by the engine ({scrubbed} bytes); after close {} of {} bytes available again",
            path.display(),
            after.vram_avail - during.vram_avail,
            taken
        );
    }
    Ok(())
}

/// Where the commands map their source and destination buffers.
const VA_SRC: u64 = 1 << 32;
const VA_DST: u64 = 2 << 32;
const PAGE: u64 = 4096;

fn round_up(n: u64) -> Result<u64, String> {
    n.checked_add(PAGE - 1)
        .map(|n| n & !(PAGE - 1))
        .ok_or_else(|| format!("size {n:#x} is too large"))
}

fn size_arg(what: &str, s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("{what} {s:?} is not a size"))
}

/// `len` bytes of a deterministic pseudo-random pattern (xorshift64).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Splits a transfer of `len` bytes into commands of at most the largest command length.
fn split(len: u64, mut make: impl FnMut(u64, u64) -> Cmd) -> Vec<Cmd> {
    let max = uapi::DRM_CONFLUX_MAX_CMD_LEN;
    (0..len.div_ceil(max))
        .map(|i| make(i * max, (len - i * max).min(max)))
        .collect()
}

/// Checks `got` against `want`, naming the first wrong byte.
fn verify(what: &str, got: &[u8], want: impl Fn(usize) -> u8) -> Result<(), String> {
    match got.iter().enumerate().find(|&(i, b)| *b != want(i)) {
        Some((i, b)) => Err(format!(
            "{what}: byte {i:#x} is {b:#04x}, expected {:#04x}",
            want(i)
        )),
        None => Ok(()),
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-9) / 1e6
}

/// Where buffer `bo` was placed.
fn where_is(dev: &Device, bo: &Bo<'_>) -> Result<&'static str, String> {
    let info = dev.bo_info(bo.handle).map_err(|e| e.to_string())?;
    Ok(placement_name(info.placement))
}

/// Writes `data` at the start of `bo`, through mmap() with `--mmap`.
fn put(o: &Options, dev: &Device, bo: &Bo<'_>, data: &[u8]) -> Result<(), String> {
    if o.mmap {
        dev.map(bo.handle)
            .map_err(|e| e.to_string())?
            .write(0, data);
        Ok(())
    } else {
        dev.write(bo.handle, 0, data).map_err(|e| e.to_string())
    }
}

/// Reads all of `bo`, through mmap() with `--mmap`.
fn get(o: &Options, dev: &Device, bo: &Bo<'_>) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; bo.size as usize];
    if o.mmap {
        dev.map(bo.handle)
            .map_err(|e| e.to_string())?
            .read(0, &mut out);
    } else {
        dev.read(bo.handle, 0, &mut out)
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn first_device(o: &Options) -> Result<(PathBuf, Device), String> {
    let path = targets(o)?.into_iter().next().ok_or("no device")?;
    let dev = open(&path)?;
    Ok((path, dev))
}

fn cmd_copy(o: &Options, size: &str, rest: &[&str]) -> Result<(), String> {
    let size = size_arg("copy: size", size)?;
    let src_off = rest
        .first()
        .map_or(Ok(0), |s| size_arg("copy: source offset", s))?;
    let dst_off = rest
        .get(1)
        .map_or(Ok(0), |s| size_arg("copy: destination offset", s))?;
    if size == 0 {
        return Err("copy: size 0: nothing to copy".into());
    }
    let (path, dev) = first_device(o)?;
    let e = |e: conflux::Error| e.to_string();
    let src = dev
        .bo_create_in(round_up(src_off + size)?, o.src_in)
        .map_err(e)?;
    let dst = dev
        .bo_create_in(round_up(dst_off + size)?, o.dst_in)
        .map_err(e)?;
    let data = random_bytes(src.size as usize, 0x9e37_79b9_7f4a_7c15 ^ size);
    put(o, &dev, &src, &data)?;
    dev.vm_bind(&[
        map_op(src.handle, 0, VA_SRC, src.size, true),
        map_op(dst.handle, 0, VA_DST, dst.size, false),
    ])
    .map_err(e)?;
    let cmds = split(size, |at, n| {
        copy_cmd(VA_SRC + src_off + at, VA_DST + dst_off + at, n)
    });
    let start = Instant::now();
    let job = dev.submit(&cmds, 0, 0).map_err(e)?;
    dev.wait(job, -1).map_err(e)?;
    let secs = start.elapsed().as_secs_f64();
    let out = get(o, &dev, &dst)?;
    dev.vm_bind(&[unmap_op(VA_SRC, src.size), unmap_op(VA_DST, dst.size)])
        .map_err(e)?;
    let (s, d, n) = (src_off as usize, dst_off as usize, size as usize);
    verify("copy: destination", &out, |i| {
        if i >= d && i < d + n {
            data[i - d + s]
        } else {
            0
        }
    })?;
    report(
        o,
        json!({"device": path.display().to_string(), "command": "copy", "bytes": size,
               "src_offset": src_off, "dst_offset": dst_off, "verified": true,
               "src_in": where_is(&dev, &src)?, "dst_in": where_is(&dev, &dst)?,
               "cpu_access": if o.mmap { "mmap" } else { "ioctl" },
               "seconds": secs, "mb_per_s": mbps(size, secs)}),
        format!(
            "{}: copied {size} bytes from offset {src_off} in {} to offset {dst_off} in {}: \
             all {} bytes of the destination buffer verified{}; {:.3} ms, {:.0} MB/s",
            path.display(),
            where_is(&dev, &src)?,
            where_is(&dev, &dst)?,
            dst.size,
            if o.mmap { " through mmap()" } else { "" },
            secs * 1e3,
            mbps(size, secs)
        ),
    );
    Ok(())
}

fn cmd_fill(o: &Options, size: &str, rest: &[&str]) -> Result<(), String> {
    let size = size_arg("fill: size", size)?;
    let off = rest
        .first()
        .map_or(Ok(0), |s| size_arg("fill: offset", s))?;
    let pattern = match rest.get(1) {
        None => 0x0807_0605_0403_0201,
        Some(p) => u64::from_str_radix(p.trim_start_matches("0x"), 16)
            .map_err(|_| format!("fill: pattern {p:?} is not a hexadecimal number"))?,
    };
    if size == 0 {
        return Err("fill: size 0: nothing to fill".into());
    }
    let (path, dev) = first_device(o)?;
    let e = |e: conflux::Error| e.to_string();
    let bo = dev
        .bo_create_in(round_up(off + size)?, o.dst_in)
        .map_err(e)?;
    dev.vm_bind(&[map_op(bo.handle, 0, VA_DST, bo.size, false)])
        .map_err(e)?;
    let cmds = split(size, |at, n| {
        // Each command starts the pattern again at its own first byte.
        let pattern = pattern.rotate_right(8 * (at % 8) as u32);
        fill_cmd(VA_DST + off + at, n, pattern)
    });
    let start = Instant::now();
    let job = dev.submit(&cmds, 0, 0).map_err(e)?;
    dev.wait(job, -1).map_err(e)?;
    let secs = start.elapsed().as_secs_f64();
    let out = get(o, &dev, &bo)?;
    dev.vm_bind(&[unmap_op(VA_DST, bo.size)]).map_err(e)?;
    let bytes = pattern.to_le_bytes();
    let (o0, n) = (off as usize, size as usize);
    verify("fill: buffer", &out, |i| {
        if i >= o0 && i < o0 + n {
            bytes[(i - o0) % 8]
        } else {
            0
        }
    })?;
    report(
        o,
        json!({"device": path.display().to_string(), "command": "fill", "bytes": size,
               "offset": off, "pattern": format!("{pattern:#018x}"), "verified": true,
               "dst_in": where_is(&dev, &bo)?,
               "cpu_access": if o.mmap { "mmap" } else { "ioctl" },
               "seconds": secs, "mb_per_s": mbps(size, secs)}),
        format!(
            "{}: filled {size} bytes from offset {off} in {} with {pattern:#018x}: all {} \
             bytes of the buffer verified{}; {:.3} ms, {:.0} MB/s",
            path.display(),
            where_is(&dev, &bo)?,
            bo.size,
            if o.mmap { " through mmap()" } else { "" },
            secs * 1e3,
            mbps(size, secs)
        ),
    );
    Ok(())
}

fn cmd_bench(o: &Options, rest: &[&str]) -> Result<(), String> {
    let size = rest
        .first()
        .map_or(Ok(32 << 20), |s| size_arg("bench: size", s))?;
    let iterations: u64 = match rest.get(1) {
        None => 8,
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("bench: iterations {s:?} is not a positive number"))?,
    };
    if size == 0 || size % PAGE != 0 {
        return Err(format!(
            "bench: size {size} is not a non-zero multiple of 4 KiB"
        ));
    }
    if o.long_running {
        return bench_user_queue(o, size, iterations);
    }
    let (path, dev) = first_device(o)?;
    let e = |e: conflux::Error| e.to_string();
    let src = dev.bo_create_in(size, o.src_in).map_err(e)?;
    let dst = dev.bo_create_in(size, o.dst_in).map_err(e)?;
    dev.vm_bind(&[
        map_op(src.handle, 0, VA_SRC, size, true),
        map_op(dst.handle, 0, VA_DST, size, false),
    ])
    .map_err(e)?;
    let cmds = split(size, |at, n| copy_cmd(VA_SRC + at, VA_DST + at, n));
    // One copy first, so that the measured ones find everything in place.
    let job = dev.submit(&cmds, 0, 0).map_err(e)?;
    dev.wait(job, -1).map_err(e)?;
    let start = Instant::now();
    let mut last = 0;
    for _ in 0..iterations {
        last = dev.submit(&cmds, 0, 0).map_err(e)?;
    }
    dev.wait(last, -1).map_err(e)?;
    let secs = start.elapsed().as_secs_f64();
    dev.vm_bind(&[unmap_op(VA_SRC, size), unmap_op(VA_DST, size)])
        .map_err(e)?;
    let device = mbps(size * iterations, secs);
    let (src_in, dst_in) = (where_is(&dev, &src)?, where_is(&dev, &dst)?);
    let host = match o.host_memcpy {
        Some(h) => format!(
            "host memcpy {h:.0} MB/s (device at {:.0}% of it)",
            100.0 * device / h
        ),
        None => "host memcpy not measured (pass --host-memcpy MBPS from conflux-emu \
                 memcpy-bench)"
            .into(),
    };
    report(
        o,
        json!({"device": path.display().to_string(), "command": "bench", "bytes": size,
               "iterations": iterations, "seconds": secs, "device_copy_mb_per_s": device,
               "src_in": src_in, "dst_in": dst_in, "host_memcpy_mb_per_s": o.host_memcpy}),
        format!(
            "{}: device copy {} x {iterations} from {src_in} to {dst_in}: {device:.0} MB/s; \
             {host}",
            path.display(),
            human(size)
        ),
    );
    Ok(())
}

/// `conflux bench --long-running`: `iterations` copies of `size` bytes through a user queue of a
/// long-running VM, each a job that ends with a memory fence, beside the same jobs through
/// SUBMIT on the same VM.
fn bench_user_queue(o: &Options, size: u64, iterations: u64) -> Result<(), String> {
    let (path, _) = first_device(o)?;
    let e = |e: conflux::Error| e.to_string();
    let mut q = userq::UserRing::new(&path)?;
    let (src_va, dst_va) = (
        userq::UQ_DATA,
        userq::UQ_DATA + size.next_multiple_of(2 << 20),
    );
    // Closed with the queue's file.
    let src = q.dev.bo_create_in(size, o.src_in).map_err(e)?.into_handle();
    let dst = q.dev.bo_create_in(size, o.dst_in).map_err(e)?.into_handle();
    q.dev
        .vm_bind(&[
            map_op(src, 0, src_va, size, true),
            map_op(dst, 0, dst_va, size, false),
        ])
        .map_err(e)?;
    let max = uapi::DRM_CONFLUX_MAX_CMD_LEN;
    let ops: Vec<Op> = (0..size.div_ceil(max))
        .map(|i| Op::Copy {
            src: src_va + i * max,
            dst: dst_va + i * max,
            len: (size - i * max).min(max),
        })
        .collect();
    let cmds = split(size, |at, n| copy_cmd(src_va + at, dst_va + at, n));
    // One copy first, so that the measured ones find everything in place.
    let first = q.run(&ops)?;
    q.wait(first)?;
    let start = Instant::now();
    let mut last = first;
    for _ in 0..iterations {
        last = q.run(&ops)?;
    }
    q.wait(last)?;
    let queued = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut job = 0;
    for _ in 0..iterations {
        job = q.dev.submit(&cmds, 0, 0).map_err(e)?;
    }
    q.dev.wait(job, -1).map_err(e)?;
    let submitted = start.elapsed().as_secs_f64();
    let (uq, sub) = (
        mbps(size * iterations, queued),
        mbps(size * iterations, submitted),
    );
    // CAST: iteration counts fit in an f64.
    let rate = |secs: f64| iterations as f64 / secs;
    report(
        o,
        json!({"device": path.display().to_string(), "command": "bench", "long_running": true,
               "bytes": size, "iterations": iterations,
               "user_queue": {"seconds": queued, "mb_per_s": uq, "jobs_per_s": rate(queued)},
               "submit": {"seconds": submitted, "mb_per_s": sub, "jobs_per_s": rate(submitted)}}),
        format!(
            "{}: device copy {} x {iterations} on a long-running VM: user queue {uq:.0} MB/s \
             ({:.0} jobs/s), SUBMIT {sub:.0} MB/s ({:.0} jobs/s)",
            path.display(),
            human(size),
            rate(queued),
            rate(submitted)
        ),
    );
    Ok(())
}

/// The size argument of `command`, or `default`: a non-zero multiple of 4 KiB.
fn pages_arg(command: &str, arg: Option<&&str>, default: u64) -> Result<u64, String> {
    let size = arg.map_or(Ok(default), |s| size_arg(&format!("{command}: size"), s))?;
    if size == 0 || size % PAGE != 0 {
        return Err(format!(
            "{command}: size {size} is not a non-zero multiple of 4 KiB"
        ));
    }
    Ok(size)
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn report(o: &Options, json: Value, text: String) {
    if o.json {
        println!("{json}");
    } else {
        println!("{text}");
    }
}

fn run(o: &Options) -> Result<(), String> {
    match o
        .command
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["info"] => cmd_info(o),
        ["alloc", size] => cmd_alloc(o, size),
        ["copy", size, rest @ ..] if rest.len() <= 2 => cmd_copy(o, size, rest),
        ["fill", size, rest @ ..] if rest.len() <= 2 => cmd_fill(o, size, rest),
        ["bench", rest @ ..] if rest.len() <= 2 => cmd_bench(o, rest),
        ["matrix", rest @ ..] if rest.len() <= 1 => {
            let size = pages_arg("matrix", rest.first(), 16 << 20)?;
            matrix::cmd_matrix(o.json, &targets(o)?, size, o.png.as_deref())
        }
        ["render-matrix", file] => matrix::cmd_render(Path::new(file), o.png.as_deref()),
        ["bench-suite", rest @ ..] if rest.len() <= 1 => {
            let runs = match rest.first() {
                Some(r) => r
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| (1..=100).contains(&n))
                    .ok_or_else(|| format!("bench-suite: runs {r:?} is not 1 to 100"))?,
                None => 5,
            };
            suite::cmd_bench_suite(&devices(), runs)
        }
        ["render-bench", file] => suite::cmd_render(Path::new(file), o.png.as_deref()),
        ["storage-bench", rest @ ..] if rest.len() <= 1 => {
            let size = pages_arg("storage-bench", rest.first(), 8 << 20)?;
            cmd_storage_bench(o, size)
        }
        ["p2p-bench", rest @ ..] if rest.len() <= 1 => {
            let size = pages_arg("p2p-bench", rest.first(), 64 << 20)?;
            matrix::cmd_p2p_bench(o.json, &devices(), size)
        }
        _ => Err(String::new()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let o = match parse(&args) {
        Ok(o) if !o.command.is_empty() => o,
        Ok(_) => {
            eprintln!("{HELP}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("conflux: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_empty() => {
            eprintln!(
                "conflux: unknown command {:?}\n\n{HELP}",
                o.command.join(" ")
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("conflux: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conflux::uapi;

    #[test]
    fn options() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse(&a("--json --device /dev/accel/accel1 info")).unwrap();
        assert!(o.json);
        assert_eq!(o.device.as_deref(), Some(Path::new("/dev/accel/accel1")));
        assert_eq!(o.command, ["info"]);
        assert!(parse(&a("--bogus info")).is_err());
        assert!(parse(&a("--device")).is_err());
    }

    #[test]
    fn capability_names() {
        assert_eq!(caps_names(0x7f).len(), 7);
        assert_eq!(caps_names(uapi::DRM_CONFLUX_CAP_FILL), ["fill"]);
    }
}
