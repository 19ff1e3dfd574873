"""The command line as a user meets it: what it parses and prints (in process), runs of real worker
processes, real files."""
from __future__ import annotations

import csv
import json
import sys

import pytest
import yaml

from hopt_cli.progress import ProgressLine, progress_text
from tests.commands import hopt, invoke
from tests.conftest import toy_recipe


def finished(tmp_path, write_recipe, **overrides):
    root = tmp_path / "exp"
    recipe = write_recipe(toy_recipe(**{"population": 4, "intervals": 6, **overrides}))
    assert hopt("run", str(recipe), "--dir", str(root), "--workers", "2").returncode == 0
    return root


def test_init_creates_the_experiment_and_is_idempotent(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe())
    first = invoke("init", str(recipe), "--dir", str(tmp_path / "exp"))
    second = invoke("init", str(recipe), "--dir", str(tmp_path / "exp"))

    assert first.exit_code == second.exit_code == 0
    assert "8 members x 10 intervals, policy romul" in first.stdout
    stored = yaml.safe_load((tmp_path / "exp" / "experiment.yaml").read_text())
    assert stored["format"] == 2 and stored["policy"]["sigma0"] == 0.1


def test_counts_of_one_are_singular(tmp_path, write_recipe):
    result = invoke("init", str(write_recipe(toy_recipe(intervals=1))), "--dir", str(tmp_path / "exp"))

    assert "8 members x 1 interval, policy romul" in result.stdout


def test_a_bad_recipe_is_one_line_exit_2_and_nothing_written(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(space={"lr": {"type": "log", "low": 0, "high": 1}}))
    result = invoke("init", str(recipe), "--dir", str(tmp_path / "exp"))

    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "space.lr.low: must be > 0 on a log scale" in result.stderr
    assert not (tmp_path / "exp").exists()


def test_a_missing_worker_module_is_caught_at_init(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(worker="workers.nonexistent:train"))
    result = invoke("init", str(recipe), "--dir", str(tmp_path / "exp"))

    assert result.exit_code == 2 and "cannot import workers.nonexistent" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "exp").exists()


def test_status_of_a_directory_that_is_no_experiment(tmp_path):
    result = invoke("status", "--dir", str(tmp_path))

    assert result.exit_code == 2 and "is not a hopt experiment" in result.stderr


def test_status_table_and_json(tmp_path, write_recipe):
    root = finished(tmp_path, write_recipe)

    table = invoke("status", "--dir", str(root))
    document = json.loads(invoke("status", "--dir", str(root), "--json").stdout)

    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].startswith("toy: 24/24 intervals (100%), policy romul, best score")
    assert "member  interval  score" in table.stdout and table.stdout.count("free") == 4
    assert document["complete"] and document["done"] == document["total"] == 24
    assert [m["interval"] for m in document["members"]] == [5] * 4  # the 0-based index of each member's last interval
    assert set(document["members"][0]["hparams"]) == {"h0", "h1"}


def test_best_exports_checkpoint_schedule_and_scores(tmp_path, write_recipe):
    root = finished(tmp_path, write_recipe)
    out = tmp_path / "best"

    result = invoke("best", "--dir", str(root), "--out", str(out), "--json")

    assert result.exit_code == 0, result.stderr
    best = json.loads(result.stdout)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["theta"]
    schedule = yaml.safe_load((out / "schedule.yaml").read_text())
    covered = [i for segment in schedule["schedule"] for i in range(*segment["intervals"])]
    assert covered == list(range(best["interval"] + 1))
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [int(r["interval"]) for r in rows] == covered
    assert float(rows[-1]["score"]) == best["score"] == schedule["score"]
    status = json.loads(invoke("status", "--dir", str(root), "--json").stdout)
    assert best["score"] == status["best"]["score"]


def test_best_before_any_commit_says_what_to_do(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe())
    invoke("init", str(recipe), "--dir", str(tmp_path / "exp"))

    result = invoke("best", "--dir", str(tmp_path / "exp"))

    assert result.exit_code == 2 and "no interval has been committed yet" in result.stderr


def test_a_member_that_keeps_failing_stops_the_run_with_a_clear_message(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=3, intervals=4, max_failures=2,
                                     worker="tests.hopt_cli.trainables:nan_for_member_1"))
    result = hopt("run", str(recipe), "--dir", str(tmp_path / "exp"), "--workers", "2")

    assert result.returncode == 1
    assert "member 1 failed 2 times in a row; last error: metric 'score' is nan" in result.stderr
    events = [json.loads(line) for line in (tmp_path / "exp" / "journal.jsonl").read_text().splitlines()]
    assert [e["member"] for e in events if e["type"] == "fail"] == [1, 1]


def test_a_command_trainable_runs_through_the_shell(tmp_path, write_recipe):
    script = tmp_path / "train.py"
    script.write_text(
        "import json, sys\n"
        "h, parent, out = float(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
        "x = json.load(open(parent + '/x.json'))['x'] if parent else 0.0\n"
        "json.dump({'x': x + h}, open(out + '/x.json', 'w'))\n"
        "json.dump({'score': -(x + h - 3) ** 2}, open(out + '/metrics.json', 'w'))\n")
    recipe = write_recipe(toy_recipe(
        population=2, intervals=3, worker=None, policy={"name": "random"},
        command=f"{sys.executable} {script} {{h}} {{parent}} {{out}}",
        space={"h": {"type": "float", "low": 0.0, "high": 2.0}}))
    recipe.write_text(recipe.read_text().replace("worker: null\n", ""))
    root = tmp_path / "exp"

    result = hopt("run", str(recipe), "--dir", str(root), "--workers", "1")

    assert result.returncode == 0, result.stderr
    status = json.loads(invoke("status", "--dir", str(root), "--json").stdout)
    for member in status["members"]:
        assert member["score"] == pytest.approx(-(3 * member["hparams"]["h"] - 3) ** 2)


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_the_progress_line_fits_the_terminal(columns):
    note = "best val_loss 0.1234 (member 1234567)"
    for done in (0, 4321, 1_000_000):
        line = progress_text(done, 1_000_000, note, columns - 1)
        assert len(line) <= columns - 1 and line.startswith("[") and f"{done}/1000000 intervals" in line


def test_a_message_after_a_progress_line_starts_on_a_line_of_its_own(monkeypatch, capsys):
    line = ProgressLine()
    monkeypatch.setattr(line, "tty", True)
    monkeypatch.setenv("COLUMNS", "80")

    line.show(3, 10, "best score 1")
    line.say("stopped by SIGINT; run the same command again to resume")

    drawn, message = capsys.readouterr().err.split("\n")[:2]
    assert drawn.startswith("\r[") and len(drawn.removeprefix("\r").removesuffix("\x1b[K")) <= 79
    assert message == "stopped by SIGINT; run the same command again to resume"


def test_progress_into_a_pipe_prints_a_line_only_when_it_says_something_new(capsys):
    """`hopt run` reports the final count again after its workers exit; a log got that line twice."""
    line = ProgressLine()
    assert not line.tty  # pytest captures stderr

    for done in (1, 2, 2, 4, 4):
        line.show(done, 4, "best score 1")

    assert [text.split("] ")[1] for text in capsys.readouterr().err.splitlines()] == [
        f"{done}/4 intervals  best score 1" for done in (1, 2, 4)]
