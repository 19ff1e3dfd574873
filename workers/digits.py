"""The quickstart trainable: a small CNN on scikit-learn's bundled 8x8 handwritten digits.

Nothing is downloaded and an interval of 100 steps takes a fraction of a second on a laptop CPU,
so a whole PBT experiment runs in minutes. Hyperparameters (all optional, defaults below):

- `lr` (log, about 1e-3 to 1): SGD learning rate (momentum 0.9: at 1e-4 it barely learns in 2,000
  steps, near 1 it diverges, so the search has a real optimum to find);
- `weight_decay` (log, about 1e-6 to 1e-1): L2 penalty of SGD;
- `dropout` (float, 0 to 0.8): dropout before both fully connected layers;
- `augment` (float, 0 to 1): strength of the augmentation: random subpixel shifts of up to
  2*augment pixels in each direction and gaussian pixel noise of std 0.3*augment.

The train/validation/test split (1,077 / 360 / 360 images) is fixed by a constant seed: every member
is scored on the same validation images, and the test images are never trained on nor used for
selection, so `test_acc` of an exported model is an honest estimate. Objective: `val_acc` (max);
also `val_loss`, `test_acc`, `test_loss`, `train_loss`, `step`.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.torch_common import (SETTINGS, ShuffledBatches, device_name, finish, interval_device, merge_hparams,
                                  resume, set_optimizer_hparams, to_device, train_steps)

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

DEFAULTS: dict[str, Any] = {"lr": 0.05, "weight_decay": 1e-4, "dropout": 0.2, "augment": 0.2, **SETTINGS}
BATCH_SIZE = 64
VAL_SIZE = 360
TEST_SIZE = 360
SPLIT_SEED = 0
MAX_SHIFT = 2.0
MAX_NOISE = 0.3


@functools.lru_cache(maxsize=1)
def _split_data() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """((images, labels) of train, of val, of test); images N x 1 x 8 x 8 in [0, 1].

    Validation is the first VAL_SIZE of a seeded permutation (the same images as before a test split
    existed), test the next TEST_SIZE, train the rest.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.RandomState(SPLIT_SEED).permutation(len(labels)))
    parts = order[VAL_SIZE + TEST_SIZE:], order[:VAL_SIZE], order[VAL_SIZE:VAL_SIZE + TEST_SIZE]
    return tuple((images[part], labels[part]) for part in parts)


def splits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, val images, val labels): what training and selection may see."""
    (x_train, y_train), (x_val, y_val), _ = _split_data()
    return x_train, y_train, x_val, y_val


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """(test images, test labels): held out from training and from the policy, reported only."""
    return _split_data()[2]


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool, and two fully connected layers with dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.drop = nn.Dropout()
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.fc1(self.drop(x.flatten(1))))
        return self.fc2(self.drop(x))


def augment(images: torch.Tensor, strength: float) -> torch.Tensor:
    """Shift each image by a random subpixel offset and add gaussian noise, scaled by `strength`."""
    if strength <= 0:
        return images
    n, _, h, w = images.shape
    shift = (torch.rand(n, 2, device=images.device) * 2 - 1) * (MAX_SHIFT * strength)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    return moved + torch.randn_like(moved) * (MAX_NOISE * strength)


def _apply_hparams(model: nn.Module, optimizer: torch.optim.Optimizer, hp: dict[str, Any]) -> None:
    """Set this interval's lr, weight decay and dropout (PBT may have changed them)."""
    set_optimizer_hparams(optimizer, lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
    model.drop.p = float(hp["dropout"])


@torch.no_grad()
def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the whole of `images` in one batch."""
    model.eval()
    logits = model(images)
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return acc, loss


def train_interval(ctx: Context) -> dict[str, Any]:
    """Train ctx.steps SGD steps from ctx.parent (or from scratch), checkpoint to ctx.out, score."""
    hp = merge_hparams(DEFAULTS, ctx.hparams, "digits")
    dev = interval_device(hp)
    x_train, y_train, x_val, y_val = (t.to(dev) for t in splits())
    x_test, y_test = (t.to(dev) for t in held_out())
    model, state = resume(ctx, lambda _: DigitsCNN().to(dev))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(hp["lr"]), momentum=0.9)
    step, seen, order_seed = 0, 0, ctx.seed
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, seen, order_seed = state["step"], state["samples_seen"], state["order_seed"]
    del state  # the parent's tensors: not held through the interval
    _apply_hparams(model, optimizer, hp)
    batches = iter(ShuffledBatches(len(y_train), BATCH_SIZE, order_seed, seen))
    model.train()

    def one_step() -> torch.Tensor:
        idx = to_device(next(batches), dev)
        loss = F.cross_entropy(model(augment(x_train[idx], float(hp["augment"]))), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    done, train_loss = train_steps(ctx, one_step)
    step, seen = step + done, seen + done * BATCH_SIZE
    val_acc, val_loss = _evaluate(model, x_val, y_val)
    test_acc, test_loss = _evaluate(model, x_test, y_test)
    finish(ctx, model=model.state_dict(), optimizer=optimizer.state_dict(), step=step,
           samples_seen=seen, order_seed=order_seed)
    return {"val_acc": val_acc, "val_loss": val_loss, "test_acc": test_acc, "test_loss": test_loss,
            "train_loss": train_loss, "step": step, "device": device_name(dev)}
