"""Training throughput of one interval of each torch trainable (digits, CIFAR-10, PTB).

CIFAR and PTB run on synthetic data written in the real file formats to a temporary folder, so
nothing is downloaded; digits uses scikit-learn's bundled images. Each trainable first runs a
warm-up interval (imports, data loading, allocator), then from that checkpoint intervals of 0
steps (the fixed cost: resume, validation, checkpoint) and of --steps steps, each --repeat times,
keeping the fastest (the least disturbed by other load); the throughput is the work of the steps
divided by the difference of the two wall times.

    python benchmarks/throughput.py --device cpu --size small --steps 30 \
        --out benchmarks/results/throughput-cpu.md
"""
from __future__ import annotations

import argparse
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hopt_cli.trainable import Context  # noqa: E402
from workers import cifar, digits, ptb  # noqa: E402
from workers.torch_common import device, load_checkpoint  # noqa: E402

SIZES: dict[str, dict[str, Any]] = {
    "small": {"cifar_width": 16, "cifar_images": 6000, "ptb_size": "small", "ptb_vocab": 2000,
              "ptb_tokens": (120_000, 10_000, 10_000)},
    "full": {"cifar_width": 64, "cifar_images": 60_000, "ptb_size": "full", "ptb_vocab": 10_000,
             "ptb_tokens": (929_589, 73_760, 82_430)},
}
CIFAR_BATCH = 128


@dataclass
class Result:
    """One trainable's timings."""

    name: str
    batch: str
    interval_s: float
    fixed_s: float
    work: float
    unit: str
    peak_mib: float | None

    def throughput(self) -> str:
        """Work per second of the steps alone, or n/a when other load made the difference meaningless."""
        spent = self.interval_s - self.fixed_s
        return f"{self.work / spent:,.0f} {self.unit}" if spent > 0 else "n/a (noise)"


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


def _interval(fn: Callable[[Context], dict], root: Path, parent: Path | None, steps: int) -> tuple[Path, float]:
    """Run one interval into a fresh folder under root; return (its folder, wall seconds)."""
    out = Path(tempfile.mkdtemp(dir=root))
    ctx = Context(hparams={}, parent=parent, out=out, interval=0, steps=steps, member=0, seed=0)
    start = time.perf_counter()
    fn(ctx)
    return out, time.perf_counter() - start


def measure(name: str, fn: Callable[[Context], dict], root: Path, steps: int, repeat: int, batch: str,
            work: Callable[[Path, Path], float], unit: str) -> Result:
    """Warm up, then time 0-step and `steps`-step intervals from the warm-up checkpoint, fastest of `repeat`."""
    cuda = device().type == "cuda"
    warm, _ = _interval(fn, root, None, 2)
    fixed = min(_interval(fn, root, warm, 0)[1] for _ in range(repeat))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out, total = min((_interval(fn, root, warm, steps) for _ in range(repeat)), key=lambda run: run[1])
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return Result(name, batch, total, fixed, work(warm, out), unit, peak)


def run(size: str, steps: int, repeat: int) -> list[Result]:
    """Benchmark the three trainables at `size` on the device chosen by HOPT_DEVICE."""
    spec = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar10(root / "cifar", spec["cifar_images"])
        write_ptb(root / "ptb", spec["ptb_vocab"], _ptb_tokens(spec["ptb_tokens"], steps))
        os.environ.update({"CIFAR_DIR": str(root / "cifar"), "HOPT_CIFAR_WIDTH": str(spec["cifar_width"]),
                           "HOPT_CIFAR_BATCH": str(CIFAR_BATCH), "PTB_DIR": str(root / "ptb"),
                           "HOPT_PTB_SIZE": spec["ptb_size"]})

        def samples(batch: int) -> Callable[[Path, Path], float]:
            return lambda _a, _b: steps * batch

        def tokens(before: Path, after: Path) -> float:
            a, b = load_checkpoint(before), load_checkpoint(after)
            return (b["pos"] - a["pos"]) * b["config"]["batch"]

        return [
            measure("digits CNN", digits.train_interval, root, steps, repeat, str(digits.BATCH_SIZE),
                    samples(digits.BATCH_SIZE), "samples/s"),
            measure(f"CIFAR-10 ResNet-18 width {spec['cifar_width']}", cifar.cifar10, root, steps, repeat,
                    str(CIFAR_BATCH), samples(CIFAR_BATCH), "samples/s"),
            measure(f"PTB AWD-LSTM {spec['ptb_size']}", ptb.train_interval, root, steps, repeat,
                    f"{ptb.BATCH_SIZE} x ~70", tokens, "tokens/s"),
        ]


def _load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the timings."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def machine(started: str) -> str:
    """CPU model, core count, torch version and the GPU name when one is used."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                     if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    lines = [f"- CPU: {model}, {os.cpu_count()} cores; load average {started} at the start, "
             f"{_load_average()} at the end",
             f"- torch {torch.__version__} ({torch.get_num_threads()} threads), "
             f"Python {platform.python_version()}"]
    if device().type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name()}")
    return "\n".join(lines)


def report(results: list[Result], args: argparse.Namespace, command: str, started: str) -> str:
    """The results as a markdown page: command, machine, table."""
    rows = [f"| {r.name} | {r.batch} | {args.steps} | {r.interval_s:.2f} | {r.fixed_s:.2f} | "
            f"{r.throughput()} | {'-' if r.peak_mib is None else f'{r.peak_mib:,.0f}'} |"
            for r in results]
    return "\n".join([
        f"# Trainable throughput ({args.device}, size {args.size})", "",
        "```", command, "```", "", machine(started), "",
        "| trainable | batch | steps | interval s | fixed s (0 steps) | training throughput | peak GPU MiB |",
        "|---|---|---|---|---|---|---|", *rows, "",
        "interval s: wall time of one interval of `steps` steps, validation and checkpoint included;",
        "fixed s: the same for 0 steps; throughput = work of the steps / (interval s - fixed s);",
        f"each the fastest of {args.repeat} runs.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cpu", "cuda"], default=default_device)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each interval; the fastest counts")
    parser.add_argument("--out", type=Path, help="markdown file to write the results to")
    args = parser.parse_args()
    os.environ["HOPT_DEVICE"] = args.device
    started = _load_average()
    page = report(run(args.size, args.steps, args.repeat), args, "python " + " ".join(sys.argv), started)
    print(page)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
