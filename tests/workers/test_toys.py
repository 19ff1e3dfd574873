"""Behaviour of the toy trainables (ROMUL.md, T1-T4), run on real checkpoint folders."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hopt_cli.trainable import Context
from workers import toys


def run_chain(fn, hparams, tmp_path: Path, intervals: int, steps: int = 4, seed: int = 0,
              parent: Path | None = None, tag: str = "m"):
    """Run `intervals` intervals of `fn`, each resuming from the last; returns (last result, last folder)."""
    result = None
    for i in range(intervals):
        out = tmp_path / f"{tag}{i}"
        out.mkdir()
        result = fn(Context(hparams=hparams, parent=parent, out=out, interval=i, steps=steps, member=0,
                            seed=seed + i))
        parent = out
    return result, parent


def state(folder: Path) -> dict:
    return json.loads((folder / toys.STATE_FILE).read_text())


def unit_to_x(u) -> dict:
    """T4 hyperparameters whose unit coordinates are `u`."""
    return {f"x{i}": float(u[i]) if i < 4 else float(toys.LOG_LOW * 10 ** (3 * u[i])) for i in range(8)}


def test_quadratic_good_h_reaches_optimum(tmp_path):
    result, _ = run_chain(toys.pbt_quadratic, {"h0": 1.0, "h1": 1.0}, tmp_path, 150)
    assert 1.2 * 0.997 < result["score"] <= 1.2
    assert result["true_score"] == result["score"]


def test_quadratic_zero_h_does_not_move(tmp_path):
    result, last = run_chain(toys.pbt_quadratic, {"h0": 0.0, "h1": 0.0}, tmp_path, 5)
    assert result["score"] == pytest.approx(1.2 - 1.62)
    assert state(last)["theta"] == [0.9, 0.9]


def test_quadratic_moves_by_steps(tmp_path):
    one, _ = run_chain(toys.pbt_quadratic, {"h0": 1.0, "h1": 0.0}, tmp_path, 1, steps=1, tag="a")
    many, _ = run_chain(toys.pbt_quadratic, {"h0": 1.0, "h1": 0.0}, tmp_path, 1, steps=10, tag="b")
    assert one["score"] == pytest.approx(1.2 - (0.9 * 0.98) ** 2 - 0.81)
    assert many["score"] == pytest.approx(1.2 - (0.9 * 0.98**10) ** 2 - 0.81)


@pytest.mark.parametrize("fn, hparams", [
    (toys.pbt_quadratic, {"h0": 0.7, "h1": 0.3}),
    (toys.lr_decay, {"lr": 0.01}),
])
def test_resume_continues_exactly(tmp_path, fn, hparams):
    chained, chained_last = run_chain(fn, hparams, tmp_path, 2, steps=5, tag="c")
    single, single_last = run_chain(fn, hparams, tmp_path, 1, steps=10, tag="s")
    assert chained == single
    assert state(chained_last) == state(single_last)


def test_resume_writes_only_out_and_leaves_parent(tmp_path):
    _, first = run_chain(toys.short_long, {"d": 0.2}, tmp_path, 1, tag="p")
    before = (first / toys.STATE_FILE).read_text()
    _, second = run_chain(toys.short_long, {"d": 0.2}, tmp_path, 1, parent=first, tag="q")
    assert (first / toys.STATE_FILE).read_text() == before
    assert sorted(p.name for p in second.iterdir()) == [toys.STATE_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0", "q0"]
    run_chain(toys.short_long, {"d": 0.2}, tmp_path, 2, tag="r")
    assert state(second) == state(tmp_path / "r1")


def test_short_long_low_d_wins_early_loses_late(tmp_path):
    low_early, _ = run_chain(toys.short_long, {"d": 0.0}, tmp_path, 1, tag="le")
    mid_early, _ = run_chain(toys.short_long, {"d": 0.5}, tmp_path, 1, tag="me")
    assert low_early["score"] > mid_early["score"]
    low_late, _ = run_chain(toys.short_long, {"d": 0.0}, tmp_path, 40, tag="ll")
    mid_late, _ = run_chain(toys.short_long, {"d": 0.5}, tmp_path, 40, tag="ml")
    assert mid_late["score"] > low_late["score"] + 0.3
    assert low_late["score"] == pytest.approx(-(math.exp(-6.0) + 0.4))


def test_lr_decay_large_lr_plateaus_at_noise_floor(tmp_path):
    eta = 0.5
    result, _ = run_chain(toys.lr_decay, {"lr": eta}, tmp_path, 3, steps=50)
    assert result["score"] == pytest.approx(-math.log10(eta / (2 - eta)), abs=1e-9)


def test_lr_decay_small_lr_is_slow_and_decay_beats_constant(tmp_path):
    slow, _ = run_chain(toys.lr_decay, {"lr": 1e-5}, tmp_path, 5, steps=50, tag="s")
    assert -2.0 < slow["score"] < -1.99
    _, warm = run_chain(toys.lr_decay, {"lr": 0.5}, tmp_path, 1, steps=50, tag="w")
    decayed, _ = run_chain(toys.lr_decay, {"lr": 1e-3}, tmp_path, 40, steps=50, parent=warm, tag="d")
    assert decayed["score"] > -math.log10(0.5 / 1.5) + 1.5


def test_ellipsoid_true_score_peaks_at_u_star(tmp_path):
    best, _ = run_chain(toys.ellipsoid, unit_to_x(toys.U_STAR), tmp_path, 40, tag="b")
    assert best["true_score"] == pytest.approx(0.0, abs=1e-6)
    for i in range(8):
        for delta in (-0.05, 0.05):
            u = toys.U_STAR.copy()
            u[i] += delta
            off, _ = run_chain(toys.ellipsoid, unit_to_x(u), tmp_path, 40, tag=f"o{i}{delta}_")
            assert off["true_score"] < best["true_score"]
            assert off["true_score"] == pytest.approx(-toys.C[i] * delta**2, rel=1e-3)


def test_ellipsoid_noise_is_seeded_with_std_001(tmp_path):
    _, parent = run_chain(toys.ellipsoid, unit_to_x(np.full(8, 0.3)), tmp_path, 1, tag="p")
    out = tmp_path / "n"
    out.mkdir()
    hp = unit_to_x(np.full(8, 0.6))
    noise = []
    for seed in range(1000):
        r = toys.ellipsoid(Context(hparams=hp, parent=parent, out=out, interval=1, steps=4, member=0,
                                   seed=seed))
        noise.append(r["score"] - r["true_score"])
    assert np.std(noise) == pytest.approx(toys.NOISE_STD, rel=0.1)
    assert abs(np.mean(noise)) < 0.002
    again = toys.ellipsoid(Context(hparams=hp, parent=parent, out=out, interval=1, steps=4, member=0, seed=7))
    assert again["score"] - again["true_score"] == noise[7]


@pytest.mark.parametrize("fn, hparams", [
    (toys.pbt_quadratic, {"h0": 1.0, "h1": 0.0}),
    (toys.short_long, {"d": 0.9}),
    (toys.lr_decay, {"lr": 1.0}),
    (toys.lr_decay, {"lr": 1e-6}),
    (toys.ellipsoid, unit_to_x(np.ones(8))),
    (toys.ellipsoid, unit_to_x(np.zeros(8))),
])
def test_scores_are_finite_floats(tmp_path, fn, hparams):
    result, _ = run_chain(fn, hparams, tmp_path, 40, steps=50)
    assert set(result) == {"score", "true_score"}
    assert all(type(v) is float and math.isfinite(v) for v in result.values())
