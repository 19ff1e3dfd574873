"""The two ways a test runs `hopt`: in this process through click's CliRunner (arguments, output, exit
status), or as a real process (signals, workers, exit paths, environment)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from click.testing import CliRunner, Result

from hopt_cli import cli
from tests.conftest import REPO


class _Hopt:
    """The `hopt` entry point as CliRunner calls a command: errors become one line and an exit status there
    exactly as in the installed command, not click's exceptions."""

    name = "hopt"

    def main(self, args: Sequence[str], prog_name: str | None = None, **extra) -> None:
        cli.main(list(args))


def invoke(*args: str, input: str | None = None) -> Result:
    """`hopt ARGS` in this process: fast, for what the CLI parses and prints and the exit status it ends with."""
    return CliRunner().invoke(_Hopt(), list(args), input=input)  # type: ignore[arg-type]


def hopt(*args: str, cwd: Path = REPO, env: Mapping[str, str] | None = None, timeout: float = 300,
         **kwargs) -> subprocess.CompletedProcess:
    """`hopt ARGS` as a real process run from `cwd`, with `env` over this process's environment."""
    return subprocess.run([sys.executable, "-m", "hopt_cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, **kwargs)
