"""On-disk cache for decoded and generated datasets (``~/.cache/privedge`` or ``$PRIVEDGE_CACHE``).

Entries are ``.npz`` files named by a hash of everything that determines their content, written
atomically (temporary file then rename) so that concurrent test runs never read half a file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump to invalidate every cached entry when the layout of an entry changes."""


def cache_dir() -> Path:
    """The cache folder: ``$PRIVEDGE_CACHE`` if set, else ``~/.cache/privedge``; created on demand."""
    root = Path(os.environ.get("PRIVEDGE_CACHE") or Path.home() / ".cache" / "privedge")
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_key(kind: str, params: dict) -> str:
    """A stable file stem for ``params`` (JSON-serialisable), e.g. ``synthetic-speech-3f2a9c01b4de``."""
    blob = json.dumps({"format": CACHE_FORMAT, "kind": kind, **params}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def file_id(path: str | Path) -> list:
    """What keys a cache entry to one input file: its resolved path, size and modification time."""
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def load_cached(key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under ``key``, or None when absent or unreadable (a bad entry is removed)."""
    path = cache_dir() / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable cache entry %s: %s", path, e)
        path.unlink(missing_ok=True)
        return None


def save_cached(key: str, arrays: dict[str, np.ndarray]) -> Path:
    """Store ``arrays`` under ``key`` atomically; returns the file path."""
    root = cache_dir()
    path = root / f"{key}.npz"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{key}-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def pack_waves(waves: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Variable-length waveforms -> {"waves": concatenated float32, "offsets": int64 (N+1,)}."""
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(waves).astype(np.float32) if waves else np.zeros(0, np.float32)
    return {"waves": flat, "offsets": offsets}


def unpack_waves(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Inverse of :func:`pack_waves`: a list of float32 arrays (copies, safe to modify)."""
    flat, offsets = arrays["waves"], arrays["offsets"]
    return [flat[offsets[i]:offsets[i + 1]].copy() for i in range(len(offsets) - 1)]
