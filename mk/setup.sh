#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make setup: install what a fresh Debian 12 machine lacks and fetch the Linux
# 7.3 source into the cache. Idempotent: a second run only checks.
STEP=setup
. "$(dirname "$0")/common.sh"

DEBS=(build-essential flex bison bc cpio kmod libelf-dev libssl-dev python3
      git xz-utils ca-certificates debian-archive-keyring
      "libclang-$LLVM_VERSION-dev" "clang-$LLVM_VERSION" "lld-$LLVM_VERSION" "llvm-$LLVM_VERSION"
      qemu-system-x86 busybox-static)

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

install_debs() {
	local missing=() p
	for p in "${DEBS[@]}"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' ||
			missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		say "Debian packages: all present"
		return
	fi
	say "Debian packages: installing ${missing[*]}"
	as_root apt-get update -q >/dev/null
	as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

install_rust() {
	command -v rustup >/dev/null || die "rustup not found: install Rust with rustup first"
	if [ -d "$(rustc --print sysroot)/lib/rustlib/src/rust/library" ]; then
		say "rust-src: present"
	else
		say "rust-src: installing"
		rustup component add rust-src
	fi
	if rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
		say "Rust target x86_64-unknown-linux-musl (static guest programs): present"
	else
		say "Rust target x86_64-unknown-linux-musl (static guest programs): installing"
		rustup target add x86_64-unknown-linux-musl
	fi
	if [ "$(bindgen --version 2>/dev/null)" = "bindgen $BINDGEN_VERSION" ]; then
		say "bindgen-cli $BINDGEN_VERSION: present"
	else
		say "bindgen-cli $BINDGEN_VERSION: building into $CACHE/tools (about 3 minutes)"
		mkdir -p "$CACHE/tools"
		run_logged "$CACHE/tools/bindgen-install.log" "cargo install bindgen-cli" \
			cargo install --locked --root "$CACHE/tools" "bindgen-cli@$BINDGEN_VERSION"
	fi
}

# A private apt configuration that sees only trixie-backports. The system's
# /etc/apt is never touched.
APT_DIR=$CACHE/apt
apt_private() {
	local cmd=$1
	shift
	"$cmd" -q -o Dir::Etc::SourceList="$APT_DIR/sources.list" \
		-o Dir::Etc::SourceParts=/dev/null \
		-o Dir::State::Lists="$APT_DIR/lists" \
		-o Dir::Cache="$APT_DIR/cache" \
		-o Dir::Cache::archives="$APT_DIR/archives" \
		-o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root "$@"
}

fetch_linux() {
	if [ -n "${KSRC:-}" ]; then
		[ -f "$KSRC/Makefile" ] || die "KSRC=$KSRC is not a kernel tree"
		local v
		v=$(make -s -C "$KSRC" kernelversion 2>/dev/null)
		case $v in
		7.3|7.3.*) say "using KSRC=$KSRC (Linux $v)" ;;
		*) die "KSRC=$KSRC is Linux $v, Conflux needs 7.3" ;;
		esac
		return
	fi
	if [ -f "$CACHE/src/VERSION" ] && [ -f "$(pristine_tree)/Makefile" ]; then
		say "Linux source: $(pristine_tree) present"
		return
	fi
	mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" \
		"$APT_DIR/archives/partial" "$CACHE/src"
	cat >"$APT_DIR/sources.list" <<-SRC
	deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $LINUX_SUITE main
	SRC
	say "Linux source: updating the private package list ($LINUX_SUITE)"
	apt_private apt-get update >/dev/null
	local want=$LINUX_PIN avail
	avail=$(apt_private apt-cache madison "$LINUX_PKG" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}')
	if ! grep -qxF "$want" <<<"$avail"; then
		want=$(grep -E '^7\.3\.' <<<"$avail" | sort -V | tail -n 1)
		[ -n "$want" ] || die "no $LINUX_PKG 7.3.x in $LINUX_SUITE"
		say "Linux source: pinned $LINUX_PIN has left the archive; using the newest 7.3.x, $want"
	fi
	say "Linux source: downloading $LINUX_PKG=$want"
	local dl=$CACHE/src/download
	rm -rf "$dl" && mkdir -p "$dl"
	(cd "$dl" && apt_private apt-get download "$LINUX_PKG=$want" >/dev/null)
	say "Linux source: unpacking"
	dpkg-deb -x "$dl"/*.deb "$dl/root"
	local tarball upstream
	tarball=$(ls "$dl"/root/usr/src/linux-source-*.tar.*)
	upstream=${want%%-*}
	rm -rf "$CACHE/src/linux-$upstream"
	tar -C "$CACHE/src" -xf "$tarball"
	mv "$CACHE/src/$(basename "${tarball%.tar.*}")" "$CACHE/src/linux-$upstream"
	rm -rf "$dl"
	echo "$upstream" >"$CACHE/src/VERSION"
	echo "$LINUX_PKG=$want" >"$CACHE/src/PACKAGE"
	say "Linux source: $CACHE/src/linux-$upstream ($LINUX_PKG $want)"
}

install_debs
install_rust
fetch_linux
say "ready: cache $CACHE"
