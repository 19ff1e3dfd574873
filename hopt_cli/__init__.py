"""hopt: population based training with ROMUL, coordinated through one shared directory."""
from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["Experiment", "replay", "run"]


def __getattr__(name: str) -> Any:
    """`hopt_cli.Experiment`, `hopt_cli.run` and `hopt_cli.replay`, imported on first use so that
    `import hopt_cli` stays cheap."""
    if name == "Experiment":
        from hopt_cli.experiment import Experiment

        return Experiment
    if name == "run":
        from hopt_cli.launch import run

        return run
    if name == "replay":
        from hopt_cli.retrain import replay

        return replay
    raise AttributeError(f"module 'hopt_cli' has no attribute {name!r}")
