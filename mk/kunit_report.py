#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Summarise a kunit.py run: each suite's result, the kernel log's checker
reports, compiler warnings in Conflux's own files; last line
"N passed, N failed[, N skipped]". Exits non-zero if anything failed."""

import argparse
import fnmatch
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_warnings  # noqa: E402

# A report from lockdep, KASAN, UBSAN, debug-objects, list debugging or any
# WARN()/BUG() anywhere in the kernel log.
CHECKER = re.compile(
    r"(WARNING:|BUG:|kernel BUG at|Kernel panic|Oops|"
    r"INFO: (possible|inconsistent|trying to register|lockdep)|"
    r"DEBUG_LOCKS_WARN_ON|possible (circular|recursive) locking|"
    r"KASAN|UBSAN|ODEBUG:|list_(add|del) corruption|refcount_t:|"
    r"general protection fault|Unable to handle)"
)


def known_reports(path):
    """(test glob, compiled regex) pairs from kunit/known-reports."""
    out = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line and not line.startswith("#"):
                glob, regex = line.split(None, 1)
                out.append((glob, re.compile(regex)))
    return out


def checker_reports(log, known):
    """Checker report lines of the kernel log, split into (failing, excused).

    KTAP prints a test's output before its "ok N name" line, so a report is
    attributed to the next test result that follows it."""
    failing, excused, pending = [], [], []
    result = re.compile(r"^\s*(not )?ok \d+ (\S+)")
    for line in open(log, errors="replace"):
        line = line.rstrip()
        if CHECKER.search(line):
            pending.append(line)
            continue
        m = result.match(line)
        if m:
            test = m.group(2)
            for rep in pending:
                if any(fnmatch.fnmatch(test, g) and r.search(rep) for g, r in known):
                    excused.append(f"{test}: {rep}")
                else:
                    failing.append(f"{test}: {rep}")
            pending = []
    failing += [f"(no test): {rep}" for rep in pending]
    return failing, excused


def leaves(group, path):
    """(suite path, case name, status) for every test case under group."""
    name = group.get("name", "")
    here = path + [name] if path is not None else []
    for case in group.get("test_cases", []):
        # A suite that crashed before it started is a nameless case of its parent.
        yield ".".join(here) or "(kernel)", case["name"] or "(suite that did not start)", case["status"]
    for sub in group.get("sub_groups", []):
        yield from leaves(sub, here)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--log", required=True, help="kernel log (test.log)")
    ap.add_argument("--exec-log", help="kunit.py's output, shown when it gave no results")
    ap.add_argument("--build-log", help="build log to check for warnings in Conflux files")
    ap.add_argument("--label", default="kunit", help="prefix of the report's lines")
    ap.add_argument("--top", required=True)
    ap.add_argument("--tree", help="build tree, for --build-log")
    args = ap.parse_args()

    passed = failed = skipped = 0
    suites = {}
    failures = []
    if os.path.exists(args.json) and os.path.getsize(args.json) > 0:
        with open(args.json) as fh:
            root = json.load(fh)
        for suite, case, status in leaves(root, None):
            s = suites.setdefault(suite, [0, 0, 0])
            if status == "PASS":
                s[0] += 1
            elif status == "SKIP":
                s[2] += 1
            else:
                s[1] += 1
                failures.append(f"{suite}.{case}: {status}")
    else:
        failures.append("kunit.py produced no results")
        if args.exec_log:
            print(open(args.exec_log, errors="replace").read()[-4000:], file=sys.stderr)

    for suite, (p, f, s) in sorted(suites.items()):
        word = "FAIL" if f else "PASS"
        print(f"[{args.label}] {word} {suite}: {p} passed, {f} failed" + (f", {s} skipped" if s else ""))
        passed, failed, skipped = passed + p, failed + f, skipped + s

    # Checker reports anywhere in the kernel log.
    known = known_reports(os.path.join(args.top, "kunit", "known-reports"))
    if os.path.exists(args.log):
        reports, excused = checker_reports(args.log, known)
    else:
        reports, excused = [f"no kernel log at {args.log}"], []
    if excused:
        print(f"[{args.label}] note: {len(excused)} known upstream report(s) excused by kunit/known-reports:")
        for line in excused:
            print("    " + line)
    if reports:
        failed += 1
        failures.append("kernel log: checker reports")
        print(f"[{args.label}] FAIL kernel log: checker reports:")
        for line in reports[:40]:
            print("    " + line)
    else:
        passed += 1
        print(f"[{args.label}] PASS kernel log: no lockdep, debug-objects, WARN or BUG report")

    # Compiler and Clippy warnings in the files the overlay provides.
    if not args.build_log:
        pass
    elif build_warnings.report(args.build_log, args.tree, "kunit"):
        passed += 1
    else:
        failed += 1
        failures.append("build: warnings in Conflux files")

    for f in failures:
        print(f"[{args.label}] failed: {f}")
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    sys.exit(1 if failed or not suites else 0)


if __name__ == "__main__":
    main()
