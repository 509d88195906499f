#!/usr/bin/env python3
"""Prints the parse benchmark medians as Markdown tables from criterion's JSON estimates.

Usage: perf/bench_table.py TARGET_DIR [BASELINE ...]   (baselines default to "new")
Reads TARGET_DIR/criterion/parse/<message>_<parser>/<baseline>/estimates.json (median, ns;
criterion stores the ID `parse/<message>/<parser>` under that folder name).
"""
import json
import os
import sys

MESSAGES = ["register", "invite", "response200"]
PARSERS = ["sipshard", "rsip", "ezk-sip-types", "sipx-sip"]


def median(target, group, bench, baseline):
    path = os.path.join(target, "criterion", group, bench, baseline, "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except OSError:
        return None


def fmt(ns):
    return "n/a" if ns is None else f"{ns:,.0f}"


def main():
    target = sys.argv[1]
    baselines = sys.argv[2:] or ["new"]
    for baseline in baselines:
        print(f"Baseline `{baseline}` (median ns per message; ratio = parser / sipshard)\n")
        print("| message | " + " | ".join(PARSERS) + " | fastest other / sipshard |")
        print("|---|" + "---|" * (len(PARSERS) + 1))
        for m in MESSAGES:
            times = [median(target, "parse", f"{m}_{p}", baseline) for p in PARSERS]
            ours = times[0]
            cells = []
            for t in times:
                if t is None or ours is None:
                    cells.append(fmt(t))
                elif t is ours:
                    cells.append(f"{fmt(t)} (1.0x)")
                else:
                    cells.append(f"{fmt(t)} ({t / ours:.1f}x)")
            others = [t for t in times[1:] if t is not None]
            best = f"{min(others) / ours:.1f}x" if others and ours else "n/a"
            print(f"| {m} | " + " | ".join(cells) + f" | {best} |")
        for w in ["response", "forward"]:
            print(f"\nwrite/{w}: {fmt(median(target, 'write', w, baseline))} ns", end="")
        print("\n")


if __name__ == "__main__":
    main()
