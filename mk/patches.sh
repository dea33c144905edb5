#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make patches: write the work as a numbered `git format-patch` series against
# pristine Linux 7.3, one commit per line of patches/series (its edits to
# upstream files plus the new files the line names).
#
# make patches-check (--check): apply that series with `git am` to a git copy
# of the pristine tree and check that every file it produces is identical to
# the build tree that `make kunit` and `make guest` build.
STEP=patches
. "$(dirname "$0")/common.sh"

PRISTINE=$(pristine_tree)
[ -n "$PRISTINE" ] && [ -f "$PRISTINE/Makefile" ] || die "no Linux 7.3 source: run make setup (or set KSRC)"
OUT=${PATCHES_OUT:-$CACHE/outgoing}
WORK=$CACHE/patches-work
# Commits are signed off by whoever runs this (the repository's git identity).
NAME=$(git -C "$TOP" config user.name || echo "Conflux developers")
EMAIL=$(git -C "$TOP" config user.email || echo "conflux@localhost")
GIT=(git -c user.name="$NAME" -c user.email="$EMAIL"
     -c commit.gpgsign=false -c core.autocrlf=false)
export GIT_COMMITTER_DATE="2026-01-01T00:00:00Z"

series_lines() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$TOP/patches/series"; }

generate() {
	rm -rf "$WORK" && mkdir -p "$WORK"
	local patch files f
	# Base commit: the pristine version of every upstream file the series edits.
	for f in $(grep -h '^+++ b/' "$TOP"/patches/*.patch | cut -c7- | sort -u); do
		mkdir -p "$WORK/$(dirname "$f")"
		cp "$PRISTINE/$f" "$WORK/$f"
	done
	(cd "$WORK" && "${GIT[@]}" init -q . && "${GIT[@]}" add -A &&
		"${GIT[@]}" commit -q -m "pristine Linux $(make -s -C "$PRISTINE" kernelversion)")
	local claimed=()
	while read -r patch files; do
		(cd "$WORK" && "${GIT[@]}" am -q --committer-date-is-author-date "$TOP/patches/$patch") ||
			die "patches/$patch does not apply to $PRISTINE"
		for f in $files; do
			[ -e "$TOP/$f" ] || die "patches/series: $f (claimed by $patch) does not exist"
			(cd "$TOP" && find "$f" -type f -not -path '*/target/*') | while read -r g; do
				mkdir -p "$WORK/$(dirname "$g")"
				cp "$TOP/$g" "$WORK/$g"
			done
			claimed+=("$f")
		done
		(cd "$WORK" && "${GIT[@]}" add -A &&
			"${GIT[@]}" commit -q --amend --no-edit --reset-author --allow-empty)
	done < <(series_lines)
	# Every new file of the overlay must belong to a commit.
	local missing
	missing=$(cd "$TOP" && python3 - "${claimed[@]}" <<-'PY'
	import sys
	sys.path.insert(0, "mk")
	from overlay import new_files
	claimed = sys.argv[1:]
	for f in new_files("."):
	    if not any(f == c or f.startswith(c.rstrip("/") + "/") for c in claimed):
	        print(f)
	PY
	)
	[ -z "$missing" ] || die "new files no line of patches/series claims: $missing"
	rm -rf "$OUT" && mkdir -p "$OUT"
	(cd "$WORK" && "${GIT[@]}" format-patch -q --signoff --zero-commit --no-signature -o "$OUT" HEAD~"$(series_lines | wc -l)"..HEAD)
	say "$(ls "$OUT" | wc -l) patches in $OUT:"
	ls "$OUT" | sed 's/^/    /'
}

check() {
	local am=$CACHE/amcheck
	if [ ! -f "$am/.git/conflux-base" ] || [ "$(cat "$am/.git/conflux-base")" != "$PRISTINE" ]; then
		say "making a git repository of the pristine tree at $am (once, about 2 minutes)"
		rm -rf "$am"
		cp -a "$PRISTINE" "$am"
		(cd "$am" && rm -rf .git && "${GIT[@]}" init -q . && "${GIT[@]}" add -A -f &&
			"${GIT[@]}" commit -q -m "Linux $(make -s kernelversion)" && git tag pristine)
		echo "$PRISTINE" >"$am/.git/conflux-base"
	fi
	(cd "$am" && git am --abort >/dev/null 2>&1 || true; git reset -q --hard pristine && git clean -qfdx)
	(cd "$am" && "${GIT[@]}" am -q "$OUT"/*.patch) || die "the series does not apply with git am to $am"
	say "git am: $(cd "$am" && git rev-list --count pristine..HEAD) commits applied to pristine Linux"
	"$TOP/mk/overlay.sh" >/dev/null
	local tree f diffs=0
	tree=$(build_tree)
	for f in $(cat "$tree/.conflux-overlay"); do
		if ! cmp -s "$am/$f" "$tree/$f"; then
			say "differs from the build tree: $f"
			diffs=$((diffs + 1))
		fi
	done
	[ $diffs -eq 0 ] || die "$diffs files differ between the git am tree and the build tree"
	[ -z "$(cd "$am" && git status --porcelain)" ] || die "git am left changes behind"
	say "the git am tree is identical to the build tree in all $(wc -l <"$tree/.conflux-overlay") overlay files"
	if [ -n "${BUILD:-}" ]; then
		say "building and running KUnit from the git am tree (BUILD=1)"
		CONFLUX_TREE=$am KUNIT_BUILD=$CACHE/build/kunit-amcheck "$TOP/mk/kunit.sh"
	fi
}

generate
[ "${1:-}" != --check ] || check
