#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make check: every test the project has. Runs `make setup` first (it only
# checks when everything is present), then each test step; ends with the sum
# of their "N passed, N failed" lines.
STEP=check
. "$(dirname "$0")/common.sh"

start=$SECONDS
"$TOP/mk/setup.sh"
total_p=0 total_f=0 total_s=0 broken=()
for step in style emu kunit guest rigkunit rig; do
	log=$(mktemp)
	set +e
	"$TOP/mk/$step.sh" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	set -e
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
	rm -f "$log"
	if [ -z "$line" ]; then
		# The step stopped before it could run its tests (a build error, say).
		broken+=("$step")
		total_f=$((total_f + 1))
		continue
	fi
	p=${line%% passed*}
	f=${line#*passed, }
	f=${f%% failed*}
	total_p=$((total_p + p))
	total_f=$((total_f + f))
	if [[ $line =~ ([0-9]+)\ skipped ]]; then
		total_s=$((total_s + BASH_REMATCH[1]))
	fi
	[ "$rc" -eq 0 ] || [ "$f" -gt 0 ] || { broken+=("$step"); total_f=$((total_f + 1)); }
done
say "done in $((SECONDS - start)) s${broken[*]:+; steps that did not finish: ${broken[*]}}"
summary="$total_p passed, $total_f failed"
[ "$total_s" -eq 0 ] || summary+=", $total_s skipped"
echo "$summary"
[ "$total_f" -eq 0 ]
