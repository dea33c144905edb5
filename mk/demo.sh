#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make demo: boot the switch3+rp1 rig (three devices behind one PCIe switch,
# a fourth on its own root port), load conflux.ko and copy from every
# device's VRAM to every device's VRAM: peer to peer behind the switch,
# staged through system memory to and from the fourth device. Prints each
# copy with its path, bandwidth and byte counters, the matrix, a 64 MiB
# peer-to-peer copy against the same transfer staged through system memory,
# and the device model's own counters; draws the matrix as a PNG heatmap.
STEP=demo
. "$(dirname "$0")/common.sh"

"$TOP/mk/setup.sh"
. "$TOP/mk/tally.sh"
. "$TOP/mk/rig-lib.sh"
rig_prepare

OUT=${DEMO_OUT:-$CACHE/demo}
mkdir -p "$OUT"
log=$OUT/demo.log
say "booting switch3+rp1 (TCG, about a minute) and running the copies"
set +e
vm --topology switch3+rp1 --add "$GUEST_TESTS/demo.sh" --add "$GBIN/conflux" --timeout 900 -- \
	sh /usr/bin/demo.sh 2>&1 | tee "$log" | grep -v '^MATRIX-JSON ' |
	grep -vE '^\[ *[0-9]+\.[0-9]+\]|^(ACPI|reboot):' | sed 's/^/    /'
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || die "the demo failed in the guest (exit $rc); log: $log"
sed -n 's/^MATRIX-JSON //p' "$log" >"$OUT/matrix.json"
[ -s "$OUT/matrix.json" ] || die "the guest printed no matrix; log: $log"
say "the matrix of a second run, drawn"
"$GBIN/conflux" --png "$OUT/matrix.png" render-matrix "$OUT/matrix.json" | sed 's/^/    /'
say "heatmap: $OUT/matrix.png (open it with any image viewer)"
