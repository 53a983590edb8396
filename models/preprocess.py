"""Input preprocessing shared by training, the gateway and the datasets.

Every image that reaches a network, whether it comes from a dataset adapter, a synthetic generator or a
camera frame at the gateway, goes through :func:`image_to_input`, so training and deployment see the same
pixels. Speech stays raw here (mono float waveforms); the extractor's front end does the rest.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 64
"""Side of the square network input, in pixels."""

# ITU-R BT.601 luma weights, the same that Pillow uses for mode "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _to_gray_uint8(img: np.ndarray) -> np.ndarray:
    """uint8 HxW, HxWx1, HxWx3 or HxWx4 -> uint8 HxW (alpha ignored)."""
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    if img.ndim == 3 and img.shape[2] in (3, 4):
        gray = img[:, :, :3].astype(np.float32) @ _LUMA
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {img.shape}")


def image_to_input(img: np.ndarray) -> np.ndarray:
    """Turn a camera frame into a network input.

    Args:
        img: uint8 array HxW (grayscale) or HxWx3 / HxWx4 (RGB / RGBA), any size >= 1x1.
            Float arrays in [0, 1] are accepted too and scaled to uint8 first.

    Returns:
        float32 array (1, 64, 64) with values in [0, 1]: grayscale, centre-cropped to a square of
        side min(H, W), resized with Pillow's bilinear filter (antialiased when shrinking).
    """
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"image must be uint8 (or float in [0, 1]), got dtype {arr.dtype}")
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    gray = _to_gray_uint8(arr)
    h, w = gray.shape
    if h == 0 or w == 0:
        raise ValueError(f"image is empty: shape {arr.shape}")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(gray[top:top + side, left:left + side])
    if side != IMAGE_SIZE:
        pil = Image.fromarray(square, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        square = np.asarray(pil)
    return (square.astype(np.float32) / 255.0)[None]  # (1, 64, 64)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file (PNG, JPEG, PGM, ...) as a uint8 array HxW or HxWx3 (palette/alpha flattened)."""
    try:
        with Image.open(path) as pil:
            if pil.mode not in ("L", "RGB"):
                gray_modes = ("1", "LA", "La", "I", "I;16", "F")
                pil = pil.convert("L" if pil.mode in gray_modes else "RGB")
            return np.asarray(pil, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def load_wav(path: str | Path | io.IOBase) -> tuple[np.ndarray, int]:
    """Read a sound file (WAV, FLAC, OGG...) as a mono waveform.

    Returns:
        (wave, rate): float32 array (n_samples,) in [-1, 1] (channels averaged), sample rate in Hz.
    """
    import soundfile  # libsndfile: only where files are read (datasets, the mic sensor), not at the gateway

    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as e:
        if isinstance(path, (str, Path)) and not Path(path).exists():
            raise FileNotFoundError(f"no such sound file: {path}") from e
        raise ValueError(f"cannot decode sound file {path}: {e}") from e
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


def pcm16_to_float(data: bytes, channels: int) -> np.ndarray:
    """Signed 16-bit little-endian interleaved PCM -> mono float32 (n_frames,) in [-1, 1).

    Channels are averaged. Raises ValueError when the byte count is not a whole number of frames.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    frame_bytes = 2 * channels
    if len(data) % frame_bytes:
        raise ValueError(f"{len(data)} bytes is not a whole number of {channels}-channel 16-bit frames")
    pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    return np.ascontiguousarray(pcm, dtype=np.float32)
