"""CIFAR-10 and CIFAR-100 with a hand-written ResNet-18 (3x3 stem, no max-pool), SGD with Nesterov.

Data: the standard Python pickles, read from the folder named by the env var CIFAR_DIR, or from its
`cifar-10-batches-py/` / `cifar-100-python/` subfolder, so one setting serves both datasets.
5,000 training images (a tenth of the training set when it is smaller) are held out for
validation with a constant seed, the same for every member. Objective: `val_acc` (max).

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
Augmentation runs as tensor ops on the training device.

Env settings: HOPT_CIFAR_WIDTH (channels of the first stage, default 64 = ResNet-18),
HOPT_CIFAR_BATCH (default 128), HOPT_DATA_WORKERS (DataLoader workers; default min(4, CPUs) on
CUDA and 0 on CPU, where workers would only take cores from the training step), HOPT_DEVICE.
On CUDA: channels_last and autocast (bfloat16, or float16 with a GradScaler); on CPU plain fp32.
"""
from __future__ import annotations

import contextlib
import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from workers.torch_common import (ShuffledBatches, device, finish, load_checkpoint, merge_hparams, resume,
                                  set_optimizer_hparams, train_steps)

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

DATA_ENV = "CIFAR_DIR"
WIDTH_ENV = "HOPT_CIFAR_WIDTH"
BATCH_ENV = "HOPT_CIFAR_BATCH"
WORKERS_ENV = "HOPT_DATA_WORKERS"
DEFAULTS: dict[str, Any] = {"lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.0, "crop_flip": "on",
                            "magnitude": 0.0, "cutout": 0, "mixup": 0.0}
VAL_SIZE = 5000
SPLIT_SEED = 0
WARMUP_STEPS = 200
EVAL_BATCH = 1000
BN_IMAGES = 2000
PAD = 4
JITTER = 0.5


@dataclass(frozen=True)
class Spec:
    """Where a CIFAR variant keeps its files and how its pickles name things."""

    name: str
    subfolder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


SPECS = {
    "cifar10": Spec("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                    "test_batch", "batches.meta", b"labels", b"label_names",
                    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Spec("CIFAR-100", "cifar-100-python", ("train",), "test", "meta", b"fine_labels",
                     b"fine_label_names", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def data_dir(spec: Spec) -> Path:
    """The folder holding all of `spec`'s files: $CIFAR_DIR or its standard subfolder."""
    expected = ", ".join(spec.files)
    raw = os.environ.get(DATA_ENV)
    if not raw:
        raise ValueError(f"{spec.name}: set {DATA_ENV} to the folder holding {expected} "
                         f"(or to its parent holding {spec.subfolder}/)")
    root = Path(raw).expanduser()
    for folder in (root, root / spec.subfolder):
        if all((folder / name).is_file() for name in spec.files):
            return folder
    raise FileNotFoundError(f"{spec.name}: {DATA_ENV}={root} holds neither the files {expected} "
                            f"nor a {spec.subfolder}/ folder with them")


def _unpickle(path: Path, keys: tuple[bytes, ...]) -> dict[bytes, Any]:
    """One CIFAR pickle (encoding='bytes'); a missing key is a ValueError naming the file."""
    with open(path, "rb") as f:
        content = pickle.load(f, encoding="bytes")
    missing = [k.decode() for k in keys if k not in content]
    if missing:
        raise ValueError(f"{path}: not a CIFAR pickle, missing key(s) {missing}")
    return content


def _read_images(folder: Path, files: tuple[str, ...], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 3 x 32 x 32 uint8) and labels (int64) of the given batch files, concatenated."""
    batches = [_unpickle(folder / name, (b"data", label_key)) for name in files]
    images = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    return torch.from_numpy(images), torch.from_numpy(labels)


@dataclass(frozen=True)
class Data:
    """The training and validation split of one CIFAR variant, in memory as uint8."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: int


@functools.lru_cache(maxsize=2)
def _load(key: str, folder: Path) -> Data:
    """Read and split a CIFAR variant once per process (every interval reuses it)."""
    spec = SPECS[key]
    classes = len(_unpickle(folder / spec.meta_file, (spec.names_key,))[spec.names_key])
    images, labels = _read_images(folder, spec.train_files, spec.label_key)
    order = torch.from_numpy(np.random.RandomState(SPLIT_SEED).permutation(len(labels)))
    held_out = min(VAL_SIZE, len(labels) // 10)
    val, train = order[:held_out], order[held_out:]
    return Data(images[train], labels[train], images[val], labels[val], classes)


class _Batches(Dataset):
    """Map-style dataset indexed by whole batches of indices (the sampler yields index tensors)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


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
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def crop_flip(x: torch.Tensor) -> torch.Tensor:
    """Random crop of the zero-padded images and a random horizontal flip, as one gather."""
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    rows = torch.randint(0, 2 * PAD + 1, (b, 1), device=x.device) + torch.arange(h, device=x.device)
    cols = torch.randint(0, 2 * PAD + 1, (b, 1), device=x.device) + torch.arange(w, device=x.device)
    flip = torch.rand(b, 1, device=x.device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def jitter(x: torch.Tensor, magnitude: float) -> torch.Tensor:
    """Random brightness, contrast and saturation, each a factor in 1 +- JITTER*magnitude."""
    def factor() -> torch.Tensor:
        return 1 + (torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 2 - 1) * (JITTER * magnitude)

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = x.mean(dim=1, keepdim=True)
    return ((x - gray) * factor() + gray).clamp(0, 1)


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one size x size square per image at a random centre (it may stick out of the image)."""
    b, _, h, w = x.shape
    top = torch.randint(0, h, (b, 1), device=x.device) - size // 2
    left = torch.randint(0, w, (b, 1), device=x.device) - size // 2
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (ys >= top) & (ys < top + size)
    in_cols = (xs >= left) & (xs < left + size)
    hole = in_rows[:, :, None] & in_cols[:, None, :]
    return x * (~hole).unsqueeze(1)


def _on(value: Any) -> bool:
    """crop_flip as a bool: accepts True/False and the strings "on"/"off"."""
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ValueError(f"crop_flip must be on/off or a bool, not {value!r}")


class _Normalize:
    """uint8 CIFAR images to normalised floats (channels_last on CUDA)."""

    def __init__(self, spec: Spec, dev: torch.device) -> None:
        self.mean = torch.tensor(spec.mean, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=dev).view(1, 3, 1, 1)
        self.channels_last = dev.type == "cuda"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (_unit(x) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Images as floats in [0, 1] (the range the colour augmentations work in); floats pass through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


@dataclass(frozen=True)
class Augment:
    """This interval's augmentation settings, applied to a batch on the training device."""

    crop_flip: bool
    magnitude: float
    cutout: int
    mixup: float

    @classmethod
    def from_hparams(cls, hp: dict[str, Any]) -> Augment:
        return cls(_on(hp["crop_flip"]), float(hp["magnitude"]), int(hp["cutout"]), float(hp["mixup"]))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, norm: _Normalize
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(normalised inputs, mixup partner labels, mixup weight of the true labels)."""
        x = _unit(images)
        if self.crop_flip:
            x = crop_flip(x)
        if self.magnitude > 0:
            x = jitter(x, self.magnitude)
        x = norm(x)
        if self.cutout > 0:
            x = cutout(x, self.cutout)
        if self.mixup <= 0:
            return x, labels, 1.0
        lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        mix = torch.randperm(len(labels), device=labels.device)
        return lam * x + (1 - lam) * x[mix], labels[mix], lam


def _autocast(dev: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 (or float16) autocast on CUDA; nothing on CPU."""
    if dev.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def _workers(dev: torch.device) -> int:
    """DataLoader workers: $HOPT_DATA_WORKERS, else min(4, CPUs) on CUDA and 0 on CPU."""
    raw = os.environ.get(WORKERS_ENV)
    if raw is not None:
        return int(raw)
    return min(4, os.cpu_count() or 1) if dev.type == "cuda" else 0


@torch.no_grad()
def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: _Normalize,
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
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, norm: _Normalize, dev: torch.device) -> None:
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


def _train(ctx: Context, key: str) -> dict[str, float]:
    """One interval of CIFAR training: resume, apply hparams, ctx.steps SGD steps, validate, save."""
    spec = SPECS[key]
    hp = merge_hparams(DEFAULTS, ctx.hparams, spec.name)
    augment, smoothing, peak_lr = Augment.from_hparams(hp), float(hp["label_smoothing"]), float(hp["lr"])
    data = _load(key, data_dir(spec))
    dev = device()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model, state = resume(ctx, lambda s: _build(s, data.classes, dev))
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9, nesterov=True)
    fp16 = dev.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    batch_size = int(os.environ.get(BATCH_ENV, 128))
    step, seen, order_seed = 0, 0, ctx.seed
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        step, seen, order_seed = state["step"], state["samples_seen"], state["order_seed"]
    set_optimizer_hparams(optimizer, weight_decay=float(hp["weight_decay"]))
    norm = _Normalize(spec, dev)
    loader = DataLoader(_Batches(data.train_x, data.train_y),
                        sampler=ShuffledBatches(len(data.train_y), batch_size, order_seed, seen),
                        batch_size=None, num_workers=_workers(dev), pin_memory=dev.type == "cuda",
                        generator=torch.Generator())
    batches = iter(loader)
    model.train()

    def one_step() -> torch.Tensor:
        nonlocal step
        images, y = (t.to(dev, non_blocking=True) for t in next(batches))
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
    del batches
    recalibrate_batchnorm(model, data.train_x, norm, dev)
    val_acc, val_loss = _evaluate(model, data.val_x, data.val_y, norm, dev)
    finish(ctx, model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
           step=step, samples_seen=seen + done * batch_size, order_seed=order_seed,
           config={"width": model.stem[0].out_channels})
    return {"val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss, "step": step}


def cifar10(ctx: Context) -> dict[str, float]:
    """One PBT interval of ResNet-18 on CIFAR-10 (see the module docstring for the hparams)."""
    return _train(ctx, "cifar10")


def cifar100(ctx: Context) -> dict[str, float]:
    """One PBT interval of ResNet-18 on CIFAR-100 (see the module docstring for the hparams)."""
    return _train(ctx, "cifar100")


def evaluate_test(checkpoint: Path, dataset: str = "cifar10") -> dict[str, float]:
    """Accuracy and loss of a checkpoint (e.g. the one `hopt best` exports) on the test set."""
    spec = SPECS[dataset]
    folder = data_dir(spec)
    classes = len(_unpickle(folder / spec.meta_file, (spec.names_key,))[spec.names_key])
    images, labels = _read_images(folder, (spec.test_file,), spec.label_key)
    dev = device()
    state = load_checkpoint(checkpoint)
    model = _build(state, classes, dev)
    model.load_state_dict(state["model"])
    test_acc, test_loss = _evaluate(model, images, labels, _Normalize(spec, dev), dev)
    return {"test_acc": test_acc, "test_loss": test_loss}
