"""The trainable contract as a worker runs it: what a user's function may return, and what a failure leaves."""
from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

from hopt_cli.errors import ExperimentFailed
from hopt_cli.events import Commit, Fail
from hopt_cli.experiment import Experiment
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.worker import Worker
from tests.commands import hopt, invoke
from tests.conftest import toy_recipe


def _store(tmp_path, **overrides) -> Store:
    return Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=3, **overrides)))


def test_numpy_scalars_are_scores_and_an_array_metric_is_dropped_with_one_warning(tmp_path, caplog):
    store = _store(tmp_path, worker="tests.hopt_cli.trainables:returns_numpy")

    with caplog.at_level(logging.WARNING, logger="hopt"):
        report = Worker(store, "w").run()

    assert report.complete and report.failures == 0
    commits = [e for e in store.journal.read()[0] if e["type"] == "commit"]
    assert all(set(e["metrics"]) == {"score", "count", "zero_d", "tensor"} for e in commits)
    assert all(e["metrics"]["zero_d"] == 0.5 and e["metrics"]["tensor"] == 0.25 for e in commits)
    assert all(isinstance(e["score"], float) for e in commits)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "['hist'] are not scalars" in warnings[0]


def test_an_exception_puts_its_traceback_in_the_log_and_one_line_in_the_journal(tmp_path, caplog):
    store = _store(tmp_path, worker="tests.hopt_cli.trainables:raises", max_failures=1)

    with caplog.at_level(logging.ERROR, logger="hopt"), pytest.raises(ExperimentFailed):
        Worker(store, "w").run()

    assert "Traceback (most recent call last)" in caplog.text and 'raise RuntimeError("boom")' in caplog.text
    fail = next(e for e in store.read_events()[0] if isinstance(e, Fail))
    assert fail.reason == "RuntimeError: boom"


def test_an_isolated_interval_puts_its_traceback_in_the_log_too(tmp_path, capfd):
    store = _store(tmp_path, worker="tests.hopt_cli.trainables:raises", max_failures=1, interval_timeout=30)

    with pytest.raises(ExperimentFailed):
        Worker(store, "w").run()

    stderr = capfd.readouterr().err  # the child process writes to the worker's stderr, its log
    assert "member 0 interval 0: the trainable raised" in stderr and 'raise RuntimeError("boom")' in stderr


def test_a_trainable_that_writes_no_checkpoint_is_warned_about_once(tmp_path, caplog):
    store = _store(tmp_path, worker="tests.hopt_cli.trainables:writes_nothing")

    with caplog.at_level(logging.WARNING, logger="hopt"):
        assert Worker(store, "w").run().complete

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("the trainable wrote nothing into ctx.out")


def test_a_trainable_that_writes_its_checkpoint_gets_no_warning(tmp_path, caplog):
    store = _store(tmp_path)

    with caplog.at_level(logging.WARNING, logger="hopt"):
        assert Worker(store, "w").run().complete

    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


WHICH_PYTHON = ("python -c 'import json, sys; json.dump(dict(score=1, python=sys.executable), "
                "open(sys.argv[1] + \"/metrics.json\", \"w\"))' {out} {parent} {h0}")


def test_a_command_runs_the_python_of_hopts_own_environment_which_path_lacks(tmp_path, write_recipe):
    """An unactivated venv: its hopt is started by path, and PATH has no `python` or another one."""
    recipe = write_recipe(toy_recipe(population=2, intervals=2, worker=None, command=WHICH_PYTHON,
                                     space={"h0": {"type": "float", "low": 0.0, "high": 1.0}}))

    result = hopt("run", str(recipe), "--dir", str(tmp_path / "exp"), "--workers", "1", env={"PATH": "/usr/bin:/bin"})

    assert result.returncode == 0, result.stderr
    commits = [e for e in Store.open(tmp_path / "exp").read_events()[0] if isinstance(e, Commit)]
    assert len(commits) == 4 and {e.metrics["python"] for e in commits} == {sys.executable}


@pytest.mark.parametrize("score, kind", [(torch.tensor([1.0, 2.0, 3.0]), "a torch.Tensor of shape (3,)"),
                                         (np.zeros((2, 2)), "a numpy.ndarray of shape (2, 2)"),
                                         ([1.0, 2.0], "a list of 2 values"), (None, "None")])
def test_a_score_that_is_no_scalar_fails_the_interval_naming_its_type_and_shape(tmp_path, score, kind):
    store = _store(tmp_path, max_failures=1)

    with pytest.raises(ExperimentFailed):
        Worker(store, "w", trainable=lambda ctx: {"score": score, "loss": 0.5}).run()

    fail = next(e for e in store.read_events()[0] if isinstance(e, Fail))
    assert fail.reason == f"metric 'score' is not a scalar: {kind}; return a number (a tensor or array of one " \
                          "element is one)"


def on_a_gpu_but_member_1(ctx) -> dict:
    """Reports the device as the torch trainables do: member 1 fell back to the CPU."""
    return {"score": 1.0, "device": "cpu" if ctx.member == 1 else "cuda:0 (NVIDIA H100 80GB HBM3)"}


def test_the_device_each_member_last_trained_on_shows_in_status(tmp_path):
    store = _store(tmp_path)
    Worker(store, "w", trainable=on_a_gpu_but_member_1).run()

    members = Experiment(tmp_path / "exp").status().members
    assert [m.device for m in members] == ["cuda:0 (NVIDIA H100 80GB HBM3)", "cpu"]
    table = invoke("status", "--dir", str(tmp_path / "exp")).output.splitlines()
    header = next(line for line in table if line.startswith("member"))
    assert "sigma  trained on" in header
    assert [line.split()[0] for line in table if " cpu " in line or line.endswith(" cpu")] == ["1"]


def test_status_has_no_device_column_when_the_trainable_reports_none(tmp_path):
    Worker(_store(tmp_path), "w").run()
    assert "trained on" not in invoke("status", "--dir", str(tmp_path / "exp")).output
