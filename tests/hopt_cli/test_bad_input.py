"""Bad recipes and bad command lines, through real `hopt` processes: each is exit status 2, one line on
stderr naming the problem, no traceback, and nothing written."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.commands import hopt
from tests.conftest import REPO, toy_recipe


@dataclass(frozen=True)
class Case:
    """`args` may use {recipe}, {exp} (a ready experiment), {empty} (an empty folder), {file}, {new}."""

    args: tuple[str, ...]
    error: str
    recipe: dict[str, Any] | str = field(default_factory=toy_recipe)


def recipe(**changes: Any) -> dict[str, Any]:
    """The toy recipe with keys changed (a value of None removes the key)."""
    data = {**toy_recipe(), **changes}
    return {k: v for k, v in data.items() if v is not None}


INIT = ("init", "{recipe}", "--dir", "{new}")
SPACE = {"h0": {"type": "float", "low": 0.0, "high": 1.0}, "h1": {"type": "float", "low": 0.0, "high": 1.0}}

CASES = {
    "unknown key": Case(INIT, "populaton: unknown key", recipe(populaton=8)),
    "wrong type": Case(INIT, "population: must be an integer >= 2 (got 'eight')", recipe(population="eight")),
    "low >= high": Case(INIT, "space.h0: low must be below high (got low=1, high=1)",
                        recipe(space={**SPACE, "h0": {"type": "float", "low": 1, "high": 1}})),
    "log with low <= 0": Case(INIT, "space.lr.low: must be > 0 on a log scale (got 0)",
                              recipe(space={**SPACE, "lr": {"type": "log", "low": 0, "high": 1}})),
    "empty choice": Case(INIT, "space.opt.values: must be a non-empty list",
                         recipe(space={**SPACE, "opt": {"type": "choice", "values": []}})),
    "hyperparameter name": Case(INIT, "space.learning-rate: a hyperparameter name must be a Python identifier",
                                recipe(space={"learning-rate": {"type": "float", "low": 0, "high": 1}})),
    "population < 2": Case(INIT, "population: must be an integer >= 2 (got 1)", recipe(population=1)),
    "intervals < 1": Case(INIT, "intervals: must be an integer >= 1 (got 0)", recipe(intervals=0)),
    "unknown policy": Case(INIT, "policy.name: unknown policy 'pbt2'", recipe(policy={"name": "pbt2"})),
    "unknown policy setting": Case(INIT, "policy.quantil: unknown setting for romul",
                                   recipe(policy={"name": "romul", "quantil": 0.2})),
    "policy setting type": Case(INIT, "policy.quantile: must be a number in [0, 1] (got 2)",
                                recipe(policy={"name": "romul", "quantile": 2})),
    "missing worker module": Case(INIT, "worker: cannot import workers.nonexistent",
                                  recipe(worker="workers.nonexistent:train")),
    "missing worker function": Case(INIT, "worker: workers.toys has no function nope",
                                    recipe(worker="workers.toys:nope")),
    "worker and command": Case(INIT, "worker: give exactly one of worker", recipe(command="python train.py")),
    "unknown placeholder": Case(INIT, "command: unknown placeholder {lr}",
                                recipe(worker=None, command="python train.py --lr {lr} --out {out}")),
    "heartbeat vs timeout": Case(INIT, "lease.heartbeat: must be at most half of lease.timeout",
                                 recipe(lease={"timeout": 10, "heartbeat": 8})),
    "interval_timeout": Case(INIT, "interval_timeout: must be a number of seconds > 0", recipe(interval_timeout=-1)),
    "lock kind": Case(INIT, "lock: must be one of flock, hardlink (got 'nfs')", recipe(lock="nfs")),
    "objective mode": Case(INIT, "objective.mode: must be max or min",
                           recipe(objective={"metric": "score", "mode": "maximize"})),
    "population too large": Case(INIT, "population: must be at most 100,000 (got 100,000,000): every worker",
                                 recipe(population=100_000_000)),
    "no objective": Case(INIT, "objective: is required, e.g. objective: {metric: val_loss, mode: min}",
                         recipe(objective=None)),
    "objective without mode": Case(INIT, "objective.mode: is required", recipe(objective={"metric": "loss"})),
    "placeholder as hyperparameter": Case(
        INIT, "space.seed: {seed} in a command is filled by hopt from the interval's context; rename",
        recipe(worker=None, command="train --seed {seed} --out {out}",
               space={"seed": {"type": "int", "low": 0, "high": 9}})),
    "not YAML": Case(INIT, "line 1 not valid YAML", "name: [toy"),
    "not a mapping": Case(INIT, "recipe: must be a YAML mapping", "- name: toy\n"),
    "python tag": Case(INIT, "not valid YAML", '!!python/object/apply:os.system ["touch pwned"]\n'),
    "recipe file missing": Case(("init", "{new}/nope.yaml", "--dir", "{new}"), "cannot read recipe"),
    "--dir not an experiment": Case(("worker", "--dir", "{empty}"), "is not a hopt experiment (no experiment.yaml)"),
    "recipe differs from the experiment's": Case(("init", "{recipe}", "--dir", "{exp}"),
                                                 "already holds a different experiment (recipe differs at population)",
                                                 recipe(population=5)),
    "unwritable --dir": Case(("init", "{recipe}", "--dir", "/proc/hopt-test"), "cannot create the experiment in /proc"),
    "--dir under a file": Case(("init", "{recipe}", "--dir", "{file}/sub"), "cannot create the experiment in"),
    "unknown option": Case(("worker", "--dir", "{exp}", "--bogus"),
                           "No such option '--bogus'"),
    "missing --dir": Case(("status",), "Missing option '--dir'"),
    "--workers 0": Case(("run", "{recipe}", "--dir", "{new}", "--workers", "0"), "Invalid value for '--workers'"),
    "--time 4h": Case(("slurm", "--dir", "{exp}", "--array", "2", "--time", "4h"),
                      "--time '4h' is not a time sbatch reads; write minutes, HH:MM:SS or D-HH:MM:SS"),
    "--array 0": Case(("slurm", "--dir", "{exp}", "--array", "0"), "--array must be at least 1 (got 0)"),
    "slurm --dir not an experiment": Case(("slurm", "--dir", "{empty}", "--array", "2"), "is not a hopt experiment"),
    "--requeue outside SLURM": Case(("worker", "--dir", "{exp}", "--requeue"), "--requeue needs a SLURM job"),
    "doctor --dir missing": Case(("doctor", "--dir", "{new}"), "is not a directory; create it"),
    "--preempt-signal": Case(("worker", "--dir", "{exp}", "--preempt-signal", "KILL"),
                             "Invalid value for '--preempt-signal'"),
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and mtime (folders: their entries, by name)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """A ready experiment, shared: the cases must leave it exactly as it is."""
    root = tmp_path_factory.mktemp("shared") / "exp"
    recipe = root.parent / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(toy_recipe()))
    done = hopt("init", str(recipe), "--dir", str(root))
    assert done.returncode == 0, done.stderr
    return root


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, experiment, case):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(case.recipe if isinstance(case.recipe, str) else yaml.safe_dump(case.recipe, sort_keys=False))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    places = {"recipe": recipe, "exp": experiment, "empty": tmp_path / "empty", "file": tmp_path / "file",
              "new": tmp_path / "new"}
    args = [arg.format(**places) for arg in case.args]
    before, shared = snapshot(tmp_path), snapshot(experiment)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}

    result = subprocess.run([sys.executable, "-m", "hopt_cli", *args], cwd=tmp_path,
                            env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("hopt: error: "), result.stderr
    assert case.error in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert snapshot(tmp_path) == before and snapshot(experiment) == shared
    assert not (tmp_path / "new").exists() and not (tmp_path / "pwned").exists()


def _read_only(root: Path, command: str) -> subprocess.CompletedProcess:
    """`hopt COMMAND --dir root` in its own mount namespace, where root is bind-mounted read-only."""
    script = f'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && exec "$2" -m hopt_cli {command} --dir "$1"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(root), sys.executable], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", ["worker", "retry"])
def test_a_read_only_experiment_directory_is_one_line_exit_2(experiment, command):
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind / /mnt"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only in a mount namespace here: {probe.stderr.strip()}")
    shared = snapshot(experiment)

    result = _read_only(experiment, command)

    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"hopt: error: {experiment}/lock: Read-only file system; hopt needs to write to the "
                             "experiment directory: use a writable one or fix its permissions\n")
    assert snapshot(experiment) == shared
