"""`hopt set`: the operational settings of a recipe, changed on a running experiment through the journal.

Only settings that say how the experiment is run may change: what it searches, measures and decides
(and so what a replay reproduces) stays as created. The changes are journaled (a `set` event); every
reader lays them over experiment.yaml's recipe with `overlay`, checked as a recipe is.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from hopt_cli.errors import HoptError
from hopt_cli.recipe import Recipe, RecipeLoader

SETTABLE = ("max_failures", "interval_timeout", "lease.timeout", "lease.heartbeat", "keep_best",
            "stop.metric", "stop.at_least", "stop.at_most", "stop.hours")
SECTIONS = ("stop",)  # set whole too: stop=null drops the stop rules, stop='{hours: 24}' replaces them
NULLABLE = ("interval_timeout", "stop")  # a recipe may leave these out, and so the keys under them
_DECIDED = "every decision made so far, and a replay of the best schedule, depends on it"
FIXED = {  # why a recipe key cannot change on a running experiment, and what to do instead
    "name": "it names the experiment; it cannot change",
    "seed": f"{_DECIDED}; start a new experiment in another --dir",
    "objective": f"{_DECIDED}; start a new experiment in another --dir",
    "space": f"{_DECIDED}; start a new experiment in another --dir",
    "policy": f"{_DECIDED}; start a new experiment in another --dir",
    "steps": f"{_DECIDED}; start a new experiment in another --dir",
    "worker": "every committed interval was trained by it; start a new experiment in another --dir",
    "command": "every committed interval was trained by it; start a new experiment in another --dir",
    "project": "every committed interval was trained there; start a new experiment in another --dir",
    "lock": "every worker must take the same lock, or two could claim at once; start a new experiment in another "
            "--dir",
    "population": "the budget grows through the journal with `hopt extend --dir D --population N`",
    "intervals": "the budget grows through the journal with `hopt extend --dir D --intervals N`",
}


def parse(assignments: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs as dotted keys and YAML values; a key that cannot change is a HoptError saying why."""
    if not assignments:
        raise HoptError(f"say what to change, e.g. hopt set --dir D max_failures=5 (settable: {', '.join(SETTABLE)})")
    settings: dict[str, Any] = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals or not key:
            raise HoptError(f"{assignment!r} is not KEY=VALUE; write e.g. max_failures=5")
        if key not in SETTABLE and key not in SECTIONS:
            top = key.split(".")[0]
            why = FIXED.get(top, "it is no recipe setting hopt set knows")
            raise HoptError(f"{key} cannot be changed on an existing experiment: {why} "
                            f"(settable: {', '.join(SETTABLE)})")
        try:
            value = RecipeLoader.read(text) if text else None
        except yaml.YAMLError:
            raise HoptError(f"{assignment!r}: the value is not valid YAML; write e.g. {key}=5") from None
        if value is None and key.split(".")[0] not in NULLABLE:
            raise HoptError(f"{key} needs a value (only {' and '.join(NULLABLE)} may be null); write e.g. {key}=5")
        settings[key] = value
    return settings


def overlay(recipe: Recipe, settings: Mapping[str, Any]) -> Recipe:
    """`recipe` with `settings` (dotted keys; None removes a key) in force, validated as a recipe is;
    RecipeError naming the key if they make it invalid."""
    if not settings:
        return recipe
    data = recipe.to_dict()
    for key, value in settings.items():
        *parents, name = key.split(".")
        section = data
        for parent in parents:
            section = section.setdefault(parent, {})
        if value is None:
            section.pop(name, None)
        else:
            section[name] = value
    if data.get("stop") == {}:
        del data["stop"]
    return Recipe.from_dict(data, stored=True)


def values(recipe: Recipe) -> dict[str, Any]:
    """The settable settings of `recipe`, each by its dotted key (None: not set)."""
    data = recipe.to_dict()
    found = {}
    for key in SETTABLE:
        section: Any = data
        for name in key.split("."):
            section = section.get(name) if isinstance(section, Mapping) else None
        found[key] = section
    return found


def touched(changed: Iterable[str]) -> list[str]:
    """The settable keys that the `changed` ones (keys or whole sections) set, in SETTABLE's order."""
    return [key for key in SETTABLE if any(key == c or key.startswith(f"{c}.") for c in changed)]
