"""Ray Tune's PopulationBasedTraining on the same toys, seeds and budget: the peer, side by side.

Ray is installed for the benchmark only, never as a dependency of hopt: run it from an environment of
its own (`pip install "ray[tune]" matplotlib numpy pyyaml click filelock`). The scheduler keeps Ray's
defaults except the perturbation interval (= `ready`, 2) and the mutations (the recipe's space: log
parameters log-uniform, drawn from the recipe's `init` box as hopt's pbt resamples). One toy step is one
`training_iteration`, checkpointed with `tune.Checkpoint`; a value Ray's x0.8 / x1.2 moves out of the
recipe's bounds is clipped before the toy sees it, as hopt's decoding does. Trials run on as many
concurrent slots as hopt's simulated workers, so Ray's PBT pauses and resumes them as it does on a
small cluster.
"""
from __future__ import annotations

import json
from collections.abc import Callable
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator

from benchmarks.common import REPO, SCRATCH, toy_recipe
from benchmarks.report import Run, best_curve
from hopt_cli.seeds import trainable_seed
from hopt_cli.space import Param
from hopt_cli.trainable import Context, load_trainable, run_interval

READY = 2
PROGRESS_FILE = "interval.json"


def run_ray(toys: list[str], seeds: int, intervals: int, population: int, workers: int,
            processes: int) -> list[Run]:
    """Every (toy, seed) as one Tuner run of Ray Tune's PBT on a local Ray of `processes` CPUs."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # we collect results ourselves
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("ray").setLevel(logging.ERROR)  # its result-file warnings concern loggers we turned off
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=processes, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        return [_experiment(toy, seed, intervals, population, workers, processes)
                for toy in toys for seed in range(seeds)]
    finally:
        ray.shutdown()


def _experiment(toy: str, seed: int, intervals: int, population: int, workers: int, processes: int) -> Run:
    started = time.perf_counter()
    recipe = toy_recipe(toy, seed, intervals, population)
    random.seed(seed)  # Ray's PBT draws its explore steps from the global generators
    np.random.seed(seed)
    domains = {p.name: _domain(p) for p in recipe.space.params}
    scheduler = PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=READY,
                                        hyperparam_mutations=domains)
    collected = Collect()
    trainable = tune.with_resources(tune.with_parameters(_trial, toy=toy, seed=seed, intervals=intervals,
                                                         population=population),
                                    {"cpu": processes / workers})
    with tempfile.TemporaryDirectory(prefix="hopt-ray-", dir=SCRATCH) as storage:
        tuner = tune.Tuner(
            trainable,
            param_space=domains,
            tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=scheduler, num_samples=population,
                                        reuse_actors=True,
                                        search_alg=BasicVariantGenerator(random_state=seed)),
            run_config=tune.RunConfig(storage_path=storage, name=f"{toy}-{seed}", verbose=0, callbacks=[collected],
                                      stop={"training_iteration": intervals}),
        )
        tuner.fit()
    curve = best_curve(collected.commits, intervals)
    return Run(toy, "ray-pbt", seed, curve, time.perf_counter() - started)


def _domain(param: Param) -> Any:
    """The recipe's parameter as a Ray search domain over its init box."""
    low, high = param.init if param.init is not None else (param.low, param.high)
    return tune.loguniform(low, high) if param.log else tune.uniform(low, high)


class Collect(tune.Callback):
    """Keeps every reported interval, in the form of the simulator's commits."""

    def __init__(self) -> None:
        self.commits: list[dict[str, Any]] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.commits.append({"interval": result["interval"], "score": result["score"],
                             "metrics": {"true_score": result["true_score"]}})


def _trial(config: dict[str, Any], toy: str, seed: int, intervals: int, population: int) -> None:
    """One Ray trial of a toy."""
    recipe = toy_recipe(toy, seed, intervals, population)
    hparams = {p.name: min(max(config[p.name], p.low), p.high) for p in recipe.space.params}
    train_reporting(load_trainable(recipe.trainable, None), hparams, seed, intervals, recipe.steps,
                    recipe.objective.metric)


def train_reporting(trainable: Callable[[Context], Any], hparams: dict[str, Any], seed: int, intervals: int,
                    steps: int, metric: str) -> None:
    """The body of a Ray trial: `trainable` interval by interval from Ray's checkpoint, each interval reported,
    a checkpoint at every perturbation interval (Ray's advice), with hopt's per-interval trainable seeds."""
    member = int(tune.get_context().get_trial_id().rsplit("_", 1)[-1])
    work = Path(tempfile.mkdtemp(prefix="hopt-ray-trial-", dir=SCRATCH))
    parent, start = None, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            parent = Path(shutil.copytree(folder, work / "restored"))
        start = json.loads((parent / PROGRESS_FILE).read_text())["interval"]
    try:
        for t in range(start, intervals):
            out = work / f"i{t:05d}"
            out.mkdir()
            ctx = Context(hparams, parent, out, t, steps, member, trainable_seed(seed, member, t))
            outcome = run_interval(trainable, ctx, metric)
            (out / PROGRESS_FILE).write_text(json.dumps({"interval": t + 1}))
            metrics = {"score": outcome.score, "true_score": outcome.metrics["true_score"], "interval": t}
            if (t + 1) % READY and t + 1 < intervals:
                tune.report(metrics)
            else:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(out))
            if parent is not None:
                shutil.rmtree(parent)
            parent = out
    finally:
        shutil.rmtree(work, ignore_errors=True)
