// SPDX-License-Identifier: GPL-2.0

//! The real `conflux-emu serve` binary, driven as QEMU drives it: the test
//! connects to the device sockets, takes the handshake, writes commands into
//! the shared BAR2, rings the doorbell eventfd and waits for the MSI-X
//! eventfds. A small UNIX-socket server plays QEMU's QMP with the rig's
//! `query-pci` reply.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use conflux_device::{
    memory::{Memory, Target},
    mmu::{Aperture, Mapper},
    regs::{ctrl, doorbell_page, pte, queue, queue_reg, VRAM_OFFSET},
    ring::{Command as Cmd, Compare, Op},
    shm::{Mapping, SharedMemory},
};
use conflux_emu::sys::{self, EventFd};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const BAR_SIZE: u64 = 64 * MIB;
const RAM_SIZE: u64 = 16 * MIB;
/// BAR2 addresses of cfx0..cfx3 in the fixture.
const BASES: [u64; 4] = [0xf400_0000, 0xf000_0000, 0xf800_0000, 0xec00_0000];
const FIXTURE: &str = include_str!("fixtures/query-pci.json");
const WAIT: Duration = Duration::from_secs(20);

/// VA of the device's own VRAM from offset 2 MiB (2 MiB pages, 8 MiB).
const W_VRAM: u64 = 0x10_0000_0000;
/// VA of guest RAM from bus address 1 MiB (4 KiB pages, 64 KiB).
const W_RAM: u64 = 0x20_0000_0000;
/// VA of device `i`'s VRAM from offset 2 MiB through its bus address.
const fn w_bus(i: usize) -> u64 {
    0x30_0000_0000 + (i as u64) * 0x1_0000_0000
}

/// A temporary directory, the server in it, and its output. Dropping it
/// kills the server if it still runs and removes the directory.
struct Rig {
    dir: PathBuf,
    child: Option<Child>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir =
        std::env::temp_dir().join(format!("conflux-emu-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Answers QMP on `path` like QEMU: greeting, `qmp_capabilities`,
/// `query-pci` with the fixture; any number of sessions.
fn fake_qmp(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let Ok(mut w) = conn.try_clone() else { return };
            let mut r = BufReader::new(conn);
            let _ = w.write_all(
                concat!(
                    r#"{"QMP": {"version": {"qemu": {"micro": 19, "minor": 2, "major": 7}, "#,
                    r#""package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}"#,
                    "\r\n"
                )
                .as_bytes(),
            );
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                let cmd: Value = serde_json::from_str(&line).unwrap_or_default();
                let reply = match cmd["execute"].as_str() {
                    Some("query-pci") => serde_json::from_str(FIXTURE).unwrap_or_default(),
                    Some("qmp_capabilities") => serde_json::json!({"return": {}}),
                    _ => serde_json::json!({"error": {"class": "CommandNotFound", "desc": "no"}}),
                };
                let _ = w.write_all(format!("{reply}\r\n").as_bytes());
                line.clear();
            }
        }
    });
}

impl Rig {
    /// Starts `serve` with `devices` devices in a new directory, and the
    /// options `extra`, without waiting for it.
    fn spawn(tag: &str, devices: usize, topology: &str, extra: &[&str]) -> Self {
        let dir = temp_dir(tag);
        let mut rig = Self {
            dir,
            child: None,
            stderr: None,
        };
        let mut command = rig.command(devices, topology, &rig.dir);
        rig.child = Some(command.args(extra).spawn().unwrap());
        let stderr = rig.child.as_mut().unwrap().stderr.take().unwrap();
        rig.stderr = Some(thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            s
        }));
        rig
    }

    fn command(&self, devices: usize, topology: &str, run_dir: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_conflux-emu"));
        c.arg("serve")
            .arg("--run-dir")
            .arg(run_dir)
            .args(["--devices", &devices.to_string()])
            .args(["--bar-size", "64M", "--topology", topology])
            .arg("--qmp")
            .arg(self.dir.join("qmp.sock"))
            .arg("--guest-ram")
            .arg(self.dir.join("ram"))
            .args(["--guest-ram-size", "16M"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Starts `serve` and waits for its ready line.
    fn start(tag: &str, devices: usize, topology: &str) -> Self {
        Self::start_with(tag, devices, topology, &[])
    }

    /// Starts `serve` with the options `extra` and waits for its ready line.
    fn start_with(tag: &str, devices: usize, topology: &str, extra: &[&str]) -> Self {
        let mut rig = Self::spawn(tag, devices, topology, extra);
        fake_qmp(&rig.dir.join("qmp.sock"));
        let stdout = rig.child.as_mut().unwrap().stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining: the server prints nothing else on stdout.
            let _ = r.read_to_end(&mut Vec::new());
        });
        let line = rx.recv_timeout(WAIT).expect("no ready line in time");
        assert_eq!(line, "conflux-emu: ready\n");
        rig
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("dev{i}.sock"))
    }

    /// Waits for the server to exit; returns its status and standard error.
    fn wait(&mut self) -> (ExitStatus, String) {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < WAIT, "the server did not exit");
            thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        let err = self.stderr.take().unwrap().join().unwrap();
        (status, err)
    }
}

/// The QEMU side of one device.
struct Qemu {
    _stream: UnixStream,
    mem: SharedMemory,
    doorbell: EventFd,
    vectors: [EventFd; 2],
    head: u32,
}

impl Qemu {
    /// Connects to device `i` and takes the handshake, checking every
    /// message; maps BAR2 as device 0 of `mem` and guest RAM as system
    /// memory.
    fn connect(rig: &Rig, i: usize) -> Self {
        let s = UnixStream::connect(rig.socket(i)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut msgs: Vec<(i64, Option<OwnedFd>)> =
            (0..7).map(|_| sys::recv_message(&s).unwrap()).collect();
        let values: Vec<(i64, bool)> = msgs.iter().map(|(v, f)| (*v, f.is_some())).collect();
        assert_eq!(
            values,
            [
                (0, false), // protocol version
                (1, false), // our id
                (-1, true), // shared memory
                (0, true),  // peer 0 (the engine), vector 0
                (0, true),  // peer 0, vector 1
                (1, true),  // our own vector 0
                (1, true),  // our own vector 1
            ]
        );
        let mut fd = |k: usize| msgs[k].1.take().unwrap();
        let memfd = fd(2);
        let doorbell = EventFd::from(fd(3));
        let vectors = [EventFd::from(fd(5)), EventFd::from(fd(6))];
        let len = std::fs::File::from(memfd.try_clone().unwrap())
            .metadata()
            .unwrap()
            .len();
        assert_eq!(len, BAR_SIZE, "the memfd has the BAR2 size");
        let bar = Mapping::new(memfd.as_fd(), BAR_SIZE as usize).unwrap();
        let ram = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(rig.dir.join("ram"))
            .unwrap();
        let ram = Mapping::of_file(&ram, RAM_SIZE).unwrap();
        Self {
            _stream: s,
            mem: SharedMemory::new(vec![bar], Some(ram)),
            doorbell,
            vectors,
            head: 0,
        }
    }

    fn reg32(&self, at: u64) -> u32 {
        self.mem.read_u32(Target::Bar(0), at).unwrap()
    }

    fn reg64(&self, at: u64) -> u64 {
        self.mem.read_u64(Target::Bar(0), at).unwrap()
    }

    /// Page tables as the driver would build them: own VRAM, guest RAM,
    /// and every device's VRAM through the bus.
    fn map(&mut self) {
        let bar = Target::Bar(0);
        let mut m = Mapper::new(&mut self.mem, bar, 0x1000, 0x10_0000).unwrap();
        m.map(
            &mut self.mem,
            W_VRAM,
            Aperture::Vram(2 * MIB),
            8 * MIB,
            pte::PAGE_2M,
            true,
        )
        .unwrap();
        m.map(
            &mut self.mem,
            W_RAM,
            Aperture::Bus(MIB),
            64 << 10,
            pte::PAGE_4K,
            true,
        )
        .unwrap();
        for (i, base) in BASES.iter().enumerate() {
            let bus = base + VRAM_OFFSET + 2 * MIB;
            m.map(
                &mut self.mem,
                w_bus(i),
                Aperture::Bus(bus),
                8 * MIB,
                pte::PAGE_2M,
                true,
            )
            .unwrap();
        }
        self.mem.write_u64(bar, ctrl::MMU_ROOT, m.root()).unwrap();
    }

    /// Queues `cmds`, publishes the head and rings the engine.
    fn submit(&mut self, cmds: &[Cmd]) {
        self.queue(cmds);
        self.doorbell.signal().unwrap();
    }

    /// Queues `cmds` and publishes the head, without the doorbell.
    fn queue(&mut self, cmds: &[Cmd]) {
        let (ring, size) = (self.reg64(ctrl::RING_OFFSET), self.reg64(ctrl::RING_SIZE));
        for c in cmds {
            let at = ring + (u64::from(self.head) * 64) % size;
            self.mem.write(Target::Bar(0), at, &c.encode()).unwrap();
            self.head = self.head.wrapping_add(1);
        }
        self.mem
            .write_u32(Target::Bar(0), ctrl::RING_HEAD, self.head)
            .unwrap();
    }

    /// Whether the engine reads the ring head on its own (`RING_POLL`).
    fn awake(&self) -> bool {
        self.reg32(ctrl::RING_POLL) & ctrl::RING_POLL_AWAKE != 0
    }

    /// Waits for MSI-X vector `v`; returns how often it was raised.
    fn wait_vector(&self, v: usize) -> u64 {
        let fd = &self.vectors[v];
        assert!(
            sys::poll_readable(fd.as_fd(), Some(WAIT)).unwrap(),
            "vector {v} was not raised"
        );
        fd.drain().unwrap()
    }

    fn quiet(&self, v: usize) -> bool {
        !sys::poll_readable(self.vectors[v].as_fd(), Some(Duration::ZERO)).unwrap()
    }

    fn vram(&self, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.mem
            .read(Target::Bar(0), VRAM_OFFSET + off, &mut b)
            .unwrap();
        b
    }
}

fn fill(dst: u64, len: u64, pattern: u64) -> Cmd {
    Cmd {
        seqno: 1,
        irq: false,
        op: Op::Fill { dst, len, pattern },
    }
}

fn copy(src: u64, dst: u64, len: u64) -> Cmd {
    Cmd {
        seqno: 2,
        irq: false,
        op: Op::Copy { src, dst, len },
    }
}

fn fence(seqno: u64) -> Cmd {
    Cmd {
        seqno,
        irq: true,
        op: Op::Fence,
    }
}

fn pattern_bytes(p: u64, len: usize) -> Vec<u8> {
    p.to_le_bytes().iter().copied().cycle().take(len).collect()
}

#[test]
fn fill_copy_and_fence_through_the_real_server() {
    let mut rig = Rig::start("fill", 4, "switch3+rp1");
    for i in 0..4 {
        assert!(rig.socket(i).exists(), "dev{i}.sock");
    }
    let mut q = Qemu::connect(&rig, 0);
    // Power-on state.
    let mut sig = [0; 8];
    q.mem
        .read(Target::Bar(0), ctrl::SIGNATURE, &mut sig)
        .unwrap();
    assert_eq!(&sig, b"CNFXACCL");
    assert_eq!(q.reg32(ctrl::STATUS), ctrl::STATUS_READY);
    assert_eq!(q.reg64(ctrl::BAR_SIZE), BAR_SIZE);
    assert_eq!(q.reg64(ctrl::RING_OFFSET), 0x1000);

    q.map();
    let p = 0x8877_6655_4433_2211;
    q.submit(&[
        fill(W_VRAM + 3, 1000, p),
        copy(W_VRAM + 3, W_RAM + 5, 1000),
        fence(0x1234),
    ]);
    assert_eq!(q.wait_vector(0), 1);
    assert!(q.quiet(1), "no error vector");
    assert_eq!(q.reg64(ctrl::FENCE_SEQNO), 0x1234);
    assert_eq!(q.reg32(ctrl::RING_TAIL), 3);
    assert_eq!(q.reg64(ctrl::CNT_COMMANDS), 3);
    let want = pattern_bytes(p, 1000);
    assert_eq!(q.vram(2 * MIB + 3, 1000), want);
    // The copy landed in the guest's RAM file at bus address 1 MiB + 5.
    let ram = std::fs::read(rig.dir.join("ram")).unwrap();
    assert_eq!(ram.len() as u64, RAM_SIZE);
    assert_eq!(ram[MIB as usize + 5..][..1000], want[..]);
    assert!(ram[MIB as usize..][..5].iter().all(|&b| b == 0));

    // A zeroed slot (opcode 0) is malformed: the error vector.
    let at = q.reg64(ctrl::RING_OFFSET) + u64::from(q.head) * 64;
    q.mem.write(Target::Bar(0), at, &[0; 64]).unwrap();
    q.head += 1;
    q.mem
        .write_u32(Target::Bar(0), ctrl::RING_HEAD, q.head)
        .unwrap();
    q.doorbell.signal().unwrap();
    assert_eq!(q.wait_vector(1), 1);
    assert_eq!(q.reg32(ctrl::STATUS), ctrl::STATUS_ERROR);
    assert_eq!(q.reg32(ctrl::ERR_CAUSE), 5);
    assert_eq!(q.reg32(ctrl::RING_TAIL), 3);

    // QEMU goes away: the server exits, removes its sockets and reports.
    drop(q);
    let (status, err) = rig.wait();
    assert!(status.success(), "{status}: {err}");
    for i in 0..4 {
        assert!(!rig.socket(i).exists(), "dev{i}.sock was left behind");
    }
    assert!(
        err.contains(
            "conflux-emu: dev0: local 1000 bytes, p2p 0 bytes, system 1000 bytes, \
             3 commands, 1 errors"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "conflux-emu: dev3: local 0 bytes, p2p 0 bytes, system 0 bytes, 0 commands, 0 errors"
        ),
        "{err}"
    );
}

#[test]
fn a_busy_engine_needs_no_doorbell() {
    // A long window, so that the engine is still awake when the test looks.
    let rig = Rig::start_with("poll", 1, "switch3+rp1", &["--poll-us", "500000"]);
    let mut q = Qemu::connect(&rig, 0);
    q.map();
    assert!(!q.awake(), "asleep before the first doorbell");
    q.submit(&[fill(W_VRAM, 64, 1), fence(1)]);
    assert_eq!(q.wait_vector(0), 1);
    assert!(q.awake(), "awake after a doorbell");
    // Awake: a new head runs without a doorbell.
    q.queue(&[fill(W_VRAM + 64, 64, 2), fence(2)]);
    assert_eq!(q.wait_vector(0), 1);
    assert_eq!(q.reg64(ctrl::FENCE_SEQNO), 2);
    assert_eq!(q.vram(2 * MIB + 64, 64), pattern_bytes(2, 64));
    // Its window over, the engine sleeps: a new head waits for the doorbell.
    let start = Instant::now();
    while q.awake() {
        assert!(start.elapsed() < WAIT, "still awake after {WAIT:?}");
        thread::sleep(Duration::from_millis(10));
    }
    // Past its last look at the head, which follows `AWAKE` by microseconds.
    thread::sleep(Duration::from_millis(50));
    q.queue(&[fill(W_VRAM + 128, 64, 3), fence(3)]);
    thread::sleep(Duration::from_millis(200));
    assert!(
        q.quiet(0),
        "a head written to a sleeping engine ran without a doorbell"
    );
    assert_eq!(q.reg64(ctrl::FENCE_SEQNO), 2);
    q.doorbell.signal().unwrap();
    assert_eq!(q.wait_vector(0), 1);
    assert_eq!(q.reg64(ctrl::FENCE_SEQNO), 3);
    assert!(q.quiet(1), "no error vector");

    // With no window, the engine never says it is awake.
    let rig = Rig::start_with("nopoll", 1, "switch3+rp1", &["--poll-us", "0"]);
    let mut q = Qemu::connect(&rig, 0);
    q.map();
    q.submit(&[fill(W_VRAM, 64, 1), fence(1)]);
    assert_eq!(q.wait_vector(0), 1);
    assert!(!q.awake(), "awake with --poll-us 0");
}

/// Waits until `f` holds, for [`WAIT`] at most.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "{what}: not after {WAIT:?}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_user_queue_runs_from_its_doorbell_page_alone() {
    let rig = Rig::start("uq", 1, "switch3+rp1");
    let mut q = Qemu::connect(&rig, 0);
    q.map();
    let bar = Target::Bar(0);
    let (n, ring) = (3, W_VRAM + MIB);
    let reg = |at| queue_reg(n, at);
    let root = q.reg64(ctrl::MMU_ROOT);
    for (at, v) in [
        (queue::RING_VA, ring),
        (queue::RING_SIZE, 0x1000),
        (queue::MMU_ROOT, root),
        (queue::PROGRESS, 0),
    ] {
        q.mem.write_u64(bar, reg(at), v).unwrap();
    }
    q.mem.write_u32(bar, reg(queue::TAIL), 0).unwrap();
    q.mem.write_u32(bar, doorbell_page(n), 0).unwrap();
    q.mem
        .write_u32(bar, reg(queue::CONTROL), queue::CONTROL_ENABLE)
        .unwrap();
    q.doorbell.signal().unwrap();
    until("the queue runs", || {
        q.reg32(reg(queue::STATUS)) == queue::STATUS_RUNNING
    });
    // Long after the doorbell: the slots and the head in the doorbell page are enough.
    thread::sleep(Duration::from_millis(50));
    let mut head = 0u32;
    let mut push = |q: &mut Qemu, cmds: &[Cmd]| {
        for c in cmds {
            let at = VRAM_OFFSET + 3 * MIB + u64::from(head % 64) * 64;
            q.mem.write(bar, at, &c.encode()).unwrap();
            head += 1;
        }
        q.mem.write_u32(bar, doorbell_page(n), head).unwrap();
    };
    let (flag, done) = (W_VRAM + 0x1000, W_VRAM + 0x2000);
    let signal = |value, irq| Cmd {
        seqno: 9,
        irq,
        op: Op::WriteValue { dst: done, value },
    };
    push(&mut q, &[fill(W_VRAM + 0x3000, 64, 5), signal(1, true)]);
    assert_eq!(q.wait_vector(0), 1);
    assert_eq!(q.vram(2 * MIB + 0x2000, 8), 1u64.to_le_bytes());
    assert_eq!(q.vram(2 * MIB + 0x3000, 64), pattern_bytes(5, 64));
    assert_eq!(q.reg32(reg(queue::EVENTS)), 1);
    // A wait that memory written by the CPU releases, without a doorbell.
    let wait = Cmd {
        seqno: 10,
        irq: false,
        op: Op::WaitValue {
            va: flag,
            value: 1,
            mask: 1,
            compare: Compare::Eq,
        },
    };
    push(&mut q, &[wait, signal(2, true)]);
    thread::sleep(Duration::from_millis(30));
    assert!(
        q.quiet(0),
        "a WAIT_VALUE that does not hold let the queue on"
    );
    assert_eq!(q.vram(2 * MIB + 0x2000, 8), 1u64.to_le_bytes());
    q.mem
        .write_u64(bar, VRAM_OFFSET + 2 * MIB + 0x1000, 3)
        .unwrap();
    assert_eq!(q.wait_vector(0), 1);
    assert_eq!(q.vram(2 * MIB + 0x2000, 8), 2u64.to_le_bytes());
    // Preempted on the driver's request, and resumed.
    // A queue that waits is preempted at once, its wait at the tail.
    let blocked = Op::WaitValue {
        va: flag,
        value: 2,
        mask: 3,
        compare: Compare::Eq,
    };
    push(
        &mut q,
        &[Cmd {
            op: blocked,
            ..wait
        }],
    );
    let preempt = queue::CONTROL_ENABLE | queue::CONTROL_PREEMPT;
    q.mem.write_u32(bar, reg(queue::CONTROL), preempt).unwrap();
    q.doorbell.signal().unwrap();
    assert_eq!(q.wait_vector(0), 1);
    assert_eq!(q.reg32(reg(queue::STATUS)), queue::STATUS_PREEMPTED);
    assert_eq!(q.reg32(reg(queue::TAIL)), 4);
    assert!(q.quiet(1), "no error vector");
}

#[test]
fn peer_to_peer_follows_the_fabric_from_qmp() {
    for (topology, across) in [("switch3+rp1", false), ("switch3+rp1-zen", true)] {
        let mut rig = Rig::start("p2p", 4, topology);
        let mut q0 = Qemu::connect(&rig, 0);
        let q1 = Qemu::connect(&rig, 1);
        let q3 = Qemu::connect(&rig, 3);
        q0.map();
        // cfx0 -> cfx1: below one switch, always allowed.
        let p = 0x0102_0304_0506_0708;
        q0.submit(&[
            fill(W_VRAM, 3 * MIB, p),
            copy(W_VRAM + 1, w_bus(1) + 7, 3 * MIB - 1),
            fence(1),
        ]);
        assert_eq!(q0.wait_vector(0), 1);
        assert_eq!(q0.reg64(ctrl::FENCE_SEQNO), 1, "{topology}");
        assert_eq!(
            q1.vram(2 * MIB + 7, 3 * MIB as usize - 1),
            pattern_bytes(p, 3 * MIB as usize)[1..]
        );
        assert_eq!(q0.reg64(ctrl::CNT_P2P_BYTES), 3 * MIB - 1);
        // cfx0 -> cfx3: through the host bridge, only on Zen.
        q0.submit(&[copy(W_VRAM, w_bus(3), 4096), fence(2)]);
        if across {
            assert_eq!(q0.wait_vector(0), 1);
            assert_eq!(q3.vram(2 * MIB, 4096), pattern_bytes(p, 4096));
            assert!(q0.quiet(1));
        } else {
            assert_eq!(q0.wait_vector(1), 1);
            assert_eq!(q0.reg32(ctrl::ERR_CAUSE), 3, "peer unreachable");
            assert_eq!(q0.reg64(ctrl::ERR_VA), w_bus(3));
            assert!(q3.vram(2 * MIB, 4096).iter().all(|&b| b == 0));
        }
        drop((q0, q1, q3));
        let (status, err) = rig.wait();
        assert!(status.success(), "{status}: {err}");
        assert!(err.contains("BAR2 at dev0 0xf4000000"), "{err}");
    }
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut rig = Rig::start("term", 2, "switch3+rp1");
    let _q = Qemu::connect(&rig, 1);
    let pid = rig.child.as_ref().unwrap().id();
    sys::kill(pid, libc::SIGTERM).unwrap();
    let (status, err) = rig.wait();
    assert!(status.success(), "{status}: {err}");
    assert!(!rig.socket(0).exists() && !rig.socket(1).exists());
    assert!(err.contains("conflux-emu: dev1: local 0 bytes"), "{err}");
}

/// Runs `c` to its end (killing it after [`WAIT`]) and returns its exit
/// code and standard error.
fn finish(mut c: Command) -> (Option<i32>, String) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{c:?} did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    };
    (status.code(), err.join().unwrap())
}

/// `serve` in `dir` with every option, `changes` replacing some values.
fn serve_in(dir: &Path, changes: &[(&str, &str)]) -> Command {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let mut opts: Vec<(&str, String)> = vec![
        ("--run-dir", path("")),
        ("--devices", "2".into()),
        ("--bar-size", "4M".into()),
        ("--topology", "switch3+rp1".into()),
        ("--qmp", path("qmp.sock")),
        ("--guest-ram", path("ram")),
        ("--guest-ram-size", "1M".into()),
    ];
    for (name, value) in changes {
        opts.iter_mut()
            .filter(|(n, _)| n == name)
            .for_each(|(_, v)| *v = value.to_string());
    }
    let mut c = Command::new(env!("CARGO_BIN_EXE_conflux-emu"));
    c.arg("serve");
    for (n, v) in opts {
        c.args([n, &v]);
    }
    c
}

#[test]
fn startup_errors_exit_with_status_2() {
    // A socket in use by another server.
    let mut a = Rig::start("busy", 1, "switch3+rp1");
    let (code, err) = finish(a.command(1, "switch3+rp1", &a.dir));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("device 0") && err.contains("dev0.sock") && err.contains("in use"),
        "{err}"
    );
    // The first server is unharmed: it did not see a client.
    assert!(a.socket(0).exists());
    sys::kill(a.child.as_ref().unwrap().id(), libc::SIGTERM).unwrap();
    let (status, err) = a.wait();
    assert!(status.success(), "{err}");
    assert!(!err.contains("disconnected"), "{err}");

    // The guard removes the directory and kills what it holds.
    let mut rig = Rig {
        dir: temp_dir("errors"),
        child: None,
        stderr: None,
    };
    let dir = rig.dir.clone();
    for (changes, needle) in [
        (vec![("--topology", "mesh")], "switch3+rp1, switch3+rp1-zen"),
        (vec![("--bar-size", "3M")], "--bar-size"),
        (vec![("--devices", "0")], "--devices"),
        (vec![("--guest-ram-size", "lots")], "\"lots\""),
        (vec![("--run-dir", "/nonexistent/run")], "/nonexistent/run"),
        (
            vec![("--guest-ram", "/nonexistent/ram")],
            "/nonexistent/ram",
        ),
    ] {
        let (code, err) = finish(serve_in(&dir, &changes));
        assert_eq!(code, Some(2), "{changes:?}: {err}");
        assert!(err.contains(needle), "{changes:?}: {err}");
    }
    // Something that is not a socket where dev1.sock goes; dev0.sock,
    // made before, is removed again.
    std::fs::write(dir.join("dev1.sock"), b"x").unwrap();
    let (code, err) = finish(serve_in(&dir, &[]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("device 1") && err.contains("not a socket"),
        "{err}"
    );
    assert!(!dir.join("dev0.sock").exists());
    std::fs::remove_file(dir.join("dev1.sock")).unwrap();
    // A stale socket (nobody listening) is replaced.
    drop(UnixListener::bind(dir.join("dev0.sock")).unwrap());
    let mut c = serve_in(&dir, &[]);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    rig.child = Some(c.spawn().unwrap());
    let child = rig.child.as_mut().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "conflux-emu: ready\n");
    sys::kill(child.id(), libc::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    rig.child = None;
    assert!(!dir.join("dev0.sock").exists());
}

#[test]
fn memcpy_bench_prints_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_conflux-emu"))
        .args(["memcpy-bench", "--size", "1M"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    let rate = s
        .strip_prefix("host memcpy 1 MiB: ")
        .and_then(|r| r.strip_suffix(" MB/s\n"))
        .unwrap_or_else(|| panic!("{s:?}"));
    assert!(rate.parse::<u64>().unwrap() > 0);
    let out = Command::new(env!("CARGO_BIN_EXE_conflux-emu"))
        .args(["memcpy-bench", "--size", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
