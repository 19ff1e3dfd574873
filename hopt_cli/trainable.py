"""The trainable contract: what one interval of training receives, and how hopt runs it.

A trainable is a Python callable `f(ctx) -> float | dict` or a shell command; it knows nothing of
the store or the policies. It resumes from `ctx.parent` (None for a fresh start), writes its new
checkpoint into `ctx.out`, and returns the score or a dict of metrics holding the objective metric.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import numbers
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hopt_cli.errors import HoptError

log = logging.getLogger("hopt")


def never() -> bool:
    """A stop request that never comes: the default of `Context.should_stop`."""
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
    should_stop: Callable[[], bool] = field(default=never, compare=False)


@dataclass(frozen=True)
class Outcome:
    """What one interval produced: a finite score and its metrics, or the error that failed it."""

    score: float | None
    metrics: dict[str, Any]
    error: str | None = None
    dropped: tuple[str, ...] = ()  # metrics that were no scalars and are not recorded


class IntervalError(Exception):
    """An interval failed in a way its message already describes in full (no exception type needed)."""


class CommandFailed(IntervalError):
    """A command trainable exited non-zero, ran past its timeout, or wrote no usable metrics.json."""


TERM_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a command must stop
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_settings(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The thread variables set in `env` (os.environ by default): how many threads torch and BLAS use,
    and so in which order they sum, which a replay must reproduce to get the same floats."""
    env = os.environ if env is None else env
    return {name: env[name] for name in THREAD_VARIABLES if name in env}


def environment_with(threads: Mapping[str, str] | None) -> dict[str, str] | None:
    """Our environment with exactly these thread settings (None: unknown, so ours unchanged)."""
    if threads is None:
        return None
    return {**{k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}, **threads}


def with_our_python(env: Mapping[str, str] | None) -> dict[str, str]:
    """`env` (ours where None) with the folder of hopt's interpreter first on PATH, so that a command's
    `python` is the one hopt runs in: its virtual environment's, activated or not, under SLURM too."""
    env = dict(os.environ if env is None else env)
    ours = os.path.dirname(sys.executable)
    rest = [folder for folder in env.get("PATH", os.defpath).split(os.pathsep) if folder != ours]
    return {**env, "PATH": os.pathsep.join([ours, *rest])}


@dataclass(frozen=True)
class CommandTrainable:
    """Runs a shell command per interval; placeholders come from hparams and the context.

    The command runs in its own process group, in `cwd` with `env` (ours where None) and hopt's own
    environment first on PATH (with_our_python). A stop request
    (should_stop) or `timeout` sends the group SIGTERM, then SIGKILL after TERM_GRACE seconds; a
    timed-out interval fails.
    """

    template: str
    timeout: float | None = None
    poll_seconds: float = 0.2
    cwd: str | None = None
    env: Mapping[str, str] | None = None

    def render(self, ctx: Context) -> str:
        values = {**ctx.hparams, "parent": ctx.parent or "", "out": ctx.out, "interval": ctx.interval,
                  "steps": ctx.steps, "member": ctx.member, "seed": ctx.seed}
        return self.template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})

    def __call__(self, ctx: Context) -> dict[str, Any]:
        process = subprocess.Popen(self.render(ctx), shell=True, start_new_session=True, cwd=self.cwd,
                                   env=with_our_python(self.env), stdout=sys.stderr, stderr=subprocess.PIPE, text=True,
                                   errors="replace")
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


def load_trainable(trainable: str | None, command: str | None, project: str | None = None) -> Callable[[Context], Any]:
    """The recipe's trainable, imported from `project` (default: the current directory); a module or
    function that cannot be imported is a HoptError."""
    if command is not None:
        return CommandTrainable(command, cwd=project)
    module_name, _, function_name = str(trainable).partition(":")
    if module_name == "__main__":
        raise HoptError(f"worker: {trainable} was defined in a script or notebook and given to hopt_cli.run(); "
                        f"resume with hopt_cli.run(..., trainable={function_name}), or move it into a module")
    where = project or os.getcwd()
    if where not in sys.path:
        sys.path.insert(0, where)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import can fail in any way; the user needs to see how
        raise HoptError(f"worker: cannot import {module_name} ({type(err).__name__}: {err}); "
                        f"check the module name and that it is importable from {where}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise HoptError(f"worker: {module_name} has no function {function_name}; "
                        "check the name after the ':' in the recipe's worker") from None
    return function


def run_interval(trainable: Callable[[Context], Any], ctx: Context, metric: str) -> Outcome:
    """Run one interval; any exception, sys.exit, bad score or missing metric becomes a failed Outcome.

    The journal gets a one-line error; a Python exception's traceback goes to the worker's log.
    """
    resuming = f" (resuming from {ctx.parent})" if ctx.parent else ""
    try:
        result = trainable(ctx)
    except SystemExit as exit_:  # e.g. argparse inside a wrapped main(): the worker must not end with it
        return Outcome(None, {}, exit_message(exit_) + resuming)
    except Exception as err:  # the trainable is user code: every failure is a failed interval
        if isinstance(err, IntervalError):
            return Outcome(None, {}, str(err) + resuming)
        log.error("member %d interval %d: the trainable raised\n%s", ctx.member, ctx.interval,
                  traceback.format_exc().rstrip())
        return Outcome(None, {}, f"{type(err).__name__}: {err}{resuming}")
    if result is None:
        return Outcome(None, {}, f"the trainable returned None; return the score ({metric}) or a dict of metrics "
                                 f"holding {metric!r}")
    pairs = result.items() if isinstance(result, Mapping) else [(metric, result)]
    returned = {str(key): value for key, value in pairs}
    metrics, dropped = scalar_metrics(returned)
    score = metrics.get(metric)
    if metric in dropped:
        return Outcome(None, metrics, f"metric {metric!r} is not a scalar: {_kind(returned[metric])}; return a number "
                                      "(a tensor or array of one element is one)", dropped)
    if score is None:
        got = ", ".join(map(str, [*metrics, *dropped])) or "none"
        return Outcome(None, metrics, f"metric {metric!r} missing from the result (got {got})", dropped)
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        return Outcome(None, metrics, f"metric {metric!r} is not a number (got {score!r})", dropped)
    if not math.isfinite(score):
        return Outcome(None, metrics, f"metric {metric!r} is {score}", dropped)
    return Outcome(float(score), metrics, None, dropped)


def exit_message(exit_: SystemExit) -> str:
    """A failed interval's error for a trainable that called sys.exit (or raised SystemExit)."""
    code = "" if exit_.code is None else repr(exit_.code)
    return f"the trainable called sys.exit({code}); raise an exception or return the score instead"


def scalar_metrics(metrics: Mapping[Any, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(the metrics as plain Python scalars, names of the values that are no scalars).

    NumPy and torch scalars (and one-element arrays) become Python numbers; strings and bools stay;
    anything else (an array, a list, a tensor of many values) is left out and named.
    """
    clean: dict[str, Any] = {}
    dropped = []
    for key, value in metrics.items():
        if isinstance(value, (str, numbers.Real)):
            clean[str(key)] = value.item() if hasattr(value, "item") else value
        elif hasattr(value, "item") and _one(value):
            clean[str(key)] = value.item()
        else:
            dropped.append(str(key))
    return clean, tuple(dropped)


def _kind(value: Any) -> str:
    """What a value is, for a message: `a torch.Tensor of shape (3,)`, `a list of 2 values`, `None`."""
    if value is None:
        return "None"
    kind = type(value).__qualname__ if type(value).__module__ == "builtins" else \
        f"{type(value).__module__}.{type(value).__qualname__}"
    if hasattr(value, "shape"):
        return f"a {kind} of shape {tuple(value.shape)}"
    if isinstance(value, Sized):
        return f"a {kind} of {len(value)} values"
    return f"a {kind}"


def _one(value: Any) -> bool:
    """Whether an array-like holds exactly one element (torch tensors have numel, NumPy size)."""
    count = value.numel() if hasattr(value, "numel") else getattr(value, "size", None)
    return count == 1
