"""The scores a Result keeps: the few most probable labels, best first.

One function for the worker's results and the gateway's local_only ones, so that both carry the same
number of scores.
"""
from __future__ import annotations

import numpy as np

TOP_K = 3
"""Scores kept per result: enough for a home app to show alternatives, small on the wire."""


def top_k(probs: np.ndarray, labels: tuple[str, ...] | list[str], k: int = TOP_K) -> list[tuple[str, float]]:
    """The ``k`` most probable ``(label, probability)`` pairs of one input's probabilities ``(C,)``,
    best first."""
    order = np.argsort(-probs)[:k]
    return [(labels[i], float(probs[i])) for i in order]
