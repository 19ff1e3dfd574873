"""The Wilcoxon signed-rank test, exact, for paired benchmark results (hopt does not depend on scipy), and Holm's
correction for many such tests."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Wilcoxon:
    """Sum of the ranks of the positive differences, of the negative ones, the pairs used, and the p-value."""

    plus: float
    minus: float
    n: int
    pvalue: float


def wilcoxon(differences: Sequence[float], zero: float = 1e-12) -> Wilcoxon:
    """Two-sided exact signed-rank test of `differences` against a distribution symmetric about 0.

    Differences within `zero` (relative to the largest) are dropped, as in Wilcoxon's original method;
    tied magnitudes get their mid-rank, and the null distribution is computed exactly for those ranks by
    enumerating the sign flips (a dynamic program over doubled ranks), so small samples need no normal
    approximation and ties need no correction.
    """
    d = np.asarray(differences, dtype=float)
    scale = float(np.max(np.abs(d))) if d.size else 0.0
    d = d[np.abs(d) > zero * max(scale, 1.0)]
    if d.size == 0:
        return Wilcoxon(0.0, 0.0, 0, 1.0)
    doubled = _doubled_midranks(np.abs(d))
    plus = int(doubled[d > 0].sum())
    counts = np.zeros(int(doubled.sum()) + 1)
    counts[0] = 1.0
    for r in doubled:
        counts[r:] = counts[r:] + counts[:-r]  # the right side is a new array: no overlap
    # counts[k] / 2^n is the probability that the positive ranks sum to k / 2 under the null hypothesis
    probability = counts / counts.sum()
    low, high = probability[:plus + 1].sum(), probability[plus:].sum()
    return Wilcoxon(plus / 2, float(doubled.sum() - plus) / 2, int(d.size), float(min(1.0, 2 * min(low, high))))


def holm(pvalues: Sequence[float], alpha: float) -> list[bool]:
    """Which of `pvalues` Holm's step-down procedure rejects at family-wise error `alpha`, in their order."""
    order = np.argsort(pvalues, kind="stable")
    rejected = [False] * len(pvalues)
    for step, index in enumerate(order):
        if pvalues[index] >= alpha / (len(pvalues) - step):
            break
        rejected[index] = True
    return rejected


def _doubled_midranks(values: np.ndarray) -> np.ndarray:
    """Twice the mid-ranks (1-based) of `values`: integers even where ranks are tied."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=int)
    sorted_values = values[order]
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = i + j + 2  # twice the mean of the 1-based ranks i+1 .. j+1
        i = j + 1
    return ranks
