#!/usr/bin/env python3
"""Ratio tables from criterion's saved estimates.

    scripts/bench-ratios.py GROUP [GROUP ...] [--base NAME] [--target-dir DIR]

For each benchmark group (e.g. `hot`, `random`, `two_threads` of mmkit-slab's bench) prints
a Markdown table: one row per parameter, one column per peer, each cell the peer's median
time divided by the base's (default `mmkit`) median time from the same run — above 1 means
the base is faster. Reads `<target-dir>/criterion/<group>/<name>/<param>/new/estimates.json`
(`$CARGO_TARGET_DIR` or `target` by default), so run the bench first.
"""
import argparse
import json
import os
import sys


def median_ns(path):
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def param_key(p):
    try:
        return (0, float(p))
    except ValueError:
        return (1, p)


def table(root, group, base):
    gdir = os.path.join(root, group)
    if not os.path.isdir(gdir):
        sys.exit(f"no criterion data for group {group!r} under {root}")
    times = {}
    for name in sorted(os.listdir(gdir)):
        ndir = os.path.join(gdir, name)
        if name == "report" or not os.path.isdir(ndir):
            continue
        for param in os.listdir(ndir):
            est = os.path.join(ndir, param, "new", "estimates.json")
            if os.path.exists(est):
                times.setdefault(param, {})[name] = median_ns(est)
    peers = sorted({n for row in times.values() for n in row if n != base})
    print(f"### {group} (peer median / {base} median)\n")
    print(f"| {group} | {base} (ns) | " + " | ".join(peers) + " |")
    print("|---|---:|" + "---:|" * len(peers))
    for param in sorted(times, key=param_key):
        row = times[param]
        if base not in row:
            continue
        cells = [f"{row[p] / row[base]:.2f}" if p in row else "-" for p in peers]
        print(f"| {param} | {row[base]:.1f} | " + " | ".join(cells) + " |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("groups", nargs="+")
    ap.add_argument("--base", default="mmkit")
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", "target"))
    a = ap.parse_args()
    root = os.path.join(a.target_dir, "criterion")
    for g in a.groups:
        table(root, g, a.base)


if __name__ == "__main__":
    main()
