"""PCA of cut-layer features as network layers: ``Project`` ends the extractor, ``Reconstruct`` starts
the analyzer.

The projection is fitted on the model's training features only (DESIGN.md, "Evaluation protocols").
``Project`` can add Gaussian noise to the projected features, scaled by each dimension's spread on the
training set; the noise is drawn fresh on every call, in training and at the gateway alike.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PCAFit:
    """A fitted projection. mean: (D,), components: (D, k) orthonormal columns, std: (k,) projected spread."""

    mean: np.ndarray
    components: np.ndarray
    std: np.ndarray
    explained: float  # fraction of the training variance kept by the k components

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def k(self) -> int:
        return int(self.components.shape[1])


def fit_pca(features: np.ndarray, k: int) -> PCAFit:
    """Fit PCA on training features (N, D) and keep the top ``k`` components (k <= min(N, D))."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    n, d = x.shape
    if not 1 <= k <= min(n, d):
        raise ValueError(f"k must be in [1, min(N, D)] = [1, {min(n, d)}], got {k}")
    mean = x.mean(axis=0)
    # Thin SVD of the centred data: rows of vt are the principal directions, sorted by singular value.
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:k].T  # (D, k)
    # Make the sign of each component deterministic (largest-magnitude loading positive).
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
    comps = comps * np.where(signs == 0, 1.0, signs)
    var = s**2
    std = s[:k] / np.sqrt(max(n - 1, 1))
    explained = float(var[:k].sum() / max(var.sum(), 1e-30))
    return PCAFit(mean=mean.astype(np.float32), components=comps.astype(np.float32),
                  std=std.astype(np.float32), explained=explained)


def fit_lda(features: np.ndarray, labels: np.ndarray, k: int, *, pre_dims: int = 256,
            shrinkage: float = 0.1) -> PCAFit:
    """The k most class-discriminative directions of training features (N, D) with labels (N,).

    Fisher's discriminant: directions along which the spread between the class means is largest relative
    to the spread within each class, the latter being mostly who the person is. Only ``classes - 1`` of them
    carry class signal; directions beyond that are the next ones of the same ordering. Computed in the top
    ``pre_dims`` principal components (the within-class scatter of thousands of dimensions from a few
    thousand samples is singular), shrunk towards a multiple of the identity by ``shrinkage``. The columns
    are orthonormalised: the same subspace as the discriminants, so ``Project`` and ``Reconstruct`` apply.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(y) != len(x):
        raise ValueError(f"features must be (N, D) with one label each, got {x.shape} and {y.shape}")
    classes = np.unique(y)
    n, d = x.shape
    p = min(pre_dims, n - 1, d)
    if len(classes) < 2 or not 1 <= k <= p or not 0 <= shrinkage <= 1:
        raise ValueError(f"LDA needs >= 2 classes and 1 <= k <= {p} (and shrinkage in [0, 1]); got "
                         f"{len(classes)} classes, k={k}, shrinkage={shrinkage}")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:p].T                                     # (D, p)
    xp = (x - mean) @ basis                              # (N, p)
    means = np.stack([xp[y == c].mean(axis=0) for c in classes])
    within = xp - means[np.searchsorted(classes, y)]
    sw = within.T @ within / n
    sw = (1 - shrinkage) * sw + shrinkage * np.trace(sw) / p * np.eye(p)
    counts = np.array([(y == c).sum() for c in classes], dtype=np.float64)
    sb = (means * counts[:, None]).T @ means / n          # the overall mean is 0 here
    # Generalised symmetric eigenproblem sb v = lambda sw v, through sw^(-1/2).
    evals, evecs = np.linalg.eigh(sw)
    white = evecs / np.sqrt(np.maximum(evals, 1e-12))
    lam, u = np.linalg.eigh(white.T @ sb @ white)
    directions = basis @ (white @ u[:, ::-1][:, :k])     # (D, k), by decreasing discriminant ratio
    comps, _ = np.linalg.qr(directions)
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
    comps = comps * np.where(signs == 0, 1.0, signs)
    z = (x - mean) @ comps
    total = ((x - mean) ** 2).sum()
    return PCAFit(mean=mean.astype(np.float32), components=comps.astype(np.float32),
                  std=z.std(axis=0, ddof=1).astype(np.float32),
                  explained=float((z ** 2).sum() / max(total, 1e-30)))


class Project(nn.Module):
    """(B, D) -> (B, k): centre, project on the principal directions, optionally add noise.

    noise_std is relative: the noise on dimension j has standard deviation ``noise_std * std[j]``, where
    ``std[j]`` is that dimension's spread on the training features. 0 disables it.

    While training, the noise follows the batch's own spread instead of the fitted one: the layers before
    the projection keep changing, and a fixed scale would let them outgrow the noise (scale the features
    up) instead of making the classes stand out from it. ``calibrate`` sets ``std`` to the final spread.
    """

    def __init__(self, in_dim: int, k: int, noise_std: float = 0.0) -> None:
        super().__init__()
        if not 1 <= k <= in_dim:
            raise ValueError(f"k must be in [1, in_dim={in_dim}], got {k}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("components", torch.zeros(in_dim, k))
        self.register_buffer("std", torch.ones(k))

    @classmethod
    def from_fit(cls, fit: PCAFit, noise_std: float = 0.0) -> "Project":
        layer = cls(fit.in_dim, fit.k, noise_std)
        layer.mean.copy_(torch.from_numpy(fit.mean))
        layer.components.copy_(torch.from_numpy(fit.components))
        layer.std.copy_(torch.from_numpy(fit.std))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_noise(self.project(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, k), without noise."""
        return (x - self.mean) @ self.components

    def add_noise(self, z: torch.Tensor) -> torch.Tensor:
        """The projected features (B, k) as released: with fresh noise when ``noise_std`` > 0."""
        if self.noise_std > 0:
            spread = z.detach().std(dim=0) if self.training and len(z) > 1 else self.std
            z = z + torch.randn_like(z) * (self.noise_std * spread)
        return z

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set ``std`` to the spread of the noiseless projection of ``x`` (N, D), N >= 2."""
        if len(x) < 2:
            raise ValueError("calibrating the noise scale needs at least 2 inputs")
        self.std.copy_(((x - self.mean) @ self.components).std(dim=0).clamp_min(1e-12))

    def macs_per_input(self, in_numel: int) -> int:
        return int(self.components.numel())


class Reconstruct(nn.Module):
    """(B, k) -> (B, D): back to the cut layer's space, ``z @ W^T + mean``."""

    def __init__(self, in_dim: int, k: int) -> None:
        super().__init__()
        if not 1 <= k <= in_dim:
            raise ValueError(f"k must be in [1, in_dim={in_dim}], got {k}")
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("components", torch.zeros(in_dim, k))

    @classmethod
    def from_fit(cls, fit: PCAFit) -> "Reconstruct":
        layer = cls(fit.in_dim, fit.k)
        layer.mean.copy_(torch.from_numpy(fit.mean))
        layer.components.copy_(torch.from_numpy(fit.components))
        return layer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.components.T + self.mean  # (B, k) -> (B, D)

    def macs_per_input(self, in_numel: int) -> int:
        return int(self.components.numel())
