"""Shared fixtures for the trainable tests: contexts with fresh output folders."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hopt_cli.trainable import Context


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
