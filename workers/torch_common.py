"""Shared helpers for the torch trainables: device, seeding, RNG capture, atomic checkpoints, batches.

Every trainable keeps its whole state in one file, `checkpoint.pt`, loadable with
`torch.load(..., weights_only=True)`: tensors and plain Python values only. The RNG states travel in
it too, so an interval resumed from a checkpoint continues exactly as if training had never stopped.
"""
from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

CHECKPOINT = "checkpoint.pt"
DEVICE_ENV = "HOPT_DEVICE"
DEVICE_SETTINGS = ("auto", "cuda")
CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs to be deterministic (CUDA docs, "Results reproducibility")
SETTINGS: dict[str, Any] = {"device": "auto", "deterministic": "off"}  # every torch trainable's, besides its own


def device() -> torch.device:
    """CUDA when available, else CPU; the env var HOPT_DEVICE (e.g. `cpu`) overrides the choice."""
    wanted = os.environ.get(DEVICE_ENV)
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class NoCuda(RuntimeError):
    """A recipe asked for CUDA (`device: cuda`) where torch has none: the interval fails instead of
    training on the CPU for hours with no word."""


def training_device(setting: str = "auto") -> torch.device:
    """The device of an interval, from the trainable's `device` setting: `auto` is device() (CUDA when
    available), `cuda` is the same but a NoCuda error saying why where that is the CPU."""
    if setting not in DEVICE_SETTINGS:
        raise ValueError(f"device: {setting!r} is no device setting; give one of {', '.join(DEVICE_SETTINGS)}")
    dev = device()
    if setting == "cuda" and (dev.type != "cuda" or not torch.cuda.is_available()):
        raise NoCuda(f"device: cuda, but this worker would train on the CPU: {why_no_cuda()}")
    return dev


def interval_device(hp: Mapping[str, Any], benchmark: bool = False) -> torch.device:
    """The device of this interval from the trainable's settings `device` and `deterministic` (merged
    into its hparams from SETTINGS), with its kernels chosen (training_device, select_kernels)."""
    dev = training_device(str(hp["device"]))
    select_kernels(dev, switch(hp["deterministic"], "deterministic"), benchmark)
    return dev


def why_no_cuda() -> str:
    """In one line, why torch has no CUDA device in this process, and what to change."""
    wanted = os.environ.get(DEVICE_ENV)
    if wanted and torch.device(wanted).type != "cuda":
        return f"{DEVICE_ENV}={wanted} chooses it; unset {DEVICE_ENV}"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a build without CUDA; install a CUDA build of torch (pytorch.org)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return "CUDA_VISIBLE_DEVICES is empty, which hides every GPU; give the job a GPU (--gres gpu:1)"
    try:
        torch.cuda.init()
    except Exception as err:  # the driver's own words: too old, not loaded, no device
        said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use CUDA: " + \
            said.removeprefix("CUDA error: ")  # not the sticky-error marker: nothing in this process broke
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (CUDA_VISIBLE_DEVICES={visible!r})"


def device_name(dev: torch.device) -> str:
    """What a commit records of the device an interval trained on: `cpu`, or `cuda:0 (NVIDIA H100 ...)`."""
    if dev.type != "cuda":
        return str(dev)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def amp_dtype(dev: torch.device) -> torch.dtype | None:
    """The autocast dtype on `dev`: bfloat16 from compute capability 8.0 on, float16 (with a GradScaler)
    on older GPUs, None (fp32) on the CPU.

    Not torch.cuda.is_bf16_supported(): it counts bf16 emulated without tensor cores (V100, T4).
    """
    if dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(dev) >= (8, 0) else torch.float16


def select_kernels(dev: torch.device, deterministic: bool, benchmark: bool = False) -> None:
    """Set this process's kernel choices for an interval on `dev`, all of them every interval, so nothing
    one trainable chose leaks into the next in the same process.

    Deterministic (the trainables' `deterministic` setting): torch.use_deterministic_algorithms, no cuDNN
    autotuning, cuBLAS with a fixed workspace (CUBLAS_WORKSPACE_CONFIG, unless set), so an interval on a
    GPU repeats bit for bit on the same GPU model and software. Otherwise cuDNN autotunes where
    `benchmark` (fixed shapes: the fastest kernels, chosen by timing, so they may differ run to run).
    On CUDA, fp32 matrix products and convolutions may use TF32 tensor cores (compute capability 8.0 on).
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = benchmark and not deterministic and dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def switch(value: Any, name: str) -> bool:
    """An on/off setting as a bool: True/False or the strings "on"/"off" (as recipes write choices)."""
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ValueError(f"{name} must be on/off or a bool, not {value!r}")


def to_device(tensor: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """`tensor` on `dev`; to a GPU from pinned memory without waiting (the copy overlaps queued work)."""
    if dev.type != "cuda":
        return tensor.to(dev)
    return tensor.pin_memory().to(dev, non_blocking=True)


def usable_cores() -> int:
    """The cores this process may run on (a SLURM task's allocation, a taskset), not all of the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from several integers (e.g. seed and epoch), well spread and stable."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(derive_seed(seed))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and plain values, so a weights-only load restores them.

    On CUDA only the state of the device in use is kept: the worker that continues the member may see
    fewer GPUs, and the other GPUs' states play no part in this one's training.
    """
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    dev = device()
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what rng_state() captured; a CUDA state only when the device in use now is CUDA.

    A checkpoint without one (written on the CPU) leaves the CUDA generator as it is. Older
    checkpoints hold a list, one state per GPU their worker saw: the entry of the device in use by its
    index, else the first (a worker trains on its cuda:0 unless HOPT_DEVICE names another).
    """
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    dev = device()
    if "cuda" not in state or dev.type != "cuda":
        return
    cuda = state["cuda"]
    if isinstance(cuda, (list, tuple)):
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else cuda[0]
    torch.cuda.set_rng_state(cuda.cpu(), dev)


def save_checkpoint(out: Path, **state: Any) -> Path:
    """Write `state` to out/checkpoint.pt atomically (unique temp name, fsync, os.replace)."""
    out = Path(out)
    path = out / CHECKPOINT
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=out)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(out)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: some filesystems refuse to fsync a directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(parent: Path) -> dict[str, Any]:
    """Load parent/checkpoint.pt weights-only onto the current device."""
    return torch.load(Path(parent) / CHECKPOINT, map_location=device(), weights_only=True)


def resume(ctx: Context, build: Callable[[dict[str, Any] | None], torch.nn.Module]
           ) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Build the model and load ctx.parent into it (None: fresh start), then set the global RNGs.

    `build` gets the checkpoint (None on a fresh start) to read any saved model configuration.
    Fresh start: seed from ctx.seed before building. Same member continuing: restore the saved RNG
    states after building, so splitting training into intervals changes nothing. Another member's
    checkpoint (an exploit): reseed from (ctx.seed, global step), so members that copy one parent
    do not share their noise. Returns (model, checkpoint or None).
    """
    if ctx.parent is None:
        seed_everything(ctx.seed)
        return build(None), None
    state = load_checkpoint(ctx.parent)
    model = build(state)
    model.load_state_dict(state["model"])
    if state["member"] == ctx.member:
        set_rng_state(state["rng"])
    else:
        seed_everything(derive_seed(ctx.seed, state["step"]))
    return model, state


def finish(ctx: Context, **state: Any) -> Path:
    """Save the interval's checkpoint into ctx.out with the member id and the RNG states."""
    return save_checkpoint(ctx.out, member=ctx.member, rng=rng_state(), **state)


def train_steps(ctx: Context, step: Callable[[], torch.Tensor]) -> tuple[int, float]:
    """Run up to ctx.steps calls of `step` (each returns its detached loss), polling should_stop.

    Returns (steps done, mean loss); the loss is summed on the device so no step waits for the GPU.
    """
    total: torch.Tensor | None = None
    done = 0
    for _ in range(ctx.steps):
        loss = step()
        total = loss if total is None else total + loss
        done += 1
        if ctx.should_stop():
            break
    return done, (float(total) / done if total is not None else float("nan"))


def set_optimizer_hparams(optimizer: torch.optim.Optimizer, **values: Any) -> None:
    """Set `values` (lr, weight_decay, momentum, betas, ...) in every param group of `optimizer`.

    Call it after `optimizer.load_state_dict`: a restored state carries the parent's values, which
    would silently replace the interval's new ones (an exploit's mutation would never take effect).
    A name the groups do not have is a ValueError: a typo, or a setting this optimizer lacks
    (momentum on Adam).
    """
    for group in optimizer.param_groups:
        unknown = sorted(set(values) - set(group))
        if unknown:
            known = sorted(k for k in group if k != "params")
            raise ValueError(f"{type(optimizer).__name__} has no {unknown} to set; its settings are {known}")
    for group in optimizer.param_groups:
        group.update(values)


def merge_hparams(defaults: Mapping[str, Any], given: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The defaults overridden by `given`; an unknown name (a typo in a recipe) is a ValueError."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: unknown hyperparameter(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


class ShuffledBatches:
    """Endless batches of indices over epochs of seeded permutations, resumable from a sample count.

    The batch that starts at sample `start` is a pure function of (n, seed, start): resuming needs
    only the count, and prefetching loaders cannot disturb the order.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def _order(self, epoch: int) -> torch.Tensor:
        """The permutation of epoch `epoch` (cached: batches walk through epochs in order)."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=generator)
        return self._perm

    def batch(self, start: int) -> torch.Tensor:
        """Indices of the batch whose first sample is sample number `start` of the endless stream."""
        parts, pos, end = [], start, start + self.batch_size
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            take = min(end - pos, self.n - offset)
            parts.append(self._order(epoch)[offset:offset + take])
            pos += take
        return torch.cat(parts)

    def __iter__(self) -> Iterator[torch.Tensor]:
        pos = self.start
        while True:
            yield self.batch(pos)
            pos += self.batch_size
