"""The two ways a test runs `hopt`: in this process through click's CliRunner (arguments, output, exit
status), or as a real process (signals, workers, exit paths, environment)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from click.testing import CliRunner, Result

from hopt_cli.cli import cli
from tests.conftest import REPO


def invoke(*args: str, input: str | None = None) -> Result:
    """`hopt ARGS` in this process: fast, for what the CLI parses and prints."""
    return CliRunner().invoke(cli, list(args), input=input)


def hopt(*args: str, cwd: Path = REPO, env: Mapping[str, str] | None = None, timeout: float = 300,
         **kwargs) -> subprocess.CompletedProcess:
    """`hopt ARGS` as a real process run from `cwd`, with `env` over this process's environment."""
    return subprocess.run([sys.executable, "-m", "hopt_cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, **kwargs)
