// SPDX-License-Identifier: GPL-2.0

//! Helpers several subjects share: sizes and the test VA, errors of files and system
//! calls, data patterns, and what a device reports of its VM, jobs, counters and routes.

use std::os::fd::AsFd;

use conflux::{copy_cmd, map_op, unmap_op, Device, Error, Mapping};

pub(crate) const KIB4: u64 = 4096;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const MIB2: u64 = 2 * MIB;
pub(crate) const VA: u64 = 1 << 32;

/// Makes an [`Error`] of a failed file or system call that names `device` (a node, a sysfs
/// file, a PCI address) and `call`: for `map_err`.
pub(crate) fn io_err(device: &str, call: &str) -> impl FnOnce(std::io::Error) -> Error {
    let (device, call) = (device.to_string(), call.to_string());
    move |error| Error {
        device,
        call,
        error,
    }
}

/// `len` bytes of a pattern that differs at every offset and with `seed`.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 9) as u8 ^ seed)
        .collect()
}

/// The first offset where `got` differs from `want`.
pub(crate) fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i))
}

/// Reads all of a mapping.
pub(crate) fn mapped(m: &Mapping) -> Vec<u8> {
    let mut out = vec![0u8; m.len()];
    m.read(0, &mut out);
    out
}

/// The file's VM's page-table entries: 2 MiB ones, 4 KiB ones, spare tables.
pub(crate) fn entries(dev: &Device) -> Result<(u64, u64, u64), Error> {
    let i = dev.info()?;
    Ok((i.vm_2m_entries, i.vm_4k_entries, i.vm_spare_tables))
}

/// Waits for `job` and returns the error the job's fence has, if any.
pub(crate) fn job_errno(dev: &Device, job: u64) -> Option<i32> {
    dev.wait(job, -1).err().and_then(|e| e.errno())
}

/// The bytes the engine of `dev` moved: within its VRAM, to or from peers, to or from system
/// memory.
pub(crate) fn counters(dev: &Device) -> Result<[u64; 3], Error> {
    let i = dev.info()?;
    Ok([i.local_bytes, i.p2p_bytes, i.sysmem_bytes])
}

/// How `to` reaches a VRAM buffer of `from`, found by PRIME import: the path, or the errno of
/// the refusal.
pub(crate) fn prime_reach(from: &Device, to: &Device) -> Result<Result<u32, i32>, Error> {
    let bo = from.bo_create(MIB)?;
    let fd = from.export(bo.handle)?;
    Ok(match to.import(fd.0.as_fd()) {
        Ok(imported) => Ok(to.bo_info(imported.handle)?.path),
        Err(e) => Err(e.errno().unwrap_or(0)),
    })
}

/// What every member of the VM of `dev`, which has `members`, maps at `va`: each one's path.
pub(crate) fn paths_at(dev: &Device, members: usize, va: u64) -> Result<Vec<u32>, Error> {
    (0..members as u32).map(|m| dev.vm_path(m, va)).collect()
}

/// Runs COPY `VA..VA + len` to `2 * VA` on `dev` and waits for it: the bytes each path carried
/// (local, P2P, system memory).
pub(crate) fn copy_at_va(dev: &Device, len: u64) -> Result<[u64; 3], Error> {
    let c0 = counters(dev)?;
    let job = dev.submit(&[copy_cmd(VA, 2 * VA, len)], 0, 0)?;
    dev.wait(job, -1)?;
    let c1 = counters(dev)?;
    Ok([c1[0] - c0[0], c1[1] - c0[1], c1[2] - c0[2]])
}

/// Maps `src` and `dst` (handles of `dev`) and copies `len` bytes from one to the other.
pub(crate) fn copy(dev: &Device, src: u32, dst: u32, len: u64) -> Result<(), Error> {
    dev.vm_bind(&[
        map_op(src, 0, VA, len, false),
        map_op(dst, 0, VA + len, len, false),
    ])?;
    let job = dev.submit(&[copy_cmd(VA, VA + len, len)], 0, 0);
    let done = job.and_then(|j| dev.wait(j, -1));
    dev.vm_bind(&[unmap_op(VA, 2 * len)])?;
    done
}

/// Reads all of buffer `handle` of `dev`.
pub(crate) fn read_all(dev: &Device, handle: u32, len: u64) -> Result<Vec<u8>, Error> {
    let mut got = vec![0u8; len as usize];
    dev.read(handle, 0, &mut got)?;
    Ok(got)
}
