"""Shared fixtures: recipes for small, fast experiments on the toys."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netfs_cluster import START_SCRIPT, make_shared_dir, mount_problems, netfs, shared_dir  # noqa: F401
from tests.slurm2_cluster import cluster2_problem, two_nodes  # noqa: F401 - the fixture of the tests marked two_nodes
from tests.slurm_cluster import cluster, cluster_problem  # noqa: F401 - the fixture of every test marked slurm

REPO = Path(__file__).resolve().parent.parent


def _netfs_problem() -> str | None:
    problems = mount_problems()
    return f"the netfs test mounts are not usable ({'; '.join(problems)}); run {START_SCRIPT} as root" if problems \
        else None


def _slurm_problem() -> str | None:
    problem = cluster_problem()
    return f"{problem}; run tests/slurm/start-cluster.sh as root" if problem else None


def _two_nodes_problem() -> str | None:
    problem = cluster2_problem()
    return f"{problem}; run tests/slurm2/start-cluster.sh as root" if problem else None


# The marker of the tests that need a service, and why the service is not usable here (None: it is).
NEEDS_SERVICES = {"slurm": _slurm_problem, "netfs": _netfs_problem, "two_nodes": _two_nodes_problem}


def pytest_configure(config: pytest.Config) -> None:
    """The marker of the two-node cluster's tests (beside setup.cfg's slurm and netfs)."""
    config.addinivalue_line("markers", "two_nodes: needs the two-node SLURM cluster (tests/slurm2/start-cluster.sh)")
MISSING = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """A test that needs the SLURM cluster or the network filesystem mounts is slow by definition: the fast
    suite (`python -m pytest`) runs on a machine where neither was started.

    Once the markers have selected (after the yield), the selected tests whose service is missing are left
    out outside CI, with one line of why at the end rather than one skip line each; under CI=true they run,
    and their fixture fails them.
    """
    for item in items:
        if any(item.get_closest_marker(name) for name in NEEDS_SERVICES):
            item.add_marker(pytest.mark.slow)
    yield
    config.stash[MISSING] = []
    if os.environ.get("CI") == "true":
        return
    for marker, problem in NEEDS_SERVICES.items():
        needing = [item for item in items if item.get_closest_marker(marker)]
        why = problem() if needing else None
        if why is None:
            continue
        items[:] = [item for item in items if item not in needing]
        config.hook.pytest_deselected(items=needing)
        config.stash[MISSING].append(f"{len(needing)} tests marked {marker} left out: {why}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The lines of tests left out for a missing service, once each."""
    for line in config.stash.get(MISSING, []):
        terminalreporter.write_line(line, yellow=True)


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
