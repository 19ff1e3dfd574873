"""hopt_cli.run(): an experiment launched from Python, with a trainable defined where the user wrote it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml

import hopt_cli
from hopt_cli import launch
from hopt_cli.errors import HoptError, RecipeError
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from tests.conftest import REPO, toy_recipe
from tests.commands import hopt, invoke
from tests.invariants import check_finished_experiment

SCRIPT = """
import json
import sys

import hopt_cli

TARGET = 0.3  # a global of __main__: the workers get it with the function, by value


def train(ctx):
    steps = json.loads((ctx.parent / "steps.json").read_text()) if ctx.parent else 0
    (ctx.out / "steps.json").write_text(json.dumps(steps + 1))
    return -(ctx.hparams["x"] - TARGET) ** 2


recipe = {"name": "script", "population": 4, "intervals": 5, "objective": {"metric": "score", "mode": "max"},
          "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}
experiment = hopt_cli.run(recipe, sys.argv[1], workers=2, trainable=train)
best = experiment.best()
print(f"best {best.score:.6f} at interval {best.interval}")
"""


def test_a_function_of_a_script_trains_in_worker_processes(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(textwrap.dedent(SCRIPT))
    root = tmp_path / "exp"

    result = subprocess.run([sys.executable, str(script), str(root)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("best ") and "20/20 intervals" in result.stderr
    assert yaml.safe_load((root / "experiment.yaml").read_text())["worker"] == "__main__:train"
    assert check_finished_experiment(root).failures == 0
    population = Store.open(root).sync()
    assert population.intervals_done == 20 and all(len(m.lineage.scores) == 5 for m in population.members)


def test_resuming_a_script_trainable_from_the_command_line_says_how(tmp_path):
    root = tmp_path / "exp"
    Store.create(root, Recipe.from_dict(toy_recipe(worker="__main__:train")))

    result = hopt("worker", "--dir", str(root))

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "was defined in a script or notebook and given to hopt_cli.run()" in result.stderr
    assert "trainable=train" in result.stderr


def test_a_mapping_is_validated_exactly_like_a_recipe_file(tmp_path):
    with pytest.raises(RecipeError) as caught:
        hopt_cli.run(toy_recipe(population=1), tmp_path / "exp")
    assert caught.value.key == "population"
    assert not (tmp_path / "exp").exists(), "nothing is written for a bad recipe"


def test_a_lambda_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(HoptError, match="is not a module-level function: define it with `def`"):
        hopt_cli.run(toy_recipe(), tmp_path / "exp", trainable=lambda ctx: 0.0)
    assert not (tmp_path / "exp").exists()


class Recorded:
    """A Progress that keeps what the run reported."""

    def __init__(self) -> None:
        self.shown: list[tuple[int, int]] = []
        self.said: list[str] = []

    def show(self, done: int, total: int, note: str) -> None:
        self.shown.append((done, total))

    def say(self, message: str) -> None:
        self.said.append(message)


def test_a_trainable_from_a_module_replaces_the_recipes_worker_and_the_run_reports_to_its_caller(tmp_path, capfd):
    from tests.hopt_cli.trainables import counts_threads
    recorded = Recorded()

    experiment = hopt_cli.run(toy_recipe(population=2, intervals=2), tmp_path / "exp", workers=1,
                              trainable=counts_threads, progress=recorded)

    assert experiment.recipe.trainable == "tests.hopt_cli.trainables:counts_threads"
    assert experiment.status().complete
    assert recorded.shown[-1] == (4, 4) and recorded.said[0].startswith(f"toy: 1 worker on {tmp_path / 'exp'}")
    assert capfd.readouterr() == ("", "")  # the library wrote nothing to the terminal itself


NO_H1 = """printf '{{"score": %s}}' {h0} > {out}/metrics.json # {parent}"""


def test_a_command_that_never_gets_a_searched_hyperparameter_is_warned_about_once(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=2, intervals=1, worker=None, command=NO_H1))

    init = invoke("init", str(recipe), "--dir", str(tmp_path / "exp"))
    run = hopt("run", str(recipe), "--dir", str(tmp_path / "exp"), "--workers", "2")

    warning = ("warning: command: no placeholder for the searched hyperparameter h1, so the values hopt picks never "
               "reach the command; pass it, e.g. --h1 {h1}, or drop it from space\n")
    assert init.exit_code == 0 and init.stderr == warning
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("warning:") == 1 and warning in run.stderr


def test_a_run_of_one_worker_says_one_worker(tmp_path, write_recipe):
    result = hopt("run", str(write_recipe(toy_recipe(population=2, intervals=1))), "--dir", str(tmp_path / "exp"),
                  "--workers", "1")

    assert result.returncode == 0, result.stderr
    assert f"toy: 1 worker on {tmp_path / 'exp'} (logs in" in result.stderr


def test_a_task_with_more_workers_than_gpus_is_refused_before_any_worker_starts(tmp_path, monkeypatch):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe()))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")

    with pytest.raises(HoptError) as caught:
        launch.run_task(store, "task", 3, signal.SIGUSR1)

    assert str(caught.value) == (
        "hopt worker --workers 3: this task sees 2 GPUs (CUDA_VISIBLE_DEVICES=4,6), so workers would share a GPU; "
        "start it with --workers 2 (hopt slurm --workers-per-task 2), or give the task 3 GPUs (--gres gpu:3)")
    assert not list(store.paths.logs.iterdir())


def test_a_task_with_fewer_workers_than_gpus_is_warned_of_the_idle_ones():
    assert launch.check_task_gpus(2, ["0", "1", "2", "3"]) == (
        "hopt worker --workers 2: this task sees 4 GPUs (CUDA_VISIBLE_DEVICES=0,1,2,3), so 2 of them stay idle; "
        "start it with --workers 4 (hopt slurm --workers-per-task 4), or give the task 2 GPUs (--gres gpu:2)")
    assert launch.check_task_gpus(4, ["0", "1", "2", "3"]) is None and launch.check_task_gpus(4, None) is None


def test_gpus_all_on_a_machine_split_by_mig_gives_every_slice(tmp_path, monkeypatch):
    """CUDA without CUDA_VISIBLE_DEVICES shows one MIG slice; nvidia-smi -L (a fake one here) lists them all."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n"
                    "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6)\n"
                    "  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4f1ef)\n"
                    "  MIG 3g.20gb     Device  1: (UUID: MIG-cba663e8)\n"
                    "EOF\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")

    assert launch.choose_devices("all", None) == ["MIG-c6d4f1ef", "MIG-cba663e8"]
    assert launch.choose_devices("all", "3") == ["3"]  # CUDA_VISIBLE_DEVICES says which: nvidia-smi is not asked
