"""Every recipe shown in the README and docs/ is valid and trains one interval as written."""
from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from hopt_cli.recipe import Recipe
from hopt_cli.trainable import Context, load_trainable, run_interval
from tests.conftest import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def recipe_blocks() -> list[tuple[str, dict]]:
    """(where, parsed block) of each YAML block that is a recipe (it has a search space)."""
    found = []
    for document in DOCUMENTS:
        for number, match in enumerate(BLOCK.finditer(document.read_text()), 1):
            text = match.group(1)
            if re.search(r"^space:", text, re.MULTILINE):
                found.append((f"{document.relative_to(REPO)} yaml block {number}", yaml.safe_load(text)))
    return found


BLOCKS = recipe_blocks()


def test_the_docs_show_recipes():
    assert any(where.startswith("README.md") for where, _ in BLOCKS)


@pytest.mark.parametrize("block", [data for _, data in BLOCKS], ids=[where for where, _ in BLOCKS])
def test_a_recipe_in_the_docs_validates_and_trains_an_interval(block, tmp_path, monkeypatch):
    monkeypatch.setenv("HOPT_DEVICE", "cpu")
    recipe = Recipe.from_dict(block)
    trainable = load_trainable(recipe.trainable, recipe.command)
    hparams = recipe.space.decode(recipe.space.sample_init(np.random.default_rng(0)))
    (tmp_path / "out").mkdir()
    ctx = Context(hparams, None, tmp_path / "out", 0, min(recipe.steps, 5), 0, 0)

    outcome = run_interval(trainable, ctx, recipe.objective.metric)

    assert outcome.error is None, outcome.error
