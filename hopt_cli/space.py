"""The search space: hyperparameters encoded to and from the unit cube, where policies work.

`float` maps linearly, `log` (and `int` with `log: true`) on the log scale, `int` decodes by rounding,
`choice` keeps an index at the centre of its cell. Decoding clips into [0, 1] first, so no policy can
ever produce a value outside the recipe's `[low, high]`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hopt_cli.errors import RecipeError

KINDS = ("float", "log", "int", "choice")
_KEYS = {
    "float": {"type", "low", "high", "init"},
    "log": {"type", "low", "high", "init"},
    "int": {"type", "low", "high", "init", "log"},
    "choice": {"type", "values", "init"},
}


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its kind, its bounds (or values) and the box the population starts in."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    values: tuple[Any, ...] = ()
    init: tuple[Any, ...] | None = None

    @property
    def is_choice(self) -> bool:
        return self.kind == "choice"

    def encode(self, value: Any) -> float:
        """Value → coordinate in [0, 1]."""
        if self.is_choice:
            return (self.values.index(value) + 0.5) / len(self.values)
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def decode(self, u: float) -> Any:
        """Coordinate → value; clips into [0, 1] so the result is always inside the bounds."""
        u = min(max(float(u), 0.0), 1.0)
        if self.is_choice:
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        if self.kind == "int":
            return int(min(max(round(value), self.low), self.high))
        return min(max(value, self.low), self.high)

    def init_box(self) -> tuple[float, float]:
        """The part of [0, 1] the initial population is drawn from (numeric kinds)."""
        if self.init is None or self.is_choice:
            return 0.0, 1.0
        return self.encode(self.init[0]), self.encode(self.init[1])

    def sample_init(self, rng: np.random.Generator) -> float:
        """A coordinate drawn uniformly from the init box (for a choice: among its init values)."""
        if self.is_choice:
            allowed = self.init if self.init is not None else self.values
            return self.encode(allowed[rng.integers(len(allowed))])
        lo, hi = self.init_box()
        return float(rng.uniform(lo, hi))

    def sample_uniform(self, rng: np.random.Generator) -> float:
        """A coordinate drawn uniformly over the whole range (for a choice: among all values)."""
        if self.is_choice:
            return (rng.integers(len(self.values)) + 0.5) / len(self.values)
        return float(rng.random())


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of hyperparameters; coordinates are numpy vectors in that order."""

    params: tuple[Param, ...]

    @property
    def dim(self) -> int:
        return len(self.params)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def choice_mask(self) -> np.ndarray:
        return np.array([p.is_choice for p in self.params], dtype=bool)

    def encode(self, hparams: Mapping[str, Any]) -> np.ndarray:
        return np.array([p.encode(hparams[p.name]) for p in self.params], dtype=float)

    def decode(self, u: np.ndarray | list[float]) -> dict[str, Any]:
        return {p.name: p.decode(x) for p, x in zip(self.params, u)}

    def sample_init(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([p.sample_init(rng) for p in self.params], dtype=float)

    def sample_uniform(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([p.sample_uniform(rng) for p in self.params], dtype=float)

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    @classmethod
    def from_recipe(cls, spec: Any) -> SearchSpace:
        """Validate the recipe's `space` mapping; a wrong entry raises RecipeError naming its key."""
        if not isinstance(spec, Mapping) or not spec:
            raise RecipeError("space", "must be a non-empty mapping of hyperparameter name to its spec")
        return cls(tuple(_parse_param(str(name), entry) for name, entry in spec.items()))

    def to_recipe(self) -> dict[str, dict[str, Any]]:
        """The resolved spec, as written into experiment.yaml."""
        return {p.name: _param_spec(p) for p in self.params}


def _param_spec(p: Param) -> dict[str, Any]:
    if p.is_choice:
        spec: dict[str, Any] = {"type": "choice", "values": list(p.values)}
    else:
        spec = {"type": p.kind, "low": p.low, "high": p.high}
        if p.kind == "int":
            spec["log"] = p.log
    if p.init is not None:
        spec["init"] = list(p.init)
    return spec


def _parse_param(name: str, entry: Any) -> Param:
    key = f"space.{name}"
    if not name.isidentifier():
        raise RecipeError(key, "a hyperparameter name must be a Python identifier (letters, digits, _)")
    if not isinstance(entry, Mapping):
        raise RecipeError(key, "must be a mapping such as {type: log, low: 1.0e-4, high: 1.0}")
    kind = entry.get("type")
    if kind not in KINDS:
        raise RecipeError(f"{key}.type", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    unknown = sorted(set(entry) - _KEYS[kind])
    if unknown:
        raise RecipeError(f"{key}.{unknown[0]}", f"unknown key for type {kind} (allowed: {', '.join(sorted(_KEYS[kind]))})")
    if kind == "choice":
        return _parse_choice(name, key, entry)
    return _parse_numeric(name, key, kind, entry)


def _parse_choice(name: str, key: str, entry: Mapping[str, Any]) -> Param:
    values = entry.get("values")
    if not isinstance(values, list) or not values:
        raise RecipeError(f"{key}.values", "must be a non-empty list")
    distinct = all(a != b for i, a in enumerate(values) for b in values[i + 1:])
    if any(isinstance(v, (dict, list)) for v in values) or not distinct:
        raise RecipeError(f"{key}.values", "must hold distinct plain values (strings, numbers, booleans; "
                                           "note that 1, 1.0 and true are equal)")
    init = entry.get("init")
    if init is not None:
        if not isinstance(init, list) or not init or any(v not in values for v in init):
            raise RecipeError(f"{key}.init", "must be a non-empty list of some of the values")
        init = tuple(init)
    return Param(name, "choice", values=tuple(values), init=init)


def _number(key: str, value: Any) -> float:
    """A finite number; also accepts strings such as '1e-4', which YAML leaves unparsed."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        raise RecipeError(key, f"must be a finite number (got {value!r})")
    return number


def _parse_numeric(name: str, key: str, kind: str, entry: Mapping[str, Any]) -> Param:
    for bound in ("low", "high"):
        if bound not in entry:
            raise RecipeError(f"{key}.{bound}", "is required")
    low, high = _number(f"{key}.low", entry["low"]), _number(f"{key}.high", entry["high"])
    if low >= high:
        raise RecipeError(key, f"low must be below high (got low={low:g}, high={high:g})")
    log = kind == "log" or bool(entry.get("log", False))
    if not isinstance(entry.get("log", False), bool):
        raise RecipeError(f"{key}.log", f"must be true or false (got {entry['log']!r})")
    if log and low <= 0:
        raise RecipeError(f"{key}.low", f"must be > 0 on a log scale (got {low:g})")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise RecipeError(key, f"low and high of an int must be whole numbers (got {low:g}, {high:g})")
    init = _parse_init(f"{key}.init", entry.get("init"), low, high)
    if kind == "int":
        low, high = int(low), int(high)
    return Param(name, kind, low=low, high=high, log=log, init=init)


def _parse_init(key: str, init: Any, low: float, high: float) -> tuple[float, float] | None:
    if init is None:
        return None
    if not isinstance(init, list) or len(init) != 2:
        raise RecipeError(key, "must be a list [low, high]")
    a, b = _number(key, init[0]), _number(key, init[1])
    if not low <= a < b <= high:
        raise RecipeError(key, f"must satisfy low <= init[0] < init[1] <= high (got [{a:g}, {b:g}] in [{low:g}, {high:g}])")
    return a, b
