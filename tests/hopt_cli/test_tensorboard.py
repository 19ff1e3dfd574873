"""`hopt tensorboard`: each member's run holds its journal commits and the checkpoints it copied, a second
export appends only what is new, a real TensorBoard serves it, and wrong uses are one line."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hopt_cli.errors import HoptError
from hopt_cli.events import Adopt, Claim, Commit, JournalEvent
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.tensorboard import export
from hopt_cli.timeline import Timeline, TrainedInterval
from hopt_cli.worker import Worker
from tests.conftest import REPO, toy_recipe
from workers.toys import pbt_quadratic

OPTIMIZERS = ["sgd", "adam", "lamb"]  # a choice hyperparameter the toy ignores, exported as its index
Points = list[tuple[int, float]]  # (step, value), in the order written


def close(value: float) -> Any:
    """TensorBoard stores scalars as float32: a value comes back rounded to 24 bits (relative 6e-8)."""
    return pytest.approx(value, rel=1e-6, abs=1e-30)


def expected(found: list[JournalEvent]) -> dict[str, dict[str, Points]]:
    """Each member's run by tag, from the journal alone: its commits in order, each exploit preceded by
    the checkpoint it copied, each adopt as the checkpoint adopted."""
    by_checkpoint = {c.checkpoint: c for c in commits_of(found)}
    runs: dict[str, dict[str, Points]] = {}

    def write(member: int, c: TrainedInterval) -> None:
        values = {"score": c.score, **{f"metrics/{k}": v for k, v in c.metrics.items()},
                  **{f"hparams/{k}": OPTIMIZERS.index(v) if k == "optimizer" else v for k, v in c.hparams.items()},
                  **({"pbt/sigma": c.sigma} if c.sigma > 0 else {})}
        for tag, value in values.items():
            runs.setdefault(f"m{member:03d}", {}).setdefault(tag, []).append((c.interval, value))

    for event in found:
        if isinstance(event, Commit):
            c = by_checkpoint[event.checkpoint]
            if c.action == "exploit":
                write(c.member, by_checkpoint[c.parent_checkpoint])
            write(c.member, c)
        elif isinstance(event, Adopt):
            write(event.member, by_checkpoint[event.checkpoint])
    return runs


def commits_of(found: list[JournalEvent]) -> list[TrainedInterval]:
    timeline = Timeline()
    timeline.extend(found)
    return timeline.commits


def read_run(folder: Path) -> tuple[dict[str, Points], dict[str, list[tuple[int, str]]]]:
    """A run's scalars and texts as TensorBoard's own reader finds them in all of the run's event files."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in tags["scalars"]}
    texts = {tag: [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors(tag)]
             for tag in tags["tensors"] if not tag.startswith("_hparams_/")}  # the HParams session is no text
    return scalars, texts


def assert_runs_hold(out: Path, runs: dict[str, dict[str, Points]]) -> None:
    """The event files of `out` hold exactly `runs`' points, in order (besides the pbt/*_from annotations)."""
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(runs)
    for run, tags in runs.items():
        scalars, _ = read_run(out / run)
        assert sorted(t for t in scalars if not t.endswith("_from")) == sorted(tags), run
        for tag, points in tags.items():
            assert [s for s, _ in scalars[tag]] == [s for s, _ in points], (run, tag)
            assert [v for _, v in scalars[tag]] == [close(v) for _, v in points], (run, tag)


def events_of(root: Path) -> list[JournalEvent]:
    return Store.open(root).read_events()[0]


def in_process(root: Path, population: int = 4, intervals: int = 6, trainable: Any = pbt_quadratic) -> Worker:
    """A worker of a fresh T1 experiment, with a choice hyperparameter besides h0 and h1."""
    space = {**toy_recipe()["space"], "optimizer": {"type": "choice", "values": OPTIMIZERS}}
    store = Store.create(root, Recipe.from_dict(toy_recipe(population=population, intervals=intervals, space=space)))
    return Worker(store, "pytest-worker", trainable=trainable)


def test_each_run_holds_the_members_commits_the_checkpoints_it_copied_and_its_exploits(ellipsoid, tmp_path):
    result = export(ellipsoid, tmp_path / "tb")

    found = events_of(ellipsoid)
    commits = commits_of(found)
    exploits = [c for c in commits if c.action == "exploit"]
    assert exploits, "the experiment has exploits to show"
    assert_runs_hold(tmp_path / "tb", expected(found))
    assert result.runs == result.updated == tuple(f"m{m:03d}" for m in range(6))
    adopts = [e for e in found if isinstance(e, Adopt)]
    assert (result.points, result.events) == (len(commits) + len(exploits) + len(adopts), len(found))
    by_checkpoint = {c.checkpoint: c for c in commits}
    for member in range(6):
        scalars, texts = read_run(tmp_path / "tb" / f"m{member:03d}")
        mine = [c for c in exploits if c.member == member]
        assert scalars.get("pbt/exploit_from", []) == [(c.interval, c.parent) for c in mine]
        assert [step for step, _ in texts.get("pbt/exploit", [])] == [c.interval for c in mine]
        for c, (_, text) in zip(mine, texts.get("pbt/exploit", [])):
            copied = by_checkpoint[c.parent_checkpoint]
            assert text.startswith(f"interval {c.interval}: copied member {c.parent}'s checkpoint of interval "
                                   f"{copied.interval} (score {copied.score:.6g}); "), text


def test_exporting_again_appends_only_the_new_intervals(tmp_path):
    """Exported while an exploit's claim is open, whose parent then commits again before it: every point
    written once, the first files untouched, the same points as one export of the finished experiment."""
    worker = in_process(tmp_path / "exp")
    store = worker.store
    while not ((held := worker.claim()).decision.action == "exploit" and store.population.intervals_done > 8):
        worker.train_and_commit(held)
    first = export(store.paths.root, tmp_path / "tb")
    shutil.copytree(tmp_path / "tb", tmp_path / "first")
    before = events_of(store.paths.root)
    parent = store.population.members[held.decision.parent]
    while parent.checkpoint == held.decision.checkpoint:  # the copied checkpoint is no longer its latest
        worker.train_and_commit(worker.claim())
    worker.train_and_commit(held)
    while (claim := worker.claim()) is not None:
        worker.train_and_commit(claim)

    second = export(store.paths.root, tmp_path / "tb")
    third = export(store.paths.root, tmp_path / "tb")
    export(store.paths.root, tmp_path / "once")

    found = events_of(store.paths.root)
    assert isinstance(before[-1], Claim) and before[-1].token == held.lease.token
    assert (first.events, second.events, third.events) == (len(before), len(found) - len(before), 0)
    assert (third.points, third.updated) == (0, ())
    assert_runs_hold(tmp_path / "first", expected(before))
    for path in (tmp_path / "first").rglob("events.*"):
        assert (tmp_path / "tb" / path.relative_to(tmp_path / "first")).read_bytes() == path.read_bytes()
    assert_runs_hold(tmp_path / "tb", expected(found))  # a copied step may repeat one of the member's: by design
    assert_runs_hold(tmp_path / "once", expected(found))
    assert second.points == points_in(expected(found)) - points_in(expected(before))


def test_an_export_that_recorded_only_its_journal_position_goes_on_from_there(tmp_path):
    """A state file of hopt 0.2.0 holds the journal position, not the count of events read: the next
    export counts the valid events before that position and appends the rest, as if it had been ours."""
    worker = in_process(tmp_path / "exp", population=3, intervals=3)
    store = worker.store
    for _ in range(4):
        worker.train_and_commit(worker.claim())
    export(store.paths.root, tmp_path / "tb")
    state = json.loads((tmp_path / "tb" / ".hopt-tensorboard.json").read_text())
    written = state.pop("events")
    (tmp_path / "tb" / ".hopt-tensorboard.json").write_text(json.dumps({**state, "members": {}, "claimed": {}}))
    while (claim := worker.claim()) is not None:
        worker.train_and_commit(claim)

    second = export(store.paths.root, tmp_path / "tb")

    found = events_of(store.paths.root)
    assert second.events == len(found) - written
    assert_runs_hold(tmp_path / "tb", expected(found))
    assert json.loads((tmp_path / "tb" / ".hopt-tensorboard.json").read_text())["events"] == len(found)


def points_in(runs: dict[str, dict[str, Points]]) -> int:
    return sum(len(tags["score"]) for tags in runs.values())


def lags(ctx: Any) -> dict[str, float]:
    """T1, but member 3 scores 10 worse: once it falls behind, it takes over a finished lineage."""
    result = pbt_quadratic(ctx)
    return {**result, "score": result["score"] - 10} if ctx.member == 3 else result


def test_an_adopted_lineage_shows_in_the_adopters_run(tmp_path):
    worker = in_process(tmp_path / "exp", intervals=4, trainable=lags)
    store, held = worker.store, None
    while held is None or any(m.interval < 4 for m in store.sync().members if m.member != 3):
        claim = worker.claim()
        if held is None and claim.member == 3 and store.population.members[3].interval >= 2:
            held = claim  # member 3 waits while the others finish
        else:
            worker.train_and_commit(claim)
    with store.transaction():
        store.release(held.lease, "held back by the test", store.paths.staging_dir(held.lease.token))
    assert worker.claim() is None
    (adopt,) = [e for e in events_of(store.paths.root) if isinstance(e, Adopt)]

    export(store.paths.root, tmp_path / "tb")

    assert_runs_hold(tmp_path / "tb", expected(events_of(store.paths.root)))
    scalars, texts = read_run(tmp_path / "tb" / "m003")
    assert scalars["pbt/adopted_from"] == [(3, adopt.decision.parent)]
    assert scalars["score"][-1] == (3, close(adopt.score))
    assert texts["pbt/adopted"] == [
        (3, f"took over member {adopt.decision.parent}'s finished lineage (score {adopt.score:.6g})")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError):
        return None  # not listening yet, or the run is not loaded yet (400)


def served(base: str, run: str, tag: str) -> Points:
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    return [(step, value) for _, step, value in get(f"{base}/data/plugin/scalars/scalars?{query}") or []]


def as_loaded(points: Points) -> Points:
    """What TensorBoard's default loader keeps: a step already seen restarts the series from there."""
    kept: Points = []
    for step, value in points:
        kept = [p for p in kept if p[0] < step] + [(step, value)]
    return kept


def test_a_real_tensorboard_serves_the_lineage_of_each_member(tmp_path):
    """Exported in two parts, so each run has two files, read in the order they were written."""
    worker = in_process(tmp_path / "exp")
    for _ in range(10):
        worker.train_and_commit(worker.claim())
    export(tmp_path / "exp", tmp_path / "tb")
    while (claim := worker.claim()) is not None:
        worker.train_and_commit(claim)
    export(tmp_path / "exp", tmp_path / "tb")
    assert all(len(list(run.glob("events.*"))) == 2 for run in (tmp_path / "tb").iterdir() if run.is_dir())
    written = expected(events_of(tmp_path / "exp"))
    runs = {run: as_loaded(tags["score"]) for run, tags in written.items()}
    assert any(runs[run] != tags["score"] for run, tags in written.items()), "a copied step replaces one"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "tensorboard.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "tb"),
                               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (sorted(get(f"{base}/data/runs") or []) == sorted(runs)
                   and all(len(served(base, run, "score")) == len(points) for run, points in runs.items())):
            assert server.poll() is None, (tmp_path / "tensorboard.log").read_text()
            assert time.monotonic() < deadline, "TensorBoard did not serve every run within 60 s"
            time.sleep(0.1)
        for run, points in runs.items():
            assert served(base, run, "score") == [(step, close(value)) for step, value in points], run
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_without_tensorboard_it_says_how_to_install_it(quadratic, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)

    with pytest.raises(HoptError) as error:
        export(quadratic, tmp_path / "tb")

    assert str(error.value) == (
        "hopt tensorboard needs tensorboard: pip install 'tensorboard>=2.14' (or, in hopt's folder, "
        "pip install -e '.[tensorboard]')")
    assert not (tmp_path / "tb").exists()


def test_an_export_of_another_experiment_is_refused(quadratic, ellipsoid, tmp_path):
    export(quadratic, tmp_path / "tb")
    files = {p: p.read_bytes() for p in (tmp_path / "tb").rglob("*") if p.is_file()}

    with pytest.raises(HoptError) as error:
        export(ellipsoid, tmp_path / "tb")

    assert str(error.value) == (f"{tmp_path / 'tb'} holds the TensorBoard export of another experiment "
                                f"({quadratic.resolve()}), not of {ellipsoid}; export into a new --out, "
                                f"or delete {tmp_path / 'tb'}")
    assert {p: p.read_bytes() for p in (tmp_path / "tb").rglob("*") if p.is_file()} == files


def test_a_journal_shorter_than_the_export_is_refused(quadratic, tmp_path):
    root = tmp_path / "exp"
    shutil.copytree(quadratic, root)
    export(root, tmp_path / "tb")
    journal = root / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:10]))

    with pytest.raises(HoptError) as error:
        export(root, tmp_path / "tb")

    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"{journal} is shorter than {tmp_path / 'tb'} has exported (")
    assert str(error.value).endswith("bytes): the journal was cut or replaced; export into a new --out")


def test_hopt_tensorboard_says_what_it_exported_then_that_nothing_is_new(quadratic, tmp_path):
    out = tmp_path / "tb"
    first = subprocess.run([sys.executable, "-m", "hopt_cli", "tensorboard", "--dir", str(quadratic), "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    again = subprocess.run([sys.executable, "-m", "hopt_cli", "tensorboard", "--dir", str(quadratic), "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)

    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == [f"m{m:03d}" for m in range(5)]
    assert first.stdout.startswith("exported ") and f"to 5 of 5 runs in {out}" in first.stdout
    assert again.stdout == f"{out} is up to date (5 runs); view them: tensorboard --logdir {out}\n"


def test_an_out_inside_an_experiment_or_holding_other_files_is_refused(quadratic, ellipsoid, tmp_path):
    """`hopt tensorboard --out` wrote its runs into another experiment's directory."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    before = {p: p.read_bytes() for p in ellipsoid.rglob("*") if p.is_file()}

    for out, message in (
            (ellipsoid / "tb", f"--out {ellipsoid / 'tb'} is inside the experiment directory {ellipsoid}, which hopt "
                               "manages and cleans; choose a folder outside it"),
            (ellipsoid, f"--out {ellipsoid} is inside the experiment directory {ellipsoid}, which hopt manages "
                        "and cleans; choose a folder outside it"),
            (tmp_path / "notes", f"--out {tmp_path / 'notes'} is not empty and holds no export of `hopt tensorboard` "
                                 "(.hopt-tensorboard.json); choose a new or empty folder")):
        with pytest.raises(HoptError) as error:
            export(quadratic, out)
        assert str(error.value) == message and error.value.exit_code == 2

    assert {p: p.read_bytes() for p in ellipsoid.rglob("*") if p.is_file()} == before
    assert not (ellipsoid / "tb").exists() and [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]
