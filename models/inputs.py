"""Network inputs for training: precomputed speech front-end variants and image augmentation.

Pitch shifting costs about 3 ms per utterance, too much to redo every epoch; instead each training
utterance is turned into a few log-mel *variants* once (each with its own random shift, drawn from a seeded
generator), cached on disk, and every epoch samples one variant per utterance.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from models.data.cache import cache_key, load_cached, save_cached
from models.speech import SpeechFrontEnd

log = logging.getLogger(__name__)

# Bump when the front end's code changes what it computes for the same settings (cache invalidation).
FRONT_END_VERSION = 3  # 3: models.fast_audio in numpy and soxr, no librosa (float32-rounding changes)


def speech_variants(waves: list[np.ndarray], rate: int, front_end: SpeechFrontEnd, *, variants: int,
                    seed: int, use_cache: bool = True) -> np.ndarray:
    """N waves -> float32 (N, variants, 1, n_mels, frames); variant v of utterance i has its own shift.

    Deterministic for a fixed seed: the shifts come from ``numpy.random.default_rng(seed)`` in order.
    """
    if variants < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    digest = hashlib.sha256()
    for w in waves:
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
        digest.update(b"|")
    key = cache_key("speech-inputs", {"waves": digest.hexdigest(), "rate": rate, "variants": variants,
                                      "seed": seed, "front_end": front_end.config.to_dict(),
                                      "version": FRONT_END_VERSION})
    if use_cache:
        cached = load_cached(key)
        if cached is not None:
            log.info("speech inputs from cache %s", key)
            return cached["x"]
    rng = np.random.default_rng(seed)
    out = np.zeros((len(waves), variants, *front_end.shape), dtype=np.float32)
    for i, w in enumerate(waves):
        for v in range(variants):
            out[i, v] = front_end(w, rate, rng)  # (1, n_mels, frames)
    if use_cache:
        save_cached(key, {"x": out})
    return out


class InputSet:
    """Inputs with variants, ``x``: (N, V, C, H, W) float32, and integer labels ``y``: (N,).

    ``epoch_inputs`` picks one variant per sample; images have V = 1 and are augmented instead.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, augment: str = "none") -> None:
        if x.ndim != 5 or len(x) != len(y):
            raise ValueError(f"x must be (N, V, C, H, W) with N = len(y), got {x.shape} and {len(y)} labels")
        if augment not in ("none", "image", "speech"):
            raise ValueError(f"augment must be none, image or speech, got {augment!r}")
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.augment = augment

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[2:])

    def plain(self) -> torch.Tensor:
        """(N, C, H, W): variant 0, not augmented (evaluation, PCA fitting)."""
        return self.x[:, 0]

    def epoch_inputs(self, rng: np.random.Generator) -> torch.Tensor:
        """(N, C, H, W): a random variant per sample, then the modality's augmentation."""
        v = torch.from_numpy(rng.integers(0, self.x.shape[1], size=len(self)))
        x = self.x[torch.arange(len(self)), v]
        if self.augment == "image":
            x = shift_and_flip(x, rng, max_shift=4)
        elif self.augment == "speech":
            x = time_shift(x, rng, max_shift=4)
        return x


def shift_and_flip(x: torch.Tensor, rng: np.random.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (edges replicated) and horizontal flip, per image.

    (N, C, H, W) -> (N, C, H, W). Faces in ORL are roughly centred; small shifts and mirror images are
    plausible new photos of the same person and keep the glasses attribute.
    """
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")  # (N, C, H+2s, W+2s)
    dy = rng.integers(0, 2 * max_shift + 1, size=n)
    dx = rng.integers(0, 2 * max_shift + 1, size=n)
    flip = rng.random(n) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def time_shift(x: torch.Tensor, rng: np.random.Generator, max_shift: int) -> torch.Tensor:
    """Shift each log-mel (N, 1, n_mels, T) by up to ``max_shift`` frames, filling with silence (0)."""
    n, t = x.shape[0], x.shape[-1]
    shifts = rng.integers(-max_shift, max_shift + 1, size=n)
    out = torch.zeros_like(x)
    for i, s in enumerate(shifts):
        if s >= 0:
            out[i, ..., s:] = x[i, ..., :t - s]
        else:
            out[i, ..., :t + s] = x[i, ..., -s:]
    return out
