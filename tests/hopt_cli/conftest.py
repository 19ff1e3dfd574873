"""Experiments the result commands read: finished toy runs made by `hopt run`, and one caught mid-run."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.store import Claimed
from hopt_cli.store.leases import Holder
from hopt_cli.worker import Worker
from tests.commands import hopt
from tests.conftest import REPO, toy_recipe
from tests.slurm_cluster import wait_for


def run_to_completion(root: Path, recipe: dict[str, Any]) -> Path:
    path = root.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = hopt("run", str(path), "--dir", str(root), "--workers", "2")
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="session")
def quadratic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """T1, 5 members x 8 intervals, run to completion by two workers."""
    return run_to_completion(tmp_path_factory.mktemp("t1") / "exp", toy_recipe(population=5, intervals=8))


@pytest.fixture(scope="session")
def ellipsoid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """T4 (8 hyperparameters, half on a log scale, seeded noise), 6 members x 8 intervals."""
    recipe = yaml.safe_load((REPO / "recipes" / "toy-ellipsoid.yaml").read_text())
    return run_to_completion(tmp_path_factory.mktemp("t4") / "exp", {**recipe, "population": 6, "intervals": 8})


def mid_run(root: Path, commits: int = 6) -> tuple[Store, Claimed]:
    """T1 with `commits` intervals committed in this process and one member claimed (a live lease held)."""
    store = Store.create(root, Recipe.from_dict(toy_recipe(population=4, intervals=6)))
    worker = Worker(store, "pytest-worker")
    for _ in range(commits):
        worker.train_and_commit(worker.claim())
    return store, worker.claim()


def reclaimed_and_failed(root: Path) -> tuple[Claimed, Claimed]:
    """`mid_run`, then the held lease goes silent and is reclaimed, then an interval fails (NaN score)."""
    store, silent = mid_run(root)
    old = time.time() - 1000
    os.utime(store.paths.lease(silent.member), (old, old))
    with store.transaction():
        store.leases.reclaim(Holder.this_process("reclaimer"))
    failing = Worker(store, "failing", trainable=lambda ctx: float("nan"))
    failed = failing.claim()
    failing.train_and_commit(failed)
    return silent, failed


def hopt_onto_a_full_disk(tmp_path: Path, command: str, experiment: Path, out: str) -> subprocess.CompletedProcess:
    """`hopt COMMAND --dir EXPERIMENT --out DISK/OUT` onto a 64 KiB tmpfs that a file has filled, in a mount
    namespace of its own; stdout gets `status=N` and then what `ls -A` finds in DISK/OUT. Skips where no
    tmpfs can be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$1"', "sh", str(disk)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.strip()}")
    script = ('mount -t tmpfs -o size=64k tmpfs "$1" && (head -c 1M /dev/zero > "$1/filler" 2>/dev/null || true) && '
              '"$3" -m hopt_cli "$4" --dir "$2" --out "$1/$5"; echo "status=$?"; ls -A "$1/$5"')
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(disk), str(experiment), sys.executable,
                           command, out], cwd=REPO, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def worker_in_its_first_interval(tmp_path: Path, recipe: dict[str, Any],
                                 timeout: float = 120.0) -> Iterator[tuple[subprocess.Popen, Path, Path]]:
    """A real `hopt worker` process held inside its first interval by `recipe`'s trainable
    (tests.hopt_cli.trainables:waits_for_go) until the test creates `go`: (the process, the experiment
    directory, `go`). The process is killed on the way out if it still runs."""
    path, root, markers, go = tmp_path / "exp.yaml", tmp_path / "exp", tmp_path / "markers", tmp_path / "go"
    path.write_text(yaml.safe_dump(recipe))
    markers.mkdir()
    env = {**os.environ, "HOPT_TEST_MARKER": str(markers), "HOPT_TEST_GO": str(go)}
    worker = subprocess.Popen([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root), "--recipe", str(path)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(not p.name.startswith(".") for p in markers.iterdir()) or worker.poll() is not None,
                 timeout, "the worker inside its first interval", poll=0.02)
        assert worker.poll() is None, worker.communicate()
        yield worker, root, go
    finally:
        worker.kill()
        worker.wait()
