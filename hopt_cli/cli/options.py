"""Options several `hopt` commands share."""
from __future__ import annotations

from pathlib import Path

import click

DIR = click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path),
                   help="The experiment directory (shared by every worker).")
