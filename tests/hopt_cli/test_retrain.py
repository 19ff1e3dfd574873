"""`hopt replay` and `hopt_cli.replay()`: one model retrained from scratch along an exported schedule
reproduces the original."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml

from hopt_cli import schedule
from hopt_cli.errors import HoptError
from hopt_cli.experiment import Experiment
from hopt_cli.retrain import replay
from tests.commands import hopt
from tests.conftest import REPO, toy_recipe

SCRIPT = """
import sys

import hopt_cli
from workers.toys import pbt_quadratic


def train(ctx):
    return pbt_quadratic(ctx)


if __name__ == "__main__":
    recipe, root, best, again = sys.argv[1:]
    exported = hopt_cli.run(recipe, root, trainable=train).export_best(best)
    replayed = hopt_cli.replay(best + "/schedule.yaml", again, trainable=train)
    print(exported.score, replayed.score, replayed.original)
"""


def test_replaying_the_best_of_t1_reproduces_its_score_and_files(quadratic, tmp_path):
    assert hopt("best", "--dir", str(quadratic), "--out", str(tmp_path / "best")).returncode == 0

    result = hopt("replay", str(tmp_path / "best" / "schedule.yaml"), "--dir", str(tmp_path / "replay"))

    assert result.returncode == 0, result.stderr
    score = Experiment(quadratic).best().score
    assert result.stdout.startswith(f"replayed score {score:.10g} vs original {score:.10g} (identical)")
    for name in ("scores.csv", "checkpoint/state.json"):
        assert (tmp_path / "replay" / name).read_text() == (tmp_path / "best" / name).read_text()
    assert sorted(p.name for p in (tmp_path / "replay").iterdir()) == ["checkpoint", "scores.csv"]


def test_replaying_every_t4_lineage_reproduces_it_exactly(ellipsoid, tmp_path):
    experiment = Experiment(ellipsoid)
    crossed = 0
    for member in range(experiment.recipe.population):
        lineage = experiment.export(experiment.member(member), tmp_path / f"m{member}")
        plan = schedule.load(tmp_path / f"m{member}" / "schedule.yaml")

        result = replay(plan, tmp_path / f"r{member}")

        assert result.score == result.original == lineage.score and not result.stopped
        assert result.scores == [step.score for step in lineage.schedule]
        crossed += any(step.member != member for step in lineage.schedule)
    assert crossed, "no lineage went through another member: the per-interval seeds were not exercised"


def test_sigterm_stops_a_replay_cleanly(quadratic, tmp_path):
    Experiment(quadratic).export_best(tmp_path / "best")
    plan = yaml.safe_load((tmp_path / "best" / "schedule.yaml").read_text())
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump({**plan, "worker": "tests.hopt_cli.trainables:slow_quadratic"}))
    process = subprocess.Popen([sys.executable, "-m", "hopt_cli", "replay", str(tmp_path / "slow.yaml"), "--dir",
                                str(tmp_path / "out")], cwd=REPO, stderr=subprocess.PIPE, text=True)
    while "1/8 intervals" not in process.stderr.readline():
        assert process.poll() is None
    process.send_signal(signal.SIGTERM)

    rest = process.communicate(timeout=60)[1]

    assert process.returncode == 130
    done = int(rest.split("stopped by SIGTERM after ")[1].split()[0])
    assert 1 <= done < 8 and f"{tmp_path / 'out'} holds them" in rest
    assert len((tmp_path / "out" / "scores.csv").read_text().splitlines()) == 1 + done
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint", "scores.csv"]


def test_a_file_that_is_no_schedule_is_one_line_exit_2(tmp_path):
    (tmp_path / "recipe.yaml").write_text((REPO / "recipes" / "toy-quadratic.yaml").read_text())

    result = hopt("replay", str(tmp_path / "recipe.yaml"), "--dir", str(tmp_path / "out"))

    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is not a hopt schedule (format 1)" in result.stderr and not (tmp_path / "out").exists()


def test_a_schedule_with_a_gap_is_refused(quadratic, tmp_path):
    Experiment(quadratic).export_best(tmp_path / "best")
    plan = yaml.safe_load((tmp_path / "best" / "schedule.yaml").read_text())
    plan["schedule"][0]["intervals"][0] = 1
    (tmp_path / "gap.yaml").write_text(yaml.safe_dump(plan))

    with pytest.raises(HoptError, match=r"broken schedule \(segment \[1, \d+\) does not follow interval 0\)"):
        schedule.load(tmp_path / "gap.yaml")


@pytest.mark.slow
def test_a_function_of_a_script_given_to_run_replays_from_python_and_hopt_replay_says_how(tmp_path, write_recipe):
    """`hopt replay` told a user of hopt_cli.run(..., trainable=fn) to resume with hopt_cli.run, and there
    was no way to replay such a schedule at all."""
    (tmp_path / "script.py").write_text(SCRIPT)
    recipe = write_recipe(toy_recipe(population=4, intervals=5))
    best, again = tmp_path / "best dir", tmp_path / "again"

    ran = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(recipe), str(tmp_path / "exp"), str(best),
                          str(again)], cwd=REPO, capture_output=True, text=True, timeout=300)
    cli = hopt("replay", str(best / "schedule.yaml"), "--dir", str(tmp_path / "cli"))

    assert ran.returncode == 0, ran.stderr
    exported, replayed, original = (float(word) for word in ran.stdout.split())
    assert replayed == original == exported
    assert (again / "scores.csv").read_text() == (best / "scores.csv").read_text()
    assert cli.returncode == 2 and cli.stdout == "" and cli.stderr.count("\n") == 1
    assert cli.stderr == ("hopt: error: worker: __main__:train was defined in a script or notebook and given to "
                          "hopt_cli.run(); replay it from Python with the same function: "
                          f"hopt_cli.replay({str(best / 'schedule.yaml')!r}, {str(tmp_path / 'cli')!r}, "
                          "trainable=train)\n")
    assert not (tmp_path / "cli").exists()


def test_a_replay_that_differs_says_what_is_exact_where(quadratic, tmp_path):
    Experiment(quadratic).export_best(tmp_path / "best")
    plan = yaml.safe_load((tmp_path / "best" / "schedule.yaml").read_text())
    # as if the original had trained on a GPU with autotuned kernels: its score is off by a little
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump({**plan, "score": plan["score"] + 0.001}))

    result = hopt("replay", str(tmp_path / "gpu.yaml"), "--dir", str(tmp_path / "replay"))

    assert result.returncode == 0, result.stderr
    assert "(differs by -0.001: a replay is exact on the CPU with the recorded threads, on a GPU only with " \
           "deterministic kernels on the same GPU model and software (docs/trainables.md)); checkpoint" in result.stdout
