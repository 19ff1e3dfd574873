"""Results of the family benchmark: its rows, their CSV, the report of the report half, the tune-half scores.

The report (`table.md`, `families.png`) is rendered from the report half's rows only, whatever else the
CSV holds; `tune.md` scores each ROMUL variant tried on the tune half against the same baselines.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path

import numpy as np

from benchmarks.report import METRIC, Summary
from benchmarks.stats import holm, wilcoxon
from workers.families import FAMILIES

RUNS = "runs.csv"
PROVENANCE = "provenance.json"
TABLE = "table.md"
TUNE = "tune.md"
PLOT = "families.png"
ALPHA = 0.05
MAIN = ("romul", "pbt", "de", "random")
BASELINES = MAIN[1:]
# Published variants, on the cells they ran on: MF-PBT and FIRE-style PBT re-implemented from their papers
# (benchmarks/peers.py), Ray Tune's PBT and PB2 making decisions with Ray's own code (benchmarks/ray_families.py).
PEERS = ("mf-pbt", "fire-pbt", "ray-pbt", "ray-pb2")
DESCRIPTIONS = {
    "ellipsoid": "dims 2-8, condition 10-1e4 (curvatures log-spaced, shuffled, summing to 1), each coordinate "
                 "linear or log by a coin, optimum uniform in [0.15, 0.85]^d; weights move 0.3 of the way to the "
                 "hyperparameters per interval; optimum 0",
    "rotated": "as ellipsoid, with the axes turned by a uniformly random rotation (non-separable); optimum 0",
    "schedule": "SGD error on a noisy quadratic (T3 generalised): initial error 10-1e3, 1000-4000 steps over "
                "training, lr starting in a one-decade box within [1e-6, 1e-4] (four-plus decades below the good "
                "values), 1-2 change points at 20-80% of training where the gradient noise grows 3-30x",
    "short_long": "T2 generalised: gap-free d* in 0.2-0.8, decay exponent 4-8 over training, gap onset at 0-50% of "
                  "training, total gap rate 1-3 per unit of d* - d after it",
    "categorical": "a choice of 2-4 values setting where x0 (log) should be; the best value has a sharp basin "
                   "(curvature 4-8), the others are forgiving (0.5-1) and cost 0.02-0.1; 0-2 further coordinates; "
                   "optimum 0",
    "far_start": "dims 2-4, log over six decades, population started in the lowest decade, optimum at 0.7-0.95 "
                 "of the log range, condition 1-100; optimum 0",
    "deceptive": "the deceptive schedule of \"To Be Greedy, or Not to Be\" (TMLR 2025), re-implemented from its "
                 "description: h in [0, 1]; the best schedule lowers h linearly from h0 (0.6-0.9) to 0, dropping it "
                 "at once wins every short comparison (train-loss decay exponent 4-8 over training at h = 0) but "
                 "builds a debt (1-3 over training per unit below the schedule) that the score reveals over 10-30% "
                 "of training",
    "interacting": "1-2 pairs of one log and one linear coordinate, each pair's axes turned by 30-60 degrees, "
                   "condition 1e2-1e3 per pair; weights move 0.3 of the way per interval; optimum 0",
    "late_reg": "a regulariser (log, [1e-5, 1]) that only slows the train loss until an onset at 60-85% of training, "
                "after which too little of it opens a gap (2-4 per unit below e* 0.4-0.8); its effect follows the "
                "hyperparameter over 20-40% of training; plus one quadratic coordinate",
}


@dataclass(frozen=True)
class Row:
    """One experiment's result: the final true score of the member with the best observed final score."""

    half: str
    family: str
    population: int
    budget: int
    policy: str
    variant: str
    seed: int
    noise: str
    final: float
    seconds: float

    @property
    def key(self) -> tuple:
        return self.half, self.family, self.population, self.budget, self.policy, self.variant, self.seed

    @property
    def cell(self) -> tuple[str, int, int]:
        return self.family, self.population, self.budget


@dataclass(frozen=True)
class Invocation:
    """Who produced which rows: the exact command, its configuration, the machine and the wall time."""

    command: str
    half: str
    policies: tuple[str, ...]
    variant: str
    families: tuple[str, ...]
    instances: int
    populations: tuple[int, ...]
    budgets: tuple[int, ...]
    machine: str
    wall_seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class Verdict:
    """ROMUL against one baseline on one cell: win, tie or loss at ALPHA, and the test behind it."""

    outcome: str
    pvalue: float
    pairs: int
    median_difference: float

    def text(self) -> str:
        label = {"win": "win", "tie": "tie", "loss": "**LOSS**"}[self.outcome]
        return f"{label} p={self.pvalue:.2g}"


def merge(out: Path, rows: list[Row], invocation: Invocation) -> None:
    """Add `rows` (replacing rows of the same experiment), record the invocation, render the results again."""
    out.mkdir(parents=True, exist_ok=True)
    everything = {r.key: r for r in read_rows(out / RUNS)}
    everything.update({r.key: r for r in rows})
    merged = sorted(everything.values(), key=lambda r: r.key)
    write_rows(out / RUNS, merged)
    provenance = [p for p in read_provenance(out) if p.command != invocation.command] + [invocation]
    (out / PROVENANCE).write_text(json.dumps([asdict(p) for p in provenance], indent=1) + "\n")
    report = [r for r in merged if r.half == "report"]
    if any(r.policy in MAIN and r.variant == "" for r in report):  # peers or ablations alone: no report yet
        (out / TABLE).write_text(render_report(report, [p for p in provenance if p.half == "report"]))
        plot(report, out / PLOT)
    tune = [r for r in merged if r.half == "tune"]
    if tune:
        (out / TUNE).write_text(render_tune(tune, [p for p in provenance if p.half == "tune"]))


def verdict(romul: dict[int, float], other: dict[int, float]) -> Verdict:
    """Paired over the instance seeds both have: Wilcoxon signed-rank, two-sided, at ALPHA."""
    seeds = sorted(romul.keys() & other.keys())
    d = [romul[s] - other[s] for s in seeds]
    test = wilcoxon(d)
    outcome = "tie" if test.pvalue >= ALPHA else ("win" if test.plus > test.minus else "loss")
    return Verdict(outcome, test.pvalue, test.n, float(np.median(d)) if d else 0.0)


def ranks(values: Sequence[float]) -> list[float]:
    """Rank 1 for the highest value; tied values share the mean of their ranks."""
    return [1 + sum(v > x for v in values) + 0.5 * (sum(v == x for v in values) - 1) for x in values]


def mean_ranks(rows: Iterable[Row], policies: Sequence[str]) -> dict[tuple[str, str], float]:
    """Each policy's mean rank among `policies`, per family and over all ("all"), over the (cell, seed)
    pairs where every one of them ran."""
    finals: dict[tuple, dict[str, float]] = {}
    for r in rows:
        finals.setdefault((*r.cell, r.seed), {})[r.policy] = r.final
    collected: dict[tuple[str, str], list[float]] = {}
    for (family, *_), by_policy in finals.items():
        if not set(policies) <= by_policy.keys():
            continue
        for policy, rank in zip(policies, ranks([by_policy[p] for p in policies])):
            collected.setdefault((family, policy), []).append(rank)
            collected.setdefault(("all", policy), []).append(rank)
    return {key: float(np.mean(v)) for key, v in collected.items()}


def _by_cell(rows: Iterable[Row]) -> dict[tuple[str, int, int], dict[str, dict[int, float]]]:
    """cell -> policy -> seed -> final."""
    table: dict[tuple[str, int, int], dict[str, dict[int, float]]] = {}
    for r in rows:
        table.setdefault(r.cell, {}).setdefault(r.policy, {})[r.seed] = r.final
    return table


def _cells(table: dict[tuple[str, int, int], dict]) -> list[tuple[str, int, int]]:
    return sorted(table, key=lambda c: (list(FAMILIES).index(c[0]), c[1], c[2]))


def render_report(rows: list[Row], provenance: list[Invocation]) -> str:
    """The report of the report half: targets, mean ranks, win/tie/loss, and every cell."""
    main = [r for r in rows if r.policy in MAIN and r.variant == ""]
    table = _by_cell(main)
    cells = [c for c in _cells(table) if set(MAIN) <= table[c].keys()]
    verdicts = {(c, b): verdict(table[c]["romul"], table[c][b]) for c in cells for b in BASELINES}
    counts = sorted({len(table[c]["romul"]) for c in cells})
    lines = ["# ROMUL and its baselines on problem families (report half)", "",
             f"Every cell is one family x population x budget; each instance is drawn fresh from its seed "
             f"(workers/families.py), and the report half uses the odd instance seeds only (the tune half, where "
             f"defaults are chosen, the even ones). {'/'.join(map(str, counts))} instances per cell. Result per "
             f"experiment: {METRIC}; higher is better. Noise none / moderate / high is drawn per instance. "
             f"Asynchronous workers: half the population, 2 to 8, with lognormal interval durations.", "",
             f"Paired test: ROMUL against each baseline over the matched instance seeds of a cell, two-sided exact "
             f"Wilcoxon signed-rank test, alpha = {ALPHA} per comparison with no correction for multiple "
             f"comparisons (this makes a loss easier to detect than Holm would: the strict reading for "
             f"\"significantly behind no baseline\", the lenient one for wins). Win / loss: p < alpha with ROMUL "
             f"ahead / behind in rank sums; tie otherwise.", "",
             "## Targets", "", *_targets(cells, table, verdicts), *_peer_targets(rows), "",
             "## Mean rank over the whole suite (1 = best of the four; per instance, then averaged)", "",
             *_rank_table(main), "",
             "## ROMUL's win / tie / loss against each baseline (cells)", "",
             *_wtl_table(cells, verdicts), ""]
    peers = [r for r in rows if r.policy in PEERS]
    if peers:
        lines += _peer_section(main, peers)
    ablations = [r for r in rows if r.policy not in (*MAIN, *PEERS) and r.variant == ""]
    if ablations:
        lines += ["## Ablations (each ROMUL rule removed or replaced; the cells they ran on)", "",
                  *_ablation_table(main, ablations), ""]
    lines += ["## Every cell: median [first quartile, third quartile] over instances", "",
              "Bold: the best median of the four. The figure families.png shows the mean ranks per population.", ""]
    for family in FAMILIES:
        mine = [c for c in cells if c[0] == family]
        if not mine:
            continue
        lines += [f"### {FAMILIES[family].title}", "", DESCRIPTIONS[family] + ".", "",
                  "| population | budget | " + " | ".join(MAIN) + " | " + " | ".join(f"vs {b}" for b in BASELINES)
                  + " |", "|---|---|" + "---|" * (len(MAIN) + len(BASELINES))]
        for c in mine:
            summary = {p: Summary.of(list(table[c][p].values())) for p in MAIN}
            best = max(s.median for s in summary.values())
            medians = [_summary_cell(summary[p], summary[p].median == best) for p in MAIN]
            lines.append(f"| {c[1]} | {c[2]} | " + " | ".join(medians) + " | "
                         + " | ".join(verdicts[(c, b)].text() for b in BASELINES) + " |")
        lines.append("")
    lines += ["## How these numbers were produced", ""]
    lines += [f"- `{p.command}`: {', '.join(p.policies)}{f' ({p.variant})' if p.variant else ''} on "
              f"{', '.join(p.families)}; {p.instances} instances, populations {', '.join(map(str, p.populations))}, "
              f"budgets {', '.join(map(str, p.budgets))}; {p.wall_seconds:.0f} s wall ({p.cpu_seconds:.0f} s of runs) "
              f"on {p.machine}." for p in provenance]
    return "\n".join(lines) + "\n"


def _summary_cell(s: Summary, bold: bool) -> str:
    text = f"{s.median:.4g} [{s.q1:.4g}, {s.q3:.4g}]"
    return f"**{text}**" if bold else text


# Issue 24's "significantly ahead" targets: (family, baseline or peer, smallest population it applies to).
AHEAD = (("schedule", "pbt", 4), ("far_start", "pbt", 4), ("short_long", "random", 8), ("deceptive", "random", 8))
PEERS_AHEAD = (("schedule", "mf-pbt"), ("far_start", "mf-pbt"), ("schedule", "ray-pbt"), ("far_start", "ray-pbt"))


def _targets(cells: list[tuple[str, int, int]], table: dict, verdicts: dict) -> list[str]:
    """Each target of issue 24 on hopt's own baselines, checked, with the cells that miss it and by how much."""
    missed = []  # (cell, the leader ROMUL is significantly behind)
    for c in cells:
        medians = {p: float(np.median(list(table[c][p].values()))) for p in MAIN}
        leader = max(MAIN, key=lambda p: medians[p])
        if leader != "romul" and verdicts[(c, leader)].outcome == "loss":
            missed.append((c, leader))
    lines = [f"- ROMUL best (median) or statistically tied with the best: {len(cells) - len(missed)} of "
             f"{len(cells)} cells (target: every cell) — {'met' if not missed else 'MISSED'}{':' if missed else '.'}"]
    lines += [_miss(c, leader, table, verdicts) for c, leader in missed]
    losses = [(c, b) for c in cells for b in BASELINES if verdicts[(c, b)].outcome == "loss"]
    lines.append(f"- Significantly behind a baseline: {len(losses)} cell-baseline pairs (target: none) — "
                 f"{'met' if not losses else 'MISSED'}. {_by_chance(list(verdicts.values()))}{':' if losses else ''}")
    lines += [_miss(c, b, table, verdicts) for c, b in losses]
    for family, baseline, smallest in AHEAD:
        mine = [c for c in cells if c[0] == family and c[1] >= smallest]
        if not mine:
            continue
        misses = [c for c in mine if verdicts[(c, baseline)].outcome != "win"]
        lines.append(f"- {FAMILIES[family].title}: significantly ahead of {baseline} in {len(mine) - len(misses)} of "
                     f"{len(mine)} cells at populations >= {smallest} (target: every one) — "
                     f"{'met' if not misses else 'MISSED'}{':' if misses else '.'}")
        lines += [_miss(c, baseline, table, verdicts) for c in misses]
    return lines


def _peer_verdicts(rows: list[Row]) -> tuple[dict, dict]:
    """cell -> policy -> seed -> final over the cells where a peer ran, and ROMUL's verdict against each peer."""
    main = [r for r in rows if r.policy in MAIN and r.variant == ""]
    peers = [r for r in rows if r.policy in PEERS]
    table = _by_cell(main + peers)
    verdicts = {(c, p): verdict(table[c]["romul"], table[c][p]) for c in _cells(table) for p in PEERS
                if p in table[c] and "romul" in table[c]}
    return table, verdicts


def _peer_targets(rows: list[Row]) -> list[str]:
    """The "behind no baseline" target against the published peers, on the cells they ran on."""
    if not any(r.policy in PEERS for r in rows):
        return []
    table, verdicts = _peer_verdicts(rows)
    losses = [key for key, v in verdicts.items() if v.outcome == "loss"]
    lines = [f"- Significantly behind a published peer ({', '.join(sorted({p for _, p in verdicts}))}): "
             f"{len(losses)} of {len(verdicts)} cell-peer pairs (target: none) — "
             f"{'met' if not losses else 'MISSED'}. {_by_chance(list(verdicts.values()))}{':' if losses else ''}"]
    lines += [_miss(c, p, table, verdicts) for c, p in losses]
    for family, peer in PEERS_AHEAD:
        mine = [c for c, p in verdicts if c[0] == family and p == peer]
        if not mine:
            continue
        misses = [c for c in mine if verdicts[(c, peer)].outcome != "win"]
        lines.append(f"- {FAMILIES[family].title}: significantly ahead of {peer} in {len(mine) - len(misses)} of "
                     f"{len(mine)} cells (target: every one) — {'met' if not misses else 'MISSED'}"
                     f"{':' if misses else '.'}")
        lines += [_miss(c, peer, table, verdicts) for c in misses]
    return lines


def _by_chance(verdicts: list[Verdict]) -> str:
    """How many losses these tests would show with no difference at all, and how many survive Holm's correction."""
    kept = [v for v, rejected in zip(verdicts, holm([v.pvalue for v in verdicts], ALPHA))
            if rejected and v.outcome == "loss"]
    return (f"Of {len(verdicts)} such tests at alpha {ALPHA} uncorrected, a policy no different from the others "
            f"would lose up to {len(verdicts) * ALPHA / 2:.1f} by chance; with Holm's correction over the "
            f"{len(verdicts)}, {len(kept)} {'loss remains' if len(kept) == 1 else 'losses remain'}")


def _peer_section(main: list[Row], peers: list[Row]) -> list[str]:
    """The published peers beside hopt's four: mean ranks among all of them, win/tie/loss, every cell."""
    table, verdicts = _peer_verdicts(main + peers)
    cells = sorted({c for c, _ in verdicts}, key=lambda c: (list(FAMILIES).index(c[0]), c[1], c[2]))
    shown = [p for p in PEERS if any(r.policy == p for r in peers)]
    everyone = (*MAIN, *shown)
    within = [r for r in main + peers if r.cell in set(cells)]
    ranked = mean_ranks(within, everyone)
    families = [f for f in FAMILIES if (f, "romul") in ranked]
    populations = sorted({c[1] for c in cells})
    lines = [f"## Published peers beside them (populations {', '.join(map(str, populations))})", "",
             "MF-PBT and a FIRE-style PBT re-implemented from their papers' rules (benchmarks/peers.py says how, "
             "and what was scaled down), and Ray Tune's PBT and PB2 with Ray's own scheduler code "
             "(benchmarks/ray_families.py says which Ray functions run), all deciding inside the same simulator, "
             "instances and workers. Mean rank among "
             f"all {len(everyone)} policies over every (cell, instance) where all of them ran (a peer with fewer "
             f"instances in a cell limits the cell to those; the paired tests below use every instance ROMUL and "
             f"that peer share):", "",
             "| policy | these cells | " + " | ".join(FAMILIES[f].title for f in families) + " |",
             "|---|---|" + "---|" * len(families)]
    for p in everyone:
        lines.append(f"| {p} | {ranked[('all', p)]:.2f} | " + " | ".join(f"{ranked[(f, p)]:.2f}" for f in families)
                     + " |")
    lines += ["", "ROMUL's win / tie / loss against each (cells): " + "; ".join(
        f"{p} {_wtl([verdicts[(c, p)] for c in cells if (c, p) in verdicts])}" for p in shown) + ". Each "
        "median is over that policy's own instances of the cell; each test over the instances both ran.", "",
              "| family | population | budget | romul | " + " | ".join(shown) + " | "
              + " | ".join(f"vs {p}" for p in shown) + " |", "|---|---|---|" + "---|" * (1 + 2 * len(shown))]
    for c in cells:
        summary = {p: Summary.of(list(table[c][p].values())) for p in ("romul", *shown) if p in table[c]}
        best = max(s.median for s in summary.values())
        medians = [_summary_cell(summary[p], summary[p].median == best) if p in summary else "" for p in
                   ("romul", *shown)]
        tests = [verdicts[(c, p)].text() if (c, p) in verdicts else "" for p in shown]
        lines.append(f"| {FAMILIES[c[0]].title} | {c[1]} | {c[2]} | " + " | ".join(medians + tests) + " |")
    return lines + [""]


def _miss(c: tuple[str, int, int], baseline: str, table: dict, verdicts: dict) -> str:
    v = verdicts[(c, baseline)]
    romul, other = (float(np.median(list(table[c][p].values()))) for p in ("romul", baseline))
    return (f"  - {c[0]}, population {c[1]}, budget {c[2]} vs {baseline}: {v.outcome}, p={v.pvalue:.2g}; medians "
            f"{romul:.4g} vs {other:.4g}, median paired difference {v.median_difference:+.3g}")


def _rank_table(rows: list[Row]) -> list[str]:
    ranked = mean_ranks(rows, MAIN)
    families = [f for f in FAMILIES if (f, "romul") in ranked]
    lines = ["| policy | whole suite | " + " | ".join(FAMILIES[f].title for f in families) + " |",
             "|---|---|" + "---|" * len(families)]
    for p in MAIN:
        lines.append(f"| {p} | {ranked[('all', p)]:.2f} | " + " | ".join(f"{ranked[(f, p)]:.2f}" for f in families)
                     + " |")
    return lines


def _wtl_table(cells: list[tuple[str, int, int]], verdicts: dict) -> list[str]:
    families = [f for f in FAMILIES if any(c[0] == f for c in cells)]
    lines = ["| against | all cells | " + " | ".join(FAMILIES[f].title for f in families) + " |",
             "|---|---|" + "---|" * len(families)]
    for b in BASELINES:
        groups = [cells] + [[c for c in cells if c[0] == f] for f in families]
        lines.append(f"| {b} | " + " | ".join(_wtl([verdicts[(c, b)] for c in g]) for g in groups) + " |")
    return lines


def _wtl(verdicts: list[Verdict]) -> str:
    return "/".join(str(sum(v.outcome == o for v in verdicts)) for o in ("win", "tie", "loss"))


def _ablation_table(main: list[Row], ablations: list[Row]) -> list[str]:
    """Per ablation: romul against it (W/T/L over cells), and its mean rank in romul's place."""
    lines = ["| ablation | cells | romul vs it (W/T/L) | its mean rank in romul's place | romul's, same cells |",
             "|---|---|---|---|---|"]
    for name in sorted({r.policy for r in ablations}):
        own = [r for r in ablations if r.policy == name]
        cells = {r.cell for r in own}
        same = [r for r in main if r.cell in cells]
        table = _by_cell(same + own)
        verdicts = [verdict(table[c]["romul"], table[c][name]) for c in sorted(cells) if "romul" in table[c]]
        replaced = [Row(**{**asdict(r), "policy": "romul"}) for r in own] + [r for r in same if r.policy != "romul"]
        theirs = mean_ranks(replaced, MAIN).get(("all", "romul"), float("nan"))
        ours = mean_ranks(same, MAIN).get(("all", "romul"), float("nan"))
        lines.append(f"| {name} | {len(cells)} | {_wtl(verdicts)} | {theirs:.2f} | {ours:.2f} |")
    return lines


def render_tune(rows: list[Row], provenance: list[Invocation]) -> str:
    """Whole-suite score of every ROMUL variant tried on the tune half, against the same baselines."""
    baselines = [r for r in rows if r.policy in BASELINES and r.variant == ""]
    variants = sorted({r.variant for r in rows if r.policy == "romul"}, key=lambda v: (v != "", v))
    families = [f for f in FAMILIES if any(r.family == f for r in rows)]
    lines = ["# ROMUL variants on the tune half (even instance seeds)", "",
             f"Mean rank among romul (the variant), pbt, de, random (1 = best), over every (cell, instance) where "
             f"all four ran; W/T/L: the variant against each baseline over cells (Wilcoxon, alpha {ALPHA}); then the "
             f"median final true score per family over all its cells.", "",
             "| variant | whole suite | " + " | ".join(FAMILIES[f].title for f in families)
             + " | W/T/L vs pbt | vs de | vs random |", "|---|---|" + "---|" * (len(families) + 3)]
    for variant in variants:
        romul = [r for r in rows if r.policy == "romul" and r.variant == variant]
        ranked = mean_ranks(romul + baselines, MAIN)
        table = _by_cell(romul + baselines)
        cells = [c for c in _cells(table) if set(MAIN) <= table[c].keys()]
        wtl = [_wtl([verdict(table[c]["romul"], table[c][b]) for c in cells]) for b in BASELINES]
        lines.append(f"| {variant or 'shipped defaults'} | {ranked.get(('all', 'romul'), float('nan')):.3f} | "
                     + " | ".join(f"{ranked.get((f, 'romul'), float('nan')):.2f}" for f in families)
                     + " | " + " | ".join(wtl) + " |")
    lines += ["", "Baselines' mean ranks (against the shipped defaults): " + ", ".join(
        f"{p} {mean_ranks([r for r in rows if r.variant == '' and r.policy in MAIN], MAIN).get(('all', p), float('nan')):.3f}"
        for p in BASELINES), "", "Median final true score per family (all cells pooled):", "",
        "| variant | " + " | ".join(FAMILIES[f].title for f in families) + " |", "|---|" + "---|" * len(families)]
    for variant in variants:
        pooled = [float(np.median([r.final for r in rows if r.policy == "romul" and r.variant == variant
                                   and r.family == f] or [float("nan")])) for f in families]
        lines.append(f"| {variant or 'shipped defaults'} | " + " | ".join(f"{m:.4g}" for m in pooled) + " |")
    for p in BASELINES:
        pooled = [float(np.median([r.final for r in baselines if r.policy == p and r.family == f] or [float("nan")]))
                  for f in families]
        lines.append(f"| {p} | " + " | ".join(f"{m:.4g}" for m in pooled) + " |")
    lines += ["", "## How these numbers were produced", ""]
    lines += [f"- `{p.command}`: {p.wall_seconds:.0f} s wall ({p.cpu_seconds:.0f} s of runs) on {p.machine}."
              for p in provenance]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    """Mean rank of each main policy against population, one panel per family, one line style per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in rows if r.policy in MAIN and r.variant == ""]
    families = [f for f in FAMILIES if any(r.family == f for r in main)]
    budgets = sorted({r.budget for r in main})
    columns = min(3, len(families))
    fig, axes = plt.subplots(-(-len(families) // columns), columns, figsize=(4.6 * columns, 3.4 * -(-len(families)
                             // columns) + 0.7), squeeze=False)
    for ax in axes.flat[len(families):]:
        ax.set_visible(False)
    colours = dict(zip(MAIN, ("C3", "C0", "C2", "C7")))
    for ax, family in zip(axes.flat, families):
        for budget, style in zip(budgets, ("--", "-", ":")):
            mine = [r for r in main if r.family == family and r.budget == budget]
            populations = sorted({r.population for r in mine})
            per_population = [mean_ranks([r for r in mine if r.population == n], MAIN) for n in populations]
            for p in MAIN:
                ax.plot(populations, [m.get((family, p), float("nan")) for m in per_population], style,
                        color=colours[p], marker="o", ms=3, lw=2.2 if p == "romul" else 1.2,
                        label=f"{p}, budget {budget}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.population for r in main}), [str(n) for n in sorted({r.population for r in main})])
        ax.set_ylim(4.2, 0.8)
        ax.set_title(FAMILIES[family].title)
        ax.set_xlabel("population")
        ax.set_ylabel("mean rank (1 = best)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(MAIN), frameon=False, fontsize=8)
    fig.suptitle("Mean rank of the four policies per family (report half); lower is better")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_rows(path: Path) -> list[Row]:
    """The rows of a runs.csv (none if it does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        types = {f.name: f.type for f in fields(Row)}
        cast = {"int": int, "float": float, "str": str}
        return [Row(**{k: cast[types[k]](v) for k, v in row.items()}) for row in csv.DictReader(handle)]


def write_rows(path: Path, rows: list[Row]) -> None:
    """Write rows to a runs.csv, scores at full precision."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([f.name for f in fields(Row)])
        writer.writerows([*astuple(r)[:-2], repr(r.final), f"{r.seconds:.3f}"] for r in rows)


def read_provenance(out: Path) -> list[Invocation]:
    """The invocations recorded in `out` (none if there are none yet)."""
    path = out / PROVENANCE
    if not path.exists():
        return []
    tuples = {"policies", "families", "populations", "budgets"}
    return [Invocation(**{k: tuple(v) if k in tuples else v for k, v in p.items()}) for p in json.loads(path.read_text())]
