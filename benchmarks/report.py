"""Results of the policy benchmark: per-run records, their CSV files, the markdown table and the plot.

Every invocation of the benchmark merges its rows into the files of `--out` (replacing the rows of the
(toy, policy) pairs it ran) and renders the table and the plot again from everything there, so a Ray run
made in another environment lands in the same table.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

RUNS = "runs.csv"
CURVES = "curves.csv"
PROVENANCE = "provenance.json"
TABLE = "table.md"
PLOT = "policies.png"
STATS = ("median", "q1", "q3")
BASELINES = ("pbt", "de", "random", "ray-pbt")
LABELS = {
    "romul": "romul",
    "pbt": "pbt",
    "de": "de",
    "random": "random",
    "ray-pbt": "Ray Tune PBT",
    "mf-pbt": "MF-PBT (benchmarks/peers.py)",
    "fire-pbt": "FIRE-style PBT (benchmarks/peers.py)",
    "romul-no-ready": "romul, step 2 removed (no waiting after a change)",
    "romul-no-equal-time": "romul, step 3 -> latest scores (not equal-time)",
    "romul-last-score": "romul, step 4 -> last score (not the mean of `ready`)",
    "romul-pbt-select": "romul, step 5 -> PBT truncation (everyone ranked, uniform parent)",
    "romul-fixed-step": "romul, step 6 removed (sigma fixed at sigma0)",
    "romul-pbt-move": "romul, step 7 -> PBT perturbation (x0.8 / x1.2, resample)",
    "romul-no-explorers": "romul without explorers (explorers = 0)",
}
ORDER = tuple(LABELS)
METRIC = ("the true (noise-free) score after the last interval of the member whose observed score is best "
          "then, which is the member a user would pick")


@dataclass(frozen=True)
class Toy:
    key: str
    title: str
    recipe: str
    decimals: int


TOYS = {
    "T1": Toy("T1", "T1 pbt_quadratic", "recipes/toy-quadratic.yaml", 5),
    "T2": Toy("T2", "T2 short_long", "recipes/toy-short-long.yaml", 4),
    "T3": Toy("T3", "T3 lr_decay", "recipes/toy-lr-decay.yaml", 4),
    "T4": Toy("T4", "T4 ellipsoid", "recipes/toy-ellipsoid.yaml", 4),
}


@dataclass(frozen=True)
class Run:
    """One experiment: the best member's true score at every interval of training time."""

    toy: str
    policy: str
    seed: int
    curve: tuple[float, ...]
    seconds: float

    @property
    def final(self) -> float:
        return self.curve[-1]


@dataclass(frozen=True)
class Summary:
    """Median and interquartile range over seeds."""

    median: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return cls(float(median), float(q1), float(q3), len(values))

    def cell(self, decimals: int) -> str:
        return f"{self.median:.{decimals}f} [{self.q1:.{decimals}f}, {self.q3:.{decimals}f}]"


@dataclass(frozen=True)
class Invocation:
    """Who produced which rows: the command, the machine and the wall time."""

    policies: tuple[str, ...]
    toys: tuple[str, ...]
    seeds: int
    command: str
    machine: str
    wall_seconds: float
    cpu_seconds: float


def best_curve(commits: Iterable[dict], intervals: int, sign: float = 1.0) -> tuple[float, ...]:
    """At each interval t, the true score of the commit of interval t whose observed score is best."""
    best: dict[int, dict] = {}
    for event in commits:
        t = event["interval"]
        if t not in best or sign * event["score"] > sign * best[t]["score"]:
            best[t] = event
    return tuple(float(best[t]["metrics"]["true_score"]) for t in range(intervals))


def merge(out: Path, runs: list[Run], invocation: Invocation) -> None:
    """Replace the rows of the (toy, policy) pairs in `runs` with them, then render table and plot."""
    out.mkdir(parents=True, exist_ok=True)
    fresh = {(r.toy, r.policy) for r in runs}
    finals = [row for row in _read_csv(out / RUNS) if (row["toy"], row["policy"]) not in fresh]
    finals += [{"toy": r.toy, "policy": r.policy, "seed": r.seed, "final": repr(r.final),
                "seconds": f"{r.seconds:.3f}"} for r in sorted(runs, key=lambda r: (r.toy, r.policy, r.seed))]
    _write_csv(out / RUNS, ["toy", "policy", "seed", "final", "seconds"], finals)
    curves = [row for row in _read_csv(out / CURVES) if (row["toy"], row["policy"]) not in fresh]
    curves += _curve_rows(runs)
    _write_csv(out / CURVES, ["toy", "policy", "stat", "curve"], curves)
    provenance = [p for p in _read_provenance(out) if set(p.policies) != set(invocation.policies)]
    provenance.append(invocation)
    (out / PROVENANCE).write_text(json.dumps([asdict(p) for p in provenance], indent=1) + "\n")
    (out / TABLE).write_text(render_table(finals, provenance))
    plot(curves, out / PLOT)


def _curve_rows(runs: list[Run]) -> list[dict]:
    groups: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for r in runs:
        groups.setdefault((r.toy, r.policy), []).append(r.curve)
    rows = []
    for (toy, policy), curves in sorted(groups.items()):
        q1, median, q3 = np.percentile(np.array(curves), [25, 50, 75], axis=0)
        for stat, values in zip(STATS, (median, q1, q3)):
            rows.append({"toy": toy, "policy": policy, "stat": stat, "curve": " ".join(f"{v:.6g}" for v in values)})
    return rows


def summaries(finals: list[dict]) -> dict[tuple[str, str], Summary]:
    groups: dict[tuple[str, str], list[float]] = {}
    for row in finals:
        groups.setdefault((row["toy"], row["policy"]), []).append(float(row["final"]))
    return {key: Summary.of(values) for key, values in groups.items()}


def compare(romul: Summary, other: Summary) -> str:
    """ROMUL against one baseline: who has the better median, and whether the IQRs are apart."""
    if romul.median == other.median:
        return "tie"
    ahead = romul.median > other.median
    apart = romul.q1 > other.q3 if ahead else romul.q3 < other.q1
    return f"{'ahead' if ahead else 'BEHIND'}, IQRs {'apart' if apart else 'overlap'}"


def render_table(finals: list[dict], provenance: list[Invocation]) -> str:
    """The markdown results: the table, ROMUL against each baseline, and how the numbers were produced."""
    stats = summaries(finals)
    toys = [t for t in TOYS if any(k[0] == t for k in stats)]
    seeds = sorted({s.n for s in stats.values()})
    lines = ["# Search policies on the toys of ROMUL.md", "",
             f"Each cell: median [first quartile, third quartile] over seeds ({', '.join(map(str, seeds))} per "
             f"cell; a cell with another count says so) of {METRIC}. Higher is better; population 16, 40 "
             "intervals, asynchronous workers. Bold: the best median of the main policies on that toy.", "",
             *_results(stats, toys, seeds), "",
             "ROMUL against each baseline (median ahead or behind; IQRs apart or overlapping):", "",
             *_verdicts(stats, toys), "", "## How these numbers were produced", ""]
    for p in provenance:
        lines.append(f"- `{p.command}`: {', '.join(p.policies)} on {', '.join(p.toys)}, {p.seeds} seeds; "
                     f"{p.wall_seconds:.0f} s wall ({p.cpu_seconds:.0f} s of runs) on {p.machine}.")
    return "\n".join(lines) + "\n"


def _results(stats: dict[tuple[str, str], Summary], toys: list[str], seeds: list[int]) -> list[str]:
    policies = sorted({k[1] for k in stats}, key=lambda p: ORDER.index(p) if p in ORDER else len(ORDER))
    main = [p for p in policies if p in BASELINES or p == "romul"]
    lines = ["| policy | " + " | ".join(TOYS[t].title for t in toys) + " |", "|---|" + "---|" * len(toys)]
    for policy in policies:
        cells = []
        for toy in toys:
            s = stats.get((toy, policy))
            if s is None:
                cells.append("")
                continue
            cell = s.cell(TOYS[toy].decimals) + (f" (n={s.n})" if len(seeds) > 1 and s.n != max(seeds) else "")
            top = max(stats[(toy, p)].median for p in main if (toy, p) in stats)
            cells.append(f"**{cell}**" if policy in main and s.median == top else cell)
        lines.append(f"| {LABELS.get(policy, policy)} | " + " | ".join(cells) + " |")
    return lines


def _verdicts(stats: dict[tuple[str, str], Summary], toys: list[str]) -> list[str]:
    present = [b for b in BASELINES if any(k[1] == b for k in stats)]
    lines = ["| toy | " + " | ".join(LABELS[b] for b in present) + " |", "|---|" + "---|" * len(present)]
    for toy in toys:
        row = [compare(stats[(toy, "romul")], stats[(toy, b)]) if {(toy, "romul"), (toy, b)} <= stats.keys()
               else "" for b in present]
        lines.append(f"| {TOYS[toy].title} | " + " | ".join(row) + " |")
    return lines


def plot(curves: list[dict], path: Path) -> None:
    """Median best true score against intervals per toy, main policies only, IQR shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {(r["toy"], r["policy"], r["stat"]): np.array([float(v) for v in r["curve"].split()]) for r in curves}
    toys = [t for t in TOYS if any(k[0] == t for k in data)]
    shown = [p for p in ("romul", *BASELINES) if any(k[1] == p for k in data)]
    columns = min(2, len(toys))
    rows = -(-len(toys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(toys):]:
        ax.set_visible(False)
    for ax, toy in zip(axes.flat, toys):
        for policy in shown:
            if (toy, policy, "median") not in data:
                continue
            median = data[(toy, policy, "median")]
            x = np.arange(1, len(median) + 1)
            line, = ax.plot(x, median, label=LABELS.get(policy, policy), lw=2.2 if policy == "romul" else 1.3)
            ax.fill_between(x, data[(toy, policy, "q1")], data[(toy, policy, "q3")], color=line.get_color(),
                            alpha=0.15, lw=0)
        ax.set_title(TOYS[toy].title)
        ax.set_xlabel("interval (training time)")
        ax.set_ylabel("best member's true score")
        ax.set_ylim(*_zoom([data[(toy, p, s)] for p in shown for s in STATS if (toy, p, s) in data]))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(shown), frameon=False)
    fig.suptitle("Median over seeds (shaded: interquartile range); y axes zoomed on the last 3/4 of training")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _zoom(series: list[np.ndarray]) -> tuple[float, float]:
    """Y limits that show the second half of training well (early scores can be far lower)."""
    late = np.concatenate([s[len(s) // 4:] for s in series])
    low, high = float(late.min()), float(late.max())
    pad = 0.08 * (high - low or 1.0)
    return low - pad, high + pad


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _read_provenance(out: Path) -> list[Invocation]:
    path = out / PROVENANCE
    if not path.exists():
        return []
    return [Invocation(**{**p, "policies": tuple(p["policies"]), "toys": tuple(p["toys"])})
            for p in json.loads(path.read_text())]
