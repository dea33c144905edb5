#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make check: every test the project has. Runs `make setup` first (it only
# checks when everything is present), then each test step; ends with the sum
# of their "N passed, N failed" lines.
STEP=check
. "$(dirname "$0")/common.sh"
. "$TOP/mk/tally.sh"

start=$SECONDS
"$TOP/mk/setup.sh"
broken=()
fails=()
# Each step is a make target, run through its script mk/<target>.sh.
for step in style emu kunit guest rig-kunit rig-smoke; do
	log=$(mktemp)
	set +e
	"$TOP/mk/$step.sh" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	set -e
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1 || true)
	mapfile -t -O "${#fails[@]}" fails < <(grep -E '^\[[^]]*\] FAIL ' "$log" || true)
	rm -f "$log"
	before=$failed
	if ! tally_add_line "$line"; then
		# The step stopped before it could run its tests (a build error, say).
		broken+=("$step")
		tally_add 0 1
		continue
	fi
	# A step that failed without a failed test did not finish.
	[ "$rc" -eq 0 ] || [ "$failed" -gt "$before" ] || { broken+=("$step"); tally_add 0 1; }
done
# The failures again, where the end of a long log shows them.
for f in "${fails[@]}"; do say "failed: $f"; done
say "done in $((SECONDS - start)) s${broken[*]:+; steps that did not finish: ${broken[*]}}"
tally_summary
