// SPDX-License-Identifier: GPL-2.0

//! The `conflux-emu serve` server: the `ivshmem` server of every device's
//! `ivshmem-doorbell`, and the loop that runs their engines on doorbells.
//!
//! For each device it listens on `DIR/dev{i}.sock`, accepts one client
//! (QEMU), hands it the device's BAR2 memfd and the eventfds of the
//! `ivshmem` protocol, and from then on runs [`Engine::process`] whenever
//! the guest rings the engine (peer 0, vector 0), raising the MSI-X vectors
//! the engine returns. The fabric is learned from QEMU over QMP at the
//! first doorbell.
//!
//! Each device's engine runs on a thread of its own, as real devices run
//! side by side: the main thread only watches the sockets and doorbells and
//! passes doorbells on, so one device's long job stalls no other device.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read},
    os::{
        fd::AsFd,
        unix::{
            fs::FileTypeExt,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{fence, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use conflux_device::{
    regs::{bar0, ctrl, Layout},
    shm::{self, Mapping, SharedMemory},
};

use crate::{
    engine::{Counters, Engine},
    fabric::{Bar, Topology, RIGS},
    qmp::{self, Expected, QueryError},
    sys::{self, Epoll, EventFd, SignalFd, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLRDHUP},
};

/// Most devices one server runs.
pub const MAX_DEVICES: usize = 64;

/// How long a QMP query may wait for QEMU to listen.
const QMP_PATIENCE: Duration = Duration::from_secs(1);
/// How long a QMP query waits for an answer.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a doorbell waiting for the fabric retries the query.
const RETRY: Duration = Duration::from_millis(250);

/// The `serve` command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Directory of the sockets `dev{i}.sock`.
    pub run_dir: PathBuf,
    /// Number of devices.
    pub devices: usize,
    /// Size of every device's BAR2.
    pub bar_size: u64,
    /// Name of the topology (one of [`RIGS`]); a name ending in `-zen`
    /// lets the host bridge route peer-to-peer traffic.
    pub topology: String,
    /// QEMU's QMP socket.
    pub qmp: PathBuf,
    /// The file that backs the guest's RAM.
    pub guest_ram: PathBuf,
    /// Size of the guest's RAM.
    pub guest_ram_size: u64,
    /// The file that backs the BAR2 of a plain ivshmem function with id
    /// `plain0`, and its size: memory the devices can copy to and from.
    pub plain: Option<(PathBuf, u64)>,
    /// How long an engine keeps reading its ring head after it emptied the
    /// ring, with `RING_POLL`'s `AWAKE` set; zero never sets it.
    pub poll: Duration,
    /// The capabilities every device advertises and honours: `CAP_ALL`
    /// unless `--caps` takes some away.
    pub caps: u32,
}

/// The options of `serve`, all required.
pub const SERVE_OPTIONS: [&str; 7] = [
    "--run-dir",
    "--devices",
    "--bar-size",
    "--topology",
    "--qmp",
    "--guest-ram",
    "--guest-ram-size",
];

/// The options of `serve` that may be left out, together.
pub const PLAIN_OPTIONS: [&str; 2] = ["--plain", "--plain-size"];

/// The option of `serve` that sets [`Config::poll`], in microseconds.
pub const POLL_OPTION: &str = "--poll-us";

/// The option of `serve` that sets [`Config::caps`], a subset of `CAP_ALL`.
pub const CAPS_OPTION: &str = "--caps";

/// [`Config::poll`] when `--poll-us` is left out.
pub const DEFAULT_POLL: Duration = Duration::from_millis(1);

/// How long an awake engine sleeps between two looks at the ring head: a
/// spinning thread would take a CPU from the guest's.
const POLL_NAP: Duration = Duration::from_micros(1);

/// How often the engine looks at the doorbell pages of running user queues,
/// and at the values their `WAIT_VALUE`s wait for, when none of them did
/// anything for `--poll-us`.
const QUEUE_NAP: Duration = Duration::from_millis(1);

/// The longest `--poll-us`: one second.
const MAX_POLL_US: u64 = 1_000_000;

/// The line `serve` prints on standard output once every socket listens.
pub const READY: &str = "conflux-emu: ready";

/// Usage of the `conflux-emu` binary.
pub const USAGE: &str = "\
usage: conflux-emu serve --run-dir DIR --devices N --bar-size BYTES --topology NAME
                         --qmp PATH --guest-ram PATH --guest-ram-size BYTES
                         [--plain PATH --plain-size BYTES] [--poll-us MICROSECONDS]
                         [--caps MASK]
       conflux-emu memcpy-bench --size BYTES [--threads N] [--in private|shared]
BYTES: an integer with an optional K, M or G suffix (powers of 1024)";

/// Parses a size: an integer with an optional `K`, `M` or `G` suffix
/// (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.char_indices().last() {
        Some((at, 'K' | 'k')) => (&s[..at], 10),
        Some((at, 'M' | 'm')) => (&s[..at], 20),
        Some((at, 'G' | 'g')) => (&s[..at], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?} is not a size (an integer with an optional K, M or G suffix)"
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("size {s:?} does not fit in 64 bits"))
}

/// `n` bytes for humans: `64 MiB`, `3 KiB`, `1000 bytes`.
pub fn human_size(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// Collects `--name value` and `--name=value` options; every name must be
/// in `known` and given at most once.
pub fn options(args: &[String], known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, value) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), v.to_string()),
            _ if a.starts_with("--") => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("option {a} needs a value"))?;
                (a.clone(), v.clone())
            }
            _ => return Err(format!("unexpected argument {a:?}")),
        };
        if !known.contains(&name.as_str()) {
            return Err(format!(
                "unknown option {name}; known: {}",
                known.join(", ")
            ));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("option {name} given twice"));
        }
        out.push((name, value));
    }
    Ok(out)
}

impl Config {
    /// Parses the arguments that follow `serve`.
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        let known: Vec<&str> = SERVE_OPTIONS
            .iter()
            .chain(&PLAIN_OPTIONS)
            .chain(&[POLL_OPTION, CAPS_OPTION])
            .copied()
            .collect();
        let opts = options(args, &known)?;
        let get = |name: &str| {
            opts.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("missing option {name}"))
        };
        let size =
            |name: &str| get(name).and_then(|v| parse_size(&v).map_err(|e| format!("{name}: {e}")));
        let devices = get("--devices")?;
        let devices = devices
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_DEVICES).contains(n))
            .ok_or_else(|| {
                format!("--devices: {devices:?} is not a number from 1 to {MAX_DEVICES}")
            })?;
        let bar_size = size("--bar-size")?;
        Layout::new(bar_size).map_err(|e| format!("--bar-size: {e}"))?;
        let topology = get("--topology")?;
        if !RIGS.contains(&topology.as_str()) {
            return Err(format!(
                "--topology: unknown topology {topology:?}, known: {}",
                RIGS.join(", ")
            ));
        }
        let guest_ram_size = size("--guest-ram-size")?;
        if guest_ram_size == 0 {
            return Err("--guest-ram-size: the guest needs some RAM".into());
        }
        let plain = match (get("--plain"), size("--plain-size")) {
            (Ok(path), Ok(len)) if len > 0 && len.is_power_of_two() => Some((path.into(), len)),
            (Ok(_), Ok(len)) => {
                return Err(format!(
                    "--plain-size: {len:#x} is not a BAR size (a power of two)"
                ))
            }
            (Err(_), Err(_)) => None,
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => {
                return Err(format!("--plain and --plain-size go together: {e}"))
            }
        };
        let poll = match get(POLL_OPTION) {
            Err(_) => DEFAULT_POLL,
            Ok(us) => us
                .parse::<u64>()
                .ok()
                .filter(|us| *us <= MAX_POLL_US)
                .map(Duration::from_micros)
                .ok_or_else(|| {
                    format!("{POLL_OPTION}: {us:?} is not 0 to {MAX_POLL_US} microseconds")
                })?,
        };
        let caps = match get(CAPS_OPTION) {
            Err(_) => ctrl::CAP_ALL,
            Ok(v) => v
                .strip_prefix("0x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .filter(|c| c & !ctrl::CAP_ALL == 0)
                .ok_or_else(|| {
                    format!(
                        "{CAPS_OPTION}: {v:?} is not a hexadecimal mask (0x...) of bits of {:#x}",
                        ctrl::CAP_ALL
                    )
                })?,
        };
        Ok(Self {
            run_dir: get("--run-dir")?.into(),
            devices,
            bar_size,
            topology,
            qmp: get("--qmp")?.into(),
            guest_ram: get("--guest-ram")?.into(),
            guest_ram_size,
            plain,
            poll,
            caps,
        })
    }

    /// Whether the host bridge routes peer-to-peer traffic.
    pub fn host_bridge_p2p(&self) -> bool {
        self.topology.ends_with("-zen")
    }

    /// The socket of device `i`.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.run_dir.join(format!("dev{i}.sock"))
    }
}

/// An error at startup, with its context.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// The client (QEMU) of a device, after the handshake.
struct Client {
    stream: UnixStream,
    /// The engine's eventfds (peer 0), one per vector; the guest rings
    /// vector 0.
    engine: Vec<EventFd>,
}

struct Device {
    socket: PathBuf,
    listener: Option<UnixListener>,
    memfd: File,
    client: Option<Client>,
    worker: Worker,
    /// A doorbell waits for the fabric.
    pending: bool,
}

/// What the main thread asks of a device's thread.
enum Request {
    /// Move the engine into this fabric; the answer says whether it could.
    Topology(Arc<Topology>, mpsc::Sender<Result<(), String>>),
    /// A client connected: raise these MSI-X vectors from now on (the
    /// client's eventfds, peer 1: writing one raises that vector).
    Vectors(Vec<EventFd>),
    /// Watch the engine's doorbell from now on: the main thread watches it
    /// until the fabric is known, then hands it over, which spares every
    /// doorbell a trip through the main thread.
    Watch(EventFd),
    /// The client has gone: stop watching its doorbell.
    Unwatch,
    /// The guest rang the engine's doorbell while the main thread watched
    /// it.
    Doorbell,
}

/// The epoll token of a device thread's wake-up eventfd.
const WAKE: u64 = 0;
/// The epoll token of the engine's doorbell, in a device thread.
const DOORBELL: u64 = 1;

/// The thread that runs a device's engine, which it gives back when the
/// server lets go of it.
struct Worker {
    requests: Option<mpsc::Sender<Request>>,
    /// Signalled after each request, and when the server lets go.
    wake: Arc<EventFd>,
    thread: Option<thread::JoinHandle<Engine>>,
    /// The counters of the engine once it is given back.
    counters: Option<Counters>,
}

impl Worker {
    fn start(i: usize, engine: Engine, mem: Arc<SharedMemory>, poll: Duration) -> io::Result<Self> {
        let (requests, inbox) = mpsc::channel();
        let wake = Arc::new(EventFd::new()?);
        let epoll = Epoll::new()?;
        epoll.add(wake.as_fd(), WAKE, EPOLLIN)?;
        let woken = Arc::clone(&wake);
        let thread = thread::Builder::new()
            .name(format!("conflux-dev{i}"))
            .spawn(move || serve_device(i, engine, &mem, &inbox, &epoll, &woken, poll))?;
        Ok(Self {
            requests: Some(requests),
            wake,
            thread: Some(thread),
            counters: None,
        })
    }

    fn send(&self, request: Request) {
        if let Some(r) = &self.requests {
            // Only fails once the thread has ended, which it does only when
            // the server lets go of it.
            if r.send(request).is_ok() {
                self.kick();
            }
        }
    }

    fn kick(&self) {
        if let Err(e) = self.wake.signal() {
            eprintln!("conflux-emu: waking a device thread: {e}");
        }
    }

    /// Stops the thread and keeps the engine's counters.
    fn stop(&mut self) -> Option<Counters> {
        self.requests = None;
        self.kick();
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(engine) => self.counters = Some(engine.counters()),
                Err(_) => eprintln!("conflux-emu: a device thread panicked"),
            }
        }
        self.counters
    }
}

/// A device's thread: runs the engine on each doorbell, several queued
/// doorbells at once, until the server lets go of it. It waits on its
/// wake-up eventfd, which tells it of requests, and on the engine's doorbell
/// once the main thread hands it over. After each doorbell it stays awake
/// for `poll`: it reads the ring head every [`POLL_NAP`], sleeping in
/// between, and runs the engine when the head moves, without a doorbell
/// (device.rst, "Skipping the doorbell").
fn serve_device(
    i: usize,
    mut engine: Engine,
    mem: &SharedMemory,
    inbox: &mpsc::Receiver<Request>,
    epoll: &Epoll,
    wake: &EventFd,
    poll: Duration,
) -> Engine {
    let mut vectors = Vec::new();
    let mut doorbell: Option<EventFd> = None;
    // While the engine is awake: until when it polls the ring head.
    let mut awake_until: Option<Instant> = None;
    // The user queues: whether one has work it can do now, whether one runs, and until when
    // their doorbell pages are looked at every nap rather than every `QUEUE_NAP`.
    let (mut busy, mut active) = (false, false);
    let mut queues_awake_until: Option<Instant> = None;
    // The naps between two looks at the ring head are short.
    if let Err(e) = sys::fine_timers() {
        eprintln!("conflux-emu: device {i}: setting the timer slack: {e}");
    }
    loop {
        // Awake, it only looks for events, and reads the ring head; with queues that run, it
        // looks at them every `QUEUE_NAP` at least.
        let now = Instant::now();
        let queues_awake = queues_awake_until.is_some_and(|t| now < t);
        let timeout = match (
            busy || awake_until.is_some() || (active && queues_awake),
            active,
        ) {
            (true, _) => Some(Duration::ZERO),
            (false, true) => Some(QUEUE_NAP),
            (false, false) => None,
        };
        let events = match epoll.wait(timeout) {
            Ok(events) => events,
            Err(e) => {
                eprintln!("conflux-emu: device {i}: waiting for doorbells: {e}");
                return engine;
            }
        };
        let mut ring = false;
        for (token, _) in events {
            let fd = match token {
                WAKE => Some(wake),
                DOORBELL => {
                    ring = true;
                    doorbell.as_ref()
                }
                _ => None,
            };
            if let Some(Err(e)) = fd.map(EventFd::drain) {
                eprintln!("conflux-emu: device {i}: reading an eventfd: {e}");
            }
        }
        loop {
            match inbox.try_recv() {
                Ok(Request::Topology(topology, answer)) => {
                    let _ = answer.send(engine.set_topology(topology).map_err(|e| e.to_string()));
                }
                Ok(Request::Vectors(v)) => vectors = v,
                Ok(Request::Watch(fd)) => {
                    if let Some(old) = doorbell.take() {
                        let _ = epoll.delete(old.as_fd());
                    }
                    match epoll.add(fd.as_fd(), DOORBELL, EPOLLIN) {
                        Ok(()) => doorbell = Some(fd),
                        Err(e) => eprintln!("conflux-emu: device {i}: watching the doorbell: {e}"),
                    }
                    // It may have rung while it changed hands.
                    ring = true;
                }
                Ok(Request::Unwatch) => {
                    if let Some(old) = doorbell.take() {
                        let _ = epoll.delete(old.as_fd());
                    }
                }
                Ok(Request::Doorbell) => ring = true,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return engine,
            }
        }
        let mut nap = false;
        if let (false, Some(until)) = (ring, awake_until) {
            if engine.head_moved(&mem) {
                ring = true;
            } else if Instant::now() < until {
                nap = true;
            } else {
                // Asleep, then one more look: a head written before the
                // driver could see `AWAKE` clear is not missed.
                engine.set_awake(&mut &*mem, false);
                fence(Ordering::SeqCst);
                ring = engine.head_moved(&mem);
                awake_until = None;
            }
        }
        if ring && engine.exit_requested(&mem) {
            // The jobs in the ring stay unfinished, as with a crash.
            eprintln!("conflux-emu: device {i}: FAULT_EXIT: the model dies, as if killed");
            let _ = sys::kill(std::process::id(), libc::SIGKILL);
        }
        if ring {
            if !poll.is_zero() {
                engine.set_awake(&mut &*mem, true);
            }
            process(i, &mut engine, mem, &vectors);
            if !poll.is_zero() {
                awake_until = Some(Instant::now() + poll);
            }
        }
        let out = engine.run_queues(&mut &*mem);
        for (q, e) in &out.errors {
            eprintln!("conflux-emu: device {i}: queue {q}: {e}");
        }
        if out.irq {
            raise(i, &vectors, bar0::VECTOR_COMPLETION);
        }
        (busy, active) = (out.busy, out.active);
        if out.completed > 0 || out.busy {
            queues_awake_until = Some(Instant::now() + poll);
        }
        let queues_awake = queues_awake_until.is_some_and(|t| Instant::now() < t);
        if !busy && (nap || (active && queues_awake)) {
            thread::sleep(POLL_NAP);
        }
    }
}

/// Raises vector `v` of device `i`.
fn raise(i: usize, vectors: &[EventFd], v: u16) {
    if let Some(fd) = vectors.get(usize::from(v)) {
        if let Err(e) = fd.signal() {
            eprintln!("conflux-emu: device {i}: raising vector {v}: {e}");
        }
    }
}

/// How long `FAULT_TEAR_SEQNO` tears `FENCE_SEQNO` after a completion.
const TEAR_FOR: Duration = Duration::from_millis(20);

/// Runs device `i`'s engine and raises the vectors it returns.
fn process(i: usize, engine: &mut Engine, mem: &SharedMemory, vectors: &[EventFd]) {
    let out = engine.process(&mut &*mem);
    if let Some(e) = &out.error {
        eprintln!("conflux-emu: device {i}: {e}");
    }
    for v in out.vectors() {
        raise(i, vectors, v);
    }
    let completed = out.vectors().any(|v| v == bar0::VECTOR_COMPLETION);
    if completed && engine.tear_requested(&mem) {
        let end = Instant::now() + TEAR_FOR;
        while Instant::now() < end {
            engine.tear_fence_seqno(&mut &*mem, 64);
        }
    }
}

/// What an epoll token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Signal,
    Listener(usize),
    Client(usize),
    Doorbell(usize),
}

impl Token {
    fn encode(self) -> u64 {
        let (kind, i) = match self {
            Self::Signal => (0, 0),
            Self::Listener(i) => (1, i),
            Self::Client(i) => (2, i),
            Self::Doorbell(i) => (3, i),
        };
        (kind << 32) | i as u64
    }

    fn decode(v: u64) -> Option<Self> {
        let i = usize::try_from(v & 0xffff_ffff).ok()?;
        Some(match v >> 32 {
            0 => Self::Signal,
            1 => Self::Listener(i),
            2 => Self::Client(i),
            3 => Self::Doorbell(i),
            _ => return None,
        })
    }
}

/// The running server.
pub struct Server {
    config: Config,
    devices: Vec<Device>,
    /// The sockets this server created, removed when it is dropped.
    sockets: Vec<PathBuf>,
    epoll: Epoll,
    signals: SignalFd,
    /// The fabric has been learned from QMP.
    fabric: bool,
    last_query: Option<Instant>,
    last_complaint: String,
    accepted: usize,
    connected: usize,
    stop: bool,
}

/// The paths of the listening UNIX sockets in a `/proc/net/unix` table.
fn listening_paths(table: &str) -> Vec<&str> {
    /// `__SO_ACCEPTCON`: the socket listens.
    const ACCEPTCON: u32 = 1 << 16;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode [Path]
            let mut rest = line.trim_start();
            let mut fields = Vec::new();
            for _ in 0..7 {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                fields.push(&rest[..end]);
                rest = rest[end..].trim_start();
            }
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            (flags & ACCEPTCON != 0 && !rest.is_empty()).then_some(rest)
        })
        .collect()
}

/// Removes a stale socket at `path`; fails if a server listens on it or if
/// something else is there. Listening is read from `/proc/net/unix` rather
/// than probed with a connection, which the server there would take for
/// its client.
fn free_socket(path: &Path) -> Result<(), String> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err("exists and is not a socket".into());
    }
    let table = fs::read_to_string("/proc/net/unix")
        .map_err(|e| format!("exists, and /proc/net/unix cannot tell whether it is in use: {e}"))?;
    let names = [
        Some(path.to_path_buf()),
        std::path::absolute(path).ok(),
        fs::canonicalize(path).ok(),
    ];
    let busy = listening_paths(&table)
        .into_iter()
        .any(|l| names.iter().flatten().any(|n| n.as_os_str() == l));
    if busy {
        return Err("is in use: a server listens on it".into());
    }
    fs::remove_file(path).map_err(|e| format!("removing the stale socket: {e}"))
}

/// Opens the guest-RAM file, creating it or growing it to `size` bytes if
/// needed, and maps it.
fn map_guest_ram(path: &Path, size: u64) -> Result<Mapping, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("opening: {e}"))?;
    let len = f.metadata().map_err(|e| format!("stat: {e}"))?.len();
    if len < size {
        f.set_len(size)
            .map_err(|e| format!("growing from {len} to {size} bytes: {e}"))?;
    }
    Mapping::of_file(&f, size).map_err(|e| format!("mapping {size} bytes: {e}"))
}

/// A topology that only serves to power the devices on before their bus
/// addresses are known: device `i` on a root port of its own.
fn placeholder(devices: usize, bar_size: u64) -> Result<Topology, String> {
    let mut t = Topology::new(false);
    for i in 0..devices {
        let base = (i as u64)
            .checked_mul(bar_size)
            .ok_or("BAR2 sizes overflow the bus")?;
        let port = t.add_root_port();
        t.add_device(
            port,
            Bar {
                base,
                size: bar_size,
            },
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(t)
}

impl Server {
    /// Creates every device's socket and BAR2, powers the devices on and
    /// maps the guest's RAM. Blocks `SIGTERM` and `SIGINT` for the calling
    /// thread: the server handles them.
    pub fn start(config: Config) -> Result<Self, StartError> {
        let err = StartError;
        let signals = SignalFd::new(&[libc::SIGTERM, libc::SIGINT])
            .map_err(|e| err(format!("setting up signal handling: {e}")))?;
        let epoll = Epoll::new().map_err(|e| err(format!("creating an epoll instance: {e}")))?;
        if !config.run_dir.is_dir() {
            return Err(err(format!(
                "--run-dir {}: not a directory",
                config.run_dir.display()
            )));
        }
        let bar_len = usize::try_from(config.bar_size)
            .map_err(|_| err(format!("--bar-size {:#x}: too large", config.bar_size)))?;
        let guest_ram = map_guest_ram(&config.guest_ram, config.guest_ram_size)
            .map_err(|e| err(format!("--guest-ram {}: {e}", config.guest_ram.display())))?;
        let topology = placeholder(config.devices, config.bar_size)
            .map_err(|e| err(format!("--devices: {e}")))?;
        let topology = Arc::new(topology);
        let mut server = Self {
            devices: Vec::new(),
            sockets: Vec::new(),
            epoll,
            signals,
            fabric: false,
            last_query: None,
            last_complaint: String::new(),
            accepted: 0,
            connected: 0,
            stop: false,
            config,
        };
        // On an error, dropping `server` removes the sockets made so far.
        let mut bars = Vec::new();
        let mut parts = Vec::new();
        for i in 0..server.config.devices {
            let socket = server.config.socket(i);
            let ctx = |e: String| err(format!("device {i}: socket {}: {e}", socket.display()));
            free_socket(&socket).map_err(ctx)?;
            let listener = UnixListener::bind(&socket).map_err(|e| ctx(e.to_string()))?;
            server.sockets.push(socket.clone());
            listener
                .set_nonblocking(true)
                .map_err(|e| ctx(e.to_string()))?;
            server
                .epoll
                .add(listener.as_fd(), Token::Listener(i).encode(), EPOLLIN)
                .map_err(|e| ctx(format!("watching: {e}")))?;
            let memfd = shm::memfd(&format!("conflux-bar2-dev{i}"), server.config.bar_size)
                .map_err(|e| {
                    err(format!(
                        "device {i}: creating a BAR2 memfd of {bar_len} bytes: {e}"
                    ))
                })?;
            let bar = Mapping::new(memfd.as_fd(), bar_len).map_err(|e| {
                err(format!(
                    "device {i}: mapping its BAR2 of {bar_len} bytes: {e}"
                ))
            })?;
            bars.push(bar);
            let engine = Engine::new(Arc::clone(&topology), i)
                .map_err(|e| err(format!("device {i}: {e}")))?
                .with_caps(server.config.caps);
            parts.push((socket, listener, memfd, engine));
        }
        let plain = match &server.config.plain {
            Some((path, len)) => vec![map_guest_ram(path, *len)
                .map_err(|e| err(format!("--plain {}: {e}", path.display())))?],
            None => Vec::new(),
        };
        let mem = Arc::new(SharedMemory::new(bars, Some(guest_ram)).with_plain(plain));
        for (i, (socket, listener, memfd, mut engine)) in parts.into_iter().enumerate() {
            engine
                .power_on(&mut &*mem)
                .map_err(|e| err(format!("device {i}: powering on: {e}")))?;
            let worker = Worker::start(i, engine, Arc::clone(&mem), server.config.poll)
                .map_err(|e| err(format!("device {i}: starting its thread: {e}")))?;
            server.devices.push(Device {
                socket,
                listener: Some(listener),
                memfd,
                client: None,
                worker,
                pending: false,
            });
        }
        server
            .epoll
            .add(server.signals.as_fd(), Token::Signal.encode(), EPOLLIN)
            .map_err(|e| err(format!("watching signals: {e}")))?;
        Ok(server)
    }

    /// Stops the devices' threads and returns their counters.
    pub fn counters(&mut self) -> Vec<Counters> {
        self.devices
            .iter_mut()
            .map(|d| d.worker.stop().unwrap_or_default())
            .collect()
    }

    /// Serves until `SIGTERM` or `SIGINT`, or until every client that
    /// connected has gone.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.stop {
            let waiting = self.devices.iter().any(|d| d.pending);
            let timeout = waiting.then_some(RETRY);
            for (token, events) in self.epoll.wait(timeout)? {
                match Token::decode(token) {
                    Some(Token::Signal) => self.on_signal()?,
                    Some(Token::Listener(i)) => self.on_accept(i),
                    Some(Token::Client(i)) => self.on_client(i, events),
                    Some(Token::Doorbell(i)) => self.on_doorbell(i),
                    None => {}
                }
            }
            if self.devices.iter().any(|d| d.pending) {
                self.service();
            }
            if self.accepted > 0 && self.connected == 0 {
                eprintln!("conflux-emu: every client has disconnected");
                self.stop = true;
            }
        }
        Ok(())
    }

    fn on_signal(&mut self) -> io::Result<()> {
        while let Some(signo) = self.signals.read()? {
            eprintln!("conflux-emu: signal {signo}, stopping");
            self.stop = true;
        }
        Ok(())
    }

    fn on_accept(&mut self, i: usize) {
        let Some(d) = self.devices.get_mut(i) else {
            return;
        };
        let Some(listener) = d.listener.as_ref() else {
            return;
        };
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                eprintln!(
                    "conflux-emu: device {i}: accepting on {}: {e}",
                    d.socket.display()
                );
                return;
            }
        };
        // One client per device: stop listening (the socket file stays
        // until exit).
        if let Some(l) = d.listener.take() {
            let _ = self.epoll.delete(l.as_fd());
        }
        self.accepted += 1;
        match handshake(&stream, &d.memfd) {
            Ok((engine, vectors)) => {
                let watch = |fd, t: Token, ev| self.epoll.add(fd, t.encode(), ev);
                let r = watch(
                    stream.as_fd(),
                    Token::Client(i),
                    EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR,
                )
                .and_then(|_| stream.set_nonblocking(true))
                .and_then(|_| match engine.first() {
                    Some(e) => watch(e.as_fd(), Token::Doorbell(i), EPOLLIN),
                    None => Ok(()),
                });
                if let Err(e) = r {
                    eprintln!("conflux-emu: device {i}: watching the client: {e}");
                    // QEMU shares the eventfd: closing ours would not
                    // remove it from the epoll set.
                    let _ = self.epoll.delete(stream.as_fd());
                    if let Some(e) = engine.first() {
                        let _ = self.epoll.delete(e.as_fd());
                    }
                    return;
                }
                // The device's thread raises the vectors.
                d.worker.send(Request::Vectors(vectors));
                d.client = Some(Client { stream, engine });
                self.connected += 1;
                if self.fabric {
                    self.hand_over(i);
                }
            }
            Err(e) => eprintln!(
                "conflux-emu: device {i}: handshake on {}: {e}",
                d.socket.display()
            ),
        }
    }

    fn on_client(&mut self, i: usize, events: u32) {
        let Some(c) = self.devices.get_mut(i).and_then(|d| d.client.as_mut()) else {
            return;
        };
        let mut gone = events & (EPOLLHUP | EPOLLERR) != 0;
        // QEMU sends nothing after the handshake: discard what comes, and
        // notice the end of the stream.
        let mut buf = [0u8; 256];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    gone = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        if gone {
            self.disconnect(i);
        }
    }

    fn disconnect(&mut self, i: usize) {
        let Some(c) = self.devices.get_mut(i).and_then(|d| d.client.take()) else {
            return;
        };
        let _ = self.epoll.delete(c.stream.as_fd());
        if let Some(e) = c.engine.first() {
            let _ = self.epoll.delete(e.as_fd());
        }
        self.connected -= 1;
        if let Some(d) = self.devices.get_mut(i) {
            d.pending = false;
            d.worker.send(Request::Unwatch);
        }
        eprintln!("conflux-emu: device {i}: client disconnected");
    }

    fn on_doorbell(&mut self, i: usize) {
        let Some(d) = self.devices.get_mut(i) else {
            return;
        };
        let Some(c) = d.client.as_ref() else {
            return;
        };
        if let Some(e) = c.engine.first() {
            if let Err(e) = e.drain() {
                eprintln!("conflux-emu: device {i}: reading the doorbell: {e}");
            }
        }
        if self.fabric {
            d.worker.send(Request::Doorbell);
            return;
        }
        d.pending = true;
        // A new doorbell retries the query at once.
        self.last_query = None;
    }

    /// Gives the doorbell of device `i`'s client to the device's thread,
    /// once the fabric is known. Without a descriptor for it, the main
    /// thread keeps watching it and passes the doorbells on.
    fn hand_over(&mut self, i: usize) {
        let Some(d) = self.devices.get(i) else {
            return;
        };
        let Some(e) = d.client.as_ref().and_then(|c| c.engine.first()) else {
            return;
        };
        match e.try_clone() {
            Ok(fd) => {
                let _ = self.epoll.delete(e.as_fd());
                d.worker.send(Request::Watch(fd));
            }
            Err(err) => {
                eprintln!("conflux-emu: device {i}: handing the doorbell to its thread: {err}");
                let _ = self
                    .epoll
                    .add(e.as_fd(), Token::Doorbell(i).encode(), EPOLLIN);
            }
        }
    }

    /// Learns the fabric if needed, then handles every pending doorbell.
    fn service(&mut self) {
        if !self.fabric {
            if self.last_query.is_some_and(|t| t.elapsed() < RETRY) {
                return;
            }
            self.last_query = Some(Instant::now());
            match self.learn() {
                Ok(()) => {
                    self.fabric = true;
                    self.last_complaint.clear();
                    for i in 0..self.devices.len() {
                        self.hand_over(i);
                    }
                }
                Err(e) => {
                    let msg = format!("conflux-emu: fabric: {e}; doorbells wait");
                    if msg != self.last_complaint {
                        eprintln!("{msg}");
                        self.last_complaint = msg;
                    }
                    return;
                }
            }
        }
        for d in &mut self.devices {
            if std::mem::take(&mut d.pending) {
                d.worker.send(Request::Doorbell);
            }
        }
    }

    /// Queries QMP and moves every engine into the fabric it describes.
    fn learn(&mut self) -> Result<(), QueryError> {
        let reply = qmp::query_pci(&self.config.qmp, QMP_PATIENCE, QMP_TIMEOUT)?;
        let expected = Expected {
            devices: self.config.devices,
            bar_size: self.config.bar_size,
            host_bridge_p2p: self.config.host_bridge_p2p(),
            ram: qmp::q35_ram(self.config.guest_ram_size),
            plain: self.config.plain.iter().count(),
        };
        let topology = Arc::new(expected.topology(&reply)?);
        for d in &self.devices {
            let (answer, answered) = mpsc::channel();
            d.worker
                .send(Request::Topology(Arc::clone(&topology), answer));
            answered
                .recv()
                .map_err(|_| QueryError::Invalid("a device thread has ended".into()))?
                .map_err(QueryError::Invalid)?;
        }
        let bars: Vec<String> = (0..topology.devices())
            .filter_map(|i| topology.bar(i).map(|b| format!("dev{i} {:#x}", b.base)))
            .collect();
        eprintln!(
            "conflux-emu: fabric ({}): BAR2 at {}",
            self.config.topology,
            bars.join(", ")
        );
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for s in &self.sockets {
            let _ = fs::remove_file(s);
        }
    }
}

/// The `ivshmem` server handshake: protocol version 0, the client's id, the
/// shared memory, then for the engine (peer 0) and for the client itself
/// one eventfd per vector. Returns the engine's and the client's eventfds.
fn handshake(stream: &UnixStream, memfd: &File) -> io::Result<(Vec<EventFd>, Vec<EventFd>)> {
    let client_id = i64::from(bar0::DEVICE_PEER);
    let engine_id = i64::from(bar0::ENGINE_PEER);
    let vectors = usize::from(bar0::NUM_VECTORS);
    let new = || {
        (0..vectors)
            .map(|_| EventFd::new())
            .collect::<io::Result<Vec<_>>>()
    };
    let (engine, client) = (new()?, new()?);
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    sys::send_message(stream, 0, None)?;
    sys::send_message(stream, client_id, None)?;
    sys::send_message(stream, -1, Some(memfd.as_fd()))?;
    for e in &engine {
        sys::send_message(stream, engine_id, Some(e.as_fd()))?;
    }
    for c in &client {
        sys::send_message(stream, client_id, Some(c.as_fd()))?;
    }
    Ok((engine, client))
}

/// The line `serve` prints on standard error for device `i` at exit.
pub fn counters_line(i: usize, c: &Counters) -> String {
    format!(
        "conflux-emu: dev{i}: local {} bytes, p2p {} bytes, system {} bytes, {} commands, {} errors",
        c.local_bytes, c.p2p_bytes, c.sysmem_bytes, c.commands, c.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    const GOOD: &str = "--run-dir /tmp/x --devices 4 --bar-size 64M --topology switch3+rp1 \
                        --qmp /tmp/x/qmp.sock --guest-ram /dev/shm/ram --guest-ram-size 512M";

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "M", "-1", "1.5M", "1T", "12 M", "0x100", "99999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("99999999999G").unwrap_err().contains("64 bits"));
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(3 << 10), "3 KiB");
        assert_eq!(human_size((1 << 20) + 1), "1048577 bytes");
        assert_eq!(human_size(0), "0 bytes");
    }

    #[test]
    fn command_line() {
        let c = Config::from_args(&args(GOOD)).unwrap();
        assert_eq!(
            c,
            Config {
                run_dir: "/tmp/x".into(),
                devices: 4,
                bar_size: 64 << 20,
                topology: "switch3+rp1".into(),
                qmp: "/tmp/x/qmp.sock".into(),
                guest_ram: "/dev/shm/ram".into(),
                guest_ram_size: 512 << 20,
                plain: None,
                poll: DEFAULT_POLL,
                caps: ctrl::CAP_ALL,
            }
        );
        let poll = |extra: &str| Config::from_args(&args(&format!("{GOOD} {extra}")));
        assert_eq!(
            poll("--poll-us 250").unwrap().poll,
            Duration::from_micros(250)
        );
        assert_eq!(poll("--poll-us 0").unwrap().poll, Duration::ZERO);
        for bad in ["--poll-us 1000001", "--poll-us -1", "--poll-us 1ms"] {
            let e = poll(bad).unwrap_err();
            assert!(
                e.contains("--poll-us") && e.contains("microseconds"),
                "{bad}: {e}"
            );
        }
        assert!(!c.host_bridge_p2p());
        assert_eq!(c.caps, ctrl::CAP_ALL);
        let caps = |extra: &str| Config::from_args(&args(&format!("{GOOD} {extra}")));
        assert_eq!(caps("--caps 0x3f").unwrap().caps, 0x3f);
        for bad in ["--caps 0x100", "--caps 63", "--caps 0xzz"] {
            let e = caps(bad).unwrap_err();
            assert!(e.contains("--caps"), "{bad}: {e}");
        }
        let p = Config::from_args(&args(&format!(
            "{GOOD} --plain /tmp/x/plain --plain-size 4M"
        )))
        .unwrap();
        assert_eq!(p.plain, Some(("/tmp/x/plain".into(), 4 << 20)));
        for (extra, needle) in [
            ("--plain /tmp/p", "--plain and --plain-size go together"),
            ("--plain-size 4M", "--plain and --plain-size go together"),
            ("--plain /tmp/p --plain-size 3M", "not a BAR size"),
            ("--plain /tmp/p --plain-size 0", "not a BAR size"),
        ] {
            let e = Config::from_args(&args(&format!("{GOOD} {extra}"))).unwrap_err();
            assert!(e.contains(needle), "{extra}: {e}");
        }
        assert_eq!(c.socket(3), PathBuf::from("/tmp/x/dev3.sock"));
        let zen = Config::from_args(&args(
            &GOOD
                .replace("rp1 ", "rp1-zen ")
                .replace("--devices 4", "--devices=2"),
        ))
        .unwrap();
        assert!(zen.host_bridge_p2p());
        assert_eq!(zen.devices, 2);
        for (from, to, needle) in [
            ("switch3+rp1 ", "mesh ", "switch3+rp1, switch3+rp1-zen"),
            ("--devices 4", "--devices 0", "--devices"),
            ("--devices 4", "--devices many", "\"many\""),
            ("64M", "48M", "--bar-size"),
            ("64M", "64Q", "\"64Q\""),
            (
                "--guest-ram-size 512M",
                "--guest-ram-size 0",
                "--guest-ram-size",
            ),
            ("--qmp /tmp/x/qmp.sock", "", "missing option --qmp"),
            ("--qmp", "--qmq", "unknown option --qmq"),
            ("--qmp /tmp/x/qmp.sock", "--qmp a --qmp b", "twice"),
            ("--qmp /tmp/x/qmp.sock", "--qmp a stray", "stray"),
        ] {
            let line = GOOD.replace(from, to);
            let e = Config::from_args(&args(&line)).unwrap_err();
            assert!(e.contains(needle), "{line}: {e}");
        }
        let e = Config::from_args(&args("--run-dir")).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
    }

    #[test]
    fn proc_net_unix() {
        let table = "\
Num       RefCount Protocol Flags    Type St Inode Path
00000000ba6bf213: 00000003 00000000 00000000 0001 03   568
0000000050deb263: 00000002 00000000 00010000 0001 01 31337 /tmp/run/dev0.sock
0000000050deb264: 00000002 00000000 00010000 0001 01 31338 /tmp/a dir/dev1.sock
0000000050deb265: 00000003 00000000 00000000 0001 03 31339 /tmp/run/dev2.sock
0000000050deb266: 00000002 00000000 00010000 0001 01 31340 @abstract
0000000050deb267: 00000002 00000000 00010000 0001 01 31341
";
        assert_eq!(
            listening_paths(table),
            ["/tmp/run/dev0.sock", "/tmp/a dir/dev1.sock", "@abstract"]
        );
    }

    #[test]
    fn stale_and_busy_sockets() {
        let dir = std::env::temp_dir().join(format!("cfx-free-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        free_socket(&path).unwrap();
        let l = UnixListener::bind(&path).unwrap();
        assert!(free_socket(&path).unwrap_err().contains("in use"));
        // Nobody accepted a probe connection.
        l.set_nonblocking(true).unwrap();
        assert!(l.accept().is_err());
        drop(l);
        free_socket(&path).unwrap();
        assert!(!path.exists());
        fs::write(&path, b"").unwrap();
        assert!(free_socket(&path).unwrap_err().contains("not a socket"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::Signal,
            Token::Listener(0),
            Token::Client(63),
            Token::Doorbell(5),
        ] {
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(9 << 32), None);
    }

    #[test]
    fn placeholder_powers_every_device() {
        let t = placeholder(4, 64 << 20).unwrap();
        assert_eq!(t.devices(), 4);
        assert!(placeholder(64, 1 << 51).is_ok());
    }

    #[test]
    fn counters_line_format() {
        let c = Counters {
            local_bytes: 1,
            p2p_bytes: 2,
            sysmem_bytes: 3,
            commands: 4,
            errors: 5,
        };
        assert_eq!(
            counters_line(0, &c),
            "conflux-emu: dev0: local 1 bytes, p2p 2 bytes, system 3 bytes, 4 commands, 5 errors"
        );
    }
}
