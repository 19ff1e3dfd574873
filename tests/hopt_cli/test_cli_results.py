"""`hopt status` and `hopt best` as a user reads them: the table, --watch, --top, --member, the errors."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import time

import pytest
import yaml
from click.testing import CliRunner

from hopt_cli.cli import cli
from hopt_cli.errors import ExperimentFailed
from hopt_cli.experiment import Experiment
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.worker import Worker
from tests.commands import hopt as hopt_process, invoke
from tests.conftest import toy_recipe
from tests.hopt_cli.conftest import hopt, hopt_onto_a_full_disk, mid_run


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_status_table_has_the_summary_and_every_member(quadratic):
    lines = run("status", "--dir", str(quadratic)).splitlines()
    best = Experiment(quadratic).best()

    assert lines[0] == (f"toy: 40/40 intervals (100%), policy romul, best score {best.score:.6g} "
                        f"(member {best.member}, interval {best.interval}), complete")
    assert lines[1].startswith("elapsed ") and lines[1].endswith(", workers: 0 live, 0 stale")
    assert lines[2].split() == ["member", "interval", "score", "robust(2)", "h0", "h1", "sigma", "lease", "(worker",
                                "host:pid", "heartbeat)"]
    assert len(lines) == 3 + 5 + 1 and lines[-1].startswith("* explorer")


def test_status_table_mid_run_names_the_lease_holder(tmp_path):
    _, claim = mid_run(tmp_path / "exp")
    lines = run("status", "--dir", str(tmp_path / "exp")).splitlines()

    assert ", ETA " in lines[1] and lines[1].endswith("workers: 1 live, 0 stale")
    row = next(line for line in lines[3:] if line.split()[0].rstrip("*") == str(claim.member))
    assert "pytest-worker " in row and row.endswith(" ago")


def test_watch_exits_by_itself_once_complete_without_escape_codes(quadratic):
    output = run("status", "--dir", str(quadratic), "--watch", "--interval", "0.1")

    assert output.count("intervals (100%)") == 1 and "\x1b" not in output


def test_best_top_table_and_export(quadratic, tmp_path):
    output = run("best", "--dir", str(quadratic), "--top", "3", "--out", str(tmp_path / "top"))
    top = Experiment(quadratic).top(3)

    lines = output.splitlines()
    assert lines[0].split() == ["rank", "score", "member", "interval", "exploits"]
    for rank, (line, entry) in enumerate(zip(lines[1:4], top), 1):
        assert line.split()[:4] == [str(rank), f"{entry.score:.5g}", str(entry.member), str(entry.interval)]
        schedule = yaml.safe_load((tmp_path / "top" / f"rank-{rank}" / "schedule.yaml").read_text())
        assert schedule["score"] == entry.score and schedule["member"] == entry.member
    assert lines[4] == f"exported to {tmp_path / 'top'}/rank-1 ... rank-3"


def test_best_member_exports_that_members_lineage(quadratic, tmp_path):
    output = run("best", "--dir", str(quadratic), "--member", "3", "--out", str(tmp_path / "m3"))
    member = Experiment(quadratic).member(3)

    assert output.startswith(f"member 3's latest score {member.score:.6g}: member 3, interval 7")
    rows = list(csv.DictReader((tmp_path / "m3" / "scores.csv").open()))
    assert [float(r["score"]) for r in rows] == [s.score for s in member.schedule]
    assert [r["member"] for r in rows] == [str(s.member) for s in member.schedule]
    schedule = yaml.safe_load((tmp_path / "m3" / "schedule.yaml").read_text())
    assert schedule["hopt_schedule"] == 1 and schedule["member"] == 3 and schedule["intervals"] == 8
    assert schedule["worker"] == "workers.toys:pbt_quadratic" and (schedule["steps"], schedule["seed"]) == (4, 0)
    assert (tmp_path / "m3" / "checkpoint" / "state.json").read_text() == \
        (member.checkpoint / "state.json").read_text()


@pytest.mark.parametrize("args, message", [
    (["best", "--member", "99"], "there is no member 99: the population has members 0 to 4"),
    (["best", "--top", "0"], "ask for at least 1 best interval (got 0)"),
    (["best", "--top", "5"], "only the 3 best intervals are kept (keep_best in the recipe); ask for 3 or fewer"),
    (["best", "--top", "2", "--member", "1"], "give --member or --top, not both"),
    (["status", "--json", "--watch"], "--json prints one document; leave out --watch"),
])
def test_user_errors_are_one_line_and_exit_2(quadratic, args, message):
    result = hopt(*args, "--dir", str(quadratic))

    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"hopt: error: {message}") and result.stderr.count("\n") == 1


def test_best_out_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(quadratic, tmp_path):
    result = hopt_onto_a_full_disk(tmp_path, "best", quadratic, "best")
    disk = tmp_path / "disk"

    assert result.stderr == (f"hopt: error: cannot export to {disk}/best: No space left on device; choose an "
                             "--out you can write to, with room for the checkpoint\n")
    assert result.stdout == "status=2\n"  # and `ls -A` of the export folder printed nothing: it is empty


def test_a_large_population_is_summarised_and_all_lists_every_member(tmp_path):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=30, intervals=2)))
    worker = Worker(store, "pytest-worker")
    for _ in range(35):
        worker.train_and_commit(worker.claim())
    scores = sorted(m.lineage.scores[-1] for m in store.sync().members if m.lineage.scores)[::-1]

    lines = run("status", "--dir", str(tmp_path / "exp")).splitlines()
    every = run("status", "--dir", str(tmp_path / "exp"), "--all").splitlines()

    rows = [line for line in lines[3:] if line.split()[0].rstrip("*").isdigit()]
    assert len(rows) == 20 and sorted(float(r.split()[2]) for r in rows)[0] == pytest.approx(scores[19], rel=1e-3)
    assert lines[3 + 20] == ("... and 10 more members (at intervals 0-0, 0 training, 0 with failures): "
                             "`hopt status --all` lists every one")
    assert len([line for line in every[3:] if line.split()[0].rstrip("*").isdigit()]) == 30


def refused(*args: str) -> str:
    """The one-line message of a `hopt ARGS` that must exit 2 (the user's mistake)."""
    result = invoke(*args)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    return result.stderr.removeprefix("hopt: error: ").strip()


def files(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_best_out_refuses_a_folder_inside_an_experiment_or_another_export_and_replaces_its_own(
        quadratic, ellipsoid, tmp_path):
    """`hopt best --out` wrote into the experiment (the next sweep deleted it) and over another
    experiment's export, silently."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    run("best", "--dir", str(ellipsoid), "--out", str(tmp_path / "theirs"))
    before = files(tmp_path)

    for out, inside in ((quadratic / "best", quadratic), (ellipsoid / "checkpoints" / "x", ellipsoid)):
        assert refused("best", "--dir", str(quadratic), "--out", str(out)) == (
            f"--out {out} is inside the experiment directory {inside}, which hopt manages and "
            "cleans; choose a folder outside it")
        assert not out.exists()
    assert refused("best", "--dir", str(quadratic), "--top", "2", "--out", str(tmp_path / "theirs")) == (
        f"--out {tmp_path / 'theirs'} holds the export of another experiment ({ellipsoid}); choose another "
        f"--out, or delete {tmp_path / 'theirs'} first")
    assert refused("best", "--dir", str(quadratic), "--out", str(tmp_path / "notes")) == (
        f"--out {tmp_path / 'notes'} is not empty and holds no export of `hopt best` (.hopt-export.json); choose "
        "a new or empty folder")
    assert files(tmp_path) == before

    run("best", "--dir", str(quadratic), "--out", str(tmp_path / "ours"))
    run("best", "--dir", str(quadratic), "--member", "2", "--out", str(tmp_path / "ours"))
    assert yaml.safe_load((tmp_path / "ours" / "schedule.yaml").read_text())["member"] == 2


def test_suggested_commands_paste_whole_into_a_shell(quadratic, tmp_path):
    """A directory with a space or a `ü` broke the commands hopt suggests once pasted into a shell."""
    root = tmp_path / "my runs" / "exp ü"
    shutil.copytree(quadratic, root)

    ran = invoke("run", str(quadratic.with_suffix(".yaml")), "--dir", str(root), "--workers", "1")
    board = invoke("tensorboard", "--dir", str(root), "--out", str(tmp_path / "my tb"))
    never = invoke("log", "--dir", str(root), "--member", "0", "--interval", "99")

    assert ran.exit_code == 0 and board.exit_code == 0, ran.output + board.output
    suggested = [re.search("`(.+)`", ran.stdout)[1], board.stdout.split("view them: ")[1],
                 re.search("`(.+)`", never.stderr)[1]]
    assert [shlex.split(line) for line in suggested] == [["hopt", "best", "--dir", str(root), "--out", "DIR"],
                                                         ["tensorboard", "--logdir", str(tmp_path / "my tb")],
                                                         ["hopt", "log", "--dir", str(root), "--member", "0"]]


def test_a_lease_whose_heartbeat_is_late_is_silent_not_live(tmp_path):
    """Right after a kill -9 of its worker (on another node, or a pid not yet reaped) a lease counted as
    live until the lease timeout."""
    store, claim = mid_run(tmp_path / "exp")
    late = time.time() - 2 * store.recipe.lease.heartbeat
    os.utime(store.paths.lease(claim.member), (late, late))

    lines = run("status", "--dir", str(tmp_path / "exp")).splitlines()
    status = Experiment(tmp_path / "exp").status()

    assert lines[1].endswith(", ETA -, workers: 0 live, 1 silent, 0 stale")
    row = next(line for line in lines[3:] if line.split()[0].rstrip("*") == str(claim.member))
    assert " SILENT pytest-worker " in row
    assert (status.live_workers, status.silent_workers, status.stale_workers) == ([], ["pytest-worker"], [])
    assert status.members[claim.member].lease.silent and not status.members[claim.member].lease.stale


def test_elapsed_of_a_failed_run_ends_at_its_last_event(tmp_path):
    """A run that failed in a fraction of a second showed the time since it started, growing ever after."""
    root = tmp_path / "exp"
    store = Store.create(root, Recipe.from_dict(toy_recipe(population=2, intervals=4)))
    with pytest.raises(ExperimentFailed):
        Worker(store, "nan", trainable=lambda ctx: float("nan")).run()
    times = [json.loads(line)["time"] for line in (root / "journal.jsonl").read_text().splitlines()]

    later = json.loads(hopt_process("status", "--dir", str(root), "--json").stdout)

    assert later["elapsed"] == pytest.approx(times[-1] - times[0], abs=1e-3)
    assert later["failed"] and later["live_workers"] == later["silent_workers"] == []


def test_status_numbers_each_members_interval_as_best_does(quadratic):
    """`hopt status` gave a member's intervals counted (8) where `hopt best` gives the interval's index (7)."""
    rows = run("status", "--dir", str(quadratic)).splitlines()[3:8]
    document = json.loads(run("status", "--dir", str(quadratic), "--json"))

    for member, (row, entry) in enumerate(zip(rows, document["members"])):
        latest = run("best", "--dir", str(quadratic), "--member", str(member)).splitlines()[0]
        interval = int(latest.split(", interval ")[1].split(",")[0])
        assert row.split()[:2] == [f"{member}{'*' if entry['explorer'] else ''}", str(interval)]
        assert entry["interval"] == interval == 7


def test_best_shows_every_metric_of_the_best_interval(tmp_path):
    """Test accuracy, which the quickstart promises, was only in `hopt best --json`."""
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=2)))
    worker = Worker(store, "pytest-worker",
                    trainable=lambda ctx: {"score": ctx.hparams["h0"], "test_acc": 0.875, "note": "ok"})
    for _ in range(4):
        worker.train_and_commit(worker.claim())
    best = Experiment(tmp_path / "exp").best()

    lines = run("best", "--dir", str(tmp_path / "exp")).splitlines()

    assert lines[1] == f"  metrics: score={best.score:.4g} test_acc=0.875 note=ok"
