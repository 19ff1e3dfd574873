"""`hopt set`: operational settings changed on an existing experiment, journaled, taken up by running
workers at their next claim; what the experiment searches and decides stays fixed."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.worker import Worker
from tests.commands import invoke
from tests.conftest import toy_recipe
from tests.hopt_cli.conftest import worker_in_its_first_interval

DEADLINE = 120.0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """T1, 4 members x 6 intervals, created from exp.yaml beside it, nothing trained."""
    root = tmp_path / "exp"
    root.with_suffix(".yaml").write_text(yaml.safe_dump(toy_recipe(population=4, intervals=6)))
    assert invoke("init", str(root.with_suffix(".yaml")), "--dir", str(root)).exit_code == 0
    return root


def files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".clock"}


def test_settings_are_journaled_and_status_shows_them_in_force(root: Path):
    created = (root / "experiment.yaml").read_bytes()

    result = invoke("set", "--dir", str(root), "max_failures=5", "interval_timeout=7200", "lease.timeout=600",
                    "keep_best=2", "stop.hours=12")
    document = json.loads(invoke("status", "--dir", str(root), "--json").output)
    table = invoke("status", "--dir", str(root)).output
    log = json.loads(invoke("log", "--dir", str(root), "--json").output)["events"]

    assert result.exit_code == 0, result.output
    assert result.output.strip() == (f"{root}: max_failures=5, interval_timeout=7200, lease.timeout=600, keep_best=2, "
                                     "stop.hours=12; running workers take it up at their next claim")
    assert document["settings"] == {"max_failures": 5, "interval_timeout": 7200.0, "lease.timeout": 600.0,
                                    "lease.heartbeat": 5.0, "keep_best": 2, "stop.metric": None,
                                    "stop.at_least": None, "stop.at_most": None, "stop.hours": 12.0}
    assert document["changed"] == ["max_failures", "interval_timeout", "lease.timeout", "keep_best", "stop.hours"]
    assert ("set by `hopt set`: max_failures=5 interval_timeout=7200 lease.timeout=600 keep_best=2 stop.hours=12"
            in table.splitlines())
    assert [(e["kind"], e["worker"], e["settings"]) for e in log] == [
        ("set", "hopt-set", {"max_failures": 5, "interval_timeout": 7200, "lease.timeout": 600, "keep_best": 2,
                             "stop.hours": 12})]
    assert (root / "experiment.yaml").read_bytes() == created  # written once, never changed


def test_setting_what_is_in_force_already_writes_nothing(root: Path):
    before = files(root)

    result = invoke("set", "--dir", str(root), "max_failures=3", "lease.timeout=60")

    assert result.exit_code == 0 and result.output.strip().endswith("already; nothing to do")
    assert files(root) == before


@pytest.mark.parametrize("assignment, message", [
    ("seed=1", "seed cannot be changed on an existing experiment: every decision made so far, and a replay of the "
               "best schedule, depends on it; start a new experiment in another --dir"),
    ("space.h0.high=2", "space.h0.high cannot be changed on an existing experiment: every decision made so far"),
    ("objective.mode=min", "objective.mode cannot be changed on an existing experiment: every decision"),
    ("policy.name=pbt", "policy.name cannot be changed on an existing experiment: every decision"),
    ("population=8", "population cannot be changed on an existing experiment: the budget grows through the journal "
                     "with `hopt extend --dir D --population N`"),
    ("lock=hardlink", "lock cannot be changed on an existing experiment: every worker must take the same lock"),
    ("temperature=3", "temperature cannot be changed on an existing experiment: it is no recipe setting"),
    ("max_failures", "'max_failures' is not KEY=VALUE; write e.g. max_failures=5"),
    ("max_failures=null", "max_failures needs a value (only interval_timeout and stop may be null)"),
    ("lease.timeout=", "lease.timeout needs a value (only interval_timeout and stop may be null)"),
    ("keep_best=[1", "'keep_best=[1': the value is not valid YAML; write e.g. keep_best=5"),
    ("keep_best=0", "keep_best: must be an integer >= 1 (got 0)"),
    ("max_failures=many", "max_failures: must be an integer >= 1 (got 'many')"),
    ("lease.heartbeat=40", "lease.heartbeat: must be at most half of lease.timeout, or live workers look dead"),
    ("interval_timeout=-1", "interval_timeout: must be a number of seconds > 0, or left out (got -1)"),
    ("stop.hours=0", "stop.hours: must be a number of hours > 0 (got 0)"),
    ("stop.at_least=0.9", "stop.metric: is required with at_least"),
    ("stop.metric=val_acc", "stop: give exactly one of at_least or at_most with metric val_acc (got neither)"),
])
def test_a_fixed_key_or_a_bad_value_is_one_line_exit_2_and_writes_nothing(root: Path, assignment: str, message: str):
    before = files(root)

    result = invoke("set", "--dir", str(root), assignment)

    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
    assert files(root) == before


def test_nothing_to_set_is_a_usage_error(root: Path):
    result = invoke("set", "--dir", str(root))

    assert result.exit_code == 2 and "say what to change, e.g. hopt set --dir D max_failures=5" in result.output


def test_a_running_worker_takes_the_settings_up_at_its_next_claim(root: Path):
    worker = Worker(Store.open(root), "w")
    for _ in range(6):
        worker.train_and_commit(worker.claim())
    assert (worker.recipe.lease.timeout, len(worker.store.population.best)) == (60.0, 3)

    assert invoke("set", "--dir", str(root), "lease.timeout=600", "keep_best=1", "max_failures=1").exit_code == 0
    claim = worker.claim()

    population = worker.store.population
    assert worker.recipe.lease.timeout == 600.0 and worker.recipe.keep_best == 1
    assert len(population.best) == 1 and population.best[0].score == max(population.members[m].lineage.scores[-1]
                                                                         for m in range(4))
    worker.train_and_commit(claim)
    assert invoke("best", "--dir", str(root), "--top", "2").exit_code == 2  # only the one best is kept now
    failing = Worker(Store.open(root), "failing", trainable=lambda ctx: math.nan)
    failing.train_and_commit(failing.claim())
    assert failing.store.sync().failed.startswith("member")  # max_failures 1: the first failure fails it


def test_a_child_process_trainable_keeps_to_a_new_interval_timeout_from_its_next_claim(tmp_path: Path):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=2, interval_timeout=60)))
    worker = Worker(store, "w")

    assert invoke("set", "--dir", str(tmp_path / "exp"), "interval_timeout=7200").exit_code == 0
    worker.claim()
    try:
        assert worker.trainable.timeout == 7200.0
    finally:
        worker.close()


def test_the_recipe_it_was_created_with_still_opens_it_and_a_changed_one_names_hopt_set(root: Path):
    recipe = root.with_suffix(".yaml")
    assert invoke("set", "--dir", str(root), "max_failures=5").exit_code == 0
    changed = root.parent / "changed.yaml"
    changed.write_text(yaml.safe_dump(toy_recipe(population=4, intervals=6, keep_best=5)))
    in_force = root.parent / "in-force.yaml"
    in_force.write_text(yaml.safe_dump(toy_recipe(population=4, intervals=6, max_failures=5)))

    assert invoke("init", str(recipe), "--dir", str(root)).exit_code == 0
    assert invoke("init", str(in_force), "--dir", str(root)).exit_code == 0
    refused = invoke("init", str(changed), "--dir", str(root))
    assert refused.exit_code == 2
    assert refused.output.strip() == (f"hopt: error: {root} already holds a different experiment (recipe differs at "
                                      f"keep_best); to change it, run `hopt set --dir {root} keep_best=VALUE`; use "
                                      "another --dir, or the recipe it was created with")


def test_a_larger_keep_best_lets_hopt_best_export_more(root: Path):
    worker = Worker(Store.open(root), "w")
    for _ in range(8):
        worker.train_and_commit(worker.claim())
    assert invoke("best", "--dir", str(root), "--top", "5").exit_code == 2

    assert invoke("set", "--dir", str(root), "keep_best=5").exit_code == 0
    for _ in range(4):
        worker.train_and_commit(worker.claim())

    top = json.loads(invoke("best", "--dir", str(root), "--top", "5", "--json").output)
    assert len(top["top"]) == 5


def test_a_worker_process_in_an_interval_stops_at_its_next_claim_by_a_stop_rule_set_meanwhile(tmp_path: Path):
    recipe = toy_recipe(population=2, intervals=4, worker="tests.hopt_cli.trainables:waits_for_go")
    with worker_in_its_first_interval(tmp_path, recipe, DEADLINE) as (worker, root, go):
        changed = invoke("set", "--dir", str(root), "stop={metric: score, at_least: -100}")
        go.touch()
        _, stderr = worker.communicate(timeout=DEADLINE)

    assert changed.exit_code == 0, changed.output
    assert worker.returncode == 0, stderr
    population = Store.open(root).sync()
    assert population.intervals_done == 1  # the interval in flight was committed, and nothing claimed after it
    assert population.stopped.startswith("stop target score >= -100 reached: member 0 interval 0")
    assert f"stopped ({population.stopped})" in stderr
