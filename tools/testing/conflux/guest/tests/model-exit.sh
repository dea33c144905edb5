#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Runs in the rig's guest, in a boot of its own, whose devices lack NULL
# pages (MMU_NULL): loads conflux.ko with a job timeout of 500 ms, checks
# that a NULL map is refused, and kills the device model in the middle of a
# job (conflux-uapi-test --model-exit). The jobs fail, the first device is
# wedged, and the module still unloads: the other devices, whose model is
# gone too, are wedged when their engines cannot be reset at unbind.
# Prints one "PASS ..." or "FAIL ..." line per check.
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; }

if ! modprobe conflux job_timeout_ms=500; then
	bad "modprobe conflux job_timeout_ms=500"
	exit 0
fi
ok "modprobe conflux job_timeout_ms=500"
conflux-uapi-test --model-exit | grep -E '^(PASS|FAIL) '
n=$(dmesg | grep -c 'engine: reset not confirmed: the device is wedged')
if [ "$n" -ge 1 ]; then ok "wedged device logged ($n)"; else bad "no wedged device logged"; fi
if rmmod conflux; then
	ok "rmmod conflux after the model died"
else
	bad "rmmod conflux after the model died"
fi
n=$(ls /dev/accel 2>/dev/null | grep -c '^accel[0-9][0-9]*$')
if [ "$n" -eq 0 ]; then ok "no accel node left"; else bad "$n accel nodes left after rmmod"; fi
