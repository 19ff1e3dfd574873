"""Python trainables in a child process, so that an interval can be killed without killing the worker.

`make_trainable` gives a worker the recipe's trainable as it must run: the function itself, a command,
or, when the recipe sets `interval_timeout`, the function in such a child. Then an interval that runs
longer is killed and fails, and a stop request (a stop signal, or our lease taken away) abandons the
interval at once instead of waiting for the trainable to look at `should_stop()`. A crash of the
trainable (segfault, out of memory) becomes a failed interval too. So does a CUDA error that leaves the
process's GPU context unusable (an illegal memory access, a device-side assert): then the child is
replaced, since every later CUDA call in it would fail as well.

One child per worker, started at the first interval and reused, so an interval costs one round trip
over a socket (well under a millisecond); a killed child is replaced at the next interval. The child
dies with the worker (PR_SET_PDEATHSIG) and ignores the stop signals the worker handles: the worker
decides when it ends. Only the context's plain fields cross the socket (pickled: a private socket
between two processes of ours, never a file); the child's `should_stop()` is always false, since an interval
that must stop is killed rather than asked.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import fields
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NoReturn

import cloudpickle

from hopt_cli.errors import HoptError
from hopt_cli.signals import CHILD_IGNORES
from hopt_cli.trainable import CommandTrainable, Context, IntervalError, exit_message, load_trainable

if TYPE_CHECKING:  # only for the annotation: the child process imports no recipe
    from hopt_cli.recipe import Recipe

POLL_SECONDS = 0.05
PICKLED = "-"  # the child's trainable argument when the function itself comes pickled over the socket
_PR_SET_PDEATHSIG = 1
POISONED_EXIT = 3  # the exit status of a worker that stopped after such a CUDA error in its own process
_STICKY = ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "CUDNN_STATUS", "device-side assert")


def poisons_process(error: str) -> bool:
    """Whether an interval's error is a CUDA error after which every CUDA call of its process fails.

    Running out of GPU memory is no such error: the memory is freed and the process can go on."""
    return any(marker in error for marker in _STICKY) and "out of memory" not in error


class IsolatedTrainable:
    """Calls `module:function` in a child process, killing it on timeout or when the interval must stop.

    A callable instead of a name reaches the child pickled by value (cloudpickle), as `hopt_cli.run()`
    hands one to its workers: a function of a script or notebook has no name the child could import."""

    def __init__(self, trainable: str | Callable[[Context], Any], timeout: float, cwd: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.trainable = trainable
        self._pickled = None if isinstance(trainable, str) else cloudpickle.dumps(trainable)
        self.timeout = timeout
        self.cwd = cwd
        self.env = env
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def __call__(self, ctx: Context) -> Any:
        conn = self._connection()
        started = time.monotonic()
        try:
            conn.send({f.name: getattr(ctx, f.name) for f in fields(ctx) if f.name != "should_stop"})
        except OSError:  # it died between intervals
            self._died()
        while not conn.poll(POLL_SECONDS):
            if ctx.should_stop():
                self.close()
                raise IntervalError("stopped: the interval was abandoned")
            if time.monotonic() - started > self.timeout:
                self.close()
                raise IntervalError(f"the interval ran longer than interval_timeout ({self.timeout:g} s) "
                                    "and was killed")
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            self._died()
        if kind == "error":
            if poisons_process(value):  # its CUDA context is unusable: the next interval gets a fresh child
                self.close()
            raise IntervalError(value)
        return value

    def _connection(self) -> Connection:
        if self._process is not None and self._process.poll() is not None:  # died while idle: replace it
            self.close()
        if self._conn is None:
            ours, theirs = socket.socketpair()
            with theirs:
                name = PICKLED if self._pickled is not None else str(self.trainable)
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "hopt_cli.isolation", str(theirs.fileno()), name, str(os.getpid())],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, cwd=self.cwd, env=self.env)
            self._conn = Connection(ours.detach())
            if self._pickled is not None:
                self._conn.send_bytes(self._pickled)
        return self._conn

    def _died(self) -> NoReturn:
        status = self._process.wait() if self._process else None
        self.close()
        raise IntervalError(f"the trainable's process died ({describe_exit(status)})")

    def close(self) -> None:
        """Kill the child (if any); the next interval starts a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            self._process.wait()
            self._process = None


def describe_exit(status: int | None) -> str:
    """How a process ended, from its Popen.returncode: `killed by SIGKILL`, `exit status 3`."""
    if status is None:
        return "no status"
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def die_with_parent(parent: int, signum: signal.Signals) -> None:
    """Have the kernel send us `signum` when our parent dies, however it dies (Linux; elsewhere a no-op);
    exit at once if it died before we asked."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:
        os._exit(1)


def make_trainable(recipe: Recipe) -> Callable[[Context], Any]:
    """The recipe's trainable; with `interval_timeout`, a Python one runs in a killable child process."""
    if recipe.command is not None:
        return CommandTrainable(recipe.command, timeout=recipe.interval_timeout)
    function = load_trainable(recipe.trainable, None)  # import errors surface here, before any claim
    if recipe.interval_timeout is None:
        return function
    return IsolatedTrainable(str(recipe.trainable), recipe.interval_timeout)


def serve(fd: int, trainable: str, parent: int) -> None:
    """The child's loop: receive a context, run one interval, send back ("ok", result) or ("error", text)."""
    die_with_parent(parent, signal.SIGKILL)  # the worker decides when we end, and it may die any way
    for signum in CHILD_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        function = cloudpickle.loads(conn.recv_bytes()) if trainable == PICKLED else load_trainable(trainable, None)
        broken = None
    except HoptError as err:
        function, broken = None, str(err)
    except Exception as err:  # unpickling imports what the function refers to, and that can fail in any way
        function, broken = None, f"cannot load the trainable in its process ({type(err).__name__}: {err})"
    while True:
        try:
            values = conn.recv()
        except EOFError:
            return
        if function is None:
            conn.send(("error", broken))
            continue
        try:
            reply = ("ok", function(Context(**values)))
        except SystemExit as exit_:  # the child lives on: sys.exit in a trainable is a failed interval
            reply = ("error", exit_message(exit_))
        except Exception as err:  # user code: every failure is reported, the child lives on
            print(f"member {values['member']} interval {values['interval']}: the trainable raised\n"
                  f"{traceback.format_exc().rstrip()}", file=sys.stderr, flush=True)  # our stderr is the worker's log
            reply = ("error", f"{type(err).__name__}: {err}")
        try:
            conn.send(reply)
        except Exception as err:  # the result could not be pickled
            conn.send(("error", f"the trainable returned something that cannot be sent back ({err})"))


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
