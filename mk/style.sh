#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Style checks, counted as tests: rustfmt on the kernel Rust files, and
# checkpatch.pl --strict on the upstreamable series (which carries every C
# change and every new file). Clippy runs in the kernel builds (CLIPPY=1).
STEP=style
. "$(dirname "$0")/common.sh"
. "$TOP/mk/tally.sh"

"$TOP/mk/overlay.sh" >/dev/null
TREE=$(build_tree)

mapfile -t rs < <(cd "$TOP" && find rust drivers tools/testing/conflux/guest/kmod -name '*.rs' | sort)
if out=$(cd "$TOP" && rustfmt --check --edition 2021 --config-path "$TREE/.rustfmt.toml" "${rs[@]}" 2>&1); then
	pass "rustfmt: ${#rs[@]} kernel Rust files formatted"
else
	fail "rustfmt:"
	echo "$out" | head -n 40
fi

"$TOP/mk/patches.sh" >/dev/null
for p in "${PATCHES_OUT:-$CACHE/outgoing}"/*.patch; do
	out=$(cd "$TREE" && perl scripts/checkpatch.pl --strict --no-color "$p" 2>&1) || true
	if grep -q '^total: 0 errors, 0 warnings, 0 checks' <<<"$out"; then
		pass "checkpatch --strict: $(basename "$p")"
	else
		fail "checkpatch --strict: $(basename "$p")"
		grep -E '^(ERROR|WARNING|CHECK|#|\+)' <<<"$out" | head -n 40
	fi
done
tally_summary
