// SPDX-License-Identifier: GPL-2.0

//! `conflux`: the command-line tool for Conflux accel devices.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use conflux::{devices, parse_size, Device, Info};
use serde_json::{json, Value};

const HELP: &str = "\
usage: conflux [--device PATH] [--json] COMMAND [ARGS]

Commands:
  info          describe the device (every Conflux device without --device)
  alloc SIZE    create a zeroed VRAM buffer of SIZE bytes (K, M, G suffixes),
                report the VRAM and engine bytes it took, and free it

Options:
  --device PATH  the accel node, for instance /dev/accel/accel0
  --json         print one JSON document instead of text
  --help         this text

Errors name the device and the failing call; the exit status is 1 when a
call fails and 2 for a usage error.";

struct Options {
    device: Option<PathBuf>,
    json: bool,
    command: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        device: None,
        json: false,
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
            s if s.starts_with('-') && o.command.is_empty() => {
                return Err(format!("unknown option {s}"))
            }
            s => o.command.push(s.to_string()),
        }
    }
    Ok(o)
}

const CAPS: [&str; 6] = ["copy", "fill", "fence", "timestamp", "mmu-2m", "peer-p2p"];

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
    })
}

fn info_text(dev: &Device, i: &Info) -> String {
    format!(
        "{} ({}): Conflux {}.{}, capabilities {:#x} ({})\n  \
         VRAM {} MiB, {} KiB available\n  \
         VA range {:#x}..{:#x}\n  \
         engine: {} commands, {} errors; local {} bytes, p2p {} bytes, system memory {} bytes",
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
        i.sysmem_bytes
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
        assert_eq!(caps_names(0x3f).len(), 6);
        assert_eq!(caps_names(uapi::DRM_CONFLUX_CAP_FILL), ["fill"]);
    }
}
