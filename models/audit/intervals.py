"""Bootstrap 95% intervals for the audit's figures (percentile method, seeded).

A figure is a statistic of units: test items, or people where the items of one person are not
independent (the L-release sets of one person share inputs; a pair figure depends on two people). One
bootstrap resample draws the units with replacement; the statistic is handed the resulting
*multiplicity* of every unit (how often it was drawn, 0 included) and recomputes the figure with those
weights. A mean becomes a weighted mean; a pair figure weights pair (i, j) by the product of the two
people's multiplicities (their own multiplicity for a same-person pair), which is what the pairs of the
resampled population would be. The interval is the 2.5th and 97.5th percentile of the resampled figures.

Hand-written rather than ``scipy.stats.bootstrap``: that one resamples data arrays, and the pair figures
here are not a statistic of one array; multiplicities serve both kinds with one function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A figure with its bootstrap interval; ``units`` says what was resampled ("items", "people")."""

    value: float
    low: float
    high: float
    units: str = "items"

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "units": self.units}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(statistic: Callable[[np.ndarray], float], n_units: int, *, units: str = "items",
              resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """Percentile bootstrap of ``statistic(multiplicity)``, multiplicity an int array (n_units,).

    The point value is ``statistic(ones)``. Resamples whose statistic is not finite (a pair figure with
    no same-person pair left, say) are dropped; with none left the interval is (nan, nan).
    """
    return bootstrap_many(lambda m: np.array([statistic(m)]), n_units, units=units, resamples=resamples,
                          level=level, seed=seed)[0]


def bootstrap_many(statistic: Callable[[np.ndarray], np.ndarray], n_units: int, *, units: str = "items",
                   resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> list[Interval]:
    """:func:`bootstrap` of a statistic returning F figures at once (F,), from the same resamples:
    one ROC gives an EER and two TPRs."""
    if n_units < 1 or resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_units >= 1, resamples >= 1, level in (0, 1); got {n_units}, "
                         f"{resamples}, {level}")
    value = np.asarray(statistic(np.ones(n_units, dtype=np.int64)), dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = np.empty((resamples, len(value)))
    for r in range(resamples):
        draws[r] = statistic(np.bincount(rng.integers(0, n_units, n_units), minlength=n_units))
    tail = (1.0 - level) / 2 * 100
    out = []
    for f in range(len(value)):
        d = draws[:, f][np.isfinite(draws[:, f])]
        low, high = np.percentile(d, [tail, 100 - tail]) if len(d) else (np.nan, np.nan)
        out.append(Interval(float(value[f]), float(low), float(high), units))
    return out


def mean_interval(values: np.ndarray, groups: np.ndarray | None = None, *, resamples: int = RESAMPLES,
                  seed: int = 0) -> Interval:
    """Mean of ``values`` (N,) (e.g. 0/1 hits) with its interval, resampling items, or the groups
    ``groups`` (N,) (people) when given: a group drawn k times counts each of its items k times."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        raise ValueError("no values")
    if groups is None:
        return bootstrap(lambda m: float(np.dot(m, v) / m.sum()), len(v), resamples=resamples, seed=seed)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    if len(g) != len(v):
        raise ValueError(f"{len(g)} groups for {len(v)} values")

    def stat(m: np.ndarray) -> float:
        w = m[g]
        return float(np.dot(w, v) / w.sum()) if w.sum() > 0 else float("nan")
    return bootstrap(stat, int(g.max()) + 1, units="people", resamples=resamples, seed=seed)


def pair_weights(multiplicity: np.ndarray, person_i: np.ndarray, person_j: np.ndarray) -> np.ndarray:
    """Weight of each pair (P,) of people indices 0..n-1 under a people resample: m_i * m_j for two
    people, m_i for a pair of one person's items."""
    m = np.asarray(multiplicity, dtype=np.float64)
    return np.where(person_i == person_j, m[person_i], m[person_i] * m[person_j])
