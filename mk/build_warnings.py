#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Compiler and Clippy warnings of a kernel build log that concern the files
the Conflux overlay provides (listed in the build tree's manifest)."""

import os
import re
import sys


def overlay_files(tree):
    manifest = os.path.join(tree, ".conflux-overlay")
    if not os.path.exists(manifest):
        return set()
    return {p for p in open(manifest).read().split() if not p.endswith((".rst", ".config"))}


def warning_blocks(build_log):
    """Each warning or error of the log with the lines that explain it."""
    blocks, cur = [], None
    if not os.path.exists(build_log):
        return blocks
    for line in open(build_log, errors="replace"):
        if re.match(r"^(warning|error)(\[|:)", line) or ": warning:" in line:
            cur = [line.rstrip()]
            blocks.append(cur)
        elif cur is not None:
            if not line.strip():
                cur = None
            else:
                cur.append(line.rstrip())
    return blocks


def ours(build_log, tree):
    """(warnings about Conflux files, number of warnings elsewhere). A
    warning about an object file (objtool's) is ours when the object is
    built from an overlay source: drivers/accel/conflux/conflux.o from
    conflux.rs."""
    files = overlay_files(tree)
    stems = {os.path.splitext(p)[0] for p in files}

    def is_ours(block):
        text = "\n".join(block)
        if any(p in text for p in files):
            return True
        return any(m in stems for m in re.findall(r"([\w/.-]+)\.o\b", text))

    blocks = warning_blocks(build_log)
    mine = [b for b in blocks if is_ours(b)]
    return mine, len(blocks) - len(mine)


def report(build_log, tree, tag):
    """Prints one counted check; returns True when it passed."""
    mine, elsewhere = ours(build_log, tree)
    if mine:
        print(f"[{tag}] FAIL build: warnings in Conflux files:")
        for b in mine[:10]:
            print("    " + "\n    ".join(b[:12]))
        return False
    print(f"[{tag}] PASS build: no compiler or Clippy warning in Conflux files"
          f" ({elsewhere} elsewhere in the tree)")
    return True


if __name__ == "__main__":
    # build_warnings.py BUILD_LOG TREE TAG: the check alone, with a count line.
    ok = report(sys.argv[1], sys.argv[2], sys.argv[3])
    print("1 passed, 0 failed" if ok else "0 passed, 1 failed")
    sys.exit(0 if ok else 1)
