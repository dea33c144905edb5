// SPDX-License-Identifier: GPL-2.0

//! Buffers that move to system memory for an importer without a route to VRAM.

use std::{os::fd::AsFd, path::PathBuf};

use conflux::{copy_cmd, fill_cmd, map_op, placement_name, uapi, unmap_op, Cmd, Device, Error};

use crate::{
    common::{
        copy_at_va, counters, first_diff, job_errno, mapped, paths_at, pattern, prime_reach, MIB,
        VA,
    },
    Tally,
};

/// A buffer created for VRAM or system memory moves to system memory when a device without a
/// route to the exporter's VRAM maps it: its VRAM is freed, and the exporter's VM, a P2P
/// importer and a CPU mapping made before the move all reach the moved bytes.
pub(crate) fn test_migration(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    let files = paths
        .iter()
        .map(Device::open)
        .collect::<Result<Vec<_>, _>>()?;
    let x = &files[0];
    let name = x.path().display().to_string();
    let (mut far, mut near) = (None, None);
    for f in &files[1..] {
        match prime_reach(x, f)? {
            Err(e) if e == libc::EXDEV => far = far.or(Some(f)),
            Ok(_) => near = near.or(Some(f)),
            Err(_) => {}
        }
    }
    let (Some(y), Some(z)) = (far, near) else {
        println!("# {name}: no device both with and without a route to its VRAM: no move to test");
        return Ok(());
    };
    let (yn, zn) = (y.path().display(), z.path().display());
    let len = 4 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = x.bo_create_in(len, both)?.into_handle();
    let data = pattern(len as usize, 51);
    x.write(bo, 0, &data)?;
    let m = x.map(bo)?;
    let seen = mapped(&m);
    let info = x.bo_info(bo)?;
    t.check(
        &format!("{name}: a buffer for VRAM or system memory starts in VRAM"),
        info.placement == uapi::DRM_CONFLUX_BO_VRAM && seen == data,
        format!(
            "placement {}; mapping differs at {:?}",
            placement_name(info.placement),
            first_diff(&seen, &data)
        ),
    );
    let x_dst = x.bo_create(len)?.into_handle();
    x.vm_bind(&[
        map_op(bo, 0, VA, len, false),
        map_op(x_dst, 0, 2 * VA, len, false),
    ])?;
    let fd = x.export(bo)?;
    let z_bo = z.import(fd.0.as_fd())?.into_handle();
    let z_dst = z.bo_create(len)?.into_handle();
    z.vm_bind(&[
        map_op(z_bo, 0, VA, len, false),
        map_op(z_dst, 0, 2 * VA, len, false),
    ])?;
    let moved = copy_at_va(z, len)?;
    t.check(
        &format!("{zn}: reads {name}'s buffer by P2P while it is in VRAM"),
        moved[1] == len && moved[2] == 0,
        format!("P2P +{}, system memory +{} bytes", moved[1], moved[2]),
    );

    let y_bo = y.import(fd.0.as_fd())?.into_handle();
    let y_info = y.bo_info(y_bo)?;
    let still = x.bo_info(bo)?.placement;
    t.check(
        &format!("{yn}: imports {name}'s buffer, which it cannot reach in VRAM"),
        y_info.path == uapi::DRM_CONFLUX_PATH_SYSTEM && still == uapi::DRM_CONFLUX_BO_VRAM,
        format!(
            "path {}; the buffer stays in {} until the first map",
            conflux::path_name(y_info.path),
            placement_name(still)
        ),
    );
    let before_info = x.info()?;
    let avail = before_info.vram_avail;
    let y_dst = y.bo_create(len)?.into_handle();

    // The exporter and the P2P importer still run jobs that read the buffer (256 MiB of copies
    // each) when the move starts: it waits for them, and they finish on the old addresses.
    let long: Vec<Cmd> = (0..64).map(|_| copy_cmd(VA, 2 * VA, len)).collect();
    let before = [counters(x)?, counters(z)?];
    let jobs = [x.submit(&long, 0, 0)?, z.submit(&long, 0, 0)?];
    let running = [x.wait(jobs[0], 0).is_err(), z.wait(jobs[1], 0).is_err()];
    y.vm_bind(&[
        map_op(y_bo, 0, VA, len, false),
        map_op(y_dst, 0, 2 * VA, len, false),
    ])?;
    let errors = [job_errno(x, jobs[0]), job_errno(z, jobs[1])];
    // The move is a job of the exporter's engine, which the CPU's reads wait for.
    let mut first = [0u8; 4];
    x.read(bo, 0, &mut first)?;
    let after = [counters(x)?, counters(z)?];
    let mut copied = [vec![0; len as usize], vec![0; len as usize]];
    x.read(x_dst, 0, &mut copied[0])?;
    z.read(z_dst, 0, &mut copied[1])?;
    t.check(
        &format!("{name}, {zn}: jobs running when {yn}'s map moves the buffer finish first"),
        running.iter().any(|&r| r)
            && errors == [None, None]
            && after[0][0] - before[0][0] == 64 * len
            && after[1][1] - before[1][1] == 64 * len
            && after[0][2] - before[0][2] == len
            && after[1][2] == before[1][2]
            && copied[0] == data
            && copied[1] == data,
        format!(
            "still running at the bind: {running:?}; fence errors {errors:?}; \
             {name} local +{}, system memory +{} (the move's copy: {len}); \
             {zn} P2P +{}, system memory +{}; \
             copies differ at {:?} and {:?}",
            after[0][0] - before[0][0],
            after[0][2] - before[0][2],
            after[1][1] - before[1][1],
            after[1][2] - before[1][2],
            first_diff(&copied[0], &data),
            first_diff(&copied[1], &data)
        ),
    );
    let info = x.bo_info(bo)?;
    let x_info = x.info()?;
    let freed = x_info.vram_avail - avail;
    let bytes_moved = x_info.bytes_moved - before_info.bytes_moved;
    t.check(
        &format!("{name}: the buffer moved to system memory when {yn} mapped it, by the engine"),
        info.placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && info.path == uapi::DRM_CONFLUX_PATH_SYSTEM
            && info.moves == 1
            && bytes_moved == len
            && freed == len,
        format!(
            "placement {}, path {}, {} moves, {bytes_moved} bytes moved; {freed} bytes of VRAM \
             freed",
            placement_name(info.placement),
            conflux::path_name(info.path),
            info.moves
        ),
    );
    let z_path = z.bo_info(z_bo)?.path;
    t.check(
        &format!("{zn}: its import of the moved buffer reports system memory"),
        z_path == uapi::DRM_CONFLUX_PATH_SYSTEM,
        conflux::path_name(z_path),
    );
    let zero = vec![0; len as usize];
    for (dev, dst, who) in [
        (y, y_dst, "the importer that made it move"),
        (
            x,
            x_dst,
            "the exporter, through the VM it mapped the buffer in before",
        ),
        (
            z,
            z_dst,
            "the P2P importer, through its mapping from before",
        ),
    ] {
        dev.write(dst, 0, &zero)?;
        let moved = copy_at_va(dev, len)?;
        let mut got = vec![0; len as usize];
        dev.read(dst, 0, &mut got)?;
        t.check(
            &format!(
                "{}: copies the moved buffer from system memory: {who}",
                dev.path().display()
            ),
            got == data && moved[2] == len && moved[1] == 0,
            format!(
                "first difference {:?}; P2P +{}, system memory +{} bytes",
                first_diff(&got, &data),
                moved[1],
                moved[2]
            ),
        );
    }
    let seen = mapped(&m);
    let new = pattern(4 * 4096, 52);
    m.write(0, &new);
    let mut got = vec![0; new.len()];
    x.read(bo, 0, &mut got)?;
    t.check(
        &format!("{name}: a CPU mapping made before the move reaches the moved bytes"),
        seen == data && got == new,
        format!(
            "reads differ at {:?}, writes at {:?}",
            first_diff(&seen, &data),
            first_diff(&got, &new)
        ),
    );
    drop(m);
    for dev in [x, y, z] {
        dev.vm_bind(&[unmap_op(VA, len), unmap_op(2 * VA, len)])?;
    }

    // A shared VM of every device maps a movable buffer of device 0: the bind moves it, and
    // every member reaches it in system memory.
    let g = paths
        .iter()
        .map(Device::open)
        .collect::<Result<Vec<_>, _>>()?;
    for member in &g[1..] {
        member.vm_join(&g[0])?;
    }
    let n = g.len();
    let sbo = g[0].bo_create_in(len, both)?.into_handle();
    g[0].vm_bind(&[map_op(sbo, 0, VA, len, false)])?;
    let now = paths_at(&g[0], n, VA)?;
    let placement = g[0].bo_info(sbo)?.placement;
    t.check(
        &format!("{name}: a shared VM of {n} devices maps a movable buffer on every member"),
        placement == uapi::DRM_CONFLUX_BO_SYSTEM
            && now.iter().all(|&p| p == uapi::DRM_CONFLUX_PATH_SYSTEM),
        format!("placement {}; paths {now:?}", placement_name(placement)),
    );
    let last = &g[n - 1];
    let job = last.submit(&[fill_cmd(VA, len, 0x6b6b_6b6b_6b6b_6b6b)], 0, 0)?;
    last.wait(job, -1)?;
    let mut got = vec![0; len as usize];
    g[0].read(sbo, 0, &mut got)?;
    t.check(
        &format!(
            "{}: a fill through the shared VM lands in the moved buffer",
            last.path().display()
        ),
        got.iter().all(|&b| b == 0x6b),
        format!(
            "first other byte at {:?}",
            got.iter().position(|&b| b != 0x6b)
        ),
    );
    g[0].vm_bind(&[unmap_op(VA, len)])?;
    drop(g);

    test_failed_bind_moves_nothing(t, x, y, z)?;
    // Every allocation of the move failed in turn.
    crate::alloc_walk::test_move_walk(t, x, y)
}

/// A bind on a VM that `z`, which reaches `x`'s VRAM, and `y`, which does not, share, of a
/// buffer of `x` that may move: made while `z`'s VRAM has no room for page tables and nothing of
/// `z` may be evicted, it fails with `ENOSPC` and the buffer stays in VRAM, unmoved, as `y`'s map
/// of it (which moves it) comes after the page tables of every member. With room, the same
/// call moves it.
fn test_failed_bind_moves_nothing(
    t: &mut Tally,
    x: &Device,
    y: &Device,
    z: &Device,
) -> Result<(), Error> {
    let name = format!("{} and {}", z.path().display(), y.path().display());
    let len = 64 * 1024;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = x.bo_create_in(len, both)?;
    let fd = x.export(bo.handle)?;
    let zf = Device::open(z.path())?;
    let yf = Device::open(y.path())?;
    yf.vm_join(&zf)?;
    let imported = zf.import(fd.0.as_fd())?;
    // Buffers that only VRAM holds fill `z`'s VRAM, down to the last page.
    let mut fill = Vec::new();
    let mut size = 64 * MIB;
    while size >= 4096 {
        match zf.bo_create(size) {
            Ok(b) => fill.push(b),
            Err(e) if e.errno() == Some(libc::ENOSPC) => size /= 2,
            Err(e) => return Err(e),
        }
    }
    let avail = zf.info()?.vram_avail;
    let op = [map_op(imported.handle, 0, VA, len, false)];
    let refused = zf.vm_bind(&op);
    let info = x.bo_info(bo.handle)?;
    let now = paths_at(&zf, 2, VA)?;
    t.check(
        &format!("{name}: a shared-VM bind short of page tables on one member moves nothing"),
        refused.as_ref().err().and_then(Error::errno) == Some(libc::ENOSPC)
            && info.placement == uapi::DRM_CONFLUX_BO_VRAM
            && info.moves == 0
            && now == [0, 0],
        format!(
            "{refused:?} with {avail} bytes of VRAM available; placement {}, {} moves; paths \
             {now:?}",
            placement_name(info.placement),
            info.moves
        ),
    );
    drop(fill);
    let bound = zf.vm_bind(&op);
    let info = x.bo_info(bo.handle)?;
    t.check(
        &format!(
            "{name}: with room, the same bind moves the buffer for the member without a route"
        ),
        bound.is_ok() && info.placement == uapi::DRM_CONFLUX_BO_SYSTEM && info.moves == 1,
        format!(
            "{bound:?}; placement {}, {} moves",
            placement_name(info.placement),
            info.moves
        ),
    );
    Ok(())
}
