"""A ceiling on what any attacker can learn from released features: the Gaussian-channel bound.

The gateway releases, per dimension j, ``y_j = Q(clip(x_j + n_j, -A_j, A_j))``: the clean feature x_j, fresh
Gaussian noise n_j ~ N(0, sigma_j^2) per release, clipped to the int8 range ``A_j = 127 * scale_j`` and
rounded to one of 255 levels. Then, in bits per release and dimension,

    I(x_j; y_j) <= min( 0.5 * log2(1 + A_j^2 / sigma_j^2),  log2(255) )

The first term is the capacity of the additive Gaussian channel under the power constraint
``E[x_j^2] <= A_j^2``; the second is the entropy of the int8 alphabet. Assumptions: (1) the clean feature lies
within the clip range, |x_j| <= A_j (true of every training feature, which the scale was fitted to with 10%
headroom; a feature outside it is clipped anyway), so its power is at most A_j^2; (2) the noise is Gaussian,
independent of the input and of every other release (``models.pca.Project`` draws it fresh per call);
clipping and rounding come after the noise and, by the data-processing inequality, cannot add information.
Dimensions add (parallel channels; correlated noise would only lower the sum).

L releases of *one* input: the mean of the L outputs is a sufficient statistic of the Gaussian part, the
noise variance becomes sigma^2 / L, so ``0.5 * log2(1 + L A^2 / sigma^2)`` (capped by L * log2(255)): it
grows only with log L. L releases of *different* inputs of one person: each is its own channel, so at most L
times the per-release figure. Identity is a function of the person, and the releases depend on the person
only through the clean features (Markov chain person -> x -> y), so either figure also bounds the bits
about *who* it is.

Fano's inequality turns bits into a ceiling on identification among C equally likely people: an attacker
with I bits about the person is right with probability at most 1 - P, P the smallest error with h(P) + P log2(C - 1) >= log2 C - I (h the binary
entropy; roughly (I + 1) / log2 C). A bound of 0 bits (features without noise have none:
sigma 0 makes the Gaussian term infinite and only the alphabet cap remains) is what the attacks cannot
exceed, however strong.

A tighter figure, an estimate rather than a guarantee: with the clean feature's variance v_j in place of
A_j^2 (the Gaussian input maximises I(x; x + n) among inputs of one variance), ``0.5 * log2(1 + v_j /
sigma_j^2)``; v_j is measured on the attacker's training releases as their variance minus sigma_j^2.

Float features (float32, float16) have no clip: A is the largest magnitude a worker accepts
(``models.release.FEATURE_MAX_ABS``), and the cap is the bits of the number format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.release import FEATURE_MAX_ABS, INT8_MAX

ALPHABET_BITS = {"int8": math.log2(2 * INT8_MAX + 1), "float16": 16.0, "float32": 32.0}


def gaussian_bits(amplitude: np.ndarray, sigma: np.ndarray, releases: int = 1, *,
                  cap_bits: float = ALPHABET_BITS["int8"]) -> float:
    """Bits about one input from ``releases`` releases of it, summed over dimensions.

    amplitude, sigma: (k,) per-dimension clip amplitude A and noise std (same units); sigma 0 means no
    noise: that dimension gives its alphabet cap. Per dimension: min(0.5 log2(1 + L A^2 / sigma^2),
    L * cap_bits).
    """
    a = np.asarray(amplitude, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    if a.shape != s.shape or releases < 1 or (s < 0).any() or (a < 0).any():
        raise ValueError(f"need matching non-negative (k,) amplitude and sigma and releases >= 1; got "
                         f"{a.shape}, {s.shape}, {releases}")
    with np.errstate(divide="ignore"):
        snr = np.where(s > 0, releases * a ** 2 / np.where(s > 0, s, 1.0) ** 2, np.inf)
    bits = np.minimum(0.5 * np.log2(1.0 + snr), releases * cap_bits)
    return float(bits.sum())


def fano_top1_ceiling(bits: float, n_classes: int) -> float:
    """Largest identification top-1 among ``n_classes`` equally likely people given ``bits`` about the
    person, by Fano's inequality: the error P satisfies h(P) + P log2(C - 1) >= log2 C - bits (h the binary
    entropy); the smallest such P in [0, 1 - 1/C] is found by bisection (the left side increases there)."""
    if n_classes < 2:
        raise ValueError("identification needs at least two people")
    need = math.log2(n_classes) - bits
    if need <= 0:
        return 1.0

    def fano(p: float) -> float:
        h = 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)
        return h + p * math.log2(n_classes - 1)

    lo, hi = 0.0, 1.0 - 1.0 / n_classes       # fano(hi) = log2 C >= need
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fano(mid) < need else (lo, mid)
    return float(1.0 - hi)


@dataclass(frozen=True)
class ReleaseBound:
    """The bound for one bundle (see the module docstring)."""

    dtype: str
    dims: int
    amplitude: list[float]        # A_j per dimension (feature units)
    sigma: list[float]            # noise std per dimension (feature units); 0 = no noise
    bits_per_release: float
    bits_one_input: dict[int, float]      # L -> bits from L releases of one input
    bits_distinct: dict[int, float]       # L -> bits from L releases of L different inputs (L x per release)
    top1_ceiling: dict[int, float]        # L -> Fano ceiling on identity top-1 (from bits_distinct)
    n_classes: int
    measured_bits: dict[int, float] | None = None         # L -> bits, L different inputs, variance form
    measured_top1_ceiling: dict[int, float] | None = None

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "dims": self.dims, "amplitude": self.amplitude, "sigma": self.sigma,
                "bits_per_release": self.bits_per_release,
                "bits_one_input": {str(k): v for k, v in self.bits_one_input.items()},
                "bits_distinct": {str(k): v for k, v in self.bits_distinct.items()},
                "top1_ceiling": {str(k): v for k, v in self.top1_ceiling.items()},
                "n_classes": self.n_classes,
                "measured_bits": None if self.measured_bits is None else
                {str(k): v for k, v in self.measured_bits.items()},
                "measured_top1_ceiling": None if self.measured_top1_ceiling is None else
                {str(k): v for k, v in self.measured_top1_ceiling.items()}}


def release_bound(feature_spec: dict, sigma: np.ndarray, lengths: tuple[int, ...], n_classes: int,
                  releases: np.ndarray | None = None) -> ReleaseBound:
    """The bound of a bundle whose manifest ``feature`` entry is ``feature_spec`` and whose noise std per
    released dimension is ``sigma`` (k,); for each L in ``lengths``. ``releases`` (N, k): released
    features whose variance gives the measured (variance-form) figures."""
    dtype = feature_spec["dtype"]
    k = int(np.prod(feature_spec["shape"]))
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (k,))
    if dtype == "int8":
        amplitude = INT8_MAX * np.asarray(feature_spec["scale"], dtype=np.float64)
    else:
        amplitude = np.full(k, FEATURE_MAX_ABS)
    cap = ALPHABET_BITS[dtype]
    one = {L: gaussian_bits(amplitude, sigma, L, cap_bits=cap) for L in lengths}
    per = gaussian_bits(amplitude, sigma, 1, cap_bits=cap)
    distinct = {L: L * per for L in lengths}
    measured = measured_top1 = None
    if releases is not None and (sigma > 0).all():
        clean_std = np.sqrt(np.maximum(np.asarray(releases, dtype=np.float64).reshape(-1, k).var(axis=0)
                                       - sigma ** 2, 0.0))
        m1 = gaussian_bits(clean_std, sigma, 1, cap_bits=cap)
        measured = {L: L * m1 for L in lengths}
        measured_top1 = {L: fano_top1_ceiling(b, n_classes) for L, b in measured.items()}
    return ReleaseBound(dtype=dtype, dims=k, amplitude=amplitude.tolist(), sigma=sigma.tolist(),
                        bits_per_release=per, bits_one_input=one, bits_distinct=distinct,
                        top1_ceiling={L: fano_top1_ceiling(b, n_classes) for L, b in distinct.items()},
                        n_classes=n_classes, measured_bits=measured, measured_top1_ceiling=measured_top1)


def noise_sigma(module, dims: int) -> np.ndarray:
    """Noise std per released dimension (k,) of an extractor's torch ``module``: ``noise_std * std`` of
    its noisy projection (``models.pca.Project``), zeros when it adds no noise."""
    from models.pca import Project

    for m in module.modules():
        if isinstance(m, Project) and m.noise_std > 0:
            s = (m.noise_std * m.std.detach().double()).numpy()
            if s.shape != (dims,):
                raise ValueError(f"noise layer has {s.shape[0]} dimensions, features {dims}")
            return s
    return np.zeros(dims)
