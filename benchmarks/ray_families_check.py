"""Does the adapter of benchmarks/ray_families.py behave like Ray Tune itself? One cell, both ways.

    python -m benchmarks.ray_families_check                                   # ray-pbt, ellipsoid, 8 x 20, 5 seeds
    python -m benchmarks.ray_families_check --policy ray-pb2 --family schedule --instances 3

For the first `--instances` seeds of the report half, the same experiment runs twice: with the adapter
inside hopt's simulator (`benchmarks.ray_families.run_job`, as the benchmark runs it) and through Tune's
own actor loop (`tune.Tuner` with the real scheduler, Ray's defaults, perturbation_interval 2), the family
instance as a function trainable that trains one hopt interval per training_iteration from Ray's
checkpoint, with hopt's per-interval trainable seeds (so the observation noise is drawn alike) and on as
many concurrent slots as the simulator's workers. The hyperparameters a trial trains with are what the
adapter would train with: Ray's config encoded and decoded by hopt's SearchSpace (clipped onto the bounds).
Both results are the final true score of the member whose observed score at the last interval is best.
Exploits are counted in Tune as the results after which a trial's config has changed, intervals trained as
the results reported. Writes `check-<policy>-<family>-<population>-<budget>.md` into `--out` and prints it.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.tune.search import BasicVariantGenerator

from benchmarks.families import Job, instance_seeds, workers_for
from benchmarks.common import REPO, SCRATCH
from benchmarks.ray_families import ADAPTERS, OUT, RayAdapter, run_job, versions
from benchmarks.ray_pbt import Collect, train_reporting
from benchmarks.report import best_curve
from hopt_cli.space import SearchSpace
from workers.families import FAMILIES, draw



class Exploits(Collect):
    """Collect, counting the exploits: the results after which a trial's config has changed."""

    def __init__(self) -> None:
        super().__init__()
        self.configs: dict[str, dict] = {}
        self.exploits = 0

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        super().on_trial_result(iteration, trials, trial, result, **info)
        before = self.configs.get(trial.trial_id)
        self.exploits += before is not None and before != trial.config
        self.configs[trial.trial_id] = dict(trial.config)


def tune_run(policy: str, family: str, seed: int, population: int, budget: int,
             processes: int) -> tuple[float, int, int, float]:
    """One experiment through Tune's actor loop: the final true score of the best observed member, the
    number of exploits, the intervals trained, seconds."""
    started = time.perf_counter()
    instance = draw(family, seed, budget)
    space = SearchSpace.from_recipe(instance.space)
    adapter = ADAPTERS[policy]()
    scheduler = adapter.make_scheduler(space)
    random.seed(seed)  # Ray's schedulers draw from the global generators
    np.random.seed(seed)
    param_space = {p.name: _initial(p, policy) for p in space.params}
    workers = workers_for(population)
    collected = Exploits()
    trainable = tune.with_resources(tune.with_parameters(_trial, policy=policy, family=family, seed=seed,
                                                         budget=budget), {"cpu": processes / workers})
    with tempfile.TemporaryDirectory(prefix="hopt-ray-", dir=SCRATCH) as storage:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=population,  # metric, mode: the scheduler's
                                        reuse_actors=True, search_alg=BasicVariantGenerator(random_state=seed)),
            run_config=tune.RunConfig(storage_path=storage, name=f"{family}-{seed}", verbose=0, callbacks=[collected],
                                      stop={"training_iteration": budget}))
        tuner.fit()
    return (best_curve(collected.commits, budget)[-1], collected.exploits, len(collected.commits),
            time.perf_counter() - started)


def _initial(param: Any, policy: str) -> Any:
    """The initial config's domain: the init box, as hopt's start draws it (a PB2 choice: its coordinate)."""
    if param.is_choice:
        allowed = list(param.init or param.values)
        return tune.choice([param.encode(v) for v in allowed] if policy == "ray-pb2" else allowed)
    low, high = param.init if param.init is not None else (param.low, param.high)
    return tune.loguniform(low, high) if param.log else tune.uniform(low, high)


def _trial(config: dict[str, Any], policy: str, family: str, seed: int, budget: int) -> None:
    """One Ray trial: the family instance, with the hyperparameters the adapter would train with."""
    instance = draw(family, seed, budget)
    space = SearchSpace.from_recipe(instance.space)
    adapter: RayAdapter = ADAPTERS[policy]()
    train_reporting(instance, space.decode(adapter.coords(space, config)), seed, budget, 1, "score")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=tuple(ADAPTERS), default="ray-pbt")
    parser.add_argument("--family", choices=tuple(FAMILIES), default="ellipsoid")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1, help="CPUs given to the local Ray")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    seeds = instance_seeds("report", args.instances)
    adapters = {s: ADAPTERS[args.policy]() for s in seeds}
    adapter = {s: run_job(Job("report", args.family, args.policy, "", s, args.population, args.budget), adapters[s])
               for s in seeds}
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("ray").setLevel(logging.ERROR)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=args.processes, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        real = {s: tune_run(args.policy, args.family, s, args.population, args.budget, args.processes) for s in seeds}
    finally:
        ray.shutdown()
    lines = [f"# {args.policy}: the adapter in hopt's simulator against Tune's actor loop", "",
             f"{args.family}, population {args.population}, budget {args.budget}, report-half seeds "
             f"{', '.join(map(str, seeds))}; {versions()}. Final true score of the best observed member "
             "(higher is better).", "",
             "| seed | noise | adapter | Tune | adapter exploits | Tune exploits | adapter intervals | Tune intervals "
             "| adapter s | Tune s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in seeds:
        lines.append(f"| {s} | {adapter[s].noise} | {adapter[s].final:.4g} | {real[s][0]:.4g} | {adapters[s].exploits} | "
                     f"{real[s][1]} | {adapters[s].decisions} | {real[s][2]} | {adapter[s].seconds:.2f} | {real[s][3]:.1f} |")
    a, r = [adapter[s].final for s in seeds], [real[s][0] for s in seeds]
    lines += [f"| median | | {np.median(a):.4g} | {np.median(r):.4g} | {np.median([x.exploits for x in adapters.values()]):g} | "
              f"{np.median([x[1] for x in real.values()]):g} | {np.median([x.decisions for x in adapters.values()]):g} | "
              f"{np.median([x[2] for x in real.values()]):g} | {sum(x.seconds for x in adapter.values()):.1f} (total) | "
              f"{sum(x[3] for x in real.values()):.0f} (total) |", "",
              f"Adapter ahead on {sum(x > y for x, y in zip(a, r))} of {len(seeds)} seeds.", "",
              f"`python -m benchmarks.ray_families_check --policy {args.policy} --family {args.family} --population "
              f"{args.population} --budget {args.budget} --instances {args.instances} --processes {args.processes}`"]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"check-{args.policy}-{args.family}-{args.population}-{args.budget}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
