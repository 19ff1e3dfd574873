"""Training throughput of one interval of each torch trainable (digits, CIFAR-10, PTB), and its fixed costs.

CIFAR and PTB run on synthetic data written in the real file formats to a temporary folder, so
nothing is downloaded; digits uses scikit-learn's bundled images. Each trainable first runs a
warm-up interval (imports, data loading, allocator, cuDNN's choice of kernels), then, from that
checkpoint, --repeat intervals of --warmup + --steps steps, keeping the fastest step loop (the least
disturbed by other load). Within an interval the phases are told apart through the trainable's own
calls: the checkpoint read back (load_checkpoint), the start (resume, data feed, up to the first step's
end), the step loop, evaluation, and the checkpoint write with its fsync (save_checkpoint).

The step loop is timed from the end of step --warmup to the end of the last step: on CUDA by CUDA
events recorded at those step ends (the GPU's time, no synchronisation inside the loop), on the CPU
by the clock. Peak GPU memory is torch's: tensors allocated (max_memory_allocated) and the caching
allocator's reservation (max_memory_reserved), both without the CUDA context of ~0.5 GB; "GPU used"
is the whole GPU's used memory at the end (nvidia-smi's view: context and other processes included).

    python benchmarks/throughput.py --device cpu --size small --steps 30 --warmup 5 \
        --out benchmarks/results/throughput-cpu.md
    python benchmarks/throughput.py --device cuda --size full --steps 300 --warmup 30 \
        --out benchmarks/results/throughput-cuda.md
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hopt_cli.trainable import Context  # noqa: E402
from workers import cifar, cifar_data, digits, ptb, torch_common  # noqa: E402
from workers.torch_common import device, load_checkpoint  # noqa: E402

SIZES: dict[str, dict[str, Any]] = {
    "small": {"cifar_width": 16, "cifar_images": 6000, "ptb_size": "small", "ptb_vocab": 2000,
              "ptb_tokens": (120_000, 10_000, 10_000)},
    "full": {"cifar_width": 64, "cifar_images": 60_000, "ptb_size": "full", "ptb_vocab": 10_000,
             "ptb_tokens": (929_589, 73_760, 82_430)},
}
CIFAR_BATCH = 128


@dataclass
class Phases:
    """The times of one interval's phases, in seconds, as seen through the trainable's own calls."""

    total: float = 0.0
    read: float = 0.0  # load_checkpoint: the parent's checkpoint read back
    start: float = 0.0  # from the interval's start to the end of its first step, the read excluded
    loop: float = 0.0  # the timed steps: from the end of step `warmup` to the end of the last
    evaluation: float = 0.0  # after the last step, the write excluded
    write: float = 0.0  # save_checkpoint: torch.save, fsync, rename
    checkpoint_mb: float = 0.0
    autotune: bool = False  # cudnn.benchmark while the steps ran


@dataclass
class Result:
    """One trainable's timings: the fastest step loop of the repeats, with that interval's phases."""

    name: str
    batch: str
    steps: int
    phases: Phases
    work: float
    unit: str
    peak_allocated_mib: float | None
    peak_reserved_mib: float | None

    def throughput(self) -> str:
        """Work per second of the timed steps."""
        return f"{self.work / self.phases.loop:,.0f} {self.unit}" if self.phases.loop > 0 else "n/a"

    def fixed(self) -> float:
        """What an interval costs besides its steps: read back, start, evaluation, write."""
        p = self.phases
        return p.read + p.start + p.evaluation + p.write


def write_cifar10(folder: Path, images: int) -> None:
    """Random images in the CIFAR-10 python format: five training batches and a test batch."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_batch = images // 6
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        content = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                   b"labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(content))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))


def write_ptb(folder: Path, vocab: int, tokens: tuple[int, int, int]) -> None:
    """Zipf-distributed words in the PTB text format (lines of about 20 words, a leading space)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in zip(ptb.FILES, tokens):
        ids = np.minimum(rng.zipf(1.2, count), vocab) - 1
        if name == ptb.FILES[0]:
            ids[:vocab] = np.arange(vocab)  # every word occurs in training: no unknown words later
        words = [f"w{i}" for i in ids]
        lines = (" " + " ".join(words[i:i + 20]) + " \n" for i in range(0, count, 20))
        (folder / name).write_text("".join(lines), encoding="utf-8")


def _ptb_tokens(tokens: tuple[int, int, int], steps: int) -> tuple[int, int, int]:
    """Token counts with a training stream long enough that the timed steps never wrap around it."""
    needed = (steps + 3) * (ptb.DEFAULTS["bptt"] + ptb.MAX_SEQ_DELTA) * ptb.BATCH_SIZE
    return max(tokens[0], needed), tokens[1], tokens[2]


class StepClock:
    """Marks the end of each step through ctx.should_stop (the trainables call it after every step): CUDA
    events on a GPU, the clock on the CPU. Synchronises only at the first and the last step's end."""

    def __init__(self, steps: int, warmup: int, cuda: bool) -> None:
        self.steps, self.warmup, self.cuda = steps, warmup, cuda
        self.calls = 0
        self.first_end = self.loop_start = self.last_end = 0.0
        self.events: list[Any] = []
        self.autotune = False

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls in (1, self.warmup, self.steps):
            if self.cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                self.events.append(event)
                if self.calls in (1, self.steps):
                    event.synchronize()
            if self.calls == 1:
                self.first_end = time.perf_counter()
                self.autotune = torch.backends.cudnn.benchmark
            if self.calls == self.warmup:
                self.loop_start = time.perf_counter()
            if self.calls == self.steps:
                self.last_end = time.perf_counter()
        return False

    def loop(self) -> float:
        """Seconds of the steps after the warm-up ones."""
        if self.cuda:
            return self.events[-2].elapsed_time(self.events[-1]) / 1000
        return self.last_end - self.loop_start


@contextlib.contextmanager
def timed_io(phases: Phases) -> Iterator[None]:
    """Time the trainables' checkpoint read and write (torch_common's, which every trainable calls)."""
    load, save = torch_common.load_checkpoint, torch_common.save_checkpoint

    def timed_load(parent: Path) -> dict[str, Any]:
        began = time.perf_counter()
        try:
            return load(parent)
        finally:
            phases.read += time.perf_counter() - began

    def timed_save(out: Path, **state: Any) -> Path:
        began = time.perf_counter()
        try:
            path = save(out, **state)
            phases.checkpoint_mb = path.stat().st_size / 1e6
            return path
        finally:
            phases.write += time.perf_counter() - began

    torch_common.load_checkpoint, torch_common.save_checkpoint = timed_load, timed_save
    try:
        yield
    finally:
        torch_common.load_checkpoint, torch_common.save_checkpoint = load, save


def interval(fn: Callable[[Context], dict], root: Path, parent: Path | None, steps: int, warmup: int,
             cuda: bool) -> tuple[Path, Phases]:
    """Run one interval of `steps` steps into a fresh folder under root; return (its folder, its phases)."""
    out = Path(tempfile.mkdtemp(dir=root))
    clock = StepClock(steps, warmup, cuda)
    phases = Phases()
    ctx = Context(hparams={}, parent=parent, out=out, interval=0, steps=steps, member=0, seed=0, should_stop=clock)
    with timed_io(phases):
        began = time.perf_counter()
        fn(ctx)
        if cuda:
            torch.cuda.synchronize()
        ended = time.perf_counter()
    phases.total = ended - began
    phases.start = clock.first_end - began - phases.read
    phases.loop = clock.loop()
    phases.evaluation = ended - clock.last_end - phases.write
    phases.autotune = clock.autotune
    return out, phases


def measure(name: str, fn: Callable[[Context], dict], root: Path, steps: int, warmup: int, repeat: int, batch: str,
            work: Callable[[Path, Path, float], float], unit: str) -> Result:
    """Warm up, then run `repeat` intervals of warmup + steps steps from the warm-up checkpoint; the fastest
    step loop counts. `work` gives the work of the timed steps from (parent, checkpoint, timed share)."""
    cuda = device().type == "cuda"
    warm, _ = interval(fn, root, None, warmup + 2, warmup, cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out, phases = min((interval(fn, root, warm, warmup + steps, warmup, cuda) for _ in range(repeat)),
                      key=lambda run: run[1].loop)
    allocated = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    reserved = torch.cuda.max_memory_reserved() / 2**20 if cuda else None
    return Result(name, batch, steps, phases, work(warm, out, steps / (warmup + steps)), unit, allocated, reserved)


def run(size: str, steps: int, warmup: int, repeat: int) -> list[Result]:
    """Benchmark the three trainables at `size` on the device chosen by HOPT_DEVICE."""
    spec = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar10(root / "cifar", spec["cifar_images"])
        write_ptb(root / "ptb", spec["ptb_vocab"], _ptb_tokens(spec["ptb_tokens"], 2 * warmup + steps + 2))
        os.environ.update({"CIFAR_DIR": str(root / "cifar"), "HOPT_CIFAR_WIDTH": str(spec["cifar_width"]),
                           "HOPT_CIFAR_BATCH": str(CIFAR_BATCH), "PTB_DIR": str(root / "ptb"),
                           "HOPT_PTB_SIZE": spec["ptb_size"]})

        def samples(batch: int) -> Callable[[Path, Path, float], float]:
            return lambda _a, _b, _share: steps * batch

        def tokens(before: Path, after: Path, share: float) -> float:
            """The interval's tokens times the timed steps' share of its steps (sequence lengths are drawn
            around the same mean every step)."""
            a, b = load_checkpoint(before), load_checkpoint(after)
            return (b["pos"] - a["pos"]) * b["config"]["batch"] * share

        return [
            measure("digits CNN", digits.train_interval, root, steps, warmup, repeat, str(digits.BATCH_SIZE),
                    samples(digits.BATCH_SIZE), "samples/s"),
            measure(f"CIFAR-10 ResNet-18 width {spec['cifar_width']}", cifar.cifar10, root, steps, warmup, repeat,
                    str(CIFAR_BATCH), samples(CIFAR_BATCH), "samples/s"),
            measure(f"PTB AWD-LSTM {spec['ptb_size']}", ptb.train_interval, root, steps, warmup, repeat,
                    f"{ptb.BATCH_SIZE} x ~70", tokens, "tokens/s"),
        ]


def cifar_feed(size: str) -> str:
    """How CIFAR's batches reach the device at this size: kept on the GPU, or a DataLoader."""
    dev = device()
    images = SIZES[size]["cifar_images"] * 5 // 6
    data = cifar_data.Data(torch.empty(images, 3, 32, 32, dtype=torch.uint8, device="meta"),
                           torch.empty(images, dtype=torch.int64, device="meta"), torch.empty(0), torch.empty(0), 10)
    if cifar.fits_on_gpu(data, dev):
        return "CIFAR's training images stay on the GPU: batches are gathered there, no DataLoader"
    return f"CIFAR's batches come through a DataLoader with {cifar.data_workers(dev)} worker processes"


def _load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the timings."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def machine(started: str) -> str:
    """CPU model, core count, torch version and the GPU, when one is used, with its memory in use."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                     if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    lines = [f"- CPU: {model}, {os.cpu_count()} cores ({torch_common.usable_cores()} usable); load average "
             f"{started} at the start, {_load_average()} at the end",
             f"- torch {torch.__version__} ({torch.get_num_threads()} threads), "
             f"Python {platform.python_version()}"]
    if device().type == "cuda":
        free, total = torch.cuda.mem_get_info()
        capability = ".".join(map(str, torch.cuda.get_device_capability()))
        lines.append(f"- GPU: {torch.cuda.get_device_name()} (compute capability {capability}, "
                     f"{total / 2**30:.0f} GiB), CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
                     f"autocast {torch_common.amp_dtype(device())}; GPU used at the end: "
                     f"{(total - free) / 2**20:,.0f} MiB (all processes, CUDA context included)")
    return "\n".join(lines)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def report(results: list[Result], args: argparse.Namespace, command: str, started: str) -> str:
    """The results as a markdown page: command, machine, the step loop's table, the fixed costs' table."""
    speed = [f"| {r.name} | {r.batch} | {r.steps} | {1000 * r.phases.loop / r.steps:.1f} | {r.throughput()} | "
             f"{'on' if r.phases.autotune else 'off'} | {_mib(r.peak_allocated_mib)} | {_mib(r.peak_reserved_mib)} |"
             for r in results]
    fixed = [f"| {r.name} | {r.phases.read:.2f} | {r.phases.start:.2f} | {r.phases.evaluation:.2f} | "
             f"{r.phases.write:.2f} | {r.phases.checkpoint_mb:.1f} | {r.fixed():.2f} | {r.phases.total:.2f} |"
             for r in results]
    clock = "CUDA events" if args.device == "cuda" else "the clock"
    return "\n".join([
        f"# Trainable throughput ({args.device}, size {args.size})", "",
        "```", command, "```", "", f"- measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        machine(started), f"- {cifar_feed(args.size)}", "",
        f"The step loop: {args.steps} steps after {args.warmup} warm-up steps in the same interval, timed by "
        f"{clock}; the fastest of {args.repeat} intervals.", "",
        "| trainable | batch | steps | ms per step | training throughput | cuDNN autotuning | "
        "peak allocated MiB | peak reserved MiB |",
        "|---|---|---|---|---|---|---|---|", *speed, "",
        "Peak MiB: torch's own (tensors allocated; the caching allocator's reservation), during the timed "
        "intervals, resident CIFAR images included; the CUDA context is not in them.", "",
        "What the same interval spent besides its steps, in seconds:", "",
        "| trainable | read back | start (to the first step's end) | evaluation | write + fsync | checkpoint MB | "
        "fixed in all | interval |",
        "|---|---|---|---|---|---|---|---|", *fixed, "",
        "read back: load_checkpoint of the parent; start: resume, model, data feed (a DataLoader's workers) and "
        "the first step; evaluation: from the last step to the checkpoint write (BatchNorm recalibration and "
        "validation); write + fsync: save_checkpoint; interval: all of it, warm-up steps included.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cpu", "cuda"], default=default_device)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per interval")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the timed ones, in the same interval")
    parser.add_argument("--repeat", type=int, default=3, help="timed intervals of each trainable; the fastest counts")
    parser.add_argument("--out", type=Path, help="markdown file to write the results to")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    os.environ["HOPT_DEVICE"] = args.device
    started = _load_average()
    page = report(run(args.size, args.steps, args.warmup, args.repeat), args, "python " + " ".join(sys.argv),
                  started)
    print(page)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
