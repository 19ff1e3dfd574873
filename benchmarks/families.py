"""The family benchmark of ROMUL.md: policies on fresh instances of problem families, on the simulator.

    python -m benchmarks.families                            # the report half: romul, pbt, de, random
    python -m benchmarks.families --half tune                # the half that defaults are chosen on
    python -m benchmarks.families --half tune --policies romul --romul CR=0.2   # a variant to try

Each (family, instance seed, population, budget, policy) is one simulated experiment with the policy code
of `hopt worker` (hopt_cli.simulator) and asynchronous workers. Instance seeds are even in the tune half
and odd in the report half, so the halves are disjoint by construction. Rows are merged into
`--out/runs.csv`; `table.md` and the figure are rendered from the report half only, and `tune.md` scores
every variant tried on the tune half (the numbers benchmarks/results/tuning-log.md quotes).
"""
from __future__ import annotations

import argparse
import multiprocessing
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from benchmarks.family_report import Invocation, Row, merge
from benchmarks.common import REPO, SCRATCH, key_values
from benchmarks.machine import cpu_summary
from benchmarks.policies import ABLATIONS, registry
from benchmarks.report import best_curve
from hopt_cli.errors import RecipeError
from hopt_cli.policies import Policy
from hopt_cli.recipe import Recipe
from hopt_cli.simulator import simulate
from workers.families import FAMILIES, Instance, draw

HALVES = {"tune": 0, "report": 1}
MAIN = ("romul", "pbt", "de", "random")
POLICIES = registry()
OUT = REPO / "benchmarks" / "results" / "families"
QUICK = {"instances": 2, "populations": [4, 8], "budgets": [6]}


def instance_seeds(half: str, count: int) -> list[int]:
    """The first `count` instance seeds of a half: even for tune, odd for report (disjoint by construction)."""
    return [2 * i + HALVES[half] for i in range(count)]


def workers_for(population: int) -> int:
    """Simulated asynchronous workers: half the population, at least 2 and at most 8 (one node's GPUs)."""
    return min(8, max(2, population // 2))


@dataclass(frozen=True)
class Job:
    half: str
    family: str
    policy: str
    variant: str  # the --romul overrides of romul and its ablations, "" for the shipped defaults
    seed: int
    population: int
    budget: int


def recipe_for(instance: Instance, job: Job) -> Recipe:
    """The experiment of one job: the instance's space, the job's size, the instance seed."""
    return Recipe.from_dict({
        "name": f"{job.family}-{job.seed}", "seed": job.seed, "objective": {"metric": "score", "mode": "max"},
        "population": job.population, "intervals": job.budget, "space": instance.space,
        "worker": "workers.families:Instance",  # documentation only: simulate() is handed the instance itself
    })


def run_job(job: Job, policy: Policy | None = None) -> Row:
    """One simulated experiment; its result is the final true score of the best observed member.

    `policy` decides in place of the job's registered one (a benchmark adapter: benchmarks/ray_families.py)."""
    started = time.perf_counter()
    instance = draw(job.family, job.seed, job.budget)
    recipe = recipe_for(instance, job)
    simulation = simulate(recipe, workers=workers_for(job.population), trainable=instance, scratch=SCRATCH,
                          policy=policy or POLICIES[job.policy])
    final = best_curve(simulation.commits, job.budget)[-1]
    return Row(job.half, job.family, job.population, job.budget, job.policy, job.variant, job.seed,
               instance.noise, final, time.perf_counter() - started)


def run_all(jobs: list[Job], processes: int) -> list[Row]:
    """Run the jobs, largest first, on `processes` processes; progress goes to stderr."""
    jobs = sorted(jobs, key=lambda j: -j.population * j.budget)
    rows = []
    step = max(1, len(jobs) // 20)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for done, row in enumerate(pool.imap_unordered(run_job, jobs), 1):
            rows.append(row)
            if done % step == 0 or done == len(jobs):
                print(f"{done}/{len(jobs)} runs", file=sys.stderr, flush=True)
    return rows


def suite_parser(description: str, policies: Iterable[str], default: str, populations: str, processes: int,
                 quick: dict[str, Any]) -> argparse.ArgumentParser:
    """The options of a run of the suite: which half, policies, families, instances, sizes, processes, out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--half", choices=tuple(HALVES), default="report")
    parser.add_argument("--policies", default=default, help=f"comma-separated, of {', '.join(policies)}")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--instances", type=int, default=20, help="instances per cell (the first seeds of the half)")
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first N of those seeds (already run: a larger report in chunks)")
    parser.add_argument("--populations", default=populations)
    parser.add_argument("--budgets", default="20,60", help="intervals per member")
    parser.add_argument("--processes", type=int, default=processes, help="local processes running the simulations")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {quick['instances']} instances, populations "
                             f"{','.join(map(str, quick['populations']))}, budget {quick['budgets'][0]}")
    return parser


def read_suite(parser: argparse.ArgumentParser, args: argparse.Namespace, policies: Iterable[str],
               quick: dict[str, Any]) -> argparse.Namespace:
    """The suite options of `args` as lists; an unknown policy or family is the parser's error."""
    args.policies = args.policies.split(",")
    args.families = args.families.split(",")
    args.populations = [int(p) for p in args.populations.split(",")]
    args.budgets = [int(b) for b in args.budgets.split(",")]
    if args.quick:
        args.instances, args.populations, args.budgets = quick["instances"], quick["populations"], quick["budgets"]
    unknown = [p for p in args.policies if p not in policies] + [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown policy or family: {', '.join(unknown)}")
    return args


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = suite_parser(__doc__.splitlines()[0], POLICIES, ",".join(MAIN), "4,8,16,32", 2, QUICK)
    parser.add_argument("--romul", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override ROMUL's defaults (in romul and its ablations), e.g. CR=0.2")
    args = parser.parse_args(argv)
    try:
        POLICIES.update(registry(key_values(args.romul)))  # module state, so the pool's forked processes see it
    except (RecipeError, ValueError) as err:
        parser.error(f"--romul: {err}")
    if args.romul and args.half == "report":
        parser.error("--romul: a variant is tried on the tune half (--half tune); the report half runs the shipped "
                     "rules")
    args.variant = " ".join(args.romul)
    return read_suite(parser, args, POLICIES, QUICK)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    seeds = instance_seeds(args.half, args.instances)[args.skip:]
    jobs = [Job(args.half, family, policy, args.variant if policy == "romul" or policy in ABLATIONS else "",
                seed, population, budget)
            for family in args.families for policy in args.policies for seed in seeds
            for population in args.populations for budget in args.budgets]
    rows = run_all(jobs, args.processes)
    command = "python -m benchmarks.families " + shlex.join(argv if argv is not None else sys.argv[1:])
    invocation = Invocation(command.strip(), args.half, tuple(args.policies), args.variant, tuple(args.families),
                            args.instances, tuple(args.populations), tuple(args.budgets), cpu_summary(),
                            round(time.perf_counter() - started, 1), round(sum(r.seconds for r in rows), 1))
    merge(args.out, rows, invocation)
    print(f"{len(rows)} runs in {invocation.wall_seconds:.0f} s; results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
