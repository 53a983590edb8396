"""White-box inversion: an attacker holding the extractor's weights rebuilds the input by optimisation.

In the style of Mahendran & Vedaldi ("Understanding deep image representations by inverting them"): for
each released feature vector z, start from the mean of the inputs the attacker holds and follow the
gradient of ``|E(x) - z|^2`` (standardised per feature dimension) plus a total-variation prior through the
extractor's own torch layers. The image is parametrised as ``sigmoid(u)`` so it stays in [0, 1] without
clipping. The extractor is run without its feature noise: the attacker knows the weights but not the
noise drawn for a message, so it matches the noiseless features to the noisy release it saw.

Unlike the decoder (:mod:`models.audit.inversion`) nothing is trained on the attacker's labelled inputs
beyond their mean: what comes back is what the released numbers pin down through the weights.

:func:`reconstruction_match` scores any reconstructions, the decoder's too, by whether they look more like
their own input than like other people's: a reconstruction that is only the average face of its class
scores 0.5.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.audit.measures import ssim

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WhiteBoxSettings:
    """The optimisation; the defaults reconstruct 64 faces in well under a minute on one core."""

    steps: int = 200
    lr: float = 0.1             # Adam on the logits u of the image
    tv_weight: float = 0.05     # total-variation prior, against the standardised feature error
    max_inputs: int = 64        # held-out inputs reconstructed (a seeded sample of attack_test)
    others: int = 32            # other people's inputs each reconstruction is compared with

    def __post_init__(self) -> None:
        if min(self.steps, self.max_inputs, self.others) < 1:
            raise ValueError("steps, max_inputs and others must be >= 1")
        if self.lr <= 0 or self.tv_weight < 0:
            raise ValueError(f"lr must be > 0 and tv_weight >= 0, got {self.lr}, {self.tv_weight}")


@dataclass(frozen=True)
class WhiteBoxResult:
    """Reconstructions (M, 1, H, W) float32 in [0, 1] and the final standardised feature error (M,)."""

    reconstructions: np.ndarray
    feature_error: np.ndarray


def noiseless(module: nn.Module) -> nn.Module:
    """A frozen, evaluation-mode copy of an extractor with its feature noise turned off."""
    from models.pca import Project

    m = copy.deepcopy(module).eval()
    for layer in m.modules():
        if isinstance(layer, Project):
            layer.noise_std = 0.0
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B,): mean absolute difference between neighbouring pixels."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return dh + dw


def invert_whitebox(module: nn.Module, released: np.ndarray, start: np.ndarray, scale: np.ndarray, *,
                    settings: WhiteBoxSettings = WhiteBoxSettings(), seed: int = 0) -> WhiteBoxResult:
    """Inputs whose noiseless features match ``released``.

    module: the extractor's torch layers, (B, 1, H, W) -> (B, D); released: (M, D) float32 features as the
    cloud reads them; start: (1, H, W) or (1, 1, H, W), where the search begins (the attacker's mean
    input); scale: (D,) per-dimension spread that standardises the feature error.
    """
    ext = noiseless(module)
    z = torch.as_tensor(np.asarray(released, dtype=np.float32).reshape(len(released), -1))
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    # a dimension that hardly varies on the attacker's inputs must not swamp the others
    s = torch.as_tensor(np.maximum(scale, 0.05 * float(scale.mean()) + 1e-8))
    if s.shape[0] != z.shape[1]:
        raise ValueError(f"scale has {s.shape[0]} dimensions, features {z.shape[1]}")
    x0 = torch.as_tensor(np.asarray(start, dtype=np.float32)).reshape(1, 1, *np.shape(start)[-2:])
    gen = torch.Generator().manual_seed(seed)
    # logit of the start, a little jitter so that flat regions get a gradient
    u0 = torch.logit(x0.clamp(0.02, 0.98)) + 0.01 * torch.randn((len(z), *x0.shape[1:]), generator=gen)
    u = u0.clone().requires_grad_(True)     # (M, 1, H, W)
    opt = torch.optim.Adam([u], lr=settings.lr)
    for _ in range(settings.steps):
        opt.zero_grad()
        x = torch.sigmoid(u)
        err = (((ext(x) - z) / s) ** 2).mean(dim=1)                  # (M,)
        (err + settings.tv_weight * total_variation(x)).sum().backward()
        opt.step()
    with torch.no_grad():
        x = torch.sigmoid(u)
        err = (((ext(x) - z) / s) ** 2).mean(dim=1)
    log.info("white-box inversion: %d inputs, %d steps, standardised feature error %.4f",
             len(z), settings.steps, float(err.mean()))
    return WhiteBoxResult(x.numpy().astype(np.float32), err.numpy())


def reconstruction_match(reconstructions: np.ndarray, originals: np.ndarray, identity: np.ndarray,
                         gallery: np.ndarray, gallery_identity: np.ndarray, *, others: int = 32,
                         seed: int = 0) -> dict:
    """How much a reconstruction looks like its own input rather than other people's.

    reconstructions, originals: (M, 1, H, W) pairs of the same M inputs, of people ``identity`` (M,);
    gallery (G, 1, H, W) with ``gallery_identity`` (G,): where the other people's inputs come from (up to
    ``others`` per reconstruction, seeded). Returns SSIM to the own input, mean SSIM to the other people's,
    and ``own_beats_other``: the share of (reconstruction, other person's input) pairs in which the own
    input is the more similar (0.5: nothing of the person in the reconstruction; 1: always the own).
    """
    rng = np.random.default_rng([seed, 17])
    own = ssim(originals, reconstructions, 1.0)
    other_means, wins = [], []
    for i in range(len(reconstructions)):
        pool = np.flatnonzero(gallery_identity != identity[i])
        if len(pool) == 0:
            raise ValueError("no other person's input to compare a reconstruction with")
        pick = rng.choice(pool, min(others, len(pool)), replace=False)
        rec = np.repeat(reconstructions[i:i + 1], len(pick), axis=0)
        sims = ssim(gallery[pick], rec, 1.0)
        other_means.append(sims.mean())
        wins.append((own[i] > sims).mean() + 0.5 * (own[i] == sims).mean())
    return {"ssim_own": float(own.mean()), "ssim_others": float(np.mean(other_means)),
            "own_beats_other": float(np.mean(wins)), "n": int(len(reconstructions))}
