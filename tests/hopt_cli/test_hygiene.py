"""Hygiene: safe YAML, JSON state (never pickle), weights-only torch loads, names that stay inside --dir."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from hopt_cli.recipe import Recipe
from hopt_cli.slurm import SlurmEnvironment
from hopt_cli.store import Store
from hopt_cli.store.paths import ExperimentPaths
from hopt_cli.worker import Worker
from tests.conftest import REPO, toy_recipe

SOURCES = sorted([*(REPO / "hopt_cli").rglob("*.py"), *(REPO / "workers").rglob("*.py")])
HOSTILE = ["../../escape", "/etc/passwd", "..", ".", "", "a/../../b", "x\0y", "~root", "-rf", "é\n"]


def calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of `name` (e.g. yaml.load) in hopt_cli/ and workers/."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                found.append((path, node))
    return found


@pytest.mark.parametrize("unsafe", ["yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load",
                                    "pickle.loads", "pickle.dump", "pickle.dumps"])
def test_no_unsafe_loader_or_pickle_in_the_code(unsafe):
    found = [(path.relative_to(REPO).as_posix(), call.lineno) for path, call in calls(unsafe)]
    if unsafe == "pickle.load":  # CIFAR's own distribution format is pickle: the user's dataset, not our state
        found = [(path, line) for path, line in found if path != "workers/cifar_data.py"]
    assert found == []


def test_torch_checkpoints_are_loaded_weights_only():
    for path, call in calls("torch.load"):
        keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert keywords.get("weights_only") == "True", f"{path}:{call.lineno}"


def test_the_experiment_state_is_json_and_yaml(tmp_path):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=2)))
    worker = Worker(store, "w")
    worker.train_and_commit(worker.claim())
    worker.claim()

    yaml.safe_load(store.paths.experiment.read_text())
    json.loads(store.paths.state.read_text())
    for line in store.paths.journal.read_text().splitlines():
        json.loads(line)
    for lease in store.paths.leases.iterdir():
        json.loads(lease.read_text())


@pytest.mark.parametrize("name", HOSTILE)
def test_every_name_stays_one_entry_inside_the_directory(tmp_path, name):
    paths = ExperimentPaths(tmp_path)
    made = {"log": paths.log(name), "checkpoint": paths.checkpoint(name), "staging": paths.staging_dir(name),
            "claim": paths.hardlink_claim(name), "doctor": paths.doctor_scratch(name)}
    for kind, path in made.items():
        assert path.parent in (paths.root, paths.logs, paths.checkpoints, paths.staging), kind
        assert path.name not in ("", ".", "..") and "/" not in path.name and "\0" not in path.name, kind


@pytest.mark.parametrize("name", HOSTILE)
def test_slurm_worker_names_are_safe(name):
    env = SlurmEnvironment.from_env({"SLURM_JOB_ID": "1", "SLURM_ARRAY_JOB_ID": name, "SLURM_ARRAY_TASK_ID": "0"})
    assert env.worker_name is not None and "/" not in env.worker_name and not env.worker_name.startswith(".")
