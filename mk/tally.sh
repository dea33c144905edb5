# SPDX-License-Identifier: GPL-2.0
# Pass/fail counting for the steps that count tests (after common.sh).
# Sourced, never run; it only defines. Each such step ends with
# tally_summary, whose line "N passed, N failed" is what `make check` sums.

passed=0 failed=0 skipped=0

# pass WHAT, fail WHAT: one check, printed as "[step] PASS WHAT" or
# "[step] FAIL WHAT".
pass() { say "PASS $*"; passed=$((passed + 1)); }
fail() { say "FAIL $*"; failed=$((failed + 1)); }

# tally_add PASSED FAILED [SKIPPED]: counts a tool reported itself.
tally_add() {
	passed=$((passed + $1))
	failed=$((failed + $2))
	skipped=$((skipped + ${3:-0}))
}

# tally_add_line LINE: adds a summary line "N passed, N failed" (with an
# optional ", N skipped"); fails, adding nothing, when LINE is not one.
tally_add_line() {
	[[ $1 =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed(,\ ([0-9]+)\ skipped)? ]] || return 1
	tally_add "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[4]:-0}"
}

# tally_summary: prints "N passed, N failed" (and ", N skipped" when some
# were) and succeeds when nothing failed.
tally_summary() {
	local line="$passed passed, $failed failed"
	[ "$skipped" -eq 0 ] || line+=", $skipped skipped"
	echo "$line"
	[ "$failed" -eq 0 ]
}
