"""Shared fixtures for the trainable tests: contexts with fresh output folders."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hopt_cli.trainable import Context


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
    """Two state dicts hold exactly the same keys and bit-identical tensors."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
