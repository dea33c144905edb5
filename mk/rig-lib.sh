# SPDX-License-Identifier: GPL-2.0
# The QEMU rig, for the steps that boot it. Sourced after common.sh and
# tally.sh; it only defines: rig_prepare (the guest kernel, the host tools
# and the static guest programs, and no leftovers of an earlier run), vm
# (conflux-vm run with the rig's kernel and modules), and the check that a
# launcher run left nothing behind.

GUEST=${GUEST_BUILD:-$CACHE/build/guest}
KERNEL=$GUEST/arch/x86/boot/bzImage
MODULES=$GUEST/modroot
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/build/cargo}
# Host tools, and the static guest programs (`--add` puts them in /usr/bin).
BIN=$CARGO_TARGET_DIR/release
GBIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release
RAW=$GBIN/conflux-raw
# The guest's scripts, added to the guest as they are.
GUEST_TESTS=$TOP/tools/testing/conflux/guest/tests

# rig_prepare: builds what the rig runs (the guest kernel only when it is
# missing) and refuses to start over leftovers of an earlier run.
rig_prepare() {
	[ -f "$KERNEL" ] || "$TOP/mk/guest.sh" >/dev/null
	uapi_headers
	say "building conflux-emu, conflux-vm (host), conflux-raw, conflux and conflux-uapi-test (static guest programs)"
	(cd "$TOP/tools/testing/conflux" &&
		cargo build --locked --quiet --release -p conflux-emu -p conflux-vm &&
		cargo build --locked --quiet --release -p conflux-raw -p conflux -p conflux-uapi-test \
			--target x86_64-unknown-linux-musl) ||
		die "cargo build failed"
	if leftovers >/dev/null; then
		die "conflux-vm leftovers from an earlier run: $(leftovers)"
	fi
}

vm() {
	"$BIN/conflux-vm" run --kernel "$KERNEL" --modules "$MODULES" --emu "$BIN/conflux-emu" "$@"
}

# Nothing of a launcher run may survive it: no model or QEMU process, no
# run directory (sockets, guest RAM, initramfs).
leftovers() {
	local procs dirs
	procs=$(pgrep -f "conflux-emu serve --run-dir /dev/shm/conflux-vm\.|qemu-system-x86_64 .*conflux-vm\." || true)
	dirs=$(find /dev/shm -maxdepth 1 -name 'conflux-vm.*' 2>/dev/null || true)
	[ -z "$procs$dirs" ] && return 1
	echo "processes: ${procs:-none}; files: ${dirs:-none}"
}
check_clean() {
	local what=$1 left
	if left=$(leftovers); then
		fail "cleanup after $what: $left"
		pkill -9 -f "conflux-emu serve --run-dir /dev/shm/conflux-vm\." || true
		pkill -9 -f "qemu-system-x86_64 .*conflux-vm\." || true
		rm -rf /dev/shm/conflux-vm.*
	else
		pass "cleanup after $what: no process, socket or file left"
	fi
}

# guest_results LABEL LOG WHY-NONE: counts the guest's "PASS ..." and
# "FAIL ..." lines of LOG; a log without any is a failure.
guest_results() {
	local n line
	n=$(grep -cE '^(PASS|FAIL) ' "$2" || true)
	[ "$n" -gt 0 ] || fail "$1: $3"
	while read -r line; do
		case $line in
		PASS*) pass "$1: ${line#PASS }" ;;
		FAIL*) fail "$1: ${line#FAIL }" ;;
		esac
	done < <(grep -E '^(PASS|FAIL) ' "$2")
}

# guest_suite LABEL SCRIPT TIMEOUT ARGS...: boots switch3+rp1 with the guest
# script SCRIPT and conflux-uapi-test, runs `sh SCRIPT ARGS...`, and counts
# its PASS and FAIL lines and the cleanup.
guest_suite() {
	local label=$1 script=$2 timeout=$3 log rc
	shift 3
	log=$(mktemp)
	set +e
	vm --topology switch3+rp1 --add "$GUEST_TESTS/$script" --add "$GBIN/conflux-uapi-test" \
		--timeout "$timeout" -- sh "/usr/bin/$script" "$@" 2>&1 |
		tee "$log" | sed "s/^/    [$label] /"
	rc=${PIPESTATUS[0]}
	set -e
	guest_results "$label" "$log" "no result (launcher exit $rc)"
	[ "$rc" -eq 0 ] || fail "$label ($*): launcher exit status $rc"
	rm -f "$log"
	check_clean "the $label boot"
}

# fuzz_run SEED CALLS TIMEOUT: boots switch3+rp1 and runs the ioctl fuzzer for
# CALLS calls from SEED.
fuzz_run() {
	say "booting switch3+rp1 and fuzzing: seed $1, $2 calls"
	guest_suite fuzz fuzz.sh "$3" "$1" "$2"
}

# races_run SEED TIMEOUT: boots switch3+rp1 and runs the races on purpose
# (conflux-uapi-test --races) with timings drawn from SEED.
races_run() {
	say "booting switch3+rp1 and racing on purpose: seed $1"
	guest_suite races races.sh "$2" "$1"
}
