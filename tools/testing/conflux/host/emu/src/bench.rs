// SPDX-License-Identifier: GPL-2.0

//! Host memory bandwidth, the yardstick for the model's copies.

use std::{
    hint::black_box,
    io,
    os::fd::AsFd,
    sync::Barrier,
    thread,
    time::{Duration, Instant},
};

use conflux_device::{
    memory::{Memory, Target},
    shm::{memfd, Mapping, SharedMemory},
};

/// Fewest timed passes.
pub const MIN_PASSES: usize = 5;

/// Best throughput, in bytes per second, of `f` moving `bytes` bytes per
/// call: at least [`MIN_PASSES`] calls, more while they take less than
/// `budget` in all (at most 100).
pub fn best_rate(bytes: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut passes = 0;
    while passes < MIN_PASSES || (start.elapsed() < budget && passes < 100) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        passes += 1;
    }
    bytes as f64 / best.as_secs_f64().max(1e-9)
}

/// Host `memcpy` bandwidth in bytes per second: the best of several
/// `copy_nonoverlapping` passes between two buffers of `size` bytes that
/// were written beforehand (so their pages exist).
pub fn host_memcpy(size: usize) -> f64 {
    let src = vec![0x5au8; size];
    let mut dst = vec![0xa5u8; size];
    best_rate(size, Duration::from_millis(500), || {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    })
}

/// Memory that a copy of [`host_memcpy_parallel`] moves bytes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffers {
    /// Two vectors of the process, as [`host_memcpy`] copies.
    Private,
    /// The two halves of a shared mapping of a memory file, as the device
    /// model copies within a device's VRAM.
    Shared,
}

/// One thread's copy of `size` bytes, repeated for each pass.
enum Copier {
    Private(Vec<u8>, Vec<u8>),
    Shared(SharedMemory, usize),
}

impl Copier {
    fn new(buffers: Buffers, size: usize) -> io::Result<Self> {
        Ok(match buffers {
            Buffers::Private => Copier::Private(vec![0x5a; size], vec![0xa5; size]),
            Buffers::Shared => {
                let bytes = 2 * size as u64;
                let file = memfd("conflux-memcpy-bench", bytes)?;
                let map = Mapping::new(file.as_fd(), 2 * size)?;
                let mut mem = SharedMemory::new(vec![map], None);
                // Every page exists before the first timed pass.
                mem.fill(Target::Bar(0), 0, 2 * size, 0x5a)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                Copier::Shared(mem, size)
            }
        })
    }

    fn copy(&mut self) {
        match self {
            Copier::Private(src, dst) => {
                dst.copy_from_slice(black_box(src));
                black_box(dst);
            }
            Copier::Shared(mem, size) => {
                let _ = black_box(mem.copy(Target::Bar(0), 0, Target::Bar(0), *size as u64, *size));
            }
        }
    }
}

/// Aggregate host `memcpy` bandwidth of `threads` threads copying at once,
/// each between two buffers of its own of `size` bytes, in bytes per
/// second: the best of several passes, each timed from the moment every
/// thread may start to the moment the last is done.
pub fn host_memcpy_parallel(size: usize, threads: usize, buffers: Buffers) -> io::Result<f64> {
    if threads <= 1 && buffers == Buffers::Private {
        return Ok(host_memcpy(size));
    }
    let go = Barrier::new(threads + 1);
    let done = Barrier::new(threads + 1);
    // A pass count the copying threads and the timing thread agree on.
    const PASSES: usize = 2 * MIN_PASSES;
    let mut copiers = (0..threads)
        .map(|_| Copier::new(buffers, size))
        .collect::<io::Result<Vec<_>>>()?;
    Ok(thread::scope(|s| {
        for copier in copiers.iter_mut() {
            let (go, done) = (&go, &done);
            s.spawn(move || {
                for _ in 0..PASSES {
                    go.wait();
                    copier.copy();
                    done.wait();
                }
            });
        }
        let mut best = Duration::MAX;
        for _ in 0..PASSES {
            go.wait();
            let t = Instant::now();
            done.wait();
            best = best.min(t.elapsed());
        }
        (size * threads) as f64 / best.as_secs_f64().max(1e-9)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_positive() {
        assert!(host_memcpy(1 << 16) > 0.0);
        for buffers in [Buffers::Private, Buffers::Shared] {
            for threads in [1, 3] {
                assert!(host_memcpy_parallel(1 << 16, threads, buffers).unwrap() > 0.0);
            }
        }
        let mut calls = 0;
        best_rate(1, Duration::ZERO, || calls += 1);
        assert_eq!(calls, MIN_PASSES);
    }
}
