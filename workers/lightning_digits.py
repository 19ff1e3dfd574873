"""PBT with PyTorch Lightning: the quickstart's digits CNN as a LightningModule, resumed by its Trainer.

Each interval builds a fresh `Trainer` and calls `fit(model, ckpt_path=ctx.parent / "model.ckpt")`, so
Lightning itself restores the weights, the optimizer state (momentum buffers) and the global step; the
interval trains `ctx.steps` more optimizer steps and saves one checkpoint, `ctx.out / "model.ckpt"`.
The restore also brings back the parent's optimizer settings: `ApplyHparams` sets this interval's
after it (see there). Hyperparameters (all optional, defaults below):

- `lr` (log, about 1e-3 to 1), `momentum` (0 to 0.99), `weight_decay` (log, about 1e-6 to 1e-1): SGD's;
- `dropout` (0 to 0.8): the rate of the CNN's dropout layers;
- `batch_size` (int, about 16 to 256): the next interval continues the same data order at any size.

Data and split are workers/digits.py's. Objective: `val_acc` (max); also `val_loss` and `step` (the
global step). Install with `pip install -e '.[lightning]'`; importing this module imports Lightning
(a few seconds, once per worker process).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.environments import LightningEnvironment

from workers.digits import DigitsCNN, splits
from workers.torch_common import (SETTINGS, ShuffledBatches, derive_seed, device_name, interval_device,
                                  merge_hparams, rng_state, seed_everything, set_optimizer_hparams, set_rng_state)

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

CHECKPOINT = "model.ckpt"
DEFAULTS: dict[str, Any] = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "dropout": 0.2, "batch_size": 64,
                            **SETTINGS}
OPTIMIZER_HPARAMS = ("lr", "momentum", "weight_decay")

Batch = tuple[torch.Tensor, torch.Tensor]


class DigitsModule(pl.LightningModule):
    """DigitsCNN under SGD; it counts the samples it has trained on, so the data order resumes anywhere.

    The count, the data order's seed and the global RNG states travel in the Lightning checkpoint
    (`on_save_checkpoint`), next to what Lightning saves itself.
    """

    def __init__(self, hp: dict[str, Any], member: int, seed: int) -> None:
        super().__init__()
        self.net = DigitsCNN()
        self.net.drop.p = float(hp["dropout"])
        self.batch_size = int(hp["batch_size"])
        self.sgd = {name: float(hp[name]) for name in OPTIMIZER_HPARAMS}
        self.member, self.seed = member, seed
        self.samples_seen, self.order_seed = 0, seed

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), **self.sgd)

    def train_dataloader(self) -> Iterator[Batch]:
        """Endless shuffled batches from sample `samples_seen` on: `max_steps` ends the interval."""
        images, labels, _, _ = splits()
        return ((images[i], labels[i]) for i in ShuffledBatches(len(labels), self.batch_size, self.order_seed,
                                                                 self.samples_seen))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        self.samples_seen += len(labels)
        return F.cross_entropy(self(images), labels)

    def val_dataloader(self) -> Iterator[Batch]:
        """The whole validation set as one batch."""
        _, _, images, labels = splits()
        return iter([(images, labels)])

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val_loss", F.cross_entropy(logits, labels), batch_size=len(labels))
        self.log("val_acc", (logits.argmax(1) == labels).float().mean(), batch_size=len(labels))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add what resuming needs besides Lightning's own state."""
        checkpoint["hopt"] = {"member": self.member, "rng": rng_state(), "samples_seen": self.samples_seen,
                              "order_seed": self.order_seed}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Continue the data order; restore the RNGs when continuing our own checkpoint, else reseed
        from (seed, global step) so that two members copying one parent do not share their noise."""
        saved = checkpoint["hopt"]
        self.samples_seen, self.order_seed = saved["samples_seen"], saved["order_seed"]
        if saved["member"] == self.member:
            set_rng_state(saved["rng"])
        else:
            seed_everything(derive_seed(self.seed, checkpoint["global_step"]))


class ApplyHparams(pl.Callback):
    """Set this interval's optimizer hyperparameters once `fit` has restored the checkpoint's.

    `fit(ckpt_path=...)` loads the optimizer's state dict after `configure_optimizers`, and a state
    dict carries its param groups: the parent's lr, momentum and weight decay would silently replace
    the ones PBT just chose (an exploit's mutation would never take effect). `on_train_start` runs
    after that restore and before the first step. A scheduler would need its `base_lrs` set here too.
    """

    def __init__(self, **values: float) -> None:
        self.values = values

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            set_optimizer_hparams(optimizer, **self.values)


class StopWhenAsked(pl.Callback):
    """End `fit` after the current step once `should_stop()` is true (preemption, a lost lease)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.should_stop():
            trainer.should_stop = True


def restored_step(checkpoint: Path | None) -> int:
    """The global step a Lightning checkpoint was saved at (0 for none), read without loading its
    tensors (mmap): `max_steps` counts global steps, so it must be known before `fit` restores it."""
    if checkpoint is None:
        return 0
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def train_interval(ctx: Context) -> dict[str, Any]:
    """Resume from ctx.parent, train ctx.steps steps with this interval's hparams, save, validate.

    A stopped interval (ctx.should_stop()) returns after its current step, saved and scored as any
    other: the worker discards it and trains the interval again from the same parent.
    """
    hp = merge_hparams(DEFAULTS, ctx.hparams, "lightning_digits")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # not six INFO lines per interval
    parent = ctx.parent / CHECKPOINT if ctx.parent is not None else None
    seed_everything(ctx.seed)  # the initial weights; a resumed checkpoint restores or reseeds the RNGs
    model = DigitsModule(hp, ctx.member, ctx.seed)
    dev = interval_device(hp)
    trainer = pl.Trainer(
        accelerator=dev.type, devices=[dev.index] if dev.index is not None else 1,
        max_steps=restored_step(parent) + ctx.steps, max_epochs=-1, num_sanity_val_steps=0,
        callbacks=[ApplyHparams(**model.sgd), StopWhenAsked(ctx.should_stop)],
        # One single-device training per worker: SLURM's variables describe hopt's array, not a
        # distributed run, and hopt, not Lightning, handles the preemption signal and the requeue.
        plugins=[LightningEnvironment()],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, ckpt_path=parent, weights_only=True)
    trainer.save_checkpoint(ctx.out / CHECKPOINT, weights_only=False)
    step = trainer.global_step
    scores = trainer.validate(model, verbose=False)[0]
    return {"val_acc": float(scores["val_acc"]), "val_loss": float(scores["val_loss"]), "step": step,
            "device": device_name(dev)}
