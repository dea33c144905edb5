# SPDX-License-Identifier: GPL-2.0
#
# Conflux: build and test entry points. The repository is an overlay onto a
# pristine Linux 7.3 tree; everything downloaded or built lives in the cache
# ($(CONFLUX_CACHE), default ~/.cache/conflux). KSRC=/path/to/linux-7.3 uses
# your own tree instead of the one `make setup` fetches.

ifneq ($(KERNELRELEASE),)
# Invoked by Kbuild (make -C <tree> M=<this repository>): see Kbuild.
include $(src)/Kbuild
else

SHELL := /bin/bash
export CONFLUX_CACHE ?= $(HOME)/.cache/conflux
MK := $(CURDIR)/mk

.PHONY: help setup overlay kunit guest style emu rig-smoke rig-kunit check demo bench fuzz races patches patches-check clean

help:
	@echo "make setup          install what is missing and fetch Linux 7.3 (idempotent)"
	@echo "make demo           boot the rig, copy between every pair of devices, print the path/bandwidth matrix, draw it as a PNG"
	@echo "make bench          every headline figure beside its reference, in one run: a table, JSON and a PNG chart"
	@echo "make fuzz           the seeded ioctl fuzzer in the sanitizer guest: FUZZ_CALLS (1000000) calls from FUZZ_SEED"
	@echo "make races          the races on purpose in the sanitizer guest, timings drawn from RACES_SEED"
	@echo "make check          run every test (runs setup first when anything is missing)"
	@echo "make kunit          build the UML kernel and run the KUnit suites"
	@echo "make guest          build the x86_64 guest kernel and the conflux module"
	@echo "make style          rustfmt and checkpatch --strict (part of check)"
	@echo "make emu            cargo test, clippy and fmt of every crate in tools/testing/conflux, host and guest (part of check)"
	@echo "make rig-smoke      boot the QEMU rig, test the device model and the driver from the guest (part of check)"
	@echo "make rig-kunit      run the KUnit suites that need PCI devices in the rig's guest (part of check)"
	@echo "make patches        write the upstreamable git format-patch series"
	@echo "make patches-check  apply that series to a pristine tree with git am and compare"
	@echo "make overlay        lay the overlay onto the build tree"
	@echo "make clean          remove build output from the cache (keeps the source)"

setup:
	@$(MK)/setup.sh

overlay:
	@$(MK)/overlay.sh

kunit:
	@$(MK)/kunit.sh

rig-smoke:
	@$(MK)/rig-smoke.sh

rig-kunit:
	@$(MK)/rig-kunit.sh

emu:
	@$(MK)/emu.sh

style:
	@$(MK)/style.sh

guest:
	@$(MK)/guest.sh

check:
	@$(MK)/check.sh

demo:
	@$(MK)/demo.sh

bench:
	@$(MK)/bench.sh

fuzz:
	@$(MK)/fuzz.sh

races:
	@$(MK)/races.sh

patches:
	@$(MK)/patches.sh

patches-check:
	@$(MK)/patches.sh --check

clean:
	rm -rf $(CONFLUX_CACHE)/build $(CONFLUX_CACHE)/tree $(CONFLUX_CACHE)/tree-ksrc-*

endif
