// SPDX-License-Identifier: GPL-2.0

//! `conflux-raw`: drives Conflux devices from inside the guest without any
//! kernel driver, through the sysfs mmaps of BAR0 and BAR2, polling for
//! completion. It tests the device model on its own: it builds page tables,
//! submits COPY and FILL, checks the data and the counters, and checks the
//! PCIe fabric: a peer-to-peer copy between two devices behind the switch
//! succeeds, one towards the device on the other root port fails with "peer
//! unreachable" (or succeeds on the AMD Zen rig, whose host bridge the kernel
//! whitelists). A user queue runs from its doorbell page alone, signals a
//! memory fence in system memory, and is preempted and resumed. It ends with
//! the line `N passed, N failed`.

use std::{
    env, fs,
    os::{fd::AsFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    process::ExitCode,
    ptr,
    sync::atomic::{fence, Ordering},
    time::{Duration, Instant},
};

use conflux_device::{
    memory::{Memory, Target},
    mmu::{Aperture, Mapper},
    regs::{bar0, ctrl, pte, queue, queue_reg, slot, VRAM_OFFSET},
    ring::{Command, Compare, Op},
    shm::{Mapping, SharedMemory},
};

/// Maps `len` bytes of the sysfs `resourceN` file at `path`.
fn map_resource(path: &Path, len: usize) -> Result<SharedMemory, String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let m = Mapping::new(f.as_fd(), len)
        .map_err(|e| format!("mmap {} ({len:#x} bytes): {e}", path.display()))?;
    Ok(SharedMemory::new(vec![m], None))
}

/// One Conflux device as found in sysfs.
struct Device {
    bdf: String,
    /// Bridges between the root bus and the device, nearest the root first.
    bridges: Vec<String>,
    bar2_addr: u64,
    bar0: SharedMemory,
    bar2: SharedMemory,
    head: u32,
    seqno: u64,
    mapper: Option<Mapper>,
}

const T: Target = Target::Bar(0);

impl Device {
    fn reg32(&self, at: u64) -> u32 {
        self.bar2.read_u32(T, at).unwrap_or(u32::MAX)
    }

    fn set_reg32(&mut self, at: u64, v: u32) {
        let _ = self.bar2.write_u32(T, at, v);
    }

    /// Rings the engine's doorbell (BAR0, `peer << 16 | vector`).
    fn doorbell(&mut self) {
        let _ = self
            .bar0
            .write_u32(T, bar0::DOORBELL, bar0::doorbell(bar0::ENGINE_PEER, 0));
    }

    fn reg64(&self, at: u64) -> u64 {
        self.bar2.read_u64(T, at).unwrap_or(u64::MAX)
    }

    fn vram_size(&self) -> u64 {
        self.reg64(ctrl::VRAM_SIZE)
    }

    fn vram_write(&mut self, off: u64, data: &[u8]) -> Result<(), String> {
        self.bar2
            .write(T, VRAM_OFFSET + off, data)
            .map_err(|e| format!("{}: {e}", self.bdf))
    }

    fn vram_read(&self, off: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut v = vec![0; len];
        self.bar2
            .read(T, VRAM_OFFSET + off, &mut v)
            .map_err(|e| format!("{}: {e}", self.bdf))?;
        Ok(v)
    }

    /// Maps `len` bytes at `va` to `addr` with pages of `size`.
    fn map(&mut self, va: u64, addr: Aperture, len: u64, size: u64) -> Result<(), String> {
        let mut m = match self.mapper.take() {
            Some(m) => m,
            None => {
                // Page tables in the last 2 MiB of VRAM.
                let end = self.vram_size();
                Mapper::new(&mut self.bar2, T, end - (2 << 20), end)
                    .map_err(|e| format!("{}: {e}", self.bdf))?
            }
        };
        let r = m.map(&mut self.bar2, va, addr, len, size, true);
        let root = m.root();
        self.mapper = Some(m);
        r.map_err(|e| format!("{}: mapping VA {va:#x}: {e}", self.bdf))?;
        self.bar2
            .write_u64(T, ctrl::MMU_ROOT, root)
            .map_err(|e| e.to_string())
    }

    /// Submits `op`, rings the doorbell and polls until the device has
    /// executed it or stopped on an error. Returns the error cause (0 = none).
    fn submit(&mut self, op: Op, timeout: Duration) -> Result<u32, String> {
        self.submit_batch(&[op], timeout)
    }

    /// Writes `ops` to the ring, rings the doorbell once and spins until the
    /// device has executed them all or stopped on an error. Returns the error
    /// cause (0 = none).
    fn submit_batch(&mut self, ops: &[Op], timeout: Duration) -> Result<u32, String> {
        let ring = self.reg64(ctrl::RING_OFFSET);
        let count = self.reg64(ctrl::RING_SIZE) / slot::SIZE;
        for op in ops {
            self.seqno += 1;
            let cmd = Command {
                seqno: self.seqno,
                irq: false,
                op: *op,
            };
            let at = ring + u64::from(self.head) % count * slot::SIZE;
            self.bar2
                .write(T, at, &cmd.encode())
                .map_err(|e| format!("{}: writing the ring: {e}", self.bdf))?;
            self.head = self.head.wrapping_add(1);
        }
        fence(Ordering::SeqCst);
        self.set_reg32(ctrl::RING_HEAD, self.head);
        self.doorbell();
        let start = Instant::now();
        loop {
            if self.reg32(ctrl::STATUS) == ctrl::STATUS_ERROR {
                return Ok(self.reg32(ctrl::ERR_CAUSE));
            }
            if self.reg32(ctrl::RING_TAIL) == self.head {
                return Ok(0);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{}: command {} not executed after {} s (tail {}, head {})",
                    self.bdf,
                    self.seqno,
                    timeout.as_secs(),
                    self.reg32(ctrl::RING_TAIL),
                    self.head
                ));
            }
            std::hint::spin_loop();
        }
    }

    /// Resets the device after an error and waits until it is ready again.
    fn reset(&mut self) -> Result<(), String> {
        self.set_reg32(ctrl::CONTROL, ctrl::CONTROL_RESET);
        self.doorbell();
        let start = Instant::now();
        while self.reg32(ctrl::CONTROL) != 0 || self.reg32(ctrl::STATUS) != ctrl::STATUS_READY {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("{}: not ready 10 s after a reset", self.bdf));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

fn sysfs(dev: &Path, name: &str) -> Result<String, String> {
    fs::read_to_string(dev.join(name))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{}/{name}: {e}", dev.display()))
}

/// Every Conflux device in the guest, with its BARs mapped.
fn discover() -> Result<Vec<Device>, String> {
    let mut paths: Vec<PathBuf> = fs::read_dir("/sys/bus/pci/devices")
        .map_err(|e| format!("/sys/bus/pci/devices: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        if sysfs(&p, "vendor")? != "0x1af4" || sysfs(&p, "device")? != "0x1110" {
            continue;
        }
        let bdf = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let real = fs::canonicalize(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        // /sys/devices/pci0000:00/<root port>/<...>/<device>
        let bridges: Vec<String> = real
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .skip_while(|c| !c.starts_with("pci"))
            .skip(1)
            .filter(|c| *c != bdf)
            .collect();
        let resource = sysfs(&p, "resource")?;
        let bar2 = resource.lines().nth(2).unwrap_or_default();
        let mut f = bar2
            .split_whitespace()
            .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16));
        let (Some(Ok(start)), Some(Ok(end))) = (f.next(), f.next()) else {
            return Err(format!("{bdf}: cannot parse BAR2 in {resource:?}"));
        };
        if start == 0 || end <= start {
            return Err(format!(
                "{bdf}: BAR2 is not assigned ({start:#x}..{end:#x})"
            ));
        }
        // Memory decoding may be off when no driver has enabled the device.
        let _ = fs::write(p.join("enable"), "1");
        let bar0 = map_resource(&p.join("resource0"), 4096)?;
        let len = usize::try_from(end - start + 1).map_err(|e| e.to_string())?;
        let bar2 = map_resource(&p.join("resource2"), len)?;
        let mut sig = [0u8; 8];
        bar2.read(T, ctrl::SIGNATURE, &mut sig)
            .map_err(|e| e.to_string())?;
        if &sig != b"CNFXACCL" {
            return Err(format!(
                "{bdf}: no Conflux signature at BAR2 offset 0 (found {sig:x?})"
            ));
        }
        let head = bar2
            .read_u32(T, ctrl::RING_HEAD)
            .map_err(|e| format!("{bdf}: {e}"))?;
        out.push(Device {
            bdf,
            bridges,
            bar2_addr: start,
            bar0,
            bar2,
            head,
            seqno: 0,
            mapper: None,
        });
    }
    Ok(out)
}

/// The guest physical address of the page holding `p` (needs root).
fn phys_addr(p: *const u8) -> Result<u64, String> {
    use std::io::{Read, Seek, SeekFrom};
    let va = p as u64;
    let mut f = fs::File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    f.seek(SeekFrom::Start(va / 4096 * 8))
        .map_err(|e| format!("pagemap: {e}"))?;
    let mut b = [0u8; 8];
    f.read_exact(&mut b).map_err(|e| format!("pagemap: {e}"))?;
    let e = u64::from_le_bytes(b);
    if e & (1 << 63) == 0 || e & ((1 << 55) - 1) == 0 {
        return Err(format!(
            "page at {va:#x} not present or PFN hidden ({e:#x})"
        ));
    }
    Ok((e & ((1 << 55) - 1)) * 4096 + va % 4096)
}

const MIB: u64 = 1 << 20;
const LOCAL: u64 = 0x1000_0000;
const PEER: u64 = 0x4000_0000;
const FAR: u64 = 0x8000_0000;
const SYSMEM: u64 = 0xc000_0000;
const NOWHERE: u64 = 0xd000_0000;
/// Where the bench's TIMESTAMPs land: VA `SCRATCH` is VRAM offset
/// `SCRATCH_VRAM`, outside the 64 MiB the bench copies.
const SCRATCH: u64 = 0xe000_0000;
const SCRATCH_VRAM: u64 = 64 * MIB;
const TIMEOUT: Duration = Duration::from_secs(120);

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

struct Rig {
    devs: Vec<Device>,
    /// Indices of two devices behind the same switch, and of the device on
    /// its own root port.
    a: usize,
    b: usize,
    far: usize,
    zen: bool,
    page: *mut u8,
}

fn counter(d: &Device, at: u64) -> u64 {
    d.reg64(at)
}

impl Rig {
    fn fill_local(&mut self) -> Result<(), String> {
        let d = &mut self.devs[self.a];
        let (off, len) = (4097, 100_000usize);
        let before = counter(d, ctrl::CNT_LOCAL_BYTES);
        let cause = d.submit(
            Op::Fill {
                dst: LOCAL + off,
                len: len as u64,
                pattern: 0x0807_0605_0403_0201,
            },
            TIMEOUT,
        )?;
        if cause != 0 {
            return Err(format!("FILL failed with cause {cause}"));
        }
        let got = d.vram_read(off, len)?;
        if let Some(i) = (0..len).find(|&i| got[i] != (i % 8) as u8 + 1) {
            return Err(format!("FILL byte {i} is {:#x}", got[i]));
        }
        let moved = counter(d, ctrl::CNT_LOCAL_BYTES) - before;
        if moved != len as u64 {
            return Err(format!("local counter moved by {moved}, expected {len}"));
        }
        Ok(())
    }

    fn copy_local(&mut self) -> Result<(), String> {
        let d = &mut self.devs[self.a];
        let data = pattern(300_001, 7);
        d.vram_write(3 * MIB + 13, &data)?;
        let cause = d.submit(
            Op::Copy {
                src: LOCAL + 3 * MIB + 13,
                dst: LOCAL + 9 * MIB + 4095,
                len: data.len() as u64,
            },
            TIMEOUT,
        )?;
        if cause != 0 {
            return Err(format!("COPY failed with cause {cause}"));
        }
        if d.vram_read(9 * MIB + 4095, data.len())? != data {
            return Err("copied data differs".into());
        }
        Ok(())
    }

    fn copy_p2p(&mut self) -> Result<(), String> {
        let data = pattern(MIB as usize + 123, 3);
        let (a, b) = (self.a, self.b);
        self.devs[a].vram_write(12 * MIB, &data)?;
        let before = counter(&self.devs[a], ctrl::CNT_P2P_BYTES);
        let cause = self.devs[a].submit(
            Op::Copy {
                src: LOCAL + 12 * MIB,
                dst: PEER + 20 * MIB + 5,
                len: data.len() as u64,
            },
            TIMEOUT,
        )?;
        if cause != 0 {
            return Err(format!(
                "P2P COPY {} -> {} failed with cause {cause}",
                self.devs[a].bdf, self.devs[b].bdf
            ));
        }
        if self.devs[b].vram_read(20 * MIB + 5, data.len())? != data {
            return Err(format!("data in {} differs", self.devs[b].bdf));
        }
        let moved = counter(&self.devs[a], ctrl::CNT_P2P_BYTES) - before;
        if moved != data.len() as u64 {
            return Err(format!(
                "P2P counter moved by {moved}, expected {}",
                data.len()
            ));
        }
        Ok(())
    }

    fn copy_other_root_port(&mut self) -> Result<(), String> {
        let (a, far) = (self.a, self.far);
        let data = pattern(8192, 9);
        self.devs[a].vram_write(30 * MIB, &data)?;
        let cause = self.devs[a].submit(
            Op::Copy {
                src: LOCAL + 30 * MIB,
                dst: FAR + 40 * MIB,
                len: data.len() as u64,
            },
            TIMEOUT,
        )?;
        let (from, to) = (&self.devs[a].bdf, &self.devs[far].bdf);
        match (self.zen, cause) {
            (false, 3) => {
                let va = self.devs[a].reg64(ctrl::ERR_VA);
                if va != FAR + 40 * MIB {
                    return Err(format!("peer unreachable recorded at VA {va:#x}"));
                }
                self.devs[a].reset()
            }
            (false, c) => Err(format!(
                "{from} -> {to}: cause {c}, expected 3 (peer unreachable)"
            )),
            (true, 0) => {
                if self.devs[far].vram_read(40 * MIB, data.len())? != data {
                    return Err(format!("data in {to} differs"));
                }
                Ok(())
            }
            (true, c) => Err(format!("{from} -> {to} through the host bridge: cause {c}")),
        }
    }

    fn copy_to_system_memory(&mut self) -> Result<(), String> {
        let d = &mut self.devs[self.a];
        let data = pattern(4096, 1);
        d.vram_write(50 * MIB, &data)?;
        let before = counter(d, ctrl::CNT_SYSMEM_BYTES);
        let cause = d.submit(
            Op::Copy {
                src: LOCAL + 50 * MIB,
                dst: SYSMEM,
                len: 4096,
            },
            TIMEOUT,
        )?;
        if cause != 0 {
            return Err(format!("COPY to system memory failed with cause {cause}"));
        }
        let mut got = vec![0u8; 4096];
        // SAFETY: `page` is a locked 4 KiB page this program owns; the device
        // wrote it behind the compiler's back, hence a volatile-ordered copy.
        unsafe {
            fence(Ordering::SeqCst);
            ptr::copy_nonoverlapping(self.page, got.as_mut_ptr(), 4096);
        }
        if got != data {
            return Err("system memory page differs".into());
        }
        let moved = counter(d, ctrl::CNT_SYSMEM_BYTES) - before;
        if moved != 4096 {
            return Err(format!("system counter moved by {moved}, expected 4096"));
        }
        Ok(())
    }

    /// The u64 at `offset` of the system memory page, as the device left it.
    fn page_u64(&self, offset: usize) -> u64 {
        fence(Ordering::SeqCst);
        // SAFETY: `page` is a locked 4 KiB page this program owns and `offset + 8` is inside
        // it, 8-byte aligned; the device writes it behind the compiler's back, hence volatile.
        unsafe { ptr::read_volatile(self.page.add(offset).cast::<u64>()) }
    }

    /// Writes the u64 at `offset` of the system memory page.
    fn set_page_u64(&mut self, offset: usize, v: u64) {
        // SAFETY: as in `page_u64`.
        unsafe { ptr::write_volatile(self.page.add(offset).cast::<u64>(), v) };
        fence(Ordering::SeqCst);
    }

    /// Polls until `f` holds, for `TIMEOUT` at most.
    fn until(what: &str, mut f: impl FnMut() -> bool) -> Result<(), String> {
        let start = Instant::now();
        while !f() {
            if start.elapsed() > TIMEOUT {
                return Err(format!("{what}: not after {} s", TIMEOUT.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// User queue 1 of device `a`, with its ring in VRAM: enabled through `Q_CONTROL` and one
    /// doorbell, then fed through its doorbell page alone. A peer-to-peer copy and a memory
    /// fence in system memory; then a `WAIT_VALUE` that holds the queue while it is
    /// preempted, and lets it go once resumed.
    fn user_queue(&mut self) -> Result<(), String> {
        const Q: u32 = 1;
        let (ring_vram, flag_vram) = (60 * MIB, 61 * MIB);
        self.set_page_u64(2048, 0);
        self.set_page_u64(2056, 0);
        let d = &mut self.devs[self.a];
        if d.reg32(ctrl::CAPS) & ctrl::CAP_QUEUES == 0 || d.reg32(ctrl::QUEUES) < Q {
            return Err(format!(
                "{}: no user queues (CAPS {:#x})",
                d.bdf,
                d.reg32(ctrl::CAPS)
            ));
        }
        let doorbell = d.reg64(ctrl::DOORBELL_OFFSET) + u64::from(Q) * queue::DOORBELL_PAGE;
        let root = d.reg64(ctrl::MMU_ROOT);
        d.vram_write(flag_vram, &0u64.to_le_bytes())?;
        let w64 = |d: &mut Device, at, v| d.bar2.write_u64(T, queue_reg(Q, at), v);
        let set = [
            (queue::RING_VA, LOCAL + ring_vram),
            (queue::RING_SIZE, 4096),
            (queue::MMU_ROOT, root),
            (queue::PROGRESS, 0),
        ];
        for (at, v) in set {
            w64(d, at, v).map_err(|e| e.to_string())?;
        }
        d.set_reg32(queue_reg(Q, queue::TAIL), 0);
        d.set_reg32(doorbell, 0);
        d.set_reg32(queue_reg(Q, queue::CONTROL), queue::CONTROL_ENABLE);
        d.doorbell();
        Self::until("the queue runs", || {
            d.reg32(queue_reg(Q, queue::STATUS)) == queue::STATUS_RUNNING
        })?;
        let mut head = 0u32;
        let mut push = |d: &mut Device, ops: &[Op]| -> Result<(), String> {
            for op in ops {
                let cmd = Command {
                    seqno: u64::from(head),
                    irq: true,
                    op: *op,
                };
                d.vram_write(ring_vram + u64::from(head % 64) * slot::SIZE, &cmd.encode())?;
                head += 1;
            }
            fence(Ordering::SeqCst);
            d.set_reg32(doorbell, head);
            Ok(())
        };
        let data = pattern(MIB as usize + 77, 5);
        d.vram_write(20 * MIB, &data)?;
        push(
            d,
            &[
                Op::Copy {
                    src: LOCAL + 20 * MIB,
                    dst: PEER + 44 * MIB,
                    len: data.len() as u64,
                },
                Op::WriteValue {
                    dst: SYSMEM + 2048,
                    value: 0xc0ff_ee00_0001,
                },
            ],
        )?;
        let (a, b) = (self.a, self.b);
        Self::until("the memory fence of the copy", || {
            self.page_u64(2048) == 0xc0ff_ee00_0001
        })?;
        if self.devs[b].vram_read(44 * MIB, data.len())? != data {
            return Err(format!("data copied to {} differs", self.devs[b].bdf));
        }
        let d = &mut self.devs[a];
        push(
            d,
            &[
                Op::WaitValue {
                    va: LOCAL + flag_vram,
                    value: 1,
                    mask: u64::MAX,
                    compare: Compare::Eq,
                },
                Op::WriteValue {
                    dst: SYSMEM + 2056,
                    value: 2,
                },
            ],
        )?;
        let preempt = queue::CONTROL_ENABLE | queue::CONTROL_PREEMPT;
        d.set_reg32(queue_reg(Q, queue::CONTROL), preempt);
        d.doorbell();
        Self::until("the preemption", || {
            d.reg32(queue_reg(Q, queue::STATUS)) == queue::STATUS_PREEMPTED
        })?;
        let tail = d.reg32(queue_reg(Q, queue::TAIL));
        d.vram_write(flag_vram, &1u64.to_le_bytes())?;
        std::thread::sleep(Duration::from_millis(50));
        if self.page_u64(2056) != 0 || tail != 2 {
            return Err(format!("preempted at tail {tail}, the queue went on"));
        }
        let d = &mut self.devs[a];
        d.set_reg32(queue_reg(Q, queue::CONTROL), queue::CONTROL_ENABLE);
        d.doorbell();
        Self::until("the memory fence after the resume", || {
            self.page_u64(2056) == 2
        })?;
        let d = &mut self.devs[a];
        d.set_reg32(queue_reg(Q, queue::CONTROL), 0);
        d.doorbell();
        Self::until("the disable", || {
            d.reg32(queue_reg(Q, queue::STATUS)) == queue::STATUS_IDLE
        })?;
        let events = d.reg32(queue_reg(Q, queue::EVENTS));
        // Four commands with IRQ, the preemption and the disable.
        if events != 6 {
            return Err(format!("{events} events counted, 6 expected"));
        }
        Ok(())
    }

    fn bus_error(&mut self) -> Result<(), String> {
        let d = &mut self.devs[self.a];
        let cause = d.submit(
            Op::Fill {
                dst: NOWHERE,
                len: 64,
                pattern: 0,
            },
            TIMEOUT,
        )?;
        if cause != 4 {
            return Err(format!("cause {cause}, expected 4 (bus error)"));
        }
        d.reset()
    }

    /// A 64 MiB COPY from the start of `a`'s VRAM to `dst`, after one
    /// warm-up copy (which faults in the memory behind both ends). Returns
    /// the best of three in MB/s (10^6 bytes per second) twice: between the
    /// device's TIMESTAMPs submitted with the copy, and end to end as the
    /// guest sees it (ring write, doorbell, polling).
    fn bench(&mut self, dst: u64) -> Result<(f64, f64), String> {
        let d = &mut self.devs[self.a];
        let len = 64 * MIB;
        let copy = Op::Copy {
            src: LOCAL,
            dst,
            len,
        };
        let cause = d.submit(copy, TIMEOUT)?;
        if cause != 0 {
            return Err(format!("64 MiB COPY failed with cause {cause}"));
        }
        // Best of three, as the host's memcpy figure is a best of several.
        let (mut device_ns, mut wall) = (u64::MAX, f64::MAX);
        for _ in 0..3 {
            let start = Instant::now();
            let cause = d.submit_batch(
                &[
                    Op::Timestamp { dst: SCRATCH },
                    copy,
                    Op::Timestamp { dst: SCRATCH + 8 },
                ],
                TIMEOUT,
            )?;
            wall = wall.min(start.elapsed().as_secs_f64());
            if cause != 0 {
                return Err(format!("timed 64 MiB COPY failed with cause {cause}"));
            }
            let t = d.vram_read(SCRATCH_VRAM, 16)?;
            let t0 = u64::from_le_bytes(t[..8].try_into().map_err(|_| "timestamp")?);
            let t1 = u64::from_le_bytes(t[8..].try_into().map_err(|_| "timestamp")?);
            if t1 <= t0 {
                return Err(format!("device timestamps do not advance: {t0} then {t1}"));
            }
            device_ns = device_ns.min(t1 - t0);
        }
        let mb = len as f64 / 1e6;
        Ok((mb / (device_ns as f64 / 1e9), mb / wall))
    }
}

fn setup(zen: bool) -> Result<Rig, String> {
    let devs = discover()?;
    // Group by root port: the switch's devices share theirs.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        let root = d.bridges.first().cloned().unwrap_or_default();
        match groups.iter_mut().find(|(r, _)| *r == root) {
            Some((_, v)) => v.push(i),
            None => groups.push((root, vec![i])),
        }
    }
    let peers = groups
        .iter()
        .find(|(_, v)| v.len() >= 2)
        .map(|(_, v)| v.clone());
    let alone = groups.iter().find(|(_, v)| v.len() == 1).map(|(_, v)| v[0]);
    let (Some(peers), Some(far)) = (peers, alone) else {
        let found: Vec<String> = devs
            .iter()
            .map(|d| format!("{} via {:?}", d.bdf, d.bridges))
            .collect();
        return Err(format!(
            "expected devices behind one switch and one alone; found {found:?}"
        ));
    };
    // SAFETY: an anonymous private mapping of one page, locked in memory.
    let page = unsafe {
        libc::mmap(
            ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_LOCKED | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(format!(
            "mmap of a system memory page: {}",
            std::io::Error::last_os_error()
        ));
    }
    let page = page.cast::<u8>();
    let mut rig = Rig {
        devs,
        a: peers[0],
        b: peers[1],
        far,
        zen,
        page,
    };
    let sys = phys_addr(page)?;
    let (b_addr, far_addr) = (rig.devs[rig.b].bar2_addr, rig.devs[rig.far].bar2_addr);
    let a = &mut rig.devs[rig.a];
    a.map(LOCAL, Aperture::Vram(0), 64 * MIB, pte::PAGE_2M)?;
    a.map(
        PEER,
        Aperture::Bus(b_addr + VRAM_OFFSET),
        64 * MIB,
        pte::PAGE_2M,
    )?;
    a.map(
        FAR,
        Aperture::Bus(far_addr + VRAM_OFFSET),
        64 * MIB,
        pte::PAGE_2M,
    )?;
    a.map(SYSMEM, Aperture::Bus(sys), 4096, pte::PAGE_4K)?;
    a.map(NOWHERE, Aperture::Bus(0xdead_0000_0000), 4096, pte::PAGE_4K)?;
    a.map(SCRATCH, Aperture::Vram(SCRATCH_VRAM), 2 * MIB, pte::PAGE_2M)?;
    Ok(rig)
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let zen = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["--topology", "switch3+rp1"] => false,
        ["--topology", "switch3+rp1-zen"] => true,
        _ => {
            eprintln!("usage: conflux-raw [--topology switch3+rp1|switch3+rp1-zen]");
            return ExitCode::from(2);
        }
    };
    let mut rig = match setup(zen) {
        Ok(r) => r,
        Err(e) => {
            println!("FAIL setup: {e}");
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "devices: {} and {} behind one switch, {} on its own root port",
        rig.devs[rig.a].bdf, rig.devs[rig.b].bdf, rig.devs[rig.far].bdf
    );
    type Test = fn(&mut Rig) -> Result<(), String>;
    let tests: [(&str, Test); 7] = [
        ("fill local VRAM", Rig::fill_local),
        ("copy within local VRAM", Rig::copy_local),
        ("peer-to-peer copy behind the switch", Rig::copy_p2p),
        (
            if zen {
                "copy to the other root port through the host bridge"
            } else {
                "copy to the other root port: peer unreachable"
            },
            Rig::copy_other_root_port,
        ),
        ("copy to system memory", Rig::copy_to_system_memory),
        ("bus error outside any memory", Rig::bus_error),
        (
            "user queue: doorbell page, memory fence, preemption",
            Rig::user_queue,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, t) in tests {
        match t(&mut rig) {
            Ok(()) => {
                println!("PASS {name}");
                passed += 1;
            }
            Err(e) => {
                println!("FAIL {name}: {e}");
                failed += 1;
            }
        }
    }
    // The figure the rig compares with the host's memcpy bandwidth.
    match rig.bench(PEER) {
        Ok((device, end_to_end)) => {
            println!("BENCH p2p copy 64 MiB: {device:.0} MB/s");
            println!("p2p copy 64 MiB end to end (ring, doorbell, polling): {end_to_end:.0} MB/s");
            passed += 1;
        }
        Err(e) => {
            println!("FAIL bench p2p copy 64 MiB: {e}");
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
