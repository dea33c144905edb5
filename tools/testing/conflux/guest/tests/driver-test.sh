#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Runs in the rig's guest: loads conflux.ko and checks that each of the
# topology's Conflux devices is bound and has an accel node that opens, then
# unbinds a device while a file is open, and unloads and reloads the module.
# Prints one "PASS ..." or "FAIL ..." line per check.
#
# Usage: driver-test.sh DEVICES PLAIN [MEMCPY [TOPOLOGY]]: the topology's
# Conflux devices, how many plain ivshmem functions (same PCI ID, no
# signature) it also has, the host's memcpy bandwidth in MB/s, for conflux
# bench, and the topology's name, for the paths of the cross-device copies.
want=$1
plain=$2
memcpy=$3
topology=$4
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; }
expect() { # expect WHAT GOT WANT
	if [ "$2" = "$3" ]; then ok "$1: $2"; else bad "$1: $2, expected $3"; fi
}
logged() { # logged WHAT EXTENDED-REGEX: some kernel log line matches
	n=$(dmesg | grep -cE "$2")
	if [ "$n" -ge 1 ]; then ok "$1 ($n)"; else bad "$1: no kernel log line matches '$2'"; fi
}
nodes() { ls /dev/accel 2>/dev/null | grep -c '^accel[0-9][0-9]*$'; }
bound() { ls -d /sys/bus/pci/drivers/conflux/0000:* 2>/dev/null | wc -l; }
opens() { # opens: how many accel nodes open and close
	n=0
	for f in /dev/accel/accel*; do
		[ -e "$f" ] || continue
		if (exec 3<"$f") 2>/dev/null; then n=$((n + 1)); fi
	done
	echo "$n"
}

if modprobe conflux; then ok "modprobe conflux"; else bad "modprobe conflux"; fi
# The static dma-buf importer conflux-uapi-test drives through debugfs.
grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs none /sys/kernel/debug
if modprobe conflux_static_import; then
	ok "modprobe conflux_static_import"
else
	bad "modprobe conflux_static_import"
fi
expect "devices bound to conflux" "$(bound)" "$want"
expect "accel nodes" "$(nodes)" "$want"
expect "accel nodes that open" "$(opens)" "$want"
expect "probe log lines" "$(dmesg | grep -c 'conflux 0000:.*: Conflux 1\.3, ')" "$want"
funcs=0
for d in /sys/bus/pci/devices/*; do
	[ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x1af4:0x1110 ] && funcs=$((funcs + 1))
done
expect "ivshmem functions (1af4:1110)" "$funcs" $((want + plain))
declined=$(dmesg | grep -c 'not "CNFXACCL": a plain ivshmem device, not binding')
expect "plain ivshmem functions declined, with a log line" "$declined" "$plain"
vectors=$(grep -c 'conflux-completion\|conflux-error' /proc/interrupts)
expect "MSI-X vectors requested" "$vectors" $((want * 2))

# The uAPI and the command-line tool.
if [ -x /usr/bin/conflux-uapi-test ]; then
	conflux-uapi-test | grep -E '^(PASS|FAIL) '
else
	bad "conflux-uapi-test is not in the guest"
fi
if ! [ -x /usr/bin/conflux ]; then
	bad "conflux is not in the guest"
else
	out=$(conflux info 2>&1)
	n=$(echo "$out" | grep -c ': Conflux 1\.3, capabilities 0xff')
	expect "conflux info: devices described" "$n" "$want"
	out=$(conflux --json info 2>&1)
	n=$(echo "$out" | grep -o '"vram_size":132120576' | wc -l)
	expect "conflux --json info: one object per device" "$n" "$want"
	out=$(conflux --device /dev/accel/accel0 alloc 64M 2>&1)
	took='took 67108864 bytes of VRAM, zeroed by the engine (67108864 bytes);'
	freed='after close 67108864 of 67108864 bytes available again'
	case $out in
	*"$took"*"$freed"*) ok "conflux alloc 64M: $out" ;;
	*) bad "conflux alloc 64M: $out" ;;
	esac
	out=$(conflux --device /dev/accel/accel0 alloc 0 2>&1)
	rc=$?
	call="DRM_IOCTL_CONFLUX_BO_CREATE (size 0x0, flags 0x1)"
	case "$rc $out" in
	"1 conflux: /dev/accel/accel0: $call: "*"(EINVAL)")
		ok "conflux alloc 0 names the device, the call and the error: $out" ;;
	*) bad "conflux alloc 0: exit $rc: $out" ;;
	esac
	# The bench's long-running mode: copies through a user queue beside SUBMIT,
	# both on one long-running VM (no figure is checked, only that both ran).
	out=$(conflux --device /dev/accel/accel0 bench --long-running 1M 16 2>&1)
	case $out in
	*"long-running VM: user queue "*" MB/s ("*" jobs/s), SUBMIT "*" jobs/s)")
		ok "conflux bench --long-running: $out" ;;
	*) bad "conflux bench --long-running: $out" ;;
	esac
	out=$(conflux --device /dev/accel/accel99 info 2>&1)
	rc=$?
	case "$rc $out" in
	"1 conflux: /dev/accel/accel99: open: "*) ok "conflux on a missing node: $out" ;;
	*) bad "conflux on a missing node: exit $rc: $out" ;;
	esac
	# Copies and fills from 1 byte to 64 MiB at unaligned offsets; each
	# checks every byte of its buffers. (Two buffers of 64 MiB do not fit
	# in one device's 126 MiB of VRAM: the largest copy is 60 MiB.)
	for spec in "1 0 0" "7 3 5" "4097 1 4095" "1048581 13 7" "62914560 4093 3"; do
		out=$(conflux --device /dev/accel/accel0 copy $spec 2>&1)
		case $out in
		*": copied "*" verified; "*) ok "conflux copy $spec: $out" ;;
		*) bad "conflux copy $spec: $out" ;;
		esac
	done
	for spec in "1 0" "9 3 0xa1b2c3d4e5f60718" "65537 4093" "67108864 0 0xff"; do
		out=$(conflux --device /dev/accel/accel0 fill $spec 2>&1)
		case $out in
		*": filled "*" verified; "*) ok "conflux fill $spec: $out" ;;
		*) bad "conflux fill $spec: $out" ;;
		esac
	done
	out=$(conflux --device /dev/accel/accel0 --json copy 5 1 2 2>&1)
	case $out in
	*'"verified":true'*) ok "conflux --json copy: $out" ;;
	*) bad "conflux --json copy: $out" ;;
	esac
	# System memory and mmap(): each direction, checked through the mappings.
	for spec in "--src-in vram --dst-in system copy 5M 4093 3" \
		"--src-in system --dst-in vram copy 3M 1 4095" \
		"--src-in system --dst-in system copy 1M 17 0" \
		"--dst-in system fill 2M 5" "--dst-in vram fill 4097 4095"; do
		# shellcheck disable=SC2086
		out=$(conflux --device /dev/accel/accel0 --mmap $spec 2>&1)
		case $out in
		*"verified through mmap()"*) ok "conflux --mmap $spec: $out" ;;
		*) bad "conflux --mmap $spec: $out" ;;
		esac
	done
	out=$(conflux --device /dev/accel/accel0 ${memcpy:+--host-memcpy "$memcpy"} bench 2>&1)
	case $out in
	*"from vram to vram: "*" MB/s; host memcpy "*" MB/s"*) ok "conflux bench: $out" ;;
	*) bad "conflux bench: $out" ;;
	esac
	out=$(conflux --device /dev/accel/accel0 ${memcpy:+--host-memcpy "$memcpy"} \
		--src-in vram --dst-in system bench 8M 4 2>&1)
	case $out in
	*"from vram to system: "*" MB/s"*) ok "conflux bench to system memory: $out" ;;
	*) bad "conflux bench to system memory: $out" ;;
	esac
	# Across devices: every ordered pair copies VRAM to VRAM, through the
	# path the topology allows, data and byte counters checked by the tool.
	out=$(conflux matrix 16M 2>&1)
	rc=$?
	echo "$out" | sed 's/^/    /'
	expect "conflux matrix: exit status" "$rc" 0
	expect "conflux matrix: copies with data and counters checked" \
		"$(echo "$out" | grep 'data checked' | grep -vc 'DO NOT MATCH')" $((want * want))
	n=$(echo "$out" | grep -c 'B local, .*data checked')
	expect "conflux matrix: local copies" "$n" "$want"
	case $topology in
	switch3+rp1) far="system memory" ;;
	switch3+rp1-zen) far="host bridge" ;;
	*) far="" ;;
	esac
	if [ -n "$far" ] && [ "$want" -eq 4 ]; then
		n=$(echo "$out" | grep 'accel[012] -> accel[012]: ' | grep -c ' p2p, .*checked')
		expect "conflux matrix: peer-to-peer copies behind the switch" "$n" 6
		expect "conflux matrix: $far copies to and from accel3" \
			"$(echo "$out" | grep -E 'accel3 -> accel[012]|accel[012] -> accel3' |
				grep -c "B $far, .*data checked")" 6
	fi
	# The figures are make bench's; here the two transfers must work.
	out=$(conflux p2p-bench 64M 2>&1)
	case $out in
	*" p2p: "*"data checked both ways, counters match")
		ok "64 MiB P2P copy and the same staged through system memory: $out" ;;
	*) bad "64 MiB peer-to-peer against staged copy: $out" ;;
	esac
	conflux frobnicate >/dev/null 2>&1
	expect "conflux with an unknown command: exit status" "$?" 2
	if conflux --help >/tmp/help && grep -q '^usage: conflux' /tmp/help; then
		ok "conflux --help"
	else
		bad "conflux --help"
	fi
fi

# Unbind one device while a file of it is open: the node goes, the file stays
# usable until closed, the other devices stay.
dev=$(ls -d /sys/bus/pci/drivers/conflux/0000:* | head -n 1)
dev=${dev##*/}
exec 3</dev/accel/accel0
if echo "$dev" >/sys/bus/pci/drivers/conflux/unbind; then
	ok "unbind $dev with a file open"
else
	bad "unbind $dev with a file open"
fi
expect "accel nodes after the unbind" "$(nodes)" "$((want - 1))"
exec 3<&-
if echo "$dev" >/sys/bus/pci/drivers/conflux/bind; then
	ok "bind $dev again"
else
	bad "bind $dev again"
fi
expect "accel nodes after binding again" "$(nodes)" "$want"

# The module cannot go while a file is open, and goes once it is closed.
exec 3</dev/accel/accel0
if rmmod conflux 2>/dev/null; then
	bad "rmmod with a file open succeeded"
else
	ok "rmmod refused with a file open"
fi
exec 3<&-
if rmmod conflux; then ok "rmmod conflux"; else bad "rmmod conflux"; fi
expect "accel nodes after rmmod" "$(nodes)" 0
if modprobe conflux; then ok "modprobe conflux again"; else bad "modprobe conflux again"; fi
expect "accel nodes after reloading" "$(nodes)" "$want"
if rmmod conflux; then ok "rmmod conflux again"; else bad "rmmod conflux again"; fi

# Job timeouts: with a limit of 500 ms, a job of 256 GiB of copies fails
# with ETIMEDOUT, the engine is reset and runs the next job. Then the device
# model's fault switches, the last of which wedges the first device: unload
# and reload must still work.
if modprobe conflux job_timeout_ms=500; then
	ok "modprobe conflux job_timeout_ms=500"
	conflux-uapi-test --timeout | grep -E '^(PASS|FAIL) '
	logged "timeout logged and the engine reset" \
		'engine: job [0-9]+ did not complete in 500 ms; resetting'
	# A bogus FENCE_SEQNO is 2^40 beyond the real one, a torn one 2^32; the
	# device's seqno goes on across module loads, so the patterns allow a
	# real one of up to eight digits (2^40 + s: 1099 and nine digits; 2^32 +
	# s: 42 or 43 and eight digits).
	logged "a bogus FENCE_SEQNO logged and ignored" \
		'engine: FENCE_SEQNO 1099[0-9]{9} is not a job in flight'
	logged "torn FENCE_SEQNO values logged and ignored" \
		'engine: FENCE_SEQNO 4[23][0-9]{8} is not a job in flight'
	n=$(dmesg | grep -c 'engine: reset not confirmed: the device is wedged')
	expect "wedged device logged" "$n" 1
	if rmmod conflux; then
		ok "rmmod conflux after the timeout"
	else
		bad "rmmod conflux after the timeout"
	fi
else
	bad "modprobe conflux job_timeout_ms=500"
fi

# Importer segment limits: loaded with max_segment=65536 the devices take DMA
# segments of at most 64 KiB; with seg_boundary=0x7fff none that crosses a
# 32 KiB boundary, whatever its size. Exporters split their tables for that,
# and the importer checks every segment it maps (a bad one fails the copy
# with EIO). A boundary mask that is not 2^n - 1 fails the probe.
segment_limits() { # segment_limits WHAT PARAMETER
	if modprobe conflux "$2"; then
		ok "modprobe conflux $2"
		out=$(conflux matrix 4M 2>&1)
		rc=$?
		checked=$(echo "$out" | grep 'data checked' | grep -vc 'DO NOT MATCH')
		refused=$(dmesg | grep 'PRIME import: exporter .* mapped segment' |
			grep -vc 'exporter system ')
		expect "conflux matrix with $1: exit status" "$rc" 0
		expect "conflux matrix with $1: copies checked" "$checked" $((want * want))
		expect "segments of Conflux exporters refused" "$refused" 0
		# The system heap maps in chunks of up to 1 MiB whatever the
		# importer's limits: a 64 KiB limit refuses them. DMA-API
		# debugging reports the heap's mapping as the heap's bug; its
		# driver filter keeps that report for another driver meanwhile.
		if [ "$2" = max_segment=65536 ]; then
			filter=/sys/kernel/debug/dma-api/driver_filter
			echo conflux-no-such-driver >"$filter"
			conflux-uapi-test --heap-limits | grep -E '^(PASS|FAIL) '
			echo " " >"$filter"
			heap=$(dmesg | grep -c 'PRIME import: exporter system mapped segment')
			expect "heap segments refused, naming the exporter" "$heap" 1
		fi
		if rmmod conflux; then ok "rmmod after $2"; else bad "rmmod after $2"; fi
	else
		bad "modprobe conflux $2"
	fi
}
segment_limits "64 KiB segments" max_segment=65536
segment_limits "32 KiB segment boundaries" seg_boundary=0x7fff
modprobe conflux seg_boundary=0x7ffe 2>/dev/null
expect "devices probed with seg_boundary=0x7ffe" "$(nodes)" 0
expect "probe errors naming seg_boundary 0x7ffe" \
	"$(dmesg | grep -c 'seg_boundary 0x7ffe: not of the form')" "$want"
rmmod conflux 2>/dev/null

# Storage into VRAM: loaded with p2pmem_mib=16, each device publishes 16 MiB
# of VRAM as peer-to-peer memory with struct pages, which O_DIRECT reads and
# writes of the rig's NVMe namespaces reach through the block layer where the
# topology has a route. An odd size fails the probe.
if modprobe conflux p2pmem_mib=16; then
	ok "modprobe conflux p2pmem_mib=16"
	conflux-uapi-test --storage "$topology" | grep -E '^(PASS|FAIL) '
	if rmmod conflux; then
		ok "rmmod after p2pmem_mib=16"
	else
		bad "rmmod after p2pmem_mib=16"
	fi
else
	bad "modprobe conflux p2pmem_mib=16"
fi
modprobe conflux p2pmem_mib=3 2>/dev/null
expect "devices probed with p2pmem_mib=3" "$(nodes)" 0
expect "probe errors naming p2pmem_mib 3" \
	"$(dmesg | grep -c 'p2pmem_mib 3: an even number')" "$want"
rmmod conflux 2>/dev/null

# Reports of lockdep, DMA-API debugging (a WARN), debug-objects, or any WARN
# or BUG: the same patterns as the KUnit steps.
checker='WARNING:|BUG:|kernel BUG at|Kernel panic|Oops'
checker="$checker|INFO: (possible|inconsistent|trying to register|lockdep)"
checker="$checker|DEBUG_LOCKS_WARN_ON|possible (circular|recursive) locking|KASAN|UBSAN|ODEBUG:"
checker="$checker|list_(add|del) corruption|refcount_t:|general protection fault|Unable to handle"
dmesg | grep -E "$checker" | sed 's/^/    report: /'
expect "kernel log reports (lockdep, DMA-API, WARN, BUG)" "$(dmesg | grep -cE "$checker")" 0
