// SPDX-License-Identifier: GPL-2.0

//! Host memory bandwidth, the yardstick for the model's copies.

use std::{
    hint::black_box,
    sync::Barrier,
    thread,
    time::{Duration, Instant},
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

/// Aggregate host `memcpy` bandwidth of `threads` threads copying at once,
/// each between two buffers of its own of `size` bytes, in bytes per
/// second: the best of several passes, each timed from the moment every
/// thread may start to the moment the last is done.
pub fn host_memcpy_parallel(size: usize, threads: usize) -> f64 {
    if threads <= 1 {
        return host_memcpy(size);
    }
    let go = Barrier::new(threads + 1);
    let done = Barrier::new(threads + 1);
    // A pass count the copying threads and the timing thread agree on.
    const PASSES: usize = 2 * MIN_PASSES;
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let src = vec![0x5au8; size];
                let mut dst = vec![0xa5u8; size];
                for _ in 0..PASSES {
                    go.wait();
                    dst.copy_from_slice(black_box(&src));
                    black_box(&mut dst);
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_positive() {
        assert!(host_memcpy(1 << 16) > 0.0);
        assert!(host_memcpy_parallel(1 << 16, 3) > 0.0);
        let mut calls = 0;
        best_rate(1, Duration::ZERO, || calls += 1);
        assert_eq!(calls, MIN_PASSES);
    }
}
