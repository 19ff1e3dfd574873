"""Trainables the tests need beyond the toys: ones that block, sleep, fail in every way, or hang."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.noop import noop
from workers.toys import pbt_quadratic


def block_once(ctx: Any) -> dict[str, float]:
    """Like T1, but the first time member 0 trains interval 3 it announces itself and never returns.

    The test SIGKILLs the worker while it hangs here; the retry after the restart proceeds normally.
    """
    marker = Path(os.environ["HOPT_TEST_MARKER"])
    if ctx.member == 0 and ctx.interval == 3 and not marker.exists():
        marker.write_text(str(os.getpid()))
        while True:
            time.sleep(1)
    return pbt_quadratic(ctx)


def removes_its_output(ctx: Any) -> dict[str, float]:
    """T1, except member 0 deletes the folder it was given to write into."""
    result = pbt_quadratic(ctx)
    if ctx.member == 0:
        shutil.rmtree(ctx.out)
    return result


def nan_for_member_1(ctx: Any) -> dict[str, float]:
    """T1, except member 1 always scores NaN: a broken setup that must stop, not loop."""
    result = pbt_quadratic(ctx)
    return {**result, "score": float("nan")} if ctx.member == 1 else result


def slow_quadratic(ctx: Any) -> dict[str, float]:
    """T1 taking a fifth of a second per interval, long enough to send a signal in the middle of a run."""
    time.sleep(0.2)
    return pbt_quadratic(ctx)


def sleepy_quadratic(ctx: Any) -> dict[str, float]:
    """T1 taking HOPT_TEST_SLEEP seconds per interval (default 0.03): long enough to be killed inside."""
    time.sleep(float(os.environ.get("HOPT_TEST_SLEEP", "0.03")))
    return pbt_quadratic(ctx)


def _announce(ctx: Any) -> None:
    """Write this process's pid to HOPT_TEST_MARKER: the test now knows the interval is in flight."""
    marker = Path(os.environ["HOPT_TEST_MARKER"])
    temp = marker.with_name(f"{marker.name}.{os.getpid()}")
    temp.write_text(str(os.getpid()))
    temp.rename(marker)


def blocks_until_stopped(ctx: Any) -> dict[str, float]:
    """Announces itself, then trains until should_stop() (as a well-behaved trainable does)."""
    _announce(ctx)
    while not ctx.should_stop():
        time.sleep(0.01)
    return pbt_quadratic(ctx)


def blocks_ignoring_stop(ctx: Any) -> dict[str, float]:
    """Announces itself, then never returns and never looks at should_stop()."""
    _announce(ctx)
    while True:
        time.sleep(1)


def _member_0_fails(failure: Any) -> Any:
    def trainable(ctx: Any) -> Any:
        return failure(ctx) if ctx.member == 0 else pbt_quadratic(ctx)

    return trainable


def _raise(ctx: Any) -> Any:
    raise RuntimeError("boom")


def _hang(ctx: Any) -> Any:
    while True:
        time.sleep(1)


raises = _member_0_fails(_raise)
scores_inf = _member_0_fails(lambda ctx: {**pbt_quadratic(ctx), "score": float("inf")})
misses_metric = _member_0_fails(lambda ctx: {"loss": 1.0})
hangs = _member_0_fails(_hang)
dies = _member_0_fails(lambda ctx: os.kill(os.getpid(), signal.SIGKILL))  # as the kernel's OOM killer does
exits_3 = _member_0_fails(lambda ctx: sys.exit(3))  # as argparse does inside a wrapped main()
exits_0 = _member_0_fails(lambda ctx: sys.exit(0))
returns_none = _member_0_fails(lambda ctx: None)


def returns_numpy(ctx: Any) -> dict[str, Any]:
    """T1 with its score as a NumPy float32, a NumPy int, 0-d NumPy and torch arrays, and an array metric."""
    result = pbt_quadratic(ctx)
    return {"score": np.float32(result["score"]), "count": np.int64(ctx.interval), "zero_d": np.array(0.5),
            "tensor": torch.tensor(0.25), "hist": np.arange(3)}


def sleepy_noop(ctx: Any) -> float:
    """workers/noop.py, 20 ms slower: long enough that a worker killed at random holds a lease."""
    time.sleep(0.02)
    return noop(ctx)


def waits_for_go(ctx: Any) -> dict[str, float]:
    """T1; interval 0 announces its pid in the folder HOPT_TEST_MARKER, then waits for the file
    HOPT_TEST_GO or for should_stop() (unless HOPT_TEST_IGNORE_STOP is set)."""
    if ctx.interval == 0:
        folder = Path(os.environ["HOPT_TEST_MARKER"])
        (folder / f".{os.getpid()}").write_text(str(ctx.member))
        (folder / f".{os.getpid()}").rename(folder / str(os.getpid()))
        heeds_stop = "HOPT_TEST_IGNORE_STOP" not in os.environ
        while not Path(os.environ["HOPT_TEST_GO"]).exists() and not (heeds_stop and ctx.should_stop()):
            time.sleep(0.01)
    return pbt_quadratic(ctx)


def writes_nothing(ctx: Any) -> float:
    """A score and no checkpoint: ctx.out stays empty."""
    return float(ctx.hparams["h0"])


def counts_threads(ctx: Any) -> dict[str, float]:
    """T1, plus torch's intra-op thread count in the score: a replay matches only with the same threads."""
    result = pbt_quadratic(ctx)
    return {**result, "score": result["score"] + 1000 * torch.get_num_threads(), "threads": torch.get_num_threads()}


def straggles(ctx: Any) -> dict[str, float]:
    """T1, but member 3 scores 10 worse, and the first time it trains interval 1 it writes its pid to
    HOPT_TEST_MARKER and hangs: the test kills that worker once every other member has finished."""
    result = pbt_quadratic(ctx)
    if ctx.member != 3:
        return result
    marker = Path(os.environ["HOPT_TEST_MARKER"])
    if ctx.interval == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        while True:
            time.sleep(1)
    return {**result, "score": result["score"] - 10}


def reports_devices(ctx: Any) -> dict[str, Any]:
    """T1, plus the GPUs and thread count its worker was given, as string metrics. Interval 0 waits
    until HOPT_TEST_WORKERS worker processes have announced themselves in HOPT_TEST_MARKER: each worker
    blocks in its first interval, so every one of them claims, trains and commits."""
    if ctx.interval == 0:
        folder = Path(os.environ["HOPT_TEST_MARKER"])
        (folder / str(os.getpid())).touch()
        while len(list(folder.iterdir())) < int(os.environ["HOPT_TEST_WORKERS"]) and not ctx.should_stop():
            time.sleep(0.01)
    return {**pbt_quadratic(ctx), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}


def talks(ctx: Any) -> dict[str, float]:
    """T1 that says which member interval it trains in every way a trainable writes: Python's print to
    stdout and stderr, the file descriptor itself (as C code does), and a child process; member 2's
    interval 1 then fails once (HOPT_TEST_MARKER marks that it did)."""
    tag = f"member {ctx.member} interval {ctx.interval}"
    print(f"print says {tag}", flush=True)
    print(f"stderr says {tag}", file=sys.stderr, flush=True)
    os.write(2, f"fd 2 says {tag}\n".encode())
    subprocess.run(["echo", f"a child says {tag}"], check=True)
    marker = Path(os.environ["HOPT_TEST_MARKER"])
    if (ctx.member, ctx.interval) == (2, 1) and not marker.exists():
        marker.touch()
        raise RuntimeError(f"boom in {tag}")
    return pbt_quadratic(ctx)


def cuda_error_once(ctx: Any) -> dict[str, float]:
    """T1, except member 0's interval 1 hits a sticky CUDA error the first time (HOPT_TEST_MARKER keeps the
    pid): like CUDA's, every later interval in that process fails too, until a fresh process takes over."""
    marker = Path(os.environ["HOPT_TEST_MARKER"])
    first = ctx.member == 0 and ctx.interval == 1 and not marker.exists()
    if first or marker.exists() and marker.read_text() == str(os.getpid()):
        marker.write_text(str(os.getpid()))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return pbt_quadratic(ctx)
