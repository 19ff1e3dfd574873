"""The simulator runs the real decisions: a one-worker simulation replays a real `hopt worker` exactly."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from hopt_cli.recipe import Recipe
from hopt_cli.simulator import simulate
from tests.conftest import REPO, toy_recipe

ELLIPSOID_SPACE = {
    **{f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(4)},
    **{f"x{i}": {"type": "log", "low": 1.0e-3, "high": 1.0} for i in range(4, 8)},
}


def trace(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each commit as (member, interval, decision, hparams, score); checkpoints named by who produced them."""
    produced_by: dict[str | None, Any] = {None: None}
    steps = []
    for event in events:
        if event["type"] != "commit":
            continue
        decision = {**event["decision"], "coords": list(event["decision"]["coords"])}
        decision["checkpoint"] = produced_by[decision["checkpoint"]]
        steps.append((event["member"], event["interval"], decision, event["hparams"], event["score"]))
        produced_by[event["checkpoint"]] = (event["member"], event["interval"])
    return steps


@pytest.mark.parametrize("overrides", [
    {"policy": {"name": "romul"}},
    {"policy": {"name": "pbt"}, "seed": 3, "worker": "workers.toys:ellipsoid", "space": ELLIPSOID_SPACE},
], ids=["romul-quadratic", "pbt-ellipsoid"])
def test_one_simulated_worker_makes_the_decisions_of_a_real_worker(tmp_path, write_recipe, overrides):
    spec = toy_recipe(population=6, intervals=8, **overrides)
    root = tmp_path / "exp"
    real = subprocess.run([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root),
                           "--recipe", str(write_recipe(spec))], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert real.returncode == 0, real.stderr
    journal = [json.loads(line) for line in (root / "journal.jsonl").read_text().splitlines()]

    simulated = simulate(Recipe.from_dict(spec), workers=1, scratch=tmp_path)

    expected = trace(journal)
    assert any(step[2]["action"] == "exploit" for step in expected), "the run should exercise exploits"
    assert trace(simulated.events) == expected
    assert [e["type"] for e in simulated.events] == [e["type"] for e in journal]


def test_asynchronous_workers_finish_every_member_and_repeat_with_the_seed(tmp_path):
    recipe = Recipe.from_dict(toy_recipe(population=8, intervals=10))

    first = simulate(recipe, workers=4, scratch=tmp_path)
    again = simulate(recipe, workers=4, scratch=tmp_path)

    assert first.population.complete
    assert all(m.interval == 10 and len(m.lineage.scores) == 10 for m in first.population.members)
    assert first.events == again.events
    times = [e["time"] for e in first.events]
    assert times == sorted(times) and times[-1] > 0
    overlapping = {e["member"] for e in first.events[:4]}
    assert len(overlapping) == 4 and all(e["type"] == "claim" for e in first.events[:4])
    assert list(tmp_path.iterdir()) == [], "the simulator's scratch folder is removed"


def test_another_seed_gives_another_run(tmp_path):
    one = simulate(Recipe.from_dict(toy_recipe(population=4, intervals=4, seed=1)), workers=2, scratch=tmp_path)
    two = simulate(Recipe.from_dict(toy_recipe(population=4, intervals=4, seed=2)), workers=2, scratch=tmp_path)

    assert trace(one.events) != trace(two.events)
