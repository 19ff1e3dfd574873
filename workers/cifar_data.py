"""CIFAR-10 and CIFAR-100 data: the python-pickle batches, the train/val split, augmentation, normalisation.

Data: the standard Python pickles, read from the folder named by the env var CIFAR_DIR, or from its
`cifar-10-batches-py/` / `cifar-100-python/` subfolder, so one setting serves both datasets.
5,000 training images (a tenth of the training set when it is smaller) are held out for
validation with a constant seed, the same for every member. Images stay uint8 in memory; a
`Batches` dataset hands out whole batches of them by index.

Augmentation (`Augment`, from the hparams `crop_flip`, `magnitude`, `cutout`, `mixup`; their meaning is
listed in `workers.cifar`) runs as tensor ops on the training device, around `Normalize`, which turns
uint8 images into floats normalised with the dataset's channel means and deviations.
"""
from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DATA_ENV = "CIFAR_DIR"
VAL_SIZE = 5000
SPLIT_SEED = 0
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
    """The folder holding all of `spec`'s files: $CIFAR_DIR or its standard subfolder.

    Where there is none, a FileNotFoundError that names its fix: the variable to set, not the code."""
    expected = ", ".join(spec.files)
    fix = f"set {DATA_ENV} to the folder holding {expected} (or to its parent holding {spec.subfolder}/)"
    raw = os.environ.get(DATA_ENV)
    if not raw:
        raise FileNotFoundError(f"{spec.name} data not found: {DATA_ENV} is not set; {fix}")
    root = Path(raw).expanduser()
    for folder in (root, root / spec.subfolder):
        if all((folder / name).is_file() for name in spec.files):
            return folder
    raise FileNotFoundError(f"{spec.name} data not found: {DATA_ENV}={root} holds neither the files nor a "
                            f"{spec.subfolder}/ folder with them; {fix}")


def unpickle(path: Path, keys: tuple[bytes, ...]) -> dict[bytes, Any]:
    """One CIFAR pickle (encoding='bytes'); a missing key is a ValueError naming the file."""
    with open(path, "rb") as f:
        content = pickle.load(f, encoding="bytes")
    missing = [k.decode() for k in keys if k not in content]
    if missing:
        raise ValueError(f"{path}: not a CIFAR pickle, missing key(s) {missing}")
    return content


def read_images(folder: Path, files: tuple[str, ...], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 3 x 32 x 32 uint8) and labels (int64) of the given batch files, concatenated."""
    batches = [unpickle(folder / name, (b"data", label_key)) for name in files]
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
def load(key: str, folder: Path) -> Data:
    """Read and split a CIFAR variant once per process (every interval reuses it)."""
    spec = SPECS[key]
    classes = len(unpickle(folder / spec.meta_file, (spec.names_key,))[spec.names_key])
    images, labels = read_images(folder, spec.train_files, spec.label_key)
    order = torch.from_numpy(np.random.RandomState(SPLIT_SEED).permutation(len(labels)))
    held_out = min(VAL_SIZE, len(labels) // 10)
    val, train = order[:held_out], order[held_out:]
    return Data(images[train], labels[train], images[val], labels[val], classes)


class Batches(Dataset):
    """Map-style dataset indexed by whole batches of indices (the sampler yields index tensors)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


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


class Normalize:
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

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, norm: Normalize
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
