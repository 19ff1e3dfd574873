"""Stop rules: a metric target or a deadline on the journal's clock stops every worker at its next claim,
journaled with its reason; `hopt status` says why; `hopt extend` resumes."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hopt_cli.events import Stop
from hopt_cli.experiment import Experiment
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.worker import Worker
from tests.commands import hopt, invoke
from tests.conftest import toy_recipe
from tests.invariants import check_finished_experiment

TARGET = {"metric": "true_score", "at_least": 0.5}  # T1 climbs from -0.42 to 1.2: reached mid-run, never at once


def create(root: Path, **changes: Any) -> Store:
    return Store.create(root, Recipe.from_dict(toy_recipe(**{"population": 4, "intervals": 12, **changes})))


def stops(store: Store) -> list[Stop]:
    return [e for e in store.read_events()[0] if isinstance(e, Stop)]


def test_a_worker_stops_after_the_commit_that_reaches_the_target(tmp_path: Path):
    store = create(tmp_path / "exp", stop=TARGET)

    report = Worker(store, "w").run()

    found = store.read_events()[0]
    reached = next(i for i, e in enumerate(found) if e.kind == "commit" and e.metrics["true_score"] >= 0.5)
    assert [e.kind for e in found[reached + 1:]] == ["stop"]  # journaled at the next claim; nothing claimed after
    hit = found[reached]
    assert found[-1].reason == (f"stop target true_score >= 0.5 reached: member {hit.member} interval {hit.interval} "
                                f"has {hit.metrics['true_score']:.6g}")
    assert report.stop_rule == found[-1].reason and not report.complete
    assert report.commits == sum(e.kind == "commit" for e in found)
    assert Worker(Store.open(store.paths.root), "later").run().commits == 0  # a worker started now stops at once


def test_status_says_why_it_stopped_and_extend_resumes_it(tmp_path: Path):
    root = tmp_path / "exp"
    store = create(root, stop=TARGET, intervals=8)
    Worker(store, "w").run()
    reason = stops(store)[0].reason

    table = invoke("status", "--dir", str(root))
    document = json.loads(invoke("status", "--dir", str(root), "--json").output)
    resumed = invoke("extend", "--dir", str(root))
    again = Worker(Store.open(root), "w2").run()

    assert f"STOPPED: {reason}; `hopt extend` resumes it" in table.output.splitlines()
    assert document["stopped"] == reason and not document["complete"] and document["eta"] is None
    assert resumed.exit_code == 0 and "(resumed after its stop)" in resumed.output
    # the target counts the commits after the resume: T1 is past it, so the first one stops it again
    assert again.commits == 1 and again.stop_rule is not None and len(stops(store)) == 2
    assert invoke("set", "--dir", str(root), "stop=null").exit_code == 0
    assert invoke("extend", "--dir", str(root)).exit_code == 0
    assert Worker(Store.open(root), "w3").run().complete
    assert json.loads(invoke("status", "--dir", str(root), "--json").output)["stopped"] is None
    check_finished_experiment(root)


def test_extend_with_nothing_to_grow_and_no_stop_is_still_refused(tmp_path: Path):
    create(tmp_path / "exp")

    result = invoke("extend", "--dir", str(tmp_path / "exp"))

    assert result.exit_code == 2 and "say how to grow it" in result.output


def test_the_hours_rule_counts_on_the_journal_clock_from_the_first_claim_then_from_the_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The journal stamps events with time.time(), which the test sets: no sleeps, no timing."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    root = tmp_path / "exp"
    store = create(root, stop={"hours": 2})
    worker = Worker(store, "w")
    for _ in range(3):
        worker.train_and_commit(worker.claim())
        now[0] += 3000.0  # 50 minutes per interval: the third commit ends at 2.5 h

    first = Worker(store, "w").run()
    assert invoke("extend", "--dir", str(root)).exit_code == 0  # at 2.5 h; the rule counts from here now
    resumed = Worker(Store.open(root), "w2")
    resumed.train_and_commit(resumed.claim())
    now[0] += 7200.0
    second = resumed.run()

    assert first.commits == 0 and first.stop_rule == "stop.hours: 2.50 h since the first claim (the limit is 2 h)"
    assert second.commits == 1  # the interval trained before the deadline; none after it
    assert second.stop_rule == "stop.hours: 2.00 h since the extend that resumed it (the limit is 2 h)"
    assert [e.time for e in stops(store)] == [1_800_000_000.0 + 9000.0, 1_800_000_000.0 + 9000.0 + 7200.0]


def test_hopt_run_ends_at_the_target_with_exit_status_0_and_says_why(tmp_path: Path):
    recipe, root = tmp_path / "exp.yaml", tmp_path / "exp"
    recipe.write_text(yaml.safe_dump(toy_recipe(population=4, intervals=12, stop=TARGET)))

    result = hopt("run", str(recipe), "--dir", str(root), "--workers", "2")

    assert result.returncode == 0, result.stderr
    assert "stopped: stop target true_score >= 0.5 reached" in result.stdout
    assert f"`hopt extend --dir {root}` resumes it" in result.stdout
    population = Store.open(root).sync()
    assert population.stopped and not population.complete
    assert max(c.metrics["true_score"] for c in Experiment(root).history()) >= 0.5
    logs = [path.read_text() for path in Store.open(root).paths.logs.glob("*.log")]
    assert len(logs) == 2 and all(f"stopped ({population.stopped})" in log for log in logs)  # each worker's last line
