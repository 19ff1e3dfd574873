"""Ray Tune's PBT and PB2 on the family benchmark: Ray's own scheduler code inside hopt's simulator.

    python -m benchmarks.ray_families                                   # ray-pbt and ray-pb2, populations 8 and 16
    python -m benchmarks.ray_families --policies ray-pb2 --instances 5  # the first 5 seeds of the report half
    python -m benchmarks.ray_families --quick                           # a smoke run

Run it from an environment of its own that has Ray Tune; hopt never depends on Ray:

    python3 -m venv /work/ray-venv
    /work/ray-venv/bin/pip install "ray[tune]" scikit-learn torch==2.13.0  # Ray 2.60's PB2 fits sklearn GPs
    /work/ray-venv/bin/pip install -e .

What it is. Each (family, report-half instance seed, population, budget, policy) is one simulated experiment
exactly as in benchmarks/families.py: the same `Job`, `benchmarks.families.run_job` (so the same recipe,
instance, `hopt_cli.simulator.simulate`, asynchronous workers `workers_for(population)`, lognormal interval
durations, and result = `best_curve(commits, budget)[-1]`, the final true score of the member whose
observed score is best). Only the policy differs: an adapter with hopt's Policy interface
(`decide(view, member, space, rng) -> Decision`) whose decisions are made by Ray's scheduler code.

Why an adapter and not Tune's actor loop. A real Tune experiment costs about 30 s of overhead per run on
this machine whatever the trainable (benchmarks/ray_pbt.py: 40 runs of four toys took 1357 s); the suite
at populations 8 and 16 is 480 runs per policy, many hours of mostly Ray overhead. The adapter costs
milliseconds per run for PBT (PB2's GP fits dominate its cost). benchmarks/ray_families_check.py runs the
real Tune loop on a few instances of one cell, to check that the adapter behaves like it. Measured on this
project's 2-core machine, one process: ray-pbt 0.2-0.6 s per run; ray-pb2 about 6 s per run at population
8 x 20 intervals, 11 s at 16 x 20, 23 s at 8 x 60, and more than 12 minutes for one run at 16 x 60 (Ray's
`pb2_utils.select_length` refits the GP for every data length from 200 rows up, at every exploit), so PB2's
16 x 60 cells are out of reach here.

Which Ray code runs (Ray 2.60.0, the version installed when this was written; the invocation record in
provenance.json carries the version actually used). Each adapter holds a real scheduler object,
`ray.tune.schedulers.PopulationBasedTraining` or `ray.tune.schedulers.pb2.PB2`, built with Ray's defaults
(quantile_fraction 0.25; PBT: resample_probability 0.25, perturbation_factors (1.2, 0.8); PB2 its own) and
time_attr "training_iteration", metric "score", mode "max", perturbation_interval 2 (hopt's `ready`, as in
benchmarks/ray_pbt.py). Every trial is a stand-in object (`_Trial`: config, is_finished(), str(); Ray's
`_PBTTrialState` per trial in the scheduler's own `_trial_state`). Called, unchanged:

- `scheduler._save_trial_state(state, time, result, trial)`: records last_score / last_train_time (and,
  for PB2, appends the (trial, time, config, reward) row to `scheduler.data`, the GP's data set);
- `scheduler._quantiles()`: lower and upper quantiles of the unfinished trials that have a last_score,
  sorted by it (ceil(n * 0.25), at most floor(n / 2));
- `scheduler._get_new_config(trial, trial_to_clone)`: for PBT this is the module function
  `ray.tune.schedulers.pbt._explore` (per hyperparameter: resample from the mutation's domain with
  probability 0.25, else multiply by 1.2 or 0.8; choices: resample or shift to a neighbouring value);
  for PB2 the method's own bookkeeping of `current` / `last_exploration_time` around the module function
  `ray.tune.schedulers.pb2._explore` (reward changes per unit time, `_select_config`: sklearn GP with
  `pb2_utils.TV_SquaredExp`, UCB optimised by L-BFGS-B from 10 random starts; when the clone has no
  usable data row yet, the clone's config unchanged).

Reproduced, because it lives in methods that need Tune's controller and real Trial objects
(`PopulationBasedTraining.on_trial_result` in asynchronous mode, `_checkpoint_or_exploit`, `_exploit`):

- Ray's scheduler runs on each reported result; hopt's policy runs when the member is claimed for its next
  interval. A claim of member m after t intervals is Ray's `on_trial_result` at training_iteration t. At
  t = budget Tune stops the trial before calling the scheduler, and hopt claims no finished member, so the
  two agree there. A trial is finished (excluded from the quantiles) once its member has trained the
  whole budget.
- If t - last_perturbation_time < perturbation_interval: continue, nothing recorded. So last_score is the
  score at a trial's last perturbation check, not its latest one, and trials are compared by those
  scores, each taken at its own time (not at equal training time, as hopt's policies compare).
- Otherwise: `_save_trial_state` with the member's latest score; last_perturbation_time = t;
  `_quantiles()`. A trial in the upper quantile marks a checkpoint (Ray saves one), every other trial's
  mark is cleared. A trial in the lower quantile draws `random.choice(upper)`; if that clone has no
  checkpoint mark (it was not in the upper quantile at its own last check), the exploit is skipped and the
  trial continues. Else the new config is `_get_new_config(trial, clone)` (the explore step always runs on
  the clone's config; PB2 may return it unchanged, see above), and the trial takes over the clone's
  last_perturbation_time and last_train_time but keeps its own last_score until its next check, as Ray
  does. Trials outside the lower quantile continue unchanged.

Where it departs from Ray, because hopt's simulator allows no other way:

- The exploiting member continues from the clone's *current* checkpoint (hopt resumes a parent's latest
  commit); Ray restores the checkpoint saved at the clone's last perturbation check, which is the same
  one when the clone has not trained since, and at most a couple of intervals older otherwise.
- Scheduling is hopt's (each interval claimed separately, the free member with the fewest intervals
  first, lognormal durations); Tune runs a trial until its next perturbation check and then pauses it
  when other trials wait, resuming the paused trial with the least training time first.
- Initial configs are hopt's start (uniform in the recipe's `init` box, log-uniform for log parameters),
  the same distribution as Tune sampling the `init`-box domains of benchmarks/ray_pbt.py's `_domain`.

Hyperparameters. Ray works on configs in hyperparameter units: the adapter decodes hopt's unit-cube
coordinates with SearchSpace and encodes Ray's new config back, clipped onto [low, high] (hopt's decoding
clips anyway). A trial's config keeps Ray's unclipped value, as a Tune trial's config does when the
trainable clips (benchmarks/ray_pbt.py), so x1.2 beyond a bound and x0.8 back behave as in Tune. PBT's
mutations: the recipe's `init` box as `tune.uniform` / `tune.loguniform` (`tune.randint` /
`tune.lograndint` for ints), a choice as the list of its values. PB2's bounds: [low, high] per
hyperparameter in its own units (linear, as Ray's PB2 normalises them); a choice, which PB2 cannot
express, is given to PB2 as its hopt coordinate with bounds [0, 1].

Randomness. Ray draws from the global `random` and `np.random`; each check seeds both from the
decision's generator first, so every decision is reproducible from (experiment seed, member, interval).

State. Ray's schedulers are stateful (trial states; PB2's data set), so the adapters are too, unlike
hopt's pure policies: a benchmark adapter only, never a hopt policy. The state is keyed by member index
and built by the first decision of an experiment; `run_job` makes a fresh adapter for every simulated
experiment (inside the pool's process).

Rows are merged into benchmarks/results/families (`--out`), beside hopt's policies, after every group of
runs of one policy, population, budget and family, so an interrupted run loses at most one group and a
rerun skips rows already there (`--redo` runs them again). The family report (table.md there) gives the
peers a section of their own: ROMUL's paired verdict against each, per cell, and mean ranks.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import multiprocessing
import random
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import families
from benchmarks.families import Job, instance_seeds
from benchmarks.family_report import RUNS, Invocation, Row, merge, read_rows
from benchmarks.machine import cpu_summary
from hopt_cli.decision import Decision
from hopt_cli.policies import common
from hopt_cli.population import PopulationView
from hopt_cli.space import Param, SearchSpace

try:
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2
    from ray.tune.schedulers.pbt import _PBTTrialState
except ModuleNotFoundError as err:
    if err.name != "ray":
        raise
    raise SystemExit("benchmarks.ray_families needs Ray Tune, which hopt does not depend on: run it from an "
                     "environment of its own (see this module's docstring)") from err

READY = 2  # Ray's perturbation_interval, in training iterations = hopt intervals (hopt's `ready`)
TIME_ATTR = "training_iteration"
METRIC = "score"
OUT = families.OUT  # beside hopt's policies: the family report shows the peers in a section of their own
QUICK = {"instances": 2, "populations": [8], "budgets": [6]}


class _Trial:
    """What Ray's scheduler methods read of a Tune Trial: config, is_finished(), str() and experiment_tag."""

    def __init__(self, member: int) -> None:
        self.member = member
        self.trial_id = f"member_{member:05d}"
        self.experiment_tag = str(member)
        self.config: dict[str, Any] = {}
        self.finished = False

    def is_finished(self) -> bool:
        return self.finished

    def __str__(self) -> str:
        return self.trial_id

    __repr__ = __str__


class RayAdapter:
    """Ray's asynchronous PBT decision flow on hopt's population view (see the module docstring).

    Stateful (a fresh one per simulated experiment): the scheduler object and one stand-in trial per member.
    """

    name = "ray"

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.trials: list[_Trial] = []
        self.decisions = 0  # intervals claimed, perturbation checks, exploits and skipped exploits, for the record
        self.checks = 0
        self.exploits = 0
        self.skipped = 0

    # what the two schedulers differ in
    def make_scheduler(self, space: SearchSpace) -> Any:
        raise NotImplementedError

    def config(self, space: SearchSpace, coords: tuple[float, ...]) -> dict[str, Any]:
        """Ray's config for hopt's coordinates (hyperparameter units)."""
        return space.decode(coords)

    def coords(self, space: SearchSpace, config: dict[str, Any]) -> np.ndarray:
        """hopt's coordinates for Ray's config, values clipped onto [low, high]."""
        return np.array([p.encode(config[p.name]) if p.is_choice else p.encode(_clip(p, config[p.name]))
                         for p in space.params])

    def decide(self, view: PopulationView, member: int, space: SearchSpace, rng: np.random.Generator) -> Decision:
        self.decisions += 1
        if self.scheduler is None:
            self.scheduler = self.make_scheduler(space)
            self.trials = [_Trial(m) for m in range(view.size)]
            for trial in self.trials:  # PopulationBasedTraining.on_trial_add's state, in member order
                self.scheduler._trial_state[trial] = _PBTTrialState(trial)
        for m, trial in zip(view.members, self.trials):
            trial.finished = m.interval >= view.intervals
        me, trial = view.members[member], self.trials[member]
        if me.checkpoint is None:
            decision = common.start(space, rng)
            trial.config = self.config(space, decision.coords)
            return decision
        scheduler = self.scheduler
        state = scheduler._trial_state[trial]
        now = me.interval  # training_iteration of the result Ray's on_trial_result would see
        if now - state.last_perturbation_time < scheduler._perturbation_interval:
            return common.keep(me)
        self.checks += 1
        random.seed(int(rng.integers(2**32)))  # Ray draws from the global generators
        np.random.seed(int(rng.integers(2**32)))
        scheduler._save_trial_state(state, now, {TIME_ATTR: now, METRIC: me.scores[-1]}, trial)
        state.last_perturbation_time = now
        lower, upper = scheduler._quantiles()
        # _checkpoint_or_exploit: the upper quantile saves a checkpoint, everyone else forgets theirs
        state.last_checkpoint = f"{member}@{now}" if trial in upper else None
        if trial not in lower:
            return common.keep(me)
        clone = random.choice(upper)
        assert clone is not trial
        clone_state = scheduler._trial_state[clone]
        if not clone_state.last_checkpoint:
            self.skipped += 1
            return common.keep(me)
        # _exploit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas on concatenating empty frames, sklearn on GP convergence
            new_config, _ = scheduler._get_new_config(trial, clone)
        state.last_perturbation_time = clone_state.last_perturbation_time
        state.last_train_time = clone_state.last_train_time
        trial.config = new_config
        self.exploits += 1
        parent = view.members[clone.member]
        return common.exploit(me, parent, self.coords(space, new_config), parent.sigma)


class RayPbt(RayAdapter):
    """Ray Tune's PopulationBasedTraining (asynchronous), Ray's defaults, perturbation_interval 2."""

    name = "ray-pbt"

    def make_scheduler(self, space: SearchSpace) -> Any:
        return PopulationBasedTraining(time_attr=TIME_ATTR, metric=METRIC, mode="max", perturbation_interval=READY,
                                       hyperparam_mutations={p.name: mutation(p) for p in space.params})


class RayPb2(RayAdapter):
    """Ray Tune's PB2 (asynchronous), Ray's defaults, perturbation_interval 2, bounds [low, high]."""

    name = "ray-pb2"

    def make_scheduler(self, space: SearchSpace) -> Any:
        return PB2(time_attr=TIME_ATTR, metric=METRIC, mode="max", perturbation_interval=READY,
                   hyperparam_bounds={p.name: pb2_bounds(p) for p in space.params})

    def config(self, space: SearchSpace, coords: tuple[float, ...]) -> dict[str, Any]:
        values = space.decode(coords)
        return {p.name: float(u) if p.is_choice else values[p.name] for p, u in zip(space.params, coords)}

    def coords(self, space: SearchSpace, config: dict[str, Any]) -> np.ndarray:
        return np.array([min(max(float(config[p.name]), 0.0), 1.0) if p.is_choice else p.encode(_clip(p, config[p.name]))
                         for p in space.params])


ADAPTERS: dict[str, Callable[[], RayAdapter]] = {"ray-pbt": RayPbt, "ray-pb2": RayPb2}


def mutation(param: Param) -> Any:
    """PBT's hyperparam_mutations entry: the init box as a Tune domain (a choice: its values as a list)."""
    if param.is_choice:
        return list(param.values)
    low, high = param.init if param.init is not None else (param.low, param.high)
    if param.kind == "int":
        return tune.lograndint(int(low), int(high) + 1) if param.log else tune.randint(int(low), int(high) + 1)
    return tune.loguniform(low, high) if param.log else tune.uniform(low, high)


def pb2_bounds(param: Param) -> list[float]:
    """PB2's hyperparam_bounds entry: [low, high] in the hyperparameter's units ([0, 1] for a choice)."""
    return [0.0, 1.0] if param.is_choice else [float(param.low), float(param.high)]


def _clip(param: Param, value: Any) -> Any:
    return min(max(value, param.low), param.high)


def run_job(job: Job, adapter: RayAdapter | None = None) -> Row:
    """One simulated experiment, `benchmarks.families.run_job` with a fresh adapter as its policy (`adapter`:
    a fresh one the caller keeps, to read its counts)."""
    return families.run_job(job, adapter or ADAPTERS[job.policy]())


def _init_worker() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # one core per process: BLAS threads in PB2's GP fits would take the others


def versions() -> str:
    """The Ray and scikit-learn versions, for the invocation record."""
    found = []
    for name, dist in (("Ray", "ray"), ("scikit-learn", "scikit-learn")):
        try:
            found.append(f"{name} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = families.suite_parser(__doc__.splitlines()[0], ADAPTERS, ",".join(ADAPTERS), "8,16", 1, QUICK)
    parser.add_argument("--redo", action="store_true", help="run again the rows --out already has")
    return families.read_suite(parser, parser.parse_args(argv), ADAPTERS, QUICK)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    command = "python -m benchmarks.ray_families " + shlex.join(argv if argv is not None else sys.argv[1:])
    have = set() if args.redo else {r.key for r in read_rows(args.out / RUNS)}
    seeds = instance_seeds(args.half, args.instances)[args.skip:]
    groups = []  # one per (policy, population, budget, family), merged as soon as it is done
    for policy in args.policies:
        for population in args.populations:
            for budget in args.budgets:
                for family in args.families:
                    jobs = [Job(args.half, family, policy, "", seed, population, budget) for seed in seeds]
                    groups.append([j for j in jobs if (j.half, family, population, budget, policy, "", j.seed) not in have])
    total = sum(map(len, groups))
    rows: list[Row] = []
    where = f"{cpu_summary()}, {versions()}"
    with multiprocessing.get_context("fork").Pool(args.processes, initializer=_init_worker) as pool:
        for group in filter(None, groups):
            fresh = list(pool.imap_unordered(run_job, group))
            rows += fresh
            invocation = Invocation(command.strip(), args.half, tuple(args.policies), "", tuple(args.families),
                                    args.instances, tuple(args.populations), tuple(args.budgets), where,
                                    round(time.perf_counter() - started, 1), round(sum(r.seconds for r in rows), 1))
            merge(args.out, fresh, invocation)
            job = group[0]
            print(f"{len(rows)}/{total} runs ({job.policy}, {job.family}, population {job.population}, budget {job.budget}: "
                  f"{len(group)} in {sum(r.seconds for r in fresh):.0f} s); {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
    print(f"{len(rows)} runs in {time.perf_counter() - started:.0f} s; results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
