"""Corrupted files and operator mistakes: each is recovered automatically (the experiment then completes
with every invariant) or stops with one clear error naming the file and the fix, never a silent wrong result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hopt_cli.errors import ExperimentFailed
from hopt_cli.events import Claim, Commit
from hopt_cli.population import Population
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.worker import Worker
from tests.conftest import REPO, toy_recipe
from tests.invariants import check_finished_experiment

POPULATION, INTERVALS = 4, 5


def dead_pid() -> int:
    """The pid of a process that has exited: a holder that is gone."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def half_done(root: Path, **overrides) -> Store:
    """An experiment stopped part way: some commits, a snapshot behind the journal, and the lease of a
    worker that died mid-interval."""
    store = Store.create(root, Recipe.from_dict(toy_recipe(population=POPULATION, intervals=INTERVALS, **overrides)))
    worker = Worker(store, "before")
    for _ in range(POPULATION * 2 + 1):
        worker.train_and_commit(worker.claim())
    worker.holder = replace(worker.holder, pid=dead_pid())
    worker.claim()
    return store


def finish(root: Path) -> None:
    """Run a worker to the end and check every invariant."""
    report = Worker(Store.open(root), "after").run()
    assert report.complete
    check_finished_experiment(root)


def worker_process(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The one error line of a worker stopped by a file it cannot read: a runtime failure, exit status 1."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("hopt: error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# recovered automatically


def test_a_torn_journal_tail(tmp_path):
    store = half_done(tmp_path / "exp")
    with open(store.paths.journal, "ab") as journal:
        journal.write(b'{"type": "commit", "member": 2, "interv')
    finish(store.paths.root)


@pytest.mark.parametrize("garbage", [b"{not json", b"", b'{"format": 1, "offset": 3, "population": {}}',
                                     b'{"format": 1, "offset": 99999999, "population": []}'])
def test_a_garbage_state_json(tmp_path, garbage):
    store = half_done(tmp_path / "exp")
    store.paths.state.write_bytes(garbage)
    finish(store.paths.root)


def test_leftover_temporary_files_are_cleaned_up(tmp_path):
    store = half_done(tmp_path / "exp")
    p = store.paths
    crashed = [p.root / ".state.json.tmp-123-abcd", p.leases / ".00001.json.tmp-123-abcd",
               p.root / ".experiment.yaml.tmp-123-abcd", p.root / ".lock.link-deadbeef"]
    for path in crashed:
        path.write_text("half")
    os.utime(p.root / ".state.json.tmp-123-abcd", (1, 1))  # snapshots are written outside the lock
    os.utime(p.leases / ".00001.json.tmp-123-abcd", (1, 1))  # and leases, once their claim is journaled
    os.utime(p.root / ".experiment.yaml.tmp-123-abcd", (1, 1))  # a crashed `hopt init`, long ago
    os.utime(p.root / ".lock.link-deadbeef", (1, 1))  # a hard-link locker that died waiting
    (p.staging / "0123456789abcdef").mkdir()
    (p.checkpoints / "m00003-i00009-orphan").mkdir()  # renamed in, then the worker died before the journal
    (p.trash / "leftover.1234").mkdir()

    finish(p.root)

    assert not any(path.exists() for path in crashed)
    assert not list(p.trash.iterdir())


def test_a_deleted_lock_file(tmp_path):
    store = half_done(tmp_path / "exp")
    store.paths.lock.unlink()
    finish(store.paths.root)
    assert store.paths.lock.exists()


@pytest.mark.parametrize("edit", [
    "I edited this",
    '{"member": "zero"}',
    json.dumps({"member": "0", "interval": 0, "token": "x", "since": 0, "parent_checkpoint": None,
                "holder": {"worker": "w", "host": "h", "pid": 1, "pidns": None}}),
    json.dumps({"member": 99, "interval": 0, "token": "x", "since": 0, "parent_checkpoint": None,
                "holder": {"worker": "w", "host": "h", "pid": 1, "pidns": None}}),
], ids=["text", "wrong keys", "wrong type", "no such member"])
def test_a_lease_file_edited_by_hand(tmp_path, edit):
    store = half_done(tmp_path / "exp")
    in_flight = next(store.paths.leases.iterdir())
    in_flight.write_text(edit)
    (store.paths.leases / "00003.json").write_text(edit)
    finish(store.paths.root)


def test_a_members_start_is_the_same_draw_however_often_its_first_interval_is_retried(tmp_path):
    recipe = Recipe.from_dict(toy_recipe(population=2, intervals=2))
    calm = Worker(Store.create(tmp_path / "calm", recipe), "calm").claim()
    store = Store.create(tmp_path / "exp", recipe)
    killed = Worker(store, "killed")
    killed.holder = replace(killed.holder, pid=dead_pid())
    starts = [killed.claim()]  # then killed mid-interval: its lease is reclaimed
    failing = Worker(store, "failing", trainable=lambda ctx: float("nan"))
    starts.append(failing.claim())
    failing.train_and_commit(starts[-1])
    starts.append(Worker(store, "after").claim())

    assert [(c.member, c.decision.action, c.decision.interval) for c in starts] == [(0, "start", 0)] * 3
    assert [e.attempt for e in store.read_events()[0] if isinstance(e, Claim)] == [0, 1, 2]
    assert [c.hparams for c in starts] == [calm.hparams] * 3
    assert [c.decision for c in starts] == [calm.decision] * 3


# stopped with one clear error


def test_a_truncated_journal_is_refused(tmp_path):
    store = half_done(tmp_path / "exp")
    store.write_snapshot()
    with open(store.paths.journal, "rb+") as journal:
        journal.truncate(store.paths.journal.stat().st_size // 2)

    error = one_line_error(worker_process(store.paths.root))

    assert error.startswith(f"hopt: error: {store.paths.journal}: is shorter than state.json records")
    assert error.endswith("restore it from a backup; or, to accept the loss, delete state.json")


def test_a_deleted_journal_is_refused(tmp_path):
    store = half_done(tmp_path / "exp")
    store.paths.journal.unlink()

    error = one_line_error(worker_process(store.paths.root))

    assert error.startswith(f"hopt: error: {store.paths.journal}: is missing, but state.json or checkpoints show")
    assert not store.paths.journal.exists()


@pytest.mark.parametrize("edit", ["inserted", "in place of a longer one"])
@pytest.mark.parametrize("snapshot", ["state.json kept", "state.json deleted"])
def test_a_garbage_line_inside_the_journal_is_named_by_its_line_and_byte(tmp_path, edit, snapshot):
    store = half_done(tmp_path / "exp")
    store.write_snapshot()
    lines = store.paths.journal.read_bytes().splitlines(keepends=True)
    after = lines[3:] if edit == "inserted" else lines[4:]
    store.paths.journal.write_bytes(b"".join(lines[:3]) + b"\x00\x00garbage\n" + b"".join(after))
    if snapshot == "state.json deleted":
        store.paths.state.unlink()

    error = one_line_error(worker_process(store.paths.root))

    at = len(b"".join(lines[:3]))
    assert error == (f"hopt: error: {store.paths.journal}: line 4 (at byte {at}) is not a journal event (garbage: "
                     f"'\\x00\\x00garbage'); restore the file from a backup, or cut the journal before that line "
                     f"(`truncate -s {at} {store.paths.journal}`) and delete state.json")


def test_a_garbage_experiment_yaml(tmp_path):
    store = half_done(tmp_path / "exp")
    store.paths.experiment.write_text("population: [")

    error = one_line_error(worker_process(store.paths.root))

    assert error.startswith(f"hopt: error: {store.paths.experiment}: not a valid resolved recipe")


def test_missing_checkpoints_stop_the_experiment_naming_one(tmp_path):
    store = half_done(tmp_path / "exp", max_failures=2)
    for checkpoint in store.paths.checkpoints.iterdir():
        os.rename(checkpoint, store.paths.trash / checkpoint.name)

    with pytest.raises(ExperimentFailed) as caught:
        Worker(Store.open(store.paths.root), "after").run()

    message = str(caught.value)
    assert "is missing (deleted outside hopt?); restore it from a backup" in message
    assert f"checkpoint {store.paths.checkpoints}/m0" in message


def test_corrupt_checkpoints_fail_their_intervals_naming_the_checkpoint(tmp_path):
    store = half_done(tmp_path / "exp", max_failures=2)
    for checkpoint in store.paths.checkpoints.iterdir():
        (checkpoint / "state.json").write_text("\x00garbage")

    with pytest.raises(ExperimentFailed) as caught:
        Worker(Store.open(store.paths.root), "after").run()

    assert f"JSONDecodeError: Expecting value: line 1 column 1 (char 0) (resuming from {store.paths.checkpoints}/m0" \
        in str(caught.value)


# a lock that failed (flock not shared across nodes, a hard-link lock broken as stale): fencing tokens,
# the journal's order and a careful garbage collector keep the data correct


def test_two_claims_of_one_member_are_settled_by_the_journals_order(tmp_path):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=1)))
    Worker(store, "w").run()
    claim, commit = [e for e in store.read_events()[0] if isinstance(e, (Claim, Commit)) and e.member == 0]
    rival = {"token": "rival", "worker": "rival"}
    events = [claim, replace(claim, **rival), commit, replace(commit, **rival, checkpoint="m00000-i00000-rival")]

    population = Population(2, 1)
    for event in events:
        population.apply(event)

    assert population.members[0].checkpoint == "m00000-i00000-rival"  # the later claim's commit counts
    assert population.members[0].interval == 1 and len(population.members[0].lineage.scores) == 1


def test_garbage_collection_with_a_stale_view_keeps_what_another_worker_just_made(tmp_path):
    stale = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=3)))
    stale.sync()
    other = Store.open(stale.paths.root)
    worker = Worker(other, "other")
    worker.train_and_commit(worker.claim())  # committed meanwhile: the stale view has not seen it
    in_flight = worker.claim()
    other.paths.staging_dir(in_flight.lease.token).mkdir()

    stale.collector.sweep([])  # as if it held the lock too, with the view it had before
    stale.collector.empty_trash()

    assert {p.name for p in stale.paths.checkpoints.iterdir()} == other.sync().referenced_checkpoints()
    assert stale.paths.staging_dir(in_flight.lease.token).is_dir()
