#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make kunit: build the UML kernel from kunit/*.kunitconfig and run every suite
# through the tree's kunit.py. Prints each suite's result, then one line
# "N passed, N failed". A checker report in the kernel log, or a compiler
# warning in Conflux's own files, fails the run.
STEP=kunit
. "$(dirname "$0")/common.sh"

# CONFLUX_TREE builds a tree that already carries the work (the git am tree
# of `make patches-check BUILD=1`) as it is, without the overlay step.
if [ -n "${CONFLUX_TREE:-}" ]; then
	TREE=$CONFLUX_TREE
else
	"$TOP/mk/overlay.sh"
	TREE=$(build_tree)
fi
OUT=${KUNIT_BUILD:-$CACHE/build/kunit${KSRC:+-$(basename "$TREE")}}
mkdir -p "$OUT"
KUNIT=("$TREE/tools/testing/kunit/kunit.py")
ARGS=(--arch=um --build_dir="$OUT")
for f in "$TOP"/kunit/*.kunitconfig; do ARGS+=(--kunitconfig="$f"); done
MAKE_OPTS=(CLIPPY=1)

cd "$TREE"
say "configuring $OUT"
python3 "${KUNIT[@]}" config "${ARGS[@]}" "${MAKE_OPTS[@]/#/--make_options=}" >"$OUT/config.log" 2>&1 ||
	{ cat "$OUT/config.log" >&2; die "kunit.py config failed"; }

say "building the UML kernel (about 6 minutes from scratch, seconds when little changed)"
run_logged "$OUT/build.log" "UML build" \
	make -C "$TREE" ARCH=um O="$OUT" -j"$(nproc)" "${MAKE_OPTS[@]}"

say "running the suites"
rm -f "$OUT/results.json"
set +e
python3 "${KUNIT[@]}" exec "${ARGS[@]}" --timeout=900 --json="$OUT/results.json" \
	${KUNIT_FILTER:+"$KUNIT_FILTER"} >"$OUT/exec.log" 2>&1
set -e
python3 "$TOP/mk/kunit_report.py" --json "$OUT/results.json" --log "$OUT/test.log" \
	--exec-log "$OUT/exec.log" --build-log "$OUT/build.log" --top "$TOP" --tree "$(build_tree)"
