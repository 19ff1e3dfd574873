"""benchmarks/gpu_check.sh, the script a session with a GPU runs: what can be checked without one."""
from __future__ import annotations

import re
import subprocess
import sys

import yaml

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def python_parts() -> list[str]:
    """The Python programs the script feeds to python through here-documents."""
    return re.findall(r"<<'EOF'\n(.*?)^EOF$", SCRIPT.read_text(), re.MULTILINE | re.DOTALL)


def test_the_script_parses_and_without_a_folder_says_how_to_call_it(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    called = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path)
    assert called.returncode == 2 and called.stderr.startswith("usage: bash benchmarks/gpu_check.sh RESULTS_FOLDER")


def test_its_python_parts_compile():
    parts = python_parts()
    assert len(parts) == 2
    for source in parts:
        compile(source, str(SCRIPT), "exec")


def test_its_small_recipes_require_cuda_and_validate(tmp_path):
    """The recipe step of the script, run here on the CPU: the shipped recipe, made small and CUDA-only."""
    make_small = python_parts()[1]
    script = tmp_path / "small.py"
    script.write_text(make_small)
    for deterministic in ("", "deterministic"):
        target = tmp_path / f"small{deterministic}.yaml"
        done = subprocess.run([sys.executable, str(script), str(REPO / "recipes" / "cifar10.yaml"), str(target), "50",
                               deterministic], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        recipe = yaml.safe_load(target.read_text())
        assert recipe["space"]["device"] == {"type": "choice", "values": ["cuda"]}
        assert (recipe["population"], recipe["intervals"], recipe["steps"]) == (2, 2, 50)
        assert ("deterministic" in recipe["space"]) == bool(deterministic)
        checked = subprocess.run([sys.executable, "-c", "import sys; from hopt_cli.recipe import load_recipe; "
                                  "load_recipe(sys.argv[1])", str(target)], capture_output=True, text=True, cwd=REPO)
        assert checked.returncode == 0, checked.stderr
