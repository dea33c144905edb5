#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Runs in the rig's guest, in a boot of its own: loads conflux.ko with a job
# timeout of 500 ms (the fuzzer's jobs may hang on purpose) and runs the
# ioctl fuzzer, conflux-uapi-test --fuzz SEED CALLS, then unloads the module.
# Prints the fuzzer's progress and one "PASS ..." or "FAIL ..." line per
# check; the launcher scans the kernel's log, and kmemleak, for reports.
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; }

seed=$1
calls=$2
if ! modprobe conflux job_timeout_ms=500; then
	bad "modprobe conflux job_timeout_ms=500"
	exit 0
fi
conflux-uapi-test --fuzz "$seed" "$calls"
if rmmod conflux; then
	ok "fuzz: rmmod conflux after $calls calls"
else
	bad "fuzz: rmmod conflux after $calls calls"
fi
