"""`hopt mlflow`: each member's run holds its journal commits at step = interval, its starting hyperparameters
as params and its exploits as tags; the parent run holds the cursor, so exporting again logs only what is
new; the best checkpoint and schedule.yaml are artifacts; nothing is written into the experiment directory.
Read back from a sqlite store through MlflowClient, and from a real `mlflow server` through its REST API."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hopt_cli import mlflow_export
from hopt_cli.errors import HoptError
from hopt_cli.events import Commit
from hopt_cli.experiment import Experiment
from hopt_cli.store import Store
from tests.commands import hopt
from tests.conftest import REPO
from tests.hopt_cli.tracked import OPTIMIZERS, finish, in_process, listing

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                reason="mlflow is not installed (pip install -e '.[mlflow]')")
Runs = dict[str, dict[str, list[tuple[int, float]]]]  # run name -> metric -> (step, value) in step order


def expected(root: Path) -> tuple[Runs, dict[str, dict[str, str]], dict[str, dict[str, int]]]:
    """From the journal alone: each member run's metric histories, its params (its first commit's
    hyperparameters) and its exploits (interval -> parent member)."""
    runs: Runs = {}
    params: dict[str, dict[str, str]] = {}
    exploits: dict[str, dict[str, int]] = {}
    for c in Store.open(root).read_events()[0]:
        if not isinstance(c, Commit):
            continue
        run = f"m{c.member:03d}"
        params.setdefault(run, {k: str(v) for k, v in c.hparams.items()})
        values = {"score": c.score, **{f"metrics/{k}": v for k, v in c.metrics.items()},
                  **{f"hparams/{k}": OPTIMIZERS.index(v) if k == "optimizer" else v for k, v in c.hparams.items()}}
        if c.decision.sigma > 0:  # ROMUL's step size, which made this interval's hyperparameters
            values["pbt/sigma"] = c.decision.sigma
        if c.decision.action == "exploit":
            values["pbt/exploit_from"] = c.decision.parent
            exploits.setdefault(run, {})[f"hopt.exploit.{c.interval:04d}"] = c.decision.parent
        for key, value in values.items():
            runs.setdefault(run, {}).setdefault(key, []).append((c.interval, float(value)))
    return {r: {k: sorted(v) for k, v in m.items()} for r, m in runs.items()}, params, exploits


def read_back(client: Any, experiment_id: str) -> tuple[Any, dict[str, Any]]:
    """The parent run, and the member runs by name, as MlflowClient reads them."""
    found = client.search_runs([experiment_id], max_results=1000)
    (parent,) = [r for r in found if r.data.tags.get("hopt.role") == "population"]
    return parent, {r.info.run_name: r for r in found if r.data.tags.get("hopt.role") == "member"}


def histories(client: Any, members: dict[str, Any]) -> Runs:
    return {name: {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                   for key in run.data.metrics} for name, run in members.items()}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite tracking store, made once: creating one runs MLflow's schema migrations (seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite(migrated: Path, tmp_path: Path) -> str:
    """A fresh sqlite tracking store of this test's own (a copy of the empty one), outside its experiment."""
    shutil.copyfile(migrated, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_each_member_run_holds_its_commits_params_exploits_and_the_best(tmp_path, monkeypatch, sqlite):
    from mlflow.tracking import MlflowClient

    worker = in_process(tmp_path / "exp")
    finish(worker)
    root = worker.store.paths.root
    before = listing(root)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact store, ./mlruns, outside the experiment

    done = mlflow_export.export(root, sqlite, "holds")

    client = MlflowClient(sqlite)
    parent, members = read_back(client, done.experiment_id)
    runs, params, exploits = expected(root)
    best = Experiment(root).best()
    assert listing(root) == before
    assert (done.points, done.runs, done.ended, done.best) == (len(Experiment(root).history()), 4, True, best.member)
    assert sorted(members) == sorted(runs) == ["m000", "m001", "m002", "m003"]
    assert histories(client, members) == runs  # MLflow keeps metrics as doubles: every value exact
    assert {name: run.data.params for name, run in members.items()} == params
    assert sum(map(len, exploits.values())) > 0
    for name, run in members.items():
        tags = {k: v for k, v in run.data.tags.items() if k.startswith("hopt.exploit.")}
        assert sorted(tags) == sorted(exploits.get(name, {}))
        for key, text in tags.items():
            assert text.startswith(f"interval {int(key[-4:])}: copied member {exploits[name][key]}'s checkpoint")
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
    assert parent.data.tags["hopt.cursor"] == str(done.points)
    assert (parent.data.tags["hopt.best_member"], parent.data.tags["hopt.best_interval"]) == \
        (str(best.member), str(best.interval))
    assert parent.data.params["population"] == "4" and parent.info.run_name == "toy"
    best_run = members[f"m{best.member:03d}"].info.run_id
    assert sorted(a.path for a in client.list_artifacts(best_run, "best")) == \
        ["best/checkpoint", "best/schedule.yaml", "best/scores.csv"]
    schedule = Path(client.download_artifacts(best_run, "best/schedule.yaml", str(tmp_path)))
    Experiment(root).export_best(tmp_path / "exported")
    assert schedule.read_text() == (tmp_path / "exported" / "schedule.yaml").read_text()


def test_exporting_again_logs_only_what_is_new(tmp_path, monkeypatch, sqlite):
    from mlflow.tracking import MlflowClient

    worker = in_process(tmp_path / "exp")
    for _ in range(9):
        worker.train_and_commit(worker.claim())
    root = worker.store.paths.root
    monkeypatch.chdir(tmp_path)

    first = mlflow_export.export(root, sqlite, "again")
    finish(worker)
    second = mlflow_export.export(root, sqlite, "again")
    third = mlflow_export.export(root, sqlite, "again")
    once = mlflow_export.export(root, sqlite, "once")

    client = MlflowClient(sqlite)
    runs = expected(root)[0]
    assert (first.points, first.ended, second.ended, third.points, third.best) == (9, False, True, 0, None)
    assert first.points + second.points == once.points
    assert second.parent_run == first.parent_run != once.parent_run
    assert histories(client, read_back(client, first.experiment_id)[1]) == runs  # each point once
    assert histories(client, read_back(client, once.experiment_id)[1]) == runs


def test_a_missing_extra_is_one_line_naming_the_install(tmp_path):
    worker = in_process(tmp_path / "exp", intervals=1)
    finish(worker)
    shadow = tmp_path / "shadow" / "mlflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named mlflow')\n")

    done = hopt("mlflow", "--dir", str(worker.store.paths.root), env={"PYTHONPATH": f"{shadow.parent}:{REPO}"},
                cwd=tmp_path)

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["hopt: error: hopt mlflow needs mlflow: pip install mlflow (or, in "
                                                "hopt's folder, pip install -e '.[mlflow]')"]


@pytest.mark.parametrize("store", ["tracking", "artifacts"])
def test_a_store_inside_the_experiment_is_refused(tmp_path, monkeypatch, sqlite, store):
    worker = in_process(tmp_path / "exp", intervals=1)
    finish(worker)
    root = worker.store.paths.root
    before = listing(root)
    monkeypatch.chdir(root if store == "artifacts" else tmp_path)  # MLflow's default artifact store: ./mlruns
    uri = sqlite if store == "artifacts" else f"sqlite:///{root / 'mlflow.db'}"

    with pytest.raises(HoptError, match="is inside the experiment directory") as refused:
        mlflow_export.export(root, uri, "refused")

    assert refused.value.exit_code == 2 and listing(root) == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on 127.0.0.1 with a sqlite store and served artifacts; its URL."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "art")],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "wb"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while get(f"{url}/health") is None:
            assert process.poll() is None, (folder / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
            time.sleep(0.5)  # polling for readiness, not standing in for it
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except (urllib.error.URLError, ConnectionError):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode()


def post(url: str, document: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(document).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def rest_runs(url: str, experiment_id: str) -> dict[str, dict[str, Any]]:
    """Every run of the experiment by name, as the server's REST API returns it."""
    found = post(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 1000})
    return {run["info"]["run_name"]: run for run in found["runs"]}


def rest_histories(url: str, runs: dict[str, dict[str, Any]]) -> Runs:
    result: Runs = {}
    for name, run in runs.items():
        if name.startswith("m"):
            for metric in run["data"].get("metrics", []):
                query = urllib.parse.urlencode({"run_id": run["info"]["run_id"], "metric_key": metric["key"]})
                points = get(f"{url}/api/2.0/mlflow/metrics/get-history?{query}")["metrics"]
                result.setdefault(name, {})[metric["key"]] = sorted((p["step"], float(p["value"])) for p in points)
    return result


@pytest.mark.slow
def test_a_real_server_holds_the_journal_and_watch_follows_to_the_end(server, tmp_path):
    """`hopt mlflow --watch` started mid-run logs every commit and ends once the experiment is complete."""
    worker = in_process(tmp_path / "exp")
    for _ in range(5):
        worker.train_and_commit(worker.claim())
    root = worker.store.paths.root
    before_end = listing(root)
    watching = subprocess.Popen([sys.executable, "-m", "hopt_cli", "mlflow", "--dir", str(root), "--tracking-uri",
                                 server, "--experiment", "watched", "--watch"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_line = watching.stdout.readline()  # its first pass is done
    assert first_line.startswith("logged 5 intervals to"), first_line + watching.stderr.read()
    assert listing(root) == before_end
    finish(worker)
    out, err = watching.communicate(timeout=120)

    assert watching.returncode == 0, err
    assert out.rstrip().endswith("the experiment has ended")
    experiment_id = get(f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=watched")[
        "experiment"]["experiment_id"]
    runs = rest_runs(server, experiment_id)
    assert rest_histories(server, runs) == expected(root)[0]
    assert {name: run["info"]["status"] for name, run in runs.items()} == \
        {**{f"m{m:03d}": "FINISHED" for m in range(4)}, "toy": "FINISHED"}
    tags = {t["key"]: t["value"] for t in runs["toy"]["data"]["tags"]}
    best_run = runs[f"m{int(tags['hopt.best_member']):03d}"]["info"]["run_id"]
    listed = get(f"{server}/api/2.0/mlflow/artifacts/list?run_id={best_run}&path=best")
    assert sorted(f["path"] for f in listed["files"]) == ["best/checkpoint", "best/schedule.yaml", "best/scores.csv"]
