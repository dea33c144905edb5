// SPDX-License-Identifier: GPL-2.0

//! `conflux-uapi-test`: runs in the rig's guest with the driver loaded and checks the uAPI of
//! every Conflux device: what GET_INFO reports, buffers and their accounting, zeroing by the
//! engine, and the error code of every documented bad input. Prints one `PASS ...` or
//! `FAIL ...` line per check and ends with `N passed, N failed`.
//!
//! One module per subject, run in this order: [`device`] on every device; then on the first one
//! [`bind`], [`long_running`], [`user_queue`], [`jobs`], [`memory`], [`memcg`], [`udmabuf`] and
//! [`static_import`], then [`interop`] (other drivers' importers, exporters and fences) and
//! [`evict`]; with two devices or more [`shared_vm`]; with three or more [`migration`],
//! [`vfio`], the revocation of [`unbind`] and the RDMA registrations of [`rdma`]; last, the
//! unbind of the first device with a buffer. `--timeout` runs only the job timeout of [`jobs`],
//! the kill of a user queue that does not stop ([`user_queue::test_kill`]) and the device's
//! fault switches ([`faults`]), which end with the device wedged, for the driver loaded with
//! `job_timeout_ms=500`;
//! `--model-exit` kills the device model in the middle of a job ([`faults::test_model_exit`]),
//! which stops every device. `--interop` runs only [`interop`] on the first device, `--heap-limits`
//! its import of a system heap buffer beyond the device's segment limits (for the driver loaded
//! with `max_segment=65536`). `--storage TOPOLOGY` runs [`storage`], for the driver loaded with
//! `p2pmem_mib=16`. `--fuzz SEED CALLS` runs the ioctl fuzzer ([`fuzz`]), `--fuzz-one SEED N` one
//! sequence of it. `--races SEED` runs the races on purpose ([`races`]), for the driver loaded with
//! `job_timeout_ms=500`; they end with a device unbound and bound again.
//! Helpers that several subjects use are in [`common`].

mod alloc_walk;
mod bind;
mod bind_queue;
mod common;
mod device;
mod evict;
mod faults;
mod fuzz;
mod interop;
mod jobs;
mod long_running;
mod memcg;
mod memory;
mod migration;
mod races;
mod rdma;
mod shared_vm;
mod sparse;
mod static_import;
mod storage;
mod udmabuf;
mod unbind;
mod user_queue;
mod vfio;

use std::process::ExitCode;

use conflux::{devices, Device, Error};

use crate::{
    alloc_walk::test_alloc_walks,
    bind::test_bind,
    device::test_device,
    faults::{test_faults, test_model_exit},
    jobs::{
        test_close_with_running_jobs, test_fences, test_forgotten_failures, test_jobs, test_timeout,
    },
    memcg::test_memcg,
    memory::test_memory,
    migration::test_migration,
    shared_vm::test_shared_vm,
    static_import::test_static_import,
    udmabuf::test_udmabuf,
    unbind::{bad_ring_fails_the_probe, revoke_while_peers_copy, unbind_with_buffer},
    vfio::test_vfio,
};

struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    fn check(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            self.passed += 1;
            println!("PASS {what}: {detail}");
        } else {
            self.failed += 1;
            println!("FAIL {what}: {detail}");
        }
    }

    /// Prints the totals and returns the exit status: success when nothing failed.
    fn finish(&self) -> ExitCode {
        println!("{} passed, {} failed", self.passed, self.failed);
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// Checks that `r` failed with `errno`.
    fn errno<T>(&mut self, what: &str, r: Result<T, Error>, errno: i32) {
        match r {
            Ok(_) => self.check(what, false, "succeeded"),
            Err(e) => self.check(what, e.errno() == Some(errno), e),
        }
    }
}

fn main() -> ExitCode {
    let mut t = Tally {
        passed: 0,
        failed: 0,
    };
    let found = devices();
    let mode = std::env::args().nth(1);
    if matches!(mode.as_deref(), Some("--fuzz" | "--fuzz-one")) {
        let num = |i: usize| std::env::args().nth(i).and_then(|s| s.parse::<u64>().ok());
        let (Some(seed), Some(n)) = (num(2), num(3)) else {
            eprintln!("usage: conflux-uapi-test --fuzz SEED CALLS | --fuzz-one SEED SEQUENCE");
            return ExitCode::FAILURE;
        };
        let ok = if mode.as_deref() == Some("--fuzz") {
            fuzz::fuzz(&found, seed, n)
        } else {
            fuzz::replay(&found, seed, n)
        };
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if mode.as_deref() == Some("--races") {
        let seed = std::env::args().nth(2).and_then(|s| s.parse::<u64>().ok());
        let Some(seed) = seed else {
            eprintln!("usage: conflux-uapi-test --races SEED");
            return ExitCode::FAILURE;
        };
        races::test_races(&mut t, &found, seed);
        return t.finish();
    }
    if mode.as_deref() == Some("--memcg-child") {
        let path = std::env::args().nth(2).unwrap_or_default();
        return match memcg::child(std::path::Path::new(&path)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if mode.as_deref() == Some("--alloc-walks") {
        match (
            found.first().map(Device::open),
            found.get(1).map(Device::open),
        ) {
            (Some(Ok(a)), Some(Ok(b))) => {
                if let Err(e) = test_alloc_walks(&mut t, &a, &b) {
                    t.check(
                        &format!("{}: allocation walks", a.path().display()),
                        false,
                        e,
                    );
                }
            }
            _ => t.check("two Conflux devices that open", false, found.len()),
        }
        return t.finish();
    }
    if mode.as_deref() == Some("--storage") {
        let zen = std::env::args().nth(2).is_some_and(|t| t.ends_with("-zen"));
        if let Err(e) = storage::test_storage(&mut t, zen) {
            t.check("storage into peer-to-peer memory", false, e);
        }
        return t.finish();
    }
    if matches!(mode.as_deref(), Some("--interop" | "--heap-limits")) {
        match found.first().map(Device::open) {
            Some(Ok(dev)) if mode.as_deref() == Some("--heap-limits") => {
                if let Err(e) = interop::heap_refused(&mut t, &dev) {
                    t.check(&format!("{}: heap limits", dev.path().display()), false, e);
                }
            }
            Some(Ok(dev)) => {
                if let Err(e) = interop::test_interop(&mut t, &dev) {
                    t.check(
                        &format!("{}: other drivers", dev.path().display()),
                        false,
                        e,
                    );
                }
            }
            Some(Err(e)) => t.check("open", false, e),
            None => t.check("Conflux accel devices found", false, 0),
        }
        return t.finish();
    }
    if matches!(mode.as_deref(), Some("--timeout" | "--model-exit")) {
        match found.first().map(Device::open) {
            Some(Ok(dev)) if mode.as_deref() == Some("--model-exit") => {
                if let Err(e) = test_model_exit(&mut t, &dev) {
                    t.check(&format!("{}: model exit", dev.path().display()), false, e);
                }
            }
            Some(Ok(dev)) => {
                if let Err(e) = test_timeout(&mut t, &dev) {
                    t.check(&format!("{}: job timeout", dev.path().display()), false, e);
                }
                if let Err(e) = user_queue::test_kill(&mut t, &dev) {
                    t.check(
                        &format!("{}: user queue kill", dev.path().display()),
                        false,
                        e,
                    );
                }
                if let Err(e) = test_faults(&mut t, &dev) {
                    t.check(
                        &format!("{}: fault switches", dev.path().display()),
                        false,
                        e,
                    );
                }
            }
            Some(Err(e)) => t.check("open", false, e),
            None => t.check("Conflux accel devices found", false, 0),
        }
        return t.finish();
    }
    t.check(
        "Conflux accel devices found",
        !found.is_empty(),
        found.len(),
    );
    for path in found.iter() {
        match Device::open(path) {
            Ok(dev) => {
                if let Err(e) = test_device(&mut t, &dev) {
                    t.check(&format!("{}: uAPI calls", path.display()), false, e);
                }
            }
            Err(e) => t.check(&format!("{}: open", path.display()), false, e),
        }
    }
    if let Some(path) = found.first() {
        match Device::open(path) {
            Ok(dev) => {
                let start = dev.info().map(|i| i.vram_avail).unwrap_or(0);
                if let Err(e) = test_bind(&mut t, &dev) {
                    t.check(&format!("{}: VM_BIND", path.display()), false, e);
                }
                for queued in [false, true] {
                    if let Err(e) = sparse::test_sparse(&mut t, &[&dev], queued) {
                        t.check(&format!("{}: sparse binds", path.display()), false, e);
                    }
                }
                if let Err(e) = bind_queue::test_bind_queues(&mut t, &dev) {
                    t.check(&format!("{}: bind queues", path.display()), false, e);
                }
                if let Err(e) = long_running::test_long_running(&mut t, path) {
                    t.check(&format!("{}: long-running VMs", path.display()), false, e);
                }
                if let Err(e) = user_queue::test_user_queues(&mut t, path) {
                    t.check(&format!("{}: user queues", path.display()), false, e);
                }
                if let Err(e) = user_queue::test_preemption(&mut t, path) {
                    t.check(&format!("{}: preemption", path.display()), false, e);
                }
                if let Err(e) = test_jobs(&mut t, &dev) {
                    t.check(&format!("{}: jobs", path.display()), false, e);
                }
                if let Err(e) = test_fences(&mut t, &dev) {
                    t.check(&format!("{}: fences", path.display()), false, e);
                }
                if let Err(e) = test_forgotten_failures(&mut t, path) {
                    t.check(&format!("{}: forgotten failures", path.display()), false, e);
                }
                if let Err(e) = test_close_with_running_jobs(&mut t, path) {
                    t.check(
                        &format!("{}: close with running jobs", path.display()),
                        false,
                        e,
                    );
                }
                if let Err(e) = test_memory(&mut t, &dev) {
                    t.check(&format!("{}: memory", path.display()), false, e);
                }
                if let Err(e) = test_memcg(&mut t, path) {
                    t.check(&format!("{}: memcg", path.display()), false, e);
                }
                if let Err(e) = test_udmabuf(&mut t, &dev) {
                    t.check(&format!("{}: udmabuf", path.display()), false, e);
                }
                if let Err(e) = test_static_import(&mut t, &dev) {
                    t.check(&format!("{}: static importer", path.display()), false, e);
                }
                let avail = dev.info().map(|i| i.vram_avail).unwrap_or(0);
                drop(dev);
                if let Ok(dev) = Device::open(path) {
                    let after = dev.info().map(|i| i.vram_avail).unwrap_or(0);
                    t.check(
                        &format!(
                            "{}: closing the file frees its VM's buffers and tables",
                            path.display()
                        ),
                        after > avail && after == start,
                        format!(
                            "{avail} bytes available before, {after} after, {start} at the start"
                        ),
                    );
                }
            }
            Err(e) => t.check(&format!("{}: open", path.display()), false, e),
        }
        if let (Some(Ok(a)), Some(Ok(b))) = (
            found.first().map(Device::open),
            found.get(1).map(Device::open),
        ) {
            if let Err(e) = test_alloc_walks(&mut t, &a, &b) {
                t.check(&format!("{}: allocation walks", path.display()), false, e);
            }
        }
        if let (Some(Ok(a)), Some(Ok(b))) = (
            found.first().map(Device::open),
            found.get(1).map(Device::open),
        ) {
            if let Err(e) = static_import::test_pins(&mut t, &a, &b) {
                t.check(&format!("{}: pins", path.display()), false, e);
            }
        }
        match Device::open(path) {
            Ok(dev) => {
                if let Err(e) = interop::test_interop(&mut t, &dev) {
                    t.check(&format!("{}: other drivers", path.display()), false, e);
                }
            }
            Err(e) => t.check(&format!("{}: open", path.display()), false, e),
        }
        if let Err(e) = evict::test_eviction(&mut t, &found) {
            t.check(&format!("{}: eviction", path.display()), false, e);
        }
        if found.len() >= 2 {
            if let Err(e) = test_shared_vm(&mut t, &found) {
                t.check(&format!("{}: shared VM", path.display()), false, e);
            }
            if let Err(e) = user_queue::test_import_preemption(&mut t, &found) {
                t.check(
                    &format!("{}: imported buffer preemption", path.display()),
                    false,
                    e,
                );
            }
            if let Err(e) = user_queue::test_export_preemption(&mut t, &found) {
                t.check(
                    &format!("{}: exported buffer preemption", path.display()),
                    false,
                    e,
                );
            }
            for queued in [false, true] {
                let pair = (Device::open(&found[0]), Device::open(&found[1]));
                let sparse = match &pair {
                    (Ok(a), Ok(b)) => {
                        sparse::test_sparse(&mut t, &[a, b], queued).map_err(|e| e.to_string())
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
                };
                if let Err(e) = sparse {
                    t.check(
                        &format!("{}: sparse binds on a shared VM", path.display()),
                        false,
                        e,
                    );
                }
            }
            let pair = (Device::open(&found[0]), Device::open(&found[1]));
            let queues = match &pair {
                (Ok(a), Ok(b)) => {
                    bind_queue::test_shared_bind_queues(&mut t, a, b).map_err(|e| e.to_string())
                }
                (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
            };
            if let Err(e) = queues {
                t.check(
                    &format!("{}: bind queues on a shared VM", path.display()),
                    false,
                    e,
                );
            }
        }
        if found.len() >= 3 {
            if let Err(e) = test_migration(&mut t, &found) {
                t.check(
                    &format!("{}: move to system memory", path.display()),
                    false,
                    e,
                );
            }
            if let Err(e) = test_vfio(&mut t, &found) {
                t.check("vfio-pci dma-buf import", false, e);
            }
            if let Err(e) = revoke_while_peers_copy(&mut t, &found) {
                t.check(&format!("{}: revocation", found[1].display()), false, e);
            }
            if let Err(e) = rdma::test_rdma(&mut t, &found) {
                t.check(
                    &format!("{}: RDMA registrations", found[1].display()),
                    false,
                    e,
                );
            }
        }
        if let Err(e) = bad_ring_fails_the_probe(&mut t, path) {
            t.check(&format!("{}: bad ring registers", path.display()), false, e);
        }
        if let Err(e) = unbind_with_buffer(&mut t, path) {
            t.check(
                &format!("{}: unbind with a buffer", path.display()),
                false,
                e,
            );
        }
    }
    t.finish()
}
