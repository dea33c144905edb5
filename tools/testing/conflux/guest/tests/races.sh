#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Runs in the rig's guest, in a boot of its own: loads conflux.ko with a job
# timeout of 500 ms (the races stall the engine on purpose) and runs the races
# on purpose, conflux-uapi-test --races SEED, then unloads the module. Prints
# one "PASS ..." or "FAIL ..." line per check; the launcher scans the
# kernel's log, and kmemleak, for reports.
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; }

seed=$1
if ! modprobe conflux job_timeout_ms=500; then
	bad "modprobe conflux job_timeout_ms=500"
	exit 0
fi
conflux-uapi-test --races "$seed"
if rmmod conflux; then
	ok "races: rmmod conflux"
else
	bad "races: rmmod conflux"
fi
