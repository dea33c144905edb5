#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make races: the races on purpose (conflux-uapi-test --races) in the rig's
# sanitizer guest, on switch3+rp1, with timings drawn from RACES_SEED
# (default: the time). `make check` runs them with a fixed seed through
# rig-smoke.
STEP=races
. "$(dirname "$0")/common.sh"
. "$TOP/mk/tally.sh"
. "$TOP/mk/rig-lib.sh"

rig_prepare
races_run "${RACES_SEED:-$(date +%s)}" "${RACES_TIMEOUT:-1200}"
tally_summary
