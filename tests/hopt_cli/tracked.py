"""A toy experiment for the exporters' tests (MLflow, W&B): trained in this process, with a choice
hyperparameter that trackers log as its index."""
from __future__ import annotations

from pathlib import Path

from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.worker import Worker
from tests.conftest import toy_recipe

OPTIMIZERS = ["sgd", "adam", "lamb"]  # a choice hyperparameter the toy ignores: logged as its index


def in_process(root: Path, population: int = 4, intervals: int = 6) -> Worker:
    """A worker of a fresh T1 experiment, with a choice hyperparameter besides h0 and h1."""
    space = {**toy_recipe()["space"], "optimizer": {"type": "choice", "values": OPTIMIZERS}}
    store = Store.create(root, Recipe.from_dict(toy_recipe(population=population, intervals=intervals, space=space)))
    return Worker(store, "pytest-worker")


def finish(worker: Worker) -> None:
    """Train until the experiment is complete."""
    while (claim := worker.claim()) is not None:
        worker.train_and_commit(claim)


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time: what an export must leave as it was."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
