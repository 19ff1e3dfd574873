"""Shared fixtures for the trainable tests: contexts with fresh output folders."""
from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hopt_cli.trainable import Context
from tests.commands import hopt
from tests.conftest import REPO
from tests.invariants import check_finished_experiment
from workers import torch_common


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every trainable test runs on the CPU, even where torch sees a GPU.

    The bit-exact comparisons below hold on the CPU; cuDNN and cuBLAS may pick non-deterministic
    algorithms. The GPU path is measured by benchmarks/throughput.py instead.
    """
    monkeypatch.setenv("HOPT_DEVICE", "cpu")


@pytest.fixture
def make_ctx(tmp_path: Path) -> Callable[..., Context]:
    """Build a Context whose `out` is a new empty folder under tmp_path."""
    counter = itertools.count()

    def make(hparams: dict[str, Any] | None = None, parent: Path | None = None, steps: int = 10,
             member: int = 0, seed: int = 0, interval: int = 0,
             should_stop: Callable[[], bool] = lambda: False) -> Context:
        out = tmp_path / f"out{next(counter)}"
        out.mkdir()
        return Context(hparams=dict(hparams or {}), parent=parent, out=out, interval=interval,
                       steps=steps, member=member, seed=seed, should_stop=should_stop)

    return make


def chain(train: Callable[[Context], dict[str, Any]], make_ctx: Callable[..., Context], hparams: dict[str, Any],
          intervals: int, steps: int, parent: Path | None = None, member: int = 0,
          seed: int = 0) -> tuple[dict[str, Any], Path | None]:
    """Chain `intervals` intervals of `train` from `parent`; return (last metrics, last checkpoint folder)."""
    metrics: dict[str, Any] = {}
    for i in range(intervals):
        ctx = make_ctx(hparams, parent=parent, steps=steps, member=member, seed=seed, interval=i)
        metrics = train(ctx)
        parent = ctx.out
    return metrics, parent


def short_pbt(tmp_path: Path, recipe: str, **sizes: int) -> Path:
    """`hopt run` of recipes/RECIPE at `sizes` with 2 workers, checked to complete with every invariant
    and no failure; returns the experiment directory."""
    data = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    data.update(sizes)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))
    root = tmp_path / "exp"
    result = hopt("run", str(tmp_path / "recipe.yaml"), "--dir", str(root), "--workers", "2")
    assert result.returncode == 0, result.stderr + "".join(p.read_text() for p in (root / "logs").glob("*.log"))
    assert check_finished_experiment(root).failures == 0
    return root


def load_state(folder: Path) -> dict[str, Any]:
    """The checkpoint in `folder`, loaded the strict way every trainable loads it."""
    return torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Two state dicts hold exactly the same keys and bit-identical tensors.

    Exact equality is the point (resume, exploit noise) and holds on any CPU: both sides run in this
    one process, so with the same kernels (ATEN_CPU_CAPABILITY), the same thread count and the same
    tensor shapes torch performs the same operations in the same order; only comparisons across
    processes or settings would need a tolerance, and no test here makes one.
    """
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class Watched(dict):
    """A loaded checkpoint that a weak reference can watch (a plain dict cannot be one's referent)."""


def parent_released(train: Callable[[Context], dict[str, Any]], make_ctx: Callable[..., Context],
                    monkeypatch: pytest.MonkeyPatch, hparams: dict[str, Any] | None = None) -> bool:
    """Whether `train`, resuming from a checkpoint of its own, holds none of that checkpoint's loaded state
    once training runs (checked at its first should_stop, i.e. after one step): on a GPU the parent's
    tensors would otherwise take the model's and optimizer's memory a second time all interval long."""
    _, parent = chain(train, make_ctx, dict(hparams or {}), intervals=1, steps=1)
    loaded: list[weakref.ref] = []

    def load(folder: Path) -> dict[str, Any]:
        state = Watched(original(folder))
        loaded.append(weakref.ref(state))
        return state

    original = torch_common.load_checkpoint
    monkeypatch.setattr(torch_common, "load_checkpoint", load)
    alive: list[bool] = []
    train(make_ctx(dict(hparams or {}), parent=parent, steps=2,
                   should_stop=lambda: alive.append(loaded[0]() is not None) or False))
    return alive == [False, False]
