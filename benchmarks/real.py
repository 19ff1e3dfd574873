"""Real training judged on held-out data: each policy through real `hopt run` workers, scored by its exported best model's test metric.

    python -m benchmarks.real                              # 3 tasks x 4 policies x seeds 0-4 -> benchmarks/results/real
    python -m benchmarks.real --tasks ppo --seeds 1 --out /tmp/ppo-real   # one task, one seed, all four policies
    python -m benchmarks.real --seeds 1 --population 4 --intervals 2 --steps 5 --out /tmp/smoke   # a smoke run
    python -m benchmarks.real --tasks charlm --policies romul --seeds 10 --first-seed 100 --romul F=0.8 --out /tmp/f
                                                           # a ROMUL setting tried on the tune seeds

Each (task, policy, seed) is one experiment: the task's recipe from recipes/ with its `seed` and
`policy` set and nothing else changed (its space, initial ranges and budget are what a user runs),
trained by `hopt run RECIPE --dir D --workers 2`; then `hopt best --dir D --out D/best --json` exports
the model with the best validation score, and the row records that model's test metric, which no
policy ever sees. Rows are appended to `--out`/runs.csv as each run ends; a run already there is
skipped, so the benchmark resumes where it stopped. The table is rendered again from every row.

The tasks: `digits` (a CNN on scikit-learn's digits, accuracy), `charlm` (a character LSTM, bits per
character) and `ppo` (PPO on CartPole-v1, the mean return of the greedy policy on seeded episodes, the
test episodes' seeds disjoint from the validation and training ones).
"""
from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import REPO, key_values
from benchmarks.machine import Machine, load_average
from benchmarks.report import Summary
from benchmarks.stats import wilcoxon
from hopt_cli.errors import RecipeError
from hopt_cli.policies import resolve

POLICIES = ("romul", "pbt", "de", "random")
WORKERS = 2
RUNS, PROVENANCE, TABLE = "runs.csv", "provenance.json", "table.md"
FIELDS = ["task", "policy", "seed", "val", "test", "member", "interval", "population", "intervals", "steps",
          "seconds"]


@dataclass(frozen=True)
class Task:
    """A real trainable: its recipe, the metric the policy optimises and the held-out one reported."""

    recipe: str
    val: str
    test: str
    maximize: bool
    decimals: int


TASKS = {
    "digits": Task("recipes/real-digits.yaml", "val_acc", "test_acc", True, 4),
    "charlm": Task("recipes/real-charlm.yaml", "val_bpc", "test_bpc", False, 4),
    "ppo": Task("recipes/ppo-cartpole.yaml", "val_return", "test_return", True, 1),
}


@dataclass(frozen=True)
class Job:
    task: str
    policy: str
    seed: int


def recipe_for(job: Job, sizes: dict[str, int], romul: dict[str, Any]) -> dict[str, Any]:
    """The task's shipped recipe with this job's seed and policy (with `romul`'s settings if it is ROMUL's, and
    a smoke run's sizes, if given)."""
    recipe = yaml.safe_load((REPO / TASKS[job.task].recipe).read_text())
    policy = {"name": job.policy, **(romul if job.policy == "romul" else {})}
    recipe.update(name=f"{job.task}-{job.policy}-{job.seed}", seed=job.seed, policy=policy, **sizes)
    return recipe


def hopt(*args: str) -> subprocess.CompletedProcess:
    """Run the hopt command line as a user would, from the repository (the recipes' project)."""
    return subprocess.run([sys.executable, "-m", "hopt_cli", *args], cwd=REPO, capture_output=True, text=True)


def run_job(job: Job, sizes: dict[str, int], romul: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """Train one experiment with `hopt run` (resuming it if a previous attempt stopped), export its best."""
    task = TASKS[job.task]
    recipe = recipe_for(job, sizes, romul)
    folder = scratch / recipe["name"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    recipe_path = scratch / f"{recipe['name']}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    started = time.perf_counter()
    trained = hopt("run", str(recipe_path), "--dir", str(folder), "--workers", str(WORKERS))
    seconds = time.perf_counter() - started
    if trained.returncode != 0:
        raise SystemExit(f"{recipe['name']}: hopt run failed (status {trained.returncode}):\n{trained.stderr[-2000:]}")
    exported = hopt("best", "--dir", str(folder), "--out", str(scratch / f"{recipe['name']}-best"), "--json")
    if exported.returncode != 0:
        raise SystemExit(f"{recipe['name']}: hopt best failed:\n{exported.stderr[-2000:]}")
    best = json.loads(exported.stdout)
    return {"task": job.task, "policy": job.policy, "seed": job.seed, "val": best["metrics"][task.val],
            "test": best["metrics"][task.test], "member": best["member"], "interval": best["interval"],
            "population": recipe["population"], "intervals": recipe["intervals"], "steps": recipe["steps"],
            "seconds": round(seconds, 1)}


def read_rows(out: Path) -> list[dict[str, Any]]:
    """Every finished run recorded in `out`."""
    path = out / RUNS
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [{**row, "seed": int(row["seed"])} for row in csv.DictReader(handle)]


def read_provenance(out: Path) -> list[dict[str, Any]]:
    """The commands that made the runs in `out`, oldest first."""
    path = out / PROVENANCE
    return json.loads(path.read_text()) if path.exists() else []


def append_row(out: Path, row: dict[str, Any]) -> None:
    """Record one finished run at once, so an interrupted benchmark keeps it."""
    path = out / RUNS
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())


def render_table(rows: list[dict[str, Any]], provenance: list[dict[str, Any]]) -> str:
    """The markdown table: per task x policy, median [IQR] over seeds of the test and the val metric."""
    lines = ["# Real training, judged on held-out data", "",
             "Each cell: median [first quartile, third quartile] over seeds of the exported best model (best "
             "validation score of the whole run) of each experiment, trained by `hopt run --workers 2` from the "
             "task's shipped recipe with only `seed` and `policy` set. The policy sees only the validation "
             "metric; the test metric is of data no policy and no training step ever saw. Bold: the best "
             "median test metric of the task. Time: median wall seconds of one `hopt run`.", ""]
    settings = next((entry["romul"] for entry in provenance if entry.get("romul")), {})
    if settings:
        lines += ["ROMUL's runs here are a trial rule, not the shipped one: its recipe settings were "
                  + ", ".join(f"`{key}: {value}`" for key, value in settings.items()) + ".", ""]
    for name, task in TASKS.items():
        mine = [r for r in rows if r["task"] == name]
        if not mine:
            continue
        better = "higher" if task.maximize else "lower"
        sizes = sorted({(r["population"], r["intervals"], r["steps"]) for r in mine})
        shape = "; ".join(f"population {p}, {i} intervals of {s} steps" for p, i, s in sizes)
        lines += [f"## {name} ({task.recipe}: {shape}; {better} is better)", "",
                  f"| policy | n | {task.test} (reported) | {task.val} (what the policy optimised) | time (s) |",
                  "|---|---|---|---|---|"]
        stats = {p: _summaries(mine, p) for p in POLICIES if any(r["policy"] == p for r in mine)}
        sign = 1.0 if task.maximize else -1.0
        best = max(sign * test.median for test, _, _ in stats.values())
        top = [p for p, (test, _, _) in stats.items() if sign * test.median == best]
        for policy, (test, val, seconds) in stats.items():
            cell = test.cell(task.decimals)
            lines.append(f"| {policy} | {test.n} | {f'**{cell}**' if policy in top else cell} | "
                         f"{val.cell(task.decimals)} | {seconds:.0f} |")
        lines += ["", _verdict(mine, stats, task, top), ""]
    lines += ["## Provenance", ""]
    for entry in provenance:
        lines.append(f"- `{entry['command']}`: {entry['runs']} runs in {entry['wall_seconds']:.0f} s on "
                     f"{entry['machine']['cpu']}, {entry['machine']['cores']} cores (load {entry['load_before']} "
                     f"before), Python {entry['machine']['python']}, torch {entry['torch']}, hopt at "
                     f"{entry['machine']['commit']}")
    return "\n".join(lines) + "\n"


def _summaries(rows: list[dict[str, Any]], policy: str) -> tuple[Summary, Summary, float]:
    mine = [r for r in rows if r["policy"] == policy]
    return (Summary.of([float(r["test"]) for r in mine]), Summary.of([float(r["val"]) for r in mine]),
            float(np.median([float(r["seconds"]) for r in mine])))


def _verdict(rows: list[dict[str, Any]], stats: dict[str, tuple[Summary, Summary, float]], task: Task,
             top: list[str]) -> str:
    """Whether ROMUL has the best median test metric (alone or tied), and its paired wins/ties/losses by seed."""
    if "romul" not in stats:
        return f"Best median {task.test}: {', '.join(top)}."
    sign = 1.0 if task.maximize else -1.0
    by = {(r["policy"], r["seed"]): sign * float(r["test"]) for r in rows}
    pairs = []
    for other in stats:
        if other == "romul":
            continue
        seeds = [s for (p, s) in by if p == "romul" and (other, s) in by]
        wins = sum(by["romul", s] > by[other, s] for s in seeds)
        ties = sum(by["romul", s] == by[other, s] for s in seeds)
        test = wilcoxon([by["romul", s] - by[other, s] for s in seeds])
        pairs.append(f"{wins}/{ties}/{len(seeds) - wins - ties} against {other} (p = {test.pvalue:.3g})")
    others = ", ".join(p for p in top if p != "romul")
    if "romul" not in top:
        head = f"ROMUL does NOT have the best median test metric ({others} has it)"
    else:
        head = "ROMUL has the best median test metric" + (f", tied with {others}" if others else "")
    return (f"{head}. ROMUL's wins/ties/losses on {task.test}, paired by seed, with the exact Wilcoxon signed-rank "
            f"test's two-sided p: {', '.join(pairs)}.")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds FIRST..FIRST+N-1 per (task, policy)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first seed (rules are tried on seeds from 100, reported on seeds from 0)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}")
    parser.add_argument("--population", type=int, help="override the recipes' population (smoke runs only)")
    parser.add_argument("--intervals", type=int, help="override the recipes' intervals (smoke runs only)")
    parser.add_argument("--steps", type=int, help="override the recipes' steps (smoke runs only)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "real")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/hopt-real"),
                        help="where the experiment directories go (checkpoints: not results)")
    parser.add_argument("--romul", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe settings for ROMUL's runs in place of its defaults (a rule to try on the tune "
                             "seeds), e.g. F=0.8; one set per --out")
    args = parser.parse_args(argv)
    args.tasks, args.policies = args.tasks.split(","), args.policies.split(",")
    unknown = [t for t in args.tasks if t not in TASKS] + [p for p in args.policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown task or policy: {', '.join(unknown)}")
    try:
        args.romul = key_values(args.romul)
        resolve("romul", args.romul)
    except (RecipeError, ValueError) as err:
        parser.error(f"--romul: {err}")
    if any(entry.get("romul", {}) != args.romul for entry in read_provenance(args.out)):
        parser.error(f"--romul: {args.out} was made with other ROMUL settings; give this set another --out")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = {k: v for k in ("population", "intervals", "steps") if (v := getattr(args, k)) is not None}
    args.out.mkdir(parents=True, exist_ok=True)
    done = {(r["task"], r["policy"], r["seed"]) for r in read_rows(args.out)}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [Job(task, policy, seed) for seed in seeds for task in args.tasks for policy in args.policies
            if (task, policy, seed) not in done]
    load = load_average()
    started = time.perf_counter()
    for number, job in enumerate(jobs, 1):
        row = run_job(job, sizes, args.romul, args.scratch / args.out.resolve().name)
        append_row(args.out, row)
        print(f"{number}/{len(jobs)} {job.task} {job.policy} seed {job.seed}: {TASKS[job.task].test} "
              f"{float(row['test']):.4f} in {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    provenance = read_provenance(args.out)
    if jobs:
        command = "python -m benchmarks.real " + shlex.join(argv if argv is not None else sys.argv[1:])
        trial = {"romul": args.romul} if args.romul else {}
        provenance.append({"command": command.strip(), "runs": len(jobs), **trial,
                           "run_command": f"hopt run RECIPE --dir D --workers {WORKERS}; "
                                          "hopt best --dir D --out D/best --json",
                           "machine": asdict(Machine.describe(args.scratch)), "torch": importlib.metadata.version("torch"),
                           "load_before": load, "load_after": load_average(),
                           "wall_seconds": round(time.perf_counter() - started, 1),
                           "finished": time.strftime("%Y-%m-%d %H:%M:%S %z")})
        (args.out / PROVENANCE).write_text(json.dumps(provenance, indent=1) + "\n")
    (args.out / TABLE).write_text(render_table(read_rows(args.out), provenance))
    print(f"{len(jobs)} runs in {time.perf_counter() - started:.0f} s; table in {args.out / TABLE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
