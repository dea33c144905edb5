#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make guest: the x86_64 guest kernel (bzImage) and its modules, conflux.ko
# among them, for the QEMU rig. Config: allnoconfig + the rig's fragment.
STEP=guest
. "$(dirname "$0")/common.sh"
. "$TOP/mk/tally.sh"

"$TOP/mk/overlay.sh"
TREE=$(build_tree)
OUT=${GUEST_BUILD:-$CACHE/build/guest${KSRC:+-$(basename "$TREE")}}
FRAG=$TOP/tools/testing/conflux/guest/kernel.config
mkdir -p "$OUT"

# Clang and LLVM's tools: KASAN with Rust needs a Clang build.
LLVM_ARGS=(LLVM=-"$LLVM_VERSION")

# Generate the config beside the build, and install it only when it differs,
# so that an unchanged fragment leaves the build untouched.
say "configuring $OUT"
CFG=$OUT/.config-gen
run_logged "$OUT/config.log" "allnoconfig + $(basename "$FRAG")" \
	make -C "$TREE" ARCH=x86_64 "${LLVM_ARGS[@]}" O="$CFG" KCONFIG_ALLCONFIG="$FRAG" allnoconfig
missing=$(grep -E '^(CONFIG_|# CONFIG_[A-Z0-9_]+ is not set$)' "$FRAG" | while read -r line; do
	grep -qxF "$line" "$CFG/.config" || echo "$line"
done)
[ -z "$missing" ] || die "options of $FRAG not in the generated config (unmet dependencies?): $missing"
cmp -s "$CFG/.config" "$OUT/.config" || cp "$CFG/.config" "$OUT/.config"

say "building bzImage and modules (Clang, KASAN: about NN minutes from scratch)"
run_logged "$OUT/build.log" "guest build" \
	make -C "$TREE" ARCH=x86_64 "${LLVM_ARGS[@]}" O="$OUT" -j"$(nproc)" CLIPPY=1 bzImage modules
rm -rf "$OUT/modroot"
run_logged "$OUT/modules_install.log" "modules_install" \
	make -C "$TREE" ARCH=x86_64 "${LLVM_ARGS[@]}" O="$OUT" INSTALL_MOD_PATH="$OUT/modroot" modules_install
# The guest tests' own modules, built against this kernel into the same root.
KMOD=$TOP/tools/testing/conflux/guest/kmod
run_logged "$OUT/kmod.log" "test modules" \
	make -C "$TREE" ARCH=x86_64 "${LLVM_ARGS[@]}" O="$OUT" M="$KMOD" MO="$OUT/kmod" CLIPPY=1 \
	INSTALL_MOD_PATH="$OUT/modroot" modules modules_install
say "kernel: $OUT/arch/x86/boot/bzImage"
ko=$(find "$OUT/modroot" -name 'conflux.ko*' | head -n 1)
if [ -n "$ko" ] && modinfo "$ko" | grep -qx 'alias:.*pci:v00001AF4d00001110.*'; then
	pass "module: ${ko#"$OUT/modroot/"} built, matches PCI 1af4:1110"
else
	fail "module: conflux.ko missing from $OUT/modroot or without its PCI alias"
fi
# build_warnings.py prints its own PASS or FAIL line.
if python3 "$TOP/mk/build_warnings.py" "$OUT/build.log" "$TREE" guest | grep -v passed,; then
	tally_add 1 0
else
	tally_add 0 1
fi
warned=$(grep -E '(^|: )(warning|error)(\[[^]]*\])?:' "$OUT/kmod.log" || true)
for mod in conflux_static_import conflux_p2pdma_test; do
	ko=$(find "$OUT/modroot" -name "$mod.ko*" | head -n 1)
	if [ -n "$ko" ] && [ -z "$warned" ]; then
		pass "module: ${ko#"$OUT/modroot/"} built without a warning"
	else
		fail "module: $mod.ko missing from $OUT/modroot, or warnings in $OUT/kmod.log"
	fi
done
[ -z "$warned" ] || echo "$warned" | head -n 20
tally_summary
