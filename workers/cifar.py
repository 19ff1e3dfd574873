"""CIFAR-10 and CIFAR-100 with a hand-written ResNet-18 (3x3 stem, no max-pool), SGD with Nesterov.

The model, the training interval, batch-norm recalibration and evaluation. The data (the pickles in
$CIFAR_DIR, the train/val split, augmentation, normalisation) is in `workers.cifar_data`.
Objective: `val_acc` (max).

Hyperparameters (all optional, defaults in DEFAULTS):
- `lr` (log, about 0.01 to 0.4): peak learning rate; the first WARMUP_STEPS global steps ramp up
  linearly to it, after that PBT alone shapes the schedule;
- `weight_decay` (log, about 1e-5 to 1e-2), `label_smoothing` (float, 0 to 0.2);
- `crop_flip` (choice on/off, or a bool): random 32x32 crop of the image zero-padded by 4 pixels,
  and a horizontal flip with probability 1/2;
- `magnitude` (float, 0 to 1): colour jitter strength: brightness, contrast and saturation are each
  scaled by a random factor in [1 - 0.5*magnitude, 1 + 0.5*magnitude] per image;
- `cutout` (int pixels, 0 to 16; 0 = off): one random square of that side zeroed per image;
- `mixup` (float alpha, 0 to 1; 0 = off): images and targets mixed with Beta(alpha, alpha) weights.

Settings (every torch trainable's, in workers.torch_common.SETTINGS): `device` (auto or cuda: cuda fails
the interval where torch has no GPU) and `deterministic` (on/off, default off: deterministic kernels and
no cuDNN autotuning, for GPU runs that repeat exactly).

Env settings: HOPT_CIFAR_WIDTH (channels of the first stage, default 64 = ResNet-18),
HOPT_CIFAR_BATCH (default 128), HOPT_DATA_WORKERS (DataLoader workers where the images do not stay on
the GPU; default min(4, usable cores) on CUDA and 0 on CPU), HOPT_DEVICE;
CIFAR_DIR (the data folder, see `workers.cifar_data`).
On CUDA: the training images stay on the GPU, channels_last, cuDNN autotuning (unless deterministic) and
autocast (bfloat16 from compute capability 8.0 on, float16 with a GradScaler on older GPUs); on CPU plain fp32.
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from workers.cifar_data import SPECS, Augment, Batches, Data, Normalize, data_dir, load, read_images, unpickle
from workers.torch_common import (SETTINGS, ShuffledBatches, amp_dtype, device, device_name, finish, interval_device,
                                  load_checkpoint, merge_hparams, resume, set_optimizer_hparams, to_device, train_steps,
                                  usable_cores)

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

WIDTH_ENV = "HOPT_CIFAR_WIDTH"
BATCH_ENV = "HOPT_CIFAR_BATCH"
WORKERS_ENV = "HOPT_DATA_WORKERS"
DEFAULTS: dict[str, Any] = {"lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.0, "crop_flip": "on",
                            "magnitude": 0.0, "cutout": 0, "mixup": 0.0, **SETTINGS}
WARMUP_STEPS = 200
EVAL_BATCH = 1000
BN_IMAGES = 2000
RESIDENT_SHARE = 0.25  # of a GPU's free memory, the most the training images may take to stay on it


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, four stages of two blocks."""

    def __init__(self, classes: int, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a mean, not adaptive_avg_pool2d: its CUDA backward has no deterministic kernel
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def _autocast(dev: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 (or float16) autocast on CUDA, as amp_dtype chooses; nothing on CPU."""
    dtype = amp_dtype(dev)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def feed(key: str, data: Data, order: ShuffledBatches, dev: torch.device
         ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches (uint8 images, labels) on `dev`, in `order`.

    On a GPU with room for the training images (CIFAR's 138 MB: any current one) they stay there for the
    process's life and each batch is gathered there: no DataLoader, no copy per step but the indices.
    Otherwise a DataLoader reads them, in worker processes on CUDA (see loader)."""
    if fits_on_gpu(data, dev):
        images, labels = _resident(key, dev)
        return ((images[i], labels[i]) for i in (to_device(batch, dev) for batch in order))
    return ((x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)) for x, y in loader(data, order, dev))


def fits_on_gpu(data: Data, dev: torch.device) -> bool:
    """Whether the training images stay on `dev`: a GPU where they take at most RESIDENT_SHARE of the free memory."""
    if dev.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(dev)
    return data.train_x.nbytes + data.train_y.nbytes <= RESIDENT_SHARE * free


@functools.lru_cache(maxsize=1)
def _resident(key: str, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images and labels of `key` (as load() last read them) on `dev`, once per process."""
    data = load(key, data_dir(SPECS[key]))
    return data.train_x.to(dev), data.train_y.to(dev)


def loader(data: Data, order: ShuffledBatches, dev: torch.device) -> DataLoader:
    """A DataLoader of the training batches in `order`: `data_workers` processes, forked so that they share
    the images with this process (Python 3.14's default, forkserver, would pickle 138 MB to each through
    /dev/shm), into pinned memory on CUDA."""
    workers = data_workers(dev)
    context = multiprocessing.get_context("fork") if workers and "fork" in multiprocessing.get_all_start_methods() \
        else None
    return DataLoader(Batches(data.train_x, data.train_y), sampler=order, batch_size=None, num_workers=workers,
                      pin_memory=dev.type == "cuda", generator=torch.Generator(), multiprocessing_context=context)


def data_workers(dev: torch.device) -> int:
    """DataLoader workers: $HOPT_DATA_WORKERS, else min(4, the cores this process may use: a SLURM task's
    share, not the node's) on CUDA and 0 on CPU, where workers would only take cores from the training step."""
    raw = os.environ.get(WORKERS_ENV)
    if raw is not None:
        return int(raw)
    return min(4, usable_cores()) if dev.type == "cuda" else 0


@torch.no_grad()
def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: Normalize,
              dev: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over the given uint8 images, in batches of EVAL_BATCH."""
    model.eval()
    correct, loss = torch.zeros((), device=dev), torch.zeros((), device=dev)
    for start in range(0, len(labels), EVAL_BATCH):
        x = norm(images[start:start + EVAL_BATCH].to(dev))
        y = labels[start:start + EVAL_BATCH].to(dev)
        with _autocast(dev):
            logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return correct.item() / len(labels), loss.item() / len(labels)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, norm: Normalize, dev: torch.device) -> None:
    """Set every BatchNorm's running statistics to the exact batch statistics of the final weights.

    The running averages kept during training mix statistics of weights that no longer exist: after a
    short interval, a high learning rate or an exploit they can be far from what the final weights
    produce, and evaluation then scores a network that was never trained ("precise BN"). The first
    BN_IMAGES training images, un-augmented, feed the average; no RNG is drawn and the step counters
    are kept, so resuming stays exact.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    calibration = images[:BN_IMAGES]
    for start in range(0, len(calibration), EVAL_BATCH):
        with _autocast(dev):
            model(norm(calibration[start:start + EVAL_BATCH].to(dev)))
    for m, (momentum, tracked) in zip(layers, saved):
        m.momentum = momentum
        m.num_batches_tracked.copy_(tracked)


def _build(state: dict[str, Any] | None, classes: int, dev: torch.device) -> nn.Module:
    """The ResNet-18 of a checkpoint's configuration, or of HOPT_CIFAR_WIDTH for a fresh start."""
    width = state["config"]["width"] if state else int(os.environ.get(WIDTH_ENV, 64))
    model = ResNet18(classes, width).to(dev)
    return model.to(memory_format=torch.channels_last) if dev.type == "cuda" else model


def _train(ctx: Context, key: str) -> dict[str, Any]:
    """One interval of CIFAR training: resume, apply hparams, ctx.steps SGD steps, validate, save."""
    spec = SPECS[key]
    hp = merge_hparams(DEFAULTS, ctx.hparams, spec.name)
    augment, smoothing, peak_lr = Augment.from_hparams(hp), float(hp["label_smoothing"]), float(hp["lr"])
    data = load(key, data_dir(spec))
    dev = interval_device(hp, benchmark=True)
    model, state = resume(ctx, lambda s: _build(s, data.classes, dev))
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype(dev) == torch.float16)
    batch_size = int(os.environ.get(BATCH_ENV, 128))
    step, seen, order_seed = 0, 0, ctx.seed
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        step, seen, order_seed = state["step"], state["samples_seen"], state["order_seed"]
    del state  # the parent's tensors: not held through the interval
    set_optimizer_hparams(optimizer, weight_decay=float(hp["weight_decay"]))
    norm = Normalize(spec, dev)
    batches = feed(key, data, ShuffledBatches(len(data.train_y), batch_size, order_seed, seen), dev)
    model.train()

    def one_step() -> torch.Tensor:
        nonlocal step
        images, y = next(batches)
        x, partner, lam = augment(images, y, norm)
        for group in optimizer.param_groups:
            group["lr"] = peak_lr * min(1.0, (step + 1) / WARMUP_STEPS)
        with _autocast(dev):
            logits = model(x).float()
        loss = (lam * F.cross_entropy(logits, y, label_smoothing=smoothing)
                + (1 - lam) * F.cross_entropy(logits, partner, label_smoothing=smoothing))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        return loss.detach()

    done, train_loss = train_steps(ctx, one_step)
    batches = None  # the iterator's last reference: DataLoader workers, if any, stop before evaluation
    recalibrate_batchnorm(model, data.train_x, norm, dev)
    val_acc, val_loss = _evaluate(model, data.val_x, data.val_y, norm, dev)
    finish(ctx, model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
           step=step, samples_seen=seen + done * batch_size, order_seed=order_seed,
           config={"width": model.stem[0].out_channels})
    return {"val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss, "step": step,
            "device": device_name(dev)}


def cifar10(ctx: Context) -> dict[str, Any]:
    """One PBT interval of ResNet-18 on CIFAR-10 (see the module docstring for the hparams)."""
    return _train(ctx, "cifar10")


def cifar100(ctx: Context) -> dict[str, Any]:
    """One PBT interval of ResNet-18 on CIFAR-100 (see the module docstring for the hparams)."""
    return _train(ctx, "cifar100")


def evaluate_test(checkpoint: Path, dataset: str = "cifar10") -> dict[str, float]:
    """Accuracy and loss of a checkpoint (e.g. the one `hopt best` exports) on the test set."""
    spec = SPECS[dataset]
    folder = data_dir(spec)
    classes = len(unpickle(folder / spec.meta_file, (spec.names_key,))[spec.names_key])
    images, labels = read_images(folder, (spec.test_file,), spec.label_key)
    dev = device()
    state = load_checkpoint(checkpoint)
    model = _build(state, classes, dev)
    model.load_state_dict(state["model"])
    test_acc, test_loss = _evaluate(model, images, labels, Normalize(spec, dev), dev)
    return {"test_acc": test_acc, "test_loss": test_loss}
