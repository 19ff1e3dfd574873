"""runner.choose_gpus: which device each local worker gets from `--gpus`."""
from __future__ import annotations

import pytest

from hopt_cli.errors import HoptError
from hopt_cli.runner import choose_gpus


def no_count() -> int:
    raise AssertionError("torch is asked only for `all` with no CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("spec, visible, count, expected", [
    ("0,1,2,3", None, no_count, ["0", "1", "2", "3"]),
    ("GPU-8c2b,GPU-91aa", None, no_count, ["GPU-8c2b", "GPU-91aa"]),
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
])
def test_a_bad_spec_is_one_line_naming_the_fix(spec, visible, count, problem):
    with pytest.raises(HoptError, match=problem) as caught:
        choose_gpus(spec, visible, count)
    assert "\n" not in str(caught.value)
