#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make check: every test the project has. Runs `make setup` first (it only
# checks when everything is present), then the KUnit suites in UML.
STEP=check
. "$(dirname "$0")/common.sh"

start=$SECONDS
"$TOP/mk/setup.sh"
"$TOP/mk/kunit.sh"
say "done in $((SECONDS - start)) s"
