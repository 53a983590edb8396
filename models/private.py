"""Training against identity: the joint loop of the private embedding, with an adversarial identity classifier.

Both identity terms act on the *released* features z (after PCA and noise, what leaves the gateway):
- the identity-agnostic contrastive loss (:func:`models.losses.agnostic_contrastive_loss`): same label,
  different people pulled together, so every person's samples of a class drift to the class's common point;
- adversarial removal: an ``IdentityAdversary`` (an MLP) is trained to recognise the training people from z;
  the extractor, in alternating steps, is trained to make its prediction uniform (``confusion_loss``, a
  bounded form of gradient reversal: maximising the adversary's cross-entropy itself has no optimum).

``fit_private`` runs the joint loop: cross-entropy on the primary label through the analyzer, plus the two
weighted terms, with the adversary updated after every step on the detached features.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.inputs import InputSet
from models.losses import PrivateLoss, agnostic_contrastive_loss, confusion_loss
from models.pca import Project
from models.training_loops import LoopConfig, recalibrate_batch_norm

log = logging.getLogger(__name__)


class IdentityAdversary(nn.Module):
    """(B, k) released features -> (B, n_people) identity logits; a small MLP like the audit's attacker."""

    def __init__(self, in_dim: int, n_people: int, hidden: int = 64) -> None:
        super().__init__()
        if in_dim < 1 or n_people < 2 or hidden < 1:
            raise ValueError(f"invalid adversary shape {in_dim} -> {hidden} -> {n_people}")
        self.norm = nn.BatchNorm1d(in_dim, affine=False)  # the extractor may rescale z; the attacker would too
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_people))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(z))


def fit_private(extractor: nn.Module, analyzer: nn.Module, data: InputSet, identity: np.ndarray,
                loop: LoopConfig, losses: PrivateLoss, rng: np.random.Generator, *,
                train_extractor: bool = True,
                progress: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Train ``analyzer`` (and ``extractor`` when ``train_extractor``) for the primary task with the identity
    terms of ``losses`` on the extractor's output. identity: (N,) person index of each training input.
    Returns per-epoch means of the primary loss and of the adversary's accuracy on the training batches."""
    ident = torch.from_numpy(np.unique(np.asarray(identity), return_inverse=True)[1].astype(np.int64))
    if len(ident) != len(data):
        raise ValueError(f"{len(ident)} identities for {len(data)} inputs")
    n_people = int(ident.max()) + 1
    params = list(analyzer.parameters()) + (list(extractor.parameters()) if train_extractor else [])
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=loop.lr, weight_decay=loop.weight_decay)
    steps = max(1, loop.epochs * -(-len(data) // loop.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    adversary = opt_adv = None
    if losses.adversary_weight > 0 and train_extractor and n_people >= 2:
        k = int(extractor(data.plain()[:2]).shape[1]) if len(data) >= 2 else 1
        adversary = IdentityAdversary(k, n_people)
        opt_adv = torch.optim.Adam(adversary.parameters(), lr=losses.adversary_lr)
    ce = nn.CrossEntropyLoss()
    whole = nn.Sequential(extractor, analyzer)
    # An extractor ending with a noisy projection is run in two steps, to see its features before the noise.
    last = list(extractor.children())[-1] if isinstance(extractor, nn.Sequential) and len(extractor) else None
    project = last if isinstance(last, Project) else None
    body = (lambda x: project.project(extractor[:-1](x))) if project is not None else None
    history: dict[str, list[float]] = {"primary": [], "adversary_accuracy": []}
    for _ in range(loop.epochs):
        whole.train()
        if not train_extractor:
            extractor.eval()
        x_all = data.epoch_inputs(rng)
        order = torch.from_numpy(rng.permutation(len(data)))
        sums = np.zeros(3)
        for start in range(0, len(data), loop.batch_size):
            idx = order[start:start + loop.batch_size]
            if len(idx) < 2:
                continue
            x, y, who = x_all[idx], data.y[idx], ident[idx]
            clean = body(x) if project is not None else extractor(x)
            z = project.add_noise(clean) if project is not None else clean  # (B, k) released features
            primary = ce(analyzer(z), y)
            loss = primary
            if losses.agnostic_weight > 0 and train_extractor:
                # on the features before the noise: the noise is a floor this loss could not lower, and
                # what it should remove is the people's structure that the noise alone would leave
                loss = loss + losses.agnostic_weight * agnostic_contrastive_loss(clean, y, who, losses.margin)
            if adversary is not None:
                adversary.eval()  # the extractor plays against the adversary's current state
                loss = loss + losses.adversary_weight * confusion_loss(adversary(z))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hit = 0.0
            if adversary is not None:
                adversary.train()
                logits = adversary(z.detach())
                adv_loss = ce(logits, who)
                opt_adv.zero_grad(set_to_none=True)
                adv_loss.backward()
                opt_adv.step()
                hit = float((logits.argmax(1) == who).float().mean())
            sums += (primary.item() * len(idx), hit * len(idx), len(idx))
            if progress is not None:
                progress(len(idx))
        history["primary"].append(sums[0] / max(sums[2], 1))
        history["adversary_accuracy"].append(sums[1] / max(sums[2], 1))
        log.debug("private epoch %d: primary loss %.4f, adversary accuracy %.3f", len(history["primary"]),
                  history["primary"][-1], history["adversary_accuracy"][-1])
    if loop.epochs > 0:
        recalibrate_batch_norm(whole, data.epoch_inputs(rng), frozen=None if train_extractor else extractor)
    whole.eval()
    return history
