"""The store: creation, the transaction and the journaled operations (claim, commit, fencing), void appends."""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hopt_cli.errors import HoptError, LockNotExclusive
from hopt_cli.recipe import Recipe
from hopt_cli.planning import plan_next
from hopt_cli.store import Claimed, NoClaim, Store
from hopt_cli.store import journal as journal_module
from hopt_cli.store.fsio import append_line
from hopt_cli.store.leases import Holder, Lease
from hopt_cli.worker import Worker
from tests.conftest import toy_recipe
from tests.hopt_cli.store.conftest import claim_one


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


    def test_a_commit_with_a_stale_token_is_a_no_op(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=2, intervals=2)
        slow, fast = Worker(store, "slow"), Worker(Store.open(store.paths.root), "fast")  # a process each
        claim, staging = claim_one(store, slow)
        old = os.stat(store.paths.lease(claim.member)).st_mtime - 1000
        os.utime(store.paths.lease(claim.member), (old, old))  # the lease expired...
        retry = fast.claim()  # ...so another worker reclaimed it and took the member
        assert retry.member == claim.member and retry.lease.token != claim.lease.token
        size = store.paths.journal.stat().st_size

        name = store.staging.publish(claim.lease, staging)
        with store.transaction():
            assert not store.commit(claim.lease, claim.decision, claim.hparams, 1.0, {}, name)

        assert store.paths.journal.stat().st_size == size
        assert not staging.exists()
        assert not any(p.name.startswith(f"m{claim.member:05d}") for p in store.paths.checkpoints.iterdir())
        assert store.leases.holds(retry.lease)


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


def _planner(store: Store):
    policy = store.recipe.policy.build()
    return lambda population, leased: plan_next(population, leased, policy, store.recipe.space, store.recipe.seed)


def _commit_and_claim(store: Store, claim: Claimed, staging: Path, holder: Holder):
    name = store.staging.publish(claim.lease, staging)
    return store.commit_and_claim(claim.lease, claim.decision, claim.hparams, 1.0, {}, name, holder, _planner(store))


def test_a_commit_and_the_next_claim_are_one_append_read_back_once(make_store, tmp_path, monkeypatch):
    """Two fsynced appends and two read-backs are one each: round trips under the lock on a network filesystem."""
    store = make_store(tmp_path / "exp", population=3, intervals=2)
    worker = Worker(store, "w")
    claim, staging = claim_one(store, worker)
    appends, replays = [], []
    monkeypatch.setattr(journal_module, "append_line",
                        lambda path, data: appends.append(data) or append_line(path, data))
    replay = store.journal.replay
    monkeypatch.setattr(store.journal, "replay", lambda *args: replays.append(args) or replay(*args))

    with store.transaction():
        committed, following = _commit_and_claim(store, claim, staging, worker.holder)

    assert committed and isinstance(following, Claimed) and following.member != claim.member
    assert len(appends) == 1 and [json.loads(line)["type"] for line in appends[0].splitlines()] == ["commit", "claim"]
    assert len(replays) == 2  # the transaction's catch-up and the read-back
    assert Store.open(store.paths.root).rebuild() == store.population
    assert not store.paths.lease(claim.member).exists()
    assert store.leases.holds(following.lease)


def test_a_commit_and_claim_on_a_stale_view_are_void_together_then_made_again(tmp_path):
    """Another writer's claim lands between our read and our one append: both our lines are void for every
    reader, nothing they would have done is done, and the commit and a claim on the current view follow."""
    ours, theirs = _two_writers_whose_locks_do_not_exclude(tmp_path / "exp")
    here = Holder.this_process("ours")
    claim, staging = claim_one(ours, Worker(ours, "ours"))
    with ours.transaction():
        with theirs.transaction():
            their_lease = theirs.claim(1, *_plan(theirs, 1), Holder.this_process("theirs"))
        committed, following = _commit_and_claim(ours, claim, staging, here)  # would claim member 1 too

    assert committed and isinstance(following, Claimed) and following.member == 2
    lines = [json.loads(line) for line in ours.paths.journal.read_text().splitlines()]
    assert [(line["type"], line["seq"]) for line in lines] == [
        ("claim", 1), ("claim", 2), ("commit", 2), ("claim", 3), ("commit", 5), ("claim", 6)]  # a line's number
    assert Store.open(tmp_path / "exp").rebuild() == ours.population == theirs.sync()
    assert theirs.leases.holds(their_lease) and ours.leases.holds(following.lease)
    assert ours.paths.checkpoint(ours.population.members[claim.member].checkpoint).is_dir()
    assert ours.appends.conflicts == 0


def test_one_call_claims_the_next_member_or_says_why_not(make_store, tmp_path):
    """The worker's claim is one call: the planner gets the population and the leased members, the store
    records its choice; with every member leased the answer is BUSY, once all is trained COMPLETE."""
    store = make_store(tmp_path / "exp", population=2, intervals=1)
    asked = []

    def plan(population, leased):
        asked.append(set(leased))
        return plan_next(population, leased, store.recipe.policy.build(), store.recipe.space, store.recipe.seed)

    here = Holder.this_process("a")
    claims = [store.claim_next(here, plan), store.claim_next(here, plan)]
    assert all(isinstance(claim, Claimed) and store.leases.holds(claim.lease) for claim in claims)
    assert [claim.member for claim in claims] == [0, 1]
    assert [store.population.members[c.member].token for c in claims] == [c.lease.token for c in claims]
    other = Store.open(store.paths.root)
    assert other.claim_next(Holder.this_process("b"), plan) is NoClaim.BUSY
    assert asked == [set(), {0}, {0, 1}]

    for claim in claims:
        name = store.staging.publish(claim.lease, store.staging.make(claim.lease))
        with store.transaction():
            store.commit(claim.lease, claim.decision, claim.hparams, 1.0, {}, name)
    assert other.claim_next(Holder.this_process("b"), plan) is NoClaim.COMPLETE
    assert len(asked) == 3  # nothing left to plan
