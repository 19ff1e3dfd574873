"""What the benchmarks share: the repository, the scratch folder for simulated checkpoints, the toys' recipes."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from benchmarks.report import TOYS
from hopt_cli.recipe import Recipe, load_recipe

REPO = Path(__file__).resolve().parent.parent
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None  # checkpoints in memory: 5x faster than disk


def toy_recipe(toy: str, seed: int, intervals: int, population: int) -> Recipe:
    """The toy's recipe from recipes/, at this seed and size."""
    recipe = load_recipe(REPO / TOYS[toy].recipe)
    return dataclasses.replace(recipe, seed=seed, intervals=intervals, population=population)
