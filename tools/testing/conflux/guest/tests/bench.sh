#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# What `make bench` runs in the rig's guest (booted with 1 GiB BARs and
# KUnit enabled for the rust_pci_p2pdma suite). Usage: bench.sh RUNS
#
# Loads conflux_p2pdma_test.ko, whose KUnit suite benchmarks the DMA-only
# table of 1 GiB of BAR memory against dma_buf_phys_vec_to_sgt() and prints
# its figures in the kernel log, then conflux.ko (with 16 MiB of VRAM
# published as peer-to-peer memory, for the storage rows), and prints the
# figures of `conflux bench-suite` on one line after "BENCH-JSON ". The
# kernel's console is quiet while that line is printed, so that no kernel
# message cuts into it; the whole kernel log is printed at the end for the
# launcher's checks.
runs=$1
modprobe conflux_p2pdma_test || exit 1
rmmod conflux_p2pdma_test || exit 1
modprobe conflux p2pmem_mib=16 || exit 1
dmesg -n 1
report=$(conflux bench-suite "$runs") || exit 1
echo "BENCH-JSON $report"
dmesg -n 7
echo "== kernel log"
dmesg
