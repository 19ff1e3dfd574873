"""The paper's workloads through `hopt run`: their shipped recipes, shrunk, on generated data of the real format."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from hopt_cli.experiment import Experiment
from hopt_cli.recipe import load_recipe
from tests.conftest import REPO
from tests.invariants import check_finished_experiment
from tests.workers.test_cifar import write_cifar10, write_cifar100
from tests.workers.test_ptb import write_ptb

RECIPES = ("cifar10", "cifar100", "ptb")


@pytest.mark.parametrize("name", RECIPES)
def test_the_shipped_recipe_validates(name):
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    assert recipe.population >= 16 and recipe.intervals >= 40


@pytest.mark.slow
@pytest.mark.parametrize("name, write, env", [
    ("cifar10", write_cifar10, {"CIFAR_DIR": "data", "HOPT_CIFAR_WIDTH": "4", "HOPT_CIFAR_BATCH": "16"}),
    ("cifar100", write_cifar100, {"CIFAR_DIR": "data", "HOPT_CIFAR_WIDTH": "4", "HOPT_CIFAR_BATCH": "16"}),
    ("ptb", write_ptb, {"PTB_DIR": "data", "HOPT_PTB_SIZE": "small"}),
])
def test_a_short_pbt_experiment_runs_end_to_end(tmp_path, name, write, env):
    write(tmp_path / "data")
    recipe = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
    recipe.update(population=3, intervals=3, steps=2)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    environment = {**os.environ, **{k: str(tmp_path / v) if k.endswith("_DIR") else v for k, v in env.items()}}

    result = subprocess.run([sys.executable, "-m", "hopt_cli", "run", str(tmp_path / "recipe.yaml"),
                             "--dir", str(tmp_path / "exp"), "--workers", "2"],
                            cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr + "".join(p.read_text() for p in (tmp_path / "exp" / "logs").iterdir())
    check_finished_experiment(tmp_path / "exp")
    best = Experiment(tmp_path / "exp").best()
    assert (best.checkpoint / "checkpoint.pt").is_file()
    assert set(best.metrics) >= {recipe["objective"]["metric"]}
