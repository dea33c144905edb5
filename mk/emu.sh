#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make emu: cargo test, clippy -D warnings and cargo fmt --check on every
# crate of the tools/testing/conflux workspace, on the host: the host tools
# (conflux-emu, conflux-vm), the guest programs (conflux, conflux-raw,
# conflux-uapi-test; their checks of the devices run in the rig, see
# rig-smoke.sh) and conflux-device, which both sides use. Ends with
# "N passed, N failed".
STEP=emu
. "$(dirname "$0")/common.sh"
. "$TOP/mk/tally.sh"

uapi_headers
cd "$TOP/tools/testing/conflux"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/build/cargo}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

say "cargo test of every crate (host, guest and shared)"
if cargo test --locked --quiet >"$log" 2>&1; then rc=0; else rc=$?; fi
while read -r p f; do
	tally_add "$p" "$f"
done < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$log")
grep -E '^(test .* FAILED|failures:|---- )' "$log" | head -n 40 || true
if [ "$rc" -ne 0 ] && ! grep -q '^test result: FAILED' "$log"; then
	tail -n 40 "$log"
	fail "cargo test did not run (exit $rc)"
fi
say "cargo test: $passed passed, $failed failed"

# One counted check: a command that must succeed quietly.
check() {
	local what=$1
	shift
	if "$@" >"$log" 2>&1; then
		pass "$what"
	else
		head -n 40 "$log"
		fail "$what"
	fi
}
check "cargo clippy --all-targets -D warnings" cargo clippy --locked --quiet --all-targets -- -D warnings
check "cargo fmt --check" cargo fmt --check
tally_summary
