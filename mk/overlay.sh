#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Lay the overlay onto the build tree (pristine copy + project files + patches).
STEP=overlay
. "$(dirname "$0")/common.sh"

PRISTINE=$(pristine_tree)
[ -n "$PRISTINE" ] && [ -f "$PRISTINE/Makefile" ] || die "no Linux 7.3 source: run make setup (or set KSRC)"
python3 "$TOP/mk/overlay.py" --top "$TOP" --pristine "$PRISTINE" --tree "$(build_tree)"
