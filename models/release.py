"""How released features are written on the wire: float32, float16, or int8 with a per-dimension scale.

The wire format stays ``dtype, shape, data`` (DESIGN.md, "Wire contracts"). For int8 the scale of each
dimension lives in the bundle's manifest (``feature.scale``), so a message carries one byte per number:
the gateway sends ``round(z / scale)`` clipped to [-127, 127], the analyzer side multiplies back. The
scale is fitted on the training features so that the largest magnitude seen (times ``headroom``) maps to
127; the rounding error of a dimension is then at most ``scale / 2``.

What a worker accepts (:func:`check_wire`): finite numbers only, and at most :data:`FEATURE_MAX_ABS` in
magnitude for float features (int8: within the [-127, 127] the gateway clips to). The float bound is
float16's largest finite value, 65504: every bundle may be released as float16, so a trained extractor's
features must already fit in it (standardised PCA components are of order 1: an untrained PCA-8
bundle peaks at 0.07 on 64 ORL faces), and a float32 message far beyond it is not features but an
attempt to overflow the analyzer (an inf logit makes a NaN probability, which no Result may carry).
"""
from __future__ import annotations

import numpy as np

RELEASE_DTYPES = ("float32", "float16", "int8")
INT8_MAX = 127
FEATURE_MAX_ABS = float(np.finfo(np.float16).max)
"""Largest feature magnitude a worker accepts (float features): 65504, see the module docstring."""


class BadFeatures(ValueError):
    """Wire features no extractor produces: ``reason`` is ``non-finite features`` or ``features out of
    range`` (the dead-letter reason)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def fit_scale(features: np.ndarray, headroom: float = 1.1) -> np.ndarray:
    """Per-dimension int8 scale for training features (N, k): ``headroom * max|z_j| / 127`` (never 0)."""
    z = np.asarray(features, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"features must be (N, k) with N > 0, got shape {z.shape}")
    peak = np.abs(z).max(axis=0) * headroom
    return np.maximum(peak / INT8_MAX, 1e-12).astype(np.float32)


def feature_spec(dtype: str, shape: list[int], scale: np.ndarray | None = None) -> dict:
    """The manifest's ``feature`` entry: dtype, shape and (int8 only) the per-dimension scale."""
    if dtype not in RELEASE_DTYPES:
        raise ValueError(f"feature dtype must be one of {RELEASE_DTYPES}, got {dtype!r}")
    spec: dict = {"dtype": dtype, "shape": list(shape)}
    if dtype == "int8":
        if scale is None or np.asarray(scale).shape != (int(np.prod(shape)),):
            raise ValueError(f"int8 features need one scale per dimension ({int(np.prod(shape))})")
        spec["scale"] = [float(s) for s in np.asarray(scale, dtype=np.float32)]
    return spec


def _scale_of(spec: dict) -> np.ndarray:
    scale = spec.get("scale")
    if scale is None:
        raise ValueError("int8 features need feature.scale in the manifest")
    return np.asarray(scale, dtype=np.float32)


def encode(z: np.ndarray, spec: dict) -> np.ndarray:
    """float features (B, F) -> what goes on the wire, of ``spec['dtype']`` and the same shape."""
    dtype = spec["dtype"]
    z = np.asarray(z, dtype=np.float32)
    if dtype == "int8":
        q = np.rint(z / _scale_of(spec))
        return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8)
    return z.astype(dtype)


def decode(data: np.ndarray, spec: dict) -> np.ndarray:
    """Wire features (B, F) of ``spec['dtype']`` -> float32 (B, F), as the analyzer reads them."""
    f = np.asarray(data)
    if spec["dtype"] == "int8":
        if f.dtype != np.int8:
            raise ValueError(f"int8 bundle got features of dtype {f.dtype}")
        return f.astype(np.float32) * _scale_of(spec)
    return f.astype(np.float32)


def check_wire(data: np.ndarray, spec: dict) -> None:
    """Raise BadFeatures unless the wire features ``data`` are finite and in range (see module docstring):
    float features within +-FEATURE_MAX_ABS, int8 within +-127."""
    f = np.asarray(data)
    if f.dtype == np.int8:
        if f.size and int(np.abs(f.astype(np.int16)).max()) > INT8_MAX:
            raise BadFeatures("features out of range", f"int8 features outside +-{INT8_MAX}")
        return
    if not np.isfinite(f).all():
        bad = int((~np.isfinite(f)).sum())
        raise BadFeatures("non-finite features", f"{bad} of {f.size} numbers are NaN or inf")
    peak = float(np.abs(f).max()) if f.size else 0.0
    if peak > FEATURE_MAX_ABS:
        raise BadFeatures("features out of range", f"|z| reaches {peak:.3g} > {FEATURE_MAX_ABS:g}")


def round_trip(z: np.ndarray, spec: dict) -> np.ndarray:
    """What the analyzer sees for float features ``z`` (B, F): encode then decode."""
    return decode(encode(z, spec), spec)
