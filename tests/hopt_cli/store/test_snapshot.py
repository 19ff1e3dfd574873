"""state.json's codec: exact round trips, each shared segment stored once, old formats rebuilt."""
from __future__ import annotations

import dataclasses
import json

import pytest

from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.store.fsio import write_json_atomic
from hopt_cli.store.journal import Cursor
from hopt_cli.store.snapshot import decode, encode, events_in
from hopt_cli.worker import Worker
from tests.conftest import toy_recipe


def _finished(tmp_path) -> Store:
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=8, intervals=10)))
    Worker(store, "w").run()
    return store


def test_a_population_round_trips_exactly_through_json(tmp_path):
    population = _finished(tmp_path).population
    population.members[0].lineage.scores[0] = 0.1 + 0.2  # a float whose shortest repr is long

    document = json.loads(json.dumps(encode(population, Cursor(1234, 20, "0123456789abcdef", True))))
    again, cursor = decode(document)

    assert cursor == Cursor(1234, 20, "0123456789abcdef", True)
    assert again == population


def test_each_shared_segment_is_stored_once_and_shared_again_when_read(tmp_path):
    population = _finished(tmp_path).population
    lineages = [m.lineage for m in population.members] + [b.lineage for b in population.best]
    distinct = {id(s) for lineage in lineages for s in lineage.segments}
    assert len(distinct) < sum(len(lineage.segments) for lineage in lineages), "the run should have exploited"

    document = encode(population, Cursor())
    again, _ = decode(json.loads(json.dumps(document)))

    assert len(document["segments"]) == len(distinct)
    read = [m.lineage for m in again.members] + [b.lineage for b in again.best]
    assert len({id(s) for lineage in read for s in lineage.segments}) == len(distinct)


def test_a_snapshot_in_an_older_format_is_rebuilt_from_the_journal(tmp_path):
    store = _finished(tmp_path)
    old = {"format": 1, "offset": store.cursor.offset, "population": dataclasses.asdict(store.population)}
    store.paths.state.write_text(json.dumps(old))

    assert Store.open(store.paths.root).sync() == store.population


def test_workers_share_one_snapshot_per_population_of_events_whoever_writes_it(tmp_path, monkeypatch):
    recipe = Recipe.from_dict(toy_recipe(population=4, intervals=6))
    stores = [Store.create(tmp_path / "exp", recipe) for _ in range(3)]  # three workers' views, as processes have
    writes = []
    monkeypatch.setattr(Store, "write_snapshot", lambda self: (writes.append(self.population.events),
                                                               _write_snapshot(self)))
    workers = [Worker(store, f"w{i}") for i, store in enumerate(stores)]
    turn = 0
    while (claim := workers[turn % 3].claim()) is not None:  # the workers take turns, one interval each
        workers[turn % 3].train_and_commit(claim)
        turn += 1

    events = stores[0].sync().events
    assert len(writes) <= events // 4 + 1
    assert all(later - earlier >= 4 for earlier, later in zip(writes, writes[1:-1]))
    assert events_in(stores[0].paths.state) == events


def _write_snapshot(store: Store) -> None:
    write_json_atomic(store.paths.state, encode(store.population, store.cursor))


def test_a_snapshot_whose_segments_loop_is_refused(tmp_path):
    store = _finished(tmp_path)
    document = encode(store.population, store.cursor)
    document["segments"][0] = [len(document["segments"]) - 1, document["segments"][0][1]]

    with pytest.raises(ValueError, match="does not follow an earlier one"):
        decode(json.loads(json.dumps(document)))
