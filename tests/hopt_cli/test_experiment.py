"""The Python API for notebooks: plain records of status, best, history and events, from the journal."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import hopt_cli
from hopt_cli.errors import HoptError
from hopt_cli.experiment import Experiment
from hopt_cli.planning import plan_next
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.store.leases import Holder
from hopt_cli.worker import Worker
from tests.conftest import REPO, toy_recipe
from tests.hopt_cli.conftest import hopt, mid_run, reclaimed_and_failed


def journal(root):
    return [json.loads(line) for line in (root / "journal.jsonl").read_text().splitlines()]


def test_import_hopt_cli_is_cheap_and_exports_experiment_lazily():
    probe = ("import sys, hopt_cli; heavy = [m for m in ('matplotlib', 'torch', 'hopt_cli.experiment') "
             "if m in sys.modules]; print(heavy, hopt_cli.Experiment.__name__)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert result.stdout.split() == ["[]", "Experiment"], result.stderr
    assert hopt_cli.Experiment is Experiment


def test_history_has_every_commit_as_a_plain_record(quadratic):
    commits = Experiment(quadratic).history()

    raw = [e for e in journal(quadratic) if e["type"] == "commit"]
    assert [(c.member, c.interval, c.score, c.hparams, c.metrics) for c in commits] == \
        [(e["member"], e["interval"], e["score"], e["hparams"], e["metrics"]) for e in raw]
    assert all(c.metrics["score"] == c.score for c in commits)
    assert [c.time for c in commits] == sorted(c.time for c in commits)
    assert {c.action for c in commits} >= {"start", "continue", "exploit"}
    for c in commits:
        assert c.parent == {"start": None, "continue": c.member}.get(c.action, c.parent)
        assert (c.parent_checkpoint is None) == (c.action == "start")
    exploits = [c for c in commits if c.action == "exploit"]
    assert all(c.parent != c.member and c.parent_checkpoint.startswith(f"m{c.parent:05d}-") for c in exploits)


def test_events_read_the_journal_with_exploit_diffs(quadratic):
    experiment = Experiment(quadratic)
    events = experiment.events()
    raw = journal(quadratic)

    assert [(e.kind, e.member, e.time) for e in events] == [(r["type"], r["member"], r["time"]) for r in raw]
    hparams_of = {r["checkpoint"]: r["hparams"] for r in raw if r["type"] == "commit"}
    claims = [(e, r) for e, r in zip(events, raw) if e.kind == "claim" and e.action == "exploit"]
    assert claims
    for event, record in claims:
        before = hparams_of[record["decision"]["checkpoint"]]
        assert {c.name: (c.old, c.new) for c in event.changes} == \
            {k: (before[k], v) for k, v in record["hparams"].items() if before[k] != v}
    assert all(e.member == 2 for e in experiment.events(member=2))
    assert len(experiment.events(member=2)) == sum(r["member"] == 2 for r in raw)


def test_status_of_a_finished_experiment(quadratic):
    status = Experiment(quadratic).status()
    commits = Experiment(quadratic).history()

    assert status.complete and status.done == status.total == 40 and status.eta == 0.0
    assert status.elapsed == pytest.approx(commits[-1].time - journal(quadratic)[0]["time"], abs=1e-3)
    assert status.live_workers == status.stale_workers == [] and status.robust_window == 2
    for member in status.members:
        scores = Store.open(quadratic).sync().members[member.member].lineage.scores
        assert member.score == scores[-1] and member.robust == pytest.approx((scores[-1] + scores[-2]) / 2)
        assert member.lease is None


def test_status_shows_the_gpu_a_lease_was_taken_on(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    _, claim = mid_run(tmp_path / "exp")  # its worker sees GPU 3 only, as `hopt run --gpus` sets it
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    lease = Experiment(tmp_path / "exp").status().members[claim.member].lease
    assert lease.device == "3"
    assert " gpu 3 " in hopt("status", "--dir", str(tmp_path / "exp")).stdout


def test_status_mid_run_shows_the_lease_eta_and_then_a_stale_worker(tmp_path):
    store, claim = mid_run(tmp_path / "exp")
    experiment = Experiment(tmp_path / "exp")

    live = experiment.status()
    lease = live.members[claim.member].lease
    assert (lease.worker, lease.pid, lease.interval, lease.stale) == ("pytest-worker", os.getpid(),
                                                                       claim.decision.interval, False)
    assert live.live_workers == ["pytest-worker"] and live.stale_workers == []
    assert not live.complete and live.elapsed > 0 and live.eta > 0

    old = time.time() - 1000
    os.utime(store.paths.lease(claim.member), (old, old))
    stale = experiment.status()
    assert stale.members[claim.member].lease.stale and stale.members[claim.member].lease.age > 900
    assert stale.live_workers == [] and stale.stale_workers == ["pytest-worker"] and stale.eta is None


def test_events_show_failures_and_reclaims(tmp_path):
    claim, failed = reclaimed_and_failed(tmp_path / "exp")

    events = Experiment(tmp_path / "exp").events()
    reclaim = next(e for e in events if e.kind == "reclaim")
    assert (reclaim.member, reclaim.interval, reclaim.worker) == (claim.member, claim.decision.interval,
                                                                 "pytest-worker")
    assert reclaim.reason == "no heartbeat for 1000 s (timeout 60 s)" and reclaim.by == "reclaimer"
    fail = events[-1]
    assert (fail.kind, fail.member, fail.worker, fail.reason) == ("fail", failed.member, "failing",
                                                                  "metric 'score' is nan")


def test_top_member_and_their_errors(quadratic):
    experiment = Experiment(quadratic)
    top = experiment.top(3)

    assert [t.score for t in top] == sorted((t.score for t in top), reverse=True)
    assert top[0] == experiment.best()
    assert all(len(t.schedule) == t.interval + 1 and t.schedule[-1].score == t.score for t in top)
    member = experiment.member(4)
    state = Store.open(quadratic).sync().members[4]
    assert (member.interval, member.score, member.checkpoint.name) == (7, state.lineage.scores[-1], state.checkpoint)
    for call, message in ((lambda: experiment.top(0), "at least 1"),
                          (lambda: experiment.top(4), "only the 3 best intervals are kept"),
                          (lambda: experiment.member(5), "there is no member 5: the population has members 0 to 4"),
                          (lambda: experiment.events(member=-1), "there is no member -1")):
        with pytest.raises(HoptError, match=message):
            call()


def test_watch_refreshes_until_complete(tmp_path, quadratic):
    Store.create(tmp_path / "exp", Store.open(quadratic).recipe)

    waiting = list(itertools.islice(Experiment(tmp_path / "exp").watch(0.01), 3))
    finished = list(Experiment(quadratic).watch(0.01))

    assert len(waiting) == 3 and not any(s.complete for s in waiting)
    assert len(finished) == 1 and finished[0].complete


def test_a_member_claimed_before_its_first_commit_shows_what_it_trains_with(tmp_path):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=4, intervals=6)))
    claim = Worker(store, "pytest-worker").claim()

    member = Experiment(tmp_path / "exp").status().members[claim.member]

    assert claim.decision.action == "start" and member.lease is not None
    assert member.hparams == claim.hparams and member.sigma == claim.decision.sigma > 0


def test_the_eta_moves_when_a_commit_lands_not_while_waiting(tmp_path, monkeypatch):
    store, _ = mid_run(tmp_path / "exp")
    progress = store.sync().progress
    (since, done_then), (last, done) = progress[0], progress[-1]
    expected = round((4 * 6 - done) * (last - since) / (done - done_then), 3)

    monkeypatch.setattr(time, "time", lambda: last + 3600)  # an hour later, nothing committed
    status = Experiment(tmp_path / "exp").status()

    assert status.live_workers == ["pytest-worker"] and status.eta == expected


def test_status_counts_no_killed_worker_live_though_its_parent_has_not_reaped_it(tmp_path):
    """`hopt status` said `workers: 2 live` right after every worker was killed: a killed worker stays a zombie
    until its parent (`hopt run`, a shell) reaps it, and a zombie still answers kill(0)."""
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=2)))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        here = Holder.this_process("killed")
        with store.transaction() as population:
            choice = plan_next(population, set(), store.recipe.policy.build(), store.recipe.space, store.recipe.seed)
            store.claim(choice.member, choice.decision, choice.hparams, Holder("killed", here.host, child.pid,
                                                                                here.pidns))
        assert Experiment(tmp_path / "exp").status().live_workers == ["killed"]
        os.kill(child.pid, signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie now

        status = Experiment(tmp_path / "exp").status()
    finally:
        child.kill()
        child.wait()
    assert status.live_workers == [] and status.stale_workers == ["killed"]
    assert status.members[choice.member].lease.gone
