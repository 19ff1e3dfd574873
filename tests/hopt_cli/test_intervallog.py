"""One log per trained interval: what the trainable wrote, however it wrote it, kept while its checkpoint is."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hopt_cli import intervallog
from hopt_cli.experiment import Experiment
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.worker import Worker
from tests.conftest import REPO, toy_recipe
from tests.hopt_cli.conftest import hopt, mid_run
from tests.invariants import check_finished_experiment

SAYS = re.compile(r"^(print|stderr|fd 2|a child) says member (\d+) interval (\d+)$", re.MULTILINE)


@contextlib.contextmanager
def stderr_into(path: Path) -> Iterator[None]:
    """This process's file descriptor 2 goes to `path` (as a worker's does under `hopt run`), then back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@pytest.fixture(scope="module")
def talked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`hopt run` of the trainable that writes in every way, 4 members x 4 intervals; member 2's interval 1
    failed once on the way."""
    tmp_path = tmp_path_factory.mktemp("talked")
    recipe = tmp_path / "exp.yaml"
    recipe.write_text(yaml.safe_dump(toy_recipe(population=4, intervals=4, worker="tests.hopt_cli.trainables:talks")))
    env = {**os.environ, "HOPT_TEST_MARKER": str(tmp_path / "failed-once")}
    result = subprocess.run([sys.executable, "-m", "hopt_cli", "run", str(recipe), "--dir", str(tmp_path / "exp"),
                             "--workers", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tmp_path / "exp"


def test_each_kept_interval_log_holds_exactly_what_its_interval_wrote(talked: Path):
    store = Store.open(talked)
    referenced = store.sync().referenced_checkpoints()

    logs = {p.name.removesuffix(".log"): p.read_text() for p in store.paths.interval_logs.iterdir()}

    assert set(logs) == referenced  # one per kept checkpoint, and nothing of the collected ones or the failure
    for name, text in logs.items():
        member, interval = (int(part[1:]) for part in name.split("-")[:2])
        said = SAYS.findall(text)
        assert sorted(way for way, _, _ in said) == ["a child", "fd 2", "print", "stderr"], text
        assert {(int(m), int(i)) for _, m, i in said} == {(member, interval)}  # no other member's lines
        assert f"claim member {member} interval {interval}" in text.splitlines()[0]
    check_finished_experiment(talked)


def test_hopt_log_shows_an_interval_s_output_under_whose_it_was(talked: Path):
    store = Store.open(talked)
    best = store.sync().best[0]  # its checkpoint is kept, and so is its log

    shown = hopt("log", "--dir", str(talked), "--member", str(best.member), "--interval", str(best.interval))

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert re.fullmatch(rf"== member {best.member} interval {best.interval}, attempt 1 by local-\d+-[01]: committed ==",
                        lines[0])
    assert "\n".join(lines[1:]) + "\n" == store.paths.interval_log(best.checkpoint).read_text()


def test_a_failed_attempt_keeps_its_log_until_its_member_trains_that_interval(tmp_path: Path):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=2)))

    def fails_once(ctx):
        os.write(2, f"training member {ctx.member} interval {ctx.interval}\n".encode())  # pytest swaps sys.stderr
        raise RuntimeError("boom")

    with stderr_into(tmp_path / "worker.log"):
        failing = Worker(store, "failing", trainable=fails_once)
        failing.train_and_commit(failing.claim())
        shown = hopt("log", "--dir", str(store.paths.root), "--member", "0", "--interval", "0")
        Worker(store, "fixed").run()

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == ["== member 0 interval 0, attempt 1 by failing: failed: RuntimeError: boom ==",
                                             "training member 0 interval 0"]
    attempts = Experiment(store.paths.root).interval_logs(0, 0)
    assert [(a.worker, a.outcome) for a in attempts] == [("failing", "failed"), ("fixed", "committed")]
    assert attempts[0].output is None  # the member trained the interval since: the failure's log went
    kept = {p.name.removesuffix(".log") for p in store.paths.interval_logs.iterdir()}
    assert kept == store.sync().referenced_checkpoints()
    check_finished_experiment(store.paths.root)


def test_a_worker_whose_stderr_is_a_pipe_keeps_no_interval_log_and_loses_none_of_its_output(tmp_path: Path):
    recipe = tmp_path / "exp.yaml"
    recipe.write_text(yaml.safe_dump(toy_recipe(population=2, intervals=3, worker="tests.hopt_cli.trainables:talks")))
    (tmp_path / "failed-once").touch()  # no failure this time
    env = {**os.environ, "HOPT_TEST_MARKER": str(tmp_path / "failed-once")}

    result = subprocess.run([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(tmp_path / "exp"),
                             "--recipe", str(recipe)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    summary = check_finished_experiment(tmp_path / "exp")
    assert len(re.findall(r"^fd 2 says", result.stderr, re.MULTILINE)) == summary.commits  # none read away
    assert not Store.open(tmp_path / "exp").paths.interval_logs.exists()


def test_an_interval_s_output_past_the_limit_keeps_its_end(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(intervallog, "LIMIT", 100)
    with stderr_into(tmp_path / "worker.log"):
        os.write(2, b"before the interval\n")
        mark = intervallog.mark()
        os.write(2, b"x" * 250 + b"\nthe end\n")
        output = mark.output()

    assert output.endswith(b"x" * 91 + b"\nthe end\n")
    assert output.startswith(b"[hopt: the first 159 bytes of this interval's output are cut here")
    assert b"before" not in output


def test_asking_for_an_interval_never_trained_or_still_training_says_which(tmp_path: Path):
    store, claim = mid_run(tmp_path / "exp")
    root = str(store.paths.root)

    training = hopt("log", "--dir", root, "--member", str(claim.member), "--interval", str(claim.lease.interval))
    never = hopt("log", "--dir", root, "--member", "0", "--interval", "5")
    alone = hopt("log", "--dir", root, "--interval", "0")

    assert training.returncode == never.returncode == alone.returncode == 2
    assert training.stderr.strip() == (f"hopt: error: member {claim.member} interval {claim.lease.interval} is training "
                                       "now: its output is in the log of worker pytest-worker until it ends")
    assert never.stderr.strip().startswith("hopt: error: member 0 interval 5 was never trained")
    assert "give --member too" in alone.stderr and len(alone.stderr.strip().splitlines()) == 1


# 30 MB of output, then the line the test looks for. Bytes written while the worker cuts its log are lost
# with the middle (intervallog.cut_if_large), so the flood waits (at most 30 s) until the log is back under
# the cap, that is until any cut its bytes called for is done, before it writes that line.
FLOODS = ("yes '{member} {interval} 0123456789abcdef0123456789abcdef' | head -c 30000000; echo; n=0; "
          f"while [ $(stat -L -c %s /dev/stdout) -gt {intervallog.CAP} ] && [ $n -lt 3000 ]; "
          "do sleep 0.01; n=$((n+1)); done; "
          "echo END {member} {interval}; printf '{{\"score\": 1}}' > {out}/metrics.json # {parent} {h0} {h1}")


def test_a_worker_log_flooded_past_its_cap_is_cut_and_says_where(tmp_path: Path):
    """Four intervals of 30 MB each into one worker's log: it stays below CAP, keeping its start and end."""
    recipe = tmp_path / "exp.yaml"
    recipe.write_text(yaml.safe_dump(toy_recipe(population=2, intervals=2, worker=None, command=FLOODS)))

    result = hopt("run", str(recipe), "--dir", str(tmp_path / "exp"), "--workers", "1")

    assert result.returncode == 0, result.stderr
    store = Store.open(tmp_path / "exp")
    [log] = [path for path in store.paths.logs.iterdir() if path.is_file()]
    assert log.stat().st_size <= intervallog.CAP
    text = log.read_text()
    assert "claim member 0 interval 0" in text.splitlines()[0]  # its start
    assert re.search(r"^\[hopt: \d+ bytes of this log are cut here \(cuts: \d+, the last at .*\): it passed 64 MiB",
                     text, re.MULTILINE)
    assert "experiment complete: 4 intervals committed" in text.splitlines()[-1]  # its end
    for path in store.paths.interval_logs.iterdir():  # each kept interval's log still ends as it ended
        member, interval = (int(part[1:]) for part in path.name.split("-")[:2])
        assert path.read_text().endswith(f"END {member} {interval}\n")
    check_finished_experiment(store.paths.root)


def test_an_interval_s_output_cut_from_the_worker_log_is_read_where_it_moved(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(intervallog, "CAP", 300)
    monkeypatch.setattr(intervallog, "HEAD", 50)
    monkeypatch.setattr(intervallog, "LIMIT", 100)
    monkeypatch.setattr(intervallog, "_cuts", [])
    with stderr_into(tmp_path / "worker.log"):
        os.write(2, b"h" * 60 + b"\n")
        mark = intervallog.mark()
        os.write(2, b"x" * 400 + b"\nthe end\n")
        intervallog.cut_if_large()
        os.write(2, b"after the cut\n")
        output = mark.output()

    log = (tmp_path / "worker.log").read_bytes()
    assert log.startswith(b"h" * 50 + b"\n[hopt: 320 bytes of this log are cut here (cuts: 1, the last at ")
    assert log.endswith(b"]\n" + b"x" * 91 + b"\nthe end\nafter the cut\n")
    assert output == (b"[hopt: the first 323 bytes of this interval's output are cut here; the worker's log was cut "
                      b"there too]\n" + b"x" * 77 + b"\nthe end\nafter the cut\n")
