#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make rig-smoke: boot the QEMU rig on both topologies and run the raw guest
# tool (no kernel driver) against the device model; compare the 64 MiB
# peer-to-peer copy with the host's memcpy; load conflux.ko on both topologies
# (bind, accel nodes, unbind, unload, reload); run a fixed-seed slice of the
# ioctl fuzzer (mk/fuzz.sh) and the races on purpose (mk/races.sh); check
# that the launcher leaves no process or file behind after success, failure,
# timeout and SIGTERM.
STEP=rig-smoke
. "$(dirname "$0")/common.sh"
. "$TOP/mk/tally.sh"
. "$TOP/mk/rig-lib.sh"

rig_prepare

memcpy=$("$BIN/conflux-emu" memcpy-bench --size 64M) || die "conflux-emu memcpy-bench failed"
memcpy_mbs=$(sed -nE 's/.*: ([0-9]+) MB\/s$/\1/p' <<<"$memcpy")
say "$memcpy"

for topo in switch3+rp1 switch3+rp1-zen; do
	say "booting $topo and running conflux-raw"
	log=$(mktemp)
	start=$SECONDS
	set +e
	vm --topology "$topo" --add "$RAW" --timeout 600 -- conflux-raw --topology "$topo" 2>&1 | tee "$log" | sed "s/^/    [$topo] /"
	rc=${PIPESTATUS[0]}
	set -e
	say "$topo: guest command exited $rc after $((SECONDS - start)) s"
	guest_results "$topo" "$log" "conflux-raw ran no test (launcher exit $rc)"
	p2p=$(sed -nE 's/^BENCH p2p copy 64 MiB: ([0-9]+) MB\/s$/\1/p' "$log")
	# A figure, not a test: make bench compares the copies with the host's memcpy.
	if [ -n "$p2p" ]; then
		pass "$topo: 64 MiB P2P copy ran: $p2p MB/s (host memcpy $memcpy_mbs MB/s)"
	else
		fail "$topo: the 64 MiB P2P copy gave no figure"
	fi
	[ "$rc" -eq 0 ] || fail "$topo: launcher exit status $rc"
	rm -f "$log"
	check_clean "a run on $topo"
done

# The driver: conflux.ko binds every device of the topology, gives each an
# accel node, declines the plain ivshmem function, and unbinds, unloads and
# reloads cleanly.
for topo in switch3+rp1 switch3+rp1-zen; do
	say "booting $topo and loading conflux.ko"
	log=$(mktemp)
	set +e
	vm --topology "$topo" --plain-ivshmem --add "$GUEST_TESTS/driver-test.sh" \
		--add "$GBIN/conflux" --add "$GBIN/conflux-uapi-test" --timeout 1500 -- \
		sh /usr/bin/driver-test.sh 4 1 "$memcpy_mbs" "$topo" 2>&1 |
		tee "$log" | sed "s/^/    [$topo driver] /"
	rc=${PIPESTATUS[0]}
	set -e
	guest_results "$topo driver" "$log" "the driver test ran no check (launcher exit $rc)"
	[ "$rc" -eq 0 ] || fail "$topo: driver test launcher exit status $rc"
	rm -f "$log"
	check_clean "the driver test on $topo"
done

# A device model that dies in the middle of a job (FAULT_EXIT): the jobs
# fail with ENODEV, the devices are wedged, the module unloads, and the
# launcher cleans up after the dead model. Its devices are version 1.1 ones,
# without NULL pages (--caps 0x3f), which VM_BIND must refuse first.
say "booting switch3+rp1 (devices without MMU_NULL) and killing the device model in the middle of a job"
log=$(mktemp)
set +e
vm --topology switch3+rp1 --caps 0x3f --add "$GUEST_TESTS/model-exit.sh" --add "$GBIN/conflux-uapi-test" \
	--timeout 600 -- sh /usr/bin/model-exit.sh 2>&1 | tee "$log" | sed "s/^/    [model exit] /"
rc=${PIPESTATUS[0]}
set -e
guest_results "model exit" "$log" "the model-exit test ran no check (launcher exit $rc)"
if grep -q 'FAULT_EXIT: the model dies' "$log"; then
	pass "model exit: the model died at the doorbell, as asked"
else
	fail "model exit: the model did not log its death"
fi
[ "$rc" -eq 0 ] || fail "model exit: launcher exit status $rc"
rm -f "$log"
check_clean "the model-exit boot"

# The ioctl fuzzer: a short slice with a fixed seed (`make fuzz` runs a
# million calls from a seed of its own).
fuzz_run 20261205 "${FUZZ_SLICE:-20000}" 900

# The races on purpose, with fixed timings (`make races` draws its own).
races_run 20261205 1200

set +e
vm --timeout 300 -- false >/dev/null 2>&1
rc=$?
set -e
if [ "$rc" -eq 1 ]; then pass "a failing guest command's status (1) is returned"; else fail "guest 'false' gave $rc, expected 1"; fi
check_clean "a failing command"

set +e
vm --timeout 5 -- sleep 600 >/dev/null 2>&1
rc=$?
set -e
if [ "$rc" -eq 124 ]; then pass "timeout: exit 124"; else fail "timeout gave $rc, expected 124"; fi
check_clean "a timeout"

# The launcher itself in the background (not a shell function), so that the
# signal reaches it.
"$BIN/conflux-vm" run --kernel "$KERNEL" --modules "$MODULES" --emu "$BIN/conflux-emu" \
	--timeout 300 -- sleep 600 >/dev/null 2>&1 &
pid=$!
sleep 8
kill -TERM "$pid"
set +e
wait "$pid"
rc=$?
set -e
if [ "$rc" -eq 125 ]; then pass "SIGTERM: the launcher stops with 125"; else fail "SIGTERM gave $rc, expected 125"; fi
check_clean "SIGTERM"

tally_summary
