"""`hopt replay`: one model retrained from scratch along an exported schedule reproduces the original."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml

from hopt_cli import schedule
from hopt_cli.errors import HoptError
from hopt_cli.experiment import Experiment
from hopt_cli.replay import replay
from tests.conftest import REPO
from tests.hopt_cli.conftest import hopt


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
