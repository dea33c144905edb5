// SPDX-License-Identifier: GPL-2.0

//! `conflux matrix` and `conflux p2p-bench`: copies between every pair of devices, through the
//! path the topology allows, proven by the devices' byte counters.

use std::{os::fd::AsFd, path::Path, time::Instant};

use conflux::{copy_cmd, map_op, path_name, uapi, unmap_op, Bo, Device, Info};
use serde_json::{json, Value};

use crate::{human, mbps, random_bytes, split, verify};

const VA_SRC: u64 = 1 << 32;
const VA_DST: u64 = 2 << 32;

/// The byte counters of a device.
#[derive(Clone, Copy)]
struct Counters {
    local: u64,
    p2p: u64,
    sysmem: u64,
}

fn counters(dev: &Device) -> Result<Counters, String> {
    let i: Info = dev.info().map_err(|e| e.to_string())?;
    Ok(Counters {
        local: i.local_bytes,
        p2p: i.p2p_bytes,
        sysmem: i.sysmem_bytes,
    })
}

fn delta(after: Counters, before: Counters) -> Counters {
    Counters {
        local: after.local - before.local,
        p2p: after.p2p - before.p2p,
        sysmem: after.sysmem - before.sysmem,
    }
}

/// Runs one copy of `size` bytes from `src` to `dst` (both mapped in `dev`'s VM) and waits.
pub(crate) fn run_copy(dev: &Device, src: &Bo<'_>, dst: &Bo<'_>, size: u64) -> Result<f64, String> {
    bind_copy(dev, src, dst, size)?;
    let done = time_copy(dev, size);
    unbind_copy(dev, size)?;
    done
}

/// Maps `src` and `dst` where [`time_copy`] copies from and to.
pub(crate) fn bind_copy(dev: &Device, src: &Bo<'_>, dst: &Bo<'_>, size: u64) -> Result<(), String> {
    dev.vm_bind(&[
        map_op(src.handle, 0, VA_SRC, size, true),
        map_op(dst.handle, 0, VA_DST, size, false),
    ])
    .map_err(|e| e.to_string())
}

/// Undoes [`bind_copy`].
pub(crate) fn unbind_copy(dev: &Device, size: u64) -> Result<(), String> {
    dev.vm_bind(&[unmap_op(VA_SRC, size), unmap_op(VA_DST, size)])
        .map_err(|e| e.to_string())
}

/// The time of one copy of `size` bytes between the buffers [`bind_copy`] mapped: SUBMIT to
/// WAIT's return.
pub(crate) fn time_copy(dev: &Device, size: u64) -> Result<f64, String> {
    let cmds = split(size, |at, n| copy_cmd(VA_SRC + at, VA_DST + at, n));
    let start = Instant::now();
    dev.submit(&cmds, 0, 0)
        .and_then(|job| dev.wait(job, -1))
        .map_err(|e| e.to_string())?;
    Ok(start.elapsed().as_secs_f64())
}

/// One copy from device `a`'s VRAM to device `b`'s VRAM.
struct Pair {
    path: &'static str,
    secs: f64,
    /// Counter deltas of the two devices.
    on_a: Counters,
    on_b: Counters,
    /// Whether the counters show the path.
    counted: bool,
}

/// Copies `size` bytes of `data` from a VRAM buffer of `a` to a VRAM buffer of `b`: directly
/// when `b`'s buffer can be imported into `a`, else staged through system memory (`a` copies
/// into a system buffer of its own, which `b` imports and copies from). With `staged`, always
/// staged. Checks the data in `b`'s buffer.
fn pair(a: &Device, b: &Device, data: &[u8], staged: bool) -> Result<Pair, String> {
    let e = |e: conflux::Error| e.to_string();
    let size = data.len() as u64;
    let src = a.bo_create(size).map_err(e)?;
    a.write(src.handle, 0, data).map_err(e)?;
    let dst = b.bo_create(size).map_err(e)?;
    let same = a.path() == b.path();
    let (ca, cb) = (counters(a)?, counters(b)?);
    let (path, secs) = if same {
        ("local", run_copy(a, &src, &dst, size)?)
    } else {
        let fd = b.export(dst.handle).map_err(e)?;
        let imported = if staged {
            None
        } else {
            match a.import(fd.0.as_fd()) {
                Ok(bo) => Some(bo),
                Err(err) if matches!(err.errno(), Some(libc::EXDEV) | Some(libc::EOPNOTSUPP)) => {
                    None
                }
                Err(err) => return Err(err.to_string()),
            }
        };
        match imported {
            Some(peer) => {
                let info = a.bo_info(peer.handle).map_err(e)?;
                let secs = run_copy(a, &src, &peer, size)?;
                (path_name(info.path), secs)
            }
            None => {
                let sys = a
                    .bo_create_in(size, uapi::DRM_CONFLUX_BO_SYSTEM)
                    .map_err(e)?;
                let sys_fd = a.export(sys.handle).map_err(e)?;
                let on_b = b.import(sys_fd.0.as_fd()).map_err(e)?;
                let first = run_copy(a, &src, &sys, size)?;
                let second = run_copy(b, &on_b, &dst, size)?;
                ("system memory", first + second)
            }
        }
    };
    let (on_a, on_b) = (delta(counters(a)?, ca), delta(counters(b)?, cb));
    let mut got = vec![0u8; size as usize];
    b.read(dst.handle, 0, &mut got).map_err(e)?;
    verify("destination", &got, |i| data[i])?;
    // A copy reads and writes `size` bytes each: the counters must show both on the path.
    let counted = match path {
        "local" => on_a.local >= size && on_a.p2p == 0 && on_a.sysmem == 0,
        "p2p" | "host bridge" => on_a.p2p == size && on_a.sysmem == 0,
        _ => on_a.sysmem == size && on_b.sysmem == size && on_a.p2p == 0 && on_b.p2p == 0,
    };
    Ok(Pair {
        path,
        secs,
        on_a,
        on_b,
        counted,
    })
}

fn name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

/// `conflux matrix [SIZE]`: a copy between every ordered pair of devices.
pub fn cmd_matrix(
    json_out: bool,
    paths: &[std::path::PathBuf],
    size: u64,
    png: Option<&Path>,
) -> Result<(), String> {
    let devs = paths
        .iter()
        .map(|p| Device::open(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let data = random_bytes(size as usize, 0x5eed_0fc0_ffee);
    let mut cells: Vec<Vec<Option<(String, f64)>>> = vec![vec![None; devs.len()]; devs.len()];
    let mut results = Vec::new();
    let mut failed = 0;
    for (i, a) in devs.iter().enumerate() {
        for (j, b) in devs.iter().enumerate() {
            let label = format!("{} -> {}", name(a.path()), name(b.path()));
            match pair(a, b, &data, false) {
                Ok(p) => {
                    let bw = mbps(size, p.secs);
                    if !p.counted {
                        failed += 1;
                    }
                    if !json_out {
                        println!(
                            "{label}: {} {}, {bw:.0} MB/s, data checked; counters on {}: local +{} \
                             p2p +{} sysmem +{}; on {}: sysmem +{}{}",
                            human(size),
                            p.path,
                            name(a.path()),
                            p.on_a.local,
                            p.on_a.p2p,
                            p.on_a.sysmem,
                            name(b.path()),
                            p.on_b.sysmem,
                            if p.counted {
                                ""
                            } else {
                                " (COUNTERS DO NOT MATCH THE PATH)"
                            }
                        );
                    }
                    results.push(json!({"from": name(a.path()), "to": name(b.path()),
                        "path": p.path, "bytes": size, "seconds": p.secs, "mb_per_s": bw,
                        "counters_from": {"local": p.on_a.local, "p2p": p.on_a.p2p,
                                          "sysmem": p.on_a.sysmem},
                        "counters_to": {"sysmem": p.on_b.sysmem},
                        "counters_match": p.counted, "data_checked": true}));
                    cells[i][j] = Some((p.path.to_string(), bw));
                }
                Err(err) => {
                    failed += 1;
                    if !json_out {
                        println!("{label}: FAILED: {err}");
                    }
                    results.push(json!({"from": name(a.path()), "to": name(b.path()),
                        "error": err}));
                }
            }
        }
    }
    let names: Vec<String> = devs.iter().map(|d| name(d.path())).collect();
    if json_out {
        println!("{}", Value::Array(results));
    } else {
        print_table(&names, &cells);
    }
    if let Some(png) = png {
        heatmap(&names, &cells, png)?;
        if !json_out {
            println!("heatmap written to {}", png.display());
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {} copies failed",
            devs.len() * devs.len()
        ));
    }
    Ok(())
}

fn print_table(names: &[String], cells: &[Vec<Option<(String, f64)>>]) {
    print!("{:>10}", "from\\to");
    for d in names {
        print!(" {d:>22}");
    }
    println!();
    for (i, d) in names.iter().enumerate() {
        print!("{d:>10}");
        for cell in &cells[i] {
            let text = match cell {
                Some((path, bw)) => format!("{path} {bw:.0} MB/s"),
                None => "failed".into(),
            };
            print!(" {text:>22}");
        }
        println!();
    }
}

fn heatmap(
    names: &[String],
    cells: &[Vec<Option<(String, f64)>>],
    out: &Path,
) -> Result<(), String> {
    use crate::png::{heat, Canvas};
    let (cw, ch, margin) = (200u32, 90u32, 110u32);
    let n = names.len() as u32;
    let mut c = Canvas::new(margin + n * cw + 10, margin + n * ch + 40, [250, 250, 250]);
    let max = cells
        .iter()
        .flatten()
        .flatten()
        .map(|(_, bw)| *bw)
        .fold(1.0, f64::max);
    let black = [20, 20, 20];
    c.text(10, 10, 4, "COPY MB/S  FROM ROW TO COLUMN", black);
    for (i, label) in names.iter().enumerate() {
        let i = i as u32;
        c.text(margin + i * cw + 10, margin - 40, 4, label, black);
        c.text(10, margin + i * ch + 30, 4, label, black);
    }
    for (i, row) in cells.iter().enumerate() {
        for (j, cell) in row.iter().enumerate() {
            let (x, y) = (margin + j as u32 * cw, margin + i as u32 * ch);
            let (color, top, bottom) = match cell {
                Some((path, bw)) => {
                    let short = match path.as_str() {
                        "local" => "LOCAL",
                        "p2p" => "P2P",
                        "host bridge" => "HOST BRIDGE",
                        _ => "SYSTEM MEM",
                    };
                    (heat(bw / max), short.to_string(), format!("{bw:.0}"))
                }
                None => ([200, 40, 40], "FAILED".to_string(), String::new()),
            };
            c.rect(x + 2, y + 2, cw - 4, ch - 4, color);
            let fg = if color[0] > 180 {
                black
            } else {
                [255, 255, 255]
            };
            c.text(x + 10, y + 15, 4, &top, fg);
            c.text(x + 10, y + 50, 4, &bottom, fg);
        }
    }
    c.save(out)
        .map_err(|e| format!("writing {}: {e}", out.display()))
}

/// `conflux p2p-bench [SIZE]`: a copy of SIZE bytes from the first device's VRAM to the second
/// one's, peer to peer, against the same transfer staged through system memory.
pub fn cmd_p2p_bench(
    json_out: bool,
    paths: &[std::path::PathBuf],
    size: u64,
) -> Result<(), String> {
    let [pa, pb, ..] = paths else {
        return Err("p2p-bench: needs two devices".into());
    };
    let (a, b) = (
        Device::open(pa).map_err(|e| e.to_string())?,
        Device::open(pb).map_err(|e| e.to_string())?,
    );
    let data = random_bytes(size as usize, 0xb0b0_cafe);
    // Once each first, so that the measured copies find everything in place.
    let direct = pair(&a, &b, &data, false)?;
    if direct.path != "p2p" && direct.path != "host bridge" {
        return Err(format!(
            "p2p-bench: {} -> {} has no peer-to-peer route ({})",
            name(pa),
            name(pb),
            direct.path
        ));
    }
    let staged = pair(&a, &b, &data, true)?;
    let (p2p, sys) = (mbps(size, direct.secs), mbps(size, staged.secs));
    let ratio = p2p / sys.max(1e-9);
    if json_out {
        println!(
            "{}",
            json!({"from": name(pa), "to": name(pb), "bytes": size, "p2p_mb_per_s": p2p,
                   "staged_mb_per_s": sys, "ratio": ratio, "path": direct.path,
                   "counters_match": direct.counted && staged.counted})
        );
    } else {
        println!(
            "{} -> {}: {} {}: {p2p:.0} MB/s; staged through system memory: {sys:.0} MB/s; \
             {ratio:.2}x; data checked both ways{}",
            name(pa),
            name(pb),
            human(size),
            direct.path,
            if direct.counted && staged.counted {
                ", counters match"
            } else {
                ", COUNTERS DO NOT MATCH"
            }
        );
    }
    if !(direct.counted && staged.counted) {
        return Err("p2p-bench: the counters do not show the paths".into());
    }
    Ok(())
}

/// `conflux render-matrix FILE`: prints the matrix that `conflux --json matrix` wrote to FILE,
/// and with `--png`, draws it, without any device: for a host that ran the copies in a guest.
pub fn cmd_render(file: &Path, png: Option<&Path>) -> Result<(), String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let rows: Vec<Value> = serde_json::from_str(text.trim())
        .map_err(|e| format!("{}: not a matrix: {e}", file.display()))?;
    let mut names: Vec<String> = Vec::new();
    for r in &rows {
        for k in ["from", "to"] {
            let n = r[k]
                .as_str()
                .ok_or(format!("{}: an entry has no {k:?}", file.display()))?;
            if !names.iter().any(|m| m == n) {
                names.push(n.to_string());
            }
        }
    }
    let at = |n: &str| names.iter().position(|m| m == n);
    let mut cells: Vec<Vec<Option<(String, f64)>>> = vec![vec![None; names.len()]; names.len()];
    for r in &rows {
        let (Some(i), Some(j)) = (
            at(r["from"].as_str().unwrap_or("")),
            at(r["to"].as_str().unwrap_or("")),
        ) else {
            continue;
        };
        if let (Some(path), Some(bw)) = (r["path"].as_str(), r["mb_per_s"].as_f64()) {
            cells[i][j] = Some((path.to_string(), bw));
        }
    }
    print_table(&names, &cells);
    if let Some(png) = png {
        heatmap(&names, &cells, png)?;
        println!("heatmap written to {}", png.display());
    }
    Ok(())
}
