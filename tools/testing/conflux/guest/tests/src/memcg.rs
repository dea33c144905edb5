// SPDX-License-Identifier: GPL-2.0

//! Memory-cgroup accounting: the memory a process's buffers take is charged to its cgroup, and
//! the cgroup's limit stops that process alone, with `ENOMEM`.
//!
//! The test makes a cgroup (v2) with a 24 MiB limit and runs a copy of this program in it
//! (`--memcg-child`), which reports back one line per check. Meanwhile this process, outside
//! the cgroup, goes on allocating.

use std::{fs, path::Path, process::Command};

use conflux::{uapi, Device, Error};

use crate::{common::io_err, Tally};

/// The cgroup v2 hierarchy.
const ROOT: &str = "/sys/fs/cgroup";
/// The test's cgroup.
const GROUP: &str = "/sys/fs/cgroup/conflux-memcg";
/// Its limit.
const LIMIT: u64 = 24 << 20;
const MIB: u64 = 1 << 20;

/// Mounts the cgroup v2 hierarchy if it is not, and makes the test's cgroup with its limit.
fn make_group() -> Result<(), Error> {
    let mounted = fs::read_to_string("/proc/mounts")
        .map(|m| m.contains(&format!(" {ROOT} cgroup2 ")))
        .unwrap_or(false);
    if !mounted {
        let status = Command::new("mount")
            .args(["-t", "cgroup2", "none", ROOT])
            .status()
            .map_err(io_err(ROOT, "mount"))?;
        if !status.success() {
            return Err(io_err(ROOT, "mount cgroup2")(std::io::Error::other(
                status.to_string(),
            )));
        }
    }
    let control = format!("{ROOT}/cgroup.subtree_control");
    fs::write(&control, "+memory").map_err(io_err(&control, "write +memory"))?;
    if !Path::new(GROUP).exists() {
        fs::create_dir(GROUP).map_err(io_err(GROUP, "mkdir"))?;
    }
    let max = format!("{GROUP}/memory.max");
    fs::write(&max, LIMIT.to_string()).map_err(io_err(&max, "write"))
}

/// The memory charged to the test's cgroup now, in bytes.
fn charged() -> Result<u64, Error> {
    let path = format!("{GROUP}/memory.current");
    let text = fs::read_to_string(&path).map_err(io_err(&path, "read"))?;
    text.trim()
        .parse()
        .map_err(|_| io_err(&path, "parse")(std::io::Error::other(text.clone())))
}

/// `--memcg-child PATH`: moves itself into the test's cgroup and allocates system memory on
/// device `PATH` up to and beyond the limit. Prints `ok WHAT: DETAIL` or `bad WHAT: DETAIL`
/// per check, for the parent.
pub(crate) fn child(path: &Path) -> Result<(), Error> {
    let procs = format!("{GROUP}/cgroup.procs");
    // Writing 0 moves the writer.
    fs::write(&procs, "0").map_err(io_err(&procs, "write"))?;
    let report = |what: &str, ok: bool, detail: String| {
        println!("{} {what}: {detail}", if ok { "ok" } else { "bad" });
    };
    let dev = Device::open(path)?;
    let before = charged()?;
    let small = dev.bo_create_in(8 * MIB, uapi::DRM_CONFLUX_BO_SYSTEM);
    let after = charged()?;
    report(
        "an 8 MiB system-memory buffer within the limit",
        small.is_ok(),
        match &small {
            Ok(_) => "created".to_string(),
            Err(e) => e.to_string(),
        },
    );
    report(
        "its pages are charged to the process's cgroup",
        after >= before + 8 * MIB,
        format!("memory.current {before} -> {after}"),
    );
    let big = dev.bo_create_in(32 * MIB, uapi::DRM_CONFLUX_BO_SYSTEM);
    report(
        "a 32 MiB one beyond the 24 MiB limit fails with ENOMEM",
        big.as_ref().err().and_then(Error::errno) == Some(libc::ENOMEM),
        match &big {
            Ok(_) => "created".to_string(),
            Err(e) => e.to_string(),
        },
    );
    let back = charged()?;
    report(
        "the failed allocation gave back what it had charged",
        back < after + MIB,
        format!("memory.current {after} -> {back}"),
    );
    let again = dev.bo_create_in(4 * MIB, uapi::DRM_CONFLUX_BO_SYSTEM);
    report(
        "the process goes on: a 4 MiB buffer within the limit after the failure",
        again.is_ok(),
        match &again {
            Ok(_) => "created".to_string(),
            Err(e) => e.to_string(),
        },
    );
    Ok(())
}

/// Runs [`child`] on `path` in the test's cgroup, and checks that this process, outside it, is
/// not limited.
pub(crate) fn test_memcg(t: &mut Tally, path: &Path) -> Result<(), Error> {
    let name = path.display().to_string();
    make_group()?;
    let exe = std::env::current_exe().map_err(io_err("/proc/self/exe", "readlink"))?;
    let out = Command::new(&exe)
        .arg("--memcg-child")
        .arg(path)
        .output()
        .map_err(io_err(&exe.display().to_string(), "run --memcg-child"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = 0;
    for line in text.lines() {
        let (ok, rest) = match line.split_once(' ') {
            Some(("ok", rest)) => (true, rest),
            Some(("bad", rest)) => (false, rest),
            _ => continue,
        };
        let (what, detail) = rest.split_once(": ").unwrap_or((rest, ""));
        t.check(&format!("{name}: memcg: {what}"), ok, detail);
        lines += 1;
    }
    t.check(
        &format!("{name}: memcg: the process in the limited cgroup ran every check"),
        lines == 5 && out.status.success(),
        format!(
            "{lines} checks, {}; {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    );
    // The child's buffers went with it.
    let left = charged()?;
    t.check(
        &format!("{name}: memcg: the cgroup's charge goes when its process exits"),
        left < MIB,
        format!("memory.current {left}"),
    );
    // Outside the cgroup, this process allocates beyond the cgroup's limit.
    let dev = Device::open(path)?;
    let big = dev.bo_create_in(48 * MIB, uapi::DRM_CONFLUX_BO_SYSTEM);
    t.check(
        &format!("{name}: memcg: a process outside the cgroup is not held to its limit"),
        big.is_ok(),
        match &big {
            Ok(_) => "48 MiB of system memory created".to_string(),
            Err(e) => e.to_string(),
        },
    );
    drop(big);
    fs::remove_dir(GROUP).map_err(io_err(GROUP, "rmdir"))
}
