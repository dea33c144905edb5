// SPDX-License-Identifier: GPL-2.0

//! VRAM overcommit: buffers that add up to more than VRAM has room for are evicted to system
//! memory and come back for the jobs that use them, with every byte kept.

use std::path::{Path, PathBuf};

use conflux::{copy_cmd, fill_cmd, map_op, uapi, unmap_op, Cmd, Device, Error};

use crate::{
    common::{first_diff, mapped, pattern, MIB},
    Tally,
};

/// VRAM left free for the movable buffers; the rest is taken by a buffer that may only be in
/// VRAM, which is never evicted.
const ROOM: u64 = 16 * MIB;
/// The movable buffers: three times the room, in buffers of `BUF` bytes, written in chunks.
const BUF: u64 = 4 * MIB;
const COUNT: u64 = 3 * ROOM / BUF;
const CHUNK: u64 = MIB;
const CHUNKS: u64 = BUF / CHUNK;
/// Where the movable buffers are bound, one after the other.
const BASE: u64 = 64 * MIB;
/// Jobs per device.
const ROUNDS: u32 = 120;

/// A small generator of the test's random choices, from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one device's run found.
struct Outcome {
    name: String,
    /// The first job that failed, with its errno.
    failed: Option<(u32, i32)>,
    /// The first chunk whose bytes were not the last ones written, and where.
    wrong: Option<(u64, u64, usize)>,
    evictions: u64,
    returns: u64,
    moves: u64,
    errors: u64,
    in_vram: u64,
}

/// The bytes of a chunk filled with `pattern` (0 for a chunk never written).
fn chunk_bytes(pattern: u64) -> Vec<u8> {
    pattern.to_le_bytes().repeat((CHUNK / 8) as usize)
}

/// Movable buffers of the first device, which both devices' jobs read: their chunks' fill
/// patterns, and their dma-bufs.
const SOURCES: u64 = 4;

/// A buffer that jobs on both devices copy from, and the pattern of each of its chunks.
struct Source {
    fd: conflux::DmaBufFd,
    chunks: Vec<u64>,
}

/// Runs the oversubscribed workload on the device at `path`: fills and copies of chunks of the
/// movable buffers in a random order, copies from the chunks of `sources` too (buffers of the
/// first device, imported), then a check of every byte.
fn oversubscribe(path: &Path, seed: u64, sources: &[Source]) -> Result<Outcome, Error> {
    let dev = Device::open(path)?;
    let name = path.display().to_string();
    let before = dev.info()?;
    let ballast_size = (before.vram_avail.saturating_sub(ROOM)) & !(2 * MIB - 1);
    let _ballast = dev.bo_create_in(ballast_size, uapi::DRM_CONFLUX_BO_VRAM)?;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let mut bufs = Vec::new();
    for i in 0..COUNT {
        let bo = dev.bo_create_in(BUF, both)?;
        dev.vm_bind(&[map_op(bo.handle, 0, BASE + i * BUF, BUF, false)])?;
        bufs.push(bo);
    }
    // The sources, bound after the buffers: the same buffers on the first device, imported
    // over peer-to-peer on the second.
    let mut imported = Vec::new();
    for (k, src) in sources.iter().enumerate() {
        let bo = dev.import(std::os::fd::AsFd::as_fd(&src.fd.0))?;
        let va = BASE + (COUNT + k as u64) * BUF;
        dev.vm_bind(&[map_op(bo.handle, 0, va, BUF, true)])?;
        imported.push(bo);
    }
    let at = |buf: u64, chunk: u64| BASE + buf * BUF + chunk * CHUNK;
    let mut want = vec![vec![0u64; CHUNKS as usize]; COUNT as usize];
    let mut rng = Rng(seed | 1);
    let mut jobs = Vec::new();
    for _ in 0..ROUNDS {
        let (i, k) = (rng.below(COUNT), rng.below(CHUNKS));
        let cmd: Cmd = if !sources.is_empty() && rng.below(4) == 0 {
            // A copy from a source, wherever its exporter put it.
            let (j, l) = (rng.below(sources.len() as u64), rng.below(CHUNKS));
            want[i as usize][k as usize] = sources[j as usize].chunks[l as usize];
            copy_cmd(at(COUNT + j, l), at(i, k), CHUNK)
        } else if rng.below(3) == 0 {
            // A copy from a chunk of another buffer, which may be evicted: the engine reads
            // what the moves carried.
            let (j, l) = ((i + 1 + rng.below(COUNT - 1)) % COUNT, rng.below(CHUNKS));
            want[i as usize][k as usize] = want[j as usize][l as usize];
            copy_cmd(at(j, l), at(i, k), CHUNK)
        } else {
            let p = rng.next();
            want[i as usize][k as usize] = p;
            fill_cmd(at(i, k), CHUNK, p)
        };
        jobs.push(dev.submit(&[cmd], 0, 0)?);
    }
    let mut failed = None;
    for (n, job) in jobs.iter().enumerate() {
        if let Err(e) = dev.wait(*job, -1) {
            failed = failed.or(Some((n as u32, e.errno().unwrap_or(0))));
        }
    }
    let mut wrong = None;
    let mut moves = 0;
    let mut in_vram = 0;
    let mut got = vec![0u8; BUF as usize];
    for (i, bo) in bufs.iter().enumerate() {
        let info = dev.bo_info(bo.handle)?;
        moves += info.moves;
        in_vram += u64::from(info.placement == uapi::DRM_CONFLUX_BO_VRAM);
        dev.read(bo.handle, 0, &mut got)?;
        for (k, &p) in want[i].iter().enumerate() {
            let part = &got[k * CHUNK as usize..(k + 1) * CHUNK as usize];
            if let Some(d) = first_diff(part, &chunk_bytes(p)) {
                wrong = wrong.or(Some((i as u64, k as u64, d)));
            }
        }
    }
    let after = dev.info()?;
    dev.vm_bind(&[unmap_op(BASE, (COUNT + sources.len() as u64) * BUF)])?;
    Ok(Outcome {
        name,
        failed,
        wrong,
        evictions: after.evictions - before.evictions,
        returns: after.returns - before.returns,
        moves,
        errors: after.errors - before.errors,
        in_vram,
    })
}

/// A CPU mapping of a buffer made while it is in VRAM, kept across its eviction and its return:
/// it reads the bytes wherever they are, and what it writes while the buffer is in system
/// memory comes back to VRAM with it.
fn mapping_follows(t: &mut Tally, path: &Path) -> Result<(), Error> {
    let dev = Device::open(path)?;
    let name = path.display();
    let len = 4 * MIB;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = dev.bo_create_in(len, both)?;
    let (a, b) = (pattern(len as usize, 71), pattern(len as usize, 72));
    dev.write(bo.handle, 0, &a)?;
    let m = dev.map(bo.handle)?;
    let before = mapped(&m);
    // A buffer that may only be in VRAM, 2 MiB larger than what is left: the movable one
    // makes room.
    let avail = dev.info()?.vram_avail;
    let ballast = dev.bo_create_in(
        (avail + 2 * MIB) & !(2 * MIB - 1),
        uapi::DRM_CONFLUX_BO_VRAM,
    )?;
    let out = dev.bo_info(bo.handle)?;
    let seen = mapped(&m);
    m.write(0, &b);
    drop(ballast);
    // A job that reads the buffer brings it back.
    let dst = dev.bo_create(4096)?;
    dev.vm_bind(&[
        map_op(bo.handle, 0, BASE, len, false),
        map_op(dst.handle, 0, BASE + len, 4096, false),
    ])?;
    let job = dev.submit(&[copy_cmd(BASE, BASE + len, 4096)], 0, 0)?;
    dev.wait(job, -1)?;
    let back = dev.bo_info(bo.handle)?;
    let mut got = vec![0u8; len as usize];
    dev.read(bo.handle, 0, &mut got)?;
    let seen_back = mapped(&m);
    let mut copied = vec![0u8; 4096];
    dev.read(dst.handle, 0, &mut copied)?;
    dev.vm_bind(&[unmap_op(BASE, len + 4096)])?;
    t.check(
        &format!("{name}: a CPU mapping made in VRAM reads the buffer after its eviction"),
        before == a && out.placement == uapi::DRM_CONFLUX_BO_SYSTEM && out.moves == 1 && seen == a,
        format!(
            "placement {:#x} after the eviction, {} moves; reads differ at {:?} before, {:?} after",
            out.placement,
            out.moves,
            first_diff(&before, &a),
            first_diff(&seen, &a)
        ),
    );
    t.check(
        &format!("{name}: what the mapping wrote in system memory comes back to VRAM with it"),
        back.placement == uapi::DRM_CONFLUX_BO_VRAM
            && back.moves == 2
            && got == b
            && seen_back == b
            && copied[..] == b[..4096],
        format!(
            "placement {:#x} after the job, {} moves; BO_READ differs at {:?}, the mapping at \
             {:?}, the job's copy at {:?}",
            back.placement,
            back.moves,
            first_diff(&got, &b),
            first_diff(&seen_back, &b),
            first_diff(&copied, &b[..4096])
        ),
    );
    Ok(())
}

/// Writes through a CPU mapping, a pass over every page after another, while another file of
/// the same device evicts the buffer and brings it back, until it did so `MOVE_ROUNDS` times:
/// the last value written to each page is there at the end, none lost to a move.
fn writes_during_moves(t: &mut Tally, path: &Path) -> Result<(), Error> {
    const PAGES: u64 = 1024;
    const MOVE_ROUNDS: u32 = 6;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
    let dev = Device::open(path)?;
    let name = path.display();
    let len = PAGES * 4096;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = dev.bo_create_in(len, both)?;
    let m = dev.map(bo.handle)?;
    let fd = dev.export(bo.handle)?;
    let (done, rounds) = (AtomicBool::new(false), AtomicU32::new(0));
    let (moved, last, writes) = std::thread::scope(|s| {
        let mover = s.spawn(|| -> Result<u32, Error> {
            let other = Device::open(path)?;
            let same = other.import(std::os::fd::AsFd::as_fd(&fd.0))?;
            let page = other.bo_create(4096)?;
            other.vm_bind(&[
                map_op(same.handle, 0, BASE, len, false),
                map_op(page.handle, 0, BASE + len, 4096, false),
            ])?;
            while !done.load(Relaxed) {
                drop(squeeze(&other)?);
                let job = other.submit(&[copy_cmd(BASE, BASE + len, 4096)], 0, 0)?;
                other.wait(job, -1)?;
                rounds.fetch_add(1, Relaxed);
            }
            other.vm_bind(&[unmap_op(BASE, len + 4096)])?;
            Ok(rounds.load(Relaxed))
        });
        let mut writes = 0u64;
        // At most 4096 passes, should the mover stop early.
        while writes < 4096 * PAGES && (rounds.load(Relaxed) < MOVE_ROUNDS || writes == 0) {
            for p in 0..PAGES {
                writes += 1;
                m.write((p * 4096) as usize, &writes.to_le_bytes());
            }
            if mover.is_finished() {
                break;
            }
        }
        done.store(true, Relaxed);
        let rounds = mover.join().unwrap_or_else(|_| {
            Err(Error {
                device: name.to_string(),
                call: "mover thread".into(),
                error: std::io::Error::other("the thread panicked"),
            })
        });
        (rounds, dev.bo_info(bo.handle), writes)
    });
    let rounds = moved?;
    let moves = last?.moves;
    let mut got = vec![0u8; len as usize];
    dev.read(bo.handle, 0, &mut got)?;
    let lost: Vec<u64> = (0..PAGES)
        .filter(|&p| {
            let at = (p * 4096) as usize;
            let word = u64::from_le_bytes(got[at..at + 8].try_into().unwrap_or_default());
            word != writes - PAGES + p + 1
        })
        .collect();
    t.check(
        &format!(
            "{name}: writes through a CPU mapping while another file moves the buffer back \
             and forth: none lost"
        ),
        lost.is_empty() && moves >= 2,
        format!(
            "{writes} writes; {rounds} rounds of eviction and return, {moves} moves; pages \
             whose last write is missing: {} (first {:?})",
            lost.len(),
            lost.first()
        ),
    );
    Ok(())
}

/// VM_BIND in VRAM full of a VRAM-only buffer and a movable one: the page tables of a new
/// region take the room the movable buffer leaves when it is evicted.
fn bind_evicts(t: &mut Tally, path: &Path) -> Result<(), Error> {
    let dev = Device::open(path)?;
    let name = path.display();
    let info = dev.info()?;
    let sys = dev.bo_create_in(4096, uapi::DRM_CONFLUX_BO_SYSTEM)?;
    let vram_only = uapi::DRM_CONFLUX_BO_VRAM;
    let both = vram_only | uapi::DRM_CONFLUX_BO_SYSTEM;
    let full = dev.bo_create_in(
        (info.vram_avail & !(2 * MIB - 1)).saturating_sub(2 * MIB),
        vram_only,
    )?;
    let movable = dev.bo_create_in(2 * MIB, both)?;
    // Two pages left: less than the bind's three tables, enough for a table of the move's
    // window.
    let left = dev.info()?.vram_avail;
    let rest = (left > 8192)
        .then(|| dev.bo_create_in(left - 8192, vram_only))
        .transpose()?;
    let before = dev.info()?;
    // The last 512 GiB region of the bindable range: its tables are new.
    let va = (info.va_end - 4096) & !((1u64 << 39) - 1);
    let bound = dev.vm_bind(&[map_op(sys.handle, 0, va, 4096, false)]);
    let after = dev.info()?;
    let placement = dev.bo_info(movable.handle)?.placement;
    if bound.is_ok() {
        dev.vm_bind(&[unmap_op(va, 4096)])?;
    }
    drop((rest, full));
    t.check(
        &format!("{name}: VM_BIND in full VRAM evicts a movable buffer for its page tables"),
        bound.is_ok()
            && before.vram_avail <= 8192
            && after.evictions > before.evictions
            && placement == uapi::DRM_CONFLUX_BO_SYSTEM,
        format!(
            "{bound:?}; {} bytes of VRAM available before; {} evictions; the movable buffer in \
             {placement:#x}",
            before.vram_avail,
            after.evictions - before.evictions
        ),
    );
    Ok(())
}

/// Rounds of eviction and return of a buffer that another device imports.
const FOLLOW_ROUNDS: u8 = 12;

/// A buffer of size `len` that may be in VRAM or system memory, exported by `exp` and imported
/// by `imp`, both bound: the exporter's at `BASE` with a page of its own after it, the
/// importer's at `BASE` with a buffer of its own of `len` bytes after it.
struct Shared<'a> {
    bo: conflux::Bo<'a>,
    theirs: conflux::Bo<'a>,
    dst: conflux::Bo<'a>,
    _page: conflux::Bo<'a>,
}

impl<'a> Shared<'a> {
    fn new(exp: &'a Device, imp: &'a Device, len: u64) -> Result<Self, Error> {
        let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
        let bo = exp.bo_create_in(len, both)?;
        let page = exp.bo_create(4096)?;
        exp.vm_bind(&[
            map_op(bo.handle, 0, BASE, len, false),
            map_op(page.handle, 0, BASE + len, 4096, false),
        ])?;
        let fd = exp.export(bo.handle)?;
        let theirs = imp.import(std::os::fd::AsFd::as_fd(&fd.0))?;
        let dst = imp.bo_create(len)?;
        imp.vm_bind(&[
            map_op(theirs.handle, 0, BASE, len, true),
            map_op(dst.handle, 0, BASE + len, len, false),
        ])?;
        Ok(Self {
            bo,
            theirs,
            dst,
            _page: page,
        })
    }

    /// A job of the exporter that reads the buffer: it comes back to VRAM if it may.
    fn use_on_exporter(&self, exp: &Device) -> Result<(), Error> {
        let job = exp.submit(&[copy_cmd(BASE, BASE + self.len(), 4096)], 0, 0)?;
        exp.wait(job, -1)
    }

    /// The importer copies the whole buffer into its own and reads that back.
    fn copy_on_importer(&self, imp: &Device) -> Result<Vec<u8>, Error> {
        let len = self.len();
        let job = imp.submit(&[copy_cmd(BASE, BASE + len, len)], 0, 0)?;
        imp.wait(job, -1)?;
        let mut got = vec![0u8; len as usize];
        imp.read(self.dst.handle, 0, &mut got)?;
        Ok(got)
    }

    fn len(&self) -> u64 {
        self.dst.size
    }

    fn unbind(&self, exp: &Device, imp: &Device) -> Result<(), Error> {
        exp.vm_bind(&[unmap_op(BASE, self.len() + 4096)])?;
        imp.vm_bind(&[unmap_op(BASE, 2 * self.len())])
    }
}

/// A VRAM-only buffer 2 MiB larger than what VRAM has left: the movable buffers make room.
pub(crate) fn squeeze(dev: &Device) -> Result<conflux::Bo<'_>, Error> {
    let avail = dev.info()?.vram_avail;
    dev.bo_create_in(
        (avail + 2 * MIB) & !(2 * MIB - 1),
        uapi::DRM_CONFLUX_BO_VRAM,
    )
}

/// A device that imports a buffer over peer-to-peer keeps copying from it while its exporter
/// evicts it and brings it back, round after round: each copy reads the bytes last written,
/// wherever they are, and no job fails on either device.
fn importer_follows(t: &mut Tally, exp: &Device, imp: &Device) -> Result<(), Error> {
    let len = 4 * MIB;
    let name = format!(
        "{} exporting to {}",
        exp.path().display(),
        imp.path().display()
    );
    let s = Shared::new(exp, imp, len)?;
    let path = imp.bo_info(s.theirs.handle)?.path;
    if path != uapi::DRM_CONFLUX_PATH_P2P {
        s.unbind(exp, imp)?;
        t.check(
            &format!("{name}: the importer reaches the buffer over peer-to-peer"),
            false,
            format!("path {path}"),
        );
        return Ok(());
    }
    let (e0, i0) = (exp.info()?, imp.info()?);
    let mut bad = Vec::new();
    let mut placements = Vec::new();
    for round in 0..FOLLOW_ROUNDS {
        let want = pattern(len as usize, 90 + round);
        exp.write(s.bo.handle, 0, &want)?;
        let ballast = squeeze(exp)?;
        let out = exp.bo_info(s.bo.handle)?.placement;
        let got = s.copy_on_importer(imp)?;
        if let Some(d) = first_diff(&got, &want) {
            bad.push(format!("round {round}, evicted: byte {d} differs"));
        }
        drop(ballast);
        s.use_on_exporter(exp)?;
        let back = exp.bo_info(s.bo.handle)?.placement;
        let got = s.copy_on_importer(imp)?;
        if let Some(d) = first_diff(&got, &want) {
            bad.push(format!("round {round}, back in VRAM: byte {d} differs"));
        }
        placements.push((out, back));
    }
    let moves = exp.bo_info(s.bo.handle)?.moves;
    let (e1, i1) = (exp.info()?, imp.info()?);
    s.unbind(exp, imp)?;
    let (sys, vram) = (uapi::DRM_CONFLUX_BO_SYSTEM, uapi::DRM_CONFLUX_BO_VRAM);
    t.check(
        &format!(
            "{name}: an importer copying over peer-to-peer reads the right bytes through \
             {FOLLOW_ROUNDS} evictions and returns"
        ),
        bad.is_empty()
            && placements.iter().all(|&p| p == (sys, vram))
            && moves == 2 * u64::from(FOLLOW_ROUNDS),
        format!("{bad:?}; placements (evicted, back) {placements:?}; {moves} moves"),
    );
    t.check(
        &format!("{name}: and neither engine recorded an error"),
        e1.errors == e0.errors && i1.errors == i0.errors,
        format!(
            "{} errors on the exporter, {} on the importer",
            e1.errors - e0.errors,
            i1.errors - i0.errors
        ),
    );
    Ok(())
}

/// A VM shared by a file of `exp` and one of `imp`: a movable buffer of `exp` bound in it is
/// evicted and brought back by `exp`, round after round, while `imp`'s jobs copy from it at
/// the same address: every copy reads the bytes last written, and no job fails.
fn shared_vm_follows(t: &mut Tally, exp: &Device, imp: &Device) -> Result<(), Error> {
    const ROUNDS: u8 = 6;
    let len = 4 * MIB;
    let name = format!(
        "{} and {} sharing a VM",
        exp.path().display(),
        imp.path().display()
    );
    imp.vm_join(exp)?;
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let bo = exp.bo_create_in(len, both)?;
    let dst = imp.bo_create(len)?;
    exp.vm_bind(&[map_op(bo.handle, 0, BASE, len, false)])?;
    imp.vm_bind(&[map_op(dst.handle, 0, BASE + len, len, false)])?;
    let copy = |want: &[u8]| -> Result<Option<usize>, Error> {
        let job = imp.submit(&[copy_cmd(BASE, BASE + len, len)], 0, 0)?;
        imp.wait(job, -1)?;
        let mut got = vec![0u8; len as usize];
        imp.read(dst.handle, 0, &mut got)?;
        Ok(first_diff(&got, want))
    };
    let (e0, i0) = (exp.info()?, imp.info()?);
    let (mut bad, mut placements) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let want = pattern(len as usize, 120 + round);
        exp.write(bo.handle, 0, &want)?;
        let ballast = squeeze(exp)?;
        let out = exp.bo_info(bo.handle)?.placement;
        if let Some(d) = copy(&want)? {
            bad.push(format!("round {round}, evicted: byte {d} differs"));
        }
        drop(ballast);
        let job = exp.submit(&[fill_cmd(BASE + len - 8, 8, 0)], 0, 0)?;
        exp.wait(job, -1)?;
        let back = exp.bo_info(bo.handle)?.placement;
        // The exporter's job wrote the last 8 bytes.
        let mut want = want;
        want[len as usize - 8..].fill(0);
        if let Some(d) = copy(&want)? {
            bad.push(format!("round {round}, back in VRAM: byte {d} differs"));
        }
        placements.push((out, back));
    }
    let moves = exp.bo_info(bo.handle)?.moves;
    let (e1, i1) = (exp.info()?, imp.info()?);
    exp.vm_bind(&[unmap_op(BASE, 2 * len)])?;
    let (sys, vram) = (uapi::DRM_CONFLUX_BO_SYSTEM, uapi::DRM_CONFLUX_BO_VRAM);
    t.check(
        &format!(
            "{name}: the other member's jobs read a buffer at its address through {ROUNDS} \
             evictions and returns"
        ),
        bad.is_empty()
            && placements.iter().all(|&p| p == (sys, vram))
            && moves == 2 * u64::from(ROUNDS)
            && e1.errors == e0.errors
            && i1.errors == i0.errors,
        format!(
            "{bad:?}; placements (evicted, back) {placements:?}; {moves} moves; {} and {} \
             engine errors",
            e1.errors - e0.errors,
            i1.errors - i0.errors
        ),
    );
    Ok(())
}

/// While an importer that cannot reach VRAM is attached, the buffer stays in system memory,
/// where that importer reads it; once it has let go, the buffer comes back to VRAM for the
/// exporter's next job.
fn far_importer(t: &mut Tally, exp: &Device, imp: &Device) -> Result<(), Error> {
    let len = 2 * MIB;
    let name = format!(
        "{} exporting to {}",
        exp.path().display(),
        imp.path().display()
    );
    let want = pattern(len as usize, 77);
    let s = Shared::new(exp, imp, len)?;
    exp.write(s.bo.handle, 0, &want)?;
    let got = s.copy_on_importer(imp)?;
    let moved = exp.bo_info(s.bo.handle)?.placement;
    s.use_on_exporter(exp)?;
    let stays = exp.bo_info(s.bo.handle)?.placement;
    s.unbind(exp, imp)?;
    let Shared { bo, theirs, .. } = s;
    drop(theirs);
    // The attachment goes with the imported buffer, once the importer's engine has dropped
    // its last job.
    let mut back = stays;
    exp.vm_bind(&[map_op(bo.handle, 0, BASE, len, false)])?;
    for _ in 0..40 {
        let job = exp.submit(&[fill_cmd(BASE + len - 8, 8, 0)], 0, 0)?;
        exp.wait(job, -1)?;
        back = exp.bo_info(bo.handle)?.placement;
        if back == uapi::DRM_CONFLUX_BO_VRAM {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    exp.vm_bind(&[unmap_op(BASE, len)])?;
    let sys = uapi::DRM_CONFLUX_BO_SYSTEM;
    t.check(
        &format!(
            "{name}: an importer without a route to VRAM keeps the buffer in system memory \
             while attached"
        ),
        first_diff(&got, &want).is_none() && moved == sys && stays == sys,
        format!(
            "bytes differ at {:?}; placement {moved:#x} after its copy, {stays:#x} after the \
             exporter's job",
            first_diff(&got, &want)
        ),
    );
    t.check(
        &format!("{name}: once it detached, the buffer comes back to VRAM"),
        back == uapi::DRM_CONFLUX_BO_VRAM,
        format!("placement {back:#x}"),
    );
    Ok(())
}

/// Oversubscribes the free VRAM of up to two devices three times, at once.
pub(crate) fn test_eviction(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    // The sources: movable buffers of the first device, filled chunk by chunk, which it evicts
    // and brings back for its own jobs while the second device's jobs read them.
    let first = match paths.first() {
        Some(path) => Device::open(path)?,
        None => return Ok(()),
    };
    let both = uapi::DRM_CONFLUX_BO_VRAM | uapi::DRM_CONFLUX_BO_SYSTEM;
    let mut sources = Vec::new();
    let mut source_bos = Vec::new();
    for k in 0..SOURCES {
        let bo = first.bo_create_in(BUF, both)?;
        let chunks: Vec<u64> = (0..CHUNKS)
            .map(|c| 0x5eed_0000_0000_0000 | (k << 8) | c)
            .collect();
        for (c, &p) in chunks.iter().enumerate() {
            first.write(bo.handle, c as u64 * CHUNK, &chunk_bytes(p))?;
        }
        sources.push(Source {
            fd: first.export(bo.handle)?,
            chunks,
        });
        source_bos.push(bo);
    }
    let shared = &sources;
    let outcomes: Vec<Result<Outcome, Error>> = std::thread::scope(|s| {
        let runs: Vec<_> = paths
            .iter()
            .take(2)
            .enumerate()
            .map(|(n, p)| s.spawn(move || oversubscribe(p, 20261205 + n as u64, shared)))
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join().unwrap_or_else(|_| {
                    Err(Error {
                        device: "eviction".into(),
                        call: "thread".into(),
                        error: std::io::Error::other("the thread panicked"),
                    })
                })
            })
            .collect()
    });
    // The tests below evict one buffer at a time: nothing else movable is left.
    drop((sources, source_bos));
    if let Some(path) = paths.first() {
        mapping_follows(t, path)?;
        writes_during_moves(t, path)?;
        bind_evicts(t, path)?;
    }
    let devs = paths
        .iter()
        .map(Device::open)
        .collect::<Result<Vec<_>, _>>()?;
    if let [exp, imp, rest @ ..] = &devs[..] {
        importer_follows(t, exp, imp)?;
        if let [Ok(a), Ok(b)] = [&paths[0], &paths[1]].map(Device::open) {
            shared_vm_follows(t, &a, &b)?;
        }
        // A device with no peer-to-peer route to the first, if the topology has one.
        for other in rest {
            let probe = Shared::new(exp, other, 2 * MIB)?;
            let path = other.bo_info(probe.theirs.handle)?.path;
            probe.unbind(exp, other)?;
            drop(probe);
            if path == uapi::DRM_CONFLUX_PATH_SYSTEM {
                far_importer(t, exp, other)?;
                break;
            }
        }
    }
    for outcome in outcomes {
        let o = outcome?;
        t.check(
            &format!(
                "{}: {COUNT} buffers of {} MiB in {} MiB of VRAM: {ROUNDS} jobs in a random \
                 order, copying from {SOURCES} buffers of the first device too, keep every byte",
                o.name,
                BUF / MIB,
                ROOM / MIB
            ),
            o.failed.is_none() && o.wrong.is_none() && o.errors == 0,
            format!(
                "failed job {:?}; first wrong chunk (buffer, chunk, offset) {:?}; {} engine \
                 errors",
                o.failed, o.wrong, o.errors
            ),
        );
        t.check(
            &format!(
                "{}: buffers were evicted and came back for their jobs",
                o.name
            ),
            o.evictions > 0 && o.returns > 0 && o.moves >= o.returns,
            format!(
                "{} evictions, {} returns, {} moves counted on the buffers; {} of {COUNT} in \
                 VRAM at the end",
                o.evictions, o.returns, o.moves, o.in_vram
            ),
        );
    }
    Ok(())
}
