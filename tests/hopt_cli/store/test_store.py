"""The directory protocol: journal, snapshot, leases and fencing, garbage collection, creation races."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hopt_cli.errors import HoptError, LockNotExclusive
from hopt_cli.policies import make_policy
from hopt_cli.recipe import Recipe
from hopt_cli.events import Reclaim
from hopt_cli.store import Store
from hopt_cli.store.leases import Holder, Lease
from hopt_cli.worker import Worker
from tests.conftest import toy_recipe


@pytest.fixture(params=["flock", "hardlink"])
def make_store(request):
    """Create a toy experiment with each lock kind in turn: every store test runs against both."""

    def make(root: Path, **overrides) -> Store:
        return Store.create(root, Recipe.from_dict(toy_recipe(lock=request.param, **overrides)))

    return make


def claim_one(store: Store, worker: Worker):
    claim = worker.claim()
    assert claim is not None
    staging = store.paths.staging_dir(claim.lease.token)
    staging.mkdir()
    (staging / "state.json").write_text(json.dumps({"theta": [0.5, 0.5]}))
    return claim, staging


class TestStoreProtocol:
    """The protocol under each lock kind (the `make_store` fixture is parametrized by kind)."""

    def test_torn_last_journal_line_is_ignored_then_cut(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=2, intervals=2)
        Worker(store, "w").run()
        events, end = store.journal.read()
        with open(store.paths.journal, "ab") as journal:
            journal.write(b'{"type": "commit", "member": 0, "inter')

        again, offset = store.journal.read()
        assert again == events and offset == end
        with store.transaction():
            pass
        assert store.paths.journal.stat().st_size == end.offset
        assert store.paths.journal.read_bytes().endswith(b"\n")


    def test_a_corrupt_line_in_the_middle_names_the_file_and_byte(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=2, intervals=1)
        Worker(store, "w").run()
        lines = store.paths.journal.read_bytes().splitlines(keepends=True)
        store.paths.journal.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))

        expected = rf"journal.jsonl: line 2 \(at byte {len(lines[0])}\) is not a journal event \(garbage: 'garbage'\)"
        with pytest.raises(HoptError, match=expected):
            Store.open(store.paths.root).sync()


    def test_snapshot_plus_tail_equals_a_full_replay(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=4, intervals=5)
        worker = Worker(store, "w")
        for _ in range(7):  # stop mid-run so the snapshot lags the journal
            worker.train_and_commit(worker.claim())

        state = json.loads(store.paths.state.read_text())
        assert 0 < state["offset"] < store.paths.journal.stat().st_size
        reader = Store.open(store.paths.root)
        assert reader.sync() == reader.rebuild() == store.population


    def test_garbage_state_json_is_rebuilt_from_the_journal(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=3, intervals=3)
        Worker(store, "w").run()
        store.paths.state.write_text("{not json")

        assert Store.open(store.paths.root).sync() == store.population


    def test_a_commit_with_a_stale_token_is_a_no_op(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=2, intervals=2)
        slow, fast = Worker(store, "slow"), Worker(Store.open(store.paths.root), "fast")  # a process each
        claim, staging = claim_one(store, slow)
        old = os.stat(store.paths.lease(claim.member)).st_mtime - 1000
        os.utime(store.paths.lease(claim.member), (old, old))  # the lease expired...
        retry = fast.claim()  # ...so another worker reclaimed it and took the member
        assert retry.member == claim.member and retry.lease.token != claim.lease.token
        size = store.paths.journal.stat().st_size

        with store.transaction():
            name = store.commit(claim.lease, claim.decision, claim.hparams, 1.0, {}, staging)

        assert name is None
        assert store.paths.journal.stat().st_size == size
        assert not staging.exists()
        assert not any(p.name.startswith(f"m{claim.member:05d}") for p in store.paths.checkpoints.iterdir())
        assert store.leases.holds(retry.lease)


    def test_an_expired_lease_is_reclaimed_and_a_live_one_is_not(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=3, intervals=2, lease={"timeout": 30, "heartbeat": 5})
        expired, _ = claim_one(store, Worker(store, "a"))
        live, _ = claim_one(store, Worker(store, "b"))
        old = os.stat(store.paths.lease(expired.member)).st_mtime - 31
        os.utime(store.paths.lease(expired.member), (old, old))

        with store.transaction():
            kept = store.leases.reclaim(Holder.this_process("c"))

        assert [lease.token for lease in kept] == [live.lease.token]
        assert not store.paths.lease(expired.member).exists()
        last = store.journal.read()[0][-1]
        assert last["type"] == "reclaim" and last["member"] == expired.member and "no heartbeat" in last["reason"]


    def test_a_claim_lists_the_leases_once_per_heartbeat_period(self, make_store, tmp_path, monkeypatch):
        """A listing of leases/ is half a claim on GlusterFS: between listings the journal's open claims
        are the leased members, and an expired lease waits for the next period to be reclaimed."""
        store = make_store(tmp_path / "exp", population=3, intervals=2, lease={"timeout": 30, "heartbeat": 5})
        expired, _ = claim_one(store, Worker(store, "a"))
        other = Store.open(store.paths.root)  # another worker's process, on its own clock
        clock = [1000.0]
        monkeypatch.setattr("hopt_cli.store.leasetable.time.monotonic", lambda: clock[0])
        with other.transaction():
            assert other.leases.leased(Holder.this_process("b")) == {expired.member}  # its first: it lists
        old = os.stat(store.paths.lease(expired.member)).st_mtime - 31
        os.utime(store.paths.lease(expired.member), (old, old))

        clock[0] += 4.9
        with other.transaction():
            assert other.leases.leased(Holder.this_process("b")) == {expired.member}
        assert store.paths.lease(expired.member).exists()
        clock[0] += 0.1
        with other.transaction():
            assert other.leases.leased(Holder.this_process("b")) == set()
        assert not store.paths.lease(expired.member).exists()
        assert isinstance(other.read_events()[0][-1], Reclaim)

    def test_a_lease_of_a_dead_local_process_is_reclaimed_at_once(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=2, intervals=2)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        ghost = Holder("ghost", Holder.this_process("x").host, int(dead.stdout), Holder.this_process("x").pidns)
        with store.transaction() as population:
            decision = make_policy("romul").decide(
                population.view(), 0, store.recipe.space, __import__("numpy").random.default_rng(0))
            store.claim(0, decision, store.recipe.space.decode(decision.coords), ghost)

        with store.transaction():
            kept = store.leases.reclaim(Holder.this_process("me"))
        assert kept == [] and "holder" in store.journal.read()[0][-1]["reason"]
        with store.transaction():
            assert store.leases.leased(Holder.this_process("me")) == set()  # it lists: the next is a period away

        with store.transaction() as population:  # yet a dead claimer is noticed at the next claim
            decision = make_policy("romul").decide(
                population.view(), 1, store.recipe.space, __import__("numpy").random.default_rng(0))
            store.claim(1, decision, store.recipe.space.decode(decision.coords), ghost)
        with store.transaction():
            assert store.leases.leased(Holder.this_process("me")) == set()


    def test_a_hand_edited_lease_is_reclaimed_and_fences_its_holder(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=2, intervals=2)
        claim, staging = claim_one(store, Worker(store, "a"))
        store.paths.lease(claim.member).write_text("I edited this")

        with store.transaction():
            assert store.leases.reclaim(Holder.this_process("b")) == []
            assert store.commit(claim.lease, claim.decision, claim.hparams, 1.0, {}, staging) is None
        assert not staging.exists()


    def test_garbage_collection_keeps_every_referenced_checkpoint(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=4, intervals=6, keep_best=2)
        worker = Worker(store, "w")
        for _ in range(14):
            worker.train_and_commit(worker.claim())
        in_flight, _ = claim_one(store, worker)
        orphan = store.paths.checkpoints / "m00009-i00000-orphan"
        orphan.mkdir()

        with store.transaction() as population:
            live = store.leases.reclaim(worker.holder)
            store.collector.sweep(live)
            referenced = population.referenced_checkpoints()
        store.collector.empty_trash()

        on_disk = {p.name for p in store.paths.checkpoints.iterdir()}
        parent = in_flight.decision.checkpoint
        assert on_disk == referenced | ({parent} if parent else set())
        assert len(population.best) == 2 and {b.checkpoint for b in population.best} <= on_disk
        assert store.paths.staging_dir(in_flight.lease.token).exists()
        assert not list(store.paths.trash.iterdir())


    def test_a_checkpoint_whose_handle_went_stale_is_left_to_the_next_sweep(self, make_store, tmp_path,
                                                                            monkeypatch):
        """GlusterFS answers ESTALE for an entry another node's sweep moved since we listed it."""
        store = make_store(tmp_path / "exp", population=2, intervals=4)
        worker = Worker(store, "w")
        for _ in range(4):
            worker.train_and_commit(worker.claim())
        left = store.paths.checkpoints / "m00000-i00000-left"  # member 0 is past interval 0: garbage
        left.mkdir()
        rename = os.rename

        def stale(source, target):
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(source))

        monkeypatch.setattr(os, "rename", stale)
        with store.transaction():
            assert store.collector.sweep(store.leases.reclaim(worker.holder)) == 0
        assert left.is_dir()
        monkeypatch.setattr(os, "rename", rename)
        with store.transaction():
            assert store.collector.sweep(store.leases.reclaim(worker.holder)) == 1
        assert not left.exists()

    def test_a_snapshot_being_written_outside_the_lock_is_left_alone(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=2, intervals=2)
        in_flight = store.paths.root / ".state.json.tmp-999-abcd"
        in_flight.write_text("half")

        with store.transaction():
            store.collector.sweep(store.leases.live())

        assert in_flight.exists()


def _create_in_child(args: tuple[str, dict]) -> str:
    root, recipe = args
    try:
        Store.create(root, Recipe.from_dict(recipe))
        return "ok"
    except HoptError as err:
        return str(err)


def test_many_processes_creating_the_same_experiment_agree(tmp_path):
    root = str(tmp_path / "exp")
    with ProcessPoolExecutor(4) as pool:
        results = list(pool.map(_create_in_child, [(root, toy_recipe())] * 8))

    assert results == ["ok"] * 8
    assert [p.name for p in Path(root).glob("*experiment.yaml*")] == ["experiment.yaml"]


def test_a_different_recipe_in_an_existing_experiment_is_refused(make_store, tmp_path):
    make_store(tmp_path / "exp", population=4)
    with pytest.raises(HoptError, match=r"already holds a different experiment \(recipe differs at population\)"):
        make_store(tmp_path / "exp", population=5)


def test_opening_a_directory_that_is_no_experiment_says_how_to_create_one(tmp_path):
    with pytest.raises(HoptError, match="is not a hopt experiment .*`hopt init RECIPE --dir"):
        Store.open(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_files_respect_the_umask(make_store, tmp_path):
    """A team shares a directory by its group and umask: hopt never forces a mode of its own."""
    previous = os.umask(0o027)
    try:
        store = make_store(tmp_path / "exp", population=2, intervals=2)
        worker = Worker(store, "w")
        worker.train_and_commit(worker.claim())
        in_flight = worker.claim()
        with store.lock:
            claims = store.paths.hardlink_claims()
            files = [store.paths.experiment, store.paths.journal, store.paths.state, store.paths.lock,
                     store.paths.lease(in_flight.member), *claims]
            modes = {path: path.stat().st_mode & 0o777 for path in files}
    finally:
        os.umask(previous)
    assert set(modes.values()) == {0o640}, modes
    assert len(claims) == (store.recipe.lock == "hardlink")
    for folder in (*store.paths.folders, *store.paths.checkpoints.iterdir()):
        assert folder.stat().st_mode & 0o777 == 0o750, folder


def _two_writers_whose_locks_do_not_exclude(root: Path) -> tuple[Store, Store]:
    """Two stores on one experiment, one locking with flock and one with the hard link: they do not
    exclude each other, as flock across two sshfs mounts does not."""
    recipe = Recipe.from_dict(toy_recipe(population=4, intervals=6))
    first = Store.create(root, recipe)
    second = Store(root, Recipe.from_dict(toy_recipe(population=4, intervals=6, lock="hardlink")))
    return first, second


def _plan(store: Store, member: int):
    decision = store.recipe.policy.build().decide(store.population.view(), member, store.recipe.space,
                                          np.random.default_rng(member))
    return decision, store.recipe.space.decode(decision.coords)


def test_a_claim_appended_on_a_stale_view_is_void_for_every_reader(tmp_path):
    """The issue's local reproduction: a second writer appends between our read and our append."""
    ours, theirs = _two_writers_whose_locks_do_not_exclude(tmp_path / "exp")
    here = Holder.this_process("ours")
    with ours.transaction():
        with theirs.transaction():
            their_lease = theirs.claim(0, *_plan(theirs, 0), Holder.this_process("theirs"))
        our_lease = ours.claim(0, *_plan(ours, 0), here)  # our view predates their claim

    assert their_lease is not None and our_lease is None
    assert ours.population.members[0].token == their_lease.token  # we read theirs back with our void one
    fresh = Store.open(tmp_path / "exp").sync()
    assert fresh == ours.population == theirs.sync()
    assert Lease.read(ours.paths.lease(0)).token == their_lease.token  # no lease written for a void claim
    lines = ours.paths.journal.read_text().splitlines()
    assert len(lines) == 2 and [json.loads(line)["seq"] for line in lines] == [1, 1]


def test_appends_that_keep_conflicting_stop_the_worker_with_one_line(tmp_path):
    ours, theirs = _two_writers_whose_locks_do_not_exclude(tmp_path / "exp")
    with pytest.raises(LockNotExclusive, match=r"3 of our appends in a row came after other workers' appends we "
                                               r"had not read, although we held the flock lock: it does not "
                                               r"exclude on this filesystem; use `lock: hardlink`"):
        with ours.transaction():
            for member in range(3):
                with theirs.transaction():
                    theirs.claim(member, *_plan(theirs, member), Holder.this_process("theirs"))
                ours.claim(member + 1, *_plan(ours, member + 1), Holder.this_process("ours"))
    assert Store.open(tmp_path / "exp").sync() == theirs.sync()
