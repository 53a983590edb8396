"""The speech front end of the extractor: resample, random pitch shift, log-mel, fixed length.

The pitch shift hides the speaker's pitch: every utterance is shifted by ±U(lo, hi) semitones, with the
sign and size drawn per utterance from a caller-provided ``numpy.random.Generator`` (reproducible in
training, fresh at the gateway). Training applies the same shifts, so the analyzer learns to ignore them.
The signal processing is :mod:`models.fast_audio` (numpy and soxr; what librosa computes, to float32
rounding): about 3 ms per utterance here, where torchaudio's ``pitch_shift`` took seconds. Training and the
gateway run this same code.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from models import fast_audio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechConfig:
    """Front-end settings; recorded in a bundle's manifest (``input``) so the gateway does the same."""

    # 8 kHz is telephone band: enough for digits and keywords, and FSDD's native rate.
    rate: int = 8000
    # Semitone range of the random shift; the sign is random too. (0, 0) disables it.
    shift_semitones: tuple[float, float] = (2.0, 5.0)
    # 40 mel bands over 0-4 kHz: the usual size for keyword spotting, no empty bands at n_fft=256.
    n_mels: int = 40
    # 32 ms windows at 8 kHz.
    n_fft: int = 256
    # 125 samples = 15.6 ms, so that one second is 64 frames.
    hop: int = 125
    # Fixed number of frames fed to the network (64 x 15.6 ms = 1 s, longer than 95% of FSDD digits).
    frames: int = 64
    # Dynamic range kept below the utterance's loudest mel bin; the output is scaled to [0, 1].
    top_db: float = 80.0

    def __post_init__(self) -> None:
        lo, hi = self.shift_semitones
        if not 0 <= lo <= hi <= 12:
            raise ValueError(f"shift_semitones must satisfy 0 <= lo <= hi <= 12, got {self.shift_semitones}")
        if self.rate < 1000 or self.n_mels < 1 or self.frames < 1 or self.hop < 1 or self.n_fft < 16:
            raise ValueError(f"invalid front-end settings {self}")
        if self.top_db <= 0:
            raise ValueError(f"top_db must be positive, got {self.top_db}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shift_semitones"] = list(self.shift_semitones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SpeechConfig":
        fields = dict(d)
        fields["shift_semitones"] = tuple(float(v) for v in fields["shift_semitones"])
        return cls(**fields)


class SpeechFrontEnd:
    """``(wave, rate, rng) -> float32 (1, n_mels, frames)`` log-mel in [0, 1] (0 = silence)."""

    def __init__(self, rate: int = 8000, shift_semitones: tuple[float, float] = (2.0, 5.0),
                 n_mels: int = 40, seconds: float | None = None, **kwargs) -> None:
        cfg = SpeechConfig(rate=rate, shift_semitones=tuple(shift_semitones), n_mels=n_mels, **kwargs)
        if seconds is not None:
            if seconds <= 0:
                raise ValueError(f"seconds must be positive, got {seconds}")
            cfg = SpeechConfig(**{**asdict(cfg), "frames": max(1, round(seconds * cfg.rate / cfg.hop))})
        self.config = cfg

    @classmethod
    def from_config(cls, cfg: SpeechConfig) -> "SpeechFrontEnd":
        fe = cls.__new__(cls)
        fe.config = cfg
        return fe

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.config.n_mels, self.config.frames)

    def draw_shift(self, rng: np.random.Generator) -> float:
        """One random shift in semitones: ±U(lo, hi)."""
        lo, hi = self.config.shift_semitones
        if hi == 0:
            return 0.0
        size = rng.uniform(lo, hi)
        return float(size if rng.random() < 0.5 else -size)

    def resample(self, wave: np.ndarray, rate: int) -> np.ndarray:
        """float mono (N,) at ``rate`` Hz -> float32 (M,) at the front end's rate."""
        w = np.asarray(wave, dtype=np.float32)
        if w.ndim != 1:
            raise ValueError(f"wave must be mono (N,), got shape {w.shape}")
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if rate != self.config.rate:
            w = fast_audio.resample(w, rate, self.config.rate)  # soxr HQ, as librosa's res_type="soxr_hq"
        return w.astype(np.float32, copy=False)

    def shift(self, wave: np.ndarray, semitones: float) -> np.ndarray:
        """Pitch-shift a wave at the front end's rate; same length out."""
        if semitones == 0 or len(wave) < self.config.n_fft:
            return wave
        # 512-sample (64 ms) phase-vocoder frames: librosa's default 2048 is longer than short digits.
        # librosa.effects.pitch_shift(..., res_type="soxr_hq", n_fft=512), without its per-frame Python loop
        out = fast_audio.pitch_shift(wave, self.config.rate, semitones, n_fft=512)
        return out.astype(np.float32, copy=False)

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """float32 (M,) at the front end's rate -> float32 (1, n_mels, frames) in [0, 1]."""
        c = self.config
        if len(wave) < c.n_fft:
            wave = np.pad(wave, (0, c.n_fft - len(wave)))
        mel = fast_audio.mel_power(wave, c.rate, c.n_fft, c.hop, c.n_mels, c.rate / 2)  # (n_mels, T)
        db = fast_audio.power_to_db(mel, c.top_db)  # (n_mels, T) in [-top_db, 0]
        spec = (db / c.top_db + 1.0).astype(np.float32)
        return _fit_frames(spec, c.frames)[None]  # (1, n_mels, frames)

    def __call__(self, wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
        """Raw mono wave in [-1, 1] at ``rate`` Hz -> (1, n_mels, frames) float32, one random shift."""
        return self.features(wave, rate, self.draw_shift(rng))

    def features(self, wave: np.ndarray, rate: int, semitones: float) -> np.ndarray:
        """Like ``__call__`` with a given shift (for caching several shifted versions per utterance)."""
        return self.log_mel(self.shift(self.resample(wave, rate), semitones))

    def batch(self, waves: list[np.ndarray], rate: int, rng: np.random.Generator) -> np.ndarray:
        """Item by item, drawing shifts from ``rng`` in order: (B, 1, n_mels, frames)."""
        return np.stack([self(w, rate, rng) for w in waves]) if waves else np.zeros((0, *self.shape), np.float32)

    def warm_up(self) -> float:
        """Run every step once (FFT plans, filter banks, soxr), so the first utterance is not slow; returns
        the seconds taken."""
        t0 = time.perf_counter()
        t = np.arange(self.config.rate // 2, dtype=np.float32) / self.config.rate
        wave = 0.1 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
        self.features(self.resample(wave, 16000)[: len(wave)], self.config.rate, 3.0)
        self.features(wave, self.config.rate, -2.0)
        took = time.perf_counter() - t0
        log.info("speech front end warmed up in %.1f s", took)
        return took


def _fit_frames(spec: np.ndarray, frames: int) -> np.ndarray:
    """(n_mels, T) -> (n_mels, frames): centre the utterance, padding with silence (0) or cropping."""
    t = spec.shape[1]
    if t >= frames:
        start = (t - frames) // 2
        return np.ascontiguousarray(spec[:, start:start + frames])
    left = (frames - t) // 2
    return np.pad(spec, ((0, 0), (left, frames - t - left)))
