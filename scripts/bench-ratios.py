#!/usr/bin/env python3
"""Prints, from criterion's last run of the providers benchmark, each provider's median
verify + parse + normalise + serialise time beside its floor and their ratio, per body size;
marks ratios over the budget (2x at 1 KB).
    cargo bench -p bluehook --bench providers && scripts/bench-ratios.py
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
if not root.is_dir():
    sys.exit("no criterion results: run `cargo bench -p bluehook --bench providers` first")


def median_ns(path):
    return json.loads(path.read_text())["median"]["point_estimate"]


print("| provider | body | ours (median) | floor (median) | ratio |")
print("|---|---:|---:|---:|---:|")
worst = 0.0
for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "report"):
    ours_dir = group / "verify_parse_serialise"
    floors = [d for d in group.iterdir() if d.name.startswith("floor_")]
    if not ours_dir.is_dir() or not floors:
        continue
    for size_dir in sorted(ours_dir.iterdir(), key=lambda d: int(d.name) if d.name.isdigit() else 0):
        if not size_dir.name.isdigit():
            continue
        ours = median_ns(size_dir / "new" / "estimates.json")
        floor = median_ns(floors[0] / size_dir.name / "new" / "estimates.json")
        ratio = ours / floor
        mark = " (over 2x)" if size_dir.name == "1024" and ratio > 2 else ""
        if size_dir.name == "1024":
            worst = max(worst, ratio)
        print(f"| {group.name} | {size_dir.name} B | {ours / 1000:.2f} µs | {floor / 1000:.2f} µs | {ratio:.2f}x{mark} |")
print()
print(f"worst ratio at 1 KB: {worst:.2f}x (budget 2x)")
