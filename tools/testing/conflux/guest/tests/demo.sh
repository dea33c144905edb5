#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Runs in the rig's guest for `make demo`: loads conflux.ko, describes the
# devices, copies between every pair of them, compares a peer-to-peer copy
# with the same transfer staged through system memory, and prints the
# matrix of a second run as JSON on a line of its own ("MATRIX-JSON ..."),
# which mk/demo.sh draws as a PNG.
modprobe conflux || exit 1
echo "== conflux info"
conflux info
echo "== copies between every pair of devices (16 MiB each)"
conflux matrix 16M || exit 1
echo "== peer to peer against staged through system memory"
conflux p2p-bench 64M || exit 1
echo "MATRIX-JSON $(conflux --json matrix 16M)"
