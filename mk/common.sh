# SPDX-License-Identifier: GPL-2.0
# Shared settings for the Conflux build scripts. Sourced, never run.

set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CONFLUX_CACHE:-$HOME/.cache/conflux}

# The Linux 7.3 source the overlay is laid onto.
LINUX_PKG=linux-source-7.3
LINUX_PIN=${CONFLUX_LINUX_PIN:-7.3.4-1~bpo13+1}
LINUX_SUITE=trixie-backports
BINDGEN_VERSION=0.73.2
LLVM_VERSION=19

export LIBCLANG_PATH=/usr/lib/llvm-$LLVM_VERSION/lib
export PATH=$CACHE/tools/bin:$HOME/.cargo/bin:$PATH

# The pristine tree: the user's own (KSRC) or the one `make setup` unpacked.
pristine_tree() {
	if [ -n "${KSRC:-}" ]; then
		(cd "$KSRC" && pwd)
	elif [ -f "$CACHE/src/VERSION" ]; then
		echo "$CACHE/src/linux-$(cat "$CACHE/src/VERSION")"
	else
		echo ""
	fi
}

# The overlaid tree the kernels are built from (pristine + overlay + patches).
build_tree() {
	if [ -n "${KSRC:-}" ]; then
		echo "$CACHE/tree-ksrc-$(pristine_tree | sha1sum | cut -c1-8)"
	else
		echo "$CACHE/tree"
	fi
}

say() { printf '[%s] %s\n' "${STEP:-conflux}" "$*"; }
die() { printf '[%s] error: %s\n' "${STEP:-conflux}" "$*" >&2; exit 1; }

# Run a long command with its output in LOG, printing a progress line every
# 30 s so that logs show it is alive. On failure, prints the log's tail.
run_logged() {
	local log=$1 what=$2
	shift 2
	local start=$SECONDS
	"$@" >"$log" 2>&1 &
	local pid=$!
	trap 'kill $pid 2>/dev/null' INT TERM
	while kill -0 $pid 2>/dev/null; do
		local i
		for i in $(seq 30); do
			kill -0 $pid 2>/dev/null || break
			sleep 1
		done
		kill -0 $pid 2>/dev/null || break
		say "$what: $((SECONDS - start)) s, $(grep -cE '^ +[A-Z]' "$log" || true) build steps so far"
	done
	local rc=0
	wait $pid || rc=$?
	trap - INT TERM
	if [ $rc -ne 0 ]; then
		tail -n 60 "$log" >&2
		die "$what failed (exit $rc), full log: $log"
	fi
	say "$what: done in $((SECONDS - start)) s"
}

# Sanitised uAPI headers of the build tree (`make headers`), for the userspace
# built against include/uapi/drm/conflux_accel.h; exports CONFLUX_UAPI_INCLUDE.
uapi_headers() {
	"$TOP/mk/overlay.sh" >/dev/null || die "overlay failed"
	local out=$CACHE/build/uapi
	mkdir -p "$out"
	run_logged "$out/headers.log" "uAPI headers (make headers)" \
		make -s -C "$(build_tree)" ARCH=x86_64 O="$out" headers
	export CONFLUX_UAPI_INCLUDE=$out/usr/include
}
