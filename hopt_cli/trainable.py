"""The trainable contract: what one interval of training receives, and how hopt runs it.

A trainable is a Python callable `f(ctx) -> float | dict` or a shell command; it knows nothing of
the store or the policies. It resumes from `ctx.parent` (None for a fresh start), writes its new
checkpoint into `ctx.out`, and returns the score or a dict of metrics holding the objective metric.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hopt_cli.errors import HoptError


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Context:
    """Everything a trainable gets for one interval."""

    hparams: dict[str, Any]
    parent: Path | None
    out: Path
    interval: int
    steps: int
    member: int
    seed: int
    should_stop: Callable[[], bool] = field(default=_never, compare=False)


@dataclass(frozen=True)
class Outcome:
    """What one interval produced: a finite score and its metrics, or the error that failed it."""

    score: float | None
    metrics: dict[str, Any]
    error: str | None = None


class IntervalError(Exception):
    """An interval failed in a way its message already describes in full (no exception type needed)."""


class CommandFailed(IntervalError):
    """A command trainable exited non-zero, ran past its timeout, or wrote no usable metrics.json."""


TERM_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a command must stop


@dataclass(frozen=True)
class CommandTrainable:
    """Runs a shell command per interval; placeholders come from hparams and the context.

    The command runs in its own process group. A stop request (should_stop) or `timeout` sends the
    group SIGTERM, then SIGKILL after TERM_GRACE seconds; a timed-out interval fails.
    """

    template: str
    timeout: float | None = None
    poll_seconds: float = 0.2

    def render(self, ctx: Context) -> str:
        values = {**ctx.hparams, "parent": ctx.parent or "", "out": ctx.out, "interval": ctx.interval,
                  "steps": ctx.steps, "member": ctx.member, "seed": ctx.seed}
        return self.template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})

    def __call__(self, ctx: Context) -> dict[str, Any]:
        process = subprocess.Popen(self.render(ctx), shell=True, start_new_session=True,
                                   stdout=sys.stderr, stderr=subprocess.PIPE, text=True, errors="replace")
        tail: list[str] = []
        reader = threading.Thread(target=_tee, args=(process.stderr, tail), daemon=True)
        reader.start()
        started = time.monotonic()
        timed_out = False
        while process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=self.poll_seconds)
            timed_out = self.timeout is not None and time.monotonic() - started > self.timeout
            if (ctx.should_stop() or timed_out) and process.poll() is None:
                _stop_group(process)
        reader.join(timeout=TERM_GRACE)  # a grandchild that left the group may hold stderr open
        if timed_out:
            raise CommandFailed(f"the command ran longer than interval_timeout ({self.timeout:g} s) and was killed")
        if process.returncode != 0:
            detail = "; ".join(line.strip() for line in tail if line.strip())[-500:]
            raise CommandFailed(f"command exited with status {process.returncode}" + (f": {detail}" if detail else ""))
        return _read_metrics(ctx.out / "metrics.json")


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the command's process group; SIGKILL it if it is still there after TERM_GRACE."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=TERM_GRACE)
            return


def _tee(stream: Any, tail: list[str]) -> None:
    """Forward a child's stderr to ours, keeping its last lines for the error message."""
    for line in stream:
        sys.stderr.write(line)
        tail.append(line)
        del tail[:-20]


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise CommandFailed(f"the command wrote no {path.name} into {{out}}") from None
    except ValueError as err:
        raise CommandFailed(f"{path.name} is not valid JSON ({err})") from None
    if not isinstance(metrics, dict):
        raise CommandFailed(f"{path.name} must hold a JSON object of metrics")
    return metrics


def load_trainable(worker: str | None, command: str | None) -> Callable[[Context], Any]:
    """The recipe's trainable; a module or function that cannot be imported is a HoptError."""
    if command is not None:
        return CommandTrainable(command)
    module_name, _, function_name = str(worker).partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import can fail in any way; the user needs to see how
        raise HoptError(f"worker: cannot import {module_name} ({type(err).__name__}: {err}); "
                        "check the module name and that it is importable from this directory") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise HoptError(f"worker: {module_name} has no function {function_name}; "
                        "check the name after the ':' in the recipe's worker") from None
    return function


def run_interval(trainable: Callable[[Context], Any], ctx: Context, metric: str) -> Outcome:
    """Run one interval; any exception, bad score or missing metric becomes a failed Outcome."""
    try:
        result = trainable(ctx)
    except Exception as err:  # the trainable is user code: every failure is a failed interval
        error = str(err) if isinstance(err, IntervalError) else f"{type(err).__name__}: {err}"
        return Outcome(None, {}, error + (f" (resuming from {ctx.parent})" if ctx.parent else ""))
    metrics = dict(result) if isinstance(result, Mapping) else {metric: result}
    score = metrics.get(metric)
    if score is None:
        return Outcome(None, metrics, f"metric {metric!r} missing from the result (got {', '.join(map(str, metrics)) or 'none'})")
    try:
        score = float(score)
    except (TypeError, ValueError):
        return Outcome(None, metrics, f"metric {metric!r} is not a number (got {score!r})")
    if not math.isfinite(score):
        return Outcome(None, metrics, f"metric {metric!r} is {score}")
    return Outcome(score, metrics)
