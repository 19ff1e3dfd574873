"""The no-op population under Ray Tune's PopulationBasedTraining, for benchmarks/overhead.py.

Runs in an interpreter that has `ray[tune]` (never hopt's: hopt does not import ray) and prints one
JSON document: the intervals trained (results reported) and when the first and the last one arrived.
The trainable mirrors workers/noop.py: a tiny JSON checkpoint, score = previous score + x.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import PopulationBasedTraining  # noqa: E402


def noop(config: dict) -> None:
    """One tune.report per interval, each with a checkpoint PBT can exploit."""
    score, step = 0.0, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / "state.json").read_text())
            score, step = state["score"], state["step"]
    while True:
        score += config["x"]
        step += 1
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"score": score, "step": step}))
            tune.report({"score": score, "step": step}, checkpoint=tune.Checkpoint.from_directory(folder))


class Clock(tune.Callback):
    """Counts every reported result on the driver and notes when the first and the last arrived."""

    def __init__(self) -> None:
        self.results = 0
        self.first = self.last = 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last = time.time()
        self.first = self.first or self.last
        self.results += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--population", type=int, required=True)
    parser.add_argument("--intervals", type=int, required=True)
    args = parser.parse_args()
    clock = Clock()
    pbt = PopulationBasedTraining(time_attr="training_iteration", metric="score", mode="max",
                                  perturbation_interval=1, hyperparam_mutations={"x": tune.uniform(0.0, 1.0)})
    with tempfile.TemporaryDirectory(prefix="ray-pbt-") as storage:
        tuner = tune.Tuner(noop, param_space={"x": tune.uniform(0.0, 1.0)},
                           tune_config=tune.TuneConfig(scheduler=pbt, num_samples=args.population),
                           run_config=tune.RunConfig(storage_path=storage, verbose=0, callbacks=[clock],
                                                     stop={"training_iteration": args.intervals}))
        grid = tuner.fit()
        errors = len(grid.errors)
    ray.shutdown()
    json.dump({"ray": ray.__version__, "intervals": clock.results, "first": clock.first, "last": clock.last,
               "errors": errors}, sys.stdout)


if __name__ == "__main__":
    main()
