"""Shared fixtures: recipes for small, fast experiments on the toys."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netfs_cluster import make_shared_dir, netfs, shared_dir  # noqa: F401 - the fixtures of tests marked netfs
from tests.slurm_cluster import cluster  # noqa: F401 - the fixture of every test marked slurm

REPO = Path(__file__).resolve().parent.parent

NEEDS_SERVICES = ("slurm", "netfs")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the SLURM cluster or the network filesystem mounts is slow by definition: the fast
    suite (`python -m pytest`) runs on a machine where neither was started."""
    for item in items:
        if any(item.get_closest_marker(name) for name in NEEDS_SERVICES):
            item.add_marker(pytest.mark.slow)


def toy_recipe(**overrides: Any) -> dict[str, Any]:
    """T1 (the PBT quadratic) at a size that runs in well under a second."""
    recipe: dict[str, Any] = {
        "name": "toy",
        "seed": 0,
        "objective": {"metric": "score", "mode": "max"},
        "population": 8,
        "intervals": 10,
        "steps": 4,
        "policy": {"name": "romul"},
        "worker": "workers.toys:pbt_quadratic",
        "space": {"h0": {"type": "float", "low": 0.0, "high": 1.0},
                  "h1": {"type": "float", "low": 0.0, "high": 1.0}},
        "lease": {"timeout": 60, "heartbeat": 5},
    }
    recipe.update(overrides)
    return recipe


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe dict to a YAML file and return its path."""

    def write(recipe: dict[str, Any], name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write
