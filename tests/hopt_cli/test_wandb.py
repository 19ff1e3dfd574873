"""`hopt wandb --offline`: the real wandb package writes each member's run files, which hold its journal
commits against `interval`, its starting hyperparameters as config and its exploits; exporting again logs
only what is new; the best checkpoint is a model artifact; nothing touches the network or the experiment.

The run files are read back with wandb's own protobuf records (wandb.proto); wandb 0.2x+ ships no Python
reader of the file's framing, LevelDB's log format (32 KiB blocks of checksummed chunks), read here."""
from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hopt_cli import wandb_export
from hopt_cli.errors import HoptError
from hopt_cli.events import Commit
from hopt_cli.experiment import Experiment
from hopt_cli.store import Store
from tests.commands import hopt
from tests.conftest import REPO
from tests.hopt_cli.tracked import OPTIMIZERS, finish, in_process, listing

pytestmark = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                reason="wandb is not installed (pip install -e '.[wandb]')")
BLOCK, HEADER, FILE_HEADER = 32768, 7, 7  # LevelDB log framing; the file starts with ":W&B", magic, version
Rows = dict[str, list[dict[str, Any]]]  # run name -> its history rows (without W&B's own _keys), by interval


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline, its folder in tmp, no API key anywhere: nothing can reach the network."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wb-data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wb").mkdir()


def records(path: Path) -> Iterator[Any]:
    """Every record of a .wandb run file, parsed by wandb's own protobuf class."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pieces = FILE_HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        pieces += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def read_runs(folder: Path) -> tuple[Rows, dict[str, dict[str, Any]], dict[str, set[str]], dict[str, Any]]:
    """Every offline run in W&B's folder, merged by run name over its resumptions: history rows, config,
    tags, and the artifacts logged (name -> the run that logged it)."""
    rows: Rows = {}
    config: dict[str, dict[str, Any]] = {}
    tags: dict[str, set[str]] = {}
    artifacts: dict[str, Any] = {}
    for path in sorted(folder.glob("offline-run-*/*.wandb")):
        name = None
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                name = record.run.display_name
                config.setdefault(name, {}).update(
                    {i.key: json.loads(i.value_json) for i in record.run.config.update
                     if not i.key.startswith("_")})
                tags.setdefault(name, set()).update(record.run.tags)
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                rows.setdefault(name, []).append({k: v for k, v in row.items() if not k.startswith("_")})
            elif kind == "artifact":
                artifacts[record.artifact.name] = (name, record.artifact)
            elif kind == "config":
                config.setdefault(name, {}).update({i.key: json.loads(i.value_json) for i in record.config.update
                                                    if not i.key.startswith("_")})
    return {n: sorted(r, key=lambda row: row["interval"]) for n, r in rows.items()}, config, tags, artifacts


def expected(root: Path) -> tuple[Rows, dict[str, dict[str, Any]], dict[str, set[int]]]:
    """From the journal alone: each member run's rows by interval, its first hyperparameters, its exploits."""
    rows: Rows = {}
    config: dict[str, dict[str, Any]] = {}
    exploits: dict[str, set[int]] = {}
    for c in Store.open(root).read_events()[0]:
        if not isinstance(c, Commit):
            continue
        run = f"m{c.member:03d}"
        config.setdefault(run, c.hparams)
        row = {"interval": c.interval, "score": c.score, **{f"metrics/{k}": v for k, v in c.metrics.items()},
               **{f"hparams/{k}": OPTIMIZERS.index(v) if k == "optimizer" else v for k, v in c.hparams.items()}}
        if c.decision.sigma > 0:  # ROMUL's step size, which made this interval's hyperparameters
            row["pbt/sigma"] = c.decision.sigma
        if c.decision.action == "exploit":
            row["pbt/exploit_from"] = c.decision.parent
            exploits.setdefault(run, set()).add(c.interval)
        rows.setdefault(run, []).append(row)
    return {n: sorted(r, key=lambda row: row["interval"]) for n, r in rows.items()}, config, exploits


def without_texts(rows: Rows) -> Rows:
    return {n: [{k: v for k, v in row.items() if k != "pbt/exploit"} for row in r] for n, r in rows.items()}


def test_offline_runs_hold_the_journal_exported_in_two_passes(tmp_path):
    worker = in_process(tmp_path / "exp")
    for _ in range(9):
        worker.train_and_commit(worker.claim())
    root = worker.store.paths.root
    first = wandb_export.export(root, "hopt-test", offline=True)
    finish(worker)
    before = listing(root)

    second = wandb_export.export(root, "hopt-test", offline=True)
    third = wandb_export.export(root, "hopt-test", offline=True)

    assert listing(root) == before
    rows, config, tags, artifacts = read_runs(tmp_path / "wb" / "wandb")
    want_rows, want_config, exploits = expected(root)
    best = Experiment(root).best()
    assert (first.points, first.ended, second.ended, third.points, third.best) == (9, False, True, 0, None)
    assert first.points + second.points == len(Experiment(root).history())
    assert without_texts({n: r for n, r in rows.items() if n != "population"}) == want_rows  # each point once
    assert {n: c for n, c in config.items() if n != "population"} == want_config
    assert config["population"]["population"] == 4
    assert exploits and all(("exploited" in tags[run]) == (run in exploits) for run in want_rows)
    for run, intervals in exploits.items():
        texts = {row["interval"]: row["pbt/exploit"] for row in rows[run] if "pbt/exploit" in row}
        assert sorted(texts) == sorted(intervals)
        for interval, text in texts.items():
            parent = next(row["pbt/exploit_from"] for row in rows[run] if row["interval"] == interval)
            assert text.startswith(f"interval {interval}: copied member {parent}'s checkpoint")
    (logged_by, artifact), = [v for k, v in artifacts.items() if k.endswith("-best")]
    assert logged_by == f"m{best.member:03d}" and artifact.type == "model"
    assert json.loads(artifact.metadata) == {"member": best.member, "interval": best.interval, "score": best.score}
    names = {entry.path for entry in artifact.manifest.contents}
    assert {"schedule.yaml", "scores.csv"} <= names and any(n.startswith("checkpoint/") for n in names)


def test_the_command_and_a_missing_extra(tmp_path):
    worker = in_process(tmp_path / "exp", intervals=1)
    finish(worker)
    root = str(worker.store.paths.root)
    shadow = tmp_path / "shadow" / "wandb"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named wandb')\n")

    done = hopt("wandb", "--dir", root, "--project", "hopt-test", "--offline", cwd=tmp_path)
    missing = hopt("wandb", "--dir", root, "--project", "p", env={"PYTHONPATH": f"{shadow.parent}:{REPO}"},
                   cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("logged 4 intervals to 4 of 4 member runs in group toy-")
    assert (missing.returncode, missing.stderr.strip().splitlines()) == (2, [
        "hopt: error: hopt wandb needs wandb: pip install wandb (or, in hopt's folder, pip install -e '.[wandb]')"])


def test_run_files_inside_the_experiment_are_refused(tmp_path, monkeypatch):
    worker = in_process(tmp_path / "exp", intervals=1)
    finish(worker)
    root = worker.store.paths.root
    monkeypatch.setenv("WANDB_DIR", str(root / "logs"))
    before = listing(root)

    with pytest.raises(HoptError, match="inside the experiment directory") as refused:
        wandb_export.export(root, "hopt-test", offline=True)

    assert refused.value.exit_code == 2 and listing(root) == before
