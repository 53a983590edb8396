"""The speech front end's signal processing, as librosa computes it, without its per-call overhead.

``librosa.effects.pitch_shift`` spends most of a short utterance in ``phase_vocoder``'s Python loop over
frames, and every call rebuilds the Hann window (scipy) and, for ``melspectrogram``, the mel filter bank.
Here the phase vocoder is vectorised over frames (the same arithmetic, with each source frame's phase
computed once) and windows and filter banks are built once.
The outputs match librosa's to float32 rounding (tests/test_fast_audio.py), so bundles trained with the
librosa path serve unchanged.
"""
from __future__ import annotations

from functools import lru_cache

import librosa
import numpy as np
import scipy.signal


@lru_cache(maxsize=8)
def hann(n_fft: int) -> np.ndarray:
    """The periodic Hann window librosa uses by default (``window="hann"``), (n_fft,) float64."""
    w = scipy.signal.get_window("hann", n_fft, fftbins=True)
    w.setflags(write=False)
    return w


@lru_cache(maxsize=8)
def mel_basis(rate: int, n_fft: int, n_mels: int, fmax: float) -> np.ndarray:
    """``librosa.filters.mel`` (n_mels, 1 + n_fft // 2) float32, built once per setting."""
    basis = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmax=fmax)
    basis.setflags(write=False)
    return basis


@lru_cache(maxsize=8)
def _phase_advance(n_bins: int, hop: int) -> np.ndarray:
    """(F, 1) expected phase advance of each bin over one hop, as librosa computes it."""
    a = np.linspace(0, np.pi * hop, n_bins)[:, None]
    a.setflags(write=False)
    return a


def phase_vocoder(D: np.ndarray, rate: float, hop: int) -> np.ndarray:
    """``librosa.phase_vocoder`` for one (F, T) complex STFT, vectorised over frames: (F, ceil(T / rate)).

    Each source frame's magnitude and phase is computed once (librosa recomputes both for every output
    frame: arctan2 is most of its time), the phase is accumulated in float64 and the phasor taken in
    float32 (librosa's own precision; numpy's float32 sin/cos are several times faster)."""
    n_bins, n_frames = D.shape
    steps = np.arange(0, n_frames, rate, dtype=np.float64)  # (T',) fractional source frames
    phi_advance = _phase_advance(n_bins, hop)  # (F, 1)
    mag_src, ang_src = np.zeros((n_bins, n_frames + 2)), np.zeros((n_bins, n_frames + 2))  # zero-padded
    mag_src[:, :n_frames], ang_src[:, :n_frames] = np.abs(D), np.angle(D)  # (F, T + 2) each
    idx = steps.astype(np.int64)
    alpha = np.mod(steps, 1.0)  # (T',)
    mag = (1.0 - alpha) * mag_src[:, idx] + alpha * mag_src[:, idx + 1]  # (F, T')
    dphase = ang_src[:, idx + 1] - ang_src[:, idx] - phi_advance
    dphase = dphase - 2.0 * np.pi * np.round(dphase / (2.0 * np.pi))
    # phase of output frame t: the first frame's phase plus the advances of frames 0..t-1
    phase = np.empty_like(dphase)
    phase[:, 0] = ang_src[:, 0]
    np.cumsum(phi_advance + dphase[:, :-1], axis=1, out=phase[:, 1:])
    phase[:, 1:] += phase[:, :1]
    phase -= 2.0 * np.pi * np.floor(phase / (2.0 * np.pi))  # wrapped first: float32 keeps its precision
    phase = phase.astype(np.float32)
    return (mag.astype(np.float32) * (np.cos(phase) + 1j * np.sin(phase))).astype(D.dtype, copy=False)


def pitch_shift(wave: np.ndarray, rate: int, semitones: float, n_fft: int) -> np.ndarray:
    """``librosa.effects.pitch_shift(wave, sr=rate, n_steps=semitones, n_fft=n_fft, res_type="soxr_hq")``:
    float32 (N,) -> float32 (N,)."""
    stretch = 2.0 ** (-float(semitones) / 12)
    hop = n_fft // 4
    window = hann(n_fft)
    D = librosa.stft(wave, n_fft=n_fft, hop_length=hop, window=window)  # (1 + n_fft // 2, T)
    D = phase_vocoder(D, stretch, hop)
    stretched = librosa.istft(D, hop_length=hop, n_fft=n_fft, window=window, dtype=wave.dtype,
                              length=int(round(wave.shape[-1] / stretch)))
    out = librosa.resample(stretched, orig_sr=float(rate) / stretch, target_sr=rate, res_type="soxr_hq")
    return librosa.util.fix_length(out, size=wave.shape[-1])


def mel_power(wave: np.ndarray, rate: int, n_fft: int, hop: int, n_mels: int, fmax: float) -> np.ndarray:
    """``librosa.feature.melspectrogram`` (power 2, Hann, centred): float32 (n_mels, T)."""
    S = np.abs(librosa.stft(wave, n_fft=n_fft, hop_length=hop, window=hann(n_fft))) ** 2  # (F, T)
    return mel_basis(rate, n_fft, n_mels, fmax) @ S  # (n_mels, T)
