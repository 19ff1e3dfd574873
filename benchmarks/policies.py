"""The policy benchmark of ROMUL.md: toys x policies x seeds on the simulator, ablations, and Ray Tune's PBT.

    python -m benchmarks.policies                      # hopt's policies and ablations -> benchmarks/results
    python -m benchmarks.policies --policies ray-pbt   # Ray Tune's PBT, from an environment with ray[tune]

Each (toy, policy, seed) is one simulated experiment with the real policy code (hopt_cli.simulator);
the rows are merged into `--out`, and the table and plot are rendered again from everything there.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import multiprocessing
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import REPO, SCRATCH, toy_recipe
from benchmarks.peers import PEERS
from benchmarks.machine import cpu_summary
from benchmarks.report import LABELS, TOYS, Invocation, Run, best_curve, merge
from hopt_cli.errors import RecipeError
from hopt_cli.policies import Policy, make_policy
from hopt_cli.policies.romul import SWITCHES
from hopt_cli.simulator import simulate

ABLATIONS: dict[str, dict[str, Any]] = {
    "romul-no-ready": {"wait": False},
    "romul-no-equal-time": {"equal_time": False},
    "romul-last-score": {"robust": False},
    "romul-pbt-select": {"rank_select": False},
    "romul-fixed-step": {"adapt": False},
    "romul-pbt-move": {"de_move": False},
    "romul-no-explorers": {"explorers": 0.0},
}


def registry(romul_settings: dict[str, Any] | None = None) -> dict[str, Policy]:
    """Every benchmarked policy simulated in hopt (its own, MF-PBT and FIRE-PBT); `romul_settings` override ROMUL's defaults in romul and its ablations
    (its settings, and its ablation switches, which only the constructor takes)."""
    settings = dict(romul_settings or {})
    switches = {key: settings.pop(key) for key in list(settings) if key in SWITCHES}
    romul = dataclasses.replace(make_policy("romul", settings), **switches)
    baselines = {name: make_policy(name) for name in ("pbt", "de", "random")}
    return {"romul": romul, **baselines, **PEERS,
            **{name: dataclasses.replace(romul, **change) for name, change in ABLATIONS.items()}}


POLICIES = registry()
RAY = "ray-pbt"
assert set(POLICIES) | {RAY} == set(LABELS)


@dataclass(frozen=True)
class Job:
    toy: str
    policy: str
    seed: int
    intervals: int
    population: int
    workers: int


def run_job(job: Job) -> Run:
    """One simulated experiment of a hopt policy."""
    started = time.perf_counter()
    recipe = toy_recipe(job.toy, job.seed, job.intervals, job.population)
    simulation = simulate(recipe, workers=job.workers, scratch=SCRATCH, policy=POLICIES[job.policy])
    curve = best_curve(simulation.commits, recipe.intervals, 1.0 if recipe.objective.maximize else -1.0)
    return Run(job.toy, job.policy, job.seed, curve, time.perf_counter() - started)


def run_hopt(jobs: list[Job], processes: int) -> list[Run]:
    """Run the jobs on a pool of `processes`, printing progress to stderr."""
    runs = []
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for done, run in enumerate(pool.imap_unordered(run_job, jobs), 1):
            runs.append(run)
            if done % 20 == 0 or done == len(jobs):
                print(f"{done}/{len(jobs)} runs", file=sys.stderr, flush=True)
    return runs


def ray_runs(args: argparse.Namespace) -> list[Run]:
    """Ray Tune's PBT rows; Ray is imported only here, and only its absence is turned into a message."""
    try:
        from benchmarks.ray_pbt import run_ray
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise SystemExit(f"{RAY} needs Ray Tune, which hopt does not depend on: run the benchmark from an "
                         "environment with `pip install \"ray[tune]\" matplotlib numpy pyyaml click filelock`")
    return run_ray(args.toys, args.seeds, args.intervals, args.population, args.workers, args.processes)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 per (toy, policy)")
    parser.add_argument("--toys", default=",".join(TOYS), help=f"comma-separated, of {', '.join(TOYS)}")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"comma-separated, of {', '.join([*POLICIES, RAY])}")
    parser.add_argument("--ray", action="store_true", help=f"also run Ray Tune's PBT ({RAY}); needs ray[tune]")
    parser.add_argument("--workers", type=int, default=4, help="simulated asynchronous workers")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--intervals", type=int, default=40)
    parser.add_argument("--processes", type=int, default=2, help="local processes running the simulations")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--romul", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override ROMUL's defaults (in romul and its ablations), e.g. explorers=0.125")
    args = parser.parse_args(argv)
    try:
        args.romul = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.romul)}
        POLICIES.update(registry(args.romul))  # module state, so the pool's forked processes see it
    except (RecipeError, yaml.YAMLError) as err:
        parser.error(f"--romul: {err}")
    args.toys = args.toys.split(",")
    args.policies = args.policies.split(",") + ([RAY] if args.ray and RAY not in args.policies else [])
    unknown = [t for t in args.toys if t not in TOYS] + [p for p in args.policies if p not in LABELS]
    if unknown:
        parser.error(f"unknown toy or policy: {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    jobs = [Job(toy, policy, seed, args.intervals, args.population, args.workers)
            for seed in range(args.seeds) for toy in args.toys for policy in args.policies if policy != RAY]
    runs = run_hopt(jobs, args.processes) if jobs else []
    if RAY in args.policies:
        runs += ray_runs(args)
    command = "python -m benchmarks.policies " + shlex.join(argv if argv is not None else sys.argv[1:])
    where = cpu_summary() + (f", Ray {importlib.metadata.version('ray')}" if RAY in args.policies else "")
    invocation = Invocation(tuple(args.policies), tuple(args.toys), args.seeds, command.strip(), where,
                            round(time.perf_counter() - started, 1), round(sum(r.seconds for r in runs), 1))
    merge(args.out, runs, invocation)
    print(f"{len(runs)} runs in {invocation.wall_seconds:.0f} s; table in {args.out / 'table.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
