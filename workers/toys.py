"""The four toy benchmarks of ROMUL.md (T1-T4), and T5 for adoption, as trainables; each interval costs microseconds.

Each resumes from `state.json` in `ctx.parent` (fresh when None) and writes `state.json` into `ctx.out`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hopt_cli.trainable import Context

STATE_FILE = "state.json"

# T2 constants: decay rate of the train loss, growth rate of the gap, and the gap-free dropout.
KAPPA, GAMMA, D_STAR = 0.15, 0.02, 0.5
# T3 constants: initial expected squared error and gradient noise scale.
V0, NOISE_S = 100.0, 1.0
# T4: x0..x3 linear in [0, 1], x4..x7 log-scale in [LOG_LOW, 1]; weights start at W0 (unit coordinates),
# the optimum U_STAR sits inside the cube, curvatures C span three decades, interleaved so that both
# linear and log parameters have weak and strong ones.
LOG_LOW = 1e-3
W0 = 0.5
U_STAR = np.array([0.2, 0.8, 0.35, 0.65, 0.25, 0.7, 0.55, 0.1])
C = (10.0 ** np.linspace(-1.5, 1.5, 8))[[0, 2, 4, 6, 1, 3, 5, 7]]
NOISE_STD = 0.01
# T5: a run peaks after PEAK intervals and then loses DECAY per interval; H_STAR is the best h.
PEAK, DECAY, H_STAR = 3, 0.15, 0.6


def _load(parent: Path | None, fresh: dict[str, Any]) -> dict[str, Any]:
    """The state saved in `parent`, or `fresh` when starting from scratch."""
    if parent is None:
        return dict(fresh)
    return json.loads((Path(parent) / STATE_FILE).read_text())


def _save(out: Path, state: dict[str, Any]) -> None:
    """Write `state` as the checkpoint of this interval."""
    (Path(out) / STATE_FILE).write_text(json.dumps(state))


def pbt_quadratic(ctx: Context) -> dict[str, float]:
    """T1, the PBT paper's quadratic: a sanity check that exploiting reaches the optimum 1.2."""
    h = np.array([float(ctx.hparams["h0"]), float(ctx.hparams["h1"])])
    theta = np.array(_load(ctx.parent, {"theta": [0.9, 0.9]})["theta"])
    for _ in range(ctx.steps):
        theta = theta + 0.01 * (-2.0 * h * theta)
    _save(ctx.out, {"theta": theta.tolist()})
    score = float(1.2 - np.sum(theta**2))
    return {"score": score, "true_score": score}


def short_long(ctx: Context) -> dict[str, float]:
    """T2, dropout-like d: low d wins early intervals and loses the run (failure mode i, greediness)."""
    d = float(ctx.hparams["d"])
    state = _load(ctx.parent, {"a": 1.0, "g": 0.0})
    a = state["a"] * math.exp(-KAPPA * (1.0 - d))
    g = state["g"] + GAMMA * max(0.0, D_STAR - d)
    _save(ctx.out, {"a": a, "g": g})
    score = -(a + g)
    return {"score": score, "true_score": score}


def lr_decay(ctx: Context) -> dict[str, float]:
    """T3, SGD error on a noisy quadratic: the lr must travel decades up then decay (failure mode ii)."""
    lr = float(ctx.hparams["lr"])
    v = float(_load(ctx.parent, {"v": V0})["v"])
    for _ in range(ctx.steps):
        v = (1.0 - lr) ** 2 * v + lr**2 * NOISE_S**2
    _save(ctx.out, {"v": v})
    score = -math.log10(v)
    return {"score": score, "true_score": score}


def _unit(hparams: dict[str, Any]) -> np.ndarray:
    """Unit-cube coordinates of T4's hyperparameters x0..x7."""
    lin = [float(hparams[f"x{i}"]) for i in range(4)]
    log = [math.log10(float(hparams[f"x{i}"]) / LOG_LOW) / -math.log10(LOG_LOW) for i in range(4, 8)]
    return np.array(lin + log)


def ellipsoid(ctx: Context) -> dict[str, float]:
    """T4, noisy ill-conditioned ellipsoid over mixed linear/log parameters: step sizes per scale."""
    u = _unit(ctx.hparams)
    w = np.array(_load(ctx.parent, {"w": [W0] * 8})["w"])
    w = w + 0.3 * (u - w)
    _save(ctx.out, {"w": w.tolist()})
    true_score = float(-np.sum(C * (w - U_STAR) ** 2))
    noise = float(np.random.default_rng(ctx.seed).normal(0.0, NOISE_STD))
    return {"score": true_score + noise, "true_score": true_score}


def peak_then_decay(ctx: Context) -> dict[str, float]:
    """T5, a run that peaks and then degrades (overfitting): a finished lineage ends worse than it was midway."""
    h = float(ctx.hparams["h"])
    trained = int(_load(ctx.parent, {"n": 0})["n"]) + 1
    _save(ctx.out, {"n": trained})
    score = 1.0 - (h - H_STAR) ** 2 - DECAY * abs(trained - PEAK)
    return {"score": score, "true_score": score}
