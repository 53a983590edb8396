"""The post-hoc attacker swept over capacity: an identity adversary trained with the extractor can sit at
chance while one trained afterwards, bigger and for longer, does much better.

MLPs of every width x depth of the sweep (``mlp:WIDTHxDEPTH`` attackers of :mod:`models.audit.attackers`,
ReLU and dropout 0.2 per hidden layer) are trained to saturation: up to ``max_epochs`` with a long patience
on a validation slice of the attacker's training releases, then refitted on all of them. The training
releases may stack several rounds of the same inputs (other noise draws), which is more data for a noisy
release. Reported: every configuration's top-1 on the test releases with an interval resampling test
items, the configuration that validation picks (what an attacker could know) and the best on test (the
attacker's most favourable reading).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.audit.attackers import TrainSettings, train_attacker
from models.audit.intervals import Interval, mean_interval

WIDTHS = (64, 256, 1024)
DEPTHS = (1, 2, 3)


@dataclass(frozen=True)
class SweepResult:
    top1: dict[str, Interval]        # "WIDTHxDEPTH" -> test top-1
    val_top1: dict[str, float]       # "WIDTHxDEPTH" -> validation top-1 (of the early-stopping run)
    epochs: dict[str, int | None]
    picked: str                      # by validation
    best: str                        # by test

    def to_dict(self) -> dict:
        return {"top1": {k: v.to_dict() for k, v in self.top1.items()}, "validation_top1": self.val_top1,
                "epochs": self.epochs, "picked_by_validation": self.picked, "best_on_test": self.best}


def capacity_sweep(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   n_classes: int, *, settings: TrainSettings, widths: tuple[int, ...] = WIDTHS,
                   depths: tuple[int, ...] = DEPTHS, resamples: int, seed: int = 0) -> SweepResult:
    """Every ``widths`` x ``depths`` MLP on (x_train (N, D), y_train codes) scored on x_test / y_test."""
    top1, val_top1, epochs = {}, {}, {}
    for w in widths:
        for d in depths:
            name = f"{w}x{d}"
            out = train_attacker(f"mlp:{name}", x_train, y_train, x_test, n_classes, settings=settings,
                                 seed=seed + w + d)
            hits = out.scores.argmax(1) == y_test
            top1[name] = mean_interval(hits, resamples=resamples, seed=seed)
            val_top1[name] = float("nan") if out.val_accuracy is None else out.val_accuracy
            epochs[name] = out.epochs
    picked = max(val_top1, key=lambda k: np.nan_to_num(val_top1[k], nan=-1.0))   # ties: the smaller model
    best = max(top1, key=lambda k: top1[k].value)
    return SweepResult(top1, val_top1, epochs, picked, best)
