#!/usr/bin/env python3
"""Two server builds compared by the harness, in alternating runs: which is faster, relative to the baseline.

    ab.py BIN_A BIN_B [--pairs N] [--bench PATH] [-- KEYVAULT_BENCH_ARGS...]

Runs ``keyvault-bench --server-bin BIN_A ARGS`` and ``... BIN_B ARGS`` N times each, alternating (A B, then B A,
so that a machine that speeds up or slows down over the sitting favours neither), and reads every result row of
the reports (operation, protocol, concurrency). For each row it prints, for A and for B, the median over the
runs of the throughput as a share of the baseline measured in the same run, and of the server's CPU per
operation as a multiple of the baseline's; then in how many pairs B's share was higher than A's. On a shared,
noisy machine single runs of one build differ by a fifth; the medians of several pairs, and the CPU multiple
(the steadier figure), are what to compare. ``count_instructions.py`` counts instructions instead (repeatable,
but blind to system calls and waits).

Example: ``ab.py /tmp/keyvault-before target/release/keyvault --pairs 6 -- --sizes 10000 --protos h1
--concurrency 64 --ops get,set --rounds 2``. Python 3's standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

# | get | h1 | 64 | 52,995 | 73 % | 1.101 | 3.763 | 5.478 | 1.3× / 1.5× | 23 (1.6×) | 0.4 | 0 |
# Only the share is required: the other columns can read "–" in a run too short or too starved to measure them.
ROW = re.compile(
    r"^\| (?P<op>[^|]+?) \| (?P<proto>h1|h2) \| (?P<c>\d+) \| (?P<rate>[\d,]+) \| (?P<share>\d+) % \|"
    r".*\| (?P<errors>\d+) \|$")
MULT = re.compile(r"\| [\d.]+ \((?P<mult>[\d.]+|inf)×\) \|")


def rows(report: str) -> dict[tuple[str, str, int], tuple[float, float | None]]:
    """(operation, protocol, concurrency) → (share of the baseline, CPU multiple of the baseline's)."""
    out = {}
    for line in report.splitlines():
        m = ROW.match(line.strip())
        if m and m["op"] != "baseline":
            mult = MULT.search(line)
            out[(m["op"], m["proto"], int(m["c"]))] = (
                int(m["share"]) / 100,
                float(mult["mult"]) if mult and mult["mult"] != "inf" else None)
    return out


def main() -> int:
    argv = sys.argv[1:]
    bench_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, bench_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--bench", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     "..", "..", "..", "target", "release",
                                                     "keyvault-bench"))
    a = p.parse_args(argv)
    results: dict[str, list[dict]] = {"A": [], "B": []}
    for pair in range(a.pairs):
        order = [("A", a.a), ("B", a.b)] if pair % 2 == 0 else [("B", a.b), ("A", a.a)]
        for label, binary in order:
            run = subprocess.run([a.bench, "--server-bin", binary, *bench_args],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                print(f"keyvault-bench failed for {label} ({binary}):\n{run.stdout}\n{run.stderr}",
                      file=sys.stderr)
                return 1
            found = rows(run.stdout)
            if not found:
                print(f"no result rows in the report of {label}:\n{run.stdout}", file=sys.stderr)
                return 1
            results[label].append(found)
            shares = ", ".join(f"{k[0]} {k[1]} c={k[2]} {v[0]:.0%}" for k, v in sorted(found.items()))
            print(f"pair {pair + 1} {label}: {shares}", flush=True)
    print()
    print(f"A = {a.a}\nB = {a.b}\n{a.pairs} pairs; medians over the runs")
    print()
    print("| operation | proto | c | A share of baseline | B share | B > A in pairs | A CPU × baseline | B CPU × |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    keys = sorted(set().union(*results["A"], *results["B"]))
    for key in keys:
        sa = [r[key][0] for r in results["A"] if key in r]
        sb = [r[key][0] for r in results["B"] if key in r]
        ca = [r[key][1] for r in results["A"] if key in r and r[key][1] is not None]
        cb = [r[key][1] for r in results["B"] if key in r and r[key][1] is not None]
        wins = sum(1 for x, y in zip(sa, sb) if y > x)
        med = lambda xs, fmt: fmt.format(statistics.median(xs)) if xs else "–"  # noqa: E731
        print(f"| {key[0]} | {key[1]} | {key[2]} | {med(sa, '{:.0%}')} | {med(sb, '{:.0%}')} | "
              f"{wins} of {min(len(sa), len(sb))} | {med(ca, '{:.2f}')} | {med(cb, '{:.2f}')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
