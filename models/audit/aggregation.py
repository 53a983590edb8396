"""Aggregation attacks: the cloud links L releases of one person (device id and time give them away) and
attacks them together, which averages the per-release noise away.

Releases come from a :class:`ReleasePool`: R rounds of releases of every input of a split, each round drawn
through the extractor again, so with fresh noise. A *set* of L releases of one person takes L of that
person's inputs in a random order, each input again only once all the others were used (a person with
fewer than L inputs has some released several times, from other rounds: the noise is fresh per release).

Attackers on sets, all trained on sets of the attacker's training inputs and tested on sets of its test
inputs (same people, other inputs):

- ``mean+linear``, ``mean+mlp``, ``mean+1-nn``: the attackers of :mod:`models.audit.attackers` on the mean
  of the L releases;
- ``log-prob sum``: the single-release MLP's log-probabilities summed over the set (the Bayes rule for
  conditionally independent releases);
- ``deep sets``: a set classifier, an MLP per release, mean-pooled, then an MLP (Zaheer et al. 2017),
  trained on fresh random sets every epoch with early stopping on sets of a held-out slice of inputs.

The label floor at L (:func:`set_label_floor`) is the attacker who sees only the L primary labels.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.audit.attackers import (BestSoFar, Standardiser, TrainSettings, nearest_neighbour, train_attacker,
                                    validation_split)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleasePool:
    """releases: float32 (R, N, D), R rounds of the released features of N inputs; identity: (N,) codes
    0..C-1; primary: (N,) primary labels. Round r of input i is ``releases[r, i]``."""

    releases: np.ndarray
    identity: np.ndarray
    primary: np.ndarray

    def __post_init__(self) -> None:
        r = self.releases
        if r.ndim != 3 or r.shape[1] != len(self.identity) or len(self.primary) != len(self.identity):
            raise ValueError(f"releases must be (R, N, D) with N labels, got {r.shape}")

    @property
    def rounds(self) -> int:
        return self.releases.shape[0]

    def subset(self, idx: np.ndarray) -> "ReleasePool":
        return ReleasePool(self.releases[:, idx], self.identity[idx], self.primary[idx])


@dataclass(frozen=True)
class ReleaseSets:
    """S sets of L releases: inputs and rounds (S, L) index a pool; person (S,)."""

    inputs: np.ndarray
    rounds: np.ndarray
    person: np.ndarray

    def features(self, pool: ReleasePool) -> np.ndarray:
        """(S, L, D) released features of every member."""
        return pool.releases[self.rounds, self.inputs]

    def means(self, pool: ReleasePool) -> np.ndarray:
        """(S, D) mean release of each set."""
        return self.features(pool).mean(axis=1)


def rounds_needed(identity: np.ndarray, length: int) -> int:
    """Rounds of releases a pool needs for sets of ``length`` of every person: ceil(L / fewest inputs)."""
    _, counts = np.unique(identity, return_counts=True)
    return int(-(-length // counts.min()))


def draw_sets(identity: np.ndarray, length: int, per_person: int, rounds: int, rng: np.random.Generator,
              members: np.ndarray | None = None) -> ReleaseSets:
    """``per_person`` sets of ``length`` releases for every person of ``identity`` (N,), from the inputs
    ``members`` (indices into identity; default all). An input's k-th use in one set takes round
    ``(start + k) mod rounds``, ``start`` random per set, so no release repeats within a set while
    ``rounds`` suffice (:func:`rounds_needed`)."""
    identity = np.asarray(identity)
    members = np.arange(len(identity)) if members is None else np.asarray(members)
    inputs, rnds, person = [], [], []
    for p in np.unique(identity[members]):
        own = members[identity[members] == p]
        reps = -(-length // len(own))
        for _ in range(per_person):
            order = np.concatenate([rng.permutation(own) for _ in range(reps)])[:length]
            use = np.arange(length) // len(own)          # how often this input was used before
            inputs.append(order)
            rnds.append((rng.integers(rounds) + use) % rounds)
            person.append(p)
    return ReleaseSets(np.array(inputs), np.array(rnds), np.array(person))


def set_label_floor(label_train: np.ndarray, id_train: np.ndarray, labels: np.ndarray, person: np.ndarray,
                    n_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Hits (S,) of the label-only attacker on sets: ``labels`` (S, L) primary labels of each set's members,
    ``person`` (S,) the truth. It ranks people by the likelihood of the L labels, P(label | person) from
    the training counts with ``alpha`` added to each; ties share the credit (1 / number tied)."""
    classes = np.unique(np.concatenate([label_train, labels.ravel()]))
    counts = np.full((len(classes), n_classes), alpha)
    np.add.at(counts, (np.searchsorted(classes, label_train), id_train), 1.0)
    log_p = np.log(counts / counts.sum(axis=0, keepdims=True))          # (labels, people)
    score = log_p[np.searchsorted(classes, labels)].sum(axis=1)         # (S, people)
    best = np.isclose(score, score.max(axis=1, keepdims=True), rtol=0, atol=1e-9)
    return best[np.arange(len(person)), person] / best.sum(axis=1)


class SetClassifier(nn.Module):
    """DeepSets: (B, L, D) sets -> (B, C) identity logits; rho(mean_l phi(x_l))."""

    def __init__(self, dims: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rho(self.phi(x).mean(dim=1))  # (B, L, D) -> (B, L, H) -> (B, H) -> (B, C)


def train_set_classifier(pool: ReleasePool, length: int, n_classes: int, settings: TrainSettings,
                         per_person: int, seed: int, hidden: int = 128) -> tuple[SetClassifier, Standardiser, int]:
    """Train a :class:`SetClassifier` on fresh sets of ``length`` from the pool every epoch; stop when the
    accuracy (loss breaking ties) on sets of a held-out slice of each person's inputs stops improving.
    Returns the best model, the standardiser it expects and its epoch count."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    norm = Standardiser(pool.releases[0])
    fit, val = validation_split(pool.identity, settings.val_fraction, rng)
    if len(val) == 0:
        val = fit
    val_sets = draw_sets(pool.identity, length, max(4, per_person // 4), pool.rounds, rng, val)
    xv = _standard(norm, val_sets.features(pool))
    yv = torch.from_numpy(val_sets.person.astype(np.int64))
    model = SetClassifier(pool.releases.shape[2], n_classes, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    best = BestSoFar(settings)
    for epoch in range(1, settings.max_epochs + 1):
        sets = draw_sets(pool.identity, length, per_person, pool.rounds, rng, fit)
        x = _standard(norm, sets.features(pool))
        y = torch.from_numpy(sets.person.astype(np.int64))
        model.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        for s in range(0, len(x), settings.batch_size):
            idx = order[s:s + settings.batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        with torch.inference_mode():
            model.eval()
            logits = model(xv)
            score = ((logits.argmax(1) == yv).double().mean().item(),
                     -nn.functional.cross_entropy(logits, yv).item())
        if best.update(score, model, epoch):
            break
    model.load_state_dict(best.state)
    return model.eval(), norm, best.epoch


def _standard(norm: Standardiser, x: np.ndarray) -> torch.Tensor:
    """(S, L, D) -> standardised float32 tensor of the same shape."""
    s, l, d = x.shape
    return torch.from_numpy(norm(x.reshape(s * l, d)).reshape(s, l, d))


@dataclass(frozen=True)
class SetHits:
    """Per-set hits (S,) of every attacker on the test sets, and the sets' people."""

    length: int
    person: np.ndarray
    hits: dict[str, np.ndarray]
    label_floor: np.ndarray
    epochs: dict[str, int | None]


def aggregation_attacks(train: ReleasePool, test: ReleasePool, length: int, n_classes: int, *,
                        settings: TrainSettings, train_per_person: int, test_per_person: int,
                        single_release_logp: np.ndarray | None = None, seed: int = 0,
                        set_classifier: bool = True, set_per_person: int | None = None) -> SetHits:
    """Every attacker of the module docstring on sets of ``length`` releases.

    train / test: pools with identity codes 0..n_classes-1. single_release_logp: (R_test, N_test, C)
    log-probabilities of a single-release classifier on every test release (for ``log-prob sum``).
    set_per_person: fresh sets per person and epoch of the set classifier (default ``train_per_person``).
    """
    rng = np.random.default_rng([seed, length])
    train_sets = draw_sets(train.identity, length, train_per_person, train.rounds, rng)
    test_sets = draw_sets(test.identity, length, test_per_person, test.rounds, rng)
    m_train, m_test = train_sets.means(train), test_sets.means(test)
    y = test_sets.person
    hits, epochs = {}, {}
    for i, kind in enumerate(("linear", "mlp")):
        out = train_attacker(kind, m_train, train_sets.person, m_test, n_classes, settings=settings,
                             seed=seed + i)
        hits[f"mean+{kind}"], epochs[f"mean+{kind}"] = out.scores.argmax(1) == y, out.epochs
    nn_scores = nearest_neighbour(m_train, train_sets.person, m_test, n_classes).scores
    hits["mean+1-nn"], epochs["mean+1-nn"] = nn_scores.argmax(1) == y, None
    if single_release_logp is not None:
        summed = single_release_logp[test_sets.rounds, test_sets.inputs].sum(axis=1)   # (S, C)
        hits["log-prob sum"], epochs["log-prob sum"] = summed.argmax(1) == y, None
    if set_classifier:
        model, norm, ep = train_set_classifier(train, length, n_classes, settings,
                                               set_per_person or train_per_person, seed)
        with torch.inference_mode():
            x = _standard(norm, test_sets.features(test))
            logits = torch.cat([model(x[s:s + 256]) for s in range(0, len(x), 256)])
        hits["deep sets"], epochs["deep sets"] = logits.argmax(1).numpy() == y, ep
    floor = set_label_floor(train.primary, train.identity, test.primary[test_sets.inputs], y, n_classes)
    return SetHits(length, y, {k: v.astype(np.float64) for k, v in hits.items()}, floor, epochs)
