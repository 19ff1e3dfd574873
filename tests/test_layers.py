"""DESIGN.md's layers, read from the source: who may import whom, directly and through every import a module
makes when it is loaded, and no import loop anywhere in the tree."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, toy_recipe

TREES = ("hopt_cli", "workers", "benchmarks", "tests")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for tree in TREES for p in sorted((REPO / tree).rglob("*.py"))}


def _imported(module: str, alias: str) -> str:
    """The module an import names: `from pkg import sub` imports pkg.sub where that is a module, else pkg."""
    return f"{module}.{alias}" if f"{module}.{alias}" in MODULES else module


def imports_of(module: str) -> set[str]:
    """Every module `module` imports, at its top or inside a function, absolute imports only."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {_imported(node.module, alias.name) for alias in node.names}
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _at_import(body: list[ast.stmt]) -> list[ast.AST]:
    """The nodes of `body` that run when their module is imported: not function bodies (they run when called,
    as `hopt_cli.__getattr__`'s lazy exports do) and not `if TYPE_CHECKING:` blocks (they never run)."""
    found: list[ast.AST] = []
    for statement in body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(statement, ast.If) and ast.unparse(statement.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            found += _at_import(statement.orelse)
            continue
        found.append(statement)
        for field in ("body", "orelse", "finalbody", "handlers"):
            found += _at_import(getattr(statement, field, []))
    return found


def loaded_at_import(module: str) -> set[str]:
    """The modules of the tree that importing `module` imports itself (at its top, absolute imports only)."""
    found = set()
    for node in _at_import(ast.parse(MODULES[module].read_text()).body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {_imported(node.module, alias.name) for alias in node.names}
    return found & MODULES.keys()


LOADS = {m: loaded_at_import(m) for m in MODULES}


def loaded(module: str) -> set[str]:
    """Every module of the tree that importing `module` loads: what it imports, what those import, and so on;
    importing `a.b.c` runs `a` and `a.b` (their packages' __init__) first."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo += [*LOADS[current], *(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in MODULES)]
    return seen - {module}


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _cycles() -> list[list[str]]:
    """Strongly connected components of the import graph with more than one module, or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(GRAPH[v] & MODULES.keys()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in GRAPH[v]:
                found.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


def test_the_reader_sees_the_tree():
    assert {"hopt_cli.cli", "hopt_cli.store", "hopt_cli.policies.romul", "workers.digits", "benchmarks.families",
            "tests.test_layers"} <= MODULES.keys()
    assert "hopt_cli.policies.common" in GRAPH["hopt_cli.policies.romul"]
    assert "hopt_cli.trainable" in GRAPH["workers.toys"]


def test_no_import_loop_anywhere_in_the_tree():
    assert _cycles() == []


# (layer, modules, what they must not import, why)
RULES = [
    ("policies", "hopt_cli.policies", ("hopt_cli.store", "hopt_cli.worker", "hopt_cli.planning", "hopt_cli.cli",
                                      "hopt_cli.simulator", "hopt_cli.trainable", "os", "time", "random"),
     "policies are pure: no I/O, no clock, no global RNG"),
    ("store", "hopt_cli.store", ("hopt_cli.policies", "hopt_cli.planning", "hopt_cli.worker", "hopt_cli.cli"),
     "the store must not know how decisions are made"),
    ("trainables", "workers", ("hopt_cli.store", "hopt_cli.policies", "hopt_cli.worker", "hopt_cli.cli"),
     "trainables know the trainable contract only"),
    ("package", "hopt_cli", ("workers", "benchmarks", "tests"), "the package never reaches up into the tree"),
]
# worker loop and below: no ML framework (launch counts GPUs with torch, imported only for `--gpus all`)
FRAMEWORKS = ("torch", "lightning", "tensorflow", "jax")
FRAMEWORK_EXCEPTIONS = {("hopt_cli.launch", "torch")}


@pytest.mark.parametrize("layer, package, forbidden, why", RULES, ids=[r[0] for r in RULES])
def test_a_layer_imports_nothing_it_must_not(layer, package, forbidden, why):
    broken = sorted((m, i) for m in MODULES if _under(m, package) for i in GRAPH[m]
                    if any(_under(i, f) for f in forbidden))
    assert broken == [], why


# (layer, modules, what loading them must never load, why): the rules above, followed through every import
TRANSITIVE = [
    ("store", "hopt_cli.store", ("hopt_cli.policies", "hopt_cli.planning", "hopt_cli.worker", "hopt_cli.cli"),
     "the store must not know how decisions are made, not even through a module it imports"),
    ("trainables", "workers", ("hopt_cli.store", "hopt_cli.policies", "hopt_cli.worker", "hopt_cli.cli"),
     "a trainable loads the trainable contract only"),
]


@pytest.mark.parametrize("layer, package, forbidden, why", TRANSITIVE, ids=[r[0] for r in TRANSITIVE])
def test_a_layer_loads_nothing_it_must_not_through_any_import(layer, package, forbidden, why):
    broken = sorted((m, sorted(f for f in loaded(m) if any(_under(f, bad) for bad in forbidden)))
                    for m in MODULES if _under(m, package))
    assert [(m, found) for m, found in broken if found] == [], why


def test_loaded_follows_imports_and_packages_but_not_lazy_ones():
    assert "hopt_cli.recipe" in loaded("hopt_cli.store.locking")  # through hopt_cli/store/__init__.py
    assert "hopt_cli.policies.common" in loaded("hopt_cli.worker")  # worker -> policies -> romul -> common
    assert "hopt_cli.launch" not in loaded("hopt_cli.events")  # hopt_cli.__getattr__ imports it on first use only


def test_opening_an_experiment_loads_no_policy(tmp_path):
    """What the static rule says, seen in a real process: the store opens and reads an experiment (its recipe
    included) without loading the policies."""
    from hopt_cli.recipe import Recipe
    from hopt_cli.store import Store
    Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe()))
    script = ("import sys; from hopt_cli.store import Store; store = Store.open(sys.argv[1]); store.sync(); "
              "print(store.recipe.policy.name, sorted(m for m in sys.modules if m.startswith('hopt_cli.')))")

    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "exp")], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})

    assert done.returncode == 0, done.stderr
    policy, modules = done.stdout.split(" ", 1)
    assert policy == "romul" and "hopt_cli.store" in modules and "hopt_cli.policies" not in modules


# the modules that write to stdout or stderr themselves, and why each may
WRITERS = {
    "hopt_cli.cli": "the command line owns the terminal",
    "hopt_cli.cli.exports": "the command line's export commands",
    "hopt_cli.cli.options": "click options the commands share",
    "hopt_cli.cli.results": "the command line's commands that read an experiment",
    "hopt_cli.progress": "the progress line, which the CLI (or hopt_cli.run() without a `progress`) draws",
    "hopt_cli.doctor.probe": "a process of its own, answering its parent on stdout",
    "hopt_cli.isolation": "an isolated trainable's child process: a traceback into its worker's log",
    "hopt_cli.trainable": "a command's output, copied into its worker's log",
}


def _writes(module: str) -> bool:
    """Whether `module` prints, uses click, or writes to sys.stdout / sys.stderr."""
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "write" and ast.unparse(node.value) in ("sys.stdout",
                                                                                                    "sys.stderr"):
            return True
    return "click" in GRAPH[module]


def test_the_library_never_prints():
    assert sorted(m for m in MODULES if _under(m, "hopt_cli") and _writes(m)) == sorted(WRITERS)


def test_only_the_entry_point_imports_the_cli():
    outside = [m for m in MODULES if _under(m, "hopt_cli") and not _under(m, "hopt_cli.cli")]
    assert sorted(m for m in outside if "hopt_cli.cli" in GRAPH[m]) == ["hopt_cli.__main__"]


def test_the_package_knows_no_ml_framework():
    used = {(m, i.split(".")[0]) for m in MODULES if _under(m, "hopt_cli") for i in GRAPH[m]
            if i.split(".")[0] in FRAMEWORKS}
    assert used == FRAMEWORK_EXCEPTIONS
