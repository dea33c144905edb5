// SPDX-License-Identifier: GPL-2.0

//! The command engine of one device: reset, ring processing, command
//! execution, counters and the error record.
//!
//! The engine keeps the device-owned registers (tail, status, fence seqno,
//! error record, counters) in itself and publishes them to the control block
//! after every doorbell; what a driver writes into them is overwritten.

use std::{fmt, sync::Arc, time::Instant};

use conflux_device::{
    fault::{Cause, ConfigError, Fault},
    memory::{Memory, MemoryError, Target},
    mmu::{Aperture, Mmu},
    regs::{
        ctrl, queue, Layout, DEFAULT_RING_OFFSET, DEFAULT_RING_SIZE, DOORBELL_OFFSET, PRIV_OFFSET,
        VRAM_OFFSET,
    },
    ring::{Command, Op, Ring, Slot},
};

use crate::fabric::{Path, Route, Topology};

/// The device's counters, as published at `CNT_*` (each wraps at 2^64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes copied or written with every operand in the device's own VRAM.
    pub local_bytes: u64,
    /// Bytes read from or written to other devices' VRAM.
    pub p2p_bytes: u64,
    /// Bytes read from or written to system memory.
    pub sysmem_bytes: u64,
    /// Commands completed.
    pub commands: u64,
    /// Errors recorded.
    pub errors: u64,
}

/// The error record, as published at `ERR_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorRecord {
    /// The cause.
    pub cause: Cause,
    /// The virtual address of the failing access (0 when none).
    pub va: u64,
    /// The seqno field of the failing command (0 when none).
    pub seqno: u64,
    /// The opcode field of the failing command (0 when none).
    pub opcode: u32,
    /// Description for logs (not published).
    pub detail: String,
}

impl ErrorRecord {
    fn new(f: Fault, seqno: u64, opcode: u32) -> Self {
        Self {
            cause: f.cause,
            va: f.va,
            seqno,
            opcode,
            detail: f.detail,
        }
    }
}

impl From<Fault> for ErrorRecord {
    fn from(f: Fault) -> Self {
        Self::new(f, 0, 0)
    }
}

impl fmt::Display for ErrorRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at VA {:#x} (command opcode {:#x}, seqno {:#x}): {}",
            self.cause, self.va, self.opcode, self.seqno, self.detail
        )
    }
}

/// What one call of [`Engine::process`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A reset was performed.
    pub reset: bool,
    /// Number of commands completed.
    pub completed: u32,
    /// A completed command had the `IRQ` flag: raise the completion vector.
    pub completion_irq: bool,
    /// The error recorded: raise the error vector.
    pub error: Option<ErrorRecord>,
}

impl Outcome {
    /// The MSI-X vectors to raise, completion first.
    pub fn vectors(&self) -> impl Iterator<Item = u16> {
        use conflux_device::regs::bar0::{VECTOR_COMPLETION, VECTOR_ERROR};
        let completion = self.completion_irq.then_some(VECTOR_COMPLETION);
        completion
            .into_iter()
            .chain(self.error.is_some().then_some(VECTOR_ERROR))
    }
}

/// Where the data of a transfer comes from.
#[derive(Clone, Copy)]
enum Source {
    /// A virtual address.
    Va(u64),
    /// An 8-byte pattern, repeated.
    Pattern(u64),
}

/// How far [`Engine::execute`] took a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The command completed.
    Done,
    /// The stop check stopped it before the piece at this byte.
    Stopped(u64),
    /// A `WAIT_VALUE` whose condition does not hold.
    Blocked,
}

/// Asked before each piece of a command: whether it stops there.
type StopCheck<'a, M> = &'a mut dyn FnMut(&Engine, &M) -> Result<bool, Fault>;

/// One piece of a transfer, inside one page of each operand.
#[derive(Clone, Copy)]
enum Piece {
    /// Copy from this route, which is at this virtual address.
    Copy(Route, u64),
    /// Fill with this pattern, already in phase with the piece.
    Fill(u64),
}

/// The command engine of one device.
pub struct Engine {
    topology: Arc<Topology>,
    dev: usize,
    layout: Layout,
    caps: u32,
    clock: Box<dyn FnMut() -> u64 + Send>,
    tail: u32,
    status: u32,
    fence: u64,
    error: Option<ErrorRecord>,
    counters: Counters,
    /// The user queues, queue `q` at index `q - 1`.
    queues: Vec<queues::UserQueue>,
    /// The queue the next round of [`Engine::run_queues`] starts with, minus one.
    next_queue: usize,
    /// `RING_POLL`'s `AWAKE`: the engine reads `RING_HEAD` without a doorbell.
    awake: bool,
    /// The `RING_HEAD` the engine read last.
    head_seen: u32,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("dev", &self.dev)
            .field("layout", &self.layout)
            .field("caps", &self.caps)
            .field("tail", &self.tail)
            .field("status", &self.status)
            .field("fence", &self.fence)
            .field("awake", &self.awake)
            .field("error", &self.error)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn bus_fault(what: &str, e: MemoryError) -> Fault {
    Fault::new(Cause::Bus, format!("{what}: {e}"))
}

impl Engine {
    /// The engine of device `dev` of `topology`, with every capability and
    /// timestamps counted from now. It is off until [`Engine::power_on`].
    pub fn new(topology: Arc<Topology>, dev: usize) -> Result<Self, ConfigError> {
        let bar = topology.bar(dev).ok_or_else(|| {
            ConfigError(format!(
                "no device {dev} in a topology of {}",
                topology.devices()
            ))
        })?;
        let layout = Layout::new(bar.size)?;
        let start = Instant::now();
        Ok(Self {
            topology,
            dev,
            layout,
            caps: ctrl::CAP_ALL,
            clock: Box::new(move || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)),
            tail: 0,
            status: ctrl::STATUS_OFF,
            fence: 0,
            queues: vec![queues::UserQueue::default(); queue::COUNT as usize],
            next_queue: 0,
            awake: false,
            head_seen: 0,
            error: None,
            counters: Counters::default(),
        })
    }

    /// The same engine advertising and honouring only `caps` (`CAP_*`).
    pub fn with_caps(self, caps: u32) -> Self {
        Self {
            caps: caps & ctrl::CAP_ALL,
            ..self
        }
    }

    /// The same engine taking `TIMESTAMP` values from `clock`.
    pub fn with_clock(self, clock: impl FnMut() -> u64 + Send + 'static) -> Self {
        Self {
            clock: Box::new(clock),
            ..self
        }
    }

    /// Moves the device into `topology`, where it has the same index and a
    /// BAR2 of the same size (for instance once its bus address is known).
    /// Its state and the control block are kept.
    pub fn set_topology(&mut self, topology: Arc<Topology>) -> Result<(), ConfigError> {
        match topology.bar(self.dev) {
            Some(bar) if bar.size == self.layout.bar_size => {
                self.topology = topology;
                Ok(())
            }
            Some(bar) => Err(ConfigError(format!(
                "device {}: BAR2 of {:#x} bytes in the new topology, {:#x} in the old one",
                self.dev, bar.size, self.layout.bar_size
            ))),
            None => Err(ConfigError(format!(
                "no device {} in a topology of {}",
                self.dev,
                topology.devices()
            ))),
        }
    }

    /// The device's BAR2 layout.
    pub const fn layout(&self) -> Layout {
        self.layout
    }

    /// `STATUS`.
    pub const fn status(&self) -> u32 {
        self.status
    }

    /// `RING_TAIL`.
    pub const fn tail(&self) -> u32 {
        self.tail
    }

    /// `FENCE_SEQNO`.
    pub const fn fence_seqno(&self) -> u64 {
        self.fence
    }

    /// The counters.
    pub const fn counters(&self) -> Counters {
        self.counters
    }

    /// The error record, if an error is pending.
    pub const fn error(&self) -> Option<&ErrorRecord> {
        self.error.as_ref()
    }

    fn bar(&self) -> Target {
        Target::Bar(self.dev)
    }

    /// Sets or clears `RING_POLL`'s `AWAKE` bit: whether the engine reads
    /// `RING_HEAD` on its own, so that the driver may skip the doorbell.
    pub fn set_awake<M: Memory + ?Sized>(&mut self, mem: &mut M, awake: bool) {
        self.awake = awake;
        // The control block lies in BAR2, which is always there: a failed
        // write can only be a shorter mapping, which the next doorbell
        // reports as a bus fault.
        let _ = mem.write_u32(self.bar(), ctrl::RING_POLL, u32::from(awake));
    }

    /// Whether the driver wrote a `RING_HEAD` the engine has not read yet:
    /// what the engine looks for while it is awake. Only while the device is
    /// `READY`: it executes nothing otherwise.
    pub fn head_moved<M: Memory + ?Sized>(&self, mem: &M) -> bool {
        self.status == ctrl::STATUS_READY
            && self
                .reg32(mem, ctrl::RING_HEAD)
                .is_ok_and(|head| head != self.head_seen)
    }

    /// Powers the device on: clears its state and writes the whole control
    /// block (identification, default ring, head 0, MMU off, status READY).
    pub fn power_on<M: Memory + ?Sized>(&mut self, mem: &mut M) -> Result<(), MemoryError> {
        let bar = self.bar();
        self.tail = 0;
        self.head_seen = 0;
        self.awake = false;
        self.status = ctrl::STATUS_READY;
        self.fence = 0;
        self.error = None;
        self.counters = Counters::default();
        self.queues.fill(queues::UserQueue::default());
        mem.write(bar, 0, &[0; ctrl::SIZE as usize])?;
        self.write_identification(mem)?;
        mem.write_u64(bar, ctrl::RING_OFFSET, DEFAULT_RING_OFFSET)?;
        mem.write_u64(bar, ctrl::RING_SIZE, DEFAULT_RING_SIZE)?;
        self.publish(mem)
    }

    fn write_identification<M: Memory + ?Sized>(&self, mem: &mut M) -> Result<(), MemoryError> {
        let (bar, l) = (self.bar(), self.layout);
        mem.write(bar, ctrl::SIGNATURE, &ctrl::SIGNATURE_VALUE)?;
        mem.write_u32(bar, ctrl::VERSION, ctrl::VERSION_VALUE)?;
        mem.write_u32(bar, ctrl::CAPS, self.caps)?;
        for (at, v) in [
            (ctrl::BAR_SIZE, l.bar_size),
            (ctrl::VRAM_OFFSET, VRAM_OFFSET),
            (ctrl::VRAM_SIZE, l.vram_size()),
            (ctrl::PRIV_OFFSET, PRIV_OFFSET),
            (ctrl::PRIV_SIZE, VRAM_OFFSET - PRIV_OFFSET),
        ] {
            mem.write_u64(bar, at, v)?;
        }
        let queues = self.caps & ctrl::CAP_QUEUES != 0;
        mem.write_u32(bar, ctrl::QUEUES, if queues { queue::COUNT } else { 0 })?;
        mem.write_u64(
            bar,
            ctrl::DOORBELL_OFFSET,
            if queues { DOORBELL_OFFSET } else { 0 },
        )?;
        Ok(())
    }

    /// Writes the device-owned registers to the control block.
    fn publish<M: Memory + ?Sized>(&self, mem: &mut M) -> Result<(), MemoryError> {
        let bar = self.bar();
        let (c, e) = (&self.counters, self.error.as_ref());
        for (at, v) in [
            (ctrl::CNT_LOCAL_BYTES, c.local_bytes),
            (ctrl::CNT_P2P_BYTES, c.p2p_bytes),
            (ctrl::CNT_SYSMEM_BYTES, c.sysmem_bytes),
            (ctrl::CNT_COMMANDS, c.commands),
            (ctrl::CNT_ERRORS, c.errors),
            (ctrl::ERR_VA, e.map_or(0, |e| e.va)),
            (ctrl::ERR_SEQNO, e.map_or(0, |e| e.seqno)),
            (ctrl::FENCE_SEQNO, self.fence),
        ] {
            mem.write_u64(bar, at, v)?;
        }
        for (at, v) in [
            (ctrl::ERR_CAUSE, e.map_or(0, |e| e.cause.code())),
            (ctrl::ERR_OPCODE, e.map_or(0, |e| e.opcode)),
            (ctrl::RING_TAIL, self.tail),
            (ctrl::STATUS, self.status),
            (ctrl::RING_POLL, u32::from(self.awake)),
        ] {
            mem.write_u32(bar, at, v)?;
        }
        self.publish_queues(mem)
    }

    fn reg32<M: Memory + ?Sized>(&self, mem: &M, at: u64) -> Result<u32, Fault> {
        mem.read_u32(self.bar(), at)
            .map_err(|e| bus_fault("reading the control block", e))
    }

    fn reg64<M: Memory + ?Sized>(&self, mem: &M, at: u64) -> Result<u64, Fault> {
        mem.read_u64(self.bar(), at)
            .map_err(|e| bus_fault("reading the control block", e))
    }

    /// Handles a doorbell (ignored before [`Engine::power_on`]): performs a
    /// requested reset, then, unless the device is stopped on an error,
    /// executes every command from the tail to the head read at entry.
    /// Publishes the device-owned registers and returns the interrupts to
    /// raise. Never panics.
    pub fn process<M: Memory + ?Sized>(&mut self, mem: &mut M) -> Outcome {
        let mut out = Outcome::default();
        if self.status == ctrl::STATUS_OFF {
            return out;
        }
        if let Err(e) = self.run(mem, &mut out) {
            self.fail(e, &mut out);
        }
        // Preemption and disable requests are answered on the doorbell too.
        out.completion_irq |= self.update_queues(mem);
        if self
            .faults(mem)
            .is_ok_and(|f| f & ctrl::FAULT_DROP_COMPLETION != 0)
        {
            out.completion_irq = false;
        }
        if let Err(e) = self.publish(mem) {
            if out.error.is_none() {
                self.fail(
                    bus_fault("publishing the control block", e).into(),
                    &mut out,
                );
            }
        }
        out
    }

    fn fail(&mut self, e: ErrorRecord, out: &mut Outcome) {
        self.status = ctrl::STATUS_ERROR;
        self.counters.errors = self.counters.errors.wrapping_add(1);
        self.error = Some(e.clone());
        out.error = Some(e);
    }

    fn run<M: Memory + ?Sized>(
        &mut self,
        mem: &mut M,
        out: &mut Outcome,
    ) -> Result<(), ErrorRecord> {
        if self.reset_requested(mem)? {
            if self.faults(mem)? & ctrl::FAULT_IGNORE_RESET != 0 {
                // Never acknowledged: `CONTROL` keeps its `RESET` bit.
                return Ok(());
            }
            self.reset(mem)?;
            out.reset = true;
        }
        if self.status != ctrl::STATUS_READY {
            return Ok(());
        }
        let ring = Ring::new(
            self.reg64(mem, ctrl::RING_OFFSET)?,
            self.reg64(mem, ctrl::RING_SIZE)?,
            self.layout.bar_size,
        )?;
        let head = self.reg32(mem, ctrl::RING_HEAD)?;
        self.head_seen = head;
        ring.pending(head, self.tail)?;
        let mmu = self.mmu(self.reg64(mem, ctrl::MMU_ROOT)?);
        while self.tail != head {
            if self.faults(mem)? & ctrl::FAULT_STALL != 0 {
                return Ok(());
            }
            let mut slot: Slot = [0; 64];
            mem.read(self.bar(), ring.slot_offset(self.tail), &mut slot)
                .map_err(|e| bus_fault("reading a ring slot", e))?;
            let (opcode, seqno) = Command::header(&slot);
            let record = |f| ErrorRecord::new(f, seqno, opcode);
            let cmd = Command::decode(&slot, self.caps).map_err(record)?;
            if let Op::WaitValue { .. } = cmd.op {
                let why = "WAIT_VALUE is a command of user queues, not of the ring";
                return Err(record(Fault::new(Cause::Malformed, why)));
            }
            // A reset requested while the command runs stops it before its next piece, unless
            // the device ignores resets.
            let mut reset = |e: &Self, mem: &M| -> Result<bool, Fault> {
                Ok(e.reset_requested(mem)? && e.faults(mem)? & ctrl::FAULT_IGNORE_RESET == 0)
            };
            if self
                .execute(mem, &mmu, &cmd, 0, &mut reset)
                .map_err(record)?
                != Step::Done
            {
                // A reset requested meanwhile discards the command in
                // progress, which never completes, and the rest.
                self.reset(mem)?;
                out.reset = true;
                return Ok(());
            }
            self.tail = self.tail.wrapping_add(1);
            self.counters.commands = self.counters.commands.wrapping_add(1);
            out.completed += 1;
            out.completion_irq |= cmd.irq;
        }
        Ok(())
    }

    /// The device's MMU with the level-3 table at VRAM offset `root`.
    fn mmu(&self, root: u64) -> Mmu {
        Mmu {
            bar: self.bar(),
            vram_size: self.layout.vram_size(),
            root,
            huge_pages: self.caps & ctrl::CAP_MMU_2M != 0,
            null_pages: self.caps & ctrl::CAP_MMU_NULL != 0,
        }
    }

    fn reset_requested<M: Memory + ?Sized>(&self, mem: &M) -> Result<bool, Fault> {
        Ok(self.reg32(mem, ctrl::CONTROL)? & ctrl::CONTROL_RESET != 0)
    }

    /// The fault switches a test set (`FAULTS`).
    fn faults<M: Memory + ?Sized>(&self, mem: &M) -> Result<u32, Fault> {
        self.reg32(mem, ctrl::FAULTS)
    }

    /// Whether the high half of `FENCE_SEQNO` is to flap after a completion
    /// (`FAULT_TEAR_SEQNO`), which its server does with [`Self::tear_fence_seqno`].
    pub fn tear_requested<M: Memory + ?Sized>(&self, mem: &M) -> bool {
        self.faults(mem)
            .is_ok_and(|f| f & ctrl::FAULT_TEAR_SEQNO != 0)
    }

    /// Rewrites the high half of `FENCE_SEQNO` with its value plus one, three
    /// times, then with its own value, `times` times: a reader of the two
    /// halves that reads the high one twice may see it change, and mostly
    /// sees the torn value.
    pub fn tear_fence_seqno<M: Memory + ?Sized>(&self, mem: &mut M, times: u32) {
        // CAST: the high half.
        let hi = (self.fence >> 32) as u32;
        for _ in 0..times {
            for _ in 0..3 {
                let _ = mem.write_u32(self.bar(), ctrl::FENCE_SEQNO + 4, hi.wrapping_add(1));
            }
            let _ = mem.write_u32(self.bar(), ctrl::FENCE_SEQNO + 4, hi);
        }
    }

    /// Whether a test asked the process that implements the device to die
    /// (`FAULT_EXIT`): its server does so before it runs the engine.
    pub fn exit_requested<M: Memory + ?Sized>(&self, mem: &M) -> bool {
        self.faults(mem).is_ok_and(|f| f & ctrl::FAULT_EXIT != 0)
    }

    /// Resets: tail = head, error record cleared, status READY; VRAM, the
    /// ring registers, `MMU_ROOT`, `FENCE_SEQNO` and the counters are kept.
    /// `CONTROL` is cleared last.
    fn reset<M: Memory + ?Sized>(&mut self, mem: &mut M) -> Result<(), ErrorRecord> {
        let io = |e| ErrorRecord::from(bus_fault("resetting", e));
        mem.write_u32(self.bar(), ctrl::STATUS, ctrl::STATUS_RESETTING)
            .map_err(io)?;
        self.tail = self.reg32(mem, ctrl::RING_HEAD)?;
        self.head_seen = self.tail;
        self.error = None;
        let faults = self.faults(mem)? & !ctrl::FAULTS_CLEARED_BY_RESET;
        mem.write_u32(self.bar(), ctrl::FAULTS, faults)
            .map_err(io)?;
        self.status = ctrl::STATUS_READY;
        self.stop_queues(mem).map_err(io)?;
        self.write_identification(mem).map_err(io)?;
        self.publish(mem).map_err(io)?;
        mem.write_u32(self.bar(), ctrl::CONTROL, 0).map_err(io)
    }

    /// Executes `cmd` through `mmu`, a `COPY` or `FILL` from byte `from` on, asking `stop`
    /// before each piece.
    fn execute<M: Memory + ?Sized>(
        &mut self,
        mem: &mut M,
        mmu: &Mmu,
        cmd: &Command,
        from: u64,
        stop: StopCheck<'_, M>,
    ) -> Result<Step, Fault> {
        if let Op::Copy { dst, .. } | Op::Fill { dst, .. } = cmd.op {
            let faults = self.faults(mem)?;
            if faults & ctrl::FAULT_FAIL_COMMAND != 0 {
                mem.write_u32(self.bar(), ctrl::FAULTS, faults & !ctrl::FAULT_FAIL_COMMAND)
                    .map_err(|e| bus_fault("clearing FAULT_FAIL_COMMAND", e))?;
                let why = "FAULT_FAIL_COMMAND: the command fails on purpose";
                return Err(Fault::new(Cause::Bus, why).at(dst));
            }
        }
        let done = |stopped: Option<u64>| stopped.map_or(Step::Done, Step::Stopped);
        match cmd.op {
            Op::Copy { src, dst, len } => self
                .transfer(mem, mmu, Source::Va(src), dst, len, from, stop)
                .map(done),
            Op::Fill { dst, len, pattern } => self
                .transfer(mem, mmu, Source::Pattern(pattern), dst, len, from, stop)
                .map(done),
            Op::Timestamp { dst } => {
                let now = (self.clock)();
                self.transfer(mem, mmu, Source::Pattern(now), dst, 8, 0, stop)
                    .map(done)
            }
            Op::WriteValue { dst, value } => {
                // One aligned 8-byte store: a reader never sees half of it.
                if let (Some(to), _) = self.access(mem, mmu, dst, true)? {
                    mem.write_u64(to.target, to.offset, value)
                        .map_err(|e| bus_fault("writing", e).at(dst))?;
                    self.charge(None, to.path, 8);
                }
                Ok(Step::Done)
            }
            Op::WaitValue {
                va,
                value,
                mask,
                compare,
            } => {
                let m = match self.access(mem, mmu, va, false)? {
                    (Some(at), _) => mem
                        .read_u64(at.target, at.offset)
                        .map_err(|e| bus_fault("reading", e).at(va))?,
                    // A NULL page reads as zeros.
                    (None, _) => 0,
                };
                Ok(match compare.holds(m & mask, value) {
                    true => Step::Done,
                    false => Step::Blocked,
                })
            }
            Op::Fence => {
                // Published at once, not with the rest at the end of the batch: the driver
                // reads it after a reset to learn exactly which jobs completed.
                self.fence = match self.faults(mem)? & ctrl::FAULT_BOGUS_SEQNO {
                    0 => cmd.seqno,
                    _ => cmd.seqno.wrapping_add(1 << 40),
                };
                mem.write_u64(self.bar(), ctrl::FENCE_SEQNO, self.fence)
                    .map_err(|e| bus_fault("publishing FENCE_SEQNO", e))?;
                Ok(Step::Done)
            }
        }
    }

    /// Translates and routes the page holding `va` for a read or a write;
    /// returns where `va` goes (`None` for a NULL page, which reads as
    /// zeros and drops writes) and how many bytes of its page follow it.
    fn access<M: Memory + ?Sized>(
        &self,
        mem: &M,
        mmu: &Mmu,
        va: u64,
        write: bool,
    ) -> Result<(Option<Route>, u64), Fault> {
        let page = mmu.translate(mem, va)?;
        let fault = |cause, detail: String| Err(Fault::new(cause, detail).at(va));
        let within = va - page.va;
        if page.addr == Aperture::Null {
            return Ok((None, page.size - within));
        }
        if write && !page.writable {
            return fault(
                Cause::Permission,
                format!("page at VA {:#x} is not writable", page.va),
            );
        }
        let route = match page.addr {
            Aperture::Vram(off) if off + page.size <= self.layout.vram_size() => Route {
                target: self.bar(),
                offset: VRAM_OFFSET + off,
                path: Path::Local,
            },
            Aperture::Vram(off) => {
                let vram = self.layout.vram_size();
                return fault(
                    Cause::Bus,
                    format!("page at VRAM offset {off:#x} is outside VRAM of {vram:#x} bytes"),
                );
            }
            Aperture::Bus(addr) => self
                .topology
                .route(self.dev, addr, page.size)
                .map_err(|f| f.at(va))?,
            Aperture::Null => return Ok((None, page.size - within)),
        };
        if route.path == Path::Peer && self.caps & ctrl::CAP_PEER_P2P == 0 {
            return fault(
                Cause::PeerUnreachable,
                "the device lacks CAP_PEER_P2P".into(),
            );
        }
        Ok((
            Some(Route {
                offset: route.offset + within,
                ..route
            }),
            page.size - within,
        ))
    }

    /// Moves `len` bytes from `src` to virtual address `dst` in ascending
    /// address order, from byte `from` on, in pieces that end at the next
    /// page boundary of either operand; each piece is one [`Memory::copy`]
    /// or [`Memory::fill`]. Before each piece it asks `stop`, and returns
    /// the byte it stopped at if told to.
    #[allow(clippy::too_many_arguments)]
    fn transfer<M: Memory + ?Sized>(
        &mut self,
        mem: &mut M,
        mmu: &Mmu,
        src: Source,
        dst: u64,
        len: u64,
        from: u64,
        stop: StopCheck<'_, M>,
    ) -> Result<Option<u64>, Fault> {
        let mut done = from;
        while done < len {
            if stop(self, mem)? {
                return Ok(Some(done));
            }
            let mut n = len - done;
            let piece = match src {
                Source::Va(s) => {
                    let (route, room) = self.access(mem, mmu, s + done, false)?;
                    n = n.min(room);
                    match route {
                        Some(r) => Piece::Copy(r, s + done),
                        // A NULL page reads as zeros.
                        None => Piece::Fill(0),
                    }
                }
                Source::Pattern(p) => Piece::Fill(p.rotate_right(8 * (done % 8) as u32)),
            };
            let (to, room) = self.access(mem, mmu, dst + done, true)?;
            n = n.min(room);
            // A write to a NULL page is dropped, and charged to no counter.
            let Some(to) = to else {
                done += n;
                continue;
            };
            // A piece lies inside one page, so it fits in a usize.
            let count = usize::try_from(n).map_err(|_| {
                Fault::new(Cause::Bus, format!("a piece of {n:#x} bytes")).at(dst + done)
            })?;
            let write_fault = |e| bus_fault("writing", e).at(dst + done);
            let source = match piece {
                Piece::Copy(r, va) => {
                    mem.copy(r.target, r.offset, to.target, to.offset, count)
                        .map_err(|e| {
                            if e.target == r.target && e.offset == r.offset {
                                bus_fault("reading", e).at(va)
                            } else {
                                write_fault(e)
                            }
                        })?;
                    Some(r.path)
                }
                Piece::Fill(p) => {
                    mem.fill(to.target, to.offset, count, p)
                        .map_err(write_fault)?;
                    None
                }
            };
            self.charge(source, to.path, n);
            done += n;
        }
        Ok(None)
    }

    /// Charges `n` bytes moved from `src` (none for a pattern) to `dst`.
    fn charge(&mut self, src: Option<Path>, dst: Path, n: u64) {
        let c = &mut self.counters;
        if src.unwrap_or(Path::Local) == Path::Local && dst == Path::Local {
            c.local_bytes = c.local_bytes.wrapping_add(n);
            return;
        }
        for path in src.into_iter().chain([dst]) {
            match path {
                Path::Peer => c.p2p_bytes = c.p2p_bytes.wrapping_add(n),
                Path::System => c.sysmem_bytes = c.sysmem_bytes.wrapping_add(n),
                Path::Local => {}
            }
        }
    }
}

mod queues;
#[cfg(test)]
mod tests;

pub use queues::{QueueOutcome, QueueState};
