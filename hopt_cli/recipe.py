"""Recipes: the YAML that defines an experiment, validated whole before anything is written."""
from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hopt_cli.errors import HoptError, RecipeError
from hopt_cli.space import SearchSpace

if TYPE_CHECKING:  # only for the annotation: a stored recipe is read without the policies
    from hopt_cli.policies import Policy

FORMAT = 2  # of experiment.yaml; 2: journal events written through hopt_cli/events.py, keys unified
READABLE_FORMATS = (1, 2)  # an experiment of format 1 (hopt 0.1) is read, never written (store.Store.transaction)
CONTEXT_PLACEHOLDERS = ("parent", "out", "interval", "steps", "member", "seed")
_REQUIRED = {  # the placeholders every command needs, and why
    "parent": "{parent} is the checkpoint folder an interval continues from (empty for a fresh start), and without "
              "it no member ever resumes or copies a better one; pass it, e.g. --resume {parent}",
    "out": "{out} is the folder for the interval's checkpoint and metrics.json; pass it, e.g. --out {out}",
}
LOCK_KINDS = ("flock", "hardlink")
# ROMUL's ablation switches, which hopt once wrote into experiment.yaml (each true) among the policy settings:
# read as absent, so that such an experiment compares equal to its recipe resolved today
_WRITTEN_SWITCHES = ("wait", "equal_time", "robust", "rank_select", "adapt", "de_move")
MAX_POPULATION = 100_000  # measured: hopt status at 100,000 members takes 1.3 s and 165 MB
MAX_INTERVALS = 1_000_000
_TOP_KEYS = {"name", "seed", "objective", "population", "intervals", "steps", "policy", "worker", "command",
             "space", "lease", "keep_best", "max_failures", "interval_timeout", "lock", "project", "format", "stop"}
_BOOL = "tag:yaml.org,2002:bool"


class RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2's booleans: only true and false are, so `values: [on, off]` and
    `name: yes` keep the words the recipe wrote (YAML 1.1 would read them as true and false)."""

    yaml_implicit_resolvers = {first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    @classmethod
    def read(cls, text: str) -> Any:
        """The one document of `text`, as yaml.safe_load reads it but for the booleans."""
        loader = cls(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()


RecipeLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


@dataclass(frozen=True)
class Objective:
    metric: str = "score"
    mode: str = "max"

    @property
    def maximize(self) -> bool:
        return self.mode == "max"


@dataclass(frozen=True)
class LeaseSettings:
    """How long a silent worker keeps its member (seconds), and how often a live one says so."""

    timeout: float = 300.0
    heartbeat: float = 30.0


@dataclass(frozen=True)
class StopRule:
    """When the experiment stops before its budget: a metric reaching a target (`at_least` or `at_most`), or
    `hours` of wall time since the first claim; with both, whichever comes first."""

    metric: str | None = None
    at_least: float | None = None
    at_most: float | None = None
    hours: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def reached(self, value: float) -> bool:
        """Whether a value of `metric` meets the target."""
        if self.at_least is not None:
            return value >= self.at_least
        return self.at_most is not None and value <= self.at_most

    @property
    def target(self) -> str:
        """The target in words, e.g. "val_acc >= 0.99"."""
        if self.at_least is not None:
            return f"{self.metric} >= {self.at_least:g}"
        return f"{self.metric} <= {self.at_most:g}"


@dataclass(frozen=True)
class PolicySpec:
    """The recipe's policy as plain data: its name and every setting, defaults included. The policy itself
    is built where decisions are made (the worker, the simulator): the store reads a recipe without it."""

    name: str
    settings: dict[str, Any]

    def build(self) -> Policy:
        """The policy itself, for whoever makes decisions; a wrong setting raises RecipeError."""
        from hopt_cli.policies import make_policy  # loaded where decisions are made, never by the store

        return make_policy(self.name, self.settings)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; `to_dict` is the resolved form stored in experiment.yaml."""

    name: str
    population: int
    intervals: int
    space: SearchSpace
    policy: PolicySpec
    trainable: str | None = None  # module:function, the recipe's `worker` key (or `command`)
    command: str | None = None
    seed: int = 0
    steps: int = 1
    objective: Objective = Objective()
    lease: LeaseSettings = LeaseSettings()
    keep_best: int = 3
    max_failures: int = 3
    interval_timeout: float | None = None  # seconds; a longer interval is killed and fails
    lock: str = "flock"
    project: str | None = None  # absolute: where the trainable is imported from and runs; set by `hopt init`
    stop: StopRule | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "seed": self.seed,
            "objective": {"metric": self.objective.metric, "mode": self.objective.mode},
            "population": self.population,
            "intervals": self.intervals,
            "steps": self.steps,
            "policy": {"name": self.policy.name, **self.policy.settings},
        }
        data["worker" if self.trainable else "command"] = self.trainable or self.command
        data["space"] = self.space.to_recipe()
        data["lease"] = {"timeout": self.lease.timeout, "heartbeat": self.lease.heartbeat}
        data["keep_best"] = self.keep_best
        data["max_failures"] = self.max_failures
        data["interval_timeout"] = self.interval_timeout
        data["lock"] = self.lock
        if self.project is not None:
            data["project"] = self.project
        if self.stop is not None:
            data["stop"] = self.stop.to_dict()
        return data

    def in_project(self, cwd: str) -> Recipe:
        """This recipe with its project directory absolute: a relative (or missing) one counts from `cwd`."""
        return replace(self, project=os.path.normpath(os.path.join(cwd, self.project or ".")))

    @property
    def trainable_text(self) -> str:
        """The trainable as a message names it: "the trainable mod:fn", or "the command" and the command in
        backquotes."""
        return f"the trainable {self.trainable}" if self.trainable else f"the command `{self.command}`"

    @property
    def unpassed(self) -> tuple[str, ...]:
        """The searched hyperparameters a command never receives (no placeholder for them): every value
        hopt tries for them is lost. None for a Python trainable, which gets them all."""
        if self.command is None:
            return ()
        used = set(_placeholders(self.command))
        return tuple(name for name in self.space.names if name not in used)

    @classmethod
    def from_dict(cls, data: Any, stored: bool = False) -> Recipe:
        """Validate a parsed recipe; the first problem raises RecipeError naming its key.

        `stored`: experiment.yaml, which a hopt validated when it was created; checks added since (a
        command's {parent} and {out}) are left out, so that an older experiment stays readable, and its
        policy settings, resolved then, are read as they are (the policy checks them when it is built)."""
        if not isinstance(data, Mapping):
            raise RecipeError("recipe", "must be a YAML mapping of keys such as name, population, space")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise RecipeError(unknown[0], f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS - {'format'}))})")
        if data.get("format", FORMAT) not in READABLE_FORMATS:
            raise RecipeError("format", f"this hopt reads formats {READABLE_FORMATS[0]} to {FORMAT} "
                              f"(got {data['format']!r}); upgrade hopt")
        space = SearchSpace.from_recipe(data.get("space"))
        policy = _policy(data.get("policy", {"name": "romul"}), stored)
        trainable, command = _trainable(data, space, stored)
        population = _bounded(data, "population", 2, MAX_POPULATION,
                              "every worker and `hopt status` hold each member in memory (about 2 KB each)")
        return cls(
            name=_name(data.get("name")),
            population=population,
            intervals=_bounded(data, "intervals", 1, MAX_INTERVALS, "split the training into fewer, longer intervals"),
            space=space,
            policy=policy,
            trainable=trainable,
            command=command,
            seed=_integer(data, "seed", 0, low=0),
            steps=_integer(data, "steps", 1, low=1),
            objective=_objective(data.get("objective")),
            lease=_lease(data.get("lease", {})),
            keep_best=_integer(data, "keep_best", 3, low=1),
            max_failures=_integer(data, "max_failures", 3, low=1),
            interval_timeout=_interval_timeout(data.get("interval_timeout")),
            lock=_lock(data.get("lock", "flock")),
            project=_project(data.get("project")),
            stop=_stop(data.get("stop")),
        )


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; any problem is one HoptError line naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise HoptError(f"cannot read recipe {path}: {err.strerror}; give the path of a recipe YAML file") from None
    except UnicodeDecodeError:
        raise HoptError(f"cannot read recipe {path}: not a UTF-8 text file; give the path of a recipe YAML file") from None
    try:
        data = RecipeLoader.read(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise HoptError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)}); fix the syntax") from None
    try:
        return Recipe.from_dict(data)
    except RecipeError as err:
        raise HoptError(f"{path}: {err}") from None


def _name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
        raise RecipeError("name", f"must be a short name of letters, digits, '.', '_' or '-' (got {value!r})")
    return value


def _integer(data: Mapping[str, Any], key: str, default: int | None, low: int) -> int:
    if key not in data:
        if default is None:
            raise RecipeError(key, "is required")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(key, f"must be an integer >= {low} (got {value!r})")
    return value


def _bounded(data: Mapping[str, Any], key: str, low: int, high: int, why: str) -> int:
    """A required integer in [low, high]; above `high` the message says why the bound exists."""
    value = _integer(data, key, None, low)
    if value > high:
        raise RecipeError(key, f"must be at most {high:,} (got {value:,}): {why}")
    return value


def _mapping(key: str, value: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecipeError(key, f"must be a mapping with keys {', '.join(sorted(allowed))}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise RecipeError(f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return value


def _objective(value: Any) -> Objective:
    """The metric and its direction, both required: a silent default would maximise a user's loss."""
    if value is None:
        raise RecipeError("objective", "is required, e.g. objective: {metric: val_loss, mode: min}")
    spec = _mapping("objective", value, {"metric", "mode"})
    for key in ("metric", "mode"):
        if key not in spec:
            raise RecipeError(f"objective.{key}", "is required (objective: {metric: NAME, mode: max or min})")
    metric, mode = spec["metric"], spec["mode"]
    if not isinstance(metric, str) or not metric:
        raise RecipeError("objective.metric", f"must be the name of a metric (got {metric!r})")
    if mode not in ("max", "min"):
        raise RecipeError("objective.mode", f"must be max or min (got {mode!r})")
    return Objective(metric, mode)


def _lease(value: Any) -> LeaseSettings:
    spec = _mapping("lease", value, {"timeout", "heartbeat"})
    numbers = {}
    for key, default in (("timeout", 300.0), ("heartbeat", 30.0)):
        number = spec.get(key, default)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 < number < math.inf:
            raise RecipeError(f"lease.{key}", f"must be a number of seconds > 0 (got {number!r})")
        numbers[key] = float(number)
    if numbers["heartbeat"] * 2 > numbers["timeout"]:
        raise RecipeError("lease.heartbeat", "must be at most half of lease.timeout, or live workers look dead")
    return LeaseSettings(**numbers)


def _interval_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise RecipeError("interval_timeout", f"must be a number of seconds > 0, or left out (got {value!r})")
    return float(value)


def _stop(value: Any) -> StopRule | None:
    """A metric target (exactly one of at_least, at_most, with its metric), a deadline in hours, or both."""
    if value is None:
        return None
    spec = _mapping("stop", value, {"metric", "at_least", "at_most", "hours"})
    numbers = {}
    for key in ("at_least", "at_most", "hours"):
        number = spec.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))
                                   or not math.isfinite(number)):
            raise RecipeError(f"stop.{key}", f"must be a number (got {number!r})")
        numbers[key] = None if number is None else float(number)
    if numbers["hours"] is not None and numbers["hours"] <= 0:
        raise RecipeError("stop.hours", f"must be a number of hours > 0 (got {spec['hours']!r})")
    metric = spec.get("metric")
    targets = [key for key in ("at_least", "at_most") if numbers[key] is not None]
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise RecipeError("stop.metric", f"must be the name of a metric the trainable returns (got {metric!r})")
    if metric is not None and len(targets) != 1:
        raise RecipeError("stop", f"give exactly one of at_least or at_most with metric {metric} (got "
                                  f"{' and '.join(targets) or 'neither'})")
    if metric is None and targets:
        raise RecipeError("stop.metric", f"is required with {targets[0]}: the metric that must reach it, "
                                         "e.g. stop: {metric: val_acc, at_least: 0.99}")
    if metric is None and numbers["hours"] is None:
        raise RecipeError("stop", "give a target, e.g. stop: {metric: val_acc, at_least: 0.99}, a deadline, "
                                  "stop: {hours: 12}, or both")
    return StopRule(metric, numbers["at_least"], numbers["at_most"], numbers["hours"])


def _lock(value: Any) -> str:
    if value not in LOCK_KINDS:
        raise RecipeError("lock", f"must be one of {', '.join(LOCK_KINDS)} (got {value!r}); "
                                  "`hopt doctor --dir D` tells whether flock works on your filesystem")
    return value


def _project(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise RecipeError("project", f"must be the path of the directory the trainable runs in (got {value!r})")
    return value


def _policy(value: Any, stored: bool) -> PolicySpec:
    """A user's policy checked and completed with every default by the policies; a stored one as it is."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise RecipeError("policy", "must be a mapping such as {name: romul}")
    settings = {k: v for k, v in value.items() if k != "name"}
    name = value.get("name", "romul")
    if stored:
        if not isinstance(name, str):
            raise RecipeError("policy.name", f"must be a policy's name (got {name!r})")
        return PolicySpec(name, {k: v for k, v in settings.items() if not (k in _WRITTEN_SWITCHES and v is True)})
    from hopt_cli.policies import resolve  # a user's recipe is resolved once, at `hopt init`; the store never does

    return PolicySpec(name, resolve(name, settings))


def _trainable(data: Mapping[str, Any], space: SearchSpace, stored: bool) -> tuple[str | None, str | None]:
    worker, command = data.get("worker"), data.get("command")
    if (worker is None) == (command is None):
        raise RecipeError("worker", "give exactly one of worker (module:function) or command (a shell command)")
    if worker is not None:
        if not isinstance(worker, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", worker):
            raise RecipeError("worker", f"must be module:function, e.g. workers.toys:pbt_quadratic (got {worker!r})")
        return worker, None
    if not isinstance(command, str) or not command.strip():
        raise RecipeError("command", "must be a shell command string")
    _check_placeholders(command, space, stored)
    return None, command


def _check_placeholders(command: str, space: SearchSpace, stored: bool) -> None:
    taken = sorted(set(space.names) & set(CONTEXT_PLACEHOLDERS))
    if taken:
        raise RecipeError(f"space.{taken[0]}", f"{{{taken[0]}}} in a command is filled by hopt from the interval's "
                                               "context; rename the hyperparameter")
    allowed = set(space.names) | set(CONTEXT_PLACEHOLDERS)
    try:
        fields = _placeholders(command)
    except ValueError as err:
        raise RecipeError("command", f"bad placeholder syntax ({err}); write {{name}}, and {{{{ }}}} for braces") from None
    for name in fields:
        if name not in allowed:
            raise RecipeError("command", f"unknown placeholder {{{name}}} (known: {', '.join(sorted(allowed))})")
    missing = [] if stored else [name for name in ("parent", "out") if name not in fields]
    if missing:
        raise RecipeError("command", f"has no {' and no '.join(f'{{{name}}}' for name in missing)}: "
                                     + "; ".join(_REQUIRED[name] for name in missing))


def _placeholders(command: str) -> list[str]:
    """The names of a command's placeholders ({lr:.3g} is lr); a ValueError for bad brace syntax."""
    return [name for _, name, _, _ in string.Formatter().parse(command) if name is not None]
