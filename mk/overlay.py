#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Lay the Conflux overlay onto a copy of a pristine Linux tree.

tree = pristine + the project's new files + patches/series applied to the
upstream files they edit. Incremental: a file is rewritten only when its
content changes, so untouched files keep their timestamps and Kbuild rebuilds
only what changed. Files the overlay laid down before and no longer provides
are put back to pristine (or removed), with a fresh timestamp.
"""

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile

# Directories of the repository that are new files at their kernel path.
OVERLAY_DIRS = [
    "drivers/accel/conflux",
    "rust/kernel",
    "rust/helpers",
    "include/uapi/drm",
    "Documentation/accel/conflux",
    "tools/testing/conflux",
]
# Never laid onto the tree: build products and local state.
SKIP_PARTS = {"target", "__pycache__", ".git"}
MANIFEST = ".conflux-overlay"
STAMP = ".conflux-pristine"


def log(msg):
    print(f"[overlay] {msg}", flush=True)


def new_files(top):
    """Every project file that is new at its kernel path, relative to top."""
    out = []
    for d in OVERLAY_DIRS:
        base = os.path.join(top, d)
        for root, dirs, files in os.walk(base):
            dirs[:] = sorted(x for x in dirs if x not in SKIP_PARTS)
            for f in sorted(files):
                out.append(os.path.relpath(os.path.join(root, f), top))
    return out


def series(top):
    """The patch files in series order."""
    path = os.path.join(top, "patches", "series")
    out = []
    with open(path) as fh:
        for line in fh:
            line = line.split("#", 1)[0].split()
            if line:
                out.append(os.path.join(top, "patches", line[0]))
    return out


def patched_files(patch):
    """Paths a patch edits (b/ side of its diffs)."""
    files = []
    with open(patch) as fh:
        for line in fh:
            if line.startswith("+++ "):
                name = line[4:].strip().split("\t")[0]
                if name == "/dev/null":
                    sys.exit(f"{patch}: creates a file; new files belong at their kernel path, not in patches")
                files.append(name[2:] if name.startswith("b/") else name)
    return files


def stage(top, pristine, dest):
    """Write the overlay's view of every file it provides into dest."""
    provided = []
    for rel in new_files(top):
        if os.path.exists(os.path.join(pristine, rel)):
            sys.exit(f"{rel} exists upstream: edits to upstream files go in patches/")
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(os.path.join(top, rel), os.path.join(dest, rel))
        provided.append(rel)
    patches = series(top)
    edited = sorted({f for p in patches for f in patched_files(p)})
    for rel in edited:
        src = os.path.join(pristine, rel)
        if not os.path.exists(src):
            sys.exit(f"patches edit {rel}, which is not in the pristine tree {pristine}")
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))
        provided.append(rel)
    for p in patches:
        r = subprocess.run(["git", "apply", "--whitespace=error-all", p], cwd=dest,
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{os.path.relpath(p, top)} does not apply to {pristine}:\n{r.stderr}")
    return sorted(set(provided))


def copy_tree(pristine, tree):
    log(f"copying {pristine} -> {tree} (once per pristine tree)")
    tmp = tree + ".new"
    shutil.rmtree(tmp, ignore_errors=True)
    # cp -a keeps the pristine timestamps and is much faster than Python here.
    subprocess.run(["cp", "-a", pristine, tmp], check=True)
    shutil.rmtree(os.path.join(tmp, ".git"), ignore_errors=True)
    with open(os.path.join(tmp, STAMP), "w") as fh:
        fh.write(pristine + "\n")
    shutil.rmtree(tree, ignore_errors=True)
    os.rename(tmp, tree)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--top", required=True, help="the Conflux repository")
    ap.add_argument("--pristine", required=True, help="pristine Linux 7.3 tree")
    ap.add_argument("--tree", required=True, help="build tree to create or update")
    args = ap.parse_args()

    stamp = os.path.join(args.tree, STAMP)
    if not os.path.exists(stamp) or open(stamp).read().strip() != args.pristine:
        copy_tree(args.pristine, args.tree)

    with tempfile.TemporaryDirectory(prefix="conflux-overlay-") as staged:
        provided = stage(args.top, args.pristine, staged)
        changed = 0
        for rel in provided:
            src, dst = os.path.join(staged, rel), os.path.join(args.tree, rel)
            if os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)  # new content, new timestamp
            shutil.copymode(src, dst)
            changed += 1
            log(f"updated {rel}")

    manifest = os.path.join(args.tree, MANIFEST)
    before = set(open(manifest).read().split()) if os.path.exists(manifest) else set()
    for rel in sorted(before - set(provided)):
        src, dst = os.path.join(args.pristine, rel), os.path.join(args.tree, rel)
        if os.path.exists(src):
            shutil.copyfile(src, dst)
            log(f"restored pristine {rel}")
        elif os.path.exists(dst):
            os.unlink(dst)
            log(f"removed {rel}")
        changed += 1
    with open(manifest, "w") as fh:
        fh.write("\n".join(provided) + "\n")
    log(f"{args.tree}: {len(provided)} overlay files, {changed} changed")


if __name__ == "__main__":
    main()
