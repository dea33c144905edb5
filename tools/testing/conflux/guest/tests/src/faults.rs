// SPDX-License-Identifier: GPL-2.0

//! The device model's fault switches (`device.rst`, "Fault switches"), set through the BAR2
//! resource file in sysfs: a stalled engine, lost completion interrupts, a torn and a bogus
//! `FENCE_SEQNO`, a failed command in the middle of a buffer's zeroing, a reset that is never
//! acknowledged, and a device model that dies in the middle of a job. Run with the driver
//! loaded with `job_timeout_ms=500`; the last case of [`test_faults`] wedges the device, and
//! [`test_model_exit`] stops every device.

use std::{fs::OpenOptions, os::fd::AsFd, time::Duration};

use conflux::{fill_cmd, map_op, null_op, uapi, unmap_op, Device, Error};
use conflux_device::{
    memory::{Memory, Target},
    regs::ctrl,
    shm::{Mapping, SharedMemory},
};

use crate::{
    common::{entries, io_err, job_errno, KIB4, MIB2, VA},
    Tally,
};

/// Where the buffer is bound: above what the job timeout's test leaves bound.
const AT: u64 = 6 * VA;

/// The control block of a device, mapped from its BAR2 resource file in sysfs; dropped, it
/// clears the fault switches.
pub(crate) struct Switches(SharedMemory);

impl Switches {
    pub(crate) fn open(dev: &Device) -> Result<Self, Error> {
        let name = dev.path().display().to_string();
        let pci = dev.pci_address().ok_or_else(|| {
            io_err(&name, "PCI address")(std::io::Error::from(std::io::ErrorKind::NotFound))
        })?;
        Self::open_pci(&pci)
    }

    /// The control block of the PCI function `pci`, bound to a driver or not.
    pub(crate) fn open_pci(pci: &str) -> Result<Self, Error> {
        let path = format!("/sys/bus/pci/devices/{pci}/resource2");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        let len = usize::try_from(ctrl::SIZE).unwrap_or(4096);
        let map = Mapping::new(file.as_fd(), len).map_err(io_err(&path, "mmap"))?;
        Ok(Self(SharedMemory::new(vec![map], None)))
    }

    pub(crate) fn set(&self, bits: u32) {
        // One aligned 32-bit store, as the device expects; inside the mapping.
        let _ = (&self.0).write_u32(Target::Bar(0), ctrl::FAULTS, bits);
    }

    pub(crate) fn get(&self) -> u32 {
        self.0
            .read_u32(Target::Bar(0), ctrl::FAULTS)
            .unwrap_or(u32::MAX)
    }

    /// The 64-bit register at `offset` of the control block.
    pub(crate) fn read64(&self, offset: u64) -> u64 {
        self.0.read_u64(Target::Bar(0), offset).unwrap_or(u64::MAX)
    }

    /// Writes the 64-bit register at `offset`, which a driver reads at probe.
    pub(crate) fn write64(&self, offset: u64, value: u64) {
        let _ = (&self.0).write_u64(Target::Bar(0), offset, value);
    }
}

impl Drop for Switches {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Every fault switch, the last one wedging the device.
pub(crate) fn test_faults(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let sw = Switches::open(dev)?;
    let buf = dev.bo_create(MIB2)?;
    dev.vm_bind(&[map_op(buf.handle, 0, AT, MIB2, false)])?;
    let out = dev.syncobj_create()?;
    let filled = |pattern: u8| -> Result<bool, Error> {
        let mut b = [0u8; 64];
        dev.read(buf.handle, 0, &mut b)?;
        Ok(b == [pattern; 64])
    };
    let fill = |pattern: u8| fill_cmd(AT, 64, u64::from_le_bytes([pattern; 8]));
    let minute = Duration::from_secs(60);

    // A stalled engine: the watchdog fails the job with nobody waiting; the reset cures it.
    sw.set(ctrl::FAULT_STALL);
    let job = dev.submit(&[fill(0x33)], 0, out)?;
    let waited = dev.syncobj_wait(out, minute);
    let err = job_errno(dev, job);
    t.check(
        &format!("{name}: stalled engine: out-syncobj signals ETIMEDOUT, reset ends the stall"),
        waited.is_ok() && err == Some(libc::ETIMEDOUT) && sw.get() == 0,
        format!("{waited:?}, job {err:?}, FAULTS {:#x}", sw.get()),
    );
    let next = dev.submit(&[fill(0x44)], 0, 0)?;
    t.check(
        &format!("{name}: after the stall, the next job runs"),
        job_errno(dev, next).is_none() && filled(0x44)?,
        "0x44",
    );

    // Lost completion interrupts: the watchdog finds the job complete, and it succeeds.
    sw.set(ctrl::FAULT_DROP_COMPLETION);
    let job = dev.submit(&[fill(0x55)], 0, 0)?;
    let err = job_errno(dev, job);
    sw.set(0);
    t.check(
        &format!("{name}: a lost completion interrupt: the watchdog finds the job done"),
        err.is_none() && filled(0x55)?,
        format!("job {err:?}"),
    );

    // A FENCE_SEQNO torn under the reader while the next job waits in the ring: the driver
    // never takes a torn value (one 2^32 beyond the real one) for a completion, which would
    // end the next job before it ran, and its interrupt handler gives up after a few reads.
    // Both jobs complete, at the latest when the watchdog looks, in order. A read may also
    // happen to see the real value: eight rounds.
    sw.set(ctrl::FAULT_TEAR_SEQNO);
    for round in 0..8u8 {
        let first = dev.submit(&[fill(0x50 + 2 * round)], 0, 0)?;
        let second = dev.submit(&[fill(0x51 + 2 * round)], 0, 0)?;
        let err = (job_errno(dev, second), job_errno(dev, first));
        let data = filled(0x51 + 2 * round)?;
        t.check(
            &format!("{name}: a torn FENCE_SEQNO ends no job early, round {round}"),
            err == (None, None) && data,
            format!("jobs {err:?}, the second's data written: {data}"),
        );
    }
    sw.set(0);

    // A bogus FENCE_SEQNO signals no job: the job is failed after the timeout, never
    // reported done on the device's word.
    sw.set(ctrl::FAULT_BOGUS_SEQNO);
    let job = dev.submit(&[fill(0x66)], 0, 0)?;
    let err = job_errno(dev, job);
    t.check(
        &format!("{name}: a bogus FENCE_SEQNO completes no job; the reset clears it"),
        err == Some(libc::ETIMEDOUT) && sw.get() == 0,
        format!("job {err:?}, FAULTS {:#x}", sw.get()),
    );
    let next = dev.submit(&[fill(0x77)], 0, 0)?;
    t.check(
        &format!("{name}: after the bogus seqno, the next job runs"),
        job_errno(dev, next).is_none() && filled(0x77)?,
        "0x77",
    );
    dev.vm_bind(&[unmap_op(AT, MIB2)])?;

    scrub_fails_in_the_middle(t, dev, &sw)?;

    // A reset that is never acknowledged wedges the device: its jobs and every later SUBMIT
    // fail with ENODEV, and nothing hangs.
    let wedged = Device::open(dev.path())?;
    let buf = wedged.bo_create(MIB2)?;
    wedged.vm_bind(&[map_op(buf.handle, 0, AT, MIB2, false)])?;
    let out = wedged.syncobj_create()?;
    sw.set(ctrl::FAULT_STALL | ctrl::FAULT_IGNORE_RESET);
    let job = wedged.submit(&[fill(0x88)], 0, out)?;
    let waited = wedged.syncobj_wait(out, minute);
    let err = job_errno(&wedged, job);
    t.check(
        &format!("{name}: a reset never acknowledged: the job fails with ENODEV"),
        waited.is_ok() && err == Some(libc::ENODEV),
        format!("{waited:?}, job {err:?}"),
    );
    t.errno(
        &format!("{name}: SUBMIT on a wedged device"),
        wedged.submit(&[fill(0x99)], 0, 0),
        libc::ENODEV,
    );
    t.errno(
        &format!("{name}: a VRAM buffer on a wedged device (its zeroing job cannot run)"),
        wedged.bo_create(MIB2).map(|_| ()),
        libc::ENODEV,
    );
    sw.set(0);
    Ok(())
}

/// A buffer whose VRAM takes more than one zeroing job (more than 64 blocks) and whose first
/// zeroing job fails (`FAULT_FAIL_COMMAND`) while the later ones succeed: BO_CREATE fails
/// with EIO rather than hand out memory that was not cleared, and keeps none of it; the same
/// BO_CREATE then succeeds with the buffer zeroed.
///
/// VRAM is fragmented on purpose: filled with 2 MiB buffers, then with 4 KiB ones, then one
/// 2 MiB buffer is replaced by 512 of 4 KiB, every other one of which is freed.
fn scrub_fails_in_the_middle(t: &mut Tally, dev: &Device, sw: &Switches) -> Result<(), Error> {
    const PAGE: u64 = 4096;
    const PAGES: u64 = 200;
    let name = dev.path().display().to_string();
    let full = |e: &Error| e.errno() == Some(libc::ENOSPC);
    let fill_with = |size: u64, most: usize| -> Result<Vec<_>, Error> {
        let mut bos = Vec::new();
        while bos.len() < most {
            match dev.bo_create(size) {
                Ok(bo) => bos.push(bo),
                Err(e) if full(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(bos)
    };
    let mut big = fill_with(MIB2, 4096)?;
    let small = fill_with(PAGE, 8192)?;
    drop(big.pop());
    let mut pages = fill_with(PAGE, 512)?;
    let mut i = 0;
    pages.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    let before = dev.info()?.vram_avail;
    sw.set(ctrl::FAULT_FAIL_COMMAND);
    let failed = dev.bo_create(PAGES * PAGE);
    let consumed = sw.get() & ctrl::FAULT_FAIL_COMMAND == 0;
    sw.set(0);
    let after = dev.info()?.vram_avail;
    let errno = failed.as_ref().err().and_then(Error::errno);
    drop(failed);
    t.check(
        &format!(
            "{name}: the first of several zeroing jobs fails: BO_CREATE fails with EIO and \
             keeps no VRAM"
        ),
        errno == Some(libc::EIO) && consumed && after == before,
        format!(
            "{} big, {} small, {} pages left; errno {errno:?}, fault used: {consumed}, VRAM \
             {before} -> {after}",
            big.len(),
            small.len(),
            pages.len()
        ),
    );
    let bo = dev.bo_create(PAGES * PAGE)?;
    let mut got = vec![0xffu8; (PAGES * PAGE) as usize];
    dev.read(bo.handle, 0, &mut got)?;
    t.check(
        &format!("{name}: the same BO_CREATE then succeeds, the buffer zeroed"),
        got.iter().all(|&b| b == 0),
        format!("{} non-zero bytes", got.iter().filter(|&&b| b != 0).count()),
    );
    Ok(())
}

/// Kills the device model in the middle of a job (`FAULT_EXIT`): a job stalls on the device,
/// and the doorbell of the next one makes the model die. Both jobs fail with ENODEV once the
/// watchdog's reset goes unanswered, with nobody calling WAIT; later SUBMITs fail the same way.
/// Every device of the model stops: run it last, in a boot of its own.
pub(crate) fn test_model_exit(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    // This boot's devices lack NULL pages (`--caps 0x3f`): a NULL map is refused, whole.
    let caps = dev.info()?.caps;
    let before = entries(dev)?;
    let small = dev.bo_create(KIB4)?;
    let refused = dev.vm_bind(&[
        map_op(small.handle, 0, AT + MIB2, KIB4, false),
        null_op(AT + 2 * MIB2, MIB2),
    ]);
    t.check(
        &format!("{name}: a device without MMU_NULL advertises none"),
        caps & uapi::DRM_CONFLUX_CAP_MMU_NULL == 0,
        format!("caps {caps:#x}"),
    );
    t.errno(
        &format!("{name}: VM_BIND of NULL pages without MMU_NULL"),
        refused,
        libc::EOPNOTSUPP,
    );
    t.check(
        &format!("{name}: the refused VM_BIND changed nothing"),
        entries(dev)? == before && dev.vm_path(0, AT + MIB2)? == 0,
        format!("entries {:?}, before {before:?}", entries(dev)?),
    );
    let sw = Switches::open(dev)?;
    let buf = dev.bo_create(MIB2)?;
    dev.vm_bind(&[map_op(buf.handle, 0, AT, MIB2, false)])?;
    let out = dev.syncobj_create()?;
    let fill = |pattern: u8| fill_cmd(AT, MIB2, u64::from_ne_bytes([pattern; 8]));
    sw.set(ctrl::FAULT_STALL);
    let stalled = dev.submit(&[fill(0x11)], 0, 0)?;
    sw.set(ctrl::FAULT_STALL | ctrl::FAULT_EXIT);
    let last = dev.submit(&[fill(0x22)], 0, out)?;
    let waited = dev.syncobj_wait(out, Duration::from_secs(60));
    let errs = (job_errno(dev, stalled), job_errno(dev, last));
    t.check(
        &format!("{name}: the model died in the middle of a job: its jobs fail with ENODEV"),
        waited.is_ok() && errs == (Some(libc::ENODEV), Some(libc::ENODEV)),
        format!("{waited:?}, jobs {errs:?}"),
    );
    t.errno(
        &format!("{name}: SUBMIT once the model has died"),
        dev.submit(&[fill(0x33)], 0, 0),
        libc::ENODEV,
    );
    Ok(())
}
