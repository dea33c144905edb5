// SPDX-License-Identifier: GPL-2.0

//! Driver for the Conflux accelerator.

mod driver;
mod engine;
mod file;
mod gem;
mod hw;
mod ioctl;
mod mmu;
mod prime;
mod regs;
mod userq;
mod vm;
mod vram;

kernel::module_pci_driver! {
    type: driver::ConfluxDriver,
    name: "conflux",
    authors: ["The Conflux developers"],
    description: "Conflux accelerator",
    license: "GPL v2",
    imports_ns: ["DMA_BUF"],
    params: {
        job_timeout_ms: u32 {
            default: 10000,
            description: "Milliseconds a job may be the oldest before it fails (1-600000)",
        },
        max_segment: u32 {
            default: 0,
            description: "Largest DMA segment of imported buffers in bytes (0: any, else >= 4096)",
        },
        p2pmem_mib: u32 {
            default: 0,
            description: "MiB of VRAM published for direct I/O (even, <= VRAM/2; 0: none)",
        },
        seg_boundary: u64 {
            default: 0,
            description: "Segment boundary mask of imported buffers, 2^n - 1 >= 4095 (0: 4 GiB)",
        },
    },
}
