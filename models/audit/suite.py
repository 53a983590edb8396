"""The stronger attacks (``privedge audit --attacks all``) on one source of released features.

For a bundle, or the raw input: pools of repeated releases of ``attack_train`` and ``attack_test``
(:class:`models.audit.aggregation.ReleasePool`; a noisy extractor is run again per round, so every round
has fresh noise; a deterministic source needs one round), then

- aggregation over L releases of one person, for every L of ``lengths`` (:mod:`models.audit.aggregation`);
- linkage of two releases / two sets of L (:mod:`models.audit.linkage`);
- the metric-learning attacker on unseen people (:mod:`models.audit.metric`);
- the post-hoc capacity sweep (:mod:`models.audit.posthoc`);

each beside uniform chance and the primary-label floor, with bootstrap 95% intervals. Features of more
than ``max_dims`` numbers (the raw input) are first projected on their top ``max_dims`` principal
components of ``attack_train`` (round 0), to keep the set classifier and the sweep within a CPU budget;
the basic table's attackers still see every number.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from models.audit.aggregation import ReleasePool, aggregation_attacks, draw_sets, rounds_needed
from models.audit.attackers import TrainSettings, train_attacker
from models.audit.intervals import Interval, mean_interval
from models.audit.linkage import LinkageResult, linkage_attack
from models.audit.metric import MetricResult, metric_attack
from models.audit.posthoc import DEPTHS, WIDTHS, SweepResult, capacity_sweep
from models.data.samples import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteSettings:
    lengths: tuple[int, ...] = (1, 10, 100)
    train_sets: int = 64          # sets of L per person the set attackers train on (at least each input once)
    test_sets: int = 40           # test sets per person (at least each test input once)
    link_sets: int = 16           # probe and reference sets per person for linkage
    max_different: int = 20_000   # different-person pairs scored (all same-person pairs are)
    max_dims: int = 128
    max_rounds: int = 100
    stack_rounds: int = 8         # release rounds stacked as training data of the sweep and metric attacker ...
    stack_max: int = 4000         # ... while they hold at most this many releases
    resamples: int = 1000
    attacker: TrainSettings = TrainSettings(max_epochs=200, patience=20, refit=False)
    saturate: TrainSettings = TrainSettings(max_epochs=300, patience=30, refit=False)
    widths: tuple[int, ...] = WIDTHS
    depths: tuple[int, ...] = DEPTHS

    @classmethod
    def quick(cls) -> "SuiteSettings":
        """For tests and smoke runs: short training, few resamples, a small sweep."""
        short = TrainSettings(max_epochs=30, patience=5, refit=False)
        return cls(lengths=(1, 10), train_sets=16, test_sets=10, link_sets=6, max_different=3000, resamples=100,
                   attacker=short, saturate=short, widths=(64,), depths=(1, 2), stack_rounds=2, max_rounds=3)


@dataclass(frozen=True)
class AggregationFigures:
    length: int
    chance: float
    label_floor: Interval
    top1: dict[str, Interval]
    epochs: dict[str, int | None]
    best: str

    def to_dict(self) -> dict:
        return {"length": self.length, "chance": self.chance, "label_floor": self.label_floor.to_dict(),
                "top1": {k: v.to_dict() for k, v in self.top1.items()}, "epochs": self.epochs,
                "best": self.best}


@dataclass(frozen=True)
class AttackSuite:
    n_classes: int
    chance: float
    aggregation: list[AggregationFigures]
    linkage: list[LinkageResult]
    metric: MetricResult | None
    sweep: SweepResult
    rounds: dict[str, int] = field(default_factory=dict)
    projected_dims: int | None = None           # principal components kept (None: all numbers)

    def to_dict(self) -> dict:
        return {"n_classes": self.n_classes, "chance": self.chance,
                "aggregation": [a.to_dict() for a in self.aggregation],
                "linkage": [k.to_dict() for k in self.linkage],
                "metric": None if self.metric is None else self.metric.to_dict(),
                "sweep": self.sweep.to_dict(), "rounds": self.rounds, "projected_dims": self.projected_dims}


def _project(train: np.ndarray, *others: np.ndarray, k: int) -> tuple[list[np.ndarray], int | None]:
    """PCA to ``k`` components fitted on ``train`` (N, D) round 0, applied to (R, N', D) pools."""
    d = train.shape[-1]
    if d <= k:
        return [train, *others], None
    base = train[0].astype(np.float64)
    mean = base.mean(axis=0)
    _, _, vt = np.linalg.svd(base - mean, full_matrices=False)
    comps = vt[:k].T                                            # (D, k)
    return [((p - mean) @ comps).astype(np.float32) for p in (train, *others)], min(k, comps.shape[1])


def run_suite(release: Callable[[str, int], np.ndarray], protocol: Protocol, noisy: bool,
              settings: SuiteSettings = SuiteSettings(), seed: int = 0,
              step: Callable[[str], None] = lambda what: log.info("stronger attacks: %s", what)) -> AttackSuite:
    """``release(split, rounds)`` -> float32 (rounds, N, D) released features of ``split`` (attack_train or
    attack_test), fresh noise per round; ``noisy``: whether rounds differ (otherwise one is drawn)."""
    a_tr, a_te = protocol.attack_train, protocol.attack_test
    people = np.unique(a_tr.identity)
    id_tr, id_te = np.searchsorted(people, a_tr.identity), np.searchsorted(people, a_te.identity)
    n = len(people)
    longest = max(settings.lengths)
    rounds = {"attack_train": 1, "attack_test": 1}
    stack = max(1, min(settings.stack_rounds, settings.stack_max // len(id_tr)))
    if noisy:
        rounds = {"attack_train": min(settings.max_rounds, max(stack, rounds_needed(id_tr, longest))),
                  "attack_test": min(settings.max_rounds, rounds_needed(id_te, longest))}
    step("releases")
    (r_tr, r_te), projected = _project(release("attack_train", rounds["attack_train"]),
                                       release("attack_test", rounds["attack_test"]), k=settings.max_dims)
    train = ReleasePool(r_tr, id_tr, a_tr.primary)
    test = ReleasePool(r_te, id_te, a_te.primary)
    stack = min(stack, train.rounds)
    x_stack = train.releases[:stack].reshape(stack * len(id_tr), -1)
    y_stack = np.tile(id_tr, stack)
    # the single-release classifier whose log-probabilities the aggregation sums, trained on the releases
    # the L=1 set attackers train on (at least train_sets per person: a few hundred samples alone make too
    # few steps per epoch for its early stopping)
    step("single-release attacker")
    per = max(settings.train_sets, int(np.bincount(id_tr).max()))
    singles = draw_sets(id_tr, 1, per, train.rounds, np.random.default_rng([seed, 1]))
    single = train_attacker("mlp", singles.means(train), singles.person,
                            test.releases.reshape(test.rounds * len(id_te), -1), n, settings=settings.attacker,
                            seed=seed)
    logp = torch.log_softmax(torch.from_numpy(single.scores), dim=1).numpy().reshape(test.rounds, len(id_te), n)
    agg = []
    for L in settings.lengths:
        step(f"aggregation L={L}")
        hits = aggregation_attacks(train, test, L, n, settings=settings.attacker,
                                   train_per_person=max(settings.train_sets, int(np.bincount(id_tr).max())),
                                   test_per_person=max(settings.test_sets, int(np.bincount(id_te).max())) if L == 1
                                   else settings.test_sets, single_release_logp=logp, seed=seed,
                                   set_per_person=settings.train_sets)
        top1 = {k: mean_interval(v, hits.person, resamples=settings.resamples, seed=seed)
                for k, v in hits.hits.items()}
        agg.append(AggregationFigures(L, 1.0 / n, mean_interval(hits.label_floor, hits.person,
                                                                resamples=settings.resamples, seed=seed),
                                      top1, hits.epochs, max(top1, key=lambda k: top1[k].value)))
    links = []
    for L in settings.lengths:
        step(f"linkage L={L}")
        links.append(linkage_attack(train, test, L, settings=settings.attacker, per_person=settings.link_sets,
                                    max_different=settings.max_different, resamples=settings.resamples, seed=seed))
    step("metric attacker")
    metric = None
    if n >= 4:
        metric = metric_attack(x_stack, y_stack, test.releases[0], id_te, settings=settings.attacker,
                               max_different=settings.max_different, resamples=settings.resamples, seed=seed)
    step("capacity sweep")
    sweep = capacity_sweep(x_stack, y_stack, test.releases[0], id_te, n, settings=settings.saturate,
                           widths=settings.widths, depths=settings.depths, resamples=settings.resamples,
                           seed=seed)
    return AttackSuite(n_classes=n, chance=1.0 / n, aggregation=agg, linkage=links, metric=metric,
                       sweep=sweep, rounds=rounds, projected_dims=projected)
