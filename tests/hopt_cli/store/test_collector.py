"""The collector: what a sweep deletes, and what it must never delete."""
from __future__ import annotations

import errno
import os

from hopt_cli.worker import Worker
from tests.hopt_cli.store.conftest import claim_one


class TestCollector:
    """Under each lock kind (the `make_store` fixture is parametrized by kind)."""

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


    def test_a_snapshot_or_lease_being_written_outside_the_lock_is_left_alone(self, make_store, tmp_path):
        store = make_store(tmp_path / "exp", population=2, intervals=2)
        in_flight = [store.paths.root / ".state.json.tmp-999-abcd", store.paths.leases / ".00001.json.tmp-999-abcd"]
        for path in in_flight:
            path.write_text("half")

        with store.transaction():
            store.collector.sweep(store.leases.live())

        assert all(path.exists() for path in in_flight)
