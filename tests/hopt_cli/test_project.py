"""The project directory: `hopt init` records it, and every worker and replay runs the trainable there,
with the thread settings the schedule recorded, wherever they are started from."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hopt_cli.experiment import Experiment
from tests import commands
from tests.conftest import REPO, toy_recipe

TRAINABLE = '''\
import json, os, pathlib, sys

def score(ctx_out):
    pathlib.Path(ctx_out, "state").write_text("x")
    return float(os.environ.get("OMP_NUM_THREADS", "0"))

def train(ctx):
    return {"score": score(ctx.out)}

if __name__ == "__main__":
    pathlib.Path(sys.argv[1], "metrics.json").write_text(json.dumps({"score": score(sys.argv[1])}))
'''


def hopt(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`hopt ARGS` run from `cwd` with no PYTHONPATH, where `mytrain` cannot be imported unless hopt enters the
    project."""
    return commands.hopt(*args, cwd=cwd, env={"PYTHONPATH": "", **env})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: mytrain.py (a Python trainable and a script) and its recipe, nothing of hopt's."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "mytrain.py").write_text(TRAINABLE)
    (tmp_path / "elsewhere").mkdir()
    return folder


def recipe(folder: Path, **overrides) -> Path:
    data = toy_recipe(population=2, intervals=3, worker="mytrain:train",
                      space={"lr": {"type": "float", "low": 0.0, "high": 1.0}})
    data = {key: value for key, value in {**data, **overrides}.items() if value is not None}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("trainable", [{}, {"worker": None,
                                              "command": f"{sys.executable} mytrain.py {{out}} {{parent}}"}])
def test_a_worker_started_elsewhere_runs_the_trainable_in_the_project(project, tmp_path, trainable):
    root = tmp_path / "exp"
    assert hopt("init", str(recipe(project, **trainable)), "--dir", str(root), cwd=project).returncode == 0

    result = hopt("worker", "--dir", str(root), cwd=tmp_path / "elsewhere")

    assert result.returncode == 0, result.stderr
    assert Experiment(root).status().complete
    assert yaml.safe_load((root / "experiment.yaml").read_text())["project"] == str(project)


def test_a_rerun_from_another_directory_resumes_in_the_project(project, tmp_path):
    root = tmp_path / "exp"
    assert hopt("init", str(recipe(project)), "--dir", str(root), cwd=project).returncode == 0

    result = hopt("run", str(project / "recipe.yaml"), "--dir", str(root), cwd=tmp_path / "elsewhere")

    assert result.returncode == 0, result.stderr
    assert Experiment(root).status().complete


def test_a_recipe_naming_another_project_than_the_experiments_is_refused(project, tmp_path):
    root = tmp_path / "exp"
    assert hopt("init", str(recipe(project)), "--dir", str(root), cwd=project).returncode == 0
    other = tmp_path / "elsewhere"  # another checkout of the same code
    (other / "mytrain.py").write_text(TRAINABLE)

    result = hopt("init", str(recipe(project, project=str(other))), "--dir", str(root), cwd=project)

    assert result.returncode == 2
    assert result.stderr == (f"hopt: error: {root} was created to run its trainable in {project}, not the recipe's "
                             f"project {other}; drop project from the recipe, or use another --dir\n")


def test_a_recipe_may_name_its_project(project, tmp_path):
    root = tmp_path / "exp"
    path = recipe(project, project="../project")

    assert hopt("init", str(path), "--dir", str(root), cwd=tmp_path / "elsewhere").returncode == 0
    assert yaml.safe_load((root / "experiment.yaml").read_text())["project"] == str(project)


def test_a_worker_whose_project_is_gone_stops_with_one_line(project, tmp_path):
    root = tmp_path / "exp"
    assert hopt("init", str(recipe(project)), "--dir", str(root), cwd=project).returncode == 0
    project.rename(tmp_path / "moved")

    result = hopt("worker", "--dir", str(root), cwd=tmp_path)

    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert f"cannot enter the project directory {project} that `hopt init` recorded: No such file" in result.stderr


def schedule_with_two_thread_settings(project: Path, tmp_path: Path, trainable: dict) -> Path:
    """What `hopt best --out` writes for a lineage whose last interval ran on a worker with other threads."""
    plan = {"hopt_schedule": 1, "experiment": "toy", **trainable, "project": str(project),
            "threads": {"OMP_NUM_THREADS": "3"}, "steps": 1, "seed": 0,
            "objective": {"metric": "score", "mode": "max"}, "member": 1, "score": 5.0, "intervals": 3,
            "schedule": [{"intervals": [0, 2], "member": 1, "hparams": {"lr": 0.5}},
                         {"intervals": [2, 3], "member": 1, "threads": {"OMP_NUM_THREADS": "5"},
                          "hparams": {"lr": 0.5}}]}
    path = tmp_path / "schedule.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.mark.parametrize("trainable", [{"worker": "mytrain:train"},
                                       {"command": f"{sys.executable} mytrain.py {{out}}"}])
def test_a_replay_runs_each_interval_in_the_project_with_its_recorded_threads(project, tmp_path, trainable):
    plan = schedule_with_two_thread_settings(project, tmp_path, trainable)

    result = hopt("replay", str(plan), "--dir", str(tmp_path / "out"), cwd=tmp_path / "elsewhere",
                  OMP_NUM_THREADS="2")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("replayed score 5 vs original 5 (identical)")
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()[1:]
    assert [float(row.split(",")[2]) for row in rows] == [3.0, 3.0, 5.0]


def test_a_replay_whose_project_is_not_here_runs_in_the_current_directory(project, tmp_path):
    plan = schedule_with_two_thread_settings(tmp_path / "gone", tmp_path, {"worker": "mytrain:train"})

    result = hopt("replay", str(plan), "--dir", str(tmp_path / "out"), cwd=project)

    assert result.returncode == 0, result.stderr
    assert f"the schedule's project directory {tmp_path / 'gone'} is not here: running the trainable in {project}" \
        in result.stderr


@pytest.mark.slow
def test_a_replay_trains_with_the_threads_hopt_run_gave_the_workers(tmp_path):
    """The issue's case: `hopt run` shares the cores out between workers, the replaying shell has others."""
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(toy_recipe(population=3, intervals=4,
                                                     worker="tests.hopt_cli.trainables:counts_threads")))
    root = tmp_path / "exp"
    assert hopt("run", str(recipe_path), "--dir", str(root), cwd=REPO, OMP_NUM_THREADS="1").returncode == 0
    assert hopt("best", "--dir", str(root), "--out", str(tmp_path / "best"), cwd=REPO).returncode == 0
    exported = yaml.safe_load((tmp_path / "best" / "schedule.yaml").read_text())
    assert exported["threads"]["OMP_NUM_THREADS"] == "1" and exported["project"] == str(REPO)

    result = hopt("replay", str(tmp_path / "best" / "schedule.yaml"), "--dir", str(tmp_path / "out"),
                  cwd=tmp_path, OMP_NUM_THREADS="2")

    assert result.returncode == 0, result.stderr
    assert "(identical)" in result.stdout
