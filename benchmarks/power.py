"""How many instances per cell the family report needs to tell a mean-rank difference of 0.05 from chance.

    python -m benchmarks.power benchmarks/results/families-issue24 --policies romul,pbt,de,random,mf-pbt,fire-pbt

Each cell's report-half instances are split at random into two halves of equal size, many times; each split
gives every policy two independent whole-suite mean ranks (benchmarks.family_report.mean_ranks, among
`--policies`), and their difference. The spread is the 95th percentile of |difference| over the splits: a
mean-rank gap below it could be two runs of the same policy. It shrinks as 1 / sqrt(instances), so the
instances per cell at which it falls to `--target` are extrapolated from the half size measured.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.family_report import RUNS, Row, mean_ranks, read_rows


@dataclass(frozen=True)
class Power:
    """The split-half spread of one policy's whole-suite mean rank, and the instances per cell for `target`."""

    policy: str
    half: int  # instances per cell in each half
    spread: float  # 95th percentile of |mean rank of one half - of the other|
    needed: int  # instances per cell for the spread to fall to the target


def split_half(rows: list[Row], policies: list[str], splits: int = 200, target: float = 0.05,
               seed: int = 0) -> list[Power]:
    """The spread per policy over `splits` random halvings of each cell's instances (the report half's rows)."""
    rows = [r for r in rows if r.half == "report" and r.variant == "" and r.policy in policies]
    by_cell: dict[tuple, list[int]] = {}
    for r in rows:
        by_cell.setdefault(r.cell, [])
        if r.seed not in by_cell[r.cell]:
            by_cell[r.cell].append(r.seed)
    half = min(len(s) for s in by_cell.values()) // 2
    rng = np.random.default_rng(seed)
    differences: dict[str, list[float]] = {p: [] for p in policies}
    for _ in range(splits):
        first = {c: set(rng.permutation(sorted(s))[:half].tolist()) for c, s in by_cell.items()}
        second = {c: set(sorted(set(s) - first[c])[:half]) for c, s in by_cell.items()}
        a = mean_ranks([r for r in rows if r.seed in first[r.cell]], policies)
        b = mean_ranks([r for r in rows if r.seed in second[r.cell]], policies)
        for p in policies:
            differences[p].append(abs(a[("all", p)] - b[("all", p)]))
    powers = []
    for p in policies:
        spread = float(np.percentile(differences[p], 95))
        powers.append(Power(p, half, spread, math.ceil(half * (spread / target) ** 2)))
    return powers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a family benchmark's results folder (its runs.csv)")
    parser.add_argument("--policies", default="romul,pbt,de,random")
    parser.add_argument("--target", type=float, default=0.05)
    parser.add_argument("--splits", type=int, default=200)
    args = parser.parse_args(argv)
    powers = split_half(read_rows(args.out / RUNS), args.policies.split(","), args.splits, args.target)
    print(f"| policy | instances per half | 95% split-half spread of the mean rank | instances per cell for "
          f"{args.target} |\n|---|---|---|---|")
    for p in powers:
        print(f"| {p.policy} | {p.half} | {p.spread:.3f} | {p.needed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
