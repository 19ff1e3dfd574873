"""What every trainable built on workers/torch_common.py does the same way: new hyperparameters reach
the restored optimizer, a stop ends the interval after one step, and a misspelt hyperparameter is an error."""
from __future__ import annotations

import math

import pytest

from tests.workers.conftest import chain, load_state
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
