"""`hopt extend`: more intervals or members, journaled, taken up by running workers, correct everywhere."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hopt_cli.experiment import Experiment
from hopt_cli.recipe import Recipe
from hopt_cli.simulator import simulate
from hopt_cli.store import Store
from tests.conftest import toy_recipe
from tests.hopt_cli.conftest import hopt, run_to_completion, worker_in_its_first_interval
from tests.invariants import check_finished_experiment

DEADLINE = 120.0


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """T1, 4 members x 5 intervals, run to completion by `hopt run` (once for the module)."""
    return run_to_completion(tmp_path_factory.mktemp("t1") / "exp", toy_recipe(population=4, intervals=5))


@pytest.fixture
def finished(finished_once: Path, tmp_path: Path) -> Path:
    """A copy of `finished_once` and its recipe (an experiment directory moves whole), for one test to extend."""
    root = tmp_path / "exp"
    shutil.copytree(finished_once, root)
    shutil.copy(finished_once.with_suffix(".yaml"), root.with_suffix(".yaml"))
    return root


def test_a_finished_experiment_grows_and_runs_to_the_new_budget(finished: Path):
    recipe = finished.with_suffix(".yaml")

    grown = hopt("extend", "--dir", str(finished), "--intervals", "9", "--population", "6")
    again = hopt("run", str(recipe), "--dir", str(finished), "--workers", "2")

    assert grown.returncode == 0, grown.stderr
    assert "6 members x 9 intervals (grown)" in grown.stdout
    assert again.returncode == 0, again.stderr
    summary = check_finished_experiment(finished)  # every member at 9 intervals, snapshot == full replay
    assert summary.commits >= 6 * 9 - 4 * 5 - 6 * 4  # the new intervals were trained (an exploit may skip some)
    status = json.loads(hopt("status", "--dir", str(finished), "--json").stdout)
    assert (status["population"], status["intervals"]) == (6, 9)
    assert (status["done"], status["total"]) == (54, 54)
    assert [m["interval"] for m in status["members"]] == [8] * 6  # 0-based: the ninth interval
    assert yaml.safe_load((finished / "experiment.yaml").read_text())["intervals"] == 5  # written once, never changed


@pytest.mark.slow
def test_the_best_of_a_grown_experiment_exports_and_replays_its_whole_schedule(finished: Path, tmp_path: Path):
    assert hopt("extend", "--dir", str(finished), "--intervals", "8").returncode == 0
    assert hopt("run", str(finished.with_suffix(".yaml")), "--dir", str(finished), "--workers", "2").returncode == 0
    best = Experiment(finished).best()

    exported = hopt("best", "--dir", str(finished), "--out", str(tmp_path / "best"))
    replayed = hopt("replay", str(tmp_path / "best" / "schedule.yaml"), "--dir", str(tmp_path / "replay"))

    assert exported.returncode == 0, exported.stderr
    assert best.interval == 7 and [step.interval for step in best.schedule] == list(range(8))
    assert replayed.returncode == 0, replayed.stderr
    assert "(identical)" in replayed.stdout  # T1 is deterministic: the replay's score equals the journal's


def test_new_members_start_as_members_of_a_population_that_size_would(finished: Path):
    assert hopt("extend", "--dir", str(finished), "--population", "7").returncode == 0
    assert hopt("run", str(finished.with_suffix(".yaml")), "--dir", str(finished), "--workers", "2").returncode == 0
    fresh = simulate(Recipe.from_dict(toy_recipe(population=7, intervals=5)), workers=1)

    grown = {e.member: e.hparams for e in reversed(Experiment(finished).events()) if e.kind == "claim"}
    simulated = {e["member"]: e["hparams"] for e in reversed(fresh.events) if e["type"] == "claim"}
    for member in (4, 5, 6):  # the same seeded draw a population of 7 makes for them at its start
        assert grown[member] == simulated[member]


@pytest.mark.slow
def test_a_running_worker_takes_up_the_new_budget_at_its_next_claim(tmp_path: Path):
    recipe = toy_recipe(population=2, intervals=2, worker="tests.hopt_cli.trainables:waits_for_go")
    with worker_in_its_first_interval(tmp_path, recipe, DEADLINE) as (worker, root, go):
        grown = hopt("extend", "--dir", str(root), "--population", "3", "--intervals", "4")
        go.touch()
        _, stderr = worker.communicate(timeout=DEADLINE)

    assert grown.returncode == 0, grown.stderr
    assert worker.returncode == 0, stderr
    assert "experiment complete" in stderr
    population = Store.open(root).sync()
    assert (population.size, population.intervals) == (3, 4)
    check_finished_experiment(root)


def test_a_recipe_grown_as_the_experiment_was_is_accepted_and_another_size_refused_with_the_fix(finished: Path):
    assert hopt("extend", "--dir", str(finished), "--intervals", "7").returncode == 0
    grown, other = finished.parent / "grown.yaml", finished.parent / "other.yaml"
    grown.write_text(yaml.safe_dump(toy_recipe(population=4, intervals=7)))
    other.write_text(yaml.safe_dump(toy_recipe(population=4, intervals=6)))

    accepted = hopt("init", str(grown), "--dir", str(finished))
    refused = hopt("init", str(other), "--dir", str(finished))

    assert accepted.returncode == 0, accepted.stderr
    assert "4 members x 7 intervals" in accepted.stdout
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"hopt: error: {finished} already holds a different experiment (recipe differs at intervals); to grow it, "
        f"run `hopt extend --dir {finished} --intervals N`; use another --dir, or the recipe it was created with"]


@pytest.mark.parametrize("args, message", [
    (("--intervals", "4"), "hopt extend only grows an experiment: it has 4 members x 5 intervals, not fewer"),
    (("--population", "3", "--intervals", "9"), "hopt extend only grows an experiment"),
    ((), "say how to grow it: --intervals N, --population M, or both"),
])
def test_a_shrink_or_no_size_is_one_line_exit_2_and_writes_nothing(finished: Path, args, message):
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}

    result = hopt("extend", "--dir", str(finished), *args)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before


def test_extending_to_the_budget_it_has_is_a_no_op(finished: Path):
    journal = (finished / "journal.jsonl").read_bytes()

    result = hopt("extend", "--dir", str(finished), "--intervals", "5", "--population", "4")

    assert result.returncode == 0
    assert "4 members x 5 intervals already; nothing to do" in result.stdout
    assert (finished / "journal.jsonl").read_bytes() == journal


def test_the_log_names_the_extend_and_its_json_the_new_budget(finished: Path):
    assert hopt("extend", "--dir", str(finished), "--population", "5").returncode == 0

    text = hopt("log", "--dir", str(finished)).stdout.splitlines()[-1]
    document = json.loads(hopt("log", "--dir", str(finished), "--json").stdout)

    assert "hopt-extend" in text and "grown by `hopt extend` to 5 members x 5 intervals" in text
    last = document["events"][-1]
    assert (last["kind"], last["worker"], last["population"], last["intervals"]) == ("extend", "hopt-extend", 5, 5)


def test_a_snapshot_taken_after_the_extend_holds_the_new_members(finished: Path):
    store = Store.open(finished)
    assert store.extend(population=6)
    store.write_snapshot()

    reopened = Store.open(finished).sync()

    assert (reopened.size, len(reopened.members), reopened.intervals) == (6, 6, 5)
    assert reopened.members[5].interval == 0 and not reopened.complete
    assert Store.open(finished).rebuild() == reopened
