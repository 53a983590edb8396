"""How released features are written on the wire: float32, float16, or int8 with a per-dimension scale.

The wire format stays ``dtype, shape, data`` (DESIGN.md, "Wire contracts"). For int8 the scale of each
dimension lives in the bundle's manifest (``feature.scale``), so a message carries one byte per number:
the gateway sends ``round(z / scale)`` clipped to [-127, 127], the analyzer side multiplies back. The
scale is fitted on the training features so that the largest magnitude seen (times ``headroom``) maps to
127; the rounding error of a dimension is then at most ``scale / 2``.
"""
from __future__ import annotations

import numpy as np

RELEASE_DTYPES = ("float32", "float16", "int8")
INT8_MAX = 127


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


def round_trip(z: np.ndarray, spec: dict) -> np.ndarray:
    """What the analyzer sees for float features ``z`` (B, F): encode then decode."""
    return decode(encode(z, spec), spec)
