"""workers/torch_common: the interval's hparams win over a restored optimizer's; CUDA RNG states and the
autocast dtype follow the GPU in use; `device: cuda` refuses the CPU saying why; the kernel choices are
set whole every interval (CUDA faked here: the tests run on the CPU)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from hopt_cli.isolation import poisons_process
from workers.torch_common import (CUBLAS_WORKSPACE, NoCuda, amp_dtype, device_name, rng_state, save_checkpoint,
                                  select_kernels, set_optimizer_hparams, set_rng_state, training_device)


def _restored_sgd(lr: float) -> tuple[torch.nn.Parameter, torch.optim.SGD]:
    """An SGD optimizer restored from a parent's state that was saved with `lr`."""
    parent = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    saved = torch.optim.SGD([parent], lr=lr, weight_decay=0.5).state_dict()
    param = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.125)
    optimizer.load_state_dict(saved)
    return param, optimizer


def test_a_restored_state_overwrites_the_new_lr_until_it_is_set_again():
    param, optimizer = _restored_sgd(lr=0.5)
    assert optimizer.param_groups[0]["lr"] == 0.5  # the pitfall: the parent's lr came back with its state

    set_optimizer_hparams(optimizer, lr=0.25, weight_decay=0.0)
    (2.0 * param).sum().backward()  # gradient 2
    optimizer.step()

    # 1 - 0.25 * 2 = 0.5 exactly in float64, on every kernel (one multiply-add of powers of two)
    assert param.item() == 0.5
    assert optimizer.param_groups[0]["weight_decay"] == 0.0


def test_a_setting_the_optimizer_does_not_have_is_named():
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match=r"Adam has no \['momentum'\] to set; its settings are \[.*'betas'"):
        set_optimizer_hparams(adam, lr=0.1, momentum=0.9)
    assert adam.param_groups[0]["lr"] == 0.001, "nothing is set when one name is wrong"


class FakeGpus:
    """torch.cuda's RNG functions over `count` fake GPUs with distinct states, indexed as torch does."""

    def __init__(self, count: int, fill: int = 0) -> None:
        self.states = [torch.full((8,), fill + i, dtype=torch.uint8) for i in range(count)]

    def _index(self, device: int | str | torch.device) -> int:
        index = device if isinstance(device, int) else torch.device(device).index
        return 0 if index is None else index

    def get_rng_state(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return self.states[self._index(device)].clone()  # IndexError past the last GPU, as torch's

    def set_rng_state(self, new_state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.states[self._index(device)] = new_state.clone()

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [self.get_rng_state(i) for i in range(len(self.states))]

    def set_rng_state_all(self, new_states: list[torch.Tensor]) -> None:
        for i, state in enumerate(new_states):
            self.set_rng_state(state, i)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeGpus:
        for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        return self


def _fills(gpus: FakeGpus) -> list[int]:
    """Each fake GPU's state as the one number it is filled with."""
    return [int(s[0]) for s in gpus.states]


def _saved_rng(folder: Path) -> dict[str, Any]:
    """rng_state() through a weights-only checkpoint, loaded on the CPU (load_checkpoint would map to cuda)."""
    folder.mkdir(exist_ok=True)
    save_checkpoint(folder, rng=rng_state())
    return torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)["rng"]


def test_a_checkpoint_from_a_worker_with_four_gpus_restores_on_a_worker_with_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPT_DEVICE", "cuda")
    four = FakeGpus(4, fill=10).install(monkeypatch)
    saved = _saved_rng(tmp_path)

    one = FakeGpus(1, fill=0).install(monkeypatch)
    set_rng_state(saved)
    set_rng_state(saved)  # every interval resumes: none may fail

    assert _fills(one) == [10] and _fills(four) == [10, 11, 12, 13]


@pytest.mark.parametrize("hopt_device, gpus, entry", [("cuda", 1, 0), ("cuda:2", 4, 2), ("cuda:5", 6, 0)])
def test_an_old_checkpoint_with_a_state_per_gpu_restores_the_entry_of_the_device_in_use(
        tmp_path, monkeypatch, hopt_device, gpus, entry):
    saved = _saved_rng(tmp_path)  # on the CPU: no CUDA state yet
    old = [torch.full((8,), 10 + i, dtype=torch.uint8) for i in range(4)]
    monkeypatch.setenv("HOPT_DEVICE", hopt_device)
    now = FakeGpus(gpus, fill=100).install(monkeypatch)

    set_rng_state({**saved, "cuda": old})

    index = torch.device(hopt_device).index or 0
    expected = [10 + entry if i == index else 100 + i for i in range(gpus)]  # other GPUs are left alone
    assert _fills(now) == expected


def test_no_cuda_state_crosses_between_cpu_and_gpu_workers(tmp_path, monkeypatch):
    FakeGpus(2, fill=10).install(monkeypatch)
    monkeypatch.setenv("HOPT_DEVICE", "cpu")  # a GPU node told to train on the CPU
    from_cpu = _saved_rng(tmp_path / "cpu")
    monkeypatch.setenv("HOPT_DEVICE", "cuda")
    from_gpu = _saved_rng(tmp_path / "gpu")
    assert "cuda" not in from_cpu

    on_gpu = FakeGpus(2, fill=50).install(monkeypatch)
    set_rng_state(from_cpu)
    assert _fills(on_gpu) == [50, 51], "the CUDA generators keep their state"

    monkeypatch.setenv("HOPT_DEVICE", "cpu")
    set_rng_state(from_gpu)
    assert _fills(on_gpu) == [50, 51], "a CPU worker does not use the saved CUDA state"


@pytest.mark.parametrize("capability, dtype", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_bf16_autocast_only_from_compute_capability_8(monkeypatch, capability, dtype):
    # what torch answers on a V100 or T4 too: bf16 counts as supported there, emulated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert amp_dtype(torch.device("cuda")) == dtype


def test_the_cpu_trains_without_autocast():
    assert amp_dtype(torch.device("cpu")) is None


@pytest.fixture
def no_cuda_here(monkeypatch):
    """A machine where torch finds no GPU, whatever this one has, and HOPT_DEVICE unset."""
    monkeypatch.delenv("HOPT_DEVICE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _driver_too_old() -> None:
    raise RuntimeError("CUDA error: CUDA driver version is insufficient for CUDA runtime version")


@pytest.mark.parametrize("cuda, visible, init, why", [
    (None, None, None, r"torch \S+ is a build without CUDA; install a CUDA build of torch"),
    ("12.4", "", None, "CUDA_VISIBLE_DEVICES is empty, which hides every GPU; give the job a GPU"),
    ("12.4", None, _driver_too_old,
     r"torch \S+ \(CUDA 12.4\) cannot use CUDA: CUDA driver version is insufficient for CUDA runtime version$"),
    ("12.4", "GPU-gone", lambda: None, r"torch \S+ \(CUDA 12.4\) sees no GPU \(CUDA_VISIBLE_DEVICES='GPU-gone'\)"),
])
def test_device_cuda_on_the_cpu_is_an_error_saying_why(no_cuda_here, monkeypatch, cuda, visible, init, why):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if init is not None:
        monkeypatch.setattr(torch.cuda, "init", init)
    with pytest.raises(NoCuda, match="^device: cuda, but this worker would train on the CPU: " + why) as caught:
        training_device("cuda")
    assert "\n" not in str(caught.value)
    assert not poisons_process(f"NoCuda: {caught.value}"), "nothing broke the process: no fresh worker needed"


def test_device_cuda_against_hopt_device_cpu_names_the_variable(monkeypatch):
    monkeypatch.setenv("HOPT_DEVICE", "cpu")
    with pytest.raises(NoCuda, match="HOPT_DEVICE=cpu chooses it; unset HOPT_DEVICE"):
        training_device("cuda")


def test_device_auto_falls_back_to_the_cpu_and_cuda_is_taken_where_there(no_cuda_here, monkeypatch):
    assert training_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device("cuda") == training_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match="device: 'gpu' is no device setting; give one of auto, cuda"):
        training_device("gpu")


def test_the_device_recorded_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: f"NVIDIA H100 80GB HBM3 #{index}")
    assert device_name(torch.device("cuda")) == "cuda:1 (NVIDIA H100 80GB HBM3 #1)"
    assert device_name(torch.device("cuda:0")) == "cuda:0 (NVIDIA H100 80GB HBM3 #0)"
    assert device_name(torch.device("cpu")) == "cpu"


@pytest.fixture
def kernels(monkeypatch):
    """Leave torch's global kernel choices as the test found them."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1:]


def test_deterministic_mode_sets_every_switch_and_the_next_interval_resets_them(kernels):
    gpu = torch.device("cuda")
    select_kernels(gpu, deterministic=True, benchmark=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark, "autotuning picks kernels by timing: not repeatable"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE

    select_kernels(gpu, deterministic=False, benchmark=True)  # CIFAR
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    select_kernels(gpu, deterministic=False)  # then PTB in the same process: no autotuning leaks into it
    assert not torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    select_kernels(torch.device("cpu"), deterministic=False, benchmark=True)
    assert not torch.backends.cudnn.benchmark
