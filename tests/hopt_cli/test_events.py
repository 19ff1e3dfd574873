"""Journal events: every kind written and read through hopt_cli/events.py; format 1 read, never written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hopt_cli import events
from hopt_cli.decision import Decision
from hopt_cli.errors import CorruptFile
from hopt_cli.events import Adopt, Claim, Commit, Fail, Reclaim, Release, Retry
from hopt_cli.experiment import Experiment
from hopt_cli.store import Store
from tests.conftest import REPO
from tests.hopt_cli.conftest import hopt

FORMAT_1 = REPO / "tests" / "data" / "format-1"
DECISION = Decision("exploit", 1, "m00001-i00002-ab", 2, (0.25, 0.5), 0.1, 2, False)
EVERY_KIND = [
    Claim(member=0, token="t0", decision=DECISION, hparams={"x": 0.25}, attempt=1, worker="w", host="node", pid=7,
          pidns=4026531836, time=1.5),
    Commit(member=0, token="t0", decision=DECISION, hparams={"x": 0.25}, checkpoint="m00000-i00002-t0", score=0.75,
           metrics={"score": 0.75, "loss": 0.1}, threads={"OMP_NUM_THREADS": "1"}, worker="w", time=2.5),
    Adopt(member=2, token="t1", decision=DECISION, hparams={"x": 0.25}, checkpoint="m00001-i00002-ab", score=0.5,
          worker="w"),
    Fail(member=0, interval=2, token="t0", reason="RuntimeError: boom", worker="w"),
    Release(member=0, interval=2, token="t0", reason="stop requested", worker="w"),
    Reclaim(member=0, interval=2, token="t0", reason="no heartbeat", holder="w", worker="v"),
    Retry(worker="hopt-retry"),
]


@pytest.mark.parametrize("event", EVERY_KIND, ids=[e.kind for e in EVERY_KIND])
def test_every_kind_reads_back_as_written_through_strict_json(event):
    line = json.dumps(events.encode(event), allow_nan=False)

    assert events.decode(json.loads(line)) == event


def test_every_event_names_its_writer_and_an_ended_lease_its_reason():
    for event in EVERY_KIND:
        data = events.encode(event)
        assert data["worker"], data
        if isinstance(event, (Fail, Release, Reclaim)):
            assert data["reason"] and "error" not in data and "by" not in data


def test_unsafe_metrics_are_made_strict_json_and_long_errors_keep_their_tail():
    commit = Commit(member=0, token="t", decision=DECISION, hparams={}, checkpoint="c", score=1.0,
                    metrics={"loss": float("nan"), "ok": True, "name": "a", "list": [1]})
    assert events.encode(commit)["metrics"] == {"loss": None, "ok": True, "name": "a"}
    failed = events.fail(0, 2, "t", "x" * 5000 + "the end", "w")
    assert len(failed.reason) == events.REASON_LIMIT and failed.reason.endswith("the end")


@pytest.mark.parametrize("data, problem", [
    ({"type": "teleport", "member": 0}, "unknown event type 'teleport'"),
    ({"type": "fail", "member": 0, "interval": 1, "worker": "w"}, "not a valid fail event"),
])
def test_a_line_that_is_no_event_is_named_with_its_fix(tmp_path, data, problem):
    store = Store.open(_copy_format_1(tmp_path))
    store.sync()
    store.journal.append(data, store.cursor)  # numbered as following the journal: a valid line

    with pytest.raises(CorruptFile) as caught:
        Experiment(store.paths.root).events()
    assert problem in str(caught.value) and "restore the file from a backup" in str(caught.value)


def _copy_format_1(tmp_path: Path) -> Path:
    root = tmp_path / "exp"
    shutil.copytree(FORMAT_1, root, ignore=shutil.ignore_patterns("README.md"))
    return root


def test_an_experiment_of_format_1_reads_with_its_old_keys(tmp_path):
    experiment = Experiment(_copy_format_1(tmp_path))

    log = experiment.events()
    reclaim = next(e for e in log if e.kind == "reclaim")
    fail = next(e for e in log if e.kind == "fail")
    assert (reclaim.worker, reclaim.by, reclaim.reason) == ("pytest-worker", "reclaimer",
                                                            "no heartbeat for 1000 s (timeout 60 s)")
    assert (fail.worker, fail.reason) == ("failing", "metric 'score' is nan")
    assert log[-1].kind == "release" and log[-1].reason == "stop requested"
    status = experiment.status()
    assert status.done == 6 and status.members[2].last_error == "metric 'score' is nan"
    assert len(experiment.history()) == 6
    assert experiment.store.sync() == experiment.store.rebuild()


def test_a_worker_refuses_an_experiment_of_format_1_and_writes_nothing(tmp_path):
    root = _copy_format_1(tmp_path)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    result = hopt("worker", "--dir", str(root))

    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "is an experiment of format 1" in line and "start it again in a new --dir" in line
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert not any(p.parts[0] in ("checkpoints", "leases", "staging") for p in set(after) - set(before))
