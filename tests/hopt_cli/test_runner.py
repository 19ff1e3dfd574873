"""hopt_cli.runner: which device each local worker gets from `--gpus`."""
from __future__ import annotations

import pytest
import torch

from hopt_cli.errors import HoptError
from hopt_cli.runner import choose_gpus
from tests.commands import hopt
from tests.conftest import toy_recipe


def no_count() -> int:
    raise AssertionError("torch is asked only where CUDA_VISIBLE_DEVICES is not set")


@pytest.mark.parametrize("spec, visible, count, expected", [
    ("0,1,2,3", None, lambda: 4, ["0", "1", "2", "3"]),
    ("GPU-8c2b,GPU-91aa", None, lambda: 2, ["GPU-8c2b", "GPU-91aa"]),
    ("1", "2,3", no_count, ["3"]),
    ("all", "2, 3", no_count, ["2", "3"]),
    ("all", None, lambda: 2, ["0", "1"]),
])
def test_devices(spec, visible, count, expected):
    assert choose_gpus(spec, visible, count) == expected


@pytest.mark.parametrize("spec, visible, count, problem", [
    ("all", None, lambda: 0, "no GPU is visible here"),
    ("all", "", no_count, "no GPU is visible here"),
    ("0,0", None, no_count, "distinct device numbers"),
    ("0,,1", None, no_count, "distinct device numbers"),
    ("2", "4,5", no_count, "numbered 0 to 1 here"),
    ("7", None, lambda: 0, "no GPU is visible here .torch sees none.; leave out --gpus to train on the CPU"),
    ("GPU-8c2b", None, lambda: 0, "no GPU is visible here"),
    ("1,7", None, lambda: 2, "torch sees 2 GPUs here, numbered 0 to 1"),
    ("0", "", no_count, "CUDA_VISIBLE_DEVICES='' hides every GPU"),
])
def test_a_bad_spec_is_one_line_naming_the_fix(spec, visible, count, problem):
    with pytest.raises(HoptError, match=problem) as caught:
        choose_gpus(spec, visible, count)
    assert "\n" not in str(caught.value)


def test_hopt_run_on_gpus_of_a_machine_without_any_stops_before_training(tmp_path, write_recipe, monkeypatch):
    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    result = hopt("run", str(write_recipe(toy_recipe())), "--dir", str(tmp_path / "exp"), "--gpus", "7")

    assert result.returncode == 2
    assert result.stderr == ("hopt: error: --gpus 7: no GPU is visible here (torch sees none); leave out --gpus to "
                             "train on the CPU\n")
    assert not (tmp_path / "exp").exists()
