"""Problem families for the family benchmark of ROMUL.md: a fresh toy instance per (family, seed).

`draw(family, seed, intervals)` returns an `Instance`: a trainable (call it with a Context) that also
carries the search space its recipe needs. Every parameter of the instance comes from a generator seeded
by (family, seed); times (change points, onsets, rates) are drawn as fractions of training and scaled to
`intervals`, so one instance poses the same problem at every budget. Each interval resumes from
`state.json` in `ctx.parent` and writes `state.json` into `ctx.out`, like workers/toys.py. The policy sees
`score` (true score plus Gaussian noise of the instance's level); `true_score` is noise-free.
"""
from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

STATE_FILE = "state.json"
# One interval: (instance parameters, hyperparameters, state or None at the start, interval) -> (state, true score).
Step = Callable[[dict[str, Any], dict[str, Any], "dict[str, Any] | None", int], tuple[dict[str, Any], float]]
NOISE_LEVELS = ("none", "moderate", "high")
NOISE_STREAM = 0x5C_0E  # keeps the observation noise apart from the trainable seed's other uses
RATE = 0.3  # ellipsoid-like families: weights move this fraction of the way to the hyperparameters
LOG_LOW = 1e-3  # a log coordinate spans [LOG_LOW, 1]


@dataclass(frozen=True)
class Instance:
    """One drawn problem: its space (recipe form), its noise, and the step that trains one interval."""

    family: str
    seed: int
    space: dict[str, dict[str, Any]]
    noise: str
    noise_std: float
    params: dict[str, Any]
    step: Step = field(repr=False, compare=False)
    optimum: float | None = None  # the best true score reachable, where it is known

    def __call__(self, ctx: Context) -> dict[str, float]:
        """Train one interval: resume, step, checkpoint, and report the noisy and the true score."""
        state = json.loads((Path(ctx.parent) / STATE_FILE).read_text()) if ctx.parent else None
        state, true_score = self.step(self.params, ctx.hparams, state, ctx.interval)
        (Path(ctx.out) / STATE_FILE).write_text(json.dumps(state))
        noise = float(np.random.default_rng([NOISE_STREAM, ctx.seed]).normal(0.0, self.noise_std)) \
            if self.noise_std else 0.0
        return {"score": true_score + noise, "true_score": true_score}


def _unit(space: dict[str, dict[str, Any]], hparams: dict[str, Any], names: list[str]) -> np.ndarray:
    """Unit-cube coordinates of the numeric hyperparameters `names` (linear or log, as in hopt's space)."""
    coords = []
    for name in names:
        spec, value = space[name], float(hparams[name])
        if spec["type"] == "log":
            coords.append(math.log(value / spec["low"]) / math.log(spec["high"] / spec["low"]))
        else:
            coords.append((value - spec["low"]) / (spec["high"] - spec["low"]))
    return np.array(coords)


def _mixed_space(rng: np.random.Generator, dim: int) -> dict[str, dict[str, Any]]:
    """`dim` coordinates, each linear on [0, 1] or log on [LOG_LOW, 1] by a fair coin."""
    return {f"x{i}": {"type": "log", "low": LOG_LOW, "high": 1.0} if rng.random() < 0.5
            else {"type": "float", "low": 0.0, "high": 1.0} for i in range(dim)}


def _curvatures(rng: np.random.Generator, dim: int, condition: float) -> np.ndarray:
    """Curvatures from 1 to `condition` (log-spaced, shuffled), normalised to sum 1."""
    c = condition ** np.linspace(0.0, 1.0, dim)
    return rng.permutation(c) / c.sum()


def _rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A uniformly random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def _quadratic_step(params: dict[str, Any], hparams: dict[str, Any], state: dict[str, Any] | None,
                    interval: int) -> tuple[dict[str, Any], float]:
    """Weights move toward the hyperparameter point; score -(w - u*)' A (w - u*)."""
    u = _unit(params["space"], hparams, list(params["space"]))
    w = np.array(state["w"]) if state else np.array(params["w0"])
    w = w + RATE * (u - w)
    delta = w - np.array(params["u_star"])
    return {"w": w.tolist()}, float(-delta @ np.array(params["A"]) @ delta)


def _ellipsoid(rng: np.random.Generator, intervals: int, rotated: bool) -> dict[str, Any]:
    """Dims 2-8, condition 10-1e4, optimum in [0.15, 0.85]^d; rotated: a random rotation of the axes."""
    dim = int(rng.integers(2, 9))
    condition = 10 ** rng.uniform(1.0, 4.0)
    c = _curvatures(rng, dim, condition)
    rotation = _rotation(rng, dim) if rotated else np.eye(dim)
    return {"space": _mixed_space(rng, dim), "condition": condition, "u_star": rng.uniform(0.15, 0.85, dim).tolist(),
            "A": (rotation.T @ np.diag(c) @ rotation).tolist(), "w0": [0.5] * dim}


def _far_start(rng: np.random.Generator, intervals: int) -> dict[str, Any]:
    """Dims 2-4 on the log scale over six decades; the population starts in a one-decade corner box and
    the optimum lies four to five decades away (coordinates 0.7-0.95)."""
    dim = int(rng.integers(2, 5))
    low = 1e-6
    space = {f"x{i}": {"type": "log", "low": low, "high": 1.0, "init": [low, low * 10]} for i in range(dim)}
    c = _curvatures(rng, dim, 10 ** rng.uniform(0.0, 2.0))
    return {"space": space, "u_star": rng.uniform(0.7, 0.95, dim).tolist(), "A": np.diag(c).tolist(),
            "w0": [1 / 12] * dim}


def _categorical_step(params: dict[str, Any], hparams: dict[str, Any], state: dict[str, Any] | None,
                      interval: int) -> tuple[dict[str, Any], float]:
    """Weights move toward the numeric point; the choice sets where x0 should be, how sharply, and a penalty."""
    names = [n for n in params["space"] if n != "kind"]
    u = _unit(params["space"], hparams, names)
    w = np.array(state["w"]) if state else np.full(len(names), 0.5)
    w = w + RATE * (u - w)
    j = params["space"]["kind"]["values"].index(hparams["kind"])
    first = params["sharpness"][j] * (w[0] - params["x0_star"][j]) ** 2
    rest = float(np.sum(np.array(params["c"]) * (w[1:] - np.array(params["u_star"])) ** 2))
    return {"w": w.tolist()}, float(-(first + rest + params["penalty"][j]))


def _categorical(rng: np.random.Generator, intervals: int) -> dict[str, Any]:
    """A choice of 2-4 values interacting with x0 (log): each value has its own best x0; the best value
    (penalty 0) has the sharpest basin (curvature 4-8), the others are forgiving (0.5-1) but cost 0.02-0.1.
    Plus 0-2 further numeric coordinates (curvatures 0.1-1) that do not interact."""
    k = int(rng.integers(2, 5))
    extra = int(rng.integers(0, 3))
    space: dict[str, dict[str, Any]] = {"kind": {"type": "choice", "values": [f"k{j}" for j in range(k)]},
                                        "x0": {"type": "log", "low": LOG_LOW, "high": 1.0}}
    space.update({f"x{i + 1}": spec for i, spec in enumerate(_mixed_space(rng, extra).values())})
    best = int(rng.integers(k))
    sharpness = rng.uniform(0.5, 1.0, k)
    sharpness[best] = rng.uniform(4.0, 8.0)
    penalty = rng.uniform(0.02, 0.1, k)
    penalty[best] = 0.0
    return {"space": space, "x0_star": rng.uniform(0.1, 0.9, k).tolist(), "sharpness": sharpness.tolist(),
            "penalty": penalty.tolist(), "best": best, "c": (10 ** rng.uniform(-1.0, 0.0, extra)).tolist(),
            "u_star": rng.uniform(0.15, 0.85, extra).tolist()}


def _schedule_step(params: dict[str, Any], hparams: dict[str, Any], state: dict[str, Any] | None,
                   interval: int) -> tuple[dict[str, Any], float]:
    """SGD's expected error on a noisy quadratic; the gradient noise jumps at the change points."""
    lr = float(hparams["lr"])
    v = state["v"] if state else params["v0"]
    s2 = params["s2"] * math.prod(f for at, f in zip(params["changes"], params["factors"]) if interval >= at)
    for _ in range(params["steps"]):
        v = (1.0 - lr) ** 2 * v + lr**2 * s2
    return {"v": v}, -math.log10(v)


def _schedule(rng: np.random.Generator, intervals: int) -> dict[str, Any]:
    """T3 generalised: initial error 10-1e3, 1000-4000 SGD steps over training, lr on [1e-6, 1] (log)
    starting in a one-decade box between 1e-6 and 1e-4 (far below the good values, which travel up and then
    decay), and 1-2 change points at 20-80% of training where the gradient noise grows 3-30x."""
    start = 10 ** rng.uniform(-6.0, -5.0)
    count = int(rng.integers(1, 3))
    fractions = np.sort(rng.uniform(0.2, 0.8, count))
    factors = 10 ** rng.uniform(0.5, 1.5, count)
    total = int(rng.integers(1000, 4001))
    return {"space": {"lr": {"type": "log", "low": 1e-6, "high": 1.0, "init": [start, start * 10]}},
            "v0": float(10 ** rng.uniform(1.0, 3.0)), "s2": 1.0, "steps": max(1, round(total / intervals)),
            "changes": [max(1, round(f * intervals)) for f in fractions], "factors": factors.tolist()}


def _short_long_step(params: dict[str, Any], hparams: dict[str, Any], state: dict[str, Any] | None,
                     interval: int) -> tuple[dict[str, Any], float]:
    """Train loss a decays faster at low d; after the onset a gap grows while d is below d*."""
    d = float(hparams["d"])
    a, g = (state["a"], state["g"]) if state else (1.0, 0.0)
    a *= math.exp(-params["kappa"] * (1.0 - d))
    if interval >= params["onset"]:
        g += params["gamma"] * max(0.0, params["d_star"] - d)
    return {"a": a, "g": g}, -(a + g)


def _short_long(rng: np.random.Generator, intervals: int) -> dict[str, Any]:
    """T2 generalised: d in [0, 0.9], gap-free d* in 0.2-0.8, total decay exponent 4-8 over training,
    gap onset at 0-50% of training, and a gap rate whose whole-run total is 1-3 per unit of d* - d after it."""
    onset = rng.uniform(0.0, 0.5)
    total_gap = rng.uniform(1.0, 3.0)
    return {"space": {"d": {"type": "float", "low": 0.0, "high": 0.9}}, "d_star": float(rng.uniform(0.2, 0.8)),
            "kappa": float(rng.uniform(4.0, 8.0)) / intervals, "onset": round(onset * intervals),
            "gamma": total_gap / max(1, intervals - round(onset * intervals))}


def _rate(rng: np.random.Generator, intervals: int, low: float, high: float, share: float) -> float:
    """A per-interval rate at which a state covers `share` of its way in a drawn `low`-`high` fraction of training."""
    return 1.0 - (1.0 - share) ** (1.0 / max(1.0, rng.uniform(low, high) * intervals))


def _interacting(rng: np.random.Generator, intervals: int) -> dict[str, Any]:
    """1-2 pairs of one log and one linear coordinate, each pair's axes turned by 30-60 degrees (strongly coupled),
    curvatures 1 and 1e2-1e3 per pair; weights respond as slowly as in the ellipsoids (RATE per interval)."""
    pairs = int(rng.integers(1, 3))
    space: dict[str, dict[str, Any]] = {}
    for i in range(pairs):
        space[f"x{2 * i}"] = {"type": "log", "low": LOG_LOW, "high": 1.0}
        space[f"x{2 * i + 1}"] = {"type": "float", "low": 0.0, "high": 1.0}
    dim = 2 * pairs
    condition = 10 ** rng.uniform(2.0, 3.0)
    A = np.zeros((dim, dim))
    for i in range(pairs):
        angle = np.radians(rng.uniform(30.0, 60.0)) * rng.choice([-1.0, 1.0])
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        A[2 * i:2 * i + 2, 2 * i:2 * i + 2] = turn.T @ np.diag(rng.permutation([1.0, condition])) @ turn
    A /= np.trace(A)
    return {"space": space, "condition": condition, "u_star": rng.uniform(0.15, 0.85, dim).tolist(), "A": A.tolist(),
            "w0": [0.5] * dim}


def _deceptive_step(params: dict[str, Any], hparams: dict[str, Any], state: dict[str, Any] | None,
                    interval: int) -> tuple[dict[str, Any], float]:
    """Train loss a decays faster at low h; running below the linear schedule h* builds a debt the score
    shows only slowly (the gap g follows the debt at the instance's reveal rate)."""
    h = float(hparams["h"])
    a, debt, g = (state["a"], state["debt"], state["g"]) if state else (1.0, 0.0, 0.0)
    a *= math.exp(-params["kappa"] * (1.0 - h))
    debt += params["gamma"] * max(0.0, params["h0"] * (1.0 - interval / params["intervals"]) - h)
    g += params["reveal"] * (debt - g)
    return {"a": a, "debt": debt, "g": g}, -(a + g)


def _deceptive(rng: np.random.Generator, intervals: int) -> dict[str, Any]:
    """The deceptive schedule of "To Be Greedy, or Not to Be" (TMLR 2025), re-implemented from its description:
    h in [0, 1]; the best schedule lowers h linearly from h0 (0.6-0.9) to 0 over training, while dropping it at
    once wins every short comparison (decay exponent 4-8 over training at h = 0) and builds a debt (1-3 over
    training per unit below the schedule) that the score reveals over 10-30% of training."""
    return {"space": {"h": {"type": "float", "low": 0.0, "high": 1.0}}, "h0": float(rng.uniform(0.6, 0.9)),
            "intervals": intervals, "kappa": float(rng.uniform(4.0, 8.0)) / intervals,
            "gamma": float(rng.uniform(1.0, 3.0)) / intervals, "reveal": _rate(rng, intervals, 0.1, 0.3, 0.63)}


def _late_regularizer_step(params: dict[str, Any], hparams: dict[str, Any], state: dict[str, Any] | None,
                           interval: int) -> tuple[dict[str, Any], float]:
    """The effective regularisation e follows the hyperparameter slowly and slows the train loss a; only after
    the late onset does too little of it open a gap; x is a plain quadratic coordinate."""
    u_reg, u_x = _unit(params["space"], hparams, ["reg", "x"])
    a, g, e, w = (state["a"], state["g"], state["e"], state["w"]) if state else (1.0, 0.0, 0.0, 0.5)
    e += params["follow"] * (u_reg - e)
    a *= math.exp(-params["kappa"] * (1.0 - 0.5 * e))
    if interval >= params["onset"]:
        g += params["gamma"] * max(0.0, params["e_star"] - e)
    w += RATE * (u_x - w)
    return {"a": a, "g": g, "e": e, "w": w}, -(a + g + params["c"] * (w - params["x_star"]) ** 2)


def _late_regularizer(rng: np.random.Generator, intervals: int) -> dict[str, Any]:
    """A regulariser (log, [1e-5, 1]) whose benefit appears only after an onset at 60-85% of training: before it,
    regularising only slows the train loss (decay exponent 4-8 over training, halved at full strength); after it,
    a gap grows (2-4 over the rest of training per unit of e* - e, e* 0.4-0.8 in unit coordinates); the effective
    regularisation takes 20-40% of training to follow the hyperparameter 90% of the way. Plus one quadratic
    coordinate x (curvature 0.05-0.2)."""
    onset = round(rng.uniform(0.6, 0.85) * intervals)
    space = {"reg": {"type": "log", "low": 1e-5, "high": 1.0}, "x": {"type": "float", "low": 0.0, "high": 1.0}}
    return {"space": space, "onset": onset, "kappa": float(rng.uniform(4.0, 8.0)) / intervals,
            "gamma": float(rng.uniform(2.0, 4.0)) / max(1, intervals - onset), "e_star": float(rng.uniform(0.4, 0.8)),
            "follow": _rate(rng, intervals, 0.2, 0.4, 0.9), "c": float(rng.uniform(0.05, 0.2)),
            "x_star": float(rng.uniform(0.15, 0.85))}


@dataclass(frozen=True)
class Family:
    """How a family draws its instances, trains them, and what noise std each noise level means."""

    key: str
    title: str
    draw: Callable[[np.random.Generator, int], dict[str, Any]]
    step: Step
    noise_std: dict[str, float]
    optimum: float | None


_QUADRATIC_NOISE = {"none": 0.0, "moderate": 1e-3, "high": 5e-3}
FAMILIES = {
    "ellipsoid": Family("ellipsoid", "separable ellipsoid", lambda rng, n: _ellipsoid(rng, n, False),
                        _quadratic_step, _QUADRATIC_NOISE, 0.0),
    "rotated": Family("rotated", "rotated ellipsoid", lambda rng, n: _ellipsoid(rng, n, True),
                      _quadratic_step, _QUADRATIC_NOISE, 0.0),
    "schedule": Family("schedule", "lr schedule", _schedule, _schedule_step,
                       {"none": 0.0, "moderate": 0.02, "high": 0.1}, None),
    "short_long": Family("short_long", "short vs long", _short_long, _short_long_step,
                         {"none": 0.0, "moderate": 2e-3, "high": 1e-2}, None),
    "categorical": Family("categorical", "categorical x numeric", _categorical, _categorical_step,
                          _QUADRATIC_NOISE, 0.0),
    "far_start": Family("far_start", "far start", _far_start, _quadratic_step, _QUADRATIC_NOISE, 0.0),
    "deceptive": Family("deceptive", "deceptive schedule", _deceptive, _deceptive_step,
                        {"none": 0.0, "moderate": 2e-3, "high": 1e-2}, None),
    "interacting": Family("interacting", "interacting log x linear", _interacting, _quadratic_step,
                          _QUADRATIC_NOISE, 0.0),
    "late_reg": Family("late_reg", "late regulariser", _late_regularizer, _late_regularizer_step,
                       {"none": 0.0, "moderate": 2e-3, "high": 1e-2}, None),
}


def draw(family: str, seed: int, intervals: int) -> Instance:
    """The instance of `family` at `seed`, its times scaled to `intervals`; the same arguments, the same one."""
    spec = FAMILIES[family]
    rng = np.random.default_rng([zlib.crc32(family.encode()), seed])
    noise = NOISE_LEVELS[int(rng.integers(len(NOISE_LEVELS)))]
    params = spec.draw(rng, intervals)
    return Instance(family, seed, params["space"], noise, spec.noise_std[noise], params, spec.step, spec.optimum)
