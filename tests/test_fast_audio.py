"""models.fast_audio computes what librosa computes: the phase vocoder, the pitch shift, the mel power
spectrogram, and so the speech front end's features, to within float32 rounding."""
from __future__ import annotations

import librosa
import numpy as np
import pytest

from models import fast_audio
from models.speech import SpeechConfig, SpeechFrontEnd


def _voice(seconds: float, seed: int, rate: int = 8000) -> np.ndarray:
    """A gliding harmonic tone with noise: pitch content the vocoder must move."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 120 + 80 * t / seconds + 20 * seed
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * np.hanning(len(t))
    return (0.3 * wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _librosa_features(fe: SpeechFrontEnd, wave: np.ndarray, semitones: float) -> np.ndarray:
    """The front end as written with librosa alone (the reference the bundles were trained with)."""
    c = fe.config
    shifted = librosa.effects.pitch_shift(wave, sr=c.rate, n_steps=semitones, res_type="soxr_hq", n_fft=512)
    if len(shifted) < c.n_fft:
        shifted = np.pad(shifted, (0, c.n_fft - len(shifted)))
    mel = librosa.feature.melspectrogram(y=shifted.astype(np.float32), sr=c.rate, n_fft=c.n_fft, hop_length=c.hop,
                                         n_mels=c.n_mels, fmax=c.rate / 2)
    db = librosa.power_to_db(mel, ref=np.max, top_db=c.top_db)
    from models.speech import _fit_frames

    return _fit_frames((db / c.top_db + 1.0).astype(np.float32), c.frames)[None]


@pytest.mark.parametrize("rate", [0.75, 0.9, 1.0, 1.26])
def test_phase_vocoder_matches_librosa(rate):
    D = librosa.stft(_voice(0.7, 1), n_fft=512, hop_length=128)
    want = librosa.phase_vocoder(D, rate=rate, hop_length=128, n_fft=512)
    got = fast_audio.phase_vocoder(D, rate, 128)
    assert got.shape == want.shape and got.dtype == want.dtype
    # librosa accumulates the phase in float32: both agree to that precision
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


@pytest.mark.parametrize("semitones,seconds", [(3.3, 0.5), (-4.7, 0.8), (2.0, 0.12), (-5.0, 1.3)])
def test_pitch_shift_and_features_match_librosa(semitones, seconds):
    wave = _voice(seconds, 2)
    want = librosa.effects.pitch_shift(wave, sr=8000, n_steps=semitones, res_type="soxr_hq", n_fft=512)
    got = fast_audio.pitch_shift(wave, 8000, semitones, 512)
    assert got.shape == want.shape == wave.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()
    fe = SpeechFrontEnd.from_config(SpeechConfig())
    np.testing.assert_allclose(fe.features(wave, 8000, semitones), _librosa_features(fe, wave, semitones),
                               atol=2e-3)


def test_mel_power_matches_librosa():
    wave = _voice(0.6, 3)
    want = librosa.feature.melspectrogram(y=wave, sr=8000, n_fft=256, hop_length=125, n_mels=40, fmax=4000)
    got = fast_audio.mel_power(wave, 8000, 256, 125, 40, 4000)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7 * want.max())
