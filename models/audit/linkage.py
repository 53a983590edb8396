"""Linkage: are two releases (or two sets of L releases) from the same person?

Each person's inputs are split in two halves; *probe* sets are drawn from one half and *reference* sets
from the other, so a same-person pair never shares an input (linking two noisy releases of one input is
another, easier question). Every probe is paired with references: all same-person pairs and a random
sample of the different-person ones (the rates are conditional on the pair's kind, so sampling the kinds
apart does not bias them). A set is represented by the mean of its releases, standardised with the
attacker's training statistics.

Scorers: ``cosine`` and ``distance`` (minus the Euclidean distance), and ``pair mlp``, a classifier of
``[|a - b|, a * b]`` trained on pairs of the attacker's training sets. ``labels`` is the floor: the L primary
labels alone (minus the L1 distance of the two sets' label histograms). The reported scorer is the one
with the lowest EER. Figures: EER and the true-acceptance rate at 1% and 0.1% false acceptance; their
intervals resample people (:func:`models.audit.intervals.pair_weights`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.audit.aggregation import ReleasePool, ReleaseSets, draw_sets
from models.audit.attackers import Standardiser, TrainSettings
from models.audit.intervals import Interval, bootstrap_many, pair_weights
from models.audit.measures import equal_error_rate, tpr_at_fpr

FPRS = (0.01, 0.001)


@dataclass(frozen=True)
class Pairs:
    """P pairs of probe i and reference j (indices into the two set lists) and whether one person."""

    i: np.ndarray
    j: np.ndarray
    same: np.ndarray
    person_i: np.ndarray
    person_j: np.ndarray


def halves(identity: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each person's inputs (of people with two or more) split at random into two halves."""
    a, b = [], []
    for p in np.unique(identity):
        own = rng.permutation(np.flatnonzero(identity == p))
        if len(own) >= 2:
            a.extend(own[:len(own) // 2])
            b.extend(own[len(own) // 2:])
    return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)


def probe_reference_sets(pool: ReleasePool, length: int, per_person: int, rng: np.random.Generator
                         ) -> tuple[ReleaseSets, ReleaseSets]:
    a, b = halves(pool.identity, rng)
    return (draw_sets(pool.identity, length, per_person, pool.rounds, rng, a),
            draw_sets(pool.identity, length, per_person, pool.rounds, rng, b))


def make_pairs(person_a: np.ndarray, person_b: np.ndarray, max_different: int, rng: np.random.Generator) -> Pairs:
    """All same-person (probe, reference) pairs and at most ``max_different`` random different-person ones."""
    i, j = np.meshgrid(np.arange(len(person_a)), np.arange(len(person_b)), indexing="ij")
    i, j = i.ravel(), j.ravel()
    same = person_a[i] == person_b[j]
    diff = np.flatnonzero(~same)
    if len(diff) > max_different:
        diff = rng.choice(diff, max_different, replace=False)
    keep = np.sort(np.concatenate([np.flatnonzero(same), diff]))
    i, j = i[keep], j[keep]
    return Pairs(i, j, person_a[i] == person_b[j], person_a[i], person_b[j])


class PairScorer(nn.Module):
    """(B, D), (B, D) -> (B,) same-person logit, from the symmetric ``[|a - b|, a * b]``."""

    def __init__(self, dims: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dims, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([(a - b).abs(), a * b], dim=1)).squeeze(1)


def train_pair_scorer(za: np.ndarray, zb: np.ndarray, pairs: Pairs, settings: TrainSettings, seed: int
                      ) -> PairScorer:
    """Balanced-loss training on ``pairs`` of standardised set means, early stopping on a 15% slice of
    the pairs (by validation EER)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    order = rng.permutation(len(pairs.i))
    n_val = max(2, int(len(order) * settings.val_fraction))
    val, fit = order[:n_val], order[n_val:]
    a, b = torch.from_numpy(za), torch.from_numpy(zb)
    y = torch.from_numpy(pairs.same.astype(np.float32))
    pos_weight = torch.tensor(max(1.0, float((1 - y).sum() / max(y.sum(), 1))))
    model = PairScorer(za.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    best, best_state, since = float("inf"), None, 0
    vi, vj = torch.from_numpy(pairs.i[val]), torch.from_numpy(pairs.j[val])
    can_score = pairs.same[val].any() and not pairs.same[val].all()
    for _ in range(settings.max_epochs):
        model.train()
        shuffled = rng.permutation(fit)
        for s in range(0, len(fit), 4 * settings.batch_size):      # pairs are many and cheap: big batches
            idx = shuffled[s:s + 4 * settings.batch_size]
            ti, tj = torch.from_numpy(pairs.i[idx]), torch.from_numpy(pairs.j[idx])
            opt.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(model(a[ti], b[tj]), y[idx],
                                                           pos_weight=pos_weight).backward()
            opt.step()
        with torch.inference_mode():
            model.eval()
            out = model(a[vi], b[vj]).numpy()
        score = equal_error_rate(pairs.same[val], out) if can_score else 0.0
        if score < best - 1e-4:
            best, best_state, since = score, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            since += 1
        if since >= settings.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


@dataclass(frozen=True)
class LinkageResult:
    """Linkage of sets of ``length`` releases: the best scorer's figures with people-level intervals,
    every scorer's EER, and the label-only floor's EER."""

    length: int
    scorer: str
    eer: Interval
    tpr: dict[float, Interval]       # false-acceptance rate -> true-acceptance rate there
    scorer_eer: dict[str, float]
    label_floor_eer: float
    pairs: int
    same_pairs: int

    def to_dict(self) -> dict:
        return {"length": self.length, "scorer": self.scorer, "eer": self.eer.to_dict(),
                "tpr_at_fpr": {str(k): v.to_dict() for k, v in self.tpr.items()},
                "scorer_eer": self.scorer_eer, "label_floor_eer": self.label_floor_eer,
                "pairs": self.pairs, "same_pairs": self.same_pairs}


def pair_figures(same: np.ndarray, score: np.ndarray, person_i: np.ndarray, person_j: np.ndarray, *,
                 resamples: int, seed: int) -> tuple[Interval, dict[float, Interval]]:
    """EER and TPR at each of FPRS, with intervals resampling the people of ``person_*`` (codes)."""
    _, codes = np.unique(np.concatenate([person_i, person_j]), return_inverse=True)
    ci, cj = codes[:len(person_i)], codes[len(person_i):]

    def stat(m: np.ndarray) -> np.ndarray:
        w = pair_weights(m, ci, cj)
        keep = w > 0
        if not same[keep].any() or same[keep].all():
            return np.full(1 + len(FPRS), np.nan)
        return np.array([equal_error_rate(same, score, w)] + [tpr_at_fpr(same, score, f, w) for f in FPRS])

    figs = bootstrap_many(stat, int(codes.max()) + 1, units="people", resamples=resamples, seed=seed)
    return figs[0], dict(zip(FPRS, figs[1:]))


def linkage_attack(train: ReleasePool, test: ReleasePool, length: int, *, settings: TrainSettings,
                   per_person: int, max_different: int, resamples: int, seed: int = 0) -> LinkageResult:
    """Every scorer of the module docstring on (probe, reference) set pairs of ``length`` releases."""
    rng = np.random.default_rng([seed, length, 7])
    norm = Standardiser(train.releases[0])
    ta, tb = probe_reference_sets(train, length, per_person, rng)
    tp = make_pairs(ta.person, tb.person, max_different, rng)
    scorer = train_pair_scorer(norm(ta.means(train)), norm(tb.means(train)), tp, settings, seed)
    pa, pb = probe_reference_sets(test, length, per_person, rng)
    pairs = make_pairs(pa.person, pb.person, max_different, rng)
    za, zb = norm(pa.means(test)).astype(np.float64), norm(pb.means(test)).astype(np.float64)
    a, b = za[pairs.i], zb[pairs.j]
    unit = lambda z: z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)   # noqa: E731
    with torch.inference_mode():
        learned = scorer(torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32))).numpy()
    scores = {"cosine": np.einsum("pd,pd->p", unit(a), unit(b)), "distance": -np.linalg.norm(a - b, axis=1),
              "pair mlp": learned.astype(np.float64)}
    eers = {k: equal_error_rate(pairs.same, v) for k, v in scores.items()}
    best = min(eers, key=eers.get)
    labels = np.unique(np.concatenate([train.primary, test.primary]))
    hist = lambda s: (test.primary[s.inputs][..., None] == labels).mean(axis=1)        # noqa: E731
    ha, hb = hist(pa), hist(pb)
    label_score = -np.abs(ha[pairs.i] - hb[pairs.j]).sum(axis=1)
    floor = 0.5 if np.ptp(label_score) == 0 else equal_error_rate(pairs.same, label_score)
    eer, tpr = pair_figures(pairs.same, scores[best], pairs.person_i, pairs.person_j, resamples=resamples,
                            seed=seed)
    return LinkageResult(length=length, scorer=best, eer=eer, tpr=tpr, scorer_eer=eers,
                         label_floor_eer=floor, pairs=len(pairs.i), same_pairs=int(pairs.same.sum()))
