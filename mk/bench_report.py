#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Assembles the report of `make bench` from what the guest and the host measured.

The guest printed `conflux bench-suite`'s document after "BENCH-JSON " and,
from the rust_pci_p2pdma KUnit suite, one line with the figures of the
DMA-only table against dma_buf_phys_vec_to_sgt(); the host measured its
memcpy. Writes one JSON document: the table-building row first, then the
guest's rows, the copy row with the host's memcpy as its last reference,
and the row of every device copying at once with the host's memcpy in
shared memory by one thread and by as many threads as devices at once.
"""

import argparse
import json
import re
import statistics
import sys

SG = re.compile(
    r"rust_pci_p2pdma: bench 1 GiB in 2 MiB chunks for a 64 KiB / 1 MiB importer, (\d+) rounds: "
    r"conflux (\d+) entries, (\d+) violating, (\d+) ns/entry \(min (\d+), max (\d+)\); "
    r"upstream dma_buf_phys_vec_to_sgt (\d+) entries, (\d+) violating, (\d+) ns/entry "
    r"\(min (\d+), max (\d+)\)")


def stat(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--log", required=True, help="the guest's output")
    ap.add_argument("--memcpy", required=True, help="the host's memcpy runs, MB/s, comma-separated")
    ap.add_argument("--memcpy-one", required=True,
                    help="the host's memcpy of the devices row's size, one thread, MB/s runs")
    ap.add_argument("--memcpy-all", required=True,
                    help="the same, as many threads at once as devices: aggregate MB/s runs")
    ap.add_argument("--topology", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    text = open(a.log, errors="replace").read()
    doc = None
    for line in text.splitlines():
        if line.startswith("BENCH-JSON "):
            doc = json.loads(line[len("BENCH-JSON "):])
    if doc is None:
        sys.exit("bench_report: the guest printed no BENCH-JSON line")
    m = SG.search(text)
    if not m:
        sys.exit("bench_report: the guest printed no rust_pci_p2pdma bench line")
    g = [int(x) for x in m.groups()]
    rounds = g[0]
    sg = {
        "id": "sg_table",
        "title": "DMA-only table of 1 GiB in 2 MiB chunks, 64 KiB / 1 MiB importer",
        "unit": "ns/entry",
        "higher_is_better": False,
        "figures": [
            {"label": "Conflux Attachment::map_bar()",
             "value": {"median": g[3], "min": g[4], "max": g[5], "runs": rounds},
             "entries": g[1], "violating": g[2],
             "note": f"{g[1]} entries, {g[2]} violating the importer's limits"},
            {"label": "upstream dma_buf_phys_vec_to_sgt()",
             "value": {"median": g[8], "min": g[9], "max": g[10], "runs": rounds},
             "entries": g[6], "violating": g[7],
             "note": f"{g[6]} entries, {g[7]} violating the importer's limits"},
        ],
    }
    def runs(csv):
        return [float(x) for x in csv.split(",") if x]

    for row in doc["rows"]:
        if row["id"] == "copy":
            row["figures"].append({"label": "host memcpy", "value": stat(runs(a.memcpy))})
        if row["id"] == "devices":
            n = row.get("devices", 0)
            one, all_ = runs(a.memcpy_one), runs(a.memcpy_all)
            # The two took turns run by run.
            ratio = statistics.median(x / y for x, y in zip(all_, one))
            row["figures"].append({"label": f"host memcpy, {n} threads at once",
                                   "value": stat(all_),
                                   "note": f"in shared memory, as the model copies; {ratio:.2f}x "
                                           "one thread, the median of the runs' ratios"})
            row["figures"].append({"label": "host memcpy, one thread",
                                   "value": stat(runs(a.memcpy_one)),
                                   "note": "in shared memory, as the model copies"})
    doc["rows"].insert(0, sg)
    doc["topology"] = a.topology
    with open(a.out, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
