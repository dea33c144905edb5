#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make rig-kunit: the KUnit suite that needs real PCI devices (the P2PDMA
# abstractions and the dma-buf mapping of BAR memory) runs in the rig's
# x86_64 guest, on both topologies: it lives in the test module
# conflux_p2pdma_test.ko (tools/testing/conflux/guest/kmod), which the guest
# loads with KUnit enabled. Its KTAP output is parsed with the tree's kunit.py
# and reported like the UML suites; the route between root ports must be the
# topology's, and the benchmark against dma_buf_phys_vec_to_sgt() is printed.
STEP=rig-kunit
. "$(dirname "$0")/common.sh"
. "$TOP/mk/tally.sh"
. "$TOP/mk/rig-lib.sh"

rig_prepare
TREE=$(build_tree)
MODULE=conflux_p2pdma_test
SUITE=rust_pci_p2pdma
OUT=$GUEST/kunit
mkdir -p "$OUT"

for topo in switch3+rp1 switch3+rp1-zen; do
	case $topo in
	*-zen) route=host-bridge ;;
	*) route=not-supported ;;
	esac
	log=$OUT/$topo.log
	say "booting $topo with kunit.enable=1 kunit.autorun=1 kunit.filter_glob=$SUITE (1 GiB BARs) and loading $MODULE"
	start=$SECONDS
	set +e
	vm --topology "$topo" --bar-size 1G --timeout 900 --verbose \
		--append "kunit.enable=1 kunit.autorun=1 kunit.filter_glob=$SUITE" -- modprobe "$MODULE" >"$log" 2>&1
	rc=$?
	set -e
	say "$topo: booted and ran the suite in $((SECONDS - start)) s (launcher exit $rc)"
	[ "$rc" -eq 0 ] || { fail "$topo: launcher exit status $rc"; tail -n 30 "$log" | sed 's/^/    /'; }
	check_clean "the KUnit boot on $topo"

	rm -f "$OUT/$topo.json"
	# The boot's executor prints an empty KTAP run of its own (no built-in suite
	# matches); the module's run is the last one.
	awk '/^KTAP version/ { n = NR } { line[NR] = $0 } END { for (i = n; i <= NR; i++) print line[i] }' \
		"$log" >"$OUT/$topo.ktap"
	python3 "$TREE/tools/testing/kunit/kunit.py" parse --json="$OUT/$topo.json" "$OUT/$topo.ktap" \
		>"$OUT/$topo.parse.log" 2>&1 || true
	set +e
	report=$(python3 "$TOP/mk/kunit_report.py" --json "$OUT/$topo.json" --log "$log" \
		--exec-log "$OUT/$topo.parse.log" --top "$TOP" --label "rig-kunit $topo")
	set -e
	sed '$d' <<<"$report"
	grep -q "$SUITE: [0-9]* passed" <<<"$report" || fail "$topo: the $SUITE suite did not run"
	tally_add_line "$(tail -n 1 <<<"$report")" || fail "rig-kunit $topo: no results from kunit_report.py"

	got=$(sed -nE 's/.*rust_pci_p2pdma: route 0000:03:00.0 -> 0000:06:00.0: ([a-z-]+).*/\1/p' "$log" | head -n 1)
	if [ "$got" = "$route" ]; then
		pass "$topo: 0000:03:00.0 reaches 0000:06:00.0 by the kernel's $got route"
	else
		fail "$topo: route from 0000:03:00.0 to 0000:06:00.0 is '${got:-not printed}', expected $route"
	fi
	bench=$(grep -oE "rust_pci_p2pdma: bench .*" "$log" | head -n 1 || true)
	if [ -n "$bench" ]; then say "$topo: ${bench#rust_pci_p2pdma: }"; fi
done

tally_summary
