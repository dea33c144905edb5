#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Runs in the rig's guest: loads conflux.ko and checks that each of the
# topology's Conflux devices is bound and has an accel node that opens, then
# unbinds a device while a file is open, and unloads and reloads the module.
# Prints one "PASS ..." or "FAIL ..." line per check.
#
# Usage: driver-test.sh DEVICES
want=$1
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; }
expect() { # expect WHAT GOT WANT
	if [ "$2" = "$3" ]; then ok "$1: $2"; else bad "$1: $2, expected $3"; fi
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
expect "devices bound to conflux" "$(bound)" "$want"
expect "accel nodes" "$(nodes)" "$want"
expect "accel nodes that open" "$(opens)" "$want"
expect "probe log lines" "$(dmesg | grep -c 'conflux 0000:.*: Conflux 1\.0, ')" "$want"

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

# Reports of lockdep, DMA-API debugging (a WARN), debug-objects, or any WARN
# or BUG: the same patterns as the KUnit steps.
checker='WARNING:|BUG:|kernel BUG at|Kernel panic|Oops'
checker="$checker|INFO: (possible|inconsistent|trying to register|lockdep)"
checker="$checker|DEBUG_LOCKS_WARN_ON|possible (circular|recursive) locking|KASAN|UBSAN|ODEBUG:"
checker="$checker|list_(add|del) corruption|refcount_t:|general protection fault|Unable to handle"
dmesg | grep -E "$checker" | sed 's/^/    report: /'
expect "kernel log reports (lockdep, DMA-API, WARN, BUG)" "$(dmesg | grep -cE "$checker")" 0
