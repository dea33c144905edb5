#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make bench: every headline figure beside its reference, measured in one run
# on one boot of the rig (switch3+rp1, 1 GiB BARs): the DMA-only table of the
# framework against dma_buf_phys_vec_to_sgt(), 64 MiB copies (peer to peer,
# staged through system memory, local) beside the host's memcpy, binds of
# 1 GiB with 2 MiB and 4 KiB pages, VM_BIND calls per second and small jobs
# beside a no-op ioctl, the
# submit-to-signal latency, and every device copying 256 MiB at once beside
# one alone and beside the host's memcpy in shared memory by one thread and
# by as many threads as devices at once. Each figure is the median of BENCH_RUNS runs (default 5) with its
# range. Prints the table and writes it as JSON and as a PNG chart.
STEP=bench
. "$(dirname "$0")/common.sh"
. "$TOP/mk/tally.sh"
. "$TOP/mk/rig-lib.sh"

"$TOP/mk/setup.sh"
rig_prepare
RUNS=${BENCH_RUNS:-5}
OUT=${BENCH_OUT:-$CACHE/bench}
TOPOLOGY=switch3+rp1
mkdir -p "$OUT"

say "host memcpy of 64 MiB, $RUNS runs"
memcpy=()
for _ in $(seq "$RUNS"); do
	line=$("$BIN/conflux-emu" memcpy-bench --size 64M) || die "conflux-emu memcpy-bench failed"
	memcpy+=("$(sed -nE 's/.*: ([0-9]+) MB\/s$/\1/p' <<<"$line")")
done
say "host memcpy: ${memcpy[*]} MB/s"

# The references of the row of every device copying at once: the host's own
# memcpy of the same size within shared memory files, as the model copies
# within VRAM, by one thread, and by one thread per device at once.
DEVICES=4
say "host memcpy of 256 MiB in shared memory, one thread and $DEVICES threads at once, $RUNS runs"
one=() all=()
for _ in $(seq "$RUNS"); do
	for t in 1 "$DEVICES"; do
		line=$("$BIN/conflux-emu" memcpy-bench --size 256M --threads "$t" --in shared) ||
			die "conflux-emu memcpy-bench --threads $t failed"
		rate=$(sed -nE 's/.*: ([0-9]+) MB\/s$/\1/p' <<<"$line")
		if [ "$t" = 1 ]; then one+=("$rate"); else all+=("$rate"); fi
	done
done
say "host memcpy of 256 MiB in shared memory: one thread ${one[*]} MB/s; $DEVICES at once ${all[*]} MB/s"

log=$OUT/guest.log
say "booting $TOPOLOGY with 1 GiB BARs (TCG) and running the bench suite, $RUNS runs of each figure"
start=$SECONDS
set +e
# With KASAN, each 1 GiB BAR the driver maps takes 128 MiB of shadow: 2 GiB of RAM.
vm --topology "$TOPOLOGY" --bar-size 1G --mem 2G --timeout 1800 \
	--append "kunit.enable=1 kunit.autorun=1 kunit.filter_glob=rust_pci_p2pdma" \
	--add "$TOP/tools/testing/conflux/guest/tests/bench.sh" --add "$GBIN/conflux" -- \
	sh /usr/bin/bench.sh "$RUNS" 2>&1 | tee "$log" |
	grep -E '^(bench-suite|rust_pci_p2pdma: bench|conflux-vm: exit)' | sed 's/^/    /'
rc=${PIPESTATUS[0]}
set -e
say "the guest ran the suite in $((SECONDS - start)) s (launcher exit $rc)"
check_clean "the bench boot" >/dev/null || true
[ "$rc" -eq 0 ] || { tail -n 40 "$log" >&2; die "the bench failed in the guest (exit $rc); log: $log"; }

csv() { local IFS=,; echo "$*"; }
python3 "$TOP/mk/bench_report.py" --log "$log" --memcpy "$(csv "${memcpy[@]}")" \
	--memcpy-one "$(csv "${one[@]}")" --memcpy-all "$(csv "${all[@]}")" \
	--topology "$TOPOLOGY" --out "$OUT/bench.json"
say "the figures (median of $RUNS runs; min and max of the runs):"
"$GBIN/conflux" --png "$OUT/bench.png" render-bench "$OUT/bench.json" | sed 's/^/    /'
say "JSON: $OUT/bench.json; chart: $OUT/bench.png"
