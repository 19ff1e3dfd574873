"""What the benchmarks share: the repository, the scratch folder for simulated checkpoints, the toys' recipes."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import TOYS
from hopt_cli.recipe import Recipe, load_recipe

REPO = Path(__file__).resolve().parent.parent
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None  # checkpoints in memory: 5x faster than disk


def toy_recipe(toy: str, seed: int, intervals: int, population: int) -> Recipe:
    """The toy's recipe from recipes/, at this seed and size."""
    recipe = load_recipe(REPO / TOYS[toy].recipe)
    return dataclasses.replace(recipe, seed=seed, intervals=intervals, population=population)


def key_values(items: list[str]) -> dict[str, Any]:
    """`--romul KEY=VALUE ...` as settings, each value read as YAML (so 0.8 is a number, true a bool); ValueError
    names an item that is not one."""
    settings = {}
    for item in items:
        key, equals, value = item.partition("=")
        try:
            settings[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            equals = ""
        if not (key and equals):
            raise ValueError(f"{item!r} is not KEY=VALUE with a YAML value")
    return settings
