#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make fuzz: the seeded ioctl fuzzer (conflux-uapi-test --fuzz) in the rig's
# sanitizer guest, on switch3+rp1: FUZZ_CALLS calls (default one million),
# seed FUZZ_SEED (default: the time). A failure prints the seed, the sequence
# and its shortest failing list of operations. `make check` runs a short
# slice with a fixed seed through rig-smoke.
STEP=fuzz
. "$(dirname "$0")/common.sh"
. "$TOP/mk/tally.sh"
. "$TOP/mk/rig-lib.sh"

SEED=${FUZZ_SEED:-$(date +%s)}
CALLS=${FUZZ_CALLS:-1000000}
# Generous: the guest runs under TCG with KASAN.
TIMEOUT=${FUZZ_TIMEOUT:-$((600 + CALLS / 100))}

rig_prepare
fuzz_run "$SEED" "$CALLS" "$TIMEOUT"
tally_summary
