"""What every trainable built on workers/torch_common.py does the same way: new hyperparameters reach
the restored optimizer, a stop ends the interval after one step, a misspelt hyperparameter is an error,
the device trained on is a metric, `device: cuda` fails on the CPU, `deterministic: on` trains, and the
parent's loaded state is let go before training."""
from __future__ import annotations

import math

import pytest
import torch

from hopt_cli.trainable import run_interval
from tests.workers.conftest import chain, load_state, parent_released
from workers import charlm, digits
from workers.torch_common import load_checkpoint

TRAINABLES = [  # module, its objective, two learning rates and a weight decay it trains with
    pytest.param(digits, "val_acc", 0.05, 0.01, 3e-3, id="digits"),
    pytest.param(charlm, "val_bpc", 1e-2, 1e-3, 3e-2, id="charlm"),
]


@pytest.mark.parametrize("module, metric, lr, new_lr, weight_decay", TRAINABLES)
def test_hparams_changed_between_intervals_are_applied(make_ctx, module, metric, lr, new_lr, weight_decay):
    _, parent = chain(module.train_interval, make_ctx, {"lr": lr}, intervals=1, steps=2)
    _, child = chain(module.train_interval, make_ctx, {"lr": new_lr, "weight_decay": weight_decay}, intervals=1,
                     steps=2, parent=parent)
    group = load_state(child)["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"]) == (new_lr, weight_decay)  # set, not computed: exact


@pytest.mark.parametrize("module, metric, lr, new_lr, weight_decay", TRAINABLES)
def test_should_stop_ends_the_interval_after_the_current_step(make_ctx, module, metric, lr, new_lr, weight_decay):
    ctx = make_ctx(steps=100, should_stop=lambda: True)
    metrics = module.train_interval(ctx)
    assert metrics["step"] == 1 and math.isfinite(metrics[metric])
    assert load_checkpoint(ctx.out)["step"] == 1


@pytest.mark.parametrize("module, metric, lr, new_lr, weight_decay", TRAINABLES)
def test_unknown_hparam_is_a_clear_error(make_ctx, module, metric, lr, new_lr, weight_decay):
    with pytest.raises(ValueError, match="learning_rate"):
        module.train_interval(make_ctx({"learning_rate": 0.1}))


@pytest.mark.parametrize("module, metric, lr, new_lr, weight_decay", TRAINABLES)
def test_the_device_trained_on_is_a_metric(make_ctx, module, metric, lr, new_lr, weight_decay):
    assert module.train_interval(make_ctx(steps=1))["device"] == "cpu"


@pytest.mark.parametrize("module, metric, lr, new_lr, weight_decay", TRAINABLES)
def test_device_cuda_without_cuda_fails_the_interval_with_the_reason(make_ctx, monkeypatch, module, metric, lr,
                                                                      new_lr, weight_decay):
    monkeypatch.delenv("HOPT_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)  # as in a CPU-only wheel
    ctx = make_ctx({"device": "cuda"})

    outcome = run_interval(module.train_interval, ctx, metric)

    assert outcome.score is None and not any(ctx.out.iterdir())
    assert outcome.error.startswith("NoCuda: device: cuda, but this worker would train on the CPU: torch ")
    assert outcome.error.endswith(" is a build without CUDA; install a CUDA build of torch (pytorch.org)")


@pytest.mark.parametrize("module, metric, lr, new_lr, weight_decay", TRAINABLES)
def test_deterministic_mode_trains_and_resumes(make_ctx, module, metric, lr, new_lr, weight_decay):
    try:
        metrics, _ = chain(module.train_interval, make_ctx, {"deterministic": "on"}, intervals=2, steps=2)
        assert torch.are_deterministic_algorithms_enabled() and math.isfinite(metrics[metric])
    finally:
        torch.use_deterministic_algorithms(False)
    module.train_interval(make_ctx(steps=1))
    assert not torch.are_deterministic_algorithms_enabled(), "the next interval's setting, not the last one's"


@pytest.mark.parametrize("module, metric, lr, new_lr, weight_decay", TRAINABLES)
def test_the_parents_state_is_let_go_before_training(make_ctx, monkeypatch, module, metric, lr, new_lr, weight_decay):
    assert parent_released(module.train_interval, make_ctx, monkeypatch)
