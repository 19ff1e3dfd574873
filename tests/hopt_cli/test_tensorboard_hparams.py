"""`hopt tensorboard`'s HParams view: once the experiment is complete, each member's run is a session of its
latest interval's hyperparameters (a choice as its value), read back by TensorBoard's own readers."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from hopt_cli.events import Adopt, Commit
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.tensorboard import export
from hopt_cli.worker import Worker
from tests.conftest import toy_recipe

SESSION = "_hparams_/session_start_info"


def sessions(out: Path) -> dict[str, dict[str, Any]]:
    """Each run's session hyperparameters, as the HParams plugin parses them; runs without one left out."""
    found = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
        accumulator.Reload()
        if SESSION in accumulator.Tags()["tensors"]:
            content = accumulator.SummaryMetadata(SESSION).plugin_data.content
            info = metadata.parse_session_start_info_plugin_data(content)
            found[folder.name] = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                                  for k, v in info.hparams.items()}
    return found


def latest_hparams(root: Path) -> dict[str, dict[str, Any]]:
    """From the journal alone: the hyperparameters of each member's last commit or adopt."""
    latest = {}
    for event in Store.open(root).read_events()[0]:
        if isinstance(event, (Commit, Adopt)):
            latest[f"m{event.member:03d}"] = event.hparams
    return latest


def test_a_complete_experiment_gets_one_session_per_member(tmp_path):
    space = {**toy_recipe()["space"], "optimizer": {"type": "choice", "values": ["sgd", "adam"]}}
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=4, intervals=4, space=space)))
    worker = Worker(store, "pytest-worker")
    for _ in range(6):
        worker.train_and_commit(worker.claim())

    export(store.paths.root, tmp_path / "tb")
    midway = sessions(tmp_path / "tb")
    while (claim := worker.claim()) is not None:
        worker.train_and_commit(claim)
    export(store.paths.root, tmp_path / "tb")
    again = export(store.paths.root, tmp_path / "tb")

    assert midway == {}
    assert sessions(tmp_path / "tb") == latest_hparams(store.paths.root)  # float64 in the session: exact
    assert (again.points, again.updated) == (0, ())
    assert served_sessions(tmp_path / "tb", tmp_path / "tensorboard.log", 4) == latest_hparams(store.paths.root)


def served_sessions(logdir: Path, log: Path, count: int) -> dict[str, dict[str, Any]]:
    """The HParams view's sessions and their hyperparameters, as a real TensorBoard serves them once it has
    loaded all `count`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data/plugin/hparams/session_groups"
    query = json.dumps({"experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
                        "allowedStatuses": ["STATUS_UNKNOWN"]}).encode()
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                                   "127.0.0.1", "--port", str(port)], stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"TensorBoard served no {count} HParams sessions within 60 s"
                try:
                    request = urllib.request.Request(url, query, {"Content-Type": "application/json"})
                    with urllib.request.urlopen(request, timeout=5) as response:
                        groups = json.loads(response.read())["sessionGroups"]
                except (urllib.error.URLError, ConnectionError):
                    groups = []
                if len(groups) == count:
                    return {g["name"]: g["hparams"] for g in groups}
                time.sleep(0.1)  # polling for readiness, not standing in for it
        finally:
            server.terminate()
            server.wait(timeout=30)
