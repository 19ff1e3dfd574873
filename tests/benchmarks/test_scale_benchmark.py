"""benchmarks/synthetic.py makes valid experiments; benchmarks/scale.py measures real processes on them."""
from __future__ import annotations

import json

from benchmarks.scale import measure_worker, per_interval, percentile
from benchmarks.synthetic import generate
from hopt_cli.store import Store
from hopt_cli.timing import StepTiming


def test_a_generated_experiment_is_valid_and_replays_to_its_snapshot(tmp_path):
    generate(tmp_path / "exp", population=8, commits=500)

    store = Store.open(tmp_path / "exp")
    population = store.sync()
    events = store.journal.read()[0]
    assert sum(e["type"] == "commit" for e in events) == 500
    assert 0 < json.loads(store.paths.state.read_text())["offset"] < store.cursor.offset
    assert population == store.rebuild()
    assert not population.complete and population.failed is None
    for name in population.referenced_checkpoints():
        assert (store.paths.checkpoint(name) / "state.json").is_file()


def test_a_real_worker_trains_on_a_generated_experiment_and_stops_on_sigterm(tmp_path):
    generate(tmp_path / "exp", population=8, commits=200)

    run = measure_worker(tmp_path / "exp", intervals=3)

    assert run.measured.returncode == 0
    assert len(run.steps) == len(run.held) == 3 and run.startup > 0
    assert all(0 < held <= total for held, total in zip(run.held, run.steps))
    store = Store.open(tmp_path / "exp")
    assert store.sync() == store.rebuild()
    assert sum(e["type"] == "commit" for e in store.journal.read()[0]) >= 203


def test_per_interval_sums_a_workers_steps_up_to_each_commit():
    timings = [StepTiming(step, 0.0, held, 2 * held, 0.0)
               for step, held in (("claim", 1.0), ("commit", 2.0), ("busy", 4.0), ("claim", 8.0), ("commit", 16.0),
                                  ("commit", 32.0), ("done", 64.0))]

    assert per_interval(timings, lambda t: t.held) == [3.0, 28.0, 32.0]
    assert per_interval(timings, lambda t: t.total) == [6.0, 56.0, 64.0]


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
