"""Every training loss of privedge, and the weights that switch the identity terms on.

- ``contrastive_loss``: the paper's Siamese loss on the cut layer (same primary label pulled together,
  different labels pushed ``margin`` apart);
- ``pair_loss`` and ``agnostic_contrastive_loss``: the identity-agnostic form used by the private
  embedding, on the released features (same label and *different* people pulled together, so each person's
  samples of a class drift to the class's common point; Osia et al.'s follow-up, Deep Private-Feature
  Extraction);
- ``confusion_loss``: what the extractor minimises against the identity adversary (cross-entropy to the
  uniform distribution, a bounded form of gradient reversal);
- ``PrivateLoss``: the weights of the two identity terms added to the primary cross-entropy.

The loops that use them are in :mod:`models.training_loops` (plain and Siamese fitting) and
:mod:`models.private` (the joint loop with the adversary).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def contrastive_loss(features: torch.Tensor, labels: torch.Tensor, margin: float,
                     normalize: bool = True) -> torch.Tensor:
    """Contrastive loss over all pairs of a batch: similar pairs (same label) pulled together
    (``d^2``), dissimilar pairs pushed at least ``margin`` apart (``max(0, margin - d)^2``).

    features: (B, F) flattened cut-layer outputs; labels: (B,) primary labels.
    With ``normalize`` the features are first rescaled so that their mean norm is ``margin``: the loss no
    longer depends on the layer's arbitrary scale (a 4096-dim ReLU layer has distances in the tens, a PCA
    output in the units), and the margin means "dissimilar pairs at least as far apart as a typical feature
    is long" (cosine below 0.5 for equal norms). Its magnitude is then of order ``margin**2``.
    """
    if normalize:
        features = features * (margin / features.norm(dim=1).mean().clamp_min(1e-8))
    d2 = torch.cdist(features, features).pow(2)  # (B, B)
    same = labels[:, None] == labels[None, :]
    d = d2.clamp_min(1e-12).sqrt()
    per_pair = torch.where(same, d2, (margin - d).clamp_min(0).pow(2))
    off_diag = ~torch.eye(len(labels), dtype=torch.bool)
    return per_pair[off_diag].mean()


def pair_loss(z: torch.Tensor, pull: torch.Tensor, push: torch.Tensor, margin: float,
              normalize: bool = True) -> torch.Tensor:
    """Mean over the selected pairs of ``d^2`` (pull) and ``max(0, margin - d)^2`` (push).

    z: (B, F); pull, push: (B, B) boolean masks (the diagonal is ignored). With ``normalize`` the features
    are rescaled so that their mean distance from the batch's mean is ``margin``: the loss depends neither
    on their scale nor on a common offset. (Scaled by the plain norm, the extractor lowered the loss by
    adding one offset to every feature, which made all pairs look closer without bringing a class's
    members together: the within-class share of the spread stayed at 15% for weights from 0.5 to 8.)
    """
    if normalize:
        spread = (z - z.mean(dim=0, keepdim=True)).norm(dim=1).mean()
        z = z * (margin / spread.clamp_min(1e-8))
    d2 = torch.cdist(z, z).pow(2)  # (B, B)
    d = d2.clamp_min(1e-12).sqrt()
    off = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    pull, push = pull & off, push & off
    n = pull.sum() + push.sum()
    if n == 0:
        return z.sum() * 0.0
    return (d2[pull].sum() + (margin - d[push]).clamp_min(0).pow(2).sum()) / n


def agnostic_contrastive_loss(z: torch.Tensor, label: torch.Tensor, identity: torch.Tensor, margin: float,
                              normalize: bool = True) -> torch.Tensor:
    """Same label, different people: pulled together; different labels: pushed apart; same person and
    label: not a pair. z: (B, F); label, identity: (B,)."""
    same_label = label[:, None] == label[None, :]
    same_person = identity[:, None] == identity[None, :]
    return pair_loss(z, same_label & ~same_person, ~same_label, margin, normalize)


def confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, C) against the uniform distribution: minimal (= log C) when the
    adversary cannot tell anyone apart."""
    return -torch.log_softmax(logits, dim=1).mean()


@dataclass(frozen=True)
class PrivateLoss:
    """Weights of the identity terms added to the primary cross-entropy (0 = off)."""

    agnostic_weight: float = 0.0
    adversary_weight: float = 0.0
    margin: float = 10.0
    adversary_lr: float = 2e-3

    def __post_init__(self) -> None:
        if self.agnostic_weight < 0 or self.adversary_weight < 0 or self.margin <= 0 or self.adversary_lr <= 0:
            raise ValueError(f"invalid private loss settings {self}")

    @property
    def active(self) -> bool:
        return self.agnostic_weight > 0 or self.adversary_weight > 0
