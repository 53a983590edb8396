"""The speech front end's signal processing in numpy and soxr: what librosa computes, without librosa.

Why hand-written: the front end needs five of librosa's transforms (centred STFT and its inverse, the
Slaney mel filter bank, ``power_to_db`` and the phase-vocoder pitch shift), and importing librosa brings
numba and llvmlite into the gateway (tens of MB resident, seconds of start-up, a JIT compile on the first
utterance). Each function below is a few lines of the same arithmetic, in numpy; resampling is done by
soxr, the library librosa itself calls for ``res_type="soxr_hq"``. The phase vocoder is
vectorised over frames (librosa loops over them in Python) and windows and filter banks are built once.

The outputs match librosa 0.11's to float32 rounding (tests/test_fast_audio.py compares them on synthetic
voices, tests/test_front_end_parity.py on FSDD recordings and through trained bundles), so bundles trained
with the librosa front end serve unchanged and the other way round.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import soxr

AMIN = 1e-10
"""Floor of the power before the logarithm (librosa's ``amin``)."""


@lru_cache(maxsize=8)
def hann(n_fft: int) -> np.ndarray:
    """The periodic Hann window librosa uses by default (``scipy.signal.get_window("hann", n_fft)``),
    (n_fft,) float64."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    w.setflags(write=False)
    return w


def fix_length(wave: np.ndarray, size: int) -> np.ndarray:
    """(N,) -> (size,): cropped at the end, or padded there with zeros."""
    if len(wave) >= size:
        return wave[:size]
    return np.pad(wave, (0, size - len(wave)))


def resample(wave: np.ndarray, orig_sr: float, target_sr: float) -> np.ndarray:
    """``librosa.resample(wave, orig_sr=..., target_sr=..., res_type="soxr_hq")``: soxr's HQ band-limited
    resampler, the output fixed to ``ceil(N * target_sr / orig_sr)`` samples, in the input's dtype."""
    if orig_sr == target_sr:
        return wave
    n_out = int(math.ceil(len(wave) * float(target_sr) / orig_sr))
    out = soxr.resample(wave, float(orig_sr), float(target_sr), quality="HQ")
    return np.asarray(fix_length(out, n_out), dtype=wave.dtype)


def stft(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``librosa.stft`` (Hann, centred with zero padding): float32 (N,) -> complex64 (1 + n_fft // 2, T)."""
    padded = np.pad(wave, n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # (T, n_fft)
    return np.fft.rfft(frames * hann(n_fft), axis=1).T.astype(np.complex64)


def _overlap_add(frames: np.ndarray, hop: int) -> np.ndarray:
    """(n_fft, T) frames -> (n_fft + hop * (T - 1),) their sum, frame t starting at t * hop."""
    n_fft, n_frames = frames.shape
    out = np.zeros(n_fft + hop * (n_frames - 1), dtype=frames.dtype)
    if n_fft % hop == 0:  # the usual case: n_fft // hop interleaved blocks, no loop over frames
        blocks = out.reshape(-1, hop)  # (T + K - 1, hop)
        for k in range(n_fft // hop):
            blocks[k:k + n_frames] += frames[k * hop:(k + 1) * hop].T
        return out
    for t in range(n_frames):
        out[t * hop:t * hop + n_fft] += frames[:, t]
    return out


def istft(D: np.ndarray, n_fft: int, hop: int, length: int, dtype=np.float32) -> np.ndarray:
    """``librosa.istft(D, hop_length=hop, n_fft=n_fft, length=length)`` (Hann, centred): complex (F, T) ->
    (length,): overlap-add of the windowed inverse FFTs, divided by the window's summed square."""
    n_frames = min(D.shape[1], int(math.ceil((length + 2 * (n_fft // 2)) / hop)))
    window = hann(n_fft)
    frames = (window[:, None] * np.fft.irfft(D[:, :n_frames], n=n_fft, axis=0)).astype(dtype)
    y = _overlap_add(frames, hop)
    wss = _overlap_add(np.repeat((window ** 2).astype(dtype)[:, None], n_frames, axis=1), hop)
    nonzero = wss > np.finfo(wss.dtype).tiny
    y[nonzero] /= wss[nonzero]
    return fix_length(y[n_fft // 2:], length)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    mels = f / f_sp
    log = f >= min_log_hz
    return np.where(log, min_log_hz / f_sp + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=8)
def mel_basis(rate: int, n_fft: int, n_mels: int, fmax: float) -> np.ndarray:
    """``librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmax=fmax)``: triangular filters on the
    Slaney mel scale from 0 Hz, each scaled to unit area (``norm="slaney"``), (n_mels, 1 + n_fft // 2)
    float32, built once per setting."""
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / rate)  # (F,)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(fmax), n_mels + 2))  # (n_mels + 2,) band edges
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)  # (n_mels + 2, F)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)  # (n_mels, F)
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None].astype(np.float32)
    weights.setflags(write=False)
    return weights


def power_to_db(power: np.ndarray, top_db: float) -> np.ndarray:
    """``librosa.power_to_db(power, ref=np.max, top_db=top_db)``: dB below the loudest bin, floored at
    ``-top_db``."""
    db = 10.0 * np.log10(np.maximum(AMIN, power))
    db -= 10.0 * np.log10(max(AMIN, float(np.max(power))))
    return np.maximum(db, db.max() - top_db)


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
    time-stretch by the phase vocoder, then resample back to the original duration. float32 (N,) ->
    float32 (N,)."""
    stretch = 2.0 ** (-float(semitones) / 12)
    hop = n_fft // 4
    D = phase_vocoder(stft(wave, n_fft, hop), stretch, hop)  # (1 + n_fft // 2, T')
    stretched = istft(D, n_fft, hop, length=int(round(len(wave) / stretch)), dtype=wave.dtype)
    return fix_length(resample(stretched, float(rate) / stretch, rate), len(wave))


def mel_power(wave: np.ndarray, rate: int, n_fft: int, hop: int, n_mels: int, fmax: float) -> np.ndarray:
    """``librosa.feature.melspectrogram`` (power 2, Hann, centred): float32 (n_mels, T)."""
    S = np.abs(stft(wave, n_fft, hop)) ** 2  # (F, T)
    return mel_basis(rate, n_fft, n_mels, fmax) @ S  # (n_mels, T)
