"""The replica: the population caught up from state.json and the journal's tail, and reading events."""
from __future__ import annotations

import json

import pytest

from hopt_cli.errors import HoptError
from hopt_cli.store import Store
from hopt_cli.worker import Worker


class TestReplica:
    """Under each lock kind (the `make_store` fixture is parametrized by kind)."""

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
