"""What the store's tests share: a toy experiment under each lock kind, and a claimed member's staging folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hopt_cli.recipe import Recipe
from hopt_cli.store import Claimed, Store
from hopt_cli.worker import Worker
from tests.conftest import toy_recipe


@pytest.fixture(params=["flock", "hardlink"])
def make_store(request):
    """Create a toy experiment with each lock kind in turn: every store test runs against both."""

    def make(root: Path, **overrides) -> Store:
        return Store.create(root, Recipe.from_dict(toy_recipe(lock=request.param, **overrides)))

    return make


def claim_one(store: Store, worker: Worker) -> tuple[Claimed, Path]:
    """A claim of `worker`'s, with a checkpoint written into its staging folder as a trainable would."""
    claim = worker.claim()
    assert claim is not None
    staging = store.paths.staging_dir(claim.lease.token)
    staging.mkdir()
    (staging / "state.json").write_text(json.dumps({"theta": [0.5, 0.5]}))
    return claim, staging
