// SPDX-License-Identifier: GPL-2.0

//! `conflux-vm`: boots the Conflux QEMU rig (TCG) with a named PCIe topology
//! and the `conflux-emu` device model behind its accelerators, runs one
//! command in the guest, streams the guest's output and returns the
//! command's exit status. Every process, socket and file it starts or creates
//! is removed on success, failure, timeout and SIGINT/SIGTERM.

mod initramfs;
mod topology;

use std::{
    env,
    fmt::Write as _,
    fs,
    io::{self, BufRead, BufReader, Write as _},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicI32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use initramfs::Initramfs;
use topology::Topology;

/// Exit status when the command did not finish in time.
const EXIT_TIMEOUT: u8 = 124;
/// Exit status when the rig itself failed (bad arguments, the model or QEMU
/// failed, the guest died without reporting a status).
const EXIT_RIG: u8 = 125;
/// Exit status when the command succeeded but the kernel log holds a checker
/// report (lockdep, KASAN, debug objects, `WARN()`, `BUG()`).
const EXIT_KERNEL_REPORT: u8 = 126;

/// The line the guest's init prints with the command's status.
const EXIT_MARKER: &str = "conflux-vm: exit ";
/// The line the guest's init prints before it runs the command.
const READY_MARKER: &str = "conflux-vm: guest ready";

const USAGE: &str = "\
usage: conflux-vm run --kernel BZIMAGE --modules DIR --emu PATH [options] -- COMMAND...

Boots the rig, runs COMMAND with /bin/sh in the guest, returns its status.

  --kernel PATH      guest kernel (bzImage)
  --modules DIR      modules install root (holds lib/modules/<version>)
  --emu PATH         the conflux-emu binary
  --topology NAME    switch3+rp1 (default) or switch3+rp1-zen
  --bar-size SIZE    BAR2 (device memory) per device, default 128M
  --mem SIZE         guest RAM, default 512M
  --add PATH         copy a host file to the guest's /usr/bin (repeatable)
  --timeout SECS     give up after SECS seconds, default 300
  --append ARGS      more kernel command-line arguments (repeatable)
  --plain-ivshmem    add a plain ivshmem function (same PCI ID, no Conflux
                     signature) on the root bus
  --caps MASK        the capabilities the devices advertise, a hexadecimal
                     subset of the device model's (default: all of them)
  --verbose          also print the kernel's boot log

Exit status: the command's; 124 on timeout; 125 when the rig failed;
126 when the command succeeded but the kernel log has a checker report.";

/// Set by SIGINT/SIGTERM; the main loop then cleans up and exits.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(sig, Ordering::SeqCst);
}

struct Options {
    kernel: PathBuf,
    modules: PathBuf,
    emu: PathBuf,
    topology: Topology,
    bar_size: u64,
    mem: u64,
    add: Vec<PathBuf>,
    timeout: Duration,
    verbose: bool,
    append: Vec<String>,
    plain_ivshmem: bool,
    /// `--caps` for the device model: the capabilities the devices keep.
    caps: Option<String>,
    command: Vec<String>,
}

/// Parses `64M`-style sizes (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?}"))
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("run") {
        return Err("expected the subcommand `run`".into());
    }
    let mut o = Options {
        kernel: PathBuf::new(),
        modules: PathBuf::new(),
        emu: PathBuf::new(),
        topology: Topology::by_name("switch3+rp1")?,
        bar_size: 128 << 20,
        mem: 512 << 20,
        add: Vec::new(),
        timeout: Duration::from_secs(300),
        verbose: false,
        append: Vec::new(),
        plain_ivshmem: false,
        caps: None,
        command: Vec::new(),
    };
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--kernel" => o.kernel = val()?.into(),
            "--modules" => o.modules = val()?.into(),
            "--emu" => o.emu = val()?.into(),
            "--topology" => o.topology = Topology::by_name(&val()?)?,
            "--bar-size" => o.bar_size = parse_size(&val()?)?,
            "--mem" => o.mem = parse_size(&val()?)?,
            "--add" => o.add.push(val()?.into()),
            "--timeout" => {
                let v = val()?;
                o.timeout =
                    Duration::from_secs(v.parse().map_err(|_| format!("invalid --timeout {v:?}"))?);
            }
            "--verbose" => o.verbose = true,
            "--plain-ivshmem" => o.plain_ivshmem = true,
            "--caps" => o.caps = Some(val()?),
            "--append" => {
                let v = val()?;
                if v.trim().is_empty() || v.contains(['\n', '\0']) {
                    return Err(format!("invalid --append {v:?}"));
                }
                o.append.push(v);
            }
            "--" => {
                o.command = it.by_ref().cloned().collect();
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    for (name, p) in [
        ("--kernel", &o.kernel),
        ("--modules", &o.modules),
        ("--emu", &o.emu),
    ] {
        if p.as_os_str().is_empty() {
            return Err(format!("{name} is required"));
        }
        if !p.exists() {
            return Err(format!("{name} {}: no such file", p.display()));
        }
    }
    if o.command.is_empty() {
        return Err("no command after --".into());
    }
    if o.mem > 2 << 30 {
        return Err(format!(
            "--mem {} above 2G: the rig keeps guest RAM below 4 GiB",
            o.mem
        ));
    }
    Ok(o)
}

/// Quotes `s` for the guest's shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Kernel log lines that mean a checker fired.
fn is_checker_report(line: &str) -> bool {
    const PATTERNS: [&str; 18] = [
        "WARNING:",
        "BUG:",
        "kernel BUG at",
        "Kernel panic",
        "Oops",
        "INFO: possible",
        "INFO: inconsistent",
        "INFO: trying to register",
        // The hung-task detector and RCU's stall warnings.
        "INFO: task ",
        "INFO: rcu",
        // kmemleak's suspects, as the init prints them, and its own log line.
        "unreferenced object 0x",
        "suspected memory leak",
        "DEBUG_LOCKS_WARN_ON",
        "KASAN",
        "UBSAN",
        "ODEBUG:",
        "list_add corruption",
        "general protection fault",
    ];
    PATTERNS.iter().any(|p| line.contains(p))
}

/// Everything the rig started or created; dropping it tears all of it down.
struct Rig {
    dir: PathBuf,
    emu: Option<Child>,
    qemu: Option<Child>,
}

impl Rig {
    fn new() -> io::Result<Self> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            env::temp_dir()
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("conflux-vm.{}.{nanos:x}", std::process::id()));
        fs::create_dir(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Self {
            dir,
            emu: None,
            qemu: None,
        })
    }

    /// Stops a child and the process group it leads: SIGTERM, then SIGKILL.
    fn stop(child: &mut Child, grace: Duration) {
        let Ok(pid) = i32::try_from(child.id()) else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: plain kill(2) on the process group this rig created.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(q) = self.qemu.as_mut() {
            Self::stop(q, Duration::from_millis(500));
        }
        // The model exits by itself once QEMU has gone; give it time to print
        // its counters.
        if let Some(e) = self.emu.as_mut() {
            Self::stop(e, Duration::from_secs(3));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What the guest's init runs after the command, in a kernel with kmemleak: a scan for memory
/// that nothing references any more, once what the command freed last is older than the 5 s
/// kmemleak waits for, and each suspect printed (a checker report, [`is_checker_report`]).
const LEAK_SCAN: &str = "if [ -w /sys/kernel/debug/kmemleak ]; then\n\
     sleep 6\n\
     echo scan > /sys/kernel/debug/kmemleak\n\
     cat /sys/kernel/debug/kmemleak\n\
     fi\n";

/// Builds the guest's initramfs: busybox, the modules, the added programs,
/// an init that runs `/cmd` and reports its status.
fn build_initramfs(o: &Options, path: &Path) -> io::Result<()> {
    let mut a = Initramfs::default();
    for d in [
        "/bin", "/sbin", "/usr", "/usr/bin", "/proc", "/sys", "/dev", "/tmp", "/lib",
    ] {
        a.dir(d);
    }
    a.host_file("/bin/busybox", Path::new("/bin/busybox"))?;
    a.host_tree("/lib/modules", &o.modules.join("lib/modules"))?;
    for p in &o.add {
        let name = p
            .file_name()
            .ok_or_else(|| io::Error::other(format!("--add {}: not a file", p.display())))?;
        a.host_file(&format!("/usr/bin/{}", name.to_string_lossy()), p)?;
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/bin:/bin:/sbin\n\
         mount -t proc none /proc\n\
         mount -t sysfs none /sys\n\
         mount -t devtmpfs none /dev 2>/dev/null\n\
         mount -t debugfs none /sys/kernel/debug 2>/dev/null\n\
         echo '{READY_MARKER}'\n\
         sh /cmd\n\
         rc=$?\n\
         {LEAK_SCAN}\
         echo \"{EXIT_MARKER}$rc\"\n\
         poweroff -f\n"
    );
    a.file("/init", 0o755, init.as_bytes());
    let cmd: Vec<String> = o.command.iter().map(|s| sh_quote(s)).collect();
    a.file("/cmd", 0o644, format!("{}\n", cmd.join(" ")).as_bytes());
    a.write(path)
}

/// Writes `line` to standard error with one write, so that it never interleaves with the lines
/// of the guest on standard output, which the rig's steps read from the same pipe.
fn say_err(line: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(format!("{line}\n").as_bytes());
}

/// Writes a line of the device model, which names itself on its standard error.
fn say_emu(line: &str) {
    if line.starts_with("conflux-emu:") {
        say_err(line);
    } else {
        say_err(&format!("conflux-emu: {line}"));
    }
}

/// Forwards a child's output lines to `tx` from a thread.
fn forward<R: io::Read + Send + 'static>(r: R, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
}

fn run(o: &Options) -> Result<u8, String> {
    let mut rig = Rig::new().map_err(|e| format!("creating the run directory: {e}"))?;
    let dir = rig.dir.clone();
    let initrd = dir.join("initramfs.cpio");
    build_initramfs(o, &initrd).map_err(|e| format!("building the initramfs: {e}"))?;
    let ram = dir.join("guest-ram");
    fs::File::create(&ram)
        .and_then(|f| f.set_len(o.mem))
        .map_err(|e| format!("creating guest RAM {}: {e}", ram.display()))?;
    for name in topology::nvme_files() {
        let img = dir.join(name);
        fs::File::create(&img)
            .and_then(|f| f.set_len(topology::NVME_SIZE))
            .map_err(|e| format!("creating the NVMe namespace {}: {e}", img.display()))?;
    }

    // The device model first: QEMU connects to its sockets at startup.
    let devices = o.topology.devices();
    let mut emu = Command::new(&o.emu)
        .args(["serve", "--run-dir"])
        .arg(&dir)
        .args(["--devices", &devices.to_string()])
        .args(["--bar-size", &o.bar_size.to_string()])
        .args(["--topology", o.topology.name()])
        .arg("--qmp")
        .arg(dir.join("qmp.sock"))
        .arg("--guest-ram")
        .arg(&ram)
        .args(["--guest-ram-size", &o.mem.to_string()])
        .args(if o.plain_ivshmem {
            vec![
                "--plain".into(),
                dir.join(topology::PLAIN_FILE).into_os_string(),
                "--plain-size".into(),
                topology::PLAIN_SIZE.to_string().into(),
            ]
        } else {
            Vec::new()
        })
        .args(o.caps.iter().flat_map(|c| ["--caps", c.as_str()]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", o.emu.display()))?;
    let (emu_out, emu_err) = (emu.stdout.take(), emu.stderr.take());
    rig.emu = Some(emu);
    let (etx, erx) = mpsc::channel();
    // The model's messages come through here as whole lines: written by the model straight to
    // the terminal, they would cut into the guest's lines.
    if let Some(err) = emu_err {
        forward(err, etx.clone());
    }
    if let Some(out) = emu_out {
        forward(out, etx);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match erx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l == "conflux-emu: ready" => break,
            Ok(l) => say_emu(&l),
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => return Err("conflux-emu did not get ready within 10 s".into()),
        }
    }
    thread::spawn(move || {
        for l in erx {
            say_emu(&l);
        }
    });

    let mut qemu = Command::new("qemu-system-x86_64")
        .args(
            o.topology
                .qemu_args(&dir, o.mem, &o.append, o.plain_ivshmem),
        )
        .arg("-kernel")
        .arg(&o.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting qemu-system-x86_64: {e}"))?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = qemu.stdout.take() {
        forward(out, tx.clone());
    }
    if let Some(err) = qemu.stderr.take() {
        forward(err, tx.clone());
    }
    drop(tx);
    rig.qemu = Some(qemu);

    let start = Instant::now();
    let mut ready = false;
    let mut reports = Vec::new();
    let mut status = None;
    loop {
        let sig = INTERRUPTED.load(Ordering::SeqCst);
        if sig != 0 {
            return Err(format!("interrupted by signal {sig}"));
        }
        if start.elapsed() > o.timeout {
            eprintln!("conflux-vm: timeout after {} s", o.timeout.as_secs());
            return Ok(EXIT_TIMEOUT);
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                if is_checker_report(&line) {
                    reports.push(line.clone());
                }
                if let Some(rc) = line.strip_prefix(EXIT_MARKER) {
                    status = rc.trim().parse::<u8>().ok();
                    println!("{line}");
                    continue;
                }
                ready |= line == READY_MARKER;
                if o.verbose || ready || is_checker_report(&line) {
                    println!("{line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // QEMU closed its output: it has exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let Some(status) = status else {
        return Err("the guest stopped without reporting the command's status".into());
    };
    if !reports.is_empty() {
        let mut msg = format!("conflux-vm: {} kernel checker report(s):", reports.len());
        for r in &reports {
            let _ = write!(msg, "\n    {r}");
        }
        eprintln!("{msg}");
        if status == 0 {
            return Ok(EXIT_KERNEL_REPORT);
        }
    }
    Ok(status)
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return if args.is_empty() {
            ExitCode::from(EXIT_RIG)
        } else {
            ExitCode::SUCCESS
        };
    }
    let o = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("conflux-vm: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_RIG);
        }
    };
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    match run(&o) {
        Ok(rc) => ExitCode::from(rc),
        Err(e) => {
            eprintln!("conflux-vm: {e}");
            ExitCode::from(EXIT_RIG)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn checker_lines() {
        assert!(is_checker_report("[    1.0] WARNING: CPU: 0 PID: 1 at foo"));
        assert!(is_checker_report("BUG: KASAN: use-after-free in x"));
        assert!(is_checker_report(
            "unreferenced object 0xffff888004a1c000 (size 64):"
        ));
        assert!(is_checker_report(
            "[  42.0] INFO: task kworker/0:1:17 blocked for more than 120 seconds."
        ));
        assert!(is_checker_report("BUG: KFENCE: out-of-bounds read in f"));
        assert!(is_checker_report("UBSAN: array-index-out-of-bounds in f"));
        assert!(!is_checker_report("conflux 0000:03:00.0: not binding"));
    }

    #[test]
    fn argument_errors() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse_args(&args(&["boot"])).is_err());
        let e = parse_args(&args(&["run", "--kernel"]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("--kernel needs a value"), "{e}");
        let e = parse_args(&args(&["run", "--topology", "ring"]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("ring"), "{e}");
        let e = parse_args(&args(&["run", "--append", " "]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("invalid --append"), "{e}");
    }
}
