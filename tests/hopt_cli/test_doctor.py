"""`hopt doctor`: every check passes on a sound filesystem, and a failing one makes it exit 1."""
from __future__ import annotations

import subprocess
import sys

import pytest

from hopt_cli import doctor
from tests.conftest import REPO, toy_recipe


def hopt_doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hopt_cli", "doctor", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("kind", ["flock", "hardlink"])
def test_every_check_passes_on_a_local_filesystem(tmp_path, kind):
    result = hopt_doctor("--dir", str(tmp_path), "--lock", kind)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"PASS  lock exclusion ({kind}, two processes on this host)", "PASS  atomic replace", "PASS  fsync",
        "PASS  clock skew", "PASS  free space"]
    assert list(tmp_path.iterdir()) == []  # the scratch folder is gone


def test_too_little_free_space_fails_with_exit_1(tmp_path):
    result = hopt_doctor("--dir", str(tmp_path), "--min-free-gb", "1e9")

    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("FAIL  free space: ")
    assert result.stdout.count("PASS") == 4


def test_the_lock_kind_defaults_to_the_experiments(tmp_path, write_recipe):
    root = tmp_path / "exp"
    init = subprocess.run([sys.executable, "-m", "hopt_cli", "init", str(write_recipe(toy_recipe(lock="hardlink"))),
                           "--dir", str(root)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr

    result = hopt_doctor("--dir", str(root))

    assert result.returncode == 0 and "lock exclusion (hardlink" in result.stdout


def test_clock_skew_above_the_limit_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "touch", lambda path: doctor.time.time() + 42)

    check = doctor.clock_skew(tmp_path / "probe")

    assert not check.ok
    assert check.line().startswith("FAIL  clock skew: the filesystem's clock is 42.0 s ahead of this host's")
