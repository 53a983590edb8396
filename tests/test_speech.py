"""Speech front end: the pitch shift really shifts pitch and keeps the length; shapes; reproducibility."""
from __future__ import annotations

import librosa
import numpy as np
import pytest

from models.speech import SpeechConfig, SpeechFrontEnd


def _tone(f0: float, rate: int = 8000, seconds: float = 1.0) -> np.ndarray:
    """A harmonic tone (5 partials) at f0 Hz, float32 in [-1, 1]."""
    t = np.arange(int(rate * seconds)) / rate
    wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def _median_f0(wave: np.ndarray, rate: int) -> float:
    f0 = librosa.yin(wave, fmin=60, fmax=1000, sr=rate, frame_length=1024)
    return float(np.median(f0[5:-5]))


@pytest.mark.parametrize("semitones", [-5.0, -2.0, 3.0, 5.0])
def test_pitch_shift_moves_f0_by_the_requested_semitones_and_keeps_length(semitones):
    fe = SpeechFrontEnd()
    wave = _tone(200.0)
    shifted = fe.shift(wave, semitones)
    assert shifted.shape == wave.shape and shifted.dtype == np.float32
    before, after = _median_f0(wave, 8000), _median_f0(shifted, 8000)
    measured = 12 * np.log2(after / before)
    assert abs(before - 200.0) < 2.0
    assert measured == pytest.approx(semitones, abs=0.5)


def test_random_shift_is_within_the_configured_range_both_signs():
    fe = SpeechFrontEnd(shift_semitones=(2.0, 5.0))
    rng = np.random.default_rng(0)
    shifts = np.array([fe.draw_shift(rng) for _ in range(400)])
    assert np.all((np.abs(shifts) >= 2.0) & (np.abs(shifts) <= 5.0))
    assert 0.35 < np.mean(shifts > 0) < 0.65
    assert SpeechFrontEnd(shift_semitones=(0.0, 0.0)).draw_shift(rng) == 0.0


def test_output_shape_range_and_resampling():
    fe = SpeechFrontEnd()
    rng = np.random.default_rng(1)
    out8 = fe(_tone(180, 8000, 0.5), 8000, rng)
    out16 = fe(_tone(180, 16000, 0.5), 16000, rng)
    long = fe(_tone(180, 8000, 2.5), 8000, rng)
    tiny = fe(np.zeros(10, np.float32), 8000, rng)
    for out in (out8, out16, long, tiny):
        assert out.shape == (1, 40, 64) and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6
    assert fe.config.frames * fe.config.hop == 8000  # one second of audio in the window


def test_same_rng_same_features_and_batch_equals_items():
    fe = SpeechFrontEnd()
    waves = [_tone(f, 8000, 0.6) for f in (120, 160, 210)]
    a = fe.batch(waves, 8000, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    b = np.stack([fe(w, 8000, rng) for w in waves])
    np.testing.assert_array_equal(a, b)
    c = fe.batch(waves, 8000, np.random.default_rng(8))
    assert not np.array_equal(a, c)


def test_seconds_sets_frames_and_config_round_trip():
    fe = SpeechFrontEnd(seconds=0.5)
    assert fe.shape == (1, 40, 32)
    assert SpeechConfig.from_dict(fe.config.to_dict()) == fe.config


@pytest.mark.parametrize("bad", [dict(shift_semitones=(5.0, 2.0)), dict(shift_semitones=(-1.0, 2.0)),
                                 dict(n_mels=0), dict(seconds=0)])
def test_invalid_settings(bad):
    with pytest.raises(ValueError):
        SpeechFrontEnd(**bad)
