"""The lease table: reclaiming stale leases, listing once per heartbeat period, the one judge of staleness."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from hopt_cli.events import Reclaim
from hopt_cli.experiment import Experiment
from hopt_cli.policies import make_policy
from hopt_cli.store import Store
from hopt_cli.store.leases import Holder
from hopt_cli.worker import Worker
from tests.hopt_cli.store.conftest import claim_one


class TestLeaseTable:
    """Under each lock kind (the `make_store` fixture is parametrized by kind)."""

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
                population.view(), 0, store.recipe.space, np.random.default_rng(0))
            store.claim(0, decision, store.recipe.space.decode(decision.coords), ghost)

        with store.transaction():
            kept = store.leases.reclaim(Holder.this_process("me"))
        assert kept == [] and "holder" in store.journal.read()[0][-1]["reason"]
        with store.transaction():
            assert store.leases.leased(Holder.this_process("me")) == set()  # it lists: the next is a period away

        with store.transaction() as population:  # yet a dead claimer is noticed at the next claim
            decision = make_policy("romul").decide(
                population.view(), 1, store.recipe.space, np.random.default_rng(0))
            store.claim(1, decision, store.recipe.space.decode(decision.coords), ghost)
        with store.transaction():
            assert store.leases.leased(Holder.this_process("me")) == set()


    def test_a_hand_edited_lease_is_reclaimed_and_fences_its_holder(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=2, intervals=2)
        claim, staging = claim_one(store, Worker(store, "a"))
        store.paths.lease(claim.member).write_text("I edited this")

        name = store.staging.publish(claim.lease, staging)
        with store.transaction():
            assert store.leases.reclaim(Holder.this_process("b")) == []
            assert not store.commit(claim.lease, claim.decision, claim.hparams, 1.0, {}, name)
        assert not store.paths.checkpoint(name).exists()

    def test_a_lease_whose_interval_is_committed_is_stale_for_workers_and_status_alike(self, make_store, tmp_path):
        """A crash between a commit and the removal of its lease file leaves the file: `hopt status` must not
        show its worker live while the next claim reclaims it."""
        store = make_store(tmp_path / "exp", population=2, intervals=3)
        worker = Worker(store, "crashed")
        claim = worker.claim()
        worker.train_and_commit(claim)
        store.leases.write(claim.lease)  # as it was before the commit
        here = Holder.this_process("me")

        status = Experiment(store.paths.root).status()
        with store.transaction() as population:
            info = next(i for i in store.leases.infos() if i.lease == claim.lease)
            assert store.leases.why_stale(info, population, here) == "its interval is already committed"
            assert store.leases.reclaim(here) == []

        assert status.members[claim.member].lease.stale and status.live_workers == []
        assert status.stale_workers == ["crashed"]
        assert not store.paths.lease(claim.member).exists()
        assert not isinstance(store.read_events()[0][-1], Reclaim)  # the claim had ended already: nothing to journal
