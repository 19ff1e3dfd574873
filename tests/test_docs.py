"""The README and docs/ work as written: every recipe trains, every Python example runs, every `hopt` command
line parses, every link resolves, and the reference pages name every command, option and recipe key.

The rules a page follows:
- a ```yaml block with a top-level `space:` is a recipe: it validates and trains one interval; one whose
  first line is `# recipes/NAME.yaml` is that shipped file, verbatim;
- a ```python block runs as a script, in a scratch directory that holds a small finished experiment at
  `runs/digits` (the walk-through's); a fragment says so in its fence: ```python no-run;
- in a ```bash block, every command that starts with `hopt` parses with hopt's own options.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest

import hopt_cli
from hopt_cli.cli import cli
from hopt_cli.errors import RecipeError
from hopt_cli.policies import NAMES, resolve
from hopt_cli.recipe import Recipe, RecipeLoader
from hopt_cli.space import KINDS
from hopt_cli.trainable import Context, load_trainable, run_interval
from tests.conftest import REPO, toy_recipe

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\n?", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it is, its fence's info string (e.g. `python no-run`), its text."""

    where: str
    info: str
    text: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""


def blocks(language: str) -> list[Block]:
    """Every fenced block of this language in the README and docs/, in page order."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            block = Block(f"{document.relative_to(REPO)}:{line}", match.group(1).strip(), match.group(2))
            if block.language == language:
                found.append(block)
    return found


def prose(document: Path) -> str:
    """A page without its fenced blocks: where its headings and links are."""
    return FENCE.sub("", document.read_text())


def ids(found: list[Block]) -> list[str]:
    return [block.where for block in found]


RECIPES = [b for b in blocks("yaml") if re.search(r"^space:", b.text, re.MULTILINE)]
SHIPPED = [b for b in blocks("yaml") if re.match(r"# (recipes/[\w.-]+\.yaml)\n", b.text)]
PYTHON = [b for b in blocks("python") if "no-run" not in b.info.split()]
BASH = blocks("bash")


def test_the_docs_show_recipes_examples_and_commands():
    assert any(b.where.startswith("README.md") for b in PYTHON + BASH)
    assert RECIPES and SHIPPED and PYTHON and BASH


@pytest.mark.parametrize("block", RECIPES, ids=ids(RECIPES))
def test_a_recipe_in_the_docs_validates_and_trains_an_interval(block, tmp_path, monkeypatch):
    monkeypatch.setenv("HOPT_DEVICE", "cpu")
    recipe = Recipe.from_dict(RecipeLoader.read(block.text))
    trainable = load_trainable(recipe.trainable, recipe.command)
    hparams = recipe.space.decode(recipe.space.sample_init(np.random.default_rng(0)))
    (tmp_path / "out").mkdir()
    ctx = Context(hparams, None, tmp_path / "out", 0, min(recipe.steps, 5), 0, 0)

    outcome = run_interval(trainable, ctx, recipe.objective.metric)

    assert outcome.error is None, outcome.error


@pytest.mark.parametrize("block", SHIPPED, ids=ids(SHIPPED))
def test_a_recipe_shown_as_a_shipped_file_is_that_file(block):
    name = block.text.splitlines()[0].removeprefix("# ")
    assert block.text.split("\n", 1)[1] == (REPO / name).read_text()


@pytest.fixture(scope="module")
def finished_experiment(tmp_path_factory) -> Path:
    """A small finished experiment for the Python examples that read one (a toy standing in for the digits)."""
    root = tmp_path_factory.mktemp("walkthrough") / "digits"
    hopt_cli.run(toy_recipe(population=10, intervals=3), root, workers=2)
    return root


@pytest.mark.parametrize("block", PYTHON, ids=ids(PYTHON))
def test_a_python_example_runs_as_written(block, finished_experiment, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits").symlink_to(finished_experiment)
    (tmp_path / "example.py").write_text(block.text)

    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "HOPT_DEVICE": "cpu"}, timeout=300)

    assert done.returncode == 0, done.stderr


def hopt_commands(block: Block) -> list[list[str]]:
    """The arguments of every `hopt` command in a shell block (after `srun ...` or `&&` too)."""
    commands = []
    for line in block.text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words, segment = list(lexer), []
        for word in [*words, ";"]:
            if word not in SEPARATORS:
                segment.append(word)
                continue
            if "hopt" in segment:
                commands.append(segment[segment.index("hopt") + 1:])
            segment = []
    return commands


COMMANDS = [(f"{block.where} hopt {' '.join(args)}", args) for block in BASH for args in hopt_commands(block)]


@pytest.mark.parametrize("args", [args for _, args in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_a_hopt_command_in_the_docs_parses(args):
    assert args and args[0] in cli.commands, f"no command hopt {args[:1]}"
    command = cli.commands[args[0]]

    command.make_context(f"hopt {args[0]}", args[1:])  # raises click's UsageError on what hopt refuses


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", prose(document), re.MULTILINE)}


LINKS = [(document, target) for document in DOCUMENTS for target in LINK.findall(prose(document))
         if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("document, target", LINKS,
                         ids=[f"{d.relative_to(REPO)} -> {t}" for d, t in LINKS])
def test_a_link_in_the_docs_points_at_what_exists(document, target):
    path, _, anchor = target.partition("#")
    linked = (document.parent / path).resolve() if path else document

    assert linked.exists(), f"{target}: no such file"
    if anchor:
        assert anchor in anchors(linked), f"{target}: no heading with that anchor"


def section(document: Path, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    text = prose(document)
    match = re.search(rf"^(#+) {re.escape(heading)}$", text, re.MULTILINE)
    assert match, f"{document.name}: no heading {heading}"
    end = re.compile(rf"^#{{1,{len(match.group(1))}}} ", re.MULTILINE).search(text, match.end())
    return text[match.end():end.start() if end else len(text)]


@pytest.mark.parametrize("name", sorted(n for n, c in cli.commands.items() if not c.hidden))
def test_the_command_reference_names_every_option(name):
    text = section(REPO / "docs" / "cli.md", f"`hopt {name}`")
    options = [o for p in cli.commands[name].params if isinstance(p, click.Option) and not p.hidden
               for o in p.opts + p.secondary_opts]

    assert [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)] == []


def allowed(spec: dict) -> list[str]:
    """The keys a recipe (or a hyperparameter's spec) allows, as the error for an unknown one lists them."""
    with pytest.raises(RecipeError) as refused:
        Recipe.from_dict(spec)
    return re.search(r"allowed: ([^)]*)\)", refused.value.problem).group(1).split(", ")


def test_the_recipe_reference_names_every_key():
    table = section(REPO / "docs" / "recipes.md", "Every key")
    keys = allowed({**toy_recipe(), "no_such_key": 1})

    assert [k for k in keys if f"| `{k}` |" not in table] == []


@pytest.mark.parametrize("kind", KINDS)
def test_the_recipe_reference_names_every_key_of_a_hyperparameter(kind):
    table = section(REPO / "docs" / "recipes.md", "`space`: the hyperparameters")
    row = next(line for line in table.splitlines() if line.startswith(f"| `{kind}` |"))
    keys = allowed({**toy_recipe(), "space": {"x": {"type": kind, "no_such_key": 1}}})

    assert [k for k in keys if k != "type" and f"`{k}`" not in row] == []


@pytest.mark.parametrize("policy", NAMES)
def test_the_recipe_reference_lists_every_policy_setting_with_its_default(policy):
    table = section(REPO / "docs" / "recipes.md", "`policy`")
    row = next(line for line in table.splitlines() if line.startswith(f"| `{policy}` |"))

    assert [f"{k} {v}" for k, v in resolve(policy).items() if f"`{k}` {v}" not in row] == []
