"""workers/torch_common.set_optimizer_hparams: the interval's values win over a restored optimizer's."""
from __future__ import annotations

import pytest
import torch

from workers.torch_common import set_optimizer_hparams


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
