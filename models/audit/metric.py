"""A metric-learning attacker: an embedding trained with the additive-margin softmax (AM-softmax, Wang et
al. 2018, the loss of CosFace) on some people, then used on people it never saw.

The attacker's people are split at random (seeded) into two halves. The embedding net (an MLP, unit-length
output) trains on the releases of the first half; the logit of class c is ``s * (cos(e, w_c) - m [c = y])``.
It stops when the accuracy on a validation slice of its training releases stops improving. On the other
half, never seen in training:

- identification: each person's gallery is the mean embedding of their ``attack_train`` releases, each
  ``attack_test`` release is a probe, named after the gallery of highest cosine; top-1 with chance
  1 / (unseen people);
- verification: (probe, gallery release) pairs, same person or not, scored by cosine; EER and TPR at
  1% / 0.1% false acceptance.

Intervals resample the unseen people.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.audit.attackers import BestSoFar, Standardiser, TrainSettings, validation_split
from models.audit.intervals import Interval, mean_interval
from models.audit.linkage import make_pairs, pair_figures


class MarginEmbedding(nn.Module):
    """(B, D) -> (B, E) unit-length embeddings; ``weight`` (C, E) holds one direction per training person."""

    def __init__(self, dims: int, n_classes: int, hidden: int = 256, embed: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, embed))
        self.weight = nn.Parameter(torch.randn(n_classes, embed) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=1)

    def cosines(self, e: torch.Tensor) -> torch.Tensor:
        return e @ nn.functional.normalize(self.weight, dim=1).T   # (B, E) -> (B, C)


def am_softmax_loss(cos: torch.Tensor, y: torch.Tensor, scale: float = 30.0, margin: float = 0.35) -> torch.Tensor:
    """Cross-entropy of ``scale * (cos - margin * onehot(y))``; cos (B, C), y (B,)."""
    return nn.functional.cross_entropy(scale * (cos - margin * nn.functional.one_hot(y, cos.shape[1])), y)


def train_embedding(x: np.ndarray, y: np.ndarray, n_classes: int, settings: TrainSettings, seed: int
                    ) -> tuple[MarginEmbedding, Standardiser]:
    """AM-softmax training on standardised x (N, D) with labels y (N,) in 0..n_classes-1."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    norm = Standardiser(x)
    xt, yt = torch.from_numpy(norm(x)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    fit, val = validation_split(np.asarray(y), settings.val_fraction, rng)
    val = val if len(val) else fit
    model = MarginEmbedding(xt.shape[1], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    best = BestSoFar(settings)
    for _ in range(settings.max_epochs):
        model.train()
        order = fit[rng.permutation(len(fit))]
        for s in range(0, len(order), settings.batch_size):
            idx = torch.from_numpy(order[s:s + settings.batch_size])
            opt.zero_grad()
            am_softmax_loss(model.cosines(model(xt[idx])), yt[idx]).backward()
            opt.step()
        with torch.inference_mode():
            model.eval()
            cos = model.cosines(model(xt[val]))
            score = ((cos.argmax(1) == yt[val]).double().mean().item(), -am_softmax_loss(cos, yt[val]).item())
        if best.update(score, model):
            break
    model.load_state_dict(best.state)
    return model.eval(), norm


@dataclass(frozen=True)
class MetricResult:
    train_people: int
    unseen_people: int
    top1: Interval
    chance: float
    eer: Interval
    tpr: dict[float, Interval]

    def to_dict(self) -> dict:
        return {"train_people": self.train_people, "unseen_people": self.unseen_people,
                "identification_top1": self.top1.to_dict(), "chance": self.chance, "eer": self.eer.to_dict(),
                "tpr_at_fpr": {str(k): v.to_dict() for k, v in self.tpr.items()}}


def split_people(people: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random half of ``people`` (at least 2) to train on, the rest (at least 2) unseen."""
    people = rng.permutation(np.unique(people))
    if len(people) < 4:
        raise ValueError(f"the metric attacker needs at least 4 people, got {len(people)}")
    k = len(people) // 2
    return np.sort(people[:k]), np.sort(people[k:])


def metric_attack(x_train: np.ndarray, id_train: np.ndarray, x_test: np.ndarray, id_test: np.ndarray, *,
                  settings: TrainSettings, max_different: int, resamples: int, seed: int = 0) -> MetricResult:
    """The attacker of the module docstring. x_train (N, D) / id_train (N,): the attacker's training releases
    (several rounds may be stacked); x_test / id_test: its test releases (same people, other inputs)."""
    rng = np.random.default_rng([seed, 11])
    seen, unseen = split_people(id_train, rng)
    on = np.isin(id_train, seen)
    model, norm = train_embedding(x_train[on], np.searchsorted(seen, id_train[on]), len(seen), settings, seed)

    def embed(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(norm(x))).double().numpy()
    g_mask, p_mask = np.isin(id_train, unseen), np.isin(id_test, unseen)
    g, gid = embed(x_train[g_mask]), np.searchsorted(unseen, id_train[g_mask])
    p, pid = embed(x_test[p_mask]), np.searchsorted(unseen, id_test[p_mask])
    centres = np.stack([g[gid == c].mean(axis=0) for c in range(len(unseen))])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    top1 = mean_interval((p @ centres.T).argmax(1) == pid, pid, resamples=resamples, seed=seed)
    pairs = make_pairs(pid, gid, max_different, rng)
    cos = np.einsum("pd,pd->p", p[pairs.i], g[pairs.j])
    eer, tpr = pair_figures(pairs.same, cos, pairs.person_i, pairs.person_j, resamples=resamples, seed=seed)
    return MetricResult(train_people=len(seen), unseen_people=len(unseen), top1=top1,
                        chance=1.0 / len(unseen), eer=eer, tpr=tpr)

